//! The tree: how a group's node finds, keeps and loses its place below the root — joins routed
//! toward `mid`, acknowledgements and what a parent says about the tree (depth, head, root, path),
//! redirects by the bottleneck remover, refreshes, pruning, and repair when a parent dies, stays
//! detached or turns out to hang below this node.
//!
//! Owns [`Tree`], a node's place in one group's tree: parent, join under way, depth and path
//! as the parent last told them, children, and the timers of refreshes and detachment.
//!
//! Invariants: a node is attached through at most one parent and never through one of its own
//! children or descendants (a parent whose path names this node is dropped); a join is answered
//! only by the node it was sent to; every wait (join, parent silence, detachment) has a deadline.

use std::collections::BTreeMap;

use tracing::debug;

use super::group::Group;
use super::{GroupMessage, GroupName, MAX_PATH, MAX_ROUTE_HOPS, Multicast, SUSPECT_FOR, short_id};
use crate::address::{Address, NodeRef};
use crate::id::Id;
use crate::node::Node;
use crate::time::Time;

/// A branch deeper than this is taken for a cycle and re-joins.
const MAX_TREE_DEPTH: u16 = 64;

/// This node's place in one group's tree: its parent (or the join under way to find one), what
/// the parent last said about the path up to the root, and its children.
#[derive(Clone, Debug)]
pub(super) struct Tree<A> {
    pub(super) parent: Option<NodeRef<A>>,
    /// Depth below the root (0 at the root), `None` while detached.
    pub(super) depth: Option<u16>,
    pub(super) last_parent_ack: Time,
    /// Since when the parent has said it is detached itself.
    pub(super) detached_since: Option<Time>,
    pub(super) next_refresh: Time,
    pub(super) joining: Option<Joining<A>>,
    /// A former parent not to route through for a while (after a detached re-join).
    pub(super) avoid: Option<(A, Time)>,
    /// Short ids of this node's ancestors, parent first (empty at the root or while detached).
    pub(super) path: Vec<u64>,
    pub(super) children: BTreeMap<A, Child>,
}

impl<A: Address> Tree<A> {
    pub(super) fn new(now: Time) -> Self {
        Tree {
            parent: None,
            depth: None,
            last_parent_ack: now,
            detached_since: None,
            next_refresh: now,
            joining: None,
            avoid: None,
            path: Vec::new(),
            children: BTreeMap::new(),
        }
    }

    /// Whether `peer` is the parent.
    pub(super) fn is_parent(&self, peer: &A) -> bool {
        self.parent.as_ref().is_some_and(|p| p.addr == *peer)
    }

    /// Whether the join under way was sent to `peer`.
    pub(super) fn joining_via(&self, peer: &A) -> bool {
        self.joining.as_ref().is_some_and(|j| j.to.as_ref() == Some(peer))
    }

    /// The bottleneck remover's choice for a newcomer with id `newcomer`: the child whose id most
    /// closely precedes it on the ring.
    fn redirect_for(&self, newcomer: &Id) -> Option<NodeRef<A>> {
        self.children
            .iter()
            .min_by_key(|(_, c)| c.id.distance_to(newcomer))
            .map(|(a, c)| NodeRef { id: c.id, addr: a.clone() })
    }

    /// The children's addresses, in address order.
    pub(super) fn child_addrs(&self) -> Vec<A> {
        self.children.keys().cloned().collect()
    }
}

/// A child, as its parent knows it.
#[derive(Clone, Debug)]
pub(super) struct Child {
    pub(super) id: Id,
    /// Its last join or refresh.
    pub(super) last_heard: Time,
}

/// A join under way.
#[derive(Clone, Debug)]
pub(super) struct Joining<A> {
    /// Where it was sent (`None`: no route; it is tried again on the next tick).
    pub(super) to: Option<A>,
    pub(super) deadline: Time,
}

/// What a parent says about the tree in `JoinAck`/`RefreshAck`: depth, head, root, path.
pub(super) type ParentView<A> = (Option<u16>, Option<u64>, Option<A>, Vec<u64>);

impl<A: Address> Multicast<A> {
    pub(super) fn on_join(&mut self, child: A, group: GroupName, hops: u8, ring: &Node<A>, now: Time) {
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
        if g.tree.is_parent(&child) {
            // Our parent wants to hang below us: a cycle from inconsistent routing. Let it; we
            // find another way up.
            g.tree.parent = None;
            g.tree.depth = None;
        }
        if g.tree.joining_via(&child) {
            g.tree.joining = None;
        }
        if let Some(c) = g.tree.children.get_mut(&child) {
            c.last_heard = now;
        } else if g.tree.children.len() >= max_children {
            let to = g.tree.redirect_for(&child.node_id()).expect("a full set of children is not empty");
            self.counters.redirects += 1;
            self.send(child, GroupMessage::Redirect { group, to });
            return;
        } else {
            g.tree.children.insert(child.clone(), Child { id: child.node_id(), last_heard: now });
        }
        let (depth, head, root, path) = g.advertised(&self.me.addr);
        self.send(child, GroupMessage::JoinAck { group, depth, head, root, path });
        self.ensure_attached(mid, ring, now, hops.saturating_add(1));
    }

