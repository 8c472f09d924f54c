//! The command line: every subcommand, flag, default and environment variable of `overlay`.
//!
//! Global flags (`--node`, `--api-token`, `--consistency`, `--json`, `--dir`) are declared `global = true`, so
//! they are accepted before or after the subcommand (`overlay --json status` and
//! `overlay status --json` mean the same).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use overlay_api::Consistency;

/// Help text listing the exit codes; kept next to the flags so `--help` documents the contract.
const EXIT_CODES_HELP: &str = "\
Exit codes:
  0   success
  1   the key does not exist (get, delete)
  2   the node cannot be reached
  3   any other failure (the node refused, a step of cluster/demo/bench failed, ...)
  4   the key is not in the state --if-version/--if-absent expected (nothing written)
  64  the command line is wrong";

/// Command-line client of an overlay node, and a launcher of local clusters.
#[derive(Debug, Parser)]
#[command(name = "overlay", version, after_help = EXIT_CODES_HELP)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every subcommand accepts, before or after its name.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// Base URL of the node's HTTP API. Default: the first live node of the local cluster in
    /// --dir if one answers, else http://127.0.0.1:7001.
    #[arg(long, global = true, env = "OVERLAY_NODE", value_name = "URL")]
    pub(crate) node: Option<String>,

    /// Bearer token for a node whose API needs one (one bound to anything but loopback; its
    /// first start prints it and keeps it in <data-dir>/api-token). Local clusters need none.
    #[arg(long, global = true, env = overlay_api::auth::TOKEN_ENV, hide_env_values = true, value_name = "TOKEN")]
    pub(crate) api_token: Option<String>,

    /// Read the API token from this file instead (e.g. a node's <data-dir>/api-token).
    #[arg(
        long,
        global = true,
        env = overlay_api::auth::TOKEN_FILE_ENV,
        value_name = "PATH",
        conflicts_with = "api_token"
    )]
    pub(crate) api_token_file: Option<PathBuf>,

    /// Consistency of reads and writes (default: the node's own default).
    #[arg(long, global = true, value_enum, value_name = "LEVEL")]
    pub(crate) consistency: Option<Consistency>,

    /// Print machine-readable JSON on stdout instead of human-readable text.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// Directory of the local cluster (cluster.json, node data and logs).
    #[arg(long, global = true, env = "OVERLAY_CLUSTER_DIR", value_name = "DIR", default_value = ".overlay")]
    pub(crate) dir: PathBuf,
}

