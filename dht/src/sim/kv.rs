//! The `kv` scenario: the real store coordinator on every node of a simulated ring, a stream of
//! client operations, crashes, a partition, lossy links and skewed clocks, and a checker of the
//! whole history.
//!
//! # The run
//! 1. A ring of `nodes` grows and converges (as in the lookup scenarios); every node gets a
//!    [`crate::kv::Coordinator`] and a simulated disk ([`StoreModel`]).
//! 2. `ops` client operations start at `rate` per simulated second, each at a random member, on a
//!    key drawn uniformly from `keys`: a quorum get with probability `read_ratio`, else a quorum
//!    put (one write in ten is a delete). Every put writes a value never written before, so a read
//!    names the write it saw.
//! 3. A third of the way in, `crash_fraction` of the nodes crash at once (for good: a crash loses
//!    what was not yet durable), and with `partition` the ring is cut in two halves (each node
//!    drawn to a side) for `partition_s`, then healed.
//! 4. After the last operation the run goes on until every key is repaired (below) and the ring
//!    has been correct for [`Config::lookup_cache_ttl`] (ranges owners vouched for before the ring
//!    was one again have expired from every cache), or 120 s pass, then reads every key once more
//!    through a quorum read at a random member.
//!
//! With a Byzantine fraction F, a fraction F of the nodes (drawn by the seed, never node 0) turn
//! Byzantine when the operations begin (`sim::byzantine`: they lie in every lookup step they
//! answer, drop every storage request sent to them and answer reads with stale or foreign
//! records), and every client operation, the final reads included, runs at an honest member.
//! Whether honest lookups see through the liars' ownership claims is the ring core's
//! [`Config::check_ownership_claims`], which the caller sets.
//!
//! # What is counted
//! Writes are ordered by real time: write X *precedes* write W when X was acknowledged before W
//! started. A read *saw* the write whose value (or, for a delete, whose acknowledged version) it
//! returned; "not found" saw the initial absence or a delete.
//! - `stale_reads`: successful reads that began after some write W to the key was acknowledged and
//!   saw a write that precedes W (or the initial absence). A write concurrent with W may be seen,
//!   either order is allowed for concurrent writes; so may a write never acknowledged (it may take
//!   effect at any time after it started). A read that returns a tombstone of an unacknowledged
//!   delete cannot be named and is not counted. Whatever it names, a read that returned a record
//!   whose version is older than one acknowledged before it began is stale too (a write that
//!   failed may take effect late, but under its own version, which loses to every newer one).
//! - `acked_writes_lost`: acknowledged writes W for which the final read saw a write that precedes
//!   W, or returned a record older than W's version, although a live node durably holds W's
//!   version or a newer one. (When every node that persisted W crashed, W is beyond what the
//!   design promises: counted in `acked_writes_beyond`.)
//! - `unavailable_pct`: client operations that failed (no quorum, no route, contention).
//! - `repair_s`: from the last disruption (the crash, or the heal) until every key written is
//!   *repaired*: each of its n true replicas (the first n live members from its id) durably holds
//!   the newest version any live node holds. Keys written in the last second are not judged yet.
//! - `msgs_per_op`: storage-protocol messages per client operation (anti-entropy included).
//!
//! With liars, a key's replica set *contains a liar* when a Byzantine node is among its n true
//! replicas when the operations begin or at the final read; the `*_liar_set` counters are the part
//! of each figure that falls on such keys, the rest fell on keys whose replica set is honest.
//! `foreign_reads` counts reads (final ones included) that returned a record of another key (by
//! its name, or by a value never written to the asked key), and `rejected_invalid` the answers
//! (and requests) honest coordinators refused as invalid: records of another key than asked, bad
//! checksums. A liar's durable copy never counts as holding a write, nor as a replica that must
//! be repaired.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::RngExt;
use serde::Serialize;

use super::kv_store::{KvResult, StoreModel};
use super::scenario::{self, Kind, Params, round3};
use super::{LiarCounters, NetworkModel, Simulation};
use crate::config::Config;
use crate::id::Id;
use crate::kv::{KvConfig, OpId, OpOutcome};
use crate::store::{Consistency, Record, Version};
use crate::time::Time;

