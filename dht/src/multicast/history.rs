//! The bounded history of a group: the stamped messages a root keeps so that members can fill
//! gaps and ask for what they missed, and the copy of it a backup holds.
//!
//! Owns the messages by number, the time each was stamped (or copied), an index from
//! (publishing node, publish id) to number, by which a root recognises a retried publish, and the
//! sum of the messages' sizes ([`Stamped::approx_size`]), which the byte budget bounds.
//!
//! It also keeps, apart, the *foreign* messages: copies that arrived for a number already held by
//! another message (another root numbered from the same head during a partition). They are not
//! part of this lineage; a root that adopts the history numbers them anew (see `root`).
//!
//! Invariants: every message is filed under its own number; the index names only numbers held
//! here (trimming drops both together); at most [`MAX_FOREIGN`] foreign messages, those beyond
//! counted in `foreign_dropped`; `bytes` is the sum of the held messages' sizes; trimming
//! drops the oldest first and at the root never drops a message that has not been released down
//! the tree (so a root may exceed its budgets by what it has not released yet); a page of history
//! fits the frame budget it is asked for.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Stamped, wire};
use crate::address::Address;
use crate::time::Time;

/// Most foreign messages (of another lineage) a history keeps until a root numbers them anew.
pub(super) const MAX_FOREIGN: usize = 1024;

/// Stamped messages by number, with the time each was stamped or copied here.
#[derive(Clone, Debug)]
pub(super) struct History<A> {
    messages: BTreeMap<u64, (Stamped<A>, Time)>,
    /// Copies of messages of another lineage whose number is held here by a different message.
    foreign: Vec<Stamped<A>>,
    /// Foreign messages refused for [`MAX_FOREIGN`].
    foreign_dropped: u64,
    /// (origin, publish id) → number.
    by_origin: BTreeMap<(A, u64), u64>,
    /// Sum of the held messages' [`Stamped::approx_size`].
    bytes: usize,
}

