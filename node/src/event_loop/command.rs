//! The API between the HTTP handlers and the event loop: [`Command`]s with oneshot replies, and
//! the answers that are not the store coordinator's own types.
//!
//! Owns only types; the loop routes each command to the room that serves it.

use std::time::Duration;

use dht::NodeRef;
use dht::queue::{AckOutcome, Leased, MsgId, QueueError, QueueName, StoredMessage};
use dht::store::{Consistency, Record};
use libp2p::Multiaddr;
use tokio::sync::{mpsc, oneshot};

use crate::address::PeerAddr;
use crate::groups::{GroupError, GroupView, Subscription, TreeView};
use crate::metrics::Snapshot;

pub use dht::kv::{Expect, KvError, Written};

/// The answer to a lookup: the key's id, its replicas (owner first) and the hops it took.
pub type Located = dht::kv::Located<PeerAddr>;

/// A snapshot of this node's view, for `/v1/status`.
#[derive(Clone, Debug)]
pub struct Status {
    /// This node.
    pub me: NodeRef<PeerAddr>,
    /// Addresses it listens on.
    pub listen: Vec<Multiaddr>,
    /// Whether it is a ring member.
    pub member: bool,
    /// Its predecessor.
    pub predecessor: Option<NodeRef<PeerAddr>>,
    /// Its successor list.
    pub successors: Vec<NodeRef<PeerAddr>>,
    /// Distinct fingers with the first index each appears at.
    pub fingers: Vec<(usize, NodeRef<PeerAddr>)>,
    /// Live keys and value bytes stored.
    pub keys: u64,
    /// Value bytes stored.
    pub bytes: u64,
    /// Time since start.
    pub uptime: Duration,
}

/// The ring as walked along successors from this node.
#[derive(Clone, Debug)]
pub struct RingWalk {
    /// Nodes in ring order, starting here.
    pub nodes: Vec<WalkedNode>,
    /// Whether the walk came back to this node.
    pub complete: bool,
}

/// One node of a [`RingWalk`].
#[derive(Clone, Debug)]
pub struct WalkedNode {
    /// The node.
    pub node: NodeRef<PeerAddr>,
    /// The live keys it stores, as it reported them with its neighbours (this node's own count
    /// for the first); `None` when it did not answer or did not say.
    pub keys: Option<u64>,
}

/// A request from the HTTP API.
#[derive(Debug)]
pub enum Command {
    /// Read a key.
    Get { key: Vec<u8>, consistency: Consistency, reply: oneshot::Sender<Result<Option<Record>, KvError>> },
    /// Read this node's own copy of a key, without asking any replica.
    GetLocal { key: Vec<u8>, reply: oneshot::Sender<Result<Option<Record>, KvError>> },
    /// Write a key.
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        consistency: Consistency,
        reply: oneshot::Sender<Result<Written, KvError>>,
    },
    /// Read a key linearizably (a quorum's state, finished first if it was not on a quorum).
    GetLinearizable { key: Vec<u8>, reply: oneshot::Sender<Result<Option<Record>, KvError>> },
    /// Write (`Some`) or delete (`None`) a key only if its state is as expected.
    CompareAndSet {
        key: Vec<u8>,
        expect: Expect,
        value: Option<Vec<u8>>,
        reply: oneshot::Sender<Result<Written, KvError>>,
    },
    /// Write a record its owner signed: a value or tombstone of a key under `signed/`
    /// ([`dht::signed`]), at the version the owner chose.
    PutSigned { record: Record, consistency: Consistency, reply: oneshot::Sender<Result<Written, KvError>> },
    /// Delete a key (write a tombstone).
    Delete { key: Vec<u8>, consistency: Consistency, reply: oneshot::Sender<Result<Written, KvError>> },
    /// Find a key's replicas.
    Lookup { key: Vec<u8>, reply: oneshot::Sender<Result<Located, KvError>> },
    /// This node's view.
    Status { reply: oneshot::Sender<Status> },
    /// The counters of the cores and the driver, and the storage statistics, for `/metrics`.
    Metrics { reply: oneshot::Sender<Snapshot> },
    /// Walk the ring.
    Ring { reply: oneshot::Sender<RingWalk> },
    /// The groups this node roots, forwards or belongs to.
    Groups { reply: oneshot::Sender<Vec<GroupView>> },
    /// Become a member of a group (until left).
    JoinGroup { group: String, reply: oneshot::Sender<Result<GroupView, GroupError>> },
    /// Stop being a member of a group (listeners keep it a member while they last).
    LeaveGroup { group: String, reply: oneshot::Sender<Result<(), GroupError>> },
    /// Send a message to a group; answered with its sequence number once the root stamped it.
    Publish {
        group: String,
        from: Option<String>,
        body: String,
        reply: oneshot::Sender<Result<u64, GroupError>>,
    },
    /// Attach a listener (the node is a member while one is attached).
    Subscribe { group: String, from: Option<u64>, reply: oneshot::Sender<Result<Subscription, GroupError>> },
    /// Walk a group's tree from its root.
    GroupTree { group: String, reply: oneshot::Sender<Result<TreeView, GroupError>> },
    /// Hand a sealed DM (`Envelope::to_cbor`) to the node `peer` at `addr` over
    /// `/overlay/chat/1`; answered with its reply, or why none came.
    ChatSend {
        peer: libp2p::PeerId,
        addr: Multiaddr,
        envelope: Vec<u8>,
        reply: oneshot::Sender<Result<crate::network::ChatReply, String>>,
    },
    /// Append to a queue; answered with the sequence number and put id once `W` holders have it.
    QueuePut {
        queue: QueueName,
        body: Vec<u8>,
        /// Who puts (a user or this node), for quotas.
        sender: String,
        /// Most messages of this sender the queue may hold.
        quota: Option<u32>,
        reply: oneshot::Sender<Result<(u64, MsgId), QueueError>>,
    },
    /// Lease the first message of a queue, waiting up to `wait` for one.
    QueueTake {
        queue: QueueName,
        consumer: String,
        wait: Duration,
        lease: Duration,
        reply: oneshot::Sender<Result<Option<Leased>, QueueError>>,
    },
    /// Acknowledge (remove) a taken message.
    QueueAck {
        queue: QueueName,
        seq: u64,
        id: MsgId,
        lease: u64,
        reply: oneshot::Sender<Result<AckOutcome, QueueError>>,
    },
    /// A queue's figures and its ordering node.
    QueueStat { queue: QueueName, reply: oneshot::Sender<Result<super::queues::QueueStat, QueueError>> },
    /// Be told of every message put in a queue (and those present from `from_seq`).
    QueueListen {
        queue: QueueName,
        from_seq: u64,
        reply: oneshot::Sender<Result<mpsc::Receiver<StoredMessage>, QueueError>>,
    },
}
