//! The state of one iterative lookup, driven by the node one reply at a time.
//!
//! A lookup keeps two queues. `route` holds nodes known to precede the target, closest to it
//! first; asking one either yields nodes still closer, or a successor list that spans the target.
//! `owners` holds the nodes that follow the target in such a list, in ring order: asking the first
//! confirms it owns the target (target ∈ (its predecessor, it]), which proves it is alive and that no
//! member it knows of lies in between. A lookup therefore only ever answers with a node that
//! answered it. Dead or refusing nodes are skipped and the next candidate is asked; steps are
//! bounded by `max_lookup_hops`.
//!
//! With [`crate::Config::check_ownership_claims`] (off by default, see there), an ownership claim
//! ends a lookup only if it is consistent (issue 11): the target lies in the
//! claimed (predecessor, owner], and no member the lookup knows of — the asking node itself when
//! it is a member, and every node that answered on the path — lies in [target, owner), where it
//! would own the target first. Ids are SHA-1 of addresses, so a liar cannot choose where it sits:
//! a node reached as a routing step lies between the asker (or the path node that named it) and
//! the target, so its claim to own the target is always refuted. A refuted claim is dropped with
//! everything else that reply said, counted in `refuted`, and the lookup goes on with its other
//! candidates, as if that node had not answered. The range an answer lets the asker cache starts
//! no earlier than the closest member before the owner that the lookup saw (the path, the list
//! entry that named the owner), however wide the owner's claimed range
//! ([`Lookup::verified_start`]).
//!
//! A lookup also keeps its *path*: the nodes that answered it, in the order they answered, one per
//! hop, at most [`MAX_LOOKUP_PATH`] of them. Nodes that timed out or refused are not on it (they
//! count in `timeouts`), and neither is a step this node answered itself (not a hop either).

use std::collections::VecDeque;
use std::time::Duration;

use crate::address::NodeRef;
use crate::error::LookupError;
use crate::id::Id;
use crate::message::RequestId;
use crate::ring::is_ring_ordered;
use crate::time::Time;

/// Identifies a lookup started with [`crate::Node::lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LookupId(pub u64);

/// Most nodes a lookup's path lists ([`LookupOutcome::path`]). A lookup takes O(log N) hops (the
/// simulator measures at most 11, the owner's confirmation included, on rings of 1,600 and 10,000
/// nodes; see BENCHMARKS.md), and [`crate::Config::max_lookup_hops`] (32 by default) ends it well
/// before this; the cap only keeps an outcome small when a configuration allows more hops than
/// any sane ring needs.
pub const MAX_LOOKUP_PATH: usize = 64;

/// A finished lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupOutcome<A> {
    /// The target's successor, which confirmed it.
    pub owner: NodeRef<A>,
    /// The owner's successor list, nearest first, as the owner reported it.
    pub successors: Vec<NodeRef<A>>,
    /// Replies received on the way: each is one hop. Zero when this node owns the target.
    pub hops: u32,
    /// The nodes whose replies were those hops, in the order they answered: the first
    /// `min(hops, MAX_LOOKUP_PATH)` of them, no node twice. When `owner` is another node and the
    /// path is whole (`hops <= MAX_LOOKUP_PATH`), its last entry is `owner`, whose reply confirmed
    /// the answer; it is empty when this node owns the target.
    pub path: Vec<NodeRef<A>>,
    /// Requests that timed out or were refused on the way.
    pub timeouts: u32,
    /// Time from start to answer.
    pub latency: Duration,
}

impl<A: Clone> LookupOutcome<A> {
    /// The target's replica set of size up to `n`: the owner and its next `n − 1` successors.
    pub fn replica_set(&self, n: usize) -> Vec<NodeRef<A>> {
        std::iter::once(self.owner.clone()).chain(self.successors.iter().cloned()).take(n).collect()
    }
}

/// The owner a lookup found, the owner's successor list, and the owner's predecessor when the
/// owner itself vouched for the range (predecessor, owner].
pub(crate) type Answer<A> = (NodeRef<A>, Vec<NodeRef<A>>, Option<NodeRef<A>>);

