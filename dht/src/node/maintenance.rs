//! Ring maintenance after Zave's corrected Chord rules: becoming active, stabilize (following
//! closer predecessors, then adopting a successor), rectify, predecessor checks, fixing fingers,
//! successor checks by lookup, rejoining when the successor list runs out, neighbours that leave,
//! and the end of this node's own graceful leave.
//!
//! Invariants kept here:
//! - a successor is adopted only once it has answered, and the list is rebuilt by
//!   `merge_successors` (clockwise from this node, without it, at most `r` entries);
//! - a stabilize round never trades the current successor for a farther one, and follows at most
//!   `MAX_STABILIZE_CHASE` predecessors;
//! - periodic work does not pile up: stabilize, the predecessor check, the rectify probe, the
//!   finger fix and the successor check each skip their turn while one of theirs is in flight (the
//!   `stabilizing`, `checking_predecessor`, `probing_predecessor`, `fixing_finger` and
//!   `checking_successor` flags);
//! - changes of predecessor and successor list made through `set_predecessor`, `forget` and
//!   `adopt_successor` are reported as events (`reset_routing`, on join and leave, clears them
//!   without events).

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use tracing::{debug, trace};

use crate::address::{Address, NodeRef};
use crate::finger::FingerTable;
use crate::lookup::Purpose as LookupPurpose;
use crate::message::Request;
use crate::ring::merge_successors;
use crate::time::Time;

use super::{Event, FAST_STABILIZE_DIVISOR, FAST_STABILIZE_ROUNDS, Node, Phase, Purpose};

/// In steady state, every this many stabilize rounds the successor is also checked by a lookup.
const SUCCESSOR_CHECK_EVERY: u32 = 4;

/// Most predecessors one stabilize round follows towards the true successor.
const MAX_STABILIZE_CHASE: u8 = 32;

impl<A: Address> Node<A> {
    pub(super) fn activate(&mut self, now: Time) {
        self.phase = Phase::Active;
        // Spread periodic work so that nodes started together do not act in lock-step.
        let jitter = |rng: &mut ChaCha8Rng, period: std::time::Duration| {
            let micros = u64::try_from(period.as_micros()).unwrap_or(u64::MAX).max(1);
            std::time::Duration::from_micros(rng.random_range(0..micros))
        };
        self.next_stabilize = now + jitter(&mut self.rng, self.config.stabilize_interval);
        self.next_check_predecessor = now + jitter(&mut self.rng, self.config.check_predecessor_interval);
        self.next_fix_fingers = now + jitter(&mut self.rng, self.config.fix_fingers_interval);
    }

    pub(super) fn reset_routing(&mut self) {
        self.predecessor = None;
        self.successors.clear();
        self.fingers = FingerTable::default();
        self.announced = false;
        self.stabilizing = false;
        self.fixing_finger = false;
        self.checking_predecessor = false;
        self.probing_predecessor = false;
        self.rejoining = false;
        self.checking_successor = false;
        self.passive.clear();
        self.last_burst = None;
        self.merge_lookups.clear();
    }

    pub(super) fn stabilize(&mut self, now: Time) {
        if self.stabilizing || self.rejoining {
            return;
        }
        self.stabilize_rounds = self.stabilize_rounds.wrapping_add(1);
        let check_due = self.fast_rounds > 0 || self.stabilize_rounds.is_multiple_of(SUCCESSOR_CHECK_EVERY);
        if check_due && !self.checking_successor && !self.successors.is_empty() {
            // Stabilize only ever hears of nodes through the successor's predecessor. Nodes that
            // joined concurrently can form chains interleaved with the ring, each link consistent
            // on its own, which stabilize undoes one link per round; a lookup of our own successor
            // through the ring finds the right one in a single step.
            self.check_successor(now);
        }
        let purpose = if let Some(successor) = self.successors.first().cloned() {
            Purpose::Stabilize { successor }
        } else if let Some(candidate) = self.predecessor.clone() {
            // Alone so far, but someone notified us: it is our successor too, once it answers.
            Purpose::StabilizeCandidate { candidate, fallback: None, chased: 0 }
        } else {
            return;
        };
        let to = match &purpose {
            Purpose::Stabilize { successor } => successor.addr.clone(),
            Purpose::StabilizeCandidate { candidate, .. } => candidate.addr.clone(),
            _ => unreachable!("only the two purposes above are built here"),
        };
        self.stabilizing = true;
        self.send_request(&to, Request::GetNeighbours, purpose, now);
    }

