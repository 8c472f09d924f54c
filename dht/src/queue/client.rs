//! Operations this node's clients started, and their subscriptions.
//!
//! Owns [`ClientOp`] and [`ClientSub`]. An operation finds the queue's ordering node (the ring's
//! cached range first, a lookup on every retry), sends its request, and on a redirect, a refusal
//! that a new ordering node may not give, or a time-out, tries again after a short pause with
//! the same put id, until its deadline. A take waits at the ordering node in slices of at most
//! [`MAX_WAIT_SLICE`], so an ordering node that dies while holding it costs one slice, not the
//! whole wait. Subscriptions renew every third of `subscription_ttl` at whoever the ring says
//! orders the queue now, and pass each message on once (by id).
//!
//! Invariants: at most one request in flight per operation and per subscription; every
//! operation ends with exactly one [`QueueEvent::Done`] (success, refusal or time-out).

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use super::wire::{MAX_QUEUE_BODY_BYTES, MsgId, QueueMessage, QueueName, Refusal, StoredMessage};
use super::{
    Leased, MAX_OPS, MAX_SUBS, Purpose, QueueError, QueueEvent, QueueOpId, QueueOutcome, Queues, SubId,
};
use crate::address::{Address, NodeRef};
use crate::error::LookupError;
use crate::lookup::LookupOutcome;
use crate::node::Node;
use crate::time::Time;

/// Longest a take waits at the ordering node in one request.
pub(super) const MAX_WAIT_SLICE: Duration = Duration::from_secs(10);
/// Pause before trying again after a redirect, a refusal or a failure.
const RETRY_PAUSE: Duration = Duration::from_millis(150);
/// Message ids a subscription remembers to pass each message on once.
const SEEN_IDS: usize = 8192;

/// What a lookup was started for.
#[derive(Clone, Copy, Debug)]
pub(super) enum Waiting {
    Op(QueueOpId),
    Sub(SubId),
}

#[derive(Clone, Debug)]
pub(super) enum ClientKind {
    Put { id: MsgId, sender: String, quota: Option<u32>, body: Vec<u8>, put_ms: u64 },
    Take { consumer: String, wait_until: Time, lease: Duration },
    Ack { seq: u64, id: MsgId, lease: u64 },
    Stat,
}

#[derive(Clone, Debug)]
enum Phase<A> {
    Looking,
    Sent { owner: NodeRef<A> },
    Pause { until: Time },
}

/// A client operation.
#[derive(Clone, Debug)]
pub(super) struct ClientOp<A> {
    queue: QueueName,
    kind: ClientKind,
    deadline: Time,
    phase: Phase<A>,
    attempts: u32,
    last_error: Option<String>,
}

impl<A> ClientOp<A> {
    /// When the operation needs the clock next.
    pub(super) fn wake_at(&self) -> Time {
        match self.phase {
            Phase::Pause { until } => until.min(self.deadline),
            _ => self.deadline,
        }
    }
}

#[derive(Clone, Debug)]
enum SubPhase {
    Idle { renew_at: Time },
    Looking,
    Registering,
}

/// A subscription of this node to a queue.
#[derive(Clone, Debug)]
pub(super) struct ClientSub<A> {
    queue: QueueName,
    /// The request id registrations and notifications carry (the same for the whole life).
    req: u64,
    /// Where the subscription is registered now.
    owner: Option<A>,
    phase: SubPhase,
    /// The highest sequence number passed on.
    last_seq: u64,
    seen: HashSet<MsgId>,
    seen_order: VecDeque<MsgId>,
}

impl<A: Address> Queues<A> {
    /// Appends `body` to `queue` under put id `id` (random, from the driver).
    #[allow(clippy::too_many_arguments)]
    pub fn put(
        &mut self,
        queue: QueueName,
        id: MsgId,
        sender: String,
        quota: Option<u32>,
        body: Vec<u8>,
        put_ms: u64,
        ring: &mut Node<A>,
        now: Time,
    ) -> QueueOpId {
        let op = self.new_op_id();
        if body.len() > MAX_QUEUE_BODY_BYTES {
            let error = QueueError::TooLarge { len: body.len(), max: MAX_QUEUE_BODY_BYTES };
            self.events.push_back(QueueEvent::Done { op, result: Err(error) });
            return op;
        }
        let sender: String = sender.chars().take(64).collect();
        let kind = ClientKind::Put { id, sender, quota, body, put_ms };
        self.start_op(op, queue, kind, now + self.config.op_timeout, ring, now);
        op
    }

