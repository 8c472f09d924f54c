//! Data down the tree and delivery at a member: data from the parent is forwarded to the
//! children and, at a member, delivered in sequence order exactly once; what arrives early is
//! buffered within `max_out_of_order`.
//!
//! Owns a member's [`Delivery`] state per group: the next number to deliver, the buffer of what
//! came early, the epoch the member follows ([`super::epoch`]) and the publishes it delivered
//! lately. Invariants: within an epoch numbers are delivered in increasing order; no publish
//! (origin, publish id) among the last `history_messages` delivered is delivered again; the
//! buffer holds only numbers above the next one, at most `max_out_of_order` of them from the tree
//! (fetched messages may exceed it: they were asked for); a number is passed over only by
//! [`Delivery::skip_gap`], which the caller reports as a gap, or because its publish was
//! delivered already under another number.
//!
//! # Epochs
//! A message of an epoch with a higher counter than the member's means the numbering changed
//! hands. The new lineage agrees with what the member delivered only up to the new epoch's fork
//! point `base`, whether or not it continues the member's epoch (`parent`): a take-over across a
//! partition continues the old root's epoch from the copy it held, which may be older than what
//! the member delivered from that root on its side. So a member past the fork point *rewinds* to
//! `base + 1`: it fetches from there and skips, by publish id, what it delivered already. Tree
//! data of an older epoch past the member's fork point is stale (a root that lost its role) and
//! dropped; a fetch reply is the root's own lineage and is always taken, whole (see `fetch`: a
//! rewind midway through a reply does not void the reply's messages before it). A fetched
//! message of a *sibling* epoch (same counter, numbered by another node) is not the past of the
//! member's epoch: the member remembers from which number it took such messages, and goes back
//! there too at the next epoch change, so two numberings are never taken as one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{GroupEvent, GroupMessage, MAX_SEQ, Multicast, Stamped, epoch};
use crate::address::Address;
use crate::id::Id;
use crate::node::Node;
use crate::time::Time;

/// What a member does with the messages of one group.
#[derive(Clone, Debug)]
pub(super) struct Delivery<A> {
    /// The next number to deliver; `None` until the member learns where to start.
    next_seq: Option<u64>,
    /// Messages that arrived ahead of `next_seq`.
    buffer: BTreeMap<u64, Stamped<A>>,
    /// The epoch followed and its fork point, once known.
    epoch: Option<(u64, u64)>,
    /// The publishes delivered lately, oldest first, and the same as a set.
    recent: VecDeque<(A, u64)>,
    recent_set: BTreeSet<(A, u64)>,
    /// The lowest number delivered (or buffered) from a sibling of the epoch followed, taken
    /// from a fetch reply: from there on, what was delivered is not known to be that epoch's.
    mixed_from: Option<u64>,
}

/// What [`Delivery::receive`] did with a message.
pub(super) enum Received {
    /// Delivered or buffered already.
    Duplicate,
    /// Too far ahead of the next number, or the buffer is full: dropped.
    OutOfWindow,
    /// Kept until the numbers before it arrive.
    Buffered,
    /// It is the next number: [`Delivery::drain`] delivers it and what follows.
    Next,
    /// Of an older epoch, past the fork point: a root that lost its role sent it. Dropped.
    Stale,
    /// Of a newer epoch on another lineage: the member went back to the fork point (the number
    /// returned) and kept the message; gap fills in flight are for the old lineage.
    Rewound,
}

impl<A: Ord + Clone> Delivery<A> {
    pub(super) fn new() -> Self {
        Delivery {
            next_seq: None,
            buffer: BTreeMap::new(),
            epoch: None,
            recent: VecDeque::new(),
            recent_set: BTreeSet::new(),
            mixed_from: None,
        }
    }

    /// The next number to deliver, if known.
    pub(super) fn next_seq(&self) -> Option<u64> {
        self.next_seq
    }

    /// The lowest number buffered.
    pub(super) fn first_buffered(&self) -> Option<u64> {
        self.buffer.first_key_value().map(|(seq, _)| *seq)
    }

    /// Starts over from `next` (a member joined or left): the buffer is dropped.
    pub(super) fn restart(&mut self, next: Option<u64>) {
        self.next_seq = next;
        self.buffer.clear();
        self.epoch = None;
        self.recent.clear();
        self.recent_set.clear();
        self.mixed_from = None;
    }

