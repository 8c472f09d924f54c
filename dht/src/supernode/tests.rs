#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::wire::{self, MAX_FRAME_BYTES, MAX_LISTING, MAX_PAYLOAD_BYTES, SuperDecodeError, shard_of};
use super::*;
use crate::sim::SimAddr;
use crate::sim::supernodes::{SupernodeParams, run};
use crate::time::Time;

fn a(n: u64) -> SimAddr {
    SimAddr(n)
}

fn ms(n: u64) -> Time {
    Time::ZERO + Duration::from_millis(n)
}

fn info(addr: SimAddr, leaves: u32, cap: u32) -> SupernodeInfo<SimAddr> {
    SupernodeInfo { addr, load: Load { leaves, cap } }
}

fn drain_host(host: &mut Host<SimAddr>) -> Vec<(SimAddr, SuperMessage<SimAddr>)> {
    std::iter::from_fn(|| host.poll_transmit()).collect()
}

fn drain_leaf(leaf: &mut Leaf<SimAddr>) -> Vec<(SimAddr, SuperMessage<SimAddr>)> {
    std::iter::from_fn(|| leaf.poll_transmit()).collect()
}

/// A supernode whose cache of alternatives holds `others` (learned from a directory listing).
fn host_with_alternatives(config: HostConfig, others: Vec<SupernodeInfo<SimAddr>>) -> Host<SimAddr> {
    let mut host = Host::new(a(1), config, 7, ms(0));
    host.handle_timeout(ms(0));
    let keys: Vec<_> = std::iter::from_fn(|| host.poll_lookup()).collect();
    assert!(!keys.is_empty(), "a new supernode looks up its directory shard");
    for key in keys {
        host.handle_owner(key, Some(a(100)), ms(0));
    }
    let query = drain_host(&mut host)
        .into_iter()
        .find_map(|(to, m)| match m {
            SuperMessage::Query { req, .. } if to == a(100) => Some(req),
            _ => None,
        })
        .unwrap();
    host.handle_message(a(100), SuperMessage::Listing { req: query, supernodes: others }, ms(1));
    host
}

fn attach(host: &mut Host<SimAddr>, leaf: SimAddr, req: u64, now: Time) -> SuperMessage<SimAddr> {
    host.handle_message(leaf, SuperMessage::Attach { req }, now);
    let mut out = drain_host(host);
    assert_eq!(out.len(), 1);
    let (to, message) = out.remove(0);
    assert_eq!(to, leaf);
    message
}

