//! Protocol tests of single `Node<SimAddr>`s and small hand-driven groups of them.
//!
//! A tiny harness owns the nodes, a FIFO of messages in flight (delivered with zero latency) and a
//! manual clock; it calls `handle_timeout` whenever a node's `poll_timeout` is due. Addresses that
//! belong to no node in the harness swallow whatever is sent to them.

use std::collections::VecDeque;
use std::time::Duration;

use dht::sim::SimAddr;
use dht::{
    Address, Config, Counters, Event, Id, JoinError, LookupError, LookupOutcome, Message, Node, NodeRef,
    Request, RequestId, Response, Time, Transmit,
};
use proptest::prelude::*;

type Msg = Message<SimAddr>;

/// A node that is in no harness: whatever it is sent is lost.
const STRANGER: SimAddr = SimAddr(9_999);

/// Upper bound on harness steps, so that a node that asks to be woken at the same instant forever
/// fails the test instead of hanging it.
const MAX_STEPS: usize = 1_000_000;

#[derive(Debug)]
struct Net {
    nodes: Vec<Node<SimAddr>>,
    now: Time,
    /// (to, from, message)
    in_flight: VecDeque<(SimAddr, SimAddr, Msg)>,
    events: Vec<Vec<Event<SimAddr>>>,
    /// Requests sent by this address are parked in `held` instead of being delivered.
    hold_from: Option<SimAddr>,
    /// (to, id, body) of parked requests.
    held: Vec<(SimAddr, RequestId, Request<SimAddr>)>,
    /// When set, every delivered message is appended here as (to, from, message).
    trace: Option<Vec<(SimAddr, SimAddr, Msg)>>,
}

fn addr(i: usize) -> SimAddr {
    SimAddr(i as u64 + 1)
}

/// Whether `response` is the kind a ring member gives to `request`.
fn answers(request: &Request<SimAddr>, response: &Response<SimAddr>) -> bool {
    matches!(
        (request, response),
        (Request::GetNeighbours { .. }, Response::Neighbours { .. })
            | (
                Request::Notify
                    | Request::Ping
                    | Request::Leaving { .. }
                    | Request::Merge { .. }
                    | Request::SuccessorsChanged { .. },
                Response::Ack
            )
            | (Request::FindSuccessor { .. }, Response::Route { .. })
    )
}

/// Hands `message` from `from` to `node` and checks what it transmits in direct reply: exactly one
/// response of the right kind, with the request's id, to the sender, for every valid request from
/// another address; no response to anything else; and nothing sent to itself or invalid. Returns
/// everything it transmitted.
fn deliver_checked(
    node: &mut Node<SimAddr>,
    from: SimAddr,
    message: Msg,
    now: Time,
) -> Vec<Transmit<SimAddr>> {
    assert_eq!(node.poll_transmit(), None, "drain the node before feeding it");
    let me = node.me().addr;
    let expect = match &message {
        Message::Request { id, body } if from != me && message.validate().is_ok() => {
            Some((*id, body.clone()))
        }
        _ => None,
    };
    let member = node.is_member();
    node.handle_message(from, message, now);
    let out: Vec<Transmit<SimAddr>> = std::iter::from_fn(|| node.poll_transmit()).collect();
    let responses: Vec<&Transmit<SimAddr>> =
        out.iter().filter(|t| matches!(t.message, Message::Response { .. })).collect();
    match expect {
        Some((id, request)) => {
            assert_eq!(responses.len(), 1, "one response to {request:?}, got {out:?}");
            let Transmit { to, message: Message::Response { id: rid, body } } = responses[0] else {
                unreachable!("filtered to responses");
            };
            assert_eq!((*to, *rid), (from, id), "the response goes back to the asker with its id");
            if member || matches!(request, Request::Ping) && body != &Response::Refused {
                // A non-member answers Ping with Ack, unless it is leaving or has left (Refused).
                assert!(answers(&request, body), "{request:?} answered with {body:?}");
            } else {
                assert_eq!(body, &Response::Refused, "a non-member refuses {request:?}");
            }
        }
        None => assert!(responses.is_empty(), "unprompted responses: {out:?}"),
    }
    for t in &out {
        assert_ne!(t.to, me, "the node sent {:?} to itself", t.message);
        assert_eq!(t.message.validate(), Ok(()), "the node sent an invalid message: {:?}", t.message);
    }
    out
}

impl Net {
    /// `n` idle nodes at addresses 1..=n with the default configuration.
    fn new(n: usize) -> Net {
        Net::with_config(n, &Config::default())
    }

    /// `n` idle nodes at addresses 1..=n with `config`.
    fn with_config(n: usize, config: &Config) -> Net {
        let nodes = (0..n)
            .map(|i| Node::new(addr(i), config.clone(), 1000 + i as u64).expect("the test's config is valid"))
            .collect();
        Net {
            nodes,
            now: Time::ZERO,
            in_flight: VecDeque::new(),
            events: vec![Vec::new(); n],
            hold_from: None,
            held: Vec::new(),
            trace: None,
        }
    }

    /// Queues what node `i` transmitted and records its events.
    fn collect(&mut self, i: usize, out: impl IntoIterator<Item = Transmit<SimAddr>>) {
        let from = self.nodes[i].me().addr;
        for Transmit { to, message } in out {
            match message {
                Message::Request { id, body } if self.hold_from == Some(from) => {
                    self.held.push((to, id, body));
                }
                message => self.in_flight.push_back((to, from, message)),
            }
        }
        while let Some(event) = self.nodes[i].poll_event() {
            self.events[i].push(event);
        }
    }

    /// Collects every node's output and delivers messages until nothing is in flight.
    fn pump(&mut self) {
        for i in 0..self.nodes.len() {
            let out: Vec<_> = std::iter::from_fn(|| self.nodes[i].poll_transmit()).collect();
            self.collect(i, out);
        }
        for _ in 0..MAX_STEPS {
            let Some((to, from, message)) = self.in_flight.pop_front() else {
                return;
            };
            if let Some(j) = self.index_of(to) {
                if let Some(trace) = &mut self.trace {
                    trace.push((to, from, message.clone()));
                }
                let out = deliver_checked(&mut self.nodes[j], from, message, self.now);
                self.collect(j, out);
            }
        }
        panic!("messages never stopped flowing");
    }

