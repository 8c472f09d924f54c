//! `dht-sim`: runs one simulator scenario and reports what it measured.
//!
//! Scenarios: `stable`, `fail`, `churn`, `byzantine` (lookups, the last with a fraction of lying
//! nodes, e.g. `dht-sim --scenario byzantine --nodes 1000 --byzantine 0.1 --json`; see
//! `dht::sim::scenario`) and `multicast`
//! (multicast trees, see `dht::sim::multicast`), e.g.
//! `dht-sim --scenario multicast --nodes 1000 --groups 10 --members 50 --messages 1000 --fail-fraction 0.05 --json`,
//! `kv` (the store, see `dht::sim::kv`; with Byzantine nodes e.g.
//! `dht-sim --scenario kv --nodes 1000 --byzantine 0.1 --json`) and `partition` (a ring cut into parts that must merge
//! back after the heal, see `dht::sim::partition`), e.g.
//! `dht-sim --scenario partition --nodes 1000 --parts 3 --split-s 60 --json`, and `counter`
//! (clients incrementing one key with compare-and-set, see `dht::sim::counter`), e.g.
//! `dht-sim --scenario counter --nodes 100 --clients 8 --increments 100 --crash-replicas 1 --json`,
//! and `supernodes` (leaves attached to supernodes, a fraction of which crash at once, see
//! `dht::sim::supernodes`), e.g.
//! `dht-sim --scenario supernodes --nodes 1000 --supernodes 100 --leaves 10000 --crash-fraction 0.3 --json`.
//!
//! The last line of output is the report as one JSON object with `--json`; otherwise a short
//! human summary. The seed is always printed, so any run can be replayed.

use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use dht::sim::counter::{self as counter_scenario, CounterParams};
use dht::sim::kv::{self as kv_scenario, KvParams};
use dht::sim::multicast::{self as multicast_scenario, MulticastParams};
use dht::sim::partition::{self as partition_scenario, PartitionParams};
use dht::sim::scenario::{self, Kind, Params};
use dht::sim::supernodes::{self as supernode_scenario, SupernodeParams};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScenarioArg {
    Stable,
    Fail,
    Churn,
    Byzantine,
    Multicast,
    Kv,
    Partition,
    Counter,
    Supernodes,
}

