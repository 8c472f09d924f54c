//! Stray copies: records this node holds for keys it no longer replicates, handed to the nodes
//! that do, then dropped.
//!
//! Anti-entropy ([`super::sync`]) is driven by owners: an owner compares its range with its
//! successors. A copy held by a node that is *not* among a key's replicas any more is never
//! compared by anyone, and if it is the newest version (written while the ring was split, or
//! while this node was a replica before others joined), nobody else will ever fetch it. Such a
//! copy is a *stray*. [`StraySweep`] finds them and moves them home, in the way Cassandra's
//! cleanup and Dynamo's hinted hand-off do, with the rule that nothing is dropped before the
//! key's whole replica set acknowledged holding it.
//!
//! # A sweep
//! Every [`KvConfig::stray_interval`] (2 s after the ring changed around this node; each sweep
//! that finds nothing doubles the wait, up to [`MAX_BACKOFF`] times the interval, so a ring at
//! rest pays a sweep every few minutes), a sweep walks the part of the ring this node does *not* own, `(me, predecessor]`, one step at a time:
//! 1. list the next [`STRAY_PAGE`] entries (key and version) after the cursor;
//! 2. look up the owner of the first one. Its successor `O` owns every key from that one up to
//!    `O` (no node lies between), so one lookup settles a whole run of keys: in a ring at rest, a
//!    sweep costs one lookup per range this node legitimately replicates (n − 1 of them);
//! 3. when this node is among the run's replica set, skip to `O`. Otherwise the run is stray:
//!    read its records, push each one ([`KvRequest::Store`]) to every member of the set, and
//!    drop the local copy of each record that *every* member acknowledged holding (stored, or
//!    refused for holding the same or a newer version), but only if the set is complete (n
//!    members) and only at the version pushed (a newer write that arrived meanwhile stays);
//!    a key under a compare-and-set promise of this node is kept, since an acceptor must not
//!    forget what it accepted.
//!
//! A wrong view (a lookup answered while the ring changes) can at worst move a copy to a set of n
//! live nodes that all acknowledged it, which sweep it onward in turn: a copy is never dropped
//! before n others hold it. Removing is not logged: a removal lost in a crash brings back a copy
//! the next sweep moves again.
//!
//! # Bounds
//! One step is in flight at a time: at most [`STRAY_PAGE`] records read, pushed to n replicas
//! each, and a sweep that has not finished within [`SWEEP_TIMEOUT`] is abandoned until the next.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::address::{Address, NodeRef};
use crate::error::LookupError;
use crate::id::Id;
use crate::lookup::{LookupId, LookupOutcome};
use crate::node::Node;
use crate::store::{Entry, KvRequest, Record, Version};
use crate::time::Time;

use super::{IoPurpose, KvConfig, Outbox, Purpose, StoreOp, StoreResult};

/// Entries listed (and records pushed) per step.
pub const STRAY_PAGE: usize = 64;

/// How soon a sweep follows a change of the ring around this node.
const HURRY: Duration = Duration::from_secs(2);

/// Most times the interval a quiet node waits between sweeps (after three quiet sweeps in a row).
pub(super) const MAX_BACKOFF: u32 = 8;

/// Longest a sweep may run before it is abandoned until the next interval.
pub(super) const SWEEP_TIMEOUT: Duration = Duration::from_secs(60);

/// What is left of a sweep: the keys in `(cursor, end]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Remaining {
    start: Id,
    cursor: Option<Id>,
    end: Id,
}

/// The step a sweep is at.
#[derive(Debug)]
enum Step<A> {
    /// Listing the entries after the cursor.
    Listing,
    /// Finding the owner of the first entry listed.
    Locating { lookup: LookupId, entries: Vec<Entry>, truncated: bool },
    /// Reading the stray run's records.
    Reading { targets: Vec<NodeRef<A>>, next: Option<Id> },
    /// Pushing the run to its replica set.
    Pushing { pushes: BTreeMap<Vec<u8>, Push>, in_flight: usize, targets: usize, next: Option<Id> },
    /// Dropping the copies every replica acknowledged.
    Removing { next: Option<Id> },
}

/// One stray record's pushes.
#[derive(Debug)]
pub(super) struct Push {
    version: Version,
    acknowledged: usize,
}

/// A sweep in progress.
#[derive(Debug)]
struct Sweep<A> {
    /// Distinguishes this sweep's store operations and pushes from those of one abandoned before.
    id: u64,
    range: Remaining,
    step: Step<A>,
    deadline: Time,
    /// Whether this sweep met a stray.
    found: bool,
}

/// The sweeps of one node. See the module docs.
#[derive(Debug)]
pub(super) struct StraySweep<A> {
    next_sweep: Time,
    sweep: Option<Sweep<A>>,
    /// Sweeps in a row that found nothing since the ring last changed around this node.
    quiet_sweeps: u32,
    /// The id of the next sweep.
    next_id: u64,
}

