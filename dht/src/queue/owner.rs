//! The ordering node of a queue: stamping puts, leasing messages to consumers, parked takes,
//! acknowledgements, replication of every change before it is confirmed, subscribers, taking a
//! queue over, and anti-entropy with the replicas.
//!
//! Owns [`OwnerRole`] (the part of a held queue only its ordering node has) and [`Commit`] (a
//! change waiting for its replicas). Invariants: nothing is numbered before the take-over fetch
//! ended (`ready`); a message is handed out or notified only once committed; a change is
//! confirmed to its client only once `write_quorum − 1` replicas reported it durable (or there
//! are no replicas to ask: a ring of one); at most one lease per message; waiters, subscribers
//! and the backlog are bounded.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::time::Duration;

use tracing::debug;

use super::replica::Held;
use super::state::{Applied, Key, seq_of};
use super::wire::{
    AckOutcome, MAX_PAGE, MsgId, QueueDigest, QueueMessage, QueueName, QueueStats, Refusal, Removal,
    ReplicaChange, StoredMessage,
};
use super::{Pending, Purpose, QueuePersist, Queues};
use crate::address::Address;
use crate::node::Node;
use crate::time::Time;

/// Requests one queue may hold while its ordering node is still fetching its state.
const MAX_BACKLOG: usize = 1024;
/// Successors a take-over tries before it goes ahead with what it has.
const TAKEOVER_CANDIDATES: usize = 3;
/// How long a change may wait for its replicas before it is reported as failed.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(4);

/// A put as its ordering node receives it.
#[derive(Clone, Debug)]
pub(super) struct PutRequest {
    pub(super) id: MsgId,
    pub(super) sender: String,
    pub(super) quota: Option<u32>,
    pub(super) body: Vec<u8>,
    pub(super) put_ms: u64,
}

/// A client's request at the ordering node.
#[derive(Clone, Debug)]
pub(super) enum Request {
    Put(PutRequest),
    Take { consumer: String, wait: Duration, lease: Duration },
    Ack { seq: u64, id: MsgId, lease: u64 },
    Stat,
    Subscribe { from_seq: u64 },
}

#[derive(Clone, Debug)]
struct Lease {
    token: u64,
    expires: Time,
    consumer: String,
}

#[derive(Clone, Debug)]
struct Waiter<A> {
    from: A,
    req: u64,
    consumer: String,
    lease: Duration,
    deadline: Time,
}

/// Anti-entropy with the replicas.
#[derive(Clone, Debug)]
struct SyncRound<A> {
    next_at: Time,
    interval: Duration,
    /// Replicas asked this round that have not answered yet.
    waiting: BTreeSet<A>,
    /// Whether any replica differed this round.
    differed: bool,
    /// What a differing replica showed so far (ids of its messages and removals).
    seen: BTreeMap<A, HashSet<MsgId>>,
}

/// What only the ordering node of a queue keeps.
#[derive(Clone, Debug)]
pub(super) struct OwnerRole<A> {
    ready: bool,
    /// Successors still to try for the take-over's fetch (the one asked now first).
    takeover_from: Vec<A>,
    epoch: u64,
    next_n: u64,
    backlog: VecDeque<(A, u64, Request)>,
    leases: BTreeMap<Key, Lease>,
    /// Stamped but not confirmed by replicas: not handed out. `true` while a commit is in flight.
    uncommitted: BTreeMap<Key, bool>,
    waiters: VecDeque<Waiter<A>>,
    /// Subscribers by (address, subscription request id), with their expiry.
    subscribers: BTreeMap<(A, u64), Time>,
    next_lease: u64,
    sync: SyncRound<A>,
}

impl<A: Address> OwnerRole<A> {
    fn new(now: Time, sync_interval: Duration) -> Self {
        OwnerRole {
            ready: false,
            takeover_from: Vec::new(),
            epoch: 0,
            next_n: 1,
            backlog: VecDeque::new(),
            leases: BTreeMap::new(),
            uncommitted: BTreeMap::new(),
            waiters: VecDeque::new(),
            subscribers: BTreeMap::new(),
            next_lease: 1,
            sync: SyncRound {
                next_at: now + sync_interval,
                interval: sync_interval,
                waiting: BTreeSet::new(),
                differed: false,
                seen: BTreeMap::new(),
            },
        }
    }

