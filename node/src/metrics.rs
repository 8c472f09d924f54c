//! Counters the node exports at `/metrics` in the Prometheus text format.
//!
//! The event loop owns the numbers; HTTP handlers read them through atomics, so scraping never
//! waits on the loop.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of the lookup-hops histogram buckets.
const HOP_BUCKETS: [u64; 8] = [0, 1, 2, 3, 4, 6, 8, 12];

/// The node's counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Lookups finished with an answer, and their hops.
    pub lookups_ok: AtomicU64,
    /// Lookups that failed.
    pub lookups_failed: AtomicU64,
    /// Sum of hops of successful lookups.
    pub lookup_hops_sum: AtomicU64,
    hop_buckets: [AtomicU64; HOP_BUCKETS.len()],
    /// Ring messages sent and received (from the core's counters).
    pub ring_messages_out: AtomicU64,
    /// Ring messages received and accepted.
    pub ring_messages_in: AtomicU64,
    /// Storage requests sent to peers.
    pub kv_requests_out: AtomicU64,
    /// Storage requests received from peers.
    pub kv_requests_in: AtomicU64,
    /// Records pushed to a stale replica on a read.
    pub read_repairs: AtomicU64,
    /// Records pushed by anti-entropy.
    pub sync_pushed: AtomicU64,
    /// Records pulled by anti-entropy.
    pub sync_pulled: AtomicU64,
    /// Inputs rejected: undecodable or oversized frames.
    pub rejected_malformed: AtomicU64,
    /// Inputs rejected: forged ids, impossible routing entries, corrupt records, wrong senders.
    pub rejected_invalid: AtomicU64,
    /// Inputs rejected: responses to no outstanding request.
    pub rejected_unexpected: AtomicU64,
    /// Live keys stored (gauge).
    pub stored_keys: AtomicU64,
    /// Value bytes stored (gauge).
    pub stored_bytes: AtomicU64,
    /// Stored records that failed their checksum when read.
    pub corrupt_reads: AtomicU64,
    /// Client operations answered 503 for want of a quorum.
    pub quorum_failures: AtomicU64,
    /// Writes sent again under a newer version because a replica held a newer one.
    pub write_retries: AtomicU64,
    /// Ring messages the ring core dropped as invalid, from the wrong sender or breaking the
    /// protocol (the core's own counter, copied).
    pub core_rejected_invalid: AtomicU64,
    /// Ring responses the ring core matched to no request (copied).
    pub core_rejected_unexpected: AtomicU64,
    /// Storage messages the store coordinator refused as invalid (copied).
    pub kv_rejected_invalid: AtomicU64,
    /// Storage responses the store coordinator matched to no request (copied).
    pub kv_rejected_unexpected: AtomicU64,
    /// Multicast messages sent (from the multicast core's counters).
    pub group_messages_out: AtomicU64,
    /// Multicast messages received and accepted.
    pub group_messages_in: AtomicU64,
    /// Multicast data messages (stamped broadcasts) sent down trees.
    pub group_data_out: AtomicU64,
    /// Multicast messages dropped: invalid, unknown group, not from the parent, unexpected.
    pub group_dropped: AtomicU64,
}

