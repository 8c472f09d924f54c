//! Successor-list arithmetic: building a node's list from its successor's, in ring order.
//!
//! Invariant kept by every function here: a successor list never contains its owner, is strictly
//! increasing in clockwise distance from its owner, and holds at most r entries.

use crate::address::NodeRef;
use crate::id::Id;

/// `[head] + tail`, as seen from `me`: entries are kept while they advance clockwise from `me`,
/// the list stops where it would reach `me` again or step backwards (a stale or dishonest tail),
/// and at `r` entries.
pub(crate) fn merge_successors<A: Clone + Eq>(
    me: &NodeRef<A>,
    head: &NodeRef<A>,
    tail: &[NodeRef<A>],
    r: usize,
) -> Vec<NodeRef<A>> {
    let mut list = Vec::with_capacity(r);
    if head.id == me.id {
        return list;
    }
    list.push(head.clone());
    let mut last = me.id.distance_to(&head.id);
    for node in tail {
        if list.len() >= r || node.id == me.id {
            break;
        }
        let d = me.id.distance_to(&node.id);
        if d <= last {
            break;
        }
        last = d;
        list.push(node.clone());
    }
    list
}

/// Whether `list` is strictly increasing in clockwise distance from `from`, excluding `from`.
pub(crate) fn is_ring_ordered<A>(from: &Id, list: &[NodeRef<A>]) -> bool {
    let mut last = Id::ZERO;
    list.iter().all(|n| {
        let d = from.distance_to(&n.id);
        let ok = d > last;
        last = d;
        ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(b: u8) -> NodeRef<u8> {
        let mut bytes = [0u8; 20];
        bytes[0] = b;
        NodeRef { id: Id::from_bytes(bytes), addr: b }
    }

    #[test]
    fn merge_stops_at_me_and_at_r() {
        let me = node(50);
        let list = merge_successors(&me, &node(60), &[node(70), node(200), node(10), node(50), node(60)], 8);
        assert_eq!(list.iter().map(|n| n.addr).collect::<Vec<_>>(), vec![60, 70, 200, 10]);
        let short = merge_successors(&me, &node(60), &[node(70), node(200), node(10)], 2);
        assert_eq!(short.iter().map(|n| n.addr).collect::<Vec<_>>(), vec![60, 70]);
    }

    #[test]
    fn merge_drops_a_tail_that_steps_back() {
        let me = node(50);
        // 55 lies between me and my successor: the tail is stale or dishonest.
        let list = merge_successors(&me, &node(60), &[node(70), node(55), node(80)], 8);
        assert_eq!(list.iter().map(|n| n.addr).collect::<Vec<_>>(), vec![60, 70]);
    }

    proptest! {
        #[test]
        fn merged_lists_are_ordered_bounded_and_exclude_me(
            me in any::<u8>(), head in any::<u8>(), tail in proptest::collection::vec(any::<u8>(), 0..20), r in 1usize..10
        ) {
            let tail: Vec<_> = tail.into_iter().map(node).collect();
            let me = node(me);
            let list = merge_successors(&me, &node(head), &tail, r);
            prop_assert!(list.len() <= r);
            prop_assert!(list.iter().all(|n| n.id != me.id));
            prop_assert!(is_ring_ordered(&me.id, &list));
        }
    }
}