    /// Runs the group for `d` of virtual time.
    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..MAX_STEPS {
            self.pump();
            match self.nodes.iter().filter_map(Node::poll_timeout).min() {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for node in &mut self.nodes {
                        if node.poll_timeout().is_some_and(|t| t <= now) {
                            node.handle_timeout(now);
                            let next = node.poll_timeout();
                            assert!(
                                next.is_none_or(|t| t > now),
                                "{:?} woken at {now:?} asks to be woken again at {next:?}",
                                node.me()
                            );
                        }
                    }
                }
                _ => {
                    self.now = end;
                    self.pump();
                    return;
                }
            }
        }
        panic!("a node kept asking to be woken without time passing");
    }

    fn index_of(&self, a: SimAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.me().addr == a)
    }

    fn me(&self, i: usize) -> NodeRef<SimAddr> {
        self.nodes[i].me().clone()
    }

    /// Removes and returns the first event of node `i` matching `f`.
    fn take_event(&mut self, i: usize, f: impl Fn(&Event<SimAddr>) -> bool) -> Option<Event<SimAddr>> {
        self.pump();
        let pos = self.events[i].iter().position(f)?;
        Some(self.events[i].remove(pos))
    }

    /// Looks `key` up from node `i` and drives the group until the answer arrives.
    fn lookup(&mut self, i: usize, key: Id) -> Result<LookupOutcome<SimAddr>, LookupError> {
        let id = self.nodes[i].lookup(key, self.now);
        for _ in 0..200 {
            if let Some(Event::LookupFinished { result, .. }) =
                self.take_event(i, |e| matches!(e, Event::LookupFinished { id: l, .. } if *l == id))
            {
                return result;
            }
            self.run_for(Duration::from_millis(100));
        }
        panic!("lookup {id:?} from node {i} never finished");
    }

    /// Node 0 creates a ring and nodes 1.. join through it one after another.
    fn ring(n: usize) -> Net {
        Net::ring_with(n, &Config::default())
    }

    /// [`Net::ring`] with `config`.
    fn ring_with(n: usize, config: &Config) -> Net {
        let mut net = Net::with_config(n, config);
        net.nodes[0].create_ring(net.now);
        for i in 1..n {
            let now = net.now;
            net.nodes[i].join(vec![addr(0)], now);
            net.run_for(Duration::from_secs(5));
        }
        net.run_for(Duration::from_secs(15));
        net
    }
}

/// The owner of `key` among `members`: the member `n` with key ∈ (predecessor(n), n].
fn true_owner(key: &Id, members: &[NodeRef<SimAddr>]) -> SimAddr {
    let mut sorted = members.to_vec();
    sorted.sort_by_key(|n| n.id);
    let len = sorted.len();
    (0..len)
        .find(|&k| key.in_open_closed(&sorted[(k + len - 1) % len].id, &sorted[k].id))
        .map(|k| sorted[k].addr)
        .expect("the intervals cover the ring")
}

/// Asserts that the nodes `ring` (indices) form a correct ring: successor lists and predecessors.
fn assert_ring(net: &Net, ring: &[usize]) {
    let mut sorted: Vec<usize> = ring.to_vec();
    sorted.sort_by_key(|&i| net.nodes[i].me().id);
    let len = sorted.len();
    for k in 0..len {
        let node = &net.nodes[sorted[k]];
        let expected_succ: Vec<SimAddr> = (1..len).map(|d| addr(sorted[(k + d) % len])).collect();
        let got: Vec<SimAddr> = node.successors().iter().map(|n| n.addr).collect();
        assert_eq!(got, expected_succ, "successor list of node {}", sorted[k]);
        assert_eq!(
            node.predecessor().map(|p| p.addr),
            Some(addr(sorted[(k + len - 1) % len])),
            "predecessor of node {}",
            sorted[k]
        );
        assert!(node.is_member() && node.is_announced());
    }
}

/// Keys worth looking up: the members' ids and their neighbours, the ends of the ring, and some
/// hashes.
fn interesting_keys(members: &[NodeRef<SimAddr>]) -> Vec<Id> {
    let one = Id::pow2(0);
    let mut keys = vec![Id::ZERO, Id::MAX];
    for m in members {
        keys.extend([m.id, m.id.wrapping_add(&one), m.id.wrapping_sub(&one)]);
    }
    keys.extend((0u32..16).map(|i| Id::hash(&i.to_be_bytes())));
    keys
}

/// Looks up every interesting key from every node in `askers` and checks the answer against the
/// truth computed from `members`.
fn assert_lookups_correct(net: &mut Net, askers: &[usize]) {
    let members: Vec<NodeRef<SimAddr>> = askers.iter().map(|&i| net.me(i)).collect();
    for &i in askers {
        for key in interesting_keys(&members) {
            let truth = true_owner(&key, &members);
            let outcome =
                net.lookup(i, key).unwrap_or_else(|e| panic!("lookup of {key} from node {i} failed: {e}"));
            assert_eq!(outcome.owner.addr, truth, "owner of {key} asked from node {i}");
            assert_eq!(outcome.owner, NodeRef::new(truth), "owner reference is genuine");
            // Zero hops exactly when the asker owns the key itself.
            assert_eq!(outcome.hops == 0, truth == addr(i), "hops {} for {key} from node {i}", outcome.hops);
            // The owner's list is every other member, clockwise from the owner.
            let owner_idx = net.index_of(truth).expect("owner is in the harness");
            assert_eq!(outcome.successors, net.nodes[owner_idx].successors(), "owner's list for {key}");
        }
    }
}

// ----- 1. two nodes ---------------------------------------------------------------------------