impl Metrics {
    /// Records one successful lookup of `hops` hops.
    pub fn observe_lookup(&self, hops: u32) {
        self.lookups_ok.fetch_add(1, Relaxed);
        self.lookup_hops_sum.fetch_add(u64::from(hops), Relaxed);
        if let Some(i) = HOP_BUCKETS.iter().position(|&b| u64::from(hops) <= b) {
            self.hop_buckets[i].fetch_add(1, Relaxed);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        counter(
            "overlay_lookups_failed_total",
            "Lookups that ended with an error.",
            self.lookups_failed.load(Relaxed),
        );
        counter(
            "overlay_ring_messages_sent_total",
            "Ring protocol messages sent.",
            self.ring_messages_out.load(Relaxed),
        );
        counter(
            "overlay_ring_messages_received_total",
            "Ring protocol messages received.",
            self.ring_messages_in.load(Relaxed),
        );
        counter(
            "overlay_group_messages_sent_total",
            "Multicast protocol messages sent.",
            self.group_messages_out.load(Relaxed),
        );
        counter(
            "overlay_group_messages_received_total",
            "Multicast protocol messages received and accepted.",
            self.group_messages_in.load(Relaxed),
        );
        counter(
            "overlay_group_data_sent_total",
            "Stamped multicast messages sent down group trees.",
            self.group_data_out.load(Relaxed),
        );
        counter(
            "overlay_group_messages_dropped_total",
            "Multicast messages dropped: invalid, for an unknown group, not from the parent, or unexpected.",
            self.group_dropped.load(Relaxed),
        );
        counter(
            "overlay_kv_requests_sent_total",
            "Storage requests sent to peers.",
            self.kv_requests_out.load(Relaxed),
        );
        counter(
            "overlay_kv_requests_received_total",
            "Storage requests received from peers.",
            self.kv_requests_in.load(Relaxed),
        );
        counter(
            "overlay_read_repairs_total",
            "Records pushed to stale replicas during reads.",
            self.read_repairs.load(Relaxed),
        );
        counter(
            "overlay_sync_pushed_total",
            "Records pushed by anti-entropy.",
            self.sync_pushed.load(Relaxed),
        );
        counter(
            "overlay_sync_pulled_total",
            "Records pulled by anti-entropy.",
            self.sync_pulled.load(Relaxed),
        );
        counter(
            "overlay_corrupt_reads_total",
            "Stored records that failed their checksum.",
            self.corrupt_reads.load(Relaxed),
        );
        counter(
            "overlay_quorum_failures_total",
            "Client operations that could not reach a quorum.",
            self.quorum_failures.load(Relaxed),
        );
        counter(
            "overlay_write_retries_total",
            "Writes sent again under a newer version because a replica held a newer one.",
            self.write_retries.load(Relaxed),
        );
        let _ =
            writeln!(out, "# HELP overlay_rejected_inputs_total Inputs from the network that were rejected.");
        let _ = writeln!(out, "# TYPE overlay_rejected_inputs_total counter");
        // Each kind sums what the driver and the cores each rejected (separate counters).
        let sum = |counters: &[&AtomicU64]| counters.iter().map(|c| c.load(Relaxed)).sum::<u64>();
        for (kind, value) in [
            ("malformed", sum(&[&self.rejected_malformed])),
            (
                "invalid",
                sum(&[&self.rejected_invalid, &self.core_rejected_invalid, &self.kv_rejected_invalid]),
            ),
            (
                "unexpected",
                sum(&[
                    &self.rejected_unexpected,
                    &self.core_rejected_unexpected,
                    &self.kv_rejected_unexpected,
                ]),
            ),
        ] {
            let _ = writeln!(out, "overlay_rejected_inputs_total{{kind=\"{kind}\"}} {value}");
        }
        let _ = writeln!(out, "# HELP overlay_lookup_hops Hops taken by successful lookups.");
        let _ = writeln!(out, "# TYPE overlay_lookup_hops histogram");
        let mut cumulative = 0;
        for (bound, bucket) in HOP_BUCKETS.iter().zip(&self.hop_buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "overlay_lookup_hops_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let ok = self.lookups_ok.load(Relaxed);
        let _ = writeln!(out, "overlay_lookup_hops_bucket{{le=\"+Inf\"}} {ok}");
        let _ = writeln!(out, "overlay_lookup_hops_sum {}", self.lookup_hops_sum.load(Relaxed));
        let _ = writeln!(out, "overlay_lookup_hops_count {ok}");
        for (name, help, value) in [
            ("overlay_stored_keys", "Live keys stored on this node.", &self.stored_keys),
            ("overlay_stored_bytes", "Value bytes stored on this node.", &self.stored_bytes),
        ] {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}", value.load(Relaxed));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_prometheus_text_with_cumulative_buckets() {
        let m = Metrics::default();
        m.observe_lookup(0);
        m.observe_lookup(3);
        m.observe_lookup(20);
        m.rejected_malformed.fetch_add(2, Relaxed);
        let text = m.render();
        assert!(text.contains("overlay_lookup_hops_bucket{le=\"0\"} 1\n"));
        assert!(text.contains("overlay_lookup_hops_bucket{le=\"3\"} 2\n"));
        assert!(text.contains("overlay_lookup_hops_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("overlay_lookup_hops_sum 23\n"));
        assert!(text.contains("overlay_rejected_inputs_total{kind=\"malformed\"} 2\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name value");
            assert!(value.parse::<u64>().is_ok(), "{line}");
        }
    }
}
