//! The overlay node: drives the `dht` core over libp2p, persists records in redb, and serves an
//! HTTP API.
//!
//! [`run`] wires the pieces: identity and store from the data directory, the swarm, the event loop
//! that owns the core, and the HTTP server ([`serve`]), behind a bearer token when [`api_token`]
//! says so.
//! SIGINT/SIGTERM (the `shutdown` token) makes the node hand off its records, leave the ring, and
//! return.

pub mod address;
pub mod api_token;
pub mod chat;
pub mod config;
pub mod event_loop;
pub mod groups;
pub mod http;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod network;
mod page;
pub mod queue_store;
pub mod serve;
pub mod storage;
mod wal;

use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, noise, tcp, yamux};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Flags;
use crate::event_loop::{EventLoop, LoopConfig};
use crate::metrics::SwarmMetrics;
use crate::network::Behaviour;
use crate::storage::Storage;

/// Runs a node until `shutdown` fires (then leaves gracefully) or it fails.
pub async fn run(flags: Flags, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dht_config = flags.dht_config()?;
    info!(?flags, ?dht_config, "effective configuration");
    std::fs::create_dir_all(&flags.data_dir)
        .with_context(|| format!("creating the data directory {}", flags.data_dir.display()))?;
    let keypair = identity::load_or_create(&flags.data_dir)?;
    let chat_keypair = keypair.clone();
    // A node restarting on its old store may have made compare-and-set promises it forgot.
    let resumed_store = Storage::exists_in(&flags.data_dir);
    let storage = Storage::open_with(&flags.data_dir, Duration::from_millis(flags.fsync_interval_ms))
        .context("opening the record store")?;
    let queue_store = queue_store::QueueStore::open(&flags.data_dir).context("opening the queue store")?;

    let rpc_timeout = Duration::from_millis(flags.rpc_timeout_ms);
    let max_kv_frame = flags.max_value_bytes + dht::store::MAX_KEY_BYTES + 4096;
    let peer_limits = flags.peer_limits();
    let (dns_config, dns_opts) = dns_resolver_settings()?;
    let mut libp2p_registry = prometheus_client::registry::Registry::default();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_dns_config(dns_config, dns_opts)
        .with_bandwidth_metrics(&mut libp2p_registry)
        .with_behaviour(|key| Behaviour::new(key, rpc_timeout, max_kv_frame, &peer_limits))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_secs(120))
                // Send each request together with its protocol proposal instead of waiting a
                // round trip for the protocol to be accepted: every request is a new substream.
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
        .build();
    swarm.listen_on(flags.listen.clone()).with_context(|| format!("listening on {}", flags.listen))?;
    // The actual addresses (a port of 0 resolved, 0.0.0.0 expanded to each interface) are known
    // once the listener is up; an unspecified address reports every interface in a burst.
    let mut listening = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let wait = if listening.is_empty() {
            deadline
        } else {
            tokio::time::Instant::now() + Duration::from_millis(100)
        };
        match tokio::time::timeout_at(wait, swarm.select_next_some()).await {
            Ok(SwarmEvent::NewListenAddr { address, .. }) => listening.push(address),
            Ok(SwarmEvent::ListenerError { error, .. }) => anyhow::bail!("listener failed: {error}"),
            Ok(_) => {}
            Err(_) if listening.is_empty() => {
                anyhow::bail!("no listen address after 10 s on {}", flags.listen)
            }
            Err(_) => break,
        }
    }
    let listen_addr =
        without_p2p(preferred_announce(&listening).expect("at least one address: checked above"));
    let announce = match &flags.announce {
        Some(announce) => announce.clone(),
        None if flags.announce_hostname => hostname_address(&listen_addr)?,
        None => listen_addr,
    };
    let (commands_tx, commands_rx) = mpsc::channel(1024);
    let chat = chat::Chat::new(&chat_keypair, &announce, flags.mailbox_quota.get(), commands_tx.clone())?;
    tokio::spawn(chat.clone().renew_forever());

    let listener = tokio::net::TcpListener::bind(flags.http)
        .await
        .with_context(|| format!("binding the HTTP API to {}", flags.http))?;
    let http_bound = listener.local_addr()?;
    let http_addr = http_bound.to_string();
    let api_token = api_token::resolve(
        flags.api_token.as_ref(),
        flags.api_token_file.as_deref(),
        http_bound,
        &flags.data_dir,
    )?;
    api_token::log_requirement(http_bound, api_token.as_ref());
    info!(peer = %swarm.local_peer_id(), p2p = %announce, http = %http_addr, "node up");

    let event_loop_peer = swarm.local_peer_id().to_string();
    let announce_for_file = announce.clone();
    info!(%announce, listening = ?listening, "announcing");
    let loop_config = LoopConfig {
        replicas: flags.replicas.get(),
        max_value_bytes: flags.max_value_bytes,
        sync_interval: Duration::from_millis(flags.sync_ms),
        op_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_millis(flags.rpc_timeout_ms),
        clock_offset_ms: flags.clock_offset_ms,
        join_timeout: Duration::from_secs(flags.join_timeout_s),
        bootstrap: flags.bootstrap.clone(),
        resumed_store,
        chat: Some(chat.clone()),
        peer_limits,
        group_history_bytes: flags.group_history_bytes,
    };
    let event_loop = EventLoop::new(
        swarm,
        announce,
        dht_config,
        storage,
        queue_store,
        loop_config,
        SwarmMetrics::new(libp2p_registry),
        commands_rx,
        shutdown.clone(),
    )?;
    write_node_file(&flags.data_dir, &event_loop_peer, &announce_for_file, &http_addr)?;
    let refusals = std::sync::Arc::new(api_token::Refusals::default());
    let serve_config = flags.serve_config();
    let limits = std::sync::Arc::new(serve::Limits::new(&serve_config));
    let state =
        http::ApiState { commands: commands_tx, http: http_addr, refusals, limits: limits.clone(), chat };
    let app = http::router(state, flags.max_value_bytes, api_token.map(|(token, _)| token));
    let http_stop = CancellationToken::new();
    let server = tokio::spawn(serve::serve(listener, app, serve_config, limits, http_stop.clone()));

    let result = event_loop.run().await;
    http_stop.cancel();
    // In-flight HTTP requests get their answers (the loop is gone: 503); do not wait long.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    result
}

