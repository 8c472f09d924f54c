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

use super::{Node, Phase};

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
            Request::GetNeighbours => Response::Neighbours {
                predecessor: self.predecessor.clone(),
                successors: self.successors.clone(),
            },
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
