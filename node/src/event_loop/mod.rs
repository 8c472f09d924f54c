//! The node's one event loop: it owns the `dht` cores, the libp2p swarm and the rooms, and only
//! routes between them.
//!
//! Everything else (HTTP handlers) talks to it through a bounded [`Command`] channel with oneshot
//! replies. Each concern keeps its state in a room of its own:
//! - [`kv`]: the store coordinator ([`dht::kv`]) and the store operations it asks for;
//! - [`bootstrap`]: getting into a ring, and back into one after being cut off;
//! - [`walk`]: ring walks for `/v1/ring`;
//! - [`multicast`]: multicast groups, their listeners and tree walks ([`GroupState`]);
//! - [`chat`]: direct chat messages between nodes (`crate::chat` holds the chat state).
//! - [`queues`]: durable queues, their store, waiting requests and listeners ([`QueueRoom`]).
//!
//! Peers' requests pass [`admit`] first: per-peer rate limits and the storage queue's bound.
//!
//! The loop feeds the ring core ([`dht::Node`]) what the network delivers and the clock says,
//! sends what it asks, hands its events to the rooms that wait for them, and leaves the ring
//! gracefully when the shutdown token fires: hand-off first, then the core's leave.

mod admit;
mod bootstrap;
mod chat;
mod command;
mod kv;
mod multicast;
mod queues;
mod walk;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dht::kv::{Coordinator, KvConfig};
use dht::{Event, LookupError, LookupId, LookupOutcome, NodeRef, RequestId, Time};
use futures::StreamExt;
use libp2p::request_response::{self, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::bootstrap::{Bootstrap, Step};
pub use self::command::{Command, Expect, KvError, Located, RingWalk, Status, WalkedNode, Written};
use self::kv::KvRoom;
use self::multicast::GroupState;
use self::queues::QueueRoom;
use self::walk::Walks;
use crate::address::PeerAddr;
use crate::groups::GroupError;
use crate::limits::{PeerLimits, RATE_LIMITER_PEERS, RateLimiter};
use crate::metrics::{DriverCounters, Snapshot, SwarmMetrics};
use crate::network::{Behaviour, BehaviourEvent, RingEnvelope};
use crate::storage::Storage;
use dht::queue::QueueError;

/// Housekeeping period while joining, alone or leaving.
const HOUSEKEEPING_BUSY: Duration = Duration::from_millis(100);
/// Housekeeping period in a settled ring.
const HOUSEKEEPING_SETTLED: Duration = Duration::from_secs(1);

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
    /// How long one peer request may take.
    pub request_timeout: Duration,
    /// How long to keep trying to reach a bootstrap node.
    pub join_timeout: Duration,
    /// Bootstrap addresses (empty: create a ring).
    pub bootstrap: Vec<Multiaddr>,
    /// Shift of this node's wall clock for versions, in milliseconds (tests only; see `Flags`).
    pub clock_offset_ms: i64,
    /// The record store existed before this start (a restart, not a new node).
    pub resumed_store: bool,
    /// The node's chat state, which answers other nodes' chat deliveries.
    pub chat: Option<std::sync::Arc<crate::chat::Chat>>,
    /// What one peer may send (its request rates; its connections are bounded in the swarm).
    pub peer_limits: PeerLimits,
    /// Byte budget of each multicast group's history.
    pub group_history_bytes: std::num::NonZeroUsize,
}

/// How far a graceful leave has come.
#[derive(Debug, PartialEq, Eq)]
enum LeaveState {
    Running,
    /// Handing off records.
    HandingOff,
    /// The core is telling its neighbours.
    Leaving {
        deadline: Instant,
    },
    Done,
}

