//! The `counter` scenario: clients increment one shared counter with compare-and-set, through
//! random nodes, while replicas of the counter crash, links lose messages and clocks drift; the
//! final count must be exact.
//!
//! # The run
//! 1. A ring of `nodes` grows and converges; every node gets a store coordinator.
//! 2. `clients` clients each apply `increments` increments. A client holds the state it last saw
//!    and asks a random member for `compare_and_set(expect = that version, new = state + 1)`.
//!    The state is `count;s0,s1,…` where `si` is the last increment client `i` applied: the tag
//!    that makes an increment idempotent, as an application must when a write's outcome can be
//!    unknown.
//!    - written: the increment is done;
//!    - conflict: the conflict names the current state; try again from it;
//!    - unknown outcome, no quorum, contention: a linearizable read tells the state (and whether
//!      the increment is in it: `si` reached it), then go on from it. A failed read is retried
//!      after `backoff`.
//! 3. Once half of all increments are done, `crash_replicas` of the counter's replicas crash (for
//!    good).
//! 4. When every client is done (or `max_sim_s` passed) a linearizable read takes the final state.
//!
//! # What is counted
//! `confirmed`: increments the clients know took effect (acknowledged, or found in the state after
//! an unknown outcome). `lost`: confirmed increments missing from the final count (one overwritten
//! by a write that did not see it). `duplicated`: in a finished run, increments counted beyond
//! `clients × increments` (one applied twice). `consistent`: the count equals the sum of the
//! clients' tags (an overwrite that skipped a tag breaks it). A run that did not finish in time
//! (`finished: false`) is slow, not wrong, as long as nothing is lost.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::kv_store::{KvResult, StoreModel};
use super::scenario::{self, Kind, Params, round3};
use super::{NetworkModel, Simulation};
use crate::config::Config;
use crate::id::Id;
use crate::kv::{Expect, KvConfig, KvError, OpId, OpOutcome};
use crate::store::Record;
use crate::time::Time;

/// The counter's key.
pub const COUNTER_KEY: &[u8] = b"counter";

/// Everything a `counter` run depends on.
#[derive(Clone, Debug)]
pub struct CounterParams {
    /// Ring size N.
    pub nodes: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Increments each client applies.
    pub increments: u32,
    /// Replicas of the counter that crash halfway.
    pub crash_replicas: usize,
    /// Each node's wall clock is offset by up to ± this many milliseconds.
    pub clock_skew_ms: u64,
    /// Pause before a client retries after a failure.
    pub backoff: Duration,
    /// Simulated time allowed.
    pub max_sim: Duration,
    /// The ring core's configuration.
    pub config: Config,
    /// The coordinator's configuration.
    pub kv: KvConfig,
    /// The network.
    pub network: NetworkModel,
    /// The disks.
    pub store: StoreModel,
}

impl CounterParams {
    /// Defaults: 8 clients × 100 increments, no crash, no skew, 50 ms back-off, 600 s allowed.
    pub fn new(nodes: usize, seed: u64) -> Self {
        CounterParams {
            nodes,
            seed,
            clients: 8,
            increments: 100,
            crash_replicas: 0,
            clock_skew_ms: 0,
            backoff: Duration::from_millis(50),
            max_sim: Duration::from_secs(600),
            config: Config::default(),
            kv: KvConfig::default(),
            network: NetworkModel::default(),
            store: StoreModel::default(),
        }
    }
}

/// What a `counter` run measured. Everything but `wall_s` is a function of the parameters alone.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CounterReport {
    /// Ring size N.
    pub nodes: usize,
    /// The seed.
    pub seed: u64,
    /// `clients × increments`.
    pub expected: u64,
    /// Increments the clients know took effect.
    pub confirmed: u64,
    /// The count the final linearizable read returned (`null`: that read failed).
    pub final_count: Option<u64>,
    /// Confirmed increments missing from the final count.
    pub lost: u64,
    /// In a finished run, increments counted beyond the expected total.
    pub duplicated: u64,
    /// Whether the final count equals the sum of the clients' tags.
    pub consistent: bool,
    /// Whether every client finished in time.
    pub finished: bool,
    /// Compare-and-sets acknowledged.
    pub written: u64,
    /// Compare-and-sets that met another state.
    pub conflicts: u64,
    /// Compare-and-sets whose outcome was unknown.
    pub unknown: u64,
    /// Other failed operations (no quorum, contention, no route).
    pub failures: u64,
    /// Attempts restarted under a higher ballot, summed over nodes.
    pub cas_retries: u64,
    /// Counter replicas crashed.
    pub crashed: usize,
    /// Storage-protocol messages per increment.
    pub msgs_per_increment: f64,
    /// Simulated seconds the increments took.
    pub sim_s: f64,
    /// Fingerprint of the whole run.
    pub trace_hash: String,
    /// Wall-clock seconds the run took.
    pub wall_s: f64,
}