    /// Whether the publish of `m` was delivered here lately (under whatever number).
    pub(super) fn delivered_already(&self, m: &Stamped<A>) -> bool {
        self.recent_set.contains(&(m.origin.clone(), m.publish_id))
    }

    /// Records that the publish of `m` was delivered, forgetting the oldest beyond `keep`.
    fn remember(&mut self, m: &Stamped<A>, keep: usize) {
        let key = (m.origin.clone(), m.publish_id);
        if self.recent_set.insert(key.clone()) {
            self.recent.push_back(key);
        }
        while self.recent.len() > keep.max(1) {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
    }

    /// Follows the epoch of `m` if it is newer: returns `Some(true)` when the member rewound,
    /// `Some(false)` when `m` is stale, `None` when `m` is taken as usual.
    fn follow_epoch(&mut self, m: &Stamped<A>, fetched: bool) -> Option<bool> {
        let Some((current, base)) = self.epoch else {
            self.epoch = Some((m.epoch, m.base));
            return None;
        };
        if m.epoch == current {
            return None;
        }
        if epoch::counter(m.epoch) > epoch::counter(current) {
            self.epoch = Some((m.epoch, m.base));
            let next = self.next_seq.unwrap_or(m.seq);
            // The new numbering agrees with what this member delivered only up to its fork
            // point, and only up to where the member took numbers of a sibling epoch. Even when
            // it continues the member's epoch (`parent`), the numbers past its fork point may be
            // another side's (a take-over from a copy older than what this member delivered,
            // across a partition): going back costs a fetch of numbers skipped by publish id;
            // not going back loses the other side's messages silently.
            let fork = self.mixed_from.take().map_or(m.base, |mixed| m.base.min(mixed - 1));
            if next <= fork + 1 {
                // Forks where this member has not delivered yet: what is buffered of the old
                // epoch past the fork is void.
                self.buffer.retain(|seq, b| *seq <= fork || b.epoch == m.epoch);
                return None;
            }
            self.next_seq = Some(fork + 1);
            self.buffer.clear();
            return Some(true);
        }
        if m.seq <= base {
            // Within the common prefix: genuine.
            return None;
        }
        if !fetched {
            return Some(false);
        }
        // Asked for: the answering root's lineage. An older epoch may be its own past; a sibling
        // (same counter, another node) is not this member's epoch's past, so what this member
        // delivers from it on is not known to continue `current`: remember where that started.
        if epoch::counter(m.epoch) == epoch::counter(current) {
            self.mixed_from = Some(self.mixed_from.map_or(m.seq, |s| s.min(m.seq)));
        }
        None
    }

    /// Starts from `next` unless a starting point is known already.
    pub(super) fn start_if_unknown(&mut self, next: Option<u64>) {
        if self.next_seq.is_none() {
            self.next_seq = next;
        }
    }

    /// Takes message `m` (from the tree, or `fetched` from the root). A member that did not know
    /// where to start starts with it.
    pub(super) fn receive(&mut self, m: Stamped<A>, fetched: bool, window: usize) -> Received {
        let rewound = match self.follow_epoch(&m, fetched) {
            Some(false) => return Received::Stale,
            Some(true) => true,
            None => false,
        };
        let next = *self.next_seq.get_or_insert(m.seq);
        if rewound {
            if m.seq >= next && m.seq - next <= window as u64 {
                self.buffer.insert(m.seq, m);
            }
            return Received::Rewound;
        }
        if m.seq < next || self.buffer.contains_key(&m.seq) {
            return Received::Duplicate;
        }
        if m.seq > next {
            if !fetched && (m.seq - next > window as u64 || self.buffer.len() >= window) {
                return Received::OutOfWindow;
            }
            self.buffer.insert(m.seq, m);
            return Received::Buffered;
        }
        self.buffer.insert(m.seq, m);
        Received::Next
    }

    /// Takes out, in order, the buffered messages from the next number on while they are
    /// contiguous; they are delivered, except those whose publish was delivered already (under
    /// another lineage's number), which are passed over and counted in the second value.
    pub(super) fn drain(&mut self, keep: usize) -> (Vec<Stamped<A>>, u64) {
        let Some(mut next) = self.next_seq else {
            return (Vec::new(), 0);
        };
        let mut delivered = Vec::new();
        let mut skipped = 0;
        while let Some(m) = self.buffer.remove(&next) {
            next += 1;
            if self.delivered_already(&m) {
                skipped += 1;
                continue;
            }
            self.remember(&m, keep);
            delivered.push(m);
        }
        // Anything below `next` left in the buffer is stale.
        while self.buffer.first_key_value().is_some_and(|(s, _)| *s < next) {
            self.buffer.pop_first();
        }
        self.next_seq = Some(next);
        (delivered, skipped)
    }

    /// Passes over the numbers from the next one up to `covered_to` that are not buffered (the
    /// root no longer holds them) and returns them, first and last, unless none is missing there.
    /// The caller reports the gap, then drains.
    pub(super) fn skip_gap(&mut self, covered_to: u64) -> Option<(u64, u64)> {
        // Numbers never exceed MAX_SEQ (replies are validated); the bound also keeps
        // `covered_to + 1` from wrapping to 0, which would make the caller's loop endless.
        let covered_to = covered_to.min(MAX_SEQ);
        let next = self.next_seq?;
        if next > covered_to {
            return None;
        }
        let resume =
            self.buffer.range(next..).next().map_or(covered_to + 1, |(s, _)| (*s).min(covered_to + 1));
        self.next_seq = Some(resume);
        Some((next, resume - 1))
    }
}

impl<A: Address> Multicast<A> {
    pub(super) fn on_data(
        &mut self,
        mid: Id,
        from: A,
        root: A,
        message: Stamped<A>,
        ring: &Node<A>,
        now: Time,
    ) {
        let Some(g) = self.group_from_parent(&mid, &from) else { return };
        g.root_addr = Some(root.clone());
        g.learn_head(Some(message.seq));
        let name = g.name.clone();
        let children: Vec<A> = g.tree.child_addrs();
        let member = g.member;
        for child in children {
            let data =
                GroupMessage::Data { group: name.clone(), root: root.clone(), message: message.clone() };
            self.send(child, data);
        }
        if member {
            self.member_receive(mid, message, false);
            self.check_behind(mid, ring, now);
        }
    }

