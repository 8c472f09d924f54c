//! The chat room of the event loop: `/overlay/chat/1`, the direct hand-off of a sealed DM to the
//! node where its recipient is logged in.
//!
//! Outbound, it sends what [`Command::ChatSend`] asks and answers with the peer's reply (or why
//! none came). Inbound, it asks [`Chat::on_request`], which answers at once from the node's own
//! state (sessions, listeners, replay guard) and so never blocks the loop. Holds only the replies
//! of requests in flight.

use std::collections::HashMap;
use std::sync::Arc;

use libp2p::request_response::{self, OutboundRequestId};
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::oneshot;
use tracing::debug;

use super::Command;
use crate::chat::Chat;
use crate::network::{Behaviour, ChatReply, ChatRequest};

/// What the loop keeps for chat.
#[derive(Debug, Default)]
pub(super) struct ChatRoom {
    /// The node's chat state; `None` in loops built without one (it then answers "not here").
    pub(super) chat: Option<Arc<Chat>>,
    pub(super) out: HashMap<OutboundRequestId, oneshot::Sender<Result<ChatReply, String>>>,
}

impl ChatRoom {
    /// Serves [`Command::ChatSend`].
    pub(super) fn on_command(&mut self, command: Command, swarm: &mut Swarm<Behaviour>) {
        let Command::ChatSend { peer, addr, envelope, reply } = command else { return };
        self.send(peer, addr, envelope, reply, swarm);
    }

    fn send(
        &mut self,
        peer: PeerId,
        addr: Multiaddr,
        envelope: Vec<u8>,
        reply: oneshot::Sender<Result<ChatReply, String>>,
        swarm: &mut Swarm<Behaviour>,
    ) {
        let id = swarm.behaviour_mut().chat.send_request_with_addresses(
            &peer,
            ChatRequest { envelope },
            vec![addr],
        );
        self.out.insert(id, reply);
    }

    /// A chat protocol event.
    pub(super) fn on_event(
        &mut self,
        event: request_response::Event<ChatRequest, ChatReply>,
        swarm: &mut Swarm<Behaviour>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let answer = match &self.chat {
                        Some(chat) => chat.on_request(&request.envelope),
                        None => ChatReply::NotHere,
                    };
                    debug!(%peer, ?answer, "chat delivery asked");
                    let _ = swarm.behaviour_mut().chat.send_response(channel, answer);
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(reply) = self.out.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                if let Some(reply) = self.out.remove(&request_id) {
                    let _ = reply.send(Err(error.to_string()));
                }
            }
            request_response::Event::InboundFailure { error, .. } => {
                debug!(%error, "inbound chat request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}
