//! `overlay demo` end to end, as the README's quick start runs it: the real CLI starts a 5-node
//! cluster of real node processes, stores and reads keys, SIGKILLs a node, waits for every key,
//! runs the multicast step and the chat step, and stops the cluster (`--stop`). The demo polls
//! against its own deadlines and exits non-zero when a step fails; this test checks that it
//! succeeds and says what each step must have shown.

use std::process::{Command, Stdio};

const NODE: &str = env!("CARGO_BIN_EXE_overlay-node-e2e");
const CLI: &str = env!("CARGO_BIN_EXE_overlay-cli-e2e");

#[test]
fn the_demo_runs_every_step_and_stops_its_cluster() {
    let dir = tempfile::tempdir().expect("a cluster directory");
    let output = Command::new(CLI)
        .arg("--dir")
        .arg(dir.path())
        .args(["demo", "--stop", "--node-bin", NODE])
        .env_remove("OVERLAY_NODE")
        .env_remove("OVERLAY_KEYS")
        .env_remove("OVERLAY_API_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("the CLI runs");
    let said = String::from_utf8_lossy(&output.stdout);
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the demo failed:\n{said}\n{errors}");
    for shown in [
        "All 20 keys read back correctly.",
        "All 20 keys survived the crash",
        "All 3 messages reached node",
        "registered alice",
        "--as alice -> delivered",
        "opened it: alice: hi bob, this is sealed to your key",
        "--as alice -> queued",
        "his mailbox hands him alice: see you later",
        "Stopped 4 nodes",
    ] {
        assert!(said.contains(shown), "the demo did not say {shown:?}:\n{said}");
    }
    // --stop left none of the five nodes running.
    let status = Command::new(CLI)
        .arg("--dir")
        .arg(dir.path())
        .args(["cluster", "status", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("the CLI runs");
    let listing: serde_json::Value = serde_json::from_slice(&status.stdout).expect("cluster status --json");
    let nodes = listing["nodes"].as_array().expect("a node list");
    assert_eq!(nodes.len(), 5, "{listing}");
    assert!(nodes.iter().all(|node| node["alive"] == false), "{listing}");
}
