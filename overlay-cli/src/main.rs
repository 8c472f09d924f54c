//! `overlay`: parses the command line, runs the subcommand, and turns its outcome into one
//! line on stderr and an exit code. Everything else lives in the modules below.

mod bench;
mod chat;
mod cli;
mod cluster;
mod commands;
mod demo;
mod group;
mod output;
mod process;
mod queue;
mod signing;

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use overlay_api::ApiError;

use crate::cli::{Cli, ClusterCommand, Command};

/// The key does not exist (get, delete); nothing arrived in a queue (queue get, poll).
const EXIT_KEY_NOT_FOUND: u8 = 1;
/// The node could not be reached.
const EXIT_UNREACHABLE: u8 = 2;
/// Any other failure.
const EXIT_FAILURE: u8 = 3;
/// A conditional write found the key in another state.
const EXIT_CONFLICT: u8 = 4;
/// The command line is wrong (sysexits' EX_USAGE; clap's own 2 would collide with
/// "unreachable").
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version are "errors" to clap that go to stdout and mean success.
            let code = if error.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report_failure(&cli, &error),
    }
}

fn run(cli: &Cli) -> Result<()> {
    let global = &cli.global;
    let out = &mut io::stdout().lock();
    match &cli.command {
        Command::Put(args) => commands::put(global, args, out),
        Command::Get { key, local } => commands::get(global, key, *local, out),
        Command::Delete { key, if_version, sign } => {
            commands::delete(global, key, if_version.as_deref(), sign.as_deref(), out)
        }
        Command::Keygen { file } => signing::keygen(file, out),
        Command::Lookup { key } => commands::lookup(global, key, out),
        Command::Status => commands::status(global, out),
        Command::Ring => commands::ring(global, out),
        Command::Group(command) => group::run(global, command, out),
        Command::Chat(args) => chat::run(global, args, out),
        Command::Queue(command) => queue::run(global, command, out),
        Command::Cluster(command) => run_cluster(global, command, out),
        Command::Demo(args) => demo::run(global, args, out),
        Command::Bench(args) => bench::run(global, args, out),
    }
}

fn run_cluster(global: &cli::GlobalArgs, command: &ClusterCommand, out: &mut impl Write) -> Result<()> {
    let dir = &global.dir;
    let cluster = match command {
        ClusterCommand::Up(args) => {
            let cluster =
                cluster::up(dir, usize::from(args.nodes), args.fresh, args.binary.node_bin.as_deref())?;
            if !global.json {
                writeln!(out, "{} nodes form a correct ring ({}):", cluster.nodes.len(), dir.display())?;
            }
            cluster
        }
        ClusterCommand::Status => cluster::ClusterFile::load_existing(dir)?,
        ClusterCommand::Kill { index } => {
            cluster::kill(dir, *index)?;
            if !global.json {
                writeln!(out, "killed node {index} (SIGKILL)")?;
                return Ok(());
            }
            cluster::ClusterFile::load_existing(dir)?
        }
        ClusterCommand::Start(args) => {
            let cluster = cluster::start(dir, args.index, args.binary.node_bin.as_deref())?;
            if !global.json {
                writeln!(out, "node {} is back in the ring:", args.index)?;
            }
            cluster
        }
        ClusterCommand::Down => {
            let (stopped, killed) = cluster::down(dir)?;
            if !global.json {
                writeln!(
                    out,
                    "stopped {stopped} node{} ({killed} needed SIGKILL)",
                    if stopped == 1 { "" } else { "s" }
                )?;
                return Ok(());
            }
            cluster::ClusterFile::load_existing(dir)?
        }
    };
    // With --json every cluster subcommand ends with the cluster's state, in one shape.
    if global.json {
        output::write_json(out, &cluster.status_json())?;
    } else {
        cluster::write_table(&cluster, out)?;
    }
    Ok(())
}

/// Prints the one-line reason and picks the exit code. Key-not-found and unreachable get
/// their own codes only for commands that talk to a node directly; inside cluster and demo
/// steps they are just a failed step.
fn report_failure(cli: &Cli, error: &anyhow::Error) -> ExitCode {
    if is_broken_pipe(error) {
        // The reader (`| head`) has what it wanted; that is not a failure of ours.
        return ExitCode::SUCCESS;
    }
    let message = format!("{error:#}").replace('\n', " ");
    let talks_to_a_node = matches!(
        cli.command,
        Command::Put(_)
            | Command::Get { .. }
            | Command::Delete { .. }
            | Command::Lookup { .. }
            | Command::Status
            | Command::Ring
            | Command::Group(_)
            | Command::Chat(_)
            | Command::Queue(_)
            | Command::Bench(_)
    );
    if error.chain().any(|cause| cause.is::<queue::NothingArrived>()) {
        let _ = writeln!(io::stderr(), "overlay: {message}");
        return ExitCode::from(EXIT_KEY_NOT_FOUND);
    }
    let api_error = error.chain().find_map(|cause| cause.downcast_ref::<ApiError>());
    let (line, code) = match api_error {
        Some(ApiError::KeyNotFound { .. }) if talks_to_a_node => (message, EXIT_KEY_NOT_FOUND),
        Some(ApiError::Conflict { .. }) if talks_to_a_node => (message, EXIT_CONFLICT),
        Some(ApiError::Unauthorized { .. }) if talks_to_a_node => (
            format!(
                "{message}; give the node's token with --api-token TOKEN, OVERLAY_API_TOKEN or \
                 --api-token-file PATH (a node not on loopback printed it at its first start and \
                 keeps it in its data directory's api-token)"
            ),
            EXIT_FAILURE,
        ),
        Some(ApiError::Unreachable { url, .. }) if talks_to_a_node => {
            (format!("{message}; {}", how_to_start_a_node(cli, url)), EXIT_UNREACHABLE)
        }
        _ => (message, EXIT_FAILURE),
    };
    // If stderr itself is gone there is nowhere left to report to.
    let _ = writeln!(io::stderr(), "overlay: {line}");
    ExitCode::from(code)
}

/// Advice for an unreachable node: restart the local cluster if there is one that is merely
/// stopped, otherwise the ways to get a node running.
fn how_to_start_a_node(cli: &Cli, url: &str) -> String {
    let dir = &cli.global.dir;
    if cli.global.node.is_none() && matches!(cluster::ClusterFile::load(dir), Ok(Some(_))) {
        return format!(
            "the local cluster in {} has no running node: start it with `overlay cluster up -n 3 --dir {}`",
            dir.display(),
            dir.display()
        );
    }
    format!(
        "start a local cluster with `overlay cluster up -n 3`, or a node with \
         `overlay-node --listen /ip4/127.0.0.1/tcp/4001 --http {} --data-dir ./node-data`, \
         or point --node / OVERLAY_NODE at a running one",
        url.strip_prefix("http://").unwrap_or(url)
    )
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe))
}
