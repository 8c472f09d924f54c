//! The queue protocol's wire messages and their validation.
//!
//! Every message is one-way (the transport acknowledges receipt, nothing more) and carries a
//! request id `req` chosen by the node that asked; answers echo it, and an answer is taken only
//! from the peer the request went to. What a peer sends is checked here before anything else
//! sees it: names, bodies, pages and frames have caps; anything over them is refused.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::address::NodeRef;

/// Longest queue name, in bytes.
pub const MAX_QUEUE_NAME_BYTES: usize = 200;
/// Largest message body.
pub const MAX_QUEUE_BODY_BYTES: usize = 64 * 1024;
/// Longest sender or consumer tag.
pub const MAX_TAG_BYTES: usize = 128;
/// Most messages (or removals) in one replication or state page.
pub const MAX_PAGE: usize = 256;
/// Cap on one encoded queue frame: a page of the largest bodies would not fit, so pages are cut
/// by bytes as well ([`PAGE_BYTES`]).
pub const MAX_QUEUE_FRAME_BYTES: usize = 1024 * 1024;
/// Body bytes a page holds at most (the rest of the frame is headroom for the envelope).
pub const PAGE_BYTES: usize = 768 * 1024;

/// A queue's name; its ordering node is the successor of SHA-1(`"queue/"` + name).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueName(String);

/// Why a string is not a valid queue name.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum InvalidQueueName {
    /// Names have at least one byte.
    #[error("queue name is empty")]
    Empty,
    /// Names have at most [`MAX_QUEUE_NAME_BYTES`] bytes.
    #[error("queue name of {0} bytes exceeds {MAX_QUEUE_NAME_BYTES}")]
    TooLong(usize),
    /// Control characters would corrupt logs and terminals.
    #[error("queue name contains a control character")]
    ControlCharacter,
}

impl QueueName {
    /// Checks and wraps `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidQueueName> {
        let name: String = name.into();
        if name.is_empty() {
            return Err(InvalidQueueName::Empty);
        }
        if name.len() > MAX_QUEUE_NAME_BYTES {
            return Err(InvalidQueueName::TooLong(name.len()));
        }
        if name.chars().any(char::is_control) {
            return Err(InvalidQueueName::ControlCharacter);
        }
        Ok(QueueName(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The queue's ring position.
    pub fn id(&self) -> crate::id::Id {
        let mut bytes = b"queue/".to_vec();
        bytes.extend_from_slice(self.0.as_bytes());
        crate::id::Id::hash(&bytes)
    }
}

impl TryFrom<String> for QueueName {
    type Error = InvalidQueueName;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        QueueName::new(name)
    }
}

impl From<QueueName> for String {
    fn from(name: QueueName) -> String {
        name.0
    }
}

impl std::fmt::Display for QueueName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A put's identity, chosen at random by the node the client put through: a retried put keeps
/// it, so the queue stores it once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MsgId(pub u128);

/// A message as the queue stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Its place: epoch of the ordering node that stamped it (high bits), then a count.
    pub seq: u64,
    /// The put's identity.
    pub id: MsgId,
    /// Who put it, as the entry node named them (a user or a node); quotas count by it.
    pub sender: String,
    /// The body, opaque.
    #[serde(with = "crate::bytes")]
    pub body: Vec<u8>,
    /// The entry node's wall clock when it was put, in ms since the Unix epoch.
    pub put_ms: u64,
}

/// A summary of a queue's contents ([`super::state::QueueState::digest`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDigest {
    /// Messages present.
    pub messages: u64,
    /// Removals remembered.
    pub removed: u64,
    /// XOR of the fingerprints of both.
    pub hash: u64,
}

/// Why a queue operation was refused by its ordering node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Error)]
pub enum Refusal {
    /// The queue holds its maximum number of messages or bytes.
    #[error("the queue is full")]
    Full,
    /// This sender holds its maximum number of messages in the queue.
    #[error("the sender's quota in this queue is used up")]
    OverQuota,
    /// The node asked does not order this queue (the asker's view of the ring is stale).
    #[error("not the queue's ordering node")]
    NotOwner,
    /// The ordering node is still collecting the queue's state from its successor.
    #[error("the ordering node is not ready yet")]
    NotReady,
    /// The ordering node orders as many queues as it may.
    #[error("too many queues at the ordering node")]
    TooManyQueues,
    /// Too many consumers already wait on this queue.
    #[error("too many waiting consumers")]
    TooManyWaiters,
    /// Too many subscribers already listen to this queue.
    #[error("too many subscribers")]
    TooManySubscribers,
    /// The ordering node could not get the put or removal to a replica in time.
    #[error("no replica acknowledged in time")]
    NoReplica,
}

/// How an acknowledgement of a taken message ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckOutcome {
    /// Removed; this consumer's acknowledgement is the one that counts.
    Removed,
    /// The message is no longer in the queue (acknowledged already).
    Gone,
    /// The lease ran out and the message is leased to another consumer now.
    LeasedToAnother,
}