impl GlobalArgs {
    /// The API token to send, from --api-token or the file --api-token-file names.
    pub(crate) fn api_token(&self) -> anyhow::Result<Option<String>> {
        use anyhow::Context;
        if let Some(path) = &self.api_token_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the API token from {}", path.display()))?;
            return Ok(Some(text.trim().to_owned()));
        }
        Ok(self.api_token.clone())
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Store a value under a key: `put KEY VALUE`, `put KEY --file PATH` or `put KEY -` (stdin).
    Put(PutArgs),
    /// Write the value of a key, and nothing else, to stdout.
    Get {
        /// The key.
        key: String,
        /// Read only this node's own copy (no quorum): to see what one replica holds.
        #[arg(long)]
        local: bool,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
        /// Delete only if the key's current version is VERSION; otherwise exit code 4.
        #[arg(long, value_name = "VERSION", conflicts_with = "sign")]
        if_version: Option<String>,
        /// Sign the delete with the key in FILE (`overlay keygen`): keys under `signed/` are
        /// deleted only by their owner.
        #[arg(long, value_name = "FILE")]
        sign: Option<PathBuf>,
    },
    /// Write a new ed25519 signing key to FILE (never overwriting one) and print its public
    /// key: the key `put --sign` and `delete --sign` write keys under `signed/` with.
    Keygen {
        /// Where to write the key (created with mode 0600).
        file: PathBuf,
    },
    /// Show which nodes own and replicate a key, and how many hops finding them took.
    Lookup {
        /// The key.
        key: String,
    },
    /// Show the node's identity, neighbours, fingers and load.
    Status,
    /// List the ring's members in ring order, starting at the node asked.
    Ring,
    /// Multicast groups: join, leave, send to, listen to and inspect them.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Chat: users, logins, direct messages sealed end to end, rooms.
    Chat(crate::chat::ChatArgs),
    /// Durable queues: put, get (take and acknowledge), poll, listen and stat.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Run overlay-node processes on this machine.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Start a 5-node cluster, store keys, kill a node and show the keys survive, then send
    /// messages to a multicast group and have two users chat (a live DM, a queued one).
    Demo(DemoArgs),
    /// Measure put and get latency and throughput.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PutArgs {
    /// The key.
    pub(crate) key: String,
    /// The value; `-` reads it from stdin.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub(crate) value: Option<String>,
    /// Read the value from this file.
    #[arg(long, value_name = "PATH")]
    pub(crate) file: Option<PathBuf>,
    /// Write only if the key's current version is VERSION (compare-and-set; `overlay get --json`
    /// shows it). Otherwise nothing is written and the exit code is 4.
    #[arg(long, value_name = "VERSION", conflicts_with = "if_absent")]
    pub(crate) if_version: Option<String>,
    /// Write only if the key has no live value. Otherwise nothing is written and the exit code
    /// is 4.
    #[arg(long, conflicts_with = "sign")]
    pub(crate) if_absent: bool,
    /// Sign the value with the key in FILE (`overlay keygen`). Keys under `signed/` need it:
    /// the first signer owns the key, and nobody else can overwrite or delete it.
    #[arg(long, value_name = "FILE", conflicts_with = "if_version")]
    pub(crate) sign: Option<PathBuf>,
}

/// `overlay group ...`. Group names are 1 to 128 bytes of UTF-8 without control characters; the
/// node checks them.
#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// Make the node a member of a group (idempotent).
    Join {
        /// The group.
        group: String,
    },
    /// End the node's membership of a group (idempotent).
    Leave {
        /// The group.
        group: String,
    },
    /// Send a message to every member of a group; prints the sequence number it got.
    Send(GroupSendArgs),
    /// Print a group's messages as they arrive, until interrupted. The node is a member while
    /// this runs.
    Listen(GroupListenArgs),
    /// Draw a group's tree: its root, forwarders and members.
    Tree {
        /// The group.
        group: String,
    },
    /// List the groups the node takes part in.
    List,
}

