//! What this node knows, from its own routing state alone, about who owns which ids: ownership,
//! next hops for messages routed hop by hop, replica sets, the nodes closest before a target, and a
//! cache of ranges that owners vouched for in lookups.
//!
//! Nothing here sends a message. Invariants:
//! - `closest_preceding` returns only nodes strictly between this node and the target, each once,
//!   closest to the target first;
//! - the range cache holds at most `MAX_CACHED_RANGES` entries, never this node as an owner; an
//!   expired entry is never used, and entries naming a node found unreachable are dropped.

use std::collections::BTreeMap;

use crate::address::{Address, NodeRef};
use crate::id::Id;
use crate::time::Time;

use super::Node;

/// Ranges (predecessor, owner] recently vouched for by their owners in lookups, keyed by owner id;
/// at most [`MAX_CACHED_RANGES`] of them.
#[derive(Debug)]
pub(super) struct RangeCache<A> {
    ranges: BTreeMap<Id, CachedRange<A>>,
}

/// A range some owner vouched for in a lookup: keys in (start, owner.id] are its.
#[derive(Clone, Debug)]
struct CachedRange<A> {
    start: Id,
    owner: NodeRef<A>,
    successors: Vec<NodeRef<A>>,
    expires: Time,
}

/// Most ranges remembered.
const MAX_CACHED_RANGES: usize = 4096;

impl<A: Address> RangeCache<A> {
    pub(super) fn new() -> Self {
        RangeCache { ranges: BTreeMap::new() }
    }

    /// The owner of `key` and the nodes after it, up to `n`, from an unexpired range holding `key`.
    fn replicas(&self, key: &Id, n: usize, now: Time) -> Option<Vec<NodeRef<A>>> {
        let (_, entry) = self.ranges.range(key..).next().or_else(|| self.ranges.iter().next())?;
        (entry.expires > now && key.in_open_closed(&entry.start, &entry.owner.id)).then(|| {
            std::iter::once(entry.owner.clone()).chain(entry.successors.iter().cloned()).take(n).collect()
        })
    }

    /// Forgets the ranges that involve `addr`.
    fn forget(&mut self, addr: &A) {
        self.ranges.retain(|_, e| &e.owner.addr != addr && !e.successors.iter().any(|s| &s.addr == addr));
    }

    /// Remembers that `owner` owns (start, owner] until `expires`, unless the cache is full
    /// even after dropping what expired by `now`.
    fn insert(
        &mut self,
        start: &Id,
        owner: &NodeRef<A>,
        successors: &[NodeRef<A>],
        expires: Time,
        now: Time,
    ) {
        if self.ranges.len() >= MAX_CACHED_RANGES {
            self.ranges.retain(|_, e| e.expires > now);
            if self.ranges.len() >= MAX_CACHED_RANGES {
                return;
            }
        }
        let entry =
            CachedRange { start: *start, owner: owner.clone(), successors: successors.to_vec(), expires };
        self.ranges.insert(owner.id, entry);
    }
}

impl<A: Address> Node<A> {
    /// Whether this node believes it owns `key`: key ∈ (predecessor, me], or it is alone.
    pub fn owns(&self, key: &Id) -> bool {
        if self.successors.is_empty() {
            return self.is_member() && !self.rejoining;
        }
        self.predecessor.as_ref().is_some_and(|p| key.in_open_closed(&p.id, &self.me.id))
    }

    /// The next hop of a message routed hop by hop toward the owner of `target` (used by
    /// multicast trees): `None` when this node owns `target` (or knows no other node), else the
    /// owner itself when `target` falls within the successor list, else the known node closest
    /// before `target` (fingers, successors, predecessor), else the successor. Local knowledge
    /// only; nothing is sent and no state changes.
    pub fn next_hop(&self, target: &Id) -> Option<NodeRef<A>> {
        self.next_hops(target, 1).into_iter().next()
    }

