//! Tunables of one node's Chord core, with documented defaults and validation.

use std::num::NonZeroUsize;
use std::time::Duration;

use thiserror::Error;

/// Configuration of a [`crate::Node`]. Build with [`Config::default`] and the `with_*` setters,
/// then [`Config::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Length r of the successor list. Default 8. A node stays connected while fewer than r of
    /// its successors fail between two stabilizations; choose r ≥ log2 N.
    pub successors: NonZeroUsize,
    /// How often a node asks its successor for its predecessor and list. Default 1 s.
    pub stabilize_interval: Duration,
    /// How often a node starts one finger-refresh lookup. A full round touches only the ~log2 N
    /// distinct fingers. Default 1 s.
    pub fix_fingers_interval: Duration,
    /// How often a node checks its predecessor. It pings only a predecessor it has not heard from
    /// within this period or `max_stabilize_interval` (plus one `rpc_timeout`): a live
    /// predecessor's stabilize requests show it is alive, so a ring at rest sends no pings.
    /// Default 2 s.
    pub check_predecessor_interval: Duration,
    /// Longest stabilize period of a node whose neighbourhood stays unchanged. The period starts at
    /// `stabilize_interval` and doubles after each round up to this bound; any sign of change (a
    /// failed request, a new predecessor or successor, a changed successor list, a notify from a
    /// new node, a join) brings it back to `stabilize_interval` at once. It bounds how long a
    /// crashed successor goes unnoticed at rest, so it trades idle messages against repair time.
    /// A value at or below `stabilize_interval` means no back-off. Default 2 s: a crashed
    /// successor is then noticed within 2 s plus one request's attempts, so a SIGKILLed node's
    /// neighbours repair within about 4 s. (Backing off used to lose acknowledged writes across a
    /// partition: the deeper entries of successor lists caught up one backed-off round per hop,
    /// and a quorum read through a stale list asked nodes that were not the key's replicas. A
    /// changed list is now pushed to the predecessor, `Request::SuccessorsChanged`.) At most
    /// [`MAX_BACKOFF_INTERVAL`].
    pub max_stabilize_interval: Duration,
    /// Longest finger-refresh period of a node whose fingers keep checking out. A finger is
    /// checked with one request (is its start still between the finger's predecessor and the
    /// finger?) and looked up only when that check fails; each full round of the distinct fingers
    /// that all pass doubles the period, from `fix_fingers_interval` up to this bound, and a
    /// failing check or any change of neighbours
    /// resets it. A value at or below `fix_fingers_interval` means no back-off. Default 2 s, not
    /// more: multicast publishes are routed along fingers without a reply per hop, and with
    /// fingers backing off to 4 s or more, `dht/tests/multicast.rs` (30 % of the forwarders
    /// crashing) saw publishes time out (BENCHMARKS.md, issue 17). At most
    /// [`MAX_BACKOFF_INTERVAL`].
    pub max_fix_fingers_interval: Duration,
    /// How long to wait for a reply to one transmission of a request. Default 300 ms.
    pub rpc_timeout: Duration,
    /// How many times a request is sent (same id, every `rpc_timeout`) before the peer is treated
    /// as unreachable. Requests are idempotent, so a lost message costs a resend, not a false
    /// failure. Default 3: a peer is declared unreachable after about 0.9 s.
    pub request_attempts: u32,
    /// Most routing steps one lookup may take before it fails with
    /// [`crate::LookupError::TooManyHops`]. Default 32.
    pub max_lookup_hops: u32,
    /// Longest one lookup may run before it fails with [`crate::LookupError::TimedOut`]. Default 10 s.
    pub lookup_timeout: Duration,
    /// How many closer nodes a routing reply offers, best first, so that the asker can fall back
    /// when one is dead. Default 3.
    pub route_candidates: NonZeroUsize,
    /// Most lookups one node runs at once; further ones fail at once with
    /// [`crate::LookupError::Overloaded`]. Default 1024.
    pub max_concurrent_lookups: usize,
    /// How long a joining node keeps retrying before [`crate::Event::JoinFailed`]. Default 30 s.
    pub join_timeout: Duration,
    /// How long a range an owner vouched for in a lookup may answer
    /// [`crate::Node::cached_replicas`] without a new lookup; zero disables the cache.
    /// Default 5 s.
    pub lookup_cache_ttl: Duration,
    /// Whether a lookup refuses ownership claims that contradict what it knows (issue 11; see
    /// [`crate::lookup`]): a claimant with a known member between the target and it, or whose
    /// claimed range does not hold the target, is skipped as a liar. Default off: on, it keeps
    /// 100 % of honest lookups correct with 10 % lying nodes and changes nothing measurable on
    /// honest rings in the simulator (BENCHMARKS.md, "Byzantine lookups"), but end to end, with a
    /// node killed and restarted under load (`tests/tests/clock_skew.rs`), one quorum read per
    /// run returns the value before an acknowledged write (4 runs of 4; none of 3 with it off):
    /// lookups that refuse honest but stale claims while the ring changes end at other replica
    /// sets. Not diagnosed further yet.
    pub check_ownership_claims: bool,
    /// Most peers a node remembers after declaring them dead (successors, predecessor, fingers
    /// that stopped answering), to probe later in case a network partition rather than a crash
    /// took them away; the oldest is evicted first. Zero turns probing off (a partition then heals only where
    /// merge requests reach). Default 32.
    pub passive_peers: usize,
    /// How often a node probes one remembered peer: every `probe_interval` to 2 × `probe_interval`
    /// (drawn from the node's seeded generator). A peer that does not answer is probed again only
    /// after a delay that doubles with each miss, up to `probe_backoff_max`. Default 5 s.
    pub probe_interval: Duration,
    /// Longest wait between two probes of the same unanswering peer. Default 60 s.
    pub probe_backoff_max: Duration,
    /// How long a peer declared dead is remembered. A partition that lasts longer heals only
    /// through the driver (bootstrap addresses). Default 10 min.
    pub passive_ttl: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            successors: NonZeroUsize::new(8).expect("8 is non-zero"),
            stabilize_interval: Duration::from_secs(1),
            fix_fingers_interval: Duration::from_secs(1),
            check_predecessor_interval: Duration::from_secs(2),
            max_stabilize_interval: Duration::from_secs(2),
            max_fix_fingers_interval: Duration::from_secs(2),
            rpc_timeout: Duration::from_millis(300),
            request_attempts: 3,
            max_lookup_hops: 32,
            lookup_timeout: Duration::from_secs(10),
            route_candidates: NonZeroUsize::new(3).expect("3 is non-zero"),
            max_concurrent_lookups: 1024,
            join_timeout: Duration::from_secs(30),
            lookup_cache_ttl: Duration::from_secs(5),
            check_ownership_claims: false,
            passive_peers: 32,
            probe_interval: Duration::from_secs(5),
            probe_backoff_max: Duration::from_secs(60),
            passive_ttl: Duration::from_secs(600),
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The successor list must hold at least two entries to survive one failure.
    #[error("the successor list needs at least 2 entries, got {0}")]
    SuccessorListTooShort(usize),
    /// The successor list is bounded so messages stay small.
    #[error("the successor list may hold at most {max} entries, got {got}")]
    SuccessorListTooLong {
        /// The configured length.
        got: usize,
        /// The largest accepted length.
        max: usize,
    },
    /// A period or timeout of zero would spin.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// Requests are sent between 1 and 10 times.
    #[error("request_attempts must lie in 1..=10, got {0}")]
    RequestAttempts(u32),
    /// All attempts of one request must fit within one lookup.
    #[error("rpc_timeout × request_attempts ({rpc:?}) must be shorter than lookup_timeout ({lookup:?})")]
    RpcTimeoutTooLong {
        /// The time all attempts of one request take.
        rpc: Duration,
        /// The whole lookup's timeout.
        lookup: Duration,
    },
    /// A lookup must be allowed at least one step.
    #[error("max_lookup_hops must be at least 1")]
    NoHops,
    /// A back-off bound beyond [`MAX_BACKOFF_INTERVAL`] would leave failures unnoticed for minutes.
    #[error("{name} may be at most {max:?}, got {got:?}")]
    BackoffTooLong {
        /// Which setting.
        name: &'static str,
        /// The configured bound.
        got: Duration,
        /// The largest accepted bound.
        max: Duration,
    },
    /// The passive list is bounded so that one alarm costs a bounded burst of probes.
    #[error("passive_peers may be at most {max}, got {got}")]
    TooManyPassivePeers {
        /// The configured size.
        got: usize,
        /// The largest accepted size.
        max: usize,
    },
}