/// A counter state: the count and each client's last applied increment.
#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    count: u64,
    applied: Vec<u32>,
}

impl State {
    fn initial(clients: usize) -> Self {
        State { count: 0, applied: vec![0; clients] }
    }

    fn parse(record: Option<&Record>, clients: usize) -> Option<State> {
        let Some(record) = record.filter(|r| !r.tombstone) else {
            return Some(State::initial(clients));
        };
        let text = std::str::from_utf8(&record.value).ok()?;
        let (count, tags) = text.split_once(';')?;
        let applied: Vec<u32> = tags.split(',').map(|t| t.parse().ok()).collect::<Option<_>>()?;
        (applied.len() == clients).then_some(State { count: count.parse().ok()?, applied })
    }

    fn encode(&self) -> Vec<u8> {
        let tags: Vec<String> = self.applied.iter().map(u32::to_string).collect();
        format!("{};{}", self.count, tags.join(",")).into_bytes()
    }
}

#[derive(Debug)]
struct Client {
    /// The increment being applied (1-based); past `increments` when done.
    next: u32,
    /// The state last seen, with its record (`None`: the key holds nothing).
    seen: Option<Record>,
    /// When to start the next operation, if none is in flight.
    wake: Option<Time>,
    /// The state must be read (linearizably) before the next write.
    must_read: bool,
}

enum Op {
    Swap { client: usize },
    Read { client: usize },
    Final,
}

