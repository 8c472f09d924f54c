//! The directory of supernodes, as one ring member holds it: entries for the shards whose key
//! it succeeds.
//!
//! # What this module owns
//! [`Directory`] is run by every ring member beside its [`Node`]: it answers `Advertise` (list
//! this supernode with this load until its time-to-live runs out) and `Query` (some supernodes
//! of a shard with free slots) for the shards this node holds, that is, whose
//! [`shard_key`](super::wire::shard_key) lies in (predecessor, me]. It reads the ring only to
//! decide that ([`holds_shard`]); it never sends a ring message.
//!
//! # Invariants
//! - A supernode lists only itself: the entry's address is the authenticated sender's.
//! - Each shard holds at most [`MAX_ENTRIES_PER_SHARD`] entries and every entry expires; an
//!   entry nobody renews disappears within [`MAX_TTL_MS`](super::wire::MAX_TTL_MS).
//! - Listings hold only supernodes with free slots, drawn at random weighted by free slots, so
//!   that leaves asking at the same moment (a mass failover) spread instead of all choosing the
//!   least-loaded supernode and overrunning it.
//! - A shard moves with its key: after a ring change the new holder starts empty and fills
//!   within one advertisement period; nothing is handed over (entries are soft state).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::wire::{DIRECTORY_SHARDS, Load, MAX_LISTING, SuperMessage, SupernodeInfo, shard_key};
use super::{SuperCounters, sample_by_free};
use crate::address::Address;
use crate::node::Node;
use crate::time::Time;

/// Most entries one shard holds on one node.
pub const MAX_ENTRIES_PER_SHARD: usize = 4096;

/// Whether `ring`'s node holds directory shard `shard` (its key lies in (predecessor, me]); a node
/// that knows no predecessor holds it only while it is alone.
pub fn holds_shard<A: Address>(ring: &Node<A>, shard: u8) -> bool {
    let me = ring.me().id;
    match ring.predecessor() {
        Some(pred) => shard_key(shard).in_open_closed(&pred.id, &me),
        None => ring.successors().is_empty() || ring.successor().id == me,
    }
}

#[derive(Clone, Debug)]
struct Entry {
    load: Load,
    expires: Time,
}

/// The directory shards one ring member holds.
#[derive(Debug)]
pub struct Directory<A: Address> {
    shards: BTreeMap<u8, BTreeMap<A, Entry>>,
    rng: ChaCha8Rng,
    transmits: VecDeque<(A, SuperMessage<A>)>,
    counters: SuperCounters,
}

impl<A: Address> Directory<A> {
    /// An empty directory; `seed` drives the sampling of listings.
    pub fn new(seed: u64) -> Self {
        Directory {
            shards: BTreeMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            transmits: VecDeque::new(),
            counters: SuperCounters::default(),
        }
    }

    /// Entries held (all shards, expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.shards.values().map(BTreeMap::len).sum()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The counters.
    pub fn counters(&self) -> &SuperCounters {
        &self.counters
    }

    /// A directory message from `from` (authenticated by the transport). `holds(shard)` says
    /// whether this node holds the shard now ([`holds_shard`] in a real node); messages that
    /// are not for a directory are dropped and counted.
    pub fn handle_message(
        &mut self,
        from: A,
        message: SuperMessage<A>,
        holds: impl Fn(u8) -> bool,
        now: Time,
    ) {
        if message.validate().is_err() {
            self.counters.dropped += 1;
            return;
        }
        match message {
            SuperMessage::Advertise { req, load, ttl_ms } => {
                let shard = super::wire::shard_of(&from);
                let accepted = holds(shard) && self.insert(shard, from.clone(), load, ttl_ms, now);
                if !accepted {
                    self.counters.refusals += 1;
                }
                self.transmits.push_back((from, SuperMessage::Advertised { req, accepted }));
            }
            SuperMessage::Query { req, shard, limit } => {
                let supernodes =
                    if holds(shard) { self.listing(shard, usize::from(limit), now) } else { Vec::new() };
                self.transmits.push_back((from, SuperMessage::Listing { req, supernodes }));
            }
            _ => self.counters.dropped += 1,
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<(A, SuperMessage<A>)> {
        self.transmits.pop_front()
    }

    fn insert(&mut self, shard: u8, addr: A, load: Load, ttl_ms: u32, now: Time) -> bool {
        debug_assert!(shard < DIRECTORY_SHARDS, "shard_of stays below DIRECTORY_SHARDS");
        let entries = self.shards.entry(shard).or_default();
        entries.retain(|_, entry| entry.expires > now);
        if !entries.contains_key(&addr) && entries.len() >= MAX_ENTRIES_PER_SHARD {
            return false;
        }
        let expires = now + Duration::from_millis(u64::from(ttl_ms));
        entries.insert(addr, Entry { load, expires });
        true
    }

    fn listing(&mut self, shard: u8, limit: usize, now: Time) -> Vec<SupernodeInfo<A>> {
        let Some(entries) = self.shards.get_mut(&shard) else {
            return Vec::new();
        };
        entries.retain(|_, entry| entry.expires > now);
        let candidates: Vec<SupernodeInfo<A>> = entries
            .iter()
            .filter(|(_, entry)| !entry.load.is_full())
            .map(|(addr, entry)| SupernodeInfo { addr: addr.clone(), load: entry.load })
            .collect();
        sample_by_free(&mut self.rng, candidates, limit.min(MAX_LISTING))
    }
}
