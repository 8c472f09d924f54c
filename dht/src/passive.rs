//! The passive list: peers this node declared dead, remembered so that it can probe them later in
//! case a network partition rather than a crash took them away (Shafaat, Ghodsi and Haridi,
//! "Dealing with network partitions in structured overlay networks", 2009).
//!
//! [`PassiveList`] owns the entries and decides which one is due for a probe; the node sends the
//! probes and acts on the answers (see `Node`'s "ring unification" section).
//!
//! Invariants kept here:
//! - at most `capacity` entries, one per address; when full, the entry declared dead longest ago
//!   is evicted first;
//! - an entry older than the time-to-live is dropped before anything else looks at the list;
//! - an entry is probed no earlier than its due time, and each unanswered probe doubles the delay
//!   before the next one (up to a cap), so that a peer that really crashed costs a few messages
//!   per time-to-live, not one per probe period;
//! - at most one probe per entry is in flight;
//! - iteration follows insertion order (a `Vec`), never a hash order, so runs are reproducible.

use std::time::Duration;

use crate::address::{Address, NodeRef};
use crate::time::Time;

#[derive(Clone, Debug)]
struct Entry<A> {
    node: NodeRef<A>,
    /// When the node was declared dead.
    added: Time,
    /// Not probed before this.
    due: Time,
    /// Probes sent without an answer so far.
    misses: u32,
    /// A probe is in flight.
    probing: bool,
}

/// Peers declared dead, to be probed at a slow pace. See the module docs.
#[derive(Clone, Debug)]
pub(crate) struct PassiveList<A> {
    entries: Vec<Entry<A>>,
    capacity: usize,
}

impl<A: Address> PassiveList<A> {
    pub(crate) fn new(capacity: usize) -> Self {
        PassiveList { entries: Vec::new(), capacity }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// Remembers `node`, declared dead at `now`; its first probe is due after `first_probe`. A node
    /// already listed keeps its entry (and its back-off).
    pub(crate) fn add(&mut self, node: NodeRef<A>, now: Time, first_probe: Duration) {
        if self.capacity == 0 || self.entries.iter().any(|e| e.node.addr == node.addr) {
            return;
        }
        if self.entries.len() >= self.capacity {
            let oldest = (0..self.entries.len())
                .min_by_key(|&i| self.entries[i].added)
                .expect("a full list with capacity > 0 is not empty");
            self.entries.remove(oldest);
        }
        self.entries.push(Entry { node, added: now, due: now + first_probe, misses: 0, probing: false });
    }

    /// Forgets `addr`: it answered, or it is back in this node's routing state.
    pub(crate) fn remove(&mut self, addr: &A) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| &e.node.addr != addr);
        self.entries.len() != before
    }

    /// Whether `addr` is listed.
    pub(crate) fn contains(&self, addr: &A) -> bool {
        self.entries.iter().any(|e| &e.node.addr == addr)
    }

    /// Drops entries declared dead more than `ttl` ago.
    pub(crate) fn expire(&mut self, now: Time, ttl: Duration) {
        self.entries.retain(|e| now < e.added + ttl);
    }

    /// The entry to probe now, if one is due: the one due earliest (first listed on a tie). It is
    /// marked in flight.
    pub(crate) fn take_due(&mut self, now: Time) -> Option<NodeRef<A>> {
        let at = (0..self.entries.len())
            .filter(|&i| !self.entries[i].probing && self.entries[i].due <= now)
            .min_by_key(|&i| self.entries[i].due)?;
        self.entries[at].probing = true;
        Some(self.entries[at].node.clone())
    }

    /// Every entry without a probe in flight, marked in flight: for a burst of probes once a
    /// partition is known to have healed.
    pub(crate) fn take_all(&mut self) -> Vec<NodeRef<A>> {
        self.entries
            .iter_mut()
            .filter(|e| !e.probing)
            .map(|e| {
                e.probing = true;
                e.node.clone()
            })
            .collect()
    }

    /// A probe of `addr` went unanswered: the next is due after `base` × 2^misses, at most `cap`.
    pub(crate) fn missed(&mut self, addr: &A, now: Time, base: Duration, cap: Duration) {
        if let Some(e) = self.entries.iter_mut().find(|e| &e.node.addr == addr) {
            e.probing = false;
            e.misses = e.misses.saturating_add(1);
            let delay = base.saturating_mul(1 << e.misses.min(16)).min(cap);
            e.due = now + delay;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;

    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
    struct A(u64);
    impl Address for A {
        fn node_id(&self) -> Id {
            Id::hash(&self.0.to_be_bytes())
        }
    }
    const S: Duration = Duration::from_secs(1);

    #[test]
    fn bounded_oldest_evicted_and_expiring() {
        let mut list = PassiveList::new(2);
        list.add(NodeRef::new(A(1)), Time::ZERO, S);
        list.add(NodeRef::new(A(2)), Time::ZERO + S, S);
        list.add(NodeRef::new(A(2)), Time::ZERO + 2 * S, S);
        list.add(NodeRef::new(A(3)), Time::ZERO + 3 * S, S);
        assert_eq!(list.len(), 2);
        assert!(!list.contains(&A(1)) && list.contains(&A(2)) && list.contains(&A(3)));
        list.expire(Time::ZERO + 4 * S, 3 * S);
        assert!(!list.contains(&A(2)) && list.contains(&A(3)));
    }

    #[test]
    fn misses_back_off_and_one_probe_at_a_time() {
        let mut list = PassiveList::new(4);
        list.add(NodeRef::new(A(1)), Time::ZERO, S);
        assert!(list.take_due(Time::ZERO).is_none(), "not due yet");
        assert_eq!(list.take_due(Time::ZERO + S).map(|n| n.addr), Some(A(1)));
        assert!(list.take_due(Time::ZERO + S).is_none(), "in flight");
        list.missed(&A(1), Time::ZERO + S, S, 3 * S);
        assert!(list.take_due(Time::ZERO + 2 * S).is_none(), "backed off");
        assert!(list.take_due(Time::ZERO + 3 * S).is_some());
        list.missed(&A(1), Time::ZERO + 3 * S, S, 3 * S);
        assert!(list.take_due(Time::ZERO + 6 * S).is_some(), "capped");
        assert!(list.remove(&A(1)) && list.is_empty());
    }
}
