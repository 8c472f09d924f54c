//! The root of a group: numbering publishes, replicating every stamped message to the first
//! successors (backups) before releasing it down the tree, acknowledging publishers, and moving
//! the role — hand-off to a new owner of `mid`, take-over from a backup copy, or learning the head
//! from the successor before numbering anything.
//!
//! Owns [`RootState`], the part of a group only its root has: head, released mark, the
//! acknowledgements of the first backup, the history, publishes queued while the head is learnt,
//! and the timers of state queries, backup heartbeats and re-replication.
//!
//! Invariants: a root numbers only once it knows the head (`ready`); numbers are handed out from
//! `head + 1`, gap-free; a message is sent down only once the first backup holds it, and in
//! order (`released` only grows by one); a retried publish is numbered at most once while it is in
//! the history; state is accepted only from the root's ring neighbourhood.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use tracing::debug;

use super::backup::{HandedOff, Replica};
use super::group::Group;
use super::history::History;
use super::tree::Joining;
use super::{
    GroupEvent, GroupMessage, GroupName, MAX_ROUTE_HOPS, Multicast, PublishId, Stamped, epoch, wire,
};
use crate::address::{Address, NodeRef};
use crate::id::Id;
use crate::node::Node;
use crate::time::Time;

/// A state query unanswered this many times makes the owner start a fresh numbering.
const MAX_STATE_QUERIES: u32 = 20;
/// After a hand-off a new root keeps the role this long even if its ring view does not yet say it
/// owns `mid` (the old owner's leave notice may still be on its way).
const HANDOFF_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub(super) struct QueuedPublish<A> {
    pub(super) origin: NodeRef<A>,
    pub(super) id: u64,
    pub(super) from: String,
    pub(super) body: Vec<u8>,
    pub(super) ts_ms: u64,
}

/// What a root keeps for its group.
#[derive(Clone, Debug)]
pub(super) struct RootState<A> {
    /// False while the head is being learnt from the successor.
    pub(super) ready: bool,
    pub(super) query_deadline: Time,
    pub(super) queries: u32,
    /// Highest number stamped.
    pub(super) head: u64,
    /// Highest number sent down (everything up to it is held by the first backup).
    pub(super) released: u64,
    pub(super) acked: BTreeSet<u64>,
    pub(super) history: History<A>,
    /// Publishes that arrived while the head was being learnt.
    pub(super) queued: VecDeque<QueuedPublish<A>>,
    /// Backups that received the whole history.
    pub(super) synced: BTreeSet<A>,
    pub(super) next_heartbeat: Time,
    pub(super) repl_deadline: Option<Time>,
    /// Keep the role until then even if the ring view disagrees (fresh hand-off).
    pub(super) hold_until: Time,
    /// The epoch this root numbers in, the epoch it continues, and its fork point.
    pub(super) epoch: u64,
    pub(super) parent: u64,
    pub(super) base: u64,
    /// The node whose state this root adopted, and until when further batches from it continue
    /// that hand-off rather than meet another numbering.
    pub(super) adopting: Option<(A, Time)>,
}

impl<A: Address> RootState<A> {
    pub(super) fn pending(now: Time) -> Self {
        RootState {
            ready: false,
            query_deadline: now,
            queries: 0,
            head: 0,
            released: 0,
            acked: BTreeSet::new(),
            history: History::new(),
            queued: VecDeque::new(),
            synced: BTreeSet::new(),
            next_heartbeat: now,
            repl_deadline: None,
            hold_until: now,
            epoch: 0,
            parent: 0,
            base: 0,
            adopting: None,
        }
    }

