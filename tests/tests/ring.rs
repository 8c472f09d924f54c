//! Eight real nodes: ring formation, 1,000 keys readable everywhere, `kill -9` of two nodes with
//! repair back to n replicas, and a restart on the same data directory.

use std::time::Duration;

use overlay_tests::{Cluster, parallel, poll};

const NODE: &str = env!("CARGO_BIN_EXE_overlay-node-e2e");

const KEYS: usize = 1_000;

fn key(i: usize) -> String {
    format!("key-{i:04}")
}

fn value(i: usize) -> Vec<u8> {
    format!("value of key {i} — {}", "x".repeat(i % 50)).into_bytes()
}

#[test]
fn eight_nodes_keep_every_key_through_crashes_and_restarts() {
    let mut cluster = Cluster::start(NODE, 8, &[]);
    let took = cluster.wait_for_correct_ring(Duration::from_secs(10));
    eprintln!("8 nodes formed a correct ring {took:?} after the last one started");

    // 1,000 keys, written through every node in turn.
    let indexes: Vec<usize> = (0..KEYS).collect();
    let failures = parallel(&indexes, 8, |&i| {
        let answer = cluster
            .http(i % 8)
            .put(&format!("/v1/kv/{}", key(i)), &value(i))
            .map_err(|e| format!("{e:#}"))?;
        if answer.status == 201 { Ok(()) } else { Err(format!("put {} answered {}", key(i), answer.status)) }
    });
    assert!(failures.is_empty(), "{} puts failed, e.g. {:?}", failures.len(), failures.first());

    // Every key readable from every node, with its value.
    let pairs: Vec<(usize, usize)> = (0..8).flat_map(|n| (0..KEYS).map(move |i| (n, i))).collect();
    let failures = parallel(&pairs, 8, |&(n, i)| {
        let answer = cluster.http(n).get(&format!("/v1/kv/{}", key(i))).map_err(|e| format!("{e:#}"))?;
        if answer.status == 200 && answer.body == value(i) {
            Ok(())
        } else {
            Err(format!(
                "node {n} read {} as {} {:?}",
                key(i),
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ))
        }
    });
    assert!(failures.is_empty(), "{} reads failed, e.g. {:?}", failures.len(), failures.first());

    // Node 3 holds some keys; remember how many, then crash it and node 6.
    let held_before = cluster.http(3).status().expect("status").keys;
    let ring_id_before = cluster.http(3).status().expect("status").ring_id;
    assert!(held_before > 0, "node 3 holds no keys");
    cluster.kill(3);
    cluster.kill(6);
    let crashed = std::time::Instant::now();

    // Once repair has run (the issue allows 30 s with default settings): every key readable, and
    // held by n = 3 live replicas.
    poll("every key back on 3 live replicas", Duration::from_secs(30), || {
        let failures = parallel(&indexes, 8, |&i| {
            let (holding, replicas) =
                cluster.replicas_holding(0, &key(i), &value(i)).map_err(|e| format!("{e:#}"))?;
            if holding == 3 && replicas == 3 {
                Ok(())
            } else {
                Err(format!("{}: {holding}/{replicas}", key(i)))
            }
        });
        if failures.is_empty() {
            Ok(Some(()))
        } else {
            anyhow::bail!("{} keys under-replicated, e.g. {:?}", failures.len(), failures.first())
        }
    });
    eprintln!("all {KEYS} keys back on 3 live replicas {:?} after the crash", crashed.elapsed());
    let failures = parallel(&indexes, 8, |&i| {
        let answer = cluster.http(1).get(&format!("/v1/kv/{}", key(i))).map_err(|e| format!("{e:#}"))?;
        if answer.status == 200 && answer.body == value(i) { Ok(()) } else { Err(key(i)) }
    });
    assert!(
        failures.is_empty(),
        "{} keys unreadable after the crash, e.g. {:?}",
        failures.len(),
        failures.first()
    );

    // Node 3 comes back on its data directory with the same id and its data.
    cluster.restart(3);
    let status = cluster.http(3).status().expect("status");
    assert_eq!(status.ring_id, ring_id_before, "a restarted node keeps its identity");
    assert!(status.keys >= held_before, "the restarted node lost data: {} < {held_before}", status.keys);
    cluster.wait_for_correct_ring(Duration::from_secs(20));
    let answer = cluster.http(3).get(&format!("/v1/kv/{}", key(7))).expect("get");
    assert_eq!((answer.status, answer.body), (200, value(7)));
}