/// The ordering node's figures for one queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Messages in the queue (leased ones included).
    pub len: u64,
    /// Messages handed out and not yet acknowledged.
    pub leased: u64,
    /// Body bytes held.
    pub bytes: u64,
    /// Consumers waiting in a blocking get.
    pub waiting: u64,
    /// Distinct consumers holding a lease or waiting.
    pub consumers: u64,
    /// Live subscribers (notify).
    pub subscribers: u64,
    /// The ordering node's epoch.
    pub epoch: u64,
    /// The last sequence number stamped.
    pub last_seq: u64,
}

/// A message taken and acknowledged: which, and by which lease (0 when not known), so that an
/// acknowledgement repeated by the consumer that removed it is answered the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    /// The message.
    pub id: MsgId,
    /// The lease token of the acknowledgement that removed it.
    pub lease: u64,
}

/// One change a replica applies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaChange {
    /// A message was put.
    Put(StoredMessage),
    /// A message was taken and acknowledged.
    Remove(Removal),
}

/// A queue protocol message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueMessage<A> {
    /// Append `body` (client node → ordering node). Answered by `PutDone`.
    Put {
        /// Request id.
        req: u64,
        /// The queue.
        queue: QueueName,
        /// The put's identity (the same on a retry).
        id: MsgId,
        /// Who puts.
        sender: String,
        /// Most messages of this sender the queue may hold; `None`: no quota.
        quota: Option<u32>,
        /// The body.
        #[serde(with = "crate::bytes")]
        body: Vec<u8>,
        /// Entry node's wall clock, ms.
        put_ms: u64,
    },
    /// The put's outcome: its sequence number once `W` holders have it durably.
    PutDone {
        /// Request id.
        req: u64,
        /// The sequence number, or why not.
        result: Result<u64, Refusal>,
    },
    /// Lease the first message that is not leased; if there is none, wait up to `wait_ms`.
    Take {
        /// Request id.
        req: u64,
        /// The queue.
        queue: QueueName,
        /// Who takes (shown in stats and logs).
        consumer: String,
        /// How long to wait for a message, in ms (0: answer at once).
        wait_ms: u64,
        /// How long the lease lasts, in ms.
        lease_ms: u64,
    },
    /// A take's outcome: the message and its lease, `None` when nothing came in time.
    Taken {
        /// Request id.
        req: u64,
        /// The message and lease token, or nothing, or why not.
        result: Result<Option<(StoredMessage, u64)>, Refusal>,
    },
    /// Acknowledge (remove) a taken message.
    Ack {
        /// Request id.
        req: u64,
        /// The queue.
        queue: QueueName,
        /// The message's sequence number.
        seq: u64,
        /// The message's id.
        id: MsgId,
        /// The lease token the take returned.
        lease: u64,
    },
    /// An acknowledgement's outcome.
    AckDone {
        /// Request id.
        req: u64,
        /// What happened.
        result: Result<AckOutcome, Refusal>,
    },
    /// The queue's figures.
    Stat {
        /// Request id.
        req: u64,
        /// The queue.
        queue: QueueName,
    },
    /// The figures, or why not.
    Stats {
        /// Request id.
        req: u64,
        /// The figures.
        result: Result<QueueStats, Refusal>,
    },
    /// Tell me of every message put from now on (and of those present from `from_seq`); renewed
    /// by sending it again before `subscription_ttl` runs out.
    Subscribe {
        /// Request id; notifications carry it.
        req: u64,
        /// The queue.
        queue: QueueName,
        /// Replay present messages with a sequence number at or above this.
        from_seq: u64,
    },
    /// A subscription's answer: refused, or accepted (notifications follow as `Notify`).
    Subscribed {
        /// Request id.
        req: u64,
        /// Accepted, or why not.
        result: Result<(), Refusal>,
    },
    /// A message was put (to a subscriber).
    Notify {
        /// The subscription's request id.
        req: u64,
        /// The messages, in order.
        messages: Vec<StoredMessage>,
    },
    /// Apply these changes to your copy of `queue` (ordering node → replica). Answered by
    /// `Replicated` once they are durable.
    Replicate {
        /// Request id.
        req: u64,
        /// The queue.
        queue: QueueName,
        /// The sender's epoch.
        epoch: u64,
        /// The changes, in order.
        changes: Vec<ReplicaChange>,
    },
    /// The changes are durable here.
    Replicated {
        /// Request id.
        req: u64,
    },
    /// Compare your copy of `queue` with this digest (ordering node → replica).
    SyncDigest {
        /// Request id.
        req: u64,
        /// The queue.
        queue: QueueName,
        /// The sender's epoch.
        epoch: u64,
        /// The sender's digest.
        digest: QueueDigest,
    },
    /// Send me your copy of `queue`, messages after `after` (ordering node taking over or
    /// syncing → a successor).
    FetchState {
        /// Request id.
        req: u64,
        /// The queue.
        queue: QueueName,
        /// Messages strictly after this key; `None` from the start (the first page also carries
        /// the removals).
        after: Option<(u64, MsgId)>,
    },
    /// A page of a holder's copy (answer to `FetchState`, or to a `SyncDigest` that differed).
    State {
        /// Request id.
        req: u64,
        /// The holder's epoch.
        epoch: u64,
        /// Messages, in order.
        messages: Vec<StoredMessage>,
        /// Removals (first page only).
        removed: Vec<Removal>,
        /// More pages follow (ask again after the last message).
        more: bool,
        /// Whether the holder has any state for the queue at all.
        known: bool,
    },
    /// Answer to a `SyncDigest` that matched.
    InSync {
        /// Request id.
        req: u64,
    },
    /// The ordering node's answer to a request that is not for it, with who it thinks orders
    /// the queue.
    Redirect {
        /// Request id.
        req: u64,
        /// A better guess, if any.
        owner: Option<NodeRef<A>>,
    },
}

