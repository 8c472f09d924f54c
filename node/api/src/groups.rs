//! Multicast groups over HTTP: the naming rules, the documents of `/v1/groups/...`, and the
//! events of a group's stream (`GET /v1/groups/{g}/messages`, `text/event-stream`).
//!
//! The rules are the documented ones: a group name is 1 to [`MAX_GROUP_NAME_BYTES`] bytes of
//! UTF-8 without control characters; a sender label at most [`MAX_SENDER_LABEL_BYTES`] bytes
//! without control characters (without `?from=` the node labels a message with its own short
//! peer id); a message body at most [`MAX_MESSAGE_BYTES`] of UTF-8. The node refuses what breaks
//! them with 400 (413 for a body over the cap); the CLI checks names and labels before it asks.
//! The limits are the protocol core's (`dht::multicast`); the node asserts at compile time that
//! they agree.
//!
//! A stream carries `event: message` ([`GroupMessage`]), `event: gap` ([`GroupGap`]) and
//! `event: error` ([`crate::ErrorBody`], after which the node ends the stream), and `:`
//! keep-alive comments. Fields are declared in alphabetical order (see the crate docs).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::document::Document;
use crate::ring::NodeInfo;
use crate::sse::SseEvent;

/// Longest group name, in bytes of UTF-8.
pub const MAX_GROUP_NAME_BYTES: usize = 128;
/// Longest sender label (`?from=`), in bytes of UTF-8.
pub const MAX_SENDER_LABEL_BYTES: usize = 256;
/// Largest message body, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The event name of a delivered message.
pub const MESSAGE_EVENT: &str = "message";
/// The event name of a range the root's history no longer holds.
pub const GAP_EVENT: &str = "gap";
/// The event name of the node giving up on a stream; the stream ends after it.
pub const ERROR_EVENT: &str = "error";

/// Why a string is not a group name. The texts are what the node's 400 answers say after
/// `invalid group name: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidGroupName {
    /// Empty, or longer than [`MAX_GROUP_NAME_BYTES`].
    #[error("must be 1 to {MAX_GROUP_NAME_BYTES} bytes, not {0}")]
    Length(usize),
    /// Control characters would corrupt logs and terminals.
    #[error("must not contain control characters")]
    ControlCharacter,
}

/// Checks a group name: 1 to [`MAX_GROUP_NAME_BYTES`] bytes of UTF-8 without control characters.
pub fn check_group_name(name: &str) -> Result<(), InvalidGroupName> {
    if name.is_empty() || name.len() > MAX_GROUP_NAME_BYTES {
        return Err(InvalidGroupName::Length(name.len()));
    }
    if name.chars().any(char::is_control) {
        return Err(InvalidGroupName::ControlCharacter);
    }
    Ok(())
}

/// A sender label that is too long or holds control characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("from must be at most {MAX_SENDER_LABEL_BYTES} bytes without control characters")]
pub struct InvalidSenderLabel;

/// Checks a sender label: at most [`MAX_SENDER_LABEL_BYTES`] bytes without control characters.
pub fn check_sender_label(label: &str) -> Result<(), InvalidSenderLabel> {
    if label.len() > MAX_SENDER_LABEL_BYTES || label.chars().any(char::is_control) {
        return Err(InvalidSenderLabel);
    }
    Ok(())
}

/// A group as one node sees it: the answer to `POST /v1/groups/{g}/join` and each entry of
/// `GET /v1/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// Its children in the group's tree.
    pub children: Vec<NodeInfo>,
    /// The group's name.
    pub group: String,
    /// SHA-1 of the name: where the group's root is on the ring.
    pub group_id: String,
    /// The highest sequence number this node knows of (0 before the first message).
    pub head_seq: u64,
    /// Listeners attached at this node.
    pub listeners: u64,
    /// Whether this node is a member (joined, or for a listener).
    pub member: bool,
    /// Its parent in the tree; `null` at the root.
    pub parent: Option<NodeInfo>,
    /// `root`, `forwarder` or `member`; text, so that a role added later still shows.
    pub role: String,
}

/// `GET /v1/groups`: the groups this node roots, forwards or belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupList {
    /// One entry per group.
    pub groups: Vec<GroupSummary>,
}

/// Answer to `POST /v1/groups/{g}/leave`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupLeft {
    /// The group's name.
    pub group: String,
    /// SHA-1 of the name.
    pub group_id: String,
    /// Always `false` from the node's side of the leave; a listener attached at the node keeps
    /// it a member regardless, which `GET /v1/groups` shows.
    pub member: bool,
}

/// Answer to `POST /v1/groups/{g}/messages` (201): the number the group's root gave the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReceipt {
    /// The group's name.
    pub group: String,
    /// The message's sequence number in the group (from 1).
    pub seq: u64,
}