#[test]
fn two_nodes_form_a_ring_and_answer_lookups() {
    let mut net = Net::new(2);
    net.nodes[0].create_ring(net.now);
    let now = net.now;
    net.nodes[1].join(vec![addr(0)], now);
    net.run_for(Duration::from_secs(10));

    let (a, b) = (net.me(0), net.me(1));
    assert_eq!(net.nodes[0].successor(), &b);
    assert_eq!(net.nodes[1].successor(), &a);
    assert_eq!(net.nodes[0].successors(), std::slice::from_ref(&b));
    assert_eq!(net.nodes[1].successors(), std::slice::from_ref(&a));
    assert_eq!(net.nodes[0].predecessor(), Some(&b));
    assert_eq!(net.nodes[1].predecessor(), Some(&a));
    assert_eq!(
        net.take_event(0, |e| matches!(e, Event::Joined { .. })),
        Some(Event::Joined { successor: a.clone() }),
        "the creator joins a ring of one"
    );
    assert_eq!(
        net.take_event(1, |e| matches!(e, Event::Joined { .. })),
        Some(Event::Joined { successor: a.clone() }),
        "B joined with A as its successor"
    );
    assert!(net.take_event(1, |e| matches!(e, Event::Joined { .. })).is_none(), "Joined only once");
    assert!(net.events[1].iter().all(|e| !matches!(e, Event::JoinFailed { .. })));

    // Ownership from the two ids alone: k ∈ (A, B] belongs to B, everything else to A.
    for key in interesting_keys(&[a.clone(), b.clone()]) {
        let truth = if key.in_open_closed(&a.id, &b.id) { b.addr } else { a.addr };
        for i in 0..2 {
            let outcome = net.lookup(i, key).expect("lookup in a stable ring succeeds");
            assert_eq!(outcome.owner.addr, truth, "owner of {key} asked from node {i}");
        }
    }
    assert_lookups_correct(&mut net, &[0, 1]);
    for node in &net.nodes {
        let c = node.counters();
        assert_eq!(
            (
                c.dropped_invalid,
                c.dropped_unknown_response,
                c.dropped_wrong_sender,
                c.dropped_protocol_violation
            ),
            (0, 0, 0, 0),
            "honest peers trip no drop counter: {c:?}"
        );
    }
}

/// A lookup's path is the nodes whose replies to it the asker received, in the order they came:
/// read off the messages actually delivered, not re-derived from routing tables.
#[test]
fn a_lookups_path_is_the_nodes_that_answered_it_hop_by_hop() {
    // Successor lists of two, so that most lookups in a ring of 16 route through fingers.
    let config = Config::default().with_successors(std::num::NonZeroUsize::new(2).expect("2 is non-zero"));
    let n = 16;
    let mut net = Net::ring_with(n, &config);
    let members: Vec<NodeRef<SimAddr>> = (0..n).map(|i| net.me(i)).collect();
    let mut longest = 0;
    for i in 0..n {
        for k in 0u32..8 {
            let key = Id::hash(&k.to_be_bytes());
            net.trace = Some(Vec::new());
            let outcome = net.lookup(i, key).unwrap_or_else(|e| panic!("lookup of {key} from node {i}: {e}"));
            let trace = net.trace.take().expect("set above");
            // This lookup's steps: node i's FindSuccessor requests for the key (other lookups, such
            // as finger fixes, ask for other targets), and the Route replies to exactly those.
            let asked: Vec<(SimAddr, RequestId)> = trace
                .iter()
                .filter_map(|(to, from, message)| match message {
                    Message::Request { id, body: Request::FindSuccessor { target } }
                        if *from == addr(i) && *target == key =>
                    {
                        Some((*to, *id))
                    }
                    _ => None,
                })
                .collect();
            let answered: Vec<SimAddr> = trace
                .iter()
                .filter_map(|(to, from, message)| match message {
                    Message::Response { id, body: Response::Route { .. } }
                        if *to == addr(i) && asked.contains(&(*from, *id)) =>
                    {
                        Some(*from)
                    }
                    _ => None,
                })
                .collect();
            let path: Vec<SimAddr> = outcome.path.iter().map(|node| node.addr).collect();
            assert_eq!(path, answered, "path of {key} from node {i}");
            assert_eq!(outcome.hops as usize, path.len(), "one path entry per hop");
            let truth = true_owner(&key, &members);
            assert_eq!(outcome.owner.addr, truth, "owner of {key} from node {i}");
            if truth == addr(i) {
                assert!(path.is_empty(), "a key this node owns takes no hop: {path:?}");
                continue;
            }
            // It ends at the owner, which confirmed; on a settled ring every hop before it precedes
            // the key and is closer to it than the hop before.
            assert_eq!(outcome.path.last(), Some(&outcome.owner), "the path of {key} ends at its owner");
            let before = &outcome.path[..outcome.path.len() - 1];
            let mut from = net.me(i).id;
            for hop in before {
                assert!(hop.id.in_open(&from, &key), "hop {hop:?} of {key} from node {i} does not progress");
                from = hop.id;
            }
            longest = longest.max(path.len());
        }
    }
    assert!(longest >= 3, "some lookup should route through fingers (longest path {longest})");
}

// ----- 2. graceful leave ----------------------------------------------------------------------

#[test]
fn a_leaving_node_is_routed_around() {
    for leaver in 0..3 {
        let mut net = Net::ring(3);
        assert_ring(&net, &[0, 1, 2]);
        assert_lookups_correct(&mut net, &[0, 1, 2]);

        let now = net.now;
        net.nodes[leaver].leave(now);
        net.pump();
        assert!(
            net.take_event(leaver, |e| matches!(e, Event::Left)).is_some(),
            "leaver {leaver} finished leaving once both neighbours acknowledged"
        );
        assert!(!net.nodes[leaver].is_member());
        assert!(net.nodes[leaver].successors().is_empty());
        // The leaver stays reachable (it refuses everything); the others must not need it.
        net.run_for(Duration::from_secs(10));

        let rest: Vec<usize> = (0..3).filter(|&i| i != leaver).collect();
        let (x, y) = (rest[0], rest[1]);
        assert_eq!(net.nodes[x].successor(), &net.me(y), "leaver {leaver}");
        assert_eq!(net.nodes[y].successor(), &net.me(x), "leaver {leaver}");
        assert_ring(&net, &rest);
        let gone = addr(leaver);
        for &i in &rest {
            assert!(net.nodes[i].successors().iter().all(|n| n.addr != gone));
            assert!(net.nodes[i].fingers().distinct().all(|n| n.addr != gone));
        }
        let keys = interesting_keys(&[net.me(0), net.me(1), net.me(2)]);
        for &i in &rest {
            for &key in &keys {
                let outcome = net.lookup(i, key).expect("lookup after a graceful leave succeeds");
                assert_ne!(outcome.owner.addr, gone, "key {key} from node {i} answered by the leaver");
                assert!(outcome.successors.iter().all(|n| n.addr != gone));
            }
        }
        assert_lookups_correct(&mut net, &rest);
        assert_eq!(net.lookup(leaver, keys[0]), Err(LookupError::NotJoined));
    }
}

