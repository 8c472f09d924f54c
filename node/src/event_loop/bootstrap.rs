//! The bootstrap room: getting into a ring, and back into one after being cut off.
//!
//! Owns the join's progress ([`Bootstrap`]): dialing the bootstrap addresses until one answers
//! (then the ring core joins through whoever answered), starting a ring of its own when the only
//! bootstrap address that leads anywhere is this node itself (a StatefulSet's first pod), giving
//! up after the join time-out, and rejoining through the bootstrap addresses when a node that was
//! a member finds itself alone (cut off long enough to declare every other node dead, as in a
//! network partition: Chord cannot merge two rings by itself). A rejoin that fails leaves the node
//! up as a ring of one until the next attempt.
//!
//! It also learns who answers at each bootstrap address (the dial's connection id ties a
//! connection to the configured address it was dialed at), so that the ring core can keep those
//! peers, under their configured addresses, as bootstrap peers to probe after a loss: a node cut
//! off from its ring with a few neighbours is not alone, so only the core's passive list, not the
//! rejoin above, brings it back (see `dht::Node::add_bootstrap_peer`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::swarm::ConnectionId;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId, Swarm};
use tracing::{debug, info, warn};

use crate::address::PeerAddr;
use crate::network::Behaviour;

/// How long a node whose bootstrap list includes itself waits for another bootstrap node before it
/// starts a ring of its own.
const SELF_BOOTSTRAP_GRACE: Duration = Duration::from_secs(10);
/// How long a node with bootstrap addresses stays alone before it tries to rejoin.
const REJOIN_EVERY: Duration = Duration::from_secs(5);
/// How long one rejoin attempt dials before giving up.
const REJOIN_DIALING: Duration = Duration::from_secs(10);
/// Most dials of bootstrap addresses tracked at once (each resolves within the dial time-out; a
/// slower one is forgotten, and its peer is learned at the next dial instead).
const MAX_TRACKED_DIALS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JoinState {
    /// Dialing bootstrap addresses until one answers.
    Dialing { deadline: Instant, next_dial: Instant, attempt: u32 },
    /// The core is joining through the node that answered.
    Joining,
    /// A member (or a ring of one).
    Done,
}

/// What the loop must do after [`Bootstrap::tick`] or an event.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing.
    Wait,
    /// Join the ring through this node.
    Join(PeerAddr),
    /// Start a ring of its own.
    CreateRing,
    /// No bootstrap node answered in time on the first join: the node cannot start.
    GiveUp,
}

/// The join's progress.
#[derive(Debug)]
pub(super) struct Bootstrap {
    addresses: Vec<Multiaddr>,
    join_timeout: Duration,
    state: JoinState,
    /// Joining again after being cut off (a failure returns to being alone, not to exiting).
    rejoining: bool,
    /// When a node found alone next tries to rejoin.
    next_rejoin_check: Instant,
    /// When dialing a bootstrap address first reached this node itself.
    is_self_since: Option<Instant>,
    /// Dials of bootstrap addresses in flight: which configured address each one dialed.
    dials: HashMap<ConnectionId, Multiaddr>,
}

impl Bootstrap {
    pub(super) fn new(addresses: Vec<Multiaddr>, join_timeout: Duration, now: Instant) -> Self {
        let state = if addresses.is_empty() {
            JoinState::Done
        } else {
            JoinState::Dialing { deadline: now + join_timeout, next_dial: now, attempt: 0 }
        };
        Bootstrap {
            addresses,
            join_timeout,
            state,
            rejoining: false,
            next_rejoin_check: now + REJOIN_EVERY,
            is_self_since: None,
            dials: HashMap::new(),
        }
    }

    /// Whether this node starts a new ring rather than joining one.
    pub(super) fn starts_ring(&self) -> bool {
        self.addresses.is_empty()
    }

    pub(super) fn is_dialing(&self) -> bool {
        matches!(self.state, JoinState::Dialing { .. })
    }

    pub(super) fn is_rejoining(&self) -> bool {
        self.rejoining
    }

    /// The ring core joined.
    pub(super) fn on_joined(&mut self) {
        self.state = JoinState::Done;
        self.rejoining = false;
    }

