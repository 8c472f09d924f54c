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
//! - **Partitions: epochs.** During a partition both sides may number the same group: the side
//!   that lost the root has the first successor take over from its copy, and both continue from
//!   the same head. So every node that starts numbering starts a new *epoch* (`epoch`): each
//!   message carries (epoch, parent epoch, fork point `base`), and (epoch, seq) names one message
//!   for good — `seq` stays gap-free within a lineage, so members fill gaps as before. When the
//!   merged ring makes one root hand its state to the other (the hand-off that follows a change
//!   of owner), the receiving root *meets* the other numbering: messages of its own lineage fill
//!   holes; the others' messages whose publish (origin, publish id) it does not hold are numbered
//!   anew, once each, in a new epoch with a higher counter whose fork point is where the two
//!   lineages parted. A backup or intermediate node that receives a second lineage keeps its
//!   messages apart (foreign, bounded) so they are numbered anew when it becomes root. Members
//!   past the fork point of a new epoch go back to it, fetch from there and skip, by publish id,
//!   what they delivered already — also when the new epoch continues theirs (a take-over
//!   across the partition continues the old root's epoch from an older copy, so its numbers past
//!   the fork are not those the member delivered), and from wherever they took numbers of a
//!   sibling epoch (`delivery`). A fetch reply is the root's lineage and is taken whole: when a
//!   message in it makes the member go back to a fork point, the reply's messages before that one
//!   are taken again, and numbers below the range asked for are fetched, not reported lost. A
//!   range the root no longer holds is a gap, as always, and nothing else is.
//!   Why not one numbering only (refusing to number on the minority side)? The ring cannot tell a
//!   partition from a crash, and a group that stops while its root's successor lives would trade
//!   availability for nothing: deduplicating by publish id makes two numberings reconcilable.
//! - **Leave.** A member that leaves with no children prunes itself from its parent; a forwarder
//!   left with neither children nor a local member does the same.
//! - **Bottleneck remover.** A node with `max_children` children that gets one more redirects the
//!   newcomer to the child whose id most closely precedes the newcomer's. (Chord routing already
//!   keeps fan-in near O(log N) per node; the remover bounds it under skewed membership.)
//!
//! # Layout
//! This file composes the parts and holds the public surface (commands, `handle_*`, `poll_*`)
//! and the plumbing they share (sending, routing toward `mid`, suspects, roles just handed
//! off). Each part owns its state in a type of its own, with the handlers that use it:
//! - `group`: `Group`, one group as this node sees it, composing the per-group parts below;
//! - `tree`: `Tree`, the place in the tree — joins, acknowledgements, redirects, refreshes,
//!   pruning and repair;
//! - `root`: `RootState` — numbering, replication to the backups, release, hand-off, take-over;
//! - `history`: `History`, the bounded history of a root, and of a backup's copy;
//! - `backup`: `Backups`, the copies this node holds of roots before it, and taking over;
//! - `publish`: `Publishes`, the publishes this node started, their retries and deadlines;
//! - `delivery`: `Delivery`, in-order, exactly-once delivery at a member, following epochs;
//! - `epoch`: epoch ids and their order;
//! - `fetch`: `Fetches` and `GapFill` — gap detection, fetches of missing ranges and history
//!   requests, and matching their replies by request id, group and sender;
//! - `counters`, `config`, `wire`: counters, configuration, wire messages and their validation.
//!
//! # Invariants
//! - Every queue and map is bounded (config); anything from the network that is malformed, for a
//!   group this node does not know, from a node that is not the expected peer, or otherwise
//!   impossible is dropped and counted in [`MulticastCounters`]; nothing panics on input.
//! - Deterministic: ordered maps only; no randomness is needed.

mod backup;
mod config;
mod counters;
mod delivery;
mod epoch;
mod fetch;
mod group;
mod history;
mod publish;
mod root;
#[cfg(test)]
mod testing;
mod tree;
mod wire;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use thiserror::Error;
use tracing::debug;

pub use config::{MulticastConfig, MulticastConfigError};
pub use counters::MulticastCounters;
pub use wire::{
    GroupDecodeError, GroupMessage, GroupName, InvalidGroupMessage, InvalidGroupName, MAX_BATCH,
    MAX_BODY_BYTES, MAX_FROM_BYTES, MAX_GROUP_FRAME_BYTES, MAX_GROUP_NAME_BYTES, MAX_PATH, MAX_ROUTE_HOPS,
    MAX_SEQ, Stamped, decode, encode, short_id,
};

use self::backup::Backups;
use self::fetch::{Fetches, PendingFetch};
use self::group::Group;
use self::publish::{PendingPublish, Publishes};
use self::root::QueuedPublish;
use crate::address::{Address, NodeRef};
use crate::id::Id;
use crate::node::Node;
use crate::time::Time;

/// How long a peer that failed stays avoided when routing.
const SUSPECT_FOR: Duration = Duration::from_secs(5);
/// Routing candidates considered per hop.
const ROUTE_CANDIDATES: usize = 8;

/// Identifies a publish started with [`Multicast::publish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishId(pub u64);

