//! The simulator's scenarios (`stable`, `fail`, `churn`, `byzantine`) and the report they produce.
//!
//! Each scenario first grows a ring: node 0 creates it and the others join through three random
//! members at `join_rate` nodes per simulated second. It waits until the ring is correct (every
//! member's successor and predecessor are the true ones) and the fingers have settled, then runs
//! its measured phase while user lookups for uniformly random keys start at random members and
//! the invariants are checked every simulated second.
//!
//! With a Byzantine fraction F (any scenario; `byzantine` is `stable` with F = 10 % unless set), a
//! fraction F of the members, drawn by the seed and never node 0 (the bootstrap), turn Byzantine
//! when the measured phase begins (see `sim::byzantine`: they answer every lookup step claiming
//! to own the target) and user lookups start only at honest members: `correct_pct` is then the
//! share of honest nodes' lookups that end at the true owner.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::RngExt;
use serde::Serialize;

use super::{NetworkModel, Simulation};
use crate::config::Config;
use crate::id::Id;
use crate::time::Time;

/// Which scenario to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A converged ring; lookups only.
    Stable,
    /// A fraction of nodes crash at once; lookups start immediately and run through repair.
    Fail,
    /// Nodes crash and fresh ones join continuously while lookups run.
    Churn,
    /// A converged ring in which a fraction of the nodes lie in every lookup step they answer.
    Byzantine,
}

/// Everything a scenario run depends on.
#[derive(Clone, Debug)]
pub struct Params {
    /// The scenario.
    pub kind: Kind,
    /// Ring size N.
    pub nodes: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// The core's configuration for every node.
    pub config: Config,
    /// The network between nodes.
    pub network: NetworkModel,
    /// User lookups to run in the measured phase.
    pub lookups: u64,
    /// Length of the measured phase (lookups are spread over it).
    pub duration: Duration,
    /// `fail`: the fraction of nodes that crash at once.
    pub fail_fraction: f64,
    /// `churn`: the fraction of N that crashes, and is replaced by fresh nodes, per minute.
    pub churn_per_minute: f64,
    /// Fraction of the nodes that turn Byzantine when the measured phase begins.
    pub byzantine_fraction: f64,
    /// Nodes joining per simulated second while the ring grows.
    pub join_rate: f64,
    /// Longest the ring may take to grow and converge before the run gives up.
    pub converge_limit: Duration,
    /// Print a progress line to stderr every simulated 10 s while the ring grows.
    pub progress: bool,
}

impl Params {
    /// Defaults for `kind` with `nodes` nodes: 10,000 lookups; a measured phase of 30 s (`stable`),
    /// 60 s (`fail`) or 10 min (`churn`); 20 % failing; 10 % churn per minute; joins at N/20 per
    /// second (at least 20).
    pub fn new(kind: Kind, nodes: usize, seed: u64) -> Self {
        Params {
            kind,
            nodes,
            seed,
            config: Config::default().with_check_ownership_claims(kind == Kind::Byzantine),
            network: NetworkModel::default(),
            lookups: 10_000,
            duration: match kind {
                Kind::Stable | Kind::Byzantine => Duration::from_secs(30),
                Kind::Fail => Duration::from_secs(60),
                Kind::Churn => Duration::from_secs(600),
            },
            fail_fraction: 0.2,
            churn_per_minute: 0.1,
            byzantine_fraction: if kind == Kind::Byzantine { 0.1 } else { 0.0 },
            join_rate: (nodes as f64 / 20.0).max(20.0),
            converge_limit: Duration::from_secs(3600),
            progress: false,
        }
    }
}

