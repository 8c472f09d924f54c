//! The event loop's multicast side: drives `dht::multicast::Multicast` next to the ring core,
//! carries its one-way messages on `/overlay/group/1`, answers tree queries, walks trees for the
//! API, and connects deliveries to the API's listeners ([`LocalGroup`]).
//!
//! Membership here is the union of explicit joins (`POST .../join`) and open listeners: a join or
//! the first listener makes the node a member at once; the housekeeping tick leaves a group once
//! its last listener has gone, unless it was joined explicitly.
//!
//! A listener that asks to replay from further back than the node's log gets the rest from the
//! root's history, on a channel of its own. Replays queue per group and are served one after the
//! other, with at most one request out per group; an answer (or a failure) is taken only by the
//! replay whose request id it carries, so a late answer to a replay already gone is dropped.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use dht::multicast::{self as mc, GroupEvent, GroupName, Multicast, PublishId, Role};
use dht::{Id, LookupError, LookupId, LookupOutcome, NodeRef};
use libp2p::PeerId;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use super::{EventLoop, wall_ms};
use crate::address::PeerAddr;
use crate::event_loop::Command;
use crate::groups::{
    Delivered, GroupError, GroupItem, GroupView, HistoryItem, LocalGroup, MissingHistory, TreeNodeView,
    TreeView,
};
use crate::network::{GroupReply, GroupRequest, TreeNodeInfo};

/// Most nodes a tree walk visits.
const MAX_TREE_NODES: usize = 4096;
/// How long a tree walk may take.
const TREE_WALK_TIMEOUT: Duration = Duration::from_secs(5);
/// History requests in a row without progress before a replay is declared unavailable.
const HISTORY_ATTEMPTS: u32 = 3;
/// Children a tree query's answer may list (the core's fan-out bound is 32).
const MAX_DESCRIBED_CHILDREN: usize = 64;

/// What a request on the group protocol was for.
#[derive(Debug)]
pub(super) enum GroupOutbound {
    /// A core message to this peer.
    Message(PeerAddr),
    /// A tree query of a walk.
    Describe { walk: u64, node: NodeRef<PeerAddr>, parent: Option<PeerId>, depth: u32 },
}

/// A tree walk for the API.
#[derive(Debug)]
pub(super) struct TreeWalk {
    name: String,
    id: Id,
    root: Option<NodeRef<PeerAddr>>,
    nodes: Vec<TreeNodeView>,
    seen: HashSet<PeerId>,
    in_flight: usize,
    complete: bool,
    /// The root answered that it has no state for the group (or could not be asked).
    root_failed: bool,
    /// Asking the root failed.
    root_unreachable: bool,
    deadline: Instant,
    reply: oneshot::Sender<Result<TreeView, GroupError>>,
}

/// A replay from the root's history for one listener.
#[derive(Debug)]
pub(super) struct Replay {
    /// The next number to ask the root for.
    next: u64,
    /// Where the listener's backlog and live feed take over; `None` until something is delivered.
    covered_from: Option<u64>,
    /// The listener's history channel.
    sender: mpsc::Sender<HistoryItem>,
    /// Requests in a row that brought nothing new.
    attempts: u32,
    /// The request out for it, if any: only the answer to that request is taken.
    asked: Option<mc::HistoryRequestId>,
}

impl Replay {
    fn done(&self) -> bool {
        self.covered_from.is_some_and(|start| self.next >= start) || self.sender.is_closed()
    }
}

/// The multicast state the loop keeps beside the core's.
#[allow(missing_debug_implementations)] // holds the core's state, which is large
pub(super) struct GroupState {
    pub(super) core: Multicast<PeerAddr>,
    pub(super) local: BTreeMap<String, LocalGroup>,
    pub(super) publishes: HashMap<PublishId, oneshot::Sender<Result<u64, GroupError>>>,
    pub(super) outbound: HashMap<OutboundRequestId, GroupOutbound>,
    pub(super) walks: HashMap<u64, TreeWalk>,
    pub(super) walk_lookups: HashMap<LookupId, u64>,
    pub(super) replays: BTreeMap<String, VecDeque<Replay>>,
    pub(super) next_walk: u64,
}