    /// Takes the first message of `queue`, waiting up to `wait` for one; it stays leased to this
    /// consumer for `lease` and must be acknowledged ([`Queues::ack`]) before that.
    pub fn take(
        &mut self,
        queue: QueueName,
        consumer: String,
        wait: Duration,
        lease: Duration,
        ring: &mut Node<A>,
        now: Time,
    ) -> QueueOpId {
        let op = self.new_op_id();
        let wait = wait.min(self.config.max_wait);
        let consumer: String = consumer.chars().take(64).collect();
        let kind = ClientKind::Take { consumer, wait_until: now + wait, lease };
        self.start_op(op, queue, kind, now + wait + self.config.op_timeout, ring, now);
        op
    }

    /// Acknowledges (removes) a message a take returned.
    pub fn ack(
        &mut self,
        queue: QueueName,
        seq: u64,
        id: MsgId,
        lease: u64,
        ring: &mut Node<A>,
        now: Time,
    ) -> QueueOpId {
        let op = self.new_op_id();
        self.start_op(op, queue, ClientKind::Ack { seq, id, lease }, now + self.config.op_timeout, ring, now);
        op
    }

    /// The queue's figures, from its ordering node.
    pub fn stat(&mut self, queue: QueueName, ring: &mut Node<A>, now: Time) -> QueueOpId {
        let op = self.new_op_id();
        self.start_op(op, queue, ClientKind::Stat, now + self.config.op_timeout, ring, now);
        op
    }

    /// Subscribes to every message put in `queue` (and those present from `from_seq`); `None`
    /// when this node has too many subscriptions.
    pub fn subscribe(
        &mut self,
        queue: QueueName,
        from_seq: u64,
        ring: &mut Node<A>,
        now: Time,
    ) -> Option<SubId> {
        if self.subs.len() >= MAX_SUBS {
            return None;
        }
        let sub = SubId(self.next_sub);
        self.next_sub += 1;
        let req = self.fresh_req();
        let state = ClientSub {
            queue,
            req,
            owner: None,
            phase: SubPhase::Idle { renew_at: now },
            last_seq: from_seq.saturating_sub(1),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
        };
        self.subs.insert(sub, state);
        self.renew(sub, ring, now);
        Some(sub)
    }

    /// Ends a subscription (its registration at the ordering node runs out by itself).
    pub fn unsubscribe(&mut self, sub: SubId) {
        self.subs.remove(&sub);
    }

    fn new_op_id(&mut self) -> QueueOpId {
        let op = QueueOpId(self.next_op);
        self.next_op += 1;
        op
    }

    fn start_op(
        &mut self,
        op: QueueOpId,
        queue: QueueName,
        kind: ClientKind,
        deadline: Time,
        ring: &mut Node<A>,
        now: Time,
    ) {
        if self.ops.len() >= MAX_OPS {
            self.events.push_back(QueueEvent::Done { op, result: Err(QueueError::Overloaded) });
            return;
        }
        let state = ClientOp { queue, kind, deadline, phase: Phase::Looking, attempts: 0, last_error: None };
        self.ops.insert(op, state);
        self.route(op, ring, now);
    }

    /// Finds the ordering node: the ring's cached view on a first attempt, a lookup after.
    fn route(&mut self, op: QueueOpId, ring: &mut Node<A>, now: Time) {
        let Some(state) = self.ops.get_mut(&op) else { return };
        let qid = state.queue.id();
        state.phase = Phase::Looking;
        if state.attempts == 0
            && let Some(owner) = ring.cached_replicas(&qid, 1, now).and_then(|set| set.into_iter().next())
        {
            self.send_op(op, owner, now);
            return;
        }
        let lookup = ring.lookup(qid, now);
        self.lookups.insert(lookup, Waiting::Op(op));
    }

    pub(super) fn on_lookup(
        &mut self,
        waiting: Waiting,
        result: &Result<LookupOutcome<A>, LookupError>,
        ring: &mut Node<A>,
        now: Time,
    ) {
        match (waiting, result) {
            (Waiting::Op(op), Ok(outcome)) => self.send_op(op, outcome.owner.clone(), now),
            (Waiting::Op(op), Err(error)) => self.retry_later(op, error.to_string(), now),
            (Waiting::Sub(sub), Ok(outcome)) => self.register(sub, outcome.owner.addr.clone(), now),
            (Waiting::Sub(sub), Err(_)) => self.sub_retry_later(sub, now),
        }
        let _ = ring;
    }

