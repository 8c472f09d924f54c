//! The node's one event loop: it owns the `dht` core, the libp2p swarm and the record store, and
//! is the only place that touches them.
//!
//! Everything else (HTTP handlers) talks to it through a bounded [`Command`] channel with oneshot
//! replies. The loop feeds the core what the network delivers and the clock says, sends what the
//! core asks, and runs the storage protocol: client reads and writes with quorums over the key's
//! replica set (the owner found by a lookup and its successors), read repair, anti-entropy of each
//! node's own range with its successors, and hand-off of that range when leaving.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dht::store::{
    Consistency, Entry, HybridClock, KvRequest, KvResponse, MAX_BATCH, Record, plan_sync, sync_targets,
};
use dht::{Event, Id, LookupError, LookupId, LookupOutcome, NodeRef, RequestId, Time};
use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

mod multicast;

use self::multicast::GroupState;
use crate::address::PeerAddr;
use crate::groups::{GroupError, GroupView, Subscription, TreeView};
use crate::metrics::Metrics;
use crate::network::{Behaviour, BehaviourEvent, RingEnvelope};
use crate::storage::{PutOutcome, Storage};

/// Why a client operation failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum KvError {
    /// The value is larger than the node accepts.
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The value's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The key is larger than the node accepts.
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLarge {
        /// The key's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Fewer replicas answered than the consistency level needs.
    #[error("only {got} of the {needed} replicas needed answered")]
    NoQuorum {
        /// Replies needed.
        needed: usize,
        /// Replies received.
        got: usize,
    },
    /// The key's owner could not be found.
    #[error("no route to the key's owner: {0}")]
    Lookup(LookupError),
    /// The local store failed.
    #[error("local storage failed: {0}")]
    Storage(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// A successful write.
#[derive(Clone, Debug)]
pub struct Written {
    /// The version written.
    pub version: dht::store::Version,
    /// Whether some replica held a live value before.
    pub existed: bool,
    /// Replicas that acknowledged before the reply.
    pub acked: usize,
}

/// The answer to a lookup.
#[derive(Clone, Debug)]
pub struct Located {
    /// The key's id.
    pub key_id: Id,
    /// Owner and replicas.
    pub replicas: Vec<NodeRef<PeerAddr>>,
    /// Hops the lookup took.
    pub hops: u32,
}

/// A snapshot of this node's view, for `/v1/status`.
#[derive(Clone, Debug)]
pub struct Status {
    /// This node.
    pub me: NodeRef<PeerAddr>,
    /// Addresses it listens on.
    pub listen: Vec<Multiaddr>,
    /// Whether it is a ring member.
    pub member: bool,
    /// Its predecessor.
    pub predecessor: Option<NodeRef<PeerAddr>>,
    /// Its successor list.
    pub successors: Vec<NodeRef<PeerAddr>>,
    /// Distinct fingers with the first index each appears at.
    pub fingers: Vec<(usize, NodeRef<PeerAddr>)>,
    /// Live keys and value bytes stored.
    pub keys: u64,
    /// Value bytes stored.
    pub bytes: u64,
    /// Time since start.
    pub uptime: Duration,
}

/// The ring as walked along successors from this node.
#[derive(Clone, Debug)]
pub struct RingWalk {
    /// Nodes in ring order, starting here.
    pub nodes: Vec<NodeRef<PeerAddr>>,
    /// Whether the walk came back to this node.
    pub complete: bool,
}

/// A request from the HTTP API.
#[derive(Debug)]
pub enum Command {
    /// Read a key.
    Get { key: Vec<u8>, consistency: Consistency, reply: oneshot::Sender<Result<Option<Record>, KvError>> },
    /// Read this node's own copy of a key, without asking any replica.
    GetLocal { key: Vec<u8>, reply: oneshot::Sender<Result<Option<Record>, KvError>> },
    /// Write a key.
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        consistency: Consistency,
        reply: oneshot::Sender<Result<Written, KvError>>,
    },
    /// Delete a key (write a tombstone).
    Delete { key: Vec<u8>, consistency: Consistency, reply: oneshot::Sender<Result<Written, KvError>> },
    /// Find a key's replicas.
    Lookup { key: Vec<u8>, reply: oneshot::Sender<Result<Located, KvError>> },
    /// This node's view.
    Status { reply: oneshot::Sender<Status> },
    /// Walk the ring.
    Ring { reply: oneshot::Sender<RingWalk> },
    /// The groups this node roots, forwards or belongs to.
    Groups { reply: oneshot::Sender<Vec<GroupView>> },
    /// Become a member of a group (until left).
    JoinGroup { group: String, reply: oneshot::Sender<Result<GroupView, GroupError>> },
    /// Stop being a member of a group (listeners keep it a member while they last).
    LeaveGroup { group: String, reply: oneshot::Sender<Result<(), GroupError>> },
    /// Send a message to a group; answered with its sequence number once the root stamped it.
    Publish {
        group: String,
        from: Option<String>,
        body: String,
        reply: oneshot::Sender<Result<u64, GroupError>>,
    },
    /// Attach a listener (the node is a member while one is attached).
    Subscribe { group: String, from: Option<u64>, reply: oneshot::Sender<Result<Subscription, GroupError>> },
    /// Walk a group's tree from its root.
    GroupTree { group: String, reply: oneshot::Sender<Result<TreeView, GroupError>> },
}

/// Settings of the loop.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    /// Replicas per key.
    pub replicas: usize,
    /// Largest value accepted.
    pub max_value_bytes: usize,
    /// Anti-entropy period.
    pub sync_interval: Duration,
    /// How long a client operation may take before it fails.
    pub op_timeout: Duration,
    /// How long to keep trying to reach a bootstrap node.
    pub join_timeout: Duration,
    /// Bootstrap addresses (empty: create a ring).
    pub bootstrap: Vec<Multiaddr>,
}

type OpId = u64;

#[derive(Debug)]
enum OpKind {
    Write { record: Record, reply: Option<oneshot::Sender<Result<Written, KvError>>> },
    Read { key: Vec<u8>, reply: Option<oneshot::Sender<Result<Option<Record>, KvError>>> },
    Locate { key_id: Id, reply: oneshot::Sender<Result<Located, KvError>> },
}

#[derive(Debug)]
struct Op {
    kind: OpKind,
    consistency: Consistency,
    deadline: Instant,
    replicas: Vec<NodeRef<PeerAddr>>,
    needed: usize,
    ok: usize,
    failed: usize,
    existed: bool,
    /// Read replies so far: who answered what.
    answers: Vec<(NodeRef<PeerAddr>, Option<Record>)>,
}

