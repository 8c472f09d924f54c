//! `overlay bench`: a closed-loop load generator against one node or a whole local cluster.
//!
//! First it writes the key set (so every get has something to find), then it runs the measured
//! operations with a fixed number of requests in flight: one worker thread per in-flight
//! request, each with its own latency log, so the hot path shares nothing but an atomic op
//! counter. The mix of puts and gets, the keys and the values come from a fixed-seed
//! generator, so two runs with the same flags send the same requests. Both phases are bounded
//! by the op count and by `--max-seconds`.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use overlay_api::{Client, Consistency};

use crate::cli::{BenchArgs, GlobalArgs};
use crate::commands;
use crate::output::{self, Table};

/// Per-request time-out; a request slower than this counts as an error, not a latency sample.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Fixed seed: runs are comparable because they issue the same operation sequence.
const SEED: u64 = 0x6f76_6572_6c61_7921;

/// The operation kinds measured separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Put,
    Get,
}

/// Runs the benchmark and prints its report; fails (after printing) if any operation failed.
pub(crate) fn run(global: &GlobalArgs, args: &BenchArgs, out: &mut impl Write) -> Result<()> {
    let targets = choose_targets(global);
    let concurrency = usize::try_from(args.concurrency).context("--concurrency is too large")?;
    let token = global.api_token()?;
    let clients = targets
        .iter()
        .map(|url| Ok(Client::new(url, REQUEST_TIMEOUT, concurrency)?.with_token(token.as_deref())))
        .collect::<Result<Vec<_>>>()?;
    // Fail fast with the usual "cannot reach" message instead of N failed operations.
    for client in &clients {
        client.status().with_context(|| format!("checking {} before the benchmark", client.base_url()))?;
    }
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let plan = Plan {
        clients: &clients,
        keys: args.keys,
        value_size: usize::try_from(args.value_size).context("--value-size is too large")?,
        read_ratio: args.read_ratio,
        consistency: global.consistency,
        concurrency,
        deadline,
    };

    if !global.json {
        eprintln!(
            "bench: writing {} keys of {} each to {} node{} ({})",
            args.keys,
            output::human_bytes(args.value_size),
            targets.len(),
            if targets.len() == 1 { "" } else { "s" },
            commands::consistency_label(global.consistency),
        );
    }
    let preload = plan.execute(args.keys, Phase::Preload);
    if preload.errors > 0 {
        bail!(
            "writing the key set failed for {} of {} keys; first error: {}",
            preload.errors,
            args.keys,
            preload.first_error.as_deref().unwrap_or("unknown")
        );
    }
    if preload.completed < args.keys {
        bail!("writing the key set did not finish within --max-seconds {}", args.max_seconds);
    }
    if !global.json {
        eprintln!(
            "bench: running {} operations ({:.0}% gets), {} in flight",
            args.ops,
            args.read_ratio * 100.0,
            args.concurrency
        );
    }
    let measured = plan.execute(args.ops, Phase::Measured);
    let report = Report::new(args, &targets, &preload, &measured);
    if global.json {
        output::write_json(out, &report.to_json())?;
    } else {
        report.write_text(out)?;
    }
    if measured.errors > 0 {
        bail!(
            "{} of {} operations failed; first error: {}",
            measured.errors,
            measured.completed,
            measured.first_error.as_deref().unwrap_or("unknown")
        );
    }
    Ok(())
}

/// Without --node the load is spread over every answering node of the local cluster, the way
/// real clients would arrive; otherwise it all goes to the one node.
fn choose_targets(global: &GlobalArgs) -> Vec<String> {
    if global.node.is_none() {
        let cluster_nodes = crate::cluster::answering_nodes(&global.dir);
        if !cluster_nodes.is_empty() {
            return cluster_nodes;
        }
    }
    vec![commands::resolve_node_url(global)]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Put key `i` for every op `i`, so the whole key set exists.
    Preload,
    /// Puts and gets by ratio over random keys.
    Measured,
}

struct Plan<'a> {
    clients: &'a [Client],
    keys: u64,
    value_size: usize,
    read_ratio: f64,
    consistency: Option<Consistency>,
    concurrency: usize,
    deadline: Instant,
}

/// What one phase did.
#[derive(Debug, Default)]
struct PhaseResult {
    completed: u64,
    errors: u64,
    first_error: Option<String>,
    put_latencies: Vec<Duration>,
    get_latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Plan<'_> {
    fn execute(&self, ops: u64, phase: Phase) -> PhaseResult {
        let next_op = AtomicU64::new(0);
        let started = Instant::now();
        let mut result = thread::scope(|scope| {
            let workers: Vec<_> =
                (0..self.concurrency).map(|_| scope.spawn(|| self.work(ops, phase, &next_op))).collect();
            let mut total = PhaseResult::default();
            for worker in workers {
                match worker.join() {
                    Ok(part) => total.absorb(part),
                    Err(_) => {
                        total.errors += 1;
                        total.first_error.get_or_insert_with(|| "a worker thread panicked".to_owned());
                    }
                }
            }
            total
        });
        result.elapsed = started.elapsed();
        result
    }

