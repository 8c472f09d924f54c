//! The coordinator's settings ([`KvConfig`]): replication, limits, time-outs and the switches
//! that exist only to measure what a rule is for.

use std::time::Duration;

/// Settings of the coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvConfig {
    /// n: copies of each key (the owner and its next n − 1 successors). Default 3.
    pub replicas: usize,
    /// Largest value accepted. Default 1 MiB.
    pub max_value_bytes: usize,
    /// How long a client operation may take before it fails. Default 5 s.
    pub op_timeout: Duration,
    /// How long to wait for one peer's answer. Default 1 s.
    pub request_timeout: Duration,
    /// Period of anti-entropy rounds. Default 3 s.
    pub sync_interval: Duration,
    /// Longest a leave's hand-off may take. Default 5 s.
    pub handoff_timeout: Duration,
    /// How many times a write is re-versioned after replicas refused it as older than what they
    /// hold, before it fails. Default 8.
    pub max_write_attempts: u32,
    /// How many times one replica is asked within one client operation when its answer does not
    /// come (a time-out, a dropped connection): the first request and up to `replica_tries − 1`
    /// resends, each after a short pause and only while the operation's deadline leaves room.
    /// A replica that is merely slow (a long fsync, a busy host) then costs a write one resend
    /// instead of its quorum. Resending is safe: the record keeps its version, and a replica that
    /// already stored it answers "stored". Default 3.
    pub replica_tries: u32,
    /// Whether a replica's refusal of an older write makes the writer pass the newer version and
    /// write again (default). `false` counts the refusal as an acknowledgement: plain
    /// last-writer-wins by the writers' clocks, which loses acknowledged writes to slower clocks.
    /// It exists to measure that difference; never turn it off in a real deployment.
    pub ordered_writes: bool,
    /// Whether replicas keep compare-and-set promises (default). `false` makes every prepare
    /// succeed without recording anything, so two compare-and-sets can both decide on one state:
    /// it exists to show that the promises are what makes compare-and-set exact. Never turn it
    /// off in a real deployment.
    pub keep_promises: bool,
    /// How far ahead of this node's wall clock a peer's version (a record's or a ballot's) may
    /// be; anything further is refused and counted ([`KvCounters::rejected_future`]). Such a
    /// version would pin its key (every later honest write is older) and drag the clock of every
    /// node that observes it along. Default 5 minutes: well above the clock differences honest
    /// nodes are tested with (up to 30 s, `--clock-skew-ms` in the simulator and
    /// `--clock-offset-ms` end to end), so that a slow node never refuses a fast one's writes,
    /// and small enough that a key can be pinned for minutes at most, not forever.
    pub max_future_skew: Duration,
    /// Period of the sweeps that move stray copies (records of keys this node no longer
    /// replicates) to their replica set and drop them ([`stray`]). Default 30 s, and 2 s after
    /// the ring around this node changed. `None` never sweeps: it exists to show what strays
    /// cost (acknowledged writes left where no read finds them after a partition heals); never
    /// turn it off in a real deployment.
    pub stray_interval: Option<Duration>,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            replicas: 3,
            max_value_bytes: crate::store::DEFAULT_MAX_VALUE_BYTES,
            op_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(1),
            sync_interval: Duration::from_secs(3),
            handoff_timeout: Duration::from_secs(5),
            max_write_attempts: 8,
            replica_tries: 3,
            ordered_writes: true,
            keep_promises: true,
            max_future_skew: Duration::from_secs(300),
            stray_interval: Some(Duration::from_secs(30)),
        }
    }
}
