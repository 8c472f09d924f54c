//! Data down the tree and delivery at a member: data from the parent is forwarded to the
//! children and, at a member, delivered in sequence order exactly once; what arrives early is
//! buffered within `max_out_of_order`.
//!
//! Owns a member's [`Delivery`] state per group: the next number to deliver and the buffer of
//! what came early. Invariants: numbers are delivered in increasing order without repeats; the
//! buffer holds only numbers above the next one, at most `max_out_of_order` of them from the tree
//! (fetched messages may exceed it: they were asked for); a number is passed over only by
//! [`Delivery::skip_gap`], which the caller reports as a gap.

use std::collections::BTreeMap;

use super::{GroupEvent, GroupMessage, MAX_SEQ, Multicast, Stamped};
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
}

impl<A> Delivery<A> {
    pub(super) fn new() -> Self {
        Delivery { next_seq: None, buffer: BTreeMap::new() }
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
        let next = *self.next_seq.get_or_insert(m.seq);
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
    /// contiguous; they are delivered.
    pub(super) fn drain(&mut self) -> Vec<Stamped<A>> {
        let Some(mut next) = self.next_seq else {
            return Vec::new();
        };
        let mut delivered = Vec::new();
        while let Some(m) = self.buffer.remove(&next) {
            delivered.push(m);
            next += 1;
        }
        // Anything below `next` left in the buffer is stale.
        while self.buffer.first_key_value().is_some_and(|(s, _)| *s < next) {
            self.buffer.pop_first();
        }
        self.next_seq = Some(next);
        delivered
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
        match g.delivery.receive(m, fetched, window) {
            Received::Duplicate => self.counters.duplicates += 1,
            Received::OutOfWindow => self.counters.dropped_out_of_window += 1,
            Received::Buffered => {}
            Received::Next => self.drain(mid),
        }
    }

    /// Delivers buffered messages from the next expected number on while they are contiguous.
    pub(super) fn drain(&mut self, mid: Id) {
        let g = self.groups.get_mut(&mid).expect("callers checked the group exists");
        for m in g.delivery.drain() {
            self.events.push_back(GroupEvent::Delivered {
                group: g.name.clone(),
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
        Stamped { seq, from: String::new(), body: Vec::new(), ts_ms: 0, origin: 0, publish_id: seq }
    }

    #[test]
    fn a_gap_reaching_to_the_end_of_u64_ends_at_max_seq_and_never_wraps() {
        let mut delivery = Delivery::new();
        assert!(matches!(delivery.receive(stamped(3), true, 8), Received::Next));
        assert_eq!(delivery.drain().len(), 1);
        assert!(matches!(delivery.receive(stamped(6), true, 8), Received::Buffered));
        // The caller's loop: skip, drain, until nothing is missing below `covered_to`.
        let mut gaps = Vec::new();
        while let Some(gap) = delivery.skip_gap(u64::MAX) {
            gaps.push(gap);
            delivery.drain();
            assert!(gaps.len() <= 2, "the gap loop does not end: {gaps:?}");
        }
        assert_eq!(gaps, vec![(4, 5), (7, MAX_SEQ)]);
        assert_eq!(delivery.next_seq(), Some(MAX_SEQ + 1));
    }
}
