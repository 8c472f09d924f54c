//! The `supernodes` scenario: ring nodes, supernodes among them, leaves attached to those, and a
//! crash of a fraction of the supernodes at once — the Skype outage of December 2010 in small.
//!
//! # What is real and what is modelled
//! Every ring member runs a real [`Directory`], every supernode a real [`Host`], every leaf a real
//! [`Leaf`]; they exchange the real [`SuperMessage`]s over the simulated network (seeded latency
//! and loss, [`NetworkModel`]), each message delivered after its own sampled delay. What is
//! modelled is the ring itself: instead of running the Chord core of 1,000 members (which the
//! other scenarios measure), a supernode's lookup of a directory shard's holder
//! ([`Host::poll_lookup`]) is answered with the true successor of the shard key among the live
//! members, after the time an iterative lookup takes (⌈log₂ N / 2⌉ round trips, each sampled
//! from the network model), and a directory holder decides which shards it holds from the same
//! global view. Operations the leaves forward are executed by a model ring service that answers
//! after two sampled round trips and remembers which (leaf, op id) pairs it ran, so a resend
//! after a switch is counted as a duplicate instead of being run twice.
//!
//! # The run
//! Supernodes start and advertise at once; leaves arrive uniformly over `arrival`, each given two
//! random supernodes as its configured addresses; every leaf forwards one operation every
//! `op_interval`. At `crash_at`, `crash_fraction` of the supernodes crash at once, silently (no
//! connection reset reaches the leaves: they notice by their heartbeats alone). The run goes on
//! for `window` after the crash. Measured: for each *orphaned* leaf (attached to a crashed
//! supernode at the crash), the time until it attached again; the most leaves any surviving
//! supernode ever held, against its cap; and what it cost.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::agenda::Agenda;
use super::{NetworkModel, SimAddr};
use crate::address::Address;
use crate::id::Id;
use crate::supernode::wire::{DIRECTORY_SHARDS, LeafOpId, shard_key};
use crate::supernode::{Directory, Host, HostConfig, HostEvent, Leaf, LeafConfig, LeafEvent, SuperMessage};
use crate::time::Time;

/// Everything a `supernodes` run depends on.
#[derive(Clone, Debug)]
pub struct SupernodeParams {
    /// Ring members (supernodes included).
    pub nodes: usize,
    /// Ring members that are also supernodes.
    pub supernodes: usize,
    /// Leaves.
    pub leaves: usize,
    /// Fraction of the supernodes that crash at once.
    pub crash_fraction: f64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Supernode settings (`max_leaves` among them).
    pub host: HostConfig,
    /// Leaf settings.
    pub leaf: LeafConfig,
    /// The network.
    pub network: NetworkModel,
    /// Leaves arrive uniformly over this long. Default 20 s.
    pub arrival: Duration,
    /// When the supernodes crash. Default 60 s.
    pub crash_at: Duration,
    /// How long the run goes on after the crash. Default 60 s.
    pub window: Duration,
    /// Each leaf forwards one operation this often. Default 10 s.
    pub op_interval: Duration,
}

impl SupernodeParams {
    /// The defaults: 20 s of arrivals, the crash at 60 s, 60 s after it, one operation per leaf
    /// every 10 s, the default network (no loss) and the cores' default settings.
    pub fn new(nodes: usize, supernodes: usize, leaves: usize, crash_fraction: f64, seed: u64) -> Self {
        SupernodeParams {
            nodes,
            supernodes,
            leaves,
            crash_fraction,
            seed,
            host: HostConfig::default(),
            leaf: LeafConfig::default(),
            network: NetworkModel::default(),
            arrival: Duration::from_secs(20),
            crash_at: Duration::from_secs(60),
            window: Duration::from_secs(60),
            op_interval: Duration::from_secs(10),
        }
    }
}

