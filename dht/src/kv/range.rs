//! Which keys this node agrees to hold: the replica range check on peers' writes.
//!
//! A node replicates the keys whose owner is itself or one of its n − 1 predecessors: the keys in
//! `(p_n, me]`, where `p_n` is its n-th predecessor. A peer's `Store` or `Accept` for a key far
//! outside that range is refused ([`KvCounters::rejected_out_of_range`](super::KvCounters)), so
//! that no peer can make a node hold keys of the whole ring, or plant copies where no read looks.
//!
//! The ring core learns its predecessors: its own, and those its predecessor names each time it
//! stabilizes with this node (`Request::GetNeighbours`, up to [`PREDECESSORS`]). So:
//! - with n + 1 predecessors known, a key is accepted when it lies in `(p_{n+1}, me]`: the true
//!   range and one arc more, for views in flux (a writer that has not yet heard of a node that
//!   joined in between still names this node for a key one arc further back; a predecessor that
//!   crashed widens the true range by one arc until the list catches up, a stabilize round or two);
//! - with fewer known (just after the predecessor changed, before it stabilized with this node,
//!   or with n + 1 > [`PREDECESSORS`]), the range is estimated: the mean gap `g` between nodes is
//!   measured over the arcs this node knows (its predecessor's and those to each entry of its
//!   successor list) and a key is accepted within `arc(predecessor, me) + SLACK_GAPS · (n − 1) ·
//!   g`. Arcs vary a lot locally (a tight cluster of successors makes `g` small), which is why
//!   the list is preferred; the estimate only bridges a stabilize round;
//! - a node that is not a ring member, knows no successor, or finds itself among its successors or
//!   predecessors (a ring of a few nodes) accepts every key, as does one whose estimated allowance
//!   spans the whole ring.
//!
//! Keys *ahead* of this node (in `(me, successor]`) are never its replicas in any view: every
//! writer sends a key to the n nodes at or after it.
//!
//! What a hostile peer can still do: write keys of the few arcs behind this node, which it could
//! write through the front door anyway (ordinary keys are open; signed keys need the owner's key).

use crate::address::Address;
use crate::id::Id;
use crate::node::Node;
#[cfg(doc)]
use crate::node::PREDECESSORS;

/// How many mean gaps, per replica beyond the first, a key may lie behind this node's
/// predecessor. See the module docs for the odds of refusing an honest write.
pub const SLACK_GAPS: f64 = 8.0;

/// The ring's size, 2^160, as a float.
const RING: f64 = 1.461_501_637_330_903e48;

/// Whether this node takes a peer's write of the key at ring position `key_id`, by its own view of
/// the ring, for a store of `replicas` copies.
pub fn may_hold<A: Address>(ring: &Node<A>, key_id: &Id, replicas: usize) -> bool {
    let me = &ring.me().id;
    let successors = ring.successors();
    if !ring.is_member() || successors.is_empty() || successors.iter().any(|s| s.id == *me) {
        return true;
    }
    let predecessors = ring.predecessors();
    if predecessors.iter().any(|p| p.id == *me) {
        return true;
    }
    if let Some(boundary) = predecessors.get(replicas) {
        return key_id.in_open_closed(&boundary.id, me);
    }
    let farthest = &successors[successors.len() - 1].id;
    let ahead = magnitude(&me.distance_to(farthest));
    let behind = ring.predecessor().map_or(0.0, |p| magnitude(&p.id.distance_to(me)));
    let arcs = successors.len() + usize::from(ring.predecessor().is_some());
    let gap = (ahead + behind) / arcs as f64;
    let allowance = behind + SLACK_GAPS * replicas.saturating_sub(1) as f64 * gap;
    if allowance >= RING {
        return true;
    }
    magnitude(&key_id.distance_to(me)) <= allowance
}

/// An id as a number, to the precision of an `f64` (enough to compare arcs with slack).
fn magnitude(id: &Id) -> f64 {
    id.as_bytes().iter().fold(0.0, |acc, &byte| acc * 256.0 + f64::from(byte))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magnitude_is_the_number_the_bytes_spell() {
        assert_eq!(magnitude(&Id::pow2(0)), 1.0);
        assert_eq!(magnitude(&Id::pow2(100)), 2f64.powi(100));
        assert!((magnitude(&Id::MAX) - RING).abs() / RING < 1e-12, "2^160 − 1 ≈ the ring");
    }
}
