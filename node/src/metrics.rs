//! The node's metrics: what the driver counts itself, the snapshot the event loop builds when
//! `/metrics` asks, and that snapshot's exposition in the OpenMetrics text format (through
//! `prometheus-client`, the library libp2p's own metrics use).
//!
//! Owns: [`DriverCounters`] (plain integers only the loop writes: the lookups it asked for and
//! their hops, the inputs the driver itself rejected, what the peer limits of [`crate::limits`]
//! refused), [`SwarmMetrics`] (libp2p's own metrics of
//! the swarm, identify, ping and the transport's bytes), [`Snapshot`] and [`render`].
//!
//! Invariants:
//! - Nothing here is shared between tasks. The handler asks the loop for a [`Snapshot`] through
//!   the command channel, like every other handler, and encodes it on its own task. The one
//!   count the loop never sees, of API requests refused for want of the token, the handler adds
//!   to the snapshot itself ([`ApiRefusals`], read from the HTTP layer's atomics), so that a flood
//!   of unauthenticated requests costs the loop nothing.
//! - Each counter keeps its source. The cores' counters ([`dht::Counters`], [`KvCounters`],
//!   [`MulticastCounters`]) are copied as they are, and none is added to the driver's or to another
//!   core's: where one metric gathers several sources, a `source` label keeps them apart
//!   (`overlay_rejected_inputs_total{kind="invalid",source="ring"}`), and a scraper sums them if
//!   it wants the total.
//! - libp2p's series (`libp2p_*`) live in a `prometheus-client` registry that libp2p's recorders
//!   write into; the loop owns it with the swarm and encodes it into the snapshot, so that
//!   registry too is never touched from another task.

use std::fmt;

use dht::kv::KvCounters;
use dht::multicast::MulticastCounters;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::limits::{Protocol, Refusal, Refusals};
use crate::storage::StorageStats;

/// libp2p's metrics of this node's swarm: connections (incoming, established, closed, with their
/// durations), dial and listen errors, the protocols peers announce (identify), ping round-trip
/// times, and bytes in and out per transport stack.
pub struct SwarmMetrics {
    /// Where libp2p's metrics write; it also holds the transport's byte counters, registered when
    /// the swarm was built.
    registry: Registry,
    recorder: libp2p::metrics::Metrics,
}

impl SwarmMetrics {
    /// libp2p's recorders, registered in `registry` beside what is already there.
    pub fn new(mut registry: Registry) -> Self {
        let recorder = libp2p::metrics::Metrics::new(&mut registry);
        SwarmMetrics { registry, recorder }
    }

    /// Records a swarm event, or an identify or ping event.
    pub fn record<E>(&self, event: &E)
    where
        libp2p::metrics::Metrics: libp2p::metrics::Recorder<E>,
    {
        libp2p::metrics::Recorder::record(&self.recorder, event);
    }

    /// libp2p's series in the OpenMetrics text format, without the closing `# EOF`.
    fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        encode_registry(&mut out, &self.registry).expect("encoding into a String cannot fail");
        out
    }
}

impl fmt::Debug for SwarmMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwarmMetrics").field("registry", &self.registry).finish_non_exhaustive()
    }
}

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the lookup-hops histogram buckets (a last bucket, `+Inf`, takes the rest).
const HOP_BUCKETS: [u64; 8] = [0, 1, 2, 3, 4, 6, 8, 12];

/// Hops taken by the lookups that succeeded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HopHistogram {
    /// Lookups per bucket (not cumulative); the last is `+Inf`.
    buckets: [u64; HOP_BUCKETS.len() + 1],
    /// Hops summed.
    sum: u64,
}

impl HopHistogram {
    /// Records one lookup of `hops` hops.
    pub fn observe(&mut self, hops: u32) {
        let hops = u64::from(hops);
        let i = HOP_BUCKETS.iter().position(|&bound| hops <= bound).unwrap_or(HOP_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += hops;
    }

    fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// Inputs rejected, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rejections {
    /// Undecodable or oversized frames, failed handshakes.
    pub malformed: u64,
    /// Well-formed but dishonest: forged ids, impossible routing entries, corrupt records, an
    /// envelope naming someone other than the authenticated sender.
    pub invalid: u64,
    /// Responses to no outstanding request.
    pub unexpected: u64,
}

impl std::ops::Add for Rejections {
    type Output = Rejections;

