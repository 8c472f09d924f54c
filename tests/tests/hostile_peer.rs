//! A hostile peer against the bounds of `node/src/limits.rs`, end to end: one libp2p peer opens
//! more connections than the per-peer limit, floods the ring and storage protocols far past its
//! request rate and sends garbage frames on the group protocol. The node stays up, answers the
//! flood's excess with refusals (kv: `Refused`, "busy"), counts the denied connections and the
//! refused requests in `/metrics`, and an honest put and get still succeed within a deadline.

use std::time::Duration;

use dht::store::{KvRequest, KvResponse};
use dht::{Message, Request, RequestId};
use futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, noise, tcp, yamux};
use overlay_node::address::PeerAddr;
use overlay_node::network::{GROUP_PROTOCOL, KV_PROTOCOL, KvCodec, RING_PROTOCOL, RingCodec, RingEnvelope};
use overlay_tests::{Cluster, RawCodec, poll};

const NODE: &str = env!("CARGO_BIN_EXE_overlay-node-e2e");

/// Low, so that a flood from a debug build on a busy machine is sure to exceed them; honest
/// traffic of a three-node ring (a few ring requests per second per peer) stays well under.
const RATE: &str = "20";
const BURST: &str = "40";
const PER_PEER_CONNECTIONS: &str = "2";
/// Requests of each protocol in the flood: many times the burst plus what the rate refills while
/// the flood lasts.
const FLOOD: usize = 1_000;
const EXTRA_DIALS: usize = 6;
const DEADLINE: Duration = Duration::from_secs(60);

#[derive(NetworkBehaviour)]
struct Flood {
    ring: request_response::Behaviour<RingCodec>,
    kv: request_response::Behaviour<KvCodec>,
    junk: request_response::Behaviour<RawCodec>,
}

/// What came back from the flood.
#[derive(Debug, Default)]
struct Outcome {
    answered: usize,
    kv_busy: usize,
    failed: usize,
}

