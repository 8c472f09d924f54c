//! The documents of the chat endpoints (`/v1/chat/...`).
//!
//! Requests carry the chat records themselves (`overlay_chat`'s `NameRecord`, `Grant`,
//! `Envelope`, `RoomMessage`) in their JSON form: binary fields as base64url strings without
//! padding, as that crate documents. This module names only what the node answers, so that it
//! stays free of the chat crate (the node verifies, the CLI signs; this crate only names what
//! crosses HTTP).
//!
//! Endpoints:
//! - `GET /v1/chat/node`: [`ChatNode`], the node's ed25519 key a login grant must name.
//! - `POST /v1/chat/names/{name}`: body a signed `NameRecord`; 201 first claim, 200 update,
//!   409 the name is taken (or the update lost a race), 400/403 a record that does not verify.
//!   `GET /v1/chat/names/{name}`: the current `NameRecord` (404 none).
//! - `POST /v1/chat/login`: body a `Grant` for this node; answers [`LoginAnswer`] with the
//!   session token that `listen` and `logout` need.
//! - `POST /v1/chat/logout`: body [`LogoutRequest`]; the node publishes "offline".
//! - `GET /v1/chat/presence/{name}`: [`Presence`], verified by the node against the name record.
//! - `POST /v1/chat/dm`: body an `Envelope`; answers [`DmReceipt`] (`delivered` or `queued`).
//! - `POST /v1/chat/mailbox/take` ([`MailboxTake`] → [`MailboxItem`] or 204) and
//!   `POST /v1/chat/mailbox/ack` ([`MailboxAck`]): the owner's client drains the mailbox (queue
//!   `mailbox/NAME`) through its node, which checks the session; 429 when a sender's quota of
//!   1,000 waiting DMs in one mailbox is used up.
//! - `GET /v1/chat/listen?name=NAME&session=TOKEN`: an event stream of [`DM_EVENT`] events whose
//!   data is an `Envelope` in JSON, sealed: the client opens it.

use serde::{Deserialize, Serialize};

/// The event name of a direct message on `GET /v1/chat/listen`.
pub const DM_EVENT: &str = "dm";

/// `GET /v1/chat/node`: what a user's grant must name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatNode {
    /// The node's ed25519 public key (its libp2p identity), base64url without padding.
    pub ed25519: String,
    /// The node's libp2p peer id.
    pub peer_id: String,
}

/// `POST /v1/chat/names/{name}`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameReceipt {
    /// Whether this was the name's first claim (201) rather than an update (200).
    pub created: bool,
    /// The name.
    pub name: String,
    /// The record's version, as signed by its owner.
    pub version: u64,
}

/// `POST /v1/chat/login`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginAnswer {
    /// The grant's expiry, in milliseconds since the Unix epoch.
    pub expires_ms: u64,
    /// The name logged in.
    pub name: String,
    /// The node's libp2p peer id.
    pub peer_id: String,
    /// A secret for this login: `listen` and `logout` present it. Hex, 64 characters.
    pub session: String,
}

/// `POST /v1/chat/logout`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogoutRequest {
    /// The name to log out.
    pub name: String,
    /// The session token the login answered with.
    pub session: String,
}

/// `GET /v1/chat/presence/{name}`: where the user is, as the node verified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// When the presence was last written (its store version's clock), ms since the epoch;
    /// `None` if the user never logged in anywhere.
    pub last_seen_ms: Option<u64>,
    /// The name.
    pub name: String,
    /// The node's announced address (a multiaddr ending in `/p2p/<peer id>`), when online.
    pub node_addr: Option<String>,
    /// Whether the user is logged in somewhere now (a verified, unexpired, online record).
    pub online: bool,
    /// The node's peer id, when online.
    pub peer_id: Option<String>,
    /// Until when the record vouches for the user, ms since the epoch, when online.
    pub until_ms: Option<u64>,
}

/// `POST /v1/chat/dm`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmReceipt {
    /// The envelope's id, hex.
    pub id: String,
    /// `delivered` (a listener of the recipient has it) or `queued` (it waits in the
    /// recipient's mailbox).
    pub outcome: String,
    /// The recipient.
    pub to: String,
}

/// `POST /v1/chat/mailbox/take`'s body: lease the first DM waiting in the user's mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxTake {
    /// The mailbox's owner, logged in at this node.
    pub name: String,
    /// The login's session token.
    pub session: String,
    /// How long to wait for a message, in milliseconds (0: a poll).
    #[serde(default)]
    pub wait_ms: u64,
}

/// `POST /v1/chat/mailbox/take`'s answer (200; 204 when the mailbox is empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MailboxItem {
    /// The sealed DM, an `Envelope` in JSON.
    pub envelope: serde_json::Value,
    /// The queue's put id (32 hex digits), for the acknowledgement.
    pub id: String,
    /// The lease token, for the acknowledgement.
    pub lease: u64,
    /// The message's place in the mailbox.
    pub seq: u64,
}

/// `POST /v1/chat/mailbox/ack`'s body: remove a DM once it has been shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxAck {
    /// From the [`MailboxItem`].
    pub id: String,
    /// From the [`MailboxItem`].
    pub lease: u64,
    /// The mailbox's owner.
    pub name: String,
    /// From the [`MailboxItem`].
    pub seq: u64,
    /// The login's session token.
    pub session: String,
}
