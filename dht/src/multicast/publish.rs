//! Publishes this node started: each waits for the root's acknowledgement, is sent again every
//! `publish_retry` with the same id (the root recognises retries) and fails after
//! `publish_timeout`.

use super::root::QueuedPublish;
use super::{GroupEvent, GroupName, Multicast, PublishError, PublishId};
use crate::address::Address;
use crate::node::Node;
use crate::time::Time;

#[derive(Clone, Debug)]
pub(super) struct PendingPublish {
    pub(super) group: GroupName,
    pub(super) from: String,
    pub(super) body: Vec<u8>,
    pub(super) ts_ms: u64,
    pub(super) deadline: Time,
    pub(super) retry_at: Time,
}

impl<A: Address> Multicast<A> {
    pub(super) fn send_publish(&mut self, id: u64, ring: &Node<A>, now: Time) {
        let Some(p) = self.publishes.get(&id) else {
            return;
        };
        let publish = QueuedPublish {
            origin: self.me.clone(),
            id,
            from: p.from.clone(),
            body: p.body.clone(),
            ts_ms: p.ts_ms,
        };
        let group = p.group.clone();
        let mid = group.id();
        self.on_publish(mid, group, publish, 0, ring, now);
    }

    pub(super) fn tick_publishes(&mut self, ring: &Node<A>, now: Time) {
        let expired: Vec<u64> =
            self.publishes.iter().filter(|(_, p)| p.deadline <= now).map(|(k, _)| *k).collect();
        for id in expired {
            let p = self.publishes.remove(&id).expect("listed above");
            self.counters.publishes_failed += 1;
            self.events.push_back(GroupEvent::PublishFailed {
                id: PublishId(id),
                group: p.group,
                error: PublishError::TimedOut,
            });
        }
        let due: Vec<u64> =
            self.publishes.iter().filter(|(_, p)| p.retry_at <= now).map(|(k, _)| *k).collect();
        for id in due {
            if let Some(p) = self.publishes.get_mut(&id) {
                p.retry_at = now + self.config.publish_retry;
            }
            self.counters.publish_retries += 1;
            self.send_publish(id, ring, now);
        }
    }
}