/// Simulate a Chord ring of the overlay's dht core.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Which scenario to run.
    #[arg(long, value_enum, default_value = "stable")]
    scenario: ScenarioArg,
    /// Number of nodes N.
    #[arg(long, default_value_t = 1600)]
    nodes: usize,
    /// Seed of every random choice; the same seed gives the same report.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// User lookups in the measured phase.
    #[arg(long, default_value_t = 10_000)]
    lookups: u64,
    /// Length of the measured phase in simulated seconds [default: 30 stable, 60 fail, 600 churn].
    #[arg(long)]
    duration_s: Option<f64>,
    /// `fail`: fraction of nodes that crash at once [default: 0.2]. `multicast`: fraction of the
    /// forwarders that crash halfway through the broadcasts [default: 0].
    #[arg(long)]
    fail_fraction: Option<f64>,
    /// `multicast`: number of groups.
    #[arg(long, default_value_t = 10)]
    groups: usize,
    /// `multicast`: members per group.
    #[arg(long, default_value_t = 50)]
    members: usize,
    /// `multicast`: broadcasts in total.
    #[arg(long, default_value_t = 1_000)]
    messages: u64,
    /// `multicast`: simulated seconds the broadcasts are spread over [default: messages / 20].
    #[arg(long)]
    publish_duration_s: Option<f64>,
    /// `multicast`: most children per tree node before joins are redirected.
    #[arg(long, default_value_t = 32)]
    max_children: usize,
    /// `churn`: fraction of N that crashes (and as many fresh nodes join) per simulated minute.
    #[arg(long, default_value_t = 0.1)]
    churn: f64,
    /// `stable`, `fail`, `churn`, `byzantine`, `kv`: fraction of the nodes (drawn by the seed,
    /// never the bootstrap) that lie in every lookup step they answer from the measured phase on;
    /// in `kv` they also drop storage requests and answer reads with stale or foreign records
    /// [default: 0.1 for `byzantine`, else 0].
    #[arg(long)]
    byzantine: Option<f64>,
    /// Whether lookups refuse inconsistent ownership claims (`Config::check_ownership_claims`)
    /// [default: true for `byzantine` and for `kv` with `--byzantine` above 0, else false].
    #[arg(long)]
    check_claims: Option<bool>,
    /// Successor-list length r.
    #[arg(long, default_value_t = 8)]
    successors: usize,
    /// Stabilize period in milliseconds.
    #[arg(long, default_value_t = 1000)]
    stabilize_ms: u64,
    /// Finger-refresh period in milliseconds.
    #[arg(long, default_value_t = 1000)]
    fix_fingers_ms: u64,
    /// Longest stabilize period while a node's neighbourhood stays unchanged, in milliseconds
    /// [default: the core's `Config::max_stabilize_interval`].
    #[arg(long)]
    max_stabilize_ms: Option<u64>,
    /// Longest finger-refresh period while fingers keep checking out, in milliseconds
    /// [default: the core's `Config::max_fix_fingers_interval`].
    #[arg(long)]
    max_fix_fingers_ms: Option<u64>,
    /// Peers declared dead that each node remembers and probes (0 turns partition healing off).
    #[arg(long, default_value_t = 32)]
    passive_peers: usize,
    /// Probability that a message is lost.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Nodes joining per simulated second while the ring grows [default: max(20, N/20)].
    #[arg(long)]
    join_rate: Option<f64>,
    /// `kv`: client operations.
    #[arg(long, default_value_t = 100_000)]
    ops: u64,
    /// `kv`: client operations started per simulated second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// `kv`: share of operations that are reads.
    #[arg(long, default_value_t = 0.5)]
    read_ratio: f64,
    /// `kv`: distinct keys.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// `kv`: share of nodes that crash at once, a third of the way in. `supernodes`: share of
    /// the supernodes that crash at once, 60 s in.
    #[arg(long, default_value_t = 0.0)]
    crash_fraction: f64,
    /// `supernodes`: ring members that are also supernodes.
    #[arg(long, default_value_t = 100)]
    supernodes: usize,
    /// `supernodes`: leaves (not ring members), arriving over the first 20 s.
    #[arg(long, default_value_t = 10_000)]
    leaves: usize,
    /// `supernodes`: most leaves per supernode [default: the core's `HostConfig::max_leaves`].
    #[arg(long)]
    max_leaves: Option<u32>,
    /// `kv`: cut the ring in two halves a third of the way in, for `--partition-s`, then heal.
    #[arg(long)]
    partition: bool,
    /// `kv`: how long the partition lasts, in simulated seconds.
    #[arg(long, default_value_t = 20.0)]
    partition_s: f64,
    /// `kv`: each node's wall clock is offset by a value drawn up to ± this many milliseconds.
    #[arg(long, default_value_t = 0)]
    clock_skew_ms: u64,
    /// `kv`: copies of each key.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// `kv`: never move stray copies (records of keys a node no longer replicates) home; shows
    /// what the sweeps are for (acknowledged writes stranded after a partition heals).
    #[arg(long)]
    keep_strays: bool,
    /// `partition`: parts the network is cut into (1: no cut, to measure the cost of probing).
    #[arg(long, default_value_t = 2)]
    parts: u8,
    /// `partition`: how long the network stays cut, in simulated seconds.
    #[arg(long, default_value_t = 60.0)]
    split_s: f64,
    /// `partition`: how long the ring is watched after the heal, in simulated seconds.
    #[arg(long, default_value_t = 120.0)]
    window_s: f64,
    /// `partition`: multicast groups across the split, each published to from every part (0: none).
    #[arg(long, default_value_t = 0)]
    split_groups: usize,
    /// `counter`: clients incrementing the counter concurrently.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// `counter`: increments each client applies.
    #[arg(long, default_value_t = 100)]
    increments: u32,
    /// `counter`: replicas of the counter that crash halfway.
    #[arg(long, default_value_t = 0)]
    crash_replicas: usize,
    /// `counter`: replicas keep no compare-and-set promises (shows what they are for).
    #[arg(long)]
    forget_promises: bool,
    /// Print the report as one JSON object on the last line.
    #[arg(long)]
    json: bool,
    /// Print progress to stderr while the ring grows.
    #[arg(long)]
    progress: bool,
}

