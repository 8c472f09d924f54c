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
//!
//! # Where the code is
//! This file holds the [`Node`] type and its state, its accessors and commands, and the
//! `handle_*`/`poll_*` surface. The rest is one `impl Node` block per concern, in submodules:
//! `routing` (ownership, next hops, replica sets, the range cache), `serve` (answering peers'
//! requests), `requests` (sending requests and dispatching their outcomes), `maintenance`
//! (stabilize, rectify, fingers, predecessor and successor checks, leaving), `lookups` (running
//! iterative lookups and acting on their answers) and `merge` (the passive list's probes and ring
//! unification).

mod lookups;
mod maintenance;
mod merge;
mod requests;
mod routing;
mod serve;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tracing::{debug, trace};

use crate::address::{Address, NodeRef};
use crate::config::{Config, ConfigError};
use crate::error::{JoinError, LookupError};
use crate::finger::FingerTable;
use crate::id::{ID_BITS, Id};
use crate::lookup::{Lookup, LookupId, LookupOutcome, Purpose as LookupPurpose};
use crate::message::{Message, Request, RequestId};
use crate::passive::PassiveList;
use crate::time::Time;

use routing::RangeCache;

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
    /// Ownership claims in lookup replies refused because what the lookup knew contradicted them
    /// (a member between the target and the claimant, or a target outside the claimed range).
    pub lookup_claims_refuted: u64,
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
    /// Merge requests received but not acted upon (only acknowledged) because more than
    /// `MERGE_REQUESTS_PER_WINDOW` came within one probe interval: a peer cannot make this node
    /// storm probes and lookups by sending many.
    pub merge_requests_limited: u64,
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
    /// Asking finger `index` (`finger`) for its predecessor: it is still the right finger iff the
    /// finger's start lies between that predecessor and it. Looked up only if not.
    CheckFinger {
        index: usize,
        finger: NodeRef<A>,
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
    /// A [`Request::SuccessorsChanged`] to the predecessor; sent once, its answer carries nothing.
    PushSuccessors,
}

/// A node that answered with its successor list.
type SuccessorWithList<A> = (NodeRef<A>, Vec<NodeRef<A>>);

#[derive(Debug)]
struct Pending<A> {
    to: A,
    deadline: Time,
    purpose: Purpose<A>,
    /// What was sent, for resending.
    body: Request<A>,
    attempts_left: u32,
}

/// After a change of neighbours, this many stabilize rounds run at `1 / FAST_STABILIZE_DIVISOR`
/// of the configured period.
const FAST_STABILIZE_ROUNDS: u8 = 4;
const FAST_STABILIZE_DIVISOR: u32 = 4;

/// The Chord state machine of one node. See the crate docs for the driving contract.
#[derive(Debug)]
pub struct Node<A: Address> {
    me: NodeRef<A>,
    config: Config,
    rng: ChaCha8Rng,
    phase: Phase<A>,
    predecessor: Option<NodeRef<A>>,
    /// The nodes before the predecessor, nearest first, as the predecessor last said when it
    /// stabilized with this node (at most `PREDECESSORS − 1`); cleared whenever the predecessor
    /// changes.
    further_predecessors: Vec<NodeRef<A>>,
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
    /// When a message last came from the predecessor (its stabilize rounds reach us anyway):
    /// the predecessor check pings only a predecessor that has been silent.
    predecessor_heard: Time,
    /// The stabilize period in force outside fast rounds: `stabilize_interval`, doubling after each
    /// round up to `Config::stabilize_backoff_max` while nothing changes (see `unsettle`).
    stabilize_period: Duration,
    /// The finger-refresh period in force: `fix_fingers_interval`, doubling after each full round
    /// of the distinct fingers that all checked out, up to `Config::fix_fingers_backoff_max`.
    finger_period: Duration,
    /// Fingers that checked out since the period last changed: a round is complete once they
    /// number the distinct fingers.
    fingers_checked: usize,
    /// Finger checks still to run at `1 / FAST_STABILIZE_DIVISOR` of the base period, after a
    /// request timed out (a sign that nodes crashed, which may be anyone's fingers).
    fast_fingers: usize,
    /// Ranges (predecessor, owner] recently vouched for by their owners.
    range_cache: RangeCache<A>,
    /// The successor list ran out and a lookup for this node's own id is finding a new one.
    rejoining: bool,
    announced: bool,
    /// Peers declared dead, to probe in case a partition took them away.
    passive: PassiveList<A>,
    /// When the next probe of the passive list is due (only while it is non-empty).
    next_probe: Time,
    /// When the whole passive list was last probed at once, after a merge was detected.
    last_burst: Option<Time>,
    /// Merge requests acted upon in the current window, and when that window (one probe interval
    /// long) started: see `MERGE_REQUESTS_PER_WINDOW`.
    merge_window: (Time, u32),
    /// Lookups placing a node of another ring in this one: lookup key → (the node, hops so far).
    merge_lookups: BTreeMap<u64, (NodeRef<A>, u8)>,
    /// The bootstrap peers the driver reached, added to the passive list whenever a loss starts
    /// an episode (see [`Node::add_bootstrap_peer`]). Kept across joins; at most
    /// `MAX_BOOTSTRAP_PEERS`.
    bootstrap_peers: Vec<NodeRef<A>>,
    transmits: VecDeque<Transmit<A>>,
    events: VecDeque<Event<A>>,
    counters: Counters,
}

