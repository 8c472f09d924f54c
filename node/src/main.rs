//! `overlay-node`: parses flags, sets up logging, and runs the node until SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use overlay_node::config::Flags;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

fn main() -> ExitCode {
    let flags = Flags::parse();
    let filter = log_filter();
    let registry = tracing_subscriber::registry().with(filter);
    if flags.log_json {
        registry.with(fmt::layer().with_writer(std::io::stderr).json()).init();
    } else {
        registry.with(fmt::layer().with_writer(std::io::stderr)).init();
    }
    // One thread: the event loop is a single task that owns all state, HTTP handlers only pass
    // messages to it, and storage writes have their own thread. Many nodes share a machine, and
    // cross-thread wake-ups and per-thread allocator arenas cost more than they bring.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("overlay-node: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    let result = runtime.block_on(async {
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received: leaving");
            signals.cancel();
        });
        overlay_node::run(flags, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("overlay-node: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The log filter from `RUST_LOG`: comma-separated `level` and `target=level` directives, such
/// as `info,dht=debug`; `info` when unset. (`Targets` rather than `EnvFilter`: the latter's span and
/// field matching brings a regex engine, about 0.3 MB more code resident in every node.)
fn log_filter() -> Targets {
    let default = Targets::new().with_default(LevelFilter::INFO);
    match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => spec.parse().unwrap_or_else(|error| {
            eprintln!("overlay-node: ignoring RUST_LOG={spec:?} ({error}); logging at info");
            default
        }),
        _ => default,
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        // Without signal handlers the node can still be stopped by killing it.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