#[test]
fn the_last_of_two_is_alone_after_a_leave_and_the_leaver_can_come_back() {
    let mut net = Net::ring(2);
    let now = net.now;
    net.nodes[1].leave(now);
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.events[1].iter().filter(|e| matches!(e, Event::Left)).count(), 1);
    // A is a ring of one again: it owns every key.
    assert!(net.nodes[0].is_member());
    assert!(net.nodes[0].successors().is_empty());
    assert_eq!(net.nodes[0].predecessor(), None);
    for key in interesting_keys(&[net.me(0), net.me(1)]) {
        let outcome = net.lookup(0, key).expect("a ring of one answers everything");
        assert_eq!((outcome.owner.addr, outcome.hops), (addr(0), 0), "key {key}");
    }
    // B joins again through A.
    let now = net.now;
    net.nodes[1].join(vec![addr(0)], now);
    net.run_for(Duration::from_secs(10));
    assert_ring(&net, &[0, 1]);
    assert_lookups_correct(&mut net, &[0, 1]);
}

// ----- 3. hostile input -----------------------------------------------------------------------

/// A stable ring of A (0) and B (1).
fn stable_pair() -> Net {
    let net = Net::ring(2);
    assert_ring(&net, &[0, 1]);
    net
}

/// Advances node `i` alone until it transmits a request; returns (to, id, body). Everything else it
/// transmits is put in flight as usual.
fn take_request(net: &mut Net, i: usize) -> (SimAddr, RequestId, Request<SimAddr>) {
    net.pump();
    let from = net.nodes[i].me().addr;
    for _ in 0..1000 {
        let t = net.nodes[i].poll_timeout().expect("a member always has a timeout");
        net.now = net.now.max(t);
        net.nodes[i].handle_timeout(net.now);
        let mut found = None;
        while let Some(Transmit { to, message }) = net.nodes[i].poll_transmit() {
            match message {
                Message::Request { id, body } if found.is_none() => found = Some((to, id, body)),
                other => net.in_flight.push_back((to, from, other)),
            }
        }
        if let Some(found) = found {
            return found;
        }
    }
    panic!("node {i} never sent a request");
}

/// A response of a kind that cannot answer `request`.
fn wrong_kind(request: &Request<SimAddr>) -> Response<SimAddr> {
    match request {
        Request::GetNeighbours { .. } => Response::Ack,
        Request::Notify
        | Request::Ping
        | Request::FindSuccessor { .. }
        | Request::Leaving { .. }
        | Request::Merge { .. }
        | Request::SuccessorsChanged { .. } => {
            Response::Neighbours { predecessor: None, successors: Vec::new() }
        }
    }
}

/// The right kind of response to `request`, with honest content from a ring of A and B.
fn right_kind(request: &Request<SimAddr>) -> Response<SimAddr> {
    match request {
        Request::GetNeighbours { .. } => Response::Neighbours {
            predecessor: Some(NodeRef::new(addr(0))),
            successors: vec![NodeRef::new(addr(0))],
        },
        Request::Notify
        | Request::Ping
        | Request::Leaving { .. }
        | Request::Merge { .. }
        | Request::SuccessorsChanged { .. } => Response::Ack,
        Request::FindSuccessor { .. } => Response::Refused,
    }
}

/// The drop counters, in the order (invalid, unknown response, wrong sender, protocol violation).
fn drops(c: &Counters) -> [u64; 4] {
    [c.dropped_invalid, c.dropped_unknown_response, c.dropped_wrong_sender, c.dropped_protocol_violation]
}

/// Feeds `message` from `from` to node `i` and returns what it transmitted in response.
fn feed(net: &mut Net, i: usize, from: SimAddr, message: Msg) -> Vec<Transmit<SimAddr>> {
    net.pump();
    deliver_checked(&mut net.nodes[i], from, message, net.now)
}

/// Asserts that node `i` (A in a stable pair with B = 1 − i) answers a stranger's `Ping` with `Ack`
/// and its `FindSuccessor` requests with the exact routing answer the pair implies.
fn assert_still_answers(net: &mut Net, i: usize) {
    let me = net.me(i);
    let other = net.me(1 - i);
    let ping = feed(net, i, STRANGER, Message::Request { id: RequestId(77), body: Request::Ping });
    assert_eq!(
        ping,
        vec![Transmit {
            to: STRANGER,
            message: Message::Response { id: RequestId(77), body: Response::Ack }
        }]
    );
    for (target, owner) in [(me.id, true), (other.id, false), (other.id.wrapping_add(&Id::pow2(0)), true)] {
        let out = feed(
            net,
            i,
            STRANGER,
            Message::Request { id: RequestId(78), body: Request::FindSuccessor { target } },
        );
        let expected = Response::Route {
            owner,
            predecessor: Some(other.clone()),
            successors: vec![other.clone()],
            closer: Vec::new(),
        };
        assert_eq!(
            out,
            vec![Transmit { to: STRANGER, message: Message::Response { id: RequestId(78), body: expected } }],
            "FindSuccessor {target}"
        );
    }
}

#[test]
fn response_with_unknown_id_is_dropped() {
    let mut net = stable_pair();
    let before = net.nodes[0].counters().clone();
    let b = addr(1);
    let out = feed(&mut net, 0, b, Message::Response { id: RequestId(u64::MAX), body: Response::Ack });
    assert!(out.is_empty(), "a response is never answered: {out:?}");
    let after = net.nodes[0].counters().clone();
    let [invalid, unknown, wrong_sender, violation] = drops(&before);
    assert_eq!(drops(&after), [invalid, unknown + 1, wrong_sender, violation], "{after:?}");
    assert_eq!(net.nodes[0].successor(), &net.me(1));
    assert_still_answers(&mut net, 0);
    net.run_for(Duration::from_secs(5));
    assert_ring(&net, &[0, 1]);
    assert_still_answers(&mut net, 0);
}

