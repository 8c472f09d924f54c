//! A deterministic discrete-event simulator that runs many [`Node`]s against each other.
//!
//! Time jumps from one event to the next (message deliveries, node wake-ups, scripted actions), so
//! idle nodes cost nothing. Every random choice — addresses, latencies, losses, which node crashes
//! or looks up what — comes from one generator seeded by the run's seed, and every queue is ordered
//! by (time, sequence number): the same seed replays the same run bit for bit, which
//! [`Simulation::trace_hash`] fingerprints.
//!
//! With [`Simulation::enable_multicast`], every node also runs a [`Multicast`] core beside its
//! ring core; multicast messages travel through the same network model (latency, loss), and the
//! multicast events are collected for the scenario to check ([`Simulation::take_group_events`]).
//! Without it nothing changes: runs stay bit-identical to those of a simulator without multicast.
//!
//! The simulator also keeps the *global view*: which nodes are members (see the crate docs), in
//! ring order, so it can compute the true successor of any key and check the ring invariants.

mod agenda;
mod byzantine;
pub mod counter;
mod invariants;
pub mod kv;
mod kv_store;
pub mod multicast;
mod network;
pub mod partition;
pub mod queue;
pub mod scenario;
pub mod supernodes;
#[cfg(test)]
pub(crate) mod testing;

use std::collections::BTreeMap;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use agenda::Agenda;
pub use byzantine::LiarCounters;
pub use invariants::{InvariantReport, check as check_invariants};
pub use network::NetworkModel;

use crate::address::Address;
use crate::config::Config;
use crate::id::{ID_BITS, Id};
use crate::kv::{IoId, KvMessage};
use crate::lookup::LookupId;
use crate::message::Message;
use crate::multicast::{
    GroupError, GroupEvent, GroupMessage, GroupName, HistoryRequestId, Multicast, MulticastConfig, PublishId,
};
use crate::node::{Event, Node};
use crate::time::Time;

/// A simulated node's address: its index in the simulation (low 32 bits) and a per-run salt (high
/// 32 bits), so that ring positions differ from seed to seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SimAddr(pub u64);

impl SimAddr {
    /// Index of the node in the simulation.
    pub fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
}

impl Address for SimAddr {
    fn node_id(&self) -> Id {
        Id::hash(&self.0.to_be_bytes())
    }
}

#[derive(Debug)]
enum What {
    Deliver { to: u32, from: SimAddr, message: Message<SimAddr> },
    DeliverGroup { to: u32, from: SimAddr, message: GroupMessage<SimAddr> },
    Wake { node: u32 },
    StartLookup { key: Id },
    DeliverKv { to: u32, from: SimAddr, message: KvMessage },
    StoreDone { node: u32, io: IoId },
    DeliverQueue { to: u32, from: SimAddr, message: crate::queue::QueueMessage<SimAddr> },
}

#[derive(Debug)]
struct SimNode {
    node: Node<SimAddr>,
    /// The node's multicast core, once [`Simulation::enable_multicast`] was called.
    multicast: Option<Multicast<SimAddr>>,
    /// The node's store coordinator and its simulated disk, once [`Simulation::enable_kv`] was
    /// called.
    kv: Option<Box<kv_store::SimKv>>,
    /// The node's queues, once [`Simulation::enable_queues`] was called.
    queues: Option<Box<crate::queue::Queues<SimAddr>>>,
    alive: bool,
    /// Whether the simulator rewrites this node's lookup replies into lies ([`byzantine`]).
    byzantine: bool,
    /// The earliest wake-up already in the queue for this node.
    wake_at: Option<Time>,
}

/// A lookup in flight, with the truth when it started.
#[derive(Debug)]
struct LookupRecord {
    key: Id,
    truth_at_start: Option<u32>,
}

/// Tallies of user lookups.
#[derive(Clone, Debug, Default)]
pub struct LookupTally {
    /// Lookups started.
    pub started: u64,
    /// Answered with the true successor at start or end.
    pub correct: u64,
    /// Answered with another node.
    pub wrong: u64,
    /// Ended with an error (or never ended).
    pub failed: u64,
    /// Hop counts of answered lookups.
    pub hops: Vec<u32>,
    /// Latencies of answered lookups, in microseconds.
    pub latencies_us: Vec<u64>,
    /// Time-outs met by user lookups.
    pub timeouts: u64,
}

