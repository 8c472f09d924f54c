//! Compare-and-set in the simulator: concurrent clients incrementing one counter end at exactly
//! the number of increments, through crashes of the counter's replicas, lossy links and skewed
//! clocks; and the acceptor rules it rests on are each needed.

use std::time::Duration;

use dht::sim::counter::{self, CounterParams, CounterReport};

fn run(nodes: usize, seed: u64, tweak: impl FnOnce(&mut CounterParams)) -> CounterReport {
    let mut params = CounterParams::new(nodes, seed);
    params.increments = 40;
    params.max_sim = Duration::from_secs(1800);
    tweak(&mut params);
    counter::run(&params)
}

fn assert_exact(report: &CounterReport) {
    assert!(report.finished, "{report:?}");
    assert_eq!(report.final_count, Some(report.expected), "{report:?}");
    assert!(report.consistent, "{report:?}");
    assert!(report.conflicts > 0, "the clients contended: {report:?}");
}

#[test]
fn eight_clients_count_exactly() {
    let report = run(30, 1, |_| {});
    assert_exact(&report);
}

#[test]
fn a_crashed_replica_loses_no_increment() {
    for seed in 1..=3 {
        let report = run(30, seed, |p| p.crash_replicas = 1);
        assert_eq!(report.crashed, 1);
        assert_exact(&report);
    }
}

#[test]
fn lossy_links_and_skewed_clocks_lose_no_increment() {
    let report = run(30, 4, |p| {
        p.network.loss = 0.05;
        p.clock_skew_ms = 30_000;
        p.crash_replicas = 1;
    });
    assert_exact(&report);
    assert!(report.unknown + report.failures > 0, "loss made some outcomes unknown: {report:?}");
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let tweak = |p: &mut CounterParams| {
        p.increments = 10;
        p.network.loss = 0.02;
        p.backoff = Duration::from_millis(20);
    };
    let mut a = run(20, 9, tweak);
    let mut b = run(20, 9, tweak);
    a.wall_s = 0.0;
    b.wall_s = 0.0;
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

#[test]
fn the_checker_catches_replicas_that_forget_their_promises() {
    // Without promises two compare-and-sets can both decide on the same state and both be
    // acknowledged: one increment overwrites the other.
    let report = run(30, 1, |p| p.kv.keep_promises = false);
    assert!(report.finished, "{report:?}");
    assert!(report.lost > 0, "{report:?}");
}
