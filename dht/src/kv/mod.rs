//! The store coordinator: the replication protocol of the key/value store, sans-IO.
//!
//! One [`Coordinator`] per node sits beside the ring core ([`crate::Node`]) and owns every rule of
//! the replicated store:
//! - [`ops`]: client reads, writes and deletes with quorums over a key's replica set, "not found"
//!   only when it is safe, read repair, and writes that are never ordered before a write
//!   acknowledged earlier (a replica holding a newer version refuses, the coordinator moves its
//!   clock past that version and writes again);
//! - [`cas`]: compare-and-set and linearizable reads, single-key Paxos over the replica set, and
//!   [`promise`], the replica's promises that make it an acceptor;
//! - [`replica`]: the replica's side: serving peers' stores, fetches, digests and entry pages;
//! - [`sync`]: anti-entropy of this node's own range with its successors (digests, paged entry
//!   lists, pushes and pulls) and the hand-off of that range when the node leaves;
//! - [`range`]: which keys this node agrees to hold for its peers (the replica range check);
//! - [`stray`]: copies this node holds of keys it no longer replicates (after a merge of split
//!   rings, or nodes joining), moved to their replica set and then dropped;
//! - [`respond`]: where each peer's answer (or a request's failure) goes, by why it was asked.
//! - [`config`] and [`failure`]: its settings ([`KvConfig`]) and why a client operation fails
//!   ([`KvError`]).
//!
//! # Persistence is an output
//! The coordinator never touches a disk. It asks the driver for every store operation through
//! [`Coordinator::poll_store_op`] ([`StoreOp`]: persist these records, read these keys, a digest,
//! a page of entries or records) and is told the result through
//! [`Coordinator::handle_store_result`]. Nothing that depends on a write is acknowledged — to a
//! client or to a peer — before the driver reported that write persisted, so a driver (or the
//! simulator) that crashes between the two loses only what nobody was told was stored. Store
//! operations may complete in any order and at any later time; results for operations the
//! coordinator no longer waits for are ignored.
//!
//! # Driving it
//! Like [`crate::Node`]: feed inputs with the current [`Time`] (client commands, peers' requests
//! and responses, failed sends, lookup results from the ring core, store results, time-outs), then
//! drain [`Coordinator::poll_transmit`], [`Coordinator::poll_store_op`],
//! [`Coordinator::poll_event`] and read [`Coordinator::poll_timeout`]. Inputs that may start a
//! lookup or consult the ring take the node's ring core; lookups the coordinator started finish
//! through [`Coordinator::handle_lookup_finished`]. Every peer request has a deadline, so a lost
//! message needs nothing from the driver; responses are matched by request id *and* sender, and
//! a record in an answer must be for the key asked.
//!
//! # Invariants
//! - a write is acknowledged only once `W` replicas reported the record durable, and every one of
//!   them holds it under the version acknowledged;
//! - an acknowledged write's version is greater than that of every write acknowledged before it
//!   began (quorums of writes intersect; a refusal moves the version past what the replica holds);
//! - a read answers "not found" only when every replica answered or the deadline passed with a
//!   quorum of empty answers;
//! - every queue and map here is bounded by the operations the driver started and the requests in
//!   flight, and every entry has a deadline;
//! - no version further ahead of this node's wall clock than [`KvConfig::max_future_skew`] is
//!   stored, observed or taken as an answer: it is refused and counted.

mod cas;
mod config;
mod failure;
mod io;
mod ops;
mod promise;
pub mod range;
mod replica;
mod respond;
mod stray;
mod sync;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::address::{Address, NodeRef};
use crate::error::LookupError;
use crate::id::Id;
use crate::lookup::{LookupId, LookupOutcome};
use crate::message::RequestId;
use crate::node::Node;
use crate::store::{Consistency, Entry, HybridClock, KvRequest, KvResponse, MAX_KEY_BYTES, Record, Version};
use crate::time::Time;

pub use self::cas::Expect;
use self::cas::{CasOps, Ctx, Goal};
pub use self::config::KvConfig;
pub use self::failure::KvError;
pub use self::io::{KvMessage, KvTransmit, PersistOutcome, StoreOp, StoreResult};
use self::ops::ClientOps;
use self::promise::{InFlight, Prepared, Promises};
pub use self::promise::{MAX_PROMISES, PROMISE_TTL_FACTOR};
use self::replica::Serving;
pub use self::stray::STRAY_PAGE;
use self::stray::StraySweep;
use self::sync::{AntiEntropy, Handoff};

/// Identifies a client operation started on the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

/// Identifies a store operation the coordinator asked the driver for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IoId(pub u64);

