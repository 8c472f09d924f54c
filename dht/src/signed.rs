//! Signed records: keys under `signed/` that only the holder of one ed25519 key can write.
//!
//! Owns the rules of the `signed/` namespace (issue 11), which the replicas enforce on every record
//! they receive, so no peer can forge, overwrite, delete or roll back a signed key however it
//! speaks the protocol:
//! - a record whose key starts with [`SIGNED_PREFIX`] carries an [`Owner`]: an ed25519 public key
//!   (the kind libp2p identities use) and its signature over the key, the value, the version and
//!   the tombstone flag, under a domain tag so the signature means nothing elsewhere. A record of
//!   any other key carries none: ordinary keys stay open to every client, as before.
//! - the version's writer is the SHA-1 of the public key ([`writer_of`]), so two owners never tie
//!   and the version a client reads names who wrote it.
//! - the signer chooses the version, and the signature covers it: nobody can re-date an old value
//!   to pass a newer one (a roll-back), and the coordinator never re-versions a signed record as
//!   it does ordinary writes; a write refused as older fails and the owner signs again above the
//!   version named ([`crate::kv::KvError::Superseded`]).
//! - a key is bound to the key that signed the first version a replica holds: a record signed by
//!   another key never supersedes it ([`crate::store::Record::supersedes`]), whatever its version,
//!   and deletes are tombstones signed by the owner, so the binding outlives a delete.
//!
//! Verification is `verify_strict` (no small-order keys, no malleable signatures). A record that
//! fails any rule is not intact ([`crate::store::Record::is_intact`]): refused on receipt, as a
//! corrupt one is, and skipped when read from disk.
//!
//! What it does not do: the first write a replica sees wins the name, as with any
//! trust-on-first-use binding; two owners racing for a fresh name on different replicas leave the
//! newest version readable until one of them writes again.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use thiserror::Error;

use crate::id::Id;
use crate::store::{Owner, Record, Version};

/// The namespace of signed keys.
pub const SIGNED_PREFIX: &[u8] = b"signed/";

/// What a signature covers first, so that it is worthless for anything but a record.
const DOMAIN: &[u8] = b"overlay/signed-record/v1";

/// Whether `key` lies in the signed namespace.
pub fn is_signed_key(key: &[u8]) -> bool {
    key.starts_with(SIGNED_PREFIX)
}

/// The writer id of versions signed with `public_key`.
pub fn writer_of(public_key: &[u8; 32]) -> Id {
    Id::hash(public_key)
}

/// Why a record breaks the signed namespace's rules.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum SignatureError {
    /// A key under `signed/` without a signature.
    #[error("keys under signed/ are written only with their owner's signature (overlay put --sign)")]
    Missing,
    /// A signature on a key outside `signed/`.
    #[error("only keys under signed/ carry a signature")]
    Unexpected,
    /// A public key or signature of the wrong length, or a public key that is not one.
    #[error("the signature or public key is malformed")]
    Malformed,
    /// The version's writer is not the signer.
    #[error("the version's writer is not the signing key")]
    WrongWriter,
    /// The signature does not verify.
    #[error("the signature does not verify")]
    Invalid,
}

/// The bytes an owner signs: the domain tag, then the length-prefixed key and value, the version
/// and the tombstone flag.
fn signed_bytes(key: &[u8], value: &[u8], version: &Version, tombstone: bool) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(DOMAIN.len() + key.len() + value.len() + 45);
    bytes.extend_from_slice(DOMAIN);
    bytes.extend_from_slice(&(key.len() as u64).to_be_bytes());
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(&(value.len() as u64).to_be_bytes());
    bytes.extend_from_slice(value);
    bytes.extend_from_slice(&version.hlc.to_be_bytes());
    bytes.extend_from_slice(version.writer.as_bytes());
    bytes.push(u8::from(tombstone));
    bytes
}

/// A record of `key` signed with `signing`: `value`, or a tombstone for `None`, at clock reading
/// `hlc` (milliseconds since the Unix epoch in the high 48 bits, a counter in the low 16; see
/// [`Version`]).
pub fn sign(key: Vec<u8>, value: Option<Vec<u8>>, hlc: u64, signing: &SigningKey) -> Record {
    let public_key = signing.verifying_key().to_bytes();
    let version = Version { hlc, writer: writer_of(&public_key) };
    let mut record = match value {
        Some(value) => Record::new(key, value, version),
        None => Record::tombstone(key, version),
    };
    let signature = signing.sign(&signed_bytes(&record.key, &record.value, &version, record.tombstone));
    record.owner = Some(Owner { public_key: public_key.to_vec(), signature: signature.to_bytes().to_vec() });
    record
}