impl<A: Address> Node<A> {
    /// A node at `addr` that is not yet part of any ring. `seed` drives all of its randomness.
    pub fn new(addr: A, config: Config, seed: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        let passive = PassiveList::new(config.passive_peers);
        let (stabilize_period, finger_period) = (config.stabilize_interval, config.fix_fingers_interval);
        Ok(Node {
            me: NodeRef::new(addr),
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            phase: Phase::Idle,
            predecessor: None,
            further_predecessors: Vec::new(),
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
            predecessor_heard: Time::ZERO,
            stabilize_period,
            finger_period,
            fingers_checked: 0,
            fast_fingers: 0,
            range_cache: RangeCache::new(),
            announced: false,
            passive,
            next_probe: Time::ZERO,
            last_burst: None,
            merge_window: (Time::ZERO, 0),
            merge_lookups: BTreeMap::new(),
            bootstrap_peers: Vec::new(),
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
    /// This node's predecessors, nearest first: the predecessor, then those it named when it last
    /// stabilized with this node (at most [`PREDECESSORS`]). Empty when none is known.
    pub fn predecessors(&self) -> Vec<NodeRef<A>> {
        self.predecessor.iter().chain(&self.further_predecessors).take(PREDECESSORS).cloned().collect()
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

    /// Records `addr` as a bootstrap peer: from then on, whenever this node declares a peer dead
    /// while its passive list is empty (the start of a loss, possibly a partition), the bootstrap
    /// peers are remembered beside it and probed at the same slow pace. A node cut off from its
    /// ring with a few neighbours thus still finds its way back through the nodes it was
    /// configured with, not only through the peers it happened to lose; a bootstrap peer that
    /// answers from this node's own ring is a false alarm that costs one exchange. An idle node
    /// that loses nobody never probes them. At most `MAX_BOOTSTRAP_PEERS` are kept (the first
    /// ones); this node itself and repeats are ignored.
    pub fn add_bootstrap_peer(&mut self, addr: A) {
        self.remember_bootstrap(addr);
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
        if self.predecessor.as_ref().is_some_and(|p| p.addr == from) {
            self.predecessor_heard = now;
        }
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
                        // A round that finds a change calls `unsettle`, which resets the period;
                        // so the period only grows across rounds that found nothing new.
                        let period = self.stabilize_period;
                        self.stabilize_period = (period * 2).min(self.config.stabilize_backoff_max());
                        period
                    };
                    self.next_stabilize = now + period;
                    self.stabilize(now);
                }
                if now >= self.next_check_predecessor {
                    self.next_check_predecessor = now + self.config.check_predecessor_interval;
                    if !self.predecessor_recently_heard(now) {
                        self.check_predecessor(now);
                    }
                }
                if now >= self.next_fix_fingers {
                    self.next_fix_fingers = if self.fast_fingers > 0 {
                        // A check still in flight (a dead finger takes all its attempts) does
                        // not use up the sweep.
                        if !self.fixing_finger {
                            self.fast_fingers -= 1;
                        }
                        now + self.config.fix_fingers_interval / FAST_STABILIZE_DIVISOR
                    } else {
                        now + self.finger_period
                    };
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
}

/// How many predecessors a node learns (its own and those its predecessor names when it
/// stabilizes): the store's range check needs the n − 1 before its predecessor, plus one for views
/// in flux, so 4 covers n ≤ 3 ([`crate::kv::range`]).
pub const PREDECESSORS: usize = 4;

/// Number of fingers, re-exported for drivers that display the table.
pub const FINGERS: usize = ID_BITS;
