//! The sans-IO Chord core of the overlay, and a deterministic simulator that runs thousands of it.
//!
//! # What lives here
//! - [`id`]: 160-bit identifiers (SHA-1) and ring intervals that wrap modulo 2^160.
//! - [`Node`]: one node's state machine — predecessor, successor list, finger table, Zave's
//!   corrected maintenance rules (join, stabilize, rectify, fix fingers, predecessor checks,
//!   dropping dead successors, graceful leave) and iterative lookups.
//!   A bounded passive list of peers declared dead (`passive`, private) is probed slowly so
//!   that rings split by a partition find each other and merge again (`Request::Merge`).
//! - [`message`]: the wire messages, their CBOR encoding, the size cap and validation.
//! - [`multicast`]: Scribe-style multicast trees on the ring (one [`multicast::Multicast`] per
//!   node): joins routed toward a group's id, a root that numbers and replicates every message,
//!   repair, gap filling and the multicast wire messages.
//! - [`kv`]: the store coordinator, sans-IO: quorum reads and writes, read repair, anti-entropy
//!   and hand-off, with persistence as an explicit output ([`kv::StoreOp`]) and input.
//! - [`signed`]: the `signed/` namespace, keys only the holder of one ed25519 key can write,
//!   checked by every replica.
//! - [`store`]: replicated records (versions from a hybrid logical clock, checksums), the storage
//!   wire protocol, quorum sizes and the range digests anti-entropy compares.
//! - [`supernode`]: supernodes and leaves (issue 13): a sharded directory of supernodes on the
//!   ring, a supernode's admission of leaves under a hard cap with redirects and rate limits, and
//!   a leaf's heartbeats, warm standby, failover and jittered backoff.
//! - [`sim`]: a discrete-event simulator of many nodes over a seeded network model, with global
//!   invariant checks; the `dht-sim` binary runs its scenarios.
//!
//! The core performs no I/O, reads no clock, and draws randomness only from a generator seeded at
//! construction: the same inputs give the same outputs, bit for bit.
//!
//! # Driving a node
//! A driver (the tokio/libp2p node, or the simulator) owns a [`Node`] and repeats:
//! 1. feed it what happened, each input carrying the current [`Time`]:
//!    [`Node::handle_message`] for a message from a peer (whose address the transport
//!    authenticated), [`Node::handle_send_failure`] when a request could not be delivered,
//!    [`Node::handle_timeout`] when the time returned by [`Node::poll_timeout`] has come, and
//!    commands: [`Node::create_ring`], [`Node::join`], [`Node::lookup`], [`Node::leave`];
//! 2. drain the outputs: [`Node::poll_transmit`] until `None` (send each message to its address),
//!    [`Node::poll_event`] until `None`, then [`Node::poll_timeout`] to learn when to wake it next.
//!
//! Every request the core sends has a deadline, so a driver that loses a message needs to do
//! nothing; reporting a failed send just ends the wait early. Responses are matched to requests by
//! id *and* sender; anything unmatched, malformed or impossible is dropped and counted in
//! [`Counters`].
//!
//! # Lookups
//! Lookups are iterative: the asking node contacts each hop itself, so it controls time-outs and
//! falls back to the next-best candidate (another finger, or the next entry of a successor list)
//! when one does not answer. A hop that knows the target lies within its successor list says so;
//! the asker then asks the first node after the target to *confirm* that it owns the target
//! (target ∈ (its predecessor, it]). The answer is therefore always a node that answered during the
//! lookup, and with [`Config::check_ownership_claims`] only a consistent claim is believed: a node that claims the target while a member
//! the lookup knows of (the asker, a node on the path) lies between the target and it, or whose
//! claimed range does not hold the target, is skipped as a liar (see [`lookup`]). Every answer
//! reports its hop count: the number of replies received (0 when the asking
//! node owns the target itself), and its path: the nodes those replies came from, in order, ending
//! with the owner ([`LookupOutcome::path`], at most [`lookup::MAX_LOOKUP_PATH`] of them). Steps are bounded by [`Config::max_lookup_hops`] and time by
//! [`Config::lookup_timeout`]; a lookup that cannot finish ends with a [`LookupError`].
//!
//! # What counts as a correct answer
//! A node is a *member* from the moment its successor acknowledged its first notify
//! ([`Event::Joined`], or creating a ring) until it crashes or finishes leaving. The *true
//! successor* of a key at time t is the first member at or clockwise after the key at t, computed
//! from the simulator's global view. A lookup for key k started at t₀ and answered at t₁ is
//! *correct* when its answer is the true successor of k at t₀ or at t₁ — membership may change
//! while a lookup runs, and either owner was right during it. A lookup that ends with an error is
//! *failed*; one that answers any other node is *wrong*. Lookups still running when a scenario ends
//! are counted as failed.

pub mod address;
pub mod bytes;
pub mod config;
pub mod error;
pub mod finger;
pub mod id;
pub mod kv;
pub mod lookup;
pub mod message;
pub mod multicast;
pub mod node;
mod passive;
pub mod queue;
mod ring;
pub mod signed;
pub mod sim;
pub mod store;
pub mod supernode;
pub mod time;

pub use address::{Address, NodeRef};
pub use config::{Config, ConfigError};
pub use error::{JoinError, LookupError};
pub use id::Id;
pub use lookup::{LookupId, LookupOutcome};
pub use message::{Message, Request, RequestId, Response};
pub use node::{Counters, Event, Node, Transmit};
pub use time::Time;
