//! What lets a node speak for a user: the user's [`Grant`] to one node, and the
//! [`PresenceRecord`] that node publishes under it.
//!
//! Login hands a node a grant the user signed ("node N may act for me, as NAME, until T"); the
//! node then signs presence records with its own ed25519 key (the key its libp2p `PeerId` is
//! derived from) saying where the user can be reached and until when, and renews them. Anyone
//! holding the name's [`NameRecord`] can check the whole chain: the name's owner signed the grant,
//! the grant names the node that signed the presence, and the presence ends no later than the
//! grant.
//!
//! Invariants kept by `verify`:
//! - a grant lasts at most [`MAX_GRANT_LIFETIME_MS`], so a grant leaked by a node stops working
//!   within a day; it is refused once `now >= expires_ms`;
//! - a grant is not valid before its `issued_ms`, less [`MAX_CLOCK_SKEW_MS`] for clocks that
//!   disagree: a grant made out for later cannot be used early;
//! - a presence is valid only while its grant is.

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::{ChatError, NameRecord, UserKeys, bytes, signing, validate_name};

/// The longest lifetime of a grant (`expires_ms - issued_ms`): 24 hours.
pub const MAX_GRANT_LIFETIME_MS: u64 = 24 * 60 * 60 * 1000;

/// How far in the future a grant may be issued, for clocks that disagree: 2 minutes.
pub const MAX_CLOCK_SKEW_MS: u64 = 2 * 60 * 1000;

/// The longest node address in a presence record, in bytes.
pub const MAX_NODE_ADDR_BYTES: usize = 512;

/// A user's permission for one node to act for them under one name until `expires_ms`, signed by
/// the user's ed25519 key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The user name the node may act under.
    pub name: String,
    /// The user's ed25519 public key (the name record's `owner.sign`).
    #[serde(with = "bytes::fixed")]
    pub user: [u8; 32],
    /// The node's ed25519 public key, from which the node's libp2p `PeerId` is derived.
    #[serde(with = "bytes::fixed")]
    pub node: [u8; 32],
    /// When the user signed it, in milliseconds since the Unix epoch.
    pub issued_ms: u64,
    /// When it stops being valid, in milliseconds since the Unix epoch.
    pub expires_ms: u64,
    /// Random, so that two grants with the same fields differ (each login is its own grant).
    #[serde(with = "bytes::fixed")]
    pub nonce: [u8; 16],
    /// ed25519 signature by `user` over the fields above, domain [`Grant::DOMAIN`].
    #[serde(with = "bytes::fixed")]
    pub signature: [u8; 64],
}

#[derive(Serialize)]
struct GrantSigned<'a> {
    domain: &'static str,
    name: &'a str,
    #[serde(with = "bytes::fixed")]
    user: [u8; 32],
    #[serde(with = "bytes::fixed")]
    node: [u8; 32],
    issued_ms: u64,
    expires_ms: u64,
    #[serde(with = "bytes::fixed")]
    nonce: [u8; 16],
}

impl Grant {
    /// The domain tag of grant signatures.
    pub const DOMAIN: &'static str = "overlay/chat/grant/v1";

    /// The user's grant to the node whose ed25519 public key is `node`, valid from `issued_ms` to
    /// `expires_ms`. Refuses an invalid name, an empty lifetime or one over
    /// [`MAX_GRANT_LIFETIME_MS`].
    pub fn sign(
        user: &UserKeys,
        name: &str,
        node: [u8; 32],
        issued_ms: u64,
        expires_ms: u64,
    ) -> Result<Grant, ChatError> {
        let mut grant = Grant {
            name: name.to_owned(),
            user: user.public().sign,
            node,
            issued_ms,
            expires_ms,
            nonce: rand::random(),
            signature: [0; 64],
        };
        grant.check_fields()?;
        grant.signature = signing::sign(user.signing_key(), &grant.signed());
        Ok(grant)
    }