/// Why a storage request to a peer is in flight.
#[derive(Debug)]
enum KvPurpose {
    OpStore { op: OpId },
    OpFetch { op: OpId, peer: NodeRef<PeerAddr> },
    Repair,
    SyncDigest { peer: PeerAddr, start: Id, end: Id },
    SyncEntries { peer: PeerAddr, start: Id, end: Id, buckets: Vec<u16>, after: Option<Id> },
    SyncPush,
    SyncPull,
    Handoff,
}

/// Work finished off the loop (storage writes) reporting back.
#[derive(Debug)]
enum Internal {
    LocalStored { op: OpId, result: Result<PutOutcome, String> },
    RespondKv { channel: ResponseChannel<KvResponse>, response: KvResponse },
    Pulled { count: usize },
}

/// Walk of the ring in progress.
#[derive(Debug)]
struct Walk {
    nodes: Vec<NodeRef<PeerAddr>>,
    reply: oneshot::Sender<RingWalk>,
}

/// Request ids the driver uses on the ring protocol for its own walks; the core counts up from 0.
const WALK_REQUEST_ID: RequestId = RequestId(u64::MAX);
/// Longest ring walk.
const MAX_WALK: usize = 4096;
/// How long a node whose bootstrap list includes itself waits for another bootstrap node
/// before it starts a ring of its own.
const SELF_BOOTSTRAP_GRACE: Duration = Duration::from_secs(10);
/// How long a node with bootstrap addresses stays alone before it tries to rejoin.
const REJOIN_EVERY: Duration = Duration::from_secs(5);

/// The loop's state.
#[allow(missing_debug_implementations)] // holds the swarm, which is not Debug
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    core: dht::Node<PeerAddr>,
    /// Multicast groups: the core's trees and the API's listeners.
    groups: GroupState,
    storage: Storage,
    clock: HybridClock,
    config: LoopConfig,
    metrics: Arc<Metrics>,
    started: Instant,
    me: PeerAddr,
    commands: mpsc::Receiver<Command>,
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: mpsc::Receiver<Internal>,
    ring_out: HashMap<OutboundRequestId, RequestId>,
    ring_in: HashMap<(PeerId, RequestId), ResponseChannel<RingEnvelope>>,
    walks: HashMap<OutboundRequestId, Walk>,
    kv_out: HashMap<OutboundRequestId, KvPurpose>,
    ops: HashMap<OpId, Op>,
    lookup_ops: HashMap<LookupId, OpId>,
    next_op: OpId,
    next_sync: Instant,
    join: JoinState,
    shutdown: CancellationToken,
    leave: LeaveState,
    /// Joining again after being cut off (a failure returns to being alone, not to exiting).
    rejoining: bool,
    /// When a node found alone next tries to rejoin.
    next_rejoin_check: Instant,
    /// When dialing a bootstrap address first reached this node itself.
    bootstrap_is_self_since: Option<Instant>,
}

#[derive(Debug)]
enum JoinState {
    /// Dialing bootstrap addresses until one answers.
    Dialing { deadline: Instant, next_dial: Instant, attempt: u32 },
    /// The core is joining through these.
    Joining,
    /// A member.
    Done,
}

#[derive(Debug, PartialEq, Eq)]
enum LeaveState {
    Running,
    /// Handing off records; `pending` pushes outstanding.
    HandingOff {
        deadline: Instant,
    },
    /// The core is telling its neighbours.
    Leaving {
        deadline: Instant,
    },
    Done,
}

