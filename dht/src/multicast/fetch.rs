//! Fetching from the root's history: gap detection at a member, fetches of missing ranges and
//! history requests for the application, serving them at the root, and their replies, deadlines
//! and retries.
//!
//! Owns the fetches in flight with their request ids ([`Fetches`]) and, per group, the state of
//! a member's gap filling ([`GapFill`]). Invariants: a member has at most one gap fill in flight
//! per group; a fetch is sent at most `fetch_attempts` times, each with a deadline, and ends
//! exactly once (answered, or failed); a reply is taken only if its request id, group and sender
//! match a fetch in flight (see [`Fetches::answered_by`]) and it covers no more than was asked,
//! else it is dropped and counted; a range
//! the root no longer holds is reported as a gap, never skipped silently, and a gap is reported
//! only for numbers from the first one asked for up to what the reply covers (a member that a
//! reply made rewind below that fetches the numbers before it instead); a root answers only
//! from what it has released.

use std::collections::BTreeMap;

use tracing::debug;

use super::{
    GroupEvent, GroupMessage, GroupName, HistoryMessage, HistoryRequestId, MAX_ROUTE_HOPS, Multicast, Stamped,
};
use crate::address::{Address, NodeRef};
use crate::id::Id;
use crate::node::Node;
use crate::time::Time;

/// A fetch waiting for the root's reply.
#[derive(Clone, Debug)]
pub(super) struct PendingFetch<A> {
    pub(super) mid: Id,
    pub(super) group: GroupName,
    pub(super) from_seq: u64,
    pub(super) to_seq: u64,
    /// Where the next attempt goes: the root, if known; `None` to route toward `mid`.
    pub(super) target: Option<A>,
    /// The node an attempt was sent to directly, if any: its reply is accepted wherever it lies
    /// on the ring (this node chose to trust it as the root).
    pub(super) asked: Option<A>,
    pub(super) deadline: Time,
    pub(super) attempts: u32,
    /// A history request of the application (else a member's gap fill).
    pub(super) user: bool,
}

/// The fetches this node has in flight, by request id.
#[derive(Debug)]
pub(super) struct Fetches<A> {
    pending: BTreeMap<u64, PendingFetch<A>>,
    next_id: u64,
}

impl<A: Address> Fetches<A> {
    pub(super) fn new() -> Self {
        Fetches { pending: BTreeMap::new(), next_id: 0 }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Forgets every fetch (this node is leaving).
    pub(super) fn clear(&mut self) {
        self.pending.clear();
    }

    /// Records a new fetch and returns its request id.
    pub(super) fn start(&mut self, fetch: PendingFetch<A>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, fetch);
        id
    }

    /// Removes and returns fetch `id` (answered, or given up).
    fn take(&mut self, id: u64) -> Option<PendingFetch<A>> {
        self.pending.remove(&id)
    }

    /// Forgets fetch `id`: its reply, if any comes, is dropped as unexpected.
    pub(super) fn forget(&mut self, id: u64) {
        self.pending.remove(&id);
    }

    /// Whether fetch `id` was sent `max` times already.
    fn exhausted(&self, id: u64, max: u32) -> bool {
        self.pending.get(&id).is_some_and(|f| f.attempts >= max)
    }

    /// Whether `from` may answer fetch `id` for group `mid`. Request ids are guessable and seen
    /// by every hop a fetch is routed through, so a reply is matched by id, group and sender:
    /// the sender must be the node the fetch was sent to, or — since a node that is no longer the
    /// root forwards a fetch toward `mid`, and a routed fetch reaches a root not known here — a
    /// node that may be the root of `mid` as far as this node, at `me`, can tell
    /// ([`may_be_root`]).
    fn answered_by(&self, id: u64, mid: &Id, from: &A, me: &Id) -> bool {
        self.pending.get(&id).is_some_and(|f| {
            f.mid == *mid && (f.asked.as_ref() == Some(from) || may_be_root(me, mid, &from.node_id()))
        })
    }

