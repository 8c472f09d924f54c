//! Wire messages of the multicast protocol, their CBOR encoding, the size cap and validation.
//!
//! Every multicast message is one-way: the transport's acknowledgement carries nothing, so
//! replies (`JoinAck`, `RefreshAck`, `PublishAck`, `FetchReply`, `ReplicateAck`) are messages of
//! their own, matched to what they answer by group, sender and, where several may be in flight,
//! an id. Decoding refuses input over a size cap before parsing it and never panics;
//! [`GroupMessage::validate`] rejects what parses but cannot be honest (bad group names,
//! oversized bodies, over-long batches, sequence number 0, forged node references).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::address::{Address, NodeRef};
use crate::id::Id;

/// Longest group name, in bytes of UTF-8.
pub const MAX_GROUP_NAME_BYTES: usize = 128;
/// Largest message body any node accepts (the default [`super::MulticastConfig::max_body_bytes`]).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest `from` label (the publisher's user name), in bytes.
pub const MAX_FROM_BYTES: usize = 256;
/// Default cap on one encoded multicast frame: one full-size body plus headroom for the headers.
pub const MAX_GROUP_FRAME_BYTES: usize = MAX_BODY_BYTES + 16 * 1024;
/// Most stamped messages in one frame (history replies, replication, hand-off).
pub const MAX_BATCH: usize = 256;
/// Most ancestors a tree path in an acknowledgement names (deeper branches are cycles).
pub const MAX_PATH: usize = 64;

/// A node's short id in tree paths: the first 8 bytes of its ring id.
pub fn short_id(id: &Id) -> u64 {
    let b = id.as_bytes();
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Largest sequence number a message may carry (2^53: exact in JSON, and far from overflow when
/// anyone adds to it). A group numbering a million messages a second takes 285 years to get there.
pub const MAX_SEQ: u64 = 1 << 53;

/// Most hops a routed message (join, publish, fetch) travels before it is dropped: a routing
/// loop while the ring repairs must not circulate forever.
pub const MAX_ROUTE_HOPS: u8 = 64;

/// A group's name: 1..=128 bytes of UTF-8 without control characters. Its id on the ring is
/// [`GroupName::id`] = SHA-1 of the name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupName(String);

/// Why a string is not a valid group name.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum InvalidGroupName {
    /// Names have at least one byte.
    #[error("group name is empty")]
    Empty,
    /// Names have at most [`MAX_GROUP_NAME_BYTES`] bytes.
    #[error("group name of {0} bytes exceeds {MAX_GROUP_NAME_BYTES}")]
    TooLong(usize),
    /// Control characters would corrupt logs and terminals.
    #[error("group name contains a control character")]
    ControlCharacter,
}

impl GroupName {
    /// Checks and wraps `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidGroupName> {
        let name = GroupName(name.into());
        name.check()?;
        Ok(name)
    }

    fn check(&self) -> Result<(), InvalidGroupName> {
        if self.0.is_empty() {
            return Err(InvalidGroupName::Empty);
        }
        if self.0.len() > MAX_GROUP_NAME_BYTES {
            return Err(InvalidGroupName::TooLong(self.0.len()));
        }
        if self.0.chars().any(char::is_control) {
            return Err(InvalidGroupName::ControlCharacter);
        }
        Ok(())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The group's ring id `mid` = SHA-1(name); its tree is rooted at `succ(mid)`.
    pub fn id(&self) -> Id {
        Id::hash(self.0.as_bytes())
    }
}

impl std::fmt::Display for GroupName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message the root has stamped with its place in the group's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped<A> {
    /// Position in the group's order, from 1, gap-free as assigned by the root.
    pub seq: u64,
    /// The publishing user's label.
    pub from: String,
    /// The payload.
    #[serde(with = "crate::bytes")]
    pub body: Vec<u8>,
    /// The publisher's wall-clock timestamp, milliseconds (opaque to the core).
    pub ts_ms: u64,
    /// The publishing node; with `publish_id` it lets a root recognise a retried publish.
    pub origin: A,
    /// The publisher's id for this publish.
    pub publish_id: u64,
    /// The numbering `seq` belongs to ([`super::epoch`]): a root that starts numbering starts a
    /// new epoch, so (`epoch`, `seq`) names one message even when two roots numbered from one
    /// head during a partition. 0 from a node that predates epochs.
    #[serde(default)]
    pub epoch: u64,
    /// The epoch this one continues: numbers up to `base` are that epoch's lineage.
    #[serde(default)]
    pub parent: u64,
    /// The epoch's fork point: every lineage merged into this epoch agrees on the numbers up to
    /// `base`; a member on another lineage re-reads from `base + 1`. Below `seq`.
    #[serde(default)]
    pub base: u64,
}

