//! Delivery at a member: data from the parent is forwarded to the children and, at a member,
//! delivered in sequence order exactly once; what arrives early is buffered within
//! `max_out_of_order`.

use super::{GroupEvent, GroupMessage, Multicast, Stamped};
use crate::address::Address;
use crate::id::Id;
use crate::node::Node;
use crate::time::Time;

impl<A: Address> Multicast<A> {
    pub(super) fn on_data(
        &mut self,
        mid: Id,
        from: A,
        root: A,
        message: Stamped<A>,
        ring: &Node<A>,
        now: Time,
    ) {
        let Some(g) = self.group_from_parent(&mid, &from) else { return };
        g.root_addr = Some(root.clone());
        g.learn_head(Some(message.seq));
        let name = g.name.clone();
        let children: Vec<A> = g.children.keys().cloned().collect();
        let member = g.member;
        for child in children {
            let data =
                GroupMessage::Data { group: name.clone(), root: root.clone(), message: message.clone() };
            self.send(child, data);
        }
        if member {
            self.member_receive(mid, message, false);
            self.check_behind(mid, ring, now);
        }
    }

    /// A member received message `m` (down the tree, or fetched when `fetched`): delivers it and
    /// whatever it unblocks, or buffers it.
    pub(super) fn member_receive(&mut self, mid: Id, m: Stamped<A>, fetched: bool) {
        let window = self.config.max_out_of_order as u64;
        let g = self.groups.get_mut(&mid).expect("callers checked the group exists");
        let next = *g.next_seq.get_or_insert(m.seq);
        if m.seq < next || g.buffer.contains_key(&m.seq) {
            self.counters.duplicates += 1;
            return;
        }
        if m.seq > next {
            if !fetched && (m.seq - next > window || g.buffer.len() >= window as usize) {
                self.counters.dropped_out_of_window += 1;
                return;
            }
            g.buffer.insert(m.seq, m);
            return;
        }
        g.buffer.insert(m.seq, m);
        self.drain(mid);
    }

    /// Delivers buffered messages from the next expected number on while they are contiguous.
    pub(super) fn drain(&mut self, mid: Id) {
        let g = self.groups.get_mut(&mid).expect("callers checked the group exists");
        let Some(mut next) = g.next_seq else {
            return;
        };
        while let Some(m) = g.buffer.remove(&next) {
            self.events.push_back(GroupEvent::Delivered {
                group: g.name.clone(),
                seq: m.seq,
                from: m.from,
                body: m.body,
                ts_ms: m.ts_ms,
            });
            next += 1;
        }
        // Anything below `next` left in the buffer is stale.
        while g.buffer.first_key_value().is_some_and(|(s, _)| *s < next) {
            g.buffer.pop_first();
        }
        g.next_seq = Some(next);
    }
}
