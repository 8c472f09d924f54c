//! The cryptography and record formats of the overlay's chat, pure: no network, no async, no
//! clock (every time is an argument). The node uses it to verify, the CLI to sign, seal and open.
//!
//! # What lives here
//! - [`UserKeys`] / [`UserPublic`] ([`keys`]): a user is an ed25519 signing key plus a separate
//!   static X25519 sealing key, held only by the user's client.
//! - [`KeyDir`] ([`keydir`]): the client's directory of secret keys, one file per user name,
//!   written atomically with private modes.
//! - [`NameRecord`] ([`name`]): a user name bound to its owner's keys, first come, first served;
//!   [`validate_name`] is the naming rule for users and rooms.
//! - [`Grant`] and [`PresenceRecord`] ([`grant`]): a user's time-limited permission for one node
//!   to act for them, and the presence that node publishes under it.
//! - [`Envelope`] ([`envelope`]): a direct message sealed end to end and signed by its sender;
//!   the module docs specify the construction and the format, field by field.
//! - [`RoomMessage`] ([`room`]): a signed, unencrypted message to a room.
//! - [`ReplayGuard`] ([`replay`]): bounded memory of recent message ids per sender.
//! - [`ChatError`]: every refusal.
//!
//! # Signatures
//! Every signature is ed25519 over the CBOR encoding of the record's signed fields, led by a
//! domain tag of the form `"overlay/chat/<kind>/v1"` (the `DOMAIN` constant of each record type),
//! so that no signature is valid for two kinds of record; verification is strict (no weak keys,
//! no malleable signatures).
//!
//! # Encodings
//! Every record serializes with serde: in CBOR (`to_cbor` / `from_cbor`, the wire and store
//! form) binary fields are byte strings; in JSON (serde_json, the HTTP API's form) they are
//! base64url strings without padding. `from_cbor` checks the size cap before parsing and never
//! verifies signatures: call `verify` (or `verify_sender`, `open`) on what it returns.
//!
//! # What the caller must still check
//! A signature proves which keys signed, not that the keys own the name a record claims: check
//! an envelope's or room message's `from_key` against the current [`NameRecord`] of `from`, and
//! a sender should seal only to the `owner` of the recipient's verified name record (so that
//! `to_key` is the key of `to`). [`PresenceRecord::verify`] does this check itself, against the
//! name record it is given. Check freshness too: [`ReplayGuard`] for messages, `now_ms` for
//! grants and presences.
//!
//! # Typical use
//! - CLI: [`KeyDir::load_or_create`]; publish [`NameRecord::sign`]; log in by handing a node
//!   [`Grant::sign`]; send with [`Envelope::seal`] and [`RoomMessage::sign`]; read with
//!   [`Envelope::open`] and [`RoomMessage::verify`].
//! - Node: accept a name update only if [`NameRecord::verify`] (first claim) or
//!   [`NameRecord::verify_successor`] passes; on login, [`Grant::verify`] with its own key, then
//!   [`PresenceRecord::sign`] with its libp2p ed25519 key (converted to
//!   [`ed25519_dalek::SigningKey`]) and renew; route an envelope after
//!   [`Envelope::verify_sender`] and [`ReplayGuard::check_envelope`].

mod bytes;
pub mod envelope;
mod error;
pub mod grant;
pub mod keydir;
pub mod keys;
pub mod name;
pub mod replay;
pub mod room;
mod signing;

/// The ed25519 implementation the records use, so that callers convert their keys (the node's
/// libp2p identity) with the very same version.
pub use ed25519_dalek;
pub use envelope::{Envelope, MAX_BODY_BYTES, MAX_ENVELOPE_BYTES, MAX_ENVELOPE_JSON_BYTES, Plain};
pub use error::ChatError;
pub use grant::{Grant, MAX_CLOCK_SKEW_MS, MAX_GRANT_LIFETIME_MS, MAX_NODE_ADDR_BYTES, PresenceRecord};
pub use keydir::KeyDir;
pub use keys::{UserKeys, UserPublic};
pub use name::{MAX_NAME_LEN, NameRecord, validate_name};
pub use replay::{ReplayConfig, ReplayGuard};
pub use room::RoomMessage;

/// The largest CBOR-encoded name record, grant or presence record.
pub const MAX_RECORD_BYTES: usize = 4096;
