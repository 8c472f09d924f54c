//! Publishes this node started: each waits for the root's acknowledgement, is sent again every
//! `publish_retry` with the same id (the root recognises retries) and fails after
//! `publish_timeout`.
//!
//! Owns the publishes in flight and the next publish id. Invariants: ids are never reused; a
//! publish ends exactly once — acknowledged (by a `PublishAck` for its own group from a node that
//! may be the group's root, or by this node as root), timed out, or failed because this node
//! left; any other acknowledgement is dropped and counted.

use std::collections::BTreeMap;

use tracing::debug;

use super::fetch::may_be_root;
use super::root::QueuedPublish;
use super::{GroupEvent, GroupName, Multicast, PublishError, PublishId};
use crate::address::{Address, NodeRef};
use crate::id::Id;
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

    /// Takes in the root's acknowledgement of publish `id`, unless `from` cannot be the root of
    /// `mid`: publish ids are guessable and every hop a publish is routed through sees it, so an
    /// acknowledgement is matched by id, group and sender. A publish is routed, not sent to a
    /// known root, so the sender is checked the way routed fetches are ([`may_be_root`]).
    pub(super) fn on_publish_ack(&mut self, mid: Id, from: A, group: GroupName, id: u64, seq: u64) {
        if !may_be_root(&self.me.id, &mid, &from.node_id()) {
            self.counters.dropped_unexpected += 1;
            debug!(peer = ?from, id, "dropped a publish acknowledgement from a node that cannot be the root");
            return;
        }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::multicast::GroupMessage;
    use crate::multicast::testing::ring;

    #[test]
    fn publish_acks_from_a_node_that_cannot_be_the_root_are_dropped() {
        let mut sim = ring(30, 5);
        let g = GroupName::new("acked").expect("valid");
        let root = sim.true_successor(&g.id()).expect("members") as usize;
        // Nodes in ring order from the root on; the publisher sits well after it, so that the
        // nodes after the publisher are hops of its route toward mid, which see the publish id.
        let mut order: Vec<usize> = (0..sim.node_count()).collect();
        let root_id = sim.node(root).me().id;
        order.sort_by_key(|&i| root_id.distance_to(&sim.node(i).me().id));
        let (publisher, hop) = (order[10], order[20]);
        sim.join_group(order[3], &g).expect("ring member");
        sim.run_until(sim.now() + Duration::from_secs(3));
        sim.take_group_events();

        let id = sim.publish(publisher, &g, b"hello".to_vec()).expect("accepted");
        let before = sim.multicast(publisher).expect("enabled").counters().clone();
        // The real acknowledgement is still on its way: this arrives first.
        let forged = GroupMessage::PublishAck { group: g.clone(), id: id.0, seq: 77 };
        let hop_addr = sim.addr(hop);
        sim.inject_group_message(publisher, hop_addr, forged);
        let after = sim.multicast(publisher).expect("enabled").counters().clone();
        assert_eq!(after.dropped_unexpected - before.dropped_unexpected, 1);
        assert!(sim.take_group_events().iter().all(|r| r.node != publisher), "nothing acknowledged yet");

        // The root's acknowledgement still ends the publish.
        sim.run_until(sim.now() + Duration::from_secs(3));
        let acked = sim.take_group_events().into_iter().find_map(|r| match r.event {
            GroupEvent::Published { id: acked, seq, .. } if r.node == publisher => Some((acked, seq)),
            _ => None,
        });
        assert_eq!(acked, Some((id, 1)));
    }
}
