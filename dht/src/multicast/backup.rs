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

/// How long after a hand-off (or its last resend) it is sent again from the kept copy.
const HANDOFF_RESEND: std::time::Duration = std::time::Duration::from_secs(5);

/// A copy of a root's state.
#[derive(Clone, Debug)]
pub(super) struct Replica<A> {
    pub(super) name: GroupName,
    /// The highest number the root stamped, as last heard.
    pub(super) head: u64,
    pub(super) history: History<A>,
    /// When the root last pushed anything.
    pub(super) updated: Time,
    /// Kept by a root that handed its role on: the hand-off, until it is refused or given up.
    pub(super) handoff: Option<HandedOff<A>>,
}

/// The hand-off a copy was kept from. A node drops a hand-off from a node it does not see as a
/// ring neighbour (ring views disagree for a while after a partition heals) and says so with a
/// `Rejoin`; the copy is then the only holder of that root's numbering, so it is sent again, to
/// the predecessor of the moment, at most [`MAX_HANDOFF_SENDS`] times in all. Only a refusal
/// re-arms it: resending hand-offs that were taken would make their receivers roots again.
#[derive(Clone, Debug)]
pub(super) struct HandedOff<A> {
    /// The node it was sent to last.
    pub(super) to: A,
    /// How many times it was sent.
    pub(super) sends: u32,
    /// When to send it again, once refused.
    pub(super) resend_at: Option<Time>,
}

/// Times a root's hand-off is sent (the first time and the resends from its kept copy). A resend
/// that reaches a root that has the state already is harmless: its meet skips what it holds.
pub(super) const MAX_HANDOFF_SENDS: u32 = 4;

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

    pub(super) fn get_mut(&mut self, mid: &Id) -> Option<&mut Replica<A>> {
        self.copies.get_mut(mid)
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
            handoff: None,
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
        self.resend_handoffs(ring, now);
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

    /// `by` refused the hand-off of `mid` this node sent it (a `Rejoin`): send it again later,
    /// within the bound.
    /// Sends again the hand-offs of roles this node gave up whose copy it still keeps, to its
    /// predecessor (the node a hand-off goes to), at most [`MAX_HANDOFF_SENDS`] times in all.
    pub(super) fn handoff_refused(&mut self, mid: &Id, by: &A, now: Time) {
        let Some(handoff) = self.backups.get_mut(mid).and_then(|c| c.handoff.as_mut()) else { return };
        if handoff.to == *by && handoff.resend_at.is_none() && handoff.sends < MAX_HANDOFF_SENDS {
            handoff.resend_at = Some(now + HANDOFF_RESEND);
        }
    }

    fn resend_handoffs(&mut self, ring: &Node<A>, now: Time) {
        let Some(to) = ring.predecessor().map(|p| p.addr.clone()).filter(|p| *p != self.me.addr) else {
            return;
        };
        let due: Vec<Id> = self
            .backups
            .iter()
            .filter(|(_, r)| r.handoff.as_ref().is_some_and(|h| h.resend_at.is_some_and(|at| at <= now)))
            .map(|(mid, _)| *mid)
            .collect();
        for mid in due {
            let Some(copy) = self.backups.get_mut(&mid) else { continue };
            let Some(handoff) = copy.handoff.as_mut() else { continue };
            handoff.to = to.clone();
            handoff.sends += 1;
            handoff.resend_at = None;
            let (name, head, history) = (copy.name.clone(), copy.head, copy.history.clone());
            self.counters.handoffs_resent += 1;
            self.send_copy(&to, &name, head, &history, true);
        }
    }
}