impl<A> Stamped<A> {
    /// A rough upper bound of the encoded size, for packing batches under the frame cap.
    pub fn approx_size(&self) -> usize {
        self.body.len() + self.from.len() + 96
    }
}

/// One multicast message between two nodes. All are one-way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupMessage<A> {
    /// "Make me your child in `group`'s tree." Routed toward `mid` one hop at a time: a node not
    /// in the tree becomes a forwarder and sends its own join onward (`hops` + 1).
    Join {
        /// The group.
        group: GroupName,
        /// Hops travelled so far (bounded by [`MAX_ROUTE_HOPS`]).
        hops: u8,
    },
    /// Answer to `Join`: the sender adopted the receiver as a child.
    JoinAck {
        /// The group.
        group: GroupName,
        /// The sender's depth below the root (0 = root), `None` while it is not attached.
        depth: Option<u16>,
        /// The highest sequence number released by the root, as the sender knows it.
        head: Option<u64>,
        /// The root's address, if the sender knows it.
        root: Option<A>,
        /// Short ids ([`short_id`]) of the sender's ancestors, its parent first: a node that finds
        /// itself there would close a cycle.
        path: Vec<u64>,
    },
    /// Answer to `Join` from a parent with too many children: re-attach under `to` instead.
    Redirect {
        /// The group.
        group: GroupName,
        /// One of the sender's children, closest before the receiver on the ring.
        to: NodeRef<A>,
    },
    /// "I am no longer your parent (leaving, or no longer in the tree): route a join again."
    Rejoin {
        /// The group.
        group: GroupName,
    },
    /// A child's periodic "I am still your child".
    Refresh {
        /// The group.
        group: GroupName,
    },
    /// Answer to `Refresh`, with what the parent knows of the group.
    RefreshAck {
        /// The group.
        group: GroupName,
        /// The sender's depth below the root, `None` while detached.
        depth: Option<u16>,
        /// The highest sequence number released by the root, as the sender knows it.
        head: Option<u64>,
        /// The root's address, if known.
        root: Option<A>,
        /// Short ids of the sender's ancestors, its parent first.
        path: Vec<u64>,
    },
    /// "Remove me from your children": the sender left the group and has no children.
    Prune {
        /// The group.
        group: GroupName,
    },
    /// A broadcast on its way to the root, routed toward `mid`.
    Publish {
        /// The group.
        group: GroupName,
        /// The publishing node, which the root answers with `PublishAck`.
        origin: NodeRef<A>,
        /// The publisher's id for this publish (retries reuse it).
        id: u64,
        /// The publishing user's label.
        from: String,
        /// The payload.
        #[serde(with = "crate::bytes")]
        body: Vec<u8>,
        /// The publisher's timestamp.
        ts_ms: u64,
        /// Hops travelled so far.
        hops: u8,
    },
    /// The root's answer to `Publish`: the message is replicated and has number `seq`.
    PublishAck {
        /// The group.
        group: GroupName,
        /// The publisher's id.
        id: u64,
        /// The assigned sequence number.
        seq: u64,
    },
    /// A stamped message on its way down the tree.
    Data {
        /// The group.
        group: GroupName,
        /// The root that stamped it (members fetch missed messages from it).
        root: A,
        /// The message.
        message: Stamped<A>,
    },
    /// A member asks the root for messages `from_seq..=to_seq`; sent to the root directly when
    /// its address is known, else routed toward `mid`.
    Fetch {
        /// The group.
        group: GroupName,
        /// Who asks; the answer goes there.
        requester: NodeRef<A>,
        /// Matches the reply to the request.
        request: u64,
        /// First sequence number wanted.
        from_seq: u64,
        /// Last sequence number wanted.
        to_seq: u64,
        /// Hops travelled so far.
        hops: u8,
    },
    /// The root's answer to `Fetch`: every message in `from_seq..=covered_to` that it still holds.
    /// Numbers in that range that are absent fell out of the history: they are gaps.
    FetchReply {
        /// The group.
        group: GroupName,
        /// The request answered.
        request: u64,
        /// The range the reply speaks for ends here (it may stop early to fit the frame cap; it
        /// never reaches past `head`).
        covered_to: u64,
        /// The root's released head.
        head: u64,
        /// The messages, in increasing order.
        messages: Vec<Stamped<A>>,
    },
    /// Root state pushed to another node: to a backup (each stamped message before it is sent
    /// down, and periodically the head), or to a new owner of `mid` (`handoff`), which then
    /// becomes the root and continues the numbering after `head`.
    Replicate {
        /// The group.
        group: GroupName,
        /// Highest sequence number stamped.
        head: u64,
        /// Stamped messages (a batch; the history may span several).
        messages: Vec<Stamped<A>>,
        /// The sender gives the root role to the receiver.
        handoff: bool,
    },
    /// A backup holds the stamped messages `first..=last`.
    ReplicateAck {
        /// The group.
        group: GroupName,
        /// First sequence number held.
        first: u64,
        /// Last sequence number held.
        last: u64,
    },
    /// A node that now owns `mid` but holds no state for the group asks its successor (the
    /// previous owner or its backup) for the head and history.
    StateQuery {
        /// The group.
        group: GroupName,
    },
}

