//! Wire messages of the Chord protocol and their CBOR encoding.
//!
//! Every exchange is a request answered by exactly one response carrying the same [`RequestId`].
//! Decoding refuses input over a size cap before parsing it, never panics, and [`Message::validate`]
//! rejects what parses but cannot be honest (forged ids, over-long lists).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::address::{Address, NodeRef};
use crate::config::MAX_SUCCESSORS;
use crate::id::Id;

/// Default cap on one encoded ring message. Ring messages carry at most a few lists of
/// [`MAX_SUCCESSORS`] node references.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Most times one [`Request::Merge`] is passed on before it is dropped.
pub const MAX_MERGE_HOPS: u8 = 8;

/// Matches a response to its request; unique per sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// One message between two nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<A> {
    /// Asks the receiver for something; it answers with a [`Message::Response`] of the same id.
    Request {
        /// Chosen by the sender.
        id: RequestId,
        /// What is asked.
        body: Request<A>,
    },
    /// Answers the request with the same id.
    Response {
        /// The request's id.
        id: RequestId,
        /// The answer.
        body: Response<A>,
    },
}

/// Requests of the ring protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request<A> {
    /// Stabilize: "what are your predecessor and successor list?" A node stabilizing with its
    /// successor also says who precedes it: its predecessor and the nodes before that, nearest
    /// first (at most [`crate::node::PREDECESSORS`]), so that the successor learns the
    /// predecessors it replicates keys for ([`crate::kv::range`]). Empty from everyone else.
    GetNeighbours {
        /// The sender's predecessors, nearest first.
        #[serde(default = "Vec::new")]
        predecessors: Vec<NodeRef<A>>,
    },
    /// Rectify: "I believe I am your predecessor."
    Notify,
    /// Liveness check.
    Ping,
    /// One step of an iterative lookup for `target`.
    FindSuccessor {
        /// The id whose successor is sought.
        target: Id,
    },
    /// Graceful leave: the sender is leaving; these were its neighbours.
    Leaving {
        /// The sender's predecessor.
        predecessor: Option<NodeRef<A>>,
        /// The sender's successor list.
        successors: Vec<NodeRef<A>>,
    },
    /// Ring unification: `candidate` answered someone as a ring member but is missing from the
    /// sender's ring where it belongs (a healed partition). The receiver adopts it as successor if
    /// it lies between the receiver and its successor (after it answers), or passes the request on
    /// toward the node it should follow. Answered with [`Response::Ack`].
    Merge {
        /// The node to weave in.
        candidate: NodeRef<A>,
        /// Times this request has been passed on; at most [`MAX_MERGE_HOPS`].
        hops: u8,
    },
    /// "My successor list has just changed; this is it now", sent by a node to its predecessor.
    /// The receiver takes it as if its own stabilize had fetched it, but only from the node that
    /// is its successor. A backed-off predecessor thus learns of a change at once rather than a
    /// stabilize period later, and a change travels the r hops a successor list spans in round
    /// trips. Answered with [`Response::Ack`].
    SuccessorsChanged {
        /// The sender's successor list, nearest first.
        successors: Vec<NodeRef<A>>,
    },
}

/// Responses of the ring protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response<A> {
    /// Answer to [`Request::GetNeighbours`].
    Neighbours {
        /// The responder's predecessor, if it has one.
        predecessor: Option<NodeRef<A>>,
        /// The responder's successor list, nearest first.
        successors: Vec<NodeRef<A>>,
    },
    /// Answer to [`Request::Notify`], [`Request::Ping`], [`Request::Leaving`],
    /// [`Request::Merge`] and [`Request::SuccessorsChanged`].
    Ack,
    /// Answer to [`Request::FindSuccessor`].
    Route {
        /// Whether the responder is the target's successor: target ∈ (predecessor, responder].
        owner: bool,
        /// The responder's predecessor.
        predecessor: Option<NodeRef<A>>,
        /// The responder's successor list, nearest first (the owner's replicas when `owner`).
        successors: Vec<NodeRef<A>>,
        /// Nodes strictly between the responder and the target, closest to the target first; empty
        /// when the responder is the owner or the target lies within its successor list.
        closer: Vec<NodeRef<A>>,
    },
    /// The responder is not a ring member (still joining, or leaving) and cannot answer.
    Refused,
}

impl<A> Message<A> {
    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Request { body, .. } => match body {
                Request::GetNeighbours { .. } => "get_neighbours",
                Request::Notify => "notify",
                Request::Ping => "ping",
                Request::FindSuccessor { .. } => "find_successor",
                Request::Leaving { .. } => "leaving",
                Request::Merge { .. } => "merge",
                Request::SuccessorsChanged { .. } => "successors_changed",
            },
            Message::Response { body, .. } => match body {
                Response::Neighbours { .. } => "neighbours",
                Response::Ack => "ack",
                Response::Route { .. } => "route",
                Response::Refused => "refused",
            },
        }
    }
}

