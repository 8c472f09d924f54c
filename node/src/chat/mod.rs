//! The node's side of chat: names, logins and presence, and the routing of sealed direct
//! messages. The cryptography and record formats are `overlay_chat`'s; this module decides what
//! to accept, stores records through the event loop's key/value commands, and keeps the state of
//! the users logged in here.
//!
//! Owns:
//! - the **sessions**: users logged in at this node, each with the grant it verified, a session
//!   token (a random secret handed to the client that logged in, which `listen` and `logout`
//!   present) and the live listeners its DMs go to;
//! - the **presence** records it publishes for them (`presence/NAME`, CBOR), renewed every
//!   [`RENEW_EVERY`] for [`PRESENCE_LEASE`] and never past the grant's expiry;
//! - two [`ReplayGuard`]s: one for envelopes sent through this node, one for envelopes
//!   delivered to its listeners.
//!
//! Store layout (plain key/value records, replicated like any other):
//! - `user/NAME`: the CBOR [`NameRecord`]; written only by compare-and-set (if absent for a first
//!   claim, if-version of the record read linearizably for an update), after the record and, for
//!   an update, [`NameRecord::verify_successor`] against the stored one passed;
//! - `presence/NAME`: the CBOR [`PresenceRecord`] of the node the user last logged in at;
//! - queue `mailbox/NAME`: the CBOR [`Envelope`]s that could not be handed to a listener of
//!   NAME, put with the sender's name as the queue's `sender` and a quota of
//!   [`MAILBOX_QUOTA`] per sender; only a client holding a session of NAME takes from it
//!   through this module (take, show, then acknowledge, so a crash of the client between take
//!   and show hands the DM out again after the lease).
//!
//! Invariants:
//! - nothing is stored that did not verify: a forged, replayed, oversized or malformed envelope,
//!   a record signed by a key that does not own its name, a grant for another node, are refused
//!   before any write;
//! - a grant is used for one login only (its nonce is remembered until it expires), so the
//!   grant published inside a presence record cannot be replayed to log in again;
//! - a DM is answered "delivered" only when a live listener of the recipient's session took it
//!   (here or at the recipient's node, over `/overlay/chat/1`), else it is queued.
//!
//! Logout needs the session token, not a fresh signature: the token is a secret only the client
//! that presented the user's signed grant holds, so "whoever logged in may log out" — the same
//! authority as the login, without a second signed record type for the chat crate.

pub mod http;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use dht::queue::{AckOutcome, MsgId, QueueError, QueueName, Refusal};
use dht::store::{Consistency, Record};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use overlay_api::chat::{DmReceipt, LoginAnswer, MailboxItem, NameReceipt, Presence};
use overlay_chat::ed25519_dalek::SigningKey;
use overlay_chat::{ChatError, Envelope, Grant, NameRecord, PresenceRecord, ReplayConfig, ReplayGuard};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::event_loop::{Command, Expect, KvError};
use crate::network::ChatReply;

/// How long a presence record vouches for its user.
pub const PRESENCE_LEASE: Duration = Duration::from_secs(90);
/// How often a logged-in user's presence is renewed.
pub const RENEW_EVERY: Duration = Duration::from_secs(30);
/// Most DMs one sender may have waiting in one mailbox, unless `--mailbox-quota` says otherwise.
pub const MAILBOX_QUOTA: u32 = 1000;
/// How long a DM taken from a mailbox stays leased to the client that took it.
const MAILBOX_LEASE: Duration = Duration::from_secs(30);
/// Envelopes waiting for a slow listener before it is cut off.
const LISTENER_BUFFER: usize = 1024;
/// Longest a chat handler waits for the event loop.
const ASK_TIMEOUT: Duration = Duration::from_secs(15);

/// A refusal: the HTTP status and a sentence for people.
#[derive(Debug)]
pub struct Refused(pub StatusCode, pub String);

