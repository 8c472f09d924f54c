//! The simulator's side of the store: each node's [`Coordinator`] and a simulated disk that models
//! durability, plus network partitions.
//!
//! Owns, per node, the records that are durable ([`SimKv::durable`]) and the store operations in
//! progress. A persist becomes durable only when it completes, [`StoreModel::persist`] after it was
//! asked for; a node that crashes before then loses it, exactly what a real node loses when the
//! process dies before its write-ahead log was synced. Reads and scans complete after
//! [`StoreModel::read`] and see what is durable then. Completion times are fixed, not drawn, so
//! enabling the store changes no random draw of the ring or the network.
//!
//! Storage requests addressed to a Byzantine node never reach its coordinator: the harness answers
//! them with its lies ([`super::byzantine`]).
//!
//! Also owns the global index of which live or dead node durably holds which key (for the
//! scenario's checks), and the partition: while [`Simulation::partition`] is in force, every
//! message between two different parts is lost on delivery.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::time::Duration;

use super::byzantine::LiarCounters;
use super::{SimAddr, Simulation, What};
use crate::id::Id;
use crate::kv::{
    Coordinator, Expect, IoId, KvConfig, KvError, KvEvent, KvMessage, OpId, OpOutcome, PersistOutcome,
    StoreOp, StoreResult,
};
use crate::message::RequestId;
use crate::node::Node;
use crate::store::{Consistency, KvRequest, Record, bucket_of, digest};
use crate::time::Time;

/// How long simulated store operations take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreModel {
    /// A read or scan.
    pub read: Duration,
    /// A persist (the log's fsync).
    pub persist: Duration,
}

impl Default for StoreModel {
    /// 100 µs reads, 1 ms persists: an SSD's fsync.
    fn default() -> Self {
        StoreModel { read: Duration::from_micros(100), persist: Duration::from_millis(1) }
    }
}

/// One node's coordinator and disk.
#[derive(Debug)]
pub(crate) struct SimKv {
    pub(crate) coordinator: Coordinator<SimAddr>,
    /// What survived: key id → record (SHA-1 collisions do not happen between test keys).
    durable: BTreeMap<Id, Record>,
    in_progress: BTreeMap<IoId, StoreOp>,
    /// Offset of this node's wall clock, in milliseconds.
    skew_ms: i64,
}

/// A finished client operation.
#[derive(Clone, Debug)]
pub struct KvResult {
    /// The node it ran at.
    pub node: usize,
    /// Its id there.
    pub op: OpId,
    /// When it finished.
    pub at: Time,
    /// How.
    pub result: Result<OpOutcome<SimAddr>, KvError>,
}

/// The store's global state in a simulation.
#[derive(Debug)]
pub(crate) struct KvWorld {
    config: KvConfig,
    model: StoreModel,
    skew_ms: i64,
    /// Key id → nodes that durably hold some version of it.
    holders: BTreeMap<Id, BTreeSet<u32>>,
    results: Vec<KvResult>,
    /// Storage-protocol messages sent by all nodes.
    pub(crate) messages: u64,
}

/// Milliseconds since the Unix epoch at simulated time zero (2026-01-01), so versions look real.
const WALL_EPOCH_MS: u64 = 1_767_225_600_000;

impl Simulation {
    /// Gives every node (present and future) a store coordinator with `config` and a simulated
    /// disk. Each node's wall clock is offset by a value drawn uniformly from ±`clock_skew_ms`.
    pub fn enable_kv(&mut self, config: KvConfig, model: StoreModel, clock_skew_ms: u64) {
        let world = KvWorld {
            config,
            model,
            skew_ms: i64::try_from(clock_skew_ms).unwrap_or(i64::MAX),
            holders: BTreeMap::new(),
            results: Vec::new(),
            messages: 0,
        };
        for index in 0..self.nodes.len() {
            if self.nodes[index].kv.is_none() {
                let kv = self.new_sim_kv(&self.nodes[index].node, &world, index);
                self.nodes[index].kv = Some(kv);
            }
        }
        self.kv = Some(world);
        for index in 0..self.nodes.len() {
            if self.nodes[index].alive {
                self.flush(index);
            }
        }
    }

    pub(super) fn new_sim_kv(&self, node: &Node<SimAddr>, world: &KvWorld, index: usize) -> Box<SimKv> {
        // The skew is a function of the node's index and the run's salt, not a draw from the shared
        // generator: enabling the store must not shift the ring's random choices.
        let span = world.skew_ms.saturating_mul(2).saturating_add(1);
        let hash = Id::hash(&(self.salt ^ index as u64).to_be_bytes());
        let raw = u64::from_be_bytes(hash.as_bytes()[..8].try_into().expect("ids have 20 bytes"));
        let skew_ms = if world.skew_ms == 0 { 0 } else { (raw % span as u64) as i64 - world.skew_ms };
        Box::new(SimKv {
            coordinator: Coordinator::new(node.me().clone(), world.config.clone()),
            durable: BTreeMap::new(),
            in_progress: BTreeMap::new(),
            skew_ms,
        })
    }