/// The ring core's settings from the flags every scenario shares, validated.
fn ring_config(args: &Args, base: dht::Config) -> Result<dht::Config, String> {
    let successors = NonZeroUsize::new(args.successors).ok_or("--successors must be at least 2")?;
    let mut base = base;
    if let Some(ms) = args.max_stabilize_ms {
        base = base.with_max_stabilize_interval(Duration::from_millis(ms));
    }
    if let Some(ms) = args.max_fix_fingers_ms {
        base = base.with_max_fix_fingers_interval(Duration::from_millis(ms));
    }
    let config = base
        .with_successors(successors)
        .with_stabilize_interval(Duration::from_millis(args.stabilize_ms))
        .with_fix_fingers_interval(Duration::from_millis(args.fix_fingers_ms))
        .with_passive_peers(args.passive_peers);
    config.validate().map_err(|error| error.to_string())?;
    Ok(config)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let kind = match args.scenario {
        ScenarioArg::Stable
        | ScenarioArg::Multicast
        | ScenarioArg::Kv
        | ScenarioArg::Partition
        | ScenarioArg::Counter
        | ScenarioArg::Supernodes => Kind::Stable,
        ScenarioArg::Fail => Kind::Fail,
        ScenarioArg::Churn => Kind::Churn,
        ScenarioArg::Byzantine => Kind::Byzantine,
    };
    if matches!(args.scenario, ScenarioArg::Kv) {
        return run_kv(&args);
    }
    if matches!(args.scenario, ScenarioArg::Counter) {
        return run_counter(&args);
    }
    if matches!(args.scenario, ScenarioArg::Supernodes) {
        return run_supernodes(&args);
    }
    let multicast = matches!(args.scenario, ScenarioArg::Multicast);
    let fail_fraction = args.fail_fraction.unwrap_or(if multicast { 0.0 } else { 0.2 });
    if args.nodes == 0 {
        eprintln!("dht-sim: --nodes must be at least 1");
        return ExitCode::FAILURE;
    }
    if !(0.0..1.0).contains(&args.loss) || !(0.0..1.0).contains(&fail_fraction) || args.churn < 0.0 {
        eprintln!("dht-sim: --loss and --fail-fraction must lie in [0, 1), --churn must not be negative");
        return ExitCode::FAILURE;
    }
    let mut params = Params::new(kind, args.nodes, args.seed);
    params.config = match ring_config(&args, params.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("dht-sim: {error}");
            return ExitCode::FAILURE;
        }
    };
    params.lookups = args.lookups;
    params.progress = args.progress;
    if let Some(d) = args.duration_s {
        params.duration = Duration::from_secs_f64(d.max(0.0));
    }
    params.fail_fraction = fail_fraction;
    params.churn_per_minute = args.churn;
    if let Some(fraction) = args.byzantine {
        if !(0.0..1.0).contains(&fraction) {
            eprintln!("dht-sim: --byzantine must lie in [0, 1)");
            return ExitCode::FAILURE;
        }
        params.byzantine_fraction = fraction;
    }
    if let Some(on) = args.check_claims {
        params.config = params.config.clone().with_check_ownership_claims(on);
    }
    params.network.loss = args.loss;
    if let Some(rate) = args.join_rate {
        params.join_rate = rate.max(0.001);
    }
    let scenario_name = if multicast { "Multicast".to_string() } else { format!("{:?}", params.kind) };
    eprintln!(
        "dht-sim: scenario {}, {} nodes, seed {}, r = {}",
        scenario_name, params.nodes, params.seed, args.successors
    );
    if multicast {
        return run_multicast(&args, params, fail_fraction);
    }
    if matches!(args.scenario, ScenarioArg::Partition) {
        return run_partition(&args, params);
    }
    let report = scenario::run(&params);
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("a report always serializes"));
    } else {
        println!(
            "{:?} N={} seed={}: {} lookups, {:.3}% correct, {:.3}% wrong, {:.3}% failed; hops mean {:.2} p99 {} max {}; \
             converged at {:?} s; {} invariant violations in {} checks; {:.1} msgs/node/s; {:.1} s wall",
            report.scenario,
            report.nodes,
            report.seed,
            report.lookups,
            report.correct_pct,
            report.wrong_pct,
            report.failed_pct,
            report.mean_hops,
            report.p99_hops,
            report.max_hops,
            report.converge_sim_s,
            report.invariant_violations,
            report.invariant_checks,
            report.messages_per_node_per_s,
            report.wall_s
        );
    }
    ExitCode::SUCCESS
}