/// Why a lookup runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Asked for by the driver; reported as an event.
    User(LookupId),
    /// Refreshing finger `i`.
    FixFinger(usize),
    /// Finding this node's own successor while joining.
    Join,
    /// Finding this node's own successor again after its whole successor list failed.
    Rejoin,
    /// Checking, through the ring, that this node's successor is right.
    CheckSuccessor,
    /// Finding where a node from another ring (a healed partition) belongs in this one.
    Merge,
}

/// What the lookup wants next.
#[derive(Debug)]
pub(crate) enum Next<A> {
    /// Ask this node; `as_owner` when it is believed to follow the target.
    Ask { node: NodeRef<A>, as_owner: bool },
    /// The lookup is over.
    Finish(Result<Answer<A>, LookupError>),
}

/// Most route candidates remembered; more would only be asked after the best ones all failed.
const MAX_ROUTE: usize = 16;

#[derive(Debug)]
pub(crate) struct Lookup<A> {
    pub(crate) target: Id,
    pub(crate) purpose: Purpose,
    pub(crate) started: Time,
    pub(crate) deadline: Time,
    pub(crate) hops: u32,
    /// The nodes that answered, one per hop, at most [`MAX_LOOKUP_PATH`].
    pub(crate) path: Vec<NodeRef<A>>,
    pub(crate) timeouts: u32,
    /// The request in flight: its id, whom it went to, and whether as an owner candidate.
    pub(crate) in_flight: Option<(RequestId, NodeRef<A>, bool)>,
    route: Vec<NodeRef<A>>,
    owners: VecDeque<NodeRef<A>>,
    /// A node after the target that answered but pointed back at a predecessor still closer to the
    /// target; it is the answer if that predecessor turns out dead.
    fallback_owner: Option<Answer<A>>,
    /// Nodes that failed, refused or were already asked in this lookup (a lookup contacts few).
    done_with: Vec<A>,
    /// A node that must not be the answer (the joining node itself).
    exclude: Option<A>,
    /// Ring positions of nodes known to be members besides those on the path (the asking node
    /// itself, when it is one): evidence against ownership claims.
    witnesses: Vec<Id>,
    /// The entry before the first owner candidate in the successor list that named it: a node
    /// that list vouches precedes the owner, bounding the range a claimed predecessor may widen.
    owner_from: Option<Id>,
    /// Ownership claims refuted by what this lookup knows (see [`Lookup::refutes`]).
    pub(crate) refuted: u32,
    /// Whether claims are checked ([`crate::Config::check_ownership_claims`]).
    pub(crate) check_claims: bool,
}

impl<A: Clone + Eq> Lookup<A> {
    pub(crate) fn new(
        target: Id,
        purpose: Purpose,
        now: Time,
        timeout: Duration,
        exclude: Option<A>,
    ) -> Self {
        Lookup {
            target,
            purpose,
            started: now,
            deadline: now + timeout,
            hops: 0,
            path: Vec::new(),
            timeouts: 0,
            in_flight: None,
            route: Vec::new(),
            owners: VecDeque::new(),
            fallback_owner: None,
            done_with: Vec::new(),
            exclude,
            witnesses: Vec::new(),
            owner_from: None,
            refuted: 0,
            check_claims: false,
        }
    }

    /// Records that a node at `id` is a ring member, so that claims it contradicts are refuted.
    pub(crate) fn add_witness(&mut self, id: Id) {
        if !self.witnesses.contains(&id) {
            self.witnesses.push(id);
        }
    }

    /// The members this lookup knows of: its witnesses and the nodes that answered it.
    fn known(&self) -> impl Iterator<Item = &Id> {
        self.witnesses.iter().chain(self.path.iter().map(|n| &n.id))
    }

    /// Whether `claimant`'s claim to own the target, with `predecessor` as the start of its range,
    /// cannot be true: the target lies outside the claimed (predecessor, claimant], or a member
    /// this lookup knows of lies in [target, claimant) and so would own the target before it.
    /// Ids are SHA-1 of addresses, so a liar cannot pick its position to dodge the check: a node
    /// reached as a routing step lies before the target, between the asking node (or the path
    /// node that named it) and the target, and that node refutes any claim it makes.
    pub(crate) fn refutes(&self, claimant: &NodeRef<A>, predecessor: Option<&NodeRef<A>>) -> bool {
        let outside = predecessor.is_some_and(|p| !self.target.in_open_closed(&p.id, &claimant.id));
        // [target, claimant) is empty when the claimant sits exactly at the target.
        let preceded = claimant.id != self.target
            && self.known().any(|y| *y == self.target || y.in_open(&self.target, &claimant.id));
        outside || preceded
    }

