//! Ring maintenance after Zave's corrected Chord rules: becoming active, stabilize (following
//! closer predecessors, then adopting a successor), rectify, predecessor checks, fixing fingers,
//! successor checks by lookup, rejoining when the successor list runs out, neighbours that leave,
//! and the end of this node's own graceful leave.
//!
//! Maintenance adapts to change (issue 17). While the neighbourhood stays the same, the stabilize
//! period doubles after each round up to `Config::stabilize_backoff_max`, and the finger-refresh
//! period doubles after each full round of fingers that check out, up to
//! `Config::fix_fingers_backoff_max`;
//! `unsettle` brings both back to their configured base at the first sign of change (a request
//! that timed out, a lookup that failed, a new predecessor or successor, a changed successor list,
//! a notify from a node other than the predecessor, a neighbour leaving, a join). Work that other
//! traffic already does is not repeated: a finger is checked with one request (its predecessor)
//! and looked up only when the check fails, a successor that already lists us as its
//! predecessor is not notified again, and the predecessor is pinged only when its own stabilize
//! requests have stopped reaching us (`predecessor_recently_heard`). What a backed-off node would
//! otherwise learn late is pushed to it: a node whose successor list changed sends it to its
//! predecessor at once (`successors_changed`), so a change crosses the r nodes that list it in
//! round trips, not r backed-off rounds; and a request that times out makes the node sweep its
//! whole finger table at a fast pace once (`sweep_fingers`).
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
//!   without events), and each of them calls `unsettle`;
//! - the stabilize period stays within [`Config::stabilize_interval`,
//!   `Config::stabilize_backoff_max`], so a crashed successor is noticed within that bound plus
//!   one request's attempts, at rest as under churn.

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

