//! Compare-and-set and linearizable reads: single-key Paxos (CASPaxos, Rystsov 2018) over a key's
//! replica set, with record versions as ballots.
//!
//! Owns the proposer's side ([`CasOps`]); the acceptor's memory is [`super::promise`]. One attempt:
//! 1. **Prepare** with a fresh ballot (a clock reading, so it is also the version the attempt
//!    writes) at *every* replica, and wait for every answer (or its failure): a quorum of promises
//!    is needed, and waiting for the rest means a replica that just joined the set empty cannot
//!    hide the value its predecessor-replicas hold.
//! 2. The newest record among the promises is the key's current state. Then:
//!    - the expected version (or absence) matches: **accept** the new record under the ballot;
//!    - it does not: the answer is a conflict with that state, but a state held by fewer than a
//!      quorum may be an unfinished write, so it is first written back under the ballot (that is
//!      what makes "the current version" reported with a conflict real);
//!    - a read ([`Goal::Read`]) is the same without a new value: a state held by a quorum is
//!      returned as it is, any other is written back first.
//! 3. A quorum of accepts finishes the attempt. A refused prepare or accept (a higher ballot, a
//!    newer version) moves the clock past it and starts a new attempt, up to
//!    [`super::KvConfig::max_write_attempts`].
//!
//! What a caller is told is exact: [`KvError::Conflict`] only when no accept of this operation can
//! have landed; an attempt whose accept reached some replicas but not a quorum is remembered, and
//! a later attempt that finds it as the current state finishes it (success); one that finds some
//! other state answers [`KvError::OutcomeUnknown`], since that state may be built on this write.
//! A client that must count exactly (a counter) tags its values and, after an unknown outcome,
//! checks the tag with a linearizable read.
//!
//! **Known hole: replica-set views.** Paxos needs one acceptor set per key. Here each proposer takes
//! the key's replica set from its own view (its successor list, a cached range, or a lookup), and
//! while the ring changes (a join, a crash being repaired, lists still filling after start) two
//! proposers can name different sets whose quorums do not intersect; an acknowledged
//! compare-and-set can then be overwritten by one that did not see it. The end-to-end counter test
//! shows it (a few increments in 800, in some runs, mostly right after start or a kill). Closing it
//! takes an agreed membership per key range (acceptors that refuse keys outside the range they
//! know they replicate, which needs predecessor lists the ring does not keep), not more care here.
//!
//! What it does not survive: a replica that loses a promise by crashing *and* answers again within
//! the promise lifetime cannot (the grace in [`super::promise`]); a message delayed past the
//! operation's deadline could. Plain writes (`put`, `delete`) to the same key are ordered with
//! compare-and-set through the promises (a plain write below a promise is refused and re-versioned
//! above it), so they act as unconditional writes between two compare-and-sets. During a network
//! partition each side can make progress with a quorum of the key's replica set *as that side
//! sees it*: two sides' compare-and-sets of one key can both succeed, and after the heal the
//! newer version wins. Compare-and-set is linearizable only while the ring is not split.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::address::{Address, NodeRef};
use crate::error::LookupError;
use crate::id::Id;
use crate::lookup::{LookupId, LookupOutcome};
use crate::node::Node;
use crate::store::{HybridClock, KvRequest, Record, Version};
use crate::time::Time;

use super::promise::NotPromised;
use super::{IoPurpose, KvConfig, KvError, OpId, OpOutcome, Outbox, Purpose, StoreOp, Written};

/// What a compare-and-set expects of the key's current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The current record has exactly this version (a tombstone's version counts too).
    Version(Version),
    /// The key has no live value (never written, or deleted).
    Absent,
}

impl Expect {
    fn matches(self, current: Option<&Record>) -> bool {
        match self {
            Expect::Version(version) => current.is_some_and(|r| r.version == version),
            Expect::Absent => current.is_none_or(|r| r.tombstone),
        }
    }
}

/// What an operation wants.
#[derive(Clone, Debug)]
pub(super) enum Goal {
    /// Write `new` (a value, or a delete for `None`) if the state is as expected.
    Swap { expect: Expect, new: Option<Vec<u8>> },
    /// Read the state a quorum agrees on.
    Read,
}

/// One replica's answer in the current phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Reply {
    Waiting,
    /// No answer (unreachable, timed out, failed): in the accept phase it may have stored.
    Failed,
    Promised(Option<Record>),
    NotPromised,
    Accepted {
        existed: bool,
    },
    /// Definitely not stored.
    Rejected,
}