    /// Forgets leases and pending commits of message `id` (it was removed elsewhere).
    pub(super) fn forget(&mut self, id: MsgId) {
        self.leases.retain(|key, _| key.1 != id);
        self.uncommitted.retain(|key, _| key.1 != id);
    }

    /// Runs anti-entropy soon and at the first interval again.
    pub(super) fn sync_soon(&mut self, now: Time, interval: Duration) {
        self.sync.interval = interval;
        self.sync.next_at = self.sync.next_at.min(now + Duration::from_millis(500));
    }
}

#[derive(Clone, Debug)]
pub(super) enum CommitKind {
    Put { key: Key },
    Remove,
}

/// A change sent to the replicas, waiting for enough of them.
#[derive(Clone, Debug)]
pub(super) struct Commit<A> {
    queue: QueueName,
    kind: CommitKind,
    /// Clients to answer when it ends: (address, request id).
    reply_to: Vec<(A, u64)>,
    needed: usize,
    acks: usize,
    outstanding: usize,
    pub(super) deadline: Time,
}

impl<A: Address> Queues<A> {
    /// A client request for `queue` reached this node.
    pub(super) fn on_client_request(
        &mut self,
        from: A,
        req: u64,
        queue: QueueName,
        request: Request,
        ring: &mut Node<A>,
        now: Time,
    ) {
        if !ring.owns(&queue.id()) {
            self.counters.refusals += 1;
            let owner = ring.next_hops(&queue.id(), 1).into_iter().next();
            self.send(from, QueueMessage::Redirect { req, owner });
            return;
        }
        if !self.held.contains_key(&queue) && self.held.len() >= self.config.max_queues {
            self.refuse(from, req, &request, Refusal::TooManyQueues);
            return;
        }
        let held = self.held.entry(queue.clone()).or_insert_with(|| Held::new(now));
        held.last_heard = now;
        if held.owner.is_none() {
            self.become_owner(&queue, ring, now);
        }
        let Some(role) = self.held.get_mut(&queue).and_then(|h| h.owner.as_mut()) else {
            return;
        };
        if !role.ready {
            if role.backlog.len() >= MAX_BACKLOG {
                self.refuse(from, req, &request, Refusal::NotReady);
            } else {
                role.backlog.push_back((from, req, request));
            }
            return;
        }
        self.execute(&queue, from, req, request, ring, now);
    }

    fn refuse(&mut self, to: A, req: u64, request: &Request, why: Refusal) {
        self.counters.refusals += 1;
        let answer = match request {
            Request::Put(_) => QueueMessage::PutDone { req, result: Err(why) },
            Request::Take { .. } => QueueMessage::Taken { req, result: Err(why) },
            Request::Ack { .. } => QueueMessage::AckDone { req, result: Err(why) },
            Request::Stat => QueueMessage::Stats { req, result: Err(why) },
            Request::Subscribe { .. } => QueueMessage::Subscribed { req, result: Err(why) },
        };
        self.send(to, answer);
    }

    fn execute(
        &mut self,
        queue: &QueueName,
        from: A,
        req: u64,
        request: Request,
        ring: &mut Node<A>,
        now: Time,
    ) {
        match request {
            Request::Put(put) => self.execute_put(queue, from, req, put, ring, now),
            Request::Take { consumer, wait, lease } => {
                self.execute_take(queue, from, req, consumer, wait, lease, now)
            }
            Request::Ack { seq, id, lease } => self.execute_ack(queue, from, req, seq, id, lease, ring, now),
            Request::Stat => {
                let Some(held) = self.held.get(queue) else { return };
                let Some(role) = held.owner.as_ref() else { return };
                let stats = QueueStats {
                    len: held.state.len() as u64,
                    leased: role.leases.len() as u64,
                    bytes: held.state.bytes() as u64,
                    waiting: role.waiters.len() as u64,
                    consumers: role
                        .leases
                        .values()
                        .map(|l| l.consumer.as_str())
                        .chain(role.waiters.iter().map(|w| w.consumer.as_str()))
                        .collect::<BTreeSet<&str>>()
                        .len() as u64,
                    subscribers: role.subscribers.len() as u64,
                    epoch: role.epoch,
                    last_seq: if role.next_n > 1 { seq_of(role.epoch, role.next_n - 1) } else { 0 },
                };
                self.send(from, QueueMessage::Stats { req, result: Ok(stats) });
            }
            Request::Subscribe { from_seq } => self.execute_subscribe(queue, from, req, from_seq, now),
        }
    }

