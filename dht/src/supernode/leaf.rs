//! A leaf's side: attaching to one supernode, heartbeats, a warm standby, failover, backoff,
//! and the operations it forwards.
//!
//! # What this module owns
//! One [`Leaf`] per leaf process. Its state is one of
//! - *idle* (waiting for its next attempt, after a backoff),
//! - *attaching* (an `Attach` in flight to one candidate), or
//! - *attached* (heartbeating its supernode every `heartbeat_interval`);
//!
//! plus the candidates it knows (configured addresses, and supernodes learned from listings and
//! refusals, at most `max_known`, with the load and round trip last seen), a *standby* (a
//! candidate it probes every `standby_interval` so it knows it is alive and not full), and the
//! operations it forwarded that have no reply yet.
//!
//! # Failover
//! Heartbeats are numbered; a `Pong` from the supernode for any of them counts as a sign of
//! life. After `missed_heartbeats` heartbeats in a row went unanswered for a full interval each,
//! the supernode is declared lost and the leaf attaches to its standby — after a short random
//! delay (`failover_jitter`) so that the leaves of a crashed supernode, which all notice within
//! one heartbeat interval of each other, do not all arrive in the same millisecond.
//!
//! # Choosing, redirects and backoff
//! A candidate is drawn at random weighted by free slots over round trip, among those not
//! refused or unreachable recently. A refusal's alternatives join the candidates, and the leaf
//! tries the next one at once — up to `redirects_before_backoff` attempts in a row. After that
//! (everyone it asked was full, busy or silent), or when no candidate is left, it waits a
//! jittered exponential backoff: uniform in [d/2, d] with d = min(`backoff_max`,
//! `backoff_base` · 2^attempt). Leaves that find everyone full therefore retry ever more slowly
//! and never in step, instead of hammering the survivors.
//!
//! # Operations across a switch
//! [`Leaf::forward`] gives an operation a [`LeafOpId`] and sends it when attached. Operations
//! without a reply are resent, with the same ids, every `op_retry` while attached (a request or
//! reply may be lost) and each time the leaf attaches (to its standby or anyone else) —
//! [`Leaf::pending_ops`] lists them, [`Leaf::resend_pending`] does it on demand.
//! The ring services drop duplicates by id; a reply is taken only from the current supernode.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

use super::SuperCounters;
use super::wire::{ByteString, LeafOpId, Load, MAX_PAYLOAD_BYTES, OpRefusal, Refusal, SuperMessage};
use crate::address::Address;
use crate::time::Time;

/// Settings of a leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafConfig {
    /// Heartbeat period. Default 1 s.
    pub heartbeat_interval: Duration,
    /// Heartbeats in a row without an answer before the supernode counts as lost. Default 3.
    pub missed_heartbeats: u32,
    /// How long to wait for an answer to an attach or a probe. Default 1 s.
    pub request_timeout: Duration,
    /// Longest random delay before attaching to the standby after a loss. Default 250 ms.
    pub failover_jitter: Duration,
    /// First backoff. Default 500 ms.
    pub backoff_base: Duration,
    /// Longest backoff. Default 30 s.
    pub backoff_max: Duration,
    /// Attempts in a row (redirects, time-outs) before backing off. Default 4.
    pub redirects_before_backoff: u32,
    /// How often the standby is probed. Default 5 s.
    pub standby_interval: Duration,
    /// How often the attached leaf asks its supernode for alternatives. Default 30 s.
    pub refresh_interval: Duration,
    /// Candidates remembered. Default 64.
    pub max_known: usize,
    /// Forwarded operations without a reply, at most. Default 1024.
    pub max_pending_ops: usize,
    /// How long an operation may wait for its reply. Default 30 s.
    pub op_timeout: Duration,
    /// An operation without a reply is resent (same id) this often while attached, in case the
    /// request or its reply was lost. Default 5 s.
    pub op_retry: Duration,
}