    /// The last number fetch `id` asked for: no reply to it may speak for more.
    fn asked_up_to(&self, id: u64) -> Option<u64> {
        self.pending.get(&id).map(|f| f.to_seq)
    }

    /// Counts one more attempt of fetch `id` and sets its deadline; returns it as it is to be
    /// sent. An attempt with a target other than `me` goes there directly, and is recorded as
    /// asked of it.
    fn attempt(
        &mut self,
        id: u64,
        me: &A,
        now: Time,
        timeout: std::time::Duration,
    ) -> Option<&PendingFetch<A>> {
        let f = self.pending.get_mut(&id)?;
        f.attempts += 1;
        f.deadline = now + timeout;
        if f.attempts > 2 {
            // The root we knew may be gone: let routing find the current one.
            f.target = None;
        }
        if let Some(to) = f.target.as_ref().filter(|to| *to != me) {
            f.asked = Some(to.clone());
        }
        Some(f)
    }

    /// The fetches whose next attempt was to go to `peer`, now to be routed instead.
    fn reroute_from(&mut self, peer: &A) -> Vec<u64> {
        let mut ids = Vec::new();
        for (id, f) in self.pending.iter_mut().filter(|(_, f)| f.target.as_ref() == Some(peer)) {
            f.target = None;
            ids.push(*id);
        }
        ids
    }

    /// The fetches whose deadline has passed.
    fn due(&self, now: Time) -> Vec<u64> {
        self.pending.iter().filter(|(_, f)| f.deadline <= now).map(|(k, _)| *k).collect()
    }
}

/// A member's gap filling in one group.
#[derive(Clone, Debug)]
pub(super) struct GapFill {
    /// The gap fill in flight, if any.
    fetching: Option<u64>,
    /// No gap fill starts before then (the root had nothing more released).
    fetch_after: Time,
    /// Since when the member has known of a number it lacks.
    behind_since: Option<Time>,
}

impl GapFill {
    pub(super) fn new(now: Time) -> Self {
        GapFill { fetching: None, fetch_after: now, behind_since: None }
    }

    /// Starts over (the member rewound to a fork point): returns the gap fill in flight, which
    /// asked for the old lineage, for the caller to forget.
    pub(super) fn restart(&mut self) -> Option<u64> {
        self.behind_since = None;
        self.fetching.take()
    }
}

impl<A: Address> Multicast<A> {
    /// Starts a gap fill if a member is missing numbers it knows exist.
    pub(super) fn check_behind(&mut self, mid: Id, ring: &Node<A>, now: Time) {
        let Some(g) = self.groups.get(&mid) else {
            return;
        };
        if !g.member || g.gap.fetching.is_some() || g.gap.fetch_after > now {
            return;
        }
        let Some(next) = g.delivery.next_seq() else {
            return;
        };
        let upto = match g.delivery.first_buffered() {
            Some(first) => first - 1,
            None => g.advertised(&self.me.addr).1.or(g.head).unwrap_or(0),
        };
        if upto < next {
            self.groups.get_mut(&mid).expect("present").gap.behind_since = None;
            return;
        }
        let since = *self.groups.get_mut(&mid).expect("present").gap.behind_since.get_or_insert(now);
        if now.saturating_since(since) < self.config.fetch_delay {
            return;
        }
        let g = &self.groups[&mid];
        let request = self.fetches.start(PendingFetch {
            mid,
            group: g.name.clone(),
            from_seq: next,
            to_seq: upto,
            target: g.root_addr.clone(),
            asked: None,
            deadline: now,
            attempts: 0,
            user: false,
        });
        self.groups.get_mut(&mid).expect("present").gap.fetching = Some(request);
        self.send_fetch(request, ring, now);
    }