impl GroupState {
    /// State for a node `me` keeping at most `history_bytes` of each group's history.
    pub(super) fn new(me: NodeRef<PeerAddr>, history_bytes: usize) -> Self {
        GroupState {
            core: Multicast::new(me, {
                let config = mc::MulticastConfig::default().with_history_bytes(history_bytes);
                config.validate().expect(
                    "the default multicast configuration is valid, and Flags keep the byte budget above 0",
                );
                config
            }),
            local: BTreeMap::new(),
            publishes: HashMap::new(),
            outbound: HashMap::new(),
            walks: HashMap::new(),
            walk_lookups: HashMap::new(),
            replays: BTreeMap::new(),
            next_walk: 0,
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Root => "root",
        Role::Forwarder => "forwarder",
        Role::Member => "member",
    }
}

fn group_name(name: &str) -> Result<GroupName, GroupError> {
    GroupName::new(name).map_err(|e| GroupError::InvalidName(e.to_string()))
}

fn core_error(error: mc::GroupError) -> GroupError {
    match error {
        mc::GroupError::BodyTooLarge { len, max } => GroupError::TooLarge { len, max },
        mc::GroupError::FromTooLong(len) => {
            GroupError::Invalid(format!("from label of {len} bytes exceeds {} bytes", mc::MAX_FROM_BYTES))
        }
        mc::GroupError::NotJoined => GroupError::Busy("this node is not in a ring yet".into()),
        error @ (mc::GroupError::TooManyGroups { .. } | mc::GroupError::Overloaded) => {
            GroupError::Busy(error.to_string())
        }
    }
}

impl EventLoop {
    // ----- commands from the API -------------------------------------------------------------