    /// Cuts the network into parts: `side[i]` says which part node `i` is in (nodes added later are
    /// in part 0). Messages between different parts are lost until [`Simulation::heal`].
    pub fn partition(&mut self, side: Vec<u8>) {
        self.sides = Some(side);
    }

    /// Ends a partition.
    pub fn heal(&mut self) {
        self.sides = None;
    }

    pub(super) fn is_cut(&self, a: usize, b: usize) -> bool {
        self.sides
            .as_ref()
            .is_some_and(|sides| sides.get(a).copied().unwrap_or(0) != sides.get(b).copied().unwrap_or(0))
    }

    fn wall_ms(&self, index: usize) -> u64 {
        let skew = self.nodes[index].kv.as_ref().map_or(0, |kv| kv.skew_ms);
        let base = WALL_EPOCH_MS + self.now.as_micros() / 1000;
        base.saturating_add_signed(skew)
    }

    /// Starts a put at node `index`.
    pub fn kv_put(
        &mut self,
        index: usize,
        key: Vec<u8>,
        value: Vec<u8>,
        consistency: Consistency,
    ) -> Result<OpId, KvError> {
        let (now, wall) = (self.now, self.wall_ms(index));
        let SimNode { node, kv, .. } = &mut self.nodes[index];
        let kv = kv.as_mut().expect("the store is enabled");
        let result = kv.coordinator.put(key, value, consistency, node, wall, now);
        self.flush(index);
        result
    }

    /// Starts a write of a record its owner signed ([`crate::signed`]) at node `index`.
    pub fn kv_put_signed(
        &mut self,
        index: usize,
        record: Record,
        consistency: Consistency,
    ) -> Result<OpId, KvError> {
        let (now, wall) = (self.now, self.wall_ms(index));
        let SimNode { node, kv, .. } = &mut self.nodes[index];
        let kv = kv.as_mut().expect("the store is enabled");
        let result = kv.coordinator.put_signed(record, consistency, node, wall, now);
        self.flush(index);
        result
    }

    /// The wall clock of node `index` in milliseconds since the Unix epoch, as its coordinator
    /// sees it (the simulated epoch plus the node's skew).
    pub fn kv_wall_ms(&self, index: usize) -> u64 {
        self.wall_ms(index)
    }

    /// Starts a delete at node `index`.
    pub fn kv_delete(
        &mut self,
        index: usize,
        key: Vec<u8>,
        consistency: Consistency,
    ) -> Result<OpId, KvError> {
        let (now, wall) = (self.now, self.wall_ms(index));
        let SimNode { node, kv, .. } = &mut self.nodes[index];
        let kv = kv.as_mut().expect("the store is enabled");
        let result = kv.coordinator.delete(key, consistency, node, wall, now);
        self.flush(index);
        result
    }

    /// Starts a get at node `index`.
    pub fn kv_get(&mut self, index: usize, key: Vec<u8>, consistency: Consistency) -> Result<OpId, KvError> {
        let now = self.now;
        let SimNode { node, kv, .. } = &mut self.nodes[index];
        let kv = kv.as_mut().expect("the store is enabled");
        let result = kv.coordinator.get(key, consistency, node, now);
        self.flush(index);
        result
    }

    /// Starts a compare-and-set at node `index` (`new`: `None` deletes).
    pub fn kv_cas(
        &mut self,
        index: usize,
        key: Vec<u8>,
        expect: Expect,
        new: Option<Vec<u8>>,
    ) -> Result<OpId, KvError> {
        let (now, wall) = (self.now, self.wall_ms(index));
        let SimNode { node, kv, .. } = &mut self.nodes[index];
        let kv = kv.as_mut().expect("the store is enabled");
        let result = kv.coordinator.compare_and_set(key, expect, new, node, wall, now);
        self.flush(index);
        result
    }

    /// Starts a linearizable read at node `index`.
    pub fn kv_get_linearizable(&mut self, index: usize, key: Vec<u8>) -> Result<OpId, KvError> {
        let (now, wall) = (self.now, self.wall_ms(index));
        let SimNode { node, kv, .. } = &mut self.nodes[index];
        let kv = kv.as_mut().expect("the store is enabled");
        let result = kv.coordinator.get_linearizable(key, node, wall, now);
        self.flush(index);
        result
    }

    /// Client operations finished since the last call, in order.
    pub fn take_kv_results(&mut self) -> Vec<KvResult> {
        self.kv.as_mut().map(|world| std::mem::take(&mut world.results)).unwrap_or_default()
    }