/// Upper bound on the successor list (and so on lists in messages).
pub const MAX_SUCCESSORS: usize = 64;

/// Upper bound on [`Config::max_stabilize_interval`] and [`Config::max_fix_fingers_interval`].
pub const MAX_BACKOFF_INTERVAL: Duration = Duration::from_secs(300);

/// Upper bound on [`Config::passive_peers`].
pub const MAX_PASSIVE_PEERS: usize = 256;

impl Config {
    /// Sets the successor-list length r.
    pub fn with_successors(mut self, r: NonZeroUsize) -> Self {
        self.successors = r;
        self
    }
    /// Sets the stabilize period.
    pub fn with_stabilize_interval(mut self, d: Duration) -> Self {
        self.stabilize_interval = d;
        self
    }
    /// Sets the finger-refresh period.
    pub fn with_fix_fingers_interval(mut self, d: Duration) -> Self {
        self.fix_fingers_interval = d;
        self
    }
    /// Sets the predecessor-check period.
    pub fn with_check_predecessor_interval(mut self, d: Duration) -> Self {
        self.check_predecessor_interval = d;
        self
    }
    /// Sets the longest stabilize period at rest (see [`Config::max_stabilize_interval`]).
    pub fn with_max_stabilize_interval(mut self, d: Duration) -> Self {
        self.max_stabilize_interval = d;
        self
    }
    /// Sets the longest finger-refresh period at rest (see [`Config::max_fix_fingers_interval`]).
    pub fn with_max_fix_fingers_interval(mut self, d: Duration) -> Self {
        self.max_fix_fingers_interval = d;
        self
    }
    /// The stabilize period at rest in force: [`Config::max_stabilize_interval`], but never below
    /// [`Config::stabilize_interval`].
    pub fn stabilize_backoff_max(&self) -> Duration {
        self.max_stabilize_interval.max(self.stabilize_interval)
    }
    /// The finger-refresh period at rest in force: [`Config::max_fix_fingers_interval`], but never
    /// below [`Config::fix_fingers_interval`].
    pub fn fix_fingers_backoff_max(&self) -> Duration {
        self.max_fix_fingers_interval.max(self.fix_fingers_interval)
    }
    /// Sets the per-transmission timeout.
    pub fn with_rpc_timeout(mut self, d: Duration) -> Self {
        self.rpc_timeout = d;
        self
    }
    /// Sets how many times a request is sent before its peer counts as unreachable.
    pub fn with_request_attempts(mut self, attempts: u32) -> Self {
        self.request_attempts = attempts;
        self
    }
    /// Sets the hop bound of a lookup.
    pub fn with_max_lookup_hops(mut self, hops: u32) -> Self {
        self.max_lookup_hops = hops;
        self
    }
    /// Sets the overall lookup timeout.
    pub fn with_lookup_timeout(mut self, d: Duration) -> Self {
        self.lookup_timeout = d;
        self
    }
    /// Sets how long vouched-for ranges are remembered (zero: not at all).
    pub fn with_lookup_cache_ttl(mut self, d: Duration) -> Self {
        self.lookup_cache_ttl = d;
        self
    }
    /// Sets whether lookups refuse inconsistent ownership claims.
    pub fn with_check_ownership_claims(mut self, on: bool) -> Self {
        self.check_ownership_claims = on;
        self
    }
    /// Sets how many peers declared dead are remembered for probing (zero: none).
    pub fn with_passive_peers(mut self, n: usize) -> Self {
        self.passive_peers = n;
        self
    }
    /// Sets the base period of probes of peers declared dead.
    pub fn with_probe_interval(mut self, d: Duration) -> Self {
        self.probe_interval = d;
        self
    }
    /// Sets the longest wait between two probes of the same unanswering peer.
    pub fn with_probe_backoff_max(mut self, d: Duration) -> Self {
        self.probe_backoff_max = d;
        self
    }
    /// Sets how long a peer declared dead is remembered.
    pub fn with_passive_ttl(mut self, d: Duration) -> Self {
        self.passive_ttl = d;
        self
    }
    /// Sets the join timeout.
    pub fn with_join_timeout(mut self, d: Duration) -> Self {
        self.join_timeout = d;
        self
    }

