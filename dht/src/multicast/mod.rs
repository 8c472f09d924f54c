//! Application-level multicast: Scribe-style trees on the Chord ring, one [`Multicast`] per node
//! for all of its groups.
//!
//! # What this module owns
//! - per group: this node's place in the tree (root, forwarder, member — a member may also
//!   forward), its parent, its children, local membership and, for a member, what it has
//!   delivered and buffered;
//! - per group it roots: the sequence numbering, the bounded history, and replication of every
//!   stamped message to the first successors (backups) before it is sent down;
//! - per group it backs up: a copy of the root's head and history;
//! - publishes and history fetches this node started, with their deadlines and retries.
//!
//! It reads the ring only through `&Node` ([`Node::owns`], [`Node::next_hops`],
//! [`Node::successors`], [`Node::predecessor`]) and never changes it. Like [`Node`], it performs
//! no I/O and reads no clock: the driver feeds it messages, send-failure hints and the time, and
//! drains messages ([`Multicast::poll_transmit`]) and events ([`Multicast::poll_event`]).
//! Multicast messages are one-way; every wait has a deadline and a bounded number of retries.
//!
//! # The protocol
//! - **Join.** A group `g` has id `mid` = SHA-1(g). A node joining routes a `Join` toward `mid`
//!   one hop at a time (Chord's closest preceding node, or the owner when it is within the
//!   successor list). A node on the path that is not in the tree records the sender as its child
//!   and sends its own `Join` onward; a node in the tree records the child and stops. The owner
//!   of `mid` is the root. Each `JoinAck`/`RefreshAck` carries the parent's depth, so a branch
//!   knows whether it is attached to a root; a branch that stays detached (a cycle formed while
//!   the ring repairs) re-joins by another route.
//! - **Broadcast.** A `Publish` is routed to the root, which stamps the next sequence number
//!   (from 1), replicates the message to its first `backups` successors and, once the first
//!   successor acknowledged it, sends it down and acknowledges the publisher with the number.
//!   Retries carry the same publish id and the root recognises them, so a publish is stamped at
//!   most once per history window. Members deliver in sequence order, exactly once.
//! - **Gaps.** A member that sees a number beyond the next expected one (or learns a higher head
//!   from a refresh acknowledgement) buffers what came early (bounded) and fetches the missing
//!   range from the root (whose address data messages carry). A range the root no longer holds
//!   is reported as [`GroupEvent::Gap`] and counted, never skipped silently.
//! - **Repair.** Children refresh their parent every `refresh_interval`; a parent drops children
//!   silent for `child_timeout`; a child whose parent does not answer for `parent_timeout`
//!   re-joins, routing around the dead node. When the root no longer owns `mid` (a node joined
//!   between its predecessor and `mid`), or leaves, it hands its head and history to the new
//!   owner and re-joins as a forwarder; when the root crashes, its first successor, which holds
//!   every released message, takes `mid` over and continues the numbering. A new owner without
//!   any state asks its successor (the previous owner or a backup) before it numbers anything.
//! - **Leave.** A member that leaves with no children prunes itself from its parent; a forwarder
//!   left with neither children nor a local member does the same.
//! - **Bottleneck remover.** A node with `max_children` children that gets one more redirects the
//!   newcomer to the child whose id most closely precedes the newcomer's. (Chord routing already
//!   keeps fan-in near O(log N) per node; the remover bounds it under skewed membership.)
//!
//! # Invariants
//! - Every queue and map is bounded (config); anything from the network that is malformed, for a
//!   group this node does not know, from a node that is not the expected peer, or otherwise
//!   impossible is dropped and counted in [`MulticastCounters`]; nothing panics on input.
//! - Deterministic: ordered maps only; no randomness is needed.

mod config;
mod wire;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use thiserror::Error;
use tracing::debug;

pub use config::{MulticastConfig, MulticastConfigError};
pub use wire::{
    GroupDecodeError, GroupMessage, GroupName, InvalidGroupMessage, InvalidGroupName, MAX_BATCH,
    MAX_BODY_BYTES, MAX_FROM_BYTES, MAX_GROUP_FRAME_BYTES, MAX_GROUP_NAME_BYTES, MAX_PATH, MAX_ROUTE_HOPS,
    MAX_SEQ, Stamped, decode, encode, short_id,
};

use crate::address::{Address, NodeRef};
use crate::id::Id;
use crate::node::Node;
use crate::time::Time;

/// A branch deeper than this is taken for a cycle and re-joins.
const MAX_TREE_DEPTH: u16 = 64;
/// A state query unanswered this many times makes the owner start a fresh numbering.
const MAX_STATE_QUERIES: u32 = 20;
/// After a hand-off a new root keeps the role this long even if its ring view does not yet say it
/// owns `mid` (the old owner's leave notice may still be on its way).
const HANDOFF_GRACE: Duration = Duration::from_secs(5);
/// How long a peer that failed stays avoided when routing.
const SUSPECT_FOR: Duration = Duration::from_secs(5);
/// Routing candidates considered per hop.
const ROUTE_CANDIDATES: usize = 8;

/// Identifies a publish started with [`Multicast::publish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishId(pub u64);

/// Why a group operation was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum GroupError {
    /// This node is not a ring member; join the ring first.
    #[error("this node is not a member of a ring")]
    NotJoined,
    /// This node already holds state for the configured number of groups.
    #[error("too many groups (at most {max})")]
    TooManyGroups {
        /// The bound.
        max: usize,
    },
    /// The body is larger than the configured cap; send less.
    #[error("body of {len} bytes exceeds the cap of {max}")]
    BodyTooLarge {
        /// The body's length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The `from` label is longer than [`MAX_FROM_BYTES`].
    #[error("from label of {0} bytes is too long")]
    FromTooLong(usize),
    /// Too many publishes are in flight; retry after some are acknowledged.
    #[error("too many publishes in flight")]
    Overloaded,
}

/// Why a publish failed after it was accepted.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PublishError {
    /// No root acknowledged it within [`MulticastConfig::publish_timeout`]; it may or may not
    /// have been delivered. Publish again if it matters (it will get a new number).
    #[error("no acknowledgement from the root in time")]
    TimedOut,
    /// This node left (or left the ring) before the root acknowledged it.
    #[error("this node left before the publish was acknowledged")]
    Left,
}

/// One message of a group's history, as handed to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryMessage {
    /// Its number.
    pub seq: u64,
    /// The publishing user's label.
    pub from: String,
    /// The payload.
    pub body: Vec<u8>,
    /// The publisher's timestamp.
    pub ts_ms: u64,
}

/// Something the application may want to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupEvent {
    /// A message of a group this node is a member of, in sequence order, exactly once.
    Delivered {
        /// The group.
        group: GroupName,
        /// Its number.
        seq: u64,
        /// The publishing user's label.
        from: String,
        /// The payload.
        body: Vec<u8>,
        /// The publisher's timestamp.
        ts_ms: u64,
    },
    /// The root stamped and replicated a publish of this node.
    Published {
        /// The publish.
        id: PublishId,
        /// The group.
        group: GroupName,
        /// Its number.
        seq: u64,
    },
    /// A publish of this node was not acknowledged.
    PublishFailed {
        /// The publish.
        id: PublishId,
        /// The group.
        group: GroupName,
        /// Why.
        error: PublishError,
    },
    /// Messages `from..=to` of a group this node is a member of are gone from the root's history
    /// and were not delivered here.
    Gap {
        /// The group.
        group: GroupName,
        /// First missing number.
        from: u64,
        /// Last missing number.
        to: u64,
    },
    /// The answer to [`Multicast::request_history`]: what the root holds of `from..=covered_to`
    /// (absent numbers in that range are gone); ask again from `covered_to + 1` for more.
    History {
        /// The group.
        group: GroupName,
        /// The messages, in order.
        messages: Vec<HistoryMessage>,
        /// The range answered ends here.
        covered_to: u64,
        /// The root's released head.
        head: u64,
    },
    /// A history request got no answer.
    HistoryFailed {
        /// The group.
        group: GroupName,
        /// The first number asked for.
        from_seq: u64,
    },
}

/// This node's role in one group's tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// It owns `mid`, numbers the messages and sends them down.
    Root,
    /// It relays for its children and is not a member.
    Forwarder,
    /// It is a member (and relays for its children, if it has any).
    Member,
}

/// One group as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSummary<A> {
    /// The group.
    pub name: GroupName,
    /// Its ring id.
    pub mid: Id,
    /// This node's role.
    pub role: Role,
    /// The parent, `None` at the root or while (re-)joining.
    pub parent: Option<NodeRef<A>>,
    /// The children, in address order.
    pub children: Vec<NodeRef<A>>,
    /// Whether a local member joined.
    pub is_member: bool,
    /// The highest number released by the root, as known here.
    pub head: Option<u64>,
    /// Depth below the root (0 at the root), `None` while detached.
    pub depth: Option<u16>,
    /// For a member: the next number it will deliver.
    pub next_seq: Option<u64>,
}