/// A write acknowledged by its quorum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The version written.
    pub version: Version,
    /// Whether some replica held a live value before.
    pub existed: bool,
    /// Replicas that acknowledged before the reply.
    pub acked: usize,
}

/// A key's replica set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located<A> {
    /// The key's ring position.
    pub key_id: Id,
    /// Owner first, then its successors.
    pub replicas: Vec<NodeRef<A>>,
    /// Hops the lookup took (0 when the set was known here).
    pub hops: u32,
    /// The nodes that answered the lookup, hop by hop ([`LookupOutcome::path`]).
    pub path: Vec<NodeRef<A>>,
}

/// What a client operation produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpOutcome<A> {
    /// A put or delete was acknowledged.
    Written(Written),
    /// A get's answer: the newest record among the replies (a tombstone means deleted).
    Read(Option<Record>),
    /// A lookup's answer.
    Located(Located<A>),
}

/// What the coordinator reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvEvent<A> {
    /// A client operation finished.
    OpFinished {
        /// The operation.
        op: OpId,
        /// Its result.
        result: Result<OpOutcome<A>, KvError>,
    },
    /// The hand-off begun by [`Coordinator::begin_handoff`] is over (done or out of time): the
    /// ring core may leave now.
    HandoffFinished {
        /// Records pushed and acknowledged.
        records: u64,
    },
}

/// Counters of the coordinator, monotonic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvCounters {
    /// Requests sent to peers.
    pub requests_out: u64,
    /// Requests received from peers.
    pub requests_in: u64,
    /// Requests refused as invalid (bad checksum, oversized) or answered with something
    /// impossible.
    pub rejected_invalid: u64,
    /// Records and ballots refused for a version too far ahead of this node's wall clock
    /// ([`KvConfig::max_future_skew`]), in requests and in responses.
    pub rejected_future: u64,
    /// Peers' writes refused for a key outside this node's replica range, by its own view with
    /// slack ([`range`]).
    pub rejected_out_of_range: u64,
    /// Responses matching no request in flight (late, duplicated, or from the wrong peer).
    pub rejected_unexpected: u64,
    /// Client operations that failed for lack of replies (or a failed lookup).
    pub quorum_failures: u64,
    /// Stale replicas sent the newest record after a read.
    pub read_repairs: u64,
    /// Writes sent again under a newer version after a replica held a newer one.
    pub write_retries: u64,
    /// Requests of client operations sent again to a replica that had not answered
    /// ([`KvConfig::replica_tries`]).
    pub replica_resends: u64,
    /// Lookups of client operations started again after one found no route, or after a
    /// replica answered that the key is not in its range (the replica set came from a stale view).
    pub lookup_retries: u64,
    /// Compare-and-set attempts started again under a higher ballot.
    pub cas_retries: u64,
    /// Prepares and writes this node refused because of a promise (or its restart grace).
    pub promise_refusals: u64,
    /// Records anti-entropy pushed to a replica.
    pub sync_pushed: u64,
    /// Records anti-entropy fetched from a replica and applied here.
    pub sync_pulled: u64,
    /// Records pushed while leaving.
    pub handoff_pushed: u64,
    /// Store operations that failed.
    pub store_failures: u64,
    /// Stray sweeps started ([`stray`]).
    pub stray_sweeps: u64,
    /// Stray records found: copies of keys this node does not replicate (each time a sweep met
    /// one).
    pub stray_found: u64,
    /// Stray records every member of their replica set acknowledged holding.
    pub stray_moved: u64,
    /// Stray copies dropped after that.
    pub stray_removed: u64,
}

/// Why a request to a peer is in flight: where its response goes.
#[derive(Clone, Debug)]
enum Purpose<A> {
    /// A client write's store at replica `replica` (of attempt `attempt`).
    OpStore { op: OpId, attempt: u32, replica: usize },
    /// A client read's fetch at replica `replica`.
    OpFetch { op: OpId, replica: usize },
    /// A linearizable read's fetch at replica `replica`.
    CasFetch { op: OpId, attempt: u32, replica: usize },
    /// A compare-and-set's prepare at replica `replica`.
    CasPrepare { op: OpId, attempt: u32, replica: usize },
    /// A compare-and-set's accept at replica `replica`.
    CasAccept { op: OpId, attempt: u32, replica: usize },
    /// Read repair; fire and forget.
    Repair,
    /// Anti-entropy's digest comparison of `(start, end]` with a successor.
    SyncDigest { start: Id, end: Id },
    /// Anti-entropy's page of entries.
    SyncEntries { page: sync::Page<A> },
    /// Anti-entropy push; fire and forget.
    SyncPush,
    /// Anti-entropy pull: the record comes back to be persisted.
    SyncPull,
    /// Leave hand-off push.
    Handoff,
    /// A stray record pushed to a member of its replica set.
    StrayPush { sweep: u64, key: Vec<u8> },
}