    /// Storage-protocol messages sent so far.
    pub fn kv_messages(&self) -> u64 {
        self.kv.as_ref().map_or(0, |world| world.messages)
    }

    /// Node `index`'s durable record for the key with id `key_id`.
    pub fn durable_record(&self, index: usize, key_id: &Id) -> Option<&Record> {
        self.nodes[index].kv.as_ref()?.durable.get(key_id)
    }

    /// Puts `record` on node `index`'s disk directly, as a copy left there by a history the test
    /// does not replay (a split ring, an earlier replica set).
    pub fn plant_record(&mut self, index: usize, record: Record) {
        let key_id = record.key_id();
        if let Some(kv) = self.nodes[index].kv.as_mut() {
            kv.durable.insert(key_id, record);
        }
        if let Some(world) = self.kv.as_mut() {
            world.holders.entry(key_id).or_default().insert(index as u32);
        }
    }

    /// Nodes (live or crashed) that durably hold some version of the key with id `key_id`.
    pub fn holders(&self, key_id: &Id) -> Vec<usize> {
        let holders = self.kv.as_ref().and_then(|world| world.holders.get(key_id));
        holders.map(|set| set.iter().map(|&i| i as usize).collect()).unwrap_or_default()
    }

    /// The key's true replica set: the first n live members at or after `key_id`.
    pub fn true_replicas(&self, key_id: &Id, n: usize) -> Vec<usize> {
        let after = self.members.range(key_id..).map(|(_, &i)| i as usize);
        let wrapped = self.members.range(..key_id).map(|(_, &i)| i as usize);
        after.chain(wrapped).take(n).collect()
    }

    /// A store coordinator's counters.
    pub fn kv_coordinator(&self, index: usize) -> Option<&Coordinator<SimAddr>> {
        self.nodes[index].kv.as_ref().map(|kv| &kv.coordinator)
    }

    /// Hands node `to` a storage message as if `from` had sent it, now (bypassing the network):
    /// for tests that play a hostile peer.
    pub fn inject_kv_message(&mut self, to: usize, from: SimAddr, message: KvMessage) {
        self.deliver_kv(to, from, message);
    }

    pub(super) fn deliver_kv(&mut self, index: usize, from: SimAddr, message: KvMessage) {
        if !self.nodes[index].alive || self.is_cut(from.index(), index) {
            return;
        }
        if self.nodes[index].byzantine
            && let KvMessage::Request { id, body } = message
        {
            self.answer_as_liar(index, from, id, body);
            return;
        }
        let (now, wall_ms) = (self.now, self.wall_ms(index));
        let SimNode { node, kv, .. } = &mut self.nodes[index];
        let Some(kv) = kv.as_mut() else {
            return;
        };
        match message {
            KvMessage::Request { id, body } => {
                kv.coordinator.handle_request(from, id, body, node, wall_ms, now)
            }
            KvMessage::Response { id, body } => {
                kv.coordinator.handle_response(from, id, body, node, wall_ms, now)
            }
        }
        self.flush(index);
    }

    /// The liar `index` was sent a storage request: the harness answers it (or drops it) instead
    /// of the liar's coordinator ([`super::byzantine`]).
    fn answer_as_liar(&mut self, index: usize, from: SimAddr, id: RequestId, request: KvRequest) {
        let me = self.nodes[index].node.me().addr;
        let Some(body) = self.liars.answer_kv(me, request, &mut self.rng) else {
            return;
        };
        if let Some(world) = self.kv.as_mut() {
            world.messages += 1;
        }
        if let Some(delay) = self.network.sample(&mut self.rng) {
            let message = KvMessage::Response { id, body };
            self.push(self.now + delay, What::DeliverKv { to: from.index() as u32, from: me, message });
        }
    }

    /// What the liars did to storage requests so far.
    pub fn liar_counters(&self) -> &LiarCounters {
        self.liars.counters()
    }

    pub(super) fn flush_kv(&mut self, index: usize) {
        let now = self.now;
        let from = self.nodes[index].node.me().addr;
        loop {
            let Some(kv) = self.nodes[index].kv.as_mut() else {
                return;
            };
            if let Some(transmit) = kv.coordinator.poll_transmit() {
                if let Some(world) = self.kv.as_mut() {
                    world.messages += 1;
                }
                if let Some(delay) = self.network.sample(&mut self.rng) {
                    let to = transmit.to.index() as u32;
                    self.push(now + delay, What::DeliverKv { to, from, message: transmit.message });
                }
                continue;
            }
            if let Some(op) = kv.coordinator.poll_store_op() {
                let model = &self.kv.as_ref().expect("the store is enabled").model;
                let delay = if matches!(op, StoreOp::Persist { .. }) { model.persist } else { model.read };
                let io = op.io();
                kv.in_progress.insert(io, op);
                self.push(now + delay, What::StoreDone { node: index as u32, io });
                continue;
            }
            if let Some(event) = kv.coordinator.poll_event() {
                if let KvEvent::OpFinished { op, result } = event
                    && let Some(world) = self.kv.as_mut()
                {
                    world.results.push(KvResult { node: index, op, at: now, result });
                }
                continue;
            }
            return;
        }
    }

