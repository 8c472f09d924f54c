//! Keys and values: the answer to a write (`PUT /v1/kv/{key}`), the version header of a read,
//! and where a key lives (`GET /v1/lookup/{key}`).
//!
//! Values themselves travel as raw bytes (request and response bodies), not JSON. A read answers
//! 200 with the value, 404 when the key has no live value, 503 without a quorum; a write 201
//! for a new key and 200 for an overwrite; a delete 204, or 404 when there was nothing to
//! delete. Fields are declared in alphabetical order (see the crate docs).

use serde::{Deserialize, Serialize};

use crate::ring::NodeInfo;

/// The response header of `GET /v1/kv/{key}` that carries the value's version; on a signed
/// `PUT` or `DELETE`, the request header that carries the version the owner signed.
pub const VERSION_HEADER: &str = "x-overlay-version";

/// Keys under `signed/` are written only with their owner's ed25519 signature (`overlay put
/// --sign`): a signed `PUT` or `DELETE /v1/kv/signed/...` carries the owner's public key in this
/// header (64 hex digits), the signature in [`SIGNATURE_HEADER`] and the signed version in
/// [`VERSION_HEADER`]. A read of a signed key answers with this header too: who signed the value.
/// A write signed by another key is refused 403; one whose version a replica already passed, 409
/// with the version held in [`CURRENT_VERSION_HEADER`] (sign again above it).
pub const SIGNER_HEADER: &str = "x-overlay-signer";

/// The request header of a signed write that carries the signature (128 hex digits).
pub const SIGNATURE_HEADER: &str = "x-overlay-signature";

/// What a conditional write (`PUT` or `DELETE /v1/kv/{key}?if-version=V` or `?if-absent`)
/// expects of the key's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The current version is exactly this one (as reads and writes report it).
    Version(String),
    /// The key has no live value.
    Absent,
}

/// The response header of a conditional write answered 412 that carries the current version (absent
/// when the key holds nothing).
pub const CURRENT_VERSION_HEADER: &str = "x-overlay-current-version";

/// Answer 412 to a conditional write whose condition did not hold: nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictBody {
    /// The key's current version, to pass as `if-version` on a retry; `null` when the key holds
    /// nothing at all.
    pub current_version: Option<String>,
    /// Whether the current state is a delete (a tombstone has a version too).
    pub deleted: bool,
    /// What happened, for people.
    pub error: String,
}

/// Answer to `PUT /v1/kv/{key}` (201 created, 200 overwritten).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutReceipt {
    /// The key, as the node decoded it from the path.
    pub key: String,
    /// Replicas that acknowledged the write before the answer (at least what the consistency
    /// level asked for).
    pub replicas_acked: u64,
    /// The version the write got, as text (also what [`VERSION_HEADER`] carries on reads).
    pub version: String,
}

/// `GET /v1/lookup/{key}`: the key's replica set, found from the answering node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lookup {
    /// How many hops the lookup took.
    pub hops: u32,
    /// The key.
    pub key: String,
    /// SHA-1 of the key: its position on the ring.
    pub key_id: String,
    /// The first node at or after `key_id`; `null` only if the lookup found no replica at all.
    pub owner: Option<NodeInfo>,
    /// The nodes that answered the lookup, hop by hop, in the order they answered: one per hop,
    /// ending with the owner, which confirmed it owns the key. Empty when the answering node owns
    /// the key (no hop). At most 64 entries (`hops` counts on past them); nodes that did not
    /// answer are not on it.
    #[serde(default)]
    pub path: Vec<NodeInfo>,
    /// The owner and its successors that hold copies, owner first.
    pub replicas: Vec<NodeInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: serde::de::DeserializeOwned + Serialize>(literal: &str) -> T {
        let parsed: T = serde_json::from_str(literal).expect("the literal follows the type");
        assert_eq!(serde_json::to_string(&parsed).expect("serialises"), literal);
        parsed
    }

    #[test]
    fn put_receipts_round_trip() {
        let receipt: PutReceipt =
            round_trip(r#"{"key":"greeting","replicas_acked":3,"version":"1763877600123.0-0a1b2c3d"}"#);
        assert_eq!(receipt.replicas_acked, 3);
        // The README lists the fields as key, version, replicas_acked; any order parses.
        let readme: PutReceipt = serde_json::from_str(
            r#"{"key":"greeting","version":"1763877600123.0-0a1b2c3d","replicas_acked":3}"#,
        )
        .expect("any field order");
        assert_eq!(readme, receipt);
    }

    #[test]
    fn lookups_round_trip() {
        let node = r#"{"addr":"/ip4/127.0.0.1/tcp/4001","peer_id":"12D3KooWA","ring_id":"0a00000000000000000000000000000000000000"}"#;
        let hop = r#"{"addr":"/ip4/127.0.0.1/tcp/4002","peer_id":"12D3KooWB","ring_id":"f000000000000000000000000000000000000000"}"#;
        let lookup: Lookup = round_trip(&format!(
            r#"{{"hops":2,"key":"a/b c","key_id":"09a0000000000000000000000000000000000000","owner":{node},"path":[{hop},{node}],"replicas":[{node}]}}"#
        ));
        assert_eq!(lookup.owner.as_ref(), lookup.replicas.first());
        assert_eq!(lookup.owner.as_ref(), lookup.path.last(), "the path ends at the owner");
        let ownerless: Lookup = round_trip(
            r#"{"hops":0,"key":"k","key_id":"09a0000000000000000000000000000000000000","owner":null,"path":[],"replicas":[]}"#,
        );
        assert!(ownerless.owner.is_none());
        // An answer from a node that predates the path.
        let older: Lookup = serde_json::from_str(
            r#"{"hops":1,"key":"k","key_id":"09a0000000000000000000000000000000000000","owner":null,"replicas":[]}"#,
        )
        .expect("parses without a path");
        assert!(older.path.is_empty());
    }
}
