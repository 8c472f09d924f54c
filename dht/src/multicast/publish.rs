//! Publishes this node started: each waits for the root's acknowledgement, is sent again every
//! `publish_retry` with the same id (the root recognises retries) and fails after
//! `publish_timeout`.
//!
//! Owns the publishes in flight and the next publish id. Invariants: ids are never reused; a
//! publish ends exactly once — acknowledged (by a `PublishAck` for its own group, or by this node
//! as root), timed out, or failed because this node left.

use std::collections::BTreeMap;

use super::root::QueuedPublish;
use super::{GroupEvent, GroupName, Multicast, PublishError, PublishId};
use crate::address::{Address, NodeRef};
use crate::node::Node;
use crate::time::Time;

/// A publish waiting for the root's acknowledgement.
#[derive(Clone, Debug)]
pub(super) struct PendingPublish {
    pub(super) group: GroupName,
    pub(super) from: String,
    pub(super) body: Vec<u8>,
    pub(super) ts_ms: u64,
    /// It fails then.
    pub(super) deadline: Time,
    /// It is sent again then.
    pub(super) retry_at: Time,
}

/// The publishes this node has in flight, by id.
#[derive(Debug)]
pub(super) struct Publishes {
    pending: BTreeMap<u64, PendingPublish>,
    next_id: u64,
}

impl Publishes {
    pub(super) fn new() -> Self {
        Publishes { pending: BTreeMap::new(), next_id: 0 }
    }

    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Records a new publish and returns its id.
    pub(super) fn start(&mut self, publish: PendingPublish) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, publish);
        id
    }

    /// The publish `id` as it travels to the root, from `me`.
    fn to_send<A: Clone>(&self, id: u64, me: &NodeRef<A>) -> Option<(GroupName, QueuedPublish<A>)> {
        let p = self.pending.get(&id)?;
        let publish = QueuedPublish {
            origin: me.clone(),
            id,
            from: p.from.clone(),
            body: p.body.clone(),
            ts_ms: p.ts_ms,
        };
        Some((p.group.clone(), publish))
    }

    /// Ends publish `id` if it is in flight for `group`; false if the acknowledgement matches
    /// nothing (late, duplicated or made up).
    pub(super) fn acknowledged(&mut self, id: u64, group: &GroupName) -> bool {
        if self.pending.get(&id).is_some_and(|p| &p.group == group) {
            self.pending.remove(&id);
            true
        } else {
            false
        }
    }

    /// Removes and returns the publishes whose deadline has passed.
    fn expire(&mut self, now: Time) -> Vec<(u64, PendingPublish)> {
        let expired: Vec<u64> =
            self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(k, _)| *k).collect();
        expired.into_iter().map(|id| (id, self.pending.remove(&id).expect("listed above"))).collect()
    }

    /// The publishes due to be sent again, each rescheduled for `next`.
    fn due(&mut self, now: Time, next: Time) -> Vec<u64> {
        let mut due = Vec::new();
        for (id, p) in self.pending.iter_mut().filter(|(_, p)| p.retry_at <= now) {
            p.retry_at = next;
            due.push(*id);
        }
        due
    }

    /// Removes and returns every publish in flight.
    pub(super) fn take_all(&mut self) -> Vec<(u64, PendingPublish)> {
        std::mem::take(&mut self.pending).into_iter().collect()
    }
}

impl<A: Address> Multicast<A> {
    pub(super) fn send_publish(&mut self, id: u64, ring: &Node<A>, now: Time) {
        let Some((group, publish)) = self.publishes.to_send(id, &self.me) else {
            return;
        };
        let mid = group.id();
        self.on_publish(mid, group, publish, 0, ring, now);
    }

    pub(super) fn on_publish_ack(&mut self, group: GroupName, id: u64, seq: u64) {
        if self.publishes.acknowledged(id, &group) {
            self.events.push_back(GroupEvent::Published { id: PublishId(id), group, seq });
        } else {
            self.counters.dropped_unexpected += 1;
        }
    }

    pub(super) fn tick_publishes(&mut self, ring: &Node<A>, now: Time) {
        for (id, p) in self.publishes.expire(now) {
            self.counters.publishes_failed += 1;
            self.events.push_back(GroupEvent::PublishFailed {
                id: PublishId(id),
                group: p.group,
                error: PublishError::TimedOut,
            });
        }
        for id in self.publishes.due(now, now + self.config.publish_retry) {
            self.counters.publish_retries += 1;
            self.send_publish(id, ring, now);
        }
    }
}
