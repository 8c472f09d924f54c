//! Coordinator tests: hostile answers (records for other keys, versions from the future), and what a
//! store at rest costs.

use super::*;
use crate::sim::Simulation;
use crate::sim::testing::{converged_ring, run_until_converged};

/// A converged ring of `n` nodes, successor lists included, with the store on.
pub(super) fn ring(n: usize, seed: u64) -> Simulation {
    let mut sim = converged_ring(n, seed);
    run_until_converged(&mut sim, n, |sim| sim.ring_is_correct() && sim.successor_lists_are_correct());
    // The default simulated disk; no clock skew.
    sim.enable_kv(KvConfig::default(), Default::default(), 0);
    sim
}

/// How the forged reply's victim asks for the key.
#[derive(Clone, Copy, Debug)]
enum Asking {
    /// A quorum read: a `Fetch`, answered `Found`.
    Quorum,
    /// A linearizable read: a `Fetch`, answered `Found`.
    Linearizable,
    /// A compare-and-set from the honest version: a `Prepare`, answered `Promised`.
    Cas,
}

struct Forged {
    result: Result<OpOutcome<crate::sim::SimAddr>, KvError>,
    counters: KvCounters,
    /// Every durable copy of the forged record, on any node.
    forged_copies: Vec<Record>,
}

/// Writes `k` = `v`, then asks for it from another node while one replica's answer is
/// replaced, before the genuine answers arrive, by one holding `forge(honest record)`.
fn ask_with_a_forged_reply(asking: Asking, forge: impl Fn(&Record) -> Record) -> Forged {
    let mut sim = ring(8, 3);
    let key = b"k".to_vec();
    let key_id = Id::hash(&key);
    let replicas = sim.true_replicas(&key_id, 3);
    let writer = replicas[0];
    sim.kv_put(writer, key.clone(), b"v".to_vec(), Consistency::All).expect("accepted");
    sim.run_until(sim.now() + Duration::from_secs(2));
    assert!(sim.take_kv_results().iter().all(|r| r.result.is_ok()), "written");
    let honest = sim.durable_record(writer, &key_id).expect("written").clone();
    let forged = forge(&honest);

    let asker = (0..sim.node_count()).find(|i| !replicas.contains(i)).expect("8 nodes");
    let op = match asking {
        Asking::Quorum => sim.kv_get(asker, key, Consistency::Quorum),
        Asking::Linearizable => sim.kv_get_linearizable(asker, key),
        Asking::Cas => sim.kv_cas(asker, key, Expect::Version(honest.version), Some(b"w".to_vec())),
    }
    .expect("accepted");
    let deadline = sim.now() + Duration::from_secs(5);
    let (id, to, purpose) = loop {
        let kv = sim.kv_coordinator(asker).expect("enabled");
        let asked = kv.out.pending.iter().find(|(_, p)| {
            matches!(
                (asking, &p.purpose),
                (Asking::Quorum, Purpose::OpFetch { .. })
                    | (Asking::Linearizable, Purpose::CasFetch { .. })
                    | (Asking::Cas, Purpose::CasPrepare { .. })
            )
        });
        if let Some((id, pending)) = asked {
            break (*id, pending.to, pending.purpose.clone());
        }
        assert!(sim.now() < deadline, "nothing asked");
        sim.run_until(sim.now() + Duration::from_millis(1));
    };
    let before = sim.kv_coordinator(asker).expect("enabled").counters().clone();
    let body = match purpose {
        Purpose::CasPrepare { .. } => KvResponse::Promised { record: Some(forged.clone()) },
        _ => KvResponse::Found { record: Some(forged.clone()) },
    };
    sim.inject_kv_message(asker, to, KvMessage::Response { id, body });
    sim.run_until(sim.now() + Duration::from_secs(3));
    let result = sim.take_kv_results().into_iter().find(|r| r.op == op).expect("finished").result;
    let after = sim.kv_coordinator(asker).expect("enabled").counters().clone();
    let counters = KvCounters {
        rejected_future: after.rejected_future - before.rejected_future,
        rejected_invalid: after.rejected_invalid - before.rejected_invalid,
        ..KvCounters::default()
    };
    let forged_id = forged.key_id();
    let forged_copies = (0..sim.node_count())
        .filter_map(|i| sim.durable_record(i, &forged_id).filter(|r| **r == forged).cloned())
        .collect();
    Forged { result, counters, forged_copies }
}

