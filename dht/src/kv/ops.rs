//! Client operations: quorum writes, reads and lookups of one coordinator.
//!
//! Owns the operations in flight ([`ClientOps`]): each knows its replica set (from the ring core's
//! own view or a lookup), the replies so far and its deadline. The rules:
//! - **writes** go to every replica; once `W` reported the record durable the write is
//!   acknowledged. A replica that holds a newer version refuses and names it; when refusals make a
//!   quorum at this version impossible, the coordinator moves its clock past the newest version
//!   named and writes again under a new version (up to [`KvConfig::max_write_attempts`]). So a
//!   write acknowledged after another's acknowledgement always carries a greater version, however
//!   the writers' clocks drift: the two quorums share a replica, and that replica accepted the
//!   second write only above the first.
//! - **reads** ask every replica. The newest answer is returned once `R` replied *and* those
//!   replies agree; when they disagree (a replica is behind) or all say "not found", the read waits
//!   for every replica or its deadline. A quorum of the wrong two must not hide a write while
//!   replica sets differ between views.
//! - once every replica answered (or the deadline passed), stale replicas get the newest record:
//!   read repair.
//! - a replica whose answer does not come (a time-out, a dropped connection) is asked again after
//!   a short pause, up to [`KvConfig::replica_tries`] times while the deadline leaves room, and a
//!   lookup that found no route is tried again the same way: one slow fsync or one lost message
//!   must not cost a write its quorum with most of its deadline left. Nothing is re-versioned by
//!   a resend, so a replica that stored the first request answers the second with "stored".

use std::collections::BTreeMap;

use crate::address::{Address, NodeRef};
use crate::error::LookupError;
use crate::id::Id;
use crate::lookup::{LookupId, LookupOutcome};
use crate::node::Node;
use crate::store::{Consistency, HybridClock, KvRequest, Record};
use crate::time::Time;

use super::{
    IoPurpose, KvConfig, KvError, Located, OpId, OpOutcome, Outbox, PersistOutcome, Purpose, StoreOp, Written,
};

/// One replica's reply to an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Reply {
    /// Not in yet.
    Waiting,
    /// Unreachable, refused, or the store failed.
    Failed,
    /// A write: stored durably (and whether a live value existed).
    Stored { existed: bool },
    /// A write: the replica holds a newer version (named, if it said) and did not store this one.
    Outdated(Option<crate::store::Version>),
    /// A read: the replica's record.
    Found(Option<Record>),
    /// A delete sent as [`KvRequest::Delete`]: the replica holds nothing of the key and stored
    /// nothing.
    NotHeld,
}

#[derive(Debug)]
enum Kind {
    /// A write. `if_held` while a delete is still sent as [`KvRequest::Delete`] (replicas store
    /// the tombstone only where they hold the key); cleared for good once any replica shows the
    /// key may exist somewhere.
    Write {
        record: Record,
        attempt: u32,
        if_held: bool,
    },
    Read {
        key: Vec<u8>,
    },
    Locate {
        key_id: Id,
    },
}

#[derive(Debug)]
struct Op<A> {
    kind: Kind,
    consistency: Consistency,
    deadline: Time,
    replicas: Vec<NodeRef<A>>,
    replies: Vec<Reply>,
    /// Requests sent to each replica for the current attempt.
    tries: Vec<u32>,
    /// Replicas to ask again, and when.
    resends: Vec<(usize, Time)>,
    /// Lookups started for this op; a failed one is tried again at `reroute_at`.
    lookups: u32,
    reroute_at: Option<Time>,
    /// Whether the replica set came from a lookup just made (not from a cached range or this
    /// node's own successor list).
    looked_up: bool,
    /// The next routing must look the key up, whatever is cached.
    must_look_up: bool,
    needed: usize,
    /// The caller has its answer; the op stays for stragglers and read repair.
    answered: bool,
}

impl<A> Op<A> {
    fn count(&self, f: impl Fn(&Reply) -> bool) -> usize {
        self.replies.iter().filter(|r| f(r)).count()
    }

    fn all_in(&self) -> bool {
        !self.replies.contains(&Reply::Waiting)
    }