    pub(super) fn check_predecessor(&mut self, now: Time) {
        if self.checking_predecessor {
            return;
        }
        if let Some(predecessor) = self.predecessor.clone() {
            self.checking_predecessor = true;
            let to = predecessor.addr.clone();
            self.send_request(&to, Request::Ping, Purpose::CheckPredecessor { predecessor }, now);
        }
    }

    pub(super) fn fix_next_finger(&mut self, now: Time) {
        if self.fixing_finger {
            return;
        }
        let Some(successor) = self.successors.first().cloned() else {
            return;
        };
        // Fingers whose start lies before the successor need no lookup.
        let mut i = self.fingers.next_index();
        let mut wrapped = false;
        while self.me.id.finger_start(i).in_open_closed(&self.me.id, &successor.id) {
            self.fingers.settle(&self.me.id, i, Some(successor.clone()));
            let next = self.fingers.next_index();
            if next <= i {
                if wrapped {
                    return;
                }
                wrapped = true;
            }
            i = next;
        }
        self.fixing_finger = true;
        let target = self.me.id.finger_start(i);
        self.start_lookup(target, LookupPurpose::FixFinger(i), now);
    }

    /// Zave's rectify: adopt `candidate` as predecessor if there is none, or it lies between the
    /// current one and this node; otherwise check that the current one is still alive.
    pub(super) fn rectify(&mut self, candidate: NodeRef<A>, now: Time) {
        match self.predecessor.clone() {
            Some(p) if p.addr == candidate.addr => {}
            Some(p) if !candidate.id.in_open(&p.id, &self.me.id) => {
                if !self.probing_predecessor {
                    self.probing_predecessor = true;
                    let to = p.addr.clone();
                    self.send_request(
                        &to,
                        Request::Ping,
                        Purpose::RectifyProbe { predecessor: p, candidate },
                        now,
                    );
                }
            }
            _ => {
                trace!(node = %self.me.id.short(), predecessor = %candidate.id.short(), "rectify");
                self.set_predecessor(Some(candidate));
                self.hurry_stabilize(now);
                if self.successors.is_empty() {
                    // A ring of one learns its successor from its first notifier: stabilize now.
                    self.next_stabilize = now;
                }
            }
        }
    }

    pub(super) fn on_neighbour_leaving(&mut self, from: &A, leaver_successors: &[NodeRef<A>], now: Time) {
        let was_successor = self.successors.first().is_some_and(|s| &s.addr == from);
        self.forget(from);
        if self.predecessor.as_ref().is_some_and(|p| &p.addr == from) {
            // The leaver's predecessor will notify us once it learns we follow it.
            self.set_predecessor(None);
        }
        if was_successor {
            if self.successors.is_empty() {
                if let Some(next) = leaver_successors.iter().find(|n| n.addr != self.me.addr).cloned() {
                    self.stabilizing = true;
                    let to = next.addr.clone();
                    self.send_request(
                        &to,
                        Request::GetNeighbours,
                        Purpose::StabilizeCandidate { candidate: next, fallback: None, chased: 0 },
                        now,
                    );
                }
            } else {
                self.next_stabilize = now;
            }
        }
    }

    pub(super) fn finish_leave(&mut self) {
        self.phase = Phase::Left;
        self.reset_routing();
        self.events.push_back(Event::Left);
    }

    pub(super) fn on_leave_acknowledged(&mut self) {
        if let Phase::Leaving { awaiting, .. } = &mut self.phase {
            *awaiting = awaiting.saturating_sub(1);
            if *awaiting == 0 {
                self.finish_leave();
            }
        }
    }

    /// Looks up the successor of `me + 1`, routed from a random finger rather than from this node's
    /// own successor list (which would only confirm what it already believes).
    fn check_successor(&mut self, now: Time) {
        let successor = self.successor().addr.clone();
        let others: Vec<NodeRef<A>> = self
            .fingers
            .distinct()
            .chain(self.predecessor.iter())
            .filter(|n| n.addr != successor)
            .cloned()
            .collect();
        if others.is_empty() {
            return;
        }
        let start = others[self.rng.random_range(0..others.len())].clone();
        self.checking_successor = true;
        let target = self.me.id.finger_start(0);
        self.start_routed_lookup(target, LookupPurpose::CheckSuccessor, vec![start], now);
    }