    fn work(&self, ops: u64, phase: Phase, next_op: &AtomicU64) -> PhaseResult {
        let mut part = PhaseResult::default();
        let mut value = pseudo_random_bytes(SEED, self.value_size);
        loop {
            let op = next_op.fetch_add(1, Ordering::Relaxed);
            if op >= ops || Instant::now() >= self.deadline {
                return part;
            }
            let (kind, key_index) = match phase {
                Phase::Preload => (OpKind::Put, op),
                Phase::Measured => choose_op(op, self.read_ratio, self.keys),
            };
            let key = bench_key(key_index);
            // Spread by op number, so every node gets the same share whatever the timing.
            let client = &self.clients[usize::try_from(op % self.clients.len() as u64).unwrap_or(0)];
            // Distinct values per write, so no layer can short-cut "same bytes again".
            let stamp = op.to_le_bytes();
            let stamped = stamp.len().min(value.len());
            value[..stamped].copy_from_slice(&stamp[..stamped]);
            let started = Instant::now();
            let outcome = match kind {
                OpKind::Put => client.put(&key, &value, self.consistency).map(|_| ()),
                OpKind::Get => client.get(&key, self.consistency).map(|_| ()),
            };
            let latency = started.elapsed();
            part.completed += 1;
            match outcome {
                Ok(()) => match kind {
                    OpKind::Put => part.put_latencies.push(latency),
                    OpKind::Get => part.get_latencies.push(latency),
                },
                Err(error) => {
                    part.errors += 1;
                    part.first_error
                        .get_or_insert_with(|| format!("{key} on {}: {error}", client.base_url()));
                }
            }
        }
    }
}

impl PhaseResult {
    fn absorb(&mut self, part: PhaseResult) {
        self.completed += part.completed;
        self.errors += part.errors;
        if self.first_error.is_none() {
            self.first_error = part.first_error;
        }
        self.put_latencies.extend(part.put_latencies);
        self.get_latencies.extend(part.get_latencies);
    }
}

fn bench_key(index: u64) -> String {
    format!("bench-{index:07}")
}

/// Decides op `op` of the measured phase: a get with probability `read_ratio`, on a key drawn
/// uniformly from `keys`.
fn choose_op(op: u64, read_ratio: f64, keys: u64) -> (OpKind, u64) {
    let kind_draw = splitmix64(SEED ^ op.wrapping_mul(2));
    let key_draw = splitmix64(SEED ^ op.wrapping_mul(2).wrapping_add(1));
    let kind = if unit_interval(kind_draw) < read_ratio { OpKind::Get } else { OpKind::Put };
    (kind, key_draw % keys)
}

/// SplitMix64: a tiny, well-mixed generator; enough for choosing ops, not for cryptography.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps 64 random bits onto [0, 1) using the top 53 bits (an f64's precision).
fn unit_interval(bits: u64) -> f64 {
    // Exact: a value below 2^53 converts to f64 without loss.
    let top = (bits >> 11) as f64;
    top / (1u64 << 53) as f64
}

fn pseudo_random_bytes(seed: u64, length: usize) -> Vec<u8> {
    (0..length as u64).flat_map(|block| splitmix64(seed ^ block).to_le_bytes()).take(length).collect()
}

/// The `p`th percentile (0 < p ≤ 100) of `sorted` by the nearest-rank method: the smallest
/// sample such that at least p% of samples are ≤ it. `None` without samples.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    // The rank lies in 1..=len, so the float-to-integer conversion cannot overflow.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().clamp(1.0, sorted.len() as f64) as usize;
    Some(sorted[rank - 1])
}

/// Latency and throughput of one operation kind.
#[derive(Debug, Clone, PartialEq)]
struct KindStats {
    count: u64,
    ops_per_s: f64,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
}

impl KindStats {
    fn new(mut latencies: Vec<Duration>, elapsed: Duration) -> Self {
        latencies.sort_unstable();
        let ms = |p| percentile(&latencies, p).map(|d| d.as_secs_f64() * 1000.0);
        let count = latencies.len() as u64;
        KindStats {
            count,
            ops_per_s: rate(count, elapsed),
            p50_ms: ms(50.0),
            p95_ms: ms(95.0),
            p99_ms: ms(99.0),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count,
            "ops_per_s": round3(self.ops_per_s),
            "p50_ms": self.p50_ms.map(round3),
            "p95_ms": self.p95_ms.map(round3),
            "p99_ms": self.p99_ms.map(round3),
        })
    }
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    // Counts are far below 2^53, so the conversion is exact.
    let count = count as f64;
    if seconds > 0.0 { count / seconds } else { 0.0 }
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

struct Report<'a> {
    args: &'a BenchArgs,
    targets: &'a [String],
    preload_s: f64,
    elapsed_s: f64,
    completed: u64,
    errors: u64,
    stopped_by_deadline: bool,
    put: KindStats,
    get: KindStats,
}

