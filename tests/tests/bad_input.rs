//! Hostile input: random bytes at the p2p port, a peer speaking the overlay protocols with
//! malformed, oversized and forged messages, and bad HTTP requests. The node stays up and correct,
//! and what it rejected shows in `/metrics`.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use dht::store::{KvRequest, Record, Version};
use dht::{Id, Message, NodeRef, Request, RequestId};
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, identity, noise, tcp, yamux};
use overlay_node::address::PeerAddr;
use overlay_node::network::{KV_PROTOCOL, RING_PROTOCOL, RingEnvelope};
use overlay_tests::{Cluster, RawCodec, poll};

const NODE: &str = env!("CARGO_BIN_EXE_overlay-node-e2e");

#[derive(NetworkBehaviour)]
struct Hostile {
    ring: request_response::Behaviour<RawCodec>,
    kv: request_response::Behaviour<RawCodec>,
}

fn dht_cbor<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("encoding into a Vec cannot fail");
    out
}

/// Sends each frame on `protocol` and waits for its answer or failure; returns how many got a
/// response at all.
async fn send_all(
    swarm: &mut libp2p::Swarm<Hostile>,
    node: PeerId,
    on_kv: bool,
    frames: Vec<Vec<u8>>,
) -> usize {
    let mut outstanding = 0;
    for frame in frames {
        if on_kv {
            swarm.behaviour_mut().kv.send_request(&node, frame);
        } else {
            swarm.behaviour_mut().ring.send_request(&node, frame);
        }
        outstanding += 1;
    }
    let mut answered = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while outstanding > 0 {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .expect("answers or failures within 20 s");
        let rr = match event {
            SwarmEvent::Behaviour(HostileEvent::Ring(e)) | SwarmEvent::Behaviour(HostileEvent::Kv(e)) => e,
            _ => continue,
        };
        match rr {
            request_response::Event::Message {
                message: request_response::Message::Response { .. }, ..
            } => {
                answered += 1;
                outstanding -= 1;
            }
            request_response::Event::OutboundFailure { .. } => outstanding -= 1,
            _ => {}
        }
    }
    answered
}

#[test]
fn hostile_input_is_rejected_counted_and_survived() {
    let cluster = Cluster::start(NODE, 3, &[]);
    cluster.wait_for_correct_ring(Duration::from_secs(15));
    let target = cluster.http(1);
    let p2p: Multiaddr = cluster.nodes[1].p2p.parse().expect("multiaddr");
    let node: PeerId = cluster.nodes[1].peer_id.parse().expect("peer id");
    let port = p2p
        .iter()
        .find_map(|p| if let Protocol::Tcp(port) = p { Some(port) } else { None })
        .expect("tcp port");

    // 1. Random bytes at the p2p port (not even a libp2p handshake).
    for round in 0..5u8 {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let junk: Vec<u8> =
            (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> (round % 8)) as u8).collect();
        let _ = stream.write_all(&junk);
    }

    // 2. A peer that speaks the overlay protocols, badly.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
            .expect("tcp")
            .with_behaviour(|_| Hostile {
                ring: request_response::Behaviour::new(
                    [(RING_PROTOCOL, ProtocolSupport::Outbound)],
                    request_response::Config::default(),
                ),
                kv: request_response::Behaviour::new(
                    [(KV_PROTOCOL, ProtocolSupport::Outbound)],
                    request_response::Config::default(),
                ),
            })
            .expect("behaviour")
            .build();
        swarm.add_peer_address(node, p2p.clone());
        let me = *swarm.local_peer_id();
        let my_addr: Multiaddr = "/ip4/127.0.0.1/tcp/9".parse().expect("multiaddr");
        let stranger = identity::Keypair::generate_ed25519().public().to_peer_id();

        let mut forged_ref = NodeRef::new(PeerAddr::new(stranger, my_addr.clone()));
        forged_ref.id = Id::hash(b"not the hash of that peer");
        let ring_frames = vec![
            b"definitely not cbor \xff\xfe".to_vec(),
            vec![0x5a, 0xff, 0xff, 0xff, 0xff], // a byte string claiming 4 GiB
            vec![0u8; 200_000],                 // larger than the ring cap
            dht_cbor(&42u64),                   // CBOR of the wrong shape
            // An envelope naming someone else as its sender.
            dht_cbor(&RingEnvelope {
                sender: PeerAddr::new(stranger, my_addr.clone()),
                message: Message::Request { id: RequestId(1), body: Request::Ping },
                stored_keys: None,
            }),
            // A leave notice carrying a forged node reference.
            dht_cbor(&RingEnvelope {
                sender: PeerAddr::new(me, my_addr.clone()),
                message: Message::Request {
                    id: RequestId(2),
                    body: Request::Leaving { predecessor: Some(forged_ref), successors: vec![] },
                },
                stored_keys: None,
            }),
        ];
        send_all(&mut swarm, node, false, ring_frames).await;

        let mut corrupt = Record::new(b"k".to_vec(), b"v".to_vec(), Version { hlc: 1, writer: Id::ZERO });
        corrupt.value = b"tampered".to_vec();
        let kv_frames = vec![
            b"\x00\x01garbage".to_vec(),
            vec![7u8; 3 << 20], // larger than any record the node accepts
            dht_cbor(&KvRequest::Store { record: corrupt }),
        ];
        let answered = send_all(&mut swarm, node, true, kv_frames).await;
        assert!(answered >= 1, "a well-formed but corrupt Store gets a refusal, not silence");
        // A genuine-looking ping still works: the node keeps serving this peer.
        let ping = dht_cbor(&RingEnvelope {
            sender: PeerAddr::new(me, my_addr.clone()),
            message: Message::Request { id: RequestId(3), body: Request::Ping },
            stored_keys: None,
        });
        assert_eq!(send_all(&mut swarm, node, false, vec![ping]).await, 1, "an honest ping is answered");
    });

    // 3. Bad HTTP requests.
    let too_big = vec![b'x'; 1024 * 1024 + 1];
    assert_eq!(target.put("/v1/kv/huge", &too_big).expect("put").status, 413);
    assert_eq!(target.get("/v1/kv/no-such-key").expect("get").status, 404);
    assert_eq!(target.get("/v1/kv/k?consistency=most").expect("get").status, 400);
    let refusal = target.put("/v1/kv/huge", &too_big).expect("put").json().expect("JSON error");
    assert!(refusal["error"].as_str().is_some_and(|e| !e.is_empty()), "{refusal}");

    // The node is up, the ring correct, and it still serves data.
    cluster.wait_for_correct_ring(Duration::from_secs(15));
    assert_eq!(target.put("/v1/kv/after", b"still here").expect("put").status, 201);
    let answer = cluster.http(2).get("/v1/kv/after").expect("get");
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"still here"[..]));
    // What was rejected is counted.
    poll("rejections counted in /metrics", Duration::from_secs(5), || {
        let malformed = target.metric("overlay_rejected_inputs_total{kind=\"malformed\"}")?;
        let invalid = target.metric("overlay_rejected_inputs_total{kind=\"invalid\"}")?;
        Ok((malformed >= 3.0 && invalid >= 3.0).then_some(()))
    });
}
