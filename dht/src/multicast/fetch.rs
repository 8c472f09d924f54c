//! Fetching from the root's history: gap detection at a member, fetches of missing ranges and
//! history requests for the application, serving them at the root, and their replies, deadlines
//! and retries.

use super::{GroupEvent, GroupMessage, GroupName, HistoryMessage, MAX_ROUTE_HOPS, Multicast, Stamped};
use crate::address::{Address, NodeRef};
use crate::id::Id;
use crate::node::Node;
use crate::time::Time;

#[derive(Clone, Debug)]
pub(super) struct PendingFetch<A> {
    pub(super) mid: Id,
    pub(super) group: GroupName,
    pub(super) from_seq: u64,
    pub(super) to_seq: u64,
    pub(super) target: Option<A>,
    pub(super) deadline: Time,
    pub(super) attempts: u32,
    pub(super) user: bool,
}

impl<A: Address> Multicast<A> {
    /// Starts a gap fill if a member is missing numbers it knows exist.
    pub(super) fn check_behind(&mut self, mid: Id, ring: &Node<A>, now: Time) {
        let Some(g) = self.groups.get(&mid) else {
            return;
        };
        if !g.member || g.fetching.is_some() || g.fetch_after > now {
            return;
        }
        let Some(next) = g.next_seq else {
            return;
        };
        let upto = match g.buffer.first_key_value() {
            Some((first, _)) => first - 1,
            None => g.advertised(&self.me.addr).1.or(g.head).unwrap_or(0),
        };
        if upto < next {
            self.groups.get_mut(&mid).expect("present").behind_since = None;
            return;
        }
        let since = *self.groups.get_mut(&mid).expect("present").behind_since.get_or_insert(now);
        if now.saturating_since(since) < self.config.fetch_delay {
            return;
        }
        let g = &self.groups[&mid];
        let request = self.next_request;
        self.next_request += 1;
        let target = g.root_addr.clone();
        let group = g.name.clone();
        self.fetches.insert(
            request,
            PendingFetch {
                mid,
                group,
                from_seq: next,
                to_seq: upto,
                target,
                deadline: now,
                attempts: 0,
                user: false,
            },
        );
        self.groups.get_mut(&mid).expect("present").fetching = Some(request);
        self.send_fetch(request, ring, now);
    }

    pub(super) fn send_fetch(&mut self, request: u64, ring: &Node<A>, now: Time) {
        let Some(f) = self.fetches.get_mut(&request) else {
            return;
        };
        f.attempts += 1;
        f.deadline = now + self.config.rpc_timeout * 2;
        if f.attempts > 2 {
            // The root we knew may be gone: let routing find the current one.
            f.target = None;
        }
        self.counters.fetches_sent += 1;
        let (mid, group, from_seq, to_seq, target) =
            (f.mid, f.group.clone(), f.from_seq, f.to_seq, f.target.clone());
        let requester = self.me.clone();
        match target {
            Some(to) if to != self.me.addr => {
                let message = GroupMessage::Fetch { group, requester, request, from_seq, to_seq, hops: 0 };
                self.send(to, message);
            }
            _ => self.on_fetch(mid, group, requester, request, from_seq, to_seq, 0, ring, now),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_fetch(
        &mut self,
        mid: Id,
        group: GroupName,
        requester: NodeRef<A>,
        request: u64,
        from_seq: u64,
        to_seq: u64,
        hops: u8,
        ring: &Node<A>,
        now: Time,
    ) {
        let ready = self.groups.get(&mid).and_then(|g| g.root.as_ref()).is_some_and(|r| r.ready);
        if !ready {
            let next = if hops >= MAX_ROUTE_HOPS { None } else { self.toward_root(ring, &mid, &[], now) };
            match next {
                Some(next) => {
                    let message =
                        GroupMessage::Fetch { group, requester, request, from_seq, to_seq, hops: hops + 1 };
                    self.send(next, message);
                }
                // The owner without state yet: the requester asks again.
                None => self.counters.dropped_no_route += 1,
            }
            return;
        }
        let budget = self.config.max_frame_bytes - 4096;
        let root = self.groups[&mid].root.as_ref().expect("checked ready above");
        // Only released messages: the others are not yet held by a backup.
        let (messages, covered_to) = root.history.page(from_seq, to_seq.min(root.released), budget);
        let head = root.released;
        if requester.addr == self.me.addr {
            self.on_fetch_reply(self.me.addr.clone(), request, covered_to, head, messages, ring, now);
        } else {
            self.send(
                requester.addr,
                GroupMessage::FetchReply { group, request, covered_to, head, messages },
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_fetch_reply(
        &mut self,
        from: A,
        request: u64,
        covered_to: u64,
        head: u64,
        messages: Vec<Stamped<A>>,
        ring: &Node<A>,
        now: Time,
    ) {
        let Some(f) = self.fetches.remove(&request) else {
            self.counters.dropped_unexpected += 1;
            return;
        };
        if f.user {
            let messages = messages
                .into_iter()
                .filter(|m| m.seq >= f.from_seq)
                .map(|m| HistoryMessage { seq: m.seq, from: m.from, body: m.body, ts_ms: m.ts_ms })
                .collect();
            self.events.push_back(GroupEvent::History { group: f.group, messages, covered_to, head });
            return;
        }
        let Some(g) = self.groups.get_mut(&f.mid) else {
            return;
        };
        g.fetching = None;
        g.behind_since = None;
        g.root_addr = Some(from);
        g.learn_head(Some(head));
        if !g.member {
            return;
        }
        if covered_to < f.from_seq {
            // Nothing released there yet: ask again a little later, not in a tight loop.
            g.fetch_after = now + self.config.rpc_timeout;
            return;
        }
        for m in messages {
            if m.seq >= f.from_seq && m.seq <= covered_to {
                self.member_receive(f.mid, m, true);
            }
        }
        // What the reply speaks for but does not hold is gone: report it, then move past it.
        loop {
            let g = self.groups.get_mut(&f.mid).expect("present");
            let Some(next) = g.next_seq else {
                break;
            };
            if next > covered_to {
                break;
            }
            let resume =
                g.buffer.range(next..).next().map_or(covered_to + 1, |(s, _)| (*s).min(covered_to + 1));
            let (from_gap, to_gap) = (next, resume - 1);
            self.counters.gaps += 1;
            self.counters.gap_messages += to_gap - from_gap + 1;
            self.events.push_back(GroupEvent::Gap { group: g.name.clone(), from: from_gap, to: to_gap });
            g.next_seq = Some(resume);
            self.drain(f.mid);
        }
        self.check_behind(f.mid, ring, now);
    }

    pub(super) fn tick_fetches(&mut self, ring: &Node<A>, now: Time) {
        let due: Vec<u64> = self.fetches.iter().filter(|(_, f)| f.deadline <= now).map(|(k, _)| *k).collect();
        for request in due {
            let f = &self.fetches[&request];
            if f.attempts >= self.config.fetch_attempts || !ring.is_member() {
                let f = self.fetches.remove(&request).expect("listed above");
                if f.user {
                    self.events.push_back(GroupEvent::HistoryFailed { group: f.group, from_seq: f.from_seq });
                } else if let Some(g) = self.groups.get_mut(&f.mid) {
                    g.fetching = None;
                }
            } else {
                self.send_fetch(request, ring, now);
            }
        }
    }
}
