//! Requests this node sends: sending one with a deadline and a resend budget, and passing its
//! outcome (a response, a refusal, a time-out or a failed send) to the concern that sent it,
//! according to the request's `Purpose`.
//!
//! Responses reach this file already matched to their request by id and sender
//! (`Node::handle_message`). Invariants: every request sent is in `pending` with its deadline in
//! `request_deadlines` until it is answered, fails, or is dropped because its lookup finished; a
//! reply of the wrong kind is counted as a protocol violation and handled as a failure of that
//! request; a refusal is a failure but not a time-out, so the refusing peer is not remembered as
//! dead.

use tracing::{debug, trace};

use crate::address::{Address, NodeRef};
use crate::message::{Message, Request, RequestId, Response};
use crate::time::Time;

use super::{Event, Node, Pending, Purpose, Transmit};

impl<A: Address> Node<A> {
    pub(super) fn on_response(&mut self, from: A, purpose: Purpose<A>, body: Response<A>, now: Time) {
        match (purpose, body) {
            (purpose, Response::Refused) => {
                trace!(peer = ?from, "request refused");
                self.on_request_failed(from, purpose, false, now);
            }
            (Purpose::Stabilize { successor }, Response::Neighbours { predecessor, successors }) => {
                self.stabilizing = false;
                self.chase_or_adopt(successor, predecessor, successors, 0, now);
            }
            (
                Purpose::StabilizeCandidate { candidate, chased, .. },
                Response::Neighbours { predecessor, successors },
            ) => {
                self.stabilizing = false;
                self.chase_or_adopt(candidate, predecessor, successors, chased, now);
            }
            (Purpose::Notify, Response::Ack) => {
                if self.is_member() && !self.announced {
                    self.announced = true;
                    let successor = self.successor().clone();
                    self.events.push_back(Event::Joined { successor });
                }
            }
            (Purpose::CheckPredecessor { .. }, Response::Ack) => self.checking_predecessor = false,
            (Purpose::CheckFinger { index, finger }, Response::Neighbours { predecessor, .. }) => {
                self.on_finger_checked(index, finger, predecessor, now);
            }
            (Purpose::RectifyProbe { .. }, Response::Ack) => self.probing_predecessor = false,
            (Purpose::Leaving, Response::Ack) => self.on_leave_acknowledged(),
            (Purpose::Probe { node }, Response::Neighbours { predecessor, successors }) => {
                self.on_probe_answered(node, predecessor, successors, now);
            }
            (Purpose::Merge | Purpose::PushSuccessors, Response::Ack) => {}
            (Purpose::Lookup { key }, Response::Route { owner, predecessor, successors, closer }) => {
                let Some(lookup) = self.lookups.get_mut(&key) else {
                    return; // finished (timed out) while this reply was on its way
                };
                let Some((_, node, as_owner)) = lookup.in_flight.take() else {
                    return;
                };
                lookup.count_hop(&node);
                let (done, dropped) = lookup.on_reply(node, as_owner, owner, predecessor, successors, closer);
                self.counters.dropped_protocol_violation += dropped as u64;
                match done {
                    Some(answer) => self.finish_lookup(key, Ok(answer), now),
                    None => self.advance_lookup(key, now),
                }
            }
            (purpose, body) => {
                self.counters.dropped_protocol_violation += 1;
                debug!(peer = ?from, kind = body_kind(&body), "reply of the wrong kind");
                self.on_request_failed(from, purpose, false, now);
            }
        }
    }