#[test]
fn response_from_the_wrong_sender_is_dropped_and_the_request_still_waits() {
    let mut net = stable_pair();
    let (to, id, body) = take_request(&mut net, 0);
    assert_eq!(to, addr(1), "A's only peer is B");
    let before = net.nodes[0].counters().clone();
    let out = feed(&mut net, 0, STRANGER, Message::Response { id, body: right_kind(&body) });
    assert!(out.is_empty(), "{out:?}");
    let after = net.nodes[0].counters().clone();
    assert_eq!(after.dropped_wrong_sender, before.dropped_wrong_sender + 1, "{after:?}");
    assert_eq!(drops(&after)[..2], drops(&before)[..2]);
    assert_eq!(after.dropped_protocol_violation, before.dropped_protocol_violation);
    // The request is still outstanding: B's real answer is accepted, not dropped as unknown.
    net.in_flight.push_back((to, addr(0), Message::Request { id, body }));
    net.pump();
    let settled = net.nodes[0].counters().clone();
    assert_eq!(drops(&settled), drops(&after), "B's genuine answer was accepted: {settled:?}");
    assert_eq!(settled.requests_failed, before.requests_failed);
    assert_still_answers(&mut net, 0);
    net.run_for(Duration::from_secs(5));
    assert_ring(&net, &[0, 1]);
    assert_still_answers(&mut net, 0);
}

#[test]
fn response_of_the_wrong_kind_is_a_protocol_violation() {
    let mut net = stable_pair();
    let (to, id, body) = take_request(&mut net, 0);
    assert_eq!(to, addr(1));
    let before = net.nodes[0].counters().clone();
    let out = feed(&mut net, 0, to, Message::Response { id, body: wrong_kind(&body) });
    assert!(out.iter().all(|t| matches!(t.message, Message::Request { .. })), "{out:?}");
    let after = net.nodes[0].counters().clone();
    assert_eq!(after.dropped_protocol_violation, before.dropped_protocol_violation + 1, "{after:?}");
    assert_eq!(drops(&after)[..3], drops(&before)[..3]);
    // The request was consumed: a second answer with its id is only a late response now.
    for t in out {
        net.in_flight.push_back((t.to, addr(0), t.message));
    }
    let out = feed(&mut net, 0, to, Message::Response { id, body: right_kind(&body) });
    assert!(out.is_empty());
    let late = net.nodes[0].counters().clone();
    assert_eq!(late.late_responses, after.late_responses + 1, "{late:?}");
    assert_eq!(drops(&late), drops(&after), "a late response is no drop: {late:?}");
    // Whatever A concluded about B, the pair repairs itself.
    net.run_for(Duration::from_secs(20));
    assert_ring(&net, &[0, 1]);
    assert_still_answers(&mut net, 0);
}

#[test]
fn forged_node_references_are_dropped_as_invalid() {
    let mut net = stable_pair();
    let b = addr(1);
    let mut forged = NodeRef::new(SimAddr(42));
    forged.id = SimAddr(43).node_id();
    assert!(!forged.is_genuine());
    let too_long: Vec<NodeRef<SimAddr>> = (100..165).map(|a| NodeRef::new(SimAddr(a))).collect();
    let hostile = [
        // If accepted, these would make A forget B.
        Request::Leaving { predecessor: Some(forged.clone()), successors: Vec::new() },
        Request::Leaving { predecessor: None, successors: vec![NodeRef::new(SimAddr(50)), forged.clone()] },
        Request::Leaving { predecessor: None, successors: too_long },
    ];
    for (k, body) in hostile.into_iter().enumerate() {
        let before = net.nodes[0].counters().clone();
        let out = feed(&mut net, 0, b, Message::Request { id: RequestId(500 + k as u64), body });
        assert!(out.is_empty(), "an invalid request gets no answer: {out:?}");
        let after = net.nodes[0].counters().clone();
        assert_eq!(after.dropped_invalid, before.dropped_invalid + 1, "case {k}: {after:?}");
        assert_eq!(drops(&after)[1..], drops(&before)[1..]);
        assert_eq!(after.messages_received, before.messages_received);
        assert_eq!(net.nodes[0].successor(), &net.me(1), "case {k}: the Leaving notice was not acted on");
        assert_eq!(net.nodes[0].predecessor(), Some(&net.me(1)));
    }
    // A forged entry in a response to a real request is dropped too, leaving the request waiting.
    let (to, id, _) = take_request(&mut net, 0);
    let before = net.nodes[0].counters().clone();
    let out = feed(
        &mut net,
        0,
        to,
        Message::Response {
            id,
            body: Response::Neighbours { predecessor: Some(forged), successors: Vec::new() },
        },
    );
    assert!(out.is_empty());
    assert_eq!(net.nodes[0].counters().dropped_invalid, before.dropped_invalid + 1);
    assert_still_answers(&mut net, 0);
    net.run_for(Duration::from_secs(5));
    assert_ring(&net, &[0, 1]);
    assert_still_answers(&mut net, 0);
}

#[test]
fn message_from_own_address_is_a_protocol_violation() {
    let mut net = stable_pair();
    let me = addr(0);
    let bodies = [
        Request::Ping,
        Request::Notify,
        Request::Leaving { predecessor: Some(net.me(1)), successors: vec![net.me(1)] },
    ];
    for (k, body) in bodies.into_iter().enumerate() {
        let before = net.nodes[0].counters().clone();
        let out = feed(&mut net, 0, me, Message::Request { id: RequestId(600 + k as u64), body });
        assert!(out.is_empty(), "nothing is answered to oneself: {out:?}");
        let after = net.nodes[0].counters().clone();
        assert_eq!(after.dropped_protocol_violation, before.dropped_protocol_violation + 1, "{after:?}");
        assert_eq!(drops(&after)[..3], drops(&before)[..3]);
        assert_eq!(net.nodes[0].successor(), &net.me(1));
        assert_eq!(net.nodes[0].predecessor(), Some(&net.me(1)));
    }
    let before = net.nodes[0].counters().clone();
    feed(&mut net, 0, me, Message::Response { id: RequestId(0), body: Response::Ack });
    assert_eq!(net.nodes[0].counters().dropped_protocol_violation, before.dropped_protocol_violation + 1);
    assert_still_answers(&mut net, 0);
    net.run_for(Duration::from_secs(5));
    assert_ring(&net, &[0, 1]);
    assert_still_answers(&mut net, 0);
}

