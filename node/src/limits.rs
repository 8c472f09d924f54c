//! Bounds on what one peer can make this node do: how many connections it may hold and how fast
//! it may send requests on the overlay's protocols.
//!
//! Owns: [`PeerLimits`], the settings (from flags); the libp2p connection limits built from them;
//! and [`RateLimiter`], a token bucket per (peer, protocol) in a map of bounded size.
//!
//! Invariants:
//! - the rate limiter holds at most `max_peers` peers; when a new peer arrives at a full map, the
//!   peer seen least recently is forgotten (its next request finds a full bucket again);
//! - a bucket never holds more than `burst` tokens, and a request is admitted only by taking one,
//!   so a peer gets at most `burst + rate × t` requests through in any span of `t` seconds;
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
}

impl Refusal {
    /// Every reason, in the order of their counters.
    pub const ALL: [Refusal; 2] = [Refusal::Rate, Refusal::Busy];

    /// The label value in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Rate => "rate",
            Refusal::Busy => "busy",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Peers' requests refused, by protocol and reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    counts: [[u64; 2]; 5],
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
    ///   page of records at once. OpenDHT's defaults, for comparison: 8,192 requests/s in all,
    ///   1,024 per peer.
    fn default() -> Self {
        PeerLimits {
            max_connections: 1024,
            max_connections_per_peer: 4,
            max_pending_incoming: 128,
            max_pending_outgoing: 256,
            request_rate: 4000,
            request_burst: 8000,
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

/// A token bucket per (peer, protocol), in a map of at most `max_peers` peers.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_peers: usize,
    peers: HashMap<PeerId, Peer>,
}

#[derive(Debug)]
struct Peer {
    buckets: [Option<Bucket>; 5],
    seen: Instant,
}

impl RateLimiter {
    /// A limiter admitting `rate` requests per second per peer and protocol, `burst` at once,
    /// remembering at most `max_peers` peers.
    pub fn new(rate: u32, burst: u32, max_peers: usize) -> Self {
        RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            max_peers: max_peers.max(1),
            peers: HashMap::new(),
        }
    }

    /// Whether `peer` may send one more request on `protocol` at `now`; takes its token if so.
    pub fn admit(&mut self, peer: PeerId, protocol: Protocol, now: Instant) -> bool {
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.max_peers {
            self.forget_least_recent();
        }
        let entry = self.peers.entry(peer).or_insert(Peer { buckets: [None; 5], seen: now });
        entry.seen = entry.seen.max(now);
        let bucket = entry.buckets[protocol.index()].get_or_insert(Bucket { tokens: self.burst, at: now });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = bucket.at.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
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
        let mut limiter = RateLimiter::new(10, 5, 16);
        let peer = PeerId::random();
        let t0 = Instant::now();
        let admitted = (0..20).filter(|_| limiter.admit(peer, Protocol::Kv, t0)).count();
        assert_eq!(admitted, 5, "the burst, then nothing");
        // 10/s: after 0.5 s, five more.
        let t1 = t0 + Duration::from_millis(500);
        let admitted = (0..20).filter(|_| limiter.admit(peer, Protocol::Kv, t1)).count();
        assert_eq!(admitted, 5);
        // A long quiet spell refills to the burst, no more.
        let t2 = t1 + Duration::from_secs(60);
        let admitted = (0..20).filter(|_| limiter.admit(peer, Protocol::Kv, t2)).count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn protocols_and_peers_have_buckets_of_their_own() {
        let mut limiter = RateLimiter::new(1, 2, 16);
        let (a, b) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        assert!(limiter.admit(a, Protocol::Kv, now) && limiter.admit(a, Protocol::Kv, now));
        assert!(!limiter.admit(a, Protocol::Kv, now));
        assert!(limiter.admit(a, Protocol::Ring, now), "another protocol's bucket is full");
        assert!(limiter.admit(b, Protocol::Kv, now), "another peer's bucket is full");
    }

    #[test]
    fn the_map_stays_bounded_and_forgets_the_least_recent_peer() {
        let mut limiter = RateLimiter::new(1, 1, 3);
        let t0 = Instant::now();
        let peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        for (i, peer) in peers.iter().enumerate() {
            assert!(limiter.admit(*peer, Protocol::Ring, t0 + Duration::from_millis(i as u64)));
        }
        // peers[0] is the least recent; a fourth peer pushes it out, and only it.
        let newcomer = PeerId::random();
        assert!(limiter.admit(newcomer, Protocol::Ring, t0 + Duration::from_millis(10)));
        assert_eq!(limiter.peers(), 3);
        let now = t0 + Duration::from_millis(11);
        assert!(!limiter.admit(peers[2], Protocol::Ring, now), "still remembered, bucket empty");
        for _ in 0..1000 {
            limiter.admit(PeerId::random(), Protocol::Ring, now);
        }
        assert_eq!(limiter.peers(), 3);
    }

    #[test]
    fn default_limits_hold_a_64_node_ring() {
        let limits = PeerLimits::default();
        assert!(limits.max_connections >= 64 * 4);
        assert!(limits.max_connections_per_peer >= 2, "simultaneous dials make two");
        assert!(limits.request_rate >= 2500 && limits.request_burst >= limits.request_rate);
    }
}
