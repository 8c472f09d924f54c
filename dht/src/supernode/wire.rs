//! The supernode protocol's wire messages, their caps, validation and CBOR encoding.
//!
//! Every message is one-way and carries a request id `req` chosen by the asker; answers echo it,
//! and an answer is taken only from the peer the request went to. Forwarded operations carry the
//! leaf's own operation id instead ([`LeafOpId`]), which a retry through another supernode keeps,
//! so the ring service that executes it can drop the duplicate. Everything a peer can send is
//! bounded here: payloads, lists of supernodes, time-to-live values and the encoded frame.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::address::Address;
use crate::id::Id;

/// Largest payload of a forwarded operation or its reply.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Most supernodes in one listing or refusal.
pub const MAX_LISTING: usize = 32;
/// Cap on one encoded supernode frame: the largest payload plus room for the envelope.
pub const MAX_FRAME_BYTES: usize = MAX_PAYLOAD_BYTES + 4 * 1024;
/// Longest time-to-live a supernode may ask for its directory entry, in ms.
pub const MAX_TTL_MS: u32 = 120_000;
/// Largest leaf cap a supernode may claim (a claim above it is a lie or a typo).
pub const MAX_CAP: u32 = 1 << 20;
/// Number of directory shards: supernode `s` advertises in shard `shard_of(s)`, whose entries the
/// successor of [`shard_key`] holds.
pub const DIRECTORY_SHARDS: u8 = 8;

/// The ring key whose successor holds directory shard `shard`: SHA-1(`"supernodes/"` + shard).
pub fn shard_key(shard: u8) -> Id {
    Id::hash(format!("supernodes/{shard}").as_bytes())
}

/// The directory shard a supernode advertises in (by its ring id, so nobody picks it).
pub fn shard_of<A: Address>(addr: &A) -> u8 {
    addr.node_id().as_bytes()[0] % DIRECTORY_SHARDS
}

/// An operation a leaf asked its supernode to carry into the ring; the leaf picks it and keeps
/// it across retries and supernode switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeafOpId(pub u64);

/// A supernode's load: leaves attached and the most it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// Leaves attached now.
    pub leaves: u32,
    /// Most leaves accepted (`max_leaves`).
    pub cap: u32,
}

impl Load {
    /// Slots still free.
    pub fn free(&self) -> u32 {
        self.cap.saturating_sub(self.leaves)
    }

    /// Whether no slot is free.
    pub fn is_full(&self) -> bool {
        self.free() == 0
    }
}

/// A supernode and its load, as the directory and refusals list it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupernodeInfo<A> {
    /// Where to reach it.
    pub addr: A,
    /// Its load when it last said.
    pub load: Load,
}

impl<A> SupernodeInfo<A> {
    /// Free slots.
    pub fn free(&self) -> u32 {
        self.load.free()
    }
}

/// Why a supernode refused to attach a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Error)]
pub enum Refusal {
    /// It holds `max_leaves` leaves already; try the alternatives.
    #[error("the supernode is full")]
    Full,
    /// Too many leaves are attaching at once; retry after the given delay or try another.
    #[error("the supernode is busy admitting other leaves")]
    Busy,
}

/// Why a supernode did not carry a leaf's operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Error)]
pub enum OpRefusal {
    /// The sender is not attached here (it should re-attach and resend).
    #[error("not attached to this supernode")]
    NotAttached,
    /// The leaf sent faster than its rate limit.
    #[error("rate limit exceeded")]
    Throttled,
    /// The ring service failed or gave up.
    #[error("the operation failed in the ring")]
    Failed,
}

/// A supernode protocol message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SuperMessage<A> {
    /// Leaf → supernode: take me as a leaf. Answered by `Attached` or `Refused`; repeating it
    /// while attached is harmless.
    Attach {
        /// Request id.
        req: u64,
    },
    /// The leaf is attached.
    Attached {
        /// Request id.
        req: u64,
        /// The supernode's load, this leaf included.
        load: Load,
    },
    /// The leaf is not attached; `alternatives` are other supernodes with free slots.
    Refused {
        /// Request id.
        req: u64,
        /// Why.
        reason: Refusal,
        /// Do not ask this supernode again before this many ms.
        retry_after_ms: u32,
        /// Where to go instead (at most [`MAX_LISTING`]).
        alternatives: Vec<SupernodeInfo<A>>,
    },
    /// Heartbeat (from the attached leaf) or probe (from anyone: a standby check, a round-trip
    /// measurement). Answered by `Pong`.
    Ping {
        /// Request id.
        req: u64,
    },
    /// Answer to `Ping`.
    Pong {
        /// Request id.
        req: u64,
        /// Whether the asker is attached here.
        attached: bool,
        /// The supernode's load.
        load: Load,
    },
    /// Leaf → supernode: I am leaving you. Not answered.
    Detach {
        /// Request id.
        req: u64,
    },
    /// Leaf → supernode: which other supernodes are there? Answered by `Listing`.
    Alternatives {
        /// Request id.
        req: u64,
    },
    /// Supernodes and their loads (answer to `Alternatives` and `Query`).
    Listing {
        /// Request id.
        req: u64,
        /// At most [`MAX_LISTING`] of them.
        supernodes: Vec<SupernodeInfo<A>>,
    },
    /// Leaf → supernode: carry this operation into the ring. Answered by `Reply` (the ring
    /// service's answer), possibly much later.
    Forward {
        /// The leaf's operation id (kept across retries).
        op: LeafOpId,
        /// The operation, opaque here.
        #[serde(with = "crate::bytes")]
        payload: Vec<u8>,
    },
    /// Supernode → leaf: the outcome of a forwarded operation.
    Reply {
        /// The operation.
        op: LeafOpId,
        /// The ring service's answer, or why there is none.
        result: Result<ByteString, OpRefusal>,
    },
    /// Supernode → directory shard holder: list me with this load for `ttl_ms`. Answered by
    /// `Advertised`.
    Advertise {
        /// Request id.
        req: u64,
        /// The supernode's load.
        load: Load,
        /// How long the entry lives without renewal.
        ttl_ms: u32,
    },
    /// The directory's answer to `Advertise`: `accepted` is false when the receiver does not hold
    /// the shard (the asker's view of the ring is stale) or the shard is full.
    Advertised {
        /// Request id.
        req: u64,
        /// Whether the entry is listed.
        accepted: bool,
    },
    /// Supernode → directory shard holder: list up to `limit` supernodes of `shard` with free
    /// slots. Answered by `Listing`.
    Query {
        /// Request id.
        req: u64,
        /// The shard.
        shard: u8,
        /// Most entries wanted (capped at [`MAX_LISTING`]).
        limit: u8,
    },
}

