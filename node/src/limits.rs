//! Bounds on what one peer can make this node do: how many connections it may hold and how fast
//! it may send requests on the overlay's protocols.
//!
//! Owns: [`PeerLimits`], the settings (from flags); the libp2p connection limits built from them;
//! and [`RateLimiter`], a token bucket per (peer, protocol) in a map of bounded size, behind which
//! one node-wide bucket bounds what all peers together make the node serve (many peers, each
//! under its own rate, are still one node's work).
//!
//! Invariants:
//! - the rate limiter holds at most `max_peers` peers; when a new peer arrives at a full map, the
//!   peer seen least recently is forgotten (its next request finds a full bucket again);
//! - a bucket never holds more than `burst` tokens, and a request is admitted only by taking one,
//!   so a peer gets at most `burst + rate × t` requests through in any span of `t` seconds, and
//!   all peers together at most `node_burst + node_rate × t`;
//! - a request its peer's bucket refuses takes nothing from the node-wide bucket, so one flooding
//!   peer spends only its own budget;
//! - the limiter reads no clock: every call takes `now`, so tests drive time themselves.
//!
//! The defaults are meant never to bind in honest operation (see [`PeerLimits::default`]): a
//! refusal is the sign of a broken or hostile peer, and is counted
//! (`overlay_peer_requests_refused_total{protocol,reason}`).

use std::collections::HashMap;
use std::time::Instant;

use libp2p::PeerId;
use libp2p::connection_limits::ConnectionLimits;

/// The overlay's request/response protocols, as the limiter and its counters name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `/overlay/ring/1`.
    Ring,
    /// `/overlay/kv/1`.
    Kv,
    /// `/overlay/group/1`.
    Group,
    /// `/overlay/queue/1`.
    Queue,
    /// `/overlay/chat/1`.
    Chat,
}

impl Protocol {
    /// Every protocol, in the order of their counters.
    pub const ALL: [Protocol; 5] =
        [Protocol::Ring, Protocol::Kv, Protocol::Group, Protocol::Queue, Protocol::Chat];

    /// The label value in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Ring => "ring",
            Protocol::Kv => "kv",
            Protocol::Group => "group",
            Protocol::Queue => "queue",
            Protocol::Chat => "chat",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a peer's request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The peer sent faster than its rate allows.
    Rate,
    /// The storage queue is full (a write would have to wait; see `Storage::write_queue_free`).
    Busy,
    /// All peers together sent faster than the node-wide rate allows.
    NodeRate,
}

impl Refusal {
    /// Every reason, in the order of their counters.
    pub const ALL: [Refusal; 3] = [Refusal::Rate, Refusal::Busy, Refusal::NodeRate];

    /// The label value in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Rate => "rate",
            Refusal::Busy => "busy",
            Refusal::NodeRate => "node_rate",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Peers' requests refused, by protocol and reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    counts: [[u64; 3]; 5],
}

impl Refusals {
    /// Counts one refusal.
    pub fn count(&mut self, protocol: Protocol, reason: Refusal) {
        self.counts[protocol.index()][reason.index()] += 1;
    }

    /// Refusals of `protocol` for `reason` so far.
    pub fn get(&self, protocol: Protocol, reason: Refusal) -> u64 {
        self.counts[protocol.index()][reason.index()]
    }
}

/// What one peer may hold and send. Every field is a flag (see `Flags`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeerLimits {
    /// Established connections in all.
    pub max_connections: u32,
    /// Established connections with one peer.
    pub max_connections_per_peer: u32,
    /// Incoming connections still in their handshake.
    pub max_pending_incoming: u32,
    /// Outgoing connections still being dialed.
    pub max_pending_outgoing: u32,
    /// Requests per second one peer may send on each protocol, sustained.
    pub request_rate: u32,
    /// Requests one peer may send on each protocol at once, after a quiet spell.
    pub request_burst: u32,
    /// Requests per second all peers together may send, on all protocols, sustained.
    pub node_request_rate: u32,
    /// Requests all peers together may send at once, after a quiet spell.
    pub node_request_burst: u32,
}

