//! Byzantine nodes in the simulator (issue 11): a faulty variant of the protocol played by the
//! harness, not by the core.
//!
//! A Byzantine node runs the honest core for everything it does on its own behalf (stabilizing,
//! fixing fingers, answering pings, its own store's anti-entropy), so that it stays in the ring
//! and in everyone's tables, but the simulator rewrites what it answers others.
//!
//! **Lookups.** Every lookup step it answers ([`Response::Route`]) becomes the most damaging lie a
//! node can tell without forging ids (ids are SHA-1 of addresses, which every receiver checks): it
//! claims to own the target, names its real successor as its predecessor (so that the range it
//! claims, (predecessor, liar], covers all of the ring but one gap), and offers the next liars
//! clockwise as its successor list, i.e. as the target's replica set. Before the core checked
//! such claims, one liar anywhere on a lookup's path ended it with the wrong owner.
//!
//! **The store.** No storage request addressed to a liar reaches its coordinator: the harness
//! takes it ([`Liars::answer_kv`]). Writes (`Store`, `Accept`) are dropped unanswered, and so are
//! compare-and-set prepares and anti-entropy's digests and entry lists; the liar only remembers
//! each record it was sent, the oldest and the newest version per key. A `Fetch` is dropped a
//! quarter of the time; otherwise it is answered with a lie drawn from that memory: a *stale*
//! record (the oldest version it was sent of the key, when it was sent a newer one since), a
//! *foreign* record (a record of another key, as it is), or a foreign record relabelled with the
//! asked key (whose checksum then no longer matches). It never forges a version or a checksum: a
//! record it makes up with a valid checksum would be indistinguishable from a write (checksums are
//! not signatures; only `signed/` keys resist that), and is out of this model.

use std::collections::BTreeMap;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::address::NodeRef;
use crate::id::Id;
use crate::message::{Message, Response};
use crate::store::{KvRequest, KvResponse, Record, Version};

use super::SimAddr;

/// The liars of a run, by ring position, and what they did to the store.
#[derive(Debug, Default)]
pub(super) struct Liars {
    by_id: BTreeMap<Id, SimAddr>,
    /// Each liar's memory of the records it was sent.
    memories: BTreeMap<SimAddr, Memory>,
    counters: LiarCounters,
}

/// What the liars did to storage requests, over a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LiarCounters {
    /// Writes (`Store`, `Accept`) dropped unanswered.
    pub dropped_writes: u64,
    /// Reads (`Fetch`) dropped unanswered.
    pub dropped_reads: u64,
    /// Other requests (prepares, anti-entropy) dropped unanswered.
    pub dropped_other: u64,
    /// Reads answered with an older version of the asked key than one the liar was sent.
    pub served_stale: u64,
    /// Reads answered with a record of another key.
    pub served_foreign: u64,
    /// Reads answered with a record of another key relabelled as the asked one.
    pub served_relabelled: u64,
}

/// The records one liar was sent: one entry per key (a simulation's keys are few).
#[derive(Debug, Default)]
struct Memory {
    by_key: BTreeMap<Id, Held>,
}

#[derive(Debug)]
struct Held {
    oldest: Record,
    newest: Version,
}

impl Memory {
    fn remember(&mut self, record: &Record) {
        let held = self
            .by_key
            .entry(record.key_id())
            .or_insert_with(|| Held { oldest: record.clone(), newest: record.version });
        if record.version < held.oldest.version {
            held.oldest = record.clone();
        }
        held.newest = held.newest.max(record.version);
    }

    /// The oldest version of `key_id` remembered, if a newer one was sent since.
    fn stale(&self, key_id: &Id) -> Option<&Record> {
        self.by_key.get(key_id).filter(|held| held.newest > held.oldest.version).map(|held| &held.oldest)
    }

    /// A remembered record of the first other key clockwise after `key_id`.
    fn foreign(&self, key_id: &Id) -> Option<&Record> {
        let later = self.by_key.range(key_id..).filter(|(id, _)| *id != key_id);
        later.chain(self.by_key.range(..key_id)).map(|(_, held)| &held.oldest).next()
    }
}

/// The lie a liar tells in answer to a read.
#[derive(Clone, Copy)]
enum ReadLie {
    Drop,
    Stale,
    Foreign,
    Relabelled,
}

impl Liars {
    pub(super) fn insert(&mut self, node: &NodeRef<SimAddr>) {
        self.by_id.insert(node.id, node.addr);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub(super) fn counters(&self) -> &LiarCounters {
        &self.counters
    }

    /// Up to `n` other liars clockwise after `me`, in ring order.
    fn after(&self, me: &Id, n: usize) -> Vec<NodeRef<SimAddr>> {
        let later = self.by_id.range(me..).skip(1);
        let wrapped = self.by_id.range(..*me);
        later.chain(wrapped).take(n).map(|(&id, &addr)| NodeRef { id, addr }).collect()
    }

    /// Rewrites `message`, sent by the liar `me` whose real successor list is `successors`, into
    /// its lie; every other message passes unchanged.
    pub(super) fn rewrite(
        &self,
        me: &NodeRef<SimAddr>,
        successors: &[NodeRef<SimAddr>],
        message: Message<SimAddr>,
    ) -> Message<SimAddr> {
        match message {
            Message::Response { id, body: Response::Route { .. } } => Message::Response {
                id,
                body: Response::Route {
                    owner: true,
                    predecessor: successors.first().cloned().or_else(|| Some(me.clone())),
                    successors: self.after(&me.id, successors.len().max(1)),
                    closer: Vec::new(),
                },
            },
            other => other,
        }
    }

    /// What the liar `me` answers to the storage request `request` (module docs); `None` drops
    /// it. Draws from `rng` only for a read.
    pub(super) fn answer_kv(
        &mut self,
        me: SimAddr,
        request: KvRequest,
        rng: &mut ChaCha8Rng,
    ) -> Option<KvResponse> {
        let memory = self.memories.entry(me).or_default();
        let key = match request {
            KvRequest::Store { record } | KvRequest::Delete { record } | KvRequest::Accept { record } => {
                memory.remember(&record);
                self.counters.dropped_writes += 1;
                return None;
            }
            KvRequest::Prepare { .. } | KvRequest::Digest { .. } | KvRequest::Entries { .. } => {
                self.counters.dropped_other += 1;
                return None;
            }
            KvRequest::Fetch { key } => key,
        };
        let key_id = Id::hash(&key);
        let lie = match rng.random_range(0..4u8) {
            0 => ReadLie::Drop,
            1 => ReadLie::Stale,
            2 => ReadLie::Foreign,
            _ => ReadLie::Relabelled,
        };
        // A lie the memory cannot back falls to the next one, and at last to silence.
        let stale = memory.stale(&key_id).cloned();
        let foreign = memory.foreign(&key_id).cloned();
        let record = match (lie, stale, foreign) {
            (ReadLie::Drop, _, _) | (_, None, None) => None,
            (ReadLie::Stale, Some(stale), _)
            | (ReadLie::Foreign | ReadLie::Relabelled, Some(stale), None) => {
                self.counters.served_stale += 1;
                Some(stale)
            }
            (ReadLie::Relabelled, _, Some(mut foreign)) => {
                self.counters.served_relabelled += 1;
                foreign.key = key;
                Some(foreign)
            }
            (ReadLie::Stale | ReadLie::Foreign, _, Some(foreign)) => {
                self.counters.served_foreign += 1;
                Some(foreign)
            }
        };
        if record.is_none() {
            self.counters.dropped_reads += 1;
        }
        record.map(|record| KvResponse::Found { record: Some(record) })
    }
}
