//! The `multicast` scenario: Scribe-style trees over a simulated ring, with optional forwarder
//! crashes mid-stream, and the report it produces.
//!
//! The run grows and converges a ring exactly like the lookup scenarios, gives every node a
//! multicast core, makes `members` random nodes join each of `groups` groups, waits until every
//! member is attached to its tree and measures the trees, then publishes `messages` broadcasts in
//! total at a steady rate from random members of random groups. Halfway through it optionally
//! crashes a fraction of the *forwarders* (tree nodes that are neither a root nor a member of any
//! group). It then runs until every surviving member has every message (bounded by `drain_limit`).
//!
//! Delivery is checked against the ground truth the roots define: messages are numbered without
//! holes from 1, so a member of a group whose highest number is h must deliver exactly 1..=h, in
//! increasing order, once each.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::RngExt;
use serde::Serialize;

use super::Simulation;
use super::scenario::{self, Kind, Params, round3};
use crate::multicast::{GroupEvent, GroupName, MulticastConfig, Role};
use crate::time::Time;

/// Everything a multicast run depends on.
#[derive(Clone, Debug)]
pub struct MulticastParams {
    /// The ring: size, seed, core config, network, join rate (its lookup fields are unused).
    pub ring: Params,
    /// The multicast configuration of every node.
    pub multicast: MulticastConfig,
    /// Number of groups.
    pub groups: usize,
    /// Members per group (distinct random nodes).
    pub members: usize,
    /// Broadcasts in total, spread over the groups.
    pub messages: u64,
    /// Fraction of the forwarders that crash halfway through the broadcasts.
    pub fail_fraction: f64,
    /// How long the broadcasts are spread over.
    pub publish_duration: Duration,
    /// Longest the run goes on after the last broadcast waiting for every member to catch up.
    pub drain_limit: Duration,
    /// Body size of each broadcast, in bytes.
    pub body_bytes: usize,
}

impl MulticastParams {
    /// Defaults: 10 groups of 50 members, 1,000 broadcasts at 20 per simulated second, no crashes,
    /// 120 s to catch up, 64-byte bodies.
    pub fn new(nodes: usize, seed: u64) -> Self {
        MulticastParams {
            ring: Params::new(Kind::Stable, nodes, seed),
            multicast: MulticastConfig::default(),
            groups: 10,
            members: 50,
            messages: 1_000,
            fail_fraction: 0.0,
            publish_duration: Duration::from_secs(50),
            drain_limit: Duration::from_secs(120),
            body_bytes: 64,
        }
    }
}

/// What a multicast run measured. Everything but `wall_s` is a function of the parameters alone.
#[derive(Clone, Debug, Serialize)]
pub struct MulticastReport {
    /// Always "multicast".
    pub scenario: &'static str,
    /// Ring size N.
    pub nodes: usize,
    /// The seed.
    pub seed: u64,
    /// Groups.
    pub groups: usize,
    /// Members per group (fewer if the ring is smaller).
    pub members: usize,
    /// Broadcasts attempted.
    pub messages: u64,
    /// Broadcasts the root acknowledged to the publisher.
    pub published: u64,
    /// Broadcasts that failed (no acknowledgement in time).
    pub publish_failed: u64,
    /// Deliveries expected at members alive at the end: Σ over groups of members × highest number.
    pub expected: u64,
    /// Distinct deliveries of those.
    pub delivered: u64,
    /// 100 × delivered / expected.
    pub delivered_pct: f64,
    /// Deliveries of a number a member had already delivered.
    pub duplicates: u64,
    /// Deliveries of a number lower than one the member delivered before.
    pub order_violations: u64,
    /// Numbers a member skipped without a gap event (must be 0).
    pub silent_skips: u64,
    /// Gap events (history no longer held the missing range).
    pub gaps: u64,
    /// Members' mean depth below the root along parent pointers, once the trees were built.
    pub mean_tree_depth: f64,
    /// Members' greatest depth.
    pub max_tree_depth: u32,
    /// Most children of any tree node in any group, once the trees were built.
    pub max_children: usize,
    /// Most children of any tree node at the end of the run.
    pub max_children_end: usize,
    /// Simulated seconds until every member was attached to its tree.
    pub trees_built_s: Option<f64>,
    /// Multicast messages of all kinds (control included) sent from the first broadcast to the
    /// end of the run, per broadcast.
    pub messages_per_broadcast: f64,
    /// Data messages (stamped messages sent down trees) per broadcast.
    pub data_messages_per_broadcast: f64,
    /// Forwarders crashed.
    pub crashes: u64,
    /// Simulated seconds from the crash until every surviving member had, for good, delivered every
    /// message acknowledged to its publisher at least 1 s earlier; `null` without a crash.
    pub repair_s: Option<f64>,
    /// Simulated seconds from the last broadcast until every member had every message; `null` if
    /// that did not happen within the drain limit.
    pub drain_s: Option<f64>,
    /// Re-joins after a parent failed, summed over nodes.
    pub parent_failures: u64,
    /// Joins redirected by the bottleneck remover.
    pub redirects: u64,
    /// Root roles taken over (from a backup or a hand-off).
    pub takeovers: u64,
    /// Messages dropped as invalid or unexpected, summed over nodes.
    pub dropped: u64,
    /// Fingerprint of the whole run.
    pub trace_hash: String,
    /// Wall-clock seconds the run took.
    pub wall_s: f64,
}