    /// Up to `k` candidates for [`Node::next_hop`], best first, so that a caller that suspects one
    /// of them to be dead can fall back to the next. Empty when this node owns `target`.
    pub fn next_hops(&self, target: &Id, k: usize) -> Vec<NodeRef<A>> {
        if self.owns(target) || k == 0 {
            return Vec::new();
        }
        let mut prev = self.me.id;
        for (i, node) in self.successors.iter().enumerate() {
            if target.in_open_closed(&prev, &node.id) {
                // The owner is in the list: it first, then the nodes after it.
                return self.successors[i..].iter().take(k).cloned().collect();
            }
            prev = node.id;
        }
        let mut hops = self.closest_preceding(target, k);
        if hops.len() < k
            && let Some(successor) = self.successors.first()
            && !hops.iter().any(|h| h.addr == successor.addr)
        {
            hops.push(successor.clone());
        }
        hops
    }

    /// The replica set of `key` of size up to `n` — its owner and the next n − 1 successors — if
    /// local knowledge determines it: when this node owns the key, or the key falls inside this
    /// node's successor list. Shorter than `n` when the ring is smaller than `n`, or when the owner
    /// sits near the end of a full successor list (what follows it is not known here); callers that
    /// need all `n` should then look the key up. `None` means a lookup is needed.
    pub fn replica_set(&self, key: &Id, n: usize) -> Option<Vec<NodeRef<A>>> {
        if !self.is_member() || n == 0 {
            return None;
        }
        if self.owns(key) {
            return Some(
                std::iter::once(self.me.clone()).chain(self.successors.iter().cloned()).take(n).collect(),
            );
        }
        // A list shorter than r holds the whole ring: after its last entry comes this node again.
        // A full list says nothing about what follows its last entry.
        let whole_ring = self.successors.len() < self.config.successors.get();
        let mut prev = self.me.id;
        for (k, node) in self.successors.iter().enumerate() {
            if key.in_open_closed(&prev, &node.id) {
                let mut set: Vec<NodeRef<A>> = self.successors[k..].iter().take(n).cloned().collect();
                if whole_ring {
                    // Round the ring: this node, then the list's first entries.
                    let wrapped = std::iter::once(&self.me).chain(&self.successors[..k]);
                    set.extend(wrapped.take(n - set.len()).cloned());
                }
                return Some(set);
            }
            prev = node.id;
        }
        None
    }

    /// The replica set of `key` of size `n` without a lookup, if this node knows it: from its own
    /// successor list ([`Node::replica_set`]) or from a range an owner vouched for in a lookup
    /// within [`Config::lookup_cache_ttl`](crate::Config::lookup_cache_ttl). May be stale by up to
    /// that long; callers that write or read through quorums tolerate that, and entries naming a
    /// node found unreachable are dropped.
    pub fn cached_replicas(&self, key: &Id, n: usize, now: Time) -> Option<Vec<NodeRef<A>>> {
        let known = self.replica_set(key, n).filter(|set| set.len() >= n.min(self.successors.len() + 1));
        if known.is_some() {
            return known;
        }
        self.range_cache.replicas(key, n, now)
    }

    /// Forgets cached ranges that involve `addr` (the driver found it unreachable).
    pub fn forget_cached(&mut self, addr: &A) {
        self.range_cache.forget(addr);
    }

    /// Caches (start, owner] with the owner's successors; `start` is what the lookup verified
    /// ([`crate::lookup::Lookup::verified_start`]), never just what the owner claimed.
    pub(super) fn remember_range(
        &mut self,
        start: &Id,
        owner: &NodeRef<A>,
        successors: &[NodeRef<A>],
        now: Time,
    ) {
        if self.config.lookup_cache_ttl.is_zero() || owner.addr == self.me.addr {
            return;
        }
        let expires = now + self.config.lookup_cache_ttl;
        self.range_cache.insert(start, owner, successors, expires, now);
    }

    /// Up to `k` known nodes strictly between this node and `target`, closest to `target` first.
    pub(super) fn closest_preceding(&self, target: &Id, k: usize) -> Vec<NodeRef<A>> {
        let mut found: Vec<(Id, &NodeRef<A>)> = Vec::with_capacity(2 * k);
        let candidates = self.fingers.distinct().chain(self.successors.iter()).chain(self.predecessor.iter());
        for node in candidates {
            if !node.id.in_open(&self.me.id, target) {
                continue;
            }
            let d = node.id.distance_to(target);
            if found.iter().any(|(_, n)| n.addr == node.addr) {
                continue;
            }
            let at = found.partition_point(|(fd, _)| *fd < d);
            if at < k {
                found.insert(at, (d, node));
                found.truncate(k);
            }
        }
        found.into_iter().map(|(_, n)| n.clone()).collect()
    }
}