/// A multicast event one node emitted, and when.
#[derive(Clone, Debug)]
pub struct GroupRecord {
    /// The node.
    pub node: usize,
    /// When.
    pub at: Time,
    /// What.
    pub event: GroupEvent,
}

/// The simulation: nodes, the network between them, and the global view.
#[derive(Debug)]
pub struct Simulation {
    now: Time,
    agenda: Agenda<What>,
    rng: ChaCha8Rng,
    salt: u64,
    config: Config,
    network: NetworkModel,
    nodes: Vec<SimNode>,
    /// Members in ring order: the global view.
    members: BTreeMap<Id, u32>,
    /// Members in arbitrary (but deterministic) order, for picking one at random.
    member_list: Vec<u32>,
    member_pos: Vec<usize>,
    lookups: BTreeMap<(u32, LookupId), LookupRecord>,
    /// User-lookup results.
    pub tally: LookupTally,
    /// Messages sent by all nodes.
    pub messages: u64,
    /// Ring messages sent by all nodes, by [`crate::Message::kind`] (requests and responses
    /// apart): which maintenance rule a ring at rest still spends its messages on.
    pub messages_by_kind: BTreeMap<&'static str, u64>,
    /// Multicast messages sent by all nodes (all kinds).
    pub group_messages: u64,
    /// Multicast data messages (stamped messages sent down a tree) sent by all nodes.
    pub group_data_messages: u64,
    multicast: Option<MulticastConfig>,
    group_events: Vec<GroupRecord>,
    /// The store: settings, results and the global index of who holds what.
    kv: Option<kv_store::KvWorld>,
    /// Queues: settings and what the nodes reported.
    queues: Option<queue::QueueWorld>,
    /// During a partition, each node's part; messages between parts are lost.
    sides: Option<Vec<u8>>,
    /// The Byzantine nodes ([`Simulation::make_byzantine`]); user lookups start only at others.
    liars: byzantine::Liars,
    trace: u64,
}

const NOT_MEMBER: usize = usize::MAX;

