//! The libp2p side of a node: the composed behaviour (connection limits, identify, ping, and the
//! overlay's request/response protocols) and the size-capped CBOR codec they share.
//!
//! `/overlay/ring/1` carries the `dht` core's messages in a [`RingEnvelope`] that adds the
//! sender's announced address (its `PeerId` comes authenticated from Noise). `/overlay/kv/1`
//! carries the storage protocol. `/overlay/group/1` carries the multicast core's one-way messages
//! (answered with an empty acknowledgement) and the driver's tree queries; `/overlay/queue/1` the
//! queue core's one-way messages the same way; `/overlay/chat/1` a sealed direct
//! message to the node where its recipient is logged in (answered delivered / not here / refused). Every frame is read with a hard cap before it is parsed; what
//! does not decode is an I/O error of kind `InvalidData`, which libp2p reports as an inbound or
//! outbound failure and the event loop counts.

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::time::Duration;

use dht::store::{KvRequest, KvResponse};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{StreamProtocol, connection_limits, identify, identity, ping, request_response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::address::PeerAddr;
use crate::limits::PeerLimits;

/// Protocol name of the ring maintenance and lookup messages.
pub const RING_PROTOCOL: StreamProtocol = StreamProtocol::new("/overlay/ring/1");
/// Protocol name of the storage messages.
pub const KV_PROTOCOL: StreamProtocol = StreamProtocol::new("/overlay/kv/1");
/// Protocol name of the multicast messages.
pub const GROUP_PROTOCOL: StreamProtocol = StreamProtocol::new("/overlay/group/1");
/// Protocol name of the queue messages.
pub const QUEUE_PROTOCOL: StreamProtocol = StreamProtocol::new("/overlay/queue/1");
/// Cap on one queue frame.
pub const MAX_QUEUE_FRAME: usize = dht::queue::MAX_QUEUE_FRAME_BYTES;
/// Cap on one multicast frame.
pub const MAX_GROUP_FRAME: usize = dht::multicast::MAX_GROUP_FRAME_BYTES;
/// Protocol name of chat delivery (a sealed direct message to the recipient's node).
pub const CHAT_PROTOCOL: StreamProtocol = StreamProtocol::new("/overlay/chat/1");
/// Cap on one chat frame: the largest envelope (its CBOR form) and framing.
pub const MAX_CHAT_FRAME: usize = overlay_chat::MAX_ENVELOPE_BYTES + 1024;
/// Cap on one ring frame.
pub const MAX_RING_FRAME: usize = dht::message::MAX_MESSAGE_BYTES;

/// A ring message with the address its sender can be dialed at.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RingEnvelope {
    /// The sender's announced address (a hint; the peer id is authenticated separately).
    pub sender: PeerAddr,
    /// The core's message.
    pub message: dht::Message<PeerAddr>,
    /// On an answer to `GetNeighbours` only: the live keys the sender stores. Ring walks
    /// (`/v1/ring`) ask every member for its neighbours and collect this on the way, so the page
    /// can show every node's key count without a request of its own; the core never sees it. Left
    /// out of the encoding when `None`, and `None` from a node that predates it. A peer's own
    /// claim: shown as reported, used for nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_keys: Option<u64>,
}

/// A request on the group protocol.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum GroupRequest {
    /// A multicast core message, from the sender's announced address.
    Message {
        /// The sender's announced address (its `PeerId` is checked against the connection's).
        sender: PeerAddr,
        /// The core's message.
        message: Box<dht::multicast::GroupMessage<PeerAddr>>,
    },
    /// "What is your place in this group's tree?" (for `/v1/groups/{g}/tree`).
    Describe {
        /// The group.
        group: dht::multicast::GroupName,
    },
}

/// The answer on the group protocol.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum GroupReply {
    /// The message was received (whatever the core makes of it).
    Ack,
    /// The answer to [`GroupRequest::Describe`]; `None` when the node has no state for the group.
    Described(Option<TreeNodeInfo>),
    /// The request was refused (malformed, or the sender's address names another peer).
    Refused,
}

/// A request on the queue protocol: one of the queue core's one-way messages (answered with an
/// empty acknowledgement; the core matches its own answers by request id).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueueRequest {
    /// The sender's announced address (its `PeerId` is checked against the connection's).
    pub sender: PeerAddr,
    /// The core's message.
    pub message: Box<dht::queue::QueueMessage<PeerAddr>>,
}

/// The answer on the queue protocol.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum QueueReply {
    /// The message was received (whatever the core makes of it).
    Ack,
    /// The request was refused (the sender's address names another peer).
    Refused,
}

/// One node's place in a group's tree.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TreeNodeInfo {
    /// `root`, `forwarder` or `member`.
    pub role: String,
    /// Whether a local member joined.
    pub member: bool,
    /// The parent.
    pub parent: Option<dht::NodeRef<PeerAddr>>,
    /// The children (at most the core's fan-out bound).
    pub children: Vec<dht::NodeRef<PeerAddr>>,
}

/// A request on the chat protocol: the sealed envelope, CBOR-encoded by `overlay_chat`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChatRequest {
    /// `Envelope::to_cbor`.
    #[serde(with = "dht::bytes")]
    pub envelope: Vec<u8>,
}

/// The answer on the chat protocol (see `crate::chat`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatReply {
    /// A live listener of the recipient at this node has it.
    Delivered,
    /// The recipient is not logged in here, or nobody listens: queue it.
    NotHere,
    /// Refused (bad signature, replay, malformed); the reason, for logs.
    Refused(String),
}

