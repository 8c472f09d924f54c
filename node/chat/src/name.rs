//! User and room names ([`validate_name`]) and the signed record that binds a user name to its
//! owner's keys ([`NameRecord`]).
//!
//! Ownership is first come, first served: the first valid record stored for a name makes its
//! signer the owner; after that the name's record changes only by a successor the same owner
//! signed with a higher version ([`NameRecord::verify_successor`]). The owner may rotate the
//! sealing key (same signing key, new `seal`), or release the name (`released: true`), after
//! which anyone may claim it again, still with a higher version so that old records never win.

use serde::{Deserialize, Serialize};

use crate::{ChatError, UserKeys, UserPublic, bytes, signing};

/// The longest user or room name, in bytes (= characters: names are ASCII).
pub const MAX_NAME_LEN: usize = 64;

/// Checks a user or room name: 1 to [`MAX_NAME_LEN`] characters of `a-z`, `0-9`, `_`, `.` and
/// `-`, the first a letter or digit. Lower case only, so that two names that look the same are
/// the same name; a letter or digit first, so that no name is a dot segment (`.`, `..`) that URL
/// paths would collapse, a hidden file in the key directory, or a command-line flag (`-x`).
pub fn validate_name(name: &str) -> Result<(), ChatError> {
    let ok = name.len() <= MAX_NAME_LEN
        && matches!(name.as_bytes().first(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'));
    if ok { Ok(()) } else { Err(ChatError::NameInvalid(name.to_owned())) }
}

/// A user name's binding to its owner's keys, signed by the owner's ed25519 key.
///
/// Stored under `user/<name>`. JSON form: `{"name", "owner": {"sign", "seal"}, "version",
/// "released", "issued_ms", "signature"}` with binary fields as base64url strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRecord {
    /// The user name ([`validate_name`]).
    pub name: String,
    /// The owner's public keys.
    pub owner: UserPublic,
    /// Grows with every update by the owner.
    pub version: u64,
    /// The owner gave the name up: it stands for nobody.
    pub released: bool,
    /// When the owner signed it, in milliseconds since the Unix epoch (informative).
    pub issued_ms: u64,
    /// ed25519 signature by `owner.sign` over the fields above, domain [`NameRecord::DOMAIN`].
    #[serde(with = "bytes::fixed")]
    pub signature: [u8; 64],
}

#[derive(Serialize)]
struct NameSigned<'a> {
    domain: &'static str,
    name: &'a str,
    owner: &'a UserPublic,
    version: u64,
    released: bool,
    issued_ms: u64,
}

impl NameRecord {
    /// The domain tag of name record signatures.
    pub const DOMAIN: &'static str = "overlay/chat/name/v1";

    /// The owner's signed record for `name`.
    pub fn sign(
        owner: &UserKeys,
        name: &str,
        version: u64,
        released: bool,
        issued_ms: u64,
    ) -> Result<NameRecord, ChatError> {
        validate_name(name)?;
        let mut record = NameRecord {
            name: name.to_owned(),
            owner: owner.public(),
            version,
            released,
            issued_ms,
            signature: [0; 64],
        };
        record.signature = signing::sign(owner.signing_key(), &record.signed());
        Ok(record)
    }

    fn signed(&self) -> NameSigned<'_> {
        NameSigned {
            domain: Self::DOMAIN,
            name: &self.name,
            owner: &self.owner,
            version: self.version,
            released: self.released,
            issued_ms: self.issued_ms,
        }
    }

    /// Checks the name and that `owner.sign` signed the record. Says nothing about whether the
    /// signer owns the name: that is what the stored predecessor decides
    /// ([`NameRecord::verify_successor`]).
    pub fn verify(&self) -> Result<(), ChatError> {
        validate_name(&self.name)?;
        signing::verify(&self.owner.sign, &self.signed(), &self.signature)
    }

    /// Whether `next` may replace `prev`, the record stored for the name: both verify, they name
    /// the same name, `next` has a higher version, and `next` is signed by `prev`'s owner unless
    /// `prev` released the name (then it is a new claim, by anyone).
    pub fn verify_successor(prev: &NameRecord, next: &NameRecord) -> Result<(), ChatError> {
        prev.verify()?;
        next.verify()?;
        if next.name != prev.name {
            return Err(ChatError::NameMismatch { expected: prev.name.clone(), found: next.name.clone() });
        }
        if !prev.released && next.owner.sign != prev.owner.sign {
            return Err(ChatError::NotOwner);
        }
        if next.version <= prev.version {
            return Err(ChatError::StaleVersion { current: prev.version, next: next.version });
        }
        Ok(())
    }

    /// Encodes the record as CBOR.
    pub fn to_cbor(&self) -> Vec<u8> {
        signing::to_cbor(self)
    }

    /// Decodes a record from CBOR (at most [`crate::MAX_RECORD_BYTES`]); does not verify it.
    pub fn from_cbor(bytes: &[u8]) -> Result<NameRecord, ChatError> {
        signing::from_cbor(bytes, crate::MAX_RECORD_BYTES, "name record")
    }
}