/// A request in flight.
#[derive(Clone, Debug)]
struct Pending<A> {
    to: A,
    purpose: Purpose<A>,
    /// The key a `Fetch` or `Prepare` asked for: a record in the answer must be for it.
    key: Option<Vec<u8>>,
    deadline: Time,
}

/// Why a store operation is in flight: where its result goes.
#[derive(Clone, Debug)]
enum IoPurpose<A> {
    /// This node's copy of a client write.
    OpStore { op: OpId, attempt: u32, replica: usize },
    /// This node's record of a key being deleted: whether it holds any decides whether the
    /// tombstone is written here yet.
    OpDeleteRead { op: OpId, attempt: u32, replica: usize },
    /// This node's copy for a client read.
    OpRead { op: OpId, replica: usize },
    /// Serving a peer's request.
    Serve { from: A, id: RequestId, request: replica::Served },
    /// This node's own copy for a linearizable read's first look.
    CasFetch { op: OpId, attempt: u32, replica: usize },
    /// This node's own prepare of a compare-and-set: the record held, to decide the promise.
    CasPrepare { op: OpId, attempt: u32, replica: usize, key: Vec<u8>, ballot: Version },
    /// This node's copy of a compare-and-set's accept.
    CasAccept { op: OpId, attempt: u32, replica: usize },
    /// Local read repair; nothing waits.
    Repair,
    /// Anti-entropy's own digest of `(start, end]` at the start of a round.
    SyncDigest { start: Id, end: Id },
    /// Anti-entropy's local entries for a page the peer listed.
    SyncLocalEntries { page: sync::Page<A>, remote: Vec<Entry>, remote_truncated: bool },
    /// Records anti-entropy pushes to a peer.
    SyncPushRead { to: A },
    /// Records pulled from a peer, being persisted.
    SyncPulled,
    /// A page of records to hand off.
    HandoffPage,
    /// A stray sweep's page of entries.
    StrayEntries { sweep: u64 },
    /// A stray run's records, to push.
    StrayRead { sweep: u64 },
    /// Stray copies being dropped.
    StrayRemove { sweep: u64 },
}

/// Outgoing queues and ids shared by the coordinator's parts.
#[derive(Debug)]
struct Outbox<A> {
    me: Id,
    transmits: VecDeque<KvTransmit<A>>,
    store_ops: VecDeque<StoreOp>,
    events: VecDeque<KvEvent<A>>,
    pending: BTreeMap<RequestId, Pending<A>>,
    io: BTreeMap<IoId, IoPurpose<A>>,
    next_request: u64,
    next_io: u64,
    request_timeout: Duration,
    counters: KvCounters,
    /// This node's promises as a compare-and-set acceptor.
    promises: Promises,
    /// Keys handed to the driver to persist and not yet durable.
    in_flight: InFlight,
    /// Prepares waiting for a persist of their key (by that persist's id) before they read again.
    deferred: BTreeMap<IoId, Vec<IoPurpose<A>>>,
}

impl<A: Address> Outbox<A> {
    fn me_id(&self) -> Id {
        self.me
    }

    fn request(&mut self, to: A, body: KvRequest, purpose: Purpose<A>, now: Time) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        self.counters.requests_out += 1;
        let key = match &body {
            KvRequest::Fetch { key } | KvRequest::Prepare { key, .. } => Some(key.clone()),
            _ => None,
        };
        let deadline = now + self.request_timeout;
        self.pending.insert(id, Pending { to: to.clone(), purpose, key, deadline });
        self.transmits.push_back(KvTransmit { to, message: KvMessage::Request { id, body } });
        id
    }

    fn respond(&mut self, to: A, id: RequestId, body: KvResponse) {
        self.transmits.push_back(KvTransmit { to, message: KvMessage::Response { id, body } });
    }

    fn store(&mut self, purpose: IoPurpose<A>, op: impl FnOnce(IoId) -> StoreOp) {
        let io = IoId(self.next_io);
        self.next_io += 1;
        self.io.insert(io, purpose);
        let op = op(io);
        if let StoreOp::Persist { records, .. } = &op {
            self.in_flight.started(io, records);
        }
        self.store_ops.push_back(op);
    }

    fn finish(&mut self, op: OpId, result: Result<OpOutcome<A>, KvError>) {
        if matches!(result, Err(KvError::NoQuorum { .. } | KvError::Lookup(_))) {
            self.counters.quorum_failures += 1;
        }
        self.events.push_back(KvEvent::OpFinished { op, result });
    }

    fn next_deadline(&self) -> Option<Time> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// Parks a prepare (its read's purpose) until store operation `io` is done.
    fn defer(&mut self, io: IoId, purpose: IoPurpose<A>) {
        self.deferred.entry(io).or_default().push(purpose);
    }

    /// Store operation `io` is done: prepares parked on it read their key again.
    fn resume_deferred(&mut self, io: IoId) {
        for purpose in self.deferred.remove(&io).unwrap_or_default() {
            let key = match &purpose {
                IoPurpose::CasPrepare { key, .. } => key.clone(),
                IoPurpose::Serve { request: replica::Served::Prepare { key, .. }, .. } => key.clone(),
                _ => continue,
            };
            self.store(purpose, |io| StoreOp::Read { io, keys: vec![key] });
        }
    }
}

