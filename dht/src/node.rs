//! One node's Chord state machine: routing state, Zave's maintenance rules, and lookups.
//!
//! [`Node`] owns the predecessor, successor list and finger table of one ring member and every
//! request it has in flight. It never performs I/O: the driver feeds it messages, send failures and
//! the time, and drains the messages, events and the next wake-up it asks for.
//!
//! Invariants kept here:
//! - the successor list never contains this node, is in clockwise order from it, and holds at most
//!   `r` entries; it is empty only when this node believes it is alone;
//! - a new successor is adopted only after it has answered this node (stabilize asks a candidate
//!   for its list first; join takes the successor that confirmed it owns this node's id);
//! - every request in flight has a deadline, and every lookup has an overall deadline and a hop
//!   bound, so nothing waits forever;
//! - nothing that arrives from the network can panic this code: messages are validated, responses
//!   are matched to requests by id and sender, and whatever does not fit is dropped and counted;
//! - a peer declared dead is remembered in a bounded passive list and probed at a slow, jittered,
//!   backed-off pace; a node that was idle and without failures sends no probes at all.
//!
//! # Ring unification (healing a partition)
//! A partition splits one ring into several, each closed by stabilization. To merge them again
//! (after Shafaat, Ghodsi and Haridi's ring unification, 2009) a node probes the peers it declared
//! dead with [`Request::GetNeighbours`]. An answer from a member that belongs in our routing state
//! but is missing from it is proof of another ring: a member between this node and its successor
//! is chased and adopted as successor, as stabilize would; one between our predecessor and us, or
//! within the span of our successor list, is told with [`Request::Merge`] which of our nodes it
//! should follow, or that node is told of it; one farther away is looked up in our ring, and the
//! node it should follow is told. When adopting a closer successor displaces a live one that the
//! new successor does not know, the displaced node is handed to the new successor the same way, so
//! the two rings' lists interleave link by link; stabilize, rectify and successor checks do the
//! rest. The first proof of a merge also makes the node probe its whole passive list at once (at
//! most once per probe period), and so does every merge request it receives: the alarm spreads
//! epidemically while each step stays local and bounded. A probe answered by a node already where
//! it belongs (a restarted node, a node that was only slow) ends there: one exchange.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::{debug, trace};

use crate::address::{Address, NodeRef};
use crate::config::{Config, ConfigError};
use crate::error::{JoinError, LookupError};
use crate::finger::FingerTable;
use crate::id::{ID_BITS, Id};
use crate::lookup::{Answer, Lookup, LookupId, LookupOutcome, Next, Purpose as LookupPurpose};
use crate::message::{MAX_MERGE_HOPS, Message, Request, RequestId, Response};
use crate::passive::PassiveList;
use crate::ring::merge_successors;
use crate::time::Time;

/// A message for the driver to deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit<A> {
    /// Destination.
    pub to: A,
    /// What to send.
    pub message: Message<A>,
}

/// Something the driver may want to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<A> {
    /// This node has joined: its successor answered and acknowledged it as predecessor (or it
    /// created a new ring).
    Joined {
        /// The successor at that moment (this node itself for a new ring).
        successor: NodeRef<A>,
    },
    /// Joining failed; the node is idle and may be told to join again.
    JoinFailed {
        /// Why.
        error: JoinError,
    },
    /// A lookup started with [`Node::lookup`] finished.
    LookupFinished {
        /// The lookup's id.
        id: LookupId,
        /// The owner of the target, or why none was found.
        result: Result<LookupOutcome<A>, LookupError>,
    },
    /// The predecessor changed: the range of ids this node owns changed.
    PredecessorChanged {
        /// The new predecessor; `None` while it is unknown.
        predecessor: Option<NodeRef<A>>,
    },
    /// The successor list changed: the nodes holding this node's replicas changed.
    SuccessorsChanged {
        /// The new list, nearest first.
        successors: Vec<NodeRef<A>>,
    },
    /// A graceful leave finished; the node answers nothing any more.
    Left,
}

/// Counts of what the node did and what it rejected. Monotonic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages handed to the driver.
    pub messages_sent: u64,
    /// Messages received and accepted for processing.
    pub messages_received: u64,
    /// Requests that got no reply to any attempt, or that the driver could not deliver.
    pub requests_failed: u64,
    /// Requests sent again because an attempt got no reply in time.
    pub requests_resent: u64,
    /// Messages dropped because they were not honest (forged id, over-long list).
    pub dropped_invalid: u64,
    /// Responses dropped because no request with their id was ever sent.
    pub dropped_unknown_response: u64,
    /// Responses that came after their request was completed or given up (resent duplicates,
    /// replies after a time-out): harmless, ignored.
    pub late_responses: u64,
    /// Responses dropped because they came from a node other than the one asked.
    pub dropped_wrong_sender: u64,
    /// Replies of the wrong kind, or carrying routing entries that cannot be right.
    pub dropped_protocol_violation: u64,
    /// Requests refused because this node is not a ring member.
    pub refused: u64,
    /// Lookups started (user and maintenance).
    pub lookups_started: u64,
    /// Lookups that found the owner.
    pub lookups_succeeded: u64,
    /// Lookups that ended with an error.
    pub lookups_failed: u64,
    /// Hops summed over successful lookups.
    pub lookup_hops: u64,
    /// Probes sent to peers remembered as dead (the passive list).
    pub probes_sent: u64,
    /// Probes answered by a ring member.
    pub probes_answered: u64,
    /// Answered probes or merge requests that proved another ring (a healed partition).
    pub merges_detected: u64,
    /// Merge requests sent (to the node a stray member should follow, or to the stray member).
    pub merge_requests_sent: u64,
    /// Merge requests dropped: passed on too often, or too many merge lookups in flight.
    pub merge_requests_dropped: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase<A> {
    Idle,
    Joining { bootstraps: Vec<A>, attempts: u32, deadline: Time, retry_at: Option<Time> },
    Active,
    Leaving { deadline: Time, awaiting: u8 },
    Left,
}