    pub(super) fn send_fetch(&mut self, request: u64, ring: &Node<A>, now: Time) {
        let Some(f) = self.fetches.attempt(request, &self.me.addr, now, self.config.rpc_timeout * 2) else {
            return;
        };
        let (mid, group, from_seq, to_seq, target) =
            (f.mid, f.group.clone(), f.from_seq, f.to_seq, f.target.clone());
        self.counters.fetches_sent += 1;
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
        let Some(f) = self.fetches.take(request) else {
            self.counters.dropped_unexpected += 1;
            return;
        };
        if f.user {
            let messages = messages
                .into_iter()
                .filter(|m| m.seq >= f.from_seq)
                .map(|m| HistoryMessage {
                    epoch: m.epoch,
                    seq: m.seq,
                    from: m.from,
                    body: m.body,
                    ts_ms: m.ts_ms,
                })
                .collect();
            let request = HistoryRequestId(request);
            self.events.push_back(GroupEvent::History {
                request,
                group: f.group,
                messages,
                covered_to,
                head,
            });
            return;
        }
        let Some(g) = self.groups.get_mut(&f.mid) else {
            return;
        };
        g.gap.fetching = None;
        g.gap.behind_since = None;
        g.root_addr = Some(from);
        g.learn_head(Some(head));
        if !g.member {
            return;
        }
        if covered_to < f.from_seq {
            // Nothing released there yet: ask again a little later, not in a tight loop.
            g.gap.fetch_after = now + self.config.rpc_timeout;
            return;
        }
        // A message of a newer epoch on another lineage makes the member rewind to the fork
        // point, which voids what it buffered: the messages of this page before it (the same
        // root's lineage) are taken again after the last rewind.
        let page: Vec<Stamped<A>> =
            messages.into_iter().filter(|m| m.seq >= f.from_seq && m.seq <= covered_to).collect();
        let mut last_rewind = None;
        for (i, m) in page.iter().enumerate() {
            let rewinds = self.counters.rewinds;
            self.member_receive(f.mid, m.clone(), true);
            if self.counters.rewinds != rewinds {
                last_rewind = Some(i);
            }
        }
        if let Some(last) = last_rewind {
            for m in &page[..last] {
                self.member_receive(f.mid, m.clone(), true);
            }
        }
        // What the reply speaks for but does not hold is gone: report it, then move past it. A
        // member that rewound below the range asked for fetches the numbers before it first.
        loop {
            let g = self.groups.get_mut(&f.mid).expect("present");
            if g.delivery.next_seq().is_some_and(|next| next < f.from_seq) {
                break;
            }
            let Some((from_gap, to_gap)) = g.delivery.skip_gap(covered_to) else {
                break;
            };
            self.counters.gaps += 1;
            self.counters.gap_messages += to_gap - from_gap + 1;
            self.events.push_back(GroupEvent::Gap { group: g.name.clone(), from: from_gap, to: to_gap });
            self.drain(f.mid);
        }
        self.check_behind(f.mid, ring, now);
    }

    pub(super) fn tick_fetches(&mut self, ring: &Node<A>, now: Time) {
        for request in self.fetches.due(now) {
            if self.fetches.exhausted(request, self.config.fetch_attempts) || !ring.is_member() {
                let f = self.fetches.take(request).expect("listed as due above");
                if f.user {
                    self.events.push_back(GroupEvent::HistoryFailed {
                        request: HistoryRequestId(request),
                        group: f.group,
                        from_seq: f.from_seq,
                    });
                } else if let Some(g) = self.groups.get_mut(&f.mid) {
                    g.gap.fetching = None;
                }
            } else {
                self.send_fetch(request, ring, now);
            }
        }
    }