const TICK: Duration = Duration::from_millis(100);

#[derive(Default)]
struct MemberTally {
    delivered: BTreeSet<u64>,
    last: u64,
    /// Contiguous prefix delivered or reported lost.
    prefix: u64,
    lost: BTreeSet<u64>,
}

impl MemberTally {
    fn advance(&mut self) {
        while self.delivered.contains(&(self.prefix + 1)) || self.lost.contains(&(self.prefix + 1)) {
            self.prefix += 1;
        }
    }
}

#[derive(Default)]
struct Tally {
    members: BTreeMap<(usize, usize), MemberTally>,
    /// Per group: (time, seq) of each acknowledgement.
    acked: Vec<Vec<(Time, u64)>>,
    head: Vec<u64>,
    published: u64,
    failed: u64,
    duplicates: u64,
    order_violations: u64,
    silent_skips: u64,
    gaps: u64,
}

impl Tally {
    fn absorb(&mut self, sim: &mut Simulation, group_index: &BTreeMap<GroupName, usize>) {
        for record in sim.take_group_events() {
            match record.event {
                GroupEvent::Delivered { group, seq, .. } => {
                    let Some(&g) = group_index.get(&group) else { continue };
                    self.head[g] = self.head[g].max(seq);
                    let Some(t) = self.members.get_mut(&(record.node, g)) else { continue };
                    if !t.delivered.insert(seq) {
                        self.duplicates += 1;
                        continue;
                    }
                    if seq < t.last {
                        self.order_violations += 1;
                    } else if seq > t.last + 1 && !(t.last + 1..seq).all(|s| t.lost.contains(&s)) {
                        self.silent_skips += 1;
                    }
                    t.last = t.last.max(seq);
                    t.advance();
                }
                GroupEvent::Gap { group, from, to } => {
                    let Some(&g) = group_index.get(&group) else { continue };
                    self.gaps += 1;
                    if let Some(t) = self.members.get_mut(&(record.node, g)) {
                        t.lost.extend(from..=to);
                        t.last = t.last.max(to);
                        t.advance();
                    }
                }
                GroupEvent::Published { group, seq, .. } => {
                    let Some(&g) = group_index.get(&group) else { continue };
                    self.published += 1;
                    self.head[g] = self.head[g].max(seq);
                    self.acked[g].push((record.at, seq));
                }
                GroupEvent::PublishFailed { .. } => self.failed += 1,
                GroupEvent::History { .. } | GroupEvent::HistoryFailed { .. } => {}
            }
        }
    }

    /// Whether every live member has a prefix of at least `need(group)`.
    fn caught_up(&self, sim: &Simulation, need: impl Fn(usize) -> u64) -> bool {
        self.members.iter().all(|(&(node, g), t)| !sim.is_alive(node) || t.prefix >= need(g))
    }

    fn acked_by(&self, g: usize, at: Time) -> u64 {
        self.acked[g].iter().filter(|(t, _)| *t <= at).map(|(_, s)| *s).max().unwrap_or(0)
    }
}