    /// A member received message `m` (down the tree, or fetched when `fetched`): delivers it and
    /// whatever it unblocks, or buffers it.
    pub(super) fn member_receive(&mut self, mid: Id, m: Stamped<A>, fetched: bool) {
        let window = self.config.max_out_of_order;
        let g = self.groups.get_mut(&mid).expect("callers checked the group exists");
        let seq = m.seq;
        match g.delivery.receive(m, fetched, window) {
            Received::Duplicate => self.counters.duplicates += 1,
            Received::OutOfWindow => self.counters.dropped_out_of_window += 1,
            Received::Stale => self.counters.dropped_stale_epoch += 1,
            Received::Buffered => {}
            Received::Next => self.drain(mid),
            Received::Rewound => {
                // The gap fill in flight asks the old lineage: forget it, and re-read from the
                // fork point once check_behind runs.
                self.counters.rewinds += 1;
                g.head = Some(seq);
                if let Some(request) = g.gap.restart() {
                    self.fetches.forget(request);
                }
                self.drain(mid);
            }
        }
    }

    /// Delivers buffered messages from the next expected number on while they are contiguous.
    pub(super) fn drain(&mut self, mid: Id) {
        let keep = self.config.history_messages;
        let g = self.groups.get_mut(&mid).expect("callers checked the group exists");
        let (delivered, skipped) = g.delivery.drain(keep);
        self.counters.redeliveries_skipped += skipped;
        for m in delivered {
            self.events.push_back(GroupEvent::Delivered {
                group: g.name.clone(),
                epoch: m.epoch,
                seq: m.seq,
                from: m.from,
                body: m.body,
                ts_ms: m.ts_ms,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(seq: u64) -> Stamped<u8> {
        Stamped {
            seq,
            from: String::new(),
            body: Vec::new(),
            ts_ms: 0,
            origin: 0,
            publish_id: seq,
            epoch: 0,
            parent: 0,
            base: 0,
        }
    }

    fn in_epoch(seq: u64, publish_id: u64, (epoch, parent, base): (u64, u64, u64)) -> Stamped<u8> {
        Stamped { publish_id, epoch, parent, base, ..stamped(seq) }
    }

    fn deliver(delivery: &mut Delivery<u8>, m: Stamped<u8>, fetched: bool) -> Vec<u64> {
        delivery.receive(m, fetched, 64);
        delivery.drain(1024).0.into_iter().map(|m| m.publish_id).collect()
    }

    #[test]
    fn an_epoch_that_continues_ours_from_below_what_we_delivered_makes_the_member_go_back() {
        // Epoch `a` numbered 1..=4 here; across a partition another node took over from a copy
        // that held 1..=2 only and numbered 3.. in `c` (parent `a`, fork point 2). The member
        // delivered a's 3 and 4: c's 3 and 4 are other messages, to be fetched, not passed over.
        let a = epoch::next(0, 0xAA00_0000_0000_0000);
        let c = epoch::next(1, 0xCC00_0000_0000_0000);
        let mut delivery = Delivery::new();
        for seq in 1..=4 {
            assert_eq!(deliver(&mut delivery, in_epoch(seq, seq, (a, 0, 0)), false), vec![seq]);
        }
        assert!(matches!(delivery.receive(in_epoch(5, 105, (c, a, 2)), false, 64), Received::Rewound));
        assert_eq!(delivery.next_seq(), Some(3));
        // The fetch from the fork point: c's 3 and 4, then 5.
        assert_eq!(deliver(&mut delivery, in_epoch(3, 103, (c, a, 2)), true), vec![103]);
        assert_eq!(deliver(&mut delivery, in_epoch(4, 104, (c, a, 2)), true), vec![104, 105]);
    }

    #[test]
    fn numbers_fetched_from_a_sibling_epoch_are_read_again_when_a_later_epoch_continues_ours() {
        // Two nodes numbered afresh (counter 1): `a` stamped 1..=3, sibling `b` stamped 1.. other
        // publishes. The member delivered a's 1 and 2, then fetched b's 3 and 4 (a fetch reply is
        // taken whole). A later epoch `c` continuing `a` from 0 must not be taken as continuing
        // what this member delivered: it goes back to 1 and skips, by publish id, what it has.
        let a = epoch::next(0, 0xAA00_0000_0000_0000);
        let b = epoch::next(0, 0xBB00_0000_0000_0000);
        let c = epoch::next(1, 0xCC00_0000_0000_0000);
        let mut delivery = Delivery::new();
        assert_eq!(deliver(&mut delivery, in_epoch(1, 1, (a, 0, 0)), false), vec![1]);
        assert_eq!(deliver(&mut delivery, in_epoch(2, 2, (a, 0, 0)), false), vec![2]);
        assert_eq!(deliver(&mut delivery, in_epoch(3, 23, (b, 0, 0)), true), vec![23]);
        assert_eq!(deliver(&mut delivery, in_epoch(4, 24, (b, 0, 0)), true), vec![24]);
        assert!(matches!(delivery.receive(in_epoch(5, 35, (c, a, 4)), false, 64), Received::Rewound));
        assert_eq!(delivery.next_seq(), Some(3));
    }

    #[test]
    fn a_gap_reaching_to_the_end_of_u64_ends_at_max_seq_and_never_wraps() {
        let mut delivery = Delivery::new();
        assert!(matches!(delivery.receive(stamped(3), true, 8), Received::Next));
        assert_eq!(delivery.drain(16).0.len(), 1);
        assert!(matches!(delivery.receive(stamped(6), true, 8), Received::Buffered));
        // The caller's loop: skip, drain, until nothing is missing below `covered_to`.
        let mut gaps = Vec::new();
        while let Some(gap) = delivery.skip_gap(u64::MAX) {
            gaps.push(gap);
            delivery.drain(16);
            assert!(gaps.len() <= 2, "the gap loop does not end: {gaps:?}");
        }
        assert_eq!(gaps, vec![(4, 5), (7, MAX_SEQ)]);
        assert_eq!(delivery.next_seq(), Some(MAX_SEQ + 1));
    }
}
