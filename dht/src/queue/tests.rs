#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use super::*;
use crate::sim::queue::QueueRecord;
use crate::sim::testing::converged_ring;
use crate::sim::{SimAddr, Simulation};

fn ring(n: usize, seed: u64, config: QueueConfig) -> Simulation {
    let mut sim = converged_ring(n, seed);
    sim.enable_queues(config);
    sim
}

fn name(text: &str) -> QueueName {
    QueueName::new(text).unwrap()
}

/// Runs until operation `op` of node `index` finished (30 simulated seconds at most); events
/// of other operations are kept in `others`.
fn wait_op(
    sim: &mut Simulation,
    index: usize,
    op: QueueOpId,
    others: &mut Vec<QueueRecord>,
) -> Result<QueueOutcome<SimAddr>, QueueError> {
    let deadline = sim.now() + Duration::from_secs(30);
    loop {
        let mut found = None;
        for record in sim.take_queue_events() {
            match &record.event {
                QueueEvent::Done { op: done, result } if *done == op && record.node == index => {
                    found = Some(result.clone());
                }
                _ => others.push(record),
            }
        }
        if let Some(result) = found {
            return result;
        }
        assert!(sim.now() < deadline, "operation {op:?} of node {index} did not finish");
        sim.run_until(sim.now() + Duration::from_millis(10));
    }
}

