//! A supernode's side: admitting leaves up to a hard cap, their liveness and rate limits,
//! redirects, carrying their operations, and advertising itself in the directory.
//!
//! # What this module owns
//! One [`Host`] per supernode, beside its ring [`Node`](crate::node::Node):
//! - the attached leaves (at most `max_leaves`, never more: the cap is checked before every
//!   admission, and nothing else adds a leaf), each with a token bucket for what it sends and the
//!   time it was last heard; a leaf silent for `leaf_timeout` is dropped;
//! - one token bucket for strangers (attaches and probes from non-leaves), so an attach flood
//!   costs a bounded amount of work and is refused `Busy`, not admitted;
//! - a bounded cache of other supernodes and their loads, refreshed from the directory, from
//!   which refusals and `Alternatives` answers are drawn (weighted by free slots);
//! - its own directory entry: every `advertise_interval` it sends `Advertise` to the holder of
//!   its shard. The holder is found by a ring lookup the driver runs for it
//!   ([`Host::poll_lookup`] → [`Host::handle_owner`]), which keeps this module free of ring state.
//!
//! Operations a leaf forwards come out as [`HostEvent::Forward`]; the driver runs them on the
//! ring (the KV store, queues, chat — each de-duplicates by the leaf's op id) and hands the answer
//! back with [`Host::reply`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::wire::{
    ByteString, DIRECTORY_SHARDS, LeafOpId, Load, MAX_LISTING, OpRefusal, Refusal, SuperMessage,
    SupernodeInfo, shard_key, shard_of,
};
use super::{Bucket, SuperCounters, sample_by_free};
use crate::address::Address;
use crate::id::Id;
use crate::time::Time;

/// Settings of a supernode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// Most leaves attached at once; an attach beyond it is refused `Full` with alternatives.
    /// Default 256: 10,000 leaves over 100 supernodes is 100 each; losing 30 % of the supernodes
    /// needs 143 per survivor, and 256 leaves room for an uneven spread and for losing up to 60 %
    /// (10,000 / 40 = 250) before leaves are left out.
    pub max_leaves: u32,
    /// A leaf not heard from for this long is dropped. Default 5 s (five heartbeats).
    pub leaf_timeout: Duration,
    /// Messages per second one attached leaf may send (heartbeats included). Default 20.
    pub leaf_rate: u32,
    /// Burst of one leaf's bucket. Default 40.
    pub leaf_burst: u32,
    /// Attaches and probes per second from peers that are not leaves here. Default 200.
    pub stranger_rate: u32,
    /// Burst of the strangers' bucket. Default 400.
    pub stranger_burst: u32,
    /// How long a leaf refused `Full` should stay away. Default 5 s.
    pub full_retry: Duration,
    /// How long a leaf refused `Busy` should stay away. Default 1 s.
    pub busy_retry: Duration,
    /// Alternatives sent with a refusal. Default 8.
    pub refusal_alternatives: usize,
    /// How often this supernode renews its directory entry. Default 5 s (jittered by ±10 %).
    pub advertise_interval: Duration,
    /// Time-to-live of the directory entry. Default 15 s (three advertisements).
    pub advertise_ttl: Duration,
    /// How often a directory shard is read into the cache of alternatives. Default 5 s.
    pub refresh_interval: Duration,
    /// Supernodes remembered in the cache. Default 64.
    pub max_cached: usize,
    /// A cached supernode not seen in a listing for this long is forgotten. Default 30 s.
    pub cache_ttl: Duration,
    /// How long to wait for a directory holder's answer. Default 2 s.
    pub request_timeout: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            max_leaves: 256,
            leaf_timeout: Duration::from_secs(5),
            leaf_rate: 20,
            leaf_burst: 40,
            stranger_rate: 200,
            stranger_burst: 400,
            full_retry: Duration::from_secs(5),
            busy_retry: Duration::from_secs(1),
            refusal_alternatives: 8,
            advertise_interval: Duration::from_secs(5),
            advertise_ttl: Duration::from_secs(15),
            refresh_interval: Duration::from_secs(5),
            max_cached: 64,
            cache_ttl: Duration::from_secs(30),
            request_timeout: Duration::from_secs(2),
        }
    }
}

