//! Signed keys end to end (issue 11): `overlay keygen`, `put --sign` and `delete --sign` through
//! the CLI; and a real libp2p peer that speaks the storage protocol straight to every replica with
//! forged, unsigned and foreign-signed records of a signed key. Only the owner's writes take: every
//! replica keeps the owner's value, and every refusal is a clear message and a non-zero exit.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use dht::store::{KvRequest, KvResponse, Record, Version};
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, noise, tcp, yamux};
use overlay_node::network::{KV_PROTOCOL, KvCodec};
use overlay_tests::{Cluster, poll};

const NODE: &str = env!("CARGO_BIN_EXE_overlay-node-e2e");
const CLI: &str = env!("CARGO_BIN_EXE_overlay-cli-e2e");
const KEY: &str = "signed/alice";

fn cli(node: &str, args: &[&str]) -> Output {
    Command::new(CLI)
        .args(["--node", node])
        .args(args)
        .env_remove("OVERLAY_NODE")
        .env("OVERLAY_CLUSTER_DIR", "/nonexistent-overlay-cluster")
        .stdin(Stdio::null())
        .output()
        .expect("the CLI runs")
}

fn ok(output: &Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts the CLI failed and said `why` on stderr.
fn refused(output: &Output, why: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refused, but exited 0: {stderr}");
    assert!(stderr.contains(why), "stderr says {why:?}: {stderr}");
}

/// The secret key in a key file `overlay keygen` wrote (64 hex digits).
fn read_key(file: &Path) -> SigningKey {
    let text = std::fs::read_to_string(file).expect("key file");
    let bytes = dht::bytes::from_hex(text.trim()).expect("hex");
    SigningKey::from_bytes(&bytes.try_into().expect("32 bytes"))
}

fn keygen(node: &str, file: &Path) -> String {
    let printed = ok(&cli(node, &["keygen", file.to_str().expect("utf-8")]));
    printed.rsplit("public key ").next().expect("printed").trim().to_owned()
}

#[test]
fn only_the_owner_writes_or_deletes_a_signed_key_through_the_cli() {
    let cluster = Cluster::start(NODE, 3, &[]);
    cluster.wait_for_correct_ring(Duration::from_secs(30));
    let dir = tempfile::tempdir().expect("temp dir");
    let (alice, mallory) = (dir.path().join("alice.key"), dir.path().join("mallory.key"));
    let (node0, node1) = (&cluster.nodes[0].http, &cluster.nodes[1].http);
    let alice_public = keygen(node0, &alice);
    keygen(node0, &mallory);
    let (alice, mallory) = (alice.to_str().expect("utf-8"), mallory.to_str().expect("utf-8"));
    refused(&cli(node0, &["keygen", alice]), "never overwritten");

    ok(&cli(node0, &["put", "--sign", alice, KEY, "hello"]));
    let read: serde_json::Value =
        serde_json::from_str(&ok(&cli(node1, &["get", "--json", KEY]))).expect("json");
    assert_eq!(read["value"], "hello");
    assert_eq!(read["signer"], alice_public.as_str(), "{read}");
    assert_eq!(ok(&cli(node1, &["get", KEY])), "hello", "a plain get prints only the value");

    let not_owner = "signed by another key";
    refused(&cli(node1, &["put", "--sign", mallory, KEY, "forged"]), not_owner);
    refused(&cli(node1, &["delete", "--sign", mallory, KEY]), not_owner);
    refused(&cli(node0, &["put", KEY, "unsigned"]), "only with their owner's signature");
    refused(&cli(node0, &["delete", KEY]), "only with their owner's signature");
    refused(&cli(node0, &["put", "--sign", alice, "plain-key", "v"]), "only keys under signed/");
    assert_eq!(ok(&cli(node0, &["get", KEY])), "hello");

    ok(&cli(node1, &["put", "--sign", alice, KEY, "hello again"]));
    assert_eq!(ok(&cli(node0, &["get", KEY])), "hello again");
    ok(&cli(node0, &["delete", "--sign", alice, KEY]));
    refused(&cli(node1, &["get", KEY]), "not found");
    // The key stays alice's after her delete.
    refused(&cli(node1, &["put", "--sign", mallory, KEY, "mine now"]), not_owner);
}

/// Sends each of `records` as a `Store` to every node of `cluster` from a fresh libp2p identity,
/// and returns every answer.
fn store_from_a_hostile_peer(cluster: &Cluster, records: &[Record]) -> Vec<KvResponse> {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let config = request_response::Config::default().with_request_timeout(Duration::from_secs(30));
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
            .expect("tcp")
            .with_behaviour(|_| {
                request_response::Behaviour::with_codec(
                    KvCodec::new(1 << 20),
                    [(KV_PROTOCOL, ProtocolSupport::Outbound)],
                    config,
                )
            })
            .expect("behaviour")
            .build();
        let mut outstanding = 0;
        for node in &cluster.nodes {
            let peer: PeerId = node.peer_id.parse().expect("peer id");
            let addr: Multiaddr = node.p2p.parse().expect("multiaddr");
            swarm.add_peer_address(peer, addr);
            for record in records {
                swarm.behaviour_mut().send_request(&peer, KvRequest::Store { record: record.clone() });
                outstanding += 1;
            }
        }
        let mut answers = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while outstanding > 0 {
            let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
                .await
                .unwrap_or_else(|_| panic!("every Store is answered in time ({} answered)", answers.len()));
            match event {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                }) => {
                    outstanding -= 1;
                    answers.push(response);
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                    panic!("a Store failed to reach the node: {error}")
                }
                _ => {}
            }
        }
        answers
    })
}

