//! The node's command-line flags (each also an `OVERLAY_*` environment variable) and the
//! settings derived from them.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use libp2p::Multiaddr;

use crate::api_token::ApiToken;
use crate::limits::PeerLimits;

/// A peer-to-peer overlay node: a Chord ring with replicated, persistent key/value storage.
#[derive(Clone, Debug, Parser)]
#[command(name = "overlay-node", version, about)]
pub struct Flags {
    /// Address to listen on for peers.
    #[arg(long, env = "OVERLAY_LISTEN", default_value = "/ip4/127.0.0.1/tcp/4001")]
    pub listen: Multiaddr,
    /// Address peers should dial to reach this node [default: the listen address].
    #[arg(long, env = "OVERLAY_ANNOUNCE")]
    pub announce: Option<Multiaddr>,
    /// Announce `/dns4/<this host's name>/tcp/<port>` instead of an address: for containers,
    /// whose name resolves on their network even when their address changes.
    #[arg(long, env = "OVERLAY_ANNOUNCE_HOSTNAME", conflicts_with = "announce")]
    pub announce_hostname: bool,
    /// A node of the ring to join (repeatable; `/p2p/<peer id>` optional). None: start a new ring.
    #[arg(long = "bootstrap", env = "OVERLAY_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Vec<Multiaddr>,
    /// Directory for the identity key and the record store.
    #[arg(long, env = "OVERLAY_DATA_DIR", default_value = "./overlay-data")]
    pub data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, env = "OVERLAY_HTTP", default_value = "127.0.0.1:7001")]
    pub http: SocketAddr,
    /// Bearer token the HTTP API requires outside `/`, `/page.js`, `/page.css`, `/metrics` and
    /// `/v1/status`. Without one, an API bound to loopback is open, and one bound to any other
    /// address uses `<data-dir>/api-token`, generated (and printed once) on first start.
    #[arg(long, env = overlay_api::auth::TOKEN_ENV, hide_env_values = true, value_name = "TOKEN")]
    pub api_token: Option<ApiToken>,
    /// Read the API token from this file (a mounted secret) instead.
    #[arg(
        long,
        env = overlay_api::auth::TOKEN_FILE_ENV,
        value_name = "PATH",
        conflicts_with = "api_token"
    )]
    pub api_token_file: Option<PathBuf>,
    /// Time a client has to send a request's headers, in milliseconds; also how long a kept-alive
    /// connection may sit idle between requests.
    #[arg(long, env = "OVERLAY_HTTP_HEADER_TIMEOUT_MS", default_value_t = NonZeroU64::new(10_000).expect("> 0"))]
    pub http_header_timeout_ms: NonZeroU64,
    /// HTTP connections open at once; more are closed as soon as they are accepted.
    #[arg(long, env = "OVERLAY_HTTP_MAX_CONNECTIONS", default_value_t = NonZeroUsize::new(4096).expect("> 0"))]
    pub http_max_connections: NonZeroUsize,
    /// Group message streams (`GET /v1/groups/{group}/messages`) open at once; more get 503.
    #[arg(long, env = "OVERLAY_MAX_LISTENERS", default_value_t = NonZeroUsize::new(256).expect("> 0"))]
    pub max_listeners: NonZeroUsize,
    /// Most DMs one sender may have waiting in one user's mailbox; the DM beyond it is refused
    /// (429) and nothing is stored.
    #[arg(long, env = "OVERLAY_MAILBOX_QUOTA", default_value_t = NonZeroU32::new(crate::chat::MAILBOX_QUOTA).expect("> 0"))]
    pub mailbox_quota: NonZeroU32,
    /// Established p2p connections in all; more are refused (see `limits::PeerLimits`).
    #[arg(long, env = "OVERLAY_MAX_CONNECTIONS", default_value_t = PeerLimits::default().max_connections)]
    pub max_connections: u32,
    /// Established p2p connections with one peer.
    #[arg(long, env = "OVERLAY_MAX_CONNECTIONS_PER_PEER", default_value_t = PeerLimits::default().max_connections_per_peer)]
    pub max_connections_per_peer: u32,
    /// Incoming p2p connections still in their handshake.
    #[arg(long, env = "OVERLAY_MAX_PENDING_INCOMING", default_value_t = PeerLimits::default().max_pending_incoming)]
    pub max_pending_incoming: u32,
    /// Outgoing p2p connections still being dialed.
    #[arg(long, env = "OVERLAY_MAX_PENDING_OUTGOING", default_value_t = PeerLimits::default().max_pending_outgoing)]
    pub max_pending_outgoing: u32,
    /// Requests per second one peer may send on each overlay protocol (ring, kv, group); more
    /// are refused and counted.
    #[arg(long, env = "OVERLAY_PEER_REQUEST_RATE", default_value_t = PeerLimits::default().request_rate)]
    pub peer_request_rate: u32,
    /// Requests one peer may send on each protocol at once after a quiet spell.
    #[arg(long, env = "OVERLAY_PEER_REQUEST_BURST", default_value_t = PeerLimits::default().request_burst)]
    pub peer_request_burst: u32,
    /// Requests per second all peers together may send, on every protocol; more are refused and
    /// counted (`reason="node_rate"`).
    #[arg(long, env = "OVERLAY_NODE_REQUEST_RATE", default_value_t = PeerLimits::default().node_request_rate)]
    pub node_request_rate: u32,
    /// Requests all peers together may send at once after a quiet spell.
    #[arg(long, env = "OVERLAY_NODE_REQUEST_BURST", default_value_t = PeerLimits::default().node_request_burst)]
    pub node_request_burst: u32,
    /// Bytes of messages a multicast group's root (and each backup) keeps in the group's history
    /// for members to fetch; the oldest go first.
    #[arg(long, env = "OVERLAY_GROUP_HISTORY_BYTES", default_value_t = NonZeroUsize::new(dht::multicast::MulticastConfig::default().history_bytes).expect("> 0"))]
    pub group_history_bytes: NonZeroUsize,
    /// Replicas of each key (n): the owner and n − 1 successors.
    #[arg(long, env = "OVERLAY_REPLICAS", default_value_t = NonZeroUsize::new(3).expect("3 > 0"))]
    pub replicas: NonZeroUsize,
    /// Length r of the successor list (at least 2; at least the replicas).
    #[arg(long, env = "OVERLAY_SUCCESSORS", default_value_t = NonZeroUsize::new(8).expect("8 > 0"))]
    pub successors: NonZeroUsize,
    /// Largest value accepted, in bytes.
    #[arg(long, env = "OVERLAY_MAX_VALUE_BYTES", default_value_t = dht::store::DEFAULT_MAX_VALUE_BYTES)]
    pub max_value_bytes: usize,
    /// Stabilize period, in milliseconds.
    #[arg(long, env = "OVERLAY_STABILIZE_MS", default_value_t = 500)]
    pub stabilize_ms: u64,
    /// Finger-refresh period, in milliseconds.
    #[arg(long, env = "OVERLAY_FIX_FINGERS_MS", default_value_t = 1000)]
    pub fix_fingers_ms: u64,
    /// Predecessor-check period, in milliseconds.
    #[arg(long, env = "OVERLAY_CHECK_PREDECESSOR_MS", default_value_t = 1000)]
    pub check_predecessor_ms: u64,
    /// Anti-entropy period (replicas compare digests), in milliseconds.
    #[arg(long, env = "OVERLAY_SYNC_MS", default_value_t = 3000)]
    pub sync_ms: u64,
    /// Per-message time-out for peer requests, in milliseconds.
    #[arg(long, env = "OVERLAY_RPC_TIMEOUT_MS", default_value_t = 1000)]
    pub rpc_timeout_ms: u64,
    /// How long to keep trying to join before giving up, in seconds.
    #[arg(long, env = "OVERLAY_JOIN_TIMEOUT_S", default_value_t = 60)]
    pub join_timeout_s: u64,
    /// At most this long between a write's acknowledgement and its fsync, in milliseconds. 0
    /// (the default): fsync before acknowledging. More: acknowledge once committed, fsync in the
    /// background; a crash of this node can lose its last writes, which the other replicas hold.
    #[arg(long, env = "OVERLAY_FSYNC_INTERVAL_MS", default_value_t = 0)]
    pub fsync_interval_ms: u64,
    /// Log as JSON lines instead of text (filter with RUST_LOG).
    #[arg(long, env = "OVERLAY_LOG_JSON")]
    pub log_json: bool,
    /// For tests: shift this node's wall clock by this many milliseconds (negative: behind), as a
    /// machine whose clock drifted would. Versions of writes come from it; nothing else does.
    #[arg(
        long,
        env = "OVERLAY_CLOCK_OFFSET_MS",
        default_value_t = 0,
        allow_hyphen_values = true,
        hide = true
    )]
    pub clock_offset_ms: i64,
}

