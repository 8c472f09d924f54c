//! Durable message queues on the ring, sans-IO: put, get (take and acknowledge), poll and notify.
//!
//! # What this module owns
//! One [`Queues`] per node, beside the ring core, for every queue the node touches:
//! - [`state`]: a queue's replicated contents ([`state::QueueState`]), which merge like a CRDT;
//! - `owner`: the *ordering node* of a queue — the successor of SHA-1(`"queue/"` + name): it
//!   stamps sequence numbers, replicates every change to its successors before acknowledging it,
//!   leases messages to consumers, parks blocking takes, notifies subscribers, takes a queue over
//!   (fetching its successor's copy first) and keeps its successors' copies in sync;
//! - `replica`: a successor's copy: applying the ordering node's changes, answering its digests
//!   and fetches, and forgetting copies nobody refreshes;
//! - `client`: operations this node's clients started: finding the ordering node (a ring
//!   lookup), sending, retrying after a redirect or a time-out with the same put id, until a
//!   deadline; and subscriptions, renewed at whoever orders the queue now;
//! - [`wire`]: the messages and their caps.
//!
//! # The protocol
//! - **Put.** The ordering node stamps the next sequence number of its epoch, persists the
//!   message, sends it to its first `replicas − 1` successors, and acknowledges the put once
//!   `write_quorum − 1` of them reported it durable. Only then is the message *committed*: handed
//!   to consumers and subscribers. A retried put (same [`MsgId`]) is stored once.
//! - **Take.** The first committed message that is not leased is leased to the consumer for
//!   `lease_ms`; with nothing to hand out the take waits (bounded) until a put commits or its
//!   wait ends. **Ack** removes a leased message — replicated like a put before it is confirmed
//!   — and answers [`AckOutcome::Removed`] to exactly one consumer per message: a second
//!   acknowledgement finds it gone, and one whose lease ran out while another consumer holds it
//!   is refused. A lease that runs out makes the message available again. Leases live only at
//!   the ordering node: after a take-over every message is available again (at worst delivered
//!   twice, acknowledged once).
//! - **Epochs.** Sequence numbers are `epoch << 40 | count`. Each time a node becomes the
//!   ordering node of a queue (it joined in front of the old one, the old one crashed, or it
//!   restarted) it first fetches its successor's copy, merges it, and numbers from a fresh epoch
//!   above every epoch seen. Numbers therefore only grow, and two nodes that both believed they
//!   ordered the queue never produce the same key (keys are (number, id)).
//! - **Anti-entropy.** The ordering node sends each replica a digest of its copy, now and then
//!   (backing off while they agree); on a difference it fetches the replica's copy, merges it,
//!   and sends the replica what it lacks. Merging is a union of messages minus a union of
//!   removals, so nothing acknowledged is lost to a stale view and nothing removed comes back.
//! - **Notify.** A subscriber registers at the ordering node and renews the registration; each
//!   committed put is sent to every live subscriber. After a take-over subscribers re-register
//!   at the new ordering node, which replays what the queue holds from the subscriber's last
//!   sequence number; a message put and taken while no ordering node served the subscriber is
//!   not replayed (notify is a view of the stream, not a delivery guarantee; get is).
//!
//! # Persistence is an output
//! Every change to a held queue is emitted as a [`QueuePersist`] ([`Queues::poll_persist`]).
//! **The driver must make every change it drained durable before it sends any message drained
//! after it** ([`Queues::poll_transmit`]): acknowledgements to clients and to the ordering node
//! are emitted after the changes they confirm, so that rule is all it takes for nothing to be
//! acknowledged before it is on disk. A restarted node hands its disk's contents back with
//! [`Queues::restore`].
//!
//! # Invariants
//! - Every map and queue is bounded by the config (queues held, messages and bytes per queue,
//!   waiters, subscribers, removals remembered) or by the operations the driver started; every
//!   request has a deadline.
//! - Answers are taken only from the peer the request went to, with the request id it carried;
//!   anything malformed, oversized, unexpected or impossible is dropped and counted.
//! - Deterministic: ordered maps where iteration order matters; the only randomness (put ids)
//!   comes from the driver.

mod client;
mod owner;
mod replica;
mod state;
#[cfg(test)]
mod tests;
pub mod wire;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use thiserror::Error;

use crate::address::{Address, NodeRef};
use crate::error::LookupError;
use crate::lookup::{LookupId, LookupOutcome};
use crate::node::Node;
use crate::time::Time;

