//! Supernodes and leaves (issue 13), sans-IO: a directory of supernodes on the ring, a supernode's
//! admission of leaves under a hard cap, and a leaf's attachment, failover and backoff.
//!
//! # Roles
//! - A *node* is a ring member. Every ring member runs a [`Directory`] for the directory shards
//!   it holds.
//! - A *supernode* is a ring member that also runs a [`Host`]: it accepts up to `max_leaves`
//!   leaves, limits each one's rate, answers their heartbeats, carries their operations into the
//!   ring ([`HostEvent::Forward`] → [`Host::reply`]) and advertises itself and its load in the
//!   directory.
//! - A *leaf* is not a ring member. It runs a [`Leaf`]: attached to one supernode, with a warm
//!   standby, and it reaches the ring only through its supernode.
//!
//! # What this module owns
//! - [`wire`]: the messages ([`SuperMessage`]: one-way, with request ids), caps, validation and
//!   CBOR encoding;
//! - [`directory`]: the directory shards a ring member holds;
//! - [`host`]: the supernode's side;
//! - [`leaf`]: the leaf's side.
//!
//! # The directory
//! Supernodes are listed in [`wire::DIRECTORY_SHARDS`] shards; supernode `s` advertises in shard
//! `shard_of(s)` (from its ring id, which it cannot choose), held by the successor of
//! `shard_key(shard)` = SHA-1(`"supernodes/"` + shard). An entry is soft state: the supernode's
//! address (the authenticated sender) and its load (leaves / cap), renewed every
//! `advertise_interval` and expiring after `advertise_ttl`; a crashed supernode disappears by
//! itself, a moved shard refills within one period. Sharding keeps any one ring member from
//! holding (and being asked about) every supernode. Supernodes read random shards into a small
//! cache; leaves learn alternatives from their supernode (`Alternatives`) and from refusals,
//! never from the ring directly. Lists are drawn at random weighted by free slots, so that
//! leaves choosing at the same moment spread out.
//!
//! # Overload safety (the Skype outage of December 2010)
//! Losing supernodes must not push the survivors over their caps, whatever the leaves do:
//! - the cap is hard: [`Host`] checks it before every admission and nothing else adds a leaf;
//! - a full supernode refuses with alternatives (a redirect), at the cost of one small message;
//! - attaches and probes from strangers go through one token bucket per supernode: a flood is
//!   refused `Busy`, its cost bounded;
//! - leaves spread their failover over `failover_jitter`, choose by free slots (not "the best"),
//!   and after a few refusals in a row back off exponentially with jitter, so that leaves left
//!   without room retry ever more slowly and never in step.
//!
//! # Driving it
//! Like the ring core: `handle_message(from, message, now)` for input (the driver routes
//! `Advertise` and `Query` to the [`Directory`], everything else to the [`Host`] or [`Leaf`];
//! [`SuperMessage::is_for_directory`] says which), `handle_timeout(now)` when `poll_timeout`
//! says, and drain `poll_transmit` and `poll_event`. A [`Host`] also asks the driver to look up
//! the holder of a shard ([`Host::poll_lookup`] → ring lookup → [`Host::handle_owner`]). A message
//! a node addresses to itself (a supernode that holds its own shard) must be looped back.
//!
//! # Invariants
//! - A [`Host`] never holds more than `max_leaves` leaves.
//! - Every map and queue is bounded (leaves by the cap, caches and candidates by the config,
//!   requests by their deadlines, forwarded operations by `max_pending_ops`).
//! - Answers are taken only from the peer asked, with the id it was asked under; anything
//!   malformed, oversized, unexpected or from the wrong peer is dropped and counted
//!   ([`SuperCounters::dropped`]), never a panic.
//! - Deterministic: ordered maps, randomness only from generators seeded at construction.

pub mod directory;
pub mod host;
pub mod leaf;
#[cfg(test)]
mod tests;
pub mod wire;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