/// Requests other than Ping are refused by `node`; Ping gets `ping_reply`. Nothing about `node`
/// changes.
fn assert_refuses_requests(node: &mut Node<SimAddr>, now: Time, ping_reply: Response<SimAddr>) {
    let peer = SimAddr(51);
    let requests = [
        Request::GetNeighbours { predecessors: Vec::new() },
        Request::Notify,
        Request::FindSuccessor { target: node.me().id },
        Request::Leaving {
            predecessor: Some(NodeRef::new(SimAddr(52))),
            successors: vec![NodeRef::new(SimAddr(53))],
        },
    ];
    for (k, body) in requests.into_iter().enumerate() {
        let refused = node.counters().refused;
        let id = RequestId(10 + k as u64);
        node.handle_message(peer, Message::Request { id, body }, now);
        assert_eq!(
            node.poll_transmit(),
            Some(Transmit { to: peer, message: Message::Response { id, body: Response::Refused } })
        );
        assert_eq!(node.poll_transmit(), None);
        assert_eq!(node.counters().refused, refused + 1);
    }
    node.handle_message(peer, Message::Request { id: RequestId(20), body: Request::Ping }, now);
    assert_eq!(
        node.poll_transmit(),
        Some(Transmit { to: peer, message: Message::Response { id: RequestId(20), body: ping_reply } })
    );
    assert!(!node.is_member());
    assert_eq!(node.predecessor(), None, "a Notify to a non-member changes nothing");
    assert!(node.successors().is_empty());
}

#[test]
fn non_members_refuse_requests_and_departed_nodes_do_not_look_alive() {
    // Idle.
    let mut idle = Node::new(SimAddr(50), Config::default(), 7).expect("valid");
    assert_refuses_requests(&mut idle, Time::ZERO, Response::Ack);
    assert_eq!(idle.poll_event(), None);
    assert_eq!(idle.poll_timeout(), None, "an idle node has nothing to do");

    // Joining through a node that never answers.
    let mut joining = Node::new(SimAddr(50), Config::default(), 7).expect("valid");
    joining.join(vec![STRANGER], Time::ZERO);
    while joining.poll_transmit().is_some() {}
    assert_refuses_requests(&mut joining, Time::ZERO, Response::Ack);

    // Left.
    let mut net = stable_pair();
    let now = net.now;
    net.nodes[1].leave(now);
    net.pump();
    assert!(net.take_event(1, |e| matches!(e, Event::Left)).is_some());
    // A node that has left refuses even Ping, so that liveness probes drop it.
    assert_refuses_requests(&mut net.nodes[1], now, Response::Refused);
}

// ----- 4. fuzzing a member --------------------------------------------------------------------

/// Senders: A itself, its ring peers B and C, and strangers (4, 5 and 1000 are in no harness).
const SENDERS: [SimAddr; 6] = [SimAddr(1), SimAddr(2), SimAddr(3), SimAddr(4), SimAddr(5), SimAddr(1_000)];

#[derive(Clone, Debug)]
enum Op {
    /// A message to A from `SENDERS[from]`; `ordered` sorts its lists clockwise from the sender.
    Deliver { from: usize, message: Msg, ordered: bool },
    /// A response to one of A's parked requests, from the node asked or from `SENDERS[from]`.
    Reply { pick: usize, right_sender: bool, from: usize, body: Response<SimAddr>, ordered: bool },
    /// One of A's parked requests reaches its destination (lost if that is no harness node).
    Release { pick: usize },
    /// The driver reports that one of A's parked requests could not be sent.
    SendFailure { pick: usize },
    /// Time passes for the whole group.
    Advance { ms: u64 },
}

fn genuine_ref() -> impl Strategy<Value = NodeRef<SimAddr>> {
    prop_oneof![
        3 => (0u64..8).prop_map(|a| NodeRef::new(SimAddr(a))),
        1 => any::<u64>().prop_map(|a| NodeRef::new(SimAddr(a))),
    ]
}

fn any_ref() -> impl Strategy<Value = NodeRef<SimAddr>> {
    prop_oneof![
        4 => genuine_ref(),
        1 => (0u64..8, any::<[u8; 20]>()).prop_map(|(a, b)| NodeRef { id: Id::from_bytes(b), addr: SimAddr(a) }),
        1 => (0u64..8, 0u64..8)
            .prop_filter("distinct", |(a, b)| a != b)
            .prop_map(|(a, b)| NodeRef { id: SimAddr(b).node_id(), addr: SimAddr(a) }),
    ]
}

fn list() -> impl Strategy<Value = Vec<NodeRef<SimAddr>>> {
    prop_oneof![
        4 => proptest::collection::vec(genuine_ref(), 0..=8),
        2 => proptest::collection::vec(genuine_ref(), 0..=70),
        1 => proptest::collection::vec(any_ref(), 0..=70),
    ]
}

fn target() -> impl Strategy<Value = Id> {
    prop_oneof![(0u64..8).prop_map(|a| SimAddr(a).node_id()), any::<[u8; 20]>().prop_map(Id::from_bytes)]
}

fn request() -> impl Strategy<Value = Request<SimAddr>> {
    prop_oneof![
        Just(Request::GetNeighbours { predecessors: Vec::new() }),
        Just(Request::Notify),
        Just(Request::Ping),
        target().prop_map(|target| Request::FindSuccessor { target }),
        (proptest::option::of(any_ref()), list())
            .prop_map(|(predecessor, successors)| { Request::Leaving { predecessor, successors } }),
    ]
}

fn response() -> impl Strategy<Value = Response<SimAddr>> {
    prop_oneof![
        (proptest::option::of(any_ref()), list())
            .prop_map(|(predecessor, successors)| { Response::Neighbours { predecessor, successors } }),
        Just(Response::Ack),
        Just(Response::Refused),
        (any::<bool>(), proptest::option::of(any_ref()), list(), list()).prop_map(
            |(owner, predecessor, successors, closer)| Response::Route {
                owner,
                predecessor,
                successors,
                closer
            }
        ),
    ]
}

fn request_id() -> impl Strategy<Value = RequestId> {
    prop_oneof![(0u64..300).prop_map(RequestId), any::<u64>().prop_map(RequestId)]
}