impl Default for LeafConfig {
    fn default() -> Self {
        LeafConfig {
            heartbeat_interval: Duration::from_secs(1),
            missed_heartbeats: 3,
            request_timeout: Duration::from_secs(1),
            failover_jitter: Duration::from_millis(250),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            redirects_before_backoff: 4,
            standby_interval: Duration::from_secs(5),
            refresh_interval: Duration::from_secs(30),
            max_known: 64,
            max_pending_ops: 1024,
            op_timeout: Duration::from_secs(30),
            op_retry: Duration::from_secs(5),
        }
    }
}

/// Why an operation could not be forwarded or did not finish.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum OpError {
    /// The payload is over [`MAX_PAYLOAD_BYTES`].
    #[error("payload of {len} bytes exceeds {max}")]
    TooLarge {
        /// The payload's size.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// `max_pending_ops` operations are waiting already; retry later.
    #[error("too many operations in flight")]
    Overloaded,
    /// No reply within `op_timeout`, across however many supernodes.
    #[error("no reply in time")]
    TimedOut,
    /// The supernode or the ring refused.
    #[error("{0}")]
    Refused(OpRefusal),
}

/// What a leaf reports to its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeafEvent<A> {
    /// The leaf attached to `supernode`.
    Attached {
        /// The supernode.
        supernode: A,
        /// Its load, this leaf included.
        load: Load,
    },
    /// The leaf's supernode stopped answering (or forgot it); it is failing over.
    SupernodeLost {
        /// The supernode.
        supernode: A,
    },
    /// Every candidate refused or was silent; the next attempt is at `until`.
    BackingOff {
        /// When the leaf tries again.
        until: Time,
    },
    /// A forwarded operation finished.
    OpDone {
        /// The operation.
        op: LeafOpId,
        /// The ring service's answer, or why there is none.
        result: Result<Vec<u8>, OpError>,
    },
}

#[derive(Clone, Debug)]
struct Candidate {
    load: Option<Load>,
    rtt: Option<Duration>,
    /// Not to be asked before this (refused, silent).
    avoid_until: Time,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State<A> {
    Idle {
        next_try: Time,
    },
    Attaching {
        to: A,
        req: u64,
        deadline: Time,
    },
    Attached {
        to: A,
        unanswered: u32,
        next_heartbeat: Time,
        next_refresh: Time,
    },
    /// Detached for good ([`Leaf::detach`]).
    Stopped,
}

#[derive(Clone, Debug)]
struct Standby<A> {
    addr: A,
    unanswered: u32,
    next_probe: Time,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asked {
    Heartbeat,
    Probe,
    Alternatives,
}

#[derive(Clone, Debug)]
struct Pending<A> {
    to: A,
    asked: Asked,
    sent: Time,
    deadline: Time,
}

#[derive(Clone, Debug)]
struct PendingOp {
    payload: Vec<u8>,
    deadline: Time,
    /// When to send it again if no reply came.
    retry_at: Time,
}

/// A leaf's attachment state machine.
#[derive(Debug)]
pub struct Leaf<A: Address> {
    config: LeafConfig,
    rng: ChaCha8Rng,
    state: State<A>,
    known: BTreeMap<A, Candidate>,
    standby: Option<Standby<A>>,
    /// Attempts in a row without attaching; reset on attaching.
    attempts: u32,
    /// Backoffs in a row; the exponent of the next one.
    backoffs: u32,
    pending: BTreeMap<u64, Pending<A>>,
    ops: BTreeMap<LeafOpId, PendingOp>,
    next_req: u64,
    next_op: u64,
    transmits: VecDeque<(A, SuperMessage<A>)>,
    events: VecDeque<LeafEvent<A>>,
    counters: SuperCounters,
}

/// Load assumed of a candidate never heard from.
const UNKNOWN_FREE: u64 = 64;
/// Round trip assumed of a candidate never measured.
const UNKNOWN_RTT: Duration = Duration::from_millis(100);
/// How long a silent candidate is avoided.
const SILENT_AVOID: Duration = Duration::from_secs(10);

impl<A: Address> Leaf<A> {
    /// A leaf that knows the supernodes `configured` (the `--supernode` flags); it attaches on its
    /// first [`Leaf::handle_timeout`]. `seed` drives every random choice.
    pub fn new(configured: Vec<A>, config: LeafConfig, seed: u64, now: Time) -> Self {
        let mut leaf = Leaf {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            state: State::Idle { next_try: now },
            known: BTreeMap::new(),
            standby: None,
            attempts: 0,
            backoffs: 0,
            pending: BTreeMap::new(),
            ops: BTreeMap::new(),
            next_req: 1,
            next_op: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: SuperCounters::default(),
        };
        for addr in configured {
            leaf.learn(addr, None);
        }
        leaf
    }

