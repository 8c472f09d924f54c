//! Ring unification (see "Ring unification" in the docs of [`super`]): probing the passive list
//! of peers declared dead, and weaving the members of another ring into this one through
//! [`Request::Merge`] (`place`).
//!
//! The list itself (bounded, backed off, expiring) is `crate::passive::PassiveList`; this file
//! decides when to probe it and what an answer means. Invariants:
//! - a probe is sent once, never resent, and at most one per peer is in flight;
//! - the whole passive list is probed at once at most once per probe interval (`last_burst`);
//! - a merge request carries a hop count and is dropped once that passes `MAX_MERGE_HOPS`, and at
//!   most `MAX_MERGE_LOOKUPS` lookups place nodes at once; whatever exceeds either is dropped and
//!   counted;
//! - a node of another ring becomes successor only through its answer to a probe (stabilize's
//!   rule); a node already our predecessor or in our successor list ends the exchange at once.
//! - at most `MERGE_REQUESTS_PER_WINDOW` merge requests received per probe interval are acted upon;
//!   the rest are acknowledged, counted (`merge_requests_limited`) and otherwise ignored, so that a
//!   hostile or broken peer cannot turn its requests into a storm of probes, merge requests and
//!   lookups (each request acted upon costs at most one message or one lookup of ours).

use rand::RngExt;
use tracing::debug;

use crate::address::{Address, NodeRef};
use crate::error::LookupError;
use crate::lookup::{Answer, Purpose as LookupPurpose};
use crate::message::{MAX_MERGE_HOPS, Request};
use crate::time::Time;

use super::{Node, Purpose};

/// Most merge requests received that one node acts upon per probe interval. A real merge needs
/// few per node: each request places one node, and the two rings' own probes and stabilization
/// weave in the rest; the limit only bounds what a flood can make this node do.
pub(crate) const MERGE_REQUESTS_PER_WINDOW: u32 = 16;

/// Most bootstrap peers a node keeps to probe after a loss (see `Node::add_bootstrap_peer`).
const MAX_BOOTSTRAP_PEERS: usize = 8;

/// Most lookups one node runs at once to place nodes of another ring; further merge requests that
/// need one are dropped (the other ring's own probes and stabilization find them later).
const MAX_MERGE_LOOKUPS: usize = 4;

impl<A: Address> Node<A> {
    /// Remembers `node`, just declared dead, in the passive list; if it is the first loss since
    /// the list was last empty, the bootstrap peers too (those not among our live neighbours):
    /// a partition may have taken them away, and they are the nodes this one was told to trust.
    pub(super) fn remember_dead(&mut self, node: NodeRef<A>, now: Time) {
        if node.addr == self.me.addr || self.config.passive_peers == 0 {
            return;
        }
        let first_loss = self.passive.is_empty();
        if first_loss {
            self.next_probe = now + self.probe_period();
        }
        self.passive.add(node, now, self.config.probe_interval);
        if first_loss {
            let bootstraps: Vec<NodeRef<A>> =
                self.bootstrap_peers.iter().filter(|b| !self.is_known_neighbour(&b.addr)).cloned().collect();
            for bootstrap in bootstraps {
                debug!(node = %self.me.id.short(), bootstrap = %bootstrap.id.short(), "a loss: remembering a bootstrap peer");
                self.passive.add(bootstrap, now, self.config.probe_interval);
            }
        }
    }

    /// See [`Node::add_bootstrap_peer`].
    pub(super) fn remember_bootstrap(&mut self, addr: A) {
        if addr == self.me.addr
            || self.bootstrap_peers.len() >= MAX_BOOTSTRAP_PEERS
            || self.bootstrap_peers.iter().any(|b| b.addr == addr)
        {
            return;
        }
        self.bootstrap_peers.push(NodeRef::new(addr));
    }

    /// The wait until the next probe: `probe_interval` plus up to as much again, drawn from this
    /// node's generator so that nodes that lost peers together do not probe in lock-step.
    pub(super) fn probe_period(&mut self) -> std::time::Duration {
        let base = self.config.probe_interval;
        let micros = u64::try_from(base.as_micros()).unwrap_or(u64::MAX).max(1);
        base + std::time::Duration::from_micros(self.rng.random_range(0..micros))
    }