    fn add(self, other: Rejections) -> Rejections {
        Rejections {
            malformed: self.malformed + other.malformed,
            invalid: self.invalid + other.invalid,
            unexpected: self.unexpected + other.unexpected,
        }
    }
}

/// What the driver counts itself, as opposed to what the cores count. Only the event loop
/// writes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriverCounters {
    /// Hops of the lookups the driver started that succeeded (for clients, tree walks, ring
    /// walks; the ring core's maintenance lookups are in [`dht::Counters`]).
    pub lookup_hops: HopHistogram,
    /// Lookups the driver started that failed.
    pub lookups_failed: u64,
    /// Inputs the driver rejected before any core saw them (framing, envelopes, libp2p
    /// responses matching nothing, failed handshakes), over all protocols.
    pub rejected: Rejections,
    /// Connections the connection limits refused ([`crate::limits::PeerLimits`]).
    pub connections_denied: ConnectionsDenied,
    /// Peers' requests refused by their rate limit or a full storage queue.
    pub peer_refused: Refusals,
    /// Clients' writes refused (503) because the storage queue was nearly full.
    pub client_writes_busy: u64,
}

/// Connections refused by the connection limits, by direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionsDenied {
    /// Connections a peer opened to this node.
    pub inbound: u64,
    /// Dials of this node.
    pub outbound: u64,
}

/// HTTP API requests refused for want of the right bearer token, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApiRefusals {
    /// No `Authorization` header.
    pub missing: u64,
    /// An `Authorization` header that is not `Bearer TOKEN`.
    pub malformed: u64,
    /// A bearer token that is not this node's.
    pub wrong: u64,
}

/// The HTTP server's open connections and event streams and what its bounds refused
/// ([`crate::serve::Limits`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpLoad {
    /// Connections open now.
    pub connections_open: u64,
    /// Connections closed at accept because the bound was reached.
    pub connections_refused: u64,
    /// Server-sent event streams (group listeners) open now.
    pub listeners_open: u64,
    /// Event streams refused (503) because the bound was reached.
    pub listeners_refused: u64,
}

/// Everything `/metrics` shows, copied by the event loop at one instant.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The ring core's counters.
    pub ring: dht::Counters,
    /// The store coordinator's counters.
    pub kv: KvCounters,
    /// The multicast core's counters.
    pub multicast: MulticastCounters,
    /// The record store's statistics.
    pub storage: StorageStats,
    /// The driver's own counters.
    pub driver: DriverCounters,
    /// libp2p's series, already encoded (see [`SwarmMetrics`]).
    pub swarm: String,
    /// Filled in by the HTTP handler, not the loop (zero from [`Snapshot::new`]).
    pub api_refused: ApiRefusals,
    /// Filled in by the HTTP handler, not the loop (zero from [`Snapshot::new`]).
    pub http: HttpLoad,
    /// The queues' counters and the queue store's figures (zero from [`Snapshot::new`]; the
    /// loop fills them in).
    pub queues: QueueMetrics,
}

/// What `/metrics` shows of the queues.
#[derive(Clone, Debug, Default)]
pub struct QueueMetrics {
    /// The queue core's counters.
    pub counters: dht::queue::QueueCounters,
    /// Queues held (ordered or replicated) here.
    pub held: u64,
    /// Queue listeners (notify streams) attached.
    pub listeners: u64,
    /// Changes made durable in the queue store, and the transactions that did it.
    pub persisted: u64,
    /// Transactions of the queue store.
    pub commits: u64,
    /// Rows of the queue store that did not decode at start.
    pub corrupt_rows: u64,
}

impl Snapshot {
    /// The driver's and the cores' counters, with libp2p's series encoded from `swarm`.
    pub fn new(
        ring: dht::Counters,
        kv: KvCounters,
        multicast: MulticastCounters,
        storage: StorageStats,
        driver: DriverCounters,
        swarm: &SwarmMetrics,
    ) -> Self {
        let swarm = swarm.encode();
        Snapshot {
            ring,
            kv,
            multicast,
            storage,
            driver,
            swarm,
            api_refused: ApiRefusals::default(),
            queues: QueueMetrics::default(),
            http: HttpLoad::default(),
        }
    }
}