/// Writes `<data-dir>/node.json` with the addresses actually bound (ports of 0 resolved), for
/// tools and tests that start nodes without choosing ports.
fn write_node_file(
    data_dir: &std::path::Path,
    peer: &str,
    p2p: &Multiaddr,
    http: &str,
) -> anyhow::Result<()> {
    let body = serde_json::json!({ "peer_id": peer, "p2p": p2p.to_string(), "http": http, "pid": std::process::id() });
    let tmp = data_dir.join("node.json.tmp");
    std::fs::write(&tmp, body.to_string()).context("writing node.json")?;
    std::fs::rename(&tmp, data_dir.join("node.json")).context("writing node.json")?;
    Ok(())
}

/// `/dns4/<hostname>/tcp/<port of listen_addr>`.
fn hostname_address(listen_addr: &Multiaddr) -> anyhow::Result<Multiaddr> {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .context("reading this host's name for --announce-hostname")?;
    let port = listen_addr
        .iter()
        .find_map(|p| if let Protocol::Tcp(port) = p { Some(port) } else { None })
        .context("the listen address has no TCP port")?;
    format!("/dns4/{}/tcp/{port}", hostname.trim()).parse().context("building the announce address")
}

/// The address to tell peers when none was given: a non-loopback one if the node listens on
/// several interfaces (in a container, loopback reaches nobody else), else the first.
fn preferred_announce(listening: &[Multiaddr]) -> Option<&Multiaddr> {
    let is_loopback = |addr: &Multiaddr| {
        addr.iter().any(|p| match p {
            Protocol::Ip4(ip) => ip.is_loopback(),
            Protocol::Ip6(ip) => ip.is_loopback(),
            _ => false,
        })
    };
    listening.iter().find(|a| !is_loopback(a)).or_else(|| listening.first())
}

fn without_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect()
}

/// The system's DNS configuration, with the resolver's cache bounded to a second or two.
///
/// Peers announce names (`/dns4/<container>/tcp/4001`) because a name outlives an address: a
/// container reconnected after a partition may come back with another address, even one a
/// killed container held. The resolver's default cache keeps an answer for its TTL (600 s from
/// Docker's DNS), so neighbours kept dialing the old address and the ring never closed around
/// the node again. Re-resolving on every dial costs a local query per new connection.
fn dns_resolver_settings() -> anyhow::Result<(libp2p::dns::ResolverConfig, libp2p::dns::ResolverOpts)> {
    let (config, mut opts) = hickory_resolver::system_conf::read_system_conf()
        .context("reading the system's DNS configuration")?;
    opts.positive_max_ttl = Some(Duration::from_secs(2));
    opts.negative_max_ttl = Some(Duration::from_secs(1));
    Ok((config, opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_on_all_interfaces_announces_a_reachable_address() {
        let addrs: Vec<Multiaddr> = ["/ip4/127.0.0.1/tcp/4001", "/ip4/172.18.0.3/tcp/4001"]
            .iter()
            .map(|a| a.parse().expect("valid"))
            .collect();
        assert_eq!(preferred_announce(&addrs), Some(&addrs[1]));
        assert_eq!(preferred_announce(&addrs[..1]), Some(&addrs[0]));
        assert_eq!(preferred_announce(&[]), None);
    }
}
