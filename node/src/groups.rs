//! The node's side of multicast groups: what the HTTP API sees of them.
//!
//! Owns the local listeners of each group (a broadcast channel per group, fed by the core's
//! deliveries), the short log of recent deliveries a new listener can replay from, and
//! [`Reorder`], which turns deliveries, replayed history and gap notices into one stream per
//! listener in sequence order, each sequence number once. The tree itself — joins, repair,
//! ordering, history at the root — is `dht::multicast`'s.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use dht::{Id, NodeRef};
use libp2p::PeerId;
use tokio::sync::{broadcast, mpsc};

use crate::address::PeerAddr;

/// Deliveries a node keeps per group for listeners that ask to replay (`?from=`); older ones
/// are fetched from the root's history.
pub const LOCAL_LOG: usize = 1024;
/// Items a listener may fall behind the live stream before it is cut off.
pub const LISTENER_BUFFER: usize = 4096;
/// Items of one listener's replay in flight to it (a reply holds at most 256 messages).
pub const HISTORY_CHANNEL: usize = 1024;
/// Largest message body accepted from the API (the core's cap on the wire).
pub const MAX_BODY_BYTES: usize = dht::multicast::MAX_BODY_BYTES;

/// One message of a group, as delivered here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The group's name.
    pub group: String,
    /// Its sequence number in the group (from 1).
    pub seq: u64,
    /// The sender's label.
    pub from: String,
    /// The text.
    pub body: String,
    /// When it was sent, ms since the Unix epoch.
    pub ts_ms: u64,
}

/// What a listener's stream carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupItem {
    /// A message.
    Message(Arc<Delivered>),
    /// Messages `from..=to` can no longer be had (history no longer holds them).
    Gap {
        /// First missing sequence number.
        from: u64,
        /// Last missing sequence number.
        to: u64,
    },
}

impl GroupItem {
    /// The first sequence number the item covers.
    pub fn first_seq(&self) -> u64 {
        match self {
            GroupItem::Message(m) => m.seq,
            GroupItem::Gap { from, .. } => *from,
        }
    }

    /// The last sequence number the item covers.
    pub fn last_seq(&self) -> u64 {
        match self {
            GroupItem::Message(m) => m.seq,
            GroupItem::Gap { to, .. } => *to,
        }
    }
}

/// What a listener's own history channel carries (a replay fetched from the root for it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryItem {
    /// A message or a gap of the replay.
    Item(GroupItem),
    /// The root's history could not be had; the listener cannot be served from where it asked.
    Failed(String),
}

/// A listener attached to a group: what to replay, then the live feed.
#[derive(Debug)]
pub struct Subscription {
    /// Items from the node's log, oldest first.
    pub backlog: Vec<GroupItem>,
    /// Everything delivered here from now on.
    pub live: broadcast::Receiver<GroupItem>,
    /// For a replay from further back than the log: the items fetched from the root, for this
    /// listener only; the channel closes when the replay has reached what the log and the live
    /// feed cover.
    pub history: Option<mpsc::Receiver<HistoryItem>>,
    /// The first sequence number to emit; `None`: whatever arrives first.
    pub next_seq: Option<u64>,
}

/// A replay the log cannot serve: the listener wants `from..` and the log (or, if it is empty,
/// the first delivery) starts later.
#[derive(Debug)]
pub struct MissingHistory {
    /// First number wanted.
    pub from: u64,
    /// Where the listener's backlog and live feed take over; `None` while nothing was delivered.
    pub covered_from: Option<u64>,
    /// The listener's end of its history channel is in the subscription; this is the other.
    pub sender: mpsc::Sender<HistoryItem>,
}