/// `GET /v1/groups/{g}/tree`: the group's tree, breadth-first from the root (404 when the group
/// has no tree).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupTree {
    /// Whether every node of the tree answered the walk.
    pub complete: bool,
    /// The group's name.
    pub group: String,
    /// SHA-1 of the name.
    pub group_id: String,
    /// The nodes, breadth-first from the root.
    pub nodes: Vec<TreeNode>,
    /// The root.
    pub root: NodeInfo,
}

/// One node of a [`GroupTree`]; `parent` and `children` are peer ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeNode {
    /// Its children's peer ids.
    pub children: Vec<String>,
    /// Distance from the root.
    pub depth: u32,
    /// Whether it is a member.
    pub member: bool,
    /// The node.
    pub node: NodeInfo,
    /// Its parent's peer id; `null` at the root.
    pub parent: Option<String>,
    /// `root`, `forwarder` or `member`.
    pub role: String,
}

/// The data of an `event: message`: one message of the group, delivered once and in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMessage {
    /// The text.
    pub body: String,
    /// The numbering `seq` belongs to: (`epoch`, `seq`) names one message for good. After a
    /// network partition healed, a member that followed the losing side's root receives the other
    /// side's messages in a newer epoch, under numbers it has seen already (absent from older
    /// nodes: 0).
    #[serde(default)]
    pub epoch: u64,
    /// The sender's label.
    pub from: String,
    /// The group's name.
    pub group: String,
    /// Its sequence number in the group (from 1).
    pub seq: u64,
    /// When it was sent, in milliseconds since the Unix epoch.
    pub ts: u64,
}

/// The data of an `event: gap`: messages `from..=to` are no longer in the root's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupGap {
    /// First missing sequence number.
    pub from: u64,
    /// The group's name.
    pub group: String,
    /// Last missing sequence number.
    pub to: u64,
}

/// What a group's stream delivers, read from one server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupEvent {
    /// An `event: message`.
    Message(Document<GroupMessage>),
    /// An `event: gap`.
    Gap(Document<GroupGap>),
    /// An `event: error`: the node gives up on this stream (e.g. the listener fell too far
    /// behind) and ends it next. The text is on one line.
    Error(String),
    /// A `message` or `gap` event whose data does not follow the contract. The stream itself is
    /// still usable; whether to go on is the caller's choice.
    Unreadable {
        /// The event's name.
        event: String,
        /// Why its data could not be read.
        reason: String,
    },
}

