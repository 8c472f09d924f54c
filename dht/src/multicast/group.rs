//! One group as this node sees it: its place in the tree, local membership and delivery state,
//! gap filling and, at the root, the root's state; plus what this node tells its children about
//! the group.

use std::collections::BTreeMap;

use super::GroupName;
use super::delivery::Delivery;
use super::fetch::GapFill;
use super::root::RootState;
use super::tree::{Child, Joining};
use crate::address::{Address, NodeRef};
use crate::id::Id;
use crate::time::Time;

#[derive(Clone, Debug)]
pub(super) struct Group<A> {
    pub(super) name: GroupName,
    pub(super) mid: Id,
    pub(super) member: bool,
    pub(super) parent: Option<NodeRef<A>>,
    pub(super) depth: Option<u16>,
    pub(super) last_parent_ack: Time,
    pub(super) detached_since: Option<Time>,
    pub(super) next_refresh: Time,
    pub(super) joining: Option<Joining<A>>,
    /// A former parent not to route through for a while (after a detached re-join).
    pub(super) avoid: Option<(A, Time)>,
    /// Short ids of this node's ancestors, parent first (empty at the root or while detached).
    pub(super) path: Vec<u64>,
    pub(super) children: BTreeMap<A, Child>,
    pub(super) root: Option<RootState<A>>,
    pub(super) head: Option<u64>,
    pub(super) root_addr: Option<A>,
    pub(super) delivery: Delivery<A>,
    pub(super) gap: GapFill,
}

impl<A: Address> Group<A> {
    pub(super) fn new(name: GroupName, now: Time) -> Self {
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
            delivery: Delivery::new(),
            gap: GapFill::new(now),
        }
    }

    pub(super) fn learn_head(&mut self, head: Option<u64>) {
        if let Some(h) = head {
            self.head = Some(self.head.map_or(h, |old| old.max(h)));
        }
    }

    /// What this node tells its children about the group: depth, head, root, path.
    pub(super) fn advertised(&self, me: &A) -> (Option<u16>, Option<u64>, Option<A>, Vec<u64>) {
        match &self.root {
            Some(root) if root.ready => (Some(0), Some(root.released), Some(me.clone()), Vec::new()),
            Some(_) => (None, None, None, Vec::new()),
            None => (self.depth, self.head, self.root_addr.clone(), self.path.clone()),
        }
    }
}