pub use self::directory::{Directory, holds_shard};
pub use self::host::{DetachReason, Host, HostConfig, HostEvent};
pub use self::leaf::{Leaf, LeafConfig, LeafEvent, OpError};
pub use self::wire::{LeafOpId, Load, OpRefusal, Refusal, SuperMessage, SupernodeInfo};

use crate::time::Time;

/// Counters of a [`Host`], [`Leaf`] or [`Directory`], monotonic; each uses the ones that apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SuperCounters {
    /// Messages dropped: malformed, over a cap, unexpected, unknown request ids, wrong sender.
    pub dropped: u64,
    /// Host: messages refused or ignored over a rate limit (a leaf's or the strangers').
    pub throttled: u64,
    /// Host: attaches refused `Full`; leaf: refusals received; directory: adverts refused.
    pub refusals: u64,
    /// Host: leaves admitted; leaf: attachments made.
    pub attached: u64,
    /// Host: leaves dropped for silence.
    pub leaf_timeouts: u64,
    /// Host: operations handed to the driver.
    pub forwarded: u64,
    /// Host: replies for leaves that had moved on.
    pub replies_dropped: u64,
    /// Host: directory requests that went unanswered.
    pub request_timeouts: u64,
    /// Leaf: supernodes lost (silent, unreachable or forgetful).
    pub failovers: u64,
    /// Leaf: heartbeats that went unanswered before a loss.
    pub heartbeats_missed: u64,
    /// Leaf: attaches that went unanswered.
    pub attach_timeouts: u64,
    /// Leaf: refusals followed to another candidate.
    pub redirects: u64,
    /// Leaf: backoffs.
    pub backoffs: u64,
    /// Leaf: operations resent after an attach.
    pub resent: u64,
}

impl<A> SuperMessage<A> {
    /// Whether the message is for the [`Directory`] (`Advertise`, `Query`) rather than a
    /// [`Host`] or [`Leaf`].
    pub fn is_for_directory(&self) -> bool {
        matches!(self, SuperMessage::Advertise { .. } | SuperMessage::Query { .. })
    }
}

/// A token bucket in thousandths of a token, so that refill needs no floating point.
#[derive(Clone, Debug)]
pub(crate) struct Bucket {
    milli: u64,
    last: Time,
    rate: u32,
    burst: u32,
}

impl Bucket {
    /// A full bucket refilled at `rate` tokens per second up to `burst`.
    pub(crate) fn new(rate: u32, burst: u32, now: Time) -> Self {
        Bucket { milli: u64::from(burst) * 1000, last: now, rate, burst }
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self, now: Time) -> bool {
        let elapsed = now.as_micros().saturating_sub(self.last.as_micros());
        self.last = self.last.max(now);
        let refill = elapsed.saturating_mul(u64::from(self.rate)) / 1000;
        self.milli = self.milli.saturating_add(refill).min(u64::from(self.burst) * 1000);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// Up to `limit` of `candidates`, drawn without replacement with probability proportional to
/// their free slots (full ones never).
pub(crate) fn sample_by_free<A>(
    rng: &mut ChaCha8Rng,
    mut candidates: Vec<SupernodeInfo<A>>,
    limit: usize,
) -> Vec<SupernodeInfo<A>> {
    candidates.retain(|c| !c.load.is_full());
    let mut out = Vec::with_capacity(limit.min(candidates.len()));
    while out.len() < limit && !candidates.is_empty() {
        let total: u64 = candidates.iter().map(|c| u64::from(c.load.free())).sum();
        let mut pick = rng.random_range(0..total);
        let index = candidates
            .iter()
            .position(|c| {
                let free = u64::from(c.load.free());
                if pick < free {
                    true
                } else {
                    pick -= free;
                    false
                }
            })
            .expect("pick < total, the sum of the weights");
        out.push(candidates.swap_remove(index));
    }
    out
}