/// Why a received multicast message was rejected after it parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InvalidGroupMessage {
    /// The group name is not valid.
    #[error(transparent)]
    Name(#[from] InvalidGroupName),
    /// A body is larger than any node accepts.
    #[error("body of {0} bytes exceeds {MAX_BODY_BYTES}")]
    BodyTooLarge(usize),
    /// A `from` label is too long.
    #[error("from label of {0} bytes exceeds {MAX_FROM_BYTES}")]
    FromTooLong(usize),
    /// A batch holds more messages than any honest node sends.
    #[error("batch of {0} messages exceeds {MAX_BATCH}")]
    BatchTooLong(usize),
    /// Sequence numbers start at 1; ranges must not be reversed; batches are increasing.
    #[error("impossible sequence numbers")]
    BadSeq,
    /// A node reference's id is not SHA-1 of its address.
    #[error("forged node reference")]
    ForgedId,
    /// More hops than allowed.
    #[error("hop count {0} exceeds {MAX_ROUTE_HOPS}")]
    TooManyHops(u8),
    /// A tree path longer than any honest tree.
    #[error("tree path of {0} entries exceeds {MAX_PATH}")]
    PathTooLong(usize),
}

impl<A> GroupMessage<A> {
    /// The group the message is about.
    pub fn group(&self) -> &GroupName {
        match self {
            GroupMessage::Join { group, .. }
            | GroupMessage::JoinAck { group, .. }
            | GroupMessage::Redirect { group, .. }
            | GroupMessage::Rejoin { group }
            | GroupMessage::Refresh { group }
            | GroupMessage::RefreshAck { group, .. }
            | GroupMessage::Prune { group }
            | GroupMessage::Publish { group, .. }
            | GroupMessage::PublishAck { group, .. }
            | GroupMessage::Data { group, .. }
            | GroupMessage::Fetch { group, .. }
            | GroupMessage::FetchReply { group, .. }
            | GroupMessage::Replicate { group, .. }
            | GroupMessage::ReplicateAck { group, .. }
            | GroupMessage::StateQuery { group } => group,
        }
    }

    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            GroupMessage::Join { .. } => "join",
            GroupMessage::JoinAck { .. } => "join_ack",
            GroupMessage::Redirect { .. } => "redirect",
            GroupMessage::Rejoin { .. } => "rejoin",
            GroupMessage::Refresh { .. } => "refresh",
            GroupMessage::RefreshAck { .. } => "refresh_ack",
            GroupMessage::Prune { .. } => "prune",
            GroupMessage::Publish { .. } => "publish",
            GroupMessage::PublishAck { .. } => "publish_ack",
            GroupMessage::Data { .. } => "data",
            GroupMessage::Fetch { .. } => "fetch",
            GroupMessage::FetchReply { .. } => "fetch_reply",
            GroupMessage::Replicate { .. } => "replicate",
            GroupMessage::ReplicateAck { .. } => "replicate_ack",
            GroupMessage::StateQuery { .. } => "state_query",
        }
    }
}

