//! Anti-entropy and hand-off: keeping n copies of every key without a client asking.
//!
//! Owns two jobs:
//! - [`AntiEntropy`]: every [`KvConfig::sync_interval`] (sooner after the ring changed around this
//!   node; each round in which every replica agreed doubles the wait, up to [`MAX_BACKOFF`] times
//!   the interval, until a digest differs, a write arrives or the ring changes) the node compares its own range `(predecessor, me]` with each of its next n − 1
//!   successors, which hold the other replicas of every key it owns. It sends its digest
//!   ([`crate::store::digest`], 64 buckets); the peer answers which buckets differ; the node then
//!   pages through the peer's entries of those buckets ([`crate::store::MAX_BATCH`] a page) beside
//!   a page of its own, compares the part both pages cover, pushes what the peer lacks and pulls
//!   what the peer holds newer. Pages follow one another, so a round holds at most one page of
//!   pushes and pulls per peer in flight. Anti-entropy is driven by owners because a node knows its
//!   successors but not its predecessors' predecessors; a joining node gets its range this way
//!   too (its successors hold it).
//! - [`Handoff`]: before leaving, the node pushes its own range to its first n successors, page by
//!   page, with a bounded number of pushes in flight, until done or out of time.

use crate::address::{Address, NodeRef};
use crate::id::Id;
use crate::node::Node;
use crate::store::{Entry, KvRequest, MAX_BATCH, in_page, plan_sync, sync_targets};
use crate::time::Time;

use super::{IoPurpose, KvConfig, Outbox, Purpose, StoreOp, StoreResult};

/// How soon a round follows a change of the ring around this node.
const HURRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Most times the interval the rounds of a node whose replicas keep agreeing are spaced.
pub(super) const MAX_BACKOFF: u32 = 8;

/// Records per hand-off page.
const HANDOFF_PAGE: usize = 64;

/// Most hand-off pushes in flight before the next page is read.
const HANDOFF_IN_FLIGHT: usize = 256;

/// One page of an anti-entropy comparison with one peer.
#[derive(Clone, Debug)]
pub(super) struct Page<A> {
    peer: A,
    start: Id,
    end: Id,
    buckets: Vec<u16>,
    after: Option<Id>,
}

/// Anti-entropy rounds.
#[derive(Debug)]
pub(super) struct AntiEntropy<A> {
    next_round: Time,
    /// The range of the round whose local digest is being computed.
    digesting: Option<(Id, Id)>,
    /// Rounds in a row in which no replica reported a difference (counted when a round starts, and
    /// reset by a difference or a change of the ring).
    quiet_rounds: u32,
    _peer: std::marker::PhantomData<A>,
}

impl<A: Address> AntiEntropy<A> {
    pub(super) fn new() -> Self {
        AntiEntropy {
            next_round: Time::ZERO,
            digesting: None,
            quiet_rounds: 0,
            _peer: std::marker::PhantomData,
        }
    }

    pub(super) fn next_round(&self) -> Option<Time> {
        Some(self.next_round)
    }

    /// Brings the next round forward: the range or the replicas changed.
    pub(super) fn hurry(&mut self, now: Time) {
        self.next_round = self.next_round.min(now + HURRY);
        self.quiet_rounds = 0;
    }

    /// A write reached this node: its range is busy, so rounds come at the interval again (a write
    /// that missed a replica is found by the next round, not one backed off for minutes).
    pub(super) fn on_write(&mut self, config: &KvConfig, now: Time) {
        self.quiet_rounds = 0;
        self.next_round = self.next_round.min(now + config.sync_interval);
    }

    /// Starts a round when one is due: the local digest first.
    pub(super) fn tick(
        &mut self,
        ring: &Node<A>,
        me: &NodeRef<A>,
        out: &mut Outbox<A>,
        config: &KvConfig,
        now: Time,
    ) {
        if now < self.next_round {
            return;
        }
        // Until a replica reports a difference, this round counts as quiet, and the next one waits
        // longer; a difference brings the next round back to the interval.
        let backoff = (1u32 << self.quiet_rounds.min(MAX_BACKOFF.ilog2())).min(MAX_BACKOFF);
        self.next_round = now + config.sync_interval * backoff;
        self.quiet_rounds = self.quiet_rounds.saturating_add(1);
        let Some(predecessor) = ring.predecessor().filter(|_| ring.is_member()) else {
            return;
        };
        if self.digesting.is_some() || predecessor.id == me.id {
            return;
        }
        let (start, end) = (predecessor.id, me.id);
        self.digesting = Some((start, end));
        out.store(IoPurpose::SyncDigest { start, end }, |io| StoreOp::Digest { io, start, end });
    }

