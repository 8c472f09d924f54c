//! Stray sweeps in a simulated ring: a copy outside its replica set goes home and only then away;
//! copies a node replicates stay, and a ring at rest finds no strays.

use std::time::Duration;

use crate::id::Id;
use crate::kv::tests::ring;
use crate::sim::Simulation;
use crate::store::{Consistency, Record, Version};

/// Long enough for the first sweep of every node (due at once) and a second one.
const TWO_SWEEPS: Duration = Duration::from_secs(70);

fn record(key: &[u8]) -> Record {
    // A version from the simulated wall clock's era, so that no node refuses it as from the future.
    let version = Version { hlc: 1_767_225_600_000 << 16, writer: Id::hash(b"an old writer") };
    Record::new(key.to_vec(), b"stranded".to_vec(), version)
}

/// Runs until `done` holds, for at most `limit`.
fn run_until(sim: &mut Simulation, limit: Duration, mut done: impl FnMut(&Simulation) -> bool) -> bool {
    let deadline = sim.now() + limit;
    while sim.now() < deadline {
        if done(sim) {
            return true;
        }
        sim.run_until(sim.now() + Duration::from_millis(200));
    }
    done(sim)
}

#[test]
fn a_stray_copy_moves_to_its_whole_replica_set_and_only_then_goes() {
    let mut sim = ring(8, 11);
    let key = b"stranded key".to_vec();
    let key_id = Id::hash(&key);
    let replicas = sim.true_replicas(&key_id, 3);
    let stray = (0..sim.node_count()).find(|i| !replicas.contains(i)).expect("8 nodes");
    let copy = record(&key);
    sim.plant_record(stray, copy.clone());

    let home = run_until(&mut sim, TWO_SWEEPS, |sim| {
        replicas.iter().all(|&r| sim.durable_record(r, &key_id) == Some(&copy))
            && sim.durable_record(stray, &key_id).is_none()
    });
    assert!(home, "the copy is on every replica and gone from the stray holder");
    let counters = sim.kv_coordinator(stray).expect("enabled").counters().clone();
    assert_eq!(
        (counters.stray_found, counters.stray_moved, counters.stray_removed),
        (1, 1, 1),
        "{counters:?}"
    );

    // A quorum read anywhere finds it.
    let reader = replicas[0];
    let op = sim.kv_get(reader, key, Consistency::Quorum).expect("accepted");
    sim.run_until(sim.now() + Duration::from_secs(2));
    let result = sim.take_kv_results().into_iter().find(|r| r.op == op).expect("finished").result;
    assert!(matches!(result, Ok(crate::kv::OpOutcome::Read(Some(ref r))) if *r == copy), "{result:?}");
}

#[test]
fn copies_a_node_replicates_stay_and_a_ring_at_rest_has_no_strays_and_sweeps_rarely() {
    let mut sim = ring(8, 12);
    let mut keys = Vec::new();
    for k in 0..40u32 {
        let key = format!("key {k}").into_bytes();
        let writer = sim.random_member().expect("members");
        sim.kv_put(writer, key.clone(), b"v".to_vec(), Consistency::All).expect("accepted");
        keys.push(key);
    }
    sim.run_until(sim.now() + Duration::from_secs(3));
    assert!(sim.take_kv_results().iter().all(|r| r.result.is_ok()), "written to all replicas");

    sim.run_until(sim.now() + TWO_SWEEPS);
    let mut sweeps = 0;
    for node in 0..sim.node_count() {
        let counters = sim.kv_coordinator(node).expect("enabled").counters().clone();
        assert_eq!(
            counters.stray_found, 0,
            "node {node} took a copy it replicates for a stray: {counters:?}"
        );
        sweeps += counters.stray_sweeps;
    }
    assert!(sweeps >= 2 * sim.node_count() as u64, "every node swept at least twice: {sweeps}");
    // Quiet sweeps back off: over 12 minutes a sweep every 30 s would be 24; doubling waits
    // (30, 60, 120, then 240 s) make about 6.
    sim.run_until(sim.now() + (Duration::from_secs(12 * 60) - TWO_SWEEPS));
    for node in 0..sim.node_count() {
        let counters = sim.kv_coordinator(node).expect("enabled").counters().clone();
        assert_eq!(counters.stray_found, 0, "node {node}: {counters:?}");
        assert!(
            (4..=8).contains(&counters.stray_sweeps),
            "node {node} swept {} times",
            counters.stray_sweeps
        );
    }
    for key in &keys {
        let key_id = Id::hash(key);
        for replica in sim.true_replicas(&key_id, 3) {
            assert!(sim.durable_record(replica, &key_id).is_some(), "replica {replica} kept {key:?}");
        }
    }
}