    pub(super) fn complete_store_op(&mut self, index: usize, io: IoId) {
        if !self.nodes[index].alive {
            // Crashed first: what was not durable is gone.
            return;
        }
        let now = self.now;
        let SimNode { node, kv, .. } = &mut self.nodes[index];
        let Some(kv) = kv.as_mut() else {
            return;
        };
        let Some(op) = kv.in_progress.remove(&io) else {
            return;
        };
        let (result, written) = execute(&mut kv.durable, op);
        kv.coordinator.handle_store_result(io, result, node, now);
        if let Some(world) = self.kv.as_mut() {
            for key_id in written {
                world.holders.entry(key_id).or_default().insert(index as u32);
            }
        }
        self.flush(index);
    }
}

use super::SimNode;

/// Performs a store operation on a node's durable records; returns its result and the key ids
/// written.
fn execute(durable: &mut BTreeMap<Id, Record>, op: StoreOp) -> (StoreResult, Vec<Id>) {
    match op {
        StoreOp::Persist { records, .. } => {
            let mut outcomes = Vec::with_capacity(records.len());
            let mut written = Vec::new();
            for record in records {
                let key_id = record.key_id();
                let held = durable.get(&key_id);
                let existed = held.is_some_and(|r| !r.tombstone);
                if let Some(held) = held
                    && !record.supersedes(held)
                {
                    outcomes.push(PersistOutcome { applied: false, existed, held: Some(held.version) });
                    continue;
                }
                durable.insert(key_id, record);
                written.push(key_id);
                outcomes.push(PersistOutcome { applied: true, existed, held: None });
            }
            (StoreResult::Persisted(outcomes), written)
        }
        StoreOp::Read { keys, .. } => {
            let records = keys.iter().map(|key| durable.get(&Id::hash(key)).cloned()).collect();
            (StoreResult::Read(records), Vec::new())
        }
        StoreOp::Digest { start, end, .. } => {
            let entries =
                ring_range(durable, start, end, None).map(|r| (r.key_id(), r.version)).collect::<Vec<_>>();
            (StoreResult::Digest(digest(&start, &end, entries.iter().map(|(k, v)| (k, v)))), Vec::new())
        }
        StoreOp::Entries { start, end, buckets, after, limit, .. } => {
            let wanted =
                |id: &Id| buckets.as_ref().is_none_or(|b| b.contains(&(bucket_of(id, &start, &end) as u16)));
            let mut entries: Vec<_> = ring_range(durable, start, end, after)
                .filter(|r| wanted(&r.key_id()))
                .take(limit + 1)
                .map(|r| crate::store::Entry { key: r.key.clone(), version: r.version })
                .collect();
            let truncated = entries.len() > limit;
            entries.truncate(limit);
            (StoreResult::Entries { entries, truncated }, Vec::new())
        }
        StoreOp::Records { start, end, after, limit, .. } => {
            let mut records: Vec<Record> =
                ring_range(durable, start, end, after).take(limit + 1).cloned().collect();
            let truncated = records.len() > limit;
            records.truncate(limit);
            (StoreResult::Records { records, truncated }, Vec::new())
        }
        StoreOp::Remove { entries, .. } => {
            let mut removed = 0;
            for entry in entries {
                let key_id = Id::hash(&entry.key);
                if durable.get(&key_id).is_some_and(|r| r.version == entry.version) {
                    durable.remove(&key_id);
                    removed += 1;
                }
            }
            (StoreResult::Removed(removed), Vec::new())
        }
    }
}

/// The records whose key id lies in `(start, end]` after `after`, in ring order from `start`;
/// `start == end` without a cursor is the whole ring.
fn ring_range(
    durable: &BTreeMap<Id, Record>,
    start: Id,
    end: Id,
    after: Option<Id>,
) -> Box<dyn Iterator<Item = &Record> + '_> {
    let from = after.unwrap_or(start);
    let whole = after.is_none() && start == end;
    if from < end {
        Box::new(durable.range((Excluded(from), Included(end))).map(|(_, r)| r))
    } else if from > end || whole {
        let tail = durable.range((Excluded(from), Unbounded)).map(|(_, r)| r);
        Box::new(tail.chain(durable.range((Unbounded, Included(end))).map(|(_, r)| r)))
    } else {
        Box::new(std::iter::empty())
    }
}