impl<A: Address> StraySweep<A> {
    pub(super) fn new() -> Self {
        StraySweep { next_sweep: Time::ZERO, sweep: None, quiet_sweeps: 0, next_id: 0 }
    }

    /// When the next sweep is due (or the running one's deadline).
    pub(super) fn next_deadline(&self, config: &KvConfig) -> Option<Time> {
        match &self.sweep {
            Some(sweep) => Some(sweep.deadline),
            None => config.stray_interval.map(|_| self.next_sweep),
        }
    }

    /// Brings the next sweep forward: the ring changed, some copies here may have become strays.
    pub(super) fn hurry(&mut self, now: Time) {
        self.next_sweep = self.next_sweep.min(now + HURRY);
        self.quiet_sweeps = 0;
    }

    /// Starts a sweep when one is due; abandons one past its deadline.
    pub(super) fn tick(&mut self, ring: &Node<A>, out: &mut Outbox<A>, config: &KvConfig, now: Time) {
        let Some(interval) = config.stray_interval else {
            return;
        };
        if let Some(sweep) = &self.sweep {
            if now < sweep.deadline {
                return;
            }
            tracing::debug!("stray sweep out of time; abandoned until the next");
            self.sweep = None;
        }
        if now < self.next_sweep {
            return;
        }
        let backoff = (1u32 << self.quiet_sweeps.min(MAX_BACKOFF.ilog2())).min(MAX_BACKOFF);
        self.next_sweep = now + interval * backoff;
        let me = out.me_id();
        let Some(predecessor) = ring.predecessor().filter(|_| ring.is_member()) else {
            return;
        };
        if predecessor.id == me {
            return;
        }
        out.counters.stray_sweeps += 1;
        let range = Remaining { start: me, cursor: None, end: predecessor.id };
        let id = self.next_id;
        self.next_id += 1;
        self.sweep =
            Some(Sweep { id, range, step: Step::Listing, deadline: now + SWEEP_TIMEOUT, found: false });
        list(id, range, out);
    }

    /// A page of entries after the cursor: look up the first one's owner.
    pub(super) fn on_entries(&mut self, id: u64, result: StoreResult, ring: &mut Node<A>, now: Time) {
        let Some(sweep) = self.current(id).filter(|s| matches!(s.step, Step::Listing)) else {
            return;
        };
        let StoreResult::Entries { entries, truncated } = result else {
            self.sweep = None;
            return;
        };
        let Some(first) = entries.first() else {
            self.finish();
            return;
        };
        let lookup = ring.lookup(Id::hash(&first.key), now);
        sweep.step = Step::Locating { lookup, entries, truncated };
    }

    /// A lookup finished; returns whether it was the sweep's.
    pub(super) fn on_lookup_finished(
        &mut self,
        id: LookupId,
        result: &Result<LookupOutcome<A>, LookupError>,
        config: &KvConfig,
        out: &mut Outbox<A>,
    ) -> bool {
        let Some(sweep) = self.sweep.as_mut() else {
            return false;
        };
        let Step::Locating { lookup, entries, truncated } = &mut sweep.step else {
            return false;
        };
        if *lookup != id {
            return false;
        }
        let Ok(outcome) = result else {
            // No route now; the next sweep tries again.
            self.sweep = None;
            return true;
        };
        let range = sweep.range;
        let owner = outcome.owner.id;
        let from = range.cursor.unwrap_or(range.start);
        // The owner owns every key from the first entry up to itself. An owner outside what is
        // left of the range (a view that disagrees with this node's) is taken to own all of it.
        let bounded = owner.in_open(&from, &range.end);
        let run: Vec<Entry> = if bounded {
            entries.iter().filter(|e| Id::hash(&e.key).in_open_closed(&from, &owner)).cloned().collect()
        } else {
            std::mem::take(entries)
        };
        let beyond = run.len() < entries.len();
        let next = match (bounded && beyond, *truncated, run.last()) {
            (true, _, _) => Some(owner),
            (false, true, Some(last)) => Some(Id::hash(&last.key)),
            _ => None,
        };
        let targets = outcome.replica_set(config.replicas);
        let me = out.me_id();
        if owner == me || targets.iter().any(|t| t.id == me) || run.is_empty() {
            self.advance(next, out);
            return true;
        }
        out.counters.stray_found += run.len() as u64;
        sweep.found = true;
        tracing::debug!(records = run.len(), owner = %owner.short(), "stray records found; moving them");
        let keys = run.into_iter().map(|e| e.key).collect();
        sweep.step = Step::Reading { targets, next };
        let sweep_id = sweep.id;
        out.store(IoPurpose::StrayRead { sweep: sweep_id }, |io| StoreOp::Read { io, keys });
        true
    }

