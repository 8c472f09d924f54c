//! The event loop's queue side: drives `dht::queue::Queues` next to the ring core, carries its
//! one-way messages on `/overlay/queue/1`, makes its changes durable in the [`QueueStore`]
//! before sending anything drained after them, and connects its results and notifications to the
//! API's waiting requests and listeners.
//!
//! Owns [`QueueRoom`]: the core, the store, the API's replies by operation, and the listeners by
//! subscription. A listener whose receiver is gone is unsubscribed at the next housekeeping tick.
//! A store that fails to write stops the node (an error out of the loop): acknowledging anything
//! after a failed write would be a lie, and a crashed node is a failure the ring already survives.

use std::collections::HashMap;
use std::time::Duration;

use dht::NodeRef;
use dht::queue::{
    AckOutcome, Leased, MsgId, QueueError, QueueEvent, QueueName, QueueOpId, QueueOutcome, QueuePersist,
    QueueStats, Queues, StoredMessage, SubId,
};
use libp2p::PeerId;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::{EventLoop, wall_ms};
use crate::address::PeerAddr;
use crate::network::{QueueReply, QueueRequest};
use crate::queue_store::QueueStore;

/// Messages a listener may have waiting before it is considered stuck and dropped.
pub(super) const LISTENER_BUFFER: usize = 1024;

/// The answer to a put: the message's sequence number and id.
pub(super) type PutReceipt = (u64, MsgId);
/// The answer to a stat: the figures and the ordering node.
pub(crate) type QueueStat = (QueueStats, NodeRef<PeerAddr>);

/// Where an operation's result goes.
#[derive(Debug)]
enum Reply {
    Put(oneshot::Sender<Result<PutReceipt, QueueError>>),
    Take(oneshot::Sender<Result<Option<Leased>, QueueError>>),
    Ack(oneshot::Sender<Result<AckOutcome, QueueError>>),
    Stat(oneshot::Sender<Result<QueueStat, QueueError>>),
}

/// The queues of this node and everything waiting on them.
#[allow(missing_debug_implementations)] // holds the store
pub(super) struct QueueRoom {
    pub(super) core: Queues<PeerAddr>,
    store: QueueStore,
    /// Messages sent, by libp2p's request id: to whom (for failures).
    outbound: HashMap<OutboundRequestId, PeerAddr>,
    replies: HashMap<QueueOpId, Reply>,
    listeners: HashMap<SubId, mpsc::Sender<StoredMessage>>,
    /// Changes made durable, and store transactions.
    pub(super) persisted: u64,
    pub(super) commits: u64,
}

impl QueueRoom {
    pub(super) fn new(mut core: Queues<PeerAddr>, mut store: QueueStore) -> anyhow::Result<Self> {
        for (name, snapshot) in store.load()? {
            core.restore(name, snapshot, dht::Time::ZERO);
        }
        Ok(QueueRoom {
            core,
            store,
            outbound: HashMap::new(),
            replies: HashMap::new(),
            listeners: HashMap::new(),
            persisted: 0,
            commits: 0,
        })
    }

    /// Listeners attached now.
    pub(super) fn listeners(&self) -> usize {
        self.listeners.len()
    }

    /// Rows of the store that did not decode at start.
    pub(super) fn corrupt_rows(&self) -> u64 {
        self.store.corrupt_rows
    }
}

impl EventLoop {
    pub(super) fn queue_put(
        &mut self,
        queue: QueueName,
        body: Vec<u8>,
        sender: String,
        quota: Option<u32>,
        reply: oneshot::Sender<Result<PutReceipt, QueueError>>,
    ) {
        let now = self.now();
        let id = MsgId(rand::random::<u128>());
        let op = self.queues.core.put(queue, id, sender, quota, body, wall_ms(), &mut self.core, now);
        self.queues.replies.insert(op, Reply::Put(reply));
    }

    pub(super) fn queue_take(
        &mut self,
        queue: QueueName,
        consumer: String,
        wait: Duration,
        lease: Duration,
        reply: oneshot::Sender<Result<Option<Leased>, QueueError>>,
    ) {
        let now = self.now();
        let op = self.queues.core.take(queue, consumer, wait, lease, &mut self.core, now);
        self.queues.replies.insert(op, Reply::Take(reply));
    }

    pub(super) fn queue_ack(
        &mut self,
        queue: QueueName,
        seq: u64,
        id: MsgId,
        lease: u64,
        reply: oneshot::Sender<Result<AckOutcome, QueueError>>,
    ) {
        let now = self.now();
        let op = self.queues.core.ack(queue, seq, id, lease, &mut self.core, now);
        self.queues.replies.insert(op, Reply::Ack(reply));
    }

    pub(super) fn queue_stat(
        &mut self,
        queue: QueueName,
        reply: oneshot::Sender<Result<QueueStat, QueueError>>,
    ) {
        let now = self.now();
        let op = self.queues.core.stat(queue, &mut self.core, now);
        self.queues.replies.insert(op, Reply::Stat(reply));
    }

    pub(super) fn queue_listen(
        &mut self,
        queue: QueueName,
        from_seq: u64,
        reply: oneshot::Sender<Result<mpsc::Receiver<StoredMessage>, QueueError>>,
    ) {
        let now = self.now();
        match self.queues.core.subscribe(queue, from_seq, &mut self.core, now) {
            Some(sub) => {
                let (tx, rx) = mpsc::channel(LISTENER_BUFFER);
                self.queues.listeners.insert(sub, tx);
                let _ = reply.send(Ok(rx));
            }
            None => drop(reply.send(Err(QueueError::Overloaded))),
        }
    }