/// Why a request is in flight.
#[derive(Clone, Debug)]
enum Purpose<A> {
    Stabilize {
        successor: NodeRef<A>,
    },
    /// Asking a would-be successor for its list before adopting it; `fallback` is the nearest
    /// node that has answered so far and its list, adopted if the candidate does not answer.
    /// `chased` counts the predecessors followed in this round.
    StabilizeCandidate {
        candidate: NodeRef<A>,
        fallback: Option<SuccessorWithList<A>>,
        chased: u8,
    },
    Notify,
    CheckPredecessor {
        predecessor: NodeRef<A>,
    },
    /// Pinging the predecessor because `candidate` notified us; `candidate` replaces it if dead.
    RectifyProbe {
        predecessor: NodeRef<A>,
        candidate: NodeRef<A>,
    },
    Lookup {
        key: u64,
    },
    Leaving,
    /// Asking a peer for its neighbours to learn whether it belongs to another ring: a peer from
    /// the passive list, or a merge candidate. Sent once, never resent.
    Probe {
        node: NodeRef<A>,
    },
    /// A [`Request::Merge`]; its answer carries nothing.
    Merge,
}

/// A node that answered with its successor list.
type SuccessorWithList<A> = (NodeRef<A>, Vec<NodeRef<A>>);

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

#[derive(Debug)]
struct Pending<A> {
    to: A,
    deadline: Time,
    purpose: Purpose<A>,
    /// What was sent, for resending.
    body: Request<A>,
    attempts_left: u32,
}

/// Upper bound on the delay between join attempts.
const MAX_JOIN_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);

/// After a change of neighbours, this many stabilize rounds run at `1 / FAST_STABILIZE_DIVISOR`
/// of the configured period.
const FAST_STABILIZE_ROUNDS: u8 = 4;
const FAST_STABILIZE_DIVISOR: u32 = 4;

/// In steady state, every this many stabilize rounds the successor is also checked by a lookup.
const SUCCESSOR_CHECK_EVERY: u32 = 4;

/// Most predecessors one stabilize round follows towards the true successor.
const MAX_STABILIZE_CHASE: u8 = 32;

/// Routing candidates a node considers when it starts a lookup of its own.
const LOCAL_ROUTE_CANDIDATES: usize = 8;

/// Most lookups one node runs at once to place nodes of another ring; further merge requests that
/// need one are dropped (the other ring's own probes and stabilization find them later).
const MAX_MERGE_LOOKUPS: usize = 4;

/// The Chord state machine of one node. See the crate docs for the driving contract.
#[derive(Debug)]
pub struct Node<A: Address> {
    me: NodeRef<A>,
    config: Config,
    rng: ChaCha8Rng,
    phase: Phase<A>,
    predecessor: Option<NodeRef<A>>,
    successors: Vec<NodeRef<A>>,
    fingers: FingerTable<A>,
    next_request: u64,
    pending: BTreeMap<RequestId, Pending<A>>,
    request_deadlines: BTreeSet<(Time, RequestId)>,
    next_lookup: u64,
    lookups: BTreeMap<u64, Lookup<A>>,
    lookup_deadlines: BTreeSet<(Time, u64)>,
    next_stabilize: Time,
    next_fix_fingers: Time,
    next_check_predecessor: Time,
    stabilizing: bool,
    fixing_finger: bool,
    checking_predecessor: bool,
    probing_predecessor: bool,
    /// Stabilize rounds still to run at the fast pace after a change of neighbours.
    fast_rounds: u8,
    /// Stabilize rounds run so far (wrapping).
    stabilize_rounds: u32,
    /// A lookup of this node's own successor is running.
    checking_successor: bool,
    /// Ranges (predecessor, owner] recently vouched for by their owners, keyed by owner id.
    range_cache: BTreeMap<Id, CachedRange<A>>,
    /// The successor list ran out and a lookup for this node's own id is finding a new one.
    rejoining: bool,
    announced: bool,
    /// Peers declared dead, to probe in case a partition took them away.
    passive: PassiveList<A>,
    /// When the next probe of the passive list is due (only while it is non-empty).
    next_probe: Time,
    /// When the whole passive list was last probed at once, after a merge was detected.
    last_burst: Option<Time>,
    /// Lookups placing a node of another ring in this one: lookup key → (the node, hops so far).
    merge_lookups: BTreeMap<u64, (NodeRef<A>, u8)>,
    transmits: VecDeque<Transmit<A>>,
    events: VecDeque<Event<A>>,
    counters: Counters,
}

impl<A: Address> Node<A> {
    /// A node at `addr` that is not yet part of any ring. `seed` drives all of its randomness.
    pub fn new(addr: A, config: Config, seed: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        let passive = PassiveList::new(config.passive_peers);
        Ok(Node {
            me: NodeRef::new(addr),
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            phase: Phase::Idle,
            predecessor: None,
            successors: Vec::new(),
            fingers: FingerTable::default(),
            next_request: 0,
            pending: BTreeMap::new(),
            request_deadlines: BTreeSet::new(),
            next_lookup: 0,
            lookups: BTreeMap::new(),
            lookup_deadlines: BTreeSet::new(),
            next_stabilize: Time::ZERO,
            next_fix_fingers: Time::ZERO,
            next_check_predecessor: Time::ZERO,
            stabilizing: false,
            fixing_finger: false,
            checking_predecessor: false,
            probing_predecessor: false,
            rejoining: false,
            fast_rounds: 0,
            stabilize_rounds: 0,
            checking_successor: false,
            range_cache: BTreeMap::new(),
            announced: false,
            passive,
            next_probe: Time::ZERO,
            last_burst: None,
            merge_lookups: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
        })
    }

    // ----- accessors -------------------------------------------------------------------------