use self::client::{ClientOp, ClientSub};
use self::owner::Commit;
pub use self::wire::{
    AckOutcome, InvalidQueueMessage, InvalidQueueName, MAX_QUEUE_BODY_BYTES, MAX_QUEUE_FRAME_BYTES, MsgId,
    QueueMessage, QueueName, QueueStats, Refusal, Removal, StoredMessage,
};

/// Most removals a holder may send in one state page (and so remember).
pub const MAX_REMOVED_CAP: usize = 16_384;

/// Settings of the queues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Holders of each queue: the ordering node and its next `replicas − 1` successors.
    /// Default 3.
    pub replicas: usize,
    /// Holders that must have a change durably before it is acknowledged (the ordering node
    /// included). Default 2.
    pub write_quorum: usize,
    /// Most messages one queue holds. Default 100,000.
    pub max_messages: usize,
    /// Most body bytes one queue holds. Default 64 MiB.
    pub max_bytes: usize,
    /// Most queues this node holds (ordering or replicating). Default 10,000.
    pub max_queues: usize,
    /// Most consumers waiting on one queue. Default 256.
    pub max_waiters: usize,
    /// Most subscribers of one queue. Default 64.
    pub max_subscribers: usize,
    /// Removals remembered per queue (see [`state`]). Default and maximum [`MAX_REMOVED_CAP`].
    pub max_removed: usize,
    /// How long to wait for one peer's answer. Default 2 s.
    pub request_timeout: Duration,
    /// How long a client operation (other than a take's wait) may take. Default 10 s.
    pub op_timeout: Duration,
    /// Longest a take may wait for a message, and longest a lease. Default 5 minutes.
    pub max_wait: Duration,
    /// How long a subscription lives without renewal. Default 15 s; clients renew every third.
    pub subscription_ttl: Duration,
    /// First anti-entropy period of an ordering node; doubles while replicas agree, up to
    /// `max_sync_interval`. Default 5 s.
    pub sync_interval: Duration,
    /// Longest anti-entropy period. Default 60 s.
    pub max_sync_interval: Duration,
    /// A replica's copy nobody refreshed for this long is dropped. Default 10 minutes.
    pub replica_ttl: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            replicas: 3,
            write_quorum: 2,
            max_messages: 100_000,
            max_bytes: 64 * 1024 * 1024,
            max_queues: 10_000,
            max_waiters: 256,
            max_subscribers: 64,
            max_removed: MAX_REMOVED_CAP,
            request_timeout: Duration::from_secs(2),
            op_timeout: Duration::from_secs(10),
            max_wait: Duration::from_secs(300),
            subscription_ttl: Duration::from_secs(15),
            sync_interval: Duration::from_secs(5),
            max_sync_interval: Duration::from_secs(60),
            replica_ttl: Duration::from_secs(600),
        }
    }
}

/// Identifies a client operation started on [`Queues`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueOpId(pub u64);

/// Identifies a subscription started with [`Queues::subscribe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubId(pub u64);

/// A message handed to a consumer: acknowledge it with its `seq`, `id` and `lease`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leased {
    /// The message.
    pub message: StoredMessage,
    /// The lease token.
    pub lease: u64,
}

/// What a client operation produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueOutcome<A> {
    /// A put was acknowledged with this sequence number.
    Put {
        /// The sequence number.
        seq: u64,
        /// The put's id.
        id: MsgId,
    },
    /// A take's answer: a message, or nothing within the wait.
    Taken(Option<Leased>),
    /// An acknowledgement's answer.
    Acked(AckOutcome),
    /// The figures, and who orders the queue.
    Stats {
        /// The figures.
        stats: QueueStats,
        /// The ordering node.
        owner: NodeRef<A>,
    },
}

/// Why a client operation failed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum QueueError {
    /// The ordering node refused, and retrying would not help.
    #[error("{0}")]
    Refused(Refusal),
    /// The body is over the limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The body's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No ordering node answered before the deadline (the last reason given, if any).
    #[error("the queue's ordering node did not answer in time{}", .last.as_ref().map(|r| format!(" (last: {r})")).unwrap_or_default())]
    TimedOut {
        /// The last refusal or lookup failure met while retrying.
        last: Option<String>,
    },
    /// The ordering node could not be found.
    #[error("no route to the queue's ordering node: {0}")]
    Lookup(LookupError),
    /// Too many operations are running on this node.
    #[error("too many queue operations in flight")]
    Overloaded,
    /// The node is leaving the ring.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// What the queues report to the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueEvent<A> {
    /// A client operation finished.
    Done {
        /// The operation.
        op: QueueOpId,
        /// Its result.
        result: Result<QueueOutcome<A>, QueueError>,
    },
    /// Messages were put in a queue a subscription listens to (each at most once per
    /// subscription, in the order the ordering node sent them).
    Notified {
        /// The subscription.
        sub: SubId,
        /// The messages.
        messages: Vec<StoredMessage>,
    },
}