#[test]
fn a_flooding_peer_is_refused_counted_and_survived() {
    let cluster = Cluster::start(
        NODE,
        3,
        &[
            "--peer-request-rate",
            RATE,
            "--peer-request-burst",
            BURST,
            "--max-connections-per-peer",
            PER_PEER_CONNECTIONS,
        ],
    );
    cluster.wait_for_correct_ring(Duration::from_secs(30));
    let target = cluster.http(1);
    let p2p: Multiaddr = cluster.nodes[1].p2p.parse().expect("multiaddr");
    let node: PeerId = cluster.nodes[1].peer_id.parse().expect("peer id");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let outcome = runtime.block_on(async {
        let config = request_response::Config::default().with_request_timeout(Duration::from_secs(30));
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
            .expect("tcp")
            .with_behaviour(|_| Flood {
                ring: request_response::Behaviour::with_codec(
                    RingCodec::new(overlay_node::network::MAX_RING_FRAME),
                    [(RING_PROTOCOL, ProtocolSupport::Outbound)],
                    config.clone(),
                ),
                kv: request_response::Behaviour::with_codec(
                    KvCodec::new(1 << 20),
                    [(KV_PROTOCOL, ProtocolSupport::Outbound)],
                    config.clone(),
                ),
                junk: request_response::Behaviour::new([(GROUP_PROTOCOL, ProtocolSupport::Outbound)], config),
            })
            .expect("behaviour")
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        swarm.add_peer_address(node, p2p.clone());
        let me = *swarm.local_peer_id();
        let my_addr: Multiaddr = "/ip4/127.0.0.1/tcp/9".parse().expect("multiaddr");

        // More connections than the node allows one peer.
        for _ in 0..EXTRA_DIALS {
            let dial = DialOpts::peer_id(node).condition(PeerCondition::Always).addresses(vec![p2p.clone()]);
            swarm.dial(dial.build()).expect("dial");
        }
        // Those past the limit are closed by the node (or fail their upgrade); wait for that
        // before the flood, so that the flood rides a connection the node keeps.
        let (mut established, mut ended) = (0, 0);
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while ended < EXTRA_DIALS - 2 {
            let event = tokio::time::timeout_at(deadline, swarm.select_next_some()).await.unwrap_or_else(|_| {
                panic!("connections past the per-peer limit are refused ({established} established, {ended} ended)")
            });
            match event {
                SwarmEvent::ConnectionEstablished { .. } => established += 1,
                SwarmEvent::ConnectionClosed { .. } | SwarmEvent::OutgoingConnectionError { .. } => ended += 1,
                _ => {}
            }
        }
        // The flood: reads, pings and garbage, all at once.
        let mut outstanding = 0;
        for i in 0..FLOOD {
            let key = format!("flood-{i}").into_bytes();
            swarm.behaviour_mut().kv.send_request(&node, KvRequest::Fetch { key });
            let ping = RingEnvelope {
                sender: PeerAddr::new(me, my_addr.clone()),
                message: Message::Request { id: RequestId(i as u64), body: Request::Ping },
                stored_keys: None,
            };
            swarm.behaviour_mut().ring.send_request(&node, ping);
            outstanding += 2;
        }
        for i in 0..100u32 {
            let junk: Vec<u8> =
                (0..512u32).map(|j| (j.wrapping_mul(2_654_435_761) >> (i % 24)) as u8).collect();
            swarm.behaviour_mut().junk.send_request(&node, junk);
            outstanding += 1;
        }

        let mut outcome = Outcome::default();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while outstanding > 0 {
            let event =
                tokio::time::timeout_at(deadline, swarm.select_next_some()).await.unwrap_or_else(|_| {
                    panic!("the flood is answered or fails within {DEADLINE:?}: {outcome:?}")
                });
            match event {
                SwarmEvent::Behaviour(FloodEvent::Kv(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                })) => {
                    outstanding -= 1;
                    outcome.answered += 1;
                    if matches!(&response, KvResponse::Refused { reason } if reason.contains("busy")) {
                        outcome.kv_busy += 1;
                    }
                }
                SwarmEvent::Behaviour(FloodEvent::Ring(request_response::Event::Message {
                    message: request_response::Message::Response { .. },
                    ..
                }))
                | SwarmEvent::Behaviour(FloodEvent::Junk(request_response::Event::Message {
                    message: request_response::Message::Response { .. },
                    ..
                })) => {
                    outstanding -= 1;
                    outcome.answered += 1;
                }
                SwarmEvent::Behaviour(FloodEvent::Kv(request_response::Event::OutboundFailure {
                    ..
                }))
                | SwarmEvent::Behaviour(FloodEvent::Ring(request_response::Event::OutboundFailure {
                    ..
                }))
                | SwarmEvent::Behaviour(FloodEvent::Junk(request_response::Event::OutboundFailure {
                    ..
                })) => {
                    outstanding -= 1;
                    outcome.failed += 1;
                }
                _ => {}
            }
        }
        outcome
    });
    eprintln!("flood of {FLOOD} kv and {FLOOD} ring requests and 100 garbage frames: {outcome:?}");
    assert!(outcome.kv_busy > 0, "the flood's excess is answered busy: {outcome:?}");
    assert!(outcome.answered > 0, "requests within the rate are served: {outcome:?}");

    // The node is up and says what it refused.
    poll("refusals and denied connections in /metrics", DEADLINE, || {
        target.status()?;
        let kv = target.metric("overlay_peer_requests_refused_total{protocol=\"kv\",reason=\"rate\"}")?;
        let ring = target.metric("overlay_peer_requests_refused_total{protocol=\"ring\",reason=\"rate\"}")?;
        let denied = target.metric("overlay_connections_denied_total{direction=\"inbound\"}")?;
        Ok((kv >= outcome.kv_busy as f64 && ring >= 1.0 && denied >= 1.0).then_some(()))
    });
    // Honest clients are still served, through the flooded node and from another.
    poll("an honest put and get succeed", DEADLINE, || {
        let put = target.put("/v1/kv/after-the-flood", b"still here")?;
        if put.status != 201 && put.status != 200 {
            return Ok(None);
        }
        let got = cluster.http(2).get("/v1/kv/after-the-flood")?;
        Ok((got.status == 200 && got.body == b"still here").then_some(()))
    });
    assert!(cluster.nodes[1].is_running(), "the flooded node is still running");
}