    /// The periodic probe: the passive entry due earliest, if any.
    pub(super) fn probe_next(&mut self, now: Time) {
        self.passive.expire(now, self.config.passive_ttl);
        if let Some(node) = self.passive.take_due(now) {
            self.send_probe(node, now);
        }
    }

    /// A merge is under way: every remembered peer is probably reachable again, so probe them all
    /// now rather than one per period. At most once per probe period.
    fn merge_detected(&mut self, now: Time) {
        self.counters.merges_detected += 1;
        self.hurry_stabilize(now);
        if self.last_burst.is_some_and(|t| now < t + self.config.probe_interval) {
            return;
        }
        self.last_burst = Some(now);
        self.passive.expire(now, self.config.passive_ttl);
        for node in self.passive.take_all() {
            self.send_probe(node, now);
        }
    }

    /// Asks `node` for its neighbours, once (a lost probe waits for the next round).
    fn send_probe(&mut self, node: NodeRef<A>, now: Time) {
        let in_flight = self
            .pending
            .values()
            .any(|p| matches!(&p.purpose, Purpose::Probe { node: n } if n.addr == node.addr));
        if in_flight {
            return;
        }
        self.counters.probes_sent += 1;
        let to = node.addr.clone();
        let id = self.send_request(
            &to,
            Request::GetNeighbours { predecessors: Vec::new() },
            Purpose::Probe { node },
            now,
        );
        self.pending.get_mut(&id).expect("inserted just above").attempts_left = 0;
    }

    /// Tells `to` to weave in `candidate`, unless the request has been passed on too often.
    pub(super) fn send_merge(&mut self, to: &A, candidate: NodeRef<A>, hops: u8, now: Time) {
        if hops > MAX_MERGE_HOPS || *to == candidate.addr || *to == self.me.addr {
            self.counters.merge_requests_dropped += 1;
            return;
        }
        self.counters.merge_requests_sent += 1;
        self.send_request(to, Request::Merge { candidate, hops }, Purpose::Merge, now);
    }

    /// A probed peer (from the passive list, or a merge candidate) answered as a ring member.
    pub(super) fn on_probe_answered(
        &mut self,
        node: NodeRef<A>,
        predecessor: Option<NodeRef<A>>,
        successors: Vec<NodeRef<A>>,
        now: Time,
    ) {
        self.passive.remove(&node.addr);
        self.counters.probes_answered += 1;
        if !self.is_member() || self.is_known_neighbour(&node.addr) {
            // A false alarm: a restarted or merely slow node, already where it belongs.
            return;
        }
        if self.successors.is_empty() || node.id.in_open(&self.me.id, &self.successor().id) {
            // A closer successor than ours, alive: what stabilize would have chased. Its ring and
            // ours meet here.
            debug!(node = %self.me.id.short(), peer = %node.id.short(), "probe found a closer successor: merging");
            self.merge_detected(now);
            self.chase_or_adopt(node, predecessor, successors, 0, now);
            return;
        }
        // Its list spans our id without naming us: its ring lacks us. Tell the node of its list
        // that we should follow.
        if let Some(last) = successors.last()
            && self.me.id.in_open(&node.id, &last.id)
            && !successors.iter().any(|s| s.addr == self.me.addr)
        {
            let mut before = node.clone();
            for s in &successors {
                if self.me.id.in_open(&before.id, &s.id) {
                    break;
                }
                before = s.clone();
            }
            debug!(node = %self.me.id.short(), peer = %node.id.short(), "probe found a ring without us: merging");
            self.merge_detected(now);
            let me = self.me.clone();
            self.send_merge(&before.addr, me, 0, now);
            return;
        }
        self.place(node, 0, now);
    }

    /// Whether `addr` is our predecessor or in our successor list.
    fn is_known_neighbour(&self, addr: &A) -> bool {
        self.predecessor.as_ref().is_some_and(|p| &p.addr == addr)
            || self.successors.iter().any(|s| &s.addr == addr)
    }