    /// The stray run's records: push each to every replica.
    pub(super) fn on_records(
        &mut self,
        id: u64,
        result: StoreResult,
        config: &KvConfig,
        out: &mut Outbox<A>,
        now: Time,
    ) {
        let Some(sweep) = self.current(id) else {
            return;
        };
        let Step::Reading { targets, next } = &mut sweep.step else {
            return;
        };
        let (targets, next) = (std::mem::take(targets), *next);
        let StoreResult::Read(records) = result else {
            self.sweep = None;
            return;
        };
        let records: Vec<Record> = records.into_iter().flatten().collect();
        let mut pushes = BTreeMap::new();
        let mut in_flight = 0;
        for record in records {
            for target in &targets {
                in_flight += 1;
                let key = record.key.clone();
                out.request(
                    target.addr.clone(),
                    KvRequest::Store { record: record.clone() },
                    Purpose::StrayPush { sweep: id, key },
                    now,
                );
            }
            pushes.insert(record.key.clone(), Push { version: record.version, acknowledged: 0 });
        }
        // Only a whole replica set's acknowledgements let a copy go.
        let complete = targets.len() >= config.replicas;
        let targets = if complete { targets.len() } else { usize::MAX };
        sweep.step = Step::Pushing { pushes, in_flight, targets, next };
        self.finish_pushes_if_done(out, now);
    }

    /// A push was answered (`held`: the replica holds the record's version or a newer one) or
    /// failed.
    pub(super) fn on_pushed(&mut self, id: u64, key: &[u8], held: bool, out: &mut Outbox<A>, now: Time) {
        let Some(Sweep { step: Step::Pushing { pushes, in_flight, .. }, .. }) = self.current(id) else {
            return;
        };
        *in_flight = in_flight.saturating_sub(1);
        if held && let Some(push) = pushes.get_mut(key) {
            push.acknowledged += 1;
        }
        self.finish_pushes_if_done(out, now);
    }

    fn finish_pushes_if_done(&mut self, out: &mut Outbox<A>, now: Time) {
        let Some(sweep) = self.sweep.as_mut() else {
            return;
        };
        let Step::Pushing { pushes, in_flight: 0, targets, next } = &mut sweep.step else {
            return;
        };
        let done: Vec<Entry> = std::mem::take(pushes)
            .into_iter()
            .filter(|(_, push)| push.acknowledged >= *targets)
            .filter(|(key, _)| out.promises.promised(key, now).is_none())
            .map(|(key, push)| Entry { key, version: push.version })
            .collect();
        let next = *next;
        out.counters.stray_moved += done.len() as u64;
        if done.is_empty() {
            self.advance(next, out);
            return;
        }
        sweep.step = Step::Removing { next };
        let sweep_id = sweep.id;
        out.store(IoPurpose::StrayRemove { sweep: sweep_id }, |io| StoreOp::Remove { io, entries: done });
    }

    /// The copies are dropped: on to the next run.
    pub(super) fn on_removed(&mut self, id: u64, result: StoreResult, out: &mut Outbox<A>) {
        let Some(Sweep { step: Step::Removing { next }, .. }) = self.current(id) else {
            return;
        };
        let next = *next;
        if let StoreResult::Removed(removed) = result {
            out.counters.stray_removed += removed;
        }
        self.advance(next, out);
    }

    /// Continues after `next`, or ends the sweep.
    fn advance(&mut self, next: Option<Id>, out: &mut Outbox<A>) {
        let Some(sweep) = self.sweep.as_mut() else {
            return;
        };
        match next {
            Some(cursor) if cursor != sweep.range.end => {
                sweep.range.cursor = Some(cursor);
                sweep.step = Step::Listing;
                list(sweep.id, sweep.range, out);
            }
            _ => self.finish(),
        }
    }

    /// The sweep in progress, if it is sweep `id` (answers for an abandoned one are dropped).
    fn current(&mut self, id: u64) -> Option<&mut Sweep<A>> {
        self.sweep.as_mut().filter(|sweep| sweep.id == id)
    }

    /// The sweep reached the end of the range: a quiet one lengthens the wait for the next.
    fn finish(&mut self) {
        if let Some(sweep) = self.sweep.take() {
            self.quiet_sweeps = if sweep.found { 0 } else { self.quiet_sweeps.saturating_add(1) };
        }
    }
}

fn list<A: Address>(sweep: u64, range: Remaining, out: &mut Outbox<A>) {
    out.store(IoPurpose::StrayEntries { sweep }, |io| StoreOp::Entries {
        io,
        start: range.start,
        end: range.end,
        buckets: None,
        after: range.cursor,
        limit: STRAY_PAGE,
    });
}

#[cfg(test)]
mod tests;