impl HostConfig {
    /// The same settings with `max_leaves` set.
    pub fn with_max_leaves(self, max_leaves: u32) -> Self {
        HostConfig { max_leaves, ..self }
    }
}

/// Why a leaf is no longer attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetachReason {
    /// It said so.
    Left,
    /// It was silent for `leaf_timeout`.
    TimedOut,
}

/// What a supernode reports to the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostEvent<A> {
    /// A leaf attached.
    LeafAttached {
        /// The leaf.
        leaf: A,
    },
    /// A leaf is gone.
    LeafDetached {
        /// The leaf.
        leaf: A,
        /// Why.
        reason: DetachReason,
    },
    /// A leaf asks for an operation on the ring; answer with [`Host::reply`]. A retried
    /// operation (after a time-out or a supernode switch) comes again with the same `op`.
    Forward {
        /// The leaf.
        leaf: A,
        /// Its operation id.
        op: LeafOpId,
        /// The operation, opaque here.
        payload: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
struct LeafSlot {
    last_seen: Time,
    bucket: Bucket,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Advertise,
    Query(u8),
}

#[derive(Clone, Debug)]
struct Pending<A> {
    to: A,
    purpose: Purpose,
    deadline: Time,
}

/// What the supernode wants from a shard's holder once it knows who that is.
#[derive(Clone, Copy, Debug, Default)]
struct Wants {
    advertise: bool,
    query: bool,
}

/// A supernode's admission, leaves and directory entry.
#[derive(Debug)]
pub struct Host<A: Address> {
    me: A,
    config: HostConfig,
    rng: ChaCha8Rng,
    leaves: BTreeMap<A, LeafSlot>,
    strangers: Bucket,
    /// Other supernodes: load and when a listing last named them.
    cache: BTreeMap<A, (Load, Time)>,
    /// Who holds each directory shard, as far as a lookup said.
    owners: BTreeMap<u8, A>,
    wants: BTreeMap<u8, Wants>,
    /// Shards whose holder the driver should look up; `looking` avoids asking twice.
    lookups: VecDeque<Id>,
    looking: BTreeSet<u8>,
    pending: BTreeMap<u64, Pending<A>>,
    next_req: u64,
    next_advertise: Time,
    next_refresh: Time,
    next_sweep: Time,
    transmits: VecDeque<(A, SuperMessage<A>)>,
    events: VecDeque<HostEvent<A>>,
    counters: SuperCounters,
    peak_leaves: u32,
}

/// How often silent leaves are looked for.
const SWEEP: Duration = Duration::from_millis(500);

impl<A: Address> Host<A> {
    /// The supernode at `me`; `seed` drives jitter and sampling. It advertises itself at once.
    pub fn new(me: A, config: HostConfig, seed: u64, now: Time) -> Self {
        let strangers = Bucket::new(config.stranger_rate, config.stranger_burst, now);
        Host {
            me,
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            leaves: BTreeMap::new(),
            strangers,
            cache: BTreeMap::new(),
            owners: BTreeMap::new(),
            wants: BTreeMap::new(),
            lookups: VecDeque::new(),
            looking: BTreeSet::new(),
            pending: BTreeMap::new(),
            next_req: 1,
            next_advertise: now,
            next_refresh: now,
            next_sweep: now + SWEEP,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: SuperCounters::default(),
            peak_leaves: 0,
        }
    }

    // ----- getters --------------------------------------------------------------------------

    /// This supernode's address.
    pub fn me(&self) -> &A {
        &self.me
    }

    /// The configuration.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// The load now.
    pub fn load(&self) -> Load {
        Load { leaves: self.leaves.len() as u32, cap: self.config.max_leaves }
    }

    /// The most leaves ever attached at once.
    pub fn peak_leaves(&self) -> u32 {
        self.peak_leaves
    }

    /// Whether `leaf` is attached.
    pub fn is_attached(&self, leaf: &A) -> bool {
        self.leaves.contains_key(leaf)
    }

    /// Other supernodes known from the directory.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// The counters.
    pub fn counters(&self) -> &SuperCounters {
        &self.counters
    }

    // ----- input ----------------------------------------------------------------------------

    /// A supernode message from `from` (authenticated by the transport). Directory messages
    /// (`Advertise`, `Query`) belong to [`Directory`](super::Directory), not here.
    pub fn handle_message(&mut self, from: A, message: SuperMessage<A>, now: Time) {
        if message.validate().is_err() {
            self.counters.dropped += 1;
            return;
        }
        if let Some(slot) = self.leaves.get_mut(&from) {
            // A leaf over its rate is not answered at all: its heartbeats then fail too, which is
            // what a leaf that floods deserves.
            if !slot.bucket.take(now) {
                self.counters.throttled += 1;
                if let SuperMessage::Forward { op, .. } = message {
                    self.send(from, SuperMessage::Reply { op, result: Err(OpRefusal::Throttled) });
                }
                return;
            }
            slot.last_seen = now;
        } else if matches!(
            message,
            SuperMessage::Attach { .. }
                | SuperMessage::Ping { .. }
                | SuperMessage::Alternatives { .. }
                | SuperMessage::Forward { .. }
        ) && !self.strangers.take(now)
        {
            self.counters.throttled += 1;
            if let SuperMessage::Attach { req } = message {
                self.refuse(from, req, Refusal::Busy);
            }
            return;
        }
        match message {
            SuperMessage::Attach { req } => self.on_attach(from, req, now),
            SuperMessage::Ping { req } => {
                let attached = self.leaves.contains_key(&from);
                let load = self.load();
                self.send(from, SuperMessage::Pong { req, attached, load });
            }
            SuperMessage::Detach { .. } => {
                if self.leaves.remove(&from).is_some() {
                    self.events.push_back(HostEvent::LeafDetached { leaf: from, reason: DetachReason::Left });
                }
            }
            SuperMessage::Alternatives { req } => {
                let supernodes = self.alternatives(&from, MAX_LISTING / 2, now);
                self.send(from, SuperMessage::Listing { req, supernodes });
            }
            SuperMessage::Forward { op, payload } => {
                if self.leaves.contains_key(&from) {
                    self.counters.forwarded += 1;
                    self.events.push_back(HostEvent::Forward { leaf: from, op, payload });
                } else {
                    self.send(from, SuperMessage::Reply { op, result: Err(OpRefusal::NotAttached) });
                }
            }
            SuperMessage::Listing { req, supernodes } => self.on_listing(from, req, supernodes, now),
            SuperMessage::Advertised { req, accepted } => self.on_advertised(from, req, accepted, now),
            _ => self.counters.dropped += 1,
        }
    }

    /// The driver's lookup of `key` (from [`Host::poll_lookup`]) found `owner` (`None`: failed).
    pub fn handle_owner(&mut self, key: Id, owner: Option<A>, now: Time) {
        let Some(shard) = (0..DIRECTORY_SHARDS).find(|&s| shard_key(s) == key) else {
            self.counters.dropped += 1;
            return;
        };
        self.looking.remove(&shard);
        let wants = self.wants.remove(&shard).unwrap_or_default();
        let Some(owner) = owner else {
            return;
        };
        self.owners.insert(shard, owner.clone());
        if wants.advertise {
            self.send_advertise(owner.clone(), now);
        }
        if wants.query {
            self.send_query(owner, shard, now);
        }
    }

    /// Time has come (see [`Host::poll_timeout`]).
    pub fn handle_timeout(&mut self, now: Time) {
        let expired: Vec<u64> =
            self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(r, _)| *r).collect();
        for req in expired {
            if let Some(pending) = self.pending.remove(&req) {
                // The holder we knew did not answer: it crashed or the shard moved; look again.
                let shard = match pending.purpose {
                    Purpose::Advertise => shard_of(&self.me),
                    Purpose::Query(shard) => shard,
                };
                if self.owners.get(&shard) == Some(&pending.to) {
                    self.owners.remove(&shard);
                }
                self.counters.request_timeouts += 1;
            }
        }
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP;
            let timeout = self.config.leaf_timeout;
            let silent: Vec<A> = self
                .leaves
                .iter()
                .filter(|(_, slot)| slot.last_seen + timeout <= now)
                .map(|(leaf, _)| leaf.clone())
                .collect();
            for leaf in silent {
                self.leaves.remove(&leaf);
                self.counters.leaf_timeouts += 1;
                self.events.push_back(HostEvent::LeafDetached { leaf, reason: DetachReason::TimedOut });
            }
            let ttl = self.config.cache_ttl;
            self.cache.retain(|_, (_, seen)| *seen + ttl > now);
        }
        if now >= self.next_advertise {
            self.next_advertise = now + self.jittered(self.config.advertise_interval);
            let shard = shard_of(&self.me);
            match self.owners.get(&shard).cloned() {
                Some(owner) => self.send_advertise(owner, now),
                None => self.want(shard, Wants { advertise: true, query: false }),
            }
        }
        if now >= self.next_refresh {
            self.next_refresh = now + self.jittered(self.config.refresh_interval);
            let shard = self.rng.random_range(0..DIRECTORY_SHARDS);
            match self.owners.get(&shard).cloned() {
                Some(owner) => self.send_query(owner, shard, now),
                None => self.want(shard, Wants { advertise: false, query: true }),
            }
        }
    }

    // ----- commands -------------------------------------------------------------------------

    /// Hands `leaf` the ring's answer to its operation `op`. A leaf that moved on gets nothing:
    /// it resends through its new supernode, under the same id.
    pub fn reply(&mut self, leaf: A, op: LeafOpId, result: Result<Vec<u8>, OpRefusal>) {
        if !self.leaves.contains_key(&leaf) {
            self.counters.replies_dropped += 1;
            return;
        }
        self.send(leaf, SuperMessage::Reply { op, result: result.map(ByteString) });
    }

    // ----- output ---------------------------------------------------------------------------

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<(A, SuperMessage<A>)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<HostEvent<A>> {
        self.events.pop_front()
    }

    /// The next ring key whose owner the driver should look up and report with
    /// [`Host::handle_owner`].
    pub fn poll_lookup(&mut self) -> Option<Id> {
        self.lookups.pop_front()
    }

    /// When [`Host::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Time> {
        let pending = self.pending.values().map(|p| p.deadline).min();
        [Some(self.next_advertise), Some(self.next_refresh), Some(self.next_sweep), pending]
            .into_iter()
            .flatten()
            .min()
    }

    // ----- plumbing -------------------------------------------------------------------------

    fn on_attach(&mut self, from: A, req: u64, now: Time) {
        if self.leaves.contains_key(&from) {
            let load = self.load();
            self.send(from, SuperMessage::Attached { req, load });
            return;
        }
        // The hard cap: the only place a leaf is added, and it checks first.
        if self.leaves.len() as u32 >= self.config.max_leaves {
            self.counters.refusals += 1;
            self.refuse(from, req, Refusal::Full);
            return;
        }
        let bucket = Bucket::new(self.config.leaf_rate, self.config.leaf_burst, now);
        self.leaves.insert(from.clone(), LeafSlot { last_seen: now, bucket });
        self.peak_leaves = self.peak_leaves.max(self.leaves.len() as u32);
        self.counters.attached += 1;
        let load = self.load();
        self.send(from.clone(), SuperMessage::Attached { req, load });
        self.events.push_back(HostEvent::LeafAttached { leaf: from });
    }

    fn refuse(&mut self, to: A, req: u64, reason: Refusal) {
        let retry = match reason {
            Refusal::Full => self.config.full_retry,
            Refusal::Busy => self.config.busy_retry,
        };
        let alternatives = self.alternatives(&to, self.config.refusal_alternatives, Time::ZERO);
        let retry_after_ms = u32::try_from(retry.as_millis()).unwrap_or(u32::MAX);
        self.send(to, SuperMessage::Refused { req, reason, retry_after_ms, alternatives });
    }

    /// Up to `limit` cached supernodes with free slots, not `asker`, drawn by free slots.
    fn alternatives(&mut self, asker: &A, limit: usize, _now: Time) -> Vec<SupernodeInfo<A>> {
        let candidates: Vec<SupernodeInfo<A>> = self
            .cache
            .iter()
            .filter(|(addr, (load, _))| *addr != asker && !load.is_full())
            .map(|(addr, (load, _))| SupernodeInfo { addr: addr.clone(), load: *load })
            .collect();
        sample_by_free(&mut self.rng, candidates, limit.min(MAX_LISTING))
    }

    fn on_listing(&mut self, from: A, req: u64, supernodes: Vec<SupernodeInfo<A>>, now: Time) {
        if !self.take_pending(&from, req, |p| matches!(p, Purpose::Query(_))) {
            return;
        }
        for info in supernodes {
            if info.addr == self.me {
                continue;
            }
            self.cache.insert(info.addr, (info.load, now));
        }
        while self.cache.len() > self.config.max_cached {
            let oldest = self.cache.iter().min_by_key(|(_, (_, seen))| *seen).map(|(addr, _)| addr.clone());
            let Some(oldest) = oldest else { break };
            self.cache.remove(&oldest);
        }
    }

    fn on_advertised(&mut self, from: A, req: u64, accepted: bool, now: Time) {
        if !self.take_pending(&from, req, |p| p == Purpose::Advertise) {
            return;
        }
        if !accepted {
            // The holder we knew no longer holds our shard: look it up again, soon.
            self.owners.remove(&shard_of(&self.me));
            self.next_advertise = self.next_advertise.min(now + Duration::from_millis(500));
        }
    }

    /// Removes the request `req` if it went to `from` and is of the expected kind; counts a drop
    /// otherwise (an unknown id, a wrong sender: a stale or hostile answer).
    fn take_pending(&mut self, from: &A, req: u64, kind: impl Fn(Purpose) -> bool) -> bool {
        match self.pending.get(&req) {
            Some(p) if &p.to == from && kind(p.purpose) => {
                self.pending.remove(&req);
                true
            }
            _ => {
                self.counters.dropped += 1;
                false
            }
        }
    }

    fn want(&mut self, shard: u8, add: Wants) {
        let wants = self.wants.entry(shard).or_default();
        wants.advertise |= add.advertise;
        wants.query |= add.query;
        if self.looking.insert(shard) {
            self.lookups.push_back(shard_key(shard));
        }
    }

    fn send_advertise(&mut self, owner: A, now: Time) {
        let req = self.fresh_req();
        let ttl_ms = u32::try_from(self.config.advertise_ttl.as_millis())
            .unwrap_or(u32::MAX)
            .min(super::wire::MAX_TTL_MS);
        let deadline = now + self.config.request_timeout;
        self.pending.insert(req, Pending { to: owner.clone(), purpose: Purpose::Advertise, deadline });
        let load = self.load();
        self.send(owner, SuperMessage::Advertise { req, load, ttl_ms });
    }

    fn send_query(&mut self, owner: A, shard: u8, now: Time) {
        let req = self.fresh_req();
        let deadline = now + self.config.request_timeout;
        self.pending.insert(req, Pending { to: owner.clone(), purpose: Purpose::Query(shard), deadline });
        self.send(owner, SuperMessage::Query { req, shard, limit: MAX_LISTING as u8 });
    }

    fn fresh_req(&mut self) -> u64 {
        let req = self.next_req;
        self.next_req += 1;
        req
    }

    /// `period` ± 10 %, so that supernodes started together do not advertise in lock step.
    fn jittered(&mut self, period: Duration) -> Duration {
        let micros = u64::try_from(period.as_micros()).unwrap_or(u64::MAX).max(10);
        let spread = micros / 10;
        Duration::from_micros(micros - spread + self.rng.random_range(0..=2 * spread))
    }

    fn send(&mut self, to: A, message: SuperMessage<A>) {
        self.transmits.push_back((to, message));
    }
}