    /// Schedules another request to `replica`, whose answer did not come, if it may have one:
    /// the caller has no answer yet, the replica is a peer (a local store that failed is not
    /// retried), it was asked fewer than `replica_tries` times and an answer to the resend could
    /// still arrive before the deadline. Returns whether it did.
    fn schedule_resend(&mut self, replica: usize, me: &Id, config: &KvConfig, now: Time) -> bool {
        let tries = self.tries[replica];
        if self.answered || self.replicas[replica].id == *me || tries >= config.replica_tries {
            return false;
        }
        // The pause grows with each try; the resend needs at least half a request time-out.
        let at = now + config.request_timeout / 4 * tries;
        if at + config.request_timeout / 2 > self.deadline {
            return false;
        }
        self.tries[replica] += 1;
        self.resends.push((replica, at));
        true
    }

    /// Schedules another lookup after one that failed, on the same terms as a resend.
    fn schedule_reroute(&mut self, config: &KvConfig, now: Time) -> bool {
        if self.lookups >= config.replica_tries {
            return false;
        }
        let at = now + config.request_timeout / 4 * self.lookups;
        if at + config.request_timeout > self.deadline {
            return false;
        }
        self.reroute_at = Some(at);
        true
    }

    /// The next instant this op needs attention: a resend, a lookup again, or its deadline.
    fn next_deadline(&self) -> Time {
        let resends = self.resends.iter().map(|(_, at)| *at);
        resends.chain(self.reroute_at).chain([self.deadline]).min().expect("the deadline is there")
    }

    fn newest(&self) -> Option<&Record> {
        self.replies
            .iter()
            .filter_map(|r| match r {
                Reply::Found(Some(record)) => Some(record),
                _ => None,
            })
            .max_by_key(|r| r.version)
    }
}

/// The client operations in flight.
#[derive(Debug)]
pub(super) struct ClientOps<A> {
    ops: BTreeMap<OpId, Op<A>>,
    lookups: BTreeMap<LookupId, OpId>,
    next: u64,
}

impl<A> Default for ClientOps<A> {
    fn default() -> Self {
        ClientOps { ops: BTreeMap::new(), lookups: BTreeMap::new(), next: 0 }
    }
}

impl<A: Address> ClientOps<A> {
    pub(super) fn len(&self) -> usize {
        self.ops.len()
    }

    pub(super) fn next_deadline(&self) -> Option<Time> {
        self.ops.values().map(Op::next_deadline).min()
    }

    /// Ends every operation; returns those whose callers still wait for an answer.
    pub(super) fn drain(&mut self) -> Vec<OpId> {
        self.lookups.clear();
        let ops = std::mem::take(&mut self.ops);
        ops.into_iter().filter(|(_, op)| !op.answered).map(|(id, _)| id).collect()
    }

    /// A fresh operation id (compare-and-set operations take theirs here too, so ids never clash).
    pub(super) fn reserve_id(&mut self) -> OpId {
        let id = OpId(self.next);
        self.next += 1;
        id
    }