/// Runs the `counter` scenario.
pub fn run(params: &CounterParams) -> CounterReport {
    let wall = Instant::now();
    let mut ring = Params::new(Kind::Stable, params.nodes, params.seed);
    ring.config = params.config.clone();
    ring.network = params.network.clone();
    let mut sim = Simulation::new(params.seed, params.config.clone(), params.network.clone());
    scenario::grow_ring(&mut sim, &ring);
    sim.run_until(sim.now() + Duration::from_secs(10));
    sim.enable_kv(params.kv.clone(), params.store.clone(), params.clock_skew_ms);
    sim.run_until(sim.now() + Duration::from_secs(1));

    let expected = params.clients as u64 * u64::from(params.increments);
    let mut report = CounterReport { nodes: params.nodes, seed: params.seed, expected, ..Default::default() };
    let start = sim.now();
    let messages_before = sim.kv_messages();
    let mut clients: Vec<Client> = (0..params.clients)
        .map(|_| Client { next: 1, seen: None, wake: Some(start), must_read: false })
        .collect();
    let mut pending: BTreeMap<(usize, OpId), Op> = BTreeMap::new();
    let mut done = 0u64;
    let mut crashed = false;
    let step = Duration::from_millis(5);
    let deadline = start + params.max_sim;

    while sim.now() < deadline && clients.iter().any(|c| c.next <= params.increments) {
        let now = sim.now();
        for (index, client) in clients.iter_mut().enumerate() {
            if client.next > params.increments || client.wake.is_none_or(|at| at > now) {
                continue;
            }
            client.wake = None;
            let Some(node) = sim.random_member() else { continue };
            let state = State::parse(client.seen.as_ref(), params.clients).filter(|_| !client.must_read);
            let Some(state) = state else {
                // Unknown, or not a counter state: read it.
                let id = sim.kv_get_linearizable(node, COUNTER_KEY.to_vec());
                track(&mut pending, node, id, Op::Read { client: index }, client, now + params.backoff);
                continue;
            };
            let mut new = state.clone();
            new.count += 1;
            new.applied[index] = client.next;
            let expect = client.seen.as_ref().map_or(Expect::Absent, |r| Expect::Version(r.version));
            let id = sim.kv_cas(node, COUNTER_KEY.to_vec(), expect, Some(new.encode()));
            track(&mut pending, node, id, Op::Swap { client: index }, client, now + params.backoff);
        }
        sim.run_until(now + step);
        for KvResult { node, op, at, result } in sim.take_kv_results() {
            let Some(what) = pending.remove(&(node, op)) else { continue };
            let (Op::Swap { client: index } | Op::Read { client: index }) = what else { continue };
            let client = &mut clients[index];
            match (what, result) {
                (Op::Swap { .. }, Ok(OpOutcome::Written(written))) => {
                    report.written += 1;
                    let state = State::parse(client.seen.as_ref(), params.clients).expect("parsed before");
                    let mut new = state;
                    new.count += 1;
                    new.applied[index] = client.next;
                    client.seen = Some(Record::new(COUNTER_KEY.to_vec(), new.encode(), written.version));
                    client.next += 1;
                    done += 1;
                    client.wake = Some(at);
                }
                (Op::Swap { .. }, Err(KvError::Conflict { current })) => {
                    report.conflicts += 1;
                    client.seen = current.map(|r| *r);
                    settle(client, index, params.clients, &mut done);
                    client.wake = Some(at);
                }
                (Op::Read { .. }, Ok(OpOutcome::Read(record))) => {
                    client.seen = record;
                    client.must_read = false;
                    settle(client, index, params.clients, &mut done);
                    client.wake = Some(at);
                }
                (what, Err(error)) => {
                    match error {
                        KvError::OutcomeUnknown => report.unknown += 1,
                        _ => report.failures += 1,
                    }
                    // Find out where things stand before trying again.
                    let Some(node) = sim.random_member() else { continue };
                    let _ = what;
                    let id = sim.kv_get_linearizable(node, COUNTER_KEY.to_vec());
                    let wake = at + params.backoff;
                    track(&mut pending, node, id, Op::Read { client: index }, client, wake);
                }
                (_, Ok(_)) => client.wake = Some(at),
            }
        }
        if !crashed && params.crash_replicas > 0 && done * 2 >= expected {
            crashed = true;
            let replicas = sim.true_replicas(&Id::hash(COUNTER_KEY), params.crash_replicas);
            for index in replicas {
                sim.crash(index);
                report.crashed += 1;
                // A client whose operation ran at the crashed node never hears back: like a
                // client whose connection dropped, it treats the outcome as unknown.
                let lost: Vec<(usize, OpId)> =
                    pending.keys().filter(|(node, _)| *node == index).copied().collect();
                for key in lost {
                    if let Some(Op::Swap { client } | Op::Read { client }) = pending.remove(&key) {
                        report.unknown += 1;
                        clients[client].wake = Some(sim.now());
                        clients[client].must_read = true;
                    }
                }
            }
        }
    }
    report.finished = clients.iter().all(|c| c.next > params.increments);
    report.confirmed = clients.iter().map(|c| u64::from(c.next - 1)).sum();
    report.sim_s = round3(sim.now().saturating_since(start).as_secs_f64());
    let increments = done.max(1) as f64;
    report.msgs_per_increment = round3((sim.kv_messages() - messages_before) as f64 / increments);

    // The final state, read linearizably (retried a few times).
    for _ in 0..20 {
        let Some(node) = sim.random_member() else { break };
        let Ok(id) = sim.kv_get_linearizable(node, COUNTER_KEY.to_vec()) else { break };
        pending.insert((node, id), Op::Final);
        let until = sim.now() + Duration::from_secs(10);
        let mut answer = None;
        while sim.now() < until && answer.is_none() {
            sim.run_until(sim.now() + step);
            for KvResult { node, op, result, .. } in sim.take_kv_results() {
                if let Some(Op::Final) = pending.remove(&(node, op)) {
                    answer = Some(result);
                }
            }
        }
        if let Some(Ok(OpOutcome::Read(record))) = answer {
            if let Some(state) = State::parse(record.as_ref(), params.clients) {
                report.final_count = Some(state.count);
                report.lost = report.confirmed.saturating_sub(state.count);
                if report.finished {
                    report.duplicated = state.count.saturating_sub(expected);
                }
                report.consistent = state.applied.iter().map(|&a| u64::from(a)).sum::<u64>() == state.count;
            }
            break;
        }
    }
    report.cas_retries =
        (0..sim.node_count()).filter_map(|i| sim.kv_coordinator(i)).map(|c| c.counters().cas_retries).sum();
    report.trace_hash = format!("{:016x}", sim.trace_hash());
    report.wall_s = round3(wall.elapsed().as_secs_f64());
    report
}

/// Records an operation in flight for `client`, or schedules a retry if it could not start.
fn track<E>(
    pending: &mut BTreeMap<(usize, OpId), Op>,
    node: usize,
    started: Result<OpId, E>,
    op: Op,
    client: &mut Client,
    retry_at: Time,
) {
    match started {
        Ok(id) => {
            pending.insert((node, id), op);
        }
        Err(_) => client.wake = Some(retry_at),
    }
}

/// After learning the state: if it already holds the client's increment, that increment is done.
fn settle(client: &mut Client, index: usize, clients: usize, done: &mut u64) {
    if let Some(state) = State::parse(client.seen.as_ref(), clients)
        && state.applied[index] >= client.next
    {
        client.next = state.applied[index] + 1;
        *done += 1;
    }
}
