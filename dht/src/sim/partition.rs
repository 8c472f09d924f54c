//! The `partition` scenario: a converged ring is cut into `parts` parts, each closes into a ring of
//! its own, then the network heals and the rings must merge back into one.
//!
//! # The run
//! 1. A ring of `nodes` grows and converges and its fingers settle, as in the lookup scenarios.
//! 2. Every node is drawn into one of `parts` parts, uniformly at random; messages between parts
//!    are lost for `split` (with `parts = 1` nothing is cut: the run measures what probing costs a
//!    ring that never split).
//! 3. The network heals. For the `window` that follows, the ring is checked every simulated
//!    second; `merge_s` is the time from the heal until the ring is first correct (every member's
//!    successor and predecessor are the true ones). With `churn_per_s`, members crash and fresh
//!    nodes join from the split until the middle of the window (`crashes`, `joins`).
//! 4. Then `lookups` user lookups for random keys start at random members, spread over
//!    `lookup_duration`, and are judged as in the stable scenario.
//!
//! # What is reported
//! - `rings_at_heal`: rings among members when the network healed (Zave's "at most one ring" is
//!   broken when this is above 1);
//! - `rings_after_heal`, `ring_correct`, `successor_lists_correct`: the state at the end of the
//!   window;
//! - `merge_s`; `messages_per_node_per_s` from the heal until the merge (or the window's end);
//!   `idle_messages_per_node_per_s` from the merge (or heal) to the window's end, in a ring
//!   that is correct again;
//! - the probe and merge counters summed over all nodes, and lookup correctness afterwards;
//! - with `groups > 0`, multicast groups across the split: each group has members on every side;
//!   from 10 s into the split until its middle, one member on each side publishes to each group
//!   every second. After the window: `group_published` (acknowledged, per part), how many reached
//!   every live member (`group_delivered_everywhere`), gaps reported, duplicate deliveries, the
//!   numbers (epoch, seq) that named two different messages across members (`group_seq_reused`,
//!   must be 0), and the groups that do not have exactly one root.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::RngExt;
use serde::Serialize;

use super::scenario::{self, Kind, Params, round3};
use super::{GroupRecord, Simulation};
use crate::id::Id;
use crate::multicast::{GroupEvent, GroupName, MulticastConfig, PublishId, Role};

/// Everything a `partition` run depends on.
#[derive(Clone, Debug)]
pub struct PartitionParams {
    /// Ring size, seed, core configuration and network (the `kind` is ignored).
    pub ring: Params,
    /// Parts the network is cut into (1 = no cut).
    pub parts: u8,
    /// How long the network stays cut.
    pub split: Duration,
    /// How long after the heal the ring is watched before lookups start.
    pub window: Duration,
    /// User lookups after the window.
    pub lookups: u64,
    /// Time the lookups are spread over.
    pub lookup_duration: Duration,
    /// Churn: this many times per simulated second, from the split until the middle of the window,
    /// a random member crashes and a fresh node joins (0: none); while the network is cut, fresh
    /// nodes are in part 0 and join through its members. The window's second half is quiet, so
    /// that the ring's state at its end says whether the merge finished.
    pub churn_per_s: f64,
    /// Multicast groups across the split (0: multicast off, the run is as before).
    pub groups: usize,
}

impl PartitionParams {
    /// Defaults: 2 parts, a 60 s split, a 120 s window, then 5,000 lookups over 20 s.
    pub fn new(nodes: usize, seed: u64) -> Self {
        PartitionParams {
            ring: Params::new(Kind::Stable, nodes, seed),
            parts: 2,
            split: Duration::from_secs(60),
            window: Duration::from_secs(120),
            lookups: 5_000,
            lookup_duration: Duration::from_secs(20),
            churn_per_s: 0.0,
            groups: 0,
        }
    }
}