#[test]
fn a_peer_speaking_the_storage_protocol_cannot_overwrite_delete_or_roll_back_a_signed_key() {
    let cluster = Cluster::start(NODE, 3, &[]);
    cluster.wait_for_correct_ring(Duration::from_secs(30));
    let dir = tempfile::tempdir().expect("temp dir");
    let alice_file = dir.path().join("alice.key");
    keygen(&cluster.nodes[0].http, &alice_file);
    let alice_file = alice_file.to_str().expect("utf-8");
    ok(&cli(&cluster.nodes[0].http, &["put", "--sign", alice_file, KEY, "first"]));
    ok(&cli(&cluster.nodes[0].http, &["put", "--sign", alice_file, KEY, "second"]));
    let held = cluster.http(1).api().get(KEY, None).expect("read");
    let held_version = Version::from_token(held.version.as_deref().expect("a version")).expect("parses");

    let mallory = SigningKey::from_bytes(&[9; 32]);
    let alice = read_key(Path::new(alice_file));
    let later = held_version.hlc + (1 << 16);
    let stranger = Version { hlc: later, writer: dht::Id::hash(b"mallory's node") };
    // Alice's own older value, replayed as she signed it (a roll-back) and re-dated past hers.
    let older =
        dht::signed::sign(KEY.as_bytes().to_vec(), Some(b"first".to_vec()), held_version.hlc - 1, &alice);
    let mut redated = older.clone();
    redated.version.hlc = later;
    redated.checksum = redated.compute_checksum();
    let forged = [
        older,
        Record::new(KEY.as_bytes().to_vec(), b"unsigned".to_vec(), stranger),
        Record::tombstone(KEY.as_bytes().to_vec(), stranger),
        dht::signed::sign(KEY.as_bytes().to_vec(), Some(b"mallory's".to_vec()), later, &mallory),
        dht::signed::sign(KEY.as_bytes().to_vec(), None, later, &mallory),
        redated,
    ];
    let answers = store_from_a_hostile_peer(&cluster, &forged);
    assert_eq!(answers.len(), forged.len() * cluster.nodes.len());
    for answer in &answers {
        let kept = matches!(answer, KvResponse::Refused { .. })
            || matches!(answer, KvResponse::Stored { newer: Some(v), .. } if *v == held_version);
        assert!(kept, "every forged Store is refused or answered with the version kept: {answer:?}");
    }
    // Every replica still holds alice's newest value, and a quorum read returns it.
    poll("alice's value on every node's own copy", Duration::from_secs(30), || {
        for i in 0..cluster.nodes.len() {
            match cluster.http(i).api().get_local(KEY) {
                Ok(local) if local.value != b"second" => anyhow::bail!("node {i} holds {:?}", local.value),
                _ => {}
            }
        }
        Ok(Some(()))
    });
    let read = cluster.http(2).api().get(KEY, None).expect("read");
    assert_eq!(read.value, b"second");
    assert_eq!(read.version.as_deref(), held.version.as_deref());
}
