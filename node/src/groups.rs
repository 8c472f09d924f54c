//! The node's side of multicast groups: what the HTTP API sees of them.
//!
//! Owns the local listeners of each group (a broadcast channel per group, fed by the core's
//! deliveries), the short log of recent deliveries a new listener can replay from, and
//! [`Merge`], which puts a listener's replay fetched from the root, its backlog from the log and
//! the live feed into one stream, each message once. The tree itself — joins, repair, ordering,
//! history at the root — is `dht::multicast`'s.
//!
//! Deliveries are kept and passed on in the order the core made them, not sorted by number:
//! after a partition healed, a member that followed the losing side's root goes back to the fork
//! point in a newer epoch and receives the other side's messages under numbers it has passed
//! already (`dht::multicast`, "Partitions: epochs"). The core never delivers a message twice, so
//! the order it delivers in is the one stream a listener needs; sorting or deduplicating by
//! number would drop those messages silently. Each message carries its epoch, and a listener's
//! `?from=` counts in the numbering of the node's log.

use std::collections::{BTreeSet, VecDeque};
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
    /// The numbering `seq` belongs to: (`epoch`, `seq`) names one message for good.
    pub epoch: u64,
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
        // The log is in delivery order; the backlog is everything from the first item that
        // reaches `from` on (after a rewind, later items may carry lower numbers: they are new).
        let start = self.log.iter().position(|i| i.last_seq() >= from).unwrap_or(self.log.len());
        let backlog: Vec<GroupItem> = self.log.iter().skip(start).cloned().collect();
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

/// Puts one listener's sources into one stream: first the replay fetched from the root (when the
/// listener asked from further back than the node's log), then the backlog from the log, then the
/// live feed.
///
/// The backlog and the live feed are disjoint (a subscription takes both in one step of the event
/// loop) and already in the core's delivery order, each message once: they pass straight through
/// once no replay is running. The replay covers numbers before the backlog starts; while it runs,
/// delivered items are held (at most [`LISTENER_BUFFER`]), and replayed items at or past the
/// first held number are dropped (they overlap when the log was empty at subscription). When the
/// replay ends, held messages it already emitted — same epoch and number — are dropped and the
/// rest pass on.
#[derive(Debug)]
pub struct Merge {
    replaying: bool,
    /// Delivered items held until the replay ends.
    held: VecDeque<GroupItem>,
    /// (epoch, number) of every message the replay emitted, and the highest number it covered.
    replayed: BTreeSet<(u64, u64)>,
    replayed_to: Option<u64>,
    /// The number after the last item emitted (where a reconnecting client resumes).
    resume: Option<u64>,
}

impl Merge {
    /// A listener that starts at `from` (or at whatever comes first), with a replay running or
    /// not.
    pub fn new(from: Option<u64>, replaying: bool) -> Self {
        Merge { replaying, held: VecDeque::new(), replayed: BTreeSet::new(), replayed_to: None, resume: from }
    }

    /// Takes a delivered item (backlog or live feed); returns what can be emitted now. `Err` with
    /// the number held when too many wait for a replay that does not end.
    pub fn push_delivered(&mut self, item: GroupItem) -> Result<Vec<GroupItem>, usize> {
        if !self.replaying {
            return Ok(self.emit(vec![item]));
        }
        self.held.push_back(item);
        if self.held.len() > LISTENER_BUFFER {
            return Err(self.held.len());
        }
        Ok(Vec::new())
    }

    /// Takes an item of the replay; returns what can be emitted now.
    pub fn push_replayed(&mut self, item: GroupItem) -> Vec<GroupItem> {
        if !self.replaying {
            return Vec::new();
        }
        let first_held = self.held.front().map(GroupItem::first_seq);
        let after_replayed = self.replayed_to.map_or(0, |to| to + 1);
        let item = match item {
            GroupItem::Message(m) => {
                if first_held.is_some_and(|first| m.seq >= first) || !self.replayed.insert((m.epoch, m.seq)) {
                    return Vec::new();
                }
                GroupItem::Message(m)
            }
            GroupItem::Gap { from, to } => {
                let to = first_held.map_or(to, |first| to.min(first.saturating_sub(1)));
                let from = from.max(after_replayed);
                if from > to {
                    return Vec::new();
                }
                GroupItem::Gap { from, to }
            }
        };
        self.replayed_to = Some(self.replayed_to.unwrap_or(0).max(item.last_seq()));
        self.emit(vec![item])
    }

    /// The replay ended (it reached the backlog, or it could not be had): returns the held items
    /// it did not emit already.
    pub fn replay_done(&mut self) -> Vec<GroupItem> {
        self.replaying = false;
        let replayed = std::mem::take(&mut self.replayed);
        let replayed_to = self.replayed_to.unwrap_or(0);
        let held: Vec<GroupItem> = std::mem::take(&mut self.held)
            .into_iter()
            .filter(|item| match item {
                GroupItem::Message(m) => !replayed.contains(&(m.epoch, m.seq)),
                GroupItem::Gap { to, .. } => *to > replayed_to,
            })
            .collect();
        self.emit(held)
    }