impl<A: Address> GroupMessage<A> {
    /// Checks what parsing cannot: valid name, bounded bodies, labels and batches, sane sequence
    /// numbers and hop counts, genuine node references.
    pub fn validate(&self) -> Result<(), InvalidGroupMessage> {
        self.group().check()?;
        fn check_ref<A: Address>(node: &NodeRef<A>) -> Result<(), InvalidGroupMessage> {
            if node.is_genuine() { Ok(()) } else { Err(InvalidGroupMessage::ForgedId) }
        }
        fn check_hops(hops: u8) -> Result<(), InvalidGroupMessage> {
            if hops > MAX_ROUTE_HOPS { Err(InvalidGroupMessage::TooManyHops(hops)) } else { Ok(()) }
        }
        fn check_payload(from: &str, body: &[u8]) -> Result<(), InvalidGroupMessage> {
            if body.len() > MAX_BODY_BYTES {
                return Err(InvalidGroupMessage::BodyTooLarge(body.len()));
            }
            if from.len() > MAX_FROM_BYTES {
                return Err(InvalidGroupMessage::FromTooLong(from.len()));
            }
            Ok(())
        }
        fn check_stamped<A>(m: &Stamped<A>) -> Result<(), InvalidGroupMessage> {
            if m.seq == 0 || m.seq > MAX_SEQ || m.base >= m.seq {
                return Err(InvalidGroupMessage::BadSeq);
            }
            check_payload(&m.from, &m.body)
        }
        fn check_batch<A>(batch: &[Stamped<A>]) -> Result<(), InvalidGroupMessage> {
            if batch.len() > MAX_BATCH {
                return Err(InvalidGroupMessage::BatchTooLong(batch.len()));
            }
            batch.iter().try_for_each(check_stamped)?;
            if batch.windows(2).any(|w| w[0].seq >= w[1].seq) {
                return Err(InvalidGroupMessage::BadSeq);
            }
            Ok(())
        }
        match self {
            GroupMessage::Join { hops, .. } => check_hops(*hops),
            GroupMessage::Redirect { to, .. } => check_ref(to),
            GroupMessage::Publish { origin, from, body, hops, .. } => {
                check_ref(origin)?;
                check_hops(*hops)?;
                check_payload(from, body)
            }
            GroupMessage::PublishAck { seq, .. } => {
                if *seq == 0 || *seq > MAX_SEQ {
                    Err(InvalidGroupMessage::BadSeq)
                } else {
                    Ok(())
                }
            }
            GroupMessage::Data { message, .. } => check_stamped(message),
            GroupMessage::Fetch { requester, from_seq, to_seq, hops, .. } => {
                check_ref(requester)?;
                check_hops(*hops)?;
                if *from_seq == 0 || from_seq > to_seq { Err(InvalidGroupMessage::BadSeq) } else { Ok(()) }
            }
            GroupMessage::FetchReply { messages, covered_to, head, .. } => {
                check_batch(messages)?;
                // A root answers only up to what it has released, its head; a range reaching past
                // it would have the asker declare numbers that do not exist yet lost.
                if messages.last().is_some_and(|m| m.seq > *covered_to)
                    || covered_to > head
                    || *head > MAX_SEQ
                {
                    return Err(InvalidGroupMessage::BadSeq);
                }
                Ok(())
            }
            GroupMessage::Replicate { messages, head, .. } => {
                check_batch(messages)?;
                if messages.last().is_some_and(|m| m.seq > *head) || *head > MAX_SEQ {
                    return Err(InvalidGroupMessage::BadSeq);
                }
                Ok(())
            }
            GroupMessage::ReplicateAck { first, last, .. } => {
                if *first == 0 || first > last {
                    Err(InvalidGroupMessage::BadSeq)
                } else {
                    Ok(())
                }
            }
            GroupMessage::JoinAck { path, head, .. } | GroupMessage::RefreshAck { path, head, .. } => {
                if path.len() > MAX_PATH {
                    Err(InvalidGroupMessage::PathTooLong(path.len()))
                } else if head.is_some_and(|h| h > MAX_SEQ) {
                    Err(InvalidGroupMessage::BadSeq)
                } else {
                    Ok(())
                }
            }
            GroupMessage::Rejoin { .. }
            | GroupMessage::Refresh { .. }
            | GroupMessage::Prune { .. }
            | GroupMessage::StateQuery { .. } => Ok(()),
        }
    }
}