impl Default for PeerLimits {
    /// Sized so that honest operation never meets them:
    /// - connections: a node holds one per finger, successor and predecessor (a few dozen even at
    ///   a thousand nodes), plus those of peers whose fingers point here, plus, for a while, one
    ///   per member a `/v1/ring` walk visited: a 64-node ring holds at most 64; 1,024 leaves room
    ///   for walks of rings that large. Two nodes dialing each other at the same moment end up
    ///   with two connections, so 4 per peer. Pending: 128 handshakes in, 256 dials out (a node
    ///   starting in a large ring dials its fingers and successors together).
    /// - requests: the fastest run in BENCHMARKS.md made about 2,500 operations/s across all 16
    ///   nodes; even if every one of them were a request from one peer to the same other peer,
    ///   that is under 4,000/s. The burst of 8,000 covers anti-entropy and hand-off, which send a
    ///   page of records at once. Node-wide, 16,384/s (burst 32,768): four peers at their full
    ///   rate, or the whole benchmark's traffic many times over. OpenDHT's defaults, for
    ///   comparison: 8,192 requests/s in all, 1,024 per peer.
    fn default() -> Self {
        PeerLimits {
            max_connections: 1024,
            max_connections_per_peer: 4,
            max_pending_incoming: 128,
            max_pending_outgoing: 256,
            request_rate: 4000,
            request_burst: 8000,
            node_request_rate: 16_384,
            node_request_burst: 32_768,
        }
    }
}

impl PeerLimits {
    /// libp2p's connection limits from these settings.
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits::default()
            .with_max_established(Some(self.max_connections))
            .with_max_established_per_peer(Some(self.max_connections_per_peer))
            .with_max_pending_incoming(Some(self.max_pending_incoming))
            .with_max_pending_outgoing(Some(self.max_pending_outgoing))
    }
}

/// Peers the rate limiter remembers at most: four times the default connection limit, so a peer
/// is forgotten (and finds a full bucket again) only after thousands of others sent since it did.
pub const RATE_LIMITER_PEERS: usize = 4096;

/// One token bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Refills the bucket for the time since it was last seen (up to `burst`), then takes a token
    /// if there is one.
    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A token bucket per (peer, protocol), in a map of at most `max_peers` peers, and one for the
/// whole node.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_peers: usize,
    peers: HashMap<PeerId, Peer>,
    node_rate: f64,
    node_burst: f64,
    node: Option<Bucket>,
}

#[derive(Debug)]
struct Peer {
    buckets: [Option<Bucket>; 5],
    seen: Instant,
}