/// What a run measured. Everything but `wall_s` is a function of the parameters alone.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The scenario.
    pub scenario: Kind,
    /// Ring size N.
    pub nodes: usize,
    /// The seed.
    pub seed: u64,
    /// Successor-list length r.
    pub successors: usize,
    /// Byzantine nodes in the measured phase (user lookups start only at the others).
    pub byzantine: usize,
    /// Ownership claims in lookup replies that honest nodes refused over the whole run (user and
    /// maintenance lookups; [`crate::Counters::lookup_claims_refuted`]).
    pub claims_refuted: u64,
    /// User lookups started.
    pub lookups: u64,
    /// Percentage answered with the true successor (crate docs: "What counts as a correct answer").
    pub correct_pct: f64,
    /// Percentage answered with some other node.
    pub wrong_pct: f64,
    /// Percentage that ended with an error or never ended.
    pub failed_pct: f64,
    /// Mean hops of answered lookups.
    pub mean_hops: f64,
    /// 99th percentile of hops.
    pub p99_hops: u32,
    /// Most hops.
    pub max_hops: u32,
    /// Per-hop time-outs met by user lookups.
    pub timeouts: u64,
    /// Mean lookup latency in simulated milliseconds.
    pub mean_latency_ms: f64,
    /// 99th percentile lookup latency in simulated milliseconds.
    pub p99_latency_ms: f64,
    /// Simulated seconds from the first join until the ring was correct; `null` if it never was.
    pub converge_sim_s: Option<f64>,
    /// Simulated seconds after convergence until fingers were ≥ 99 % right (or the 120 s cap).
    pub fingers_settle_sim_s: f64,
    /// Finger accuracy when the measured phase began.
    pub finger_accuracy: f64,
    /// `fail`: simulated seconds from the crash until the ring was correct again.
    pub repair_sim_s: Option<f64>,
    /// Messages sent per live node per simulated second in the measured phase.
    pub messages_per_node_per_s: f64,
    /// The same, by message kind (`get_neighbours`, `neighbours`, `ping`, `ack`, …).
    pub messages_by_kind: BTreeMap<&'static str, f64>,
    /// Invariant checks made in the measured phase (one per simulated second).
    pub invariant_checks: u64,
    /// Checks in which some invariant did not hold.
    pub invariant_violations: u64,
    /// Nodes crashed in the measured phase.
    pub crashes: u64,
    /// Fresh nodes that joined in the measured phase.
    pub joins: u64,
    /// Members when the run ended.
    pub final_members: usize,
    /// Fingerprint of the whole run: equal for equal parameters.
    pub trace_hash: String,
    /// Wall-clock seconds the run took (the one field that varies between equal runs).
    pub wall_s: f64,
}

const SECOND: Duration = Duration::from_secs(1);

/// How finely the `fail` scenario times the repair of the ring.
const REPAIR_STEP: Duration = Duration::from_millis(100);