fn read_value(result: &Result<OpOutcome<crate::sim::SimAddr>, KvError>) -> Option<&[u8]> {
    match result {
        Ok(OpOutcome::Read(Some(record))) => Some(&record.value),
        _ => None,
    }
}

#[test]
fn a_found_record_far_in_the_future_is_refused_and_never_repaired_onto_replicas() {
    let outcome = ask_with_a_forged_reply(Asking::Quorum, |honest| {
        let future = Version { hlc: u64::MAX - 1, writer: honest.version.writer };
        Record::new(honest.key.clone(), b"forged".to_vec(), future)
    });
    assert_eq!(outcome.counters.rejected_future, 1);
    assert_eq!(read_value(&outcome.result), Some(&b"v"[..]));
    assert!(outcome.forged_copies.is_empty(), "spread by read repair: {:?}", outcome.forged_copies);
}

#[test]
fn a_found_or_promised_record_for_another_key_is_refused_and_never_spread() {
    for asking in [Asking::Quorum, Asking::Linearizable, Asking::Cas] {
        let outcome = ask_with_a_forged_reply(asking, |honest| {
            let newer = Version { hlc: honest.version.hlc + 1, writer: honest.version.writer };
            Record::new(b"another key".to_vec(), b"forged".to_vec(), newer)
        });
        assert_eq!(outcome.counters.rejected_invalid, 1, "{asking:?}");
        match asking {
            Asking::Quorum | Asking::Linearizable => {
                assert_eq!(read_value(&outcome.result), Some(&b"v"[..]), "{asking:?}")
            }
            Asking::Cas => assert!(
                matches!(outcome.result, Ok(OpOutcome::Written(_))),
                "{asking:?}: {:?}",
                outcome.result
            ),
        }
        assert!(outcome.forged_copies.is_empty(), "{asking:?} spread: {:?}", outcome.forged_copies);
    }
}

#[test]
fn a_store_at_rest_sends_few_messages() {
    // Anti-entropy rounds whose replicas agree back off (3 s doubling to 24 s), and stray sweeps
    // that find nothing back off (30 s doubling to 4 min): a store at rest costs a node a small
    // fraction of a message per second (1.3 per second with rounds every 3 s).
    let mut sim = ring(8, 13);
    for k in 0..40u32 {
        let writer = sim.random_member().expect("members");
        sim.kv_put(writer, format!("key {k}").into_bytes(), b"v".to_vec(), Consistency::All)
            .expect("accepted");
    }
    sim.run_until(sim.now() + Duration::from_secs(5 * 60));
    let before = sim.kv_messages();
    let window = Duration::from_secs(10 * 60);
    sim.run_until(sim.now() + window);
    let per_node_per_s = (sim.kv_messages() - before) as f64 / sim.node_count() as f64 / window.as_secs_f64();
    assert!(per_node_per_s < 0.25, "{per_node_per_s:.3} storage messages per node per second at rest");
}

/// Puts `k` at its owner while the other two replicas cannot hear it for `cut` (every message
/// between them lost), then heals; returns the put's result and the owner's counters.
fn put_while_two_replicas_are_cut_off(
    cut: Duration,
    replica_tries: u32,
) -> (Result<OpOutcome<crate::sim::SimAddr>, KvError>, KvCounters) {
    let mut sim = converged_ring(8, 21);
    run_until_converged(&mut sim, 8, |sim| sim.ring_is_correct() && sim.successor_lists_are_correct());
    sim.enable_kv(KvConfig { replica_tries, ..KvConfig::default() }, Default::default(), 0);
    let key = b"k".to_vec();
    let key_id = Id::hash(&key);
    let replicas = sim.true_replicas(&key_id, 3);
    let writer = replicas[0];
    let sides = (0..sim.node_count()).map(|i| u8::from(replicas[1..].contains(&i))).collect();
    sim.partition(sides);
    let op = sim.kv_put(writer, key, b"v".to_vec(), Consistency::Quorum).expect("accepted");
    sim.run_until(sim.now() + cut);
    sim.heal();
    sim.run_until(sim.now() + Duration::from_secs(6));
    let result = sim.take_kv_results().into_iter().find(|r| r.op == op).expect("finished").result;
    (result, sim.kv_coordinator(writer).expect("enabled").counters().clone())
}

