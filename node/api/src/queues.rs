//! Durable queues over HTTP: the documents of `/v1/queues/{q}/...`.
//!
//! - `POST /v1/queues/{q}/messages` with the body as the request body (at most
//!   [`MAX_QUEUE_MESSAGE_BYTES`]): appends it; `200` [`QueuePutReceipt`] once the queue's
//!   replicas hold it durably.
//! - `POST /v1/queues/{q}/take?wait=SECONDS&lease=SECONDS`: leases the first message, waiting up
//!   to `wait` (default 0: a poll) for one; `200` [`QueueItem`] with a `lease`, or `204` when
//!   nothing came in time. The message stays leased to this caller for `lease` seconds (default
//!   30) and must be acknowledged before that, or it is handed out again.
//! - `POST /v1/queues/{q}/ack` with a JSON [`QueueAck`]: removes a leased message; `200`
//!   [`QueueAckReceipt`] whose `outcome` says whether this acknowledgement is the one that
//!   counted (`removed`), or the message was acknowledged already (`gone`), or its lease ran out
//!   and another consumer holds it now (`leased_to_another`).
//! - `GET /v1/queues/{q}`: [`QueueStat`], the ordering node's figures.
//! - `GET /v1/queues/{q}/messages[?from=SEQ]`: `text/event-stream` of `event: message`
//!   ([`QueueItem`] without a lease) for every message put, without taking it (notify).
//!
//! A queue name is 1 to [`MAX_QUEUE_NAME_BYTES`] bytes of UTF-8 without control characters.
//! Bodies are opaque bytes: an item carries `body` when they are UTF-8 and `body_base64`
//! (standard alphabet, padded) otherwise. Fields are in alphabetical order (see the crate docs).

use serde::{Deserialize, Serialize};

use crate::ring::NodeInfo;

/// Longest queue name, in bytes.
pub const MAX_QUEUE_NAME_BYTES: usize = 200;
/// Largest message body, in bytes.
pub const MAX_QUEUE_MESSAGE_BYTES: usize = 64 * 1024;
/// Default lease of a take, in seconds.
pub const DEFAULT_LEASE_SECONDS: f64 = 30.0;

/// Why a string is not a queue name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidQueueName {
    /// Empty.
    #[error("a queue name must not be empty")]
    Empty,
    /// Too long.
    #[error("a queue name is at most {MAX_QUEUE_NAME_BYTES} bytes, not {0}")]
    TooLong(usize),
    /// A control character.
    #[error("a queue name must not contain control characters")]
    ControlCharacter,
}

/// Checks a queue name as the node does.
pub fn check_queue_name(name: &str) -> Result<(), InvalidQueueName> {
    if name.is_empty() {
        return Err(InvalidQueueName::Empty);
    }
    if name.len() > MAX_QUEUE_NAME_BYTES {
        return Err(InvalidQueueName::TooLong(name.len()));
    }
    if name.chars().any(char::is_control) {
        return Err(InvalidQueueName::ControlCharacter);
    }
    Ok(())
}

/// The answer to a put.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePutReceipt {
    /// The put's id (32 hex digits).
    pub id: String,
    /// The queue.
    pub queue: String,
    /// The message's sequence number (0: the put had been stored and taken already).
    pub seq: u64,
}

/// A message as a take or a notification returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueItem {
    /// The body, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body in base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// The put's id (32 hex digits).
    pub id: String,
    /// The lease token to acknowledge with (takes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// When it was put, ms since the Unix epoch (the entry node's clock).
    pub put_ms: u64,
    /// The queue.
    pub queue: String,
    /// Who put it, as the entry node named them.
    pub sender: String,
    /// Its sequence number.
    pub seq: u64,
}

/// An acknowledgement's request body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueAck {
    /// The put's id, as the take returned it.
    pub id: String,
    /// The lease token.
    pub lease: u64,
    /// The sequence number.
    pub seq: u64,
}

/// An acknowledgement's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueAckReceipt {
    /// `removed`, `gone` or `leased_to_another`.
    pub outcome: String,
}

/// A queue's figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStat {
    /// Body bytes held.
    pub bytes: u64,
    /// Distinct consumers holding a lease or waiting.
    pub consumers: u64,
    /// The ordering node's epoch.
    pub epoch: u64,
    /// The last sequence number stamped (0: none in this epoch).
    pub last_seq: u64,
    /// Messages leased and not yet acknowledged.
    pub leased: u64,
    /// Messages in the queue (leased ones included).
    pub len: u64,
    /// The queue.
    pub queue: String,
    /// The ordering node.
    pub root: NodeInfo,
    /// Subscribers (notify).
    pub subscribers: u64,
    /// Consumers blocked in a take.
    pub waiting: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        assert!(check_queue_name("jobs").is_ok());
        assert_eq!(check_queue_name(""), Err(InvalidQueueName::Empty));
        assert_eq!(check_queue_name(&"x".repeat(201)), Err(InvalidQueueName::TooLong(201)));
        assert_eq!(check_queue_name("a\nb"), Err(InvalidQueueName::ControlCharacter));
    }

    #[test]
    fn an_item_serialises_in_alphabetical_order_without_absent_fields() {
        let item = QueueItem {
            body: Some("hi".into()),
            body_base64: None,
            id: "00".into(),
            lease: None,
            put_ms: 5,
            queue: "q".into(),
            sender: "s".into(),
            seq: 7,
        };
        assert_eq!(
            serde_json::to_string(&item).unwrap_or_default(),
            r#"{"body":"hi","id":"00","put_ms":5,"queue":"q","sender":"s","seq":7}"#
        );
    }
}
