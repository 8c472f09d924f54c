//! Serving peers' requests: the response this node gives to each [`Request`], and its answer to
//! one step of someone's lookup.
//!
//! Invariants: every request gets exactly one response (the caller sends it under the request's
//! id); a node that is not a member refuses everything but `Ping` (counted in `refused`), and a
//! node that is leaving or has left refuses `Ping` too, so that it never looks alive to a neighbour
//! checking its predecessor.

use crate::address::{Address, NodeRef};
use crate::id::Id;
use crate::message::{Request, Response};
use crate::time::Time;

use super::{Node, PREDECESSORS, Phase};

impl<A: Address> Node<A> {
    pub(super) fn answer(&mut self, from: &A, body: Request<A>, now: Time) -> Response<A> {
        if let Request::Ping = body {
            // A node that is leaving or has left must not look alive to a liveness probe, or its
            // neighbours would keep it as their predecessor.
            return match self.phase {
                Phase::Leaving { .. } | Phase::Left => Response::Refused,
                Phase::Idle | Phase::Joining { .. } | Phase::Active => Response::Ack,
            };
        }
        if !self.is_member() {
            self.counters.refused += 1;
            return Response::Refused;
        }
        match body {
            Request::Ping => Response::Ack,
            Request::GetNeighbours { predecessors } => {
                self.learn_predecessors(from, predecessors);
                Response::Neighbours {
                    predecessor: self.predecessor.clone(),
                    successors: self.successors.clone(),
                }
            }
            Request::Notify => {
                self.passive.remove(from);
                self.rectify(NodeRef::new(from.clone()), now);
                Response::Ack
            }
            Request::FindSuccessor { target } => self.route_reply(&target),
            Request::Leaving { predecessor: _, successors } => {
                self.on_neighbour_leaving(from, &successors, now);
                Response::Ack
            }
            Request::Merge { candidate, hops } => {
                self.on_merge_request(candidate, hops, now);
                Response::Ack
            }
            Request::SuccessorsChanged { successors } => {
                self.on_successors_pushed(from, &successors, now);
                Response::Ack
            }
        }
    }

    /// The predecessor, stabilizing with this node, named the nodes before it: keep them if they
    /// come from the predecessor itself and run counter-clockwise from it without repeats (this
    /// node may close the list in a small ring: it is kept, and tells the store that the list
    /// wrapped). Anything else is ignored and counted.
    fn learn_predecessors(&mut self, from: &A, predecessors: Vec<NodeRef<A>>) {
        let Some(predecessor) = &self.predecessor else {
            return;
        };
        if predecessors.is_empty() || from.node_id() != predecessor.id {
            return;
        }
        // The sender's own list starts with its predecessor; ours continues after the sender.
        let mut previous = predecessor.id;
        let mut kept = Vec::with_capacity(PREDECESSORS - 1);
        for node in predecessors.into_iter().take(PREDECESSORS - 1) {
            // Each must lie strictly between us (exclusive) and the previous entry, going
            // counter-clockwise: i.e. in (me, previous) clockwise from me.
            let in_order = node.id == self.me.id || node.id.in_open(&self.me.id, &previous);
            if !in_order {
                self.counters.dropped_invalid += 1;
                return;
            }
            let wrapped = node.id == self.me.id;
            previous = node.id;
            kept.push(node);
            if wrapped {
                break;
            }
        }
        self.further_predecessors = kept;
    }

    /// This node's answer to one lookup step for `target`.
    pub(super) fn route_reply(&self, target: &Id) -> Response<A> {
        let owner = self.owns(target);
        let within_list =
            self.successors.last().is_some_and(|last| target.in_open_closed(&self.me.id, &last.id));
        let closer = if owner || within_list {
            Vec::new()
        } else {
            self.closest_preceding(target, self.config.route_candidates.get())
        };
        Response::Route {
            owner,
            predecessor: self.predecessor.clone(),
            successors: self.successors.clone(),
            closer,
        }
    }
}