#[test]
fn a_write_whose_replicas_miss_the_first_request_is_acknowledged_after_a_resend() {
    // Both peers' first requests are lost and time out after 1 s; the resends go out after the
    // heal and reach a quorum well inside the 5 s deadline.
    let cut = Duration::from_millis(1100);
    let (result, counters) = put_while_two_replicas_are_cut_off(cut, KvConfig::default().replica_tries);
    assert!(matches!(result, Ok(OpOutcome::Written(Written { acked: 2, .. }))), "{result:?}");
    assert_eq!(counters.replica_resends, 2, "one resend to each cut-off replica");
    assert_eq!(counters.quorum_failures, 0);
    // Asked once each, as before resends existed, the write failed with 4 s of its deadline left.
    let (result, counters) = put_while_two_replicas_are_cut_off(cut, 1);
    assert!(matches!(result, Err(KvError::NoQuorum { needed: 2, got: 1 })), "{result:?}");
    assert_eq!(counters.replica_resends, 0);
}

#[test]
fn a_write_whose_replicas_stay_unreachable_fails_by_its_deadline_after_bounded_resends() {
    let (result, counters) =
        put_while_two_replicas_are_cut_off(Duration::from_secs(6), KvConfig::default().replica_tries);
    assert!(matches!(result, Err(KvError::NoQuorum { needed: 2, got: 1 })), "{result:?}");
    // Each cut-off replica is asked at most `replica_tries` (3) times: 2 resends each.
    assert!(counters.replica_resends <= 4, "{}", counters.replica_resends);
    assert!(counters.replica_resends >= 2, "{}", counters.replica_resends);
}

/// The owner's and another party's signing keys, and the test key.
fn signers() -> (ed25519_dalek::SigningKey, ed25519_dalek::SigningKey, Vec<u8>) {
    let owner = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let mallory = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    (owner, mallory, b"signed/alice".to_vec())
}

/// Runs `op` to its end and returns its result.
fn finish(
    sim: &mut Simulation,
    start: impl FnOnce(&mut Simulation) -> Result<OpId, KvError>,
) -> Result<OpOutcome<crate::sim::SimAddr>, KvError> {
    let op = start(sim)?;
    sim.run_until(sim.now() + Duration::from_secs(6));
    sim.take_kv_results().into_iter().find(|r| r.op == op).expect("finished").result
}

#[test]
fn only_the_owner_of_a_signed_key_can_write_delete_or_pass_its_version() {
    let mut sim = ring(8, 5);
    let (owner, mallory, key) = signers();
    let key_id = Id::hash(&key);
    let writer = sim.true_replicas(&key_id, 3)[0];
    let outsider =
        (0..sim.node_count()).find(|i| !sim.true_replicas(&key_id, 3).contains(i)).expect("8 nodes");
    let hlc = |sim: &Simulation| sim.kv_wall_ms(writer) << 16;

    // Unsigned writes, compare-and-set and linearizable reads of a signed key fail at once.
    let missing = Err(KvError::Signature(crate::signed::SignatureError::Missing));
    assert_eq!(sim.kv_put(writer, key.clone(), b"v".to_vec(), Consistency::Quorum).map(|_| ()), missing);
    assert_eq!(sim.kv_delete(outsider, key.clone(), Consistency::Quorum).map(|_| ()), missing);
    assert_eq!(sim.kv_get_linearizable(writer, key.clone()).map(|_| ()), Err(KvError::SignedKeyCas));

    let first = crate::signed::sign(key.clone(), Some(b"one".to_vec()), hlc(&sim), &owner);
    let written = finish(&mut sim, |sim| sim.kv_put_signed(outsider, first.clone(), Consistency::All));
    assert!(matches!(written, Ok(OpOutcome::Written(Written { acked: 3, .. }))), "{written:?}");
    let read = finish(&mut sim, |sim| sim.kv_get(writer, key.clone(), Consistency::Quorum));
    assert!(matches!(&read, Ok(OpOutcome::Read(Some(r))) if *r == first), "{read:?}");

    // Another key's signature, even on a newer version, replaces nothing.
    let forged = crate::signed::sign(key.clone(), Some(b"forged".to_vec()), hlc(&sim) + 5, &mallory);
    let refused = finish(&mut sim, |sim| sim.kv_put_signed(writer, forged.clone(), Consistency::One));
    assert_eq!(refused.map(|_| ()), Err(KvError::NotOwner));
    let deleted_by_mallory = crate::signed::sign(key.clone(), None, hlc(&sim) + 6, &mallory);
    let refused = finish(&mut sim, |sim| sim.kv_put_signed(outsider, deleted_by_mallory, Consistency::One));
    assert_eq!(refused.map(|_| ()), Err(KvError::NotOwner));

    // The owner's own older version (a roll-back) fails and names what to pass.
    let stale = crate::signed::sign(key.clone(), Some(b"zero".to_vec()), first.version.hlc - 1, &owner);
    let refused = finish(&mut sim, |sim| sim.kv_put_signed(writer, stale, Consistency::One));
    assert_eq!(refused.map(|_| ()), Err(KvError::Superseded { held: first.version }));

    // The owner's signed delete wins, and the key stays the owner's after it.
    let tombstone = crate::signed::sign(key.clone(), None, hlc(&sim) + 10, &owner);
    let deleted = finish(&mut sim, |sim| sim.kv_put_signed(outsider, tombstone.clone(), Consistency::All));
    assert!(matches!(deleted, Ok(OpOutcome::Written(Written { existed: true, .. }))), "{deleted:?}");
    let again = crate::signed::sign(key.clone(), Some(b"mine now".to_vec()), hlc(&sim) + 20, &mallory);
    let refused = finish(&mut sim, |sim| sim.kv_put_signed(writer, again, Consistency::One));
    assert_eq!(refused.map(|_| ()), Err(KvError::NotOwner));
    for replica in sim.true_replicas(&key_id, 3) {
        assert_eq!(sim.durable_record(replica, &key_id), Some(&tombstone), "replica {replica}");
    }
}