impl GroupEvent {
    /// Reads one server-sent event; events of other names are skipped (`None`), so a node that
    /// adds kinds of events does not break older clients.
    pub fn from_sse(event: SseEvent) -> Option<GroupEvent> {
        fn parse<T: DeserializeOwned>(data: &str) -> Result<Document<T>, String> {
            Document::from_slice(data.as_bytes()).map_err(|e| e.to_string())
        }
        let result = match event.event.as_str() {
            MESSAGE_EVENT => parse(&event.data).map(GroupEvent::Message),
            GAP_EVENT => parse(&event.data).map(GroupEvent::Gap),
            ERROR_EVENT => {
                // A node that sent plain text still gets its reason shown.
                let message = serde_json::from_str::<crate::ErrorBody>(&event.data)
                    .map_or(event.data, |body| body.error);
                Ok(GroupEvent::Error(message.split_whitespace().collect::<Vec<_>>().join(" ")))
            }
            _ => return None,
        };
        Some(result.unwrap_or_else(|reason| GroupEvent::Unreadable { event: event.event, reason }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: DeserializeOwned + Serialize>(literal: &str) -> T {
        let parsed: T = serde_json::from_str(literal).expect("the literal follows the type");
        assert_eq!(serde_json::to_string(&parsed).expect("serialises"), literal);
        parsed
    }

    const NODE: &str = r#"{"addr":"/ip4/127.0.0.1/tcp/4001","peer_id":"12D3KooWA","ring_id":"0a00000000000000000000000000000000000000"}"#;
    const GROUP_ID: &str = "8a6e6f5c1c5cb3e1e1ae73a9e5fce5b8e3f0a5c2";

    #[test]
    fn names_follow_the_documented_rule() {
        for good in
            ["chat", "ünï", " ", "a b", "x".repeat(128).as_str(), "é".repeat(64).as_str(), "tab\u{a0}nbsp"]
        {
            assert_eq!(check_group_name(good), Ok(()), "{good:?}");
        }
        assert_eq!(check_group_name(""), Err(InvalidGroupName::Length(0)));
        assert_eq!(check_group_name(&"x".repeat(129)), Err(InvalidGroupName::Length(129)));
        // 64 two-byte characters and one more byte: counted in bytes, not characters.
        assert_eq!(check_group_name(&format!("{}a", "é".repeat(64))), Err(InvalidGroupName::Length(129)));
        for bad in ["a\nb", "\0", "bell\u{7}", "esc\u{1b}[2J", "del\u{7f}", "tab\t", "c1\u{85}"] {
            assert_eq!(check_group_name(bad), Err(InvalidGroupName::ControlCharacter), "{bad:?}");
        }
        assert_eq!(
            InvalidGroupName::Length(129).to_string(),
            "must be 1 to 128 bytes, not 129",
            "the node's 400 says this"
        );
    }

    #[test]
    fn sender_labels_follow_their_rule() {
        assert_eq!(check_sender_label(""), Ok(()));
        assert_eq!(check_sender_label("alice"), Ok(()));
        assert_eq!(check_sender_label(&"l".repeat(256)), Ok(()));
        assert_eq!(check_sender_label(&"l".repeat(257)), Err(InvalidSenderLabel));
        assert_eq!(check_sender_label("al\nice"), Err(InvalidSenderLabel));
        assert_eq!(
            InvalidSenderLabel.to_string(),
            "from must be at most 256 bytes without control characters"
        );
    }

    #[test]
    fn group_documents_round_trip() {
        let summary: GroupSummary = round_trip(&format!(
            r#"{{"children":[{NODE}],"group":"chat","group_id":"{GROUP_ID}","head_seq":17,"listeners":1,"member":true,"parent":null,"role":"root"}}"#
        ));
        assert_eq!((summary.head_seq, summary.role.as_str()), (17, "root"));
        let list: GroupList = round_trip(&format!(
            r#"{{"groups":[{{"children":[],"group":"chat","group_id":"{GROUP_ID}","head_seq":0,"listeners":0,"member":false,"parent":{NODE},"role":"forwarder"}}]}}"#
        ));
        assert_eq!(list.groups[0].parent.as_ref().map(|p| p.peer_id.as_str()), Some("12D3KooWA"));
        let left: GroupLeft =
            round_trip(&format!(r#"{{"group":"chat","group_id":"{GROUP_ID}","member":false}}"#));
        assert!(!left.member);
        let receipt: GroupReceipt = round_trip(r#"{"group":"chat","seq":42}"#);
        assert_eq!(receipt.seq, 42);
    }

    #[test]
    fn trees_round_trip() {
        let tree: GroupTree = round_trip(&format!(
            r#"{{"complete":true,"group":"chat","group_id":"{GROUP_ID}","nodes":[{{"children":["12D3KooWB"],"depth":0,"member":false,"node":{NODE},"parent":null,"role":"root"}}],"root":{NODE}}}"#
        ));
        assert_eq!(tree.nodes[0].children, ["12D3KooWB"]);
        assert!(tree.nodes[0].parent.is_none());
    }

    #[test]
    fn stream_events_round_trip() {
        let message: GroupMessage = round_trip(
            r#"{"body":"hello \"you\"\n","epoch":4398046511105,"from":"alice","group":"chat","seq":17,"ts":1763877600123}"#,
        );
        assert_eq!((message.epoch, message.seq, message.ts), (4_398_046_511_105, 17, 1_763_877_600_123));
        let gap: GroupGap = round_trip(r#"{"from":3,"group":"chat","to":9}"#);
        assert_eq!((gap.from, gap.to), (3, 9));
    }

    #[test]
    fn events_are_read_by_name() {
        let event = |name: &str, data: &str| SseEvent { event: name.to_owned(), data: data.to_owned() };
        let message = r#"{"group":"g","seq":17,"from":"alice","body":"hello","ts":1763877600123,"new":1}"#;
        let Some(GroupEvent::Message(message)) = GroupEvent::from_sse(event("message", message)) else {
            panic!("a message")
        };
        assert_eq!((message.parsed.seq, message.parsed.from.as_str()), (17, "alice"));
        assert_eq!(message.parsed.epoch, 0, "a node that predates epochs sends none");
        assert_eq!(message.raw["new"], 1, "the raw document keeps fields the type does not know");
        let gap = GroupEvent::from_sse(event("gap", r#"{"group":"g","from":3,"to":9}"#));
        assert!(matches!(gap, Some(GroupEvent::Gap(ref gap)) if (gap.parsed.from, gap.parsed.to) == (3, 9)));
        let error = GroupEvent::from_sse(event("error", r#"{"error":"fell\nbehind"}"#));
        assert_eq!(error, Some(GroupEvent::Error("fell behind".to_owned())));
        let plain = GroupEvent::from_sse(event("error", "not json"));
        assert_eq!(plain, Some(GroupEvent::Error("not json".to_owned())));
        let broken = GroupEvent::from_sse(event("message", r#"{"seq":"x"}"#));
        assert!(matches!(broken, Some(GroupEvent::Unreadable { ref event, .. }) if event == "message"));
        assert!(GroupEvent::from_sse(event("presence", "{}")).is_none());
    }
}