/// Everything a `kv` run depends on.
#[derive(Clone, Debug)]
pub struct KvParams {
    /// Ring size N.
    pub nodes: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Client operations.
    pub ops: u64,
    /// Operations started per simulated second.
    pub rate: f64,
    /// Share of operations that are reads.
    pub read_ratio: f64,
    /// Distinct keys.
    pub keys: u64,
    /// Share of nodes that crash at once, a third of the way in.
    pub crash_fraction: f64,
    /// Whether the ring is cut in two halves, a third of the way in.
    pub partition: bool,
    /// How long the partition lasts.
    pub partition_duration: Duration,
    /// Each node's wall clock is offset by up to ± this many milliseconds.
    pub clock_skew_ms: u64,
    /// Consistency of the scenario's reads (the final reads are always quorum reads).
    pub read_consistency: Consistency,
    /// Share of the nodes that turn Byzantine when the operations begin (module docs).
    pub byzantine_fraction: f64,
    /// The ring core's configuration.
    pub config: Config,
    /// The coordinator's configuration.
    pub kv: KvConfig,
    /// The network.
    pub network: NetworkModel,
    /// The disks.
    pub store: StoreModel,
}

impl KvParams {
    /// Defaults: 1,000 operations per second, half reads, 1,000 keys, no crash, no partition (20 s
    /// when asked for), no skew, no Byzantine node.
    pub fn new(nodes: usize, ops: u64, seed: u64) -> Self {
        KvParams {
            nodes,
            seed,
            ops,
            rate: 1000.0,
            read_ratio: 0.5,
            keys: 1000,
            crash_fraction: 0.0,
            partition: false,
            partition_duration: Duration::from_secs(20),
            clock_skew_ms: 0,
            read_consistency: Consistency::Quorum,
            byzantine_fraction: 0.0,
            config: Config::default(),
            kv: KvConfig::default(),
            network: NetworkModel::default(),
            store: StoreModel::default(),
        }
    }
}

/// What a `kv` run measured. Everything but `wall_s` is a function of the parameters alone.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KvReport {
    /// Ring size N.
    pub nodes: usize,
    /// The seed.
    pub seed: u64,
    /// Client operations started.
    pub ops: u64,
    /// Deletes that found no replica holding their key and wrote nothing (counted among the reads,
    /// as a read of "not found", not among the writes).
    pub noop_deletes: u64,
    /// Writes (puts and deletes) acknowledged.
    pub acked_writes: u64,
    /// Acknowledged writes lost although a live node holds them (module docs).
    pub acked_writes_lost: u64,
    /// Acknowledged writes whose every durable copy crashed.
    pub acked_writes_beyond: u64,
    /// Acknowledged writes of keys whose final read failed: not judged.
    pub acked_writes_unjudged: u64,
    /// Reads that saw a write preceding one acknowledged before they began (module docs).
    pub stale_reads: u64,
    /// Reads answered.
    pub reads: u64,
    /// Reads (final ones included) that returned a record of another key than asked (module docs).
    pub foreign_reads: u64,
    /// Percentage of client operations that failed.
    pub unavailable_pct: f64,
    /// Byzantine nodes.
    pub byzantine: usize,
    /// Of `acked_writes`, those of keys whose replica set contains a liar (module docs).
    pub acked_writes_liar_set: u64,
    /// Of `acked_writes_lost`, those of keys whose replica set contains a liar.
    pub acked_writes_lost_liar_set: u64,
    /// Of `acked_writes_unjudged`, those of keys whose replica set contains a liar.
    pub acked_writes_unjudged_liar_set: u64,
    /// Of `stale_reads`, those of keys whose replica set contains a liar.
    pub stale_reads_liar_set: u64,
    /// Percentage of the client operations on keys whose replica set is honest that failed.
    pub unavailable_honest_set_pct: f64,
    /// Percentage of the client operations on keys whose replica set contains a liar that failed.
    pub unavailable_liar_set_pct: f64,
    /// What the liars did to storage requests.
    pub liars: LiarCounters,
    /// Storage answers and requests honest coordinators refused as invalid (records of another
    /// key than asked, bad checksums, oversized).
    pub rejected_invalid: u64,
    /// Seconds from the last disruption until every key was repaired; `null` if it never was (or
    /// nothing was disrupted: then the time from the last operation).
    pub repair_s: Option<f64>,
    /// Storage-protocol messages per client operation.
    pub msgs_per_op: f64,
    /// Writes re-versioned after a replica held a newer version.
    pub write_retries: u64,
    /// Read repairs sent.
    pub read_repairs: u64,
    /// Nodes crashed.
    pub crashes: u64,
    /// Final reads that failed.
    pub final_reads_failed: u64,
    /// Live members at the end.
    pub final_members: usize,
    /// Fingerprint of the whole run.
    pub trace_hash: String,
    /// Wall-clock seconds the run took.
    pub wall_s: f64,
}