    /// A root continuing from a copy: everything the copy holds counts as released, since it is
    /// now held by two nodes (the previous root or backup, and this one). It starts numbering in
    /// a new epoch ([`super::epoch`]) after the head: whether the previous root cooperated (a
    /// hand-off) or not (a take-over, possibly while it lives on across a partition) cannot be
    /// told for sure, and a new epoch costs members that continue the previous one nothing.
    /// Messages of another lineage the copy held (foreign) are queued to be numbered anew; the
    /// epoch's fork point goes back to where that lineage forked. Returns how many foreign
    /// messages were lost to the bound and how many were queued to be numbered anew.
    pub(super) fn adopt(&mut self, head: u64, history: History<A>, me_short: u64) -> (u64, usize) {
        let was_ready = self.ready;
        self.ready = true;
        self.history.merge(history);
        self.head = self.head.max(head).max(self.history.last_seq().unwrap_or(0));
        self.released = self.head;
        self.acked.clear();
        let (foreign, dropped) = self.history.take_foreign();
        let seen = self.seen_counter(&foreign);
        if !was_ready {
            self.parent = self.history.get(self.head).map_or(0, |m| m.epoch);
            self.base = self.head;
            self.epoch = epoch::next(seen, me_short);
        }
        let (fresh, fork) = self.other_lineage(foreign);
        let renumbered = fresh.len();
        if !fresh.is_empty() {
            if was_ready {
                self.start_meet_epoch(seen, fork, me_short);
            } else {
                self.base = self.base.min(fork);
            }
            self.queued.extend(fresh);
        }
        (dropped, renumbered)
    }

    /// Takes in the numbering of another root that met this one (a partition healed): messages
    /// of this lineage fill holes; those of the other are numbered anew, in a new epoch whose
    /// fork point is where the two lineages forked. Returns the messages to number, in order.
    pub(super) fn meet(
        &mut self,
        others: Vec<Stamped<A>>,
        me_short: u64,
        now: Time,
    ) -> Vec<QueuedPublish<A>> {
        let seen = self.seen_counter(&others);
        let lineage = self.lineage();
        let mut other = Vec::new();
        for m in others {
            let held = self.history.get(m.seq);
            if held.is_none() && m.seq <= self.head && lineage.contains(&m.epoch) {
                // Ours, trimmed here or never copied: a hole filled, not a new message.
                self.history.insert_copy(m, now);
            } else if held.is_none_or(|h| (&h.origin, h.publish_id) != (&m.origin, m.publish_id)) {
                other.push(m);
            }
        }
        let (fresh, fork) = self.other_lineage(other);
        if !fresh.is_empty() {
            self.start_meet_epoch(seen, fork, me_short);
        }
        fresh
    }

    /// The highest epoch counter of this root and of `messages`.
    fn seen_counter(&self, messages: &[Stamped<A>]) -> u64 {
        let theirs = messages.iter().map(|m| epoch::counter(m.epoch)).max().unwrap_or(0);
        let ours = self.history.epochs().into_iter().map(epoch::counter).max().unwrap_or(0);
        theirs.max(ours).max(epoch::counter(self.epoch))
    }

    /// The epochs of this root's lineage, as far back as it knows.
    fn lineage(&self) -> BTreeSet<u64> {
        let mut lineage = self.history.epochs();
        lineage.extend([self.epoch, self.parent]);
        lineage
    }

    /// Of `others` (messages of another lineage), those whose publish this root does not hold,
    /// as publishes to number, and the fork point: the last number both lineages agree on.
    fn other_lineage(&self, others: Vec<Stamped<A>>) -> (Vec<QueuedPublish<A>>, u64) {
        let lineage = self.lineage();
        let mut fork = self.head;
        let mut fresh: Vec<QueuedPublish<A>> = Vec::new();
        for m in others {
            if self.history.seq_of(&m.origin, m.publish_id).is_some()
                || fresh.iter().any(|q| (&q.origin.addr, q.id) == (&m.origin, m.publish_id))
            {
                continue;
            }
            // An epoch of our lineage diverged only at this number; another epoch at its base.
            let diverged = if lineage.contains(&m.epoch) { m.seq - 1 } else { m.base };
            fork = fork.min(diverged);
            fresh.push(QueuedPublish {
                origin: NodeRef { id: m.origin.node_id(), addr: m.origin },
                id: m.publish_id,
                from: m.from,
                body: m.body,
                ts_ms: m.ts_ms,
            });
        }
        (fresh, fork)
    }