/// Runs a scenario to completion.
pub fn run(params: &Params) -> Report {
    let wall = Instant::now();
    let mut sim = Simulation::new(params.seed, params.config.clone(), params.network.clone());

    let converged_at = grow_ring(&mut sim, params);
    let settle_start = sim.now();
    // Let fingers settle: check every 2 s until ≥ 99 % are right, at most 120 s.
    let mut accuracy = sim.finger_accuracy();
    while accuracy < 0.99 && sim.now() - settle_start < Duration::from_secs(120) {
        sim.run_until(sim.now() + 2 * SECOND);
        accuracy = sim.finger_accuracy();
    }
    let fingers_settle_sim_s = (sim.now() - settle_start).as_secs_f64();

    let byzantine = make_liars(&mut sim, params.nodes, params.byzantine_fraction);

    // Measured phase.
    let phase_start = sim.now();
    let messages_before = sim.messages;
    let by_kind_before = sim.messages_by_kind.clone();
    let mut live_node_seconds = 0.0;
    let (mut checks, mut violations, mut crashes, mut joins) = (0u64, 0u64, 0u64, 0u64);
    let mut repair_sim_s = None;

    let lookup_gap = params.duration.as_secs_f64() / params.lookups.max(1) as f64;
    for k in 0..params.lookups {
        let at = phase_start + Duration::from_secs_f64(k as f64 * lookup_gap);
        let key = random_id(&mut sim);
        sim.schedule_lookup(at, key);
    }

    if params.kind == Kind::Fail {
        let victims = (params.nodes as f64 * params.fail_fraction).round() as usize;
        for _ in 0..victims {
            if let Some(victim) = sim.random_member() {
                sim.crash(victim);
                crashes += 1;
            }
        }
    }
    let churn_events = match params.kind {
        Kind::Churn => (params.nodes as f64 * params.churn_per_minute * params.duration.as_secs_f64() / 60.0)
            .round() as u64,
        _ => 0,
    };
    let churn_gap =
        if churn_events > 0 { params.duration.as_secs_f64() / churn_events as f64 } else { f64::INFINITY };
    let mut next_churn = 0u64;

    let end = phase_start + params.duration;
    while sim.now() < end {
        let second_start = sim.now();
        let second_end = (second_start + SECOND).min(end);
        // Churn events due within this second: each crashes one member and adds one fresh node.
        while next_churn < churn_events {
            let at = phase_start + Duration::from_secs_f64(next_churn as f64 * churn_gap);
            if at >= second_end {
                break;
            }
            sim.run_until(at);
            if let Some(victim) = sim.random_member() {
                sim.crash(victim);
                crashes += 1;
            }
            let fresh = sim.add_node();
            let bootstraps = pick_bootstraps(&mut sim);
            sim.join(fresh, &bootstraps);
            joins += 1;
            next_churn += 1;
        }
        if params.kind == Kind::Fail && repair_sim_s.is_none() {
            // Until the ring is repaired, look every 100 ms, so that repair times are told apart
            // more finely than by whole seconds. Reading the state changes nothing in the run.
            while repair_sim_s.is_none() && sim.now() < second_end {
                sim.run_until((sim.now() + REPAIR_STEP).min(second_end));
                if sim.ring_is_correct() {
                    repair_sim_s = Some((sim.now() - phase_start).as_secs_f64());
                }
            }
        }
        sim.run_until(second_end);
        live_node_seconds += sim.alive_count() as f64 * (second_end - second_start).as_secs_f64();
        checks += 1;
        if !sim.check_invariants().holds() {
            violations += 1;
        }
        if params.kind == Kind::Fail && repair_sim_s.is_none() && sim.ring_is_correct() {
            repair_sim_s = Some((sim.now() - phase_start).as_secs_f64());
        }
    }
    let measured_messages = sim.messages - messages_before;
    let measured_by_kind: BTreeMap<&'static str, u64> = sim
        .messages_by_kind
        .iter()
        .map(|(&kind, &n)| (kind, n - by_kind_before.get(kind).copied().unwrap_or(0)))
        .filter(|&(_, n)| n > 0)
        .collect();
    // Let lookups still in flight finish (each is bounded by the lookup timeout).
    let drain_end = sim.now() + params.config.lookup_timeout + SECOND;
    while sim.lookups_in_flight() > 0 && sim.now() < drain_end {
        sim.run_until(sim.now() + SECOND);
    }
    sim.abandon_lookups();

    let tally = &sim.tally;
    let started = tally.started.max(1) as f64;
    let mut hops = tally.hops.clone();
    hops.sort_unstable();
    let mut latencies = tally.latencies_us.clone();
    latencies.sort_unstable();
    let mean = |v: &[u64]| if v.is_empty() { 0.0 } else { v.iter().sum::<u64>() as f64 / v.len() as f64 };
    let hops_u64: Vec<u64> = hops.iter().map(|&h| u64::from(h)).collect();
    Report {
        scenario: params.kind,
        nodes: params.nodes,
        seed: params.seed,
        successors: params.config.successors.get(),
        byzantine,
        claims_refuted: (0..sim.node_count())
            .filter(|&i| !sim.is_byzantine(i))
            .map(|i| sim.node(i).counters().lookup_claims_refuted)
            .sum(),
        lookups: tally.started,
        correct_pct: round3(100.0 * tally.correct as f64 / started),
        wrong_pct: round3(100.0 * tally.wrong as f64 / started),
        failed_pct: round3(100.0 * tally.failed as f64 / started),
        mean_hops: round3(mean(&hops_u64)),
        p99_hops: percentile(&hops, 0.99),
        max_hops: hops.last().copied().unwrap_or(0),
        timeouts: tally.timeouts,
        mean_latency_ms: round3(mean(&latencies) / 1000.0),
        p99_latency_ms: round3(percentile(&latencies, 0.99) as f64 / 1000.0),
        converge_sim_s: converged_at.map(|t| round3(t.since_epoch().as_secs_f64())),
        fingers_settle_sim_s: round3(fingers_settle_sim_s),
        finger_accuracy: round3(accuracy),
        repair_sim_s: repair_sim_s.map(round3),
        messages_per_node_per_s: round3(measured_messages as f64 / live_node_seconds.max(1.0)),
        messages_by_kind: measured_by_kind
            .into_iter()
            .map(|(kind, n)| (kind, round3(n as f64 / live_node_seconds.max(1.0))))
            .collect(),
        invariant_checks: checks,
        invariant_violations: violations,
        crashes,
        joins,
        final_members: sim.member_count(),
        trace_hash: format!("{:016x}", sim.trace_hash()),
        wall_s: round3(wall.elapsed().as_secs_f64()),
    }
}