    fn signed(&self) -> GrantSigned<'_> {
        GrantSigned {
            domain: Self::DOMAIN,
            name: &self.name,
            user: self.user,
            node: self.node,
            issued_ms: self.issued_ms,
            expires_ms: self.expires_ms,
            nonce: self.nonce,
        }
    }

    fn check_fields(&self) -> Result<(), ChatError> {
        validate_name(&self.name)?;
        if self.expires_ms <= self.issued_ms {
            return Err(ChatError::Malformed("grant expires before it is issued".into()));
        }
        let lifetime_ms = self.expires_ms - self.issued_ms;
        if lifetime_ms > MAX_GRANT_LIFETIME_MS {
            return Err(ChatError::GrantTooLong { lifetime_ms, max_ms: MAX_GRANT_LIFETIME_MS });
        }
        Ok(())
    }

    /// Checks that the grant is well formed, signed by `user`, made out to the node whose
    /// ed25519 public key is `expected_node`, and valid at `now_ms`. Does not check that `user`
    /// owns the name: [`PresenceRecord::verify`] does, against the name record.
    pub fn verify(&self, expected_node: &[u8; 32], now_ms: u64) -> Result<(), ChatError> {
        self.check_fields()?;
        signing::verify(&self.user, &self.signed(), &self.signature)?;
        if &self.node != expected_node {
            return Err(ChatError::WrongNode);
        }
        if self.issued_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(ChatError::NotYetValid);
        }
        if now_ms >= self.expires_ms {
            return Err(ChatError::Expired);
        }
        Ok(())
    }

    /// Encodes the grant as CBOR.
    pub fn to_cbor(&self) -> Vec<u8> {
        signing::to_cbor(self)
    }

    /// Decodes a grant from CBOR (at most [`crate::MAX_RECORD_BYTES`]); does not verify it.
    pub fn from_cbor(bytes: &[u8]) -> Result<Grant, ChatError> {
        signing::from_cbor(bytes, crate::MAX_RECORD_BYTES, "grant")
    }
}

/// Where a user can be reached, published and signed by the node the user granted.
///
/// A node renews it (higher `seq`, later `until_ms`) while the user is logged in, and publishes
/// one with `online: false` at logout. Of two valid records for a name, the one with the higher
/// `seq` from the same node wins ([`PresenceRecord::supersedes`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRecord {
    /// The user name.
    pub name: String,
    /// The user's ed25519 public key.
    #[serde(with = "bytes::fixed")]
    pub user: [u8; 32],
    /// The publishing node's ed25519 public key.
    #[serde(with = "bytes::fixed")]
    pub node: [u8; 32],
    /// How to reach the node, opaque to this crate (a multiaddr, an HTTP URL).
    pub node_addr: String,
    /// Whether the user is logged in at the node.
    pub online: bool,
    /// When the record stops being valid, in milliseconds since the Unix epoch; at most the
    /// grant's `expires_ms`.
    pub until_ms: u64,
    /// Grows with every record the node publishes for the name.
    pub seq: u64,
    /// The user's grant that lets the node publish this.
    pub grant: Grant,
    /// ed25519 signature by `node` over the fields above (the grant included), domain
    /// [`PresenceRecord::DOMAIN`].
    #[serde(with = "bytes::fixed")]
    pub signature: [u8; 64],
}

#[derive(Serialize)]
struct PresenceSigned<'a> {
    domain: &'static str,
    name: &'a str,
    #[serde(with = "bytes::fixed")]
    user: [u8; 32],
    #[serde(with = "bytes::fixed")]
    node: [u8; 32],
    node_addr: &'a str,
    online: bool,
    until_ms: u64,
    seq: u64,
    grant: &'a Grant,
}

impl PresenceRecord {
    /// The domain tag of presence signatures.
    pub const DOMAIN: &'static str = "overlay/chat/presence/v1";