fn run_kv(args: &Args) -> ExitCode {
    if args.nodes == 0 || args.replicas == 0 || args.keys == 0 || args.rate <= 0.0 {
        eprintln!("dht-sim: --nodes, --replicas, --keys and --rate must be positive");
        return ExitCode::FAILURE;
    }
    if !(0.0..1.0).contains(&args.loss)
        || !(0.0..1.0).contains(&args.crash_fraction)
        || !(0.0..=1.0).contains(&args.read_ratio)
    {
        eprintln!("dht-sim: --loss and --crash-fraction must lie in [0, 1), --read-ratio in [0, 1]");
        return ExitCode::FAILURE;
    }
    let mut params = KvParams::new(args.nodes, args.ops, args.seed);
    params.config = match ring_config(args, params.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("dht-sim: {error}");
            return ExitCode::FAILURE;
        }
    };
    params.rate = args.rate;
    params.read_ratio = args.read_ratio;
    params.keys = args.keys;
    params.crash_fraction = args.crash_fraction;
    params.partition = args.partition;
    params.partition_duration = Duration::from_secs_f64(args.partition_s.max(0.0));
    params.clock_skew_ms = args.clock_skew_ms;
    params.network.loss = args.loss;
    params.kv.replicas = args.replicas;
    if args.keep_strays {
        params.kv.stray_interval = None;
    }
    let byzantine = args.byzantine.unwrap_or(0.0);
    if !(0.0..1.0).contains(&byzantine) {
        eprintln!("dht-sim: --byzantine must lie in [0, 1)");
        return ExitCode::FAILURE;
    }
    params.byzantine_fraction = byzantine;
    // Liars are only worth simulating against lookups that can refuse their claims.
    let check_claims = args.check_claims.unwrap_or(byzantine > 0.0);
    params.config = params.config.with_check_ownership_claims(check_claims);
    eprintln!(
        "dht-sim: scenario kv, {} nodes, seed {}, {} ops, crash {}, partition {}, loss {}, skew ±{} ms, \
         byzantine {}, check claims {}",
        params.nodes,
        params.seed,
        params.ops,
        params.crash_fraction,
        params.partition,
        args.loss,
        params.clock_skew_ms,
        byzantine,
        check_claims
    );
    let report = kv_scenario::run(&params);
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("a report always serializes"));
    } else {
        println!(
            "kv N={} seed={}: {} ops, {} acknowledged writes, {} lost ({} beyond the design), {} stale reads of {}; \
             {:.3}% unavailable; repair {:?} s; {:.1} msgs/op; {} write retries; {:.1} s wall",
            report.nodes,
            report.seed,
            report.ops,
            report.acked_writes,
            report.acked_writes_lost,
            report.acked_writes_beyond,
            report.stale_reads,
            report.reads,
            report.unavailable_pct,
            report.repair_s,
            report.msgs_per_op,
            report.write_retries,
            report.wall_s
        );
        if report.byzantine > 0 {
            let liars = &report.liars;
            println!(
                "  {} Byzantine: {} of the acknowledged writes on replica sets with a liar, {} of them lost, \
                 {} unjudged; {} stale reads there; {} foreign reads; unavailable {:.3}% on honest sets, \
                 {:.3}% on sets with a liar; liars dropped {} writes, {} reads, {} other, served {} stale, \
                 {} foreign, {} relabelled; {} answers refused as invalid",
                report.byzantine,
                report.acked_writes_liar_set,
                report.acked_writes_lost_liar_set,
                report.acked_writes_unjudged_liar_set,
                report.stale_reads_liar_set,
                report.foreign_reads,
                report.unavailable_honest_set_pct,
                report.unavailable_liar_set_pct,
                liars.dropped_writes,
                liars.dropped_reads,
                liars.dropped_other,
                liars.served_stale,
                liars.served_foreign,
                liars.served_relabelled,
                report.rejected_invalid
            );
        }
    }
    ExitCode::SUCCESS
}