#[test]
fn a_peer_cannot_store_a_forged_or_unsigned_record_of_a_signed_key_on_a_replica() {
    let mut sim = ring(8, 6);
    let (owner, mallory, key) = signers();
    let key_id = Id::hash(&key);
    let replicas = sim.true_replicas(&key_id, 3);
    let hlc = sim.kv_wall_ms(replicas[0]) << 16;
    let first = crate::signed::sign(key.clone(), Some(b"one".to_vec()), hlc, &owner);
    assert!(finish(&mut sim, |sim| sim.kv_put_signed(replicas[0], first.clone(), Consistency::All)).is_ok());

    let attacker = (0..sim.node_count()).find(|i| !replicas.contains(i)).expect("8 nodes");
    let from = sim.addr(attacker);
    let writer = Id::hash(b"attacker");
    let newer = Version { hlc: hlc + 100, writer };
    let mut wrong_signature = crate::signed::sign(key.clone(), Some(b"forged".to_vec()), hlc + 100, &mallory);
    wrong_signature.owner = first.owner.clone();
    let attempts = [
        // No signature at all (as every record was before signed keys existed).
        Record::new(key.clone(), b"forged".to_vec(), newer),
        Record::tombstone(key.clone(), newer),
        // The owner's public key on a signature that is not the owner's.
        wrong_signature,
        // A valid signature of another key: intact, but the key is bound to its owner.
        crate::signed::sign(key.clone(), Some(b"forged".to_vec()), hlc + 100, &mallory),
    ];
    for (n, record) in attempts.into_iter().enumerate() {
        for &replica in &replicas {
            let id = crate::message::RequestId(9_000 + n as u64 * 10 + replica as u64);
            let body = KvRequest::Store { record: record.clone() };
            sim.inject_kv_message(replica, from, KvMessage::Request { id, body });
        }
        sim.run_until(sim.now() + Duration::from_secs(1));
        for &replica in &replicas {
            assert_eq!(sim.durable_record(replica, &key_id), Some(&first), "attempt {n}, replica {replica}");
        }
    }
    let refused: u64 =
        replicas.iter().map(|&r| sim.kv_coordinator(r).expect("enabled").counters().rejected_invalid).sum();
    assert_eq!(refused, 9, "the three broken records refused on receipt by each replica");
    let read = finish(&mut sim, |sim| sim.kv_get(attacker, key, Consistency::All));
    assert!(matches!(&read, Ok(OpOutcome::Read(Some(r))) if *r == first), "{read:?}");
}