    /// This node.
    pub fn me(&self) -> &NodeRef<A> {
        &self.me
    }
    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The predecessor, if known.
    pub fn predecessor(&self) -> Option<&NodeRef<A>> {
        self.predecessor.as_ref()
    }
    /// The successor list, nearest first; empty when this node believes it is alone.
    pub fn successors(&self) -> &[NodeRef<A>] {
        &self.successors
    }
    /// The immediate successor: the first list entry, or this node when alone.
    pub fn successor(&self) -> &NodeRef<A> {
        self.successors.first().unwrap_or(&self.me)
    }
    /// The finger table.
    pub fn fingers(&self) -> &FingerTable<A> {
        &self.fingers
    }
    /// Whether this node is a ring member (created or joined, not left).
    pub fn is_member(&self) -> bool {
        self.phase == Phase::Active
    }
    /// Whether this node has joined and had its successor acknowledge it.
    pub fn is_announced(&self) -> bool {
        self.is_member() && self.announced
    }
    /// What the node has done and rejected so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    /// Lookups in flight (user and maintenance).
    pub fn lookups_in_flight(&self) -> usize {
        self.lookups.len()
    }
    /// Peers remembered as dead, awaiting probes.
    pub fn passive_len(&self) -> usize {
        self.passive.len()
    }

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
    /// within [`Config::lookup_cache_ttl`]. May be stale by up to that long; callers that write or
    /// read through quorums tolerate that, and entries naming a node found unreachable are dropped.
    pub fn cached_replicas(&self, key: &Id, n: usize, now: Time) -> Option<Vec<NodeRef<A>>> {
        let known = self.replica_set(key, n).filter(|set| set.len() >= n.min(self.successors.len() + 1));
        if known.is_some() {
            return known;
        }
        let (_, entry) = self.range_cache.range(key..).next().or_else(|| self.range_cache.iter().next())?;
        (entry.expires > now && key.in_open_closed(&entry.start, &entry.owner.id)).then(|| {
            std::iter::once(entry.owner.clone()).chain(entry.successors.iter().cloned()).take(n).collect()
        })
    }

    /// Forgets cached ranges that involve `addr` (the driver found it unreachable).
    pub fn forget_cached(&mut self, addr: &A) {
        self.range_cache
            .retain(|_, e| &e.owner.addr != addr && !e.successors.iter().any(|s| &s.addr == addr));
    }

    fn remember_range(
        &mut self,
        predecessor: &NodeRef<A>,
        owner: &NodeRef<A>,
        successors: &[NodeRef<A>],
        now: Time,
    ) {
        if self.config.lookup_cache_ttl.is_zero() || owner.addr == self.me.addr {
            return;
        }
        if self.range_cache.len() >= MAX_CACHED_RANGES {
            self.range_cache.retain(|_, e| e.expires > now);
            if self.range_cache.len() >= MAX_CACHED_RANGES {
                return;
            }
        }
        let entry = CachedRange {
            start: predecessor.id,
            owner: owner.clone(),
            successors: successors.to_vec(),
            expires: now + self.config.lookup_cache_ttl,
        };
        self.range_cache.insert(owner.id, entry);
    }

    // ----- commands --------------------------------------------------------------------------

    /// Starts a new ring with this node as its only member.
    pub fn create_ring(&mut self, now: Time) {
        debug!(node = %self.me.id.short(), "creating a new ring");
        self.activate(now);
        self.announced = true;
        self.events.push_back(Event::Joined { successor: self.me.clone() });
    }

    /// Joins the ring that `bootstraps` belong to, trying them in turn with back-off until
    /// [`Config::join_timeout`] passes; ends with [`Event::Joined`] or [`Event::JoinFailed`].
    pub fn join(&mut self, bootstraps: Vec<A>, now: Time) {
        let bootstraps: Vec<A> = bootstraps.into_iter().filter(|b| *b != self.me.addr).collect();
        if bootstraps.is_empty() {
            self.events.push_back(Event::JoinFailed { error: JoinError::NoBootstrap });
            return;
        }
        self.reset_routing();
        self.phase = Phase::Joining {
            bootstraps,
            attempts: 0,
            deadline: now + self.config.join_timeout,
            retry_at: Some(now),
        };
        self.handle_timeout(now);
    }

    /// Starts a lookup for the successor of `target`; the answer arrives as
    /// [`Event::LookupFinished`] with the returned id.
    pub fn lookup(&mut self, target: Id, now: Time) -> LookupId {
        let key = self.next_lookup;
        let id = LookupId(key);
        if !self.is_member() {
            self.next_lookup += 1;
            self.events.push_back(Event::LookupFinished { id, result: Err(LookupError::NotJoined) });
            return id;
        }
        if self.lookups.len() >= self.config.max_concurrent_lookups {
            self.next_lookup += 1;
            self.events.push_back(Event::LookupFinished { id, result: Err(LookupError::Overloaded) });
            return id;
        }
        self.start_lookup(target, LookupPurpose::User(id), now);
        id
    }

    /// Remembers `addr` as a peer to probe at the passive list's slow pace (see the module docs),
    /// as if it had been declared dead: a driver may feed it bootstrap addresses, so that a node cut
    /// off from all of them finds its way back into their ring once they answer again.
    pub fn remember_peer(&mut self, addr: A, now: Time) {
        if addr != self.me.addr {
            self.remember_dead(NodeRef::new(addr), now);
        }
    }

    /// Leaves gracefully: tells the successor and predecessor, waits briefly for their
    /// acknowledgements, then emits [`Event::Left`]. Data hand-off is the caller's, before this.
    pub fn leave(&mut self, now: Time) {
        if !self.is_member() {
            self.phase = Phase::Left;
            self.events.push_back(Event::Left);
            return;
        }
        self.fail_all_lookups(LookupError::NotJoined, now);
        let notice =
            Request::Leaving { predecessor: self.predecessor.clone(), successors: self.successors.clone() };
        let mut awaiting = 0;
        let mut told = Vec::new();
        for node in self.successors.first().cloned().into_iter().chain(self.predecessor.clone()) {
            if told.contains(&node.addr) {
                continue;
            }
            told.push(node.addr.clone());
            self.send_request(&node.addr, notice.clone(), Purpose::Leaving, now);
            awaiting += 1;
        }
        debug!(node = %self.me.id.short(), told = awaiting, "leaving the ring");
        self.phase = Phase::Leaving {
            deadline: now + self.config.rpc_timeout * self.config.request_attempts,
            awaiting,
        };
        if awaiting == 0 {
            self.finish_leave();
        }
    }

    // ----- inputs ----------------------------------------------------------------------------