fn run_counter(args: &Args) -> ExitCode {
    if args.nodes == 0 || args.clients == 0 || !(0.0..1.0).contains(&args.loss) {
        eprintln!("dht-sim: --nodes and --clients must be at least 1, --loss must lie in [0, 1)");
        return ExitCode::FAILURE;
    }
    let mut params = CounterParams::new(args.nodes, args.seed);
    params.config = match ring_config(args, params.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("dht-sim: {error}");
            return ExitCode::FAILURE;
        }
    };
    params.clients = args.clients;
    params.increments = args.increments;
    params.crash_replicas = args.crash_replicas;
    params.clock_skew_ms = args.clock_skew_ms;
    params.network.loss = args.loss;
    params.kv.replicas = args.replicas;
    params.kv.keep_promises = !args.forget_promises;
    eprintln!(
        "dht-sim: scenario counter, {} nodes, seed {}, {} clients x {} increments, crash {} replicas, loss {}, skew ±{} ms",
        params.nodes,
        params.seed,
        params.clients,
        params.increments,
        params.crash_replicas,
        args.loss,
        params.clock_skew_ms
    );
    let report = counter_scenario::run(&params);
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("a report always serializes"));
    } else {
        println!(
            "counter N={} seed={}: final {:?}, {} confirmed of {} ({} lost, {} duplicated, consistent {}), finished {}; \
             {} written, {} conflicts, {} unknown, {} failed, {} retries; {:.1} msgs/increment; {:.1} s simulated, {:.1} s wall",
            report.nodes,
            report.seed,
            report.final_count,
            report.confirmed,
            report.expected,
            report.lost,
            report.duplicated,
            report.consistent,
            report.finished,
            report.written,
            report.conflicts,
            report.unknown,
            report.failures,
            report.cas_retries,
            report.msgs_per_increment,
            report.sim_s,
            report.wall_s
        );
    }
    ExitCode::SUCCESS
}

fn run_supernodes(args: &Args) -> ExitCode {
    if args.nodes == 0 || args.supernodes == 0 || args.supernodes > args.nodes || args.max_leaves == Some(0) {
        eprintln!(
            "dht-sim: --nodes and --supernodes must be positive, --supernodes at most --nodes, --max-leaves positive"
        );
        return ExitCode::FAILURE;
    }
    if !(0.0..1.0).contains(&args.loss) || !(0.0..=1.0).contains(&args.crash_fraction) {
        eprintln!("dht-sim: --loss must lie in [0, 1), --crash-fraction in [0, 1]");
        return ExitCode::FAILURE;
    }
    let mut params =
        SupernodeParams::new(args.nodes, args.supernodes, args.leaves, args.crash_fraction, args.seed);
    if let Some(max_leaves) = args.max_leaves {
        params.host = params.host.with_max_leaves(max_leaves);
    }
    params.network.loss = args.loss;
    eprintln!(
        "dht-sim: scenario supernodes, {} nodes, {} supernodes (cap {}), {} leaves, crash {}, loss {}, seed {}",
        params.nodes,
        params.supernodes,
        params.host.max_leaves,
        params.leaves,
        params.crash_fraction,
        args.loss,
        params.seed
    );
    let report = supernode_scenario::run(&params);
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("a report always serializes"));
    } else {
        println!(
            "supernodes N={} S={} L={} seed={}: {} crashed, {} orphaned, {} re-attached ({:.3}% within 10 s); \
             re-attach median {:.3} s p99 {:.3} s max {:.3} s; peak {} leaves on a survivor (cap {}, {} over); \
             {} unattached at the end; {} refusals, {} backoffs; {:.2} msgs/leaf/s; {:.1} s wall",
            report.nodes,
            report.supernodes,
            report.leaves,
            report.seed,
            report.crashed,
            report.orphaned,
            report.reattached,
            report.reattached_within_10s_pct,
            report.reattach_median_s,
            report.reattach_p99_s,
            report.reattach_max_s,
            report.peak_leaves_on_survivor,
            report.max_leaves,
            report.survivors_over_cap,
            report.unattached_at_end,
            report.refusals,
            report.backoffs,
            report.messages_per_leaf_per_s,
            report.wall_s
        );
    }
    ExitCode::SUCCESS
}