/// Why bytes could not be turned into a [`GroupMessage`].
#[derive(Debug, Error)]
pub enum GroupDecodeError {
    /// The input is larger than the cap; it was not parsed.
    #[error("multicast message of {len} bytes exceeds the cap of {max} bytes")]
    TooLarge {
        /// The input's length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The input is not a CBOR encoding of a multicast message.
    #[error("malformed multicast message: {0}")]
    Malformed(String),
    /// The input parsed but is not an honest message.
    #[error(transparent)]
    Invalid(#[from] InvalidGroupMessage),
}

/// Encodes a multicast message as CBOR.
pub fn encode<A: Address>(message: &GroupMessage<A>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(128);
    ciborium::into_writer(message, &mut buf).expect("encoding into a Vec cannot fail");
    buf
}

/// Decodes and validates a multicast message, refusing input longer than `max_bytes` before
/// parsing it.
pub fn decode<A: Address>(bytes: &[u8], max_bytes: usize) -> Result<GroupMessage<A>, GroupDecodeError> {
    if bytes.len() > max_bytes {
        return Err(GroupDecodeError::TooLarge { len: bytes.len(), max: max_bytes });
    }
    let message: GroupMessage<A> = ciborium::de::from_reader_with_recursion_limit(bytes, 32)
        .map_err(|e| GroupDecodeError::Malformed(e.to_string()))?;
    message.validate()?;
    Ok(message)
}

/// Splits `messages` (increasing) into batches of at most [`MAX_BATCH`] messages whose
/// approximate encoded size stays within `budget` bytes (a single message always fits).
pub(crate) fn batches<A: Clone>(messages: &[Stamped<A>], budget: usize) -> Vec<Vec<Stamped<A>>> {
    let mut out = Vec::new();
    let mut current: Vec<Stamped<A>> = Vec::new();
    let mut size = 0;
    for m in messages {
        if !current.is_empty() && (size + m.approx_size() > budget || current.len() >= MAX_BATCH) {
            out.push(std::mem::take(&mut current));
            size = 0;
        }
        size += m.approx_size();
        current.push(m.clone());
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
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

    fn name() -> impl Strategy<Value = GroupName> {
        "[a-zA-Z0-9 éλ_-]{1,40}".prop_map(|s| GroupName::new(s).expect("generated names are valid"))
    }

    fn stamped(seq: u64) -> impl Strategy<Value = Stamped<TestAddr>> {
        (
            "[a-z]{0,12}",
            proptest::collection::vec(any::<u8>(), 0..64),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(move |(from, body, ts_ms, origin, publish_id)| Stamped {
                seq,
                from,
                body,
                ts_ms,
                origin: TestAddr(origin),
                publish_id,
                epoch: 0,
                parent: 0,
                base: 0,
            })
    }

    fn batch() -> impl Strategy<Value = Vec<Stamped<TestAddr>>> {
        (1u64..1000, 0usize..6)
            .prop_flat_map(|(start, n)| (0..n).map(|k| stamped(start + k as u64)).collect::<Vec<_>>())
    }

    fn message() -> impl Strategy<Value = GroupMessage<TestAddr>> {
        let node = any::<u64>().prop_map(|a| NodeRef::new(TestAddr(a)));
        prop_oneof![
            (name(), 0..=MAX_ROUTE_HOPS).prop_map(|(group, hops)| GroupMessage::Join { group, hops }),
            (name(), proptest::option::of(any::<u16>()), proptest::option::of(0..=MAX_SEQ), any::<u64>())
                .prop_map(|(group, depth, head, r)| GroupMessage::JoinAck {
                    group,
                    depth,
                    head,
                    root: Some(TestAddr(r)),
                    path: vec![r, 1, 2],
                }),
            (name(), node.clone()).prop_map(|(group, to)| GroupMessage::Redirect { group, to }),
            name().prop_map(|group| GroupMessage::Refresh { group }),
            name().prop_map(|group| GroupMessage::Prune { group }),
            (
                name(),
                node.clone(),
                any::<u64>(),
                "[a-z]{0,8}",
                proptest::collection::vec(any::<u8>(), 0..128)
            )
                .prop_map(|(group, origin, id, from, body)| GroupMessage::Publish {
                    group,
                    origin,
                    id,
                    from,
                    body,
                    ts_ms: 7,
                    hops: 3
                }),
            (name(), 1u64..=MAX_SEQ).prop_map(|(group, seq)| GroupMessage::PublishAck { group, id: 1, seq }),
            (name(), 1u64..=MAX_SEQ).prop_flat_map(|(group, seq)| stamped(seq).prop_map(move |message| {
                GroupMessage::Data { group: group.clone(), root: TestAddr(9), message }
            })),
            (name(), node, 1u64..100, 0u64..100).prop_map(|(group, requester, from_seq, extra)| {
                GroupMessage::Fetch {
                    group,
                    requester,
                    request: 4,
                    from_seq,
                    to_seq: from_seq + extra,
                    hops: 0,
                }
            }),
            (name(), batch()).prop_map(|(group, messages)| {
                let head = messages.last().map_or(0, |m| m.seq);
                GroupMessage::FetchReply { group, request: 1, covered_to: head, head, messages }
            }),
            (name(), batch(), any::<bool>()).prop_map(|(group, messages, handoff)| {
                let head = messages.last().map_or(0, |m| m.seq) + 3;
                GroupMessage::Replicate { group, head, messages, handoff }
            }),
            (name(), 1u64..100).prop_map(|(group, first)| GroupMessage::ReplicateAck {
                group,
                first,
                last: first + 2
            }),
            name().prop_map(|group| GroupMessage::StateQuery { group }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(msg in message()) {
            let bytes = encode(&msg);
            prop_assert!(bytes.len() <= MAX_GROUP_FRAME_BYTES);
            let back: GroupMessage<TestAddr> = decode(&bytes, MAX_GROUP_FRAME_BYTES).expect("own encoding decodes");
            prop_assert_eq!(back, msg);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode::<TestAddr>(&bytes, MAX_GROUP_FRAME_BYTES);
        }

        #[test]
        fn mutated_messages_never_panic(msg in message(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = encode(&msg);
            for (pos, val) in flips {
                let len = bytes.len();
                bytes[pos % len] ^= val;
            }
            let _ = decode::<TestAddr>(&bytes, MAX_GROUP_FRAME_BYTES);
        }

        #[test]
        fn batches_respect_the_budget(sizes in proptest::collection::vec(0usize..5000, 0..600), budget in 1000usize..70_000) {
            let messages: Vec<Stamped<TestAddr>> = sizes.iter().enumerate().map(|(k, &n)| Stamped {
                seq: k as u64 + 1, from: String::new(), body: vec![0; n], ts_ms: 0, origin: TestAddr(0), publish_id: 0, epoch: 0, parent: 0, base: 0,
            }).collect();
            let out = batches(&messages, budget);
            prop_assert_eq!(out.iter().map(Vec::len).sum::<usize>(), messages.len());
            for b in &out {
                prop_assert!(b.len() <= MAX_BATCH);
                prop_assert!(b.len() == 1 || b.iter().map(Stamped::approx_size).sum::<usize>() <= budget);
            }
        }
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(GroupName::new(""), Err(InvalidGroupName::Empty));
        assert_eq!(GroupName::new("x".repeat(129)), Err(InvalidGroupName::TooLong(129)));
        assert!(GroupName::new("x".repeat(128)).is_ok());
        assert_eq!(GroupName::new("a\nb"), Err(InvalidGroupName::ControlCharacter));
        assert_eq!(GroupName::new("chat").expect("valid").id(), Id::hash(b"chat"));
    }

    #[test]
    fn oversized_and_dishonest_messages_are_refused() {
        let group = GroupName::new("g").expect("valid");
        let big = GroupMessage::Publish {
            group: group.clone(),
            origin: NodeRef::new(TestAddr(1)),
            id: 1,
            from: String::new(),
            body: vec![0; MAX_BODY_BYTES + 1],
            ts_ms: 0,
            hops: 0,
        };
        assert!(matches!(
            decode::<TestAddr>(&encode(&big), MAX_GROUP_FRAME_BYTES),
            Err(GroupDecodeError::Invalid(InvalidGroupMessage::BodyTooLarge(_)))
        ));
        let bytes = vec![0u8; MAX_GROUP_FRAME_BYTES + 1];
        assert!(matches!(
            decode::<TestAddr>(&bytes, MAX_GROUP_FRAME_BYTES),
            Err(GroupDecodeError::TooLarge { .. })
        ));
        let bad_name: GroupMessage<TestAddr> = GroupMessage::Refresh { group: GroupName(String::new()) };
        assert!(bad_name.validate().is_err());
        let zero: GroupMessage<TestAddr> = GroupMessage::PublishAck { group: group.clone(), id: 1, seq: 0 };
        assert_eq!(zero.validate(), Err(InvalidGroupMessage::BadSeq));
        let huge: GroupMessage<TestAddr> =
            GroupMessage::PublishAck { group: group.clone(), id: 1, seq: MAX_SEQ + 1 };
        assert_eq!(huge.validate(), Err(InvalidGroupMessage::BadSeq));
        let huge_head: GroupMessage<TestAddr> = GroupMessage::RefreshAck {
            group: group.clone(),
            depth: Some(1),
            head: Some(u64::MAX),
            root: None,
            path: vec![],
        };
        assert_eq!(huge_head.validate(), Err(InvalidGroupMessage::BadSeq));
        let mut forged = NodeRef::new(TestAddr(1));
        forged.id = TestAddr(2).node_id();
        let redirect = GroupMessage::Redirect { group: group.clone(), to: forged };
        assert_eq!(redirect.validate(), Err(InvalidGroupMessage::ForgedId));
        for covered_to in [10, u64::MAX] {
            let past_head: GroupMessage<TestAddr> = GroupMessage::FetchReply {
                group: group.clone(),
                request: 1,
                covered_to,
                head: 9,
                messages: vec![],
            };
            assert_eq!(past_head.validate(), Err(InvalidGroupMessage::BadSeq), "covered_to {covered_to}");
        }
        let hops: GroupMessage<TestAddr> = GroupMessage::Join { group, hops: MAX_ROUTE_HOPS + 1 };
        assert_eq!(hops.validate(), Err(InvalidGroupMessage::TooManyHops(MAX_ROUTE_HOPS + 1)));
    }
}