/// One write in the history.
#[derive(Clone, Debug)]
struct WriteRecord {
    start: Time,
    delete: bool,
    /// A delete that found no replica holding the key and wrote nothing: it took no effect, and
    /// counts as a read that saw the key absent.
    noop: bool,
    /// When it was acknowledged, and under which version.
    acked: Option<(Time, Version)>,
}

/// What a read saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// Nothing was ever written, or a delete.
    Absent,
    /// This write (index into the key's writes).
    Write(usize),
    /// A tombstone no acknowledged delete carries.
    Unknown,
}

#[derive(Debug, Default)]
struct KeyHistory {
    writes: Vec<WriteRecord>,
    /// Value → write index.
    by_value: BTreeMap<Vec<u8>, usize>,
    /// Reads: (start, what they saw, the version of the record returned).
    reads: Vec<(Time, Seen, Option<Version>)>,
    last_activity: Time,
}

impl KeyHistory {
    fn saw(&self, record: Option<&Record>) -> Seen {
        match record {
            None => Seen::Absent,
            Some(r) if !r.tombstone => self.by_value.get(&r.value).map_or(Seen::Unknown, |&w| Seen::Write(w)),
            Some(r) => self
                .writes
                .iter()
                .position(|w| w.acked.is_some_and(|(_, v)| v == r.version))
                .map_or(Seen::Unknown, Seen::Write),
        }
    }

    /// Whether a read of `key` returned a record of another key: another key's name, or a value
    /// never written to this key (every value is written once, to one key).
    fn is_foreign(&self, key: u64, record: Option<&Record>) -> bool {
        record
            .is_some_and(|r| r.key != key_name(key) || !r.tombstone && !self.by_value.contains_key(&r.value))
    }

    /// The latest start of a write acknowledged before `t`: anything that precedes that write is
    /// stale from `t` on.
    fn must_not_precede(&self, t: Time) -> Option<Time> {
        self.writes.iter().filter(|w| w.acked.is_some_and(|(at, _)| at < t)).map(|w| w.start).max()
    }

    /// The newest version acknowledged before `t`: a read that began at `t` and returned an older
    /// record is stale, whatever write it names (a write never acknowledged may take effect late,
    /// but never under a version below one acknowledged before it: the newest version wins).
    fn newest_acked_before(&self, t: Time) -> Option<Version> {
        self.writes.iter().filter_map(|w| w.acked.filter(|(at, _)| *at < t).map(|(_, v)| v)).max()
    }

    /// Whether `seen` precedes a write that started at `bound`.
    fn precedes(&self, seen: Seen, bound: Time) -> bool {
        match seen {
            // Absent through a delete that does not precede the bound is fine; the initial absence
            // precedes every write.
            Seen::Absent => {
                !self.writes.iter().any(|w| w.delete && !w.noop && w.acked.is_none_or(|(at, _)| at >= bound))
            }
            Seen::Write(w) => self.writes[w].acked.is_some_and(|(at, _)| at < bound),
            Seen::Unknown => false,
        }
    }
}

enum Pending {
    Write { key: u64, write: usize },
    Read { key: u64, start: Time },
    Final { key: u64 },
}

impl Pending {
    fn key(&self) -> u64 {
        match self {
            Pending::Write { key, .. } | Pending::Read { key, .. } | Pending::Final { key } => *key,
        }
    }
}

/// Client operations started and failed, by key, to be split at the end by whether the key's
/// replica set contains a liar.
#[derive(Debug, Default)]
struct Failures {
    /// Key → (operations started, operations failed).
    by_key: BTreeMap<u64, (u64, u64)>,
    failed: u64,
}

impl Failures {
    fn started(&mut self, key: u64) {
        self.by_key.entry(key).or_default().0 += 1;
    }

    fn failed(&mut self, key: u64) {
        self.failed += 1;
        self.by_key.entry(key).or_default().1 += 1;
    }

    /// (operations started, operations failed) on the keys in `keys`.
    fn on(&self, keys: &BTreeSet<u64>) -> (u64, u64) {
        keys.iter().filter_map(|key| self.by_key.get(key)).fold((0, 0), |(s, f), (ks, kf)| (s + ks, f + kf))
    }
}