    /// Handles a message that arrived from `from` (an authenticated transport address).
    pub fn handle_message(&mut self, from: A, message: Message<A>, now: Time) {
        if from == self.me.addr {
            self.counters.dropped_protocol_violation += 1;
            debug!(kind = message.kind(), "dropped a message claiming to come from this node");
            return;
        }
        if let Err(error) = message.validate() {
            self.counters.dropped_invalid += 1;
            debug!(peer = ?from, kind = message.kind(), %error, "dropped an invalid message");
            return;
        }
        self.counters.messages_received += 1;
        match message {
            Message::Request { id, body } => {
                let body = self.answer(&from, body, now);
                self.transmit(from, Message::Response { id, body });
            }
            Message::Response { id, body } => {
                match self.pending.get(&id) {
                    None if id.0 < self.next_request => {
                        // An answer to an earlier attempt of a request already completed or given up.
                        self.counters.late_responses += 1;
                        return;
                    }
                    None => {
                        self.counters.dropped_unknown_response += 1;
                        debug!(peer = ?from, request = id.0, "dropped a response to a request never sent");
                        return;
                    }
                    Some(pending) if pending.to != from => {
                        self.counters.dropped_wrong_sender += 1;
                        debug!(peer = ?from, request = id.0, "dropped a response from a node that was not asked");
                        return;
                    }
                    Some(_) => {}
                }
                let pending = self.pending.remove(&id).expect("present: checked just above");
                self.request_deadlines.remove(&(pending.deadline, id));
                self.on_response(pending.to, pending.purpose, body, now);
            }
        }
    }

    /// The driver could not deliver request `id` (no connection, dial failure): treated as a
    /// time-out now rather than later. Unknown ids are ignored.
    pub fn handle_send_failure(&mut self, id: RequestId, now: Time) {
        if let Some(pending) = self.pending.remove(&id) {
            self.request_deadlines.remove(&(pending.deadline, id));
            self.counters.requests_failed += 1;
            self.on_request_failed(pending.to, pending.purpose, true, now);
        }
    }

    /// Runs everything due at `now`: expired requests and lookups, and periodic maintenance.
    pub fn handle_timeout(&mut self, now: Time) {
        while let Some(&(deadline, id)) = self.request_deadlines.first() {
            if deadline > now {
                break;
            }
            self.request_deadlines.pop_first();
            let Some(pending) = self.pending.get_mut(&id) else {
                continue;
            };
            if pending.attempts_left > 0 {
                // Resend under the same id: whichever copy is answered first completes it.
                pending.attempts_left -= 1;
                pending.deadline = now + self.config.rpc_timeout;
                let (to, body, deadline) = (pending.to.clone(), pending.body.clone(), pending.deadline);
                self.request_deadlines.insert((deadline, id));
                self.counters.requests_resent += 1;
                self.transmit(to, Message::Request { id, body });
                continue;
            }
            let pending = self.pending.remove(&id).expect("present: fetched above");
            self.counters.requests_failed += 1;
            trace!(peer = ?pending.to, request = id.0, "request timed out");
            self.on_request_failed(pending.to, pending.purpose, true, now);
        }
        while let Some(&(deadline, key)) = self.lookup_deadlines.first() {
            if deadline > now {
                break;
            }
            let hops = self.lookups.get(&key).map_or(0, |l| l.hops);
            self.finish_lookup(key, Err(LookupError::TimedOut { hops }), now);
        }
        match self.phase {
            Phase::Joining { .. } => self.drive_join(now),
            Phase::Active => {
                if now >= self.next_stabilize {
                    let period = if self.fast_rounds > 0 {
                        self.fast_rounds -= 1;
                        self.config.stabilize_interval / FAST_STABILIZE_DIVISOR
                    } else {
                        self.config.stabilize_interval
                    };
                    self.next_stabilize = now + period;
                    self.stabilize(now);
                }
                if now >= self.next_check_predecessor {
                    self.next_check_predecessor = now + self.config.check_predecessor_interval;
                    self.check_predecessor(now);
                }
                if now >= self.next_fix_fingers {
                    self.next_fix_fingers = now + self.config.fix_fingers_interval;
                    self.fix_next_finger(now);
                }
                if !self.passive.is_empty() && now >= self.next_probe {
                    self.next_probe = now + self.probe_period();
                    self.probe_next(now);
                }
            }
            Phase::Leaving { deadline, .. } => {
                if now >= deadline {
                    self.finish_leave();
                }
            }
            Phase::Idle | Phase::Left => {}
        }
    }

    /// Starts the next join attempt when one is due, or gives up past the deadline.
    fn drive_join(&mut self, now: Time) {
        if self.lookups.values().any(|l| l.purpose == LookupPurpose::Join) {
            return;
        }
        let Phase::Joining { bootstraps, attempts, deadline, retry_at } = &mut self.phase else {
            return;
        };
        if now >= *deadline {
            let error = JoinError::TimedOut { attempts: *attempts };
            debug!(node = %self.me.id.short(), %error, "join failed");
            self.phase = Phase::Idle;
            self.events.push_back(Event::JoinFailed { error });
            return;
        }
        if !retry_at.is_some_and(|t| t <= now) {
            return;
        }
        *retry_at = None;
        let bootstrap = bootstraps[*attempts as usize % bootstraps.len()].clone();
        *attempts += 1;
        debug!(node = %self.me.id.short(), bootstrap = ?bootstrap, attempt = *attempts, "joining");
        let target = self.me.id;
        self.start_routed_lookup(target, LookupPurpose::Join, vec![NodeRef::new(bootstrap)], now);
    }

