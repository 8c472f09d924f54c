//! A node that leaves gracefully (SIGTERM) hands its keys off: none ends below n replicas, and it
//! exits promptly.

use std::time::Duration;

use overlay_tests::{Cluster, parallel, poll};

const NODE: &str = env!("CARGO_BIN_EXE_overlay-node-e2e");

#[test]
fn a_leaving_node_hands_off_and_no_key_drops_below_n_replicas() {
    let mut cluster = Cluster::start(NODE, 5, &[]);
    cluster.wait_for_correct_ring(Duration::from_secs(15));
    let keys: Vec<usize> = (0..300).collect();
    let failures = parallel(&keys, 4, |&i| {
        let answer = cluster
            .http(i % 5)
            .put(&format!("/v1/kv/leave-{i}"), format!("v{i}").as_bytes())
            .map_err(|e| format!("{e:#}"))?;
        if answer.status == 201 { Ok(()) } else { Err(format!("put answered {}", answer.status)) }
    });
    assert!(failures.is_empty(), "{failures:?}");

    let leaver_keys = cluster.http(2).status().expect("status").keys;
    assert!(leaver_keys > 0, "the leaving node should hold keys for this test to mean anything");
    let (took, status) = cluster.terminate(2, Duration::from_secs(10));
    assert!(status.success(), "a graceful leave exits 0, got {status}:\n{}", cluster.log(2));
    eprintln!("node 2 left in {took:?}");

    cluster.wait_for_correct_ring(Duration::from_secs(15));
    poll("every key on 3 live replicas after the leave", Duration::from_secs(30), || {
        let failures = parallel(&keys, 4, |&i| {
            let (holding, replicas) = cluster
                .replicas_holding(0, &format!("leave-{i}"), format!("v{i}").as_bytes())
                .map_err(|e| format!("{e:#}"))?;
            if holding == 3 && replicas == 3 {
                Ok(())
            } else {
                Err(format!("leave-{i}: {holding}/{replicas}"))
            }
        });
        if failures.is_empty() {
            Ok(Some(()))
        } else {
            anyhow::bail!("{} keys short, e.g. {:?}", failures.len(), failures[0])
        }
    });
}
