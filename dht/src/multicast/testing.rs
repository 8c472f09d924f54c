//! Test support shared by the multicast parts' tests: a converged simulated ring.

use crate::multicast::MulticastConfig;
use crate::sim::Simulation;
use crate::sim::testing::converged_ring;

/// A converged ring of `n` nodes with multicast on.
pub(super) fn ring(n: usize, seed: u64) -> Simulation {
    let mut sim = converged_ring(n, seed);
    sim.enable_multicast(MulticastConfig::default());
    sim
}