/// What the multicast core did and rejected. Monotonic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MulticastCounters {
    /// Messages handed to the driver.
    pub messages_sent: u64,
    /// Data messages handed to the driver (a subset of `messages_sent`).
    pub data_sent: u64,
    /// Messages accepted for processing.
    pub messages_received: u64,
    /// Messages that failed validation (bad name, oversized, bad numbers, forged references).
    pub dropped_invalid: u64,
    /// Messages for a group this node holds no state for (where state is required).
    pub dropped_unknown_group: u64,
    /// Data or acknowledgements from a node that is not this node's parent or join target.
    pub dropped_not_parent: u64,
    /// Replies that match nothing in flight (late, duplicated or made up).
    pub dropped_unexpected: u64,
    /// Data too far ahead of the next expected number, or beyond the buffer bound.
    pub dropped_out_of_window: u64,
    /// State pushed by a node that cannot be the group's root or its neighbour.
    pub dropped_unauthorized: u64,
    /// Routed messages dropped at the hop limit, or with no next hop.
    pub dropped_no_route: u64,
    /// Messages arriving while this node is not a ring member.
    pub dropped_not_member: u64,
    /// Messages dropped because a bound (groups, queued publishes) was reached.
    pub dropped_overload: u64,
    /// Data a member had already delivered.
    pub duplicates: u64,
    /// Gap events.
    pub gaps: u64,
    /// Numbers reported missing in gap events.
    pub gap_messages: u64,
    /// Joins sent (first joins and re-joins).
    pub joins_sent: u64,
    /// Parents taken for dead (no refresh acknowledgement in time, or the driver said so).
    pub parent_failures: u64,
    /// Branches that re-joined because they stayed detached.
    pub detached_rejoins: u64,
    /// Parent links dropped because the parent turned out to hang below this node.
    pub cycles_broken: u64,
    /// Children dropped for not refreshing.
    pub children_expired: u64,
    /// Joins redirected to a child by the bottleneck remover.
    pub redirects: u64,
    /// Fetches sent (gap fills and history requests, including retries).
    pub fetches_sent: u64,
    /// Publishes sent again.
    pub publish_retries: u64,
    /// Publishes that failed.
    pub publishes_failed: u64,
    /// Stamped messages replicated again because the first backup had not acknowledged them.
    pub replication_retries: u64,
    /// Root roles handed to a new owner.
    pub handoffs: u64,
    /// Root roles taken over from a backup copy or a hand-off.
    pub takeovers: u64,
    /// Roots that started numbering afresh because no state could be learnt.
    pub fresh_roots: u64,
    /// Publishes recognised as retries of one already stamped.
    pub duplicate_publishes: u64,
}

#[derive(Clone, Debug)]
struct Child {
    id: Id,
    last_heard: Time,
}

#[derive(Clone, Debug)]
struct Joining<A> {
    to: Option<A>,
    deadline: Time,
}

#[derive(Clone, Debug)]
struct QueuedPublish<A> {
    origin: NodeRef<A>,
    id: u64,
    from: String,
    body: Vec<u8>,
    ts_ms: u64,
}

type History<A> = BTreeMap<u64, (Stamped<A>, Time)>;

/// What a parent says about the tree in `JoinAck`/`RefreshAck`: depth, head, root, path.
type ParentView<A> = (Option<u16>, Option<u64>, Option<A>, Vec<u64>);

#[derive(Clone, Debug)]
struct RootState<A> {
    /// False while the head is being learnt from the successor.
    ready: bool,
    query_deadline: Time,
    queries: u32,
    /// Highest number stamped.
    head: u64,
    /// Highest number sent down (everything up to it is held by the first backup).
    released: u64,
    acked: BTreeSet<u64>,
    history: History<A>,
    by_origin: BTreeMap<(A, u64), u64>,
    queued: VecDeque<QueuedPublish<A>>,
    /// Backups that received the whole history.
    synced: BTreeSet<A>,
    next_heartbeat: Time,
    repl_deadline: Option<Time>,
    /// Keep the role until then even if the ring view disagrees (fresh hand-off).
    hold_until: Time,
}

impl<A: Address> RootState<A> {
    fn pending(now: Time) -> Self {
        RootState {
            ready: false,
            query_deadline: now,
            queries: 0,
            head: 0,
            released: 0,
            acked: BTreeSet::new(),
            history: BTreeMap::new(),
            by_origin: BTreeMap::new(),
            queued: VecDeque::new(),
            synced: BTreeSet::new(),
            next_heartbeat: now,
            repl_deadline: None,
            hold_until: now,
        }
    }

    /// A root continuing from a copy: everything the copy holds counts as released, since it is
    /// now held by two nodes (the previous root or backup, and this one).
    fn adopt(&mut self, head: u64, history: History<A>) {
        self.ready = true;
        for (seq, entry) in history {
            self.by_origin.insert((entry.0.origin.clone(), entry.0.publish_id), seq);
            self.history.entry(seq).or_insert(entry);
        }
        self.head = self.head.max(head).max(self.history.last_key_value().map_or(0, |(s, _)| *s));
        self.released = self.head;
        self.acked.clear();
    }
}

#[derive(Clone, Debug)]
struct Replica<A> {
    name: GroupName,
    head: u64,
    history: History<A>,
    updated: Time,
}

#[derive(Clone, Debug)]
struct Group<A> {
    name: GroupName,
    mid: Id,
    member: bool,
    parent: Option<NodeRef<A>>,
    depth: Option<u16>,
    last_parent_ack: Time,
    detached_since: Option<Time>,
    next_refresh: Time,
    joining: Option<Joining<A>>,
    /// A former parent not to route through for a while (after a detached re-join).
    avoid: Option<(A, Time)>,
    /// Short ids of this node's ancestors, parent first (empty at the root or while detached).
    path: Vec<u64>,
    children: BTreeMap<A, Child>,
    root: Option<RootState<A>>,
    head: Option<u64>,
    root_addr: Option<A>,
    next_seq: Option<u64>,
    buffer: BTreeMap<u64, Stamped<A>>,
    fetching: Option<u64>,
    fetch_after: Time,
    /// Since when a member has known of a number it lacks.
    behind_since: Option<Time>,
}

impl<A: Address> Group<A> {
    fn new(name: GroupName, now: Time) -> Self {
        Group {
            mid: name.id(),
            name,
            member: false,
            parent: None,
            depth: None,
            last_parent_ack: now,
            detached_since: None,
            next_refresh: now,
            joining: None,
            avoid: None,
            path: Vec::new(),
            children: BTreeMap::new(),
            root: None,
            head: None,
            root_addr: None,
            next_seq: None,
            buffer: BTreeMap::new(),
            fetching: None,
            fetch_after: now,
            behind_since: None,
        }
    }

    fn learn_head(&mut self, head: Option<u64>) {
        if let Some(h) = head {
            self.head = Some(self.head.map_or(h, |old| old.max(h)));
        }
    }

    /// What this node tells its children about the group: depth, head, root, path.
    fn advertised(&self, me: &A) -> (Option<u16>, Option<u64>, Option<A>, Vec<u64>) {
        match &self.root {
            Some(root) if root.ready => (Some(0), Some(root.released), Some(me.clone()), Vec::new()),
            Some(_) => (None, None, None, Vec::new()),
            None => (self.depth, self.head, self.root_addr.clone(), self.path.clone()),
        }
    }
}

#[derive(Clone, Debug)]
struct PendingPublish {
    group: GroupName,
    from: String,
    body: Vec<u8>,
    ts_ms: u64,
    deadline: Time,
    retry_at: Time,
}

#[derive(Clone, Debug)]
struct PendingFetch<A> {
    mid: Id,
    group: GroupName,
    from_seq: u64,
    to_seq: u64,
    target: Option<A>,
    deadline: Time,
    attempts: u32,
    user: bool,
}

/// The multicast state machine of one node, for all of its groups. See the module docs.
#[derive(Debug)]
pub struct Multicast<A: Address> {
    me: NodeRef<A>,
    me_short: u64,
    config: MulticastConfig,
    groups: BTreeMap<Id, Group<A>>,
    replicas: BTreeMap<Id, Replica<A>>,
    publishes: BTreeMap<u64, PendingPublish>,
    next_publish: u64,
    fetches: BTreeMap<u64, PendingFetch<A>>,
    next_request: u64,
    suspects: BTreeMap<A, Time>,
    /// Groups whose root role this node handed to another node, until when it must not take the
    /// role back on its own (its ring view may lag behind the new owner's).
    yielded: BTreeMap<Id, (A, Time)>,
    transmits: VecDeque<(A, GroupMessage<A>)>,
    events: VecDeque<GroupEvent>,
    next_tick: Option<Time>,
    counters: MulticastCounters,
}

impl<A: Address> Multicast<A> {
    /// The multicast core of the node `me`. The configuration should have passed
    /// [`MulticastConfig::validate`]; the driver checks it at start.
    pub fn new(me: NodeRef<A>, config: MulticastConfig) -> Self {
        Multicast {
            me_short: short_id(&me.id),
            me,
            config,
            groups: BTreeMap::new(),
            replicas: BTreeMap::new(),
            publishes: BTreeMap::new(),
            next_publish: 0,
            fetches: BTreeMap::new(),
            next_request: 0,
            suspects: BTreeMap::new(),
            yielded: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_tick: None,
            counters: MulticastCounters::default(),
        }
    }

    // ----- accessors -------------------------------------------------------------------------

    /// The configuration in force.
    pub fn config(&self) -> &MulticastConfig {
        &self.config
    }

    /// What this node has done and rejected so far.
    pub fn counters(&self) -> &MulticastCounters {
        &self.counters
    }