/// Checks `record` against the namespace's rules (see the module docs).
pub fn check(record: &Record) -> Result<(), SignatureError> {
    let owner = match (&record.owner, is_signed_key(&record.key)) {
        (None, false) => return Ok(()),
        (None, true) => return Err(SignatureError::Missing),
        (Some(_), false) => return Err(SignatureError::Unexpected),
        (Some(owner), true) => owner,
    };
    let public_key: [u8; 32] =
        owner.public_key.as_slice().try_into().map_err(|_| SignatureError::Malformed)?;
    let signature: [u8; 64] = owner.signature.as_slice().try_into().map_err(|_| SignatureError::Malformed)?;
    if record.version.writer != writer_of(&public_key) {
        return Err(SignatureError::WrongWriter);
    }
    let verifying = VerifyingKey::from_bytes(&public_key).map_err(|_| SignatureError::Malformed)?;
    let bytes = signed_bytes(&record.key, &record.value, &record.version, record.tombstone);
    verifying.verify_strict(&bytes, &Signature::from_bytes(&signature)).map_err(|_| SignatureError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    const HLC: u64 = 1_700_000_000_000 << 16;

    #[test]
    fn a_signed_record_verifies_and_every_field_is_covered() {
        let record = sign(b"signed/alice".to_vec(), Some(b"v1".to_vec()), HLC, &key(1));
        assert_eq!(check(&record), Ok(()));
        assert!(record.is_intact());

        let mut value = record.clone();
        value.value = b"v2".to_vec();
        value.checksum = value.compute_checksum();
        assert_eq!(check(&value), Err(SignatureError::Invalid));

        // Re-dated by someone else: the roll-back a signature over the version prevents.
        let mut redated = record.clone();
        redated.version.hlc += 1;
        redated.checksum = redated.compute_checksum();
        assert_eq!(check(&redated), Err(SignatureError::Invalid));

        let mut deleted = record.clone();
        deleted.tombstone = true;
        deleted.value.clear();
        deleted.checksum = deleted.compute_checksum();
        assert_eq!(check(&deleted), Err(SignatureError::Invalid));

        let mut renamed = record.clone();
        renamed.key = b"signed/mallory".to_vec();
        renamed.checksum = renamed.compute_checksum();
        assert_eq!(check(&renamed), Err(SignatureError::Invalid));
        assert!(!renamed.is_intact());
    }

    #[test]
    fn the_namespace_decides_whether_a_signature_is_required() {
        let unsigned = Record::new(
            b"signed/alice".to_vec(),
            b"v".to_vec(),
            Version { hlc: HLC, writer: Id::hash(b"n") },
        );
        assert_eq!(check(&unsigned), Err(SignatureError::Missing));
        assert!(!unsigned.is_intact());

        let open = sign(b"plain".to_vec(), Some(b"v".to_vec()), HLC, &key(1));
        assert_eq!(check(&open), Err(SignatureError::Unexpected));
        let plain =
            Record::new(b"plain".to_vec(), b"v".to_vec(), Version { hlc: HLC, writer: Id::hash(b"n") });
        assert_eq!(check(&plain), Ok(()));
    }

    #[test]
    fn another_key_cannot_pass_off_its_signature_as_the_owners() {
        let alice = sign(b"signed/alice".to_vec(), Some(b"v".to_vec()), HLC, &key(1));
        let mallory = sign(b"signed/alice".to_vec(), Some(b"forged".to_vec()), HLC + 1, &key(2));
        assert_eq!(check(&mallory), Ok(()), "a valid signature of another key");
        assert!(!mallory.supersedes(&alice), "but it never replaces the owner's record");
        let newer = sign(b"signed/alice".to_vec(), None, HLC + 1, &key(1));
        assert!(newer.supersedes(&alice), "the owner's newer tombstone does");

        // Mallory's public key with alice's writer, or alice's public key on mallory's signature.
        let mut borrowed = mallory.clone();
        borrowed.version.writer = alice.version.writer;
        borrowed.checksum = borrowed.compute_checksum();
        assert_eq!(check(&borrowed), Err(SignatureError::WrongWriter));
        let mut swapped = mallory.clone();
        swapped.owner.as_mut().expect("signed").public_key = alice.owner.clone().expect("signed").public_key;
        assert_eq!(check(&swapped), Err(SignatureError::WrongWriter));

        let mut short = alice.clone();
        short.owner.as_mut().expect("signed").signature.pop();
        assert_eq!(check(&short), Err(SignatureError::Malformed));
    }

    #[test]
    fn a_signed_record_survives_cbor_and_an_unsigned_one_encodes_as_before() {
        let record = sign(b"signed/alice".to_vec(), Some(b"v".to_vec()), HLC, &key(3));
        let mut bytes = Vec::new();
        ciborium::into_writer(&record, &mut bytes).expect("encodes");
        let back: Record = ciborium::from_reader(bytes.as_slice()).expect("decodes");
        assert_eq!(back, record);
        assert!(back.is_intact());

        let plain = Record::new(b"k".to_vec(), b"v".to_vec(), Version { hlc: HLC, writer: Id::hash(b"n") });
        let mut bytes = Vec::new();
        ciborium::into_writer(&plain, &mut bytes).expect("encodes");
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("owner"), "no owner field on unsigned records");
    }
}
