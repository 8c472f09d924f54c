//! Test support shared by the core's unit tests: a simulated ring grown one node every 50 ms and
//! run until it is correct.

use std::time::Duration;

use crate::config::Config;
use crate::time::Time;

use super::{NetworkModel, Simulation};

/// A ring of `n` nodes with default settings, run until every member's successor and predecessor
/// are the true ones (within 60 simulated seconds, or the test fails).
pub(crate) fn converged_ring(n: usize, seed: u64) -> Simulation {
    let mut sim = Simulation::new(seed, Config::default(), NetworkModel::default());
    let first = sim.add_node();
    sim.create_ring(first);
    for k in 1..n {
        sim.run_until(Time::ZERO + Duration::from_millis(50) * k as u32);
        let fresh = sim.add_node();
        let bootstrap = sim.random_member().expect("the first node is a member");
        sim.join(fresh, &[bootstrap]);
    }
    run_until_converged(&mut sim, n, |sim| sim.ring_is_correct());
    sim
}

/// Runs `sim` in 500 ms steps until it has `n` members and `done` holds, for at most 60 s.
pub(crate) fn run_until_converged(sim: &mut Simulation, n: usize, done: impl Fn(&Simulation) -> bool) {
    let deadline = sim.now() + Duration::from_secs(60);
    while !(sim.member_count() == n && done(sim)) {
        assert!(sim.now() < deadline, "ring of {n} did not converge");
        sim.run_until(sim.now() + Duration::from_millis(500));
    }
}