    /// Starts the epoch in which a root numbers another lineage's messages after a meet.
    fn start_meet_epoch(&mut self, seen: u64, fork: u64, me_short: u64) {
        self.parent = self.epoch;
        self.base = fork.min(self.head);
        self.epoch = epoch::next(seen, me_short);
    }

    /// Numbers `publish` with the next number and files it in the history; it is released once
    /// the first backup acknowledges it.
    fn stamp(&mut self, publish: QueuedPublish<A>, now: Time) -> Stamped<A> {
        self.head += 1;
        let stamped = Stamped {
            seq: self.head,
            from: publish.from,
            body: publish.body,
            ts_ms: publish.ts_ms,
            origin: publish.origin.addr,
            publish_id: publish.id,
            epoch: self.epoch,
            parent: self.parent,
            base: self.base,
        };
        self.history.stamp(stamped.clone(), now);
        stamped
    }

    /// Counts every stamped but unreleased number as held by the first backup (there is none, or
    /// the role is being handed off with the whole history).
    fn ack_unreleased(&mut self) {
        for seq in self.released + 1..=self.head {
            self.acked.insert(seq);
        }
    }

    /// The first backup holds `first..=last`: those of them stamped and unreleased may go down.
    fn ack(&mut self, first: u64, last: u64) {
        for seq in first.max(self.released + 1)..=last.min(self.head) {
            self.acked.insert(seq);
        }
    }

    /// The next step of releasing in order: the next number is not acknowledged yet (`Wait`), or
    /// it is released now, with its message unless trimmed already.
    fn release_next(&mut self) -> Release<A> {
        let next = self.released + 1;
        if !self.acked.remove(&next) {
            if self.released >= self.head {
                self.repl_deadline = None;
            }
            return Release::Wait;
        }
        self.released = next;
        match self.history.get(next) {
            Some(message) => Release::Send(message.clone()),
            None => Release::Trimmed,
        }
    }
}

/// One step of [`RootState::release_next`].
enum Release<A> {
    /// Nothing more may be released yet.
    Wait,
    /// The next number was released but is no longer in the history (far smaller than the
    /// backlog): there is nothing to send.
    Trimmed,
    /// The next number was released: send it down.
    Send(Stamped<A>),
}

impl<A: Address> Multicast<A> {
    /// Takes the root role for `mid`: from a backup copy or hand-off if this node holds one, else
    /// by asking the successor for the state first.
    pub(super) fn become_root(&mut self, mid: Id, ring: &Node<A>, now: Time) {
        let Some(g) = self.groups.get_mut(&mid) else {
            return;
        };
        if g.root.is_some() {
            return;
        }
        let name = g.name.clone();
        let old_parent = g.tree.parent.take();
        g.tree.joining = None;
        g.tree.depth = Some(0);
        g.tree.detached_since = None;
        g.root_addr = Some(self.me.addr.clone());
        let mut root = RootState::pending(now);
        if let Some(replica) = self.backups.take(&mid) {
            self.counters.takeovers += 1;
            self.counters.epochs_started += 1;
            let (dropped, renumbered) = root.adopt(replica.head, replica.history, self.me_short);
            self.counters.split_messages_dropped += dropped;
            self.counters.split_messages_renumbered += renumbered as u64;
            debug!(group = %name, head = root.head, "took the root role over from a backup copy");
        } else if let Some(successor) = ring.successors().first().filter(|s| s.addr != self.me.addr) {
            root.queries = 1;
            root.query_deadline = now + self.config.rpc_timeout;
            let to = successor.addr.clone();
            self.send(to, GroupMessage::StateQuery { group: name.clone() });
        } else {
            self.counters.epochs_started += 1;
            root.adopt(0, History::new(), self.me_short);
        }
        let g = self.groups.get_mut(&mid).expect("present: read above");
        g.root = Some(root);
        if let Some(p) = old_parent {
            self.send(p.addr, GroupMessage::Prune { group: name });
        }
        self.on_root_ready(mid, ring, now);
    }