/// At rest (stabilize period backed off to its bound), every this many stabilize rounds: the
/// check guards against interleaved chains that concurrent joins or merges leave behind, which
/// do not arise in a ring where nothing changes.
const CALM_SUCCESSOR_CHECK_EVERY: u32 = 16;

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
        self.stabilize_period = self.config.stabilize_interval;
        self.finger_period = self.config.fix_fingers_interval;
    }

    /// Something changed nearby: maintenance goes back to its base pace, and a backed-off round
    /// still far away is brought forward to one base period from now.
    pub(super) fn unsettle(&mut self, now: Time) {
        self.stabilize_period = self.config.stabilize_interval;
        self.finger_period = self.config.fix_fingers_interval;
        self.fingers_checked = 0;
        if !self.is_member() {
            return;
        }
        self.next_stabilize = self.next_stabilize.min(now + self.config.stabilize_interval);
        self.next_fix_fingers = self.next_fix_fingers.min(now + self.config.fix_fingers_interval);
    }

    /// A peer stopped answering: nodes may have crashed, and some of them may be our fingers,
    /// which nothing but a finger check reveals (a message routed through a dead finger is lost
    /// without a reply). Check the whole table at a fast pace once, so that routes through the
    /// dead are gone within a few seconds of the first time-out rather than a backed-off round
    /// later. Costs nothing at rest, where nothing times out.
    pub(super) fn sweep_fingers(&mut self, now: Time) {
        if !self.is_member() || self.fast_fingers > 0 {
            return;
        }
        self.fast_fingers = self.fingers.distinct().count();
        let soon = now + self.config.fix_fingers_interval / super::FAST_STABILIZE_DIVISOR;
        self.next_fix_fingers = self.next_fix_fingers.min(soon);
    }

    /// Whether the stabilize period has backed off to its bound: nothing has changed nearby for
    /// a while.
    fn is_calm(&self) -> bool {
        self.stabilize_period >= self.config.stabilize_backoff_max()
    }

    pub(super) fn reset_routing(&mut self) {
        self.predecessor = None;
        self.further_predecessors.clear();
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
        self.stabilize_with(now, self.config.request_attempts);
    }

    /// The successor did not answer any attempt: fall back to the next entry of the list. The
    /// next entries are asked once each rather than `request_attempts` times: after a crash of
    /// several consecutive nodes, the list is walked at one `rpc_timeout` per dead entry instead of
    /// all attempts' worth. Skipping a live entry whose answer was lost costs little: the entry
    /// adopted instead names it as its predecessor, and stabilize chases it in the same round.
    pub(super) fn stabilize_after_timeout(&mut self, now: Time) {
        self.stabilize_with(now, 1);
    }

    fn stabilize_with(&mut self, now: Time, attempts: u32) {
        if self.stabilizing || self.rejoining {
            return;
        }
        self.stabilize_rounds = self.stabilize_rounds.wrapping_add(1);
        let every = if self.is_calm() { CALM_SUCCESSOR_CHECK_EVERY } else { SUCCESSOR_CHECK_EVERY };
        let check_due = self.fast_rounds > 0 || self.stabilize_rounds.is_multiple_of(every);
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
        let predecessors = self.predecessors();
        self.send_request_attempts(&to, Request::GetNeighbours { predecessors }, purpose, attempts, now);
    }

    /// Whether the predecessor has shown it is alive recently enough that a ping would tell
    /// nothing new. A live predecessor asks us for our list at least every
    /// `Config::stabilize_backoff_max`; the window adds one `rpc_timeout` for the message's way.
    /// A predecessor silent for longer is pinged as before, so a crashed one is dropped at most
    /// one window later than by pinging every `check_predecessor_interval`, and the usual repair
    /// (its predecessor adopts us and notifies, and rectify probes it) does not wait for this.
    pub(super) fn predecessor_recently_heard(&self, now: Time) -> bool {
        let window = self.config.check_predecessor_interval.max(self.config.stabilize_backoff_max())
            + self.config.rpc_timeout;
        self.predecessor.is_some() && now < self.predecessor_heard + window
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
        match self.fingers.get(i).cloned() {
            // A known finger is checked with one request; a lookup only if the check fails.
            Some(finger) if finger.addr != self.me.addr => {
                let to = finger.addr.clone();
                self.send_request(
                    &to,
                    Request::GetNeighbours { predecessors: Vec::new() },
                    Purpose::CheckFinger { index: i, finger },
                    now,
                );
            }
            _ => {
                let target = self.me.id.finger_start(i);
                self.start_lookup(target, LookupPurpose::FixFinger(i), now);
            }
        }
    }

    /// Finger `index` (`finger`) answered with its predecessor. It is still succ(start) iff start
    /// lies in (predecessor, finger]: then keep it and let the refresh slow down; otherwise a node
    /// joined or left there, so look the finger up and refresh at the base pace again.
    pub(super) fn on_finger_checked(
        &mut self,
        index: usize,
        finger: NodeRef<A>,
        predecessor: Option<NodeRef<A>>,
        now: Time,
    ) {
        let start = self.me.id.finger_start(index);
        if predecessor.is_some_and(|p| start.in_open_closed(&p.id, &finger.id)) {
            self.fixing_finger = false;
            self.fingers.settle(&self.me.id, index, Some(finger));
            // Slow down only once the whole table has checked out at the current pace: after a
            // sign of change every finger is checked again at the base pace, not just the first
            // few before the period has doubled past the rest. A dead finger swallows whatever is
            // routed through it without a reply (multicast publishes, joins), so after a crash
            // wave the table must be swept within a few base periods, not a few minutes.
            self.fingers_checked += 1;
            if self.fingers_checked >= self.fingers.distinct().count() {
                self.fingers_checked = 0;
                self.finger_period = (self.finger_period * 2).min(self.config.fix_fingers_backoff_max());
            }
        } else {
            self.finger_period = self.config.fix_fingers_interval;
            self.fingers_checked = 0;
            self.start_lookup(start, LookupPurpose::FixFinger(index), now);
        }
    }

    /// Zave's rectify: adopt `candidate` as predecessor if there is none, or it lies between the
    /// current one and this node; otherwise check that the current one is still alive.
    pub(super) fn rectify(&mut self, candidate: NodeRef<A>, now: Time) {
        match self.predecessor.clone() {
            Some(p) if p.addr == candidate.addr => {}
            Some(p) if !candidate.id.in_open(&p.id, &self.me.id) => {
                // A node that believes it precedes us, but is not our predecessor: ours may have
                // died, or the ring is reshaping nearby.
                self.unsettle(now);
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
                self.set_predecessor(Some(candidate), now);
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
        self.unsettle(now);
        self.forget(from, now);
        if self.predecessor.as_ref().is_some_and(|p| &p.addr == from) {
            // The leaver's predecessor will notify us once it learns we follow it.
            self.set_predecessor(None, now);
        }
        if was_successor {
            if self.successors.is_empty() {
                if let Some(next) = leaver_successors.iter().find(|n| n.addr != self.me.addr).cloned() {
                    self.stabilizing = true;
                    let to = next.addr.clone();
                    self.send_request(
                        &to,
                        Request::GetNeighbours { predecessors: Vec::new() },
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
        let predecessor_is_me = predecessor.as_ref().is_some_and(|p| p.addr == self.me.addr);
        match predecessor {
            Some(p)
                if chased < MAX_STABILIZE_CHASE
                    && p.addr != self.me.addr
                    && p.id.in_open(&self.me.id, &node.id) =>
            {
                self.stabilizing = true;
                let to = p.addr.clone();
                // A node we have just declared dead is asked once, not `request_attempts` times:
                // the successor that named it has not noticed yet, and after a crash of several
                // neighbours every round would otherwise spend a whole time-out on it again. Were
                // it alive after all (a lost answer, a healed partition), its probes from the
                // passive list and the next rounds bring it back.
                let attempts = if self.passive.contains(&to) { 1 } else { self.config.request_attempts };
                self.send_request_attempts(
                    &to,
                    Request::GetNeighbours { predecessors: Vec::new() },
                    Purpose::StabilizeCandidate {
                        candidate: p,
                        fallback: Some((node, successors)),
                        chased: chased + 1,
                    },
                    attempts,
                    now,
                );
            }
            _ => {
                let knows_me = predecessor_is_me;
                self.adopt_successor(node, &successors, knows_me, now)
            }
        }
    }

    /// Makes `head` (which has just answered) the successor, with `tail` (its list) behind it,
    /// and notifies it, unless it answered that we are its predecessor already (`knows_me`).
    pub(super) fn adopt_successor(
        &mut self,
        head: NodeRef<A>,
        tail: &[NodeRef<A>],
        knows_me: bool,
        now: Time,
    ) {
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
        let changed = list != self.successors;
        if changed {
            trace!(node = %self.me.id.short(), successor = %head.id.short(), "successor list updated");
            self.successors = list;
            self.successors_changed(now);
        }
        // The notify would only confirm what the successor already believes; its Ack matters
        // only before we are announced.
        if knows_me && self.announced && !changed {
            return;
        }
        let to = head.addr.clone();
        self.send_request(&to, Request::Notify, Purpose::Notify, now);
    }

    /// Neighbours just changed, so more changes are likely nearby (nodes joining or failing
    /// together): run the next few stabilize rounds at a faster pace.
    pub(super) fn hurry_stabilize(&mut self, now: Time) {
        self.unsettle(now);
        self.fast_rounds = FAST_STABILIZE_ROUNDS;
        let soon = now + self.config.stabilize_interval / FAST_STABILIZE_DIVISOR;
        if soon < self.next_stabilize {
            self.next_stabilize = soon;
        }
    }

    pub(super) fn set_predecessor(&mut self, predecessor: Option<NodeRef<A>>, now: Time) {
        if self.predecessor != predecessor {
            self.predecessor = predecessor;
            self.further_predecessors.clear();
            self.events.push_back(Event::PredecessorChanged { predecessor: self.predecessor.clone() });
            self.unsettle(now);
        }
    }

    /// Drops a node believed dead (or gone) from the successor list and fingers.
    pub(super) fn forget(&mut self, addr: &A, now: Time) {
        let before = self.successors.len();
        self.successors.retain(|n| &n.addr != addr);
        if self.successors.len() != before {
            self.successors_changed(now);
        }
        self.fingers.forget(addr);
        self.forget_cached(addr);
    }

    /// The successor list has just been replaced: report it, go back to the base pace, and tell
    /// the predecessor, whose list is this one shifted by one. Without the push a change would
    /// reach the node r hops back only after r of its predecessors' stabilize rounds, each up to
    /// `Config::stabilize_backoff_max` away; meanwhile their lists name replica sets that miss
    /// nodes (after a partition heals, the other side's), and a quorum read through such a list
    /// answers "not found" for a key its true replicas hold. At rest nothing changes and nothing
    /// is pushed.
    fn successors_changed(&mut self, now: Time) {
        self.events.push_back(Event::SuccessorsChanged { successors: self.successors.clone() });
        self.unsettle(now);
        if let Some(predecessor) = self.predecessor.clone()
            && self.is_member()
        {
            let body = Request::SuccessorsChanged { successors: self.successors.clone() };
            self.send_request_attempts(&predecessor.addr, body, Purpose::PushSuccessors, 1, now);
        }
    }

    /// Our successor `from` pushed its new list: take it as stabilize would have. A push from any
    /// other node is ignored: only the successor's own list is trusted to extend ours, and a node
    /// that believes it follows us but is not our successor is for stabilize to chase.
    pub(super) fn on_successors_pushed(&mut self, from: &A, successors: &[NodeRef<A>], now: Time) {
        let Some(head) = self.successors.first().cloned() else {
            return;
        };
        if &head.addr != from {
            return;
        }
        let list = merge_successors(&self.me, &head, successors, self.config.successors.get());
        if list != self.successors {
            for node in &list {
                self.passive.remove(&node.addr);
            }
            self.successors = list;
            self.successors_changed(now);
        }
    }
}