    fn execute_put(
        &mut self,
        queue: &QueueName,
        from: A,
        req: u64,
        put: PutRequest,
        ring: &mut Node<A>,
        now: Time,
    ) {
        let Some(held) = self.held.get_mut(queue) else { return };
        let Some(role) = held.owner.as_mut() else { return };
        if let Some(key) = held.state.key_of(&put.id) {
            // A retry of a put already stamped.
            match role.uncommitted.get(&key).copied() {
                None => self.send(from, QueueMessage::PutDone { req, result: Ok(key.0) }),
                Some(true) => {
                    if let Some(commit) = self.commits.values_mut().find(|c| {
                        c.queue == *queue && matches!(c.kind, CommitKind::Put { key: k } if k == key)
                    }) {
                        commit.reply_to.push((from, req));
                    }
                }
                Some(false) => {
                    role.uncommitted.insert(key, true);
                    let Some(message) = held.state.get(&key).cloned() else { return };
                    self.commit_put(queue, message, Some((from, req)), ring, now);
                }
            }
            return;
        }
        if held.state.is_removed(&put.id) {
            // Stored and taken already: the retry's first attempt went through.
            self.send(from, QueueMessage::PutDone { req, result: Ok(0) });
            return;
        }
        if held.state.len() >= self.config.max_messages
            || held.state.bytes() + put.body.len() > self.config.max_bytes
        {
            self.refuse(from, req, &Request::Put(put), Refusal::Full);
            return;
        }
        if let Some(quota) = put.quota
            && held.state.held_by(&put.sender) >= quota as usize
        {
            self.refuse(from, req, &Request::Put(put), Refusal::OverQuota);
            return;
        }
        let seq = seq_of(role.epoch, role.next_n);
        role.next_n += 1;
        let message =
            StoredMessage { seq, id: put.id, sender: put.sender, body: put.body, put_ms: put.put_ms };
        let key = (seq, put.id);
        held.state.insert(message.clone());
        role.uncommitted.insert(key, true);
        self.persists.push_back(QueuePersist::Put { queue: queue.clone(), message: message.clone() });
        self.commit_put(queue, message, Some((from, req)), ring, now);
    }

    /// Sends a stamped message to the replicas; it is committed once enough hold it.
    fn commit_put(
        &mut self,
        queue: &QueueName,
        message: StoredMessage,
        reply_to: Option<(A, u64)>,
        ring: &Node<A>,
        now: Time,
    ) {
        let key = (message.seq, message.id);
        self.start_commit(queue, CommitKind::Put { key }, ReplicaChange::Put(message), reply_to, ring, now);
    }

    #[allow(clippy::too_many_arguments)]
    fn execute_take(
        &mut self,
        queue: &QueueName,
        from: A,
        req: u64,
        consumer: String,
        wait: Duration,
        lease: Duration,
        now: Time,
    ) {
        if let Some(leased) = self.lease_next(queue, &consumer, lease, now) {
            self.send(from, QueueMessage::Taken { req, result: Ok(Some(leased)) });
            return;
        }
        if wait.is_zero() {
            self.send(from, QueueMessage::Taken { req, result: Ok(None) });
            return;
        }
        let max_waiters = self.config.max_waiters;
        let Some(role) = self.held.get_mut(queue).and_then(|h| h.owner.as_mut()) else { return };
        if role.waiters.len() >= max_waiters {
            self.refuse(from, req, &Request::Take { consumer, wait, lease }, Refusal::TooManyWaiters);
            return;
        }
        role.waiters.push_back(Waiter { from, req, consumer, lease, deadline: now + wait });
    }

    /// Leases the first committed message nobody holds, if any.
    fn lease_next(
        &mut self,
        queue: &QueueName,
        consumer: &str,
        lease: Duration,
        now: Time,
    ) -> Option<(StoredMessage, u64)> {
        let held = self.held.get_mut(queue)?;
        let role = held.owner.as_mut()?;
        let (key, message) = held
            .state
            .iter()
            .find(|(key, _)| !role.leases.contains_key(key) && !role.uncommitted.contains_key(key))?;
        let token = seq_of(role.epoch, role.next_lease);
        role.next_lease += 1;
        role.leases.insert(*key, Lease { token, expires: now + lease, consumer: consumer.to_string() });
        self.counters.leases += 1;
        Some((message.clone(), token))
    }