/// What a successful accept phase means.
#[derive(Clone, Debug)]
enum Then {
    /// This operation's own record is written.
    Applied,
    /// Another state was written back; report a conflict with it.
    Conflict,
    /// The state was written back for a read; return it.
    Read,
}

#[derive(Clone, Debug)]
enum Phase {
    Locating,
    /// A read's first look: plain fetches, no promise asked (see [`CasOps::decide_read`]).
    Reading,
    /// A refused attempt waits out its back-off before preparing again.
    BackingOff {
        until: Time,
    },
    Preparing,
    Accepting {
        record: Record,
        then: Then,
    },
}

#[derive(Debug)]
struct CasOp<A> {
    key: Vec<u8>,
    goal: Goal,
    deadline: Time,
    wall_ms: u64,
    replicas: Vec<NodeRef<A>>,
    attempt: u32,
    ballot: Version,
    phase: Phase,
    replies: Vec<Reply>,
    /// Ballots of this operation's own accepts that may have landed somewhere.
    mine: Vec<Version>,
    /// Whether the key held a live value when this operation's write was decided.
    existed: bool,
}

impl Reply {
    /// The state a replica reported (promised, or fetched for a read).
    fn state(&self) -> Option<Option<&Record>> {
        match self {
            Reply::Promised(record) => Some(record.as_ref()),
            _ => None,
        }
    }
}

/// A pause in `[0, base × 2^attempt)` (at most 64 × base), drawn from a hash of the node, the
/// operation and the attempt: random enough to break ties between proposers, and deterministic.
fn backoff(base: Duration, me: Id, op: OpId, attempt: u32) -> Duration {
    let mut seed = Vec::with_capacity(32);
    seed.extend_from_slice(me.as_bytes());
    seed.extend_from_slice(&op.0.to_be_bytes());
    seed.extend_from_slice(&attempt.to_be_bytes());
    let hash = Id::hash(&seed);
    let draw = u64::from_be_bytes(hash.as_bytes()[..8].try_into().expect("ids have 20 bytes"));
    let window = base * (1u32 << attempt.min(6));
    window.mul_f64(draw as f64 / u64::MAX as f64)
}

impl<A> CasOp<A> {
    fn count(&self, f: impl Fn(&Reply) -> bool) -> usize {
        self.replies.iter().filter(|r| f(r)).count()
    }

    fn quorum(&self) -> usize {
        self.replicas.len() / 2 + 1
    }

    /// Whether an accept of this operation's own record may have landed (not refused outright).
    fn tainted(&self) -> bool {
        !self.mine.is_empty()
    }
}

/// The compare-and-set operations in flight.
#[derive(Debug)]
pub(super) struct CasOps<A> {
    ops: BTreeMap<OpId, CasOp<A>>,
    lookups: BTreeMap<LookupId, OpId>,
}

impl<A> Default for CasOps<A> {
    fn default() -> Self {
        CasOps { ops: BTreeMap::new(), lookups: BTreeMap::new() }
    }
}

/// Everything an attempt touches besides the operation itself.
pub(super) struct Ctx<'a, A> {
    pub(super) config: &'a KvConfig,
    pub(super) clock: &'a mut HybridClock,
    pub(super) out: &'a mut Outbox<A>,
    pub(super) now: Time,
}

impl<A: Address> CasOps<A> {
    pub(super) fn len(&self) -> usize {
        self.ops.len()
    }

    pub(super) fn next_deadline(&self) -> Option<Time> {
        let wake = |op: &CasOp<A>| match op.phase {
            Phase::BackingOff { until } => until.min(op.deadline),
            _ => op.deadline,
        };
        self.ops.values().map(wake).min()
    }

    /// Ends every operation; returns them (their callers wait).
    pub(super) fn drain(&mut self) -> Vec<OpId> {
        self.lookups.clear();
        std::mem::take(&mut self.ops).into_keys().collect()
    }

    pub(super) fn start(
        &mut self,
        id: OpId,
        key: Vec<u8>,
        goal: Goal,
        wall_ms: u64,
        ring: &mut Node<A>,
        cx: &mut Ctx<'_, A>,
    ) {
        let key_id = Id::hash(&key);
        let op = CasOp {
            key,
            goal,
            deadline: cx.now + cx.config.op_timeout,
            wall_ms,
            replicas: Vec::new(),
            attempt: 0,
            ballot: cx.clock.tick(wall_ms),
            phase: Phase::Locating,
            replies: Vec::new(),
            mine: Vec::new(),
            existed: false,
        };
        self.ops.insert(id, op);
        if let Some(replicas) = ring.cached_replicas(&key_id, cx.config.replicas, cx.now) {
            self.prepare(id, replicas, cx);
        } else {
            let lookup = ring.lookup(key_id, cx.now);
            self.lookups.insert(lookup, id);
        }
    }