    /// Gives up a root role that never got its state (our ring view was wrong or changed): passes
    /// queued publishes on toward the real root and joins it (`root`, when known) instead.
    pub(super) fn abandon_pending_root(&mut self, mid: Id, root: Option<A>, ring: &Node<A>, now: Time) {
        let g = self.groups.get_mut(&mid).expect("callers checked the group exists");
        let Some(state) = g.root.take() else {
            return;
        };
        debug!(group = %g.name, "not the owner of mid after all: giving up the root role");
        g.tree.depth = None;
        g.root_addr = root.clone();
        let name = g.name.clone();
        for publish in state.queued {
            let QueuedPublish { origin, id, from, body, ts_ms } = publish;
            let message =
                GroupMessage::Publish { group: name.clone(), origin, id, from, body, ts_ms, hops: 0 };
            match root.clone().or_else(|| self.route(ring, &mid, &[], now).map(|n| n.addr)) {
                Some(to) => self.send(to, message),
                None => self.counters.dropped_no_route += 1,
            }
        }
        match root {
            Some(to) => {
                let g = self.groups.get_mut(&mid).expect("present");
                g.tree.joining =
                    Some(Joining { to: Some(to.clone()), deadline: now + self.config.rpc_timeout });
                self.counters.joins_sent += 1;
                self.send(to, GroupMessage::Join { group: name, hops: 0 });
            }
            None => self.start_join(mid, ring, now, 0),
        }
    }

    /// Once the root knows its head: numbers queued publishes and starts a local member's
    /// delivery.
    pub(super) fn on_root_ready(&mut self, mid: Id, ring: &Node<A>, now: Time) {
        let Some(g) = self.groups.get_mut(&mid) else {
            return;
        };
        let Some(root) = g.root.as_mut().filter(|r| r.ready) else {
            return;
        };
        g.head = Some(root.released);
        if g.member {
            g.delivery.start_if_unknown(Some(root.released + 1));
        }
        let queued = std::mem::take(&mut root.queued);
        let name = g.name.clone();
        for publish in queued {
            self.root_publish(mid, &name, publish, ring, now);
        }
        self.check_behind(mid, ring, now);
    }

    pub(super) fn on_publish(
        &mut self,
        mid: Id,
        group: GroupName,
        publish: QueuedPublish<A>,
        hops: u8,
        ring: &Node<A>,
        now: Time,
    ) {
        let rooted = self.groups.get(&mid).is_some_and(|g| g.root.is_some());
        if !rooted && ring.owns(&mid) && self.may_root(&mid, now) {
            if !self.groups.contains_key(&mid) {
                if self.groups.len() >= self.config.max_groups {
                    self.counters.dropped_overload += 1;
                    return;
                }
                self.groups.insert(mid, Group::new(group.clone(), now));
            }
            self.become_root(mid, ring, now);
        }
        if self.groups.get(&mid).is_some_and(|g| g.root.is_some()) {
            self.root_publish(mid, &group, publish, ring, now);
            return;
        }
        let next = if hops >= MAX_ROUTE_HOPS { None } else { self.toward_root(ring, &mid, &[], now) };
        match next {
            Some(next) => {
                let QueuedPublish { origin, id, from, body, ts_ms } = publish;
                let message = GroupMessage::Publish { group, origin, id, from, body, ts_ms, hops: hops + 1 };
                self.send(next, message);
            }
            None => self.counters.dropped_no_route += 1,
        }
    }