    /// Makes sure the group's node is on its way to the root: takes the root role if this node
    /// owns `mid`, else starts a join unless one is running or a parent is known.
    pub(super) fn ensure_attached(&mut self, mid: Id, ring: &Node<A>, now: Time, hops: u8) {
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
        if g.tree.parent.is_none() && g.tree.joining.is_none() {
            self.start_join(mid, ring, now, hops);
        }
    }

    pub(super) fn start_join(&mut self, mid: Id, ring: &Node<A>, now: Time, hops: u8) {
        let Some(g) = self.groups.get(&mid) else {
            return;
        };
        let mut exclude: Vec<A> = g.tree.child_addrs();
        if let Some((a, until)) = &g.tree.avoid
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
        g.tree.joining = Some(Joining { to: target.clone(), deadline });
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
    pub(super) fn group_from_parent(&mut self, mid: &Id, from: &A) -> Option<&mut Group<A>> {
        let Some(g) = self.groups.get_mut(mid) else {
            self.counters.dropped_unknown_group += 1;
            return None;
        };
        if !g.tree.is_parent(from) {
            self.counters.dropped_not_parent += 1;
            return None;
        }
        Some(g)
    }

    pub(super) fn on_join_ack(&mut self, mid: Id, from: A, view: ParentView<A>, ring: &Node<A>, now: Time) {
        let Some(g) = self.groups.get_mut(&mid) else {
            self.counters.dropped_unknown_group += 1;
            return;
        };
        let expected = g.tree.joining_via(&from);
        if !expected || g.root.is_some() {
            self.counters.dropped_not_parent += 1;
            if g.root.is_some() || !g.tree.is_parent(&from) {
                // It adopted us but we do not want it: undo that at once.
                let name = g.name.clone();
                self.send(from, GroupMessage::Prune { group: name });
            }
            return;
        }
        g.tree.joining = None;
        g.tree.parent = Some(NodeRef::new(from));
        g.tree.last_parent_ack = now;
        g.tree.next_refresh = now + self.config.refresh_interval;
        self.apply_parent_view(mid, view, ring, now);
        self.check_behind(mid, ring, now);
    }

    /// Takes in what the parent said about the tree, unless it shows that the parent hangs below
    /// this node (it is our child, or we are among its ancestors): then the link would close a
    /// cycle, so it is dropped and this node re-joins avoiding that parent.
    pub(super) fn apply_parent_view(&mut self, mid: Id, view: ParentView<A>, ring: &Node<A>, now: Time) {
        let (depth, head, root, path) = view;
        let me = self.me_short;
        let g = self.groups.get_mut(&mid).expect("callers checked the group exists");
        let parent = g.tree.parent.clone().expect("callers set the parent");
        if g.tree.children.contains_key(&parent.addr) || path.contains(&me) {
            self.counters.cycles_broken += 1;
            g.tree.parent = None;
            g.tree.depth = None;
            g.tree.path.clear();
            g.tree.avoid = Some((parent.addr.clone(), now + self.config.detached_timeout));
            let name = g.name.clone();
            self.send(parent.addr, GroupMessage::Prune { group: name });
            self.start_join(mid, ring, now, 0);
            return;
        }
        g.tree.depth = depth.map(|d| d.saturating_add(1));
        g.tree.path.clear();
        if depth.is_some() {
            g.tree.path.push(short_id(&parent.id));
            g.tree.path.extend(path.into_iter().take(MAX_PATH - 1));
        }
        match g.tree.depth {
            Some(_) => g.tree.detached_since = None,
            None => {
                g.tree.detached_since.get_or_insert(now);
            }
        }
        g.learn_head(head);
        if root.is_some() {
            g.root_addr = root;
        }
        if g.member {
            g.delivery.start_if_unknown(head.map(|h| h + 1));
        }
    }

    pub(super) fn on_redirect(&mut self, mid: Id, from: A, to: NodeRef<A>, now: Time) {
        let Some(g) = self.groups.get_mut(&mid) else {
            self.counters.dropped_unknown_group += 1;
            return;
        };
        if !g.tree.joining_via(&from) || to.addr == self.me.addr || g.tree.children.contains_key(&to.addr) {
            self.counters.dropped_unexpected += 1;
            return;
        }
        g.tree.joining = Some(Joining { to: Some(to.addr.clone()), deadline: now + self.config.rpc_timeout });
        let name = g.name.clone();
        self.counters.joins_sent += 1;
        self.send(to.addr, GroupMessage::Join { group: name, hops: 0 });
    }

    pub(super) fn on_rejoin(&mut self, mid: Id, from: A, ring: &Node<A>, now: Time) {
        self.handoff_refused(&mid, &from, now);
        match self.groups.get_mut(&mid) {
            Some(g) if g.root.as_ref().is_some_and(|r| !r.ready) => {
                // The root answered our state query: it is alive and we do not own mid.
                self.abandon_pending_root(mid, Some(from), ring, now);
            }
            Some(g) if g.tree.is_parent(&from) => {
                g.tree.parent = None;
                g.tree.depth = None;
                g.tree.joining = None;
                g.tree.avoid = Some((from.clone(), now + SUSPECT_FOR));
                self.ensure_attached(mid, ring, now, 0);
            }
            _ => self.counters.dropped_not_parent += 1,
        }
    }

    pub(super) fn on_refresh(&mut self, mid: Id, from: A, group: GroupName, ring: &Node<A>, now: Time) {
        let known_child = self.groups.get_mut(&mid).and_then(|g| g.tree.children.get_mut(&from));
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

    pub(super) fn on_prune(&mut self, mid: Id, from: A) {
        if self.groups.get_mut(&mid).is_some_and(|g| g.tree.children.remove(&from).is_some()) {
            self.maybe_prune(mid);
        } else {
            self.counters.dropped_unexpected += 1;
        }
    }

    /// `peer` could not be reached: it is dropped as a child everywhere, and where it was the
    /// parent or the join target, this node re-joins now.
    pub(super) fn drop_from_trees(&mut self, peer: &A, ring: &Node<A>, now: Time) {
        let mids: Vec<Id> = self.groups.keys().copied().collect();
        for mid in mids {
            let g = self.groups.get_mut(&mid).expect("key listed above");
            g.tree.children.remove(peer);
            let parent_lost = g.tree.is_parent(peer);
            let join_lost = g.tree.joining_via(peer);
            if parent_lost || join_lost {
                if parent_lost {
                    self.counters.parent_failures += 1;
                }
                g.tree.parent = None;
                g.tree.depth = None;
                g.tree.joining = None;
                self.ensure_attached(mid, ring, now, 0);
            }
            self.maybe_prune(mid);
        }
    }

    pub(super) fn on_refresh_ack(
        &mut self,
        mid: Id,
        from: A,
        view: ParentView<A>,
        ring: &Node<A>,
        now: Time,
    ) {
        let Some(g) = self.group_from_parent(&mid, &from) else { return };
        g.tree.last_parent_ack = now;
        self.apply_parent_view(mid, view, ring, now);
    }

    /// Removes this node from the tree if nothing needs it there: not the root, no local
    /// member, no children.
    pub(super) fn maybe_prune(&mut self, mid: Id) {
        let Some(g) = self.groups.get(&mid) else {
            return;
        };
        if g.root.is_some() || g.member || !g.tree.children.is_empty() {
            return;
        }
        let g = self.groups.remove(&mid).expect("present: read above");
        if let Some(parent) = g.tree.parent {
            self.send(parent.addr, GroupMessage::Prune { group: g.name });
        }
    }

    pub(super) fn tick_group(&mut self, mid: Id, ring: &Node<A>, now: Time) {
        let config = self.config.clone();
        let may_root = self.may_root(&mid, now);
        // Children that stopped refreshing.
        let g = self.groups.get_mut(&mid).expect("callers pass present keys");
        let before = g.tree.children.len();
        g.tree.children.retain(|_, c| now.saturating_since(c.last_heard) < config.child_timeout);
        self.counters.children_expired += (before - g.tree.children.len()) as u64;

        if g.root.is_some() {
            self.tick_root(mid, ring, now);
        } else if ring.owns(&mid) && may_root {
            self.become_root(mid, ring, now);
        } else if let Some(parent) = g.tree.parent.clone() {
            if now.saturating_since(g.tree.last_parent_ack) >= config.parent_timeout {
                debug!(group = %g.name, parent = ?parent.addr, "parent silent: re-joining");
                self.counters.parent_failures += 1;
                self.suspects.insert(parent.addr.clone(), now + SUSPECT_FOR);
                g.tree.parent = None;
                g.tree.depth = None;
                self.start_join(mid, ring, now, 0);
            } else if g
                .tree
                .detached_since
                .is_some_and(|t| now.saturating_since(t) >= config.detached_timeout)
                || g.tree.depth.is_some_and(|d| d > MAX_TREE_DEPTH)
            {
                self.counters.detached_rejoins += 1;
                g.tree.avoid = Some((parent.addr.clone(), now + config.detached_timeout));
                g.tree.parent = None;
                g.tree.depth = None;
                g.tree.detached_since = None;
                let name = g.name.clone();
                self.send(parent.addr, GroupMessage::Prune { group: name });
                self.start_join(mid, ring, now, 0);
            } else if now >= g.tree.next_refresh {
                g.tree.next_refresh = now + config.refresh_interval;
                let name = g.name.clone();
                self.send(parent.addr, GroupMessage::Refresh { group: name });
            }
        } else if let Some(joining) = &g.tree.joining {
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
}
