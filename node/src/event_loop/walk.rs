//! The ring-walk room: `GET /v1/ring`, the ring walked along successors from this node.
//!
//! Owns the walks in progress ([`Walks`]). Each step asks the next node for its neighbours on the
//! ring protocol with a request id of the walks' own (from the top of the id space down, so it can
//! never meet one of the core's, which count up from 0), and the reply is matched by libp2p's
//! outbound request id, so two walks never share a step. A walk ends when it comes back to this
//! node (complete), revisits a node, passes [`MAX_WALK`] nodes or meets a node that does not
//! answer (incomplete: what was seen).
//!
//! Each answer also carries the answering node's key count ([`RingEnvelope::stored_keys`]), kept
//! beside the node: the walk costs no extra request for it. Only the node asked can set its own
//! count (the answer must come from it), and a node that does not say is reported as `None`.

use std::collections::HashMap;

use dht::{NodeRef, RequestId};
use libp2p::Swarm;
use libp2p::request_response::OutboundRequestId;
use tokio::sync::oneshot;

use super::{RingWalk, WalkedNode};
use crate::address::PeerAddr;
use crate::network::{Behaviour, RingEnvelope};

/// Longest ring walk.
pub(super) const MAX_WALK: usize = 4096;

#[derive(Debug)]
struct Walk {
    nodes: Vec<WalkedNode>,
    reply: oneshot::Sender<RingWalk>,
}

/// The walks in progress.
#[derive(Debug, Default)]
pub(super) struct Walks {
    steps: HashMap<OutboundRequestId, Walk>,
    next_id: u64,
}

impl Walks {
    /// Starts a walk from `me`, which stores `keys` live keys, along its successor `first`.
    pub(super) fn start(
        &mut self,
        me: NodeRef<PeerAddr>,
        keys: u64,
        first: NodeRef<PeerAddr>,
        reply: oneshot::Sender<RingWalk>,
        swarm: &mut Swarm<Behaviour>,
    ) {
        let walk = Walk { nodes: vec![WalkedNode { node: me, keys: Some(keys) }], reply };
        self.step(walk, first, swarm);
    }

    /// Whether `request` is a walk's step; if so, the walk goes on with `response` (`None`: the
    /// node did not answer).
    pub(super) fn on_response(
        &mut self,
        request: OutboundRequestId,
        response: Option<RingEnvelope>,
        swarm: &mut Swarm<Behaviour>,
    ) -> bool {
        let Some(mut walk) = self.steps.remove(&request) else {
            return false;
        };
        let asked =
            walk.nodes.last_mut().expect("a walk holds its start, and a step asks the node pushed last");
        let next = match response {
            // The answer must come from the node asked.
            Some(envelope) if envelope.sender.peer == asked.node.addr.peer => match envelope.message {
                dht::Message::Response { body: dht::Response::Neighbours { successors, .. }, .. } => {
                    asked.keys = envelope.stored_keys;
                    successors.into_iter().next().filter(|n| n.is_genuine())
                }
                _ => None,
            },
            _ => None,
        };
        match next {
            Some(next) => self.step(walk, next, swarm),
            None => drop(walk.reply.send(RingWalk { nodes: walk.nodes, complete: false })),
        }
        true
    }

    fn step(&mut self, mut walk: Walk, next: NodeRef<PeerAddr>, swarm: &mut Swarm<Behaviour>) {
        let me = walk.nodes[0].node.clone();
        if next.addr.peer == me.addr.peer {
            let _ = walk.reply.send(RingWalk { nodes: walk.nodes, complete: true });
            return;
        }
        if walk.nodes.len() >= MAX_WALK || walk.nodes.iter().any(|n| n.node.addr.peer == next.addr.peer) {
            // A loop that does not come back here: report what was seen.
            let _ = walk.reply.send(RingWalk { nodes: walk.nodes, complete: false });
            return;
        }
        walk.nodes.push(WalkedNode { node: next.clone(), keys: None });
        let id = RequestId(u64::MAX - self.next_id);
        self.next_id += 1;
        let envelope = RingEnvelope {
            sender: me.addr,
            message: dht::Message::Request {
                id,
                body: dht::Request::GetNeighbours { predecessors: Vec::new() },
            },
            stored_keys: None,
        };
        let addresses = vec![next.addr.addr.clone()];
        let outbound =
            swarm.behaviour_mut().ring.send_request_with_addresses(&next.addr.peer, envelope, addresses);
        self.steps.insert(outbound, walk);
    }
}
