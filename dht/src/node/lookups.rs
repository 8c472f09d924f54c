//! The glue between [`crate::lookup::Lookup`] (one iterative lookup's candidates, fall-backs and
//! hop count) and the node: starting lookups (user, finger fixing, join, rejoin, successor checks,
//! merges), sending each step, and acting on the answer according to the lookup's purpose.
//!
//! Invariants:
//! - every lookup is in `lookups` with its overall deadline in `lookup_deadlines`, and both go
//!   when it finishes; at most one step is in flight per lookup, and finishing a lookup drops that
//!   step's request, so that its reply counts as late;
//! - a routed lookup (join, rejoin, successor check) never answers with this node, and caches no
//!   range: only lookups started from this node's own tables, which it witnesses, feed the range
//!   cache;
//! - a step that comes back to this node is answered locally, without a message, and is not
//!   counted as a hop.

use tracing::debug;

use crate::address::{Address, NodeRef};
use crate::error::LookupError;
use crate::id::Id;
use crate::lookup::{Answer, Lookup, LookupOutcome, Next, Purpose as LookupPurpose};
use crate::message::{Request, Response};
use crate::time::Time;

use super::{Event, Node, Phase, Purpose};

/// Upper bound on the delay between join attempts.
const MAX_JOIN_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);

/// Routing candidates a node considers when it starts a lookup of its own.
const LOCAL_ROUTE_CANDIDATES: usize = 8;

impl<A: Address> Node<A> {
    pub(super) fn start_lookup(&mut self, target: Id, purpose: LookupPurpose, now: Time) {
        let key = self.next_lookup;
        self.next_lookup += 1;
        self.counters.lookups_started += 1;
        let mut lookup = Lookup::new(target, purpose, now, self.config.lookup_timeout, None);
        lookup.check_claims = self.config.check_ownership_claims;
        if self.is_member() {
            // This node is a member: a claimed owner past it, seen from the target, is wrong.
            lookup.add_witness(self.me.id);
        }
        if self.owns(&target) {
            self.lookups.insert(key, lookup);
            self.finish_lookup(key, Ok((self.me.clone(), self.successors.clone(), None)), now);
            return;
        }
        if lookup.set_owners_from_list(&self.me.id, &self.successors) {
            // Should every owner candidate refuse (a stale list tail naming nodes that left, or
            // nodes of another ring being merged), the nodes before the target can still route.
            lookup.add_route(self.closest_preceding(&target, LOCAL_ROUTE_CANDIDATES));
        } else {
            lookup.add_route(self.closest_preceding(&target, LOCAL_ROUTE_CANDIDATES));
            // With no closer node known, the successor list is the only way round the ring.
            if !self.successors.is_empty() {
                lookup.add_route(self.successors.iter().cloned());
            }
        }
        self.lookup_deadlines.insert((lookup.deadline, key));
        self.lookups.insert(key, lookup);
        self.advance_lookup(key, now);
    }

    /// Starts a lookup that is routed through `route` rather than this node's own tables, and
    /// that must not answer with this node: for joining, rejoining and checking our successor,
    /// where our own view is what is in question.
    pub(super) fn start_routed_lookup(
        &mut self,
        target: Id,
        purpose: LookupPurpose,
        route: Vec<NodeRef<A>>,
        now: Time,
    ) {
        let key = self.next_lookup;
        self.next_lookup += 1;
        self.counters.lookups_started += 1;
        let mut lookup =
            Lookup::new(target, purpose, now, self.config.lookup_timeout, Some(self.me.addr.clone()));
        lookup.check_claims = self.config.check_ownership_claims;
        lookup.add_route(route);
        self.lookup_deadlines.insert((lookup.deadline, key));
        self.lookups.insert(key, lookup);
        self.advance_lookup(key, now);
    }

    pub(super) fn advance_lookup(&mut self, key: u64, now: Time) {
        loop {
            let max_hops = self.config.max_lookup_hops;
            let Some(lookup) = self.lookups.get_mut(&key) else {
                return;
            };
            match lookup.next(max_hops) {
                Next::Ask { node, as_owner } if node.addr == self.me.addr => {
                    // Other nodes may point back at us; answer our own question without a message.
                    let target = lookup.target;
                    let Response::Route { owner, predecessor, successors, closer } =
                        self.route_reply(&target)
                    else {
                        unreachable!("route_reply builds a Route");
                    };
                    let lookup = self.lookups.get_mut(&key).expect("present: fetched above");
                    // A local step is not a hop, and not on the path.
                    let (done, _) = lookup.on_reply(node, as_owner, owner, predecessor, successors, closer);
                    if let Some(answer) = done {
                        self.finish_lookup(key, Ok(answer), now);
                        return;
                    }
                }
                Next::Ask { node, as_owner } => {
                    let target = lookup.target;
                    let to = node.addr.clone();
                    let id = self.send_request(
                        &to,
                        Request::FindSuccessor { target },
                        Purpose::Lookup { key },
                        now,
                    );
                    let lookup = self.lookups.get_mut(&key).expect("present: fetched above");
                    lookup.in_flight = Some((id, node, as_owner));
                    return;
                }
                Next::Finish(result) => {
                    self.finish_lookup(key, result, now);
                    return;
                }
            }
        }
    }

