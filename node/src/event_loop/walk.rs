//! The ring-walk room: `GET /v1/ring`, the ring walked along successors from this node.
//!
//! Owns the walks in progress ([`Walks`]). Each step asks the next node for its neighbours on the
//! ring protocol with a request id of the walks' own (from the top of the id space down, so it can
//! never meet one of the core's, which count up from 0), and the reply is matched by libp2p's
//! outbound request id, so two walks never share a step. A walk ends when it comes back to this
//! node (complete), revisits a node, passes [`MAX_WALK`] nodes or meets a node that does not
//! answer (incomplete: what was seen).

use std::collections::HashMap;

use dht::{NodeRef, RequestId};
use libp2p::Swarm;
use libp2p::request_response::OutboundRequestId;
use tokio::sync::oneshot;

use super::RingWalk;
use crate::address::PeerAddr;
use crate::network::{Behaviour, RingEnvelope};

/// Longest ring walk.
pub(super) const MAX_WALK: usize = 4096;

#[derive(Debug)]
struct Walk {
    nodes: Vec<NodeRef<PeerAddr>>,
    reply: oneshot::Sender<RingWalk>,
}

/// The walks in progress.
#[derive(Debug, Default)]
pub(super) struct Walks {
    steps: HashMap<OutboundRequestId, Walk>,
    next_id: u64,
}

impl Walks {
    /// Starts a walk from `me` along its successor `first`.
    pub(super) fn start(
        &mut self,
        me: NodeRef<PeerAddr>,
        first: NodeRef<PeerAddr>,
        reply: oneshot::Sender<RingWalk>,
        swarm: &mut Swarm<Behaviour>,
    ) {
        let walk = Walk { nodes: vec![me], reply };
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
        let Some(walk) = self.steps.remove(&request) else {
            return false;
        };
        let asked = walk.nodes.last().map(|n| n.addr.peer);
        let next = match response {
            // The answer must come from the node asked.
            Some(envelope) if Some(envelope.sender.peer) == asked => match envelope.message {
                dht::Message::Response { body: dht::Response::Neighbours { successors, .. }, .. } => {
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
        let me = walk.nodes[0].clone();
        if next.addr.peer == me.addr.peer {
            let _ = walk.reply.send(RingWalk { nodes: walk.nodes, complete: true });
            return;
        }
        if walk.nodes.len() >= MAX_WALK || walk.nodes.iter().any(|n| n.addr.peer == next.addr.peer) {
            // A loop that does not come back here: report what was seen.
            let _ = walk.reply.send(RingWalk { nodes: walk.nodes, complete: false });
            return;
        }
        walk.nodes.push(next.clone());
        let id = RequestId(u64::MAX - self.next_id);
        self.next_id += 1;
        let envelope = RingEnvelope {
            sender: me.addr,
            message: dht::Message::Request { id, body: dht::Request::GetNeighbours },
        };
        let addresses = vec![next.addr.addr.clone()];
        let outbound =
            swarm.behaviour_mut().ring.send_request_with_addresses(&next.addr.peer, envelope, addresses);
        self.steps.insert(outbound, walk);
    }
}