    /// The local digest is ready: send it to each replica.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_local_digest(
        &mut self,
        start: Id,
        end: Id,
        result: StoreResult,
        ring: &Node<A>,
        config: &KvConfig,
        out: &mut Outbox<A>,
        now: Time,
    ) {
        self.digesting = None;
        let StoreResult::Digest(buckets) = result else {
            return;
        };
        for target in sync_targets(ring.successors(), config.replicas) {
            if target.id == end {
                continue;
            }
            let request = KvRequest::Digest { start, end, buckets: buckets.clone() };
            out.request(target.addr.clone(), request, Purpose::SyncDigest { start, end }, now);
        }
    }

    /// The peer named the buckets that differ: list its entries there, page by page.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_digest_diff(
        &mut self,
        peer: A,
        start: Id,
        end: Id,
        buckets: Vec<u16>,
        config: &KvConfig,
        out: &mut Outbox<A>,
        now: Time,
    ) {
        if buckets.is_empty() {
            return;
        }
        // Replicas disagree: this round repairs it, and the next one comes at the interval, in
        // case a push or pull of this one is lost.
        self.quiet_rounds = 0;
        self.next_round = self.next_round.min(now + config.sync_interval);
        request_page(Page { peer, start, end, buckets, after: None }, out, now);
    }

    /// A page of the peer's entries: read the same part of the local range to compare.
    pub(super) fn on_remote_entries(
        &mut self,
        page: Page<A>,
        remote: Vec<Entry>,
        remote_truncated: bool,
        out: &mut Outbox<A>,
    ) {
        let (start, end, buckets, after) = (page.start, page.end, page.buckets.clone(), page.after);
        out.store(IoPurpose::SyncLocalEntries { page, remote, remote_truncated }, |io| StoreOp::Entries {
            io,
            start,
            end,
            buckets: Some(buckets),
            after,
            limit: MAX_BATCH,
        });
    }

    /// Both pages are in: compare the part both cover, push and pull, then ask for the next page.
    pub(super) fn on_local_entries(
        &mut self,
        page: Page<A>,
        remote: Vec<Entry>,
        remote_truncated: bool,
        result: StoreResult,
        out: &mut Outbox<A>,
        now: Time,
    ) {
        let StoreResult::Entries { entries: local, truncated: local_truncated } = result else {
            return;
        };
        // A truncated page covers its range only up to its last entry: compare up to the nearer of
        // the two pages' ends, then continue after it. (Comparing past it would take every key the
        // other side did not list yet for missing.)
        let mut until = page.end;
        let from_start = |id: &Id| page.start.distance_to(id);
        for (truncated, last) in [(remote_truncated, remote.last()), (local_truncated, local.last())] {
            if let (true, Some(last)) = (truncated, last) {
                let last_id = Id::hash(&last.key);
                if from_start(&last_id) < from_start(&until) {
                    until = last_id;
                }
            }
        }
        let covered = |e: &&Entry| in_page(&Id::hash(&e.key), &page.start, page.after.as_ref(), &until);
        let local: Vec<Entry> = local.iter().filter(covered).cloned().collect();
        let remote: Vec<Entry> = remote.iter().filter(covered).cloned().collect();
        let plan = plan_sync(&local, &remote);
        tracing::debug!(push = plan.push.len(), pull = plan.pull.len(), "anti-entropy page compared");
        if !plan.push.is_empty() {
            let to = page.peer.clone();
            out.store(IoPurpose::SyncPushRead { to }, |io| StoreOp::Read { io, keys: plan.push });
        }
        for key in plan.pull {
            out.request(page.peer.clone(), KvRequest::Fetch { key }, Purpose::SyncPull, now);
        }
        if until != page.end {
            request_page(Page { after: Some(until), ..page }, out, now);
        }
    }
}

fn request_page<A: Address>(page: Page<A>, out: &mut Outbox<A>, now: Time) {
    let request = KvRequest::Entries {
        start: page.start,
        end: page.end,
        buckets: page.buckets.clone(),
        after: page.after,
    };
    out.request(page.peer.clone(), request, Purpose::SyncEntries { page }, now);
}

/// A leave's hand-off of this node's range.
#[derive(Debug)]
pub(super) struct Handoff<A> {
    start: Id,
    end: Id,
    targets: Vec<NodeRef<A>>,
    deadline: Time,
    cursor: Option<Id>,
    reading: bool,
    read_all: bool,
    in_flight: usize,
    acknowledged: u64,
}

impl<A: Address> Handoff<A> {
    pub(super) fn start(
        start: Id,
        end: Id,
        targets: Vec<NodeRef<A>>,
        deadline: Time,
        out: &mut Outbox<A>,
    ) -> Self {
        tracing::info!(successors = targets.len(), "handing off this node's range");
        let mut handoff = Handoff {
            start,
            end,
            targets,
            deadline,
            cursor: None,
            reading: false,
            read_all: false,
            in_flight: 0,
            acknowledged: 0,
        };
        handoff.read_next_page(out);
        handoff
    }

    pub(super) fn deadline(&self) -> Time {
        self.deadline
    }

    pub(super) fn acknowledged(&self) -> u64 {
        self.acknowledged
    }

    pub(super) fn is_over(&self, now: Time) -> bool {
        (self.read_all && self.in_flight == 0) || now >= self.deadline
    }

    fn read_next_page(&mut self, out: &mut Outbox<A>) {
        if self.reading || self.read_all || self.in_flight >= HANDOFF_IN_FLIGHT {
            return;
        }
        self.reading = true;
        let (start, end, after) = (self.start, self.end, self.cursor);
        out.store(IoPurpose::HandoffPage, |io| StoreOp::Records {
            io,
            start,
            end,
            after,
            limit: HANDOFF_PAGE,
        });
    }

    pub(super) fn on_page(&mut self, result: StoreResult, out: &mut Outbox<A>, now: Time) {
        self.reading = false;
        let StoreResult::Records { records, truncated } = result else {
            // The store failed: nothing more can be read; what was sent still counts.
            self.read_all = true;
            return;
        };
        self.cursor = records.last().map(|r| r.key_id()).or(self.cursor);
        self.read_all = !truncated;
        for record in records {
            for target in &self.targets {
                self.in_flight += 1;
                out.request(
                    target.addr.clone(),
                    KvRequest::Store { record: record.clone() },
                    Purpose::Handoff,
                    now,
                );
            }
        }
        self.read_next_page(out);
    }

    pub(super) fn on_pushed(&mut self, acknowledged: bool, out: &mut Outbox<A>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.acknowledged += u64::from(acknowledged);
        self.read_next_page(out);
    }
}