/// Identifies a history request started with [`Multicast::request_history`]; its answer
/// ([`GroupEvent::History`] or [`GroupEvent::HistoryFailed`]) names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HistoryRequestId(pub u64);

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
    /// The numbering `seq` belongs to (see [`GroupEvent::Delivered`]).
    pub epoch: u64,
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
        /// The numbering `seq` belongs to: (`epoch`, `seq`) names one message, for good. After a
        /// partition healed, the members that followed the losing side's root see `seq` go back
        /// to the fork point in a new epoch; they never see a message twice.
        epoch: u64,
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
        /// The request answered.
        request: HistoryRequestId,
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
        /// The request.
        request: HistoryRequestId,
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

/// The multicast state machine of one node, for all of its groups. See the module docs.
#[derive(Debug)]
pub struct Multicast<A: Address> {
    me: NodeRef<A>,
    me_short: u64,
    config: MulticastConfig,
    groups: BTreeMap<Id, Group<A>>,
    backups: Backups<A>,
    publishes: Publishes,
    fetches: Fetches<A>,
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
            backups: Backups::new(),
            publishes: Publishes::new(),
            fetches: Fetches::new(),
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
                parent: g.tree.parent.clone(),
                children: g
                    .tree
                    .children
                    .iter()
                    .map(|(a, c)| NodeRef { id: c.id, addr: a.clone() })
                    .collect(),
                is_member: g.member,
                head: g.advertised(&self.me.addr).1.or(g.head),
                depth: g.advertised(&self.me.addr).0,
                next_seq: g.delivery.next_seq().filter(|_| g.member),
            })
            .collect()
    }

    /// Groups for which this node holds a backup copy of the root's state (`mid`, head).
    pub fn backups(&self) -> Vec<(GroupName, u64)> {
        self.backups.summaries()
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
            g.delivery.restart(g.root.as_ref().filter(|r| r.ready).map(|r| r.released + 1));
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
            g.delivery.restart(None);
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
        let id = self.publishes.start(PendingPublish {
            group: group.clone(),
            from,
            body,
            ts_ms,
            deadline: now + self.config.publish_timeout,
            retry_at: now + self.config.publish_retry,
        });
        self.send_publish(id, ring, now);
        self.arm(now);
        Ok(PublishId(id))
    }

    /// Asks the root for messages `from_seq..` of `group` (as many as one reply holds); the
    /// answer arrives as [`GroupEvent::History`] or [`GroupEvent::HistoryFailed`] with the id
    /// returned here.
    pub fn request_history(
        &mut self,
        group: &GroupName,
        from_seq: u64,
        ring: &Node<A>,
        now: Time,
    ) -> HistoryRequestId {
        let mid = group.id();
        let target = self.groups.get(&mid).and_then(|g| g.root_addr.clone());
        let request = self.fetches.start(PendingFetch {
            mid,
            group: group.clone(),
            from_seq: from_seq.max(1),
            to_seq: u64::MAX,
            target,
            asked: None,
            deadline: now,
            attempts: 0,
            user: true,
        });
        self.send_fetch(request, ring, now);
        self.arm(now);
        HistoryRequestId(request)
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
            for child in g.tree.children.keys() {
                self.send(child.clone(), GroupMessage::Rejoin { group: g.name.clone() });
            }
            if let Some(parent) = g.tree.parent {
                self.send(parent.addr, GroupMessage::Prune { group: g.name.clone() });
            }
        }
        // Backup copies go to the successor, which becomes the next backup once we are gone.
        let copies = self.backups.take_all();
        if let Some(s) = &successor {
            for copy in copies {
                self.send_copy(&s.addr, &copy.name, copy.head, &copy.history, false);
            }
        }
        for (id, p) in self.publishes.take_all() {
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
            GroupMessage::Rejoin { .. } => self.on_rejoin(mid, from, ring, now),
            GroupMessage::Refresh { group } => self.on_refresh(mid, from, group, ring, now),
            GroupMessage::RefreshAck { depth, head, root, path, .. } => {
                self.on_refresh_ack(mid, from, (depth, head, root, path), ring, now)
            }
            GroupMessage::Prune { .. } => self.on_prune(mid, from),
            GroupMessage::Publish { group, origin, id, from: label, body, ts_ms, hops } => {
                let publish = QueuedPublish { origin, id, from: label, body, ts_ms };
                self.on_publish(mid, group, publish, hops, ring, now);
            }
            GroupMessage::PublishAck { group, id, seq } => self.on_publish_ack(mid, from, group, id, seq),
            GroupMessage::Data { root, message, .. } => self.on_data(mid, from, root, message, ring, now),
            GroupMessage::Fetch { group, requester, request, from_seq, to_seq, hops } => {
                self.on_fetch(mid, group, requester, request, from_seq, to_seq, hops, ring, now)
            }
            GroupMessage::FetchReply { request, covered_to, head, messages, .. } => {
                self.on_fetch_reply_from(mid, from, request, covered_to, head, messages, ring, now)
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
        self.drop_from_trees(peer, ring, now);
        self.reroute_fetches(peer, ring, now);
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
            self.tick_backups(ring, now);
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
            || !self.backups.is_empty()
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
}