    pub(super) fn root_publish(
        &mut self,
        mid: Id,
        group: &GroupName,
        publish: QueuedPublish<A>,
        ring: &Node<A>,
        now: Time,
    ) {
        let max_queued = self.config.max_pending_publishes;
        let g = self.groups.get_mut(&mid).expect("callers checked the root exists");
        let root = g.root.as_mut().expect("callers checked the root exists");
        if !root.ready {
            if root.queued.len() < max_queued {
                root.queued.push_back(publish);
            } else {
                self.counters.dropped_overload += 1;
            }
            return;
        }
        if let Some(seq) = root.history.seq_of(&publish.origin.addr, publish.id) {
            self.counters.duplicate_publishes += 1;
            if seq <= root.released {
                self.ack_publisher(group, &publish.origin.addr, publish.id, seq);
            }
            return;
        }
        let stamped = root.stamp(publish, now);
        let seq = stamped.seq;
        let backups = self.backup_set(ring);
        if backups.is_empty() {
            let root = self.groups.get_mut(&mid).and_then(|g| g.root.as_mut()).expect("present: used above");
            root.acked.insert(seq);
            self.release(mid);
            return;
        }
        let root = self.groups.get_mut(&mid).and_then(|g| g.root.as_mut()).expect("present: used above");
        root.repl_deadline.get_or_insert(now + self.config.rpc_timeout);
        for b in backups {
            let message = GroupMessage::Replicate {
                group: group.clone(),
                head: seq,
                messages: vec![stamped.clone()],
                handoff: false,
            };
            self.send(b, message);
        }
        self.trim_root_history(mid, now);
    }

    pub(super) fn backup_set(&self, ring: &Node<A>) -> Vec<A> {
        ring.successors()
            .iter()
            .filter(|s| s.addr != self.me.addr)
            .take(self.config.backups)
            .map(|s| s.addr.clone())
            .collect()
    }

    /// Sends down, in order, every stamped message the first backup holds.
    pub(super) fn release(&mut self, mid: Id) {
        loop {
            let g = self.groups.get_mut(&mid).expect("callers checked the group exists");
            let root = g.root.as_mut().expect("callers checked the root exists");
            let message = match root.release_next() {
                Release::Wait => return,
                Release::Trimmed => continue,
                Release::Send(message) => message,
            };
            let next = message.seq;
            g.head = Some(next);
            let name = g.name.clone();
            let children: Vec<A> = g.tree.child_addrs();
            let member = g.member;
            for child in children {
                let data = GroupMessage::Data {
                    group: name.clone(),
                    root: self.me.addr.clone(),
                    message: message.clone(),
                };
                self.send(child, data);
            }
            self.ack_publisher(&name, &message.origin, message.publish_id, next);
            if member {
                self.member_receive(mid, message, false);
            }
        }
    }

    pub(super) fn ack_publisher(&mut self, group: &GroupName, origin: &A, id: u64, seq: u64) {
        if *origin == self.me.addr {
            if self.publishes.acknowledged(id, group) {
                self.events.push_back(GroupEvent::Published { id: PublishId(id), group: group.clone(), seq });
            }
        } else {
            self.send(origin.clone(), GroupMessage::PublishAck { group: group.clone(), id, seq });
        }
    }

    pub(super) fn trim_root_history(&mut self, mid: Id, now: Time) {
        let (max, max_bytes, age) =
            (self.config.history_messages, self.config.history_bytes, self.config.history_age);
        let Some(root) = self.groups.get_mut(&mid).and_then(|g| g.root.as_mut()) else {
            return;
        };
        self.counters.history_evicted_for_bytes += root.history.trim(root.released, max, max_bytes, age, now);
    }

