//! Epochs: which numbering a sequence number belongs to, so that a group split by a partition
//! never lets one number name two messages, and members can tell when the numbering they follow
//! was forked.
//!
//! Owns the epoch id format and its order. An epoch is started by the one node that numbers in
//! it, every time a node starts numbering a group (take-over from a backup copy, hand-off, fresh
//! start) and when a root takes in another root's state after a partition healed (a *meet*).
//! An epoch id is `counter << NODE_BITS | node`: `counter` is one more than the highest counter
//! the starting node had seen in the group's state, `node` the top bits of its ring id, so two
//! roots that start an epoch each on both sides of a partition (same counter) still pick
//! different ids. A message carries its epoch, the epoch it continues (`parent`) and the fork
//! point (`base`, see [`super::Stamped`]).
//!
//! Invariants: within one epoch exactly one node numbers, from `base + 1`, gap-free, so
//! (epoch, seq) names at most one message; a meet starts an epoch whose counter exceeds both
//! sides', so a member that follows the higher counter ends on the merged numbering.

/// Bits of an epoch id taken by the starting node's ring id.
const NODE_BITS: u32 = 24;

/// The counter part of `epoch`: larger means started later in the group's history.
pub(super) fn counter(epoch: u64) -> u64 {
    epoch >> NODE_BITS
}

/// A new epoch started by the node with short id `me_short` ([`super::short_id`]) after every
/// epoch up to counter `seen`.
pub(super) fn next(seen: u64, me_short: u64) -> u64 {
    // 40 bits of counter: a group would need a trillion root changes to exhaust them; saturate
    // rather than wrap, so the order never turns back.
    let counter = seen.saturating_add(1).min((1 << (64 - NODE_BITS)) - 1);
    (counter << NODE_BITS) | (me_short >> (64 - NODE_BITS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_started_later_have_higher_counters_and_two_nodes_never_share_one() {
        let a = next(0, 0xAAAA_0000_0000_0000);
        let b = next(0, 0xBBBB_0000_0000_0000);
        assert_ne!(a, b);
        assert_eq!((counter(a), counter(b)), (1, 1));
        let merged = next(counter(a).max(counter(b)), 0xAAAA_0000_0000_0000);
        assert!(counter(merged) > counter(a));
        assert_eq!(counter(next(u64::MAX, 0)), (1 << 40) - 1, "saturates, never wraps");
    }
}