/// The store coordinator of one node. See the module docs.
#[derive(Debug)]
pub struct Coordinator<A: Address> {
    me: NodeRef<A>,
    config: KvConfig,
    clock: HybridClock,
    out: Outbox<A>,
    ops: ClientOps<A>,
    cas: CasOps<A>,
    serving: Serving,
    sync: AntiEntropy<A>,
    stray: StraySweep<A>,
    handoff: Option<Handoff<A>>,
}

impl<A: Address> Coordinator<A> {
    /// The coordinator of the node `me`, whose store is new. A node that ran before on the same
    /// store says so with [`Coordinator::resumed`].
    pub fn new(me: NodeRef<A>, config: KvConfig) -> Self {
        let clock = HybridClock::new(me.id);
        Coordinator {
            out: Outbox {
                me: me.id,
                transmits: VecDeque::new(),
                store_ops: VecDeque::new(),
                events: VecDeque::new(),
                pending: BTreeMap::new(),
                io: BTreeMap::new(),
                next_request: 0,
                next_io: 0,
                request_timeout: config.request_timeout,
                counters: KvCounters::default(),
                promises: Promises::new(config.op_timeout, config.keep_promises),
                in_flight: InFlight::default(),
                deferred: BTreeMap::new(),
            },
            ops: ClientOps::default(),
            cas: CasOps::default(),
            serving: Serving,
            sync: AntiEntropy::new(),
            stray: StraySweep::new(),
            handoff: None,
            clock,
            config,
            me,
        }
    }

    /// This node ran before on the same store and may have made compare-and-set promises it no
    /// longer remembers: it promises and accepts nothing until they would have expired
    /// ([`PROMISE_TTL_FACTOR`] × the operation time-out from `now`).
    pub fn resumed(mut self, now: Time) -> Self {
        self.out.promises.stay_quiet(now);
        self
    }

    // ----- getters -----------------------------------------------------------------------------

    /// The settings.
    pub fn config(&self) -> &KvConfig {
        &self.config
    }

    /// The counters.
    pub fn counters(&self) -> &KvCounters {
        &self.out.counters
    }

    /// Client operations in flight (answered ones waiting for stragglers included).
    pub fn ops_in_flight(&self) -> usize {
        self.ops.len() + self.cas.len()
    }

    /// Keys this node holds a compare-and-set promise for.
    pub fn promises_held(&self) -> usize {
        self.out.promises.len()
    }

    /// Peer requests in flight.
    pub fn requests_in_flight(&self) -> usize {
        self.out.pending.len()
    }

    /// Whether a leave's hand-off is running.
    pub fn is_handing_off(&self) -> bool {
        self.handoff.is_some()
    }

    // ----- client commands ---------------------------------------------------------------------

    /// Starts a write of `value` under `key`. `wall_ms` is the driver's wall clock in
    /// milliseconds since the Unix epoch. Errors that need no replica come back at once.
    pub fn put(
        &mut self,
        key: Vec<u8>,
        value: Vec<u8>,
        consistency: Consistency,
        ring: &mut Node<A>,
        wall_ms: u64,
        now: Time,
    ) -> Result<OpId, KvError> {
        self.check_sizes(&key, Some(&value))?;
        Self::check_unsigned(&key)?;
        let record = Record::new(key, value, self.clock.tick(wall_ms));
        Ok(self.ops.start_write(record, consistency, &self.config, &mut self.clock, &mut self.out, ring, now))
    }