    /// Takes in a fetch reply from the network, unless it answers nothing in flight (an unknown
    /// request id, a request of another group, or a sender that may not answer it) or covers more
    /// than the fetch asked for. Those are dropped and counted.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_fetch_reply_from(
        &mut self,
        mid: Id,
        from: A,
        request: u64,
        covered_to: u64,
        head: u64,
        messages: Vec<Stamped<A>>,
        ring: &Node<A>,
        now: Time,
    ) {
        if !self.fetches.answered_by(request, &mid, &from, &self.me.id) {
            self.counters.dropped_unexpected += 1;
            debug!(peer = ?from, request, "dropped a fetch reply that matches no fetch in flight");
            return;
        }
        if self.fetches.asked_up_to(request).is_some_and(|to_seq| covered_to > to_seq) {
            // A range past what was asked would have a member report numbers that may not even
            // exist as lost and skip past them for good. The fetch stays in flight: the genuine
            // answer may still come.
            self.counters.dropped_invalid += 1;
            debug!(peer = ?from, request, covered_to, "dropped a fetch reply covering more than asked");
            return;
        }
        self.on_fetch_reply(from, request, covered_to, head, messages, ring, now);
    }

    /// Fetches whose next attempt was to go to `peer` (it is unreachable) go by routing, now.
    pub(super) fn reroute_fetches(&mut self, peer: &A, ring: &Node<A>, now: Time) {
        for request in self.fetches.reroute_from(peer) {
            self.send_fetch(request, ring, now);
        }
    }
}