impl Flags {
    /// The HTTP server's limits from these flags.
    pub fn serve_config(&self) -> crate::serve::ServeConfig {
        // A semaphore holds at most MAX_PERMITS; a bound beyond that is no bound at all anyway.
        let max = tokio::sync::Semaphore::MAX_PERMITS;
        crate::serve::ServeConfig {
            header_timeout: Duration::from_millis(self.http_header_timeout_ms.get()),
            max_connections: self.http_max_connections.get().min(max),
            max_listeners: self.max_listeners.get().min(max),
        }
    }

    /// What one peer may hold and send, from these flags.
    pub fn peer_limits(&self) -> PeerLimits {
        PeerLimits {
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer,
            max_pending_incoming: self.max_pending_incoming,
            max_pending_outgoing: self.max_pending_outgoing,
            request_rate: self.peer_request_rate,
            request_burst: self.peer_request_burst,
            node_request_rate: self.node_request_rate,
            node_request_burst: self.node_request_burst,
        }
    }

    /// The `dht` core's configuration from these flags.
    pub fn dht_config(&self) -> anyhow::Result<dht::Config> {
        let config = dht::Config::default()
            .with_successors(self.successors)
            .with_stabilize_interval(Duration::from_millis(self.stabilize_ms))
            .with_fix_fingers_interval(Duration::from_millis(self.fix_fingers_ms))
            .with_check_predecessor_interval(Duration::from_millis(self.check_predecessor_ms))
            // Streams are reliable: one attempt per request, with a generous time-out.
            .with_rpc_timeout(Duration::from_millis(self.rpc_timeout_ms))
            .with_request_attempts(1)
            .with_join_timeout(Duration::from_secs(self.join_timeout_s));
        config.validate()?;
        if self.replicas.get() > self.successors.get() + 1 {
            anyhow::bail!(
                "--replicas ({}) cannot exceed --successors + 1 ({}): replicas are the owner and its successors",
                self.replicas,
                self.successors.get() + 1
            );
        }
        if self.sync_ms == 0 {
            anyhow::bail!("--sync-ms must be greater than zero");
        }
        Ok(config)
    }
}
