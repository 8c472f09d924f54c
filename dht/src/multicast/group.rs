//! One group as this node sees it: [`Group`] composes the parts each concern owns — the place
//! in the tree (`tree`), a local member's delivery and gap filling (`delivery`, `fetch`), the
//! root's state (`root`) — with what every role knows: the head and the root's address. It also
//! says what this node tells its children about the group.
//!
//! Invariants: the known head never goes down; `delivery` and `gap` are in use only while a
//! local member has joined.

use super::GroupName;
use super::delivery::Delivery;
use super::fetch::GapFill;
use super::root::RootState;
use super::tree::Tree;
use crate::address::Address;
use crate::id::Id;
use crate::time::Time;

/// One group's state at this node: a forwarder, a member or the root (or several of these).
#[derive(Clone, Debug)]
pub(super) struct Group<A> {
    pub(super) name: GroupName,
    pub(super) mid: Id,
    /// Whether a local member joined.
    pub(super) member: bool,
    /// This node's place in the tree.
    pub(super) tree: Tree<A>,
    /// The root's state, when this node is the root (or about to be, learning the head).
    pub(super) root: Option<RootState<A>>,
    /// The highest number released by the root, as known here.
    pub(super) head: Option<u64>,
    /// The root's address, as known here (data carries it; fetches go there).
    pub(super) root_addr: Option<A>,
    /// A local member's delivery.
    pub(super) delivery: Delivery<A>,
    /// A local member's gap filling.
    pub(super) gap: GapFill,
}

impl<A: Address> Group<A> {
    pub(super) fn new(name: GroupName, now: Time) -> Self {
        Group {
            mid: name.id(),
            name,
            member: false,
            tree: Tree::new(now),
            root: None,
            head: None,
            root_addr: None,
            delivery: Delivery::new(),
            gap: GapFill::new(now),
        }
    }

    /// Raises the known head to `head`; it never goes down.
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
            None => (self.tree.depth, self.head, self.root_addr.clone(), self.tree.path.clone()),
        }
    }
}