/// Runs the multicast scenario to completion.
pub fn run(params: &MulticastParams) -> MulticastReport {
    let wall = Instant::now();
    let ring = &params.ring;
    let mut sim = Simulation::new(ring.seed, ring.config.clone(), ring.network.clone());
    scenario::grow_ring(&mut sim, ring);
    let settle_start = sim.now();
    while sim.finger_accuracy() < 0.99 && sim.now() - settle_start < Duration::from_secs(120) {
        sim.run_until(sim.now() + Duration::from_secs(2));
    }
    sim.enable_multicast(params.multicast.clone());

    // Members: distinct random ring members per group.
    let names: Vec<GroupName> =
        (0..params.groups).map(|k| GroupName::new(format!("group-{k}")).expect("short, printable")).collect();
    let group_index: BTreeMap<GroupName, usize> =
        names.iter().cloned().enumerate().map(|(k, n)| (n, k)).collect();
    let per_group = params.members.min(sim.member_count());
    let mut members: Vec<Vec<usize>> = Vec::new();
    for _ in &names {
        let mut chosen = BTreeSet::new();
        let mut picked = Vec::new();
        while picked.len() < per_group {
            let m = sim.random_member().expect("the ring has members");
            if chosen.insert(m) {
                picked.push(m);
            }
        }
        members.push(picked);
    }
    let mut tally =
        Tally { acked: vec![Vec::new(); names.len()], head: vec![0; names.len()], ..Tally::default() };
    let joins_start = sim.now();
    for (g, name) in names.iter().enumerate() {
        for &m in &members[g] {
            tally.members.insert((m, g), MemberTally::default());
            let _ = sim.join_group(m, name);
        }
    }
    // Trees are built when every member is attached (root, or a parent with a known depth) and
    // knows where its numbering starts.
    let attached = |sim: &Simulation| {
        names.iter().enumerate().all(|(g, name)| {
            members[g].iter().all(|&m| {
                sim.multicast(m).expect("enabled").groups().iter().any(|s| {
                    &s.name == name && s.next_seq.is_some() && (s.role == Role::Root || s.depth.is_some())
                })
            })
        })
    };
    let mut trees_built_s = None;
    while sim.now() - joins_start < Duration::from_secs(60) {
        sim.run_until(sim.now() + Duration::from_millis(500));
        if attached(&sim) {
            trees_built_s = Some(round3((sim.now() - joins_start).as_secs_f64()));
            break;
        }
    }
    sim.run_until(sim.now() + Duration::from_secs(2));
    let (mean_tree_depth, max_tree_depth) = tree_depths(&sim, &names, &members);
    let max_children = max_children(&sim);
    tally.absorb(&mut sim, &group_index);

    // Broadcasts at a steady rate; crash halfway.
    let publish_start = sim.now();
    let (messages_before, data_before) = (sim.group_messages, sim.group_data_messages);
    let gap = params.publish_duration.as_secs_f64() / params.messages.max(1) as f64;
    let mut crash_at = None;
    let mut crashes = 0u64;
    let mut last_violation: Option<Time> = None;
    let mut next_check = publish_start;
    for k in 0..params.messages {
        let at = publish_start + Duration::from_secs_f64(k as f64 * gap);
        while next_check < at {
            sim.run_until(next_check);
            tally.absorb(&mut sim, &group_index);
            check_repair(&sim, &tally, crash_at, &mut last_violation);
            next_check = next_check + TICK;
        }
        sim.run_until(at);
        if k == params.messages / 2 && params.fail_fraction > 0.0 {
            crashes = crash_forwarders(&mut sim, params.fail_fraction);
            crash_at = Some(sim.now());
        }
        let g = sim.rng().random_range(0..names.len());
        let alive: Vec<usize> = members[g].iter().copied().filter(|&m| sim.is_alive(m)).collect();
        if alive.is_empty() {
            continue;
        }
        let publisher = alive[sim.rng().random_range(0..alive.len())];
        let mut body = format!("g{g}-m{k}-").into_bytes();
        body.resize(params.body_bytes.max(body.len()), b'.');
        let _ = sim.publish(publisher, &names[g], body);
    }
    let last_publish = sim.now();
    let mut drain_s = None;
    let drain_end = last_publish + params.drain_limit;
    while sim.now() < drain_end {
        sim.run_until(sim.now() + TICK);
        tally.absorb(&mut sim, &group_index);
        check_repair(&sim, &tally, crash_at, &mut last_violation);
        // Done when every publish is settled and every live member has everything.
        let settled = tally.published + tally.failed >= params.messages;
        if settled && tally.caught_up(&sim, |g| tally.head[g]) {
            drain_s = Some(round3((sim.now() - last_publish).as_secs_f64()));
            break;
        }
    }
    let group_messages = sim.group_messages - messages_before;
    let data_messages = sim.group_data_messages - data_before;

    let (mut expected, mut delivered) = (0u64, 0u64);
    for (&(node, g), t) in &tally.members {
        if !sim.is_alive(node) {
            continue;
        }
        expected += tally.head[g];
        delivered += t.delivered.range(1..=tally.head[g]).count() as u64;
    }
    let (mut parent_failures, mut redirects, mut takeovers, mut dropped) = (0, 0, 0, 0);
    for i in 0..sim.node_count() {
        if let Some(mc) = sim.multicast(i) {
            let c = mc.counters();
            parent_failures += c.parent_failures;
            redirects += c.redirects;
            takeovers += c.takeovers;
            dropped += c.dropped_invalid + c.dropped_unauthorized + c.dropped_out_of_window;
        }
    }
    let broadcasts = params.messages.max(1) as f64;
    MulticastReport {
        scenario: "multicast",
        nodes: ring.nodes,
        seed: ring.seed,
        groups: params.groups,
        members: per_group,
        messages: params.messages,
        published: tally.published,
        publish_failed: tally.failed,
        expected,
        delivered,
        delivered_pct: if expected == 0 { 100.0 } else { round3(100.0 * delivered as f64 / expected as f64) },
        duplicates: tally.duplicates,
        order_violations: tally.order_violations,
        silent_skips: tally.silent_skips,
        gaps: tally.gaps,
        mean_tree_depth: round3(mean_tree_depth),
        max_tree_depth,
        max_children,
        max_children_end: max_children_now(&sim),
        trees_built_s,
        messages_per_broadcast: round3(group_messages as f64 / broadcasts),
        data_messages_per_broadcast: round3(data_messages as f64 / broadcasts),
        crashes,
        repair_s: crash_at.map(|c| round3(last_violation.map_or(0.0, |t| (t + TICK - c).as_secs_f64()))),
        drain_s,
        parent_failures,
        redirects,
        takeovers,
        dropped,
        trace_hash: format!("{:016x}", sim.trace_hash()),
        wall_s: round3(wall.elapsed().as_secs_f64()),
    }
}