    pub(super) fn on_lookup_finished(
        &mut self,
        lookup: LookupId,
        result: &Result<LookupOutcome<A>, LookupError>,
        cx: &mut Ctx<'_, A>,
    ) -> bool {
        let Some(id) = self.lookups.remove(&lookup) else {
            return false;
        };
        match result {
            Ok(outcome) => self.prepare(id, outcome.replica_set(cx.config.replicas), cx),
            Err(error) => {
                if self.ops.remove(&id).is_some() {
                    cx.out.finish(id, Err(KvError::Lookup(error.clone())));
                }
            }
        }
        true
    }

    fn prepare(&mut self, id: OpId, replicas: Vec<NodeRef<A>>, cx: &mut Ctx<'_, A>) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        if replicas.is_empty() {
            self.ops.remove(&id);
            cx.out.finish(id, Err(KvError::NoQuorum { needed: 1, got: 0 }));
            return;
        }
        op.replicas = replicas;
        if matches!(op.goal, Goal::Read) {
            self.send_fetches(id, cx);
        } else {
            self.send_prepares(id, cx);
        }
    }

    /// A read starts with plain fetches at every replica: when the newest answer is on a quorum it
    /// is the latest state any write finished with, and nothing needs promising (a prepare would
    /// make concurrent compare-and-sets start over).
    fn send_fetches(&mut self, id: OpId, cx: &mut Ctx<'_, A>) {
        let op = self.ops.get_mut(&id).expect("callers hold it");
        op.phase = Phase::Reading;
        op.replies = vec![Reply::Waiting; op.replicas.len()];
        let attempt = op.attempt;
        for (replica, node) in op.replicas.iter().enumerate() {
            if node.id == cx.out.me_id() {
                let key = op.key.clone();
                let io_purpose = IoPurpose::CasFetch { op: id, attempt, replica };
                cx.out.store(io_purpose, |io| StoreOp::Read { io, keys: vec![key] });
            } else {
                let body = KvRequest::Fetch { key: op.key.clone() };
                let purpose = Purpose::CasFetch { op: id, attempt, replica };
                cx.out.request(node.addr.clone(), body, purpose, cx.now);
            }
        }
    }

    /// Starts attempt `op.attempt` with ballot `op.ballot`: a prepare to every replica.
    fn send_prepares(&mut self, id: OpId, cx: &mut Ctx<'_, A>) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        op.phase = Phase::Preparing;
        op.replies = vec![Reply::Waiting; op.replicas.len()];
        let (attempt, ballot) = (op.attempt, op.ballot);
        for (replica, node) in op.replicas.iter().enumerate() {
            let purpose = Purpose::CasPrepare { op: id, attempt, replica };
            if node.id == cx.out.me_id() {
                match cx.out.promises.precheck(&op.key, ballot, cx.now) {
                    Ok(()) => {
                        let key = op.key.clone();
                        let io_purpose =
                            IoPurpose::CasPrepare { op: id, attempt, replica, key: key.clone(), ballot };
                        cx.out.store(io_purpose, |io| StoreOp::Read { io, keys: vec![key] });
                    }
                    Err(refusal) => {
                        cx.out.counters.promise_refusals += 1;
                        if let NotPromised::Higher(higher) = refusal {
                            cx.clock.observe(&higher);
                        }
                        op.replies[replica] = Reply::NotPromised;
                    }
                }
            } else {
                let body = KvRequest::Prepare { key: op.key.clone(), ballot };
                cx.out.request(node.addr.clone(), body, purpose, cx.now);
            }
        }
        self.advance(id, cx);
    }

    /// One replica's answer to attempt `attempt` (prepare or accept, by the phase).
    pub(super) fn on_reply(
        &mut self,
        id: OpId,
        attempt: u32,
        replica: usize,
        reply: Reply,
        cx: &mut Ctx<'_, A>,
    ) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        if op.attempt != attempt || replica >= op.replies.len() || op.replies[replica] != Reply::Waiting {
            return;
        }
        op.replies[replica] = reply;
        self.advance(id, cx);
    }

    /// Moves an operation on once its phase has every answer it waits for.
    fn advance(&mut self, id: OpId, cx: &mut Ctx<'_, A>) {
        let Some(op) = self.ops.get(&id) else {
            return;
        };
        match &op.phase {
            Phase::Locating | Phase::BackingOff { .. } => {}
            Phase::Reading => {
                if !op.replies.contains(&Reply::Waiting) {
                    self.decide_read(id, cx);
                }
            }
            Phase::Preparing => {
                if !op.replies.contains(&Reply::Waiting) {
                    self.decide(id, cx);
                }
            }
            Phase::Accepting { .. } => {
                let accepted = op.count(|r| matches!(r, Reply::Accepted { .. }));
                let waiting = op.count(|r| *r == Reply::Waiting);
                if accepted >= op.quorum() {
                    self.accepted(id, cx);
                } else if accepted + waiting < op.quorum() {
                    self.attempt_failed(id, cx);
                }
            }
        }
    }

    /// Every fetch of a read answered: a state on a quorum is the answer; anything else goes
    /// through a prepare (and a write-back).
    fn decide_read(&mut self, id: OpId, cx: &mut Ctx<'_, A>) {
        let op = self.ops.get_mut(&id).expect("advance checked it");
        let states: Vec<Option<&Record>> = op.replies.iter().filter_map(Reply::state).collect();
        let current = states.iter().flatten().max_by_key(|r| r.version).copied();
        let holders = states.iter().filter(|r| r.map(|r| r.version) == current.map(|r| r.version)).count();
        if states.len() >= op.quorum() && holders >= op.quorum() {
            let result = Ok(OpOutcome::Read(current.cloned()));
            self.ops.remove(&id);
            cx.out.finish(id, result);
        } else {
            op.attempt += 1;
            op.ballot = cx.clock.tick(op.wall_ms);
            self.send_prepares(id, cx);
        }
    }

    /// Every prepare answered: decide what to accept, or finish.
    fn decide(&mut self, id: OpId, cx: &mut Ctx<'_, A>) {
        let op = self.ops.get_mut(&id).expect("advance checked it");
        let states: Vec<Option<&Record>> = op.replies.iter().filter_map(Reply::state).collect();
        if states.len() < op.quorum() {
            return self.attempt_failed(id, cx);
        }
        let current = states.iter().flatten().max_by_key(|r| r.version).copied();
        let holders = states.iter().filter(|r| r.map(|r| r.version) == current.map(|r| r.version)).count();
        let settled = holders >= op.quorum();
        let ballot = op.ballot;
        let rewrite = |record: &Record| record.reversioned(ballot);
        tracing::debug!(
            op = id.0,
            ballot = %ballot.token(),
            current = ?current.map(|r| r.version.token()),
            holders,
            promised = states.len(),
            replicas = ?op.replicas.iter().map(|r| r.id.short().to_string()).collect::<Vec<_>>(),
            "compare-and-set prepared"
        );
        let next: Result<(Record, Then), Result<OpOutcome<A>, KvError>> = match &op.goal {
            Goal::Read if settled => Err(Ok(OpOutcome::Read(current.cloned()))),
            Goal::Read => Ok((rewrite(current.expect("unsettled means a record exists")), Then::Read)),
            Goal::Swap { .. } if current.is_some_and(|r| op.mine.contains(&r.version)) => {
                // An earlier attempt of ours landed and nothing replaced it: finish it.
                let current = current.expect("checked");
                if settled {
                    let written = Written { version: current.version, existed: op.existed, acked: holders };
                    Err(Ok(OpOutcome::Written(written)))
                } else {
                    Ok((rewrite(current), Then::Applied))
                }
            }
            Goal::Swap { expect, new } if expect.matches(current) => {
                op.existed = current.is_some_and(|r| !r.tombstone);
                let record = match new {
                    Some(value) => Record::new(op.key.clone(), value.clone(), ballot),
                    None => Record::tombstone(op.key.clone(), ballot),
                };
                Ok((record, Then::Applied))
            }
            Goal::Swap { .. } if op.tainted() => Err(Err(KvError::OutcomeUnknown)),
            Goal::Swap { .. } if settled => {
                Err(Err(KvError::Conflict { current: current.map(|r| Box::new(r.clone())) }))
            }
            Goal::Swap { .. } => {
                Ok((rewrite(current.expect("unsettled means a record exists")), Then::Conflict))
            }
        };
        match next {
            Ok((record, then)) => self.send_accepts(id, record, then, cx),
            Err(result) => {
                self.ops.remove(&id);
                cx.out.finish(id, result);
            }
        }
    }

    fn send_accepts(&mut self, id: OpId, record: Record, then: Then, cx: &mut Ctx<'_, A>) {
        let op = self.ops.get_mut(&id).expect("callers hold it");
        let attempt = op.attempt;
        op.replies = vec![Reply::Waiting; op.replicas.len()];
        for (replica, node) in op.replicas.iter().enumerate() {
            if node.id == cx.out.me_id() {
                match cx.out.promises.admits_accept(&record.key, record.version, cx.now) {
                    Ok(()) => {
                        let record = record.clone();
                        let io_purpose = IoPurpose::CasAccept { op: id, attempt, replica };
                        cx.out.store(io_purpose, |io| StoreOp::Persist { io, records: vec![record] });
                    }
                    Err(_) => op.replies[replica] = Reply::Rejected,
                }
            } else {
                let body = KvRequest::Accept { record: record.clone() };
                let purpose = Purpose::CasAccept { op: id, attempt, replica };
                cx.out.request(node.addr.clone(), body, purpose, cx.now);
            }
        }
        op.phase = Phase::Accepting { record, then };
        self.advance(id, cx);
    }

    /// A quorum accepted.
    fn accepted(&mut self, id: OpId, cx: &mut Ctx<'_, A>) {
        let op = self.ops.remove(&id).expect("advance checked it");
        let acked = op.count(|r| matches!(r, Reply::Accepted { .. }));
        let tainted = op.tainted();
        tracing::debug!(op = id.0, acked, tainted, "compare-and-set accepted by a quorum");
        let Phase::Accepting { record, then } = op.phase else { unreachable!("advance checked the phase") };
        let result = match then {
            Then::Applied => {
                Ok(OpOutcome::Written(Written { version: record.version, existed: op.existed, acked }))
            }
            Then::Read => Ok(OpOutcome::Read(Some(record))),
            Then::Conflict if tainted => Err(KvError::OutcomeUnknown),
            Then::Conflict => Err(KvError::Conflict { current: Some(Box::new(record)) }),
        };
        cx.out.finish(id, result);
    }

    /// The attempt cannot reach a quorum: try again under a higher ballot, or give up.
    fn attempt_failed(&mut self, id: OpId, cx: &mut Ctx<'_, A>) {
        let op = self.ops.get_mut(&id).expect("callers hold it");
        if let Phase::Accepting { record, then: Then::Applied } = &op.phase
            && op.replies.iter().any(|r| matches!(r, Reply::Accepted { .. } | Reply::Failed | Reply::Waiting))
        {
            // Our record may be on some replicas: a later attempt must recognise it.
            op.mine.push(record.version);
        }
        let refused = op.replies.iter().any(|r| matches!(r, Reply::NotPromised | Reply::Rejected));
        if refused && op.attempt + 1 < cx.config.max_write_attempts {
            // Dueling proposers refuse each other's ballots; a random pause that grows with the
            // attempts lets one of them finish (the classic Paxos remedy).
            cx.out.counters.cas_retries += 1;
            op.attempt += 1;
            let pause = backoff(cx.config.request_timeout / 100, cx.out.me_id(), id, op.attempt);
            op.phase = Phase::BackingOff { until: cx.now + pause };
            op.replies.clear();
            return;
        }
        let op = self.ops.remove(&id).expect("held above");
        let error = if op.tainted() {
            KvError::OutcomeUnknown
        } else if refused {
            KvError::Contended { attempts: op.attempt + 1 }
        } else {
            let got = op.count(|r| matches!(r, Reply::Promised(_) | Reply::Accepted { .. }));
            KvError::NoQuorum { needed: op.quorum(), got }
        };
        cx.out.finish(id, Err(error));
    }

    /// Fails operations past their deadline; starts attempts whose back-off is over.
    pub(super) fn on_timeout(&mut self, cx: &mut Ctx<'_, A>) {
        let now = cx.now;
        let rested: Vec<OpId> = self
            .ops
            .iter()
            .filter(|(_, op)| {
                op.deadline > now && matches!(op.phase, Phase::BackingOff { until } if until <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in rested {
            let op = self.ops.get_mut(&id).expect("listed just above");
            op.ballot = cx.clock.tick(op.wall_ms);
            self.send_prepares(id, cx);
        }
        let out = &mut *cx.out;
        let expired: Vec<OpId> =
            self.ops.iter().filter(|(_, op)| op.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            let op = self.ops.remove(&id).expect("listed just above");
            self.lookups.retain(|_, op_id| *op_id != id);
            let in_doubt = op.tainted() || matches!(op.phase, Phase::Accepting { then: Then::Applied, .. });
            let error = if in_doubt {
                KvError::OutcomeUnknown
            } else {
                let got = op.count(|r| matches!(r, Reply::Promised(_) | Reply::Accepted { .. }));
                KvError::NoQuorum { needed: op.quorum(), got }
            };
            out.finish(id, Err(error));
        }
    }
}
