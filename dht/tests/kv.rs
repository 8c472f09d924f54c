//! The store coordinator in the simulator: the `kv` scenario's history checker finds no lost
//! acknowledged write and no stale read through crashes, loss and skewed clocks (and no lost write
//! through a partition), and does find them when a rule is broken on purpose.

use std::time::Duration;

use dht::sim::kv::{self, KvParams, KvReport};
use dht::store::Consistency;

fn run(nodes: usize, ops: u64, seed: u64, tweak: impl FnOnce(&mut KvParams)) -> KvReport {
    let mut params = KvParams::new(nodes, ops, seed);
    params.rate = 500.0;
    params.keys = 200;
    tweak(&mut params);
    kv::run(&params)
}

fn assert_safe(report: &KvReport) {
    assert_eq!(report.acked_writes_lost, 0, "{report:?}");
    assert_eq!(report.stale_reads, 0, "{report:?}");
    assert!(report.acked_writes > 1000, "the run wrote: {report:?}");
    assert!(report.reads > 1000, "the run read: {report:?}");
}

#[test]
fn crashes_lose_no_acknowledged_write_and_serve_no_stale_read() {
    let report = run(200, 5_000, 1, |p| p.crash_fraction = 0.1);
    assert_safe(&report);
    assert_eq!(report.crashes, 20);
    let repair = report.repair_s.expect("every key back on n replicas");
    assert!(repair <= 30.0, "{report:?}");
}

#[test]
fn skewed_clocks_lose_no_acknowledged_write() {
    let report = run(100, 5_000, 2, |p| p.clock_skew_ms = 30_000);
    assert_safe(&report);
    assert!(report.write_retries > 0, "skew made replicas refuse older writes: {report:?}");
}

#[test]
fn a_lossy_network_loses_no_acknowledged_write() {
    let report = run(100, 5_000, 3, |p| p.network.loss = 0.05);
    assert_eq!(report.acked_writes_lost, 0, "{report:?}");
    // A final read can still lose two of its three requests; nearly every key is judged. Over
    // seeds 10–39 the count ranges over 0–11 of 200 keys (before ring unification as after it), so
    // the bound sits above that spread rather than at one seed's value.
    assert!(report.final_reads_failed <= 12, "{report:?}");
}

#[test]
fn the_checker_catches_writes_ordered_by_skewed_clocks_alone() {
    // Without the refusal rule a write from a node whose clock is behind loses to an earlier one.
    let report = run(100, 5_000, 2, |p| {
        p.clock_skew_ms = 30_000;
        p.kv.ordered_writes = false;
    });
    assert!(report.acked_writes_lost > 0 && report.stale_reads > 0, "{report:?}");
}

#[test]
fn the_checker_catches_reads_that_do_not_wait_for_a_quorum() {
    // R = 1 with W = 2 of 3: quorums no longer intersect, and a read can miss the last write.
    let report = run(100, 5_000, 4, |p| {
        // Lost store messages leave a replica behind until anti-entropy (made rare here): R = 1
        // may ask just that replica.
        p.read_consistency = Consistency::One;
        p.network.loss = 0.1;
        p.kv.sync_interval = Duration::from_secs(30);
    });
    assert!(report.stale_reads > 0, "{report:?}");
}

#[test]
fn a_healed_partition_strands_no_acknowledged_write() {
    // Each half keeps writing while split; after the heal, copies of keys their holders no longer
    // replicate are moved to the merged ring's replica sets before anyone drops them.
    let report = run(48, 5_000, 5, |p| {
        p.partition = true;
        p.partition_duration = Duration::from_secs(20);
    });
    assert_eq!(report.acked_writes_lost, 0, "{report:?}");
    assert_eq!(report.final_reads_failed, 0, "{report:?}");
    assert!(report.acked_writes > 1000, "the run wrote: {report:?}");
    assert!(report.repair_s.is_some(), "every key back on its n true replicas: {report:?}");
}

#[test]
fn the_checker_catches_writes_stranded_outside_their_replica_set() {
    // Without the sweeps, a write acknowledged on one side during the split stays on nodes that
    // are not its replicas after the merge: no read finds it and nothing moves it.
    let report = run(48, 5_000, 5, |p| {
        p.partition = true;
        p.partition_duration = Duration::from_secs(20);
        p.kv.stray_interval = None;
    });
    assert!(report.acked_writes_lost > 0, "{report:?}");
    assert_eq!(report.repair_s, None, "{report:?}");
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let tweak = |p: &mut KvParams| {
        p.crash_fraction = 0.1;
        p.partition_duration = Duration::from_secs(5);
    };
    let mut a = run(60, 2_000, 7, tweak);
    let mut b = run(60, 2_000, 7, tweak);
    a.wall_s = 0.0;
    b.wall_s = 0.0;
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

#[test]
fn successor_lists_catch_up_after_a_heal_while_maintenance_backs_off() {
    // With stabilize backing off to 2 s and fingers to 16 s, this run lost acknowledged writes (8)
    // before a changed successor list was pushed to the predecessor: after the heal, the deeper
    // list entries caught up one backed-off round per hop, and a final quorum read through a stale
    // list asked three nodes that were not the key's replicas and answered "not found".
    let mut params = KvParams::new(64, 20_000, 13);
    params.partition = true;
    params.partition_duration = Duration::from_secs(30);
    params.config = params
        .config
        .clone()
        .with_max_stabilize_interval(Duration::from_secs(2))
        .with_max_fix_fingers_interval(Duration::from_secs(16));
    let report = kv::run(&params);
    assert_eq!(report.acked_writes_lost, 0, "{report:?}");
    assert_eq!(report.final_reads_failed, 0, "{report:?}");
    assert!(report.acked_writes > 5000, "the run wrote: {report:?}");
}