    /// Where a reconnecting client should resume (`?from=`): after the last item emitted.
    pub fn resume(&self) -> Option<u64> {
        self.resume
    }

    fn emit(&mut self, items: Vec<GroupItem>) -> Vec<GroupItem> {
        if let Some(last) = items.last() {
            self.resume = Some(last.last_seq().saturating_add(1));
        }
        items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg_in(epoch: u64, seq: u64) -> GroupItem {
        GroupItem::Message(Arc::new(Delivered {
            group: "g".into(),
            epoch,
            seq,
            from: "a".into(),
            body: format!("m{epoch}.{seq}"),
            ts_ms: 0,
        }))
    }

    fn msg(seq: u64) -> GroupItem {
        msg_in(1, seq)
    }

    fn delivered(m: &mut Merge, item: GroupItem) -> Vec<GroupItem> {
        m.push_delivered(item).expect("within the buffer")
    }

    fn names(items: &[GroupItem]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                GroupItem::Message(m) => m.body.clone(),
                GroupItem::Gap { from, to } => format!("gap {from}-{to}"),
            })
            .collect()
    }

    #[test]
    fn without_a_replay_deliveries_pass_straight_through() {
        let mut m = Merge::new(Some(1), false);
        assert_eq!(names(&delivered(&mut m, msg(1))), ["m1.1"]);
        assert_eq!(names(&delivered(&mut m, GroupItem::Gap { from: 2, to: 3 })), ["gap 2-3"]);
        assert_eq!(names(&delivered(&mut m, msg(4))), ["m1.4"]);
        assert_eq!(m.resume(), Some(5));
    }

    #[test]
    fn messages_renumbered_after_a_heal_reach_a_listener_that_saw_higher_numbers() {
        // The member followed the losing side up to 5, then rewinds to the fork point 3 in the
        // winner's epoch: 3 and 4 of epoch 2 are the other side's messages, new to this listener.
        let mut m = Merge::new(None, false);
        let mut out = Vec::new();
        for item in [msg(1), msg(2), msg(3), msg(4), msg(5), msg_in(2, 3), msg_in(2, 4), msg_in(2, 8)] {
            out.extend(delivered(&mut m, item));
        }
        assert_eq!(names(&out), ["m1.1", "m1.2", "m1.3", "m1.4", "m1.5", "m2.3", "m2.4", "m2.8"]);
        assert_eq!(m.resume(), Some(9));
    }

    #[test]
    fn a_replay_comes_before_the_held_deliveries_and_stops_where_they_start() {
        let mut m = Merge::new(Some(1), true);
        assert!(delivered(&mut m, msg(5)).is_empty());
        assert!(delivered(&mut m, msg(6)).is_empty());
        let mut out = Vec::new();
        out.extend(m.push_replayed(msg(1)));
        out.extend(m.push_replayed(GroupItem::Gap { from: 2, to: 3 }));
        out.extend(m.push_replayed(msg(4)));
        out.extend(m.push_replayed(msg(5)));
        out.extend(m.push_replayed(GroupItem::Gap { from: 6, to: 9 }));
        out.extend(m.replay_done());
        out.extend(delivered(&mut m, msg(7)));
        assert_eq!(names(&out), ["m1.1", "gap 2-3", "m1.4", "m1.5", "m1.6", "m1.7"]);
    }

    #[test]
    fn deliveries_the_replay_already_emitted_are_dropped_when_it_ends() {
        // The log was empty at subscription, so the replay ran on past where the feed started.
        let mut m = Merge::new(Some(1), true);
        let mut out = Vec::new();
        for seq in 1..=6 {
            out.extend(m.push_replayed(msg(seq)));
        }
        for seq in 5..=7 {
            out.extend(delivered(&mut m, msg(seq)));
        }
        out.extend(m.replay_done());
        assert_eq!(names(&out), ["m1.1", "m1.2", "m1.3", "m1.4", "m1.5", "m1.6", "m1.7"]);
        assert_eq!(m.resume(), Some(8));
    }

    #[test]
    fn too_much_held_back_is_an_error() {
        let mut m = Merge::new(Some(1), true);
        let mut result = Ok(Vec::new());
        for seq in 2..=(LISTENER_BUFFER as u64 + 2) {
            result = m.push_delivered(msg(seq));
            if result.is_err() {
                break;
            }
        }
        assert!(result.is_err());
    }

    #[test]
    fn a_backlog_after_a_rewind_keeps_the_renumbered_messages() {
        let mut group = LocalGroup::new();
        for item in [msg(1), msg(2), msg(3), msg(4), msg_in(2, 3), msg_in(2, 4)] {
            group.record(item);
        }
        let (sub, missing) = group.subscribe(Some(3));
        assert!(missing.is_none());
        assert_eq!(names(&sub.backlog), ["m1.3", "m1.4", "m2.3", "m2.4"]);
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
        assert_eq!(names(&first.backlog), ["m1.11", "m1.12", "gap 13-14"]);
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