/// What a `partition` run measured. Everything but `wall_s` is a function of the parameters.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionReport {
    /// Always "partition".
    pub scenario: &'static str,
    /// Ring size N.
    pub nodes: usize,
    /// The seed.
    pub seed: u64,
    /// Parts the network was cut into.
    pub parts: u8,
    /// Simulated seconds the network stayed cut.
    pub split_s: f64,
    /// Simulated seconds from the first join until the ring was first correct.
    pub converge_sim_s: Option<f64>,
    /// Rings among members just before the heal.
    pub rings_at_heal: usize,
    /// Rings among members at the end of the window.
    pub rings_after_heal: usize,
    /// Simulated seconds from the heal until the ring was correct; `null` if not within the window.
    pub merge_s: Option<f64>,
    /// Whether the ring was correct at the end of the window.
    pub ring_correct: bool,
    /// Whether every member's whole successor list was right at the end of the window.
    pub successor_lists_correct: bool,
    /// Messages per node per simulated second from the heal until the merge (or the window's end).
    pub messages_per_node_per_s: f64,
    /// Messages per node per simulated second from the merge (or the heal, when nothing split)
    /// until the window's end.
    pub idle_messages_per_node_per_s: f64,
    /// Probes of passive-list peers sent during the whole run, all nodes.
    pub probes_sent: u64,
    /// Probes sent from the heal to the window's end, all nodes: with `parts = 1`, what probing
    /// costs a ring that did not split.
    pub probes_in_window: u64,
    /// Probes answered by a member.
    pub probes_answered: u64,
    /// Detections of another ring.
    pub merges_detected: u64,
    /// Merge requests sent.
    pub merge_requests_sent: u64,
    /// Merge requests received but ignored over the per-node rate limit.
    pub merge_requests_limited: u64,
    /// Members crashed by the churn.
    pub crashes: u64,
    /// Fresh nodes started by the churn.
    pub joins: u64,
    /// User lookups started after the window.
    pub lookups: u64,
    /// Percentage answered with the true successor.
    pub correct_pct: f64,
    /// Percentage answered with another node.
    pub wrong_pct: f64,
    /// Percentage that failed.
    pub failed_pct: f64,
    /// Mean hops of answered lookups.
    pub mean_hops: f64,
    /// Invariant checks during the lookups (one per simulated second).
    pub invariant_checks: u64,
    /// Checks in which some invariant did not hold.
    pub invariant_violations: u64,
    /// Members at the end.
    pub final_members: usize,
    /// Groups across the split (0: none).
    pub groups: usize,
    /// Publishes acknowledged to their publisher during the split, per part.
    pub group_published: Vec<u64>,
    /// Of those, how many every live member of the group delivered by the window's end.
    pub group_delivered_everywhere: u64,
    /// Gap events reported by members, and the numbers they covered.
    pub group_gaps: u64,
    /// Numbers reported lost in gap events.
    pub group_gap_messages: u64,
    /// (message, live member) pairs where the member never delivered an acknowledged message.
    pub group_missing_deliveries: u64,
    /// (group, live member) pairs that miss some acknowledged message yet reported no gap at
    /// all: a silent loss (0 unless something is wrong).
    pub group_members_missing_silently: u64,
    /// Deliveries of a message a member had delivered already.
    pub group_duplicate_deliveries: u64,
    /// Numbers (epoch, seq) that named two different messages across members: must be 0.
    pub group_seq_reused: u64,
    /// Groups without exactly one root at the window's end.
    pub groups_without_one_root: usize,
    /// Messages of the other side that roots numbered anew after meeting (all nodes).
    pub group_renumbered: u64,
    /// Fingerprint of the whole run.
    pub trace_hash: String,
    /// Wall-clock seconds the run took.
    pub wall_s: f64,
}

const SECOND: Duration = Duration::from_secs(1);

/// The churn of a run (see [`PartitionParams::churn_per_s`]): its schedule and its tally.
struct Churn {
    gap: Option<Duration>,
    next: crate::time::Time,
    /// No churn at or after this.
    end: crate::time::Time,
    /// The parts while the network is cut: a fresh node is in part 0 (it has no entry), so it
    /// joins through members of part 0.
    sides: Option<Vec<u8>>,
    crashes: u64,
    joins: u64,
}

impl Churn {
    fn new(params: &PartitionParams, now: crate::time::Time) -> Self {
        let gap = (params.churn_per_s > 0.0).then(|| Duration::from_secs_f64(1.0 / params.churn_per_s));
        Churn {
            gap,
            next: now + gap.unwrap_or_default(),
            end: crate::time::Time::from_elapsed(Duration::MAX),
            sides: None,
            crashes: 0,
            joins: 0,
        }
    }

    /// Runs the churn events due before `until`: each crashes a random member and has a fresh node
    /// join.
    fn run_until(&mut self, sim: &mut Simulation, until: crate::time::Time) {
        let Some(gap) = self.gap else {
            return;
        };
        while self.next < until && self.next < self.end {
            sim.run_until(self.next);
            if let Some(victim) = sim.random_member() {
                sim.crash(victim);
                self.crashes += 1;
            }
            let fresh = sim.add_node();
            let bootstraps = self.bootstraps(sim);
            sim.join(fresh, &bootstraps);
            self.joins += 1;
            self.next = self.next + gap;
        }
    }