/// A key whose true replica set, in `sim`, includes node `index` (`near`) or lies half the ring
/// away from it (`far`).
fn key_placed(sim: &Simulation, index: usize, near: bool) -> Vec<u8> {
    let n = sim.node_count();
    (0u32..)
        .map(|i| format!("key-{i}").into_bytes())
        .find(|key| {
            let replicas = sim.true_replicas(&Id::hash(key), 3);
            if near {
                replicas.contains(&index)
            } else {
                let owner_id = sim.addr(replicas[0]).node_id();
                let distance = owner_id.distance_to(&sim.addr(index).node_id());
                // At least a quarter of the ring behind `index`, and not one of its replicas.
                distance.as_bytes()[0] >= 0x40 && !replicas.contains(&index) && n > 3
            }
        })
        .expect("some key lands there")
}

#[test]
fn a_peer_cannot_make_a_node_hold_keys_outside_its_replica_range() {
    let mut sim = ring(64, 8);
    let victim = 5;
    let attacker = sim.addr(40);
    let writer = Id::hash(b"attacker");
    let hlc = sim.kv_wall_ms(victim) << 16;
    let far = key_placed(&sim, victim, false);
    let near = key_placed(&sim, victim, true);
    for (n, key) in [&far, &near].into_iter().enumerate() {
        let record = Record::new(key.clone(), b"planted".to_vec(), Version { hlc, writer });
        let id = crate::message::RequestId(7_000 + n as u64);
        sim.inject_kv_message(victim, attacker, KvMessage::Request { id, body: KvRequest::Store { record } });
        let record = Record::new(key.clone(), b"accepted".to_vec(), Version { hlc: hlc + 1, writer });
        let id = crate::message::RequestId(7_100 + n as u64);
        sim.inject_kv_message(
            victim,
            attacker,
            KvMessage::Request { id, body: KvRequest::Accept { record } },
        );
    }
    sim.run_until(sim.now() + Duration::from_secs(1));
    let counters = sim.kv_coordinator(victim).expect("enabled").counters().clone();
    assert_eq!(counters.rejected_out_of_range, 2, "the far key's Store and Accept refused");
    assert!(sim.durable_record(victim, &Id::hash(&far)).is_none(), "nothing of the far key stored");
    assert!(sim.durable_record(victim, &Id::hash(&near)).is_some(), "a key it replicates is taken");
}

#[test]
fn repair_through_joins_and_crashes_restores_every_copy_despite_the_range_check() {
    let mut sim = ring(48, 9);
    let keys: Vec<Vec<u8>> = (0..200).map(|i| format!("k{i}").into_bytes()).collect();
    for (i, key) in keys.iter().enumerate() {
        sim.kv_put(i % 48, key.clone(), b"v".to_vec(), Consistency::Quorum).expect("accepted");
    }
    sim.run_until(sim.now() + Duration::from_secs(3));
    assert!(sim.take_kv_results().iter().all(|r| r.result.is_ok()), "every put acknowledged");
    // A fifth of the ring crashes (every fifth node in ring order, so that every key keeps a
    // copy) and as many new nodes join: anti-entropy, stray sweeps and read repair must move
    // every key to its new replica set, whose members take it.
    let mut ring_order: Vec<usize> = (0..48).collect();
    ring_order.sort_by_key(|&i| sim.addr(i).node_id());
    for &index in ring_order.iter().step_by(5) {
        sim.crash(index);
    }
    for _ in 0..10 {
        let joining = sim.add_node();
        sim.join(joining, &[1]);
    }
    sim.run_until(sim.now() + Duration::from_secs(90));
    let mut missing = Vec::new();
    for key in &keys {
        let key_id = Id::hash(key);
        for replica in sim.true_replicas(&key_id, 3) {
            if sim.durable_record(replica, &key_id).is_none_or(|r| r.value != b"v") {
                missing.push((String::from_utf8_lossy(key).into_owned(), replica));
            }
        }
    }
    let refused: u64 = (0..sim.node_count())
        .filter_map(|i| sim.kv_coordinator(i))
        .map(|kv| kv.counters().rejected_out_of_range)
        .sum();
    // Writes from views still wrong during the churn may be refused; none may cost a copy.
    assert!(missing.is_empty(), "copies missing at true replicas: {missing:?} ({refused} refused)");
}

