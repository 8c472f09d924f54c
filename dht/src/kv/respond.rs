//! Where a peer's answer goes: each response (or failure) of a request in flight is routed, by the
//! request's [`Purpose`], to the part of the coordinator that asked: client operations, a
//! compare-and-set, anti-entropy, the hand-off or a stray sweep.
//!
//! [`super::Coordinator::handle_response`] has already matched the answer to its request and
//! sender and refused invalid, future and foreign records; nothing here sees an unchecked answer.

use crate::address::Address;
use crate::node::Node;
use crate::store::KvResponse;
use crate::time::Time;

use super::cas::{self, Ctx};
use super::{Coordinator, IoPurpose, Pending, PersistOutcome, Purpose, StoreOp};

impl<A: Address> Coordinator<A> {
    pub(super) fn on_response(
        &mut self,
        pending: Pending<A>,
        response: KvResponse,
        ring: &mut Node<A>,
        now: Time,
    ) {
        match (pending.purpose, response) {
            (Purpose::OpStore { op, attempt, replica }, KvResponse::Stored { existed, newer }) => {
                let outcome = PersistOutcome { applied: newer.is_none(), existed, held: newer };
                let (config, clock, out) = (&self.config, &mut self.clock, &mut self.out);
                self.ops.on_store_reply(op, attempt, replica, Some(outcome), config, clock, out, now);
            }
            (
                Purpose::CasPrepare { op, attempt, replica },
                response @ (KvResponse::Promised { .. } | KvResponse::NotPromised { .. }),
            ) => {
                let reply = match response {
                    KvResponse::Promised { record } => cas::Reply::Promised(record),
                    KvResponse::NotPromised { higher } => {
                        self.clock.observe(&higher);
                        cas::Reply::NotPromised
                    }
                    _ => unreachable!("matched above"),
                };
                let mut cx = Ctx { config: &self.config, clock: &mut self.clock, out: &mut self.out, now };
                self.cas.on_reply(op, attempt, replica, reply, &mut cx);
            }
            (Purpose::CasFetch { op, attempt, replica }, KvResponse::Found { record }) => {
                let mut cx = Ctx { config: &self.config, clock: &mut self.clock, out: &mut self.out, now };
                self.cas.on_reply(op, attempt, replica, cas::Reply::Promised(record), &mut cx);
            }
            (Purpose::CasAccept { op, attempt, replica }, KvResponse::Stored { existed, newer }) => {
                let reply = match newer {
                    None => cas::Reply::Accepted { existed },
                    Some(newer) => {
                        self.clock.observe(&newer);
                        cas::Reply::Rejected
                    }
                };
                let mut cx = Ctx { config: &self.config, clock: &mut self.clock, out: &mut self.out, now };
                self.cas.on_reply(op, attempt, replica, reply, &mut cx);
            }
            (Purpose::CasPrepare { op, attempt, replica }, KvResponse::Refused { reason }) => {
                // Refused outright (starting, busy, invalid): nothing promised.
                tracing::debug!(%reason, "compare-and-set prepare refused");
                let mut cx = Ctx { config: &self.config, clock: &mut self.clock, out: &mut self.out, now };
                self.cas.on_reply(op, attempt, replica, cas::Reply::NotPromised, &mut cx);
            }
            (Purpose::CasAccept { op, attempt, replica }, KvResponse::Refused { reason }) => {
                // Refused outright: nothing stored.
                tracing::debug!(%reason, "compare-and-set accept refused");
                let mut cx = Ctx { config: &self.config, clock: &mut self.clock, out: &mut self.out, now };
                self.cas.on_reply(op, attempt, replica, cas::Reply::Rejected, &mut cx);
            }
            (Purpose::OpFetch { op, replica }, KvResponse::Found { record }) => {
                self.ops.on_read_reply(
                    op,
                    replica,
                    Some(record),
                    &self.config,
                    &mut self.clock,
                    &mut self.out,
                    now,
                );
            }
            (Purpose::SyncDigest { start, end }, KvResponse::DigestDiff { buckets }) => {
                self.sync.on_digest_diff(pending.to, start, end, buckets, &self.config, &mut self.out, now);
            }
            (Purpose::SyncEntries { page }, KvResponse::Entries { entries, truncated }) => {
                self.sync.on_remote_entries(page, entries, truncated, &mut self.out);
            }
            (Purpose::SyncPull, KvResponse::Found { record: Some(record) }) => {
                self.clock.observe(&record.version);
                // Below a promise this node made, the copy waits for a later round: accepting it
                // now could let a state the promised proposer did not see look settled to a read.
                if self.out.promises.admits(&record.key, record.version, now).is_ok() {
                    self.out
                        .store(IoPurpose::SyncPulled, |io| StoreOp::Persist { io, records: vec![record] });
                }
            }
            (Purpose::StrayPush { sweep, key }, KvResponse::Stored { .. }) => {
                // Stored, or refused for holding the same or a newer version: held either way.
                self.stray.on_pushed(sweep, &key, true, &mut self.out, now);
            }
            (Purpose::Handoff, KvResponse::Stored { .. }) => {
                if let Some(handoff) = &mut self.handoff {
                    handoff.on_pushed(true, &mut self.out);
                }
                self.finish_handoff_if_done(now);
            }
            (Purpose::OpStore { op, attempt, replica }, KvResponse::NotHeld) => {
                let (config, clock, out) = (&self.config, &mut self.clock, &mut self.out);
                self.ops.on_not_held(op, attempt, replica, config, clock, out, now);
            }
            (Purpose::OpStore { op, attempt, replica }, KvResponse::NotReplica) => {
                // The replica set came from a stale view (a cached range, an old successor
                // list): find it again rather than count this replica as failed.
                self.ops.forget_replicas(op, ring);
                let (config, clock, out) = (&self.config, &mut self.clock, &mut self.out);
                if !self.ops.locate_again(op, attempt, config, out, now) {
                    self.ops.on_store_reply(op, attempt, replica, None, config, clock, out, now);
                }
            }
            (Purpose::SyncPull, KvResponse::Found { record: None })
            | (Purpose::Repair | Purpose::SyncPush, KvResponse::Stored { .. }) => {}
            (purpose, KvResponse::Refused { reason }) => {
                tracing::debug!(%reason, "storage request refused");
                let pending = Pending { to: pending.to, purpose, key: None, deadline: pending.deadline };
                self.on_request_failed(pending, ring, now);
            }
            (purpose, _) => {
                self.out.counters.rejected_invalid += 1;
                let pending = Pending { to: pending.to, purpose, key: None, deadline: pending.deadline };
                self.on_request_failed(pending, ring, now);
            }
        }
    }

