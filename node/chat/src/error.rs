//! [`ChatError`]: every way a chat key, record or message can be refused.
//!
//! One enum for the whole crate, because its callers (the node's handlers, the CLI) map each
//! refusal to an HTTP status or a message for a person, and most operations can fail in several
//! of these ways at once. Variant docs say what the caller should do.

use std::path::PathBuf;

/// Why a chat key, record or message was refused or could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// A signature does not verify under the key the record names (forged or tampered with):
    /// drop the record.
    #[error("bad signature")]
    BadSignature,
    /// The envelope is sealed to another user's keys: this user cannot open it.
    #[error("the message is sealed to another recipient")]
    WrongRecipient,
    /// The signature is good but the ciphertext does not decrypt: the sender sealed it wrongly.
    #[error("the message does not decrypt")]
    Undecryptable,
    /// The record's validity ended at or before the present time (or it lies before the replay
    /// window): ask for a fresh one.
    #[error("expired")]
    Expired,
    /// The record starts later than the clock skew allows: check the clocks.
    #[error("not yet valid (issued in the future beyond the allowed clock skew)")]
    NotYetValid,
    /// A grant or presence record names another node than the one checking it.
    #[error("issued for another node")]
    WrongNode,
    /// A grant asks for more than [`crate::MAX_GRANT_LIFETIME_MS`]: issue a shorter one.
    #[error("grant lifetime {lifetime_ms} ms exceeds the cap of {max_ms} ms")]
    GrantTooLong {
        /// `expires_ms - issued_ms` of the grant.
        lifetime_ms: u64,
        /// The cap.
        max_ms: u64,
    },
    /// An input is over its size cap.
    #[error("{what} is {len} bytes, over the cap of {max}")]
    TooLarge {
        /// What was too large (a body, an encoded envelope, ...).
        what: &'static str,
        /// Its size.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The bytes do not decode, or decode to something impossible; the reason says what.
    #[error("malformed: {0}")]
    Malformed(String),
    /// A user or room name breaks the naming rule of [`crate::validate_name`].
    #[error(
        "invalid name {0:?}: 1 to 64 characters of a-z, 0-9, '_', '.' and '-', starting with a letter or digit"
    )]
    NameInvalid(String),
    /// Two records that must be about the same name are not.
    #[error("name mismatch: {expected:?} against {found:?}")]
    NameMismatch {
        /// The name the checker holds.
        expected: String,
        /// The name the record carries.
        found: String,
    },
    /// The record is signed by a key that does not own the name (or the grant is not the
    /// owner's): first come, first served.
    #[error("not signed by the name's owner")]
    NotOwner,
    /// The name has been released by its owner: it stands for nobody until claimed again.
    #[error("the name has been released")]
    Released,
    /// An update does not carry a newer version than the record it replaces.
    #[error("stale version {next}: the current version is {current}")]
    StaleVersion {
        /// The version held.
        current: u64,
        /// The version offered.
        next: u64,
    },
    /// The message was already seen, or is older than what the replay guard still remembers
    /// for its sender: drop it.
    #[error("replayed (or too old to tell)")]
    Replayed,
    /// [`crate::KeyDir::create`] for a name that already has keys.
    #[error("keys for {0:?} already exist")]
    KeyExists(String),
    /// [`crate::KeyDir::load`] for a name that has no keys.
    #[error("no keys for {0:?}")]
    KeyNotFound(String),
    /// A key file exists but does not hold a usable key: restore it from a backup.
    #[error("corrupt key file {path}: {reason}")]
    CorruptKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A key directory or key file is readable or writable by other users: fix its mode
    /// (0700 for the directory, 0600 for files) and check that nobody copied the keys.
    #[error("{path} is accessible to other users (mode {mode:o})")]
    InsecurePermissions {
        /// The directory or file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file system refused an operation on `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl ChatError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ChatError {
        let path = path.into();
        move |source| ChatError::Io { path, source }
    }
}