/// The exposition of `snapshot`, in the OpenMetrics text format ([`CONTENT_TYPE`]).
pub fn render(mut snapshot: Snapshot) -> String {
    let swarm = std::mem::take(&mut snapshot.swarm);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::with_capacity(16 * 1024 + swarm.len());
    // The text encoder fails only when its writer does, and writing to a String cannot fail.
    encode_registry(&mut out, &registry).expect("encoding into a String cannot fail");
    out.push_str(&swarm);
    encode_eof(&mut out).expect("encoding into a String cannot fail");
    out
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        let Snapshot { ring, kv, multicast: mc, storage, driver, swarm: _, api_refused, http, queues } = self;

        // The driver's own view of lookups.
        counter(
            e,
            "overlay_lookups_failed",
            "Lookups this node started that ended with an error.",
            driver.lookups_failed,
        )?;
        let hops = &driver.lookup_hops;
        let buckets: Vec<(f64, u64)> =
            HOP_BUCKETS.iter().map(|&bound| bound as f64).chain([f64::INFINITY]).zip(hops.buckets).collect();
        e.encode_descriptor(
            "overlay_lookup_hops",
            "Hops taken by successful lookups this node started.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(hops.sum as f64, hops.count(), &buckets, None)?;

        // Rejections, by kind and by who rejected them.
        let ring_rejected = Rejections {
            malformed: 0,
            invalid: ring.dropped_invalid + ring.dropped_wrong_sender + ring.dropped_protocol_violation,
            unexpected: ring.dropped_unknown_response,
        };
        let kv_rejected = Rejections {
            malformed: 0,
            invalid: kv.rejected_invalid + kv.rejected_future,
            unexpected: kv.rejected_unexpected,
        };
        let mc_rejected = Rejections {
            malformed: 0,
            invalid: mc.dropped_invalid + mc.dropped_unauthorized,
            unexpected: mc.dropped_unexpected,
        };
        let mut rejected = Vec::new();
        // The cores only ever see decoded messages: `malformed` is the driver's alone.
        rejected.push(([("kind", "malformed"), ("source", "node")], driver.rejected.malformed));
        for (source, r) in [
            ("node", driver.rejected),
            ("ring", ring_rejected),
            ("kv", kv_rejected),
            ("multicast", mc_rejected),
        ] {
            rejected.push(([("kind", "invalid"), ("source", source)], r.invalid));
            rejected.push(([("kind", "unexpected"), ("source", source)], r.unexpected));
        }
        family(
            e,
            "overlay_rejected_inputs",
            "Inputs from the network that were rejected, by kind, and by source: the node itself \
             (framing, envelopes, responses matching no libp2p request, failed handshakes) or the \
             ring, kv or multicast core.",
            &rejected,
        )?;

        family(
            e,
            "overlay_connections_denied",
            "p2p connections refused because a connection limit was reached (--max-connections, \
             --max-connections-per-peer, --max-pending-incoming, --max-pending-outgoing), by \
             direction.",
            &[
                ([("direction", "inbound")], driver.connections_denied.inbound),
                ([("direction", "outbound")], driver.connections_denied.outbound),
            ],
        )?;
        let mut refused = Vec::new();
        for protocol in Protocol::ALL {
            for reason in Refusal::ALL {
                refused.push((
                    [("protocol", protocol.label()), ("reason", reason.label())],
                    driver.peer_refused.get(protocol, reason),
                ));
            }
        }
        family(
            e,
            "overlay_peer_requests_refused",
            "Peers' requests refused before any core saw them, by protocol (ring, kv, group) and \
             reason: rate (past --peer-request-rate and --peer-request-burst), node_rate (all peers \
             together past --node-request-rate and --node-request-burst) or busy (the storage \
             queue was full).",
            &refused,
        )?;

        counter(
            e,
            "overlay_client_writes_refused_busy",
            "Clients' writes (puts, deletes, compare-and-sets) refused with 503 before they \
             started because the storage queue was nearly full.",
            driver.client_writes_busy,
        )?;

        family(
            e,
            "overlay_api_requests_refused",
            "HTTP API requests refused (401) for want of the right bearer token, by reason: none \
             given, an Authorization header that is not Bearer TOKEN, or a wrong token.",
            &[
                ([("reason", "missing")], api_refused.missing),
                ([("reason", "malformed")], api_refused.malformed),
                ([("reason", "wrong")], api_refused.wrong),
            ],
        )?;
        gauge(e, "overlay_http_connections_open", "HTTP API connections open.", http.connections_open)?;
        counter(
            e,
            "overlay_http_connections_refused",
            "HTTP API connections closed at once because --http-max-connections were open.",
            http.connections_refused,
        )?;
        gauge(
            e,
            "overlay_http_listeners_open",
            "Group message streams (server-sent events) open.",
            http.listeners_open,
        )?;
        counter(
            e,
            "overlay_http_listeners_refused",
            "Group message streams refused (503) because --max-listeners were open.",
            http.listeners_refused,
        )?;

        // The ring core.
        counter(e, "overlay_ring_messages_sent", "Ring protocol messages sent.", ring.messages_sent)?;
        counter(
            e,
            "overlay_ring_messages_received",
            "Ring protocol messages received and accepted.",
            ring.messages_received,
        )?;
        counter(
            e,
            "overlay_ring_requests_failed",
            "Ring requests that got no reply to any attempt, or could not be delivered.",
            ring.requests_failed,
        )?;
        counter(
            e,
            "overlay_ring_requests_resent",
            "Ring requests sent again after an attempt got no reply in time.",
            ring.requests_resent,
        )?;
        family(
            e,
            "overlay_ring_messages_dropped",
            "Ring messages the ring core dropped, by reason (late responses and refusals while not a member are harmless).",
            &[
                ([("reason", "invalid")], ring.dropped_invalid),
                ([("reason", "wrong_sender")], ring.dropped_wrong_sender),
                ([("reason", "protocol_violation")], ring.dropped_protocol_violation),
                ([("reason", "unknown_response")], ring.dropped_unknown_response),
                ([("reason", "late_response")], ring.late_responses),
                ([("reason", "not_member")], ring.refused),
            ],
        )?;
        family(
            e,
            "overlay_ring_lookups",
            "Lookups the ring core ran (maintenance lookups included), by outcome.",
            &[
                ([("outcome", "started")], ring.lookups_started),
                ([("outcome", "succeeded")], ring.lookups_succeeded),
                ([("outcome", "failed")], ring.lookups_failed),
            ],
        )?;

        // The store coordinator.
        counter(e, "overlay_kv_requests_sent", "Storage requests sent to peers.", kv.requests_out)?;
        counter(e, "overlay_kv_requests_received", "Storage requests received from peers.", kv.requests_in)?;
        counter(
            e,
            "overlay_read_repairs",
            "Records pushed to stale replicas during reads.",
            kv.read_repairs,
        )?;
        counter(e, "overlay_sync_pushed", "Records pushed by anti-entropy.", kv.sync_pushed)?;
        counter(e, "overlay_sync_pulled", "Records pulled by anti-entropy.", kv.sync_pulled)?;
        counter(
            e,
            "overlay_quorum_failures",
            "Client operations that could not reach a quorum.",
            kv.quorum_failures,
        )?;
        counter(
            e,
            "overlay_write_retries",
            "Writes sent again under a newer version because a replica held a newer one.",
            kv.write_retries,
        )?;
        counter(
            e,
            "overlay_replica_resends",
            "Requests of client operations sent again to a replica whose answer did not come.",
            kv.replica_resends,
        )?;
        counter(
            e,
            "overlay_kv_lookup_retries",
            "Lookups of client operations started again after one found no route, or after a replica \
             said the key is outside its range.",
            kv.lookup_retries,
        )?;
        counter(
            e,
            "overlay_kv_writes_out_of_range",
            "Peers' writes refused because the key lies outside this node's replica range.",
            kv.rejected_out_of_range,
        )?;
        counter(
            e,
            "overlay_kv_handoff_pushed",
            "Records pushed to successors while leaving.",
            kv.handoff_pushed,
        )?;
        counter(e, "overlay_kv_store_failures", "Store operations that failed.", kv.store_failures)?;
        family(
            e,
            "overlay_kv_stray_records",
            "Copies of keys this node does not replicate: found by sweeps, moved to (acknowledged by) \
             their whole replica set, then removed here.",
            &[
                ([("stage", "found")], kv.stray_found),
                ([("stage", "moved")], kv.stray_moved),
                ([("stage", "removed")], kv.stray_removed),
            ],
        )?;
        counter(e, "overlay_kv_stray_sweeps", "Sweeps for stray copies started.", kv.stray_sweeps)?;

        // The record store.
        gauge(e, "overlay_stored_keys", "Live keys stored on this node.", storage.keys)?;
        gauge(e, "overlay_stored_bytes", "Value bytes stored on this node.", storage.bytes)?;
        gauge(e, "overlay_stored_tombstones", "Tombstones held on this node.", storage.tombstones)?;
        counter(
            e,
            "overlay_corrupt_reads",
            "Stored records that failed their checksum.",
            storage.corrupt_reads,
        )?;

        // The multicast core.
        counter(e, "overlay_group_messages_sent", "Multicast protocol messages sent.", mc.messages_sent)?;
        counter(
            e,
            "overlay_group_messages_received",
            "Multicast protocol messages received and accepted.",
            mc.messages_received,
        )?;
        counter(
            e,
            "overlay_group_data_sent",
            "Stamped multicast messages sent down group trees.",
            mc.data_sent,
        )?;
        family(
            e,
            "overlay_group_messages_dropped",
            "Multicast messages the multicast core dropped, by reason.",
            &[
                ([("reason", "invalid")], mc.dropped_invalid),
                ([("reason", "unknown_group")], mc.dropped_unknown_group),
                ([("reason", "not_parent")], mc.dropped_not_parent),
                ([("reason", "unexpected")], mc.dropped_unexpected),
                ([("reason", "out_of_window")], mc.dropped_out_of_window),
                ([("reason", "unauthorized")], mc.dropped_unauthorized),
                ([("reason", "no_route")], mc.dropped_no_route),
                ([("reason", "not_member")], mc.dropped_not_member),
                ([("reason", "overload")], mc.dropped_overload),
            ],
        )?;
        family(
            e,
            "overlay_group_events",
            "What the multicast core did, by event (gap_messages counts the numbers reported missing).",
            &[
                ([("event", "duplicate")], mc.duplicates),
                ([("event", "gap")], mc.gaps),
                ([("event", "gap_messages")], mc.gap_messages),
                ([("event", "join_sent")], mc.joins_sent),
                ([("event", "parent_failure")], mc.parent_failures),
                ([("event", "detached_rejoin")], mc.detached_rejoins),
                ([("event", "cycle_broken")], mc.cycles_broken),
                ([("event", "child_expired")], mc.children_expired),
                ([("event", "redirect")], mc.redirects),
                ([("event", "fetch_sent")], mc.fetches_sent),
                ([("event", "publish_retry")], mc.publish_retries),
                ([("event", "publish_failed")], mc.publishes_failed),
                ([("event", "replication_retry")], mc.replication_retries),
                ([("event", "handoff")], mc.handoffs),
                ([("event", "takeover")], mc.takeovers),
                ([("event", "fresh_root")], mc.fresh_roots),
                ([("event", "duplicate_publish")], mc.duplicate_publishes),
                ([("event", "history_evicted_for_bytes")], mc.history_evicted_for_bytes),
            ],
        )?;

        // The queues.
        let q = &queues.counters;
        family(
            e,
            "overlay_queue_events",
            "What the queue core did, by event.",
            &[
                ([("event", "put")], q.puts),
                ([("event", "lease")], q.leases),
                ([("event", "lease_expired")], q.lease_expiries),
                ([("event", "ack")], q.acks),
                ([("event", "takeover")], q.takeovers),
                ([("event", "takeover_unsynced")], q.takeovers_unsynced),
                ([("event", "merged")], q.merged),
                ([("event", "replicated")], q.replicated),
                ([("event", "replica_expired")], q.replicas_expired),
                ([("event", "refusal")], q.refusals),
            ],
        )?;
        counter(
            e,
            "overlay_queue_messages_dropped",
            "Queue messages from peers dropped as malformed or unexpected.",
            q.dropped,
        )?;
        gauge(e, "overlay_queues_held", "Queues this node orders or replicates.", queues.held)?;
        gauge(e, "overlay_queue_listeners", "Queue notify streams attached.", queues.listeners)?;
        counter(e, "overlay_queue_changes_persisted", "Queue changes made durable.", queues.persisted)?;
        counter(e, "overlay_queue_store_commits", "Queue store transactions (each synced).", queues.commits)?;
        counter(
            e,
            "overlay_queue_store_corrupt_rows",
            "Queue store rows skipped at start.",
            queues.corrupt_rows,
        )?;
        Ok(())
    }
}