    /// Every group this node holds tree state for, in `mid` order.
    pub fn groups(&self) -> Vec<GroupSummary<A>> {
        self.groups
            .values()
            .map(|g| GroupSummary {
                name: g.name.clone(),
                mid: g.mid,
                role: if g.root.is_some() {
                    Role::Root
                } else if g.member {
                    Role::Member
                } else {
                    Role::Forwarder
                },
                parent: g.parent.clone(),
                children: g.children.iter().map(|(a, c)| NodeRef { id: c.id, addr: a.clone() }).collect(),
                is_member: g.member,
                head: g.advertised(&self.me.addr).1.or(g.head),
                depth: g.advertised(&self.me.addr).0,
                next_seq: g.next_seq.filter(|_| g.member),
            })
            .collect()
    }

    /// Groups for which this node holds a backup copy of the root's state (`mid`, head).
    pub fn backups(&self) -> Vec<(GroupName, u64)> {
        self.replicas.values().map(|r| (r.name.clone(), r.head)).collect()
    }

    // ----- commands --------------------------------------------------------------------------

    /// Joins `group` as a local member: messages numbered from about now on arrive as
    /// [`GroupEvent::Delivered`].
    pub fn join(&mut self, group: &GroupName, ring: &Node<A>, now: Time) -> Result<(), GroupError> {
        if !ring.is_member() {
            return Err(GroupError::NotJoined);
        }
        let mid = group.id();
        if !self.groups.contains_key(&mid) {
            if self.groups.len() >= self.config.max_groups {
                return Err(GroupError::TooManyGroups { max: self.config.max_groups });
            }
            self.groups.insert(mid, Group::new(group.clone(), now));
        }
        let g = self.groups.get_mut(&mid).expect("inserted above");
        if !g.member {
            g.member = true;
            g.next_seq = g.root.as_ref().filter(|r| r.ready).map(|r| r.released + 1);
            g.buffer.clear();
        }
        self.ensure_attached(mid, ring, now, 0);
        self.arm(now);
        Ok(())
    }

    /// Leaves `group` as a local member; the tree prunes the branch if nothing else needs it.
    /// (`ring` is unused today; it keeps the command signatures uniform.)
    pub fn leave(&mut self, group: &GroupName, ring: &Node<A>, now: Time) {
        let mid = group.id();
        if let Some(g) = self.groups.get_mut(&mid) {
            g.member = false;
            g.next_seq = None;
            g.buffer.clear();
        }
        self.maybe_prune(mid);
        let _ = ring;
        self.arm(now);
    }

    /// Publishes `body` to `group` (membership not required). The root's acknowledgement arrives
    /// as [`GroupEvent::Published`] with the assigned number, or [`GroupEvent::PublishFailed`]
    /// after [`MulticastConfig::publish_timeout`].
    pub fn publish(
        &mut self,
        group: &GroupName,
        from: String,
        body: Vec<u8>,
        ts_ms: u64,
        ring: &Node<A>,
        now: Time,
    ) -> Result<PublishId, GroupError> {
        if !ring.is_member() {
            return Err(GroupError::NotJoined);
        }
        if body.len() > self.config.max_body_bytes {
            return Err(GroupError::BodyTooLarge { len: body.len(), max: self.config.max_body_bytes });
        }
        if from.len() > MAX_FROM_BYTES {
            return Err(GroupError::FromTooLong(from.len()));
        }
        if self.publishes.len() >= self.config.max_pending_publishes {
            return Err(GroupError::Overloaded);
        }
        let id = self.next_publish;
        self.next_publish += 1;
        self.publishes.insert(
            id,
            PendingPublish {
                group: group.clone(),
                from,
                body,
                ts_ms,
                deadline: now + self.config.publish_timeout,
                retry_at: now + self.config.publish_retry,
            },
        );
        self.send_publish(id, ring, now);
        self.arm(now);
        Ok(PublishId(id))
    }

    /// Asks the root for messages `from_seq..` of `group` (as many as one reply holds); the
    /// answer arrives as [`GroupEvent::History`] or [`GroupEvent::HistoryFailed`].
    pub fn request_history(&mut self, group: &GroupName, from_seq: u64, ring: &Node<A>, now: Time) {
        let mid = group.id();
        let target = self.groups.get(&mid).and_then(|g| g.root_addr.clone());
        let request = self.next_request;
        self.next_request += 1;
        self.fetches.insert(
            request,
            PendingFetch {
                mid,
                group: group.clone(),
                from_seq: from_seq.max(1),
                to_seq: u64::MAX,
                target,
                deadline: now,
                attempts: 0,
                user: true,
            },
        );
        self.send_fetch(request, ring, now);
        self.arm(now);
    }

    /// Graceful shutdown: hands every rooted group to the successor, tells children to re-join
    /// elsewhere, prunes from parents, and fails publishes still in flight.
    pub fn leave_all(&mut self, ring: &Node<A>, now: Time) {
        let successor = ring.successors().first().cloned();
        let mids: Vec<Id> = self.groups.keys().copied().collect();
        for mid in mids {
            if let Some(s) = &successor
                && self.groups[&mid].root.as_ref().is_some_and(|r| r.ready)
            {
                self.hand_off(mid, s.addr.clone(), now);
            }
            let g = self.groups.remove(&mid).expect("key listed above");
            for child in g.children.keys() {
                self.send(child.clone(), GroupMessage::Rejoin { group: g.name.clone() });
            }
            if let Some(parent) = g.parent {
                self.send(parent.addr, GroupMessage::Prune { group: g.name.clone() });
            }
        }
        // Backup copies go to the successor, which becomes the next backup once we are gone.
        let replicas = std::mem::take(&mut self.replicas);
        if let Some(s) = &successor {
            for replica in replicas.into_values() {
                self.send_state(&s.addr, &replica.name, replica.head, &replica.history, false);
            }
        }
        for (id, p) in std::mem::take(&mut self.publishes) {
            self.counters.publishes_failed += 1;
            self.events.push_back(GroupEvent::PublishFailed {
                id: PublishId(id),
                group: p.group,
                error: PublishError::Left,
            });
        }
        self.fetches.clear();
        self.next_tick = None;
    }

    // ----- inputs ----------------------------------------------------------------------------

    /// Handles a multicast message that arrived from `from` (an authenticated address).
    pub fn handle_message(&mut self, from: A, message: GroupMessage<A>, ring: &Node<A>, now: Time) {
        if from == self.me.addr {
            self.counters.dropped_unexpected += 1;
            return;
        }
        if let Err(error) = message.validate() {
            self.counters.dropped_invalid += 1;
            debug!(peer = ?from, kind = message.kind(), %error, "dropped an invalid multicast message");
            return;
        }
        if !ring.is_member() {
            self.counters.dropped_not_member += 1;
            return;
        }
        let mid = message.group().id();
        if let Some(g) = self.groups.get(&mid)
            && &g.name != message.group()
        {
            // Two names with one SHA-1: not worth supporting, never worth a panic.
            self.counters.dropped_invalid += 1;
            return;
        }
        self.counters.messages_received += 1;
        match message {
            GroupMessage::Join { group, hops } => self.on_join(from, group, hops, ring, now),
            GroupMessage::JoinAck { depth, head, root, path, .. } => {
                self.on_join_ack(mid, from, (depth, head, root, path), ring, now)
            }
            GroupMessage::Redirect { to, .. } => self.on_redirect(mid, from, to, now),
            GroupMessage::Rejoin { .. } => match self.groups.get_mut(&mid) {
                Some(g) if g.root.as_ref().is_some_and(|r| !r.ready) => {
                    // The root answered our state query: it is alive and we do not own mid.
                    self.abandon_pending_root(mid, Some(from), ring, now);
                }
                Some(g) if g.parent.as_ref().is_some_and(|p| p.addr == from) => {
                    g.parent = None;
                    g.depth = None;
                    g.joining = None;
                    g.avoid = Some((from.clone(), now + SUSPECT_FOR));
                    self.ensure_attached(mid, ring, now, 0);
                }
                _ => self.counters.dropped_not_parent += 1,
            },
            GroupMessage::Refresh { group } => {
                let known_child = self.groups.get_mut(&mid).and_then(|g| g.children.get_mut(&from));
                if let Some(child) = known_child {
                    child.last_heard = now;
                    let g = &self.groups[&mid];
                    let (depth, head, root, path) = g.advertised(&self.me.addr);
                    let reply = GroupMessage::RefreshAck { group, depth, head, root, path };
                    self.send(from, reply);
                } else {
                    // A child we forgot (expired, or state lost): adopt it again.
                    self.on_join(from, group, 0, ring, now);
                }
            }
            GroupMessage::RefreshAck { depth, head, root, path, .. } => {
                self.on_refresh_ack(mid, from, (depth, head, root, path), ring, now)
            }
            GroupMessage::Prune { .. } => {
                if self.groups.get_mut(&mid).is_some_and(|g| g.children.remove(&from).is_some()) {
                    self.maybe_prune(mid);
                } else {
                    self.counters.dropped_unexpected += 1;
                }
            }
            GroupMessage::Publish { group, origin, id, from: label, body, ts_ms, hops } => {
                let publish = QueuedPublish { origin, id, from: label, body, ts_ms };
                self.on_publish(mid, group, publish, hops, ring, now);
            }
            GroupMessage::PublishAck { group, id, seq } => match self.publishes.get(&id) {
                Some(p) if p.group == group => {
                    self.publishes.remove(&id);
                    self.events.push_back(GroupEvent::Published { id: PublishId(id), group, seq });
                }
                _ => self.counters.dropped_unexpected += 1,
            },
            GroupMessage::Data { root, message, .. } => self.on_data(mid, from, root, message, ring, now),
            GroupMessage::Fetch { group, requester, request, from_seq, to_seq, hops } => {
                self.on_fetch(mid, group, requester, request, from_seq, to_seq, hops, ring, now)
            }
            GroupMessage::FetchReply { request, covered_to, head, messages, .. } => {
                // A reply must answer a fetch for this very group (request ids are guessable).
                if self.fetches.get(&request).is_none_or(|f| f.mid != mid) {
                    self.counters.dropped_unexpected += 1;
                    return;
                }
                self.on_fetch_reply(from, request, covered_to, head, messages, ring, now)
            }
            GroupMessage::Replicate { group, head, messages, handoff } => {
                self.on_replicate(mid, from, group, head, messages, handoff, ring, now)
            }
            GroupMessage::ReplicateAck { first, last, .. } => {
                self.on_replicate_ack(mid, from, first, last, ring)
            }
            GroupMessage::StateQuery { group } => self.on_state_query(mid, from, group, ring, now),
        }
        self.arm(now);
    }