fn op() -> impl Strategy<Value = Op> {
    let sender = 0..SENDERS.len();
    prop_oneof![
        3 => (sender.clone(), request_id(), request(), any::<bool>()).prop_map(|(from, id, body, ordered)| {
            Op::Deliver { from, message: Message::Request { id, body }, ordered }
        }),
        1 => (sender.clone(), request_id(), response(), any::<bool>()).prop_map(|(from, id, body, ordered)| {
            Op::Deliver { from, message: Message::Response { id, body }, ordered }
        }),
        3 => (any::<usize>(), any::<bool>(), sender, response(), any::<bool>()).prop_map(
            |(pick, right_sender, from, body, ordered)| Op::Reply { pick, right_sender, from, body, ordered }
        ),
        4 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        1 => any::<usize>().prop_map(|pick| Op::SendFailure { pick }),
        2 => (0u64..800).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// Sorts the successor lists in `message` clockwise from `origin`, without duplicates or `origin`
/// itself, as an honest (or a careful liar's) list would be, so that they are not cut short on
/// receipt and reach deep into the receiver's state.
fn order_lists(message: &mut Msg, origin: Id) {
    let list = match message {
        Message::Request { body: Request::Leaving { successors, .. }, .. }
        | Message::Response {
            body: Response::Neighbours { successors, .. } | Response::Route { successors, .. },
            ..
        } => successors,
        _ => return,
    };
    list.sort_by_key(|n| origin.distance_to(&n.id));
    list.dedup_by_key(|n| n.id);
    list.retain(|n| n.id != origin);
}

/// Checks the routing-state invariants of a member node.
fn check_member(node: &Node<SimAddr>) -> Result<(), TestCaseError> {
    let me = node.me().clone();
    let list = node.successors();
    prop_assert!(node.is_member(), "messages cannot end membership");
    prop_assert!(list.iter().all(|n| n.addr != me.addr && n.id != me.id), "list contains the node: {list:?}");
    prop_assert!(list.len() <= node.config().successors.get(), "list too long: {}", list.len());
    prop_assert!(
        list.windows(2).all(|w| me.id.distance_to(&w[0].id) < me.id.distance_to(&w[1].id)),
        "list not strictly clockwise from {me:?}: {list:?}"
    );
    prop_assert!(list.iter().chain(node.predecessor()).all(NodeRef::is_genuine));
    prop_assert!(node.predecessor().is_none_or(|p| p.addr != me.addr), "the node is its own predecessor");
    prop_assert!(node.poll_timeout().is_some(), "a member always has a wake-up");
    Ok(())
}

/// A ring of A, B and C. A's requests are parked; the ops decide whether each reaches its
/// destination, gets a hostile reply, fails to send, or times out. Every message A receives — from
/// the ops or from B and C — is checked by `deliver_checked`; the invariants of all three nodes are
/// checked after every op.
fn run_fuzz(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut net = Net::ring(3);
    assert_ring(&net, &[0, 1, 2]);
    let me = addr(0);
    net.hold_from = Some(me);
    for op in ops {
        net.pump();
        let pick = |pick: usize, held: &[(SimAddr, RequestId, Request<SimAddr>)]| {
            (!held.is_empty()).then(|| held.len() - 1 - pick % held.len())
        };
        match op {
            Op::Deliver { from, mut message, ordered } => {
                if ordered {
                    order_lists(&mut message, SENDERS[from].node_id());
                }
                let out = deliver_checked(&mut net.nodes[0], SENDERS[from], message, net.now);
                net.collect(0, out);
            }
            Op::Reply { pick: k, right_sender, from, body, ordered } => {
                if let Some(k) = pick(k, &net.held) {
                    let (to, id, _) = net.held.remove(k);
                    let from = if right_sender { to } else { SENDERS[from] };
                    let mut message = Message::Response { id, body };
                    if ordered {
                        order_lists(&mut message, from.node_id());
                    }
                    let out = deliver_checked(&mut net.nodes[0], from, message, net.now);
                    net.collect(0, out);
                }
            }
            Op::Release { pick: k } => {
                if let Some(k) = pick(k, &net.held) {
                    let (to, id, body) = net.held.remove(k);
                    net.in_flight.push_back((to, me, Message::Request { id, body }));
                }
            }
            Op::SendFailure { pick: k } => {
                if let Some(k) = pick(k, &net.held) {
                    let (_, id, _) = net.held.remove(k);
                    let now = net.now;
                    net.nodes[0].handle_send_failure(id, now);
                }
            }
            Op::Advance { ms } => net.run_for(Duration::from_millis(ms)),
        }
        net.pump();
        for node in &net.nodes {
            check_member(node)?;
        }
    }
    // Once the hostility stops (parked requests are lost, new ones flow), the ring repairs itself.
    net.hold_from = None;
    net.held.clear();
    net.run_for(Duration::from_secs(30));
    assert_ring(&net, &[0, 1, 2]);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_member_survives_arbitrary_messages(ops in proptest::collection::vec(op(), 100..400)) {
        run_fuzz(ops)?;
    }
}

// ----- 5. non-members and failed joins --------------------------------------------------------

#[test]
fn lookups_on_a_non_member_fail_at_once() {
    let mut node = Node::new(SimAddr(60), Config::default(), 3).expect("valid");
    let key = Id::hash(b"key");
    let first = node.lookup(key, Time::ZERO);
    let second = node.lookup(key, Time::ZERO);
    assert_ne!(first, second, "lookup ids are distinct");
    assert_eq!(
        node.poll_event(),
        Some(Event::LookupFinished { id: first, result: Err(LookupError::NotJoined) })
    );
    assert_eq!(
        node.poll_event(),
        Some(Event::LookupFinished { id: second, result: Err(LookupError::NotJoined) })
    );
    assert_eq!(node.poll_event(), None);
    assert_eq!(node.poll_transmit(), None, "nothing is sent for it");
    assert_eq!(node.lookups_in_flight(), 0);

    // While joining, too.
    node.join(vec![STRANGER], Time::ZERO);
    while node.poll_transmit().is_some() {}
    let id = node.lookup(key, Time::ZERO);
    assert_eq!(node.poll_event(), Some(Event::LookupFinished { id, result: Err(LookupError::NotJoined) }));
}

#[test]
fn join_without_bootstraps_fails_at_once() {
    let mut node = Node::new(SimAddr(61), Config::default(), 3).expect("valid");
    node.join(Vec::new(), Time::ZERO);
    assert_eq!(node.poll_event(), Some(Event::JoinFailed { error: JoinError::NoBootstrap }));
    assert_eq!(node.poll_event(), None);
    assert_eq!(node.poll_transmit(), None);
    // Its own address is no bootstrap either.
    node.join(vec![SimAddr(61)], Time::ZERO);
    assert_eq!(node.poll_event(), Some(Event::JoinFailed { error: JoinError::NoBootstrap }));
    assert_eq!(node.poll_transmit(), None);
    assert!(!node.is_member());
}

#[test]
fn join_through_a_silent_node_times_out() {
    let config = Config::default();
    let mut node = Node::new(SimAddr(62), config.clone(), 3).expect("valid");
    let start = Time::ZERO + Duration::from_secs(3);
    node.join(vec![STRANGER], start);
    let step = Duration::from_millis(50);
    let mut now = start;
    // Each join attempt is one request id, transmitted up to `request_attempts` times.
    let mut ids: Vec<RequestId> = Vec::new();
    let mut transmissions = 0u32;
    let give_up_by = start + config.join_timeout + config.rpc_timeout * config.request_attempts + step;
    let failed_at = loop {
        while let Some(Transmit { to, message }) = node.poll_transmit() {
            assert_eq!(to, STRANGER);
            let Message::Request { id, body: Request::FindSuccessor { target } } = message else {
                panic!("a joining node only looks up its own id: {message:?}");
            };
            assert_eq!(target, node.me().id);
            if !ids.contains(&id) {
                ids.push(id);
            }
            transmissions += 1;
        }
        if let Some(event) = node.poll_event() {
            let attempts = u32::try_from(ids.len()).expect("few");
            assert_eq!(event, Event::JoinFailed { error: JoinError::TimedOut { attempts } });
            break now;
        }
        assert!(now < give_up_by, "join never gave up");
        assert!(!node.is_member());
        now = now + step;
        if node.poll_timeout().is_some_and(|t| t <= now) {
            node.handle_timeout(now);
        }
    };
    let attempts = u32::try_from(ids.len()).expect("few");
    assert!(transmissions <= attempts * config.request_attempts, "{transmissions} transmissions");
    assert!(failed_at >= start + config.join_timeout, "gave up early, at {failed_at:?}");
    assert!(attempts >= 2, "retried: {attempts} attempts");
    assert!(!node.is_member());
    assert_eq!(node.poll_timeout(), None, "idle again");
    assert_eq!(node.poll_event(), None);
    let id = node.lookup(Id::ZERO, now);
    assert_eq!(node.poll_event(), Some(Event::LookupFinished { id, result: Err(LookupError::NotJoined) }));
}

/// Runs `node` alone until `until`, answering nothing; returns who it sent which requests to.
fn run_unanswered(node: &mut Node<SimAddr>, mut now: Time, until: Time) -> Vec<(SimAddr, Request<SimAddr>)> {
    let mut sent = Vec::new();
    for _ in 0..MAX_STEPS {
        while let Some(Transmit { to, message }) = node.poll_transmit() {
            if let Message::Request { body, .. } = message {
                sent.push((to, body));
            }
        }
        match node.poll_timeout() {
            Some(t) if t <= until => {
                now = now.max(t);
                node.handle_timeout(now);
            }
            _ => return sent,
        }
    }
    panic!("the node never went quiet");
}

#[test]
fn bootstrap_peers_are_probed_after_a_loss_and_only_then() {
    const BOOTSTRAP: SimAddr = SimAddr(9_998);
    let config = Config::default();
    let mut node = Node::new(SimAddr(71), config.clone(), 5).expect("valid");
    let start = Time::ZERO;
    node.create_ring(start);
    node.add_bootstrap_peer(BOOTSTRAP);
    node.add_bootstrap_peer(SimAddr(71)); // itself: ignored

    // Idle, nobody lost: the bootstrap peer costs nothing.
    let idle_until = start + Duration::from_secs(120);
    let sent = run_unanswered(&mut node, start, idle_until);
    assert!(sent.is_empty(), "an idle ring of one sent {sent:?}");
    assert_eq!(node.passive_len(), 0);

    // A peer notifies us, becomes our predecessor and successor candidate, then goes silent
    // (cut off): declared dead, it goes to the passive list, and the bootstrap peer with it.
    let lost = SimAddr(72);
    node.handle_message(lost, Message::Request { id: RequestId(1), body: Request::Notify }, idle_until);
    let after = idle_until + config.probe_interval * 8;
    let sent = run_unanswered(&mut node, idle_until, after);
    assert!(
        sent.iter().any(|(to, r)| *to == lost && matches!(r, Request::GetNeighbours { .. })),
        "the silent peer was never asked: {sent:?}"
    );
    assert_eq!(node.passive_len(), 2, "the lost peer and the bootstrap peer are remembered");
    let probes_to_bootstrap =
        sent.iter().filter(|(to, r)| *to == BOOTSTRAP && matches!(r, Request::GetNeighbours { .. })).count();
    assert!(probes_to_bootstrap >= 1, "the bootstrap peer was never probed: {sent:?}");
    // Unanswered probes back off: a handful within eight probe intervals, not one per interval.
    assert!(probes_to_bootstrap <= 4, "{probes_to_bootstrap} probes of the bootstrap peer");
}

#[test]
fn a_flood_of_merge_requests_is_acted_upon_only_up_to_the_rate_limit() {
    let config = Config::default();
    let mut node = Node::new(SimAddr(81), config.clone(), 9).expect("valid");
    node.create_ring(Time::ZERO);
    let hostile = SimAddr(82);
    // Each request names another would-be member of another ring; each acted upon costs this node
    // a probe of that candidate.
    let flood = |node: &mut Node<SimAddr>, first: u64, now: Time| -> (usize, usize) {
        let (mut requests, mut acks) = (0, 0);
        for i in 0..100 {
            let candidate = NodeRef::new(SimAddr(first + i));
            let body = Request::Merge { candidate, hops: 0 };
            node.handle_message(hostile, Message::Request { id: RequestId(first + i), body }, now);
            while let Some(Transmit { to, message }) = node.poll_transmit() {
                match message {
                    Message::Response { body: Response::Ack, .. } if to == hostile => acks += 1,
                    Message::Request { .. } => requests += 1,
                    other => panic!("unexpected {other:?} to {to:?}"),
                }
            }
        }
        (requests, acks)
    };
    let start = Time::ZERO + Duration::from_secs(1);
    let (requests, acks) = flood(&mut node, 1_000, start);
    assert_eq!(acks, 100, "every merge request is still answered");
    assert!((1..=16).contains(&requests), "{requests} requests sent for a flood of 100");
    assert_eq!(node.counters().merge_requests_limited, 84);
    // A probe interval later the budget is back, and still bounded.
    let (requests, _) = flood(&mut node, 2_000, start + config.probe_interval);
    assert!((1..=16).contains(&requests), "{requests} requests sent for the second flood");
    assert_eq!(node.counters().merge_requests_limited, 168);
}