    fn send_op(&mut self, op: QueueOpId, owner: NodeRef<A>, now: Time) {
        let request_timeout = self.config.request_timeout;
        let req = self.fresh_req();
        let Some(state) = self.ops.get_mut(&op) else { return };
        state.attempts += 1;
        let queue = state.queue.clone();
        let (message, timeout) = match &state.kind {
            ClientKind::Put { id, sender, quota, body, put_ms } => (
                QueueMessage::Put {
                    req,
                    queue,
                    id: *id,
                    sender: sender.clone(),
                    quota: *quota,
                    body: body.clone(),
                    put_ms: *put_ms,
                },
                request_timeout,
            ),
            ClientKind::Take { consumer, wait_until, lease } => {
                let wait = wait_until.saturating_since(now).min(MAX_WAIT_SLICE);
                let message = QueueMessage::Take {
                    req,
                    queue,
                    consumer: consumer.clone(),
                    wait_ms: wait.as_millis() as u64,
                    lease_ms: lease.as_millis() as u64,
                };
                (message, request_timeout + wait)
            }
            ClientKind::Ack { seq, id, lease } => {
                (QueueMessage::Ack { req, queue, seq: *seq, id: *id, lease: *lease }, request_timeout)
            }
            ClientKind::Stat => (QueueMessage::Stat { req, queue }, request_timeout),
        };
        state.phase = Phase::Sent { owner: owner.clone() };
        self.request(owner.addr, message, Purpose::Client(op), timeout, now);
    }

    pub(super) fn on_client_answer(
        &mut self,
        op: QueueOpId,
        from: A,
        answer: QueueMessage<A>,
        ring: &mut Node<A>,
        now: Time,
    ) {
        let Some(state) = self.ops.get(&op) else { return };
        let owner = match &state.phase {
            Phase::Sent { owner } if owner.addr == from => owner.clone(),
            _ => {
                self.counters.dropped += 1;
                return;
            }
        };
        let outcome: Result<QueueOutcome<A>, Refusal> = match answer {
            QueueMessage::PutDone { result, .. } => {
                let id = match &state.kind {
                    ClientKind::Put { id, .. } => *id,
                    _ => return self.drop_answer(),
                };
                result.map(|seq| QueueOutcome::Put { seq, id })
            }
            QueueMessage::Taken { result, .. } => {
                let ClientKind::Take { wait_until, .. } = &state.kind else { return self.drop_answer() };
                match result {
                    Ok(None) if *wait_until > now + Duration::from_millis(50) => {
                        // The slice ended with nothing: wait again.
                        self.send_op(op, owner, now);
                        return;
                    }
                    Ok(taken) => {
                        Ok(QueueOutcome::Taken(taken.map(|(message, lease)| Leased { message, lease })))
                    }
                    Err(refusal) => Err(refusal),
                }
            }
            QueueMessage::AckDone { result, .. } => result.map(QueueOutcome::Acked),
            QueueMessage::Stats { result, .. } => result.map(|stats| QueueOutcome::Stats { stats, owner }),
            QueueMessage::Redirect { .. } => Err(Refusal::NotOwner),
            _ => return self.drop_answer(),
        };
        match outcome {
            Ok(outcome) => self.finish_op(op, Ok(outcome)),
            Err(refusal @ (Refusal::NotOwner | Refusal::NotReady | Refusal::NoReplica)) => {
                if matches!(refusal, Refusal::NotOwner) {
                    ring.forget_cached(&from);
                }
                self.retry_later(op, refusal.to_string(), now);
            }
            Err(refusal) => self.finish_op(op, Err(QueueError::Refused(refusal))),
        }
    }

    fn drop_answer(&mut self) {
        self.counters.dropped += 1;
    }

    pub(super) fn on_client_failed(&mut self, op: QueueOpId, ring: &mut Node<A>, now: Time) {
        if let Some(Phase::Sent { owner }) = self.ops.get(&op).map(|s| s.phase.clone()) {
            ring.forget_cached(&owner.addr);
        }
        self.retry_later(op, "the ordering node did not answer".to_string(), now);
    }

    fn retry_later(&mut self, op: QueueOpId, why: String, now: Time) {
        let Some(state) = self.ops.get_mut(&op) else { return };
        state.last_error = Some(why);
        state.attempts = state.attempts.max(1);
        state.phase = Phase::Pause { until: now + RETRY_PAUSE };
    }

    fn finish_op(&mut self, op: QueueOpId, result: Result<QueueOutcome<A>, QueueError>) {
        if self.ops.remove(&op).is_some() {
            self.events.push_back(QueueEvent::Done { op, result });
        }
    }