/// Why a received message was rejected after it parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InvalidMessage {
    /// A node reference's id is not SHA-1 of its address.
    #[error("node reference claims id {claimed} that its address does not hash to")]
    ForgedId {
        /// The claimed id.
        claimed: Id,
    },
    /// A merge request was passed on more often than any honest node does.
    #[error("merge request passed on {hops} times, more than {MAX_MERGE_HOPS}")]
    TooManyMergeHops {
        /// The hop count it carried.
        hops: u8,
    },
    /// A list is longer than any honest node sends.
    #[error("list of {len} node references exceeds the cap of {MAX_SUCCESSORS}")]
    ListTooLong {
        /// The list's length.
        len: usize,
    },
}

impl<A: Address> Message<A> {
    /// Checks what parsing cannot: every node reference is genuine and every list is bounded.
    pub fn validate(&self) -> Result<(), InvalidMessage> {
        fn check_ref<A: Address>(node: &NodeRef<A>) -> Result<(), InvalidMessage> {
            if node.is_genuine() { Ok(()) } else { Err(InvalidMessage::ForgedId { claimed: node.id }) }
        }
        fn check_list<A: Address>(list: &[NodeRef<A>]) -> Result<(), InvalidMessage> {
            if list.len() > MAX_SUCCESSORS {
                return Err(InvalidMessage::ListTooLong { len: list.len() });
            }
            list.iter().try_for_each(check_ref)
        }
        match self {
            Message::Request { body, .. } => match body {
                Request::Leaving { predecessor, successors } => {
                    predecessor.iter().try_for_each(check_ref)?;
                    check_list(successors)
                }
                Request::Merge { candidate, hops } => {
                    if *hops > MAX_MERGE_HOPS {
                        return Err(InvalidMessage::TooManyMergeHops { hops: *hops });
                    }
                    check_ref(candidate)
                }
                Request::SuccessorsChanged { successors } => check_list(successors),
                Request::GetNeighbours { predecessors } => check_list(predecessors),
                Request::Notify | Request::Ping | Request::FindSuccessor { .. } => Ok(()),
            },
            Message::Response { body, .. } => match body {
                Response::Neighbours { predecessor, successors } => {
                    predecessor.iter().try_for_each(check_ref)?;
                    check_list(successors)
                }
                Response::Route { predecessor, successors, closer, .. } => {
                    predecessor.iter().try_for_each(check_ref)?;
                    check_list(successors)?;
                    check_list(closer)
                }
                Response::Ack | Response::Refused => Ok(()),
            },
        }
    }
}