/// A change the driver must make durable (see the module docs for when).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueuePersist {
    /// Store this message of `queue`.
    Put {
        /// The queue.
        queue: QueueName,
        /// The message.
        message: StoredMessage,
    },
    /// Remove a message of `queue` (wherever it is stored) and remember that it was removed,
    /// and by which lease.
    Remove {
        /// The queue.
        queue: QueueName,
        /// The message and the lease.
        removal: Removal,
    },
    /// Forget a removal (the queue remembers at most `max_removed`).
    ForgetRemoval {
        /// The queue.
        queue: QueueName,
        /// The message.
        id: MsgId,
    },
    /// The highest epoch this node used for `queue`.
    Epoch {
        /// The queue.
        queue: QueueName,
        /// The epoch.
        epoch: u64,
    },
    /// Drop everything held of `queue`.
    Drop {
        /// The queue.
        queue: QueueName,
    },
}

/// What a node's disk holds of one queue, for [`Queues::restore`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// The highest epoch this node used.
    pub epoch: u64,
    /// Messages present.
    pub messages: Vec<StoredMessage>,
    /// Removals remembered, oldest first.
    pub removed: Vec<Removal>,
}

/// Counters, monotonic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Puts acknowledged by this node as ordering node.
    pub puts: u64,
    /// Messages leased to consumers.
    pub leases: u64,
    /// Leases that ran out before an acknowledgement.
    pub lease_expiries: u64,
    /// Messages removed by an acknowledgement.
    pub acks: u64,
    /// Queues this node took over as ordering node.
    pub takeovers: u64,
    /// Take-overs that went ahead without a successor's copy (none answered).
    pub takeovers_unsynced: u64,
    /// Messages and removals merged in from a replica by anti-entropy or a take-over.
    pub merged: u64,
    /// Refusals sent (full, quota, not owner, caps).
    pub refusals: u64,
    /// Peer messages dropped as malformed, unexpected or from the wrong peer.
    pub dropped: u64,
    /// Changes sent to replicas.
    pub replicated: u64,
    /// Replica copies dropped after nobody refreshed them.
    pub replicas_expired: u64,
}

/// Why an outgoing request is in flight: where its answer goes.
#[derive(Clone, Debug)]
enum Purpose {
    /// A client operation's request.
    Client(QueueOpId),
    /// A replication of a change (`commit`) to a replica.
    Replicate { commit: u64 },
    /// A page of a take-over's fetch of `queue`'s state.
    TakeoverFetch { queue: QueueName },
    /// Anti-entropy with one replica of `queue`.
    Sync { queue: QueueName },
    /// A subscription's registration.
    Subscribe(SubId),
}

#[derive(Clone, Debug)]
struct Pending<A> {
    to: A,
    purpose: Purpose,
    deadline: Time,
}

/// The queues of one node.
#[derive(Debug)]
pub struct Queues<A: Address> {
    me: NodeRef<A>,
    config: QueueConfig,
    next_req: u64,
    /// Queues this node holds, as ordering node or replica.
    held: BTreeMap<QueueName, replica::Held<A>>,
    /// Changes waiting for replicas' acknowledgements, by commit id.
    commits: BTreeMap<u64, Commit<A>>,
    next_commit: u64,
    /// Client operations, and the lookups they wait for.
    ops: BTreeMap<QueueOpId, ClientOp<A>>,
    lookups: HashMap<LookupId, client::Waiting>,
    next_op: u64,
    subs: BTreeMap<SubId, ClientSub<A>>,
    next_sub: u64,
    /// Requests in flight, by request id.
    pending: BTreeMap<u64, Pending<A>>,
    transmits: VecDeque<(A, QueueMessage<A>)>,
    persists: VecDeque<QueuePersist>,
    events: VecDeque<QueueEvent<A>>,
    counters: QueueCounters,
    /// When the next housekeeping pass is due (ownership checks, syncs, expiries).
    next_housekeeping: Time,
}