    pub(super) fn on_request_failed(&mut self, pending: Pending<A>, ring: &mut Node<A>, now: Time) {
        match pending.purpose {
            Purpose::OpStore { op, attempt, replica } => {
                // Whoever failed, the op's replica set came from a view that may be stale.
                self.ops.forget_replicas(op, ring);
                let (config, clock, out) = (&self.config, &mut self.clock, &mut self.out);
                self.ops.on_store_reply(op, attempt, replica, None, config, clock, out, now);
            }
            Purpose::OpFetch { op, replica } => {
                ring.forget_cached(&pending.to);
                self.ops.on_read_reply(op, replica, None, &self.config, &mut self.clock, &mut self.out, now);
            }
            Purpose::CasFetch { op, attempt, replica }
            | Purpose::CasPrepare { op, attempt, replica }
            | Purpose::CasAccept { op, attempt, replica } => {
                ring.forget_cached(&pending.to);
                let mut cx = Ctx { config: &self.config, clock: &mut self.clock, out: &mut self.out, now };
                self.cas.on_reply(op, attempt, replica, cas::Reply::Failed, &mut cx);
            }
            Purpose::Handoff => {
                if let Some(handoff) = &mut self.handoff {
                    handoff.on_pushed(false, &mut self.out);
                }
                self.finish_handoff_if_done(now);
            }
            Purpose::StrayPush { sweep, key } => self.stray.on_pushed(sweep, &key, false, &mut self.out, now),
            Purpose::Repair
            | Purpose::SyncPush
            | Purpose::SyncPull
            | Purpose::SyncDigest { .. }
            | Purpose::SyncEntries { .. } => {}
        }
    }

    /// What this node's own persist of an accept means for the proposer.
    pub(super) fn accept_reply(&mut self, outcome: &PersistOutcome) -> cas::Reply {
        match outcome {
            PersistOutcome { applied: true, existed, .. } => cas::Reply::Accepted { existed: *existed },
            PersistOutcome { held, .. } => {
                if let Some(held) = held {
                    self.clock.observe(held);
                }
                cas::Reply::Rejected
            }
        }
    }
}