impl RateLimiter {
    /// A limiter admitting `rate` requests per second per peer and protocol, `burst` at once,
    /// remembering at most `max_peers` peers, and `node_rate` per second (`node_burst` at once)
    /// from all peers together.
    pub fn new(rate: u32, burst: u32, max_peers: usize, node_rate: u32, node_burst: u32) -> Self {
        RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            max_peers: max_peers.max(1),
            peers: HashMap::new(),
            node_rate: f64::from(node_rate),
            node_burst: f64::from(node_burst.max(1)),
            node: None,
        }
    }

    /// Whether `peer` may send one more request on `protocol` at `now`, taking its tokens if so:
    /// first its own bucket's ([`Refusal::Rate`] when empty), then the node-wide bucket's
    /// ([`Refusal::NodeRate`]).
    pub fn admit(&mut self, peer: PeerId, protocol: Protocol, now: Instant) -> Result<(), Refusal> {
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.max_peers {
            self.forget_least_recent();
        }
        let entry = self.peers.entry(peer).or_insert(Peer { buckets: [None; 5], seen: now });
        entry.seen = entry.seen.max(now);
        let bucket = entry.buckets[protocol.index()].get_or_insert(Bucket { tokens: self.burst, at: now });
        if !bucket.take(self.rate, self.burst, now) {
            return Err(Refusal::Rate);
        }
        let node = self.node.get_or_insert(Bucket { tokens: self.node_burst, at: now });
        if !node.take(self.node_rate, self.node_burst, now) {
            return Err(Refusal::NodeRate);
        }
        Ok(())
    }

    /// Peers remembered now.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }

    /// Linear in the map's size, paid only when a new peer finds the map full; each new peer
    /// costs its sender a Noise handshake first, far more than this scan.
    fn forget_least_recent(&mut self) {
        if let Some(oldest) = self.peers.iter().min_by_key(|(_, p)| p.seen).map(|(peer, _)| *peer) {
            self.peers.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_is_admitted_then_the_rate() {
        let mut limiter = RateLimiter::new(10, 5, 16, 1_000, 1_000);
        let peer = PeerId::random();
        let t0 = Instant::now();
        let admitted = (0..20).filter(|_| limiter.admit(peer, Protocol::Kv, t0).is_ok()).count();
        assert_eq!(admitted, 5, "the burst, then nothing");
        // 10/s: after 0.5 s, five more.
        let t1 = t0 + Duration::from_millis(500);
        let admitted = (0..20).filter(|_| limiter.admit(peer, Protocol::Kv, t1).is_ok()).count();
        assert_eq!(admitted, 5);
        // A long quiet spell refills to the burst, no more.
        let t2 = t1 + Duration::from_secs(60);
        let admitted = (0..20).filter(|_| limiter.admit(peer, Protocol::Kv, t2).is_ok()).count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn protocols_and_peers_have_buckets_of_their_own() {
        let mut limiter = RateLimiter::new(1, 2, 16, 1_000, 1_000);
        let (a, b) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        assert!(limiter.admit(a, Protocol::Kv, now).is_ok() && limiter.admit(a, Protocol::Kv, now).is_ok());
        assert_eq!(limiter.admit(a, Protocol::Kv, now), Err(Refusal::Rate));
        assert!(limiter.admit(a, Protocol::Ring, now).is_ok(), "another protocol's bucket is full");
        assert!(limiter.admit(b, Protocol::Kv, now).is_ok(), "another peer's bucket is full");
    }

    #[test]
    fn the_map_stays_bounded_and_forgets_the_least_recent_peer() {
        let mut limiter = RateLimiter::new(1, 1, 3, 1_000, 1_000);
        let t0 = Instant::now();
        let peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        for (i, peer) in peers.iter().enumerate() {
            assert!(limiter.admit(*peer, Protocol::Ring, t0 + Duration::from_millis(i as u64)).is_ok());
        }
        // peers[0] is the least recent; a fourth peer pushes it out, and only it.
        let newcomer = PeerId::random();
        assert!(limiter.admit(newcomer, Protocol::Ring, t0 + Duration::from_millis(10)).is_ok());
        assert_eq!(limiter.peers(), 3);
        let now = t0 + Duration::from_millis(11);
        assert_eq!(limiter.admit(peers[2], Protocol::Ring, now), Err(Refusal::Rate), "still remembered");
        for _ in 0..1000 {
            let _ = limiter.admit(PeerId::random(), Protocol::Ring, now);
        }
        assert_eq!(limiter.peers(), 3);
    }

    #[test]
    fn the_node_wide_bucket_bounds_many_peers_together_and_a_flooder_spends_only_its_own() {
        // Each peer may send 10 at once; the node takes 25 from everyone.
        let mut limiter = RateLimiter::new(1, 10, 64, 5, 25);
        let t0 = Instant::now();
        let flooder = PeerId::random();
        let flood: Vec<_> = (0..100).map(|_| limiter.admit(flooder, Protocol::Kv, t0)).collect();
        assert_eq!(flood.iter().filter(|r| r.is_ok()).count(), 10);
        assert!(flood[10..].iter().all(|r| *r == Err(Refusal::Rate)), "refused by its own bucket");
        // 15 node tokens are left for everyone else, whatever the flooder keeps sending.
        let others: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        let mut results = Vec::new();
        for peer in &others {
            for _ in 0..10 {
                results.push(limiter.admit(*peer, Protocol::Ring, t0));
            }
        }
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 15);
        assert_eq!(results.iter().filter(|r| **r == Err(Refusal::NodeRate)).count(), 35);
        // The node-wide bucket refills at its own rate: 5/s, so 10 more after 2 s.
        let t1 = t0 + Duration::from_secs(2);
        let admitted =
            others.iter().cycle().take(30).filter(|p| limiter.admit(**p, Protocol::Group, t1).is_ok());
        assert_eq!(admitted.count(), 10);
    }

    #[test]
    fn default_limits_hold_a_64_node_ring() {
        let limits = PeerLimits::default();
        assert!(limits.max_connections >= 64 * 4);
        assert!(limits.max_connections_per_peer >= 2, "simultaneous dials make two");
        assert!(limits.request_rate >= 2500 && limits.request_burst >= limits.request_rate);
        assert!(limits.node_request_rate >= 4 * limits.request_rate);
        assert!(limits.node_request_burst >= limits.node_request_rate);
    }
}