/// The loop's state.
#[allow(missing_debug_implementations)] // holds the swarm, which is not Debug
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    core: dht::Node<PeerAddr>,
    kv: KvRoom,
    /// Multicast groups: the core's trees and the API's listeners.
    groups: GroupState,
    /// Durable queues: the core, its store, and the API's waiting requests and listeners.
    queues: QueueRoom,
    bootstrap: Bootstrap,
    walks: Walks,
    chat: chat::ChatRoom,
    /// What the driver counts itself (the kv room keeps its own rejections).
    counters: DriverCounters,
    /// libp2p's metrics of the swarm, recorded from its events.
    swarm_metrics: SwarmMetrics,
    /// Peers' request rates ([`admit`]).
    limiter: RateLimiter,
    started: Instant,
    me: PeerAddr,
    commands: mpsc::Receiver<Command>,
    /// Peers' ring requests waiting for the core's answer.
    ring_in: HashMap<(PeerId, RequestId), ResponseChannel<RingEnvelope>>,
    /// The core's ring requests in flight, by libp2p's id.
    ring_out: HashMap<request_response::OutboundRequestId, RequestId>,
    shutdown: CancellationToken,
    leave: LeaveState,
    clock_offset_ms: i64,
}

impl EventLoop {
    /// A loop for a swarm already listening at `announce`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        swarm: Swarm<Behaviour>,
        announce: Multiaddr,
        dht_config: dht::Config,
        storage: Storage,
        queue_store: crate::queue_store::QueueStore,
        config: LoopConfig,
        swarm_metrics: SwarmMetrics,
        commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let me = PeerAddr::new(*swarm.local_peer_id(), announce);
        let seed = u64::from_le_bytes(me.peer.to_bytes()[..8].try_into().unwrap_or([0; 8]))
            ^ SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let core = dht::Node::new(me.clone(), dht_config, seed)?;
        let kv_config = KvConfig {
            replicas: config.replicas,
            max_value_bytes: config.max_value_bytes,
            op_timeout: config.op_timeout,
            request_timeout: config.request_timeout,
            sync_interval: config.sync_interval,
            ..KvConfig::default()
        };
        let coordinator = Coordinator::new(core.me().clone(), kv_config);
        // The loop's clock starts at zero now (see `EventLoop::now`).
        let coordinator = if config.resumed_store { coordinator.resumed(Time::ZERO) } else { coordinator };
        let groups = GroupState::new(core.me().clone(), config.group_history_bytes.get());
        let queue_config = dht::queue::QueueConfig {
            replicas: config.replicas,
            write_quorum: config.replicas / 2 + 1,
            request_timeout: config.request_timeout.max(Duration::from_secs(2)),
            ..dht::queue::QueueConfig::default()
        };
        let queues = QueueRoom::new(dht::queue::Queues::new(core.me().clone(), queue_config), queue_store)?;
        let now = Instant::now();
        Ok(EventLoop {
            swarm,
            kv: KvRoom::new(coordinator, storage),
            core,
            groups,
            queues,
            bootstrap: Bootstrap::new(config.bootstrap, config.join_timeout, now),
            walks: Walks::default(),
            chat: chat::ChatRoom { chat: config.chat, ..Default::default() },
            counters: DriverCounters::default(),
            swarm_metrics,
            limiter: RateLimiter::new(
                config.peer_limits.request_rate,
                config.peer_limits.request_burst,
                RATE_LIMITER_PEERS,
                config.peer_limits.node_request_rate,
                config.peer_limits.node_request_burst,
            ),
            started: now,
            me,
            commands,
            ring_in: HashMap::new(),
            ring_out: HashMap::new(),
            shutdown,
            leave: LeaveState::Running,
            clock_offset_ms: config.clock_offset_ms,
        })
    }

    fn now(&self) -> Time {
        Time::from_elapsed(self.started.elapsed())
    }

    /// The wall clock that versions of writes come from (shifted only in tests).
    fn wall_ms(&self) -> u64 {
        wall_ms().saturating_add_signed(self.clock_offset_ms)
    }

    /// Runs until the node has left the ring (after the shutdown token fires) or fails to join.
    pub async fn run(mut self) -> anyhow::Result<()> {
        if self.bootstrap.starts_ring() {
            let now = self.now();
            self.core.create_ring(now);
            info!(peer = %self.me.peer, ring_id = %self.core.me().id, "started a new ring");
        }
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING_BUSY;
        loop {
            self.drive()?;
            if self.leave == LeaveState::Done {
                return Ok(());
            }
            let next = [
                self.core.poll_timeout(),
                self.groups.core.poll_timeout(),
                self.kv.poll_timeout(),
                self.queues.core.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            let wake = next
                .map(|t| self.started + t.since_epoch())
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let shutting_down = self.leave != LeaveState::Running;
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(command) = self.commands.recv() => self.on_command(command),
                Some(done) = self.kv.done_rx.recv() => {
                    let now = self.now();
                    self.kv.on_store_done(done, &mut self.core, now);
                }
                () = tokio::time::sleep_until(wake.into()) => {
                    let now = self.now();
                    self.core.handle_timeout(now);
                    self.groups.core.handle_timeout(&self.core, now);
                    self.kv.on_timeout(&mut self.core, now);
                    self.queues.core.handle_timeout(&mut self.core, now);
                }
                () = tokio::time::sleep_until(next_housekeeping.into()) => {
                    self.housekeeping()?;
                    next_housekeeping = Instant::now() + self.housekeeping_period();
                }
                () = self.shutdown.cancelled(), if !shutting_down => self.begin_leave(),
            }
        }
    }

    // ----- the cores ---------------------------------------------------------------------------

    /// Sends what the cores want sent and acts on their events.
    fn drive(&mut self) -> anyhow::Result<()> {
        self.flush_transmits();
        while let Some(event) = self.core.poll_event() {
            let now = self.now();
            match event {
                Event::Joined { successor } => {
                    info!(ring_id = %self.core.me().id, successor = %successor.id.short(), "joined the ring");
                    self.bootstrap.on_joined();
                    self.kv.on_ring_changed(now);
                    self.queues.core.handle_ring_changed(&mut self.core, now);
                }
                Event::JoinFailed { error } if self.bootstrap.is_rejoining() => {
                    // Stay up as a ring of one and try again later.
                    warn!(%error, "rejoining failed; alone until the next attempt");
                    self.bootstrap.on_rejoin_failed(Instant::now());
                    self.core.create_ring(now);
                }
                Event::JoinFailed { error } => {
                    anyhow::bail!("could not join the ring: {error}");
                }
                Event::LookupFinished { id, result } => self.on_lookup_finished(id, result, now),
                Event::PredecessorChanged { predecessor } => {
                    debug!(predecessor = ?predecessor.map(|p| p.id.short().to_string()), "predecessor changed");
                    self.kv.on_ring_changed(now);
                    self.queues.core.handle_ring_changed(&mut self.core, now);
                }
                Event::SuccessorsChanged { .. } => {
                    self.kv.on_ring_changed(now);
                    self.queues.core.handle_ring_changed(&mut self.core, now);
                }
                Event::Left => {
                    info!("left the ring");
                    self.leave = LeaveState::Done;
                }
            }
            self.flush_transmits();
        }
        self.kv.flush(&mut self.swarm);
        self.drive_multicast();
        self.drive_queues()?;
        if self.leave == LeaveState::HandingOff && self.kv.handed_off() {
            let now = self.now();
            self.core.leave(now);
            self.leave = LeaveState::Leaving { deadline: Instant::now() + Duration::from_secs(3) };
            self.flush_transmits();
        }
        Ok(())
    }

    fn on_lookup_finished(
        &mut self,
        id: LookupId,
        result: Result<LookupOutcome<PeerAddr>, LookupError>,
        now: Time,
    ) {
        match &result {
            Ok(outcome) => self.counters.lookup_hops.observe(outcome.hops),
            Err(_) => self.counters.lookups_failed += 1,
        }
        if self.kv.on_lookup_finished(id, &result, &mut self.core, now) {
            return;
        }
        if self.queues.core.handle_lookup_finished(id, &result, &mut self.core, now) {
            return;
        }
        self.on_walk_lookup(id, &result);
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
        // Ring walks collect every member's key count from its neighbours answer (see `walk`):
        // a few bytes more on an answer a neighbour asks for about once a stabilize interval.
        let neighbours =
            matches!(&message, dht::Message::Response { body: dht::Response::Neighbours { .. }, .. });
        let stored_keys = neighbours.then(|| self.kv.storage().stats().keys);
        let envelope = RingEnvelope { sender: self.me.clone(), message, stored_keys };
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

    // ----- network events ------------------------------------------------------------------------

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.swarm_metrics.record(&event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Ring(event)) => {
                if let Some(event) = self.admit_ring(event) {
                    self.on_ring_event(event);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kv(event)) => {
                let Some(event) = self.admit_kv(event) else { return };
                let (now, wall) = (self.now(), self.wall_ms());
                if let Some(peer) = self.kv.on_swarm_event(event, &mut self.core, wall, now) {
                    self.drop_dead_connection(peer, &request_response::OutboundFailure::Timeout);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Group(event)) => {
                if let Some(event) = self.admit_group(event) {
                    self.on_group_event(event);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Chat(event)) => {
                if let Some(event) = self.admit_chat(event) {
                    self.chat.on_event(event, &mut self.swarm);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Queue(event)) => {
                if let Some(event) = self.admit_queue(event) {
                    self.on_queue_event(event);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => self.swarm_metrics.record(&event),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(event)) => self.swarm_metrics.record(&event),
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. }
                if endpoint.is_dialer() =>
            {
                if let Some(bootstrap) = self.bootstrap.bootstrap_peer(connection_id, peer_id) {
                    // Kept by the core across joins; probed only after a loss.
                    self.core.add_bootstrap_peer(bootstrap);
                }
                if let Step::Join(bootstrap) =
                    self.bootstrap.on_connected(peer_id, endpoint.get_remote_address().clone())
                {
                    let now = self.now();
                    self.core.join(vec![bootstrap], now);
                }
            }
            // One of the bootstrap addresses is this node (a StatefulSet's first pod, listed with
            // the others): if nobody else answers, this node starts the ring.
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error: libp2p::swarm::DialError::LocalPeerId { .. },
                ..
            } => {
                self.bootstrap.on_dial_failed(connection_id);
                self.bootstrap.on_dialed_self(Instant::now());
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                self.bootstrap.on_dial_failed(connection_id);
                if matches!(error, libp2p::swarm::DialError::Denied { .. }) {
                    self.counters.connections_denied.outbound += 1;
                }
                debug!(peer = ?peer_id, %error, "dial failed");
            }
            SwarmEvent::IncomingConnectionError {
                error: error @ libp2p::swarm::ListenError::Denied { .. },
                ..
            } => {
                // A connection limit was reached: counted apart from broken handshakes.
                self.counters.connections_denied.inbound += 1;
                debug!(%error, "incoming connection denied");
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                // Random bytes at the port, failed handshakes: counted, never fatal.
                self.counters.rejected.malformed += 1;
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
                        self.counters.rejected.invalid += 1;
                        return;
                    }
                    let dht::Message::Request { id, .. } = &request.message else {
                        self.counters.rejected.invalid += 1;
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
                        self.counters.rejected.invalid += 1;
                    }
                }
                request_response::Message::Response { request_id, response } => {
                    if self.walks.on_response(request_id, Some(response.clone()), &mut self.swarm) {
                        return;
                    }
                    self.ring_out.remove(&request_id);
                    if response.sender.peer != peer {
                        self.counters.rejected.invalid += 1;
                        return;
                    }
                    let now = self.now();
                    self.core.handle_message(response.sender, response.message, now);
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                self.drop_dead_connection(peer, &error);
                if self.walks.on_response(request_id, None, &mut self.swarm) {
                    return;
                }
                if let Some(id) = self.ring_out.remove(&request_id) {
                    debug!(%error, "ring request failed");
                    let now = self.now();
                    self.core.handle_send_failure(id, now);
                }
            }
            request_response::Event::InboundFailure { error, .. } => {
                self.counters.rejected.malformed += 1;
                debug!(%error, "inbound ring request failed");
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

    // ----- commands ----------------------------------------------------------------------------

    fn on_command(&mut self, command: Command) {
        if self.leave != LeaveState::Running {
            match command {
                Command::Get { reply, .. }
                | Command::GetLocal { reply, .. }
                | Command::GetLinearizable { reply, .. } => drop(reply.send(Err(KvError::ShuttingDown))),
                Command::Put { reply, .. }
                | Command::PutSigned { reply, .. }
                | Command::Delete { reply, .. }
                | Command::CompareAndSet { reply, .. } => drop(reply.send(Err(KvError::ShuttingDown))),
                Command::Lookup { reply, .. } => drop(reply.send(Err(KvError::ShuttingDown))),
                Command::Status { reply } => drop(reply.send(self.status())),
                Command::Metrics { reply } => drop(reply.send(self.metrics())),
                Command::Ring { reply } => drop(reply.send(RingWalk { nodes: vec![], complete: false })),
                Command::Groups { reply } => drop(reply.send(self.group_views())),
                Command::JoinGroup { reply, .. } => drop(reply.send(Err(GroupError::ShuttingDown))),
                Command::LeaveGroup { reply, .. } => drop(reply.send(Err(GroupError::ShuttingDown))),
                Command::Publish { reply, .. } => drop(reply.send(Err(GroupError::ShuttingDown))),
                Command::Subscribe { reply, .. } => drop(reply.send(Err(GroupError::ShuttingDown))),
                Command::GroupTree { reply, .. } => drop(reply.send(Err(GroupError::ShuttingDown))),
                Command::ChatSend { reply, .. } => drop(reply.send(Err("shutting down".into()))),
                Command::QueuePut { reply, .. } => drop(reply.send(Err(QueueError::ShuttingDown))),
                Command::QueueTake { reply, .. } => drop(reply.send(Err(QueueError::ShuttingDown))),
                Command::QueueAck { reply, .. } => drop(reply.send(Err(QueueError::ShuttingDown))),
                Command::QueueStat { reply, .. } => drop(reply.send(Err(QueueError::ShuttingDown))),
                Command::QueueListen { reply, .. } => drop(reply.send(Err(QueueError::ShuttingDown))),
            }
            return;
        }
        if matches!(
            command,
            Command::Put { .. }
                | Command::PutSigned { .. }
                | Command::Delete { .. }
                | Command::CompareAndSet { .. }
        ) && let Err(busy) = self.admit_client_write()
        {
            if let Command::Put { reply, .. }
            | Command::PutSigned { reply, .. }
            | Command::Delete { reply, .. }
            | Command::CompareAndSet { reply, .. } = command
            {
                drop(reply.send(Err(busy)));
            }
            return;
        }
        let now = self.now();
        match command {
            Command::Put { key, value, consistency, reply } => {
                let wall = self.wall_ms();
                self.kv.put(key, Some(value), consistency, reply, &mut self.core, wall, now)
            }
            Command::Delete { key, consistency, reply } => {
                let wall = self.wall_ms();
                self.kv.put(key, None, consistency, reply, &mut self.core, wall, now)
            }
            Command::PutSigned { record, consistency, reply } => {
                let wall = self.wall_ms();
                self.kv.put_signed(record, consistency, reply, &mut self.core, wall, now)
            }
            Command::Get { key, consistency, reply } => {
                self.kv.get(key, consistency, reply, &mut self.core, now)
            }
            Command::GetLinearizable { key, reply } => {
                let wall = self.wall_ms();
                self.kv.get_linearizable(key, reply, &mut self.core, wall, now)
            }
            Command::CompareAndSet { key, expect, value, reply } => {
                let wall = self.wall_ms();
                self.kv.compare_and_set(key, expect, value, reply, &mut self.core, wall, now)
            }
            Command::GetLocal { key, reply } => self.kv.get_local(&key, reply),
            Command::Lookup { key, reply } => self.kv.locate(&key, reply, &mut self.core, now),
            Command::Status { reply } => drop(reply.send(self.status())),
            Command::Metrics { reply } => drop(reply.send(self.metrics())),
            Command::Ring { reply } => {
                let (me, first) = (self.core.me().clone(), self.core.successor().clone());
                let keys = self.kv.storage().stats().keys;
                self.walks.start(me, keys, first, reply, &mut self.swarm);
            }
            command @ (Command::Groups { .. }
            | Command::JoinGroup { .. }
            | Command::LeaveGroup { .. }
            | Command::Publish { .. }
            | Command::Subscribe { .. }
            | Command::GroupTree { .. }) => self.on_group_command(command),
            command @ Command::ChatSend { .. } => self.chat.on_command(command, &mut self.swarm),
            Command::QueuePut { queue, body, sender, quota, reply } => {
                self.queue_put(queue, body, sender, quota, reply)
            }
            Command::QueueTake { queue, consumer, wait, lease, reply } => {
                self.queue_take(queue, consumer, wait, lease, reply)
            }
            Command::QueueAck { queue, seq, id, lease, reply } => {
                self.queue_ack(queue, seq, id, lease, reply)
            }
            Command::QueueStat { queue, reply } => self.queue_stat(queue, reply),
            Command::QueueListen { queue, from_seq, reply } => self.queue_listen(queue, from_seq, reply),
        }
    }

    // ----- leaving and housekeeping ------------------------------------------------------------

    fn begin_leave(&mut self) {
        info!("shutting down: handing off records and leaving the ring");
        self.leave = LeaveState::HandingOff;
        let now = self.now();
        // Rooted groups go to the successor, children are told to re-join elsewhere.
        self.groups.core.leave_all(&self.core, now);
        if !self.core.is_member() {
            self.leave = LeaveState::Done;
            return;
        }
        // Client operations in flight fail now; the range goes to the successors.
        self.kv.begin_handoff(&self.core, now);
    }

    /// How soon housekeeping runs again: often while joining, rejoining, alone or leaving (dial
    /// retries and the leave deadline need it), once a second in a settled ring, where it only
    /// reconciles group memberships with listeners and prunes gone listeners — a quiet node
    /// should not wake ten times a second for that.
    fn housekeeping_period(&self) -> Duration {
        let alone =
            self.core.is_member() && self.core.successors().is_empty() && self.core.predecessor().is_none();
        let settled = self.core.is_member()
            && !alone
            && !self.bootstrap.is_dialing()
            && !self.bootstrap.is_rejoining()
            && self.leave == LeaveState::Running;
        if settled { HOUSEKEEPING_SETTLED } else { HOUSEKEEPING_BUSY }
    }

    fn housekeeping(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        self.sync_group_memberships();
        self.prune_queue_listeners();
        let alone =
            self.core.is_member() && self.core.successors().is_empty() && self.core.predecessor().is_none();
        match self.bootstrap.tick(&mut self.swarm, alone, now) {
            Step::Wait => {}
            Step::Join(bootstrap) => {
                let core_now = self.now();
                self.core.join(vec![bootstrap], core_now);
            }
            Step::CreateRing => {
                let core_now = self.now();
                self.core.create_ring(core_now);
            }
            Step::GiveUp => {
                anyhow::bail!("no bootstrap node answered within {:?}", self.bootstrap.join_timeout());
            }
        }
        if let LeaveState::Leaving { deadline } = self.leave
            && now >= deadline
        {
            self.leave = LeaveState::Done;
        }
        Ok(())
    }

    /// Copies every counter at this instant; the HTTP handler encodes the copy on its own task.
    /// libp2p's registry is encoded here, where it lives (a few kilobytes of text).
    fn metrics(&self) -> Snapshot {
        let mut driver = self.counters.clone();
        // Both are the driver's (the loop's protocols and the kv room's): one source.
        driver.rejected = driver.rejected + self.kv.rejected();
        let mut snapshot = Snapshot::new(
            self.core.counters().clone(),
            self.kv.counters().clone(),
            self.groups.core.counters().clone(),
            self.kv.storage().stats(),
            driver,
            &self.swarm_metrics,
        );
        snapshot.queues = self.queue_metrics();
        snapshot
    }

    fn status(&self) -> Status {
        let mut fingers: Vec<(usize, NodeRef<PeerAddr>)> = Vec::new();
        for (i, entry) in self.core.fingers().entries().iter().enumerate() {
            if let Some(node) = entry
                && fingers.last().is_none_or(|(_, last)| last.addr.peer != node.addr.peer)
            {
                fingers.push((i, node.clone()));
            }
        }
        let stats = self.kv.storage().stats();
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
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