    /// Every successor has failed. Taking the predecessor as successor would close a loop that
    /// wraps the ring twice, so instead look up this node's own id through whatever nodes are still
    /// known (predecessor, fingers), and adopt the owner that answers. Only if nobody is left does
    /// this node become a ring of one.
    pub(super) fn rejoin(&mut self, now: Time) {
        if self.rejoining || !self.is_member() {
            return;
        }
        let mut known: Vec<NodeRef<A>> = self.predecessor.iter().cloned().collect();
        known.extend(self.fingers.distinct().cloned());
        if known.is_empty() {
            debug!(node = %self.me.id.short(), "no node left to rejoin through: alone");
            return;
        }
        debug!(node = %self.me.id.short(), known = known.len(), "successor list exhausted: rejoining");
        self.rejoining = true;
        let target = self.me.id;
        self.start_routed_lookup(target, LookupPurpose::Rejoin, known, now);
    }

    /// `node` answered with its predecessor and list. If that predecessor lies between this node and
    /// `node`, it is a closer successor: ask it next (adopting nothing until it answers), still
    /// within this stabilize round, so that a node that joined with a far successor converges in
    /// round trips rather than stabilize periods. Otherwise adopt `node`.
    pub(super) fn chase_or_adopt(
        &mut self,
        node: NodeRef<A>,
        predecessor: Option<NodeRef<A>>,
        successors: Vec<NodeRef<A>>,
        chased: u8,
        now: Time,
    ) {
        // The successor may have moved closer while this round was in flight (a successor check
        // found a nearer node): never trade it for a farther one.
        let current = self.successor().id;
        if !self.successors.is_empty() && !node.id.in_open_closed(&self.me.id, &current) {
            return;
        }
        match predecessor {
            Some(p)
                if chased < MAX_STABILIZE_CHASE
                    && p.addr != self.me.addr
                    && p.id.in_open(&self.me.id, &node.id) =>
            {
                self.stabilizing = true;
                let to = p.addr.clone();
                self.send_request(
                    &to,
                    Request::GetNeighbours,
                    Purpose::StabilizeCandidate {
                        candidate: p,
                        fallback: Some((node, successors)),
                        chased: chased + 1,
                    },
                    now,
                );
            }
            _ => self.adopt_successor(node, &successors, now),
        }
    }

    /// Makes `head` (which has just answered) the successor, with `tail` (its list) behind it,
    /// and notifies it.
    pub(super) fn adopt_successor(&mut self, head: NodeRef<A>, tail: &[NodeRef<A>], now: Time) {
        if !self.is_member() {
            return;
        }
        let list = merge_successors(&self.me, &head, tail, self.config.successors.get());
        if list.first() != self.successors.first() {
            self.hurry_stabilize(now);
        }
        // A closer successor that does not know our current one: they come from two rings being
        // merged (or its view is stale). Hand the displaced node over, so that it is woven in
        // after the new successor instead of being cut off.
        if let Some(old) = self.successors.first().cloned()
            && old.addr != head.addr
            && head.id.in_open(&self.me.id, &old.id)
            && !list.iter().any(|n| n.addr == old.addr)
        {
            self.send_merge(&head.addr, old, 0, now);
        }
        for node in &list {
            self.passive.remove(&node.addr);
        }
        if list != self.successors {
            trace!(node = %self.me.id.short(), successor = %head.id.short(), "successor list updated");
            self.successors = list;
            self.events.push_back(Event::SuccessorsChanged { successors: self.successors.clone() });
        }
        let to = head.addr.clone();
        self.send_request(&to, Request::Notify, Purpose::Notify, now);
    }

    /// Neighbours just changed, so more changes are likely nearby (nodes joining or failing
    /// together): run the next few stabilize rounds at a faster pace.
    pub(super) fn hurry_stabilize(&mut self, now: Time) {
        self.fast_rounds = FAST_STABILIZE_ROUNDS;
        let soon = now + self.config.stabilize_interval / FAST_STABILIZE_DIVISOR;
        if soon < self.next_stabilize {
            self.next_stabilize = soon;
        }
    }

    pub(super) fn set_predecessor(&mut self, predecessor: Option<NodeRef<A>>) {
        if self.predecessor != predecessor {
            self.predecessor = predecessor;
            self.events.push_back(Event::PredecessorChanged { predecessor: self.predecessor.clone() });
        }
    }

    /// Drops a node believed dead (or gone) from the successor list and fingers.
    pub(super) fn forget(&mut self, addr: &A) {
        let before = self.successors.len();
        self.successors.retain(|n| &n.addr != addr);
        if self.successors.len() != before {
            self.events.push_back(Event::SuccessorsChanged { successors: self.successors.clone() });
        }
        self.fingers.forget(addr);
        self.forget_cached(addr);
    }
}