fn run_partition(args: &Args, ring: Params) -> ExitCode {
    if args.parts == 0 || args.split_s < 0.0 || args.window_s <= 0.0 {
        eprintln!("dht-sim: --parts must be at least 1, --split-s not negative, --window-s positive");
        return ExitCode::FAILURE;
    }
    let mut params = PartitionParams::new(ring.nodes, ring.seed);
    params.ring = ring;
    params.parts = args.parts;
    params.split = Duration::from_secs_f64(args.split_s);
    params.window = Duration::from_secs_f64(args.window_s);
    params.lookups = args.lookups;
    params.groups = args.split_groups;
    let report = partition_scenario::run(&params);
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("a report always serializes"));
    } else {
        println!(
            "partition N={} seed={} parts={} split {:.0} s: {} rings at the heal, {} after; merged in {:?} s; \
             {:.1} msgs/node/s while merging, {:.1} after; {:.3}% of {} lookups correct; {:.1} s wall",
            report.nodes,
            report.seed,
            report.parts,
            report.split_s,
            report.rings_at_heal,
            report.rings_after_heal,
            report.merge_s,
            report.messages_per_node_per_s,
            report.idle_messages_per_node_per_s,
            report.correct_pct,
            report.lookups,
            report.wall_s
        );
    }
    ExitCode::SUCCESS
}

fn run_multicast(args: &Args, ring: Params, fail_fraction: f64) -> ExitCode {
    let mut params = MulticastParams::new(ring.nodes, ring.seed);
    params.ring = ring;
    params.groups = args.groups.max(1);
    params.members = args.members.max(1);
    params.messages = args.messages;
    params.fail_fraction = fail_fraction;
    params.multicast = params.multicast.with_max_children(args.max_children);
    if let Err(error) = params.multicast.validate() {
        eprintln!("dht-sim: {error}");
        return ExitCode::FAILURE;
    }
    let publish_s = args.publish_duration_s.unwrap_or(args.messages as f64 / 20.0).max(0.0);
    params.publish_duration = Duration::from_secs_f64(publish_s);
    let report = multicast_scenario::run(&params);
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("a report always serializes"));
    } else {
        println!(
            "multicast N={} seed={}: {} groups x {} members, {} broadcasts ({} acknowledged): {:.3}% delivered, \
             {} duplicates, {} order violations, {} gaps; tree depth mean {:.2} max {}; max children {}; \
             {:.1} msgs/broadcast ({:.1} data); {} crashes, repair {:?} s; {:.1} s wall",
            report.nodes,
            report.seed,
            report.groups,
            report.members,
            report.messages,
            report.published,
            report.delivered_pct,
            report.duplicates,
            report.order_violations,
            report.gaps,
            report.mean_tree_depth,
            report.max_tree_depth,
            report.max_children,
            report.messages_per_broadcast,
            report.data_messages_per_broadcast,
            report.crashes,
            report.repair_s,
            report.wall_s
        );
    }
    ExitCode::SUCCESS
}
