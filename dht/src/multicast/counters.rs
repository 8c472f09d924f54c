//! What the multicast core did and rejected: one monotonic counter per outcome, so that every
//! message dropped for being malformed, unexpected or over a bound is visible to the driver.

/// What the multicast core did and rejected. Monotonic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MulticastCounters {
    /// Messages handed to the driver.
    pub messages_sent: u64,
    /// Data messages handed to the driver (a subset of `messages_sent`).
    pub data_sent: u64,
    /// Messages accepted for processing.
    pub messages_received: u64,
    /// Messages that failed validation (bad name, oversized, bad numbers, forged references).
    pub dropped_invalid: u64,
    /// Messages for a group this node holds no state for (where state is required).
    pub dropped_unknown_group: u64,
    /// Data or acknowledgements from a node that is not this node's parent or join target.
    pub dropped_not_parent: u64,
    /// Replies that match nothing in flight (late, duplicated or made up), or that come from a
    /// node that may not answer them.
    pub dropped_unexpected: u64,
    /// Data too far ahead of the next expected number, or beyond the buffer bound.
    pub dropped_out_of_window: u64,
    /// State pushed by a node that cannot be the group's root or its neighbour.
    pub dropped_unauthorized: u64,
    /// Routed messages dropped at the hop limit, or with no next hop.
    pub dropped_no_route: u64,
    /// Messages arriving while this node is not a ring member.
    pub dropped_not_member: u64,
    /// Messages dropped because a bound (groups, queued publishes) was reached.
    pub dropped_overload: u64,
    /// Data a member had already delivered.
    pub duplicates: u64,
    /// Gap events.
    pub gaps: u64,
    /// Numbers reported missing in gap events.
    pub gap_messages: u64,
    /// Joins sent (first joins and re-joins).
    pub joins_sent: u64,
    /// Parents taken for dead (no refresh acknowledgement in time, or the driver said so).
    pub parent_failures: u64,
    /// Branches that re-joined because they stayed detached.
    pub detached_rejoins: u64,
    /// Parent links dropped because the parent turned out to hang below this node.
    pub cycles_broken: u64,
    /// Children dropped for not refreshing.
    pub children_expired: u64,
    /// Joins redirected to a child by the bottleneck remover.
    pub redirects: u64,
    /// Fetches sent (gap fills and history requests, including retries).
    pub fetches_sent: u64,
    /// Publishes sent again.
    pub publish_retries: u64,
    /// Publishes that failed.
    pub publishes_failed: u64,
    /// Stamped messages replicated again because the first backup had not acknowledged them.
    pub replication_retries: u64,
    /// Root roles handed to a new owner.
    pub handoffs: u64,
    /// Hand-offs sent again from the copy a root kept (the receiver may have dropped one sent
    /// while ring views disagreed).
    pub handoffs_resent: u64,
    /// Root roles taken over from a backup copy or a hand-off.
    pub takeovers: u64,
    /// Roots that started numbering afresh because no state could be learnt.
    pub fresh_roots: u64,
    /// Publishes recognised as retries of one already stamped.
    pub duplicate_publishes: u64,
    /// History messages (at roots and backups) dropped, oldest first, because the group's history
    /// held more than `history_bytes` (and neither its count nor its age bound was reached).
    pub history_evicted_for_bytes: u64,
    /// Epochs this node started ([`crate::multicast`] module docs: roots that start numbering,
    /// and roots that took in another root's numbering after a partition).
    pub epochs_started: u64,
    /// Messages of another root's numbering (the other side of a partition) that a root numbered
    /// anew in its own, after the two met.
    pub split_messages_renumbered: u64,
    /// Messages of another root's numbering refused for the bound on such messages.
    pub split_messages_dropped: u64,
    /// Data of an older epoch past a member's fork point (from a root that lost its role).
    pub dropped_stale_epoch: u64,
    /// Times a member went back to a fork point to re-read the numbering it now follows.
    pub rewinds: u64,
    /// Messages a member passed over because it had delivered the same publish under another
    /// number (the other side of a partition).
    pub redeliveries_skipped: u64,
}