    /// A hint from the driver that a message to `peer` could not be delivered: parents and join
    /// targets at that address are replaced now rather than after their time-outs.
    pub fn handle_unreachable(&mut self, peer: &A, ring: &Node<A>, now: Time) {
        self.suspects.insert(peer.clone(), now + SUSPECT_FOR);
        let mids: Vec<Id> = self.groups.keys().copied().collect();
        for mid in mids {
            let g = self.groups.get_mut(&mid).expect("key listed above");
            g.children.remove(peer);
            let parent_lost = g.parent.as_ref().is_some_and(|p| &p.addr == peer);
            let join_lost = g.joining.as_ref().is_some_and(|j| j.to.as_ref() == Some(peer));
            if parent_lost || join_lost {
                if parent_lost {
                    self.counters.parent_failures += 1;
                }
                g.parent = None;
                g.depth = None;
                g.joining = None;
                self.ensure_attached(mid, ring, now, 0);
            }
            self.maybe_prune(mid);
        }
        let requests: Vec<u64> =
            self.fetches.iter().filter(|(_, f)| f.target.as_ref() == Some(peer)).map(|(k, _)| *k).collect();
        for request in requests {
            if let Some(f) = self.fetches.get_mut(&request) {
                f.target = None;
            }
            self.send_fetch(request, ring, now);
        }
        self.arm(now);
    }

    /// Runs everything due at `now`: refreshes, time-outs, retries, root ownership checks
    /// (hand-off when `mid` moved, take-over when this node now owns it) and history trimming.
    pub fn handle_timeout(&mut self, ring: &Node<A>, now: Time) {
        if self.next_tick.is_none_or(|t| t > now) {
            return;
        }
        self.next_tick = None;
        self.suspects.retain(|_, until| *until > now);
        self.yielded.retain(|mid, (_, until)| *until > now && !Self::surely_not_owner(ring, mid));
        if ring.is_member() {
            let mids: Vec<Id> = self.groups.keys().copied().collect();
            for mid in mids {
                self.tick_group(mid, ring, now);
            }
            self.tick_replicas(ring, now);
            self.tick_publishes(ring, now);
        }
        self.tick_fetches(ring, now);
        self.arm(now);
    }

    // ----- outputs ---------------------------------------------------------------------------

    /// The next message to send, with its destination.
    pub fn poll_transmit(&mut self) -> Option<(A, GroupMessage<A>)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<GroupEvent> {
        self.events.pop_front()
    }

