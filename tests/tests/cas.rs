//! Compare-and-set end to end: `PUT ?if-version` / `?if-absent` answer 412 with the current
//! version when the key moved on, and eight clients incrementing one counter through random nodes
//! end at exactly the number of increments, with and without a node killed mid-run.
//!
//! Each increment is tagged (the counter's value records every client's last applied increment),
//! so a client whose write's outcome is unknown (504) finds out with a linearizable read whether
//! it took effect: the way an application counts exactly over a store whose writes can time out.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use overlay_api::client::ApiError;
use overlay_api::{Condition, Consistency, PutOutcome};
use overlay_tests::{Cluster, Http, poll};

const NODE: &str = env!("CARGO_BIN_EXE_overlay-node-e2e");
const CLIENTS: usize = 8;
const INCREMENTS: u32 = 100;

#[test]
fn conditional_writes_answer_412_with_the_current_version() {
    let cluster = Cluster::start(NODE, 3, &[]);
    cluster.wait_for_correct_ring(Duration::from_secs(15));
    let api = cluster.http(0);
    let api = api.api();
    let (outcome, first) = api.put_if("cas-k", b"one", &Condition::Absent).expect("absent: written");
    assert_eq!(outcome, PutOutcome::Created);
    let again = api.put_if("cas-k", b"again", &Condition::Absent).expect_err("no longer absent");
    let ApiError::Conflict { current_version, .. } = again else { panic!("a conflict: {again:?}") };
    assert_eq!(current_version.as_deref(), Some(first.parsed.version.as_str()));
    // The version a read reports is the one to pass.
    let read = cluster.http(1).api().get("cas-k", None).expect("read");
    assert_eq!(read.version.as_deref(), Some(first.parsed.version.as_str()));
    let (_, second) = api
        .put_if("cas-k", b"two", &Condition::Version(first.parsed.version.clone()))
        .expect("matching version");
    let stale = api.put_if("cas-k", b"three", &Condition::Version(first.parsed.version.clone()));
    let Err(ApiError::Conflict { current_version, .. }) = stale else { panic!("a conflict: {stale:?}") };
    assert_eq!(current_version.as_deref(), Some(second.parsed.version.as_str()));
    assert_eq!(
        cluster.http(2).api().get("cas-k", Some(Consistency::Linearizable)).expect("read").value,
        b"two"
    );
    // A malformed version is a bad request, not a conflict.
    let bad = cluster.http(0).put("/v1/kv/cas-k?if-version=yesterday", b"x").expect("answer");
    assert_eq!(bad.status, 400);
    // A conditional delete.
    api.delete_if("cas-k", &Condition::Version(second.parsed.version.clone())).expect("delete");
    api.put_if("cas-k", b"back", &Condition::Absent).expect("absent again after the delete");
}

/// Waits until every node's successor list names the next `min(3, n − 1)` nodes in ring order:
/// compare-and-set is exact only while the nodes agree on replica sets (see `dht::kv::cas`).
fn wait_for_settled_views(cluster: &Cluster) {
    poll("every successor list complete and right", Duration::from_secs(30), || {
        let statuses = cluster.statuses()?;
        let mut ring: Vec<(&str, &str)> =
            statuses.values().map(|s| (s.ring_id.as_str(), s.peer_id.as_str())).collect();
        ring.sort();
        let n = ring.len();
        let settled = statuses.values().all(|status| {
            let me = ring.iter().position(|(_, peer)| *peer == status.peer_id).expect("listed");
            let expected = (1..n.min(4)).map(|k| ring[(me + k) % n].1);
            status.successors.len() >= n.min(4) - 1
                && expected.zip(&status.successors).all(|(peer, s)| s.peer_id == peer)
        });
        Ok(settled.then_some(()))
    });
}

#[test]
fn eight_clients_count_exactly() {
    let mut cluster = Cluster::start(NODE, 4, &[]);
    cluster.wait_for_correct_ring(Duration::from_secs(15));
    wait_for_settled_views(&cluster);
    let report = count(&mut cluster, None);
    eprintln!("{report:?}");
    assert_eq!(report.final_count, u64::from(INCREMENTS) * CLIENTS as u64, "{report:?}");
    assert!(report.conflicts > 0, "the clients contended: {report:?}");
}

#[test]
fn eight_clients_count_exactly_with_a_node_killed() {
    let mut cluster = Cluster::start(NODE, 5, &[]);
    cluster.wait_for_correct_ring(Duration::from_secs(15));
    wait_for_settled_views(&cluster);
    // Kill one of the counter's replicas, once a quarter of the increments are in.
    let lookup = cluster.http(0).api().lookup("counter").expect("lookup");
    let victim_peer = lookup.parsed.replicas[1].peer_id.clone();
    let victim = (0..5)
        .find(|&i| cluster.http(i).status().is_ok_and(|s| s.peer_id == victim_peer))
        .expect("the replica is one of ours");
    let report = count(&mut cluster, Some(victim));
    eprintln!("{report:?}");
    assert_eq!(report.final_count, u64::from(INCREMENTS) * CLIENTS as u64, "{report:?}");
    assert!(report.killed, "{report:?}");
}