    // ----- outputs ---------------------------------------------------------------------------

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit<A>> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event<A>> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] must next be called; `None` when nothing is scheduled.
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut next =
            [self.request_deadlines.first().map(|(t, _)| *t), self.lookup_deadlines.first().map(|(t, _)| *t)]
                .into_iter()
                .flatten()
                .min();
        let mut consider = |t: Time| next = Some(next.map_or(t, |n| n.min(t)));
        match &self.phase {
            Phase::Joining { deadline, retry_at, .. } => {
                consider(*deadline);
                if let Some(t) = retry_at {
                    consider(*t);
                }
            }
            Phase::Active => {
                consider(self.next_stabilize);
                consider(self.next_check_predecessor);
                consider(self.next_fix_fingers);
                if !self.passive.is_empty() {
                    consider(self.next_probe);
                }
            }
            Phase::Leaving { deadline, .. } => consider(*deadline),
            Phase::Idle | Phase::Left => {}
        }
        next
    }

    // ----- answering requests ----------------------------------------------------------------

    fn answer(&mut self, from: &A, body: Request<A>, now: Time) -> Response<A> {
        if let Request::Ping = body {
            // A node that is leaving or has left must not look alive to a liveness probe, or its
            // neighbours would keep it as their predecessor.
            return match self.phase {
                Phase::Leaving { .. } | Phase::Left => Response::Refused,
                Phase::Idle | Phase::Joining { .. } | Phase::Active => Response::Ack,
            };
        }
        if !self.is_member() {
            self.counters.refused += 1;
            return Response::Refused;
        }
        match body {
            Request::Ping => Response::Ack,
            Request::GetNeighbours => Response::Neighbours {
                predecessor: self.predecessor.clone(),
                successors: self.successors.clone(),
            },
            Request::Notify => {
                self.passive.remove(from);
                self.rectify(NodeRef::new(from.clone()), now);
                Response::Ack
            }
            Request::FindSuccessor { target } => self.route_reply(&target),
            Request::Leaving { predecessor: _, successors } => {
                self.on_neighbour_leaving(from, &successors, now);
                Response::Ack
            }
            Request::Merge { candidate, hops } => {
                self.on_merge_request(candidate, hops, now);
                Response::Ack
            }
        }
    }

    /// This node's answer to one lookup step for `target`.
    fn route_reply(&self, target: &Id) -> Response<A> {
        let owner = self.owns(target);
        let within_list =
            self.successors.last().is_some_and(|last| target.in_open_closed(&self.me.id, &last.id));
        let closer = if owner || within_list {
            Vec::new()
        } else {
            self.closest_preceding(target, self.config.route_candidates.get())
        };
        Response::Route {
            owner,
            predecessor: self.predecessor.clone(),
            successors: self.successors.clone(),
            closer,
        }
    }

    /// Up to `k` known nodes strictly between this node and `target`, closest to `target` first.
    fn closest_preceding(&self, target: &Id, k: usize) -> Vec<NodeRef<A>> {
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

    // ----- maintenance -----------------------------------------------------------------------

    fn activate(&mut self, now: Time) {
        self.phase = Phase::Active;
        // Spread periodic work so that nodes started together do not act in lock-step.
        let jitter = |rng: &mut ChaCha8Rng, period: std::time::Duration| {
            let micros = u64::try_from(period.as_micros()).unwrap_or(u64::MAX).max(1);
            std::time::Duration::from_micros(rng.random_range(0..micros))
        };
        self.next_stabilize = now + jitter(&mut self.rng, self.config.stabilize_interval);
        self.next_check_predecessor = now + jitter(&mut self.rng, self.config.check_predecessor_interval);
        self.next_fix_fingers = now + jitter(&mut self.rng, self.config.fix_fingers_interval);
    }

    fn reset_routing(&mut self) {
        self.predecessor = None;
        self.successors.clear();
        self.fingers = FingerTable::default();
        self.announced = false;
        self.stabilizing = false;
        self.fixing_finger = false;
        self.checking_predecessor = false;
        self.probing_predecessor = false;
        self.rejoining = false;
        self.checking_successor = false;
        self.passive.clear();
        self.last_burst = None;
        self.merge_lookups.clear();
    }

    fn stabilize(&mut self, now: Time) {
        if self.stabilizing || self.rejoining {
            return;
        }
        self.stabilize_rounds = self.stabilize_rounds.wrapping_add(1);
        let check_due = self.fast_rounds > 0 || self.stabilize_rounds.is_multiple_of(SUCCESSOR_CHECK_EVERY);
        if check_due && !self.checking_successor && !self.successors.is_empty() {
            // Stabilize only ever hears of nodes through the successor's predecessor. Nodes that
            // joined concurrently can form chains interleaved with the ring, each link consistent
            // on its own, which stabilize undoes one link per round; a lookup of our own successor
            // through the ring finds the right one in a single step.
            self.check_successor(now);
        }
        let purpose = if let Some(successor) = self.successors.first().cloned() {
            Purpose::Stabilize { successor }
        } else if let Some(candidate) = self.predecessor.clone() {
            // Alone so far, but someone notified us: it is our successor too, once it answers.
            Purpose::StabilizeCandidate { candidate, fallback: None, chased: 0 }
        } else {
            return;
        };
        let to = match &purpose {
            Purpose::Stabilize { successor } => successor.addr.clone(),
            Purpose::StabilizeCandidate { candidate, .. } => candidate.addr.clone(),
            _ => unreachable!("only the two purposes above are built here"),
        };
        self.stabilizing = true;
        self.send_request(&to, Request::GetNeighbours, purpose, now);
    }

    fn check_predecessor(&mut self, now: Time) {
        if self.checking_predecessor {
            return;
        }
        if let Some(predecessor) = self.predecessor.clone() {
            self.checking_predecessor = true;
            let to = predecessor.addr.clone();
            self.send_request(&to, Request::Ping, Purpose::CheckPredecessor { predecessor }, now);
        }
    }

    fn fix_next_finger(&mut self, now: Time) {
        if self.fixing_finger {
            return;
        }
        let Some(successor) = self.successors.first().cloned() else {
            return;
        };
        // Fingers whose start lies before the successor need no lookup.
        let mut i = self.fingers.next_index();
        let mut wrapped = false;
        while self.me.id.finger_start(i).in_open_closed(&self.me.id, &successor.id) {
            self.fingers.settle(&self.me.id, i, Some(successor.clone()));
            let next = self.fingers.next_index();
            if next <= i {
                if wrapped {
                    return;
                }
                wrapped = true;
            }
            i = next;
        }
        self.fixing_finger = true;
        let target = self.me.id.finger_start(i);
        self.start_lookup(target, LookupPurpose::FixFinger(i), now);
    }

    /// Zave's rectify: adopt `candidate` as predecessor if there is none, or it lies between the
    /// current one and this node; otherwise check that the current one is still alive.
    fn rectify(&mut self, candidate: NodeRef<A>, now: Time) {
        match self.predecessor.clone() {
            Some(p) if p.addr == candidate.addr => {}
            Some(p) if !candidate.id.in_open(&p.id, &self.me.id) => {
                if !self.probing_predecessor {
                    self.probing_predecessor = true;
                    let to = p.addr.clone();
                    self.send_request(
                        &to,
                        Request::Ping,
                        Purpose::RectifyProbe { predecessor: p, candidate },
                        now,
                    );
                }
            }
            _ => {
                trace!(node = %self.me.id.short(), predecessor = %candidate.id.short(), "rectify");
                self.set_predecessor(Some(candidate));
                self.hurry_stabilize(now);
                if self.successors.is_empty() {
                    // A ring of one learns its successor from its first notifier: stabilize now.
                    self.next_stabilize = now;
                }
            }
        }
    }

    fn on_neighbour_leaving(&mut self, from: &A, leaver_successors: &[NodeRef<A>], now: Time) {
        let was_successor = self.successors.first().is_some_and(|s| &s.addr == from);
        self.forget(from);
        if self.predecessor.as_ref().is_some_and(|p| &p.addr == from) {
            // The leaver's predecessor will notify us once it learns we follow it.
            self.set_predecessor(None);
        }
        if was_successor {
            if self.successors.is_empty() {
                if let Some(next) = leaver_successors.iter().find(|n| n.addr != self.me.addr).cloned() {
                    self.stabilizing = true;
                    let to = next.addr.clone();
                    self.send_request(
                        &to,
                        Request::GetNeighbours,
                        Purpose::StabilizeCandidate { candidate: next, fallback: None, chased: 0 },
                        now,
                    );
                }
            } else {
                self.next_stabilize = now;
            }
        }
    }

    fn finish_leave(&mut self) {
        self.phase = Phase::Left;
        self.reset_routing();
        self.events.push_back(Event::Left);
    }

    // ----- responses and failures ------------------------------------------------------------

    fn on_response(&mut self, from: A, purpose: Purpose<A>, body: Response<A>, now: Time) {
        match (purpose, body) {
            (purpose, Response::Refused) => {
                trace!(peer = ?from, "request refused");
                self.on_request_failed(from, purpose, false, now);
            }
            (Purpose::Stabilize { successor }, Response::Neighbours { predecessor, successors }) => {
                self.stabilizing = false;
                self.chase_or_adopt(successor, predecessor, successors, 0, now);
            }
            (
                Purpose::StabilizeCandidate { candidate, chased, .. },
                Response::Neighbours { predecessor, successors },
            ) => {
                self.stabilizing = false;
                self.chase_or_adopt(candidate, predecessor, successors, chased, now);
            }
            (Purpose::Notify, Response::Ack) => {
                if self.is_member() && !self.announced {
                    self.announced = true;
                    let successor = self.successor().clone();
                    self.events.push_back(Event::Joined { successor });
                }
            }
            (Purpose::CheckPredecessor { .. }, Response::Ack) => self.checking_predecessor = false,
            (Purpose::RectifyProbe { .. }, Response::Ack) => self.probing_predecessor = false,
            (Purpose::Leaving, Response::Ack) => self.on_leave_acknowledged(),
            (Purpose::Probe { node }, Response::Neighbours { predecessor, successors }) => {
                self.on_probe_answered(node, predecessor, successors, now);
            }
            (Purpose::Merge, Response::Ack) => {}
            (Purpose::Lookup { key }, Response::Route { owner, predecessor, successors, closer }) => {
                let Some(lookup) = self.lookups.get_mut(&key) else {
                    return; // finished (timed out) while this reply was on its way
                };
                let Some((_, node, as_owner)) = lookup.in_flight.take() else {
                    return;
                };
                let (done, dropped) = lookup.on_reply(node, as_owner, owner, predecessor, successors, closer);
                self.counters.dropped_protocol_violation += dropped as u64;
                match done {
                    Some(answer) => self.finish_lookup(key, Ok(answer), now),
                    None => self.advance_lookup(key, now),
                }
            }
            (purpose, body) => {
                self.counters.dropped_protocol_violation += 1;
                debug!(peer = ?from, kind = body_kind(&body), "reply of the wrong kind");
                self.on_request_failed(from, purpose, false, now);
            }
        }
    }

    fn on_request_failed(&mut self, to: A, purpose: Purpose<A>, timed_out: bool, now: Time) {
        match purpose {
            Purpose::Stabilize { successor } => {
                self.stabilizing = false;
                debug!(node = %self.me.id.short(), successor = %successor.id.short(), "successor unreachable, dropping it");
                self.forget(&successor.addr);
                if timed_out {
                    self.remember_dead(successor.clone(), now);
                }
                if self.successors.is_empty() {
                    self.rejoin(now);
                } else {
                    // Fall back to the next live successor at once rather than a period later.
                    self.stabilize(now);
                }
            }
            Purpose::StabilizeCandidate { candidate, fallback, .. } => {
                self.stabilizing = false;
                if timed_out {
                    self.fingers.forget(&candidate.addr);
                    self.remember_dead(candidate.clone(), now);
                }
                if self.predecessor.as_ref().is_some_and(|p| p.addr == candidate.addr)
                    && self.successors.is_empty()
                {
                    self.set_predecessor(None);
                }
                if let Some((successor, list)) = fallback {
                    self.adopt_successor(successor, &list, now);
                }
            }
            Purpose::Notify => {}
            Purpose::CheckPredecessor { predecessor } => {
                self.checking_predecessor = false;
                if self.predecessor.as_ref().is_some_and(|p| p.addr == predecessor.addr) {
                    debug!(node = %self.me.id.short(), predecessor = %predecessor.id.short(), "predecessor unreachable");
                    self.set_predecessor(None);
                }
                self.fingers.forget(&predecessor.addr);
                if timed_out {
                    self.remember_dead(predecessor, now);
                }
            }
            Purpose::RectifyProbe { predecessor, candidate } => {
                self.probing_predecessor = false;
                if self.predecessor.as_ref().is_some_and(|p| p.addr == predecessor.addr) {
                    self.set_predecessor(Some(candidate));
                }
                if timed_out {
                    self.remember_dead(predecessor, now);
                }
            }
            Purpose::Lookup { key } => {
                if timed_out {
                    self.fingers.forget(&to);
                    self.forget_cached(&to);
                    self.remember_dead(NodeRef::new(to.clone()), now);
                }
                let Some(lookup) = self.lookups.get_mut(&key) else {
                    return;
                };
                lookup.in_flight = None;
                lookup.on_failure(&to, timed_out);
                self.advance_lookup(key, now);
            }
            Purpose::Leaving => self.on_leave_acknowledged(),
            Purpose::Probe { node } => {
                if timed_out {
                    let (base, cap) = (self.config.probe_interval, self.config.probe_backoff_max);
                    self.passive.missed(&node.addr, now, base, cap);
                } else {
                    // Alive but not a member (restarting, joining, leaving): it finds its own way.
                    self.passive.remove(&node.addr);
                }
            }
            Purpose::Merge => {}
        }
    }

    fn on_leave_acknowledged(&mut self) {
        if let Phase::Leaving { awaiting, .. } = &mut self.phase {
            *awaiting = awaiting.saturating_sub(1);
            if *awaiting == 0 {
                self.finish_leave();
            }
        }
    }

    /// Looks up the successor of `me + 1`, routed from a random finger rather than from this node's
    /// own successor list (which would only confirm what it already believes).
    fn check_successor(&mut self, now: Time) {
        let successor = self.successor().addr.clone();
        let others: Vec<NodeRef<A>> = self
            .fingers
            .distinct()
            .chain(self.predecessor.iter())
            .filter(|n| n.addr != successor)
            .cloned()
            .collect();
        if others.is_empty() {
            return;
        }
        let start = others[self.rng.random_range(0..others.len())].clone();
        self.checking_successor = true;
        let target = self.me.id.finger_start(0);
        self.start_routed_lookup(target, LookupPurpose::CheckSuccessor, vec![start], now);
    }

    /// Every successor has failed. Taking the predecessor as successor would close a loop that
    /// wraps the ring twice, so instead look up this node's own id through whatever nodes are still
    /// known (predecessor, fingers), and adopt the owner that answers. Only if nobody is left does
    /// this node become a ring of one.
    fn rejoin(&mut self, now: Time) {
        if self.rejoining || !self.is_member() {
            return;
        }
        let mut known: Vec<NodeRef<A>> = self.predecessor.iter().cloned().collect();
        known.extend(self.fingers.distinct().cloned());
        if known.is_empty() {
            debug!(node = %self.me.id.short(), "no node left to rejoin through: alone");
            return;
        }
        debug!(node = %self.me.id.short(), known = known.len(), "successor list exhausted: rejoining");
        self.rejoining = true;
        let target = self.me.id;
        self.start_routed_lookup(target, LookupPurpose::Rejoin, known, now);
    }

    /// `node` answered with its predecessor and list. If that predecessor lies between this node and
    /// `node`, it is a closer successor: ask it next (adopting nothing until it answers), still
    /// within this stabilize round, so that a node that joined with a far successor converges in
    /// round trips rather than stabilize periods. Otherwise adopt `node`.
    fn chase_or_adopt(
        &mut self,
        node: NodeRef<A>,
        predecessor: Option<NodeRef<A>>,
        successors: Vec<NodeRef<A>>,
        chased: u8,
        now: Time,
    ) {
        // The successor may have moved closer while this round was in flight (a successor check
        // found a nearer node): never trade it for a farther one.
        let current = self.successor().id;
        if !self.successors.is_empty() && !node.id.in_open_closed(&self.me.id, &current) {
            return;
        }
        match predecessor {
            Some(p)
                if chased < MAX_STABILIZE_CHASE
                    && p.addr != self.me.addr
                    && p.id.in_open(&self.me.id, &node.id) =>
            {
                self.stabilizing = true;
                let to = p.addr.clone();
                self.send_request(
                    &to,
                    Request::GetNeighbours,
                    Purpose::StabilizeCandidate {
                        candidate: p,
                        fallback: Some((node, successors)),
                        chased: chased + 1,
                    },
                    now,
                );
            }
            _ => self.adopt_successor(node, &successors, now),
        }
    }

    /// Makes `head` (which has just answered) the successor, with `tail` (its list) behind it,
    /// and notifies it.
    fn adopt_successor(&mut self, head: NodeRef<A>, tail: &[NodeRef<A>], now: Time) {
        if !self.is_member() {
            return;
        }
        let list = merge_successors(&self.me, &head, tail, self.config.successors.get());
        if list.first() != self.successors.first() {
            self.hurry_stabilize(now);
        }
        // A closer successor that does not know our current one: they come from two rings being
        // merged (or its view is stale). Hand the displaced node over, so that it is woven in
        // after the new successor instead of being cut off.
        if let Some(old) = self.successors.first().cloned()
            && old.addr != head.addr
            && head.id.in_open(&self.me.id, &old.id)
            && !list.iter().any(|n| n.addr == old.addr)
        {
            self.send_merge(&head.addr, old, 0, now);
        }
        for node in &list {
            self.passive.remove(&node.addr);
        }
        if list != self.successors {
            trace!(node = %self.me.id.short(), successor = %head.id.short(), "successor list updated");
            self.successors = list;
            self.events.push_back(Event::SuccessorsChanged { successors: self.successors.clone() });
        }
        let to = head.addr.clone();
        self.send_request(&to, Request::Notify, Purpose::Notify, now);
    }

    /// Neighbours just changed, so more changes are likely nearby (nodes joining or failing
    /// together): run the next few stabilize rounds at a faster pace.
    fn hurry_stabilize(&mut self, now: Time) {
        self.fast_rounds = FAST_STABILIZE_ROUNDS;
        let soon = now + self.config.stabilize_interval / FAST_STABILIZE_DIVISOR;
        if soon < self.next_stabilize {
            self.next_stabilize = soon;
        }
    }

    fn set_predecessor(&mut self, predecessor: Option<NodeRef<A>>) {
        if self.predecessor != predecessor {
            self.predecessor = predecessor;
            self.events.push_back(Event::PredecessorChanged { predecessor: self.predecessor.clone() });
        }
    }

    /// Drops a node believed dead (or gone) from the successor list and fingers.
    fn forget(&mut self, addr: &A) {
        let before = self.successors.len();
        self.successors.retain(|n| &n.addr != addr);
        if self.successors.len() != before {
            self.events.push_back(Event::SuccessorsChanged { successors: self.successors.clone() });
        }
        self.fingers.forget(addr);
        self.forget_cached(addr);
    }

    // ----- ring unification ------------------------------------------------------------------

    /// Remembers `node`, just declared dead, in the passive list.
    fn remember_dead(&mut self, node: NodeRef<A>, now: Time) {
        if node.addr == self.me.addr || self.config.passive_peers == 0 {
            return;
        }
        if self.passive.is_empty() {
            self.next_probe = now + self.probe_period();
        }
        self.passive.add(node, now, self.config.probe_interval);
    }

    /// The wait until the next probe: `probe_interval` plus up to as much again, drawn from this
    /// node's generator so that nodes that lost peers together do not probe in lock-step.
    fn probe_period(&mut self) -> std::time::Duration {
        let base = self.config.probe_interval;
        let micros = u64::try_from(base.as_micros()).unwrap_or(u64::MAX).max(1);
        base + std::time::Duration::from_micros(self.rng.random_range(0..micros))
    }

    /// The periodic probe: the passive entry due earliest, if any.
    fn probe_next(&mut self, now: Time) {
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
        let id = self.send_request(&to, Request::GetNeighbours, Purpose::Probe { node }, now);
        self.pending.get_mut(&id).expect("inserted just above").attempts_left = 0;
    }

    /// Tells `to` to weave in `candidate`, unless the request has been passed on too often.
    fn send_merge(&mut self, to: &A, candidate: NodeRef<A>, hops: u8, now: Time) {
        if hops > MAX_MERGE_HOPS || *to == candidate.addr || *to == self.me.addr {
            self.counters.merge_requests_dropped += 1;
            return;
        }
        self.counters.merge_requests_sent += 1;
        self.send_request(to, Request::Merge { candidate, hops }, Purpose::Merge, now);
    }

    /// A probed peer (from the passive list, or a merge candidate) answered as a ring member.
    fn on_probe_answered(
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
    fn on_merge_request(&mut self, candidate: NodeRef<A>, hops: u8, now: Time) {
        if candidate.addr == self.me.addr || self.is_known_neighbour(&candidate.addr) {
            return;
        }
        self.merge_detected(now);
        self.place(candidate, hops, now);
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

    fn on_merge_lookup_finished(
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

    // ----- lookups ---------------------------------------------------------------------------

    fn start_lookup(&mut self, target: Id, purpose: LookupPurpose, now: Time) {
        let key = self.next_lookup;
        self.next_lookup += 1;
        self.counters.lookups_started += 1;
        let mut lookup = Lookup::new(target, purpose, now, self.config.lookup_timeout, None);
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
    fn start_routed_lookup(&mut self, target: Id, purpose: LookupPurpose, route: Vec<NodeRef<A>>, now: Time) {
        let key = self.next_lookup;
        self.next_lookup += 1;
        self.counters.lookups_started += 1;
        let mut lookup =
            Lookup::new(target, purpose, now, self.config.lookup_timeout, Some(self.me.addr.clone()));
        lookup.add_route(route);
        self.lookup_deadlines.insert((lookup.deadline, key));
        self.lookups.insert(key, lookup);
        self.advance_lookup(key, now);
    }

    fn advance_lookup(&mut self, key: u64, now: Time) {
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
                    let (done, _) = lookup.on_reply(node, as_owner, owner, predecessor, successors, closer);
                    lookup.hops -= 1; // a local step is not a hop
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

    fn finish_lookup(&mut self, key: u64, result: Result<Answer<A>, LookupError>, now: Time) {
        let Some(lookup) = self.lookups.remove(&key) else {
            return;
        };
        self.lookup_deadlines.remove(&(lookup.deadline, key));
        if let Some((request, _, _)) = lookup.in_flight {
            // Nobody waits for that reply any more; drop it quietly when it comes.
            if let Some(pending) = self.pending.remove(&request) {
                self.request_deadlines.remove(&(pending.deadline, request));
            }
        }
        match &result {
            Ok((owner, successors, Some(predecessor))) => {
                self.counters.lookups_succeeded += 1;
                self.counters.lookup_hops += u64::from(lookup.hops);
                self.remember_range(predecessor, owner, successors, now);
            }
            Ok(_) => {
                self.counters.lookups_succeeded += 1;
                self.counters.lookup_hops += u64::from(lookup.hops);
            }
            Err(_) => self.counters.lookups_failed += 1,
        }
        match lookup.purpose {
            LookupPurpose::User(id) => {
                let result = result.map(|(owner, successors, _)| LookupOutcome {
                    owner,
                    successors,
                    hops: lookup.hops,
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
                        self.adopt_successor(owner, &list, now);
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
                    Ok((successor, list, _)) => self.adopt_successor(successor, &list, now),
                    Err(error) => {
                        debug!(node = %self.me.id.short(), %error, "rejoin failed: alone until notified");
                        self.set_predecessor(None);
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
                self.adopt_successor(successor, &list, now);
            }
            Err(error) => {
                let backoff =
                    self.config.rpc_timeout.saturating_mul(1 << (*attempts).min(6)).min(MAX_JOIN_BACKOFF);
                debug!(node = %self.me.id.short(), %error, ?backoff, "join attempt failed");
                *retry_at = Some(now + backoff);
            }
        }
    }

    fn fail_all_lookups(&mut self, error: LookupError, now: Time) {
        let keys: Vec<u64> = self.lookups.keys().copied().collect();
        for key in keys {
            self.finish_lookup(key, Err(error.clone()), now);
        }
    }

    // ----- sending ---------------------------------------------------------------------------

    fn send_request(&mut self, to: &A, body: Request<A>, purpose: Purpose<A>, now: Time) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let deadline = now + self.config.rpc_timeout;
        let attempts_left = self.config.request_attempts.saturating_sub(1);
        self.pending
            .insert(id, Pending { to: to.clone(), deadline, purpose, body: body.clone(), attempts_left });
        self.request_deadlines.insert((deadline, id));
        self.transmit(to.clone(), Message::Request { id, body });
        id
    }

    fn transmit(&mut self, to: A, message: Message<A>) {
        self.counters.messages_sent += 1;
        self.transmits.push_back(Transmit { to, message });
    }
}

fn body_kind<A>(body: &Response<A>) -> &'static str {
    match body {
        Response::Neighbours { .. } => "neighbours",
        Response::Ack => "ack",
        Response::Route { .. } => "route",
        Response::Refused => "refused",
    }
}

/// Number of fingers, re-exported for drivers that display the table.
pub const FINGERS: usize = ID_BITS;