    /// Starts a delete of `key`: a tombstone write, sent first as a [`KvRequest::Delete`] that
    /// replicas holding nothing of the key answer without storing anything, so that deleting a
    /// key that does not exist leaves no tombstone anywhere ([`ops`]).
    pub fn delete(
        &mut self,
        key: Vec<u8>,
        consistency: Consistency,
        ring: &mut Node<A>,
        wall_ms: u64,
        now: Time,
    ) -> Result<OpId, KvError> {
        self.check_sizes(&key, None)?;
        Self::check_unsigned(&key)?;
        let record = Record::tombstone(key, self.clock.tick(wall_ms));
        Ok(self.ops.start_delete(
            record,
            consistency,
            &self.config,
            &mut self.clock,
            &mut self.out,
            ring,
            now,
        ))
    }

    /// Starts a write of a record its owner signed ([`crate::signed`]): a value or a tombstone of
    /// a key under `signed/`, at the version the owner chose. Unlike [`Coordinator::put`] it is
    /// never re-versioned: a replica holding a newer version fails it with
    /// [`KvError::Superseded`], one holding the key under another signer with
    /// [`KvError::NotOwner`].
    pub fn put_signed(
        &mut self,
        record: Record,
        consistency: Consistency,
        ring: &mut Node<A>,
        wall_ms: u64,
        now: Time,
    ) -> Result<OpId, KvError> {
        let value = (!record.tombstone).then_some(record.value.as_slice());
        self.check_sizes(&record.key, value)?;
        if record.checksum != record.compute_checksum() {
            return Err(KvError::Signature(crate::signed::SignatureError::Invalid));
        }
        if !record.is_signed() {
            return Err(KvError::Signature(crate::signed::SignatureError::Missing));
        }
        crate::signed::check(&record).map_err(KvError::Signature)?;
        if record.version.is_ahead_of(wall_ms, self.config.max_future_skew) {
            return Err(KvError::FromTheFuture { version: record.version });
        }
        Ok(self.ops.start_write(record, consistency, &self.config, &mut self.clock, &mut self.out, ring, now))
    }

    /// Unsigned writes of keys under `signed/` fail before anything is sent.
    fn check_unsigned(key: &[u8]) -> Result<(), KvError> {
        if crate::signed::is_signed_key(key) {
            return Err(KvError::Signature(crate::signed::SignatureError::Missing));
        }
        Ok(())
    }

    /// Starts a read of `key`.
    pub fn get(
        &mut self,
        key: Vec<u8>,
        consistency: Consistency,
        ring: &mut Node<A>,
        now: Time,
    ) -> Result<OpId, KvError> {
        self.check_sizes(&key, None)?;
        Ok(self.ops.start_read(key, consistency, &self.config, &mut self.clock, &mut self.out, ring, now))
    }

    /// Starts a compare-and-set: write `new` (a value, or a delete for `None`) under `key` only if
    /// the key's current state is what `expect` says. Ends with [`OpOutcome::Written`],
    /// [`KvError::Conflict`] (nothing written; the current state attached) or
    /// [`KvError::OutcomeUnknown`]; see [`cas`] for what it guarantees.
    #[allow(clippy::too_many_arguments)]
    pub fn compare_and_set(
        &mut self,
        key: Vec<u8>,
        expect: Expect,
        new: Option<Vec<u8>>,
        ring: &mut Node<A>,
        wall_ms: u64,
        now: Time,
    ) -> Result<OpId, KvError> {
        self.check_sizes(&key, new.as_deref())?;
        if crate::signed::is_signed_key(&key) {
            return Err(KvError::SignedKeyCas);
        }
        Ok(self.start_cas(key, Goal::Swap { expect, new }, ring, wall_ms, now))
    }

    /// Starts a linearizable read of `key`: the state a quorum of replicas agrees on, finished
    /// (written back) first if it was not yet on a quorum, so no later read can see an older one.
    /// It costs a compare-and-set's two round trips.
    pub fn get_linearizable(
        &mut self,
        key: Vec<u8>,
        ring: &mut Node<A>,
        wall_ms: u64,
        now: Time,
    ) -> Result<OpId, KvError> {
        self.check_sizes(&key, None)?;
        if crate::signed::is_signed_key(&key) {
            return Err(KvError::SignedKeyCas);
        }
        Ok(self.start_cas(key, Goal::Read, ring, wall_ms, now))
    }

    fn start_cas(&mut self, key: Vec<u8>, goal: Goal, ring: &mut Node<A>, wall_ms: u64, now: Time) -> OpId {
        let id = self.ops.reserve_id();
        let mut cx = Ctx { config: &self.config, clock: &mut self.clock, out: &mut self.out, now };
        self.cas.start(id, key, goal, wall_ms, ring, &mut cx);
        id
    }

