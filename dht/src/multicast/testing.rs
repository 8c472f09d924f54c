//! Test support shared by the multicast parts' tests: a converged simulated ring.

use std::time::Duration;

use crate::config::Config;
use crate::multicast::MulticastConfig;
use crate::sim::{NetworkModel, Simulation};
use crate::time::Time;

/// A converged ring of `n` nodes with multicast on.
pub(super) fn ring(n: usize, seed: u64) -> Simulation {
    let mut sim = Simulation::new(seed, Config::default(), NetworkModel::default());
    let first = sim.add_node();
    sim.create_ring(first);
    for k in 1..n {
        sim.run_until(Time::ZERO + Duration::from_millis(50) * k as u32);
        let fresh = sim.add_node();
        let bootstrap = sim.random_member().expect("the first node is a member");
        sim.join(fresh, &[bootstrap]);
    }
    let deadline = sim.now() + Duration::from_secs(60);
    while !(sim.member_count() == n && sim.ring_is_correct()) {
        assert!(sim.now() < deadline, "ring of {n} did not converge");
        sim.run_until(sim.now() + Duration::from_millis(500));
    }
    sim.enable_multicast(MulticastConfig::default());
    sim
}