    // ----- getters --------------------------------------------------------------------------

    /// The supernode this leaf is attached to.
    pub fn supernode(&self) -> Option<&A> {
        match &self.state {
            State::Attached { to, .. } => Some(to),
            _ => None,
        }
    }

    /// The warm standby.
    pub fn standby(&self) -> Option<&A> {
        self.standby.as_ref().map(|s| &s.addr)
    }

    /// Candidates known.
    pub fn known(&self) -> usize {
        self.known.len()
    }

    /// Ids of the forwarded operations without a reply (resent on every attach).
    pub fn pending_ops(&self) -> impl Iterator<Item = LeafOpId> + '_ {
        self.ops.keys().copied()
    }

    /// The counters.
    pub fn counters(&self) -> &SuperCounters {
        &self.counters
    }

    // ----- input ----------------------------------------------------------------------------

    /// A supernode message from `from` (authenticated by the transport).
    pub fn handle_message(&mut self, from: A, message: SuperMessage<A>, now: Time) {
        if message.validate().is_err() {
            self.counters.dropped += 1;
            return;
        }
        match message {
            SuperMessage::Attached { req, load } => self.on_attached(from, req, load, now),
            SuperMessage::Refused { req, reason, retry_after_ms, alternatives } => {
                self.on_refused(from, req, reason, retry_after_ms, alternatives, now)
            }
            SuperMessage::Pong { req, attached, load } => self.on_pong(from, req, attached, load, now),
            SuperMessage::Listing { req, supernodes } => {
                if self.take_pending(&from, req).is_some_and(|p| p.asked == Asked::Alternatives) {
                    for info in supernodes {
                        self.learn(info.addr, Some(info.load));
                    }
                    if self.standby.is_none() {
                        self.pick_standby(now);
                    }
                }
            }
            SuperMessage::Reply { op, result } => {
                if self.supernode() != Some(&from) || !self.ops.contains_key(&op) {
                    self.counters.dropped += 1;
                    return;
                }
                match result {
                    // Not attached there after all (it restarted): the op stays, and the leaf
                    // re-attaches and resends it.
                    Err(OpRefusal::NotAttached) => self.lose_supernode(now, true),
                    // Over the rate: keep it for the next resend.
                    Err(OpRefusal::Throttled) => {}
                    result => {
                        self.ops.remove(&op);
                        let result = result.map(|ByteString(bytes)| bytes).map_err(OpError::Refused);
                        self.events.push_back(LeafEvent::OpDone { op, result });
                    }
                }
            }
            _ => self.counters.dropped += 1,
        }
    }

    /// A message to `peer` could not be delivered (the connection is gone): if it is the
    /// supernode, fail over now rather than after three heartbeats.
    pub fn handle_unreachable(&mut self, peer: &A, now: Time) {
        if self.supernode() == Some(peer) {
            self.avoid(peer, now + SILENT_AVOID);
            self.lose_supernode(now, false);
        } else if let State::Attaching { to, .. } = &self.state
            && to == peer
        {
            let to = to.clone();
            self.avoid(&to, now + SILENT_AVOID);
            self.next_attempt(now);
        }
    }