    /// Up to three members a fresh node can reach.
    fn bootstraps(&self, sim: &mut Simulation) -> Vec<usize> {
        let Some(sides) = &self.sides else {
            return scenario::pick_bootstraps(sim);
        };
        let mut picked = Vec::with_capacity(3);
        for _ in 0..24 {
            if picked.len() == 3 {
                break;
            }
            if let Some(m) = sim.random_member()
                && sides.get(m).copied().unwrap_or(0) == 0
                && !picked.contains(&m)
            {
                picked.push(m);
            }
        }
        picked
    }
}

/// Runs the scenario.
pub fn run(params: &PartitionParams) -> PartitionReport {
    let wall = Instant::now();
    let ring = &params.ring;
    let mut sim = Simulation::new(ring.seed, ring.config.clone(), ring.network.clone());
    let converged_at = scenario::grow_ring(&mut sim, ring);
    let settle_start = sim.now();
    while sim.finger_accuracy() < 0.99 && sim.now() - settle_start < Duration::from_secs(120) {
        sim.run_until(sim.now() + 2 * SECOND);
    }

    let parts = params.parts.max(1);
    let mut groups = Groups::start(&mut sim, params.groups);
    let mut churn = Churn::new(params, sim.now());
    let split_start = sim.now();
    let split_end = sim.now() + params.split;
    let mut sides: Vec<u8> = vec![0; sim.node_count()];
    if parts > 1 {
        sides = (0..sim.node_count()).map(|_| sim.rng().random_range(0..parts)).collect();
        churn.sides = Some(sides.clone());
        sim.partition(sides.clone());
    }
    while sim.now() < split_end {
        let until = (sim.now() + SECOND).min(split_end);
        churn.run_until(&mut sim, until);
        sim.run_until(until);
        let into = sim.now() - split_start;
        if into >= 10 * SECOND && into <= params.split / 2 {
            groups.publish_round(&mut sim, &sides, parts);
        }
    }
    let rings_at_heal = sim.check_invariants().rings;
    sim.heal();
    churn.sides = None;

    let heal_at = sim.now();
    let messages_at_heal = sim.messages;
    let probes_at_heal = probes(&sim);
    let mut merged: Option<(crate::time::Time, u64)> = None;
    let window_end = heal_at + params.window;
    churn.end = heal_at + params.window / 2;
    while sim.now() < window_end {
        let second_end = sim.now() + SECOND;
        churn.run_until(&mut sim, second_end);
        sim.run_until(second_end);
        if merged.is_none() && sim.ring_is_correct() {
            merged = Some((sim.now(), sim.messages));
        }
    }
    let group_report = groups.finish(&mut sim, parts);
    let members = sim.member_count().max(1) as f64;
    let (merge_end, messages_at_merge) = merged.unwrap_or((sim.now(), sim.messages));
    let merge_span = (merge_end - heal_at).as_secs_f64();
    let merge_rate = if merge_span > 0.0 {
        (messages_at_merge - messages_at_heal) as f64 / members / merge_span
    } else {
        0.0
    };
    let idle_span = (sim.now() - merge_end).as_secs_f64();
    let idle_rate =
        if idle_span > 0.0 { (sim.messages - messages_at_merge) as f64 / members / idle_span } else { 0.0 };
    let probes_in_window = probes(&sim) - probes_at_heal;
    let invariants = sim.check_invariants();
    let ring_correct = sim.ring_is_correct();
    let successor_lists_correct = sim.successor_lists_are_correct();

    // Lookups in the merged ring.
    let start = sim.now();
    let gap = params.lookup_duration.as_secs_f64() / params.lookups.max(1) as f64;
    for k in 0..params.lookups {
        let mut bytes = [0u8; 20];
        sim.rng().fill(&mut bytes);
        sim.schedule_lookup(start + Duration::from_secs_f64(k as f64 * gap), Id::from_bytes(bytes));
    }
    let (mut checks, mut violations) = (0u64, 0u64);
    let end = start + params.lookup_duration;
    while sim.now() < end {
        sim.run_until((sim.now() + SECOND).min(end));
        checks += 1;
        if !sim.check_invariants().holds() {
            violations += 1;
        }
    }
    let drain_end = sim.now() + ring.config.lookup_timeout + SECOND;
    while sim.lookups_in_flight() > 0 && sim.now() < drain_end {
        sim.run_until(sim.now() + SECOND);
    }
    sim.abandon_lookups();

    let (mut probes_sent, mut probes_answered, mut merges_detected, mut merge_requests_sent) = (0, 0, 0, 0);
    let mut merge_requests_limited = 0;
    for index in 0..sim.node_count() {
        let c = sim.node(index).counters();
        probes_sent += c.probes_sent;
        probes_answered += c.probes_answered;
        merges_detected += c.merges_detected;
        merge_requests_sent += c.merge_requests_sent;
        merge_requests_limited += c.merge_requests_limited;
    }
    let tally = &sim.tally;
    let started = tally.started.max(1) as f64;
    let hops = &tally.hops;
    let mean_hops = if hops.is_empty() {
        0.0
    } else {
        hops.iter().map(|&h| f64::from(h)).sum::<f64>() / hops.len() as f64
    };
    PartitionReport {
        scenario: "partition",
        nodes: ring.nodes,
        seed: ring.seed,
        parts,
        split_s: round3(params.split.as_secs_f64()),
        converge_sim_s: converged_at.map(|t| round3(t.since_epoch().as_secs_f64())),
        rings_at_heal,
        rings_after_heal: invariants.rings,
        merge_s: merged.map(|(t, _)| round3((t - heal_at).as_secs_f64())),
        ring_correct,
        successor_lists_correct,
        messages_per_node_per_s: round3(merge_rate),
        idle_messages_per_node_per_s: round3(idle_rate),
        probes_sent,
        probes_in_window,
        probes_answered,
        merges_detected,
        merge_requests_sent,
        merge_requests_limited,
        crashes: churn.crashes,
        joins: churn.joins,
        lookups: tally.started,
        correct_pct: round3(100.0 * tally.correct as f64 / started),
        wrong_pct: round3(100.0 * tally.wrong as f64 / started),
        failed_pct: round3(100.0 * tally.failed as f64 / started),
        mean_hops: round3(mean_hops),
        invariant_checks: checks,
        invariant_violations: violations,
        final_members: sim.member_count(),
        groups: params.groups,
        group_published: group_report.published,
        group_delivered_everywhere: group_report.delivered_everywhere,
        group_gaps: group_report.gaps,
        group_gap_messages: group_report.gap_messages,
        group_missing_deliveries: group_report.missing,
        group_members_missing_silently: group_report.missing_silently,
        group_duplicate_deliveries: group_report.duplicates,
        group_seq_reused: group_report.seq_reused,
        groups_without_one_root: group_report.without_one_root,
        group_renumbered: group_report.renumbered,
        trace_hash: format!("{:016x}", sim.trace_hash()),
        wall_s: round3(wall.elapsed().as_secs_f64()),
    }
}

