//! The HTTP API of `overlay-node`, written once for the node that serves it, the `overlay` CLI
//! and the end-to-end tests that call it.
//!
//! Owns:
//! - the JSON documents of every `/v1/...` endpoint, as serde types ([`ring`], [`kv`],
//!   [`groups`], [`queues`]) and the error body [`ErrorBody`];
//! - the consistency levels a request may ask for ([`Consistency`]);
//! - the documents of the chat endpoints ([`chat`]);
//! - the bearer token's names and the paths that never need it ([`auth`]);
//! - the rules for group names and sender labels ([`check_group_name`],
//!   [`check_sender_label`]), which the node enforces and the CLI checks before it asks;
//! - request paths and their percent-encoding ([`path`]);
//! - the reader of `text/event-stream` bodies ([`sse`]) and the typed events of a group's
//!   stream ([`GroupEvent`]);
//! - the ring-correctness verdict from the nodes' statuses ([`ring_check`]);
//! - with the `client` feature, a blocking client with one typed method per endpoint
//!   (`Client`).
//!
//! It holds no protocol logic: the node decides, this crate only names what crosses HTTP.
//!
//! # Byte compatibility
//! The node used to build its documents with `serde_json::json!`, whose maps serialise their keys
//! in sorted order. The fields of every response type here are declared in that same
//! (alphabetical) order, so the node's answers are byte for byte what they were, and the unit
//! tests compare serialised documents with literal JSON to keep it so. Unknown fields are
//! ignored when reading, so a newer node's additions do not break an older client.

pub mod auth;
pub mod chat;
pub mod consistency;
pub mod document;
pub mod groups;
pub mod kv;
pub mod path;
pub mod queues;
pub mod ring;
pub mod ring_check;
pub mod sse;

#[cfg(feature = "client")]
pub mod client;

pub use consistency::{Consistency, UnknownConsistency};
pub use document::Document;
pub use groups::{
    GroupEvent, GroupGap, GroupLeft, GroupList, GroupMessage, GroupReceipt, GroupSummary, GroupTree,
    InvalidGroupName, InvalidSenderLabel, MAX_GROUP_NAME_BYTES, MAX_MESSAGE_BYTES, MAX_SENDER_LABEL_BYTES,
    TreeNode, check_group_name, check_sender_label,
};
pub use kv::{
    CURRENT_VERSION_HEADER, Condition, ConflictBody, Lookup, PutReceipt, SIGNATURE_HEADER, SIGNER_HEADER,
    VERSION_HEADER,
};
pub use path::encode_path_segment;
pub use queues::{
    InvalidQueueName, MAX_QUEUE_MESSAGE_BYTES, MAX_QUEUE_NAME_BYTES, QueueAck, QueueAckReceipt, QueueItem,
    QueuePutReceipt, QueueStat, check_queue_name,
};
pub use ring::{Finger, NodeInfo, Ring, RingMember, Status};
pub use ring_check::{NeighbourView, RingCheck, check_ring, check_statuses};

#[cfg(feature = "client")]
pub use client::{
    ApiError, Client, GroupStream, Method, PutOutcome, QueueStream, RawResponse, Signature, StatusCode,
    StoredValue, StreamCloser,
};

use serde::{Deserialize, Serialize};

/// The body of every error answer: `{"error": "..."}`, also the data of a stream's
/// `event: error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in a sentence for people.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_is_one_field() {
        let literal = r#"{"error":"no such key"}"#;
        let body: ErrorBody = serde_json::from_str(literal).expect("an error body");
        assert_eq!(body.error, "no such key");
        assert_eq!(serde_json::to_string(&body).expect("serialises"), literal);
    }
}
