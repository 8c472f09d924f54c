//! Global checks over the simulator's view of every member, after Zave's invariants for Chord.
//!
//! Each member's *best successor* is the first entry of its successor list that is still a member.
//! Following best successors from every member must lead to exactly one cycle (at least one ring,
//! at most one ring), the cycle must visit ids in ring order wrapping exactly once (ordered ring),
//! and every member must have a best successor (a live successor entry). Members off the cycle are
//! appendages — nodes still being woven in — which is allowed as long as they lead to the cycle.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::id::Id;

/// The outcome of one check, by invariant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InvariantReport {
    /// Members with no live entry in their successor list.
    pub no_live_successor: usize,
    /// Number of distinct cycles formed by best successors.
    pub rings: usize,
    /// Whether the (single) ring visits ids in order, wrapping once.
    pub ordered: bool,
}

impl InvariantReport {
    /// Whether every invariant holds.
    pub fn holds(&self) -> bool {
        self.no_live_successor == 0 && self.rings == 1 && self.ordered
    }
}

/// Checks the invariants. `best` maps each member id to its best successor id (`None` if none is
/// live); a ring of one member pointing at itself is represented by `Some(own id)`.
pub fn check(best: &BTreeMap<Id, Option<Id>>) -> InvariantReport {
    let mut report = InvariantReport { ordered: true, ..Default::default() };
    if best.is_empty() {
        return report;
    }
    // Colour each node by the walk that first reached it; a walk ending on its own colour found a
    // new cycle. Iterative, so long chains cannot overflow the stack.
    let mut colour: BTreeMap<Id, usize> = BTreeMap::new();
    let mut cycles: Vec<Id> = Vec::new();
    for (walk, start) in best.keys().enumerate() {
        let mut at = *start;
        loop {
            if let Some(&c) = colour.get(&at) {
                if c == walk {
                    cycles.push(at);
                }
                break;
            }
            colour.insert(at, walk);
            match best.get(&at) {
                Some(Some(next)) if best.contains_key(next) => at = *next,
                _ => {
                    report.no_live_successor += 1;
                    break;
                }
            }
        }
    }
    report.rings = cycles.len();
    if let [on_ring] = cycles[..] {
        let mut wraps = 0;
        let mut at = on_ring;
        loop {
            let next = best[&at].expect("nodes on a cycle have successors");
            if next <= at {
                wraps += 1;
            }
            at = next;
            if at == on_ring {
                break;
            }
        }
        report.ordered = wraps == 1;
    } else {
        report.ordered = false;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> Id {
        let mut bytes = [0u8; 20];
        bytes[0] = b;
        Id::from_bytes(bytes)
    }

    fn graph(edges: &[(u8, Option<u8>)]) -> BTreeMap<Id, Option<Id>> {
        edges.iter().map(|(a, b)| (id(*a), b.map(id))).collect()
    }

    #[test]
    fn a_correct_ring_holds() {
        let r = check(&graph(&[(1, Some(5)), (5, Some(9)), (9, Some(1))]));
        assert!(r.holds(), "{r:?}");
    }

    #[test]
    fn a_single_node_ring_holds() {
        assert!(check(&graph(&[(7, Some(7))])).holds());
    }

    #[test]
    fn an_appendage_is_allowed() {
        // 3 points into the ring but is not on it yet.
        let r = check(&graph(&[(1, Some(5)), (3, Some(5)), (5, Some(9)), (9, Some(1))]));
        assert!(r.holds(), "{r:?}");
    }

    #[test]
    fn two_rings_are_caught() {
        let r = check(&graph(&[(1, Some(5)), (5, Some(1)), (9, Some(12)), (12, Some(9))]));
        assert_eq!(r.rings, 2);
        assert!(!r.holds());
    }

    #[test]
    fn a_ring_that_wraps_twice_is_caught() {
        // 1 → 9 → 5 → 12 → 1 visits the ids out of order.
        let r = check(&graph(&[(1, Some(9)), (9, Some(5)), (5, Some(12)), (12, Some(1))]));
        assert_eq!(r.rings, 1);
        assert!(!r.ordered);
    }

    #[test]
    fn a_member_without_live_successor_is_caught() {
        let r = check(&graph(&[(1, Some(5)), (5, Some(1)), (9, None)]));
        assert_eq!(r.no_live_successor, 1);
        assert!(!r.holds());
    }
}