    fn insert(&mut self, kind: Kind, consistency: Consistency, config: &KvConfig, now: Time) -> OpId {
        let id = self.reserve_id();
        let op = Op {
            kind,
            consistency,
            deadline: now + config.op_timeout,
            replicas: Vec::new(),
            replies: Vec::new(),
            tries: Vec::new(),
            resends: Vec::new(),
            lookups: 0,
            reroute_at: None,
            looked_up: false,
            must_look_up: false,
            needed: 1,
            answered: false,
        };
        self.ops.insert(id, op);
        id
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_write(
        &mut self,
        record: Record,
        consistency: Consistency,
        config: &KvConfig,
        clock: &mut HybridClock,
        out: &mut Outbox<A>,
        ring: &mut Node<A>,
        now: Time,
    ) -> OpId {
        self.start(record, false, consistency, config, clock, out, ring, now)
    }

    /// Starts a delete: a tombstone write whose first requests ask replicas to store it only if
    /// they hold the key. When every replica answers that it holds nothing, the delete is done
    /// with nothing written (`existed: false`); as soon as one replica stored it, holds a newer
    /// version or failed to answer, the tombstone goes as a plain write to those that held
    /// nothing, so a quorum of replicas holds it exactly as for any write.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_delete(
        &mut self,
        record: Record,
        consistency: Consistency,
        config: &KvConfig,
        clock: &mut HybridClock,
        out: &mut Outbox<A>,
        ring: &mut Node<A>,
        now: Time,
    ) -> OpId {
        self.start(record, true, consistency, config, clock, out, ring, now)
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        record: Record,
        if_held: bool,
        consistency: Consistency,
        config: &KvConfig,
        clock: &mut HybridClock,
        out: &mut Outbox<A>,
        ring: &mut Node<A>,
        now: Time,
    ) -> OpId {
        let key_id = record.key_id();
        let id = self.insert(Kind::Write { record, attempt: 0, if_held }, consistency, config, now);
        self.route(id, key_id, config, clock, out, ring, now);
        id
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_read(
        &mut self,
        key: Vec<u8>,
        consistency: Consistency,
        config: &KvConfig,
        clock: &mut HybridClock,
        out: &mut Outbox<A>,
        ring: &mut Node<A>,
        now: Time,
    ) -> OpId {
        let key_id = Id::hash(&key);
        let id = self.insert(Kind::Read { key }, consistency, config, now);
        self.route(id, key_id, config, clock, out, ring, now);
        id
    }

    pub(super) fn start_locate(
        &mut self,
        key_id: Id,
        config: &KvConfig,
        ring: &mut Node<A>,
        now: Time,
    ) -> OpId {
        let id = self.insert(Kind::Locate { key_id }, Consistency::One, config, now);
        self.start_lookup(id, key_id, ring, now);
        id
    }

    /// When this node already knows the key's replica set (its successor list spans it, or the
    /// owner vouched for its range moments ago), a lookup would only confirm it: skip it. Both can
    /// be stale while the ring changes; quorums, refusals and anti-entropy cover that.
    #[allow(clippy::too_many_arguments)]
    fn route(
        &mut self,
        id: OpId,
        key_id: Id,
        config: &KvConfig,
        clock: &mut HybridClock,
        out: &mut Outbox<A>,
        ring: &mut Node<A>,
        now: Time,
    ) {
        if let Some(replicas) = ring.cached_replicas(&key_id, config.replicas, now) {
            self.dispatch(id, replicas, None, clock, out, now);
        } else {
            self.start_lookup(id, key_id, ring, now);
        }
    }

    fn start_lookup(&mut self, id: OpId, key_id: Id, ring: &mut Node<A>, now: Time) {
        if let Some(op) = self.ops.get_mut(&id) {
            op.lookups += 1;
            let lookup = ring.lookup(key_id, now);
            self.lookups.insert(lookup, id);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_lookup_finished(
        &mut self,
        lookup: LookupId,
        result: &Result<LookupOutcome<A>, LookupError>,
        config: &KvConfig,
        clock: &mut HybridClock,
        out: &mut Outbox<A>,
        _ring: &mut Node<A>,
        now: Time,
    ) -> bool {
        let Some(id) = self.lookups.remove(&lookup) else {
            return false;
        };
        match result {
            Ok(outcome) => {
                self.dispatch(id, outcome.replica_set(config.replicas), Some(outcome), clock, out, now)
            }
            Err(error) => {
                let retryable =
                    matches!(error, LookupError::NoRoute { .. } | LookupError::TooManyHops { .. });
                let Some(op) = self.ops.get_mut(&id) else {
                    return true;
                };
                if retryable && op.schedule_reroute(config, now) {
                    out.counters.lookup_retries += 1;
                } else {
                    self.ops.remove(&id);
                    out.finish(id, Err(KvError::Lookup(error.clone())));
                }
            }
        }
        true
    }

    /// Sends an operation to its replica set, found by `lookup` (`None`: known here).
    fn dispatch(
        &mut self,
        id: OpId,
        replicas: Vec<NodeRef<A>>,
        lookup: Option<&LookupOutcome<A>>,
        clock: &mut HybridClock,
        out: &mut Outbox<A>,
        now: Time,
    ) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        op.needed = op.consistency.required(replicas.len());
        op.looked_up = lookup.is_some();
        op.replies = vec![Reply::Waiting; replicas.len()];
        op.tries = vec![1; replicas.len()];
        op.resends.clear();
        op.replicas = replicas;
        match &op.kind {
            Kind::Locate { key_id } => {
                let (hops, path) = lookup.map_or((0, Vec::new()), |l| (l.hops, l.path.clone()));
                let located = Located { key_id: *key_id, replicas: op.replicas.clone(), hops, path };
                self.ops.remove(&id);
                out.finish(id, Ok(OpOutcome::Located(located)));
            }
            Kind::Write { .. } => {
                let Kind::Write { record, attempt, if_held } = &mut op.kind else { unreachable!("matched") };
                // This node may have promised a compare-and-set a ballot above the version taken
                // before the lookup; its own copy must not slip under that promise.
                if let Err(promised) = out.promises.admits(&record.key, record.version, now) {
                    clock.observe(&promised);
                    if record.is_signed() {
                        // No compare-and-set runs on signed keys; a promise here is a peer's
                        // forgery that replicas refuse anyway. The owner signs again above it.
                        self.ops.remove(&id);
                        out.finish(id, Err(KvError::Superseded { held: promised }));
                        return;
                    }
                    *record = record.reversioned(clock.tick(0));
                }
                let (record, attempt, if_held) = (record.clone(), *attempt, *if_held);
                send_write(id, &op.replicas, record, attempt, if_held, out, now);
            }
            Kind::Read { key } => {
                for (replica, node) in op.replicas.iter().enumerate() {
                    send_read(id, replica, node, key, out, now);
                }
            }
        }
    }

    /// One replica's answer to a write (`None`: it failed).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_store_reply(
        &mut self,
        id: OpId,
        attempt: u32,
        replica: usize,
        outcome: Option<PersistOutcome>,
        config: &KvConfig,
        clock: &mut HybridClock,
        out: &mut Outbox<A>,
        now: Time,
    ) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        let Kind::Write { record, attempt: current, .. } = &op.kind else {
            return;
        };
        if attempt != *current || replica >= op.replies.len() || op.replies[replica] != Reply::Waiting {
            return;
        }
        let version = record.version;
        if outcome.is_none() && op.schedule_resend(replica, &out.me_id(), config, now) {
            out.counters.replica_resends += 1;
            return;
        }
        op.replies[replica] = match outcome {
            None => Reply::Failed,
            Some(PersistOutcome { applied: true, existed, .. }) => Reply::Stored { existed },
            // The same version already there (a duplicate delivery): stored.
            Some(PersistOutcome { held: Some(held), existed, .. }) if held == version => {
                Reply::Stored { existed }
            }
            Some(PersistOutcome { existed, .. }) if !config.ordered_writes => Reply::Stored { existed },
            Some(PersistOutcome { held, .. }) => {
                if let Some(held) = held {
                    clock.observe(&held);
                }
                Reply::Outdated(held)
            }
        };
        self.decide_write(id, attempt, config, clock, out, now);
    }