impl<A: Address> History<A> {
    pub(super) fn new() -> Self {
        History {
            messages: BTreeMap::new(),
            foreign: Vec::new(),
            foreign_dropped: 0,
            by_origin: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// A history of `messages`, all dated `now` (a batch received from another node).
    pub(super) fn from_batch(messages: Vec<Stamped<A>>, now: Time) -> Self {
        let mut history = History::new();
        for m in messages {
            history.insert_copy(m, now);
        }
        history
    }

    /// The sum of the held messages' sizes ([`Stamped::approx_size`]).
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
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
        self.bytes += message.approx_size();
        if let Some((old, _)) = self.messages.insert(message.seq, (message, now)) {
            self.bytes -= old.approx_size();
        }
    }

    /// Takes in a copy (a backup's, or a hand-off): numbers already held keep their message; a
    /// copied message whose number holds another one is kept as foreign.
    pub(super) fn merge(&mut self, copy: History<A>) {
        self.foreign_dropped += copy.foreign_dropped;
        for (_, (message, at)) in copy.messages {
            self.insert_copy(message, at);
        }
        for message in copy.foreign {
            self.insert_foreign(message);
        }
    }

    /// Adds a copied message unless it is held already; one whose number holds another message
    /// (another lineage's) is kept as foreign.
    pub(super) fn insert_copy(&mut self, message: Stamped<A>, now: Time) {
        match self.messages.entry(message.seq) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                self.by_origin.insert((message.origin.clone(), message.publish_id), message.seq);
                self.bytes += message.approx_size();
                slot.insert((message, now));
            }
            std::collections::btree_map::Entry::Occupied(held) => {
                let held = &held.get().0;
                if (&held.origin, held.publish_id) != (&message.origin, message.publish_id) {
                    self.insert_foreign(message);
                }
            }
        }
    }

    /// Keeps `message` of another lineage, unless its publish is held already or the bound is
    /// reached (then it is counted).
    fn insert_foreign(&mut self, message: Stamped<A>) {
        let key = (message.origin.clone(), message.publish_id);
        if self.by_origin.contains_key(&key)
            || self.foreign.iter().any(|f| (&f.origin, f.publish_id) == (&key.0, key.1))
        {
            return;
        }
        if self.foreign.len() >= MAX_FOREIGN {
            self.foreign_dropped += 1;
            return;
        }
        self.foreign.push(message);
    }

    /// Takes out the foreign messages, in number order, and how many were refused for the bound.
    pub(super) fn take_foreign(&mut self) -> (Vec<Stamped<A>>, u64) {
        let mut foreign = std::mem::take(&mut self.foreign);
        foreign.sort_by_key(|m| (m.seq, m.epoch));
        (foreign, std::mem::take(&mut self.foreign_dropped))
    }

    /// The epochs of the messages held: this lineage, as far back as the history reaches.
    pub(super) fn epochs(&self) -> std::collections::BTreeSet<u64> {
        self.messages.values().map(|(m, _)| m.epoch).collect()
    }

    /// The root's trim: drops the oldest messages while more than `max` are held, they hold more
    /// than `max_bytes`, or they are older than `age`, but never one above `released` (it has not
    /// been sent down yet). Returns how many went for the byte budget alone.
    pub(super) fn trim(
        &mut self,
        released: u64,
        max: usize,
        max_bytes: usize,
        age: Duration,
        now: Time,
    ) -> u64 {
        let mut for_bytes = 0;
        while let Some((&seq, (_, at))) = self.messages.first_key_value() {
            let too_many = self.messages.len() > max;
            let too_big = self.bytes > max_bytes;
            let too_old = now.saturating_since(*at) > age;
            if seq > released || !(too_many || too_big || too_old) {
                break;
            }
            if too_big && !too_many && !too_old {
                for_bytes += 1;
            }
            self.remove_first();
        }
        for_bytes
    }

    /// A backup's trim: keeps the newest messages, at most `max` of them and `max_bytes` in all.
    /// Returns how many went for the byte budget alone.
    pub(super) fn keep_newest(&mut self, max: usize, max_bytes: usize) -> u64 {
        let mut for_bytes = 0;
        while self.messages.len() > max || self.bytes > max_bytes {
            if self.messages.len() <= max {
                for_bytes += 1;
            }
            if !self.remove_first() {
                break;
            }
        }
        for_bytes
    }

    /// Drops the oldest message; false when none is held.
    fn remove_first(&mut self) -> bool {
        let Some((_, (m, _))) = self.messages.pop_first() else { return false };
        self.bytes -= m.approx_size();
        if self.by_origin.get(&(m.origin.clone(), m.publish_id)) == Some(&m.seq) {
            self.by_origin.remove(&(m.origin, m.publish_id));
        }
        true
    }

    /// The foreign messages, split into runs of increasing numbers (a batch on the wire must be
    /// increasing, and two foreign messages may share a number): what a copy handed on must
    /// carry besides [`History::messages`], or the other lineage's messages it set aside are lost.
    pub(super) fn foreign_runs(&self) -> Vec<Vec<Stamped<A>>> {
        let mut foreign = self.foreign.clone();
        foreign.sort_by_key(|m| (m.seq, m.epoch));
        let mut runs: Vec<Vec<Stamped<A>>> = Vec::new();
        for m in foreign {
            match runs.iter_mut().find(|run| run.last().is_some_and(|l| l.seq < m.seq)) {
                Some(run) => run.push(m),
                None => runs.push(vec![m]),
            }
        }
        runs
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimAddr;

    const AGE: Duration = Duration::from_secs(600);

    fn message(seq: u64, body: usize) -> Stamped<SimAddr> {
        Stamped {
            seq,
            from: "u".into(),
            body: vec![0; body],
            ts_ms: 0,
            origin: SimAddr(1),
            publish_id: seq,
            epoch: 0,
            parent: 0,
            base: 0,
        }
    }

    fn seqs(history: &History<SimAddr>) -> Vec<u64> {
        history.messages().iter().map(|m| m.seq).collect()
    }

    #[test]
    fn the_byte_budget_evicts_the_oldest_first_and_counts_them() {
        let (mut history, now) = (History::new(), Time::ZERO);
        for seq in 1..=10 {
            history.stamp(message(seq, 1000), now);
        }
        let size = message(1, 1000).approx_size();
        assert_eq!(history.bytes(), 10 * size);

        // Room for four: the six oldest go, each counted as evicted for bytes.
        assert_eq!(history.trim(10, 1024, 4 * size, AGE, now), 6);
        assert_eq!(seqs(&history), [7, 8, 9, 10]);
        assert_eq!(history.bytes(), 4 * size);
        assert_eq!(history.seq_of(&SimAddr(1), 6), None, "the index forgets what was evicted");
        assert_eq!(history.seq_of(&SimAddr(1), 7), Some(7));

        // A message above `released` stays even alone over the budget: it was not sent down yet.
        history.stamp(message(11, 10 * 1000), now);
        assert_eq!(history.trim(10, 1024, 4 * size, AGE, now), 4);
        assert_eq!(seqs(&history), [11]);
        assert_eq!(history.bytes(), message(11, 10 * 1000).approx_size());

        // A drop the count bound asked for is not counted as one for bytes.
        let mut history = History::new();
        for seq in 1..=5 {
            history.stamp(message(seq, 10), now);
        }
        assert_eq!(history.trim(5, 2, usize::MAX, AGE, now), 0);
        assert_eq!(seqs(&history), [4, 5]);
    }

    #[test]
    fn a_backup_copy_keeps_the_newest_within_the_budget() {
        let now = Time::ZERO;
        let mut copy = History::from_batch((1..=10).map(|seq| message(seq, 1000)).collect(), now);
        let size = message(1, 1000).approx_size();
        // Copies merged in are counted once, whatever arrives twice.
        copy.merge(History::from_batch((8..=12).map(|seq| message(seq, 1000)).collect(), now));
        assert_eq!(copy.bytes(), 12 * size);
        assert_eq!(copy.keep_newest(1024, 3 * size), 9);
        assert_eq!(seqs(&copy), [10, 11, 12]);
        assert_eq!(copy.bytes(), 3 * size);
        // Count first: two by count, none by bytes.
        assert_eq!(copy.keep_newest(1, usize::MAX), 0);
        assert_eq!(seqs(&copy), [12]);
    }
}