    /// The start of the range (start, owner] this lookup verified for `owner`, whose claimed
    /// predecessor is `claimed`: the member closest before `owner` among `claimed`, the witnesses,
    /// the path and the list entry that preceded the owner. Never wider than the claim, and no
    /// wider than what honest-looking nodes showed; the target stays inside it because a claim
    /// contradicted by a known member in [target, owner) was refused.
    pub(crate) fn verified_start(&self, owner: &Id, claimed: &Id) -> Id {
        let mut start = *claimed;
        for y in self.known().chain(self.owner_from.iter()) {
            if y.in_open(&start, owner) {
                start = *y;
            }
        }
        start
    }

    /// Whether this lookup is routed through others' tables toward this node's own id (join,
    /// rejoin, successor check): it must not answer with this node, which therefore witnesses
    /// nothing against the claims it meets.
    pub(crate) fn is_routed(&self) -> bool {
        self.exclude.is_some()
    }

    fn usable(&self, addr: &A) -> bool {
        self.exclude.as_ref() != Some(addr) && !self.done_with.contains(addr)
    }

    /// Adds nodes believed to precede the target, keeping the best `MAX_ROUTE`.
    pub(crate) fn add_route(&mut self, nodes: impl IntoIterator<Item = NodeRef<A>>) {
        for node in nodes {
            if !self.usable(&node.addr) || self.route.iter().any(|n| n.addr == node.addr) {
                continue;
            }
            let d = node.id.distance_to(&self.target);
            let at = self.route.partition_point(|n| n.id.distance_to(&self.target) < d);
            self.route.insert(at, node);
        }
        self.route.truncate(MAX_ROUTE);
    }

    /// Replaces the owner candidates with `list[k..]`, where the target lies in
    /// `(from, list[0]]` ∪ … and `list[k]` is the first entry at or past the target.
    /// Returns false (and changes nothing) if the target does not lie within the list.
    pub(crate) fn set_owners_from_list(&mut self, from: &Id, list: &[NodeRef<A>]) -> bool {
        let mut prev = *from;
        for (k, node) in list.iter().enumerate() {
            if self.target.in_open_closed(&prev, &node.id) {
                self.owners = list[k..].iter().cloned().collect();
                self.owner_from = Some(prev);
                return true;
            }
            prev = node.id;
        }
        false
    }

    /// Counts a reply from another node as one hop, and puts it on the path. (A step this node
    /// answers itself is handled by [`Lookup::on_reply`] alone.)
    pub(crate) fn count_hop(&mut self, from: &NodeRef<A>) {
        self.hops += 1;
        if self.path.len() < MAX_LOOKUP_PATH {
            self.path.push(from.clone());
        }
    }