    /// When [`Multicast::handle_timeout`] must next be called; `None` while this node holds no
    /// multicast state at all.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.next_tick
    }

    // ----- internals: plumbing ---------------------------------------------------------------

    fn arm(&mut self, now: Time) {
        let busy = !self.groups.is_empty()
            || !self.replicas.is_empty()
            || !self.publishes.is_empty()
            || !self.fetches.is_empty();
        if !busy {
            self.next_tick = None;
        } else if self.next_tick.is_none() {
            self.next_tick = Some(now + self.config.tick);
        }
    }

    fn send(&mut self, to: A, message: GroupMessage<A>) {
        if to == self.me.addr {
            return;
        }
        self.counters.messages_sent += 1;
        if matches!(message, GroupMessage::Data { .. }) {
            self.counters.data_sent += 1;
        }
        self.transmits.push_back((to, message));
    }

    /// The next hop toward `mid`, avoiding suspected peers and `exclude`.
    fn route(&self, ring: &Node<A>, mid: &Id, exclude: &[A], now: Time) -> Option<NodeRef<A>> {
        ring.next_hops(mid, ROUTE_CANDIDATES).into_iter().find(|n| {
            n.addr != self.me.addr
                && !exclude.contains(&n.addr)
                && self.suspects.get(&n.addr).is_none_or(|until| *until <= now)
        })
    }

    /// Whether this node may take the root role of `mid` now (it has not just handed it off).
    fn may_root(&self, mid: &Id, now: Time) -> bool {
        self.yielded.get(mid).is_none_or(|(_, until)| *until <= now)
    }

    /// Where to send something for the root: the next hop toward `mid`, or, right after a
    /// hand-off while our ring view still says we own `mid`, the node we handed it to.
    fn toward_root(&self, ring: &Node<A>, mid: &Id, exclude: &[A], now: Time) -> Option<A> {
        self.route(ring, mid, exclude, now).map(|n| n.addr).or_else(|| {
            self.yielded
                .get(mid)
                .filter(|(to, until)| *until > now && !exclude.contains(to))
                .map(|(to, _)| to.clone())
        })
    }

    /// Whether this node's ring view says another node owns `mid` (not merely "unknown").
    fn surely_not_owner(ring: &Node<A>, mid: &Id) -> bool {
        ring.predecessor().is_some() && !ring.owns(mid)
    }

    // ----- internals: tree -------------------------------------------------------------------

    fn on_join(&mut self, child: A, group: GroupName, hops: u8, ring: &Node<A>, now: Time) {
        let mid = group.id();
        if !self.groups.contains_key(&mid) {
            if self.groups.len() >= self.config.max_groups {
                self.counters.dropped_overload += 1;
                return;
            }
            self.groups.insert(mid, Group::new(group.clone(), now));
        }
        let max_children = self.config.max_children;
        let g = self.groups.get_mut(&mid).expect("inserted above");
        if g.parent.as_ref().is_some_and(|p| p.addr == child) {
            // Our parent wants to hang below us: a cycle from inconsistent routing. Let it; we
            // find another way up.
            g.parent = None;
            g.depth = None;
        }
        if g.joining.as_ref().is_some_and(|j| j.to.as_ref() == Some(&child)) {
            g.joining = None;
        }
        if let Some(c) = g.children.get_mut(&child) {
            c.last_heard = now;
        } else if g.children.len() >= max_children {
            let newcomer = child.node_id();
            let to = g
                .children
                .iter()
                .min_by_key(|(_, c)| c.id.distance_to(&newcomer))
                .map(|(a, c)| NodeRef { id: c.id, addr: a.clone() })
                .expect("a full set of children is not empty");
            self.counters.redirects += 1;
            self.send(child, GroupMessage::Redirect { group, to });
            return;
        } else {
            g.children.insert(child.clone(), Child { id: child.node_id(), last_heard: now });
        }
        let (depth, head, root, path) = g.advertised(&self.me.addr);
        self.send(child, GroupMessage::JoinAck { group, depth, head, root, path });
        self.ensure_attached(mid, ring, now, hops.saturating_add(1));
    }

    /// Makes sure the group's node is on its way to the root: takes the root role if this node
    /// owns `mid`, else starts a join unless one is running or a parent is known.
    fn ensure_attached(&mut self, mid: Id, ring: &Node<A>, now: Time, hops: u8) {
        let Some(g) = self.groups.get(&mid) else {
            return;
        };
        if g.root.is_some() {
            return;
        }
        if ring.owns(&mid) && self.may_root(&mid, now) {
            self.become_root(mid, ring, now);
            return;
        }
        if g.parent.is_none() && g.joining.is_none() {
            self.start_join(mid, ring, now, hops);
        }
    }

    fn start_join(&mut self, mid: Id, ring: &Node<A>, now: Time, hops: u8) {
        let Some(g) = self.groups.get(&mid) else {
            return;
        };
        let mut exclude: Vec<A> = g.children.keys().cloned().collect();
        if let Some((a, until)) = &g.avoid
            && *until > now
        {
            exclude.push(a.clone());
        }
        // Right after handing the root role off, join the new root directly: routing toward mid
        // from here would likely pass through our own former subtree.
        let handed_to = self.yielded.get(&mid).filter(|(to, until)| *until > now && !exclude.contains(to));
        let target = if hops > MAX_ROUTE_HOPS {
            None
        } else if let Some((to, _)) = handed_to {
            Some(to.clone())
        } else {
            self.toward_root(ring, &mid, &exclude, now)
        };
        let deadline = now + self.config.rpc_timeout;
        let name = g.name.clone();
        let g = self.groups.get_mut(&mid).expect("present: read above");
        g.joining = Some(Joining { to: target.clone(), deadline });
        match target {
            Some(t) => {
                self.counters.joins_sent += 1;
                self.send(t, GroupMessage::Join { group: name, hops });
            }
            None => self.counters.dropped_no_route += 1,
        }
    }

    /// The state of group `mid` if `from` is this node's parent in it; otherwise the message is
    /// dropped and counted (unknown group, or not from the parent).
    fn group_from_parent(&mut self, mid: &Id, from: &A) -> Option<&mut Group<A>> {
        let Some(g) = self.groups.get_mut(mid) else {
            self.counters.dropped_unknown_group += 1;
            return None;
        };
        if g.parent.as_ref().is_none_or(|p| p.addr != *from) {
            self.counters.dropped_not_parent += 1;
            return None;
        }
        Some(g)
    }

    fn on_join_ack(&mut self, mid: Id, from: A, view: ParentView<A>, ring: &Node<A>, now: Time) {
        let Some(g) = self.groups.get_mut(&mid) else {
            self.counters.dropped_unknown_group += 1;
            return;
        };
        let expected = g.joining.as_ref().is_some_and(|j| j.to.as_ref() == Some(&from));
        if !expected || g.root.is_some() {
            self.counters.dropped_not_parent += 1;
            if g.root.is_some() || g.parent.as_ref().is_none_or(|p| p.addr != from) {
                // It adopted us but we do not want it: undo that at once.
                let name = g.name.clone();
                self.send(from, GroupMessage::Prune { group: name });
            }
            return;
        }
        g.joining = None;
        g.parent = Some(NodeRef::new(from));
        g.last_parent_ack = now;
        g.next_refresh = now + self.config.refresh_interval;
        self.apply_parent_view(mid, view, ring, now);
        self.check_behind(mid, ring, now);
    }

    /// Takes in what the parent said about the tree, unless it shows that the parent hangs below
    /// this node (it is our child, or we are among its ancestors): then the link would close a
    /// cycle, so it is dropped and this node re-joins avoiding that parent.
    fn apply_parent_view(&mut self, mid: Id, view: ParentView<A>, ring: &Node<A>, now: Time) {
        let (depth, head, root, path) = view;
        let me = self.me_short;
        let g = self.groups.get_mut(&mid).expect("callers checked the group exists");
        let parent = g.parent.clone().expect("callers set the parent");
        if g.children.contains_key(&parent.addr) || path.contains(&me) {
            self.counters.cycles_broken += 1;
            g.parent = None;
            g.depth = None;
            g.path.clear();
            g.avoid = Some((parent.addr.clone(), now + self.config.detached_timeout));
            let name = g.name.clone();
            self.send(parent.addr, GroupMessage::Prune { group: name });
            self.start_join(mid, ring, now, 0);
            return;
        }
        g.depth = depth.map(|d| d.saturating_add(1));
        g.path.clear();
        if depth.is_some() {
            g.path.push(short_id(&parent.id));
            g.path.extend(path.into_iter().take(MAX_PATH - 1));
        }
        match g.depth {
            Some(_) => g.detached_since = None,
            None => {
                g.detached_since.get_or_insert(now);
            }
        }
        g.learn_head(head);
        if root.is_some() {
            g.root_addr = root;
        }
        if g.member && g.next_seq.is_none() {
            g.next_seq = head.map(|h| h + 1);
        }
    }

    fn on_redirect(&mut self, mid: Id, from: A, to: NodeRef<A>, now: Time) {
        let Some(g) = self.groups.get_mut(&mid) else {
            self.counters.dropped_unknown_group += 1;
            return;
        };
        if g.joining.as_ref().is_none_or(|j| j.to.as_ref() != Some(&from))
            || to.addr == self.me.addr
            || g.children.contains_key(&to.addr)
        {
            self.counters.dropped_unexpected += 1;
            return;
        }
        g.joining = Some(Joining { to: Some(to.addr.clone()), deadline: now + self.config.rpc_timeout });
        let name = g.name.clone();
        self.counters.joins_sent += 1;
        self.send(to.addr, GroupMessage::Join { group: name, hops: 0 });
    }

    fn on_refresh_ack(&mut self, mid: Id, from: A, view: ParentView<A>, ring: &Node<A>, now: Time) {
        let Some(g) = self.group_from_parent(&mid, &from) else { return };
        g.last_parent_ack = now;
        self.apply_parent_view(mid, view, ring, now);
    }

    /// Removes this node from the tree if nothing needs it there: not the root, no local
    /// member, no children.
    fn maybe_prune(&mut self, mid: Id) {
        let Some(g) = self.groups.get(&mid) else {
            return;
        };
        if g.root.is_some() || g.member || !g.children.is_empty() {
            return;
        }
        let g = self.groups.remove(&mid).expect("present: read above");
        if let Some(parent) = g.parent {
            self.send(parent.addr, GroupMessage::Prune { group: g.name });
        }
    }

    fn tick_group(&mut self, mid: Id, ring: &Node<A>, now: Time) {
        let config = self.config.clone();
        let may_root = self.may_root(&mid, now);
        // Children that stopped refreshing.
        let g = self.groups.get_mut(&mid).expect("callers pass present keys");
        let before = g.children.len();
        g.children.retain(|_, c| now.saturating_since(c.last_heard) < config.child_timeout);
        self.counters.children_expired += (before - g.children.len()) as u64;

        if g.root.is_some() {
            self.tick_root(mid, ring, now);
        } else if ring.owns(&mid) && may_root {
            self.become_root(mid, ring, now);
        } else if let Some(parent) = g.parent.clone() {
            if now.saturating_since(g.last_parent_ack) >= config.parent_timeout {
                debug!(group = %g.name, parent = ?parent.addr, "parent silent: re-joining");
                self.counters.parent_failures += 1;
                self.suspects.insert(parent.addr.clone(), now + SUSPECT_FOR);
                g.parent = None;
                g.depth = None;
                self.start_join(mid, ring, now, 0);
            } else if g.detached_since.is_some_and(|t| now.saturating_since(t) >= config.detached_timeout)
                || g.depth.is_some_and(|d| d > MAX_TREE_DEPTH)
            {
                self.counters.detached_rejoins += 1;
                g.avoid = Some((parent.addr.clone(), now + config.detached_timeout));
                g.parent = None;
                g.depth = None;
                g.detached_since = None;
                let name = g.name.clone();
                self.send(parent.addr, GroupMessage::Prune { group: name });
                self.start_join(mid, ring, now, 0);
            } else if now >= g.next_refresh {
                g.next_refresh = now + config.refresh_interval;
                let name = g.name.clone();
                self.send(parent.addr, GroupMessage::Refresh { group: name });
            }
        } else if let Some(joining) = &g.joining {
            if joining.deadline <= now {
                if let Some(to) = joining.to.clone() {
                    self.suspects.insert(to, now + SUSPECT_FOR);
                }
                self.start_join(mid, ring, now, 0);
            }
        } else {
            self.start_join(mid, ring, now, 0);
        }
        self.maybe_prune(mid);
        if self.groups.contains_key(&mid) {
            self.check_behind(mid, ring, now);
        }
    }

    // ----- internals: root -------------------------------------------------------------------

    /// Takes the root role for `mid`: from a backup copy or hand-off if this node holds one, else
    /// by asking the successor for the state first.
    fn become_root(&mut self, mid: Id, ring: &Node<A>, now: Time) {
        let Some(g) = self.groups.get_mut(&mid) else {
            return;
        };
        if g.root.is_some() {
            return;
        }
        let name = g.name.clone();
        let old_parent = g.parent.take();
        g.joining = None;
        g.depth = Some(0);
        g.detached_since = None;
        g.root_addr = Some(self.me.addr.clone());
        let mut root = RootState::pending(now);
        if let Some(replica) = self.replicas.remove(&mid) {
            self.counters.takeovers += 1;
            root.adopt(replica.head, replica.history);
            debug!(group = %name, head = root.head, "took the root role over from a backup copy");
        } else if let Some(successor) = ring.successors().first().filter(|s| s.addr != self.me.addr) {
            root.queries = 1;
            root.query_deadline = now + self.config.rpc_timeout;
            let to = successor.addr.clone();
            self.send(to, GroupMessage::StateQuery { group: name.clone() });
        } else {
            root.adopt(0, BTreeMap::new());
        }
        let g = self.groups.get_mut(&mid).expect("present: read above");
        g.root = Some(root);
        if let Some(p) = old_parent {
            self.send(p.addr, GroupMessage::Prune { group: name });
        }
        self.on_root_ready(mid, ring, now);
    }

    /// Gives up a root role that never got its state (our ring view was wrong or changed): passes
    /// queued publishes on toward the real root and joins it (`root`, when known) instead.
    fn abandon_pending_root(&mut self, mid: Id, root: Option<A>, ring: &Node<A>, now: Time) {
        let g = self.groups.get_mut(&mid).expect("callers checked the group exists");
        let Some(state) = g.root.take() else {
            return;
        };
        debug!(group = %g.name, "not the owner of mid after all: giving up the root role");
        g.depth = None;
        g.root_addr = root.clone();
        let name = g.name.clone();
        for publish in state.queued {
            let QueuedPublish { origin, id, from, body, ts_ms } = publish;
            let message =
                GroupMessage::Publish { group: name.clone(), origin, id, from, body, ts_ms, hops: 0 };
            match root.clone().or_else(|| self.route(ring, &mid, &[], now).map(|n| n.addr)) {
                Some(to) => self.send(to, message),
                None => self.counters.dropped_no_route += 1,
            }
        }
        match root {
            Some(to) => {
                let g = self.groups.get_mut(&mid).expect("present");
                g.joining = Some(Joining { to: Some(to.clone()), deadline: now + self.config.rpc_timeout });
                self.counters.joins_sent += 1;
                self.send(to, GroupMessage::Join { group: name, hops: 0 });
            }
            None => self.start_join(mid, ring, now, 0),
        }
    }

    /// Once the root knows its head: numbers queued publishes and starts a local member's
    /// delivery.
    fn on_root_ready(&mut self, mid: Id, ring: &Node<A>, now: Time) {
        let Some(g) = self.groups.get_mut(&mid) else {
            return;
        };
        let Some(root) = g.root.as_mut().filter(|r| r.ready) else {
            return;
        };
        g.head = Some(root.released);
        if g.member && g.next_seq.is_none() {
            g.next_seq = Some(root.released + 1);
        }
        let queued = std::mem::take(&mut root.queued);
        let name = g.name.clone();
        for publish in queued {
            self.root_publish(mid, &name, publish, ring, now);
        }
        self.check_behind(mid, ring, now);
    }

    fn on_publish(
        &mut self,
        mid: Id,
        group: GroupName,
        publish: QueuedPublish<A>,
        hops: u8,
        ring: &Node<A>,
        now: Time,
    ) {
        let rooted = self.groups.get(&mid).is_some_and(|g| g.root.is_some());
        if !rooted && ring.owns(&mid) && self.may_root(&mid, now) {
            if !self.groups.contains_key(&mid) {
                if self.groups.len() >= self.config.max_groups {
                    self.counters.dropped_overload += 1;
                    return;
                }
                self.groups.insert(mid, Group::new(group.clone(), now));
            }
            self.become_root(mid, ring, now);
        }
        if self.groups.get(&mid).is_some_and(|g| g.root.is_some()) {
            self.root_publish(mid, &group, publish, ring, now);
            return;
        }
        let next = if hops >= MAX_ROUTE_HOPS { None } else { self.toward_root(ring, &mid, &[], now) };
        match next {
            Some(next) => {
                let QueuedPublish { origin, id, from, body, ts_ms } = publish;
                let message = GroupMessage::Publish { group, origin, id, from, body, ts_ms, hops: hops + 1 };
                self.send(next, message);
            }
            None => self.counters.dropped_no_route += 1,
        }
    }

    fn root_publish(
        &mut self,
        mid: Id,
        group: &GroupName,
        publish: QueuedPublish<A>,
        ring: &Node<A>,
        now: Time,
    ) {
        let max_queued = self.config.max_pending_publishes;
        let g = self.groups.get_mut(&mid).expect("callers checked the root exists");
        let root = g.root.as_mut().expect("callers checked the root exists");
        if !root.ready {
            if root.queued.len() < max_queued {
                root.queued.push_back(publish);
            } else {
                self.counters.dropped_overload += 1;
            }
            return;
        }
        if let Some(&seq) = root.by_origin.get(&(publish.origin.addr.clone(), publish.id)) {
            self.counters.duplicate_publishes += 1;
            if seq <= root.released {
                self.ack_publisher(group, &publish.origin.addr, publish.id, seq);
            }
            return;
        }
        root.head += 1;
        let seq = root.head;
        let stamped = Stamped {
            seq,
            from: publish.from,
            body: publish.body,
            ts_ms: publish.ts_ms,
            origin: publish.origin.addr.clone(),
            publish_id: publish.id,
        };
        root.by_origin.insert((stamped.origin.clone(), stamped.publish_id), seq);
        root.history.insert(seq, (stamped.clone(), now));
        let backups = self.backup_set(ring);
        if backups.is_empty() {
            let root = self.groups.get_mut(&mid).and_then(|g| g.root.as_mut()).expect("present: used above");
            root.acked.insert(seq);
            self.release(mid);
            return;
        }
        let root = self.groups.get_mut(&mid).and_then(|g| g.root.as_mut()).expect("present: used above");
        root.repl_deadline.get_or_insert(now + self.config.rpc_timeout);
        for b in backups {
            let message = GroupMessage::Replicate {
                group: group.clone(),
                head: seq,
                messages: vec![stamped.clone()],
                handoff: false,
            };
            self.send(b, message);
        }
        self.trim_root_history(mid, now);
    }

    fn backup_set(&self, ring: &Node<A>) -> Vec<A> {
        ring.successors()
            .iter()
            .filter(|s| s.addr != self.me.addr)
            .take(self.config.backups)
            .map(|s| s.addr.clone())
            .collect()
    }

    /// Sends down, in order, every stamped message the first backup holds.
    fn release(&mut self, mid: Id) {
        loop {
            let g = self.groups.get_mut(&mid).expect("callers checked the group exists");
            let root = g.root.as_mut().expect("callers checked the root exists");
            let next = root.released + 1;
            if !root.acked.remove(&next) {
                if root.released >= root.head {
                    root.repl_deadline = None;
                }
                return;
            }
            root.released = next;
            let Some((message, _)) = root.history.get(&next).cloned() else {
                continue; // trimmed already (history far smaller than the backlog): nothing to send
            };
            g.head = Some(next);
            let name = g.name.clone();
            let children: Vec<A> = g.children.keys().cloned().collect();
            let member = g.member;
            for child in children {
                let data = GroupMessage::Data {
                    group: name.clone(),
                    root: self.me.addr.clone(),
                    message: message.clone(),
                };
                self.send(child, data);
            }
            self.ack_publisher(&name, &message.origin, message.publish_id, next);
            if member {
                self.member_receive(mid, message, false);
            }
        }
    }

    fn ack_publisher(&mut self, group: &GroupName, origin: &A, id: u64, seq: u64) {
        if *origin == self.me.addr {
            if self.publishes.get(&id).is_some_and(|p| &p.group == group) {
                self.publishes.remove(&id);
                self.events.push_back(GroupEvent::Published { id: PublishId(id), group: group.clone(), seq });
            }
        } else {
            self.send(origin.clone(), GroupMessage::PublishAck { group: group.clone(), id, seq });
        }
    }

    fn trim_root_history(&mut self, mid: Id, now: Time) {
        let (max, age) = (self.config.history_messages, self.config.history_age);
        let Some(root) = self.groups.get_mut(&mid).and_then(|g| g.root.as_mut()) else {
            return;
        };
        // Unreleased messages stay: they have not been sent down yet.
        while let Some((&seq, (_, at))) = root.history.first_key_value() {
            let too_many = root.history.len() > max;
            let too_old = now.saturating_since(*at) > age;
            if seq > root.released || !(too_many || too_old) {
                break;
            }
            let (m, _) = root.history.remove(&seq).expect("first key present");
            root.by_origin.remove(&(m.origin, m.publish_id));
        }
    }

    fn tick_root(&mut self, mid: Id, ring: &Node<A>, now: Time) {
        let config = self.config.clone();
        let g = self.groups.get_mut(&mid).expect("callers pass present keys");
        let name = g.name.clone();
        let root = g.root.as_mut().expect("callers checked the root exists");
        if !root.ready && Self::surely_not_owner(ring, &mid) {
            self.abandon_pending_root(mid, None, ring, now);
            return;
        }
        if !root.ready {
            if root.query_deadline <= now {
                if root.queries >= MAX_STATE_QUERIES || ring.successors().is_empty() {
                    debug!(group = %name, "no state learnt: numbering afresh");
                    self.counters.fresh_roots += 1;
                    root.adopt(0, BTreeMap::new());
                    self.on_root_ready(mid, ring, now);
                } else {
                    root.queries += 1;
                    root.query_deadline = now + config.rpc_timeout;
                    if let Some(s) = ring.successors().first() {
                        let to = s.addr.clone();
                        self.send(to, GroupMessage::StateQuery { group: name });
                    }
                }
            }
            return;
        }
        if root.hold_until <= now
            && Self::surely_not_owner(ring, &mid)
            && let Some(predecessor) = ring.predecessor()
        {
            // mid ∉ (predecessor, us]: the predecessor lies in [mid, us), so it is the new owner or
            // the next node back toward it (which hands on in turn).
            debug!(group = %name, to = ?predecessor.addr, "no longer owner of mid: handing the root role off");
            let to = predecessor.addr.clone();
            self.hand_off(mid, to, now);
            self.start_join(mid, ring, now, 0);
            return;
        }
        // Backups: new ones get the whole history; all get the head now and then.
        let backups = self.backup_set(ring);
        let g = self.groups.get_mut(&mid).expect("present");
        let root = g.root.as_mut().expect("present");
        root.synced.retain(|b| backups.contains(b));
        let fresh: Vec<A> = backups.iter().filter(|b| !root.synced.contains(*b)).cloned().collect();
        let heartbeat = root.next_heartbeat <= now;
        if heartbeat {
            root.next_heartbeat = now + config.backup_heartbeat;
        }
        let (head, history) = (root.head, root.history.clone());
        for b in &fresh {
            root.synced.insert(b.clone());
        }
        for b in fresh {
            self.send_state(&b, &name, head, &history, false);
        }
        if heartbeat {
            for b in &backups {
                let beat = GroupMessage::Replicate {
                    group: name.clone(),
                    head,
                    messages: Vec::new(),
                    handoff: false,
                };
                self.send(b.clone(), beat);
            }
        }
        // Unacknowledged stamps: resend to the current backups, or release when alone.
        let root = self.groups.get_mut(&mid).and_then(|g| g.root.as_mut()).expect("present");
        if root.released < root.head {
            if backups.is_empty() {
                for seq in root.released + 1..=root.head {
                    root.acked.insert(seq);
                }
                self.release(mid);
            } else if root.repl_deadline.is_some_and(|t| t <= now) {
                root.repl_deadline = Some(now + config.rpc_timeout);
                let unreleased: Vec<Stamped<A>> =
                    root.history.range(root.released + 1..).map(|(_, (m, _))| m.clone()).collect();
                self.counters.replication_retries += 1;
                for b in &backups {
                    for batch in wire::batches(&unreleased, config.max_frame_bytes - 4096) {
                        let message = GroupMessage::Replicate {
                            group: name.clone(),
                            head,
                            messages: batch,
                            handoff: false,
                        };
                        self.send(b.clone(), message);
                    }
                }
            }
        }
        self.trim_root_history(mid, now);
    }

    /// Sends a group's head and history to `to`, in batches that fit the frame cap.
    fn send_state(&mut self, to: &A, name: &GroupName, head: u64, history: &History<A>, handoff: bool) {
        let messages: Vec<Stamped<A>> = history.values().map(|(m, _)| m.clone()).collect();
        let batches = wire::batches(&messages, self.config.max_frame_bytes - 4096);
        if batches.is_empty() {
            let message =
                GroupMessage::Replicate { group: name.clone(), head, messages: Vec::new(), handoff };
            self.send(to.clone(), message);
        }
        for batch in batches {
            let message = GroupMessage::Replicate { group: name.clone(), head, messages: batch, handoff };
            self.send(to.clone(), message);
        }
    }

    /// Gives the root role to `to`: releases what is stamped, sends it the state, and keeps a
    /// copy as a backup (this node is usually the new root's successor). The caller re-joins.
    fn hand_off(&mut self, mid: Id, to: A, now: Time) {
        let g = self.groups.get_mut(&mid).expect("callers checked the group exists");
        if let Some(root) = g.root.as_mut() {
            for seq in root.released + 1..=root.head {
                root.acked.insert(seq);
            }
        }
        self.release(mid);
        let g = self.groups.get_mut(&mid).expect("present");
        let root = g.root.take().expect("callers checked the root exists");
        let name = g.name.clone();
        g.depth = None;
        g.root_addr = Some(to.clone());
        self.yielded.insert(mid, (to.clone(), now + HANDOFF_GRACE * 2));
        self.counters.handoffs += 1;
        self.send_state(&to, &name, root.head, &root.history, true);
        if self.replicas.len() < self.config.max_groups {
            self.replicas.insert(mid, Replica { name, head: root.head, history: root.history, updated: now });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_replicate(
        &mut self,
        mid: Id,
        from: A,
        group: GroupName,
        head: u64,
        messages: Vec<Stamped<A>>,
        handoff: bool,
        ring: &Node<A>,
        now: Time,
    ) {
        // Only the root (which lies between mid and us, we being its successor), our ring
        // neighbours (hand-off from the successor, state answers) may push state.
        let sender = from.node_id();
        let plausible = sender == mid
            || sender.in_open(&mid, &self.me.id)
            || ring.successors().iter().any(|s| s.addr == from)
            || ring.predecessor().is_some_and(|p| p.addr == from);
        if !plausible {
            self.counters.dropped_unauthorized += 1;
            return;
        }
        let range = messages.first().map(|f| f.seq).zip(messages.last().map(|l| l.seq));
        let rooted = self.groups.get(&mid).is_some_and(|g| g.root.is_some());
        if rooted {
            let g = self.groups.get_mut(&mid).expect("present");
            let root = g.root.as_mut().expect("present");
            if root.ready && !handoff {
                // Another node believes it is the root: its view is stale; it hands off soon.
                self.counters.dropped_unexpected += 1;
                return;
            }
            let history: History<A> = messages.into_iter().map(|m| (m.seq, (m, now))).collect();
            let was_ready = root.ready;
            root.adopt(head, history);
            if ring.predecessor().is_some_and(|p| p.addr == from) || !Self::surely_not_owner(ring, &mid) {
                root.hold_until = now + HANDOFF_GRACE;
            }
            if !was_ready {
                self.on_root_ready(mid, ring, now);
            }
            return;
        }
        if !self.replicas.contains_key(&mid) && self.replicas.len() >= self.config.max_groups {
            self.counters.dropped_overload += 1;
            return;
        }
        let max = self.config.history_messages;
        let replica = self.replicas.entry(mid).or_insert_with(|| Replica {
            name: group.clone(),
            head: 0,
            history: BTreeMap::new(),
            updated: now,
        });
        replica.head = replica.head.max(head);
        replica.updated = now;
        for m in messages {
            replica.history.entry(m.seq).or_insert((m, now));
        }
        while replica.history.len() > max {
            replica.history.pop_first();
        }
        if let Some((first, last)) = range
            && !handoff
        {
            self.send(from.clone(), GroupMessage::ReplicateAck { group: group.clone(), first, last });
        }
        if handoff {
            if !self.groups.contains_key(&mid) {
                if self.groups.len() >= self.config.max_groups {
                    self.counters.dropped_overload += 1;
                    return;
                }
                self.groups.insert(mid, Group::new(group, now));
            }
            self.yielded.remove(&mid);
            self.become_root(mid, ring, now);
            // Keep the role for a while unless our own view says someone before us owns mid — but
            // a hand-off from our predecessor means it is leaving, whatever our view says yet.
            let from_predecessor = ring.predecessor().is_some_and(|p| p.addr == from);
            let hold = from_predecessor || !Self::surely_not_owner(ring, &mid);
            if let Some(root) = self.groups.get_mut(&mid).and_then(|g| g.root.as_mut())
                && hold
            {
                root.hold_until = now + HANDOFF_GRACE;
            }
        }
    }

    fn on_replicate_ack(&mut self, mid: Id, from: A, first: u64, last: u64, ring: &Node<A>) {
        let primary = ring.successors().first().is_some_and(|s| s.addr == from);
        let Some(root) = self.groups.get_mut(&mid).and_then(|g| g.root.as_mut()).filter(|r| r.ready) else {
            self.counters.dropped_unexpected += 1;
            return;
        };
        if !primary {
            // The second backup's acknowledgements are not waited for.
            return;
        }
        let lo = first.max(root.released + 1);
        let hi = last.min(root.head);
        for seq in lo..=hi {
            root.acked.insert(seq);
        }
        self.release(mid);
    }

    fn on_state_query(&mut self, mid: Id, from: A, group: GroupName, ring: &Node<A>, now: Time) {
        let asker = from.node_id();
        // The asker owns mid in its view; it does if it lies in [mid, us).
        let legit = asker == mid || asker.in_open(&mid, &self.me.id);
        if self.groups.get(&mid).is_some_and(|g| g.root.as_ref().is_some_and(|r| r.ready)) {
            if legit {
                self.hand_off(mid, from, now);
                self.start_join(mid, ring, now, 0);
            } else {
                // Its ring view is stale: we are the root; it should join, not number.
                self.counters.dropped_unauthorized += 1;
                self.send(from, GroupMessage::Rejoin { group });
            }
            return;
        }
        if self.groups.get(&mid).is_some_and(|g| g.root.is_some()) {
            return; // learning the state ourselves
        }
        if !legit {
            // By our view the asker does not own mid; answering "no state" could make it start a
            // second numbering.
            self.counters.dropped_unauthorized += 1;
            return;
        }
        if let Some(replica) = self.replicas.get(&mid) {
            let (name, head, history) = (replica.name.clone(), replica.head, replica.history.clone());
            self.send_state(&from, &name, head, &history, true);
        } else {
            self.send(from, GroupMessage::Replicate { group, head: 0, messages: Vec::new(), handoff: true });
        }
    }

    fn tick_replicas(&mut self, ring: &Node<A>, now: Time) {
        let ttl = self.config.backup_ttl;
        self.replicas.retain(|_, r| now.saturating_since(r.updated) < ttl);
        let owned: Vec<(Id, GroupName)> = self
            .replicas
            .iter()
            .filter(|(mid, _)| {
                ring.owns(mid)
                    && self.may_root(mid, now)
                    && self.groups.get(mid).is_none_or(|g| g.root.is_none())
            })
            .map(|(mid, r)| (*mid, r.name.clone()))
            .collect();
        for (mid, name) in owned {
            if !self.groups.contains_key(&mid) {
                if self.groups.len() >= self.config.max_groups {
                    continue;
                }
                self.groups.insert(mid, Group::new(name, now));
            }
            self.become_root(mid, ring, now);
        }
    }

    // ----- internals: publishing -------------------------------------------------------------

    fn send_publish(&mut self, id: u64, ring: &Node<A>, now: Time) {
        let Some(p) = self.publishes.get(&id) else {
            return;
        };
        let publish = QueuedPublish {
            origin: self.me.clone(),
            id,
            from: p.from.clone(),
            body: p.body.clone(),
            ts_ms: p.ts_ms,
        };
        let group = p.group.clone();
        let mid = group.id();
        self.on_publish(mid, group, publish, 0, ring, now);
    }

    fn tick_publishes(&mut self, ring: &Node<A>, now: Time) {
        let expired: Vec<u64> =
            self.publishes.iter().filter(|(_, p)| p.deadline <= now).map(|(k, _)| *k).collect();
        for id in expired {
            let p = self.publishes.remove(&id).expect("listed above");
            self.counters.publishes_failed += 1;
            self.events.push_back(GroupEvent::PublishFailed {
                id: PublishId(id),
                group: p.group,
                error: PublishError::TimedOut,
            });
        }
        let due: Vec<u64> =
            self.publishes.iter().filter(|(_, p)| p.retry_at <= now).map(|(k, _)| *k).collect();
        for id in due {
            if let Some(p) = self.publishes.get_mut(&id) {
                p.retry_at = now + self.config.publish_retry;
            }
            self.counters.publish_retries += 1;
            self.send_publish(id, ring, now);
        }
    }

    // ----- internals: delivery and gap filling -----------------------------------------------

    fn on_data(&mut self, mid: Id, from: A, root: A, message: Stamped<A>, ring: &Node<A>, now: Time) {
        let Some(g) = self.group_from_parent(&mid, &from) else { return };
        g.root_addr = Some(root.clone());
        g.learn_head(Some(message.seq));
        let name = g.name.clone();
        let children: Vec<A> = g.children.keys().cloned().collect();
        let member = g.member;
        for child in children {
            let data =
                GroupMessage::Data { group: name.clone(), root: root.clone(), message: message.clone() };
            self.send(child, data);
        }
        if member {
            self.member_receive(mid, message, false);
            self.check_behind(mid, ring, now);
        }
    }

    /// A member received message `m` (down the tree, or fetched when `fetched`): delivers it and
    /// whatever it unblocks, or buffers it.
    fn member_receive(&mut self, mid: Id, m: Stamped<A>, fetched: bool) {
        let window = self.config.max_out_of_order as u64;
        let g = self.groups.get_mut(&mid).expect("callers checked the group exists");
        let next = *g.next_seq.get_or_insert(m.seq);
        if m.seq < next || g.buffer.contains_key(&m.seq) {
            self.counters.duplicates += 1;
            return;
        }
        if m.seq > next {
            if !fetched && (m.seq - next > window || g.buffer.len() >= window as usize) {
                self.counters.dropped_out_of_window += 1;
                return;
            }
            g.buffer.insert(m.seq, m);
            return;
        }
        g.buffer.insert(m.seq, m);
        self.drain(mid);
    }

    /// Delivers buffered messages from the next expected number on while they are contiguous.
    fn drain(&mut self, mid: Id) {
        let g = self.groups.get_mut(&mid).expect("callers checked the group exists");
        let Some(mut next) = g.next_seq else {
            return;
        };
        while let Some(m) = g.buffer.remove(&next) {
            self.events.push_back(GroupEvent::Delivered {
                group: g.name.clone(),
                seq: m.seq,
                from: m.from,
                body: m.body,
                ts_ms: m.ts_ms,
            });
            next += 1;
        }
        // Anything below `next` left in the buffer is stale.
        while g.buffer.first_key_value().is_some_and(|(s, _)| *s < next) {
            g.buffer.pop_first();
        }
        g.next_seq = Some(next);
    }

    /// Starts a gap fill if a member is missing numbers it knows exist.
    fn check_behind(&mut self, mid: Id, ring: &Node<A>, now: Time) {
        let Some(g) = self.groups.get(&mid) else {
            return;
        };
        if !g.member || g.fetching.is_some() || g.fetch_after > now {
            return;
        }
        let Some(next) = g.next_seq else {
            return;
        };
        let upto = match g.buffer.first_key_value() {
            Some((first, _)) => first - 1,
            None => g.advertised(&self.me.addr).1.or(g.head).unwrap_or(0),
        };
        if upto < next {
            self.groups.get_mut(&mid).expect("present").behind_since = None;
            return;
        }
        let since = *self.groups.get_mut(&mid).expect("present").behind_since.get_or_insert(now);
        if now.saturating_since(since) < self.config.fetch_delay {
            return;
        }
        let g = &self.groups[&mid];
        let request = self.next_request;
        self.next_request += 1;
        let target = g.root_addr.clone();
        let group = g.name.clone();
        self.fetches.insert(
            request,
            PendingFetch {
                mid,
                group,
                from_seq: next,
                to_seq: upto,
                target,
                deadline: now,
                attempts: 0,
                user: false,
            },
        );
        self.groups.get_mut(&mid).expect("present").fetching = Some(request);
        self.send_fetch(request, ring, now);
    }

    fn send_fetch(&mut self, request: u64, ring: &Node<A>, now: Time) {
        let Some(f) = self.fetches.get_mut(&request) else {
            return;
        };
        f.attempts += 1;
        f.deadline = now + self.config.rpc_timeout * 2;
        if f.attempts > 2 {
            // The root we knew may be gone: let routing find the current one.
            f.target = None;
        }
        self.counters.fetches_sent += 1;
        let (mid, group, from_seq, to_seq, target) =
            (f.mid, f.group.clone(), f.from_seq, f.to_seq, f.target.clone());
        let requester = self.me.clone();
        match target {
            Some(to) if to != self.me.addr => {
                let message = GroupMessage::Fetch { group, requester, request, from_seq, to_seq, hops: 0 };
                self.send(to, message);
            }
            _ => self.on_fetch(mid, group, requester, request, from_seq, to_seq, 0, ring, now),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_fetch(
        &mut self,
        mid: Id,
        group: GroupName,
        requester: NodeRef<A>,
        request: u64,
        from_seq: u64,
        to_seq: u64,
        hops: u8,
        ring: &Node<A>,
        now: Time,
    ) {
        let ready = self.groups.get(&mid).and_then(|g| g.root.as_ref()).is_some_and(|r| r.ready);
        if !ready {
            let next = if hops >= MAX_ROUTE_HOPS { None } else { self.toward_root(ring, &mid, &[], now) };
            match next {
                Some(next) => {
                    let message =
                        GroupMessage::Fetch { group, requester, request, from_seq, to_seq, hops: hops + 1 };
                    self.send(next, message);
                }
                // The owner without state yet: the requester asks again.
                None => self.counters.dropped_no_route += 1,
            }
            return;
        }
        let budget = self.config.max_frame_bytes - 4096;
        let root = self.groups[&mid].root.as_ref().expect("checked ready above");
        let end = to_seq.min(root.released);
        let mut covered_to = end;
        let mut messages = Vec::new();
        if from_seq <= end {
            let wanted: Vec<Stamped<A>> =
                root.history.range(from_seq..=end).map(|(_, (m, _))| m.clone()).collect();
            if let Some(first) = wire::batches(&wanted, budget).into_iter().next() {
                if first.len() < wanted.len() {
                    covered_to = first.last().map_or(end, |m| m.seq);
                }
                messages = first;
            }
        }
        let head = root.released;
        if requester.addr == self.me.addr {
            self.on_fetch_reply(self.me.addr.clone(), request, covered_to, head, messages, ring, now);
        } else {
            self.send(
                requester.addr,
                GroupMessage::FetchReply { group, request, covered_to, head, messages },
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_fetch_reply(
        &mut self,
        from: A,
        request: u64,
        covered_to: u64,
        head: u64,
        messages: Vec<Stamped<A>>,
        ring: &Node<A>,
        now: Time,
    ) {
        let Some(f) = self.fetches.remove(&request) else {
            self.counters.dropped_unexpected += 1;
            return;
        };
        if f.user {
            let messages = messages
                .into_iter()
                .filter(|m| m.seq >= f.from_seq)
                .map(|m| HistoryMessage { seq: m.seq, from: m.from, body: m.body, ts_ms: m.ts_ms })
                .collect();
            self.events.push_back(GroupEvent::History { group: f.group, messages, covered_to, head });
            return;
        }
        let Some(g) = self.groups.get_mut(&f.mid) else {
            return;
        };
        g.fetching = None;
        g.behind_since = None;
        g.root_addr = Some(from);
        g.learn_head(Some(head));
        if !g.member {
            return;
        }
        if covered_to < f.from_seq {
            // Nothing released there yet: ask again a little later, not in a tight loop.
            g.fetch_after = now + self.config.rpc_timeout;
            return;
        }
        for m in messages {
            if m.seq >= f.from_seq && m.seq <= covered_to {
                self.member_receive(f.mid, m, true);
            }
        }
        // What the reply speaks for but does not hold is gone: report it, then move past it.
        loop {
            let g = self.groups.get_mut(&f.mid).expect("present");
            let Some(next) = g.next_seq else {
                break;
            };
            if next > covered_to {
                break;
            }
            let resume =
                g.buffer.range(next..).next().map_or(covered_to + 1, |(s, _)| (*s).min(covered_to + 1));
            let (from_gap, to_gap) = (next, resume - 1);
            self.counters.gaps += 1;
            self.counters.gap_messages += to_gap - from_gap + 1;
            self.events.push_back(GroupEvent::Gap { group: g.name.clone(), from: from_gap, to: to_gap });
            g.next_seq = Some(resume);
            self.drain(f.mid);
        }
        self.check_behind(f.mid, ring, now);
    }

    fn tick_fetches(&mut self, ring: &Node<A>, now: Time) {
        let due: Vec<u64> = self.fetches.iter().filter(|(_, f)| f.deadline <= now).map(|(k, _)| *k).collect();
        for request in due {
            let f = &self.fetches[&request];
            if f.attempts >= self.config.fetch_attempts || !ring.is_member() {
                let f = self.fetches.remove(&request).expect("listed above");
                if f.user {
                    self.events.push_back(GroupEvent::HistoryFailed { group: f.group, from_seq: f.from_seq });
                } else if let Some(g) = self.groups.get_mut(&f.mid) {
                    g.fetching = None;
                }
            } else {
                self.send_fetch(request, ring, now);
            }
        }
    }
}