fn put(sim: &mut Simulation, index: usize, queue: &QueueName, body: &[u8]) -> (u64, MsgId) {
    let (op, id) = sim.queue_put(index, queue, body.to_vec());
    match wait_op(sim, index, op, &mut Vec::new()).unwrap() {
        QueueOutcome::Put { seq, id: put_id } => {
            assert_eq!(put_id, id);
            (seq, id)
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn take(sim: &mut Simulation, index: usize, queue: &QueueName, wait: Duration) -> Option<Leased> {
    let op = sim.queue_take(index, queue, wait, Duration::from_secs(30));
    match wait_op(sim, index, op, &mut Vec::new()).unwrap() {
        QueueOutcome::Taken(taken) => taken,
        other => panic!("unexpected {other:?}"),
    }
}

fn ack(sim: &mut Simulation, index: usize, queue: &QueueName, leased: &Leased) -> AckOutcome {
    let op = sim.queue_ack(index, queue, leased.message.seq, leased.message.id, leased.lease);
    match wait_op(sim, index, op, &mut Vec::new()).unwrap() {
        QueueOutcome::Acked(outcome) => outcome,
        other => panic!("unexpected {other:?}"),
    }
}

fn stats(sim: &mut Simulation, index: usize, queue: &QueueName) -> QueueStats {
    let op = sim.queue_stat(index, queue);
    match wait_op(sim, index, op, &mut Vec::new()).unwrap() {
        QueueOutcome::Stats { stats, .. } => stats,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn messages_come_out_in_order_once_each_and_an_acknowledgement_counts_once() {
    let mut sim = ring(8, 1, QueueConfig::default());
    let q = name("jobs");
    let mut seqs = Vec::new();
    for k in 0..5u8 {
        seqs.push(put(&mut sim, 1 + k as usize % 3, &q, &[k]).0);
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequence numbers grow: {seqs:?}");
    for k in 0..5u8 {
        let leased = take(&mut sim, 3, &q, Duration::ZERO).expect("a message waits");
        assert_eq!(leased.message.body, vec![k]);
        assert_eq!(ack(&mut sim, 3, &q, &leased), AckOutcome::Removed);
        // The same consumer repeating its acknowledgement (its answer was lost) hears the same;
        // anyone else hears that it is gone.
        assert_eq!(ack(&mut sim, 5, &q, &leased), AckOutcome::Removed);
        let other = Leased { lease: leased.lease + 1, ..leased.clone() };
        assert_eq!(ack(&mut sim, 5, &q, &other), AckOutcome::Gone);
    }
    assert!(take(&mut sim, 4, &q, Duration::ZERO).is_none(), "poll on an empty queue answers nothing");
    let figures = stats(&mut sim, 6, &q);
    assert_eq!((figures.len, figures.leased), (0, 0));
}

#[test]
fn a_blocked_take_is_answered_as_soon_as_a_put_commits() {
    let mut sim = ring(8, 2, QueueConfig::default());
    let q = name("wake-me");
    let take_op = sim.queue_take(2, &q, Duration::from_secs(20), Duration::from_secs(30));
    sim.run_until(sim.now() + Duration::from_secs(3));
    assert!(
        !sim.take_queue_events()
            .iter()
            .any(|r| r.node == 2 && matches!(r.event, QueueEvent::Done { op, .. } if op == take_op)),
        "nothing to take yet"
    );
    let (put_op, id) = sim.queue_put(5, &q, b"hello".to_vec());
    let put_at = sim.now();
    let mut put_done = None;
    let mut taken = None;
    let deadline = put_at + Duration::from_secs(5);
    while (put_done.is_none() || taken.is_none()) && sim.now() < deadline {
        sim.run_until(sim.now() + Duration::from_millis(1));
        for record in sim.take_queue_events() {
            match record.event {
                QueueEvent::Done { op, result } if op == put_op && record.node == 5 => {
                    put_done = Some((record.at, result))
                }
                QueueEvent::Done { op, result } if op == take_op && record.node == 2 => {
                    taken = Some((record.at, result))
                }
                _ => {}
            }
        }
    }
    let (put_at_done, _) = put_done.expect("the put was acknowledged");
    let (taken_at, result) = taken.expect("the take was answered");
    let Ok(QueueOutcome::Taken(Some(leased))) = result else { panic!("unexpected {result:?}") };
    assert_eq!(leased.message.id, id);
    // The ordering node hands the message over when the put commits, the moment it acknowledges
    // the put: the consumer and the producer hear within one network trip of each other (the
    // model's mean one-way delay is 50 ms).
    let apart = if taken_at > put_at_done {
        taken_at.saturating_since(put_at_done)
    } else {
        put_at_done.saturating_since(taken_at)
    };
    assert!(apart < Duration::from_millis(500), "taken {apart:?} apart from the put's acknowledgement");
}

#[test]
fn a_lease_that_runs_out_hands_the_message_to_the_next_consumer() {
    let mut sim = ring(6, 3, QueueConfig::default());
    let q = name("leases");
    put(&mut sim, 0, &q, b"x");
    let op = sim.queue_take(1, &q, Duration::ZERO, Duration::from_secs(1));
    let Ok(QueueOutcome::Taken(Some(first))) = wait_op(&mut sim, 1, op, &mut Vec::new()) else { panic!() };
    assert!(take(&mut sim, 2, &q, Duration::ZERO).is_none(), "leased messages are not handed out twice");
    sim.run_until(sim.now() + Duration::from_secs(2));
    let second = take(&mut sim, 2, &q, Duration::ZERO).expect("the lease ran out");
    assert_eq!(second.message.id, first.message.id);
    assert_eq!(ack(&mut sim, 1, &q, &first), AckOutcome::LeasedToAnother);
    assert_eq!(ack(&mut sim, 2, &q, &second), AckOutcome::Removed);
    assert!(
        sim.queues(0).counters().lease_expiries
            + (1..6).map(|i| sim.queues(i).counters().lease_expiries).sum::<u64>()
            >= 1
    );
}

#[test]
fn a_retried_put_is_stored_once() {
    let mut sim = ring(6, 4, QueueConfig::default());
    let q = name("retries");
    let (_, id) = put(&mut sim, 0, &q, b"once");
    // The same put id through another node, as a client retrying after a lost answer would.
    let op = sim.queue_put_with_id(4, &q, id, b"once".to_vec());
    let Ok(QueueOutcome::Put { .. }) = wait_op(&mut sim, 4, op, &mut Vec::new()) else { panic!() };
    assert_eq!(stats(&mut sim, 2, &q).len, 1);
}

#[test]
fn a_full_queue_refuses_and_stores_nothing() {
    let config = QueueConfig { max_messages: 3, ..QueueConfig::default() };
    let mut sim = ring(5, 5, config);
    let q = name("small");
    for k in 0..3u8 {
        put(&mut sim, 0, &q, &[k]);
    }
    let (op, _) = sim.queue_put(1, &q, vec![9]);
    assert_eq!(wait_op(&mut sim, 1, op, &mut Vec::new()), Err(QueueError::Refused(Refusal::Full)));
    assert_eq!(stats(&mut sim, 2, &q).len, 3);
    let (op, _) = sim.queue_put(1, &q, vec![0; MAX_QUEUE_BODY_BYTES + 1]);
    assert!(matches!(wait_op(&mut sim, 1, op, &mut Vec::new()), Err(QueueError::TooLarge { .. })));
}

#[test]
fn subscribers_hear_of_every_put_once_in_order() {
    let mut sim = ring(8, 6, QueueConfig::default());
    let q = name("feed");
    put(&mut sim, 0, &q, b"before");
    let sub = sim.queue_subscribe(4, &q).unwrap();
    sim.run_until(sim.now() + Duration::from_secs(1));
    let mut heard: Vec<Vec<u8>> = Vec::new();
    let mut collect = |records: Vec<QueueRecord>| {
        for record in records {
            if let QueueEvent::Notified { sub: s, messages } = record.event {
                assert_eq!(s, sub);
                heard.extend(messages.into_iter().map(|m| m.body));
            }
        }
    };
    collect(sim.take_queue_events());
    for k in 0..10u8 {
        let (op, _) = sim.queue_put(k as usize % 8, &q, vec![k]);
        let mut others = Vec::new();
        wait_op(&mut sim, k as usize % 8, op, &mut others).unwrap();
        collect(others);
    }
    // Renewals happen in between; nothing is heard twice.
    sim.run_until(sim.now() + Duration::from_secs(20));
    collect(sim.take_queue_events());
    let mut expected = vec![b"before".to_vec()];
    expected.extend((0..10u8).map(|k| vec![k]));
    assert_eq!(heard, expected);
}

#[test]
fn nothing_acknowledged_is_lost_or_taken_twice_when_the_ordering_node_crashes() {
    let mut sim = ring(12, 7, QueueConfig::default());
    let q = name("work");
    let qid = q.id();
    let owner = (0..12).find(|&i| sim.node(i).owns(&qid)).unwrap();
    let producers: Vec<usize> = (0..12).filter(|&i| i != owner).take(4).collect();
    let consumers: Vec<usize> = (0..12).filter(|&i| i != owner && !producers.contains(&i)).take(3).collect();
    let total = 300usize;
    let mut acknowledged_puts: HashMap<MsgId, u64> = HashMap::new();
    let mut put_ops: BTreeMap<(usize, QueueOpId), MsgId> = BTreeMap::new();
    let mut take_ops: BTreeMap<(usize, QueueOpId), ()> = BTreeMap::new();
    let mut ack_ops: BTreeMap<(usize, QueueOpId), MsgId> = BTreeMap::new();
    let mut removed: HashMap<MsgId, u32> = HashMap::new();
    let mut sent = 0;
    let mut crashed = false;
    for c in &consumers {
        let op = sim.queue_take(*c, &q, Duration::from_secs(5), Duration::from_secs(10));
        take_ops.insert((*c, op), ());
    }
    let deadline = sim.now() + Duration::from_secs(600);
    while sim.now() < deadline {
        if sent < total {
            for p in &producers {
                if sent < total {
                    let (op, id) = sim.queue_put(*p, &q, (sent as u32).to_be_bytes().to_vec());
                    put_ops.insert((*p, op), id);
                    sent += 1;
                }
            }
        }
        if !crashed && sent >= total / 2 {
            sim.crash(owner);
            crashed = true;
        }
        sim.run_until(sim.now() + Duration::from_millis(20));
        for record in sim.take_queue_events() {
            let QueueEvent::Done { op, result } = record.event else { continue };
            let key = (record.node, op);
            if let Some(id) = put_ops.remove(&key) {
                match result {
                    Ok(QueueOutcome::Put { seq, .. }) => {
                        acknowledged_puts.insert(id, seq);
                    }
                    // Not acknowledged: the producer would retry; here it simply puts again.
                    Err(_) => {
                        let (op, id2) = sim.queue_put(record.node, &q, b"retry".to_vec());
                        let _ = id;
                        put_ops.insert((record.node, op), id2);
                    }
                    Ok(other) => panic!("unexpected {other:?}"),
                }
            } else if take_ops.remove(&key).is_some() {
                if let Ok(QueueOutcome::Taken(Some(leased))) = &result {
                    let op =
                        sim.queue_ack(record.node, &q, leased.message.seq, leased.message.id, leased.lease);
                    ack_ops.insert((record.node, op), leased.message.id);
                } else {
                    let op = sim.queue_take(record.node, &q, Duration::from_secs(5), Duration::from_secs(10));
                    take_ops.insert((record.node, op), ());
                }
            } else if let Some(id) = ack_ops.remove(&key) {
                if let Ok(QueueOutcome::Acked(AckOutcome::Removed)) = result {
                    *removed.entry(id).or_default() += 1;
                }
                let op = sim.queue_take(record.node, &q, Duration::from_secs(5), Duration::from_secs(10));
                take_ops.insert((record.node, op), ());
            }
        }
        if sent >= total && put_ops.is_empty() && acknowledged_puts.keys().all(|id| removed.contains_key(id))
        {
            break;
        }
    }
    assert!(crashed);
    assert!(acknowledged_puts.len() >= total, "only {} puts acknowledged", acknowledged_puts.len());
    let lost: Vec<&MsgId> = acknowledged_puts.keys().filter(|id| !removed.contains_key(id)).collect();
    assert!(lost.is_empty(), "{} acknowledged messages never taken", lost.len());
    assert!(removed.values().all(|&n| n == 1), "a message was acknowledged as removed twice");
    let takeovers: u64 = (0..12).filter(|&i| i != owner).map(|i| sim.queues(i).counters().takeovers).sum();
    assert!(takeovers >= 1, "a successor took the queue over");
}

#[test]
fn garbage_from_a_peer_is_dropped_and_counted() {
    let mut sim = ring(4, 8, QueueConfig::default());
    let from = sim.addr(1);
    let oversized = QueueMessage::Put {
        req: 1,
        queue: name("q"),
        id: MsgId(1),
        sender: "x".repeat(MAX_TAG_BYTES_FOR_TEST + 1),
        quota: None,
        body: vec![],
        put_ms: 0,
    };
    sim.deliver_queue_now(0, from, oversized);
    let unexpected = QueueMessage::<SimAddr>::Replicated { req: 424_242 };
    sim.deliver_queue_now(0, from, unexpected);
    let bad_seq = QueueMessage::Replicate {
        req: 2,
        queue: name("q"),
        epoch: 0,
        changes: vec![wire::ReplicaChange::Put(StoredMessage {
            seq: 5,
            id: MsgId(2),
            sender: String::new(),
            body: vec![],
            put_ms: 0,
        })],
    };
    sim.deliver_queue_now(0, from, bad_seq);
    assert_eq!(sim.queues(0).counters().dropped, 3);
    assert!(sim.queues(0).held().is_empty(), "nothing was stored");
}

const MAX_TAG_BYTES_FOR_TEST: usize = wire::MAX_TAG_BYTES;

/// Records that `seq` named `id`; fails if it named another message before.
fn name_it(named: &mut BTreeMap<u64, MsgId>, seq: u64, id: MsgId) {
    let first = *named.entry(seq).or_insert(id);
    assert_eq!(first, id, "sequence number {seq:#x} names two messages");
}

/// A queue split by a partition: both sides put, take and acknowledge on the same queue (the
/// ordering node on one side, its first successor — which takes over — on the other), then the
/// network heals. After the merge one node orders the queue; every acknowledged put was removed
/// by an acknowledgement or is handed out exactly once when the queue is drained; and no sequence
/// number ever named two messages, in any answer to a put or a take.
#[test]
fn a_queue_split_in_two_has_one_ordering_node_and_loses_nothing_after_the_heal() {
    let n = 16;
    let mut sim = ring(n, 21, QueueConfig::default());
    let q = name("split-jobs");
    let qid = q.id();
    let owner = (0..n).find(|&i| sim.node(i).owns(&qid)).unwrap();
    let successor = sim.node(owner).successors()[0].addr.index();
    let mut sides: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
    sides[owner] = 0;
    sides[successor] = 1;
    let on = |side: u8| -> Vec<usize> {
        (0..n).filter(|&i| sides[i] == side && i != owner && i != successor).take(2).collect()
    };
    let (left, right) = (on(0), on(1));
    // seq → id, from every put acknowledgement and every message taken.
    let mut named: BTreeMap<u64, MsgId> = BTreeMap::new();
    let mut acked_puts: BTreeMap<MsgId, u64> = BTreeMap::new();
    let mut removed: BTreeMap<MsgId, u32> = BTreeMap::new();

    // Before the split: six puts, two of them taken and acknowledged.
    for k in 0..6u8 {
        let (seq, id) = put(&mut sim, left[0], &q, &[b'p', k]);
        name_it(&mut named, seq, id);
        acked_puts.insert(id, seq);
    }
    for _ in 0..2 {
        let leased = take(&mut sim, right[0], &q, Duration::ZERO).expect("a message waits");
        name_it(&mut named, leased.message.seq, leased.message.id);
        assert_eq!(ack(&mut sim, right[0], &q, &leased), AckOutcome::Removed);
        *removed.entry(leased.message.id).or_default() += 1;
    }

    sim.partition(sides.clone());
    // Each side closes its ring; the successor's side takes the queue over.
    sim.run_until(sim.now() + Duration::from_secs(30));
    for (side, nodes) in [(0u8, &left), (1, &right)] {
        for k in 0..5u8 {
            let (op, id) = sim.queue_put(nodes[k as usize % 2], &q, vec![b'0' + side, k]);
            if let Ok(QueueOutcome::Put { seq, id: put_id }) =
                wait_op(&mut sim, nodes[k as usize % 2], op, &mut Vec::new())
            {
                assert_eq!(put_id, id);
                name_it(&mut named, seq, id);
                acked_puts.insert(id, seq);
            }
        }
        for _ in 0..3 {
            let op = sim.queue_take(nodes[1], &q, Duration::ZERO, Duration::from_secs(30));
            let Ok(QueueOutcome::Taken(Some(leased))) = wait_op(&mut sim, nodes[1], op, &mut Vec::new())
            else {
                continue;
            };
            name_it(&mut named, leased.message.seq, leased.message.id);
            let op = sim.queue_ack(nodes[1], &q, leased.message.seq, leased.message.id, leased.lease);
            if let Ok(QueueOutcome::Acked(AckOutcome::Removed)) =
                wait_op(&mut sim, nodes[1], op, &mut Vec::new())
            {
                *removed.entry(leased.message.id).or_default() += 1;
            }
        }
    }
    let takeovers: u64 = right.iter().chain([&successor]).map(|&i| sim.queues(i).counters().takeovers).sum();
    assert!(takeovers >= 1, "the successor's side took the queue over");
    let epochs: BTreeSet<u64> = named.keys().map(|seq| seq >> 40).collect();
    assert!(epochs.len() >= 2, "both sides numbered during the split: epochs {epochs:?}");
    let split_puts = acked_puts.len() - 6;
    assert!(split_puts >= 8, "both sides served puts during the split: {split_puts}");

    sim.heal();
    sim.run_until(sim.now() + Duration::from_secs(120));
    let ordering: Vec<usize> =
        (0..n).filter(|&i| sim.queues(i).held().iter().any(|(held, _, owns)| *held == q && *owns)).collect();
    assert_eq!(ordering.len(), 1, "one ordering node after the merge: {ordering:?}");

    // Drain: everything acknowledged and not removed comes out exactly once.
    let mut drained: BTreeMap<MsgId, u32> = BTreeMap::new();
    while let Some(leased) = take(&mut sim, left[1], &q, Duration::ZERO) {
        name_it(&mut named, leased.message.seq, leased.message.id);
        assert_eq!(ack(&mut sim, left[1], &q, &leased), AckOutcome::Removed);
        *drained.entry(leased.message.id).or_default() += 1;
        assert!(drained.len() <= acked_puts.len(), "the drain does not end");
    }
    assert!(drained.values().all(|&c| c == 1), "a message was handed out twice after the merge");
    for id in acked_puts.keys() {
        assert!(
            removed.contains_key(id) || drained.contains_key(id),
            "acknowledged put {id:?} neither removed nor present"
        );
        assert!(
            !(removed.contains_key(id) && drained.contains_key(id)),
            "put {id:?} came back after it was removed"
        );
    }
}