/// Why a group request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupError {
    /// The group name is not acceptable.
    #[error("invalid group name: {0}")]
    InvalidName(String),
    /// The message is over the cap.
    #[error("message of {len} bytes exceeds the cap of {max} bytes")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The request is malformed otherwise.
    #[error("{0}")]
    Invalid(String),
    /// The root could not be reached in time.
    #[error("the group's root could not be reached: {0}")]
    Unreachable(String),
    /// This node cannot take the request now (not in a ring yet, too many groups or publishes).
    #[error("{0}")]
    Busy(String),
    /// The group has no tree (nobody joined it).
    #[error("no tree for group {0:?}")]
    NoTree(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// A group as this node sees it.
#[derive(Clone, Debug)]
pub struct GroupView {
    /// Its name.
    pub name: String,
    /// SHA-1 of the name.
    pub id: Id,
    /// `root`, `forwarder` or `member`.
    pub role: &'static str,
    /// Whether this node is a member (explicitly or for a listener).
    pub member: bool,
    /// Listeners attached here.
    pub listeners: usize,
    /// Highest sequence number this node knows of.
    pub head_seq: u64,
    /// Parent in the tree (none at the root).
    pub parent: Option<NodeRef<PeerAddr>>,
    /// Children in the tree.
    pub children: Vec<NodeRef<PeerAddr>>,
}

/// One node of a walked tree.
#[derive(Clone, Debug)]
pub struct TreeNodeView {
    /// The node.
    pub node: NodeRef<PeerAddr>,
    /// Its parent's peer id (none at the root).
    pub parent: Option<PeerId>,
    /// Distance from the root.
    pub depth: u32,
    /// `root`, `forwarder` or `member`.
    pub role: String,
    /// Whether it is a member.
    pub member: bool,
    /// Its children's peer ids.
    pub children: Vec<PeerId>,
}

/// A group's tree, walked breadth-first from the root.
#[derive(Clone, Debug)]
pub struct TreeView {
    /// The group's name.
    pub name: String,
    /// Its id.
    pub id: Id,
    /// The root.
    pub root: NodeRef<PeerAddr>,
    /// Whether every node answered.
    pub complete: bool,
    /// Nodes in breadth-first order.
    pub nodes: Vec<TreeNodeView>,
}

/// The local side of one group: its listeners' channel and the recent deliveries.
#[derive(Debug)]
pub struct LocalGroup {
    /// Feed of every listener.
    pub sender: broadcast::Sender<GroupItem>,
    /// Recent deliveries and gap notices, oldest first, in sequence order.
    pub log: VecDeque<GroupItem>,
    /// Joined through the API (stays a member with no listener).
    pub joined: bool,
}

impl LocalGroup {
    /// A group with no listener yet.
    pub fn new() -> Self {
        LocalGroup { sender: broadcast::channel(LISTENER_BUFFER).0, log: VecDeque::new(), joined: false }
    }

    /// Listeners attached now.
    pub fn listeners(&self) -> usize {
        self.sender.receiver_count()
    }

    /// Whether the node should stay a member.
    pub fn wanted(&self) -> bool {
        self.joined || self.listeners() > 0
    }

    /// The first number the log covers.
    pub fn log_start(&self) -> Option<u64> {
        self.log.front().map(GroupItem::first_seq)
    }

    /// Records a delivery or a gap notice and hands it to every listener.
    pub fn record(&mut self, item: GroupItem) {
        if self.log.len() == LOCAL_LOG {
            self.log.pop_front();
        }
        self.log.push_back(item.clone());
        // No listener: nothing to do; the log keeps it for later replays.
        let _ = self.sender.send(item);
    }

    /// A new listener from `from` (or from the next message), and the replay the caller must
    /// fetch from the root when the log does not reach back to `from`.
    pub fn subscribe(&self, from: Option<u64>) -> (Subscription, Option<MissingHistory>) {
        let live = self.sender.subscribe();
        let Some(from) = from else {
            return (Subscription { backlog: Vec::new(), live, history: None, next_seq: None }, None);
        };
        let from = from.max(1);
        let backlog: Vec<GroupItem> = self.log.iter().filter(|i| i.last_seq() >= from).cloned().collect();
        let covered_from = self.log_start();
        if covered_from.is_some_and(|start| start <= from) {
            return (Subscription { backlog, live, history: None, next_seq: Some(from) }, None);
        }
        let (sender, receiver) = mpsc::channel(HISTORY_CHANNEL);
        let subscription = Subscription { backlog, live, history: Some(receiver), next_seq: Some(from) };
        (subscription, Some(MissingHistory { from, covered_from, sender }))
    }
}

impl Default for LocalGroup {
    fn default() -> Self {
        Self::new()
    }
}

/// Puts one listener's items in sequence order, each sequence number once.
///
/// Items may arrive out of order (history fetched for a replay lands after live messages) and
/// twice (a message in the backlog and again in the feed). `Reorder` emits the item for
/// `next`, then `next + 1`, and so on, holding back up to [`LISTENER_BUFFER`] items that are
/// ahead; a gap notice covers its whole range. With no starting point, the first item sets it.
#[derive(Debug, Default)]
pub struct Reorder {
    next: Option<u64>,
    ahead: BTreeMap<u64, GroupItem>,
}

impl Reorder {
    /// Starts at `next` (or at the first item, if `None`).
    pub fn new(next: Option<u64>) -> Self {
        Reorder { next, ahead: BTreeMap::new() }
    }

    /// Takes an item; returns what can be emitted now, in order. `Err` when too many items are
    /// held back waiting for a missing one (the listener cannot be served in order any more).
    pub fn push(&mut self, item: GroupItem) -> Result<Vec<GroupItem>, usize> {
        let next = *self.next.get_or_insert(item.first_seq());
        if item.last_seq() < next {
            return Ok(Vec::new()); // already emitted
        }
        // A gap that starts before `next` (partly emitted) only covers the rest.
        let item = match item {
            GroupItem::Gap { to, .. } => GroupItem::Gap { from: next.max(item.first_seq()), to },
            message => message,
        };
        self.ahead.entry(item.first_seq()).or_insert(item);
        if self.ahead.len() > LISTENER_BUFFER {
            return Err(self.ahead.len());
        }
        let mut ready = Vec::new();
        let mut next = next;
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() > next {
                break;
            }
            let item = entry.remove();
            if item.last_seq() >= next {
                next = item.last_seq() + 1;
                ready.push(item);
            }
        }
        self.next = Some(next);
        Ok(ready)
    }

    /// The next sequence number this listener waits for.
    pub fn next(&self) -> Option<u64> {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> GroupItem {
        GroupItem::Message(Arc::new(Delivered {
            group: "g".into(),
            seq,
            from: "a".into(),
            body: format!("m{seq}"),
            ts_ms: 0,
        }))
    }

    fn push(r: &mut Reorder, item: GroupItem) -> Vec<GroupItem> {
        r.push(item).expect("within the buffer")
    }

    fn seqs(items: &[GroupItem]) -> Vec<(u64, u64)> {
        items.iter().map(|i| (i.first_seq(), i.last_seq())).collect()
    }

    #[test]
    fn in_order_items_pass_straight_through() {
        let mut r = Reorder::new(Some(1));
        assert_eq!(seqs(&push(&mut r, msg(1))), [(1, 1)]);
        assert_eq!(seqs(&push(&mut r, msg(2))), [(2, 2)]);
        assert_eq!(r.next(), Some(3));
    }

    #[test]
    fn late_history_is_put_before_live_messages_and_duplicates_are_dropped() {
        let mut r = Reorder::new(Some(3));
        assert!(push(&mut r, msg(6)).is_empty());
        assert!(push(&mut r, msg(7)).is_empty());
        assert!(push(&mut r, msg(4)).is_empty());
        assert_eq!(seqs(&push(&mut r, msg(3))), [(3, 3), (4, 4)]);
        assert_eq!(seqs(&push(&mut r, msg(5))), [(5, 5), (6, 6), (7, 7)]);
        assert!(push(&mut r, msg(6)).is_empty());
        assert!(push(&mut r, msg(3)).is_empty());
        assert_eq!(r.next(), Some(8));
    }

    #[test]
    fn a_gap_covers_its_range_even_when_partly_emitted() {
        let mut r = Reorder::new(Some(1));
        push(&mut r, msg(1));
        assert!(push(&mut r, msg(6)).is_empty());
        assert_eq!(seqs(&push(&mut r, GroupItem::Gap { from: 1, to: 5 })), [(2, 5), (6, 6)]);
        assert_eq!(r.next(), Some(7));
    }

    #[test]
    fn without_a_start_the_first_item_sets_it() {
        let mut r = Reorder::new(None);
        assert_eq!(seqs(&push(&mut r, msg(40))), [(40, 40)]);
        assert!(push(&mut r, msg(39)).is_empty());
    }

    #[test]
    fn too_much_held_back_is_an_error() {
        let mut r = Reorder::new(Some(1));
        let mut result = Ok(Vec::new());
        for seq in 2..=(LISTENER_BUFFER as u64 + 2) {
            result = r.push(msg(seq));
            if result.is_err() {
                break;
            }
        }
        assert!(result.is_err());
    }

    #[test]
    fn a_subscription_replays_the_log_and_reports_what_it_lacks() {
        let mut group = LocalGroup::new();
        let (empty, missing) = group.subscribe(Some(3));
        let missing = missing.expect("an empty log covers nothing");
        assert_eq!((missing.from, missing.covered_from), (3, None));
        assert!(empty.history.is_some());
        drop(empty);
        for seq in 10..=12 {
            group.record(msg(seq));
        }
        group.record(GroupItem::Gap { from: 13, to: 14 });
        let (first, missing) = group.subscribe(Some(11));
        assert_eq!(seqs(&first.backlog), [(11, 11), (12, 12), (13, 14)]);
        assert!(missing.is_none() && first.history.is_none());
        drop(first);
        let (sub, missing) = group.subscribe(Some(5));
        assert_eq!(sub.backlog.len(), 4);
        let missing = missing.expect("the log starts at 10");
        assert_eq!((missing.from, missing.covered_from), (5, Some(10)));
        assert_eq!(group.listeners(), 1, "dropped subscriptions detach");
        drop(sub);
        assert_eq!(group.listeners(), 0);
    }
}