    pub(super) fn tick_root(&mut self, mid: Id, ring: &Node<A>, now: Time) {
        let config = self.config.clone();
        let g = self.groups.get_mut(&mid).expect("callers pass present keys");
        let name = g.name.clone();
        let root = g.root.as_mut().expect("callers checked the root exists");
        if !root.ready && Self::surely_not_owner(ring, &mid) {
            self.abandon_pending_root(mid, None, ring, now);
            return;
        }
        if !root.ready {
            if root.query_deadline <= now {
                if root.queries >= MAX_STATE_QUERIES || ring.successors().is_empty() {
                    debug!(group = %name, "no state learnt: numbering afresh");
                    self.counters.fresh_roots += 1;
                    self.counters.epochs_started += 1;
                    root.adopt(0, History::new(), self.me_short);
                    self.on_root_ready(mid, ring, now);
                } else {
                    root.queries += 1;
                    root.query_deadline = now + config.rpc_timeout;
                    if let Some(s) = ring.successors().first() {
                        let to = s.addr.clone();
                        self.send(to, GroupMessage::StateQuery { group: name });
                    }
                }
            }
            return;
        }
        if root.hold_until <= now
            && Self::surely_not_owner(ring, &mid)
            && let Some(predecessor) = ring.predecessor()
        {
            // mid ∉ (predecessor, us]: the predecessor lies in [mid, us), so it is the new owner or
            // the next node back toward it (which hands on in turn).
            debug!(group = %name, to = ?predecessor.addr, "no longer owner of mid: handing the root role off");
            let to = predecessor.addr.clone();
            self.hand_off(mid, to, now);
            self.start_join(mid, ring, now, 0);
            return;
        }
        // Backups: new ones get the whole history; all get the head now and then.
        let backups = self.backup_set(ring);
        let g = self.groups.get_mut(&mid).expect("present");
        let root = g.root.as_mut().expect("present");
        root.synced.retain(|b| backups.contains(b));
        let fresh: Vec<A> = backups.iter().filter(|b| !root.synced.contains(*b)).cloned().collect();
        let heartbeat = root.next_heartbeat <= now;
        if heartbeat {
            root.next_heartbeat = now + config.backup_heartbeat;
        }
        let head = root.head;
        // Copied only when some backup needs it: the history may hold thousands of messages.
        let history = if fresh.is_empty() { Vec::new() } else { root.history.messages() };
        for b in &fresh {
            root.synced.insert(b.clone());
        }
        for b in fresh {
            self.send_state(&b, &name, head, &history, false);
        }
        if heartbeat {
            for b in &backups {
                let beat = GroupMessage::Replicate {
                    group: name.clone(),
                    head,
                    messages: Vec::new(),
                    handoff: false,
                };
                self.send(b.clone(), beat);
            }
        }
        // Unacknowledged stamps: resend to the current backups, or release when alone.
        let root = self.groups.get_mut(&mid).and_then(|g| g.root.as_mut()).expect("present");
        if root.released < root.head {
            if backups.is_empty() {
                root.ack_unreleased();
                self.release(mid);
            } else if root.repl_deadline.is_some_and(|t| t <= now) {
                root.repl_deadline = Some(now + config.rpc_timeout);
                let unreleased = root.history.messages_from(root.released + 1);
                self.counters.replication_retries += 1;
                for b in &backups {
                    for batch in wire::batches(&unreleased, config.max_frame_bytes - 4096) {
                        let message = GroupMessage::Replicate {
                            group: name.clone(),
                            head,
                            messages: batch,
                            handoff: false,
                        };
                        self.send(b.clone(), message);
                    }
                }
            }
        }
        self.trim_root_history(mid, now);
    }

    /// Sends a group's head and history (`messages`, in order) to `to`, in batches that fit the
    /// frame cap.
    pub(super) fn send_state(
        &mut self,
        to: &A,
        name: &GroupName,
        head: u64,
        messages: &[Stamped<A>],
        handoff: bool,
    ) {
        let batches = wire::batches(messages, self.config.max_frame_bytes - 4096);
        if batches.is_empty() {
            let message =
                GroupMessage::Replicate { group: name.clone(), head, messages: Vec::new(), handoff };
            self.send(to.clone(), message);
        }
        for batch in batches {
            let message = GroupMessage::Replicate { group: name.clone(), head, messages: batch, handoff };
            self.send(to.clone(), message);
        }
    }