    /// Someone asks us to weave in `candidate`, a member that may belong to another ring.
    pub(super) fn on_merge_request(&mut self, candidate: NodeRef<A>, hops: u8, now: Time) {
        if candidate.addr == self.me.addr || self.is_known_neighbour(&candidate.addr) {
            return;
        }
        if !self.merge_request_allowed(now) {
            self.counters.merge_requests_limited += 1;
            debug!(node = %self.me.id.short(), candidate = %candidate.id.short(), "merge request over the rate limit: ignored");
            return;
        }
        self.merge_detected(now);
        self.place(candidate, hops, now);
    }

    /// Whether one more merge request may be acted upon now (a fixed window of one probe
    /// interval; see `MERGE_REQUESTS_PER_WINDOW`).
    fn merge_request_allowed(&mut self, now: Time) -> bool {
        let (started, used) = &mut self.merge_window;
        if now >= *started + self.config.probe_interval {
            *started = now;
            *used = 0;
        }
        if *used >= MERGE_REQUESTS_PER_WINDOW {
            return false;
        }
        *used += 1;
        true
    }

    /// One step toward weaving `candidate` (alive, not among our neighbours) into our ring: probe
    /// it if it may be our successor, hand it to the list entry it should follow, hand ourselves
    /// to it if it should precede us, and otherwise look its id up in our ring.
    fn place(&mut self, candidate: NodeRef<A>, hops: u8, now: Time) {
        if !self.is_member() || candidate.addr == self.me.addr || self.is_known_neighbour(&candidate.addr) {
            return;
        }
        if self.successors.is_empty() || candidate.id.in_open(&self.me.id, &self.successor().id) {
            // Adopted only once it answers (stabilize's rule), through the probe's answer.
            self.send_probe(candidate, now);
            return;
        }
        let mut before = self.successor().clone();
        for s in self.successors.iter().skip(1) {
            if candidate.id.in_open(&before.id, &s.id) {
                let to = before.addr.clone();
                self.send_merge(&to, candidate, hops.saturating_add(1), now);
                return;
            }
            before = s.clone();
        }
        if let Some(p) = &self.predecessor
            && candidate.id.in_open(&p.id, &self.me.id)
        {
            // It should precede us, so its ring lacks us: it can place us.
            let (to, me) = (candidate.addr.clone(), self.me.clone());
            self.send_merge(&to, me, hops.saturating_add(1), now);
            return;
        }
        if hops >= MAX_MERGE_HOPS
            || self.merge_lookups.len() >= MAX_MERGE_LOOKUPS
            || self.lookups.len() >= self.config.max_concurrent_lookups
        {
            self.counters.merge_requests_dropped += 1;
            return;
        }
        // Far from us: find the node of our ring it should follow. `start_lookup` may finish at
        // once, so the record goes in first.
        let target = candidate.id;
        self.merge_lookups.insert(self.next_lookup, (candidate, hops));
        self.start_lookup(target, LookupPurpose::Merge, now);
    }

    pub(super) fn on_merge_lookup_finished(
        &mut self,
        candidate: NodeRef<A>,
        hops: u8,
        result: Result<Answer<A>, LookupError>,
        now: Time,
    ) {
        let Ok((owner, list, vouched)) = result else {
            return;
        };
        if owner.addr == candidate.addr || list.iter().any(|n| n.addr == candidate.addr) {
            // Our ring has it where it belongs: a false alarm.
            return;
        }
        if owner.addr == self.me.addr {
            // We own its id: it should precede us, and its ring lacks us.
            let me = self.me.clone();
            self.send_merge(&candidate.addr, me, hops.saturating_add(1), now);
            return;
        }
        if let Some(before) = vouched
            && candidate.id.in_open(&before.id, &owner.id)
        {
            self.merge_detected(now);
            if before.addr == self.me.addr {
                self.send_probe(candidate, now);
            } else {
                self.send_merge(&before.addr, candidate, hops.saturating_add(1), now);
            }
        }
    }
}