impl<'a> Report<'a> {
    fn new(
        args: &'a BenchArgs,
        targets: &'a [String],
        preload: &PhaseResult,
        measured: &PhaseResult,
    ) -> Self {
        Report {
            args,
            targets,
            preload_s: preload.elapsed.as_secs_f64(),
            elapsed_s: measured.elapsed.as_secs_f64(),
            completed: measured.completed,
            errors: measured.errors,
            stopped_by_deadline: measured.completed < args.ops,
            put: KindStats::new(measured.put_latencies.clone(), measured.elapsed),
            get: KindStats::new(measured.get_latencies.clone(), measured.elapsed),
        }
    }

    /// The `--json` report: the flags it ran with, then measured-phase figures per kind.
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "nodes": self.targets,
            "ops": self.args.ops,
            "concurrency": self.args.concurrency,
            "value_size": self.args.value_size,
            "read_ratio": self.args.read_ratio,
            "keys": self.args.keys,
            "preload_s": round3(self.preload_s),
            "elapsed_s": round3(self.elapsed_s),
            "completed": self.completed,
            "errors": self.errors,
            "stopped_by_deadline": self.stopped_by_deadline,
            "ops_per_s": round3(rate(self.completed - self.errors, Duration::from_secs_f64(self.elapsed_s))),
            "put": self.put.to_json(),
            "get": self.get.to_json(),
        })
    }

    fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{} ops in {:.2} s against {} node{} ({} in flight, {} values, {} keys preloaded in {:.2} s)",
            self.completed,
            self.elapsed_s,
            self.targets.len(),
            if self.targets.len() == 1 { "" } else { "s" },
            self.args.concurrency,
            output::human_bytes(self.args.value_size),
            self.args.keys,
            self.preload_s,
        )?;
        if self.stopped_by_deadline {
            writeln!(out, "stopped early: --max-seconds {} reached", self.args.max_seconds)?;
        }
        let ms = |value: Option<f64>| value.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".to_owned());
        let mut table = Table::new(["op", "count", "ops/s", "p50 ms", "p95 ms", "p99 ms"]);
        for (name, stats) in [("put", &self.put), ("get", &self.get)] {
            table.row([
                name.to_owned(),
                stats.count.to_string(),
                format!("{:.1}", stats.ops_per_s),
                ms(stats.p50_ms),
                ms(stats.p95_ms),
                ms(stats.p99_ms),
            ]);
        }
        table.write(out)?;
        writeln!(out, "errors: {}", self.errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_millis(*v)).collect()
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&samples, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&samples, 95.0), Some(Duration::from_millis(95)));
        assert_eq!(percentile(&samples, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&samples, 100.0), Some(Duration::from_millis(100)));
        let few = ms(&[10, 20, 30]);
        assert_eq!(percentile(&few, 50.0), Some(Duration::from_millis(20)));
        assert_eq!(percentile(&few, 99.0), Some(Duration::from_millis(30)));
        assert_eq!(percentile(&ms(&[7]), 1.0), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn kind_stats_sort_their_samples_and_rate_over_the_phase() {
        let stats = KindStats::new(ms(&[30, 10, 20, 40]), Duration::from_secs(2));
        assert_eq!(stats.count, 4);
        assert_eq!(stats.p50_ms, Some(20.0));
        assert_eq!(stats.p99_ms, Some(40.0));
        assert!((stats.ops_per_s - 2.0).abs() < 1e-9);
        let empty = KindStats::new(Vec::new(), Duration::from_secs(1));
        assert_eq!(empty.p50_ms, None);
        assert_eq!(empty.to_json()["p50_ms"], serde_json::Value::Null);
    }

    #[test]
    fn the_op_mix_follows_the_read_ratio_and_covers_the_keys() {
        let ops = 20_000;
        let gets = (0..ops).filter(|&op| choose_op(op, 0.9, 50).0 == OpKind::Get).count();
        assert!((17_500..=18_500).contains(&gets), "{gets} gets of {ops}");
        assert!((0..ops).all(|op| choose_op(op, 0.0, 50).0 == OpKind::Put));
        assert!((0..ops).all(|op| choose_op(op, 1.0, 50).0 == OpKind::Get));
        let mut seen = [false; 50];
        for op in 0..ops {
            seen[usize::try_from(choose_op(op, 0.5, 50).1).expect("small")] = true;
        }
        assert!(seen.iter().all(|hit| *hit));
    }

    #[test]
    fn the_generator_is_deterministic_and_values_have_the_asked_size() {
        assert_eq!(choose_op(7, 0.5, 1000), choose_op(7, 0.5, 1000));
        assert_eq!(pseudo_random_bytes(1, 13).len(), 13);
        assert_eq!(pseudo_random_bytes(1, 0).len(), 0);
        assert_eq!(pseudo_random_bytes(1, 13), pseudo_random_bytes(1, 13));
        assert!(unit_interval(u64::MAX) < 1.0);
        assert_eq!(unit_interval(0), 0.0);
    }
}