#[derive(Debug, Args)]
pub(crate) struct GroupSendArgs {
    /// The group.
    pub(crate) group: String,
    /// The message (UTF-8 text, at most 64 KiB); `-` reads it from stdin, without the one
    /// line ending that closes it.
    pub(crate) message: String,
    /// Sender label shown to listeners (default: the node's short peer id).
    #[arg(long, value_name = "NAME")]
    pub(crate) from: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct GroupListenArgs {
    /// The group.
    pub(crate) group: String,
    /// Replay the group's history from this sequence number first (as far as the history
    /// reaches), then go on live. Default: only messages sent from now on.
    #[arg(long, value_name = "SEQ")]
    pub(crate) from: Option<u64>,
}

/// `overlay queue ...`. A queue is ordered by the successor of SHA-1("queue/" + name), which
/// replicates every message to its successors before acknowledging it. Queue names are 1 to 200
/// bytes of UTF-8 without control characters.
#[derive(Debug, Subcommand)]
pub(crate) enum QueueCommand {
    /// Append a message; prints its sequence number once the queue's replicas hold it.
    Put {
        /// The queue.
        queue: String,
        /// The message (at most 64 KiB); `-` reads it from stdin.
        message: String,
    },
    /// Take the first message, waiting for one up to --wait seconds; print it, then acknowledge
    /// it. Exit code 1 when nothing arrived in time.
    Get(QueueGetArgs),
    /// Take the first message if there is one, print it and acknowledge it; exit code 1 at once
    /// when the queue is empty.
    Poll(QueuePollArgs),
    /// Print every message as it is put, without taking it, until interrupted.
    Listen {
        /// The queue.
        queue: String,
        /// Show the messages still in the queue from this sequence number first.
        #[arg(long, value_name = "SEQ")]
        from: Option<u64>,
    },
    /// Show the queue's length, leases, consumers, listeners and ordering node.
    Stat {
        /// The queue.
        queue: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct QueueGetArgs {
    /// The queue.
    pub(crate) queue: String,
    /// Longest wait for a message, in seconds (at most 300).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = parse_wait)]
    pub(crate) wait: f64,
    /// How long the message stays reserved for this consumer before it is handed out again, in
    /// seconds (it is acknowledged as soon as it is printed).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = parse_lease)]
    pub(crate) lease: f64,
}

/// `queue poll`: `queue get` with no wait.
#[derive(Debug, Args)]
pub(crate) struct QueuePollArgs {
    /// The queue.
    pub(crate) queue: String,
    /// How long the message stays reserved for this consumer, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = parse_lease)]
    pub(crate) lease: f64,
}

fn parse_wait(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=300.0).contains(&v) => Ok(v),
        _ => Err(format!("{text:?} is not a number of seconds from 0 to 300")),
    }
}

fn parse_lease(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 300.0 => Ok(v),
        _ => Err(format!("{text:?} is not a number of seconds above 0 and at most 300")),
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Start N nodes in the background and wait until they form a correct ring.
    Up(UpArgs),
    /// Show the cluster's nodes and whether each is running.
    Status,
    /// Kill node I with SIGKILL (a crash: no graceful leave).
    Kill {
        /// Index of the node, as `cluster status` lists it.
        index: usize,
    },
    /// Restart node I on its data directory and ports, joining through a live node.
    Start(StartArgs),
    /// Stop every node (SIGTERM, then SIGKILL after 15 s).
    Down,
}

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Number of nodes.
    #[arg(short = 'n', long = "nodes", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) nodes: u16,
    /// Remove the data directories of an earlier cluster in --dir first.
    #[arg(long)]
    pub(crate) fresh: bool,
    #[command(flatten)]
    pub(crate) binary: NodeBinaryArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StartArgs {
    /// Index of the node, as `cluster status` lists it.
    pub(crate) index: usize,
    #[command(flatten)]
    pub(crate) binary: NodeBinaryArgs,
}

#[derive(Debug, Args)]
pub(crate) struct NodeBinaryArgs {
    /// The overlay-node executable. Default: the one next to this `overlay` executable, else
    /// the first on PATH.
    #[arg(long, env = "OVERLAY_NODE_BIN", value_name = "PATH")]
    pub(crate) node_bin: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Stop the cluster at the end instead of leaving it running.
    #[arg(long)]
    pub(crate) stop: bool,
    #[command(flatten)]
    pub(crate) binary: NodeBinaryArgs,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Operations to run after the key set is written.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub(crate) ops: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=512))]
    pub(crate) concurrency: u64,
    /// Size of every value written, in bytes.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=(16 << 20)))]
    pub(crate) value_size: u64,
    /// Fraction of operations that are gets (0.0 to 1.0).
    #[arg(long, default_value_t = 0.9, value_parser = parse_ratio)]
    pub(crate) read_ratio: f64,
    /// Number of distinct keys, written before the measured run.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) keys: u64,
    /// Stop issuing operations after this many seconds, whatever --ops says.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(crate) max_seconds: u64,
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    let ratio: f64 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&ratio) { Ok(ratio) } else { Err(format!("{ratio} is not between 0 and 1")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("overlay").chain(args.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = parse(&["get", "k", "--node", "http://127.0.0.1:9", "--json", "--consistency", "all"])
            .expect("valid command line");
        assert_eq!(cli.global.node.as_deref(), Some("http://127.0.0.1:9"));
        assert!(cli.global.json);
        assert_eq!(cli.global.consistency, Some(Consistency::All));
        assert!(matches!(cli.command, Command::Get { ref key, .. } if key == "k"));
    }

    #[test]
    fn global_flags_work_before_the_subcommand_and_in_nested_ones() {
        let cli = parse(&["--json", "cluster", "status", "--dir", "/tmp/c"]).expect("valid command line");
        assert!(cli.global.json);
        assert_eq!(cli.global.dir, PathBuf::from("/tmp/c"));
        assert!(matches!(cli.command, Command::Cluster(ClusterCommand::Status)));

        let cli = parse(&["cluster", "up", "-n", "5", "--json"]).expect("valid command line");
        assert!(cli.global.json);
        assert!(matches!(cli.command, Command::Cluster(ClusterCommand::Up(UpArgs { nodes: 5, .. }))));
    }

    #[test]
    fn the_api_token_is_global_and_read_from_a_file_too() {
        let cli = parse(&["status", "--api-token", "s3cret"]).expect("a token");
        assert_eq!(cli.global.api_token().expect("no file").as_deref(), Some("s3cret"));
        let dir = std::env::temp_dir().join(format!("overlay-cli-token-{}", std::process::id()));
        std::fs::write(&dir, "from-file\n").expect("write");
        let cli = parse(&["--api-token-file", dir.to_str().expect("UTF-8"), "ring"]).expect("a file");
        assert_eq!(cli.global.api_token().expect("read").as_deref(), Some("from-file"));
        let _ = std::fs::remove_file(&dir);
        assert!(parse(&["ring", "--api-token", "a", "--api-token-file", "f"]).is_err());
    }

    #[test]
    fn put_takes_a_value_a_file_or_stdin_but_not_two() {
        let cli = parse(&["put", "k", "v"]).expect("value");
        assert!(
            matches!(cli.command, Command::Put(PutArgs { value: Some(ref v), file: None, .. }) if v == "v")
        );
        let cli = parse(&["put", "k", "--file", "/etc/hostname"]).expect("file");
        assert!(matches!(cli.command, Command::Put(PutArgs { value: None, file: Some(_), .. })));
        let cli = parse(&["put", "k", "-"]).expect("stdin");
        assert!(matches!(cli.command, Command::Put(PutArgs { value: Some(ref v), .. }) if v == "-"));
        assert!(parse(&["put", "k"]).is_err());
        assert!(parse(&["put", "k", "v", "--file", "f"]).is_err());
    }

    #[test]
    fn bench_flags_are_bounded() {
        let cli = parse(&[
            "bench",
            "--ops",
            "100",
            "--concurrency",
            "4",
            "--value-size",
            "10",
            "--read-ratio",
            "0.5",
        ])
        .expect("valid bench");
        let Command::Bench(bench) = cli.command else { panic!("bench expected") };
        assert_eq!((bench.ops, bench.concurrency, bench.value_size), (100, 4, 10));
        assert!((bench.read_ratio - 0.5).abs() < f64::EPSILON);
        assert!(parse(&["bench", "--read-ratio", "1.5"]).is_err());
        assert!(parse(&["bench", "--concurrency", "0"]).is_err());
        assert!(parse(&["bench", "--ops", "0"]).is_err());
    }

    #[test]
    fn group_subcommands_parse_with_global_flags_anywhere() {
        let cli = parse(&["group", "join", "chat", "--json"]).expect("join");
        assert!(cli.global.json);
        assert!(matches!(cli.command, Command::Group(GroupCommand::Join { ref group }) if group == "chat"));
        let cli = parse(&["--node", "http://127.0.0.1:9", "group", "leave", "chat"]).expect("leave");
        assert_eq!(cli.global.node.as_deref(), Some("http://127.0.0.1:9"));
        assert!(matches!(cli.command, Command::Group(GroupCommand::Leave { ref group }) if group == "chat"));
        let cli = parse(&["group", "tree", "chat"]).expect("tree");
        assert!(matches!(cli.command, Command::Group(GroupCommand::Tree { ref group }) if group == "chat"));
        let cli = parse(&["group", "list", "--json"]).expect("list");
        assert!(cli.global.json);
        assert!(matches!(cli.command, Command::Group(GroupCommand::List)));
        assert!(parse(&["group", "join"]).is_err());
        assert!(parse(&["group"]).is_err());
    }

    #[test]
    fn group_send_takes_a_message_or_stdin_and_an_optional_sender() {
        let cli = parse(&["group", "send", "chat", "hello there", "--from", "alice"]).expect("send");
        let Command::Group(GroupCommand::Send(send)) = cli.command else { panic!("group send expected") };
        assert_eq!((send.group.as_str(), send.message.as_str()), ("chat", "hello there"));
        assert_eq!(send.from.as_deref(), Some("alice"));
        let cli = parse(&["group", "send", "chat", "-"]).expect("stdin");
        let Command::Group(GroupCommand::Send(send)) = cli.command else { panic!("group send expected") };
        assert_eq!(send.message, "-");
        assert!(send.from.is_none());
        // A message that starts with a dash goes after `--`.
        let cli = parse(&["group", "send", "chat", "--", "-1 from me"]).expect("dash message");
        let Command::Group(GroupCommand::Send(send)) = cli.command else { panic!("group send expected") };
        assert_eq!(send.message, "-1 from me");
        assert!(parse(&["group", "send", "chat"]).is_err());
    }

    #[test]
    fn group_listen_takes_a_starting_sequence_number() {
        let cli = parse(&["group", "listen", "chat", "--from", "17", "--json"]).expect("listen");
        assert!(cli.global.json);
        let Command::Group(GroupCommand::Listen(listen)) = cli.command else { panic!("listen expected") };
        assert_eq!((listen.group.as_str(), listen.from), ("chat", Some(17)));
        let cli = parse(&["group", "listen", "chat"]).expect("listen live");
        let Command::Group(GroupCommand::Listen(listen)) = cli.command else { panic!("listen expected") };
        assert_eq!(listen.from, None);
        assert!(parse(&["group", "listen", "chat", "--from", "x"]).is_err());
        assert!(parse(&["group", "listen", "chat", "--from", "-1"]).is_err());
    }

    #[test]
    fn queue_subcommands_parse_and_bound_their_waits() {
        let cli = parse(&["queue", "get", "jobs", "--wait", "2.5"]).expect("parses");
        let Command::Queue(QueueCommand::Get(get)) = cli.command else { panic!("queue get expected") };
        assert_eq!((get.queue.as_str(), get.wait, get.lease), ("jobs", 2.5, 30.0));
        assert!(parse(&["queue", "get", "jobs", "--wait", "301"]).is_err());
        assert!(parse(&["queue", "poll", "jobs", "--lease", "0"]).is_err());
        let cli = parse(&["queue", "put", "jobs", "-", "--json"]).expect("parses");
        assert!(
            matches!(cli.command, Command::Queue(QueueCommand::Put { ref message, .. }) if message == "-")
        );
        assert!(cli.global.json);
    }

    #[test]
    fn cluster_node_counts_are_bounded() {
        assert!(parse(&["cluster", "up", "-n", "0"]).is_err());
        assert!(parse(&["cluster", "up", "-n", "65"]).is_err());
        let cli = parse(&["cluster", "up"]).expect("default node count");
        assert!(matches!(cli.command, Command::Cluster(ClusterCommand::Up(UpArgs { nodes: 3, .. }))));
    }
}