    /// The node's presence record for the user of `grant`. The name, user and node come from the
    /// grant and the node's key; refuses a grant for another node, a `node_addr` over
    /// [`MAX_NODE_ADDR_BYTES`], and an `until_ms` past the grant's expiry.
    pub fn sign(
        node_key: &SigningKey,
        grant: Grant,
        node_addr: &str,
        online: bool,
        until_ms: u64,
        seq: u64,
    ) -> Result<PresenceRecord, ChatError> {
        let mut record = PresenceRecord {
            name: grant.name.clone(),
            user: grant.user,
            node: node_key.verifying_key().to_bytes(),
            node_addr: node_addr.to_owned(),
            online,
            until_ms,
            seq,
            grant,
            signature: [0; 64],
        };
        record.check_fields()?;
        record.signature = signing::sign(node_key, &record.signed());
        Ok(record)
    }

    fn signed(&self) -> PresenceSigned<'_> {
        PresenceSigned {
            domain: Self::DOMAIN,
            name: &self.name,
            user: self.user,
            node: self.node,
            node_addr: &self.node_addr,
            online: self.online,
            until_ms: self.until_ms,
            seq: self.seq,
            grant: &self.grant,
        }
    }

    fn check_fields(&self) -> Result<(), ChatError> {
        validate_name(&self.name)?;
        if self.node_addr.len() > MAX_NODE_ADDR_BYTES {
            return Err(ChatError::TooLarge {
                what: "node address",
                len: self.node_addr.len(),
                max: MAX_NODE_ADDR_BYTES,
            });
        }
        if self.grant.name != self.name {
            return Err(ChatError::NameMismatch {
                expected: self.name.clone(),
                found: self.grant.name.clone(),
            });
        }
        if self.grant.user != self.user {
            return Err(ChatError::NotOwner);
        }
        if self.grant.node != self.node {
            return Err(ChatError::WrongNode);
        }
        if self.until_ms > self.grant.expires_ms {
            return Err(ChatError::Malformed("presence outlives its grant".into()));
        }
        Ok(())
    }

    /// Checks the whole chain against the name's current record: the name record verifies and is
    /// not released, it names this name, its owner signed the grant, the grant is valid at
    /// `now_ms` and made out to the node that signed this record, and the record is unexpired
    /// and ends no later than the grant.
    pub fn verify(&self, name_record: &NameRecord, now_ms: u64) -> Result<(), ChatError> {
        name_record.verify()?;
        if name_record.name != self.name {
            return Err(ChatError::NameMismatch {
                expected: name_record.name.clone(),
                found: self.name.clone(),
            });
        }
        if name_record.released {
            return Err(ChatError::Released);
        }
        if name_record.owner.sign != self.user {
            return Err(ChatError::NotOwner);
        }
        self.check_fields()?;
        self.grant.verify(&self.node, now_ms)?;
        signing::verify(&self.node, &self.signed(), &self.signature)?;
        if now_ms >= self.until_ms {
            return Err(ChatError::Expired);
        }
        Ok(())
    }

    /// Whether this record replaces `other`, both already verified: same name, and a higher
    /// `seq` from the same node, or a grant issued later (a new login, perhaps elsewhere).
    pub fn supersedes(&self, other: &PresenceRecord) -> bool {
        self.name == other.name
            && if self.node == other.node && self.grant.nonce == other.grant.nonce {
                self.seq > other.seq
            } else {
                self.grant.issued_ms > other.grant.issued_ms
            }
    }

    /// Encodes the record as CBOR.
    pub fn to_cbor(&self) -> Vec<u8> {
        signing::to_cbor(self)
    }

    /// Decodes a record from CBOR (at most [`crate::MAX_RECORD_BYTES`]); does not verify it.
    pub fn from_cbor(bytes: &[u8]) -> Result<PresenceRecord, ChatError> {
        signing::from_cbor(bytes, crate::MAX_RECORD_BYTES, "presence record")
    }
}