fn probes(sim: &Simulation) -> u64 {
    (0..sim.node_count()).map(|i| sim.node(i).counters().probes_sent).sum()
}

/// Members per group in a `partition` run with groups.
const GROUP_MEMBERS: usize = 12;

/// The groups of a `partition` run: names, members, and every publish and event seen.
struct Groups {
    names: Vec<GroupName>,
    members: Vec<Vec<usize>>,
    /// (publisher, publish id) → (group, part, body).
    publishes: BTreeMap<(usize, PublishId), (usize, u8, Vec<u8>)>,
    events: Vec<GroupRecord>,
    sent: u64,
}

/// What [`Groups::finish`] measured.
struct GroupReport {
    published: Vec<u64>,
    delivered_everywhere: u64,
    gaps: u64,
    gap_messages: u64,
    missing: u64,
    missing_silently: u64,
    duplicates: u64,
    seq_reused: u64,
    without_one_root: usize,
    renumbered: u64,
}

impl Groups {
    /// Turns multicast on and has `count` groups of [`GROUP_MEMBERS`] random members each joined
    /// and attached (none when `count` is 0: the run stays as it was).
    fn start(sim: &mut Simulation, count: usize) -> Self {
        let mut groups = Groups {
            names: Vec::new(),
            members: Vec::new(),
            publishes: BTreeMap::new(),
            events: Vec::new(),
            sent: 0,
        };
        if count == 0 {
            return groups;
        }
        sim.enable_multicast(MulticastConfig::default());
        for k in 0..count {
            let name = GroupName::new(format!("split-{k}")).expect("a valid name");
            let mut members = Vec::new();
            for _ in 0..GROUP_MEMBERS * 4 {
                if members.len() == GROUP_MEMBERS {
                    break;
                }
                if let Some(m) = sim.random_member()
                    && !members.contains(&m)
                    && sim.join_group(m, &name).is_ok()
                {
                    members.push(m);
                }
            }
            groups.names.push(name);
            groups.members.push(members);
        }
        sim.run_until(sim.now() + 10 * SECOND);
        groups.events.extend(sim.take_group_events());
        groups
    }