    pub(super) fn on_group_command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Groups { reply } => {
                let _ = reply.send(self.group_views());
            }
            Command::JoinGroup { group, reply } => {
                let result = group_name(&group).and_then(|name| {
                    self.ensure_member(&name, now)?;
                    self.groups.local.entry(group.clone()).or_default().joined = true;
                    Ok(self.group_view(&group))
                });
                let _ = reply.send(result);
            }
            Command::LeaveGroup { group, reply } => {
                let result = group_name(&group).map(|name| {
                    if let Some(local) = self.groups.local.get_mut(&group) {
                        local.joined = false;
                    }
                    self.sync_membership(&name, now);
                });
                let _ = reply.send(result);
            }
            Command::Publish { group, from, body, reply } => {
                let result = group_name(&group).and_then(|name| {
                    let from = from.unwrap_or_else(|| short_peer(&self.me.peer));
                    self.groups
                        .core
                        .publish(&name, from, body.into_bytes(), wall_ms(), &self.core, now)
                        .map_err(core_error)
                });
                match result {
                    Ok(id) => {
                        self.groups.publishes.insert(id, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Command::Subscribe { group, from, reply } => {
                let result = group_name(&group).and_then(|name| {
                    self.ensure_member(&name, now)?;
                    let local = self.groups.local.entry(group.clone()).or_default();
                    let (subscription, missing) = local.subscribe(from);
                    if let Some(missing) = missing {
                        self.queue_replay(&name, missing, now);
                    }
                    Ok(subscription)
                });
                let _ = reply.send(result);
            }
            Command::GroupTree { group, reply } => match group_name(&group) {
                Ok(name) => self.start_tree_walk(name, reply),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            _ => unreachable!("on_group_command is only given group commands"),
        }
    }

    /// Makes this node a member of `name` if it is not one yet.
    fn ensure_member(&mut self, name: &GroupName, now: dht::Time) -> Result<(), GroupError> {
        let is_member = self.groups.core.groups().iter().any(|g| g.name == *name && g.is_member);
        if !is_member {
            self.groups.core.join(name, &self.core, now).map_err(core_error)?;
            info!(group = name.as_str(), "joined group");
        }
        Ok(())
    }

    /// Joins or leaves `name` so that membership matches what the API wants.
    fn sync_membership(&mut self, name: &GroupName, now: dht::Time) {
        let is_member = self.groups.core.groups().iter().any(|g| g.name == *name && g.is_member);
        self.reconcile_membership(name, is_member, now);
    }

    fn reconcile_membership(&mut self, name: &GroupName, is_member: bool, now: dht::Time) {
        let wanted = self.groups.local.get(name.as_str()).is_some_and(LocalGroup::wanted);
        if wanted && !is_member {
            // The core let go (this node left and rejoined the ring, say): join again.
            if let Err(error) = self.groups.core.join(name, &self.core, now) {
                debug!(group = name.as_str(), %error, "could not rejoin group");
            }
        } else if !wanted {
            if is_member {
                self.groups.core.leave(name, &self.core, now);
                info!(group = name.as_str(), "left group");
            }
            self.groups.local.remove(name.as_str());
            self.groups.replays.remove(name.as_str());
        }
    }

    /// Leaves groups whose last listener went away and rejoins those the core let go of
    /// (called from housekeeping).
    pub(super) fn sync_group_memberships(&mut self) {
        if self.leave != super::LeaveState::Running {
            return;
        }
        let now = self.now();
        let members: HashSet<GroupName> =
            self.groups.core.groups().into_iter().filter(|g| g.is_member).map(|g| g.name).collect();
        let names: Vec<GroupName> =
            self.groups.local.keys().filter_map(|name| GroupName::new(name.clone()).ok()).collect();
        for name in names {
            let is_member = members.contains(&name);
            self.reconcile_membership(&name, is_member, now);
        }
        self.expire_tree_walks();
    }

    pub(super) fn group_views(&self) -> Vec<GroupView> {
        self.groups.core.groups().into_iter().map(|g| self.view_of(g)).collect()
    }

    fn group_view(&self, name: &str) -> GroupView {
        let summary = self.groups.core.groups().into_iter().find(|g| g.name.as_str() == name);
        match summary {
            Some(summary) => self.view_of(summary),
            None => GroupView {
                name: name.to_string(),
                id: Id::hash(name.as_bytes()),
                role: "member",
                member: true,
                listeners: self.groups.local.get(name).map_or(0, LocalGroup::listeners),
                head_seq: 0,
                parent: None,
                children: Vec::new(),
            },
        }
    }

    fn view_of(&self, g: mc::GroupSummary<PeerAddr>) -> GroupView {
        let local = self.groups.local.get(g.name.as_str());
        GroupView {
            name: g.name.as_str().to_string(),
            id: g.mid,
            role: role_name(g.role),
            member: g.is_member,
            listeners: local.map_or(0, LocalGroup::listeners),
            head_seq: g.head.unwrap_or(0),
            parent: g.parent,
            children: g.children,
        }
    }

    // ----- driving the core ------------------------------------------------------------------

    /// Sends what the multicast core wants sent and acts on its events.
    pub(super) fn drive_multicast(&mut self) {
        while let Some((to, message)) = self.groups.core.poll_transmit() {
            if to.peer == self.me.peer {
                // Addressed to this node (it is its own root or parent): no network.
                let now = self.now();
                let me = self.me.clone();
                self.groups.core.handle_message(me, message, &self.core, now);
                continue;
            }
            let request = GroupRequest::Message { sender: self.me.clone(), message: Box::new(message) };
            let addresses = Self::dial_addresses(&to);
            let id =
                self.swarm.behaviour_mut().group.send_request_with_addresses(&to.peer, request, addresses);
            self.groups.outbound.insert(id, GroupOutbound::Message(to));
        }
        while let Some(event) = self.groups.core.poll_event() {
            self.on_multicast_event(event);
        }
    }

    fn on_multicast_event(&mut self, event: GroupEvent) {
        match event {
            GroupEvent::Delivered { group, epoch, seq, from, body, ts_ms } => {
                let local = self.groups.local.entry(group.as_str().to_string()).or_default();
                local.record(GroupItem::Message(std::sync::Arc::new(Delivered {
                    group: group.as_str().to_string(),
                    epoch,
                    seq,
                    from,
                    body: String::from_utf8_lossy(&body).into_owned(),
                    ts_ms,
                })));
                self.on_first_delivery(&group, seq);
            }
            GroupEvent::Published { id, seq, .. } => {
                if let Some(reply) = self.groups.publishes.remove(&id) {
                    let _ = reply.send(Ok(seq));
                }
            }
            GroupEvent::PublishFailed { id, error, .. } => {
                if let Some(reply) = self.groups.publishes.remove(&id) {
                    let error = match error {
                        mc::PublishError::TimedOut => GroupError::Unreachable(
                            "the root did not acknowledge the message in time (it may still be delivered)"
                                .into(),
                        ),
                        mc::PublishError::Left => GroupError::ShuttingDown,
                    };
                    let _ = reply.send(Err(error));
                }
            }
            GroupEvent::Gap { group, from, to } => {
                info!(group = group.as_str(), from, to, "messages lost to the group's history limit");
                if let Some(local) = self.groups.local.get_mut(group.as_str()) {
                    local.record(GroupItem::Gap { from, to });
                }
                self.on_first_delivery(&group, from);
            }
            GroupEvent::History { request, group, messages, covered_to, head } => {
                self.on_history(request, &group, messages, covered_to, head);
            }
            GroupEvent::HistoryFailed { request, group, .. } => {
                if let Some(replay) =
                    self.groups.replays.get_mut(group.as_str()).and_then(VecDeque::front_mut)
                    && replay.asked == Some(request)
                {
                    replay.asked = None;
                    replay.attempts += 1;
                }
                self.ask_for_history(&group);
            }
        }
    }

    // ----- replays from the root's history ----------------------------------------------------

    fn queue_replay(&mut self, name: &GroupName, missing: MissingHistory, _now: dht::Time) {
        let MissingHistory { from, covered_from, sender } = missing;
        let queue = self.groups.replays.entry(name.as_str().to_string()).or_default();
        queue.push_back(Replay { next: from, covered_from, sender, attempts: 0, asked: None });
        if queue.len() == 1 {
            self.ask_for_history(name);
        }
    }

    /// Serves the group's replays in turn: drops finished ones, fails hopeless ones, and asks the
    /// root for the first one's next page unless it is waiting.
    fn ask_for_history(&mut self, name: &GroupName) {
        let now = self.now();
        let Some(queue) = self.groups.replays.get_mut(name.as_str()) else { return };
        while let Some(replay) = queue.front_mut() {
            if replay.done() {
                queue.pop_front(); // dropping the sender ends the listener's replay
                continue;
            }
            if replay.attempts >= HISTORY_ATTEMPTS {
                let reason =
                    format!("the history of group {:?} could not be fetched from its root", name.as_str());
                let _ = replay.sender.try_send(HistoryItem::Failed(reason));
                queue.pop_front();
                continue;
            }
            if replay.asked.is_none() {
                replay.asked = Some(self.groups.core.request_history(name, replay.next, &self.core, now));
            }
            return;
        }
        self.groups.replays.remove(name.as_str());
    }

    /// The first thing delivered (or declared lost) since replays began tells those that did not
    /// know it where the live feed starts.
    fn on_first_delivery(&mut self, name: &GroupName, seq: u64) {
        let Some(queue) = self.groups.replays.get_mut(name.as_str()) else { return };
        for replay in queue.iter_mut() {
            replay.covered_from.get_or_insert(seq);
        }
        if queue.front().is_some_and(|r| r.asked.is_none()) {
            self.ask_for_history(name);
        }
    }

    fn on_history(
        &mut self,
        request: mc::HistoryRequestId,
        name: &GroupName,
        messages: Vec<mc::HistoryMessage>,
        covered_to: u64,
        head: u64,
    ) {
        let Some(replay) = self.groups.replays.get_mut(name.as_str()).and_then(VecDeque::front_mut) else {
            return;
        };
        if replay.asked != Some(request) {
            // An answer to a request this replay did not make (one for a replay already gone).
            return;
        }
        replay.asked = None;
        let from = replay.next;
        // Numbers the listener gets from its backlog or the live feed are not declared lost here.
        let last_wanted =
            replay.covered_from.map_or(covered_to, |start| covered_to.min(start.saturating_sub(1)));
        let mut items = Vec::new();
        let mut expected = from;
        for m in messages.into_iter().filter(|m| m.seq >= from && m.seq <= covered_to) {
            if m.seq > expected && expected <= last_wanted {
                items.push(GroupItem::Gap { from: expected, to: (m.seq - 1).min(last_wanted) });
            }
            expected = m.seq.saturating_add(1);
            items.push(GroupItem::Message(std::sync::Arc::new(Delivered {
                group: name.as_str().to_string(),
                epoch: m.epoch,
                seq: m.seq,
                from: m.from,
                body: String::from_utf8_lossy(&m.body).into_owned(),
                ts_ms: m.ts_ms,
            })));
        }
        if expected <= last_wanted {
            items.push(GroupItem::Gap { from: expected, to: last_wanted });
        }
        for item in items {
            if replay.sender.try_send(HistoryItem::Item(item)).is_err() {
                // The listener is gone, or hopelessly behind: its stream ends on its own.
                replay.next = u64::MAX;
                break;
            }
        }
        if covered_to >= from {
            replay.next = replay.next.max(covered_to.saturating_add(1));
            replay.attempts = 0;
        } else if replay.covered_from.is_some() || covered_to < head {
            replay.attempts += 1; // the root answered nothing new where it should have
        }
        // With nothing delivered yet and the root's history exhausted, the replay waits for the
        // first delivery ([`Self::on_first_delivery`]) to learn where it must stop.
        let waiting = replay.covered_from.is_none() && replay.next > head;
        if waiting {
            return;
        }
        self.ask_for_history(name);
    }

    // ----- the group protocol ----------------------------------------------------------------

    pub(super) fn on_group_event(&mut self, event: request_response::Event<GroupRequest, GroupReply>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.serve_group(peer, request, channel);
                }
                request_response::Message::Response { request_id, response } => {
                    match self.groups.outbound.remove(&request_id) {
                        Some(GroupOutbound::Describe { walk, node, parent, depth }) => {
                            let info = match response {
                                GroupReply::Described(info) => info,
                                _ => None,
                            };
                            self.continue_tree_walk(walk, node, parent, depth, info);
                        }
                        Some(GroupOutbound::Message(_)) => {}
                        None => {
                            self.counters.rejected.unexpected += 1;
                        }
                    }
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                self.drop_dead_connection(peer, &error);
                match self.groups.outbound.remove(&request_id) {
                    Some(GroupOutbound::Message(to)) => {
                        debug!(%error, peer = %to.peer, "group message failed");
                        // Only a peer that cannot be reached at all is a hint of its death; a
                        // connection closed under a request (perhaps by this node) is not.
                        if matches!(
                            error,
                            request_response::OutboundFailure::DialFailure
                                | request_response::OutboundFailure::Timeout
                        ) {
                            let now = self.now();
                            self.groups.core.handle_unreachable(&to, &self.core, now);
                        }
                    }
                    Some(GroupOutbound::Describe { walk, node, parent, depth }) => {
                        if depth == 0
                            && let Some(w) = self.groups.walks.get_mut(&walk)
                        {
                            w.root_unreachable = true;
                        }
                        self.continue_tree_walk(walk, node, parent, depth, None);
                    }
                    None => {}
                }
            }
            request_response::Event::InboundFailure { error, .. } => {
                self.counters.rejected.malformed += 1;
                debug!(%error, "inbound group request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn serve_group(&mut self, peer: PeerId, request: GroupRequest, channel: ResponseChannel<GroupReply>) {
        let reply = match request {
            GroupRequest::Message { .. } if self.leave != super::LeaveState::Running => {
                // Leaving: its groups were handed off; taking part again would adopt children
                // and back up roots on a node about to go.
                GroupReply::Refused
            }
            GroupRequest::Message { sender, message } => {
                if sender.peer != peer {
                    // The envelope must name the authenticated sender.
                    self.counters.rejected.invalid += 1;
                    GroupReply::Refused
                } else {
                    let now = self.now();
                    self.groups.core.handle_message(sender, *message, &self.core, now);
                    GroupReply::Ack
                }
            }
            GroupRequest::Describe { group } => GroupReply::Described(self.describe(&group)),
        };
        // Fails only if the requester gave up; nothing to do then.
        let _ = self.swarm.behaviour_mut().group.send_response(channel, reply);
    }

    fn describe(&self, group: &GroupName) -> Option<TreeNodeInfo> {
        self.groups.core.groups().into_iter().find(|g| g.name == *group).map(|g| TreeNodeInfo {
            role: role_name(g.role).to_string(),
            member: g.is_member,
            parent: g.parent,
            children: g.children,
        })
    }

    // ----- tree walks --------------------------------------------------------------------------

    fn start_tree_walk(&mut self, name: GroupName, reply: oneshot::Sender<Result<TreeView, GroupError>>) {
        let id = self.groups.next_walk;
        self.groups.next_walk += 1;
        let mid = name.id();
        self.groups.walks.insert(
            id,
            TreeWalk {
                name: name.as_str().to_string(),
                id: mid,
                root: None,
                nodes: Vec::new(),
                seen: HashSet::new(),
                in_flight: 0,
                complete: true,
                root_failed: false,
                root_unreachable: false,
                deadline: Instant::now() + TREE_WALK_TIMEOUT,
                reply,
            },
        );
        if self.core.owns(&mid) {
            let me = self.core.me().clone();
            self.visit_tree_node(id, me, None, 0);
        } else {
            let now = self.now();
            let lookup = self.core.lookup(mid, now);
            self.groups.walk_lookups.insert(lookup, id);
        }
    }

    /// A lookup for a tree walk's root finished; `true` if it was one.
    pub(super) fn on_walk_lookup(
        &mut self,
        lookup: LookupId,
        result: &Result<LookupOutcome<PeerAddr>, LookupError>,
    ) -> bool {
        let Some(walk) = self.groups.walk_lookups.remove(&lookup) else { return false };
        match result {
            Ok(outcome) => {
                let root = outcome.owner.clone();
                self.visit_tree_node(walk, root, None, 0);
            }
            Err(error) => {
                if let Some(walk) = self.groups.walks.remove(&walk) {
                    let _ = walk.reply.send(Err(GroupError::Unreachable(error.to_string())));
                }
            }
        }
        true
    }

    fn visit_tree_node(&mut self, walk_id: u64, node: NodeRef<PeerAddr>, parent: Option<PeerId>, depth: u32) {
        let Some(walk) = self.groups.walks.get_mut(&walk_id) else { return };
        if walk.seen.len() >= MAX_TREE_NODES || !walk.seen.insert(node.addr.peer) {
            // A cycle (while the tree repairs) or an absurdly large tree: report what was seen.
            walk.complete = false;
            return;
        }
        walk.in_flight += 1;
        if node.addr.peer == self.me.peer {
            let name = GroupName::new(walk.name.clone()).expect("walks are only started for valid names");
            let info = self.describe(&name);
            self.continue_tree_walk(walk_id, node, parent, depth, info);
            return;
        }
        let group = GroupName::new(walk.name.clone()).expect("walks are only started for valid names");
        let addresses = Self::dial_addresses(&node.addr);
        let id = self.swarm.behaviour_mut().group.send_request_with_addresses(
            &node.addr.peer,
            GroupRequest::Describe { group },
            addresses,
        );
        self.groups.outbound.insert(id, GroupOutbound::Describe { walk: walk_id, node, parent, depth });
    }

    /// One node of a walk answered (or failed: `info` is `None`). Its children are visited
    /// before it stops counting as in flight, so a walk cannot finish while a sibling is
    /// still to be visited.
    fn continue_tree_walk(
        &mut self,
        walk_id: u64,
        node: NodeRef<PeerAddr>,
        parent: Option<PeerId>,
        depth: u32,
        info: Option<TreeNodeInfo>,
    ) {
        let Some(walk) = self.groups.walks.get_mut(&walk_id) else { return };
        let children = match info {
            Some(info) => {
                // The answer comes from the network: only genuine references, and not too many.
                let children: Vec<NodeRef<PeerAddr>> = info
                    .children
                    .into_iter()
                    .filter(NodeRef::is_genuine)
                    .take(MAX_DESCRIBED_CHILDREN)
                    .collect();
                walk.nodes.push(TreeNodeView {
                    node: node.clone(),
                    parent,
                    depth,
                    role: info.role,
                    member: info.member,
                    children: children.iter().map(|c| c.addr.peer).collect(),
                });
                if depth == 0 {
                    walk.root = Some(node.clone());
                }
                children
            }
            None if depth == 0 => {
                // The root knows nothing of the group (no tree), or did not answer.
                walk.root_failed = true;
                Vec::new()
            }
            None => {
                walk.complete = false;
                Vec::new()
            }
        };
        for child in children {
            self.visit_tree_node(walk_id, child, Some(node.addr.peer), depth + 1);
        }
        if let Some(walk) = self.groups.walks.get_mut(&walk_id) {
            walk.in_flight = walk.in_flight.saturating_sub(1);
        }
        self.finish_tree_walk_if_done(walk_id);
    }

    fn finish_tree_walk_if_done(&mut self, walk_id: u64) {
        let done = self.groups.walks.get(&walk_id).is_some_and(|w| w.in_flight == 0);
        if !done {
            return;
        }
        let walk = self.groups.walks.remove(&walk_id).expect("looked up above");
        let Some(root) = walk.root else {
            let error = if walk.root_failed && !walk.root_unreachable {
                GroupError::NoTree(walk.name)
            } else {
                GroupError::Unreachable(format!("the root of group {:?} did not answer in time", walk.name))
            };
            let _ = walk.reply.send(Err(error));
            return;
        };
        let mut nodes = walk.nodes;
        nodes.sort_by_key(|n| n.depth); // breadth-first order, stable within a level
        let _ = walk.reply.send(Ok(TreeView {
            name: walk.name,
            id: walk.id,
            root,
            complete: walk.complete,
            nodes,
        }));
    }

    fn expire_tree_walks(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> =
            self.groups.walks.iter().filter(|(_, w)| now >= w.deadline).map(|(id, _)| *id).collect();
        for id in expired {
            if let Some(walk) = self.groups.walks.get_mut(&id) {
                walk.complete = false;
                walk.in_flight = 0;
            }
            self.finish_tree_walk_if_done(id);
        }
    }
}

/// A peer id's last 8 characters: the default sender label.
fn short_peer(peer: &PeerId) -> String {
    let text = peer.to_string();
    text[text.len().saturating_sub(8)..].to_string()
}