    /// Sends a backup copy (`history`) to `to`: its messages, then the foreign ones it set aside
    /// (another lineage's, not numbered here yet), so that the receiver numbers them anew.
    pub(super) fn send_copy(
        &mut self,
        to: &A,
        name: &GroupName,
        head: u64,
        history: &History<A>,
        handoff: bool,
    ) {
        self.send_state(to, name, head, &history.messages(), handoff);
        for run in history.foreign_runs() {
            self.send_state(to, name, head, &run, handoff);
        }
    }

    /// Gives the root role to `to`: releases what is stamped, sends it the state, and keeps a
    /// copy as a backup (this node is usually the new root's successor). The caller re-joins.
    pub(super) fn hand_off(&mut self, mid: Id, to: A, now: Time) {
        let g = self.groups.get_mut(&mid).expect("callers checked the group exists");
        if let Some(root) = g.root.as_mut() {
            root.ack_unreleased();
        }
        self.release(mid);
        let g = self.groups.get_mut(&mid).expect("present");
        let root = g.root.take().expect("callers checked the root exists");
        let name = g.name.clone();
        g.tree.depth = None;
        g.root_addr = Some(to.clone());
        self.yielded.insert(mid, (to.clone(), now + HANDOFF_GRACE * 2));
        self.counters.handoffs += 1;
        self.send_state(&to, &name, root.head, &root.history.messages(), true);
        let handoff = Some(HandedOff { to: to.clone(), sends: 1, resend_at: None });
        let copy = Replica { name, head: root.head, history: root.history, updated: now, handoff };
        self.backups.keep(mid, copy, self.config.max_groups);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_replicate(
        &mut self,
        mid: Id,
        from: A,
        group: GroupName,
        head: u64,
        messages: Vec<Stamped<A>>,
        handoff: bool,
        ring: &Node<A>,
        now: Time,
    ) {
        // Only the root (which lies between mid and us, we being its successor), our ring
        // neighbours (hand-off from the successor, state answers) may push state.
        let sender = from.node_id();
        let plausible = sender == mid
            || sender.in_open(&mid, &self.me.id)
            || ring.successors().iter().any(|s| s.addr == from)
            || ring.predecessor().is_some_and(|p| p.addr == from);
        if !plausible {
            self.counters.dropped_unauthorized += 1;
            if handoff {
                // Say so: the sender kept a copy, the only one of its numbering, and sends it
                // again once ring views agree (see `backup::HandedOff`).
                self.send(from, GroupMessage::Rejoin { group });
            }
            return;
        }
        let range = messages.first().map(|f| f.seq).zip(messages.last().map(|l| l.seq));
        let rooted = self.groups.get(&mid).is_some_and(|g| g.root.is_some());
        if rooted {
            let g = self.groups.get_mut(&mid).expect("present");
            let root = g.root.as_mut().expect("present");
            if root.ready && !handoff {
                // Another node believes it is the root: its view is stale; it hands off soon.
                self.counters.dropped_unexpected += 1;
                return;
            }
            let was_ready = root.ready;
            let epoch_before = root.epoch;
            let continuing = root.adopting.as_ref().is_some_and(|(a, until)| *a == from && *until > now);
            if was_ready && !continuing {
                // Two roots met (a partition healed, or ring views disagreed): the other side's
                // messages are numbered anew here, once each; see `RootState::meet`.
                let fresh = root.meet(messages, self.me_short, now);
                if root.epoch != epoch_before {
                    self.counters.epochs_started += 1;
                }
                self.counters.split_messages_renumbered += fresh.len() as u64;
                debug!(group = %group, from = ?from, renumbered = fresh.len(), "took in another root's numbering");
                for publish in fresh {
                    self.root_publish(mid, &group, publish, ring, now);
                }
                return;
            }
            let (dropped, renumbered) = root.adopt(head, History::from_batch(messages, now), self.me_short);
            if !was_ready {
                root.adopting = Some((from.clone(), now + HANDOFF_GRACE));
            }
            if root.epoch != epoch_before {
                self.counters.epochs_started += 1;
            }
            self.counters.split_messages_dropped += dropped;
            self.counters.split_messages_renumbered += renumbered as u64;
            if ring.predecessor().is_some_and(|p| p.addr == from) || !Self::surely_not_owner(ring, &mid) {
                root.hold_until = now + HANDOFF_GRACE;
            }
            self.on_root_ready(mid, ring, now);
            return;
        }
        match self.backups.store(mid, &group, head, messages, now, &self.config) {
            Some(for_bytes) => self.counters.history_evicted_for_bytes += for_bytes,
            None => {
                self.counters.dropped_overload += 1;
                return;
            }
        }
        if let Some((first, last)) = range
            && !handoff
        {
            self.send(from.clone(), GroupMessage::ReplicateAck { group: group.clone(), first, last });
        }
        if handoff {
            if !self.groups.contains_key(&mid) {
                if self.groups.len() >= self.config.max_groups {
                    self.counters.dropped_overload += 1;
                    return;
                }
                self.groups.insert(mid, Group::new(group, now));
            }
            self.yielded.remove(&mid);
            self.become_root(mid, ring, now);
            // Keep the role for a while unless our own view says someone before us owns mid — but
            // a hand-off from our predecessor means it is leaving, whatever our view says yet.
            let from_predecessor = ring.predecessor().is_some_and(|p| p.addr == from);
            let hold = from_predecessor || !Self::surely_not_owner(ring, &mid);
            if let Some(root) = self.groups.get_mut(&mid).and_then(|g| g.root.as_mut()) {
                // Further batches of this hand-off continue it.
                root.adopting = Some((from.clone(), now + HANDOFF_GRACE));
                if hold {
                    root.hold_until = now + HANDOFF_GRACE;
                }
            }
        }
    }

    pub(super) fn on_replicate_ack(&mut self, mid: Id, from: A, first: u64, last: u64, ring: &Node<A>) {
        let primary = ring.successors().first().is_some_and(|s| s.addr == from);
        let Some(root) = self.groups.get_mut(&mid).and_then(|g| g.root.as_mut()).filter(|r| r.ready) else {
            self.counters.dropped_unexpected += 1;
            return;
        };
        if !primary {
            // The second backup's acknowledgements are not waited for.
            return;
        }
        root.ack(first, last);
        self.release(mid);
    }

    pub(super) fn on_state_query(&mut self, mid: Id, from: A, group: GroupName, ring: &Node<A>, now: Time) {
        let asker = from.node_id();
        // The asker owns mid in its view; it does if it lies in [mid, us).
        let legit = asker == mid || asker.in_open(&mid, &self.me.id);
        if self.groups.get(&mid).is_some_and(|g| g.root.as_ref().is_some_and(|r| r.ready)) {
            if legit {
                self.hand_off(mid, from, now);
                self.start_join(mid, ring, now, 0);
            } else {
                // Its ring view is stale: we are the root; it should join, not number.
                self.counters.dropped_unauthorized += 1;
                self.send(from, GroupMessage::Rejoin { group });
            }
            return;
        }
        if self.groups.get(&mid).is_some_and(|g| g.root.is_some()) {
            return; // learning the state ourselves
        }
        if !legit {
            // By our view the asker does not own mid; answering "no state" could make it start a
            // second numbering.
            self.counters.dropped_unauthorized += 1;
            return;
        }
        if let Some(replica) = self.backups.get(&mid) {
            let (name, head, history) = (replica.name.clone(), replica.head, replica.history.clone());
            self.send_copy(&from, &name, head, &history, true);
        } else {
            self.send(from, GroupMessage::Replicate { group, head: 0, messages: Vec::new(), handoff: true });
        }
    }
}