    /// One member on each part publishes to each group.
    fn publish_round(&mut self, sim: &mut Simulation, sides: &[u8], parts: u8) {
        for (g, name) in self.names.iter().enumerate() {
            for part in 0..parts {
                let on_part: Vec<usize> = self.members[g]
                    .iter()
                    .copied()
                    .filter(|&m| sim.is_member(m) && sides.get(m).copied().unwrap_or(0) == part)
                    .collect();
                if on_part.is_empty() {
                    continue;
                }
                let publisher = on_part[self.sent as usize % on_part.len()];
                let body = format!("{name}/{part}/{}", self.sent).into_bytes();
                self.sent += 1;
                if let Ok(id) = sim.publish(publisher, name, body.clone()) {
                    self.publishes.insert((publisher, id), (g, part, body));
                }
            }
        }
        self.events.extend(sim.take_group_events());
    }

    /// Judges what every member delivered (see the module docs).
    fn finish(&mut self, sim: &mut Simulation, parts: u8) -> GroupReport {
        self.events.extend(sim.take_group_events());
        let mut report = GroupReport {
            published: vec![0; usize::from(parts)],
            delivered_everywhere: 0,
            gaps: 0,
            gap_messages: 0,
            missing: 0,
            missing_silently: 0,
            duplicates: 0,
            seq_reused: 0,
            without_one_root: 0,
            renumbered: 0,
        };
        if self.names.is_empty() {
            return report;
        }
        let index: BTreeMap<&GroupName, usize> = self.names.iter().enumerate().map(|(g, n)| (n, g)).collect();
        let mut acked: Vec<(usize, Vec<u8>)> = Vec::new();
        let mut delivered: BTreeMap<(usize, usize), BTreeMap<Vec<u8>, u32>> = BTreeMap::new();
        let mut named: BTreeMap<(usize, u64, u64), BTreeSet<Vec<u8>>> = BTreeMap::new();
        let mut gapped: BTreeSet<(usize, usize)> = BTreeSet::new();
        for record in &self.events {
            match &record.event {
                GroupEvent::Published { id, .. } => {
                    if let Some((g, part, body)) = self.publishes.get(&(record.node, *id)) {
                        report.published[usize::from(*part)] += 1;
                        acked.push((*g, body.clone()));
                    }
                }
                GroupEvent::Delivered { group, epoch, seq, body, .. } => {
                    let Some(&g) = index.get(group) else { continue };
                    *delivered.entry((g, record.node)).or_default().entry(body.clone()).or_default() += 1;
                    named.entry((g, *epoch, *seq)).or_default().insert(body.clone());
                }
                GroupEvent::Gap { group, from, to } => {
                    if let Some(&g) = index.get(group) {
                        gapped.insert((g, record.node));
                    }
                    report.gaps += 1;
                    report.gap_messages += to - from + 1;
                }
                _ => {}
            }
        }
        report.duplicates =
            delivered.values().flat_map(|d| d.values()).map(|&c| u64::from(c.saturating_sub(1))).sum();
        report.seq_reused = named.values().filter(|bodies| bodies.len() > 1).count() as u64;
        let mut silent: BTreeSet<(usize, usize)> = BTreeSet::new();
        for (g, body) in &acked {
            let missing: Vec<usize> = self.members[*g]
                .iter()
                .copied()
                .filter(|&m| sim.is_member(m))
                .filter(|&m| !delivered.get(&(*g, m)).is_some_and(|d| d.contains_key(body)))
                .collect();
            if missing.is_empty() {
                report.delivered_everywhere += 1;
            }
            report.missing += missing.len() as u64;
            silent.extend(missing.into_iter().map(|m| (*g, m)).filter(|key| !gapped.contains(key)));
        }
        report.missing_silently = silent.len() as u64;
        for name in &self.names {
            let roots = (0..sim.node_count())
                .filter(|&i| sim.is_alive(i))
                .filter_map(|i| sim.multicast(i))
                .filter(|mc| mc.groups().iter().any(|s| &s.name == name && s.role == Role::Root))
                .count();
            if roots != 1 {
                report.without_one_root += 1;
            }
        }
        report.renumbered = (0..sim.node_count())
            .filter_map(|i| sim.multicast(i))
            .map(|mc| mc.counters().split_messages_renumbered)
            .sum();
        report
    }
}