    /// Handles a routing reply from `from` (after [`Lookup::count_hop`] when `from` is another
    /// node). Returns how many entries were dropped as impossible.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_reply(
        &mut self,
        from: NodeRef<A>,
        as_owner: bool,
        owner: bool,
        predecessor: Option<NodeRef<A>>,
        successors: Vec<NodeRef<A>>,
        closer: Vec<NodeRef<A>>,
    ) -> (Option<Answer<A>>, usize) {
        self.done_with.push(from.addr.clone());
        let mut dropped = 0;
        let successors = if is_ring_ordered(&from.id, &successors) {
            successors
        } else {
            dropped += successors.len();
            Vec::new()
        };
        if owner && self.exclude.as_ref() != Some(&from.addr) {
            if self.check_claims && self.refutes(&from, predecessor.as_ref()) {
                // A false claim: nothing else `from` said can be trusted either. Go on with the
                // other candidates, as if it had not answered.
                self.refuted += 1;
                return (None, dropped);
            }
            return (Some((from, successors, predecessor)), dropped);
        }
        if as_owner {
            // `from` follows the target but is not its owner: its predecessor lies in
            // [target, from) and is the next owner candidate, unless it already failed us.
            if let Some(pred) = predecessor.filter(|p| {
                (p.id == self.target || p.id.in_open(&self.target, &from.id)) && self.usable(&p.addr)
            }) {
                // Candidates after `from` can never be the answer now that `from` has answered.
                self.fallback_owner = Some((from, successors, None));
                self.owners.clear();
                self.owners.push_back(pred);
                return (None, dropped);
            }
            if self.exclude.as_ref() != Some(&from.addr) {
                return (Some((from, successors, None)), dropped);
            }
        }
        if !self.set_owners_from_list(&from.id, &successors) {
            let before = closer.len();
            let valid: Vec<_> = closer.into_iter().filter(|n| n.id.in_open(&from.id, &self.target)).collect();
            dropped += before - valid.len();
            self.add_route(valid);
        }
        (None, dropped)
    }

    /// Records that `node` did not answer (or refused).
    pub(crate) fn on_failure(&mut self, node: &A, timed_out: bool) {
        if timed_out {
            self.timeouts += 1;
        }
        self.done_with.push(node.clone());
    }

    /// Decides the next step.
    pub(crate) fn next(&mut self, max_hops: u32) -> Next<A> {
        if self.hops >= max_hops {
            return Next::Finish(Err(LookupError::TooManyHops { hops: self.hops }));
        }
        while let Some(node) = self.owners.pop_front() {
            if self.usable(&node.addr) {
                return Next::Ask { node, as_owner: true };
            }
        }
        if let Some(fallback) = self.fallback_owner.take() {
            return Next::Finish(Ok(fallback));
        }
        while !self.route.is_empty() {
            let node = self.route.remove(0);
            if self.usable(&node.addr) {
                return Next::Ask { node, as_owner: false };
            }
        }
        Next::Finish(Err(LookupError::NoRoute { hops: self.hops, timeouts: self.timeouts }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u64) -> NodeRef<u64> {
        NodeRef { id: Id::hash(&i.to_be_bytes()), addr: i }
    }

    /// The first node among 1, 2, … whose id passes `keep`.
    fn find(keep: impl Fn(&Id) -> bool) -> NodeRef<u64> {
        (1..10_000).map(node).find(|n| keep(&n.id)).expect("one in 10,000 ids passes")
    }

    /// An asking node `me`, a target half the ring away, an honest node and a liar between them
    /// (the liar closer to the target), and the target's true owner after it.
    struct Ring {
        me: NodeRef<u64>,
        target: Id,
        liar: NodeRef<u64>,
        honest: NodeRef<u64>,
        owner: NodeRef<u64>,
    }

    fn ring() -> Ring {
        let me = node(0);
        let target = me.id.finger_start(159);
        let honest = find(|id| id.in_open(&me.id, &target));
        let liar = find(|id| id.in_open(&honest.id, &target));
        let owner = find(|id| id.in_open(&target, &me.id));
        Ring { me, target, liar, honest, owner }
    }

    fn user_lookup(ring: &Ring) -> Lookup<u64> {
        let mut lookup =
            Lookup::new(ring.target, Purpose::User(LookupId(1)), Time::ZERO, Duration::from_secs(5), None);
        lookup.add_witness(ring.me.id);
        lookup.check_claims = true;
        lookup
    }

    #[test]
    fn a_liar_on_the_path_claiming_the_target_is_refuted_and_the_lookup_goes_on() {
        let Ring { me, target, liar, honest, owner } = ring();
        let mut lookup = user_lookup(&ring());
        lookup.add_route([liar.clone(), honest.clone()]);
        // The liar is the best route candidate (closest before the target)…
        let first = match lookup.next(32) {
            Next::Ask { node, as_owner: false } => node,
            other => panic!("expected a routing step, got {other:?}"),
        };
        assert_eq!(first, liar.clone());
        // …and claims the target, with a predecessor that makes its range span the whole ring but
        // one gap, and other liars as the replica set. The asker itself lies in [target, liar).
        lookup.count_hop(&liar);
        let (answer, _) =
            lookup.on_reply(liar.clone(), false, true, Some(owner.clone()), vec![node(77_777)], Vec::new());
        assert!(answer.is_none(), "the liar's claim was believed");
        assert_eq!(lookup.refuted, 1);
        assert!(lookup.refutes(&liar, Some(&owner)));
        // The lookup goes on through the next candidate, which names the true owner.
        match lookup.next(32) {
            Next::Ask { node, as_owner: false } => assert_eq!(node, honest),
            other => panic!("expected the honest node next, got {other:?}"),
        }
        lookup.count_hop(&honest);
        let (answer, _) =
            lookup.on_reply(honest.clone(), false, false, Some(me.clone()), vec![owner.clone()], Vec::new());
        assert!(answer.is_none());
        match lookup.next(32) {
            Next::Ask { node, as_owner: true } => assert_eq!(node, owner),
            other => panic!("expected the owner next, got {other:?}"),
        }
        lookup.count_hop(&owner);
        let (answer, _) =
            lookup.on_reply(owner.clone(), true, true, Some(honest.clone()), Vec::new(), Vec::new());
        let (found, _, _) = answer.expect("the true owner's claim holds");
        assert_eq!(found, owner);
        assert!(target.in_open_closed(&honest.id, &owner.id));
    }

    #[test]
    fn a_claim_is_refuted_when_the_target_lies_outside_its_range_or_a_known_member_precedes_it() {
        let Ring { me, target, liar, honest, owner } = ring();
        let mut lookup = user_lookup(&ring());
        // The true owner, with its true predecessor, is believed.
        assert!(!lookup.refutes(&owner, Some(&honest)));
        // A range that does not hold the target is refused.
        assert!(lookup.refutes(&owner, Some(&find(|id| id.in_open(&target, &owner.id)))));
        // A node past the true owner is refused once the owner answered on the path.
        let beyond = find(|id| id.in_open(&owner.id, &me.id));
        assert!(!lookup.refutes(&beyond, None));
        lookup.count_hop(&owner);
        assert!(lookup.refutes(&beyond, None));
        // Any node before the target is refused: the asker lies in [target, it).
        assert!(lookup.refutes(&liar, None));
        // A node sitting exactly at the target owns it whatever else is known.
        let mut exact =
            Lookup::new(owner.id, Purpose::User(LookupId(2)), Time::ZERO, Duration::from_secs(5), None);
        exact.add_witness(me.id);
        exact.count_hop(&honest);
        assert!(!exact.refutes(&owner, Some(&honest)));
    }

    #[test]
    fn the_cached_range_is_no_wider_than_the_list_that_named_the_owner() {
        let Ring { me, target, honest, owner, .. } = ring();
        let mut lookup = user_lookup(&ring());
        assert!(lookup.set_owners_from_list(&honest.id, std::slice::from_ref(&owner)));
        // A lying owner claims a predecessor just after itself: (claimed, owner] is nearly the
        // whole ring. What was verified is (honest, owner], honest's list having named the owner.
        let claimed = find(|id| id.in_open(&owner.id, &me.id));
        assert_eq!(lookup.verified_start(&owner.id, &claimed.id), honest.id);
        // A claim narrower than what was verified is kept as it is.
        let close = find(|id| id.in_open(&honest.id, &target));
        assert_eq!(lookup.verified_start(&owner.id, &close.id), close.id);
    }

    #[test]
    fn the_path_keeps_the_first_hops_up_to_its_cap_and_counts_them_all() {
        let mut lookup =
            Lookup::new(Id::hash(b"key"), Purpose::Join, Time::ZERO, Duration::from_secs(1), None);
        let extra = 5;
        for i in 0..(MAX_LOOKUP_PATH as u64 + extra) {
            lookup.count_hop(&node(i));
        }
        assert_eq!(lookup.hops, MAX_LOOKUP_PATH as u32 + extra as u32);
        assert_eq!(lookup.path.len(), MAX_LOOKUP_PATH);
        assert_eq!(lookup.path, (0..MAX_LOOKUP_PATH as u64).map(node).collect::<Vec<_>>());
    }
}