    /// Deadlines and pauses of client operations, and subscription renewals.
    pub(super) fn client_timeouts(&mut self, ring: &mut Node<A>, now: Time) {
        let due: Vec<(QueueOpId, bool)> = self
            .ops
            .iter()
            .filter(|(_, s)| s.wake_at() <= now)
            .map(|(op, s)| (*op, s.deadline <= now))
            .collect();
        for (op, expired) in due {
            if expired {
                let last = self.ops.get(&op).and_then(|s| s.last_error.clone());
                // Forget the request in flight, if any: its answer would find no operation.
                self.pending.retain(|_, p| !matches!(p.purpose, Purpose::Client(o) if o == op));
                self.finish_op(op, Err(QueueError::TimedOut { last }));
            } else {
                self.route(op, ring, now);
            }
        }
        let renew: Vec<SubId> = self
            .subs
            .iter()
            .filter(|(_, s)| matches!(s.phase, SubPhase::Idle { renew_at } if renew_at <= now))
            .map(|(sub, _)| *sub)
            .collect();
        for sub in renew {
            self.renew(sub, ring, now);
        }
    }

    /// When subscriptions need the clock next.
    pub(super) fn subs_wake_at(&self) -> Option<Time> {
        self.subs
            .values()
            .filter_map(|s| match s.phase {
                SubPhase::Idle { renew_at } => Some(renew_at),
                _ => None,
            })
            .min()
    }

    // ----- subscriptions --------------------------------------------------------------------

    fn renew(&mut self, sub: SubId, ring: &mut Node<A>, now: Time) {
        let Some(state) = self.subs.get_mut(&sub) else { return };
        let qid = state.queue.id();
        state.phase = SubPhase::Looking;
        if let Some(owner) = ring.cached_replicas(&qid, 1, now).and_then(|set| set.into_iter().next())
            && state.owner.as_ref() == Some(&owner.addr)
        {
            self.register(sub, owner.addr, now);
            return;
        }
        let lookup = ring.lookup(qid, now);
        self.lookups.insert(lookup, Waiting::Sub(sub));
    }

    fn register(&mut self, sub: SubId, owner: A, now: Time) {
        let timeout = self.config.request_timeout;
        let Some(state) = self.subs.get_mut(&sub) else { return };
        state.phase = SubPhase::Registering;
        let message = QueueMessage::Subscribe {
            req: state.req,
            queue: state.queue.clone(),
            from_seq: state.last_seq + 1,
        };
        // A registration still in flight under the same request id is superseded.
        self.pending.remove(&state.req);
        self.request(owner, message, Purpose::Subscribe(sub), timeout, now);
    }

    pub(super) fn on_subscribed(&mut self, sub: SubId, from: A, answer: QueueMessage<A>, now: Time) {
        let ttl = self.config.subscription_ttl;
        let Some(state) = self.subs.get_mut(&sub) else { return };
        match answer {
            QueueMessage::Subscribed { result: Ok(()), .. } => {
                state.owner = Some(from);
                state.phase = SubPhase::Idle { renew_at: now + ttl / 3 };
            }
            _ => self.sub_retry_later(sub, now),
        }
    }

    pub(super) fn on_subscribe_failed(&mut self, sub: SubId, now: Time) {
        self.sub_retry_later(sub, now);
    }

    fn sub_retry_later(&mut self, sub: SubId, now: Time) {
        if let Some(state) = self.subs.get_mut(&sub) {
            state.owner = None;
            state.phase = SubPhase::Idle { renew_at: now + Duration::from_millis(500) };
        }
    }

    pub(super) fn on_notify(&mut self, from: A, req: u64, messages: Vec<StoredMessage>) {
        let Some((sub, state)) = self.subs.iter_mut().find(|(_, s)| s.req == req) else {
            self.counters.dropped += 1;
            return;
        };
        // Notifications come from where the subscription is registered (or is being
        // registered: the replay may overtake the acknowledgement).
        if state.owner.as_ref().is_some_and(|owner| *owner != from)
            && !matches!(state.phase, SubPhase::Registering)
        {
            self.counters.dropped += 1;
            return;
        }
        let mut fresh = Vec::new();
        for message in messages {
            if !state.seen.insert(message.id) {
                continue;
            }
            state.seen_order.push_back(message.id);
            if state.seen_order.len() > SEEN_IDS
                && let Some(old) = state.seen_order.pop_front()
            {
                state.seen.remove(&old);
            }
            state.last_seq = state.last_seq.max(message.seq);
            fresh.push(message);
        }
        if !fresh.is_empty() {
            let sub = *sub;
            self.events.push_back(QueueEvent::Notified { sub, messages: fresh });
        }
    }
}