/// After a crash, remembers the last check at which some surviving member lacked a message that
/// had been acknowledged to its publisher at least 1 s before.
fn check_repair(sim: &Simulation, tally: &Tally, crash_at: Option<Time>, last_violation: &mut Option<Time>) {
    let Some(crash) = crash_at else { return };
    let now = sim.now();
    if now < crash {
        return;
    }
    let Some(horizon) = now.as_micros().checked_sub(1_000_000) else { return };
    let horizon = Time::ZERO + Duration::from_micros(horizon);
    if !tally.caught_up(sim, |g| tally.acked_by(g, horizon)) {
        *last_violation = Some(now);
    }
}

/// Crashes `fraction` of the nodes that forward for some group while being neither a root nor a
/// member of any; returns how many crashed.
fn crash_forwarders(sim: &mut Simulation, fraction: f64) -> u64 {
    let mut forwarders: Vec<usize> = (0..sim.node_count())
        .filter(|&i| sim.is_alive(i))
        .filter(|&i| {
            let groups = sim.multicast(i).expect("enabled").groups();
            !groups.is_empty() && groups.iter().all(|s| s.role == Role::Forwarder)
        })
        .collect();
    let victims = ((forwarders.len() as f64) * fraction).round() as usize;
    for k in 0..victims {
        let pick = sim.rng().random_range(k..forwarders.len());
        forwarders.swap(k, pick);
        sim.crash(forwarders[k]);
    }
    victims as u64
}

/// Members' depth below their root along parent pointers: (mean, max).
fn tree_depths(sim: &Simulation, names: &[GroupName], members: &[Vec<usize>]) -> (f64, u32) {
    let (mut sum, mut count, mut max) = (0u64, 0u64, 0u32);
    for (g, name) in names.iter().enumerate() {
        for &m in &members[g] {
            let mut at = m;
            let mut depth = 0u32;
            loop {
                let summary =
                    sim.multicast(at).and_then(|mc| mc.groups().into_iter().find(|s| &s.name == name));
                match summary.and_then(|s| if s.role == Role::Root { None } else { s.parent }) {
                    Some(parent) if depth < 1000 => {
                        at = parent.addr.index();
                        depth += 1;
                    }
                    _ => break,
                }
            }
            sum += u64::from(depth);
            count += 1;
            max = max.max(depth);
        }
    }
    (if count == 0 { 0.0 } else { sum as f64 / count as f64 }, max)
}

fn max_children(sim: &Simulation) -> usize {
    max_children_now(sim)
}

fn max_children_now(sim: &Simulation) -> usize {
    (0..sim.node_count())
        .filter(|&i| sim.is_alive(i))
        .filter_map(|i| sim.multicast(i))
        .flat_map(|mc| mc.groups().into_iter().map(|s| s.children.len()))
        .max()
        .unwrap_or(0)
}
