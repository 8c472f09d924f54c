//! The simulators' agenda: the events still to happen, handed out in (time, sequence number)
//! order.
//!
//! Ties at the same instant go in the order the events were scheduled, so a run replays bit for
//! bit. The heap orders small keys only (time, sequence number, slot); the events themselves —
//! messages of a few hundred bytes — stay put in a slab until their turn. A heap of whole events
//! moved every event O(log n) times on each push and pop, which was the largest single cost of a
//! 10,000-node run (issue 14).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::time::Time;

/// Events of type `W` due at simulated times.
#[derive(Debug)]
pub(crate) struct Agenda<W> {
    /// (due, sequence number, slot in `slots`), earliest first.
    due: BinaryHeap<Reverse<(Time, u64, u32)>>,
    /// The scheduled events; `None` in the slots listed in `free`.
    slots: Vec<Option<W>>,
    free: Vec<u32>,
    /// Sequence number of the last event scheduled.
    seq: u64,
}

impl<W> Default for Agenda<W> {
    fn default() -> Self {
        Agenda { due: BinaryHeap::new(), slots: Vec::new(), free: Vec::new(), seq: 0 }
    }
}

impl<W> Agenda<W> {
    /// Schedules `what` at `at`, after every event already scheduled for the same instant.
    pub(crate) fn push(&mut self, at: Time, what: W) {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(what);
                slot
            }
            None => {
                self.slots.push(Some(what));
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 events are pending at once")
            }
        };
        self.due.push(Reverse((at, self.seq, slot)));
    }

    /// Takes the earliest event if it is due at or before `until`.
    pub(crate) fn pop_due(&mut self, until: Time) -> Option<(Time, W)> {
        let &Reverse((at, _, _)) = self.due.peek()?;
        if at > until {
            return None;
        }
        let Reverse((at, _, slot)) = self.due.pop().expect("peeked just above");
        let what = self.slots[slot as usize].take().expect("a slot in the heap holds its event");
        self.free.push(slot);
        Some((at, what))
    }

    /// Events scheduled and not yet taken.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.due.len()
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
}
