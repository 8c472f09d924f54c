//! Domain-separated ed25519 signatures over CBOR.
//!
//! Every signed record of this crate is signed over the CBOR encoding of a private struct that
//! lists the signed fields, the first of which is the record kind's domain tag
//! (`"overlay/chat/<kind>/v<N>"`). The tag makes a signature for one kind of record worthless as
//! a signature for any other kind, even if their fields happened to encode alike, and lets a kind
//! change its format by changing its version. ciborium encodes a struct as a map whose keys follow
//! the declaration order, so the bytes signed are a pure function of the field values.
//!
//! Verification uses `verify_strict`: it refuses small-order public keys and non-canonical
//! signatures, so one message has one valid signature per key (no malleability to slip past
//! replay checks that key on signatures).

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::Serialize;

use crate::ChatError;

/// The CBOR bytes a record's signature covers.
pub(crate) fn signed_bytes(fields: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(fields, &mut out)
        .expect("CBOR-encoding plain structs into a Vec has no failure path");
    out
}

pub(crate) fn sign(key: &SigningKey, fields: &impl Serialize) -> [u8; 64] {
    key.sign(&signed_bytes(fields)).to_bytes()
}

pub(crate) fn verify(key: &[u8; 32], fields: &impl Serialize, signature: &[u8; 64]) -> Result<(), ChatError> {
    let key = VerifyingKey::from_bytes(key).map_err(|_| ChatError::BadSignature)?;
    key.verify_strict(&signed_bytes(fields), &Signature::from_bytes(signature))
        .map_err(|_| ChatError::BadSignature)
}

/// Encodes a record for the wire.
pub(crate) fn to_cbor(value: &impl Serialize) -> Vec<u8> {
    signed_bytes(value)
}

/// Decodes a record from the wire, refusing more than `max` bytes before parsing anything.
pub(crate) fn from_cbor<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    max: usize,
    what: &'static str,
) -> Result<T, ChatError> {
    if bytes.len() > max {
        return Err(ChatError::TooLarge { what, len: bytes.len(), max });
    }
    ciborium::from_reader(bytes).map_err(|e| ChatError::Malformed(format!("{what}: {e}")))
}