/// Most client operations in flight on one node.
const MAX_OPS: usize = 65_536;
/// Most subscriptions one node keeps.
const MAX_SUBS: usize = 4096;
/// How often ownership, leases and replica ages are checked.
const HOUSEKEEPING: Duration = Duration::from_millis(250);

impl<A: Address> Queues<A> {
    /// The queues of node `me`.
    pub fn new(me: NodeRef<A>, config: QueueConfig) -> Self {
        Queues {
            me,
            config,
            next_req: 1,
            held: BTreeMap::new(),
            commits: BTreeMap::new(),
            next_commit: 1,
            ops: BTreeMap::new(),
            lookups: HashMap::new(),
            next_op: 1,
            subs: BTreeMap::new(),
            next_sub: 1,
            pending: BTreeMap::new(),
            transmits: VecDeque::new(),
            persists: VecDeque::new(),
            events: VecDeque::new(),
            counters: QueueCounters::default(),
            next_housekeeping: Time::ZERO,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// The counters.
    pub fn counters(&self) -> &QueueCounters {
        &self.counters
    }

    /// Queues held here: (name, messages, whether this node orders it).
    pub fn held(&self) -> Vec<(QueueName, usize, bool)> {
        self.held.iter().map(|(name, held)| (name.clone(), held.state.len(), held.owner.is_some())).collect()
    }

    /// Client operations in flight.
    pub fn ops_in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Puts what the disk held back (call before anything else, after a restart).
    pub fn restore(&mut self, queue: QueueName, snapshot: QueueSnapshot, now: Time) {
        let held = self.held.entry(queue).or_insert_with(|| replica::Held::new(now));
        held.state.epoch = held.state.epoch.max(snapshot.epoch);
        held.used_epoch = held.used_epoch.max(snapshot.epoch);
        for removal in snapshot.removed {
            held.state.remove(removal, self.config.max_removed);
        }
        for message in snapshot.messages {
            held.state.insert(message);
        }
    }

    // ----- input ----------------------------------------------------------------------------

    /// A queue message from `from` (authenticated by the transport).
    pub fn handle_message(&mut self, from: A, message: QueueMessage<A>, ring: &mut Node<A>, now: Time) {
        if message.validate().is_err() {
            self.counters.dropped += 1;
            return;
        }
        match message {
            QueueMessage::Put { req, queue, id, sender, quota, body, put_ms } => {
                let put = owner::PutRequest { id, sender, quota, body, put_ms };
                self.on_client_request(from, req, queue, owner::Request::Put(put), ring, now);
            }
            QueueMessage::Take { req, queue, consumer, wait_ms, lease_ms } => {
                let wait = Duration::from_millis(wait_ms).min(self.config.max_wait);
                let lease = Duration::from_millis(lease_ms.max(1)).min(self.config.max_wait);
                let take = owner::Request::Take { consumer, wait, lease };
                self.on_client_request(from, req, queue, take, ring, now);
            }
            QueueMessage::Ack { req, queue, seq, id, lease } => {
                self.on_client_request(from, req, queue, owner::Request::Ack { seq, id, lease }, ring, now);
            }
            QueueMessage::Stat { req, queue } => {
                self.on_client_request(from, req, queue, owner::Request::Stat, ring, now);
            }
            QueueMessage::Subscribe { req, queue, from_seq } => {
                self.on_client_request(from, req, queue, owner::Request::Subscribe { from_seq }, ring, now);
            }
            QueueMessage::Replicate { req, queue, epoch, changes } => {
                self.on_replicate(from, req, queue, epoch, changes, now);
            }
            QueueMessage::SyncDigest { req, queue, epoch, digest } => {
                self.on_sync_digest(from, req, queue, epoch, digest, now);
            }
            QueueMessage::FetchState { req, queue, after } => {
                self.on_fetch_state(from, req, queue, after, now)
            }
            QueueMessage::Notify { req, messages } => self.on_notify(from, req, messages),
            answer => self.on_answer(from, answer, ring, now),
        }
    }

    /// A message to `peer` could not be delivered: its requests fail now rather than at their
    /// deadline.
    pub fn handle_unreachable(&mut self, peer: &A, ring: &mut Node<A>, now: Time) {
        let failed: Vec<u64> =
            self.pending.iter().filter(|(_, pending)| &pending.to == peer).map(|(req, _)| *req).collect();
        for req in failed {
            if let Some(pending) = self.pending.remove(&req) {
                self.on_request_failed(req, pending, ring, now);
            }
        }
    }

    /// A lookup finished; returns whether it was one of the queues'.
    pub fn handle_lookup_finished(
        &mut self,
        id: LookupId,
        result: &Result<LookupOutcome<A>, LookupError>,
        ring: &mut Node<A>,
        now: Time,
    ) -> bool {
        let Some(waiting) = self.lookups.remove(&id) else {
            return false;
        };
        self.on_lookup(waiting, result, ring, now);
        true
    }

    /// The ring around this node changed: re-check which queues it orders, and sync soon.
    pub fn handle_ring_changed(&mut self, ring: &mut Node<A>, now: Time) {
        self.check_roles(ring, now);
        for held in self.held.values_mut() {
            if let Some(role) = held.owner.as_mut() {
                role.sync_soon(now, self.config.sync_interval);
            }
        }
    }

    /// Time has come (see [`Queues::poll_timeout`]).
    pub fn handle_timeout(&mut self, ring: &mut Node<A>, now: Time) {
        let expired: Vec<u64> =
            self.pending.iter().filter(|(_, pending)| pending.deadline <= now).map(|(req, _)| *req).collect();
        for req in expired {
            if let Some(pending) = self.pending.remove(&req) {
                self.on_request_failed(req, pending, ring, now);
            }
        }
        self.client_timeouts(ring, now);
        self.commit_timeouts(now);
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING;
            self.check_roles(ring, now);
            self.owner_timeouts(ring, now);
            self.expire_replicas(ring, now);
        }
    }

    // ----- output ---------------------------------------------------------------------------

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<(A, QueueMessage<A>)> {
        self.transmits.pop_front()
    }

    /// The next change to make durable (before sending what is drained after it).
    pub fn poll_persist(&mut self) -> Option<QueuePersist> {
        self.persists.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<QueueEvent<A>> {
        self.events.pop_front()
    }

    /// When [`Queues::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut next = self.pending.values().map(|p| p.deadline).min();
        let mut consider = |t: Option<Time>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Time| n.min(t)));
            }
        };
        consider(self.ops.values().map(ClientOp::wake_at).min());
        consider(self.commits.values().map(|c| c.deadline).min());
        consider(self.subs_wake_at());
        if !self.held.is_empty() || !self.subs.is_empty() {
            consider(Some(self.next_housekeeping));
        }
        next
    }

    // ----- plumbing -------------------------------------------------------------------------

    fn fresh_req(&mut self) -> u64 {
        let req = self.next_req;
        self.next_req += 1;
        req
    }

    /// Sends a request and remembers why.
    fn request(&mut self, to: A, message: QueueMessage<A>, purpose: Purpose, timeout: Duration, now: Time) {
        let req = message.req();
        self.pending.insert(req, Pending { to: to.clone(), purpose, deadline: now + timeout });
        self.send(to, message);
    }

    fn send(&mut self, to: A, message: QueueMessage<A>) {
        self.transmits.push_back((to, message));
    }

    fn on_answer(&mut self, from: A, answer: QueueMessage<A>, ring: &mut Node<A>, now: Time) {
        let req = answer.req();
        let Some(pending) = self.pending.get(&req) else {
            self.counters.dropped += 1;
            return;
        };
        if pending.to != from {
            self.counters.dropped += 1;
            return;
        }
        let Some(pending) = self.pending.remove(&req) else {
            return;
        };
        match pending.purpose {
            Purpose::Client(op) => self.on_client_answer(op, from, answer, ring, now),
            Purpose::Replicate { commit } => match answer {
                QueueMessage::Replicated { .. } => self.on_replicated(commit, now),
                _ => self.counters.dropped += 1,
            },
            Purpose::TakeoverFetch { queue } => self.on_takeover_page(queue, from, answer, ring, now),
            Purpose::Sync { queue } => self.on_sync_answer(queue, from, answer, now),
            Purpose::Subscribe(sub) => self.on_subscribed(sub, from, answer, now),
        }
    }

    fn on_request_failed(&mut self, req: u64, pending: Pending<A>, ring: &mut Node<A>, now: Time) {
        let _ = req;
        match pending.purpose {
            Purpose::Client(op) => self.on_client_failed(op, ring, now),
            Purpose::Replicate { commit } => self.on_replicate_failed(commit, now),
            Purpose::TakeoverFetch { queue } => self.on_takeover_failed(queue, pending.to, ring, now),
            Purpose::Sync { ref queue } => {
                let queue = queue.clone();
                self.on_sync_failed(&queue, &pending, now);
            }
            Purpose::Subscribe(sub) => self.on_subscribe_failed(sub, now),
        }
    }
}