/// One counter without labels (the encoder appends `_total` to the sample's name).
fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    ConstCounter::new(value).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// One gauge without labels.
fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    ConstGauge::new(value).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// One counter with a series per label set.
fn family<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(L, u64)],
) -> fmt::Result {
    let mut metric = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            ring: dht::Counters::default(),
            kv: KvCounters::default(),
            multicast: MulticastCounters::default(),
            storage: StorageStats::default(),
            driver: DriverCounters::default(),
            swarm: String::new(),
            api_refused: ApiRefusals::default(),
            queues: QueueMetrics::default(),
            http: HttpLoad::default(),
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut s = snapshot();
        for hops in [0, 3, 20] {
            s.driver.lookup_hops.observe(hops);
        }
        let text = render(s);
        assert!(text.contains("overlay_lookup_hops_bucket{le=\"0.0\"} 1\n"), "{text}");
        assert!(text.contains("overlay_lookup_hops_bucket{le=\"3.0\"} 2\n"), "{text}");
        assert!(text.contains("overlay_lookup_hops_bucket{le=\"12.0\"} 2\n"), "{text}");
        assert!(text.contains("overlay_lookup_hops_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("overlay_lookup_hops_sum 23.0\n"), "{text}");
        assert!(text.contains("overlay_lookup_hops_count 3\n"), "{text}");
    }

    #[test]
    fn sources_stay_separate_series() {
        let mut s = snapshot();
        s.driver.rejected = Rejections { malformed: 2, invalid: 1, unexpected: 0 };
        s.ring.dropped_invalid = 4;
        s.ring.dropped_wrong_sender = 1;
        s.kv.rejected_invalid = 7;
        s.api_refused.wrong = 3;
        let text = render(s);
        for line in [
            "overlay_rejected_inputs_total{kind=\"malformed\",source=\"node\"} 2\n",
            "overlay_rejected_inputs_total{kind=\"invalid\",source=\"node\"} 1\n",
            "overlay_rejected_inputs_total{kind=\"invalid\",source=\"ring\"} 5\n",
            "overlay_rejected_inputs_total{kind=\"invalid\",source=\"kv\"} 7\n",
            "overlay_rejected_inputs_total{kind=\"invalid\",source=\"multicast\"} 0\n",
            "overlay_ring_messages_dropped_total{reason=\"invalid\"} 4\n",
            "overlay_api_requests_refused_total{reason=\"wrong\"} 3\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn peer_limits_refusals_have_a_series_each() {
        let mut s = snapshot();
        s.driver.connections_denied.inbound = 2;
        s.driver.peer_refused.count(Protocol::Kv, Refusal::Rate);
        s.driver.peer_refused.count(Protocol::Kv, Refusal::Busy);
        s.driver.peer_refused.count(Protocol::Ring, Refusal::Rate);
        s.driver.client_writes_busy = 5;
        s.multicast.history_evicted_for_bytes = 6;
        let text = render(s);
        for line in [
            "overlay_connections_denied_total{direction=\"inbound\"} 2\n",
            "overlay_connections_denied_total{direction=\"outbound\"} 0\n",
            "overlay_peer_requests_refused_total{protocol=\"kv\",reason=\"rate\"} 1\n",
            "overlay_peer_requests_refused_total{protocol=\"kv\",reason=\"busy\"} 1\n",
            "overlay_peer_requests_refused_total{protocol=\"ring\",reason=\"rate\"} 1\n",
            "overlay_peer_requests_refused_total{protocol=\"group\",reason=\"rate\"} 0\n",
            "overlay_client_writes_refused_busy_total 5\n",
            "overlay_group_events_total{event=\"history_evicted_for_bytes\"} 6\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn every_sample_has_a_number_and_the_exposition_ends_with_eof() {
        let text = render(snapshot());
        assert!(text.ends_with("# EOF\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