/// Why bytes could not be turned into a [`Message`].
#[derive(Debug, Error)]
pub enum DecodeError {
    /// The input is larger than the cap; it was not parsed.
    #[error("message of {len} bytes exceeds the cap of {max} bytes")]
    TooLarge {
        /// The input's length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The input is not a CBOR encoding of a message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The input parsed but is not an honest message.
    #[error(transparent)]
    Invalid(#[from] InvalidMessage),
}

/// Encodes a message as CBOR.
pub fn encode<A: Address>(message: &Message<A>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(128);
    ciborium::into_writer(message, &mut buf).expect("encoding into a Vec cannot fail");
    buf
}

/// Decodes and validates a message, refusing input longer than `max_bytes` before parsing it.
pub fn decode<A: Address>(bytes: &[u8], max_bytes: usize) -> Result<Message<A>, DecodeError> {
    if bytes.len() > max_bytes {
        return Err(DecodeError::TooLarge { len: bytes.len(), max: max_bytes });
    }
    // Ring messages nest only a few levels; a low recursion limit stops deeply nested garbage early.
    let message: Message<A> = ciborium::de::from_reader_with_recursion_limit(bytes, 32)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    message.validate()?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
    struct TestAddr(u64);
    impl Address for TestAddr {
        fn node_id(&self) -> Id {
            Id::hash(&self.0.to_be_bytes())
        }
    }

    fn node() -> impl Strategy<Value = NodeRef<TestAddr>> {
        any::<u64>().prop_map(|a| NodeRef::new(TestAddr(a)))
    }

    fn list() -> impl Strategy<Value = Vec<NodeRef<TestAddr>>> {
        proptest::collection::vec(node(), 0..MAX_SUCCESSORS)
    }

    fn message() -> impl Strategy<Value = Message<TestAddr>> {
        let request = prop_oneof![
            list().prop_map(|predecessors| Request::GetNeighbours { predecessors }),
            Just(Request::Notify),
            Just(Request::Ping),
            any::<[u8; 20]>().prop_map(|b| Request::FindSuccessor { target: Id::from_bytes(b) }),
            (proptest::option::of(node()), list())
                .prop_map(|(predecessor, successors)| Request::Leaving { predecessor, successors }),
            (node(), 0..=MAX_MERGE_HOPS).prop_map(|(candidate, hops)| Request::Merge { candidate, hops }),
            list().prop_map(|successors| Request::SuccessorsChanged { successors }),
        ];
        let response = prop_oneof![
            (proptest::option::of(node()), list())
                .prop_map(|(predecessor, successors)| Response::Neighbours { predecessor, successors }),
            Just(Response::Ack),
            Just(Response::Refused),
            (any::<bool>(), proptest::option::of(node()), list(), list()).prop_map(
                |(owner, predecessor, successors, closer)| Response::Route {
                    owner,
                    predecessor,
                    successors,
                    closer
                }
            ),
        ];
        prop_oneof![
            (any::<u64>(), request).prop_map(|(id, body)| Message::Request { id: RequestId(id), body }),
            (any::<u64>(), response).prop_map(|(id, body)| Message::Response { id: RequestId(id), body }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(msg in message()) {
            let bytes = encode(&msg);
            prop_assert!(bytes.len() <= MAX_MESSAGE_BYTES);
            let back: Message<TestAddr> = decode(&bytes, MAX_MESSAGE_BYTES).expect("own encoding decodes");
            prop_assert_eq!(back, msg);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode::<TestAddr>(&bytes, MAX_MESSAGE_BYTES);
        }

        #[test]
        fn mutated_messages_never_panic(msg in message(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = encode(&msg);
            for (pos, val) in flips {
                let len = bytes.len();
                bytes[pos % len] ^= val;
            }
            let _ = decode::<TestAddr>(&bytes, MAX_MESSAGE_BYTES);
        }

        #[test]
        fn truncated_messages_are_refused_not_panicked(msg in message(), cut in any::<usize>()) {
            let bytes = encode(&msg);
            let cut = cut % bytes.len();
            prop_assert!(decode::<TestAddr>(&bytes[..cut], MAX_MESSAGE_BYTES).is_err());
        }
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let bytes = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            decode::<TestAddr>(&bytes, MAX_MESSAGE_BYTES),
            Err(DecodeError::TooLarge { len, max }) if len == MAX_MESSAGE_BYTES + 1 && max == MAX_MESSAGE_BYTES
        ));
    }

    #[test]
    fn forged_id_is_refused() {
        let mut forged = NodeRef::new(TestAddr(1));
        forged.id = TestAddr(2).node_id();
        let msg = Message::Response {
            id: RequestId(1),
            body: Response::Neighbours { predecessor: Some(forged), successors: vec![] },
        };
        assert!(matches!(
            decode::<TestAddr>(&encode(&msg), MAX_MESSAGE_BYTES),
            Err(DecodeError::Invalid(InvalidMessage::ForgedId { .. }))
        ));
    }

    #[test]
    fn merge_passed_on_too_often_is_refused() {
        let msg = Message::Request {
            id: RequestId(1),
            body: Request::Merge { candidate: NodeRef::new(TestAddr(1)), hops: MAX_MERGE_HOPS + 1 },
        };
        assert!(matches!(
            decode::<TestAddr>(&encode(&msg), MAX_MESSAGE_BYTES),
            Err(DecodeError::Invalid(InvalidMessage::TooManyMergeHops { .. }))
        ));
    }

    #[test]
    fn over_long_list_is_refused() {
        let successors = (0..=MAX_SUCCESSORS as u64).map(|a| NodeRef::new(TestAddr(a))).collect();
        let msg = Message::Response {
            id: RequestId(1),
            body: Response::Neighbours { predecessor: None, successors },
        };
        assert!(matches!(
            decode::<TestAddr>(&encode(&msg), MAX_MESSAGE_BYTES),
            Err(DecodeError::Invalid(InvalidMessage::ListTooLong { .. }))
        ));
    }

    #[test]
    fn huge_declared_array_length_is_refused_without_allocating_it() {
        // {"Response": {"id": 1, "body": {"Neighbours": {"predecessor": null, "successors": [<2^32 items>
        let mut bytes = Vec::new();
        let value = ciborium::Value::Map(vec![(
            "Response".into(),
            ciborium::Value::Map(vec![
                ("id".into(), 1.into()),
                (
                    "body".into(),
                    ciborium::Value::Map(vec![(
                        "Neighbours".into(),
                        ciborium::Value::Map(vec![
                            ("predecessor".into(), ciborium::Value::Null),
                            ("successors".into(), ciborium::Value::Array(vec![])),
                        ]),
                    )]),
                ),
            ]),
        )]);
        ciborium::into_writer(&value, &mut bytes).expect("vec write");
        // The empty array's header is the last byte (0x80); replace it with a 4-byte length 2^32-1.
        assert_eq!(bytes.pop(), Some(0x80));
        bytes.extend_from_slice(&[0x9a, 0xff, 0xff, 0xff, 0xff]);
        assert!(decode::<TestAddr>(&bytes, MAX_MESSAGE_BYTES).is_err());
    }
}