/// Why a peer's message was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum InvalidQueueMessage {
    /// A body over [`MAX_QUEUE_BODY_BYTES`].
    #[error("body of {0} bytes")]
    BodyTooLarge(usize),
    /// A sender or consumer tag over [`MAX_TAG_BYTES`].
    #[error("tag of {0} bytes")]
    TagTooLong(usize),
    /// A page over [`MAX_PAGE`] entries.
    #[error("page of {0} entries")]
    PageTooLong(usize),
    /// A sequence number from an epoch no ordering node could have reached.
    #[error("impossible sequence number")]
    BadSeq,
}

impl<A> QueueMessage<A> {
    /// The request id the message carries.
    pub fn req(&self) -> u64 {
        match self {
            QueueMessage::Put { req, .. }
            | QueueMessage::PutDone { req, .. }
            | QueueMessage::Take { req, .. }
            | QueueMessage::Taken { req, .. }
            | QueueMessage::Ack { req, .. }
            | QueueMessage::AckDone { req, .. }
            | QueueMessage::Stat { req, .. }
            | QueueMessage::Stats { req, .. }
            | QueueMessage::Subscribe { req, .. }
            | QueueMessage::Subscribed { req, .. }
            | QueueMessage::Notify { req, .. }
            | QueueMessage::Replicate { req, .. }
            | QueueMessage::Replicated { req }
            | QueueMessage::SyncDigest { req, .. }
            | QueueMessage::FetchState { req, .. }
            | QueueMessage::State { req, .. }
            | QueueMessage::InSync { req }
            | QueueMessage::Redirect { req, .. } => *req,
        }
    }

    /// Checks the caps a peer's message must respect (names are checked when decoded).
    pub fn validate(&self) -> Result<(), InvalidQueueMessage> {
        fn message(m: &StoredMessage) -> Result<(), InvalidQueueMessage> {
            if m.body.len() > MAX_QUEUE_BODY_BYTES {
                return Err(InvalidQueueMessage::BodyTooLarge(m.body.len()));
            }
            if m.sender.len() > MAX_TAG_BYTES {
                return Err(InvalidQueueMessage::TagTooLong(m.sender.len()));
            }
            if super::state::epoch_of(m.seq) == 0 {
                return Err(InvalidQueueMessage::BadSeq);
            }
            Ok(())
        }
        fn page(len: usize) -> Result<(), InvalidQueueMessage> {
            if len > MAX_PAGE { Err(InvalidQueueMessage::PageTooLong(len)) } else { Ok(()) }
        }
        match self {
            QueueMessage::Put { sender, body, .. } => {
                if body.len() > MAX_QUEUE_BODY_BYTES {
                    return Err(InvalidQueueMessage::BodyTooLarge(body.len()));
                }
                if sender.len() > MAX_TAG_BYTES {
                    return Err(InvalidQueueMessage::TagTooLong(sender.len()));
                }
                Ok(())
            }
            QueueMessage::Take { consumer, .. } if consumer.len() > MAX_TAG_BYTES => {
                Err(InvalidQueueMessage::TagTooLong(consumer.len()))
            }
            QueueMessage::Taken { result: Ok(Some((m, _))), .. } => message(m),
            QueueMessage::Notify { messages, .. } => {
                page(messages.len())?;
                messages.iter().try_for_each(message)
            }
            QueueMessage::Replicate { changes, .. } => {
                page(changes.len())?;
                changes.iter().try_for_each(|c| match c {
                    ReplicaChange::Put(m) => message(m),
                    ReplicaChange::Remove(_) => Ok(()),
                })
            }
            QueueMessage::State { messages, removed, .. } => {
                page(messages.len())?;
                // Removals travel in the first page; a holder remembers at most this many.
                if removed.len() > super::MAX_REMOVED_CAP {
                    return Err(InvalidQueueMessage::PageTooLong(removed.len()));
                }
                messages.iter().try_for_each(message)
            }
            _ => Ok(()),
        }
    }
}