    /// Hands committed messages to waiting consumers, first come first served.
    fn serve_waiters(&mut self, queue: &QueueName, now: Time) {
        loop {
            let Some(role) = self.held.get_mut(queue).and_then(|h| h.owner.as_mut()) else { return };
            let Some(waiter) = role.waiters.front().cloned() else { return };
            let Some(leased) = self.lease_next(queue, &waiter.consumer, waiter.lease, now) else { return };
            if let Some(role) = self.held.get_mut(queue).and_then(|h| h.owner.as_mut()) {
                role.waiters.pop_front();
            }
            self.send(waiter.from, QueueMessage::Taken { req: waiter.req, result: Ok(Some(leased)) });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn execute_ack(
        &mut self,
        queue: &QueueName,
        from: A,
        req: u64,
        seq: u64,
        id: MsgId,
        lease: u64,
        ring: &mut Node<A>,
        now: Time,
    ) {
        let max_removed = self.config.max_removed;
        let Some(held) = self.held.get_mut(queue) else { return };
        let Some(role) = held.owner.as_mut() else { return };
        let Some(key) = held.state.key_of(&id) else {
            // Removed already: by this very lease (the consumer repeating an acknowledgement
            // whose answer it lost) or by another.
            let outcome = match held.state.removed_by(&id) {
                Some(by) if by == lease && lease != 0 => AckOutcome::Removed,
                _ => AckOutcome::Gone,
            };
            self.send(from, QueueMessage::AckDone { req, result: Ok(outcome) });
            return;
        };
        let _ = seq;
        if let Some(current) = role.leases.get(&key)
            && current.token != lease
            && current.expires > now
        {
            self.send(from, QueueMessage::AckDone { req, result: Ok(AckOutcome::LeasedToAnother) });
            return;
        }
        role.leases.remove(&key);
        role.uncommitted.remove(&key);
        let removal = Removal { id, lease };
        let forgotten = held.state.remove(removal, max_removed);
        self.persist_removal(queue, removal, forgotten);
        self.start_commit(
            queue,
            CommitKind::Remove,
            ReplicaChange::Remove(removal),
            Some((from, req)),
            ring,
            now,
        );
    }

    /// Persists a removal and the removals it made the queue forget.
    pub(super) fn persist_removal(
        &mut self,
        queue: &QueueName,
        removal: Removal,
        outcome: (Applied, Vec<MsgId>),
    ) {
        if outcome.0 == Applied::Changed {
            self.persists.push_back(QueuePersist::Remove { queue: queue.clone(), removal });
        }
        for old in outcome.1 {
            self.persists.push_back(QueuePersist::ForgetRemoval { queue: queue.clone(), id: old });
        }
    }

    fn execute_subscribe(&mut self, queue: &QueueName, from: A, req: u64, from_seq: u64, now: Time) {
        let ttl = self.config.subscription_ttl;
        let max = self.config.max_subscribers;
        let Some(held) = self.held.get_mut(queue) else { return };
        let Some(role) = held.owner.as_mut() else { return };
        let key = (from.clone(), req);
        let fresh = !role.subscribers.contains_key(&key);
        if fresh && role.subscribers.len() >= max {
            self.refuse(from, req, &Request::Subscribe { from_seq }, Refusal::TooManySubscribers);
            return;
        }
        role.subscribers.insert(key, now + ttl);
        let replay: Vec<StoredMessage> = if fresh {
            held.state
                .iter()
                .filter(|(key, _)| key.0 >= from_seq && !role.uncommitted.contains_key(key))
                .map(|(_, m)| m.clone())
                .collect()
        } else {
            Vec::new()
        };
        self.send(from.clone(), QueueMessage::Subscribed { req, result: Ok(()) });
        for page in replay.chunks(MAX_PAGE) {
            self.send(from.clone(), QueueMessage::Notify { req, messages: page.to_vec() });
        }
    }

    // ----- commits --------------------------------------------------------------------------

    fn start_commit(
        &mut self,
        queue: &QueueName,
        kind: CommitKind,
        change: ReplicaChange,
        reply_to: Option<(A, u64)>,
        ring: &Node<A>,
        now: Time,
    ) {
        let epoch = self.held.get(queue).and_then(|h| h.owner.as_ref()).map_or(0, |r| r.epoch);
        let targets = self.replica_targets(ring);
        let needed = self.config.write_quorum.saturating_sub(1).min(targets.len());
        let commit_id = self.next_commit;
        self.next_commit += 1;
        let commit = Commit {
            queue: queue.clone(),
            kind,
            reply_to: reply_to.into_iter().collect(),
            needed,
            acks: 0,
            outstanding: targets.len(),
            deadline: now + COMMIT_TIMEOUT,
        };
        self.commits.insert(commit_id, commit);
        if needed == 0 {
            self.finish_commit(commit_id, true, now);
            return;
        }
        for target in targets {
            let req = self.fresh_req();
            let message =
                QueueMessage::Replicate { req, queue: queue.clone(), epoch, changes: vec![change.clone()] };
            self.counters.replicated += 1;
            let timeout = self.config.request_timeout;
            self.request(target, message, Purpose::Replicate { commit: commit_id }, timeout, now);
        }
    }

    /// The replicas of queues this node orders: its first `replicas − 1` successors.
    pub(super) fn replica_targets(&self, ring: &Node<A>) -> Vec<A> {
        let mut targets: Vec<A> = Vec::new();
        for node in ring.successors() {
            if targets.len() + 1 >= self.config.replicas {
                break;
            }
            if node.addr != self.me.addr && !targets.contains(&node.addr) {
                targets.push(node.addr.clone());
            }
        }
        targets
    }

    pub(super) fn on_replicated(&mut self, commit: u64, now: Time) {
        let Some(c) = self.commits.get_mut(&commit) else { return };
        c.acks += 1;
        c.outstanding = c.outstanding.saturating_sub(1);
        if c.acks >= c.needed {
            self.finish_commit(commit, true, now);
        }
    }

    pub(super) fn on_replicate_failed(&mut self, commit: u64, now: Time) {
        let Some(c) = self.commits.get_mut(&commit) else { return };
        c.outstanding = c.outstanding.saturating_sub(1);
        if c.outstanding == 0 && c.acks < c.needed {
            self.finish_commit(commit, false, now);
        }
    }

    pub(super) fn commit_timeouts(&mut self, now: Time) {
        let late: Vec<u64> =
            self.commits.iter().filter(|(_, c)| c.deadline <= now).map(|(id, _)| *id).collect();
        for id in late {
            self.finish_commit(id, false, now);
        }
    }

    fn finish_commit(&mut self, commit: u64, ok: bool, now: Time) {
        let Some(c) = self.commits.remove(&commit) else { return };
        match c.kind {
            CommitKind::Put { key } => {
                let committed = self.held.get_mut(&c.queue).and_then(|held| {
                    let role = held.owner.as_mut()?;
                    if ok {
                        role.uncommitted.remove(&key);
                    } else if let Some(in_flight) = role.uncommitted.get_mut(&key) {
                        *in_flight = false;
                    }
                    let subscribers: Vec<(A, u64)> = role.subscribers.keys().cloned().collect();
                    Some((held.state.get(&key).cloned(), subscribers))
                });
                let result = if ok { Ok(key.0) } else { Err(Refusal::NoReplica) };
                for (to, req) in c.reply_to {
                    self.send(to, QueueMessage::PutDone { req, result: result.clone() });
                }
                if ok {
                    self.counters.puts += 1;
                    if let Some((Some(message), subscribers)) = committed {
                        for (to, req) in subscribers {
                            self.send(to, QueueMessage::Notify { req, messages: vec![message.clone()] });
                        }
                    }
                    self.serve_waiters(&c.queue, now);
                }
            }
            CommitKind::Remove => {
                if ok {
                    self.counters.acks += 1;
                }
                let result = if ok { Ok(AckOutcome::Removed) } else { Err(Refusal::NoReplica) };
                for (to, req) in c.reply_to {
                    self.send(to, QueueMessage::AckDone { req, result: result.clone() });
                }
            }
        }
    }

    // ----- roles ----------------------------------------------------------------------------

    /// Takes or gives up the ordering role of every held queue as the ring says.
    pub(super) fn check_roles(&mut self, ring: &mut Node<A>, now: Time) {
        let names: Vec<(QueueName, bool)> =
            self.held.iter().map(|(name, held)| (name.clone(), held.owner.is_some())).collect();
        for (queue, ordering) in names {
            let owns = ring.is_member() && ring.owns(&queue.id());
            if owns && !ordering {
                self.become_owner(&queue, ring, now);
            } else if !owns && ordering {
                self.resign(&queue);
            }
        }
    }

    /// Starts ordering `queue`: fetch the first successor's copy, then number from a new epoch.
    fn become_owner(&mut self, queue: &QueueName, ring: &mut Node<A>, now: Time) {
        let candidates: Vec<A> = self.replica_targets(ring).into_iter().take(TAKEOVER_CANDIDATES).collect();
        let sync_interval = self.config.sync_interval;
        let Some(held) = self.held.get_mut(queue) else { return };
        let mut role = OwnerRole::new(now, sync_interval);
        role.takeover_from = candidates;
        held.owner = Some(role);
        debug!(queue = %queue, "taking the queue's ordering role");
        self.fetch_for_takeover(queue, None, ring, now);
    }

    fn fetch_for_takeover(&mut self, queue: &QueueName, after: Option<Key>, ring: &mut Node<A>, now: Time) {
        let Some(from) =
            self.held.get(queue).and_then(|h| h.owner.as_ref()).and_then(|r| r.takeover_from.first())
        else {
            if after.is_none() {
                self.counters.takeovers_unsynced += u64::from(!self.replica_targets(ring).is_empty());
            }
            self.finish_takeover(queue, ring, now);
            return;
        };
        let from = from.clone();
        let req = self.fresh_req();
        let timeout = self.config.request_timeout;
        let message = QueueMessage::FetchState { req, queue: queue.clone(), after };
        self.request(from, message, Purpose::TakeoverFetch { queue: queue.clone() }, timeout, now);
    }

    pub(super) fn on_takeover_page(
        &mut self,
        queue: QueueName,
        from: A,
        answer: QueueMessage<A>,
        ring: &mut Node<A>,
        now: Time,
    ) {
        let QueueMessage::State { epoch, messages, removed, more, .. } = answer else {
            self.counters.dropped += 1;
            return;
        };
        let last = messages.last().map(|m| (m.seq, m.id));
        self.merge(&queue, epoch, messages, removed);
        let _ = from;
        match (more, last) {
            (true, Some(last)) => self.fetch_for_takeover(&queue, Some(last), ring, now),
            _ => self.finish_takeover(&queue, ring, now),
        }
    }

    pub(super) fn on_takeover_failed(&mut self, queue: QueueName, from: A, ring: &mut Node<A>, now: Time) {
        if let Some(role) = self.held.get_mut(&queue).and_then(|h| h.owner.as_mut()) {
            role.takeover_from.retain(|a| *a != from);
            if role.takeover_from.is_empty() {
                self.counters.takeovers_unsynced += 1;
            }
        }
        self.fetch_for_takeover(&queue, None, ring, now);
    }

    fn finish_takeover(&mut self, queue: &QueueName, ring: &mut Node<A>, now: Time) {
        let Some(held) = self.held.get_mut(queue) else { return };
        let Some(role) = held.owner.as_mut() else { return };
        if role.ready {
            return;
        }
        let epoch = held.state.epoch.max(held.used_epoch) + 1;
        held.used_epoch = epoch;
        role.epoch = epoch;
        role.next_n = 1;
        role.ready = true;
        role.takeover_from.clear();
        let backlog: Vec<(A, u64, Request)> = role.backlog.drain(..).collect();
        self.counters.takeovers += 1;
        debug!(queue = %queue, epoch, messages = held.state.len(), "ordering the queue");
        self.persists.push_back(QueuePersist::Epoch { queue: queue.clone(), epoch });
        for (from, req, request) in backlog {
            self.execute(queue, from, req, request, ring, now);
        }
        self.serve_waiters(queue, now);
    }

    /// Gives up ordering `queue` (the ring says another node owns it): parked and queued clients
    /// are told to look again; the copy stays, as a replica's.
    fn resign(&mut self, queue: &QueueName) {
        let Some(held) = self.held.get_mut(queue) else { return };
        let Some(role) = held.owner.take() else { return };
        debug!(queue = %queue, "no longer the queue's ordering node");
        for waiter in role.waiters {
            self.send(waiter.from, QueueMessage::Taken { req: waiter.req, result: Err(Refusal::NotOwner) });
        }
        for (from, req, request) in role.backlog {
            self.refuse(from, req, &request, Refusal::NotOwner);
        }
    }

    /// Merges a holder's page into this node's copy, persisting what changed.
    pub(super) fn merge(
        &mut self,
        queue: &QueueName,
        epoch: u64,
        messages: Vec<StoredMessage>,
        removed: Vec<Removal>,
    ) {
        let max_removed = self.config.max_removed;
        let mut changed = false;
        let mut removals = Vec::new();
        let mut puts = Vec::new();
        {
            let Some(held) = self.held.get_mut(queue) else { return };
            held.state.epoch = held.state.epoch.max(epoch);
            for removal in removed {
                let outcome = held.state.remove(removal, max_removed);
                if let Some(role) = held.owner.as_mut() {
                    role.forget(removal.id);
                }
                changed |= outcome.0 == Applied::Changed;
                removals.push((removal, outcome));
            }
            for message in messages {
                if held.state.insert(message.clone()) == Applied::Changed {
                    changed = true;
                    puts.push(message);
                }
            }
        }
        for (removal, outcome) in removals {
            if outcome.0 == Applied::Changed {
                self.counters.merged += 1;
            }
            self.persist_removal(queue, removal, outcome);
        }
        for message in puts {
            self.counters.merged += 1;
            self.persists.push_back(QueuePersist::Put { queue: queue.clone(), message });
        }
        let _ = changed;
    }

    // ----- periodic work --------------------------------------------------------------------

    /// Lease and waiter expiry, subscriber expiry, re-commits, and anti-entropy rounds.
    pub(super) fn owner_timeouts(&mut self, ring: &mut Node<A>, now: Time) {
        let names: Vec<QueueName> = self
            .held
            .iter()
            .filter(|(_, h)| h.owner.as_ref().is_some_and(|r| r.ready))
            .map(|(n, _)| n.clone())
            .collect();
        for queue in names {
            let mut answers = Vec::new();
            let mut recommit = Vec::new();
            let mut start_sync = false;
            if let Some(held) = self.held.get_mut(&queue)
                && let Some(role) = held.owner.as_mut()
            {
                let before = role.leases.len();
                role.leases.retain(|_, lease| lease.expires > now);
                self.counters.lease_expiries += (before - role.leases.len()) as u64;
                while role.waiters.front().is_some_and(|w| w.deadline <= now) {
                    if let Some(w) = role.waiters.pop_front() {
                        answers.push((w.from, QueueMessage::Taken { req: w.req, result: Ok(None) }));
                    }
                }
                // Waiters behind one still waiting may have expired too.
                role.waiters.retain(|w| {
                    if w.deadline <= now {
                        answers.push((w.from.clone(), QueueMessage::Taken { req: w.req, result: Ok(None) }));
                        false
                    } else {
                        true
                    }
                });
                role.subscribers.retain(|_, expires| *expires > now);
                for (key, in_flight) in role.uncommitted.iter_mut() {
                    if !*in_flight && let Some(message) = held.state.get(key) {
                        *in_flight = true;
                        recommit.push((*key, message.clone()));
                    }
                }
                if now >= role.sync.next_at && role.sync.waiting.is_empty() {
                    start_sync = true;
                }
            }
            for (to, answer) in answers {
                self.send(to, answer);
            }
            for (_, message) in recommit {
                self.commit_put(&queue, message, None, ring, now);
            }
            self.serve_waiters(&queue, now);
            if start_sync {
                self.start_sync(&queue, ring, now);
            }
        }
    }

    fn start_sync(&mut self, queue: &QueueName, ring: &Node<A>, now: Time) {
        let targets = self.replica_targets(ring);
        let timeout = self.config.request_timeout;
        let Some(held) = self.held.get_mut(queue) else { return };
        let digest: QueueDigest = held.state.digest();
        let Some(role) = held.owner.as_mut() else { return };
        let epoch = role.epoch;
        role.sync.next_at = now + role.sync.interval;
        role.sync.differed = false;
        role.sync.seen.clear();
        role.sync.waiting = targets.iter().cloned().collect();
        for target in targets {
            let req = self.fresh_req();
            let message = QueueMessage::SyncDigest { req, queue: queue.clone(), epoch, digest };
            self.request(target, message, Purpose::Sync { queue: queue.clone() }, timeout, now);
        }
    }

    pub(super) fn on_sync_answer(&mut self, queue: QueueName, from: A, answer: QueueMessage<A>, now: Time) {
        let (base, max) = (self.config.sync_interval, self.config.max_sync_interval);
        match answer {
            QueueMessage::InSync { .. } => self.sync_answered(&queue, &from, base, max, now),
            QueueMessage::State { epoch, messages, removed, more, .. } => {
                let last = messages.last().map(|m| (m.seq, m.id));
                if let Some(role) = self.held.get_mut(&queue).and_then(|h| h.owner.as_mut()) {
                    role.sync.differed = true;
                    let seen = role.sync.seen.entry(from.clone()).or_default();
                    seen.extend(messages.iter().map(|m| m.id));
                    seen.extend(removed.iter().map(|r| r.id));
                }
                self.merge(&queue, epoch, messages, removed);
                self.serve_waiters(&queue, now);
                if more && let Some(last) = last {
                    let req = self.fresh_req();
                    let timeout = self.config.request_timeout;
                    let message = QueueMessage::FetchState { req, queue: queue.clone(), after: Some(last) };
                    self.request(from, message, Purpose::Sync { queue }, timeout, now);
                } else {
                    self.push_missing(&queue, from.clone(), now);
                    self.sync_answered(&queue, &from, base, max, now);
                }
            }
            QueueMessage::Replicated { .. } => {}
            _ => self.counters.dropped += 1,
        }
    }

    fn sync_answered(&mut self, queue: &QueueName, from: &A, base: Duration, max: Duration, now: Time) {
        let Some(role) = self.held.get_mut(queue).and_then(|h| h.owner.as_mut()) else { return };
        role.sync.waiting.remove(from);
        if role.sync.waiting.is_empty() {
            role.sync.interval = if role.sync.differed { base } else { (role.sync.interval * 2).min(max) };
            role.sync.next_at = now + role.sync.interval;
        }
    }

    /// Sends a replica that differed everything it lacks, in pages.
    fn push_missing(&mut self, queue: &QueueName, to: A, now: Time) {
        let Some(held) = self.held.get_mut(queue) else { return };
        let Some(role) = held.owner.as_mut() else { return };
        let seen = role.sync.seen.remove(&to).unwrap_or_default();
        let epoch = role.epoch;
        let mut changes: Vec<ReplicaChange> =
            held.state.removals().filter(|r| !seen.contains(&r.id)).map(ReplicaChange::Remove).collect();
        changes.extend(
            held.state
                .iter()
                .filter(|(_, m)| !seen.contains(&m.id))
                .map(|(_, m)| ReplicaChange::Put(m.clone())),
        );
        let timeout = self.config.request_timeout;
        let mut page = Vec::new();
        let mut bytes = 0;
        for change in changes {
            let size = match &change {
                ReplicaChange::Put(m) => m.body.len() + 64,
                ReplicaChange::Remove(_) => 24,
            };
            if !page.is_empty() && (page.len() >= MAX_PAGE || bytes + size > super::wire::PAGE_BYTES) {
                let req = self.fresh_req();
                let changes = std::mem::take(&mut page);
                let message = QueueMessage::Replicate { req, queue: queue.clone(), epoch, changes };
                self.request(to.clone(), message, Purpose::Sync { queue: queue.clone() }, timeout, now);
                bytes = 0;
            }
            bytes += size;
            page.push(change);
        }
        if !page.is_empty() {
            let req = self.fresh_req();
            let message = QueueMessage::Replicate { req, queue: queue.clone(), epoch, changes: page };
            self.request(to, message, Purpose::Sync { queue: queue.clone() }, timeout, now);
        }
    }

    /// Used by [`Queues::on_request_failed`] for sync requests: nothing to undo, the next round
    /// tries again.
    pub(super) fn on_sync_failed(&mut self, queue: &QueueName, pending: &Pending<A>, now: Time) {
        let (base, max) = (self.config.sync_interval, self.config.max_sync_interval);
        if let Some(role) = self.held.get_mut(queue).and_then(|h| h.owner.as_mut()) {
            role.sync.differed = true;
            role.sync.seen.remove(&pending.to);
        }
        self.sync_answered(queue, &pending.to.clone(), base, max, now);
    }
}