    /// Time has come (see [`Leaf::poll_timeout`]).
    pub fn handle_timeout(&mut self, now: Time) {
        let expired: Vec<u64> =
            self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(r, _)| *r).collect();
        for req in expired {
            let Some(pending) = self.pending.remove(&req) else { continue };
            // A lost listing would leave the leaf knowing only its configured supernodes until
            // the next refresh, and with nowhere to go if they die meanwhile: ask again now.
            if pending.asked == Asked::Alternatives
                && let State::Attached { to, next_refresh, .. } = &mut self.state
                && *to == pending.to
            {
                *next_refresh = now;
            }
            if pending.asked == Asked::Probe
                && let Some(standby) = self.standby.as_mut().filter(|s| s.addr == pending.to)
            {
                standby.unanswered += 1;
                if standby.unanswered >= 2 {
                    let addr = standby.addr.clone();
                    self.standby = None;
                    self.avoid(&addr, now + SILENT_AVOID);
                    self.pick_standby(now);
                }
            }
        }
        let timed_out: Vec<LeafOpId> =
            self.ops.iter().filter(|(_, op)| op.deadline <= now).map(|(id, _)| *id).collect();
        for op in timed_out {
            self.ops.remove(&op);
            self.events.push_back(LeafEvent::OpDone { op, result: Err(OpError::TimedOut) });
        }
        if let Some(to) = self.supernode().cloned() {
            let retry_at = now + self.config.op_retry;
            let due: Vec<(LeafOpId, Vec<u8>)> = self
                .ops
                .iter_mut()
                .filter(|(_, p)| p.retry_at <= now)
                .map(|(op, p)| {
                    p.retry_at = retry_at;
                    (*op, p.payload.clone())
                })
                .collect();
            for (op, payload) in due {
                self.counters.resent += 1;
                self.send(to.clone(), SuperMessage::Forward { op, payload });
            }
        }
        match self.state.clone() {
            State::Idle { next_try } if next_try <= now => self.next_attempt(now),
            State::Attaching { to, deadline, .. } if deadline <= now => {
                self.counters.attach_timeouts += 1;
                self.avoid(&to, now + SILENT_AVOID);
                self.next_attempt(now);
            }
            State::Attached { to, unanswered, next_heartbeat, next_refresh } => {
                if next_heartbeat <= now {
                    if unanswered >= self.config.missed_heartbeats {
                        self.counters.heartbeats_missed += u64::from(unanswered);
                        self.avoid(&to, now + SILENT_AVOID);
                        self.lose_supernode(now, false);
                        return;
                    }
                    let req = self.request(to.clone(), Asked::Heartbeat, self.config.heartbeat_interval, now);
                    self.send(to.clone(), SuperMessage::Ping { req });
                    let next_heartbeat = now + self.config.heartbeat_interval;
                    self.state = State::Attached {
                        to: to.clone(),
                        unanswered: unanswered + 1,
                        next_heartbeat,
                        next_refresh,
                    };
                }
                if next_refresh <= now {
                    let req = self.request(to.clone(), Asked::Alternatives, self.config.request_timeout, now);
                    self.send(to.clone(), SuperMessage::Alternatives { req });
                    if let State::Attached { next_refresh, .. } = &mut self.state {
                        *next_refresh = now + self.config.refresh_interval;
                    }
                }
                self.probe_standby(now);
            }
            _ => {}
        }
    }

    // ----- commands -------------------------------------------------------------------------