    /// Starts finding `key`'s replica set (always through a lookup, to report its hops).
    pub fn locate(&mut self, key: &[u8], ring: &mut Node<A>, now: Time) -> OpId {
        self.ops.start_locate(Id::hash(key), &self.config, ring, now)
    }

    /// Hands this node's own range to its successors before it leaves: pages of records pushed to
    /// the first n successors, a bounded number in flight, until done or
    /// [`KvConfig::handoff_timeout`]; then [`KvEvent::HandoffFinished`]. Client operations in
    /// flight fail with [`KvError::ShuttingDown`].
    pub fn begin_handoff(&mut self, ring: &Node<A>, now: Time) {
        for op in self.ops.drain().into_iter().chain(self.cas.drain()) {
            self.out.finish(op, Err(KvError::ShuttingDown));
        }
        let targets: Vec<NodeRef<A>> = ring
            .successors()
            .iter()
            .filter(|s| s.id != self.me.id)
            .take(self.config.replicas)
            .cloned()
            .collect();
        let range = ring.predecessor().map(|p| (p.id, self.me.id));
        match range {
            Some((start, end)) if ring.is_member() && !targets.is_empty() => {
                let deadline = now + self.config.handoff_timeout;
                self.handoff = Some(Handoff::start(start, end, targets, deadline, &mut self.out));
            }
            _ => self.out.events.push_back(KvEvent::HandoffFinished { records: 0 }),
        }
    }