    /// A rejoin failed: stay alone until the next attempt.
    pub(super) fn on_rejoin_failed(&mut self, now: Instant) {
        self.rejoining = false;
        self.state = JoinState::Done;
        self.next_rejoin_check = now + REJOIN_EVERY;
    }

    /// A connection this node dialed came up. If it was a dial of a bootstrap address, returns
    /// the peer that answered there, under the configured address (a name keeps resolving when a
    /// container comes back with a new IP; the connection's own address may not).
    pub(super) fn bootstrap_peer(&mut self, connection: ConnectionId, peer: PeerId) -> Option<PeerAddr> {
        let addr = self.dials.remove(&connection)?;
        debug!(bootstrap = %peer, %addr, "a bootstrap address answered");
        Some(PeerAddr::new(peer, addr))
    }

    /// A dial failed: it is no longer in flight.
    pub(super) fn on_dial_failed(&mut self, connection: ConnectionId) {
        self.dials.remove(&connection);
    }

    /// A connection this node dialed came up: the first while dialing is the way in.
    pub(super) fn on_connected(&mut self, peer: PeerId, addr: Multiaddr) -> Step {
        if !self.is_dialing() {
            return Step::Wait;
        }
        info!(bootstrap = %peer, %addr, "reached a bootstrap node, joining");
        self.state = JoinState::Joining;
        Step::Join(PeerAddr::new(peer, addr))
    }

    /// Dialing reached this node itself.
    pub(super) fn on_dialed_self(&mut self, now: Instant) {
        if self.is_dialing() && self.is_self_since.is_none() {
            debug!("a bootstrap address leads back to this node");
            self.is_self_since = Some(now);
        }
    }

    /// Time passed: dial again, give up, start a ring, or rejoin. `alone` says whether the node is
    /// a member with neither successors nor predecessor.
    pub(super) fn tick(&mut self, swarm: &mut Swarm<Behaviour>, alone: bool, now: Instant) -> Step {
        self.rejoin_if_alone(alone, now);
        if self.is_dialing()
            && !self.rejoining
            && self.is_self_since.is_some_and(|t| now - t >= SELF_BOOTSTRAP_GRACE)
        {
            info!("no other bootstrap node answered and one of them is this node: starting a new ring");
            self.state = JoinState::Done;
            return Step::CreateRing;
        }
        if let JoinState::Dialing { deadline, .. } = self.state
            && now >= deadline
        {
            if !self.rejoining {
                return Step::GiveUp;
            }
            warn!("no bootstrap node answered; alone until the next attempt");
            self.on_rejoin_failed(now);
        }
        if let JoinState::Dialing { next_dial, attempt, .. } = &mut self.state
            && now >= *next_dial
        {
            *attempt += 1;
            *next_dial = now + Duration::from_millis(250 * u64::from((*attempt).min(8)));
            if self.dials.len() + self.addresses.len() > MAX_TRACKED_DIALS {
                self.dials.clear();
            }
            for addr in &self.addresses {
                let dial = DialOpts::unknown_peer_id().address(addr.clone()).build();
                let connection = dial.connection_id();
                if let Err(error) = swarm.dial(dial) {
                    // The swarm refuses outright to dial one of its own listen addresses.
                    if swarm.listeners().any(|own| own == addr) {
                        self.is_self_since.get_or_insert(now);
                    }
                    debug!(%addr, %error, "could not dial bootstrap");
                } else {
                    self.dials.insert(connection, addr.clone());
                }
            }
        }
        Step::Wait
    }

    /// A node configured with bootstrap addresses that finds itself alone rejoins through them.
    /// Its records stay; anti-entropy reconciles them.
    fn rejoin_if_alone(&mut self, alone: bool, now: Instant) {
        if !alone {
            self.next_rejoin_check = now + REJOIN_EVERY;
            return;
        }
        if self.addresses.is_empty() || self.state != JoinState::Done || now < self.next_rejoin_check {
            return;
        }
        info!("alone in the ring: rejoining through the bootstrap nodes");
        self.rejoining = true;
        self.state = JoinState::Dialing { deadline: now + REJOIN_DIALING, next_dial: now, attempt: 0 };
    }

    pub(super) fn join_timeout(&self) -> Duration {
        self.join_timeout
    }
}
