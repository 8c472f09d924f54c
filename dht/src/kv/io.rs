//! The coordinator's contract with its driver: the store operations it asks for ([`StoreOp`]),
//! their results ([`StoreResult`]) and the storage-protocol messages it sends ([`KvTransmit`]).
//!
//! Owns only types. A driver performs each [`StoreOp`] against its store, in any order and at any
//! later time, and answers with [`crate::kv::Coordinator::handle_store_result`].

use crate::id::Id;
use crate::message::RequestId;
use crate::store::{BucketHash, Entry, KvRequest, KvResponse, Record, Version};

use super::IoId;

/// A store operation for the driver to perform, answered with [`Coordinator::handle_store_result`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// Write each record durably unless the store holds the same or a newer version of its key;
    /// answer [`StoreResult::Persisted`] once they are durable, one outcome per record, in order.
    Persist {
        /// The operation.
        io: IoId,
        /// The records.
        records: Vec<Record>,
    },
    /// Read these keys: [`StoreResult::Read`], one answer per key, in order (tombstones
    /// included).
    Read {
        /// The operation.
        io: IoId,
        /// The keys.
        keys: Vec<Vec<u8>>,
    },
    /// The digest of `(start, end]` ([`crate::store::digest`]): [`StoreResult::Digest`].
    Digest {
        /// The operation.
        io: IoId,
        /// Exclusive start.
        start: Id,
        /// Inclusive end.
        end: Id,
    },
    /// A page of entries of `(start, end]` in ring order, after the key id `after`, in the given
    /// digest buckets of the whole range (all with `None`): [`StoreResult::Entries`], at most
    /// `limit`. The store must start at the cursor, not scan the range from its start.
    Entries {
        /// The operation.
        io: IoId,
        /// Exclusive start of the whole range.
        start: Id,
        /// Inclusive end.
        end: Id,
        /// Digest buckets of `(start, end]` to list.
        buckets: Option<Vec<u16>>,
        /// Continue after this key id.
        after: Option<Id>,
        /// Most entries.
        limit: usize,
    },
    /// A page of whole records of `(start, end]` in ring order after `after`:
    /// [`StoreResult::Records`], at most `limit`.
    Records {
        /// The operation.
        io: IoId,
        /// Exclusive start.
        start: Id,
        /// Inclusive end.
        end: Id,
        /// Continue after this key id.
        after: Option<Id>,
        /// Most records.
        limit: usize,
    },
    /// Drop the stored record of each entry's key if it is at exactly that version (a newer one
    /// stays): [`StoreResult::Removed`] with how many went. Used only for copies of keys this
    /// node does not replicate, whose replica set holds them; it needs no durability (a removal
    /// lost in a crash brings back a copy that is moved again).
    Remove {
        /// The operation.
        io: IoId,
        /// The keys and the versions to drop.
        entries: Vec<Entry>,
    },
}

impl StoreOp {
    /// The operation's id.
    pub fn io(&self) -> IoId {
        match self {
            StoreOp::Persist { io, .. }
            | StoreOp::Read { io, .. }
            | StoreOp::Digest { io, .. }
            | StoreOp::Entries { io, .. }
            | StoreOp::Records { io, .. }
            | StoreOp::Remove { io, .. } => *io,
        }
    }
}

/// The outcome of persisting one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersistOutcome {
    /// The record was newer than what the store held (or the key was absent) and is now durable.
    pub applied: bool,
    /// A live (non-tombstone) record for the key was held before.
    pub existed: bool,
    /// When not applied: the version the store holds, the same as or newer than the record's.
    pub held: Option<Version>,
}

/// The driver's answer to a [`StoreOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreResult {
    /// The records of a [`StoreOp::Persist`] are durable.
    Persisted(Vec<PersistOutcome>),
    /// The answers of a [`StoreOp::Read`].
    Read(Vec<Option<Record>>),
    /// The digest of a [`StoreOp::Digest`].
    Digest(Vec<BucketHash>),
    /// A page of a [`StoreOp::Entries`].
    Entries {
        /// The entries, in ring order.
        entries: Vec<Entry>,
        /// More follow the last one.
        truncated: bool,
    },
    /// A page of a [`StoreOp::Records`].
    Records {
        /// The records, in ring order.
        records: Vec<Record>,
        /// More follow the last one.
        truncated: bool,
    },
    /// Records dropped by a [`StoreOp::Remove`].
    Removed(u64),
    /// The store failed (I/O error, corrupt row, closed). Nothing of a failed persist may be
    /// counted on.
    Failed(String),
}

/// A message of the storage protocol, as the coordinator sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvMessage {
    /// A request; answer it with a response carrying the same id.
    Request {
        /// Chosen by the sender.
        id: RequestId,
        /// The request.
        body: KvRequest,
    },
    /// The answer to a peer's request (`id` is the one [`Coordinator::handle_request`] got).
    Response {
        /// The request's id.
        id: RequestId,
        /// The answer.
        body: KvResponse,
    },
}

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvTransmit<A> {
    /// The recipient.
    pub to: A,
    /// The message.
    pub message: KvMessage,
}
