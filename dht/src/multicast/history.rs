//! The bounded history of a group: the stamped messages a root keeps so that members can fill
//! gaps and ask for what they missed, and the copy of it a backup holds.
//!
//! Owns the messages by number, the time each was stamped (or copied), and an index from
//! (publishing node, publish id) to number, by which a root recognises a retried publish.
//!
//! Invariants: every message is filed under its own number; the index names only numbers held
//! here (trimming drops both together); trimming at the root never drops a message that has not
//! been released down the tree; a page of history fits the frame budget it is asked for.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Stamped, wire};
use crate::address::Address;
use crate::time::Time;

/// Stamped messages by number, with the time each was stamped or copied here.
#[derive(Clone, Debug)]
pub(super) struct History<A> {
    messages: BTreeMap<u64, (Stamped<A>, Time)>,
    /// (origin, publish id) → number.
    by_origin: BTreeMap<(A, u64), u64>,
}

impl<A: Address> History<A> {
    pub(super) fn new() -> Self {
        History { messages: BTreeMap::new(), by_origin: BTreeMap::new() }
    }

    /// A history of `messages`, all dated `now` (a batch received from another node).
    pub(super) fn from_batch(messages: Vec<Stamped<A>>, now: Time) -> Self {
        let mut history = History::new();
        for m in messages {
            history.by_origin.insert((m.origin.clone(), m.publish_id), m.seq);
            history.messages.insert(m.seq, (m, now));
        }
        history
    }

    /// The highest number held.
    pub(super) fn last_seq(&self) -> Option<u64> {
        self.messages.last_key_value().map(|(seq, _)| *seq)
    }

    /// Message `seq`, if held.
    pub(super) fn get(&self, seq: u64) -> Option<&Stamped<A>> {
        self.messages.get(&seq).map(|(m, _)| m)
    }

    /// The number under which `origin`'s publish `id` was stamped, if it is still held.
    pub(super) fn seq_of(&self, origin: &A, id: u64) -> Option<u64> {
        self.by_origin.get(&(origin.clone(), id)).copied()
    }

    /// Files a message the root just stamped.
    pub(super) fn stamp(&mut self, message: Stamped<A>, now: Time) {
        self.by_origin.insert((message.origin.clone(), message.publish_id), message.seq);
        self.messages.insert(message.seq, (message, now));
    }

    /// Takes in a copy (a backup's, or a hand-off): numbers already held keep their message, but
    /// every copied publish is indexed, so that its retries are recognised.
    pub(super) fn merge(&mut self, copy: History<A>) {
        for (seq, entry) in copy.messages {
            self.by_origin.insert((entry.0.origin.clone(), entry.0.publish_id), seq);
            self.messages.entry(seq).or_insert(entry);
        }
    }

    /// Adds a copied message unless its number is held already.
    pub(super) fn insert_copy(&mut self, message: Stamped<A>, now: Time) {
        if let std::collections::btree_map::Entry::Vacant(slot) = self.messages.entry(message.seq) {
            self.by_origin.insert((message.origin.clone(), message.publish_id), message.seq);
            slot.insert((message, now));
        }
    }

    /// The root's trim: drops the oldest messages while more than `max` are held or they are older
    /// than `age`, but never one above `released` (it has not been sent down yet).
    pub(super) fn trim(&mut self, released: u64, max: usize, age: Duration, now: Time) {
        while let Some((&seq, (_, at))) = self.messages.first_key_value() {
            let too_many = self.messages.len() > max;
            let too_old = now.saturating_since(*at) > age;
            if seq > released || !(too_many || too_old) {
                break;
            }
            let (m, _) = self.messages.remove(&seq).expect("first key present");
            self.by_origin.remove(&(m.origin, m.publish_id));
        }
    }

    /// A backup's trim: keeps the newest `max` messages.
    pub(super) fn keep_newest(&mut self, max: usize) {
        while self.messages.len() > max {
            let Some((_, (m, _))) = self.messages.pop_first() else { break };
            if self.by_origin.get(&(m.origin.clone(), m.publish_id)) == Some(&m.seq) {
                self.by_origin.remove(&(m.origin, m.publish_id));
            }
        }
    }

    /// Every message held, in order.
    pub(super) fn messages(&self) -> Vec<Stamped<A>> {
        self.messages.values().map(|(m, _)| m.clone()).collect()
    }

    /// The messages numbered `from` and above, in order.
    pub(super) fn messages_from(&self, from: u64) -> Vec<Stamped<A>> {
        self.messages.range(from..).map(|(_, (m, _))| m.clone()).collect()
    }

    /// One reply's worth of `from..=end`: the messages held there that fit `budget` bytes, and
    /// the number the page speaks for up to (`end`, or the last message when the budget cut it
    /// short). Numbers in the range that are not in the page fell out of the history.
    pub(super) fn page(&self, from: u64, end: u64, budget: usize) -> (Vec<Stamped<A>>, u64) {
        let mut covered_to = end;
        let mut page = Vec::new();
        if from <= end {
            let wanted: Vec<Stamped<A>> =
                self.messages.range(from..=end).map(|(_, (m, _))| m.clone()).collect();
            if let Some(first) = wire::batches(&wanted, budget).into_iter().next() {
                if first.len() < wanted.len() {
                    covered_to = first.last().map_or(end, |m| m.seq);
                }
                page = first;
            }
        }
        (page, covered_to)
    }
}
