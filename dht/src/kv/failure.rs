//! Why a client operation of the coordinator failed ([`KvError`]): what the caller may retry,
//! what it must not, and what it must check before it knows.

use thiserror::Error;

use crate::error;
use crate::store::{Record, Version};

/// Why a client operation failed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum KvError {
    /// The value is larger than the node accepts: refuse it, retrying cannot help.
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
    /// Fewer replicas answered than the consistency level needs; the write may or may not have
    /// reached some replicas. Retry later.
    #[error("only {got} of the {needed} replicas needed answered")]
    NoQuorum {
        /// Replies needed.
        needed: usize,
        /// Replies received.
        got: usize,
    },
    /// Newer versions kept arriving at the replicas faster than this write could pass them
    /// (heavy concurrent writing of one key). Retry.
    #[error("the key was written concurrently {attempts} times while this write tried to pass")]
    Contended {
        /// Attempts made.
        attempts: u32,
    },
    /// A compare-and-set found the key in another state than expected; nothing was written.
    /// `current` is the state a quorum holds (`None`: no record at all), whose version a retry
    /// passes.
    #[error("the key is not in the expected state")]
    Conflict {
        /// The key's current record (a tombstone if deleted).
        current: Option<Box<Record>>,
    },
    /// A compare-and-set's write reached some replicas but could not be confirmed, and the key
    /// has moved on since: it may or may not have taken effect. Check with a linearizable read.
    #[error("the write may or may not have taken effect")]
    OutcomeUnknown,
    /// The key's owner could not be found.
    #[error("no route to the key's owner: {0}")]
    Lookup(error::LookupError),
    /// The local store failed.
    #[error("local storage failed: {0}")]
    Storage(String),
    /// The node refused the operation before starting it because it is overloaded (its storage
    /// queue is nearly full); nothing was written. Retry later.
    #[error("the node is busy: its storage queue is full; retry later")]
    Busy,
    /// The node is leaving the ring.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A write of a key under `signed/` without a valid signature of its owner, or a signature
    /// on another key ([`crate::signed`]); nothing was written.
    #[error("{0}")]
    Signature(crate::signed::SignatureError),
    /// Compare-and-set and linearizable reads run Paxos ballots that re-version records, which a
    /// signed key's owner alone may do; they do not apply to keys under `signed/`.
    #[error("compare-and-set and linearizable reads do not apply to keys under signed/")]
    SignedKeyCas,
    /// A signed write was refused because a replica holds a version at least as new: the owner
    /// signs again above `held` (the coordinator cannot re-version a signed record).
    #[error("a replica holds a newer version ({held}); sign again with a later one")]
    Superseded {
        /// The newest version a replica named.
        held: Version,
    },
    /// A signed write was refused because the replicas hold the key signed by another key: a
    /// signed key stays bound to the key that signed it first.
    #[error("the key is signed by another key; only its owner can write or delete it")]
    NotOwner,
    /// A signed record's version lies further ahead of this node's clock than
    /// [`KvConfig::max_future_skew`]: replicas would refuse it.
    #[error("the version {version} is too far ahead of this node's clock")]
    FromTheFuture {
        /// The version given.
        version: Version,
    },
}