/// What a run measured; printed by the tests (`--nocapture`) for the record.
#[derive(Debug)]
#[allow(dead_code)]
struct Report {
    final_count: u64,
    conflicts: u64,
    unknown: u64,
    killed: bool,
    seconds: f64,
}

/// The counter's state: `count;t0,t1,…` with each client's last applied increment.
fn parse(value: &[u8]) -> (u64, Vec<u32>) {
    let text = std::str::from_utf8(value).expect("the counter is text");
    let (count, tags) = text.split_once(';').expect("count;tags");
    let tags = tags.split(',').map(|t| t.parse().expect("a tag")).collect();
    (count.parse().expect("a count"), tags)
}

fn encode(count: u64, tags: &[u32]) -> Vec<u8> {
    let tags: Vec<String> = tags.iter().map(u32::to_string).collect();
    format!("{count};{}", tags.join(",")).into_bytes()
}

/// Runs the clients; kills node `victim` (never one a client uses) once a quarter is done.
fn count(cluster: &mut Cluster, victim: Option<usize>) -> Report {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(240);
    let targets: Vec<usize> = (0..cluster.running().len()).filter(|&i| Some(i) != victim).collect();
    let https: Vec<Http> = targets.iter().map(|&i| cluster.http(i)).collect();
    let done = AtomicU64::new(0);
    let conflicts = AtomicU64::new(0);
    let unknown = AtomicU64::new(0);
    let finished = AtomicUsize::new(0);
    let mut killed = false;
    std::thread::scope(|scope| {
        for client in 0..CLIENTS {
            let (https, done, conflicts, unknown, finished) =
                (&https, &done, &conflicts, &unknown, &finished);
            scope.spawn(move || {
                let mut seed = client as u64 * 7919 + 1;
                let mut pick = || {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (seed >> 33) as usize % https.len()
                };
                // The state last seen: (version, count, tags); `None` version: the key is absent.
                let mut seen: (Option<String>, u64, Vec<u32>) = (None, 0, vec![0; CLIENTS]);
                let mut next = 1u32;
                let mut last_written: Option<String> = None;
                while next <= INCREMENTS {
                    assert!(Instant::now() < deadline, "client {client} stuck at increment {next}");
                    let (version, count, tags) = &seen;
                    if tags[client] + 1 != next {
                        eprintln!(
                            "client {client}: increment {next} composed on version {version:?} whose tag is {} (last written {last_written:?})",
                            tags[client]
                        );
                    }
                    let mut new_tags = tags.clone();
                    new_tags[client] = next;
                    let value = encode(count + 1, &new_tags);
                    let condition = version.clone().map_or(Condition::Absent, Condition::Version);
                    let api = https[pick()].api();
                    match api.put_if("counter", &value, &condition) {
                        Ok((_, receipt)) => {
                            last_written = Some(receipt.parsed.version.clone());
                            seen = (Some(receipt.parsed.version.clone()), count + 1, new_tags);
                            next += 1;
                            done.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Err(ApiError::Conflict { .. }) => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(ApiError::OutcomeUnknown { .. }) => {
                            unknown.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(other) => {
                            // No quorum, contention, a node restarting: nothing is known; back off.
                            let _ = other;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    // Learn the state (and whether our increment is in it) linearizably.
                    let Ok(state) = https[pick()].api().get("counter", Some(Consistency::Linearizable))
                    else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let (count, tags) = parse(&state.value);
                    if tags[client] >= next {
                        // Our write took effect after all (its outcome was unknown to us).
                        next = tags[client] + 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    seen = (state.version, count, tags);
                }
                finished.fetch_add(1, Ordering::Relaxed);
            });
        }
        if let Some(victim) = victim {
            let quarter = u64::from(INCREMENTS) * CLIENTS as u64 / 4;
            while done.load(Ordering::Relaxed) < quarter && finished.load(Ordering::Relaxed) < CLIENTS {
                assert!(Instant::now() < deadline, "the clients made no progress");
                std::thread::sleep(Duration::from_millis(10));
            }
            cluster.kill(victim);
            killed = true;
        }
    });
    let state = https[0].api().get("counter", Some(Consistency::Linearizable)).expect("final read");
    let (final_count, tags) = parse(&state.value);
    let tag_sum = tags.iter().map(|&t| u64::from(t)).sum::<u64>();
    if tag_sum != final_count {
        // Keep the nodes' logs for the post-mortem.
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("cas-failure-{}", victim.is_some()));
        let _ = std::fs::create_dir_all(&dir);
        for i in 0..cluster.running().len() + usize::from(victim.is_some()) {
            let _ = std::fs::write(dir.join(format!("node-{i}.log")), cluster.log(i));
        }
        eprintln!("logs kept in {}", dir.display());
    }
    assert_eq!(tag_sum, final_count, "count and tags agree");
    Report {
        final_count,
        conflicts: conflicts.load(Ordering::Relaxed),
        unknown: unknown.load(Ordering::Relaxed),
        killed,
        seconds: started.elapsed().as_secs_f64(),
    }
}