/// Runs the `kv` scenario.
pub fn run(params: &KvParams) -> KvReport {
    let wall = Instant::now();
    let mut ring = Params::new(Kind::Stable, params.nodes, params.seed);
    ring.config = params.config.clone();
    ring.network = params.network.clone();
    let mut sim = Simulation::new(params.seed, params.config.clone(), params.network.clone());
    scenario::grow_ring(&mut sim, &ring);
    sim.run_until(sim.now() + Duration::from_secs(10));
    sim.enable_kv(params.kv.clone(), params.store.clone(), params.clock_skew_ms);
    let byzantine = scenario::make_liars(&mut sim, params.nodes, params.byzantine_fraction);

    let mut history: BTreeMap<u64, KeyHistory> = BTreeMap::new();
    let mut pending: BTreeMap<(usize, OpId), Pending> = BTreeMap::new();
    let mut report = KvReport { nodes: params.nodes, seed: params.seed, byzantine, ..KvReport::default() };
    let mut failures = Failures::default();
    let mut liar_keys =
        if byzantine > 0 { keys_with_liars(&sim, params.keys, params.kv.replicas) } else { BTreeSet::new() };
    let mut next_value = 0u64;

    let start = sim.now();
    let phase = Duration::from_secs_f64(params.ops as f64 / params.rate.max(0.001));
    let disrupt_at = start + phase / 3;
    let heal_at = params.partition.then(|| disrupt_at + params.partition_duration);
    let mut disrupted = false;
    let mut last_disruption: Option<Time> = None;
    let step = Duration::from_millis(10);
    let gap = Duration::from_secs_f64(1.0 / params.rate.max(0.001));
    let mut issued = 0u64;
    let mut repaired_at: Option<Time> = None;
    let mut next_check = start;
    let settle_limit = Duration::from_secs(120);
    let mut ops_done_at: Option<Time> = None;
    let mut ring_correct_since: Option<Time> = None;

    loop {
        let now = sim.now();
        if !disrupted && now >= disrupt_at {
            disrupted = true;
            if params.crash_fraction > 0.0 {
                let victims = (params.nodes as f64 * params.crash_fraction).round() as usize;
                for _ in 0..victims {
                    if let Some(victim) = sim.random_member() {
                        sim.crash(victim);
                        report.crashes += 1;
                    }
                }
                last_disruption = Some(now);
            }
            if params.partition {
                let sides = (0..sim.node_count()).map(|_| u8::from(sim.rng().random::<bool>())).collect();
                sim.partition(sides);
            }
        }
        if let Some(heal) = heal_at
            && now >= heal
            && last_disruption.is_none_or(|t| t < heal)
        {
            sim.heal();
            last_disruption = Some(now);
            repaired_at = None;
        }
        while issued < params.ops && start + gap * issued as u32 <= now {
            issued += 1;
            let Some(node) = sim.random_honest_member() else { break };
            let key = sim.rng().random_range(0..params.keys.max(1));
            failures.started(key);
            let key_bytes = key_name(key);
            let read = sim.rng().random::<f64>() < params.read_ratio;
            let entry = history.entry(key).or_default();
            let started = if read {
                sim.kv_get(node, key_bytes, params.read_consistency)
                    .map(|op| (op, Pending::Read { key, start: now }))
            } else {
                entry.last_activity = now;
                let delete = sim.rng().random::<f64>() < 0.1;
                let result = if delete {
                    sim.kv_delete(node, key_bytes, Consistency::Quorum)
                } else {
                    next_value += 1;
                    let value = format!("v{next_value}").into_bytes();
                    entry.by_value.insert(value.clone(), entry.writes.len());
                    sim.kv_put(node, key_bytes, value, Consistency::Quorum)
                };
                let write = entry.writes.len();
                entry.writes.push(WriteRecord { start: now, delete, noop: false, acked: None });
                result.map(|op| (op, Pending::Write { key, write }))
            };
            match started {
                Ok((op, what)) => {
                    pending.insert((node, op), what);
                }
                Err(_) => failures.failed(key),
            }
        }
        sim.run_until(now + step);
        collect(&mut sim, &mut pending, &mut history, &mut report, &mut failures);
        if issued >= params.ops && ops_done_at.is_none() {
            ops_done_at = Some(sim.now());
        }
        // Judge repair once a second after the last disruption (or after the last operation).
        let since = last_disruption.or(ops_done_at);
        if let Some(since) = since
            && (repaired_at.is_none() || ring_correct_since.is_none())
            && heal_at.is_none_or(|h| sim.now() >= h)
            && sim.now() >= next_check
        {
            next_check = sim.now() + Duration::from_secs(1);
            if !sim.ring_is_correct() {
                ring_correct_since = None;
            } else if ring_correct_since.is_none() {
                ring_correct_since = Some(sim.now());
            }
            if repaired_at.is_none() && all_repaired(&sim, &history, params.kv.replicas) {
                repaired_at = Some(sim.now());
                report.repair_s = Some(round3((sim.now() - since).as_secs_f64()));
            }
        }
        let ring_settled =
            ring_correct_since.is_some_and(|t| sim.now() - t >= params.config.lookup_cache_ttl);
        let settled = (repaired_at.is_some() && ring_settled)
            || ops_done_at.is_some_and(|t| sim.now() - t >= settle_limit);
        if issued >= params.ops && pending.is_empty() && settled {
            break;
        }
        if ops_done_at.is_some_and(|t| sim.now() - t >= settle_limit + params.kv.op_timeout) {
            break;
        }
    }

    // The final read of every key.
    if byzantine > 0 {
        liar_keys.extend(keys_with_liars(&sim, params.keys, params.kv.replicas));
    }
    let keys: Vec<u64> = history.keys().copied().collect();
    let mut final_seen: BTreeMap<u64, (Seen, Option<Version>)> = BTreeMap::new();
    for key in keys {
        let Some(node) = sim.random_honest_member() else { break };
        if let Ok(op) = sim.kv_get(node, key_name(key), Consistency::Quorum) {
            pending.insert((node, op), Pending::Final { key });
        }
    }
    let final_deadline = sim.now() + params.kv.op_timeout + Duration::from_secs(1);
    while !pending.is_empty() && sim.now() < final_deadline {
        sim.run_until(sim.now() + step);
        for done in sim.take_kv_results() {
            if let Some(Pending::Final { key }) = pending.remove(&(done.node, done.op)) {
                if let Ok(OpOutcome::Read(record)) = &done.result {
                    report.foreign_reads += u64::from(history[&key].is_foreign(key, record.as_ref()));
                    let version = record.as_ref().map(|r| r.version);
                    final_seen.insert(key, (history[&key].saw(record.as_ref()), version));
                } else {
                    report.final_reads_failed += 1;
                }
            }
        }
    }
    report.final_reads_failed +=
        pending.values().filter(|p| matches!(p, Pending::Final { .. })).count() as u64;

    // Judge the history.
    for (key, h) in &history {
        let liar_set = liar_keys.contains(key);
        for &(start, seen, version) in &h.reads {
            let preceding = h.must_not_precede(start).is_some_and(|bound| h.precedes(seen, bound));
            let older = version.is_some_and(|v| h.newest_acked_before(start).is_some_and(|acked| v < acked));
            if preceding || older {
                report.stale_reads += 1;
                report.stale_reads_liar_set += u64::from(liar_set);
            }
        }
        let acked = h.writes.iter().filter(|w| w.acked.is_some()).count() as u64;
        report.acked_writes_liar_set += if liar_set { acked } else { 0 };
        let Some(&(seen, final_version)) = final_seen.get(key) else {
            report.acked_writes_unjudged += acked;
            report.acked_writes_unjudged_liar_set += if liar_set { acked } else { 0 };
            continue;
        };
        let key_id = Id::hash(&key_name(*key));
        for w in &h.writes {
            let Some((_, version)) = w.acked else {
                continue;
            };
            if !h.precedes(seen, w.start) && final_version.is_none_or(|v| v >= version) {
                continue;
            }
            let held_live = sim.holders(&key_id).into_iter().any(|node| {
                sim.is_alive(node)
                    && !sim.is_byzantine(node)
                    && sim.durable_record(node, &key_id).is_some_and(|r| r.version >= version)
            });
            if held_live {
                report.acked_writes_lost += 1;
                report.acked_writes_lost_liar_set += u64::from(liar_set);
            } else {
                report.acked_writes_beyond += 1;
            }
        }
    }
    report.ops = issued;
    report.unavailable_pct = round3(100.0 * failures.failed as f64 / issued.max(1) as f64);
    let (liar_ops, liar_failed) = failures.on(&liar_keys);
    let (honest_ops, honest_failed) = (issued - liar_ops, failures.failed - liar_failed);
    report.unavailable_honest_set_pct = round3(100.0 * honest_failed as f64 / honest_ops.max(1) as f64);
    report.unavailable_liar_set_pct = round3(100.0 * liar_failed as f64 / liar_ops.max(1) as f64);
    report.liars = sim.liar_counters().clone();
    report.msgs_per_op = round3(sim.kv_messages() as f64 / issued.max(1) as f64);
    for index in 0..sim.node_count() {
        if let Some(c) = sim.kv_coordinator(index) {
            report.write_retries += c.counters().write_retries;
            report.read_repairs += c.counters().read_repairs;
            if !sim.is_byzantine(index) {
                report.rejected_invalid += c.counters().rejected_invalid;
            }
        }
    }
    report.final_members = sim.member_count();
    report.trace_hash = format!("{:016x}", sim.trace_hash());
    report.wall_s = round3(wall.elapsed().as_secs_f64());
    report
}