/// A request/response codec that writes one CBOR value per stream and refuses to read more than
/// `max_bytes`.
#[derive(Debug)]
pub struct CborCodec<Req, Resp> {
    max_bytes: usize,
    types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> CborCodec<Req, Resp> {
    /// A codec that accepts frames of at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        CborCodec { max_bytes, types: PhantomData }
    }
}

impl<Req, Resp> Clone for CborCodec<Req, Resp> {
    fn clone(&self) -> Self {
        CborCodec::new(self.max_bytes)
    }
}

async fn read_capped<T, V>(io: &mut T, max_bytes: usize) -> io::Result<V>
where
    T: AsyncRead + Unpin + Send,
    V: DeserializeOwned,
{
    let mut buf = Vec::new();
    io.take(max_bytes as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame exceeds the cap of {max_bytes} bytes"),
        ));
    }
    ciborium::de::from_reader_with_recursion_limit(buf.as_slice(), 32)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("malformed frame: {e}")))
}

fn encode<V: Serialize>(value: &V) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(256);
    ciborium::into_writer(value, &mut buf).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(buf)
}

async fn write_frame<T>(io: &mut T, frame: io::Result<Vec<u8>>) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    io.write_all(&frame?).await?;
    io.close().await
}

impl<Req, Resp> request_response::Codec for CborCodec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + 'static,
    Resp: Serialize + DeserializeOwned + Send + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    fn read_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> impl Future<Output = io::Result<Req>> + Send
    where
        T: AsyncRead + Unpin + Send,
    {
        read_capped(io, self.max_bytes)
    }

    fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> impl Future<Output = io::Result<Resp>> + Send
    where
        T: AsyncRead + Unpin + Send,
    {
        read_capped(io, self.max_bytes)
    }

    fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Req,
    ) -> impl Future<Output = io::Result<()>> + Send
    where
        T: AsyncWrite + Unpin + Send,
    {
        // Encode before the first await, so the future holds bytes rather than the message.
        write_frame(io, encode(&req))
    }

    fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> impl Future<Output = io::Result<()>> + Send
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, encode(&resp))
    }
}

/// Codec of the ring protocol.
pub type RingCodec = CborCodec<RingEnvelope, RingEnvelope>;
/// Codec of the storage protocol.
pub type KvCodec = CborCodec<KvRequest, KvResponse>;
/// Codec of the group protocol.
pub type GroupCodec = CborCodec<GroupRequest, GroupReply>;
/// Codec of the chat protocol.
pub type ChatCodec = CborCodec<ChatRequest, ChatReply>;
/// Codec of the queue protocol.
pub type QueueCodec = CborCodec<QueueRequest, QueueReply>;

/// Everything the node's swarm runs.
#[derive(NetworkBehaviour)]
#[allow(missing_debug_implementations)] // the derived event enum and inner behaviours are not all Debug
pub struct Behaviour {
    /// Refuses connections past the limits of [`PeerLimits`] (first, so that a refused
    /// connection reaches no other behaviour).
    pub limits: connection_limits::Behaviour,
    /// Exchanges agent and addresses with every peer.
    pub identify: identify::Behaviour,
    /// Keeps connections alive and measures round trips.
    pub ping: ping::Behaviour,
    /// The `dht` core's messages.
    pub ring: request_response::Behaviour<RingCodec>,
    /// Storage messages.
    pub kv: request_response::Behaviour<KvCodec>,
    /// Multicast messages and tree queries.
    pub group: request_response::Behaviour<GroupCodec>,
    /// Direct chat messages to the recipient's node.
    pub chat: request_response::Behaviour<ChatCodec>,
    /// Queue messages.
    pub queue: request_response::Behaviour<QueueCodec>,
}

/// How often each connection's round trip is measured.
pub const PING_INTERVAL: Duration = Duration::from_secs(60);

impl Behaviour {
    /// The behaviour for a node with `key`. `request_timeout` bounds every request/response
    /// exchange; `max_kv_frame` caps storage frames (a record plus framing); `limits` bounds
    /// connections.
    pub fn new(
        key: &identity::Keypair,
        request_timeout: Duration,
        max_kv_frame: usize,
        limits: &PeerLimits,
    ) -> Self {
        let config = request_response::Config::default()
            .with_request_timeout(request_timeout)
            .with_max_concurrent_streams(1024);
        Behaviour {
            limits: connection_limits::Behaviour::new(limits.connection_limits()),
            identify: identify::Behaviour::new(identify::Config::new(
                "/overlay/1.0.0".to_string(),
                key.public(),
            )),
            // Ping only feeds the round-trip metric: the ring's own messages detect dead
            // peers. At libp2p's default (every 15 s on every connection) it was a steady
            // share of what an idle node sends.
            ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL)),
            ring: request_response::Behaviour::with_codec(
                RingCodec::new(MAX_RING_FRAME),
                [(RING_PROTOCOL, request_response::ProtocolSupport::Full)],
                config.clone(),
            ),
            kv: request_response::Behaviour::with_codec(
                KvCodec::new(max_kv_frame),
                [(KV_PROTOCOL, request_response::ProtocolSupport::Full)],
                config.clone(),
            ),
            group: request_response::Behaviour::with_codec(
                GroupCodec::new(MAX_GROUP_FRAME),
                [(GROUP_PROTOCOL, request_response::ProtocolSupport::Full)],
                config.clone(),
            ),
            chat: request_response::Behaviour::with_codec(
                ChatCodec::new(MAX_CHAT_FRAME),
                [(CHAT_PROTOCOL, request_response::ProtocolSupport::Full)],
                config.clone(),
            ),
            queue: request_response::Behaviour::with_codec(
                QueueCodec::new(MAX_QUEUE_FRAME),
                [(QUEUE_PROTOCOL, request_response::ProtocolSupport::Full)],
                config,
            ),
        }
    }
}
