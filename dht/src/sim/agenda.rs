//! The simulators' agenda: the events still to happen, handed out in (time, sequence number)
//! order.
//!
//! Ties at the same instant go in the order the events were scheduled, so a run replays bit for
//! bit. The heap holds small entries only (time, slot); the events themselves — messages of a few
//! hundred bytes — and their sequence numbers stay put in slabs until their turn. A heap of whole
//! events moved every event O(log n) times on each push and pop, which was the largest single cost
//! of a 100,000-node run (issue 14). The heap is 4-ary: half the levels of a binary heap, and the
//! four children of an entry share one or two cache lines, which matters once the heap holds
//! millions of entries. Sequence numbers are read only to break ties in time, which are rare.

use crate::time::Time;

/// Events of type `W` due at simulated times.
#[derive(Debug)]
pub(crate) struct Agenda<W> {
    /// A 4-ary min-heap by (time, sequence number of the slot): children of `k` are `4k + 1 ..= 4k + 4`.
    heap: Vec<Entry>,
    /// The scheduled events; `None` in the slots listed in `free`.
    slots: Vec<Option<W>>,
    /// Sequence number of the event in each slot.
    seqs: Vec<u64>,
    free: Vec<u32>,
    /// Sequence number of the last event scheduled.
    seq: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    at: Time,
    slot: u32,
}

const ARITY: usize = 4;

impl<W> Default for Agenda<W> {
    fn default() -> Self {
        Agenda { heap: Vec::new(), slots: Vec::new(), seqs: Vec::new(), free: Vec::new(), seq: 0 }
    }
}

impl<W> Agenda<W> {
    /// Schedules `what` at `at`, after every event already scheduled for the same instant.
    pub(crate) fn push(&mut self, at: Time, what: W) {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(what);
                self.seqs[slot as usize] = self.seq;
                slot
            }
            None => {
                self.slots.push(Some(what));
                self.seqs.push(self.seq);
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 events are pending at once")
            }
        };
        self.heap.push(Entry { at, slot });
        self.sift_up(self.heap.len() - 1);
    }

    /// Takes the earliest event if it is due at or before `until`.
    pub(crate) fn pop_due(&mut self, until: Time) -> Option<(Time, W)> {
        let first = *self.heap.first()?;
        if first.at > until {
            return None;
        }
        let last = self.heap.pop().expect("the heap has a first entry");
        if !self.heap.is_empty() {
            self.heap[0] = last;
            self.sift_down(0);
        }
        let what = self.slots[first.slot as usize].take().expect("a slot in the heap holds its event");
        self.free.push(first.slot);
        Some((first.at, what))
    }

    /// Events scheduled and not yet taken.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    fn earlier(&self, a: Entry, b: Entry) -> bool {
        a.at < b.at || (a.at == b.at && self.seqs[a.slot as usize] < self.seqs[b.slot as usize])
    }

    fn sift_up(&mut self, mut k: usize) {
        let entry = self.heap[k];
        while k > 0 {
            let parent = (k - 1) / ARITY;
            if !self.earlier(entry, self.heap[parent]) {
                break;
            }
            self.heap[k] = self.heap[parent];
            k = parent;
        }
        self.heap[k] = entry;
    }

    fn sift_down(&mut self, mut k: usize) {
        let entry = self.heap[k];
        let len = self.heap.len();
        loop {
            let first_child = ARITY * k + 1;
            if first_child >= len {
                break;
            }
            let mut best = first_child;
            for child in first_child + 1..(first_child + ARITY).min(len) {
                if self.earlier(self.heap[child], self.heap[best]) {
                    best = child;
                }
            }
            if !self.earlier(self.heap[best], entry) {
                break;
            }
            self.heap[k] = self.heap[best];
            k = best;
        }
        self.heap[k] = entry;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(ms: u64) -> Time {
        Time::ZERO + Duration::from_millis(ms)
    }

    #[test]
    fn events_come_out_by_time_then_in_scheduling_order() {
        let mut agenda = Agenda::default();
        agenda.push(at(5), "c");
        agenda.push(at(1), "a");
        agenda.push(at(5), "d");
        agenda.push(at(1), "b");
        let mut out = Vec::new();
        while let Some((_, what)) = agenda.pop_due(at(10)) {
            out.push(what);
        }
        assert_eq!(out, ["a", "b", "c", "d"]);
    }

    #[test]
    fn events_after_the_horizon_stay() {
        let mut agenda = Agenda::default();
        agenda.push(at(3), 1);
        agenda.push(at(7), 2);
        assert_eq!(agenda.pop_due(at(5)), Some((at(3), 1)));
        assert_eq!(agenda.pop_due(at(5)), None);
        assert_eq!(agenda.len(), 1);
        // A freed slot is reused, and the order still holds.
        agenda.push(at(6), 3);
        assert_eq!(agenda.pop_due(at(7)), Some((at(6), 3)));
        assert_eq!(agenda.pop_due(at(7)), Some((at(7), 2)));
        assert_eq!(agenda.len(), 0);
    }

    #[test]
    fn many_events_come_out_sorted_with_ties_in_scheduling_order() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut agenda = Agenda::default();
        let mut expected = Vec::new();
        let mut out = Vec::new();
        for n in 0..5000u64 {
            let t = at(rng.random_range(0..200));
            agenda.push(t, n);
            expected.push((t, n));
            // Interleave pops with pushes, as a run does.
            if n % 3 == 0 {
                out.extend(agenda.pop_due(at(0)));
            }
        }
        while let Some(e) = agenda.pop_due(at(1000)) {
            out.push(e);
        }
        // Everything due at 0 ms popped early is still in (time, scheduling) order overall.
        expected.sort();
        assert_eq!(out, expected);
    }
}