/// What a `supernodes` run measured. Everything but `wall_s` is a function of the parameters.
#[derive(Clone, Debug, Serialize)]
pub struct SupernodeReport {
    /// Always `"supernodes"`.
    pub scenario: &'static str,
    /// Ring members.
    pub nodes: usize,
    /// Supernodes.
    pub supernodes: usize,
    /// Leaves.
    pub leaves: usize,
    /// The seed.
    pub seed: u64,
    /// Each supernode's cap.
    pub max_leaves: u32,
    /// Network loss.
    pub loss: f64,
    /// Supernodes crashed.
    pub crashed: usize,
    /// Leaves attached just before the crash.
    pub attached_before_crash: usize,
    /// Leaves attached to a crashed supernode at the crash.
    pub orphaned: usize,
    /// Orphaned leaves attached again by the end.
    pub reattached: usize,
    /// Percentage of orphaned leaves attached again within 10 s of the crash.
    pub reattached_within_10s_pct: f64,
    /// Median time from the crash to re-attachment, seconds.
    pub reattach_median_s: f64,
    /// 99th percentile, seconds.
    pub reattach_p99_s: f64,
    /// Longest, seconds.
    pub reattach_max_s: f64,
    /// The most leaves any surviving supernode ever held.
    pub peak_leaves_on_survivor: u32,
    /// Mean leaves per survivor at the end.
    pub mean_leaves_on_survivor: f64,
    /// Survivors that ever held more than their cap (must be 0).
    pub survivors_over_cap: usize,
    /// Leaves not attached when the run ended.
    pub unattached_at_end: usize,
    /// Refusals (full or busy) the leaves received.
    pub refusals: u64,
    /// Backoffs the leaves went through.
    pub backoffs: u64,
    /// Attaches that went unanswered (mostly to crashed supernodes).
    pub attach_timeouts: u64,
    /// Supernode losses the leaves noticed.
    pub failovers: u64,
    /// Messages dropped as malformed or unexpected, all roles.
    pub dropped: u64,
    /// Operations the leaves forwarded.
    pub ops: u64,
    /// Operations answered.
    pub ops_done: u64,
    /// Operations that ran out of time.
    pub ops_timed_out: u64,
    /// Operations the leaves resent after a switch.
    pub ops_resent: u64,
    /// Resent operations the ring service had run already (dropped as duplicates).
    pub ops_duplicates: u64,
    /// Supernode messages per leaf per simulated second.
    pub messages_per_leaf_per_s: f64,
    /// Fingerprint of the whole run.
    pub trace_hash: String,
    /// Wall-clock seconds the run took.
    pub wall_s: f64,
}

#[derive(Debug)]
enum What {
    Deliver { to: u32, from: SimAddr, message: SuperMessage<SimAddr> },
    Wake { actor: u32 },
    Owner { actor: u32, key: Id },
    RingReply { actor: u32, leaf: SimAddr, op: LeafOpId, payload: Vec<u8> },
    StartLeaf { actor: u32 },
    LeafOp { actor: u32 },
}

#[derive(Debug)]
enum Role {
    Ring { directory: Box<Directory<SimAddr>>, host: Option<Box<Host<SimAddr>>> },
    Leaf(Option<Box<Leaf<SimAddr>>>),
}

#[derive(Debug)]
struct Actor {
    role: Role,
    alive: bool,
    wake_at: Option<Time>,
}

struct World {
    now: Time,
    agenda: Agenda<What>,
    rng: ChaCha8Rng,
    salt: u64,
    network: NetworkModel,
    actors: Vec<Actor>,
    /// Live ring members by ring id: the global view the modelled lookups answer from.
    ring: BTreeMap<Id, u32>,
    lookup_round_trips: u32,
    /// (leaf, op) pairs the model ring service ran.
    executed: BTreeSet<(u32, LeafOpId)>,
    duplicates: u64,
    /// Operations forwarded, answered and timed out, over all leaves.
    ops: u64,
    ops_done: u64,
    ops_timed_out: u64,
    messages: u64,
    /// Each leaf's supernode, as the leaf sees it.
    attached: Vec<Option<u32>>,
    /// Orphaned leaves and when (if) they attached again.
    orphans: BTreeMap<u32, Option<Time>>,
    crash_time: Option<Time>,
    trace: u64,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World").field("now", &self.now).field("actors", &self.actors.len()).finish()
    }
}

