//! Backup copies: the head and history of groups rooted by a node before this one on the ring,
//! pushed by their root (each stamped message before it goes down, and the head now and then) or
//! kept by a root that handed its role on. The first successor's copy is what lets it take the
//! root's place after a crash and continue the numbering.
//!
//! Owns the copies by `mid`. Invariants: at most `max_groups` copies, each holding at most
//! `history_messages` messages (and `history_bytes`); a copy not refreshed for `backup_ttl` is dropped; a copy is
//! turned into a root (and removed) only when this node owns `mid` and has not just handed the
//! role away.

use std::collections::BTreeMap;

use super::group::Group;
use super::history::History;
use super::{GroupName, Multicast, MulticastConfig, Stamped};
use crate::address::Address;
use crate::id::Id;
use crate::node::Node;
use crate::time::Time;

/// A copy of a root's state.
#[derive(Clone, Debug)]
pub(super) struct Replica<A> {
    pub(super) name: GroupName,
    /// The highest number the root stamped, as last heard.
    pub(super) head: u64,
    pub(super) history: History<A>,
    /// When the root last pushed anything.
    pub(super) updated: Time,
}

/// The backup copies this node holds, by `mid`.
#[derive(Debug)]
pub(super) struct Backups<A> {
    copies: BTreeMap<Id, Replica<A>>,
}

impl<A: Address> Backups<A> {
    pub(super) fn new() -> Self {
        Backups { copies: BTreeMap::new() }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.copies.is_empty()
    }

    pub(super) fn get(&self, mid: &Id) -> Option<&Replica<A>> {
        self.copies.get(mid)
    }

    /// Removes and returns the copy of `mid` (this node is taking the root role over).
    pub(super) fn take(&mut self, mid: &Id) -> Option<Replica<A>> {
        self.copies.remove(mid)
    }

    /// Removes and returns every copy, in `mid` order.
    pub(super) fn take_all(&mut self) -> Vec<Replica<A>> {
        std::mem::take(&mut self.copies).into_values().collect()
    }

    /// (group, head) of every copy, in `mid` order.
    pub(super) fn summaries(&self) -> Vec<(GroupName, u64)> {
        self.copies.values().map(|r| (r.name.clone(), r.head)).collect()
    }

    /// Keeps `copy` of a root role this node handed on, unless `max_groups` copies are held.
    pub(super) fn keep(&mut self, mid: Id, copy: Replica<A>, max_groups: usize) {
        if self.copies.len() < max_groups {
            self.copies.insert(mid, copy);
        }
    }

    /// Takes in state pushed by `group`'s root: the head, and `messages` not held yet, keeping the
    /// newest `history_messages` within `history_bytes`. Refused (`None`) when this would be one
    /// copy more than `max_groups`; else how many messages went for the byte budget.
    pub(super) fn store(
        &mut self,
        mid: Id,
        group: &GroupName,
        head: u64,
        messages: Vec<Stamped<A>>,
        now: Time,
        config: &MulticastConfig,
    ) -> Option<u64> {
        if !self.copies.contains_key(&mid) && self.copies.len() >= config.max_groups {
            return None;
        }
        let copy = self.copies.entry(mid).or_insert_with(|| Replica {
            name: group.clone(),
            head: 0,
            history: History::new(),
            updated: now,
        });
        copy.head = copy.head.max(head);
        copy.updated = now;
        for m in messages {
            copy.history.insert_copy(m, now);
        }
        Some(copy.history.keep_newest(config.history_messages, config.history_bytes))
    }

    /// Drops copies whose root has been silent for `ttl`.
    pub(super) fn expire(&mut self, now: Time, ttl: std::time::Duration) {
        self.copies.retain(|_, r| now.saturating_since(r.updated) < ttl);
    }

    /// The copies, in `mid` order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&Id, &Replica<A>)> {
        self.copies.iter()
    }
}

impl<A: Address> Multicast<A> {
    /// Expires stale copies and takes the root role of every group whose `mid` this node now owns
    /// (its predecessor, the root, crashed or left).
    pub(super) fn tick_backups(&mut self, ring: &Node<A>, now: Time) {
        self.backups.expire(now, self.config.backup_ttl);
        let owned: Vec<(Id, GroupName)> = self
            .backups
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
}