    /// A replica of delete `id` (at `attempt`) holds nothing of the key and stored nothing.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_not_held(
        &mut self,
        id: OpId,
        attempt: u32,
        replica: usize,
        config: &KvConfig,
        clock: &mut HybridClock,
        out: &mut Outbox<A>,
        now: Time,
    ) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        let Kind::Write { attempt: current, .. } = &op.kind else {
            return;
        };
        if attempt != *current || replica >= op.replies.len() || op.replies[replica] != Reply::Waiting {
            return;
        }
        op.replies[replica] = Reply::NotHeld;
        self.decide_write(id, attempt, config, clock, out, now);
    }

    /// This node is a replica of delete `id` and holds the key: write the tombstone here.
    pub(super) fn write_here(
        &mut self,
        id: OpId,
        attempt: u32,
        replica: usize,
        out: &mut Outbox<A>,
        now: Time,
    ) {
        let Some(op) = self.ops.get(&id) else {
            return;
        };
        if let (Kind::Write { record, attempt: current, .. }, Some(node)) =
            (&op.kind, op.replicas.get(replica))
            && *current == attempt
        {
            send_write_to(id, replica, node, record.clone(), attempt, false, out, now);
        }
    }

    /// What write `id` does after a reply of `attempt` came in: answer, write again under a
    /// newer version, send a delete's tombstone to the replicas that held nothing, or fail.
    fn decide_write(
        &mut self,
        id: OpId,
        attempt: u32,
        config: &KvConfig,
        clock: &mut HybridClock,
        out: &mut Outbox<A>,
        now: Time,
    ) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        let Kind::Write { record, if_held, .. } = &mut op.kind else {
            return;
        };
        let (version, signed) = (record.version, record.is_signed());
        if *if_held && op.replies.iter().any(|r| !matches!(r, Reply::Waiting | Reply::NotHeld)) {
            // Some replica stored the tombstone, holds a newer version or did not answer: the key
            // may exist, so the delete must reach a quorum like any write.
            *if_held = false;
        }
        if !*if_held {
            let record = record.clone();
            for replica in 0..op.replies.len() {
                if op.replies[replica] == Reply::NotHeld {
                    op.replies[replica] = Reply::Waiting;
                    send_write_to(
                        id,
                        replica,
                        &op.replicas[replica],
                        record.clone(),
                        attempt,
                        false,
                        out,
                        now,
                    );
                }
            }
        }
        if !op.answered && !op.replies.is_empty() && op.replies.iter().all(|r| *r == Reply::NotHeld) {
            if !op.looked_up && op.schedule_reroute(config, now) {
                // A cached range may name a stale replica set, whose members hold nothing while
                // the key's true replicas do: "nothing to delete" needs a set just looked up.
                op.must_look_up = true;
                out.counters.lookup_retries += 1;
                return;
            }
            // No replica holds anything of the key: nothing to delete, nothing written.
            self.ops.remove(&id);
            out.finish(id, Ok(OpOutcome::Written(Written { version, existed: false, acked: 0 })));
            return;
        }
        let stored = op.count(|r| matches!(r, Reply::Stored { .. }));
        let waiting = op.count(|r| matches!(r, Reply::Waiting | Reply::NotHeld));
        let outdated = op.count(|r| matches!(r, Reply::Outdated(_)));
        if !op.answered && stored >= op.needed {
            op.answered = true;
            let existed = op.replies.iter().any(|r| matches!(r, Reply::Stored { existed: true }));
            out.finish(id, Ok(OpOutcome::Written(Written { version, existed, acked: stored })));
        } else if !op.answered && stored + waiting < op.needed {
            if outdated > 0 && signed {
                // Only the owner can sign a newer version: say what it must pass, or that the
                // replicas hold the key under another signer (refused although older).
                let held = op.replies.iter().filter_map(|r| match r {
                    Reply::Outdated(held) => *held,
                    _ => None,
                });
                let error = match held.max() {
                    Some(held) if held >= version => KvError::Superseded { held },
                    _ => KvError::NotOwner,
                };
                op.answered = true;
                out.finish(id, Err(error));
                if op.all_in() {
                    self.ops.remove(&id);
                }
                return;
            }
            if outdated > 0 && attempt + 1 < config.max_write_attempts {
                // A replica holds a newer version: pass it (the clock observed it) and write again.
                out.counters.write_retries += 1;
                let Kind::Write { record, attempt, if_held } = &mut op.kind else {
                    unreachable!("matched above")
                };
                *attempt += 1;
                *record = record.reversioned(clock.tick(0));
                let (record, attempt, if_held) = (record.clone(), *attempt, *if_held);
                op.replies = vec![Reply::Waiting; op.replicas.len()];
                op.tries = vec![1; op.replicas.len()];
                op.resends.clear();
                send_write(id, &op.replicas, record, attempt, if_held, out, now);
                return;
            }
            op.answered = true;
            let error = if outdated > 0 {
                KvError::Contended { attempts: attempt + 1 }
            } else {
                KvError::NoQuorum { needed: op.needed, got: stored }
            };
            out.finish(id, Err(error));
        }
        if op.all_in() {
            self.ops.remove(&id);
        }
    }

    /// One replica's answer to a read (`None`: it failed).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_read_reply(
        &mut self,
        id: OpId,
        replica: usize,
        answer: Option<Option<Record>>,
        config: &KvConfig,
        clock: &mut HybridClock,
        out: &mut Outbox<A>,
        now: Time,
    ) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        if replica >= op.replies.len() || op.replies[replica] != Reply::Waiting {
            return;
        }
        if answer.is_none() && op.schedule_resend(replica, &out.me_id(), config, now) {
            out.counters.replica_resends += 1;
            return;
        }
        op.replies[replica] = match answer {
            Some(record) => Reply::Found(record),
            None => Reply::Failed,
        };
        let found = op.count(|r| matches!(r, Reply::Found(_)));
        let waiting = op.count(|r| *r == Reply::Waiting);
        let newest_version = op.newest().map(|r| r.version);
        if !op.answered {
            // The replies in agree when each holds the newest version seen (and at least one has
            // a record); "not found" from a quorum waits for everyone, as does disagreement.
            let agree = newest_version.is_some()
                && op.replies.iter().all(|r| match r {
                    Reply::Found(record) => record.as_ref().map(|r| r.version) == newest_version,
                    _ => true,
                });
            if found >= op.needed && (agree || waiting == 0) {
                op.answered = true;
                let newest = op.newest().cloned();
                if let Some(record) = &newest {
                    clock.observe(&record.version);
                }
                out.finish(id, Ok(OpOutcome::Read(newest)));
            } else if found + waiting < op.needed {
                op.answered = true;
                out.finish(id, Err(KvError::NoQuorum { needed: op.needed, got: found }));
            }
        }
        if op.all_in() {
            let op = self.ops.remove(&id).expect("looked up above");
            read_repair(&op, out, now);
        }
    }

    /// Sends what is due again (requests to replicas, failed lookups), then fails or closes
    /// operations past their deadline.
    pub(super) fn expire(
        &mut self,
        config: &KvConfig,
        clock: &mut HybridClock,
        out: &mut Outbox<A>,
        ring: &mut Node<A>,
        now: Time,
    ) {
        self.send_due(config, clock, out, ring, now);
        let expired: Vec<OpId> =
            self.ops.iter().filter(|(_, op)| op.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            let op = self.ops.remove(&id).expect("listed just above");
            self.lookups.retain(|_, op_id| *op_id != id);
            if !op.answered {
                let result = match &op.kind {
                    // A read that had its quorum but waited for stragglers to confirm.
                    Kind::Read { .. } if op.count(|r| matches!(r, Reply::Found(_))) >= op.needed => {
                        Ok(OpOutcome::Read(op.newest().cloned()))
                    }
                    Kind::Write { .. } => Err(KvError::NoQuorum {
                        needed: op.needed,
                        got: op.count(|r| matches!(r, Reply::Stored { .. })),
                    }),
                    _ => Err(KvError::NoQuorum {
                        needed: op.needed,
                        got: op.count(|r| matches!(r, Reply::Found(_))),
                    }),
                };
                out.finish(id, result);
            }
            read_repair(&op, out, now);
        }
    }

    /// Asks again the replicas whose resend is due, and looks up again the keys whose lookup is.
    fn send_due(
        &mut self,
        config: &KvConfig,
        clock: &mut HybridClock,
        out: &mut Outbox<A>,
        ring: &mut Node<A>,
        now: Time,
    ) {
        let due: Vec<OpId> = self
            .ops
            .iter()
            .filter(|(_, op)| {
                op.reroute_at.is_some_and(|at| at <= now) || op.resends.iter().any(|(_, at)| *at <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(op) = self.ops.get_mut(&id) else { continue };
            if op.reroute_at.is_some_and(|at| at <= now) {
                op.reroute_at = None;
                let key_id = match &op.kind {
                    Kind::Write { record, .. } => record.key_id(),
                    Kind::Read { key } => Id::hash(key),
                    Kind::Locate { key_id } => *key_id,
                };
                if matches!(op.kind, Kind::Locate { .. }) || std::mem::take(&mut op.must_look_up) {
                    self.start_lookup(id, key_id, ring, now);
                } else {
                    self.route(id, key_id, config, clock, out, ring, now);
                }
                continue;
            }
            let (due, later): (Vec<_>, Vec<_>) = op.resends.iter().partition(|(_, at)| *at <= now);
            op.resends = later;
            for (replica, _) in due {
                if op.answered {
                    // The caller has its answer: nobody needs this replica's any more.
                    op.replies[replica] = Reply::Failed;
                    continue;
                }
                let node = &op.replicas[replica];
                match &op.kind {
                    Kind::Write { record, attempt, if_held } => {
                        send_write_to(id, replica, node, record.clone(), *attempt, *if_held, out, now)
                    }
                    Kind::Read { key } => send_read(id, replica, node, key, out, now),
                    Kind::Locate { .. } => {}
                }
            }
            if op.all_in() {
                let op = self.ops.remove(&id).expect("looked up above");
                read_repair(&op, out, now);
            }
        }
    }

    /// A replica of write `id` (at `attempt`) answered that the key is outside its range: the
    /// replica set came from a stale view. Unless the caller already has its answer, the write
    /// moves to a new attempt (so that answers from the old set are ignored; the record keeps its
    /// version) and its key is looked up again on the terms of a lookup that found no route.
    /// Returns whether it will be.
    pub(super) fn locate_again(
        &mut self,
        id: OpId,
        attempt: u32,
        config: &KvConfig,
        out: &mut Outbox<A>,
        now: Time,
    ) -> bool {
        let Some(op) = self.ops.get_mut(&id) else {
            return false;
        };
        let Kind::Write { attempt: current, .. } = &op.kind else {
            return false;
        };
        if op.answered {
            return false;
        }
        if attempt != *current {
            // An answer of an attempt given up already: nothing to do.
            return true;
        }
        if *current + 1 >= config.max_write_attempts || !op.schedule_reroute(config, now) {
            return false;
        }
        let Kind::Write { attempt: current, .. } = &mut op.kind else { unreachable!("matched above") };
        *current += 1;
        op.replies.iter_mut().for_each(|reply| *reply = Reply::Failed);
        op.resends.clear();
        op.must_look_up = true;
        out.counters.lookup_retries += 1;
        true
    }

    /// Forgets the ring core's cached ranges that name this op's replicas.
    pub(super) fn forget_replicas(&self, id: OpId, ring: &mut Node<A>) {
        if let Some(op) = self.ops.get(&id) {
            for replica in &op.replicas {
                ring.forget_cached(&replica.addr);
            }
        }
    }
}

fn send_write<A: Address>(
    id: OpId,
    replicas: &[NodeRef<A>],
    record: Record,
    attempt: u32,
    if_held: bool,
    out: &mut Outbox<A>,
    now: Time,
) {
    for (replica, node) in replicas.iter().enumerate() {
        send_write_to(id, replica, node, record.clone(), attempt, if_held, out, now);
    }
}

/// Sends `record` to one replica: a [`KvRequest::Store`], or with `if_held` a
/// [`KvRequest::Delete`] (here: a read of the key first, [`IoPurpose::OpDeleteRead`]).
#[allow(clippy::too_many_arguments)]
fn send_write_to<A: Address>(
    id: OpId,
    replica: usize,
    node: &NodeRef<A>,
    record: Record,
    attempt: u32,
    if_held: bool,
    out: &mut Outbox<A>,
    now: Time,
) {
    if node.id == out.me_id() {
        if if_held {
            let keys = vec![record.key];
            out.store(IoPurpose::OpDeleteRead { op: id, attempt, replica }, |io| StoreOp::Read { io, keys });
        } else {
            out.store(IoPurpose::OpStore { op: id, attempt, replica }, |io| StoreOp::Persist {
                io,
                records: vec![record],
            });
        }
    } else {
        let body = if if_held { KvRequest::Delete { record } } else { KvRequest::Store { record } };
        out.request(node.addr.clone(), body, Purpose::OpStore { op: id, attempt, replica }, now);
    }
}

fn send_read<A: Address>(
    id: OpId,
    replica: usize,
    node: &NodeRef<A>,
    key: &[u8],
    out: &mut Outbox<A>,
    now: Time,
) {
    if node.id == out.me_id() {
        let key = key.to_vec();
        out.store(IoPurpose::OpRead { op: id, replica }, |io| StoreOp::Read { io, keys: vec![key] });
    } else {
        let body = KvRequest::Fetch { key: key.to_vec() };
        out.request(node.addr.clone(), body, Purpose::OpFetch { op: id, replica }, now);
    }
}

/// Sends the newest record to every replica that answered with something older (or nothing).
fn read_repair<A: Address>(op: &Op<A>, out: &mut Outbox<A>, now: Time) {
    if !matches!(op.kind, Kind::Read { .. }) {
        return;
    }
    let Some(newest) = op.newest().cloned() else {
        return;
    };
    for (node, reply) in op.replicas.iter().zip(&op.replies) {
        let Reply::Found(record) = reply else {
            continue;
        };
        if record.as_ref().is_some_and(|r| !newest.supersedes(r)) {
            continue;
        }
        out.counters.read_repairs += 1;
        if node.id == out.me_id() {
            if out.promises.admits(&newest.key, newest.version, now).is_err() {
                continue;
            }
            let record = newest.clone();
            out.store(IoPurpose::Repair, |io| StoreOp::Persist { io, records: vec![record] });
        } else {
            out.request(node.addr.clone(), KvRequest::Store { record: newest.clone() }, Purpose::Repair, now);
        }
    }
}