    fn check_sizes(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), KvError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(KvError::KeyTooLarge { len: key.len(), max: MAX_KEY_BYTES });
        }
        if let Some(value) = value
            && value.len() > self.config.max_value_bytes
        {
            return Err(KvError::TooLarge { len: value.len(), max: self.config.max_value_bytes });
        }
        Ok(())
    }

    // ----- inputs ------------------------------------------------------------------------------

    /// A peer's request. `id` is chosen by the driver (unique among this node's inbound requests
    /// in flight); the answer is a [`KvMessage::Response`] with that id, possibly after store
    /// operations. `wall_ms` is the driver's wall clock in milliseconds since the Unix epoch:
    /// versions too far ahead of it are refused ([`KvConfig::max_future_skew`]). Writes of keys
    /// outside this node's replica range by `ring`'s view are refused ([`range`]).
    pub fn handle_request(
        &mut self,
        from: A,
        id: RequestId,
        request: KvRequest,
        ring: &Node<A>,
        wall_ms: u64,
        now: Time,
    ) {
        self.out.counters.requests_in += 1;
        let written = match &request {
            KvRequest::Store { record } | KvRequest::Delete { record } | KvRequest::Accept { record } => {
                Some(record.key_id())
            }
            _ => None,
        };
        if let Some(key_id) = written
            && !range::may_hold(ring, &key_id, self.config.replicas)
        {
            tracing::debug!(key_id = %key_id.short(), "refused a write outside this node's replica range");
            self.out.counters.rejected_out_of_range += 1;
            self.out.respond(from, id, KvResponse::NotReplica);
            return;
        }
        if matches!(request, KvRequest::Store { .. } | KvRequest::Delete { .. } | KvRequest::Accept { .. }) {
            self.sync.on_write(&self.config, now);
        }
        let (config, clock, out) = (&self.config, &mut self.clock, &mut self.out);
        self.serving.handle(from, id, request, config, clock, out, wall_ms, now);
    }

    /// A peer's response to request `id`. Dropped and counted unless `id` is in flight *to that
    /// peer*; one that is invalid, carries a version too far ahead of `wall_ms` (the driver's
    /// wall clock, as for [`Coordinator::handle_request`]) or a record for another key than
    /// asked, counts as a failed request.
    pub fn handle_response(
        &mut self,
        from: A,
        id: RequestId,
        response: KvResponse,
        ring: &mut Node<A>,
        wall_ms: u64,
        now: Time,
    ) {
        let Some(pending) = self.out.pending.get(&id) else {
            self.out.counters.rejected_unexpected += 1;
            return;
        };
        if pending.to.node_id() != from.node_id() {
            self.out.counters.rejected_unexpected += 1;
            return;
        }
        let pending = self.out.pending.remove(&id).expect("looked up just above");
        if let Err(error) = response.validate(self.config.max_value_bytes) {
            tracing::debug!(%error, "invalid storage response");
            self.out.counters.rejected_invalid += 1;
            self.on_request_failed(pending, ring, now);
            return;
        }
        if let Some(version) = response.newest_version()
            && version.is_ahead_of(wall_ms, self.config.max_future_skew)
        {
            tracing::debug!(%version, "storage response with a version too far ahead");
            self.out.counters.rejected_future += 1;
            self.on_request_failed(pending, ring, now);
            return;
        }
        let answered = match &response {
            KvResponse::Found { record: Some(record) } | KvResponse::Promised { record: Some(record) } => {
                Some(&record.key)
            }
            _ => None,
        };
        if let Some(key) = answered
            && pending.key.as_ref() != Some(key)
        {
            // A record for another key than asked: taken as the answer, read repair would
            // spread it to the asked key's replicas.
            tracing::debug!("storage response with a record for another key");
            self.out.counters.rejected_invalid += 1;
            self.on_request_failed(pending, ring, now);
            return;
        }
        self.on_response(pending, response, ring, now);
    }

    /// Request `id` could not be delivered (or its connection failed): the same as a time-out,
    /// sooner.
    pub fn handle_send_failure(&mut self, id: RequestId, ring: &mut Node<A>, now: Time) {
        if let Some(pending) = self.out.pending.remove(&id) {
            self.on_request_failed(pending, ring, now);
        }
    }

    /// A lookup finished; returns whether it was one of the coordinator's.
    pub fn handle_lookup_finished(
        &mut self,
        id: LookupId,
        result: &Result<LookupOutcome<A>, LookupError>,
        ring: &mut Node<A>,
        now: Time,
    ) -> bool {
        if self.ops.on_lookup_finished(id, result, &self.config, &mut self.clock, &mut self.out, ring, now) {
            return true;
        }
        if self.stray.on_lookup_finished(id, result, &self.config, &mut self.out) {
            return true;
        }
        let mut cx = Ctx { config: &self.config, clock: &mut self.clock, out: &mut self.out, now };
        self.cas.on_lookup_finished(id, result, &mut cx)
    }

    /// The result of store operation `io`.
    pub fn handle_store_result(&mut self, io: IoId, result: StoreResult, ring: &mut Node<A>, now: Time) {
        self.out.in_flight.finished(io);
        self.out.resume_deferred(io);
        let Some(purpose) = self.out.io.remove(&io) else {
            return;
        };
        if let StoreResult::Failed(error) = &result {
            tracing::warn!(%error, "store operation failed");
            self.out.counters.store_failures += 1;
        }
        match purpose {
            IoPurpose::OpStore { op, attempt, replica } => {
                let outcome = match result {
                    StoreResult::Persisted(mut outcomes) => outcomes.pop(),
                    _ => None,
                };
                let (config, clock, out) = (&self.config, &mut self.clock, &mut self.out);
                self.ops.on_store_reply(op, attempt, replica, outcome, config, clock, out, now);
            }
            IoPurpose::OpDeleteRead { op, attempt, replica } => {
                let (config, clock, out) = (&self.config, &mut self.clock, &mut self.out);
                match result {
                    StoreResult::Read(mut records) => match records.pop().flatten() {
                        Some(_) => self.ops.write_here(op, attempt, replica, out, now),
                        None => self.ops.on_not_held(op, attempt, replica, config, clock, out, now),
                    },
                    _ => self.ops.on_store_reply(op, attempt, replica, None, config, clock, out, now),
                }
            }
            IoPurpose::OpRead { op, replica } => {
                let answer = match result {
                    StoreResult::Read(mut records) => records.pop(),
                    _ => None,
                };
                self.ops.on_read_reply(
                    op,
                    replica,
                    answer,
                    &self.config,
                    &mut self.clock,
                    &mut self.out,
                    now,
                );
            }
            IoPurpose::Serve { from, id, request } => {
                self.serving.on_store_result(from, id, request, result, &mut self.clock, &mut self.out, now);
            }
            IoPurpose::CasPrepare { op, attempt, replica, key, ballot } => {
                let reply = match result {
                    StoreResult::Read(mut records) => {
                        let read = records.pop().flatten();
                        match promise::decide(&mut self.out, &mut self.clock, &key, read, ballot, now) {
                            Prepared::Promised(held) => cas::Reply::Promised(held),
                            Prepared::Refused(_) => cas::Reply::NotPromised,
                            Prepared::Wait(io) => {
                                let purpose = IoPurpose::CasPrepare { op, attempt, replica, key, ballot };
                                self.out.defer(io, purpose);
                                return;
                            }
                        }
                    }
                    _ => cas::Reply::Failed,
                };
                let mut cx = Ctx { config: &self.config, clock: &mut self.clock, out: &mut self.out, now };
                self.cas.on_reply(op, attempt, replica, reply, &mut cx);
            }
            IoPurpose::CasFetch { op, attempt, replica } => {
                let reply = match result {
                    StoreResult::Read(mut records) => cas::Reply::Promised(records.pop().flatten()),
                    _ => cas::Reply::Failed,
                };
                let mut cx = Ctx { config: &self.config, clock: &mut self.clock, out: &mut self.out, now };
                self.cas.on_reply(op, attempt, replica, reply, &mut cx);
            }
            IoPurpose::CasAccept { op, attempt, replica } => {
                let reply = match result {
                    StoreResult::Persisted(outcomes) => match outcomes.first() {
                        Some(outcome) => self.accept_reply(outcome),
                        None => cas::Reply::Failed,
                    },
                    _ => cas::Reply::Failed,
                };
                let mut cx = Ctx { config: &self.config, clock: &mut self.clock, out: &mut self.out, now };
                self.cas.on_reply(op, attempt, replica, reply, &mut cx);
            }
            IoPurpose::Repair | IoPurpose::SyncPulled => {
                if let StoreResult::Persisted(outcomes) = result {
                    let applied = outcomes.iter().filter(|o| o.applied).count() as u64;
                    self.out.counters.sync_pulled += applied;
                }
            }
            IoPurpose::SyncDigest { start, end } => {
                self.sync.on_local_digest(start, end, result, ring, &self.config, &mut self.out, now)
            }
            IoPurpose::SyncLocalEntries { page, remote, remote_truncated } => {
                self.sync.on_local_entries(page, remote, remote_truncated, result, &mut self.out, now)
            }
            IoPurpose::SyncPushRead { to } => {
                if let StoreResult::Read(records) = result {
                    for record in records.into_iter().flatten() {
                        self.out.counters.sync_pushed += 1;
                        self.out.request(to.clone(), KvRequest::Store { record }, Purpose::SyncPush, now);
                    }
                }
            }
            IoPurpose::StrayEntries { sweep } => self.stray.on_entries(sweep, result, ring, now),
            IoPurpose::StrayRead { sweep } => {
                self.stray.on_records(sweep, result, &self.config, &mut self.out, now)
            }
            IoPurpose::StrayRemove { sweep } => self.stray.on_removed(sweep, result, &mut self.out),
            IoPurpose::HandoffPage => {
                if let Some(handoff) = &mut self.handoff {
                    handoff.on_page(result, &mut self.out, now);
                }
                self.finish_handoff_if_done(now);
            }
        }
    }

    /// The ring changed around this node (new predecessor or successors): its range or replicas
    /// changed, so compare with the replicas soon.
    pub fn handle_ring_changed(&mut self, now: Time) {
        self.sync.hurry(now);
        self.stray.hurry(now);
    }

    /// Time passed: operations and requests past their deadlines fail, anti-entropy rounds start.
    pub fn handle_timeout(&mut self, ring: &mut Node<A>, now: Time) {
        let expired: Vec<RequestId> =
            self.out.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            if let Some(pending) = self.out.pending.remove(&id) {
                self.on_request_failed(pending, ring, now);
            }
        }
        self.ops.expire(&self.config, &mut self.clock, &mut self.out, ring, now);
        let mut cx = Ctx { config: &self.config, clock: &mut self.clock, out: &mut self.out, now };
        self.cas.on_timeout(&mut cx);
        self.out.promises.expire(now);
        if self.handoff.is_none() {
            self.sync.tick(ring, &self.me, &mut self.out, &self.config, now);
            self.stray.tick(ring, &mut self.out, &self.config, now);
        }
        self.finish_handoff_if_done(now);
    }

    // ----- outputs -----------------------------------------------------------------------------

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<KvTransmit<A>> {
        self.out.transmits.pop_front()
    }

    /// The next store operation to perform.
    pub fn poll_store_op(&mut self) -> Option<StoreOp> {
        self.out.store_ops.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<KvEvent<A>> {
        self.out.events.pop_front()
    }

    /// When [`Coordinator::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        let candidates = [
            self.out.next_deadline(),
            self.ops.next_deadline(),
            self.cas.next_deadline(),
            if self.handoff.is_none() { self.sync.next_round() } else { None },
            if self.handoff.is_none() { self.stray.next_deadline(&self.config) } else { None },
            self.handoff.as_ref().map(Handoff::deadline),
        ];
        candidates.into_iter().flatten().min()
    }

    fn finish_handoff_if_done(&mut self, now: Time) {
        if let Some(handoff) = &self.handoff
            && handoff.is_over(now)
        {
            let records = handoff.acknowledged();
            self.out.counters.handoff_pushed += records;
            self.handoff = None;
            self.out.events.push_back(KvEvent::HandoffFinished { records });
        }
    }
}

#[cfg(test)]
mod tests;