impl EventLoop {
    /// A loop for a swarm already listening at `announce`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        swarm: Swarm<Behaviour>,
        announce: Multiaddr,
        dht_config: dht::Config,
        storage: Storage,
        config: LoopConfig,
        metrics: Arc<Metrics>,
        commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let me = PeerAddr::new(*swarm.local_peer_id(), announce);
        let seed = u64::from_le_bytes(me.peer.to_bytes()[..8].try_into().unwrap_or([0; 8]))
            ^ SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let core = dht::Node::new(me.clone(), dht_config, seed)?;
        let clock = HybridClock::new(core.me().id);
        let groups = GroupState::new(core.me().clone());
        let (internal_tx, internal_rx) = mpsc::channel(1024);
        let now = Instant::now();
        Ok(EventLoop {
            swarm,
            core,
            groups,
            storage,
            clock,
            join: if config.bootstrap.is_empty() {
                JoinState::Done
            } else {
                JoinState::Dialing { deadline: now + config.join_timeout, next_dial: now, attempt: 0 }
            },
            config,
            metrics,
            started: now,
            me,
            commands,
            internal_tx,
            internal_rx,
            ring_out: HashMap::new(),
            ring_in: HashMap::new(),
            walks: HashMap::new(),
            kv_out: HashMap::new(),
            ops: HashMap::new(),
            lookup_ops: HashMap::new(),
            next_op: 0,
            next_sync: now,
            shutdown,
            leave: LeaveState::Running,
            rejoining: false,
            next_rejoin_check: now + REJOIN_EVERY,
            bootstrap_is_self_since: None,
        })
    }

    fn now(&self) -> Time {
        Time::from_elapsed(self.started.elapsed())
    }

    /// Runs until the node has left the ring (after the shutdown token fires) or fails to join.
    pub async fn run(mut self) -> anyhow::Result<()> {
        if self.config.bootstrap.is_empty() {
            let now = self.now();
            self.core.create_ring(now);
            info!(peer = %self.me.peer, ring_id = %self.core.me().id, "started a new ring");
        }
        let mut housekeeping = tokio::time::interval(Duration::from_millis(100));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.drive_core()?;
            if self.leave == LeaveState::Done {
                return Ok(());
            }
            let next = match (self.core.poll_timeout(), self.groups.core.poll_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let wake = next
                .map(|t| self.started + t.since_epoch())
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let shutting_down = self.leave != LeaveState::Running;
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(command) = self.commands.recv() => self.on_command(command),
                Some(internal) = self.internal_rx.recv() => self.on_internal(internal),
                () = tokio::time::sleep_until(wake.into()) => {
                    let now = self.now();
                    self.core.handle_timeout(now);
                    self.groups.core.handle_timeout(&self.core, now);
                }
                _ = housekeeping.tick() => self.housekeeping()?,
                () = self.shutdown.cancelled(), if !shutting_down => self.begin_leave(),
            }
        }
    }

    // ----- the core --------------------------------------------------------------------------

    /// Sends what the core wants sent and acts on its events.
    fn drive_core(&mut self) -> anyhow::Result<()> {
        self.flush_transmits();
        while let Some(event) = self.core.poll_event() {
            match event {
                Event::Joined { successor } => {
                    info!(ring_id = %self.core.me().id, successor = %successor.id.short(), "joined the ring");
                    self.join = JoinState::Done;
                    self.rejoining = false;
                    self.next_sync = Instant::now();
                }
                Event::JoinFailed { error } if self.rejoining => {
                    // Stay up as a ring of one and try again later.
                    warn!(%error, "rejoining failed; alone until the next attempt");
                    self.rejoining = false;
                    self.join = JoinState::Done;
                    self.next_rejoin_check = Instant::now() + REJOIN_EVERY;
                    let now = self.now();
                    self.core.create_ring(now);
                }
                Event::JoinFailed { error } => {
                    anyhow::bail!("could not join the ring: {error}");
                }
                Event::LookupFinished { id, result } => self.on_lookup_finished(id, result),
                Event::PredecessorChanged { predecessor } => {
                    debug!(predecessor = ?predecessor.map(|p| p.id.short().to_string()), "predecessor changed");
                    // Our range changed: compare it with the replicas soon.
                    self.next_sync = self.next_sync.min(Instant::now() + Duration::from_millis(500));
                }
                Event::SuccessorsChanged { .. } => {
                    self.next_sync = self.next_sync.min(Instant::now() + Duration::from_millis(500));
                }
                Event::Left => {
                    info!("left the ring");
                    self.leave = LeaveState::Done;
                }
            }
        }
        self.drive_multicast();
        let counters = self.core.counters();
        self.metrics.ring_messages_out.store(counters.messages_sent, Relaxed);
        self.metrics.ring_messages_in.store(counters.messages_received, Relaxed);
        Ok(())
    }

    fn flush_transmits(&mut self) {
        while let Some(transmit) = self.core.poll_transmit() {
            self.send_ring(transmit.to, transmit.message);
        }
    }

    /// Every request carries the address the core knows for its peer, used if a connection must
    /// be dialed. (libp2p's own address book drops an address after a failed dial — during a
    /// partition every dial fails — and would leave the peer undialable once it is back.)
    fn dial_addresses(to: &PeerAddr) -> Vec<Multiaddr> {
        vec![to.addr.clone()]
    }

    fn send_ring(&mut self, to: PeerAddr, message: dht::Message<PeerAddr>) {
        let envelope = RingEnvelope { sender: self.me.clone(), message };
        match &envelope.message {
            dht::Message::Request { id, .. } => {
                let id = *id;
                let addresses = Self::dial_addresses(&to);
                let outbound = self
                    .swarm
                    .behaviour_mut()
                    .ring
                    .send_request_with_addresses(&to.peer, envelope, addresses);
                self.ring_out.insert(outbound, id);
            }
            dht::Message::Response { id, .. } => {
                if let Some(channel) = self.ring_in.remove(&(to.peer, *id)) {
                    // Fails only if the requester gave up; nothing to do then.
                    let _ = self.swarm.behaviour_mut().ring.send_response(channel, envelope);
                }
            }
        }
    }

    // ----- network events --------------------------------------------------------------------

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Ring(event)) => self.on_ring_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Kv(event)) => self.on_kv_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Group(event)) => self.on_group_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(_) | BehaviourEvent::Ping(_)) => {}
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                if let JoinState::Dialing { .. } = self.join
                    && endpoint.is_dialer()
                {
                    let addr = endpoint.get_remote_address().clone();
                    info!(bootstrap = %peer_id, %addr, "reached a bootstrap node, joining");
                    let bootstrap = PeerAddr::new(peer_id, addr);
                    self.join = JoinState::Joining;
                    let now = self.now();
                    self.core.join(vec![bootstrap], now);
                }
            }
            // One of the bootstrap addresses is this node (a StatefulSet's first pod, listed with
            // the others): if nobody else answers, this node starts the ring.
            SwarmEvent::OutgoingConnectionError {
                error: libp2p::swarm::DialError::LocalPeerId { .. },
                ..
            } if matches!(self.join, JoinState::Dialing { .. }) && self.bootstrap_is_self_since.is_none() => {
                debug!("a bootstrap address leads back to this node");
                self.bootstrap_is_self_since = Some(Instant::now());
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, %error, "dial failed");
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                // Random bytes at the port, failed handshakes: counted, never fatal.
                self.metrics.rejected_malformed.fetch_add(1, Relaxed);
                debug!(%error, "incoming connection failed");
            }
            SwarmEvent::NewListenAddr { address, .. } => info!(%address, "listening"),
            _ => {}
        }
    }

    fn on_ring_event(&mut self, event: request_response::Event<RingEnvelope, RingEnvelope>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    if request.sender.peer != peer {
                        // The envelope must name the authenticated sender.
                        self.metrics.rejected_invalid.fetch_add(1, Relaxed);
                        return;
                    }
                    let dht::Message::Request { id, .. } = &request.message else {
                        self.metrics.rejected_invalid.fetch_add(1, Relaxed);
                        return;
                    };
                    let id = *id;
                    self.ring_in.insert((peer, id), channel);
                    let now = self.now();
                    self.core.handle_message(request.sender, request.message, now);
                    // The core answers requests at once; one it dropped (invalid) has no answer, and
                    // its channel must not linger.
                    self.flush_transmits();
                    if self.ring_in.remove(&(peer, id)).is_some() {
                        self.metrics.rejected_invalid.fetch_add(1, Relaxed);
                    }
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(walk) = self.walks.remove(&request_id) {
                        self.continue_walk(walk, Some(response));
                        return;
                    }
                    self.ring_out.remove(&request_id);
                    if response.sender.peer != peer {
                        self.metrics.rejected_invalid.fetch_add(1, Relaxed);
                        return;
                    }
                    let now = self.now();
                    self.core.handle_message(response.sender, response.message, now);
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                self.drop_dead_connection(peer, &error);
                if let Some(walk) = self.walks.remove(&request_id) {
                    self.continue_walk(walk, None);
                    return;
                }
                if let Some(id) = self.ring_out.remove(&request_id) {
                    debug!(%error, "ring request failed");
                    let now = self.now();
                    self.core.handle_send_failure(id, now);
                }
            }
            request_response::Event::InboundFailure { error, .. } => {
                self.metrics.rejected_malformed.fetch_add(1, Relaxed);
                debug!(%error, "inbound ring request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_kv_event(&mut self, event: request_response::Event<KvRequest, KvResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.metrics.kv_requests_in.fetch_add(1, Relaxed);
                    self.serve_kv(peer, request, channel);
                }
                request_response::Message::Response { request_id, response } => {
                    let Some(purpose) = self.kv_out.remove(&request_id) else {
                        self.metrics.rejected_unexpected.fetch_add(1, Relaxed);
                        return;
                    };
                    if let Err(error) = response.validate(self.config.max_value_bytes) {
                        self.metrics.rejected_invalid.fetch_add(1, Relaxed);
                        debug!(%peer, %error, "invalid storage response");
                        self.on_kv_failure(purpose);
                        return;
                    }
                    self.on_kv_response(purpose, response);
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                self.drop_dead_connection(peer, &error);
                if let Some(purpose) = self.kv_out.remove(&request_id) {
                    debug!(%error, "storage request failed");
                    self.on_kv_failure(purpose);
                }
            }
            request_response::Event::InboundFailure { error, .. } => {
                self.metrics.rejected_malformed.fetch_add(1, Relaxed);
                debug!(%error, "inbound storage request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// A request that timed out suggests the connection under it is dead (a peer cut off by a
    /// partition or gone without a FIN): TCP may take many minutes to notice, and every request
    /// would keep timing out on it. Closing it makes the next request dial afresh.
    fn drop_dead_connection(&mut self, peer: PeerId, error: &request_response::OutboundFailure) {
        if matches!(error, request_response::OutboundFailure::Timeout) && self.swarm.is_connected(&peer) {
            debug!(%peer, "request timed out: closing the connection");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn send_kv(&mut self, to: &PeerAddr, request: KvRequest, purpose: KvPurpose) {
        self.metrics.kv_requests_out.fetch_add(1, Relaxed);
        let addresses = Self::dial_addresses(to);
        let id = self.swarm.behaviour_mut().kv.send_request_with_addresses(&to.peer, request, addresses);
        self.kv_out.insert(id, purpose);
    }

    fn respond_kv(&mut self, channel: ResponseChannel<KvResponse>, response: KvResponse) {
        let _ = self.swarm.behaviour_mut().kv.send_response(channel, response);
    }

    /// Answers a peer's storage request.
    fn serve_kv(&mut self, peer: PeerId, request: KvRequest, channel: ResponseChannel<KvResponse>) {
        if let Err(error) = request.validate(self.config.max_value_bytes) {
            self.metrics.rejected_invalid.fetch_add(1, Relaxed);
            debug!(%peer, %error, "refused an invalid storage request");
            self.respond_kv(channel, KvResponse::Refused { reason: error.to_string() });
            return;
        }
        match request {
            KvRequest::Store { record } => {
                self.clock.observe(&record.version);
                let storage = self.storage.clone();
                let internal = self.internal_tx.clone();
                tokio::spawn(async move {
                    let response = match storage.put(record).await {
                        Ok(outcome) => KvResponse::Stored { existed: outcome.existed },
                        Err(error) => KvResponse::Refused { reason: error.to_string() },
                    };
                    let _ = internal.send(Internal::RespondKv { channel, response }).await;
                });
            }
            KvRequest::Fetch { key } => {
                let response = match self.storage.get(&key) {
                    Ok(record) => KvResponse::Found { record },
                    Err(error) => {
                        self.metrics.corrupt_reads.store(self.storage.stats().corrupt_reads, Relaxed);
                        KvResponse::Refused { reason: error.to_string() }
                    }
                };
                self.respond_kv(channel, response);
            }
            KvRequest::Digest { start, end, buckets } => {
                let response = match self.storage.digest(&start, &end) {
                    Ok(mine) => KvResponse::DigestDiff {
                        buckets: (0..mine.len())
                            .filter(|&i| mine[i] != buckets[i])
                            .map(|i| i as u16)
                            .collect(),
                    },
                    Err(error) => KvResponse::Refused { reason: error.to_string() },
                };
                self.respond_kv(channel, response);
            }
            KvRequest::Entries { start, end, buckets, after } => {
                let response = match self.storage.entries(&start, &end, Some(&buckets), usize::MAX) {
                    Ok((all, _)) => {
                        let mut page: Vec<Entry> = all
                            .into_iter()
                            .filter(|e| dht::store::in_page(&Id::hash(&e.key), &start, after.as_ref(), &end))
                            .take(MAX_BATCH + 1)
                            .collect();
                        let truncated = page.len() > MAX_BATCH;
                        page.truncate(MAX_BATCH);
                        KvResponse::Entries { entries: page, truncated }
                    }
                    Err(error) => KvResponse::Refused { reason: error.to_string() },
                };
                self.respond_kv(channel, response);
            }
        }
    }

    fn on_internal(&mut self, internal: Internal) {
        match internal {
            Internal::LocalStored { op, result } => match result {
                Ok(outcome) => self.on_store_ack(op, outcome.existed),
                Err(error) => {
                    warn!(%error, "local write failed");
                    self.on_store_failure(op);
                }
            },
            Internal::RespondKv { channel, response } => self.respond_kv(channel, response),
            Internal::Pulled { count } => {
                self.metrics.sync_pulled.fetch_add(count as u64, Relaxed);
            }
        }
    }

    // ----- client operations -----------------------------------------------------------------

    fn on_command(&mut self, command: Command) {
        let deadline = Instant::now() + self.config.op_timeout;
        if self.leave != LeaveState::Running {
            match command {
                Command::Get { reply, .. } | Command::GetLocal { reply, .. } => {
                    drop(reply.send(Err(KvError::ShuttingDown)))
                }
                Command::Put { reply, .. } | Command::Delete { reply, .. } => {
                    drop(reply.send(Err(KvError::ShuttingDown)))
                }
                Command::Lookup { reply, .. } => drop(reply.send(Err(KvError::ShuttingDown))),
                Command::Status { reply } => drop(reply.send(self.status())),
                Command::Ring { reply } => drop(reply.send(RingWalk { nodes: vec![], complete: false })),
                Command::Groups { reply } => drop(reply.send(self.group_views())),
                Command::JoinGroup { reply, .. } => drop(reply.send(Err(GroupError::ShuttingDown))),
                Command::LeaveGroup { reply, .. } => drop(reply.send(Err(GroupError::ShuttingDown))),
                Command::Publish { reply, .. } => drop(reply.send(Err(GroupError::ShuttingDown))),
                Command::Subscribe { reply, .. } => drop(reply.send(Err(GroupError::ShuttingDown))),
                Command::GroupTree { reply, .. } => drop(reply.send(Err(GroupError::ShuttingDown))),
            }
            return;
        }
        match command {
            Command::Put { key, value, consistency, reply } => {
                if let Err(error) = self.check_sizes(&key, Some(&value)) {
                    let _ = reply.send(Err(error));
                    return;
                }
                let version = self.clock.tick(wall_ms());
                let record = Record::new(key, value, version);
                self.start_op(OpKind::Write { record, reply: Some(reply) }, consistency, deadline);
            }
            Command::Delete { key, consistency, reply } => {
                if let Err(error) = self.check_sizes(&key, None) {
                    let _ = reply.send(Err(error));
                    return;
                }
                let version = self.clock.tick(wall_ms());
                let record = Record::tombstone(key, version);
                self.start_op(OpKind::Write { record, reply: Some(reply) }, consistency, deadline);
            }
            Command::Get { key, consistency, reply } => {
                if let Err(error) = self.check_sizes(&key, None) {
                    let _ = reply.send(Err(error));
                    return;
                }
                self.start_op(OpKind::Read { key, reply: Some(reply) }, consistency, deadline);
            }
            Command::GetLocal { key, reply } => {
                let _ = reply.send(self.storage.get(&key).map_err(|e| KvError::Storage(e.to_string())));
            }
            Command::Lookup { key, reply } => {
                let key_id = Id::hash(&key);
                self.start_op(OpKind::Locate { key_id, reply }, Consistency::One, deadline);
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Ring { reply } => self.start_walk(reply),
            command @ (Command::Groups { .. }
            | Command::JoinGroup { .. }
            | Command::LeaveGroup { .. }
            | Command::Publish { .. }
            | Command::Subscribe { .. }
            | Command::GroupTree { .. }) => self.on_group_command(command),
        }
    }

    fn check_sizes(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), KvError> {
        if key.len() > dht::store::MAX_KEY_BYTES {
            return Err(KvError::KeyTooLarge { len: key.len(), max: dht::store::MAX_KEY_BYTES });
        }
        if let Some(value) = value
            && value.len() > self.config.max_value_bytes
        {
            return Err(KvError::TooLarge { len: value.len(), max: self.config.max_value_bytes });
        }
        Ok(())
    }

    fn start_op(&mut self, kind: OpKind, consistency: Consistency, deadline: Instant) {
        let key_id = match &kind {
            OpKind::Write { record, .. } => record.key_id(),
            OpKind::Read { key, .. } => Id::hash(key),
            OpKind::Locate { key_id, .. } => *key_id,
        };
        let op = self.next_op;
        self.next_op += 1;
        self.ops.insert(
            op,
            Op {
                kind,
                consistency,
                deadline,
                replicas: Vec::new(),
                needed: 1,
                ok: 0,
                failed: 0,
                existed: false,
                answers: Vec::new(),
            },
        );
        // When this node already knows the key's replica set (its successor list spans it, or the
        // owner vouched for its range moments ago), a lookup would only confirm it: skip it.
        // Both can be stale while the ring changes; quorums and anti-entropy cover that.
        let locally_known = self.core.cached_replicas(&key_id, self.config.replicas, self.now());
        if let Some(replicas) = locally_known
            && !matches!(self.ops.get(&op).map(|o| &o.kind), Some(OpKind::Locate { .. }))
        {
            self.dispatch(op, replicas, 0);
            return;
        }
        let now = self.now();
        let lookup = self.core.lookup(key_id, now);
        self.lookup_ops.insert(lookup, op);
    }

    fn on_lookup_finished(&mut self, id: LookupId, result: Result<LookupOutcome<PeerAddr>, LookupError>) {
        match &result {
            Ok(outcome) => self.metrics.observe_lookup(outcome.hops),
            Err(_) => {
                self.metrics.lookups_failed.fetch_add(1, Relaxed);
            }
        }
        if self.on_walk_lookup(id, &result) {
            return;
        }
        let Some(op_id) = self.lookup_ops.remove(&id) else {
            return;
        };
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(error) => {
                if let Some(op) = self.ops.remove(&op_id) {
                    self.metrics.quorum_failures.fetch_add(1, Relaxed);
                    fail_op(op, KvError::Lookup(error));
                }
                return;
            }
        };
        let replicas = outcome.replica_set(self.config.replicas);
        self.dispatch(op_id, replicas, outcome.hops);
    }

    /// Sends an operation to its replica set.
    fn dispatch(&mut self, op_id: OpId, replicas: Vec<NodeRef<PeerAddr>>, hops: u32) {
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        op.needed = op.consistency.required(replicas.len());
        op.replicas = replicas.clone();
        match &op.kind {
            OpKind::Locate { key_id, .. } => {
                let key_id = *key_id;
                let Some(Op { kind: OpKind::Locate { reply, .. }, .. }) = self.ops.remove(&op_id) else {
                    unreachable!("matched just above");
                };
                let _ = reply.send(Ok(Located { key_id, replicas, hops }));
            }
            OpKind::Write { record, .. } => {
                let record = record.clone();
                for replica in replicas {
                    if replica.addr.peer == self.me.peer {
                        let storage = self.storage.clone();
                        let internal = self.internal_tx.clone();
                        let record = record.clone();
                        tokio::spawn(async move {
                            let result = storage.put(record).await.map_err(|e| e.to_string());
                            let _ = internal.send(Internal::LocalStored { op: op_id, result }).await;
                        });
                    } else {
                        let addr = replica.addr.clone();
                        self.send_kv(
                            &addr,
                            KvRequest::Store { record: record.clone() },
                            KvPurpose::OpStore { op: op_id },
                        );
                    }
                }
            }
            OpKind::Read { key, .. } => {
                let key = key.clone();
                for replica in replicas {
                    if replica.addr.peer == self.me.peer {
                        match self.storage.get(&key) {
                            Ok(record) => self.on_fetched(op_id, replica, Some(record)),
                            Err(error) => {
                                warn!(%error, "local read failed");
                                self.metrics.corrupt_reads.store(self.storage.stats().corrupt_reads, Relaxed);
                                self.on_fetched(op_id, replica, None);
                            }
                        }
                    } else {
                        let addr = replica.addr.clone();
                        self.send_kv(
                            &addr,
                            KvRequest::Fetch { key: key.clone() },
                            KvPurpose::OpFetch { op: op_id, peer: replica },
                        );
                    }
                }
            }
        }
    }

    fn on_store_ack(&mut self, op_id: OpId, existed: bool) {
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        op.ok += 1;
        op.existed |= existed;
        if op.ok >= op.needed
            && let OpKind::Write { record, reply } = &mut op.kind
            && let Some(reply) = reply.take()
        {
            let _ = reply.send(Ok(Written { version: record.version, existed: op.existed, acked: op.ok }));
        }
        self.finish_if_done(op_id);
    }

    fn on_store_failure(&mut self, op_id: OpId) {
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        op.failed += 1;
        self.fail_if_hopeless(op_id);
        self.finish_if_done(op_id);
    }

    /// A read reply (`None`: the replica failed to answer).
    fn on_fetched(&mut self, op_id: OpId, peer: NodeRef<PeerAddr>, answer: Option<Option<Record>>) {
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        match answer {
            Some(record) => {
                op.ok += 1;
                op.answers.push((peer, record));
            }
            None => op.failed += 1,
        }
        // A found record is answered as soon as a quorum replied. "Not found" waits for every
        // replica (or the deadline): replica sets seen from different nodes can differ for a
        // moment while the ring changes, and a quorum of the wrong two must not hide a write.
        let all_in = op.ok + op.failed >= op.replicas.len();
        let newest = newest(&op.answers).cloned();
        if op.ok >= op.needed
            && (newest.is_some() || all_in)
            && let OpKind::Read { reply, .. } = &mut op.kind
            && let Some(reply) = reply.take()
        {
            let _ = reply.send(Ok(newest));
        }
        self.fail_if_hopeless(op_id);
        self.finish_if_done(op_id);
    }

    fn fail_if_hopeless(&mut self, op_id: OpId) {
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        let outstanding = op.replicas.len() - op.ok - op.failed;
        if op.ok + outstanding < op.needed {
            let error = KvError::NoQuorum { needed: op.needed, got: op.ok };
            let replied = match &mut op.kind {
                OpKind::Write { reply, .. } => reply.take().map(|r| drop(r.send(Err(error)))).is_some(),
                OpKind::Read { reply, .. } => reply.take().map(|r| drop(r.send(Err(error)))).is_some(),
                OpKind::Locate { .. } => false,
            };
            if replied {
                self.metrics.quorum_failures.fetch_add(1, Relaxed);
            }
        }
    }

    /// Once every replica has answered or failed: repair stale read replicas and forget the op.
    fn finish_if_done(&mut self, op_id: OpId) {
        let done = self.ops.get(&op_id).is_some_and(|op| op.ok + op.failed >= op.replicas.len());
        if done && let Some(op) = self.ops.remove(&op_id) {
            self.read_repair(&op);
        }
    }

    fn read_repair(&mut self, op: &Op) {
        let OpKind::Read { .. } = op.kind else {
            return;
        };
        let Some(newest) = newest(&op.answers).cloned() else {
            return;
        };
        for (peer, record) in &op.answers {
            let stale = record.as_ref().is_none_or(|r| newest.supersedes(r));
            if !stale {
                continue;
            }
            self.metrics.read_repairs.fetch_add(1, Relaxed);
            if peer.addr.peer == self.me.peer {
                let storage = self.storage.clone();
                let record = newest.clone();
                tokio::spawn(async move { drop(storage.put(record).await) });
            } else {
                let addr = peer.addr.clone();
                self.send_kv(&addr, KvRequest::Store { record: newest.clone() }, KvPurpose::Repair);
            }
        }
    }

    fn on_kv_response(&mut self, purpose: KvPurpose, response: KvResponse) {
        match (purpose, response) {
            (KvPurpose::OpStore { op, .. }, KvResponse::Stored { existed }) => self.on_store_ack(op, existed),
            (KvPurpose::OpFetch { op, peer }, KvResponse::Found { record }) => {
                self.on_fetched(op, peer, Some(record))
            }
            (KvPurpose::SyncDigest { peer, start, end }, KvResponse::DigestDiff { buckets }) => {
                if !buckets.is_empty() {
                    let request = KvRequest::Entries { start, end, buckets: buckets.clone(), after: None };
                    self.send_kv(
                        &peer.clone(),
                        request,
                        KvPurpose::SyncEntries { peer, start, end, buckets, after: None },
                    );
                }
            }
            (
                KvPurpose::SyncEntries { peer, start, end, buckets, after },
                KvResponse::Entries { entries, truncated },
            ) => {
                // A truncated page covers the range only up to its last entry: compare that part,
                // then ask for the next page. (Comparing past it would take every key the peer
                // did not list for missing, and push the same ones forever.)
                let until = match entries.last() {
                    Some(last) if truncated => Id::hash(&last.key),
                    _ => end,
                };
                self.reconcile(peer.clone(), start, end, &buckets, after, until, entries);
                if truncated {
                    let request =
                        KvRequest::Entries { start, end, buckets: buckets.clone(), after: Some(until) };
                    self.send_kv(
                        &peer.clone(),
                        request,
                        KvPurpose::SyncEntries { peer, start, end, buckets, after: Some(until) },
                    );
                }
            }
            (KvPurpose::SyncPull, KvResponse::Found { record: Some(record) }) => {
                self.clock.observe(&record.version);
                let storage = self.storage.clone();
                let internal = self.internal_tx.clone();
                tokio::spawn(async move {
                    let key_id = record.key_id();
                    match storage.put(record).await {
                        Ok(outcome) => {
                            if !outcome.applied {
                                debug!(key = %key_id.short(), "pulled record was not newer");
                            }
                            let _ =
                                internal.send(Internal::Pulled { count: usize::from(outcome.applied) }).await;
                        }
                        Err(error) => warn!(key = %key_id.short(), %error, "storing a pulled record failed"),
                    }
                });
            }
            (KvPurpose::SyncPull, KvResponse::Found { record: None }) => {
                debug!("a record listed by anti-entropy was gone when fetched");
            }
            (KvPurpose::Repair | KvPurpose::SyncPush | KvPurpose::SyncPull | KvPurpose::Handoff, _) => {}
            (purpose, KvResponse::Refused { reason }) => {
                debug!(%reason, "storage request refused");
                self.on_kv_failure(purpose);
            }
            (purpose, _) => {
                self.metrics.rejected_invalid.fetch_add(1, Relaxed);
                self.on_kv_failure(purpose);
            }
        }
    }

    fn on_kv_failure(&mut self, purpose: KvPurpose) {
        match purpose {
            KvPurpose::OpStore { op } => {
                // Whoever failed, the op's replica set came from a view that may be stale.
                if let Some(replicas) = self.ops.get(&op).map(|o| o.replicas.clone()) {
                    self.forget_cached_replicas(&replicas);
                }
                self.on_store_failure(op)
            }
            KvPurpose::OpFetch { op, peer } => {
                self.core.forget_cached(&peer.addr);
                self.on_fetched(op, peer, None)
            }
            _ => {}
        }
    }

    fn forget_cached_replicas(&mut self, replicas: &[NodeRef<PeerAddr>]) {
        for replica in replicas {
            self.core.forget_cached(&replica.addr);
        }
    }

    /// Fails client operations past their deadline.
    fn expire_ops(&mut self) {
        let now = Instant::now();
        let expired: Vec<OpId> =
            self.ops.iter().filter(|(_, op)| op.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            if let Some(mut op) = self.ops.remove(&id) {
                // A read that had its quorum but waited for stragglers to confirm "not found".
                if op.ok >= op.needed
                    && let OpKind::Read { reply, .. } = &mut op.kind
                    && let Some(reply) = reply.take()
                {
                    let _ = reply.send(Ok(newest(&op.answers).cloned()));
                    continue;
                }
                let error = KvError::NoQuorum { needed: op.needed, got: op.ok };
                if fail_op(op, error) {
                    self.metrics.quorum_failures.fetch_add(1, Relaxed);
                }
            }
        }
        self.lookup_ops.retain(|_, op| self.ops.contains_key(op));
    }

    // ----- anti-entropy and hand-off -----------------------------------------------------------

    /// Compares this node's own range with each replica's, by digest.
    fn sync_round(&mut self) {
        if !self.core.is_member() {
            return;
        }
        let Some(predecessor) = self.core.predecessor().cloned() else {
            return;
        };
        let (start, end) = (predecessor.id, self.core.me().id);
        let buckets = match self.storage.digest(&start, &end) {
            Ok(buckets) => buckets,
            Err(error) => {
                warn!(%error, "could not compute a digest");
                return;
            }
        };
        for target in sync_targets(self.core.successors(), self.config.replicas) {
            if target.addr.peer == self.me.peer {
                continue;
            }
            let request = KvRequest::Digest { start, end, buckets: buckets.clone() };
            let peer = target.addr.clone();
            self.send_kv(&target.addr, request, KvPurpose::SyncDigest { peer, start, end });
        }
    }

    /// Pushes what the peer lacks and pulls what it has newer, for the differing buckets, within
    /// the part of the range the peer's page covered: after `after`, up to `until`.
    #[allow(clippy::too_many_arguments)]
    fn reconcile(
        &mut self,
        peer: PeerAddr,
        start: Id,
        end: Id,
        buckets: &[u16],
        after: Option<Id>,
        until: Id,
        remote: Vec<Entry>,
    ) {
        let (local, _) = match self.storage.entries(&start, &end, Some(buckets), usize::MAX) {
            Ok((all, truncated)) => (
                all.into_iter()
                    .filter(|e| dht::store::in_page(&Id::hash(&e.key), &start, after.as_ref(), &until))
                    .collect::<Vec<_>>(),
                truncated,
            ),
            Err(error) => {
                warn!(%error, "could not list local entries");
                return;
            }
        };
        let plan = plan_sync(&local, &remote);
        debug!(peer = %peer.peer, push = plan.push.len(), pull = plan.pull.len(), "anti-entropy");
        for key in plan.push.into_iter().take(MAX_BATCH) {
            if let Ok(Some(record)) = self.storage.get(&key) {
                self.metrics.sync_pushed.fetch_add(1, Relaxed);
                self.send_kv(&peer, KvRequest::Store { record }, KvPurpose::SyncPush);
            }
        }
        for key in plan.pull.into_iter().take(MAX_BATCH) {
            self.send_kv(&peer, KvRequest::Fetch { key }, KvPurpose::SyncPull);
        }
    }

    fn begin_leave(&mut self) {
        info!("shutting down: handing off records and leaving the ring");
        let deadline = Instant::now() + Duration::from_secs(5);
        self.leave = LeaveState::HandingOff { deadline };
        // Rooted groups go to the successor, children are told to re-join elsewhere.
        let now = self.now();
        self.groups.core.leave_all(&self.core, now);
        // Fail client operations still waiting: their callers get a clear answer now.
        let ids: Vec<OpId> = self.ops.keys().copied().collect();
        for id in ids {
            if let Some(op) = self.ops.remove(&id) {
                fail_op(op, KvError::ShuttingDown);
            }
        }
        if !self.core.is_member() {
            self.leave = LeaveState::Done;
            return;
        }
        // Push this node's own range to every successor that will hold it once we are gone.
        let start = self.core.predecessor().map_or(self.core.me().id, |p| p.id);
        let end = self.core.me().id;
        let records = match self.storage.records(&start, &end, usize::MAX) {
            Ok(records) => records,
            Err(error) => {
                warn!(%error, "could not read records to hand off");
                Vec::new()
            }
        };
        let targets: Vec<NodeRef<PeerAddr>> =
            self.core.successors().iter().take(self.config.replicas).cloned().collect();
        info!(records = records.len(), successors = targets.len(), "handing off");
        for target in &targets {
            for record in &records {
                self.send_kv(&target.addr, KvRequest::Store { record: record.clone() }, KvPurpose::Handoff);
            }
        }
    }

    fn housekeeping(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        self.expire_ops();
        self.sync_group_memberships();
        let stats = self.storage.stats();
        self.metrics.stored_keys.store(stats.keys, Relaxed);
        self.metrics.stored_bytes.store(stats.bytes, Relaxed);
        self.metrics.corrupt_reads.store(stats.corrupt_reads, Relaxed);
        let core = self.core.counters();
        self.metrics.rejected_invalid.fetch_max(
            core.dropped_invalid + core.dropped_wrong_sender + core.dropped_protocol_violation,
            Relaxed,
        );
        self.metrics.rejected_unexpected.fetch_max(core.dropped_unknown_response, Relaxed);
        self.rejoin_if_alone(now);
        if matches!(self.join, JoinState::Dialing { .. })
            && !self.rejoining
            && self.bootstrap_is_self_since.is_some_and(|t| now - t >= SELF_BOOTSTRAP_GRACE)
        {
            info!("no other bootstrap node answered and one of them is this node: starting a new ring");
            self.join = JoinState::Done;
            let core_now = self.now();
            self.core.create_ring(core_now);
        }
        if let JoinState::Dialing { deadline, .. } = self.join {
            if now >= deadline && self.rejoining {
                warn!("no bootstrap node answered; alone until the next attempt");
                self.rejoining = false;
                self.join = JoinState::Done;
                self.next_rejoin_check = now + REJOIN_EVERY;
            } else if now >= deadline {
                anyhow::bail!("no bootstrap node answered within {:?}", self.config.join_timeout);
            }
        }
        if let JoinState::Dialing { next_dial, attempt, .. } = &mut self.join
            && now >= *next_dial
        {
            *attempt += 1;
            *next_dial = now + Duration::from_millis(250 * u64::from((*attempt).min(8)));
            for addr in self.config.bootstrap.clone() {
                if let Err(error) = self.swarm.dial(addr.clone()) {
                    // The swarm refuses outright to dial one of its own listen addresses.
                    if self.swarm.listeners().any(|own| *own == addr) {
                        self.bootstrap_is_self_since.get_or_insert(now);
                    }
                    debug!(%addr, %error, "could not dial bootstrap");
                }
            }
        }
        if self.leave == LeaveState::Running && now >= self.next_sync {
            self.next_sync = now + self.config.sync_interval;
            self.sync_round();
        }
        match self.leave {
            LeaveState::HandingOff { deadline } => {
                let handoffs = self.kv_out.values().filter(|p| matches!(p, KvPurpose::Handoff)).count();
                if handoffs == 0 || now >= deadline {
                    let now_core = self.now();
                    self.core.leave(now_core);
                    self.leave = LeaveState::Leaving { deadline: now + Duration::from_secs(3) };
                }
            }
            LeaveState::Leaving { deadline } if now >= deadline => self.leave = LeaveState::Done,
            _ => {}
        }
        Ok(())
    }

    /// A node configured with bootstrap addresses that finds itself alone (cut off long enough to
    /// declare every other node dead, as in a network partition) rejoins through them: Chord
    /// cannot merge two rings by itself. Its records stay; anti-entropy reconciles them.
    fn rejoin_if_alone(&mut self, now: Instant) {
        let alone =
            self.core.is_member() && self.core.successors().is_empty() && self.core.predecessor().is_none();
        if !alone {
            self.next_rejoin_check = now + REJOIN_EVERY;
            return;
        }
        if self.config.bootstrap.is_empty()
            || !matches!(self.join, JoinState::Done)
            || now < self.next_rejoin_check
        {
            return;
        }
        info!("alone in the ring: rejoining through the bootstrap nodes");
        self.rejoining = true;
        self.join =
            JoinState::Dialing { deadline: now + Duration::from_secs(10), next_dial: now, attempt: 0 };
    }

    // ----- status and ring walk ----------------------------------------------------------------

    fn status(&self) -> Status {
        let mut fingers: Vec<(usize, NodeRef<PeerAddr>)> = Vec::new();
        for (i, entry) in self.core.fingers().entries().iter().enumerate() {
            if let Some(node) = entry
                && fingers.last().is_none_or(|(_, last)| last.addr.peer != node.addr.peer)
            {
                fingers.push((i, node.clone()));
            }
        }
        let stats = self.storage.stats();
        Status {
            me: self.core.me().clone(),
            listen: self.swarm.listeners().cloned().collect(),
            member: self.core.is_member(),
            predecessor: self.core.predecessor().cloned(),
            successors: self.core.successors().to_vec(),
            fingers,
            keys: stats.keys,
            bytes: stats.bytes,
            uptime: self.started.elapsed(),
        }
    }

    fn start_walk(&mut self, reply: oneshot::Sender<RingWalk>) {
        let walk = Walk { nodes: vec![self.core.me().clone()], reply };
        let first = self.core.successor().clone();
        self.step_walk(walk, first);
    }

    fn step_walk(&mut self, mut walk: Walk, next: NodeRef<PeerAddr>) {
        if next.addr.peer == self.me.peer {
            let _ = walk.reply.send(RingWalk { nodes: walk.nodes, complete: true });
            return;
        }
        if walk.nodes.len() >= MAX_WALK || walk.nodes.iter().any(|n| n.addr.peer == next.addr.peer) {
            // A loop that does not come back here: report what was seen.
            let _ = walk.reply.send(RingWalk { nodes: walk.nodes, complete: false });
            return;
        }
        walk.nodes.push(next.clone());
        let envelope = RingEnvelope {
            sender: self.me.clone(),
            message: dht::Message::Request { id: WALK_REQUEST_ID, body: dht::Request::GetNeighbours },
        };
        let addresses = Self::dial_addresses(&next.addr);
        let outbound =
            self.swarm.behaviour_mut().ring.send_request_with_addresses(&next.addr.peer, envelope, addresses);
        self.walks.insert(outbound, walk);
    }

    fn continue_walk(&mut self, walk: Walk, response: Option<RingEnvelope>) {
        let next = match response.map(|r| r.message) {
            Some(dht::Message::Response { body: dht::Response::Neighbours { successors, .. }, .. }) => {
                successors.into_iter().next().filter(|n| n.is_genuine())
            }
            _ => None,
        };
        match next {
            Some(next) => self.step_walk(walk, next),
            None => {
                let _ = walk.reply.send(RingWalk { nodes: walk.nodes, complete: false });
            }
        }
    }
}

/// Answers a failed operation's caller; returns whether anyone was waiting.
fn fail_op(op: Op, error: KvError) -> bool {
    match op.kind {
        OpKind::Write { reply: Some(reply), .. } => reply.send(Err(error)).is_ok(),
        OpKind::Read { reply: Some(reply), .. } => reply.send(Err(error)).is_ok(),
        OpKind::Locate { reply, .. } => reply.send(Err(error)).is_ok(),
        OpKind::Write { reply: None, .. } | OpKind::Read { reply: None, .. } => false,
    }
}

/// The newest record among read answers (tombstones included).
fn newest(answers: &[(NodeRef<PeerAddr>, Option<Record>)]) -> Option<&Record> {
    answers.iter().filter_map(|(_, r)| r.as_ref()).max_by_key(|r| r.version)
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
