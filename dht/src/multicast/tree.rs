//! The tree: how a group's node finds, keeps and loses its place below the root — joins routed
//! toward `mid`, acknowledgements and what a parent says about the tree (depth, head, root, path),
//! redirects by the bottleneck remover, refreshes, pruning, and repair when a parent dies, stays
//! detached or turns out to hang below this node.
//!
//! Invariants: a node is attached through at most one parent and never through one of its own
//! children or descendants (a parent whose path names this node is dropped); a join is answered
//! only by the node it was sent to; every wait (join, parent silence, detachment) has a deadline.

use super::group::Group;
use super::{GroupMessage, GroupName, MAX_PATH, MAX_ROUTE_HOPS, Multicast, SUSPECT_FOR, short_id};
use crate::address::{Address, NodeRef};
use crate::id::Id;
use crate::node::Node;
use crate::time::Time;
use tracing::debug;

/// A branch deeper than this is taken for a cycle and re-joins.
const MAX_TREE_DEPTH: u16 = 64;

#[derive(Clone, Debug)]
pub(super) struct Child {
    pub(super) id: Id,
    pub(super) last_heard: Time,
}

#[derive(Clone, Debug)]
pub(super) struct Joining<A> {
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
        if g.parent.is_none() && g.joining.is_none() {
            self.start_join(mid, ring, now, hops);
        }
    }

    pub(super) fn start_join(&mut self, mid: Id, ring: &Node<A>, now: Time, hops: u8) {
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
    pub(super) fn group_from_parent(&mut self, mid: &Id, from: &A) -> Option<&mut Group<A>> {
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

    pub(super) fn on_join_ack(&mut self, mid: Id, from: A, view: ParentView<A>, ring: &Node<A>, now: Time) {
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
    pub(super) fn apply_parent_view(&mut self, mid: Id, view: ParentView<A>, ring: &Node<A>, now: Time) {
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
        if g.member {
            g.delivery.start_if_unknown(head.map(|h| h + 1));
        }
    }

    pub(super) fn on_redirect(&mut self, mid: Id, from: A, to: NodeRef<A>, now: Time) {
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

    pub(super) fn on_refresh_ack(
        &mut self,
        mid: Id,
        from: A,
        view: ParentView<A>,
        ring: &Node<A>,
        now: Time,
    ) {
        let Some(g) = self.group_from_parent(&mid, &from) else { return };
        g.last_parent_ack = now;
        self.apply_parent_view(mid, view, ring, now);
    }

    /// Removes this node from the tree if nothing needs it there: not the root, no local
    /// member, no children.
    pub(super) fn maybe_prune(&mut self, mid: Id) {
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

    pub(super) fn tick_group(&mut self, mid: Id, ring: &Node<A>, now: Time) {
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
}