    /// The queues' figures for `/metrics`.
    pub(super) fn queue_metrics(&self) -> crate::metrics::QueueMetrics {
        crate::metrics::QueueMetrics {
            counters: self.queues.core.counters().clone(),
            held: self.queues.core.held().len() as u64,
            listeners: self.queues.listeners() as u64,
            persisted: self.queues.persisted,
            commits: self.queues.commits,
            corrupt_rows: self.queues.corrupt_rows(),
        }
    }

    /// Unsubscribes listeners that went away.
    pub(super) fn prune_queue_listeners(&mut self) {
        let gone: Vec<SubId> =
            self.queues.listeners.iter().filter(|(_, tx)| tx.is_closed()).map(|(sub, _)| *sub).collect();
        for sub in gone {
            self.queues.listeners.remove(&sub);
            self.queues.core.unsubscribe(sub);
        }
    }

    /// Persists, then sends, then reports what the queue core produced, until it is quiet.
    pub(super) fn drive_queues(&mut self) -> anyhow::Result<()> {
        loop {
            let mut changes: Vec<QueuePersist> = Vec::new();
            while let Some(change) = self.queues.core.poll_persist() {
                changes.push(change);
            }
            if !changes.is_empty() {
                self.queues.store.apply(&changes)?;
                self.queues.persisted += changes.len() as u64;
                self.queues.commits += 1;
            }
            let mut progressed = !changes.is_empty();
            // Only what was drained after the changes above goes out now; what handling a
            // message to this node produces waits for the next turn of this loop (and its
            // persistence).
            let mut local = Vec::new();
            while let Some((to, message)) = self.queues.core.poll_transmit() {
                progressed = true;
                if to.peer == self.me.peer {
                    local.push(message);
                    continue;
                }
                let request = QueueRequest { sender: self.me.clone(), message: Box::new(message) };
                let addresses = Self::dial_addresses(&to);
                let id = self
                    .swarm
                    .behaviour_mut()
                    .queue
                    .send_request_with_addresses(&to.peer, request, addresses);
                self.queues.outbound.insert(id, to);
            }
            for message in local {
                let (now, me) = (self.now(), self.me.clone());
                self.queues.core.handle_message(me, message, &mut self.core, now);
            }
            while let Some(event) = self.queues.core.poll_event() {
                progressed = true;
                self.on_queue_core_event(event);
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    fn on_queue_core_event(&mut self, event: QueueEvent<PeerAddr>) {
        match event {
            QueueEvent::Done { op, result } => {
                let Some(reply) = self.queues.replies.remove(&op) else { return };
                match (reply, result) {
                    (Reply::Put(tx), Ok(QueueOutcome::Put { seq, id })) => drop(tx.send(Ok((seq, id)))),
                    (Reply::Take(tx), Ok(QueueOutcome::Taken(taken))) => drop(tx.send(Ok(taken))),
                    (Reply::Ack(tx), Ok(QueueOutcome::Acked(outcome))) => drop(tx.send(Ok(outcome))),
                    (Reply::Stat(tx), Ok(QueueOutcome::Stats { stats, owner })) => {
                        drop(tx.send(Ok((stats, owner))))
                    }
                    (Reply::Put(tx), Err(e)) => drop(tx.send(Err(e))),
                    (Reply::Take(tx), Err(e)) => drop(tx.send(Err(e))),
                    (Reply::Ack(tx), Err(e)) => drop(tx.send(Err(e))),
                    (Reply::Stat(tx), Err(e)) => drop(tx.send(Err(e))),
                    (_, Ok(other)) => debug!(?other, "queue operation answered with another kind of result"),
                }
            }
            QueueEvent::Notified { sub, messages } => {
                let Some(tx) = self.queues.listeners.get(&sub) else { return };
                for message in messages {
                    if tx.try_send(message).is_err() {
                        // Full (a stuck reader) or gone: drop the listener; its stream ends.
                        self.queues.listeners.remove(&sub);
                        self.queues.core.unsubscribe(sub);
                        break;
                    }
                }
            }
        }
    }

    pub(super) fn on_queue_event(&mut self, event: request_response::Event<QueueRequest, QueueReply>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.serve_queue(peer, request, channel);
                }
                request_response::Message::Response { request_id, .. } => {
                    if self.queues.outbound.remove(&request_id).is_none() {
                        self.counters.rejected.unexpected += 1;
                    }
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                self.drop_dead_connection(peer, &error);
                if let Some(to) = self.queues.outbound.remove(&request_id) {
                    debug!(%error, peer = %to.peer, "queue message failed");
                    if matches!(
                        error,
                        request_response::OutboundFailure::DialFailure
                            | request_response::OutboundFailure::Timeout
                    ) {
                        let now = self.now();
                        self.queues.core.handle_unreachable(&to, &mut self.core, now);
                    }
                }
            }
            request_response::Event::InboundFailure { error, .. } => {
                self.counters.rejected.malformed += 1;
                debug!(%error, "inbound queue request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn serve_queue(&mut self, peer: PeerId, request: QueueRequest, channel: ResponseChannel<QueueReply>) {
        let QueueRequest { sender, message } = request;
        let reply = if sender.peer != peer {
            // The envelope must name the authenticated sender.
            self.counters.rejected.invalid += 1;
            QueueReply::Refused
        } else {
            let now = self.now();
            self.queues.core.handle_message(sender, *message, &mut self.core, now);
            QueueReply::Ack
        };
        // Fails only if the requester gave up; nothing to do then.
        let _ = self.swarm.behaviour_mut().queue.send_response(channel, reply);
    }
}