/// Whether `node` may be the root of `mid` as far as this node, at `me`, can tell: the root is
/// the first node at or after `mid`, so it lies in `[mid, me)`; a node in `(me, mid)` — every hop
/// of a route from here toward `mid`, which saw the fetch's request id — is not. The ring view is
/// not consulted: right after a root crashes, successor lists still name it for several
/// stabilization rounds, and the new root's replies would be refused.
pub(super) fn may_be_root(me: &Id, mid: &Id, node: &Id) -> bool {
    node == mid || (me != mid && node.in_open(mid, me))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::multicast::MAX_SEQ;
    use crate::multicast::epoch;
    use crate::multicast::testing::ring;
    use crate::sim::{SimAddr, Simulation};

    fn id(n: u64) -> Id {
        Id::from_hex(&format!("{n:040x}")).expect("40 hex digits")
    }

    #[test]
    fn a_root_lies_between_mid_and_the_asker_never_on_the_route_from_it() {
        let (mid, me) = (id(100), id(500));
        assert!(may_be_root(&me, &mid, &id(100)), "a node at mid owns it");
        assert!(may_be_root(&me, &mid, &id(101)));
        assert!(may_be_root(&me, &mid, &id(499)));
        // From the asker on toward mid: the hops of its route.
        assert!(!may_be_root(&me, &mid, &id(500)));
        assert!(!may_be_root(&me, &mid, &id(501)));
        assert!(!may_be_root(&me, &mid, &id(99)));
        // Across the wrap: mid near the top of the ring, the asker past zero.
        let (mid, me) = (id(u64::MAX), id(7));
        assert!(may_be_root(&me, &mid, &id(3)));
        assert!(!may_be_root(&me, &mid, &id(8)));
        assert!(!may_be_root(&me, &mid, &id(u64::MAX - 1)));
    }

    #[test]
    fn fetch_replies_from_the_wrong_sender_or_with_an_unknown_id_are_dropped() {
        let mut sim = ring(30, 7);
        let g = GroupName::new("matched").expect("valid");
        let root = sim.true_successor(&g.id()).expect("members") as usize;
        // Nodes in ring order from the root on; the asker sits well after it, so that there are
        // nodes between the asker and mid: the hops of its route toward mid.
        let mut order: Vec<usize> = (0..sim.node_count()).collect();
        let root_id = sim.node(root).me().id;
        order.sort_by_key(|&i| root_id.distance_to(&sim.node(i).me().id));
        assert_eq!(order[0], root);
        let (asker, hop) = (order[10], order[20]);
        let members = [order[3], order[5]];
        for &m in &members {
            sim.join_group(m, &g).expect("ring member");
        }
        sim.run_until(sim.now() + Duration::from_secs(3));
        for k in 0..3u8 {
            sim.publish(members[0], &g, vec![k]).expect("accepted");
            sim.run_until(sim.now() + Duration::from_millis(200));
        }
        sim.run_until(sim.now() + Duration::from_secs(2));
        sim.take_group_events();

        let asked = sim.request_history(asker, &g, 1);
        let before = sim.multicast(asker).expect("enabled").counters().clone();
        // The real reply is still on its way: these arrive first.
        let forged = |request: u64| GroupMessage::FetchReply {
            group: g.clone(),
            request,
            covered_to: 3,
            head: 3,
            messages: Vec::new(),
        };
        // The right id, from a node on the route (it saw the id) and not where a root can be.
        let hop_addr = sim.addr(hop);
        sim.inject_group_message(asker, hop_addr, forged(asked.0));
        // The right sender, an id nobody asked for.
        let root_addr = sim.addr(root);
        sim.inject_group_message(asker, root_addr, forged(asked.0 + 1000));
        let after = sim.multicast(asker).expect("enabled").counters().clone();
        assert_eq!(after.dropped_unexpected - before.dropped_unexpected, 2);
        assert!(sim.take_group_events().iter().all(|r| r.node != asker), "nothing answered yet");

        // The root's own reply still matches the request.
        sim.run_until(sim.now() + Duration::from_secs(3));
        let answer = sim
            .take_group_events()
            .into_iter()
            .find_map(|r| match r.event {
                GroupEvent::History { request, messages, covered_to, .. } if r.node == asker => {
                    Some((request, messages.iter().map(|m| m.seq).collect::<Vec<_>>(), covered_to))
                }
                _ => None,
            })
            .expect("the root's answer");
        assert_eq!(answer, (asked, vec![1, 2, 3], 3));
    }

    /// What `member` knows of group `g`.
    fn summary(sim: &Simulation, member: usize, g: &GroupName) -> crate::multicast::GroupSummary<SimAddr> {
        sim.multicast(member).expect("enabled").groups().into_iter().find(|s| s.name == *g).expect("joined")
    }

    /// A ring of 30 nodes (`seed`) with a member of group `name` (not its root) attached to the
    /// tree and delivered the root's first two messages: the simulation, the group, the root, the
    /// member and the epoch the member follows.
    fn member_with_two_delivered(seed: u64, name: &str) -> (Simulation, GroupName, usize, usize, u64) {
        let mut sim = ring(30, seed);
        let g = GroupName::new(name).expect("valid");
        let root = sim.true_successor(&g.id()).expect("members") as usize;
        let member = (0..sim.node_count()).find(|&i| i != root).expect("30 nodes");
        sim.join_group(member, &g).expect("ring member");
        let deadline = sim.now() + Duration::from_secs(30);
        while summary(&sim, member, &g).depth.is_none() {
            assert!(sim.now() < deadline, "the member did not attach");
            sim.run_until(sim.now() + Duration::from_millis(500));
        }
        for k in 0..2u8 {
            sim.publish(root, &g, vec![k]).expect("accepted");
            sim.run_until(sim.now() + Duration::from_millis(300));
        }
        sim.run_until(sim.now() + Duration::from_secs(2));
        let epoch = sim
            .take_group_events()
            .into_iter()
            .find_map(|r| match r.event {
                GroupEvent::Delivered { epoch, .. } if r.node == member => Some(epoch),
                _ => None,
            })
            .expect("delivered");
        assert_eq!(summary(&sim, member, &g).next_seq, Some(3), "delivered 1 and 2");
        (sim, g, root, member, epoch)
    }

    #[test]
    fn a_fetch_reply_covering_more_than_the_gap_asked_for_is_dropped() {
        let (mut sim, g, root, member, epoch) = member_with_two_delivered(11, "bounded");
        let summary = |sim: &Simulation| summary(sim, member, &g);
        // The early message below is of the epoch the member follows, as a genuine one would be.

        // Number 5 arrives early from the parent: the member fetches 3..=4 from the root.
        let parent = summary(&sim).parent.expect("attached").addr;
        let early = Stamped {
            seq: 5,
            from: "n0".into(),
            body: vec![5],
            ts_ms: 0,
            origin: sim.addr(root),
            publish_id: 1000,
            epoch,
            parent: 0,
            base: 0,
        };
        let data = GroupMessage::Data { group: g.clone(), root: sim.addr(root), message: early };
        sim.inject_group_message(member, parent, data);
        let deadline = sim.now() + Duration::from_secs(5);
        let request = loop {
            let fetches = &sim.multicast(member).expect("enabled").fetches.pending;
            if let Some((id, f)) = fetches.iter().next() {
                assert_eq!((f.from_seq, f.to_seq), (3, 4));
                break *id;
            }
            assert!(sim.now() < deadline, "no gap fill started");
            sim.run_until(sim.now() + Duration::from_millis(1));
        };

        // The root's address, the right id, a range to the end of all numbers.
        let before = sim.multicast(member).expect("enabled").counters().clone();
        let forged = GroupMessage::FetchReply {
            group: g.clone(),
            request,
            covered_to: MAX_SEQ,
            head: MAX_SEQ,
            messages: Vec::new(),
        };
        let root_addr = sim.addr(root);
        sim.inject_group_message(member, root_addr, forged);
        let after = sim.multicast(member).expect("enabled").counters().clone();
        assert_eq!(after.dropped_invalid - before.dropped_invalid, 1);
        assert_eq!(after.gaps, before.gaps, "nothing reported lost");
        assert_eq!(summary(&sim).next_seq, Some(3), "the member did not skip ahead");
        let events = sim.take_group_events();
        assert!(events.iter().all(|r| r.node != member), "nothing delivered or lost: {events:?}");
    }

    #[test]
    fn a_fetch_reply_that_forks_midway_keeps_the_messages_before_the_fork_and_reports_no_gap() {
        // A root's history after a meet: its own lineage, then a renumbering epoch whose fork
        // point lies before what the member asked for. The member rewinds there; the messages of
        // the page before the renumbered one are still the root's and must not be reported lost.
        let (mut sim, g, root, member, epoch) = member_with_two_delivered(5, "forked");
        let summary = |sim: &Simulation| summary(sim, member, &g);

        // Number 5 arrives early from the parent: the member fetches 3..=4.
        let root_addr = sim.addr(root);
        let stamped = move |seq: u64, epoch: u64, parent: u64| Stamped {
            seq,
            from: "n0".into(),
            body: vec![seq as u8 + 100],
            ts_ms: 0,
            origin: root_addr,
            publish_id: 1000 + seq,
            epoch,
            parent,
            base: 0,
        };
        let parent = summary(&sim).parent.expect("attached").addr;
        let data = GroupMessage::Data { group: g.clone(), root: root_addr, message: stamped(5, epoch, 0) };
        sim.inject_group_message(member, parent, data);
        let deadline = sim.now() + Duration::from_secs(5);
        let request = loop {
            if let Some((id, f)) = sim.multicast(member).expect("enabled").fetches.pending.iter().next() {
                assert_eq!((f.from_seq, f.to_seq), (3, 4));
                break *id;
            }
            assert!(sim.now() < deadline, "no gap fill started");
            sim.run_until(sim.now() + Duration::from_millis(1));
        };

        // The reply: 3 of the epoch the member follows, then 4 of a renumbering epoch (higher
        // counter, another lineage, fork point 0): the member goes back to 1.
        let renumbering = epoch::next(epoch::counter(epoch), u64::MAX);
        let reply = GroupMessage::FetchReply {
            group: g.clone(),
            request,
            covered_to: 4,
            head: 4,
            messages: vec![stamped(3, epoch, 0), stamped(4, renumbering, renumbering - 1)],
        };
        sim.inject_group_message(member, root_addr, reply);
        sim.run_until(sim.now() + Duration::from_secs(10));

        let events: Vec<GroupEvent> =
            sim.take_group_events().into_iter().filter(|r| r.node == member).map(|r| r.event).collect();
        let gaps: Vec<&GroupEvent> = events.iter().filter(|e| matches!(e, GroupEvent::Gap { .. })).collect();
        assert!(gaps.is_empty(), "the root held every number asked for: {gaps:?}");
        let bodies: Vec<Vec<u8>> = events
            .iter()
            .filter_map(|e| match e {
                GroupEvent::Delivered { body, .. } => Some(body.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(bodies, vec![vec![103], vec![104]], "1 and 2 once only, then 3 and 4");
    }
}
