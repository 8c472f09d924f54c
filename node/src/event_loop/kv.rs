//! The key/value room of the event loop: it drives the store coordinator ([`dht::kv`]) and
//! carries out what it asks.
//!
//! Owns: the coordinator; the mapping between libp2p's request ids and the coordinator's (both
//! ways); the callers waiting for client operations; and the execution of store operations against
//! [`Storage`]. Every rule (quorums, repair, anti-entropy, hand-off) is the coordinator's; this
//! module only moves bytes and records.
//!
//! Store operations run off the loop's thread, except single-key reads: a persist goes to the
//! storage writer (group commit, log fsync) and its outcome comes back through a channel; digests
//! and pages of a range run on tokio's blocking pool, each scan starting at its cursor and reading
//! at most one page; a read of one key is one B-tree probe served from redb's cache, cheaper than
//! the hop to another thread, and runs inline.

use std::collections::HashMap;

use dht::kv::{
    Coordinator, IoId, KvCounters, KvEvent, KvMessage, OpId, OpOutcome, PersistOutcome, StoreOp, StoreResult,
};
use dht::store::{Consistency, KvRequest, KvResponse, Record};
use dht::{LookupError, LookupId, LookupOutcome, Node, RequestId, Time};
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::{PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::{Expect, KvError, Located, Written};
use crate::address::PeerAddr;
use crate::metrics::Rejections;
use crate::network::Behaviour;
use crate::storage::Storage;

/// A client operation's caller.
#[derive(Debug)]
enum Waiting {
    Read(oneshot::Sender<Result<Option<Record>, KvError>>),
    Write(oneshot::Sender<Result<Written, KvError>>),
    Locate(oneshot::Sender<Result<Located, KvError>>),
}

/// A store operation finished off the loop.
pub(super) type StoreDone = (IoId, StoreResult);

/// Capacity of the channel store operations report back through. Senders wait when it is full;
/// the loop drains it every turn.
const STORE_DONE_CAPACITY: usize = 1024;

/// The key/value room.
#[derive(Debug)]
pub(super) struct KvRoom {
    coordinator: Coordinator<PeerAddr>,
    storage: Storage,
    /// Storage-protocol inputs this room rejected before the coordinator saw them.
    rejected: Rejections,
    outbound: HashMap<OutboundRequestId, RequestId>,
    inbound: HashMap<RequestId, ResponseChannel<KvResponse>>,
    next_inbound: u64,
    waiting: HashMap<OpId, Waiting>,
    done_tx: mpsc::Sender<StoreDone>,
    /// Where store operations report back; the loop selects on it.
    pub(super) done_rx: mpsc::Receiver<StoreDone>,
    /// Set once a leave's hand-off is over.
    handed_off: bool,
}

impl KvRoom {
    pub(super) fn new(coordinator: Coordinator<PeerAddr>, storage: Storage) -> Self {
        let (done_tx, done_rx) = mpsc::channel(STORE_DONE_CAPACITY);
        KvRoom {
            coordinator,
            storage,
            rejected: Rejections::default(),
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            next_inbound: 0,
            waiting: HashMap::new(),
            done_tx,
            done_rx,
            handed_off: false,
        }
    }

    pub(super) fn storage(&self) -> &Storage {
        &self.storage
    }

    pub(super) fn counters(&self) -> &KvCounters {
        self.coordinator.counters()
    }

    pub(super) fn rejected(&self) -> Rejections {
        self.rejected
    }

    pub(super) fn poll_timeout(&self) -> Option<Time> {
        self.coordinator.poll_timeout()
    }

    pub(super) fn handed_off(&self) -> bool {
        self.handed_off
    }

    // ----- client operations -------------------------------------------------------------------

    pub(super) fn get(
        &mut self,
        key: Vec<u8>,
        consistency: Consistency,
        reply: oneshot::Sender<Result<Option<Record>, KvError>>,
        ring: &mut Node<PeerAddr>,
        now: Time,
    ) {
        match self.coordinator.get(key, consistency, ring, now) {
            Ok(op) => drop(self.waiting.insert(op, Waiting::Read(reply))),
            Err(error) => drop(reply.send(Err(error))),
        }
    }

    pub(super) fn get_local(&self, key: &[u8], reply: oneshot::Sender<Result<Option<Record>, KvError>>) {
        let _ = reply.send(self.storage.get(key).map_err(|e| KvError::Storage(e.to_string())));
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn put(
        &mut self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        consistency: Consistency,
        reply: oneshot::Sender<Result<Written, KvError>>,
        ring: &mut Node<PeerAddr>,
        wall_ms: u64,
        now: Time,
    ) {
        let started = match value {
            Some(value) => self.coordinator.put(key, value, consistency, ring, wall_ms, now),
            None => self.coordinator.delete(key, consistency, ring, wall_ms, now),
        };
        match started {
            Ok(op) => drop(self.waiting.insert(op, Waiting::Write(reply))),
            Err(error) => drop(reply.send(Err(error))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn put_signed(
        &mut self,
        record: Record,
        consistency: Consistency,
        reply: oneshot::Sender<Result<Written, KvError>>,
        ring: &mut Node<PeerAddr>,
        wall_ms: u64,
        now: Time,
    ) {
        match self.coordinator.put_signed(record, consistency, ring, wall_ms, now) {
            Ok(op) => drop(self.waiting.insert(op, Waiting::Write(reply))),
            Err(error) => drop(reply.send(Err(error))),
        }
    }

    pub(super) fn get_linearizable(
        &mut self,
        key: Vec<u8>,
        reply: oneshot::Sender<Result<Option<Record>, KvError>>,
        ring: &mut Node<PeerAddr>,
        wall_ms: u64,
        now: Time,
    ) {
        match self.coordinator.get_linearizable(key, ring, wall_ms, now) {
            Ok(op) => drop(self.waiting.insert(op, Waiting::Read(reply))),
            Err(error) => drop(reply.send(Err(error))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn compare_and_set(
        &mut self,
        key: Vec<u8>,
        expect: Expect,
        value: Option<Vec<u8>>,
        reply: oneshot::Sender<Result<Written, KvError>>,
        ring: &mut Node<PeerAddr>,
        wall_ms: u64,
        now: Time,
    ) {
        match self.coordinator.compare_and_set(key, expect, value, ring, wall_ms, now) {
            Ok(op) => drop(self.waiting.insert(op, Waiting::Write(reply))),
            Err(error) => drop(reply.send(Err(error))),
        }
    }

    pub(super) fn locate(
        &mut self,
        key: &[u8],
        reply: oneshot::Sender<Result<Located, KvError>>,
        ring: &mut Node<PeerAddr>,
        now: Time,
    ) {
        let op = self.coordinator.locate(key, ring, now);
        self.waiting.insert(op, Waiting::Locate(reply));
    }

    /// Starts handing this node's range over before it leaves.
    pub(super) fn begin_handoff(&mut self, ring: &Node<PeerAddr>, now: Time) {
        self.coordinator.begin_handoff(ring, now);
    }

    // ----- inputs ------------------------------------------------------------------------------

    pub(super) fn on_lookup_finished(
        &mut self,
        id: LookupId,
        result: &Result<LookupOutcome<PeerAddr>, LookupError>,
        ring: &mut Node<PeerAddr>,
        now: Time,
    ) -> bool {
        self.coordinator.handle_lookup_finished(id, result, ring, now)
    }

    pub(super) fn on_timeout(&mut self, ring: &mut Node<PeerAddr>, now: Time) {
        self.coordinator.handle_timeout(ring, now);
    }

    pub(super) fn on_ring_changed(&mut self, now: Time) {
        self.coordinator.handle_ring_changed(now);
    }

    pub(super) fn on_store_done(&mut self, (io, result): StoreDone, ring: &mut Node<PeerAddr>, now: Time) {
        self.coordinator.handle_store_result(io, result, ring, now);
    }

    /// A storage-protocol event from the swarm. Returns the peer whose request timed out, whose
    /// connection may be dead.
    pub(super) fn on_swarm_event(
        &mut self,
        event: request_response::Event<KvRequest, KvResponse>,
        ring: &mut Node<PeerAddr>,
        wall_ms: u64,
        now: Time,
    ) -> Option<PeerId> {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let id = RequestId(self.next_inbound);
                    self.next_inbound += 1;
                    self.inbound.insert(id, channel);
                    // Only the peer id matters to the coordinator for answering.
                    let from = PeerAddr::new(peer, libp2p::Multiaddr::empty());
                    self.coordinator.handle_request(from, id, request, ring, wall_ms, now);
                }
                request_response::Message::Response { request_id, response } => {
                    let Some(id) = self.outbound.remove(&request_id) else {
                        self.rejected.unexpected += 1;
                        return None;
                    };
                    let from = PeerAddr::new(peer, libp2p::Multiaddr::empty());
                    self.coordinator.handle_response(from, id, response, ring, wall_ms, now);
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                if let Some(id) = self.outbound.remove(&request_id) {
                    debug!(%error, "storage request failed");
                    self.coordinator.handle_send_failure(id, ring, now);
                }
                if matches!(error, request_response::OutboundFailure::Timeout) {
                    return Some(peer);
                }
            }
            request_response::Event::InboundFailure { error, .. } => {
                self.rejected.malformed += 1;
                debug!(%error, "inbound storage request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
        None
    }

    // ----- outputs -----------------------------------------------------------------------------

    /// Sends what the coordinator wants sent, starts its store operations and answers callers.
    pub(super) fn flush(&mut self, swarm: &mut Swarm<Behaviour>) {
        loop {
            if let Some(transmit) = self.coordinator.poll_transmit() {
                self.send(swarm, transmit.to, transmit.message);
            } else if let Some(op) = self.coordinator.poll_store_op() {
                self.execute(op);
            } else if let Some(event) = self.coordinator.poll_event() {
                self.on_event(event);
            } else {
                return;
            }
        }
    }

    fn send(&mut self, swarm: &mut Swarm<Behaviour>, to: PeerAddr, message: KvMessage) {
        match message {
            KvMessage::Request { id, body } => {
                // Every request carries the address the core knows for its peer, used if a
                // connection must be dialed (see `EventLoop::dial_addresses`).
                let addresses = vec![to.addr.clone()];
                let outbound =
                    swarm.behaviour_mut().kv.send_request_with_addresses(&to.peer, body, addresses);
                self.outbound.insert(outbound, id);
            }
            KvMessage::Response { id, body } => {
                if let Some(channel) = self.inbound.remove(&id) {
                    // Fails only if the requester gave up; nothing to do then.
                    let _ = swarm.behaviour_mut().kv.send_response(channel, body);
                }
            }
        }
    }

    fn on_event(&mut self, event: KvEvent<PeerAddr>) {
        match event {
            KvEvent::OpFinished { op, result } => {
                let Some(waiting) = self.waiting.remove(&op) else {
                    return;
                };
                // A caller that went away (HTTP client disconnected) is no error.
                match (waiting, result) {
                    (Waiting::Read(reply), Ok(OpOutcome::Read(record))) => drop(reply.send(Ok(record))),
                    (Waiting::Write(reply), Ok(OpOutcome::Written(written))) => drop(reply.send(Ok(written))),
                    (Waiting::Locate(reply), Ok(OpOutcome::Located(located))) => {
                        drop(reply.send(Ok(located)))
                    }
                    (Waiting::Read(reply), Err(error)) => drop(reply.send(Err(error))),
                    (Waiting::Write(reply), Err(error)) => drop(reply.send(Err(error))),
                    (Waiting::Locate(reply), Err(error)) => drop(reply.send(Err(error))),
                    (waiting, result) => {
                        warn!(?waiting, ?result, "an operation finished with the wrong kind of result")
                    }
                }
            }
            KvEvent::HandoffFinished { records } => {
                debug!(records, "hand-off finished");
                self.handed_off = true;
            }
        }
    }

    fn execute(&mut self, op: StoreOp) {
        let io = op.io();
        let storage = self.storage.clone();
        let done = self.done_tx.clone();
        match op {
            StoreOp::Persist { records, .. } => {
                // Queued now or refused now: a full queue fails the operation (a peer's Store is
                // answered Refused, a client's replica counts as failed) before anything is
                // acknowledged, instead of a task per write waiting for room.
                let queued = storage.try_put_many(records);
                tokio::spawn(async move {
                    let written = match queued {
                        Ok(written) => written.await,
                        Err(error) => Err(error),
                    };
                    let result = match written {
                        Ok(outcomes) => StoreResult::Persisted(
                            outcomes
                                .into_iter()
                                .map(|o| PersistOutcome {
                                    applied: o.applied,
                                    existed: o.existed,
                                    held: o.held,
                                })
                                .collect(),
                        ),
                        Err(error) => StoreResult::Failed(error.to_string()),
                    };
                    let _ = done.send((io, result)).await;
                });
            }
            StoreOp::Read { keys, .. } => {
                let mut records = Vec::with_capacity(keys.len());
                let mut failed = None;
                for key in &keys {
                    match storage.get(key) {
                        Ok(record) => records.push(record),
                        Err(error) => {
                            failed = Some(error.to_string());
                            break;
                        }
                    }
                }
                let result = match failed {
                    Some(error) => StoreResult::Failed(error),
                    None => StoreResult::Read(records),
                };
                // Answered through the channel like the others, so the coordinator never sees a
                // result inside the call that asked for it.
                if let Err(mpsc::error::TrySendError::Full((io, result))) = done.try_send((io, result)) {
                    tokio::spawn(async move { drop(done.send((io, result)).await) });
                }
            }
            StoreOp::Digest { start, end, .. } => {
                spawn_scan(done, io, move || storage.digest(&start, &end).map(StoreResult::Digest));
            }
            StoreOp::Entries { start, end, buckets, after, limit, .. } => {
                spawn_scan(done, io, move || {
                    let (entries, truncated) =
                        storage.entries_after(&start, &end, buckets.as_deref(), after.as_ref(), limit)?;
                    Ok(StoreResult::Entries { entries, truncated })
                });
            }
            StoreOp::Remove { entries, .. } => {
                tokio::spawn(async move {
                    let result = match storage.remove_exact(entries).await {
                        Ok(removed) => StoreResult::Removed(removed),
                        Err(error) => StoreResult::Failed(error.to_string()),
                    };
                    let _ = done.send((io, result)).await;
                });
            }
            StoreOp::Records { start, end, after, limit, .. } => {
                spawn_scan(done, io, move || {
                    let (records, truncated) = storage.records_after(&start, &end, after.as_ref(), limit)?;
                    Ok(StoreResult::Records { records, truncated })
                });
            }
        }
    }
}

/// Runs a scan on the blocking pool and reports its result.
fn spawn_scan(
    done: mpsc::Sender<StoreDone>,
    io: IoId,
    scan: impl FnOnce() -> Result<StoreResult, crate::storage::StorageError> + Send + 'static,
) {
    tokio::spawn(async move {
        let result = match tokio::task::spawn_blocking(scan).await {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => StoreResult::Failed(error.to_string()),
            Err(error) => StoreResult::Failed(format!("scan task failed: {error}")),
        };
        let _ = done.send((io, result)).await;
    });
}