#[test]
fn each_node_learns_its_predecessors_from_its_predecessor() {
    let mut sim = ring(32, 10);
    // A few stabilize rounds (backed off to 2 s) carry each list one hop further.
    sim.run_until(sim.now() + Duration::from_secs(12));
    let mut ring_order: Vec<usize> = (0..32).collect();
    ring_order.sort_by_key(|&i| sim.addr(i).node_id());
    for (pos, &index) in ring_order.iter().enumerate() {
        let expected: Vec<Id> = (1..=crate::node::PREDECESSORS)
            .map(|back| sim.addr(ring_order[(pos + 32 - back) % 32]).node_id())
            .collect();
        let known: Vec<Id> = sim.node(index).predecessors().iter().map(|p| p.id).collect();
        assert_eq!(known, expected, "node {index}");
    }
}

fn written(result: &Result<OpOutcome<crate::sim::SimAddr>, KvError>) -> &Written {
    match result {
        Ok(OpOutcome::Written(written)) => written,
        other => panic!("expected a write, got {other:?}"),
    }
}

#[test]
fn deleting_a_key_nobody_holds_writes_nothing_anywhere() {
    let mut sim = ring(16, 11);
    let key = b"never-written".to_vec();
    let key_id = Id::hash(&key);
    let replicas = sim.true_replicas(&key_id, 3);
    // From a replica (its own copy is read, not written) and from a node outside the set.
    let outsider = (0..16).find(|i| !replicas.contains(i)).expect("16 nodes");
    for coordinator in [replicas[0], outsider] {
        let result = finish(&mut sim, |sim| sim.kv_delete(coordinator, key.clone(), Consistency::Quorum));
        let written = written(&result);
        assert!(!written.existed, "nothing existed");
        assert_eq!(written.acked, 0, "nothing stored");
    }
    sim.run_until(sim.now() + Duration::from_secs(10));
    assert!(sim.holders(&key_id).is_empty(), "no tombstone anywhere: {:?}", sim.holders(&key_id));
}

#[test]
fn deleting_a_key_that_exists_leaves_a_tombstone_on_every_replica() {
    let mut sim = ring(16, 12);
    let key = b"k".to_vec();
    let key_id = Id::hash(&key);
    let replicas = sim.true_replicas(&key_id, 3);
    assert!(
        finish(&mut sim, |sim| sim.kv_put(replicas[1], key.clone(), b"v".to_vec(), Consistency::All)).is_ok()
    );
    let result = finish(&mut sim, |sim| sim.kv_delete(replicas[0], key.clone(), Consistency::Quorum));
    assert!(written(&result).existed);
    for &replica in &replicas {
        let record = sim.durable_record(replica, &key_id).expect("held");
        assert!(record.tombstone, "replica {replica} holds the tombstone");
    }
}

#[test]
fn a_delete_reaches_a_quorum_when_only_one_replica_holds_the_key() {
    let mut sim = ring(16, 13);
    let key = b"lonely".to_vec();
    let key_id = Id::hash(&key);
    let replicas = sim.true_replicas(&key_id, 3);
    let hlc = sim.kv_wall_ms(replicas[2]) << 16;
    // A copy only the last replica holds (the others missed the write; repair has not run).
    let version = Version { hlc, writer: sim.addr(replicas[2]).node_id() };
    sim.plant_record(replicas[2], Record::new(key.clone(), b"v".to_vec(), version));
    let outsider = (0..16).find(|i| !replicas.contains(i)).expect("16 nodes");
    let result = finish(&mut sim, |sim| sim.kv_delete(outsider, key.clone(), Consistency::Quorum));
    let written = written(&result);
    assert!(written.existed, "one replica held a live value: {written:?}");
    assert!(written.acked >= 2, "a quorum holds the tombstone: {written:?}");
    let tombstones =
        replicas.iter().filter(|&&r| sim.durable_record(r, &key_id).is_some_and(|r| r.tombstone)).count();
    assert!(tombstones >= 2, "{tombstones} replicas hold the tombstone");
    let read = finish(&mut sim, |sim| sim.kv_get(outsider, key.clone(), Consistency::Quorum));
    assert!(matches!(&read, Ok(OpOutcome::Read(Some(r))) if r.tombstone), "{read:?}");
}

#[test]
fn a_delete_request_must_carry_a_tombstone() {
    let record = Record::new(b"k".to_vec(), b"v".to_vec(), Version { hlc: 1 << 16, writer: Id::hash(b"w") });
    assert_eq!(KvRequest::Delete { record }.validate(1024), Err(crate::store::InvalidKv::NotATombstone));
}