/// An opaque byte string that serializes as CBOR bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteString(#[serde(with = "crate::bytes")] pub Vec<u8>);

/// Why a peer's message was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum InvalidSuperMessage {
    /// A payload over [`MAX_PAYLOAD_BYTES`].
    #[error("payload of {0} bytes")]
    PayloadTooLarge(usize),
    /// A list over [`MAX_LISTING`] entries.
    #[error("list of {0} supernodes")]
    ListTooLong(usize),
    /// A load whose cap is zero or over [`MAX_CAP`], or with more leaves than its cap.
    #[error("impossible load {0:?}")]
    BadLoad(Load),
    /// A time-to-live over [`MAX_TTL_MS`].
    #[error("time-to-live of {0} ms")]
    TtlTooLong(u32),
    /// A shard number at or over [`DIRECTORY_SHARDS`].
    #[error("no shard {0}")]
    BadShard(u8),
}

/// Why bytes did not decode into a supernode message.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SuperDecodeError {
    /// Longer than the cap; not parsed.
    #[error("frame of {len} bytes exceeds the cap of {max} bytes")]
    TooLarge {
        /// The input's length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// Not a CBOR encoding of a message.
    #[error("malformed supernode message: {0}")]
    Malformed(String),
    /// Parsed, but over a cap.
    #[error(transparent)]
    Invalid(#[from] InvalidSuperMessage),
}

fn check_load(load: &Load) -> Result<(), InvalidSuperMessage> {
    if load.cap == 0 || load.cap > MAX_CAP || load.leaves > load.cap {
        return Err(InvalidSuperMessage::BadLoad(*load));
    }
    Ok(())
}

fn check_list<A>(list: &[SupernodeInfo<A>]) -> Result<(), InvalidSuperMessage> {
    if list.len() > MAX_LISTING {
        return Err(InvalidSuperMessage::ListTooLong(list.len()));
    }
    list.iter().try_for_each(|info| check_load(&info.load))
}

impl<A> SuperMessage<A> {
    /// Checks the caps a peer's message must respect.
    pub fn validate(&self) -> Result<(), InvalidSuperMessage> {
        match self {
            SuperMessage::Forward { payload, .. }
            | SuperMessage::Reply { result: Ok(ByteString(payload)), .. }
                if payload.len() > MAX_PAYLOAD_BYTES =>
            {
                Err(InvalidSuperMessage::PayloadTooLarge(payload.len()))
            }
            SuperMessage::Refused { alternatives, .. } => check_list(alternatives),
            SuperMessage::Listing { supernodes, .. } => check_list(supernodes),
            SuperMessage::Attached { load, .. } | SuperMessage::Pong { load, .. } => check_load(load),
            SuperMessage::Advertise { load, ttl_ms, .. } => {
                check_load(load)?;
                if *ttl_ms > MAX_TTL_MS {
                    return Err(InvalidSuperMessage::TtlTooLong(*ttl_ms));
                }
                Ok(())
            }
            SuperMessage::Query { shard, .. } if *shard >= DIRECTORY_SHARDS => {
                Err(InvalidSuperMessage::BadShard(*shard))
            }
            _ => Ok(()),
        }
    }
}

/// Encodes a message as CBOR.
pub fn encode<A: Address>(message: &SuperMessage<A>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    ciborium::into_writer(message, &mut buf).expect("encoding into a Vec cannot fail");
    buf
}

/// Decodes and validates a message, refusing input over [`MAX_FRAME_BYTES`] before parsing it.
pub fn decode<A: Address>(bytes: &[u8]) -> Result<SuperMessage<A>, SuperDecodeError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(SuperDecodeError::TooLarge { len: bytes.len(), max: MAX_FRAME_BYTES });
    }
    // Supernode messages nest a few levels at most; a low limit stops deep garbage early.
    let message: SuperMessage<A> = ciborium::de::from_reader_with_recursion_limit(bytes, 16)
        .map_err(|e| SuperDecodeError::Malformed(e.to_string()))?;
    message.validate()?;
    Ok(message)
}