    /// Checks that the configuration can work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let r = self.successors.get();
        if r < 2 {
            return Err(ConfigError::SuccessorListTooShort(r));
        }
        if r > MAX_SUCCESSORS {
            return Err(ConfigError::SuccessorListTooLong { got: r, max: MAX_SUCCESSORS });
        }
        for (name, d) in [
            ("stabilize_interval", self.stabilize_interval),
            ("fix_fingers_interval", self.fix_fingers_interval),
            ("check_predecessor_interval", self.check_predecessor_interval),
            ("max_stabilize_interval", self.max_stabilize_interval),
            ("max_fix_fingers_interval", self.max_fix_fingers_interval),
            ("rpc_timeout", self.rpc_timeout),
            ("lookup_timeout", self.lookup_timeout),
            ("join_timeout", self.join_timeout),
            ("probe_interval", self.probe_interval),
            ("probe_backoff_max", self.probe_backoff_max),
            ("passive_ttl", self.passive_ttl),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        for (name, got) in [
            ("max_stabilize_interval", self.max_stabilize_interval),
            ("max_fix_fingers_interval", self.max_fix_fingers_interval),
        ] {
            if got > MAX_BACKOFF_INTERVAL {
                return Err(ConfigError::BackoffTooLong { name, got, max: MAX_BACKOFF_INTERVAL });
            }
        }
        if self.request_attempts == 0 || self.request_attempts > 10 {
            return Err(ConfigError::RequestAttempts(self.request_attempts));
        }
        if self.rpc_timeout * self.request_attempts >= self.lookup_timeout {
            return Err(ConfigError::RpcTimeoutTooLong {
                rpc: self.rpc_timeout * self.request_attempts,
                lookup: self.lookup_timeout,
            });
        }
        if self.max_lookup_hops == 0 {
            return Err(ConfigError::NoHops);
        }
        if self.passive_peers > MAX_PASSIVE_PEERS {
            return Err(ConfigError::TooManyPassivePeers { got: self.passive_peers, max: MAX_PASSIVE_PEERS });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn rejects_unworkable_settings() {
        let one = NonZeroUsize::new(1).expect("non-zero");
        assert_eq!(
            Config::default().with_successors(one).validate(),
            Err(ConfigError::SuccessorListTooShort(1))
        );
        assert_eq!(
            Config::default().with_stabilize_interval(Duration::ZERO).validate(),
            Err(ConfigError::ZeroDuration("stabilize_interval"))
        );
        assert!(matches!(
            Config::default().with_rpc_timeout(Duration::from_secs(60)).validate(),
            Err(ConfigError::RpcTimeoutTooLong { .. })
        ));
        assert_eq!(Config::default().with_max_lookup_hops(0).validate(), Err(ConfigError::NoHops));
        assert_eq!(
            Config::default().with_max_stabilize_interval(Duration::ZERO).validate(),
            Err(ConfigError::ZeroDuration("max_stabilize_interval"))
        );
        assert!(matches!(
            Config::default().with_max_fix_fingers_interval(Duration::from_secs(3600)).validate(),
            Err(ConfigError::BackoffTooLong { name: "max_fix_fingers_interval", .. })
        ));
    }

    #[test]
    fn a_back_off_bound_below_the_base_period_means_no_back_off() {
        let config = Config::default()
            .with_stabilize_interval(Duration::from_secs(5))
            .with_max_stabilize_interval(Duration::from_secs(2));
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.stabilize_backoff_max(), Duration::from_secs(5));
    }
}