#[test]
fn full_supernode_redirects_with_alternatives() {
    let others = vec![info(a(2), 10, 100), info(a(3), 100, 100)];
    let mut host = host_with_alternatives(HostConfig::default().with_max_leaves(2), others);
    assert!(matches!(attach(&mut host, a(10), 1, ms(10)), SuperMessage::Attached { .. }));
    assert!(matches!(attach(&mut host, a(11), 1, ms(10)), SuperMessage::Attached { .. }));
    match attach(&mut host, a(12), 1, ms(10)) {
        SuperMessage::Refused { reason: Refusal::Full, alternatives, retry_after_ms, .. } => {
            // Only the alternative with free slots is offered.
            assert_eq!(alternatives, vec![info(a(2), 10, 100)]);
            assert!(retry_after_ms > 0);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(host.load(), Load { leaves: 2, cap: 2 });
    assert_eq!(host.peak_leaves(), 2);
    // Attaching again while attached is idempotent and does not count twice.
    assert!(matches!(attach(&mut host, a(10), 2, ms(20)), SuperMessage::Attached { .. }));
    assert_eq!(host.load().leaves, 2);

    // A leaf refused by it follows the alternative at once.
    let mut leaf = Leaf::new(vec![a(1)], LeafConfig::default(), 5, ms(0));
    leaf.handle_timeout(ms(0));
    let (to, message) = drain_leaf(&mut leaf).remove(0);
    assert_eq!(to, a(1));
    let SuperMessage::Attach { req } = message else { panic!("expected an attach") };
    leaf.handle_message(
        a(1),
        SuperMessage::Refused {
            req,
            reason: Refusal::Full,
            retry_after_ms: 5000,
            alternatives: vec![info(a(2), 10, 100)],
        },
        ms(50),
    );
    let sent = drain_leaf(&mut leaf);
    assert!(matches!(sent.as_slice(), [(to, SuperMessage::Attach { .. })] if *to == a(2)), "{sent:?}");
    assert_eq!(leaf.counters().redirects, 1);
}

/// Runs `leaf` from `from` to `to` in 10 ms steps; `answer` plays the supernodes (what they
/// reply to each message the leaf sent, delivered 20 ms later).
fn drive(
    leaf: &mut Leaf<SimAddr>,
    from: Time,
    to: Time,
    mut answer: impl FnMut(SimAddr, &SuperMessage<SimAddr>, Time) -> Option<SuperMessage<SimAddr>>,
    events: &mut Vec<(Time, LeafEvent<SimAddr>)>,
) {
    let mut now = from;
    let mut in_flight: Vec<(Time, SimAddr, SuperMessage<SimAddr>)> = Vec::new();
    while now <= to {
        let (due, later): (Vec<_>, Vec<_>) = in_flight.into_iter().partition(|(at, _, _)| *at <= now);
        in_flight = later;
        for (_, sender, message) in due {
            leaf.handle_message(sender, message, now);
        }
        if leaf.poll_timeout().is_some_and(|t| t <= now) {
            leaf.handle_timeout(now);
        }
        for (dest, message) in drain_leaf(leaf) {
            if let Some(reply) = answer(dest, &message, now) {
                in_flight.push((now + Duration::from_millis(20), dest, reply));
            }
        }
        while let Some(event) = leaf.poll_event() {
            events.push((now, event));
        }
        now = now + Duration::from_millis(10);
    }
}

#[test]
fn leaf_fails_over_to_its_standby_after_three_missed_heartbeats() {
    let load = Load { leaves: 10, cap: 100 };
    let mut leaf = Leaf::new(vec![a(1)], LeafConfig::default(), 9, ms(0));
    let crash = ms(5_000);
    let mut pings_to_dead = 0u32;
    let mut forwards: Vec<(SimAddr, LeafOpId)> = Vec::new();
    let mut events = Vec::new();
    // Whom the leaf attached to last, as the supernodes know it.
    let mut attached_to = None;
    let mut answer = |to: SimAddr, m: &SuperMessage<SimAddr>, now: Time| -> Option<SuperMessage<SimAddr>> {
        let alive = to != a(1) || now < crash;
        if let SuperMessage::Forward { op, .. } = m {
            forwards.push((to, *op));
            return None; // The ring never answers: the op stays pending across the switch.
        }
        if !alive {
            if matches!(m, SuperMessage::Ping { .. }) {
                pings_to_dead += 1;
            }
            return None;
        }
        match m {
            SuperMessage::Attach { req } => {
                attached_to = Some(to);
                Some(SuperMessage::Attached { req: *req, load })
            }
            SuperMessage::Ping { req } => {
                Some(SuperMessage::Pong { req: *req, attached: attached_to == Some(to), load })
            }
            SuperMessage::Alternatives { req } => {
                Some(SuperMessage::Listing { req: *req, supernodes: vec![info(a(2), 10, 100)] })
            }
            _ => None,
        }
    };
    drive(&mut leaf, ms(0), ms(2_000), &mut answer, &mut events);
    assert_eq!(leaf.supernode(), Some(&a(1)));
    assert_eq!(leaf.standby(), Some(&a(2)));
    let op = leaf.forward(b"put k v".to_vec(), ms(2_000)).unwrap();
    drive(&mut leaf, ms(2_010), ms(12_000), &mut answer, &mut events);

    let lost_at = events
        .iter()
        .find_map(|(t, e)| {
            matches!(e, LeafEvent::SupernodeLost { supernode } if *supernode == a(1)).then_some(*t)
        })
        .unwrap();
    // Exactly three heartbeats went unanswered, and the loss was noticed within four intervals
    // of the crash (three missed heartbeats plus the phase of the first).
    assert_eq!(pings_to_dead, 3);
    assert!(
        lost_at > crash + Duration::from_secs(2) && lost_at <= crash + Duration::from_secs(4),
        "{lost_at:?}"
    );
    let attached_at = events
        .iter()
        .find_map(|(t, e)| {
            matches!(e, LeafEvent::Attached { supernode, .. } if *supernode == a(2)).then_some(*t)
        })
        .unwrap();
    assert!(attached_at <= lost_at + Duration::from_millis(500), "{attached_at:?}");
    assert_eq!(leaf.supernode(), Some(&a(2)));
    // The pending operation went to the old supernode (and again after `op_retry`), then to the
    // standby, always under the same id.
    forwards.dedup();
    assert_eq!(forwards, vec![(a(1), op), (a(2), op)]);
    assert_eq!(leaf.pending_ops().collect::<Vec<_>>(), vec![op]);
    assert_eq!(leaf.counters().failovers, 1);
}

/// The delays of the backoffs a leaf goes through when every supernode refuses.
fn backoff_delays(seed: u64) -> Vec<Duration> {
    let mut leaf = Leaf::new(vec![a(1), a(2)], LeafConfig::default(), seed, ms(0));
    let mut events = Vec::new();
    drive(
        &mut leaf,
        ms(0),
        ms(60_000),
        |_, m, _| match m {
            SuperMessage::Attach { req } => Some(SuperMessage::Refused {
                req: *req,
                reason: Refusal::Full,
                retry_after_ms: 0,
                alternatives: Vec::new(),
            }),
            _ => None,
        },
        &mut events,
    );
    events
        .iter()
        .filter_map(|(t, e)| match e {
            LeafEvent::BackingOff { until } => Some(until.saturating_since(*t)),
            _ => None,
        })
        .collect()
}

#[test]
fn reattachment_backs_off_exponentially_with_jitter() {
    let config = LeafConfig::default();
    let one = backoff_delays(1);
    let two = backoff_delays(2);
    assert!(one.len() >= 5, "{one:?}");
    for delays in [&one, &two] {
        for (k, delay) in delays.iter().enumerate() {
            let d = config.backoff_base.saturating_mul(1 << k.min(20)).min(config.backoff_max);
            assert!(*delay >= d / 2 && *delay <= d, "backoff {k}: {delay:?} not in [{:?}, {d:?}]", d / 2);
        }
    }
    // Jitter: two leaves refused in step do not retry in step.
    assert_ne!(one, two);
    // Attempts between backoffs are bounded: 4 attaches per backoff, not a hammering.
    let mut leaf = Leaf::new(vec![a(1)], LeafConfig::default(), 3, ms(0));
    let mut attaches = 0;
    drive(
        &mut leaf,
        ms(0),
        ms(60_000),
        |_, m, _| match m {
            SuperMessage::Attach { req } => {
                attaches += 1;
                Some(SuperMessage::Refused {
                    req: *req,
                    reason: Refusal::Busy,
                    retry_after_ms: 0,
                    alternatives: Vec::new(),
                })
            }
            _ => None,
        },
        &mut Vec::new(),
    );
    assert!(attaches <= 4 * (leaf.counters().backoffs + 1), "{attaches} attaches");
    assert!(attaches < 60, "{attaches} attaches in a minute");
}

#[test]
fn caps_hold_under_a_mass_failover_without_room_for_everyone() {
    // 1,000 leaves over 20 supernodes of cap 60; losing 30 % leaves 14 × 60 = 840 slots.
    let mut params = SupernodeParams::new(50, 20, 1000, 0.3, 11);
    params.host = params.host.with_max_leaves(60);
    params.window = Duration::from_secs(40);
    let report = run(&params);
    assert_eq!(report.crashed, 6);
    assert_eq!(report.survivors_over_cap, 0, "{report:?}");
    assert!(report.peak_leaves_on_survivor <= 60, "{report:?}");
    assert!(report.peak_leaves_on_survivor >= 55, "the survivors filled up: {report:?}");
    // Those left without room back off and are still waiting, not attached over a cap.
    assert!(report.unattached_at_end >= 1000 - 14 * 60, "{report:?}");
    assert!(report.backoffs > 0 && report.refusals > 0, "{report:?}");
}

#[test]
fn mass_failover_reattaches_orphans_within_ten_seconds_deterministically() {
    let mut params = SupernodeParams::new(50, 20, 600, 0.3, 5);
    params.window = Duration::from_secs(30);
    let report = run(&params);
    assert!(report.orphaned > 100, "{report:?}");
    assert!(report.reattached_within_10s_pct >= 99.0, "{report:?}");
    assert_eq!(report.survivors_over_cap, 0);
    assert_eq!(report.unattached_at_end, 0, "{report:?}");
    assert_eq!(report.dropped, 0, "honest peers send nothing to drop: {report:?}");
    assert_eq!(run(&params).trace_hash, report.trace_hash);
}

#[test]
fn attach_floods_are_refused_and_counted_never_admitted_over_the_cap() {
    let config = HostConfig::default();
    let (cap, burst) = (config.max_leaves, config.stranger_burst);
    let mut host = Host::new(a(1), config, 3, ms(0));
    let flood = 2000u64;
    let (mut attached, mut full, mut busy) = (0u32, 0u32, 0u32);
    for n in 0..flood {
        host.handle_message(a(1000 + n), SuperMessage::Attach { req: n }, ms(0));
    }
    for (_, message) in drain_host(&mut host) {
        match message {
            SuperMessage::Attached { .. } => attached += 1,
            SuperMessage::Refused { reason: Refusal::Full, .. } => full += 1,
            SuperMessage::Refused { reason: Refusal::Busy, .. } => busy += 1,
            _ => {}
        }
    }
    assert_eq!(attached, cap);
    assert_eq!(host.load().leaves, cap);
    assert_eq!(full, burst - cap);
    assert_eq!(busy, flood as u32 - burst);
    assert_eq!(host.counters().throttled, u64::from(busy));
    assert_eq!(host.peak_leaves(), cap);

    // An attached leaf that floods is answered only up to its burst.
    let leaf = a(1000);
    for n in 0..1000 {
        host.handle_message(leaf, SuperMessage::Ping { req: n }, ms(6));
    }
    let pongs = drain_host(&mut host).len() as u32;
    assert_eq!(pongs, HostConfig::default().leaf_burst);
}

#[test]
fn malformed_and_unexpected_input_is_dropped_and_counted() {
    // Oversized frames are refused before parsing, oversized payloads after.
    let huge = vec![0u8; MAX_FRAME_BYTES + 1];
    assert!(matches!(wire::decode::<SimAddr>(&huge), Err(SuperDecodeError::TooLarge { .. })));
    let forward: SuperMessage<SimAddr> =
        SuperMessage::Forward { op: LeafOpId(1), payload: vec![7; MAX_PAYLOAD_BYTES + 1] };
    assert!(matches!(wire::decode::<SimAddr>(&wire::encode(&forward)), Err(SuperDecodeError::Invalid(_))));
    assert!(matches!(wire::decode::<SimAddr>(b"\xff\x00garbage"), Err(SuperDecodeError::Malformed(_))));
    let ok: SuperMessage<SimAddr> = SuperMessage::Refused {
        req: 3,
        reason: Refusal::Full,
        retry_after_ms: 10,
        alternatives: vec![info(a(2), 1, 2)],
    };
    assert_eq!(wire::decode::<SimAddr>(&wire::encode(&ok)).unwrap(), ok);

    // The leaf: unknown request ids, answers from strangers, oversized lists, impossible loads.
    let mut leaf = Leaf::new(vec![a(1)], LeafConfig::default(), 1, ms(0));
    leaf.handle_timeout(ms(0));
    let SuperMessage::Attach { req } = drain_leaf(&mut leaf).remove(0).1 else { panic!() };
    let load = Load { leaves: 1, cap: 10 };
    leaf.handle_message(a(9), SuperMessage::Attached { req, load }, ms(1)); // wrong sender
    leaf.handle_message(a(1), SuperMessage::Attached { req: req + 77, load }, ms(1)); // unknown id
    leaf.handle_message(a(1), SuperMessage::Pong { req: 999, attached: true, load }, ms(1));
    let long = vec![info(a(5), 1, 10); MAX_LISTING + 1];
    leaf.handle_message(a(1), SuperMessage::Listing { req: 1, supernodes: long }, ms(1));
    leaf.handle_message(a(1), SuperMessage::Attached { req, load: Load { leaves: 11, cap: 10 } }, ms(1));
    leaf.handle_message(a(1), SuperMessage::Reply { op: LeafOpId(4), result: Err(OpRefusal::Failed) }, ms(1));
    leaf.handle_message(a(1), SuperMessage::Attach { req: 1 }, ms(1)); // not a leaf's message
    assert_eq!(leaf.counters().dropped, 7);
    assert_eq!(leaf.supernode(), None);
    leaf.handle_message(a(1), SuperMessage::Attached { req, load }, ms(2));
    assert_eq!(leaf.supernode(), Some(&a(1)));

    // The host: answers it never asked for, messages for others.
    let mut host = Host::new(a(1), HostConfig::default(), 1, ms(0));
    host.handle_message(a(5), SuperMessage::Listing { req: 42, supernodes: Vec::new() }, ms(1));
    host.handle_message(a(5), SuperMessage::Advertised { req: 42, accepted: true }, ms(1));
    host.handle_message(a(5), SuperMessage::Pong { req: 1, attached: true, load }, ms(1));
    host.handle_message(a(5), SuperMessage::Advertise { req: 1, load, ttl_ms: u32::MAX }, ms(1));
    assert_eq!(host.counters().dropped, 4);
    assert!(drain_host(&mut host).is_empty());
    // An operation from a stranger is refused, not carried.
    host.handle_message(a(5), SuperMessage::Forward { op: LeafOpId(1), payload: vec![1] }, ms(2));
    assert!(host.poll_event().is_none());
    assert!(matches!(
        drain_host(&mut host).as_slice(),
        [(_, SuperMessage::Reply { result: Err(OpRefusal::NotAttached), .. })]
    ));
}

#[test]
fn directory_lists_only_live_entries_with_room_for_the_shards_it_holds() {
    let mut directory: Directory<SimAddr> = Directory::new(1);
    // Three supernodes of the same shard.
    let same: Vec<SimAddr> = (10..200).map(a).filter(|s| shard_of(s) == shard_of(&a(10))).take(3).collect();
    let shard = shard_of(&same[0]);
    let advertise = |d: &mut Directory<SimAddr>, who: SimAddr, leaves: u32, holds: bool, now: Time| {
        d.handle_message(
            who,
            SuperMessage::Advertise { req: 1, load: Load { leaves, cap: 10 }, ttl_ms: 1000 },
            |_| holds,
            now,
        );
        match d.poll_transmit() {
            Some((to, SuperMessage::Advertised { accepted, .. })) if to == who => accepted,
            other => panic!("{other:?}"),
        }
    };
    assert!(!advertise(&mut directory, same[0], 1, false, ms(0)), "not held here");
    assert!(advertise(&mut directory, same[0], 1, true, ms(0)));
    assert!(advertise(&mut directory, same[1], 10, true, ms(0)));
    assert!(advertise(&mut directory, same[2], 5, true, ms(500)));
    let query = |d: &mut Directory<SimAddr>, now: Time| {
        d.handle_message(a(99), SuperMessage::Query { req: 7, shard, limit: 32 }, |_| true, now);
        match d.poll_transmit() {
            Some((_, SuperMessage::Listing { req: 7, supernodes })) => {
                let mut addrs: Vec<SimAddr> = supernodes.into_iter().map(|s| s.addr).collect();
                addrs.sort();
                addrs
            }
            other => panic!("{other:?}"),
        }
    };
    let mut expected = vec![same[0], same[2]];
    expected.sort();
    assert_eq!(query(&mut directory, ms(600)), expected, "the full one is not listed");
    assert_eq!(query(&mut directory, ms(1_200)), vec![same[2]], "the first entry expired");
    assert!(query(&mut directory, ms(2_000)).is_empty());
    directory.handle_message(a(99), SuperMessage::Query { req: 8, shard: 200, limit: 1 }, |_| true, ms(0));
    assert_eq!(directory.counters().dropped, 1);
}