    /// Asks for `payload` to be carried into the ring; the answer comes as
    /// [`LeafEvent::OpDone`]. Sent now when attached, otherwise on attaching.
    pub fn forward(&mut self, payload: Vec<u8>, now: Time) -> Result<LeafOpId, OpError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(OpError::TooLarge { len: payload.len(), max: MAX_PAYLOAD_BYTES });
        }
        if self.ops.len() >= self.config.max_pending_ops {
            return Err(OpError::Overloaded);
        }
        let op = LeafOpId(self.next_op);
        self.next_op += 1;
        if let Some(to) = self.supernode().cloned() {
            self.send(to, SuperMessage::Forward { op, payload: payload.clone() });
        }
        let retry_at = now + self.config.op_retry;
        self.ops.insert(op, PendingOp { payload, deadline: now + self.config.op_timeout, retry_at });
        Ok(op)
    }

    /// Sends every operation without a reply to the current supernode again, same ids (done on
    /// every attach; call it to retry sooner).
    pub fn resend_pending(&mut self, now: Time) {
        let Some(to) = self.supernode().cloned() else { return };
        let retry_at = now + self.config.op_retry;
        let resend: Vec<(LeafOpId, Vec<u8>)> = self
            .ops
            .iter_mut()
            .map(|(op, p)| {
                p.retry_at = retry_at;
                (*op, p.payload.clone())
            })
            .collect();
        for (op, payload) in resend {
            self.counters.resent += 1;
            self.send(to.clone(), SuperMessage::Forward { op, payload });
        }
    }

    /// Leaves the supernode gracefully (the leaf shuts down).
    pub fn detach(&mut self) {
        if let Some(to) = self.supernode().cloned() {
            let req = self.fresh_req();
            self.send(to, SuperMessage::Detach { req });
        }
        self.state = State::Stopped;
        self.standby = None;
    }

    // ----- output ---------------------------------------------------------------------------

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<(A, SuperMessage<A>)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<LeafEvent<A>> {
        self.events.pop_front()
    }

    /// When [`Leaf::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Time> {
        let state = match &self.state {
            State::Stopped => return None,
            State::Idle { next_try } => *next_try,
            State::Attaching { deadline, .. } => *deadline,
            State::Attached { next_heartbeat, next_refresh, .. } => {
                let standby = self.standby.as_ref().map_or(*next_heartbeat, |s| s.next_probe);
                (*next_heartbeat).min(*next_refresh).min(standby)
            }
        };
        let pending = self.pending.values().map(|p| p.deadline).min();
        // Retries count only while attached (they go to the supernode).
        let attached = matches!(self.state, State::Attached { .. });
        let ops =
            self.ops.values().map(|p| if attached { p.deadline.min(p.retry_at) } else { p.deadline }).min();
        [Some(state), pending, ops].into_iter().flatten().min()
    }

    // ----- plumbing -------------------------------------------------------------------------

    fn on_attached(&mut self, from: A, req: u64, load: Load, now: Time) {
        match &self.state {
            State::Attaching { to, req: asked, .. } if *to == from && *asked == req => {}
            _ => {
                self.counters.dropped += 1;
                return;
            }
        }
        self.counters.attached += 1;
        self.attempts = 0;
        self.backoffs = 0;
        self.learn(from.clone(), Some(load));
        if self.standby.as_ref().is_some_and(|s| s.addr == from) {
            self.standby = None;
        }
        // Heartbeats start one interval from now; alternatives are asked for at once, which also
        // gives the leaf a standby.
        self.state = State::Attached {
            to: from.clone(),
            unanswered: 0,
            next_heartbeat: now + self.config.heartbeat_interval,
            next_refresh: now,
        };
        self.events.push_back(LeafEvent::Attached { supernode: from, load });
        self.resend_pending(now);
        self.pick_standby(now);
    }

    fn on_refused(
        &mut self,
        from: A,
        req: u64,
        reason: Refusal,
        retry_after_ms: u32,
        alternatives: Vec<super::wire::SupernodeInfo<A>>,
        now: Time,
    ) {
        match &self.state {
            State::Attaching { to, req: asked, .. } if *to == from && *asked == req => {}
            _ => {
                self.counters.dropped += 1;
                return;
            }
        }
        self.counters.refusals += 1;
        if reason == Refusal::Full
            && let Some(candidate) = self.known.get_mut(&from)
        {
            candidate.load = candidate.load.map(|l| Load { leaves: l.cap, ..l });
        }
        // A supernode cannot keep a leaf away for long: it would strand it.
        let retry = Duration::from_millis(u64::from(retry_after_ms)).min(Duration::from_secs(60));
        self.avoid(&from, now + retry);
        for info in alternatives {
            self.learn(info.addr, Some(info.load));
        }
        self.counters.redirects += 1;
        self.next_attempt(now);
    }

    fn on_pong(&mut self, from: A, req: u64, attached: bool, load: Load, now: Time) {
        let Some(pending) = self.take_pending(&from, req) else { return };
        if let Some(candidate) = self.known.get_mut(&from) {
            candidate.load = Some(load);
            candidate.rtt = Some(now.saturating_since(pending.sent));
        }
        match pending.asked {
            Asked::Heartbeat => match &mut self.state {
                State::Attached { to, unanswered, .. } if *to == from => {
                    if attached {
                        *unanswered = 0;
                    } else {
                        // It restarted or dropped us: attach again, to it first.
                        self.lose_supernode(now, true);
                    }
                }
                _ => {}
            },
            Asked::Probe => {
                if let Some(standby) = self.standby.as_mut().filter(|s| s.addr == from) {
                    standby.unanswered = 0;
                    if load.is_full() {
                        self.standby = None;
                        self.pick_standby(now);
                    }
                }
            }
            Asked::Alternatives => {}
        }
    }

    /// The supernode is lost: go to the standby (after a little jitter), or anyone else.
    /// `retry_same`: it answered but forgot us, so it may be asked first.
    fn lose_supernode(&mut self, now: Time, retry_same: bool) {
        let State::Attached { to, .. } = &self.state else { return };
        let to = to.clone();
        self.counters.failovers += 1;
        self.pending.retain(|_, p| p.to != to);
        self.events.push_back(LeafEvent::SupernodeLost { supernode: to.clone() });
        if retry_same && self.standby.is_none() {
            self.standby = Some(Standby { addr: to, unanswered: 0, next_probe: now });
        }
        let jitter = self.random_up_to(self.config.failover_jitter);
        self.state = State::Idle { next_try: now + jitter };
    }

    /// Tries the next candidate now, or backs off when too many attempts failed in a row or
    /// nobody is left to ask.
    fn next_attempt(&mut self, now: Time) {
        self.state = State::Idle { next_try: now };
        if self.attempts >= self.config.redirects_before_backoff {
            return self.back_off(now);
        }
        let target = match self.standby.take() {
            Some(standby) if self.known.get(&standby.addr).is_none_or(|c| c.avoid_until <= now) => {
                Some(standby.addr)
            }
            _ => self.choose(now, None),
        };
        let Some(to) = target else {
            return self.back_off(now);
        };
        self.attempts += 1;
        let req = self.fresh_req();
        self.state = State::Attaching { to: to.clone(), req, deadline: now + self.config.request_timeout };
        self.send(to, SuperMessage::Attach { req });
    }

    fn back_off(&mut self, now: Time) {
        let exp = self.backoffs.min(20);
        let base = u64::try_from(self.config.backoff_base.as_micros()).unwrap_or(u64::MAX);
        let max = u64::try_from(self.config.backoff_max.as_micros()).unwrap_or(u64::MAX);
        let d = base.saturating_mul(1 << exp).min(max).max(2);
        let delay = Duration::from_micros(self.rng.random_range(d / 2..=d));
        self.backoffs += 1;
        self.attempts = 0;
        self.counters.backoffs += 1;
        let until = now + delay;
        self.state = State::Idle { next_try: until };
        self.events.push_back(LeafEvent::BackingOff { until });
    }

    /// A candidate drawn at random, weighted by free slots over round trip, among those not
    /// avoided; never `except`, never the current supernode.
    fn choose(&mut self, now: Time, except: Option<&A>) -> Option<A> {
        let current = self.supernode().cloned();
        let weights: Vec<(A, u64)> = self
            .known
            .iter()
            .filter(|(addr, c)| {
                c.avoid_until <= now && Some(*addr) != except && Some(*addr) != current.as_ref()
            })
            .map(|(addr, c)| {
                let free = c.load.map_or(UNKNOWN_FREE, |l| u64::from(l.free()));
                let rtt_ms = c.rtt.unwrap_or(UNKNOWN_RTT).as_millis() as u64;
                (addr.clone(), free * 1000 / (rtt_ms + 20))
            })
            .filter(|(_, w)| *w > 0)
            .collect();
        let total: u64 = weights.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return None;
        }
        let mut pick = self.rng.random_range(0..total);
        for (addr, w) in weights {
            if pick < w {
                return Some(addr);
            }
            pick -= w;
        }
        None
    }

    fn pick_standby(&mut self, now: Time) {
        let Some(current) = self.supernode().cloned() else { return };
        if let Some(addr) = self.choose(now, Some(&current)) {
            self.standby = Some(Standby { addr, unanswered: 0, next_probe: now });
        }
    }

    fn probe_standby(&mut self, now: Time) {
        let Some(standby) = self.standby.as_mut() else { return };
        if standby.next_probe > now {
            return;
        }
        standby.next_probe = now + self.config.standby_interval;
        let to = standby.addr.clone();
        let req = self.request(to.clone(), Asked::Probe, self.config.request_timeout, now);
        self.send(to, SuperMessage::Ping { req });
    }

    fn learn(&mut self, addr: A, load: Option<Load>) {
        if let Some(candidate) = self.known.get_mut(&addr) {
            if load.is_some() {
                candidate.load = load;
            }
            return;
        }
        if self.known.len() >= self.config.max_known {
            // Forget the fullest candidate that is neither the supernode nor the standby.
            let keep = [self.supernode().cloned(), self.standby().cloned()];
            let fullest = self
                .known
                .iter()
                .filter(|(a, _)| !keep.iter().flatten().any(|k| k == *a))
                .min_by_key(|(_, c)| c.load.map_or(UNKNOWN_FREE, |l| u64::from(l.free())))
                .map(|(a, _)| a.clone());
            match fullest {
                Some(fullest) => {
                    self.known.remove(&fullest);
                }
                None => return,
            }
        }
        self.known.insert(addr, Candidate { load, rtt: None, avoid_until: Time::ZERO });
    }

    fn avoid(&mut self, addr: &A, until: Time) {
        if let Some(candidate) = self.known.get_mut(addr) {
            candidate.avoid_until = candidate.avoid_until.max(until);
        }
    }

    fn request(&mut self, to: A, asked: Asked, timeout: Duration, now: Time) -> u64 {
        let req = self.fresh_req();
        self.pending.insert(req, Pending { to, asked, sent: now, deadline: now + timeout });
        req
    }

    /// Removes the request `req` if it went to `from`; counts a drop otherwise (an unknown id or
    /// the wrong sender: a stale or hostile answer).
    fn take_pending(&mut self, from: &A, req: u64) -> Option<Pending<A>> {
        match self.pending.get(&req) {
            Some(p) if &p.to == from => self.pending.remove(&req),
            _ => {
                self.counters.dropped += 1;
                None
            }
        }
    }

    fn fresh_req(&mut self) -> u64 {
        let req = self.next_req;
        self.next_req += 1;
        req
    }

    fn random_up_to(&mut self, max: Duration) -> Duration {
        let micros = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(self.rng.random_range(0..=micros))
    }

    fn send(&mut self, to: A, message: SuperMessage<A>) {
        self.transmits.push_back((to, message));
    }
}