    pub(super) fn finish_lookup(&mut self, key: u64, result: Result<Answer<A>, LookupError>, now: Time) {
        let Some(lookup) = self.lookups.remove(&key) else {
            return;
        };
        self.lookup_deadlines.remove(&(lookup.deadline, key));
        self.counters.lookup_claims_refuted += u64::from(lookup.refuted);
        if let Some((request, _, _)) = lookup.in_flight {
            // Nobody waits for that reply any more; drop it quietly when it comes.
            if let Some(pending) = self.pending.remove(&request) {
                self.request_deadlines.remove(&(pending.deadline, request));
            }
        }
        match &result {
            Ok((owner, successors, Some(predecessor))) if !lookup.is_routed() => {
                self.counters.lookups_succeeded += 1;
                self.counters.lookup_hops += u64::from(lookup.hops);
                // Cache no more than was verified, whatever the owner claimed.
                let start = lookup.verified_start(&owner.id, &predecessor.id);
                self.remember_range(&start, owner, successors, now);
            }
            // A routed lookup asks about this node's own id, and this node cannot witness against
            // claims to own that: a liar among the nodes it asks could claim most of the ring, with
            // other liars as its successors, and pass every check. Such an answer only serves this
            // node's own place in the ring (which maintenance goes on checking), never as a range
            // that keys elsewhere are routed by.
            Ok(_) => {
                self.counters.lookups_succeeded += 1;
                self.counters.lookup_hops += u64::from(lookup.hops);
            }
            Err(_) => {
                self.counters.lookups_failed += 1;
                // Lookups that cannot finish point at failures the tables do not show yet.
                self.unsettle(now);
            }
        }
        match lookup.purpose {
            LookupPurpose::User(id) => {
                let result = result.map(|(owner, successors, _)| LookupOutcome {
                    owner,
                    successors,
                    hops: lookup.hops,
                    path: lookup.path,
                    timeouts: lookup.timeouts,
                    latency: now - lookup.started,
                });
                self.events.push_back(Event::LookupFinished { id, result });
            }
            LookupPurpose::FixFinger(i) => {
                self.fixing_finger = false;
                match result {
                    Ok((owner, _, _)) if owner.addr == self.me.addr => {
                        self.fingers.settle(&self.me.id, i, None)
                    }
                    Ok((owner, _, _)) => self.fingers.settle(&self.me.id, i, Some(owner)),
                    Err(_) => self.fingers.set_next(i + 1),
                }
            }
            LookupPurpose::Join => self.on_join_lookup_finished(result, now),
            LookupPurpose::CheckSuccessor => {
                self.checking_successor = false;
                if let Ok((owner, list, _)) = result {
                    let closer =
                        self.successors.first().is_some_and(|s| owner.id.in_open(&self.me.id, &s.id));
                    if closer {
                        // The owner of me + 1 has just answered, with its list: adopt it.
                        debug!(node = %self.me.id.short(), successor = %owner.id.short(), "lookup found a closer successor");
                        self.adopt_successor(owner, &list, false, now);
                    }
                }
            }
            LookupPurpose::Merge => {
                if let Some((candidate, hops)) = self.merge_lookups.remove(&key) {
                    self.on_merge_lookup_finished(candidate, hops, result, now);
                }
            }
            LookupPurpose::Rejoin => {
                self.rejoining = false;
                match result {
                    Ok((successor, list, _)) => self.adopt_successor(successor, &list, false, now),
                    Err(error) => {
                        debug!(node = %self.me.id.short(), %error, "rejoin failed: alone until notified");
                        self.set_predecessor(None, now);
                    }
                }
            }
        }
    }

    fn on_join_lookup_finished(&mut self, result: Result<Answer<A>, LookupError>, now: Time) {
        let Phase::Joining { attempts, retry_at, .. } = &mut self.phase else {
            return;
        };
        match result {
            Ok((successor, list, _)) => {
                debug!(node = %self.me.id.short(), successor = %successor.id.short(), "joined: successor found");
                self.activate(now);
                self.adopt_successor(successor, &list, false, now);
            }
            Err(error) => {
                let backoff =
                    self.config.rpc_timeout.saturating_mul(1 << (*attempts).min(6)).min(MAX_JOIN_BACKOFF);
                debug!(node = %self.me.id.short(), %error, ?backoff, "join attempt failed");
                *retry_at = Some(now + backoff);
            }
        }
    }

    pub(super) fn fail_all_lookups(&mut self, error: LookupError, now: Time) {
        let keys: Vec<u64> = self.lookups.keys().copied().collect();
        for key in keys {
            self.finish_lookup(key, Err(error.clone()), now);
        }
    }
}