    pub(super) fn on_request_failed(&mut self, to: A, purpose: Purpose<A>, timed_out: bool, now: Time) {
        // A peer that stopped answering is the first sign of a failure nearby; a probe of a peer
        // already declared dead that still does not answer is no news.
        if timed_out && !matches!(purpose, Purpose::Probe { .. }) {
            self.unsettle(now);
            self.sweep_fingers(now);
        }
        match purpose {
            Purpose::Stabilize { successor } => {
                self.stabilizing = false;
                debug!(node = %self.me.id.short(), successor = %successor.id.short(), "successor unreachable, dropping it");
                self.forget(&successor.addr, now);
                if timed_out {
                    self.remember_dead(successor.clone(), now);
                }
                if self.successors.is_empty() {
                    self.rejoin(now);
                } else if timed_out {
                    // Fall back to the next live successor at once rather than a period later.
                    self.stabilize_after_timeout(now);
                } else {
                    self.stabilize(now);
                }
            }
            Purpose::StabilizeCandidate { candidate, fallback, .. } => {
                self.stabilizing = false;
                if timed_out {
                    self.fingers.forget(&candidate.addr);
                    self.remember_dead(candidate.clone(), now);
                }
                if self.predecessor.as_ref().is_some_and(|p| p.addr == candidate.addr)
                    && self.successors.is_empty()
                {
                    self.set_predecessor(None, now);
                }
                if let Some((successor, list)) = fallback {
                    self.adopt_successor(successor, &list, false, now);
                }
            }
            Purpose::Notify => {}
            Purpose::CheckPredecessor { predecessor } => {
                self.checking_predecessor = false;
                if self.predecessor.as_ref().is_some_and(|p| p.addr == predecessor.addr) {
                    debug!(node = %self.me.id.short(), predecessor = %predecessor.id.short(), "predecessor unreachable");
                    self.set_predecessor(None, now);
                }
                self.fingers.forget(&predecessor.addr);
                if timed_out {
                    self.remember_dead(predecessor, now);
                }
            }
            Purpose::RectifyProbe { predecessor, candidate } => {
                self.probing_predecessor = false;
                // The predecessor check may have dropped the dead predecessor while this probe was
                // in flight; the notifier is then just as welcome (rectify adopts a notifier when
                // there is no predecessor).
                if self.predecessor.as_ref().is_none_or(|p| p.addr == predecessor.addr) {
                    self.set_predecessor(Some(candidate), now);
                }
                if timed_out {
                    self.remember_dead(predecessor, now);
                }
            }
            Purpose::CheckFinger { index, finger } => {
                if timed_out {
                    self.fingers.forget(&finger.addr);
                    self.forget_cached(&finger.addr);
                    self.remember_dead(finger, now);
                }
                // Find the finger's replacement now rather than a (backed-off) period later.
                let target = self.me.id.finger_start(index);
                self.start_lookup(target, crate::lookup::Purpose::FixFinger(index), now);
            }
            Purpose::Lookup { key } => {
                if timed_out {
                    self.fingers.forget(&to);
                    self.forget_cached(&to);
                    self.remember_dead(NodeRef::new(to.clone()), now);
                }
                let Some(lookup) = self.lookups.get_mut(&key) else {
                    return;
                };
                lookup.in_flight = None;
                lookup.on_failure(&to, timed_out);
                self.advance_lookup(key, now);
            }
            Purpose::Leaving => self.on_leave_acknowledged(),
            Purpose::Probe { node } => {
                if timed_out {
                    let (base, cap) = (self.config.probe_interval, self.config.probe_backoff_max);
                    self.passive.missed(&node.addr, now, base, cap);
                } else {
                    // Alive but not a member (restarting, joining, leaving): it finds its own way.
                    self.passive.remove(&node.addr);
                }
            }
            // A predecessor that missed the push still fetches the list in its next stabilize
            // round; its own predecessor check decides whether it is gone.
            Purpose::Merge | Purpose::PushSuccessors => {}
        }
    }

    pub(super) fn send_request(
        &mut self,
        to: &A,
        body: Request<A>,
        purpose: Purpose<A>,
        now: Time,
    ) -> RequestId {
        self.send_request_attempts(to, body, purpose, self.config.request_attempts, now)
    }

    /// Like `send_request`, but sent at most `attempts` times (at least once).
    pub(super) fn send_request_attempts(
        &mut self,
        to: &A,
        body: Request<A>,
        purpose: Purpose<A>,
        attempts: u32,
        now: Time,
    ) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let deadline = now + self.config.rpc_timeout;
        let attempts_left = attempts.clamp(1, self.config.request_attempts.max(1)) - 1;
        self.pending
            .insert(id, Pending { to: to.clone(), deadline, purpose, body: body.clone(), attempts_left });
        self.request_deadlines.insert((deadline, id));
        self.transmit(to.clone(), Message::Request { id, body });
        id
    }

    pub(super) fn transmit(&mut self, to: A, message: Message<A>) {
        self.counters.messages_sent += 1;
        self.transmits.push_back(Transmit { to, message });
    }
}

fn body_kind<A>(body: &Response<A>) -> &'static str {
    match body {
        Response::Neighbours { .. } => "neighbours",
        Response::Ack => "ack",
        Response::Route { .. } => "route",
        Response::Refused => "refused",
    }
}