fn key_name(key: u64) -> Vec<u8> {
    format!("key-{key}").into_bytes()
}

/// The keys among the first `keys` with a Byzantine node among their `n` true replicas now.
fn keys_with_liars(sim: &Simulation, keys: u64, n: usize) -> BTreeSet<u64> {
    (0..keys)
        .filter(|&key| {
            let key_id = Id::hash(&key_name(key));
            sim.true_replicas(&key_id, n).into_iter().any(|node| sim.is_byzantine(node))
        })
        .collect()
}

fn collect(
    sim: &mut Simulation,
    pending: &mut BTreeMap<(usize, OpId), Pending>,
    history: &mut BTreeMap<u64, KeyHistory>,
    report: &mut KvReport,
    failures: &mut Failures,
) {
    for KvResult { node, op, at, result } in sim.take_kv_results() {
        let Some(what) = pending.remove(&(node, op)) else {
            continue;
        };
        let key = what.key();
        match (what, result) {
            (Pending::Write { key, write }, Ok(OpOutcome::Written(written)))
                if written.acked == 0 && !written.existed =>
            {
                // A delete of a key no replica held: nothing written; judged as a read of
                // "not found" that began when the delete did.
                report.reads += 1;
                report.noop_deletes += 1;
                let h = history.get_mut(&key).expect("a write's key has a history");
                h.last_activity = at;
                h.writes[write].noop = true;
                let start = h.writes[write].start;
                h.reads.push((start, Seen::Absent, None));
            }
            (Pending::Write { key, write }, Ok(OpOutcome::Written(written))) => {
                report.acked_writes += 1;
                let h = history.get_mut(&key).expect("a write's key has a history");
                h.last_activity = at;
                h.writes[write].acked = Some((at, written.version));
            }
            (Pending::Read { key, start }, Ok(OpOutcome::Read(record))) => {
                report.reads += 1;
                let h = history.get_mut(&key).expect("a read's key has a history");
                report.foreign_reads += u64::from(h.is_foreign(key, record.as_ref()));
                let seen = h.saw(record.as_ref());
                h.reads.push((start, seen, record.as_ref().map(|r| r.version)));
            }
            (Pending::Final { key }, other) => {
                // A final read answered early (cannot happen before the final phase).
                let _ = (key, other);
            }
            (_, _) => failures.failed(key),
        }
    }
}

fn all_repaired(sim: &Simulation, history: &BTreeMap<u64, KeyHistory>, n: usize) -> bool {
    let recent = sim.now().as_micros().saturating_sub(1_000_000);
    history.iter().all(|(key, h)| {
        if h.last_activity.as_micros() >= recent || h.writes.is_empty() {
            return true;
        }
        let key_id = Id::hash(&key_name(*key));
        let newest = sim
            .holders(&key_id)
            .into_iter()
            .filter(|&node| sim.is_alive(node) && !sim.is_byzantine(node))
            .filter_map(|node| sim.durable_record(node, &key_id).map(|r| r.version))
            .max();
        let Some(newest) = newest else {
            return true;
        };
        // A liar drops the writes it is sent: only the honest replicas can be repaired.
        sim.true_replicas(&key_id, n)
            .into_iter()
            .filter(|&node| !sim.is_byzantine(node))
            .all(|node| sim.durable_record(node, &key_id).is_some_and(|r| r.version == newest))
    })
}