impl From<KvError> for Refused {
    fn from(error: KvError) -> Self {
        let status = match &error {
            KvError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            KvError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            KvError::OutcomeUnknown => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Refused(status, error.to_string())
    }
}

/// The status a chat refusal deserves: 403 for what is signed by the wrong key or not signed
/// at all, 409 for replays, 413 for size, 400 for the rest.
fn refusal(what: &str, error: &ChatError) -> Refused {
    let status = match error {
        ChatError::BadSignature | ChatError::NotOwner | ChatError::WrongNode | ChatError::Released => {
            StatusCode::FORBIDDEN
        }
        ChatError::Expired | ChatError::NotYetValid => StatusCode::FORBIDDEN,
        ChatError::Replayed => StatusCode::CONFLICT,
        ChatError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    Refused(status, format!("{what}: {error}"))
}

/// A user logged in at this node.
#[derive(Debug)]
struct Session {
    grant: Grant,
    token: [u8; 32],
    listeners: broadcast::Sender<Envelope>,
    renewed_ms: u64,
}

#[derive(Debug)]
struct Inner {
    sessions: HashMap<String, Session>,
    /// Grant nonces already used to log in, with their expiry.
    used_grants: HashMap<[u8; 16], u64>,
    /// Envelopes accepted from clients of this node.
    sent: ReplayGuard,
    /// Envelopes delivered to listeners here.
    delivered: ReplayGuard,
    /// The last presence sequence number signed.
    presence_seq: u64,
}

/// The chat state of one node; shared by the HTTP handlers and the event loop (which hands it
/// inbound `/overlay/chat/1` requests).
pub struct Chat {
    commands: mpsc::Sender<Command>,
    node_key: SigningKey,
    peer: PeerId,
    /// The announced address with `/p2p/<peer>`, published in presence records.
    node_addr: String,
    /// Most DMs one sender may have waiting in one mailbox, asked of the mailbox's ordering node
    /// with every put this node makes.
    mailbox_quota: u32,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat").field("peer", &self.peer).finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

use dht::bytes::to_hex as hex;

/// Queue names of mailboxes start with this; the generic queue endpoints refuse them.
pub const MAILBOX_PREFIX: &str = "mailbox/";

/// The queue of `name`'s mailbox.
fn mailbox(name: &str) -> Result<QueueName, Refused> {
    QueueName::new(format!("{MAILBOX_PREFIX}{name}"))
        .map_err(|e| Refused(StatusCode::BAD_REQUEST, e.to_string()))
}

fn queue_refusal(error: &QueueError) -> Refused {
    let status = match error {
        QueueError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        QueueError::Refused(Refusal::Full | Refusal::OverQuota) => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    Refused(status, format!("the mailbox: {error}"))
}

fn user_key(name: &str) -> Vec<u8> {
    format!("user/{name}").into_bytes()
}

fn presence_key(name: &str) -> Vec<u8> {
    format!("presence/{name}").into_bytes()
}

/// The peer id at the end of a presence record's address.
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| if let Protocol::P2p(peer) = p { Some(peer) } else { None })
}

impl Chat {
    /// The chat state of the node with `keypair` (ed25519: its libp2p identity), announced at
    /// `announce`, putting DMs into mailboxes with a per-sender quota of `mailbox_quota`.
    pub fn new(
        keypair: &libp2p::identity::Keypair,
        announce: &Multiaddr,
        mailbox_quota: u32,
        commands: mpsc::Sender<Command>,
    ) -> anyhow::Result<Arc<Chat>> {
        let ed = keypair.clone().try_into_ed25519()?;
        let secret: [u8; 32] = ed.secret().as_ref().try_into()?;
        let node_key = SigningKey::from_bytes(&secret);
        let peer = keypair.public().to_peer_id();
        let node_addr = announce.clone().with(Protocol::P2p(peer)).to_string();
        Ok(Arc::new(Chat {
            commands,
            node_key,
            peer,
            node_addr,
            mailbox_quota,
            inner: Mutex::new(Inner {
                sessions: HashMap::new(),
                used_grants: HashMap::new(),
                sent: ReplayGuard::new(ReplayConfig::default()),
                delivered: ReplayGuard::new(ReplayConfig::default()),
                presence_seq: 0,
            }),
        }))
    }

    /// This node's ed25519 public key, which grants must name.
    pub fn node_public(&self) -> [u8; 32] {
        self.node_key.verifying_key().to_bytes()
    }

    /// This node's peer id.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Refused> {
        let (reply, answer) = oneshot::channel();
        let unavailable = || Refused(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down".into());
        self.commands.send(make(reply)).await.map_err(|_| unavailable())?;
        match tokio::time::timeout(ASK_TIMEOUT, answer).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(unavailable()),
            Err(_) => Err(Refused(StatusCode::GATEWAY_TIMEOUT, "the node did not answer in time".into())),
        }
    }

    /// [`Chat::ask`] for an operation that may wait `wait` before it answers.
    async fn ask_for<T>(
        &self,
        wait: Duration,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Refused> {
        let (reply, answer) = oneshot::channel();
        let unavailable = || Refused(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down".into());
        self.commands.send(make(reply)).await.map_err(|_| unavailable())?;
        match tokio::time::timeout(wait + ASK_TIMEOUT, answer).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(unavailable()),
            Err(_) => Err(Refused(StatusCode::GATEWAY_TIMEOUT, "the node did not answer in time".into())),
        }
    }

    /// A live record of `key`, read at quorum (or linearizably).
    async fn read(&self, key: Vec<u8>, linearizable: bool) -> Result<Option<Record>, Refused> {
        let record = if linearizable {
            self.ask(|reply| Command::GetLinearizable { key, reply }).await??
        } else {
            self.ask(|reply| Command::Get { key, consistency: Consistency::Quorum, reply }).await??
        };
        Ok(record.filter(|r| !r.tombstone))
    }

    /// The current name record of `name`, if any.
    pub async fn name_record(
        &self,
        name: &str,
        linearizable: bool,
    ) -> Result<Option<(NameRecord, Record)>, Refused> {
        let Some(record) = self.read(user_key(name), linearizable).await? else { return Ok(None) };
        let parsed = NameRecord::from_cbor(&record.value).map_err(|e| {
            Refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the stored record of {name:?} is corrupt: {e}"),
            )
        })?;
        Ok(Some((parsed, record)))
    }

    // ----- names -------------------------------------------------------------------------------

    /// Claims or updates `name` with `record` (see the module docs).
    pub async fn register(&self, name: &str, record: NameRecord) -> Result<NameReceipt, Refused> {
        if record.name != name {
            return Err(Refused(
                StatusCode::BAD_REQUEST,
                format!("the record names {:?}, the path {name:?}", record.name),
            ));
        }
        record.verify().map_err(|e| refusal("name record", &e))?;
        let current = self.name_record(name, true).await?;
        let (expect, created) = match &current {
            None if record.released => {
                return Err(Refused(StatusCode::BAD_REQUEST, format!("{name:?} is not registered")));
            }
            None => (Expect::Absent, true),
            Some((stored, _)) if stored == &record => {
                return Ok(NameReceipt { created: false, name: name.to_owned(), version: record.version });
            }
            Some((stored, version)) => {
                NameRecord::verify_successor(stored, &record).map_err(|e| match e {
                    ChatError::NotOwner => Refused(
                        StatusCode::CONFLICT,
                        format!("the name {name:?} is taken (owner {})", stored.owner.fingerprint()),
                    ),
                    ChatError::StaleVersion { .. } => Refused(StatusCode::CONFLICT, format!("{name:?}: {e}")),
                    e => refusal("name record", &e),
                })?;
                (Expect::Version(version.version), false)
            }
        };
        let (key, value) = (user_key(name), Some(record.to_cbor()));
        match self.ask(|reply| Command::CompareAndSet { key, expect, value, reply }).await? {
            Ok(_) => {
                info!(name, version = record.version, created, "name record stored");
                Ok(NameReceipt { created, name: name.to_owned(), version: record.version })
            }
            Err(KvError::Conflict { .. }) if created => {
                Err(Refused(StatusCode::CONFLICT, format!("the name {name:?} is taken")))
            }
            Err(KvError::Conflict { .. }) => Err(Refused(
                StatusCode::CONFLICT,
                format!("the record of {name:?} changed meanwhile; nothing was written, try again"),
            )),
            Err(error) => Err(error.into()),
        }
    }

    // ----- login, logout, presence -------------------------------------------------------------

    /// Logs the grant's user in here and publishes their presence.
    pub async fn login(&self, grant: Grant) -> Result<LoginAnswer, Refused> {
        let now = now_ms();
        grant.verify(&self.node_public(), now).map_err(|e| match e {
            ChatError::WrongNode => Refused(
                StatusCode::FORBIDDEN,
                format!("the grant is for another node; this node's key is {}", hex(&self.node_public())),
            ),
            e => refusal("grant", &e),
        })?;
        let name = grant.name.clone();
        let Some((record, _)) = self.name_record(&name, false).await? else {
            return Err(Refused(StatusCode::NOT_FOUND, format!("unknown user {name:?}: register it first")));
        };
        if record.released {
            return Err(Refused(StatusCode::FORBIDDEN, format!("the name {name:?} has been released")));
        }
        if record.owner.sign != grant.user {
            return Err(Refused(
                StatusCode::FORBIDDEN,
                format!("the grant is not signed by {name:?}'s owner"),
            ));
        }
        {
            let mut inner = self.lock();
            inner.used_grants.retain(|_, expires| *expires > now);
            if inner.used_grants.contains_key(&grant.nonce) {
                return Err(Refused(StatusCode::CONFLICT, "this grant was already used to log in".into()));
            }
            inner.used_grants.insert(grant.nonce, grant.expires_ms);
        }
        let presence = self.sign_presence(&grant, true, now)?;
        self.write_presence(&name, &presence).await?;
        let token: [u8; 32] = rand::random();
        let expires_ms = grant.expires_ms;
        {
            let mut inner = self.lock();
            let (listeners, _) = broadcast::channel(LISTENER_BUFFER);
            // A new login replaces the old one: its listeners' streams end.
            inner.sessions.insert(name.clone(), Session { grant, token, listeners, renewed_ms: now });
        }
        info!(name, expires_ms, "user logged in");
        Ok(LoginAnswer { expires_ms, name, peer_id: self.peer.to_string(), session: hex(&token) })
    }

    fn sign_presence(&self, grant: &Grant, online: bool, now: u64) -> Result<PresenceRecord, Refused> {
        let until = if online {
            grant.expires_ms.min(now + PRESENCE_LEASE.as_millis() as u64)
        } else {
            grant.expires_ms
        };
        let seq = {
            let mut inner = self.lock();
            inner.presence_seq = (inner.presence_seq + 1).max(now);
            inner.presence_seq
        };
        PresenceRecord::sign(&self.node_key, grant.clone(), &self.node_addr, online, until, seq)
            .map_err(|e| refusal("presence", &e))
    }

    async fn write_presence(&self, name: &str, presence: &PresenceRecord) -> Result<(), Refused> {
        let (key, value) = (presence_key(name), presence.to_cbor());
        self.ask(|reply| Command::Put { key, value, consistency: Consistency::Quorum, reply }).await??;
        debug!(name, online = presence.online, until_ms = presence.until_ms, "presence written");
        Ok(())
    }

    /// The session of `name` if `token` (hex) is its token.
    fn check_session(&self, name: &str, token: &str) -> Result<(), Refused> {
        use subtle::ConstantTimeEq as _;
        let inner = self.lock();
        let denied =
            || Refused(StatusCode::FORBIDDEN, format!("{name:?} is not logged in here with this session"));
        let session = inner.sessions.get(name).ok_or_else(denied)?;
        if hex(&session.token).as_bytes().ct_eq(token.as_bytes()).into() { Ok(()) } else { Err(denied()) }
    }

    /// Logs `name` out (the session token proves it is the client that logged in) and publishes
    /// that it is offline.
    pub async fn logout(&self, name: &str, token: &str) -> Result<(), Refused> {
        self.check_session(name, token)?;
        let Some(session) = self.lock().sessions.remove(name) else {
            return Err(Refused(StatusCode::FORBIDDEN, format!("{name:?} is not logged in here")));
        };
        let presence = self.sign_presence(&session.grant, false, now_ms())?;
        self.write_presence(name, &presence).await?;
        info!(name, "user logged out");
        Ok(())
    }

    /// Where `name` is, verified against its name record.
    pub async fn presence(&self, name: &str) -> Result<Presence, Refused> {
        overlay_chat::validate_name(name).map_err(|e| refusal("name", &e))?;
        let Some((record, _)) = self.name_record(name, false).await? else {
            return Err(Refused(StatusCode::NOT_FOUND, format!("unknown user {name:?}")));
        };
        let offline = |last_seen_ms| Presence {
            last_seen_ms,
            name: name.to_owned(),
            node_addr: None,
            online: false,
            peer_id: None,
            until_ms: None,
        };
        let Some(stored) = self.read(presence_key(name), false).await? else { return Ok(offline(None)) };
        let last_seen = Some(stored.version.hlc >> 16);
        let Ok(presence) = PresenceRecord::from_cbor(&stored.value) else { return Ok(offline(last_seen)) };
        match presence.verify(&record, now_ms()) {
            Ok(()) if presence.online => {
                let peer = presence.node_addr.parse::<Multiaddr>().ok().as_ref().and_then(peer_of);
                Ok(Presence {
                    last_seen_ms: last_seen,
                    name: name.to_owned(),
                    node_addr: Some(presence.node_addr.clone()),
                    online: true,
                    peer_id: peer.map(|p| p.to_string()),
                    until_ms: Some(presence.until_ms),
                })
            }
            // Logged out, or its node stopped renewing (gone): last seen at the last write.
            Ok(()) | Err(ChatError::Expired) => Ok(offline(last_seen)),
            Err(error) => {
                warn!(name, %error, "a presence record does not verify");
                Ok(offline(last_seen))
            }
        }
    }

    /// Renews the presence of every user logged in here, and drops sessions whose grant ran
    /// out. Runs until the command channel closes.
    pub async fn renew_forever(self: Arc<Chat>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.commands.is_closed() {
                return;
            }
            let now = now_ms();
            let due: Vec<Grant> = {
                let mut inner = self.lock();
                inner.sessions.retain(|name, s| {
                    let live = s.grant.expires_ms > now;
                    if !live {
                        info!(name, "grant expired: user logged out");
                    }
                    live
                });
                inner
                    .sessions
                    .values_mut()
                    .filter(|s| now.saturating_sub(s.renewed_ms) >= RENEW_EVERY.as_millis() as u64)
                    .map(|s| {
                        s.renewed_ms = now;
                        s.grant.clone()
                    })
                    .collect()
            };
            for grant in due {
                let result = match self.sign_presence(&grant, true, now) {
                    Ok(presence) => self.write_presence(&grant.name, &presence).await,
                    Err(e) => Err(e),
                };
                if let Err(Refused(_, reason)) = result {
                    warn!(name = grant.name, %reason, "presence renewal failed; retrying at the next tick");
                    if let Some(s) = self.lock().sessions.get_mut(&grant.name) {
                        s.renewed_ms = 0;
                    }
                }
            }
        }
    }

