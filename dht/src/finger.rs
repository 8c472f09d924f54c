//! The finger table: for each i < 160, the node believed to be succ(n + 2^i).
//!
//! Entries are refreshed in rounds by lookups: one lookup for finger i also settles every later
//! finger whose start it covers, so a round costs about log2 N lookups, not 160.

use crate::address::NodeRef;
use crate::id::{ID_BITS, Id};

/// Finger table of one node.
#[derive(Clone, Debug)]
pub struct FingerTable<A> {
    entries: Vec<Option<NodeRef<A>>>,
    /// Index of the finger the next refresh lookup is for.
    next: usize,
}

impl<A: Clone + Eq> Default for FingerTable<A> {
    fn default() -> Self {
        FingerTable { entries: vec![None; ID_BITS], next: 0 }
    }
}

impl<A: Clone + Eq> FingerTable<A> {
    /// Finger `i`, if known.
    pub fn get(&self, i: usize) -> Option<&NodeRef<A>> {
        self.entries.get(i).and_then(Option::as_ref)
    }

    /// The index the next refresh is for.
    pub(crate) fn next_index(&self) -> usize {
        self.next
    }

    /// Skips the refresh to finger `i` (wrapping to 0 past the end).
    pub(crate) fn set_next(&mut self, i: usize) {
        self.next = if i >= ID_BITS { 0 } else { i };
    }

    /// Records that `node` = succ(me + 2^i), sets every later finger whose start lies in
    /// (me, node] to the same node, and moves the refresh past them.
    pub(crate) fn settle(&mut self, me: &Id, i: usize, node: Option<NodeRef<A>>) {
        let reach = node.as_ref().map(|n| me.distance_to(&n.id));
        let mut j = i;
        while j < ID_BITS {
            let start_distance = Id::pow2(j);
            match &reach {
                // The finger's start lies at or before `node`: `node` is its successor too.
                Some(reach) if start_distance <= *reach || j == i => {
                    self.entries[j] = node.clone();
                }
                // No node other than me succeeds the start: every later finger wraps to me.
                None => self.entries[j] = None,
                Some(_) => break,
            }
            j += 1;
        }
        self.set_next(j);
    }

    /// Forgets every finger pointing at `addr`; returns whether any did.
    pub(crate) fn forget(&mut self, addr: &A) -> bool {
        let mut any = false;
        for entry in &mut self.entries {
            if entry.as_ref().is_some_and(|n| &n.addr == addr) {
                *entry = None;
                any = true;
            }
        }
        any
    }

    /// The distinct known fingers, in increasing index order.
    pub fn distinct(&self) -> impl Iterator<Item = &NodeRef<A>> {
        let mut last: Option<&A> = None;
        self.entries.iter().filter_map(move |entry| {
            let node = entry.as_ref()?;
            if last == Some(&node.addr) {
                return None;
            }
            last = Some(&node.addr);
            Some(node)
        })
    }

    /// All entries, index i holding finger i.
    pub fn entries(&self) -> &[Option<NodeRef<A>>] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_at(id: Id, addr: u32) -> NodeRef<u32> {
        NodeRef { id, addr }
    }

    #[test]
    fn settle_covers_every_finger_up_to_the_found_node() {
        let me = Id::ZERO;
        let mut table = FingerTable::default();
        // A node at distance 2^10 + 5 is the successor of starts 2^0 ..= 2^10.
        let found = node_at(Id::pow2(10).wrapping_add(&Id::pow2(0).wrapping_add(&Id::pow2(2))), 7);
        table.settle(&me, 0, Some(found.clone()));
        for i in 0..=10 {
            assert_eq!(table.get(i), Some(&found), "finger {i}");
        }
        assert_eq!(table.get(11), None);
        assert_eq!(table.next_index(), 11);
        assert_eq!(table.distinct().count(), 1);
        assert!(table.forget(&7));
        assert_eq!(table.get(3), None);
    }

    #[test]
    fn settle_without_a_node_clears_the_rest_and_wraps() {
        let mut table: FingerTable<u32> = FingerTable::default();
        table.settle(&Id::ZERO, 150, None);
        assert_eq!(table.next_index(), 0);
    }
}