impl World {
    fn addr(&self, index: u32) -> SimAddr {
        SimAddr(self.salt | u64::from(index))
    }

    fn push(&mut self, at: Time, what: What) {
        self.agenda.push(at, what);
    }

    fn record(&mut self, values: &[u64]) {
        for v in values {
            for byte in v.to_le_bytes() {
                self.trace ^= u64::from(byte);
                self.trace = self.trace.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }

    fn owner_of(&self, key: &Id) -> Option<u32> {
        self.ring.range(key..).next().or_else(|| self.ring.iter().next()).map(|(_, &i)| i)
    }

    fn lookup_delay(&mut self) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..2 * self.lookup_round_trips {
            // A lost hop costs a retry; the model charges it as one more maximum delay.
            total += self.network.sample(&mut self.rng).unwrap_or(self.network.max_latency);
        }
        total
    }

    fn run_until(&mut self, until: Time, op_interval: Duration) {
        while let Some((at, what)) = self.agenda.pop_due(until) {
            self.now = at;
            match what {
                What::Deliver { to, from, message } => self.deliver(to, from, message),
                What::Wake { actor } => self.wake(actor, at),
                What::Owner { actor, key } => {
                    let owner = self.owner_of(&key).map(|i| self.addr(i));
                    if let Some(host) = self.host_mut(actor) {
                        host.handle_owner(key, owner, at);
                        self.flush(actor);
                    }
                }
                What::RingReply { actor, leaf, op, payload } => {
                    if let Some(host) = self.host_mut(actor) {
                        host.reply(leaf, op, Ok(payload));
                        self.flush(actor);
                    }
                }
                What::StartLeaf { actor } => {
                    self.flush(actor);
                    let first = at + op_interval.mul_f64(self.rng.random::<f64>());
                    self.push(first, What::LeafOp { actor });
                }
                What::LeafOp { actor } => {
                    let Actor { role: Role::Leaf(Some(leaf)), .. } = &mut self.actors[actor as usize] else {
                        continue;
                    };
                    // A full table of operations in flight is the leaf's own back-pressure.
                    if leaf.forward(actor.to_be_bytes().to_vec(), at).is_ok() {
                        self.ops += 1;
                    }
                    self.flush(actor);
                    self.push(at + op_interval, What::LeafOp { actor });
                }
            }
        }
        self.now = self.now.max(until);
    }

    fn host_mut(&mut self, actor: u32) -> Option<&mut Host<SimAddr>> {
        match &mut self.actors[actor as usize] {
            Actor { role: Role::Ring { host: Some(host), .. }, alive: true, .. } => Some(host),
            _ => None,
        }
    }

    fn deliver(&mut self, to: u32, from: SimAddr, message: SuperMessage<SimAddr>) {
        let now = self.now;
        let holds: Vec<bool> = if message.is_for_directory() {
            (0..DIRECTORY_SHARDS).map(|s| self.owner_of(&shard_key(s)) == Some(to)).collect()
        } else {
            Vec::new()
        };
        let actor = &mut self.actors[to as usize];
        if !actor.alive {
            return;
        }
        match &mut actor.role {
            Role::Ring { directory, host } => {
                if message.is_for_directory() {
                    directory.handle_message(
                        from,
                        message,
                        |s| holds.get(usize::from(s)) == Some(&true),
                        now,
                    );
                } else if let Some(host) = host {
                    host.handle_message(from, message, now);
                }
            }
            Role::Leaf(Some(leaf)) => leaf.handle_message(from, message, now),
            Role::Leaf(None) => {}
        }
        self.flush(to);
    }

    fn wake(&mut self, index: u32, at: Time) {
        let actor = &mut self.actors[index as usize];
        if actor.wake_at == Some(at) {
            actor.wake_at = None;
        }
        if !actor.alive {
            return;
        }
        match &mut actor.role {
            Role::Ring { host: Some(host), .. } if host.poll_timeout().is_some_and(|t| t <= at) => {
                host.handle_timeout(at);
            }
            Role::Leaf(Some(leaf)) if leaf.poll_timeout().is_some_and(|t| t <= at) => leaf.handle_timeout(at),
            _ => {}
        }
        self.flush(index);
    }

    fn send(&mut self, from: SimAddr, to: SimAddr, message: SuperMessage<SimAddr>) {
        self.messages += 1;
        if let Some(delay) = self.network.sample(&mut self.rng) {
            let at = self.now + delay;
            self.push(at, What::Deliver { to: to.index() as u32, from, message });
        }
    }

    /// Drains actor `index`'s outputs and books its next wake-up.
    fn flush(&mut self, index: u32) {
        let now = self.now;
        let me = self.addr(index);
        let mut out = Vec::new();
        let mut host_events = Vec::new();
        let mut leaf_events = Vec::new();
        let mut lookups = Vec::new();
        let next = match &mut self.actors[index as usize].role {
            Role::Ring { directory, host } => {
                while let Some(t) = directory.poll_transmit() {
                    out.push(t);
                }
                if let Some(host) = host {
                    while let Some(t) = host.poll_transmit() {
                        out.push(t);
                    }
                    while let Some(e) = host.poll_event() {
                        host_events.push(e);
                    }
                    while let Some(key) = host.poll_lookup() {
                        lookups.push(key);
                    }
                    host.poll_timeout()
                } else {
                    None
                }
            }
            Role::Leaf(Some(leaf)) => {
                while let Some(t) = leaf.poll_transmit() {
                    out.push(t);
                }
                while let Some(e) = leaf.poll_event() {
                    leaf_events.push(e);
                }
                leaf.poll_timeout()
            }
            Role::Leaf(None) => None,
        };
        for (to, message) in out {
            self.send(me, to, message);
        }
        for key in lookups {
            let delay = self.lookup_delay();
            self.push(now + delay, What::Owner { actor: index, key });
        }
        for event in host_events {
            if let HostEvent::Forward { leaf, op, payload } = event {
                let first = self.executed.insert((leaf.index() as u32, op));
                if !first {
                    self.duplicates += 1;
                }
                let delay = self.lookup_delay();
                self.push(now + delay, What::RingReply { actor: index, leaf, op, payload });
            }
        }
        for event in leaf_events {
            match event {
                LeafEvent::Attached { supernode, .. } => {
                    let s = supernode.index() as u32;
                    self.attached[index as usize] = Some(s);
                    if let Some(slot @ None) = self.orphans.get_mut(&index) {
                        *slot = Some(now);
                    }
                    self.record(&[now.as_micros(), u64::from(index), u64::from(s)]);
                }
                LeafEvent::SupernodeLost { .. } => {
                    self.attached[index as usize] = None;
                    self.record(&[now.as_micros(), u64::from(index), u64::MAX]);
                }
                LeafEvent::BackingOff { until } => {
                    self.record(&[now.as_micros(), u64::from(index), until.as_micros()])
                }
                LeafEvent::OpDone { op, result } => {
                    if result.is_ok() {
                        self.ops_done += 1;
                    } else {
                        self.ops_timed_out += 1;
                    }
                    self.record(&[now.as_micros(), u64::from(index), op.0, u64::from(result.is_ok())])
                }
            }
        }
        let actor = &mut self.actors[index as usize];
        if let Some(at) = next
            && actor.wake_at.is_none_or(|w| at < w)
        {
            let at = at.max(now);
            actor.wake_at = Some(at);
            self.push(at, What::Wake { actor: index });
        }
    }
}

/// Runs the scenario.
pub fn run(params: &SupernodeParams) -> SupernodeReport {
    let wall = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let salt = u64::from(rng.random::<u32>()) << 32;
    let nodes = params.nodes.max(1);
    let supernodes = params.supernodes.clamp(1, nodes);
    let lookup_round_trips = ((nodes as f64).log2() / 2.0).ceil().max(1.0) as u32;
    let mut world = World {
        now: Time::ZERO,
        agenda: Agenda::default(),
        rng,
        salt,
        network: params.network.clone(),
        actors: Vec::with_capacity(nodes + params.leaves),
        ring: BTreeMap::new(),
        lookup_round_trips,
        executed: BTreeSet::new(),
        duplicates: 0,
        ops: 0,
        ops_done: 0,
        ops_timed_out: 0,
        messages: 0,
        attached: vec![None; nodes + params.leaves],
        orphans: BTreeMap::new(),
        crash_time: None,
        trace: 0xcbf2_9ce4_8422_2325,
    };
    // Which ring members are supernodes: a random choice.
    let mut order: Vec<u32> = (0..nodes as u32).collect();
    for i in (1..order.len()).rev() {
        let j = world.rng.random_range(0..=i);
        order.swap(i, j);
    }
    let super_set: BTreeSet<u32> = order[..supernodes].iter().copied().collect();
    for index in 0..nodes as u32 {
        let addr = world.addr(index);
        let seed = world.rng.random::<u64>();
        let host = super_set
            .contains(&index)
            .then(|| Box::new(Host::new(addr, params.host.clone(), world.rng.random::<u64>(), Time::ZERO)));
        world.actors.push(Actor {
            role: Role::Ring { directory: Box::new(Directory::new(seed)), host },
            alive: true,
            wake_at: None,
        });
        world.ring.insert(addr.node_id(), index);
    }
    let super_list: Vec<u32> = super_set.iter().copied().collect();
    for index in &super_list {
        world.flush(*index);
    }
    // Leaves: each knows two random supernodes, and arrives at a random time.
    for k in 0..params.leaves {
        let index = (nodes + k) as u32;
        let configured = (0..2)
            .map(|_| {
                let pick = super_list[world.rng.random_range(0..super_list.len())];
                world.addr(pick)
            })
            .collect::<Vec<_>>();
        let start = Time::ZERO + params.arrival.mul_f64(world.rng.random::<f64>());
        let leaf = Leaf::new(configured, params.leaf.clone(), world.rng.random::<u64>(), start);
        world.actors.push(Actor { role: Role::Leaf(Some(Box::new(leaf))), alive: true, wake_at: None });
        world.push(start, What::StartLeaf { actor: index });
    }
    let crash_at = Time::ZERO + params.crash_at;
    world.run_until(crash_at, params.op_interval);

    // The crash: a random fraction of the supernodes, at once, silently.
    let crashed_count = ((supernodes as f64) * params.crash_fraction.clamp(0.0, 1.0)).round() as usize;
    let mut pick = super_list.clone();
    for i in (1..pick.len()).rev() {
        let j = world.rng.random_range(0..=i);
        pick.swap(i, j);
    }
    let crashed: BTreeSet<u32> = pick[..crashed_count].iter().copied().collect();
    let attached_before_crash = world.attached[nodes..].iter().filter(|a| a.is_some()).count();
    for &index in &crashed {
        world.actors[index as usize].alive = false;
        let id = world.addr(index).node_id();
        world.ring.remove(&id);
    }
    for k in 0..params.leaves {
        let index = (nodes + k) as u32;
        if world.attached[index as usize].is_some_and(|s| crashed.contains(&s)) {
            world.orphans.insert(index, None);
        }
    }
    world.crash_time = Some(crash_at);
    world.record(&[crash_at.as_micros(), crashed.len() as u64]);
    let end = crash_at + params.window;
    world.run_until(end, params.op_interval);

    // Figures.
    let mut times: Vec<u64> = world
        .orphans
        .values()
        .flatten()
        .map(|t| u64::try_from(t.saturating_since(crash_at).as_micros()).unwrap_or(u64::MAX))
        .collect();
    times.sort_unstable();
    let orphaned = world.orphans.len();
    let within = times.iter().filter(|&&t| t <= 10_000_000).count();
    let survivors: Vec<&Host<SimAddr>> = super_list
        .iter()
        .filter(|i| !crashed.contains(i))
        .filter_map(|&i| match &world.actors[i as usize].role {
            Role::Ring { host: Some(host), .. } => Some(host.as_ref()),
            _ => None,
        })
        .collect();
    let cap = params.host.max_leaves;
    let peak = survivors.iter().map(|h| h.peak_leaves()).max().unwrap_or(0);
    let over = survivors.iter().filter(|h| h.peak_leaves() > cap).count();
    let mean_end = if survivors.is_empty() {
        0.0
    } else {
        survivors.iter().map(|h| f64::from(h.load().leaves)).sum::<f64>() / survivors.len() as f64
    };
    let mut report = SupernodeReport {
        scenario: "supernodes",
        nodes,
        supernodes,
        leaves: params.leaves,
        seed: params.seed,
        max_leaves: cap,
        loss: params.network.loss,
        crashed: crashed.len(),
        attached_before_crash,
        orphaned,
        reattached: times.len(),
        reattached_within_10s_pct: if orphaned == 0 { 100.0 } else { pct(within, orphaned) },
        reattach_median_s: secs(percentile(&times, 0.5)),
        reattach_p99_s: secs(percentile(&times, 0.99)),
        reattach_max_s: secs(times.last().copied().unwrap_or(0)),
        peak_leaves_on_survivor: peak,
        mean_leaves_on_survivor: (mean_end * 10.0).round() / 10.0,
        survivors_over_cap: over,
        unattached_at_end: 0,
        refusals: 0,
        backoffs: 0,
        attach_timeouts: 0,
        failovers: 0,
        dropped: 0,
        ops: 0,
        ops_done: 0,
        ops_timed_out: 0,
        ops_resent: 0,
        ops_duplicates: world.duplicates,
        messages_per_leaf_per_s: 0.0,
        trace_hash: String::new(),
        wall_s: 0.0,
    };
    for actor in &world.actors {
        match &actor.role {
            Role::Leaf(Some(leaf)) => {
                let c = leaf.counters();
                report.unattached_at_end += usize::from(leaf.supernode().is_none());
                report.refusals += c.refusals;
                report.backoffs += c.backoffs;
                report.attach_timeouts += c.attach_timeouts;
                report.failovers += c.failovers;
                report.dropped += c.dropped;
                report.ops_resent += c.resent;
            }
            Role::Ring { directory, host } => {
                report.dropped += directory.counters().dropped;
                report.dropped += host.as_ref().map_or(0, |h| h.counters().dropped);
            }
            Role::Leaf(None) => {}
        }
    }
    report.ops = world.ops;
    report.ops_done = world.ops_done;
    report.ops_timed_out = world.ops_timed_out;
    let sim_s = end.since_epoch().as_secs_f64().max(1e-9);
    report.messages_per_leaf_per_s =
        ((world.messages as f64 / params.leaves.max(1) as f64 / sim_s) * 100.0).round() / 100.0;
    world.record(&[world.messages]);
    report.trace_hash = format!("{:016x}", world.trace);
    report.wall_s = (wall.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    report
}

fn pct(part: usize, whole: usize) -> f64 {
    (part as f64 * 100_000.0 / whole as f64).round() / 1000.0
}

fn secs(micros: u64) -> f64 {
    (micros as f64 / 1000.0).round() / 1000.0
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