    // ----- direct messages ---------------------------------------------------------------------

    /// Routes a sealed envelope from a client of this node (see the module docs).
    pub async fn send_dm(&self, envelope: Envelope) -> Result<DmReceipt, Refused> {
        envelope.verify_sender().map_err(|e| refusal("envelope", &e))?;
        let Some((sender, _)) = self.name_record(&envelope.from, false).await? else {
            return Err(Refused(StatusCode::NOT_FOUND, format!("unknown sender {:?}", envelope.from)));
        };
        if sender.released || sender.owner != envelope.from_key {
            return Err(Refused(
                StatusCode::FORBIDDEN,
                format!("the envelope is not signed by {:?}'s key", envelope.from),
            ));
        }
        let Some((recipient, _)) = self.name_record(&envelope.to, false).await? else {
            return Err(Refused(StatusCode::NOT_FOUND, format!("unknown user {:?}", envelope.to)));
        };
        if recipient.released || recipient.owner != envelope.to_key {
            return Err(Refused(
                StatusCode::BAD_REQUEST,
                format!("the envelope is not sealed to {:?}'s current key", envelope.to),
            ));
        }
        self.lock().sent.check_envelope(&envelope, now_ms()).map_err(|e| refusal("envelope", &e))?;
        let receipt = |outcome: &str| DmReceipt {
            id: hex(&envelope.id),
            outcome: outcome.to_owned(),
            to: envelope.to.clone(),
        };
        if self.try_direct(&envelope, &recipient).await {
            return Ok(receipt("delivered"));
        }
        let (queue, body, sender) = (mailbox(&envelope.to)?, envelope.to_cbor(), envelope.from.clone());
        let quota = Some(self.mailbox_quota);
        let put = self.ask(|reply| Command::QueuePut { queue, body, sender, quota, reply }).await?;
        match put {
            Ok((seq, _)) => {
                debug!(to = envelope.to, seq, "DM queued in the mailbox");
                Ok(receipt("queued"))
            }
            Err(QueueError::Refused(Refusal::OverQuota)) => Err(Refused(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{:?}'s mailbox already holds {} messages from {:?}; nothing was stored",
                    envelope.to, self.mailbox_quota, envelope.from
                ),
            )),
            Err(error) => Err(queue_refusal(&error)),
        }
    }

    /// Leases the first DM of `name`'s mailbox, for the client holding its session.
    pub async fn mailbox_take(
        &self,
        name: &str,
        token: &str,
        wait: Duration,
    ) -> Result<Option<MailboxItem>, Refused> {
        self.check_session(name, token)?;
        let (queue, consumer, lease) = (mailbox(name)?, name.to_owned(), MAILBOX_LEASE);
        let taken = self
            .ask_for(wait, |reply| Command::QueueTake { queue, consumer, wait, lease, reply })
            .await?
            .map_err(|e| queue_refusal(&e))?;
        let Some(leased) = taken else { return Ok(None) };
        let envelope = Envelope::from_cbor(&leased.message.body).map_err(|e| {
            Refused(StatusCode::INTERNAL_SERVER_ERROR, format!("a mailbox message does not decode: {e}"))
        })?;
        let envelope = serde_json::to_value(&envelope)
            .map_err(|e| Refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok(Some(MailboxItem {
            envelope,
            id: format!("{:032x}", leased.message.id.0),
            lease: leased.lease,
            seq: leased.message.seq,
        }))
    }

    /// Removes a DM the client took from `name`'s mailbox and showed.
    pub async fn mailbox_ack(
        &self,
        name: &str,
        token: &str,
        seq: u64,
        id: &str,
        lease: u64,
    ) -> Result<&'static str, Refused> {
        self.check_session(name, token)?;
        let id = u128::from_str_radix(id, 16)
            .map(MsgId)
            .map_err(|_| Refused(StatusCode::BAD_REQUEST, format!("{id:?} is not a message id")))?;
        let queue = mailbox(name)?;
        let outcome = self
            .ask(|reply| Command::QueueAck { queue, seq, id, lease, reply })
            .await?
            .map_err(|e| queue_refusal(&e))?;
        Ok(match outcome {
            AckOutcome::Removed => "removed",
            AckOutcome::Gone => "gone",
            AckOutcome::LeasedToAnother => "leased_to_another",
        })
    }

    /// Hands the envelope to the recipient's node if their presence says they are online;
    /// whether a listener took it.
    async fn try_direct(&self, envelope: &Envelope, recipient: &NameRecord) -> bool {
        let Ok(Some(stored)) = self.read(presence_key(&envelope.to), false).await else { return false };
        let Ok(presence) = PresenceRecord::from_cbor(&stored.value) else { return false };
        if !presence.online || presence.verify(recipient, now_ms()).is_err() {
            return false;
        }
        if presence.node == self.node_public() {
            return self.deliver(envelope) == ChatReply::Delivered;
        }
        let Ok(addr) = presence.node_addr.parse::<Multiaddr>() else { return false };
        let Some(peer) = peer_of(&addr) else { return false };
        let envelope_bytes = envelope.to_cbor();
        let answer =
            self.ask(|reply| Command::ChatSend { peer, addr, envelope: envelope_bytes, reply }).await;
        match answer {
            Ok(Ok(ChatReply::Delivered)) => true,
            Ok(Ok(other)) => {
                debug!(to = envelope.to, ?other, "the recipient's node did not deliver");
                false
            }
            Ok(Err(reason)) | Err(Refused(_, reason)) => {
                debug!(to = envelope.to, %reason, "the recipient's node is unreachable");
                false
            }
        }
    }

    /// Delivers an envelope to the live listeners of its recipient here; the answer for
    /// `/overlay/chat/1`. Synchronous: it needs only this node's state.
    pub fn deliver(&self, envelope: &Envelope) -> ChatReply {
        let now = now_ms();
        let mut inner = self.lock();
        let node = self.node_public();
        let Some(session) = inner.sessions.get(&envelope.to) else { return ChatReply::NotHere };
        if session.grant.verify(&node, now).is_err() || session.listeners.receiver_count() == 0 {
            return ChatReply::NotHere;
        }
        if envelope.to_key.sign != session.grant.user {
            return ChatReply::Refused("sealed to another key than the logged-in user's".into());
        }
        if let Err(e) = envelope.verify_sender() {
            return ChatReply::Refused(e.to_string());
        }
        let listeners = session.listeners.clone();
        if let Err(e) = inner.delivered.check_envelope(envelope, now) {
            return ChatReply::Refused(e.to_string());
        }
        match listeners.send(envelope.clone()) {
            Ok(_) => ChatReply::Delivered,
            Err(_) => ChatReply::NotHere,
        }
    }

    /// An inbound `/overlay/chat/1` request.
    pub fn on_request(&self, bytes: &[u8]) -> ChatReply {
        match Envelope::from_cbor(bytes) {
            Ok(envelope) => self.deliver(&envelope),
            Err(e) => ChatReply::Refused(e.to_string()),
        }
    }

    /// The live feed of `name`'s DMs, for a client holding the session token.
    pub fn listen(&self, name: &str, token: &str) -> Result<broadcast::Receiver<Envelope>, Refused> {
        self.check_session(name, token)?;
        let inner = self.lock();
        let session = inner
            .sessions
            .get(name)
            .ok_or_else(|| Refused(StatusCode::FORBIDDEN, format!("{name:?} is not logged in here")))?;
        Ok(session.listeners.subscribe())
    }
}
