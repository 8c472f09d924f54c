//! Admission of peers' requests, before any room or core sees them.
//!
//! Owns no state of its own: it uses the loop's [`RateLimiter`] and counts in the loop's
//! [`crate::metrics::DriverCounters`]. A request is refused when its peer sent more than its rate
//! on that protocol, when all peers together sent more than the node-wide rate, or, for a storage
//! request that writes (`Store`, `Accept`), when the storage queue is full. A refused kv request is answered `Refused` (the requester counts it as a failed
//! replica and moves on), a group request `Refused`; a ring request is dropped unanswered, since
//! the ring protocol has no refusal: its requester sees the stream close, as it would for a peer
//! that went away. Refusing happens before any acknowledgement, so nothing acknowledged is lost.
//! Responses and failures pass untouched: they answer this node's own requests.
//!
//! Clients' writes (HTTP puts, deletes, compare-and-sets) are refused with [`KvError::Busy`] (503)
//! earlier, while fewer than [`CLIENT_WRITE_RESERVE`] jobs fit in the storage queue: the room left
//! is for the writes already started (their local replica's store) and for peers' stores, so a
//! write that was accepted is not the one that finds the queue full.

use std::time::Instant;

use dht::store::{KvRequest, KvResponse};
use libp2p::PeerId;
use libp2p::request_response::{Event, Message};
use tracing::debug;

use super::{EventLoop, KvError};
use crate::limits::{Protocol, Refusal};
use crate::network::{
    ChatReply, ChatRequest, GroupReply, GroupRequest, QueueReply, QueueRequest, RingEnvelope,
};

/// Jobs kept free in the storage queue for writes already under way (an eighth of its 1,024).
pub(super) const CLIENT_WRITE_RESERVE: usize = 128;

impl EventLoop {
    /// `Err(Busy)` when a client's write must not start now (see the module's docs); counted.
    pub(super) fn admit_client_write(&mut self) -> Result<(), KvError> {
        if self.kv.storage().write_queue_free() >= CLIENT_WRITE_RESERVE {
            return Ok(());
        }
        self.counters.client_writes_busy += 1;
        debug!(
            free = self.kv.storage().write_queue_free(),
            "refused a client write: storage queue nearly full"
        );
        Err(KvError::Busy)
    }

    /// `Some(event)` to pass on, `None` when it was a request refused here.
    pub(super) fn admit_ring(
        &mut self,
        event: Event<RingEnvelope, RingEnvelope>,
    ) -> Option<Event<RingEnvelope, RingEnvelope>> {
        let Event::Message { peer, message: Message::Request { .. }, .. } = &event else {
            return Some(event);
        };
        // Dropping the event drops its response channel: the stream closes unanswered.
        self.refusal(*peer, Protocol::Ring, false).is_none().then_some(event)
    }

    /// Like [`EventLoop::admit_ring`]; a refused request is answered `Refused`.
    pub(super) fn admit_kv(
        &mut self,
        event: Event<KvRequest, KvResponse>,
    ) -> Option<Event<KvRequest, KvResponse>> {
        let Event::Message { peer, message: Message::Request { request, .. }, .. } = &event else {
            return Some(event);
        };
        let writes =
            matches!(request, KvRequest::Store { .. } | KvRequest::Delete { .. } | KvRequest::Accept { .. });
        let Some(reason) = self.refusal(*peer, Protocol::Kv, writes) else {
            return Some(event);
        };
        if let Event::Message { message: Message::Request { channel, .. }, .. } = event {
            let reason = match reason {
                Refusal::Rate => "busy: too many requests from this peer",
                Refusal::NodeRate => "busy: too many requests to this node",
                Refusal::Busy => "busy: the storage queue is full",
            };
            // Fails only if the requester gave up; nothing to do then.
            let _ = self
                .swarm
                .behaviour_mut()
                .kv
                .send_response(channel, KvResponse::Refused { reason: reason.into() });
        }
        None
    }

    /// Like [`EventLoop::admit_ring`]; a refused request is answered `Refused`.
    pub(super) fn admit_group(
        &mut self,
        event: Event<GroupRequest, GroupReply>,
    ) -> Option<Event<GroupRequest, GroupReply>> {
        let Event::Message { peer, message: Message::Request { .. }, .. } = &event else {
            return Some(event);
        };
        if self.refusal(*peer, Protocol::Group, false).is_none() {
            return Some(event);
        }
        if let Event::Message { message: Message::Request { channel, .. }, .. } = event {
            let _ = self.swarm.behaviour_mut().group.send_response(channel, GroupReply::Refused);
        }
        None
    }

    /// Like [`EventLoop::admit_ring`]; a refused request is answered `Refused` (the queue core
    /// retries or reports the peer as failed, as for a lost message).
    pub(super) fn admit_queue(
        &mut self,
        event: Event<QueueRequest, QueueReply>,
    ) -> Option<Event<QueueRequest, QueueReply>> {
        let Event::Message { peer, message: Message::Request { .. }, .. } = &event else {
            return Some(event);
        };
        if self.refusal(*peer, Protocol::Queue, false).is_none() {
            return Some(event);
        }
        if let Event::Message { message: Message::Request { channel, .. }, .. } = event {
            let _ = self.swarm.behaviour_mut().queue.send_response(channel, QueueReply::Refused);
        }
        None
    }

    /// Like [`EventLoop::admit_ring`]; a refused request is answered `Refused` (the sender queues
    /// the message in the recipient's mailbox instead).
    pub(super) fn admit_chat(
        &mut self,
        event: Event<ChatRequest, ChatReply>,
    ) -> Option<Event<ChatRequest, ChatReply>> {
        let Event::Message { peer, message: Message::Request { .. }, .. } = &event else {
            return Some(event);
        };
        if self.refusal(*peer, Protocol::Chat, false).is_none() {
            return Some(event);
        }
        if let Event::Message { message: Message::Request { channel, .. }, .. } = event {
            let refusal = ChatReply::Refused("busy: too many requests from this peer".into());
            let _ = self.swarm.behaviour_mut().chat.send_response(channel, refusal);
        }
        None
    }

    /// Why `peer`'s request on `protocol` is refused now, if it is; counts the refusal.
    fn refusal(&mut self, peer: PeerId, protocol: Protocol, writes: bool) -> Option<Refusal> {
        let reason = match self.limiter.admit(peer, protocol, Instant::now()) {
            Err(reason) => reason,
            Ok(()) if writes && self.kv.storage().write_queue_free() == 0 => Refusal::Busy,
            Ok(()) => return None,
        };
        self.counters.peer_refused.count(protocol, reason);
        debug!(%peer, protocol = protocol.label(), reason = reason.label(), "refused a peer's request");
        Some(reason)
    }
}