/// Grows the ring to `params.nodes` members; returns when it was first correct, if it was.
pub(crate) fn grow_ring(sim: &mut Simulation, params: &Params) -> Option<Time> {
    let first = sim.add_node();
    sim.create_ring(first);
    let gap = Duration::from_secs_f64(1.0 / params.join_rate);
    let mut next_report = Time::ZERO;
    for k in 1..params.nodes {
        sim.run_until(Time::ZERO + gap * k as u32);
        let fresh = sim.add_node();
        let bootstraps = pick_bootstraps(sim);
        sim.join(fresh, &bootstraps);
        if params.progress && sim.now() >= next_report {
            next_report = sim.now() + 5 * SECOND;
            eprintln!(
                "dht-sim: t={:?} joined={k} members={} messages={}",
                sim.now(),
                sim.member_count(),
                sim.messages
            );
        }
    }
    let limit = Time::ZERO + params.converge_limit;
    loop {
        if sim.member_count() == params.nodes && sim.ring_is_correct() {
            return Some(sim.now());
        }
        if sim.now() >= limit {
            return None;
        }
        if params.progress && sim.now() >= next_report {
            next_report = sim.now() + 10 * SECOND;
            eprintln!(
                "dht-sim: t={:?} members={} successors right={} messages={}",
                sim.now(),
                sim.member_count(),
                sim.correct_successor_count(),
                sim.messages
            );
        }
        sim.run_until(sim.now() + Duration::from_millis(250));
    }
}

/// Turns a fraction `fraction` of `nodes` Byzantine, members drawn by the seed and never node 0;
/// returns how many. Draws nothing when the fraction is zero.
pub(crate) fn make_liars(sim: &mut Simulation, nodes: usize, fraction: f64) -> usize {
    let wanted = (nodes as f64 * fraction).round() as usize;
    let wanted = wanted.min(sim.member_count().saturating_sub(1));
    let mut made = 0;
    while made < wanted {
        let Some(m) = sim.random_member() else {
            break;
        };
        if m != 0 && !sim.is_byzantine(m) {
            sim.make_byzantine(m);
            made += 1;
        }
    }
    made
}

/// Three members to join through (fewer while the ring is smaller).
pub(crate) fn pick_bootstraps(sim: &mut Simulation) -> Vec<usize> {
    let mut picked = Vec::with_capacity(3);
    for _ in 0..6 {
        if picked.len() == 3 {
            break;
        }
        if let Some(m) = sim.random_member()
            && !picked.contains(&m)
        {
            picked.push(m);
        }
    }
    picked
}

fn random_id(sim: &mut Simulation) -> Id {
    let mut bytes = [0u8; 20];
    sim.rng().fill(&mut bytes);
    Id::from_bytes(bytes)
}

fn percentile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