impl Simulation {
    /// An empty simulation.
    pub fn new(seed: u64, config: Config, network: NetworkModel) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let salt = u64::from(rng.random::<u32>()) << 32;
        Simulation {
            now: Time::ZERO,
            agenda: Agenda::default(),
            rng,
            salt,
            config,
            network,
            nodes: Vec::new(),
            members: BTreeMap::new(),
            member_list: Vec::new(),
            member_pos: Vec::new(),
            lookups: BTreeMap::new(),
            tally: LookupTally::default(),
            messages: 0,
            messages_by_kind: BTreeMap::new(),
            group_messages: 0,
            group_data_messages: 0,
            multicast: None,
            group_events: Vec::new(),
            kv: None,
            queues: None,
            sides: None,
            liars: byzantine::Liars::default(),
            trace: 0xcbf2_9ce4_8422_2325,
        }
    }

    /// The current simulated time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// A fingerprint of everything that happened: equal for equal seeds and inputs.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    fn record(&mut self, values: &[u64]) {
        // FNV-1a over the values' bytes: cheap, stable across platforms and releases.
        for v in values {
            for byte in v.to_le_bytes() {
                self.trace ^= u64::from(byte);
                self.trace = self.trace.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }

    /// The random generator shared by the scenario scripts.
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// Number of nodes ever added.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of members now.
    pub fn member_count(&self) -> usize {
        self.member_list.len()
    }

    /// Number of nodes not crashed (members, joining or idle).
    pub fn alive_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.alive).count()
    }

    /// The node at `index`.
    pub fn node(&self, index: usize) -> &Node<SimAddr> {
        &self.nodes[index].node
    }

    /// Whether node `index` is alive.
    pub fn is_alive(&self, index: usize) -> bool {
        self.nodes[index].alive
    }

    /// Whether node `index` is a member.
    pub fn is_member(&self, index: usize) -> bool {
        self.member_pos[index] != NOT_MEMBER
    }

    /// A member chosen uniformly at random.
    pub fn random_member(&mut self) -> Option<usize> {
        if self.member_list.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.member_list.len());
        Some(self.member_list[i] as usize)
    }

    fn push(&mut self, at: Time, what: What) {
        self.agenda.push(at, what);
    }

    /// Adds a node that is not yet in a ring; returns its index.
    pub fn add_node(&mut self) -> usize {
        let index = self.nodes.len();
        let addr = SimAddr(self.salt | index as u64);
        let seed = self.rng.random::<u64>();
        let node = Node::new(addr, self.config.clone(), seed).expect("the scenario's config was validated");
        let multicast = self.multicast.clone().map(|config| Multicast::new(node.me().clone(), config));
        let kv = self.kv.as_ref().map(|world| self.new_sim_kv(&node, world, index));
        let queues = self.new_sim_queues(&node);
        self.nodes.push(SimNode {
            node,
            multicast,
            kv,
            queues,
            alive: true,
            byzantine: false,
            wake_at: None,
        });
        self.member_pos.push(NOT_MEMBER);
        index
    }

    /// Makes node `index` start a new ring.
    pub fn create_ring(&mut self, index: usize) {
        let now = self.now;
        self.nodes[index].node.create_ring(now);
        self.flush(index);
    }

    /// Makes node `index` join through the given bootstrap nodes.
    pub fn join(&mut self, index: usize, bootstraps: &[usize]) {
        let now = self.now;
        let addrs = bootstraps.iter().map(|&b| self.nodes[b].node.me().addr).collect();
        self.nodes[index].node.join(addrs, now);
        self.flush(index);
    }

    /// Crashes node `index`: it stops at once, without telling anyone.
    pub fn crash(&mut self, index: usize) {
        self.nodes[index].alive = false;
        self.remove_member(index);
        self.record(&[self.now.as_micros(), index as u64, 0xdead]);
    }

    /// Starts a graceful leave of node `index`; it stops being a member at once. Its multicast
    /// core (if any) hands off and prunes first, while it can still route.
    pub fn leave(&mut self, index: usize) {
        let now = self.now;
        self.remove_member(index);
        let SimNode { node, multicast, .. } = &mut self.nodes[index];
        if let Some(mc) = multicast {
            mc.leave_all(node, now);
        }
        self.nodes[index].node.leave(now);
        self.flush(index);
    }

    /// Makes node `index` Byzantine from now on: the simulator rewrites every lookup step it
    /// answers into a claim that it owns the target, with other liars as its successor list, and
    /// answers the storage requests sent to it with drops and stale or foreign records (see
    /// [`byzantine`]). User lookups scheduled with [`Simulation::schedule_lookup`] then start only
    /// at honest members.
    pub fn make_byzantine(&mut self, index: usize) {
        self.nodes[index].byzantine = true;
        let me = self.nodes[index].node.me().clone();
        self.liars.insert(&me);
    }

    /// Whether node `index` is Byzantine.
    pub fn is_byzantine(&self, index: usize) -> bool {
        self.nodes[index].byzantine
    }

    /// A member chosen uniformly at random among the honest ones (all members when there are no
    /// Byzantine nodes; `None` if a few draws find only liars).
    pub fn random_honest_member(&mut self) -> Option<usize> {
        if self.liars.is_empty() {
            return self.random_member();
        }
        for _ in 0..64 {
            let m = self.random_member()?;
            if !self.nodes[m].byzantine {
                return Some(m);
            }
        }
        None
    }

    /// Schedules a user lookup for `key` at `at`, from a member chosen when it starts.
    pub fn schedule_lookup(&mut self, at: Time, key: Id) {
        self.push(at, What::StartLookup { key });
    }

    /// Starts a user lookup for `key` at node `index` now.
    pub fn start_lookup(&mut self, index: usize, key: Id) {
        let now = self.now;
        let truth_at_start = self.true_successor(&key);
        let id = self.nodes[index].node.lookup(key, now);
        self.tally.started += 1;
        self.lookups.insert((index as u32, id), LookupRecord { key, truth_at_start });
        self.flush(index);
    }

    /// Lookups still running.
    pub fn lookups_in_flight(&self) -> usize {
        self.lookups.len()
    }

    /// Counts lookups that never finished as failed and forgets them.
    pub fn abandon_lookups(&mut self) {
        self.tally.failed += self.lookups.len() as u64;
        self.lookups.clear();
    }

    /// The true successor of `key` among members.
    pub fn true_successor(&self, key: &Id) -> Option<u32> {
        self.members.range(key..).next().or_else(|| self.members.iter().next()).map(|(_, &i)| i)
    }

    fn add_member(&mut self, index: usize) {
        if self.member_pos[index] != NOT_MEMBER {
            return;
        }
        let id = self.nodes[index].node.me().id;
        self.members.insert(id, index as u32);
        self.member_pos[index] = self.member_list.len();
        self.member_list.push(index as u32);
    }

    fn remove_member(&mut self, index: usize) {
        let pos = self.member_pos[index];
        if pos == NOT_MEMBER {
            return;
        }
        let id = self.nodes[index].node.me().id;
        self.members.remove(&id);
        self.member_list.swap_remove(pos);
        if let Some(&moved) = self.member_list.get(pos) {
            self.member_pos[moved as usize] = pos;
        }
        self.member_pos[index] = NOT_MEMBER;
    }

    /// Processes every event scheduled up to and including `until`, then sets the clock to it.
    pub fn run_until(&mut self, until: Time) {
        while let Some((at, what)) = self.agenda.pop_due(until) {
            self.now = at;
            match what {
                What::Deliver { to, from, message } => {
                    let index = to as usize;
                    if !self.nodes[index].alive || self.is_cut(from.index(), index) {
                        continue;
                    }
                    self.nodes[index].node.handle_message(from, message, at);
                    self.flush(index);
                }
                What::DeliverGroup { to, from, message } => {
                    let index = to as usize;
                    if self.is_cut(from.index(), index) {
                        continue;
                    }
                    let SimNode { node, multicast, alive, .. } = &mut self.nodes[index];
                    let Some(mc) = multicast.as_mut().filter(|_| *alive) else {
                        continue;
                    };
                    mc.handle_message(from, message, node, at);
                    self.flush(index);
                }
                What::Wake { node } => {
                    let index = node as usize;
                    let sim_node = &mut self.nodes[index];
                    if sim_node.wake_at == Some(at) {
                        sim_node.wake_at = None;
                    }
                    if !sim_node.alive {
                        continue;
                    }
                    if sim_node.node.poll_timeout().is_some_and(|t| t <= at) {
                        sim_node.node.handle_timeout(at);
                    }
                    if let Some(mc) = sim_node.multicast.as_mut()
                        && mc.poll_timeout().is_some_and(|t| t <= at)
                    {
                        mc.handle_timeout(&sim_node.node, at);
                    }
                    if let Some(kv) = sim_node.kv.as_mut()
                        && kv.coordinator.poll_timeout().is_some_and(|t| t <= at)
                    {
                        kv.coordinator.handle_timeout(&mut sim_node.node, at);
                    }
                    if let Some(queues) = sim_node.queues.as_mut()
                        && queues.poll_timeout().is_some_and(|t| t <= at)
                    {
                        queues.handle_timeout(&mut sim_node.node, at);
                    }
                    // Re-book the next wake-up even when this one found nothing due.
                    self.flush(index);
                }
                What::StartLookup { key } => {
                    if let Some(index) = self.random_honest_member() {
                        self.start_lookup(index, key);
                    }
                }
                What::DeliverKv { to, from, message } => self.deliver_kv(to as usize, from, message),
                What::StoreDone { node, io } => self.complete_store_op(node as usize, io),
                What::DeliverQueue { to, from, message } => self.deliver_queue(to as usize, from, message),
            }
        }
        self.now = self.now.max(until);
    }

    /// Drains node `index`'s outputs: schedules its messages, handles its events, and books its
    /// next wake-up.
    fn flush(&mut self, index: usize) {
        let now = self.now;
        while let Some(mut transmit) = self.nodes[index].node.poll_transmit() {
            if self.nodes[index].byzantine {
                let node = &self.nodes[index].node;
                transmit.message = self.liars.rewrite(node.me(), node.successors(), transmit.message);
            }
            self.messages += 1;
            *self.messages_by_kind.entry(transmit.message.kind()).or_default() += 1;
            let to = transmit.to.index();
            if let Some(delay) = self.network.sample(&mut self.rng) {
                let from = self.nodes[index].node.me().addr;
                self.push(now + delay, What::Deliver { to: to as u32, from, message: transmit.message });
            }
        }
        while let Some(event) = self.nodes[index].node.poll_event() {
            self.on_event(index, event);
        }
        if self.nodes[index].multicast.is_some() {
            self.flush_multicast(index);
        }
        if self.nodes[index].kv.is_some() {
            self.flush_kv(index);
        }
        if self.nodes[index].queues.is_some() {
            self.flush_queues(index);
        }
        let sim_node = &mut self.nodes[index];
        let multicast_at = sim_node.multicast.as_ref().and_then(Multicast::poll_timeout);
        let kv_at = sim_node.kv.as_ref().and_then(|kv| kv.coordinator.poll_timeout());
        let queues_at = sim_node.queues.as_ref().and_then(|q| q.poll_timeout());
        let next = [sim_node.node.poll_timeout(), multicast_at, kv_at, queues_at].into_iter().flatten().min();
        if let Some(at) = next
            && sim_node.wake_at.is_none_or(|w| at < w)
        {
            let at = at.max(now);
            sim_node.wake_at = Some(at);
            self.push(at, What::Wake { node: index as u32 });
        }
    }

    fn flush_multicast(&mut self, index: usize) {
        let now = self.now;
        let from = self.nodes[index].node.me().addr;
        while let Some((to, message)) =
            self.nodes[index].multicast.as_mut().and_then(Multicast::poll_transmit)
        {
            self.group_messages += 1;
            if matches!(message, GroupMessage::Data { .. }) {
                self.group_data_messages += 1;
            }
            if let Some(delay) = self.network.sample(&mut self.rng) {
                self.push(now + delay, What::DeliverGroup { to: to.index() as u32, from, message });
            }
        }
        while let Some(event) = self.nodes[index].multicast.as_mut().and_then(Multicast::poll_event) {
            match &event {
                GroupEvent::Delivered { seq, .. } => self.record(&[now.as_micros(), index as u64, 2, *seq]),
                GroupEvent::Published { seq, .. } => self.record(&[now.as_micros(), index as u64, 3, *seq]),
                GroupEvent::Gap { from, to, .. } => {
                    self.record(&[now.as_micros(), index as u64, 4, *from, *to])
                }
                _ => self.record(&[now.as_micros(), index as u64, 5]),
            }
            self.group_events.push(GroupRecord { node: index, at: now, event });
        }
    }

    // ----- multicast -------------------------------------------------------------------------

    /// Gives every node (present and future) a multicast core with `config`.
    pub fn enable_multicast(&mut self, config: MulticastConfig) {
        for sim_node in &mut self.nodes {
            if sim_node.multicast.is_none() {
                sim_node.multicast = Some(Multicast::new(sim_node.node.me().clone(), config.clone()));
            }
        }
        self.multicast = Some(config);
    }

    /// Node `index`'s multicast core, if multicast is enabled.
    pub fn multicast(&self, index: usize) -> Option<&Multicast<SimAddr>> {
        self.nodes[index].multicast.as_ref()
    }

    /// Makes node `index` join `group` as a member.
    pub fn join_group(&mut self, index: usize, group: &GroupName) -> Result<(), GroupError> {
        let now = self.now;
        let SimNode { node, multicast, .. } = &mut self.nodes[index];
        let result = multicast.as_mut().expect("multicast is enabled").join(group, node, now);
        self.flush(index);
        result
    }

    /// Makes node `index` leave `group`.
    pub fn leave_group(&mut self, index: usize, group: &GroupName) {
        let now = self.now;
        let SimNode { node, multicast, .. } = &mut self.nodes[index];
        multicast.as_mut().expect("multicast is enabled").leave(group, node, now);
        self.flush(index);
    }

    /// Publishes `body` to `group` from node `index` (label `n<index>`, timestamp = sim time).
    pub fn publish(
        &mut self,
        index: usize,
        group: &GroupName,
        body: Vec<u8>,
    ) -> Result<PublishId, GroupError> {
        let now = self.now;
        let ts_ms = now.as_micros() / 1000;
        let SimNode { node, multicast, .. } = &mut self.nodes[index];
        let mc = multicast.as_mut().expect("multicast is enabled");
        let result = mc.publish(group, format!("n{index}"), body, ts_ms, node, now);
        self.flush(index);
        result
    }

    /// Asks for history of `group` from node `index`.
    pub fn request_history(&mut self, index: usize, group: &GroupName, from_seq: u64) -> HistoryRequestId {
        let now = self.now;
        let SimNode { node, multicast, .. } = &mut self.nodes[index];
        let request =
            multicast.as_mut().expect("multicast is enabled").request_history(group, from_seq, node, now);
        self.flush(index);
        request
    }

    /// Hands node `to` a multicast message as if `from` had sent it, now (bypassing the network):
    /// for tests that play a hostile peer.
    pub fn inject_group_message(&mut self, to: usize, from: SimAddr, message: GroupMessage<SimAddr>) {
        let now = self.now;
        let SimNode { node, multicast, .. } = &mut self.nodes[to];
        multicast.as_mut().expect("multicast is enabled").handle_message(from, message, node, now);
        self.flush(to);
    }

    /// The multicast events emitted since the last call, in order.
    pub fn take_group_events(&mut self) -> Vec<GroupRecord> {
        std::mem::take(&mut self.group_events)
    }

    /// Node `index`'s address.
    pub fn addr(&self, index: usize) -> SimAddr {
        self.nodes[index].node.me().addr
    }

    fn on_event(&mut self, index: usize, event: Event<SimAddr>) {
        let now = self.now;
        if let SimNode { node, queues: Some(queues), .. } = &mut self.nodes[index] {
            match &event {
                Event::LookupFinished { id, result }
                    if queues.handle_lookup_finished(*id, result, node, now) =>
                {
                    return;
                }
                Event::PredecessorChanged { .. } | Event::SuccessorsChanged { .. } => {
                    queues.handle_ring_changed(node, now);
                }
                _ => {}
            }
        }
        if let SimNode { node, kv: Some(kv), .. } = &mut self.nodes[index] {
            match &event {
                Event::LookupFinished { id, result }
                    if kv.coordinator.handle_lookup_finished(*id, result, node, now) =>
                {
                    return;
                }
                Event::PredecessorChanged { .. } | Event::SuccessorsChanged { .. } => {
                    kv.coordinator.handle_ring_changed(now);
                }
                _ => {}
            }
        }
        match event {
            Event::Joined { .. } => {
                self.add_member(index);
                self.record(&[self.now.as_micros(), index as u64, 1]);
            }
            Event::JoinFailed { .. } | Event::Left => self.remove_member(index),
            Event::LookupFinished { id, result } => {
                let Some(record) = self.lookups.remove(&(index as u32, id)) else {
                    return;
                };
                match result {
                    Ok(outcome) => {
                        let owner = outcome.owner.addr.index() as u32;
                        let truth_now = self.true_successor(&record.key);
                        if Some(owner) == record.truth_at_start || Some(owner) == truth_now {
                            self.tally.correct += 1;
                        } else {
                            self.tally.wrong += 1;
                        }
                        self.tally.hops.push(outcome.hops);
                        self.tally
                            .latencies_us
                            .push(u64::try_from(outcome.latency.as_micros()).unwrap_or(u64::MAX));
                        self.tally.timeouts += u64::from(outcome.timeouts);
                        self.record(&[
                            self.now.as_micros(),
                            index as u64,
                            u64::from(owner),
                            u64::from(outcome.hops),
                        ]);
                    }
                    Err(_) => {
                        self.tally.failed += 1;
                        self.record(&[self.now.as_micros(), index as u64, u64::MAX]);
                    }
                }
            }
            Event::PredecessorChanged { .. } | Event::SuccessorsChanged { .. } => {}
        }
    }

    /// Whether every member's successor and predecessor are the true ones.
    pub fn ring_is_correct(&self) -> bool {
        let ids: Vec<(&Id, &u32)> = self.members.iter().collect();
        let n = ids.len();
        if n == 0 {
            return false;
        }
        ids.iter().enumerate().all(|(k, &(_, &index))| {
            let node = &self.nodes[index as usize].node;
            let (succ_id, _) = ids[(k + 1) % n];
            let (pred_id, _) = ids[(k + n - 1) % n];
            if n == 1 {
                return node.successors().is_empty();
            }
            node.successor().id == *succ_id && node.predecessor().is_some_and(|p| p.id == *pred_id)
        })
    }

    /// How many members have the true successor as their first successor.
    pub fn correct_successor_count(&self) -> usize {
        let ring: Vec<(&Id, &u32)> = self.members.iter().collect();
        let n = ring.len();
        (0..n)
            .filter(|&k| self.nodes[*ring[k].1 as usize].node.successor().id == *ring[(k + 1) % n].0)
            .count()
    }

    /// Whether every member's whole successor list holds the next members in ring order (as many
    /// as fit in r, or all the others in a smaller ring).
    pub fn successor_lists_are_correct(&self) -> bool {
        let ring: Vec<Id> = self.members.keys().copied().collect();
        let n = ring.len();
        let expected_len = self.config.successors.get().min(n.saturating_sub(1));
        ring.iter().enumerate().all(|(k, _)| {
            let node = &self.nodes[self.members[&ring[k]] as usize].node;
            node.successors().len() == expected_len
                && node.successors().iter().enumerate().all(|(j, s)| s.id == ring[(k + 1 + j) % n])
        })
    }

    /// Fraction of fingers (beyond each node's successor) that point at the true successor of their
    /// start.
    pub fn finger_accuracy(&self) -> f64 {
        let ring: Vec<Id> = self.members.keys().copied().collect();
        if ring.len() < 2 {
            return 1.0;
        }
        let succ_of = |key: &Id| -> Id {
            let at = ring.partition_point(|id| id < key);
            ring[at % ring.len()]
        };
        let (mut right, mut considered) = (0u64, 0u64);
        for &index in self.members.values() {
            let node = &self.nodes[index as usize].node;
            let me = node.me().id;
            let successor = node.successor().id;
            for i in 0..ID_BITS {
                let start = me.finger_start(i);
                if start.in_open_closed(&me, &successor) {
                    continue;
                }
                considered += 1;
                let truth = succ_of(&start);
                let believed = node.fingers().get(i).map_or(me, |f| f.id);
                if believed == truth {
                    right += 1;
                }
            }
        }
        if considered == 0 { 1.0 } else { right as f64 / considered as f64 }
    }

    /// Checks the ring invariants over every live node that is in the ring protocol (members, and
    /// nodes whose join is done but whose successor's acknowledgement is still in flight).
    pub fn check_invariants(&self) -> InvariantReport {
        let in_ring = |index: usize| self.nodes[index].alive && self.nodes[index].node.is_member();
        let by_id: BTreeMap<Id, usize> =
            (0..self.nodes.len()).filter(|&i| in_ring(i)).map(|i| (self.nodes[i].node.me().id, i)).collect();
        let best: BTreeMap<Id, Option<Id>> = by_id
            .iter()
            .map(|(id, &index)| {
                let node = &self.nodes[index].node;
                let next = if node.successors().is_empty() {
                    Some(*id)
                } else {
                    node.successors().iter().find(|s| by_id.contains_key(&s.id)).map(|s| s.id)
                };
                (*id, next)
            })
            .collect();
        check_invariants(&best)
    }
}
