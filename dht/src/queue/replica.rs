//! A held queue, and the replica's side of the protocol: applying the ordering node's changes,
//! answering its digests and fetches with pages of this node's copy, and forgetting copies
//! nobody refreshed for `replica_ttl`.
//!
//! Owns [`Held`]. Invariants: a change is answered (`Replicated`) only after it was emitted for
//! persistence, so the driver's persist-before-send rule makes the answer mean "durable"; pages
//! respect [`MAX_PAGE`] and [`PAGE_BYTES`]; a copy is dropped only by a node that does not order
//! the queue.

use super::owner::OwnerRole;
use super::state::{Applied, Key, QueueState};
use super::wire::{MAX_PAGE, PAGE_BYTES, QueueDigest, QueueMessage, QueueName, ReplicaChange, StoredMessage};
use super::{QueuePersist, Queues};
use crate::address::Address;
use crate::node::Node;
use crate::time::Time;

/// A queue this node holds.
#[derive(Clone, Debug)]
pub(super) struct Held<A> {
    pub(super) state: QueueState,
    /// Present while this node orders the queue.
    pub(super) owner: Option<OwnerRole<A>>,
    /// When the ordering node (or a client, at the ordering node) last touched it.
    pub(super) last_heard: Time,
    /// The highest epoch this node numbered the queue in (persisted), so a restart never reuses
    /// one.
    pub(super) used_epoch: u64,
}

impl<A> Held<A> {
    pub(super) fn new(now: Time) -> Self {
        Held { state: QueueState::default(), owner: None, last_heard: now, used_epoch: 0 }
    }
}

impl<A: Address> Queues<A> {
    pub(super) fn on_replicate(
        &mut self,
        from: A,
        req: u64,
        queue: QueueName,
        epoch: u64,
        changes: Vec<ReplicaChange>,
        now: Time,
    ) {
        if !self.held.contains_key(&queue) && self.held.len() >= self.config.max_queues {
            // No answer: the ordering node counts it as a replica that failed.
            self.counters.refusals += 1;
            return;
        }
        let max_removed = self.config.max_removed;
        let held = self.held.entry(queue.clone()).or_insert_with(|| Held::new(now));
        held.last_heard = now;
        held.state.epoch = held.state.epoch.max(epoch);
        let mut persists = Vec::new();
        let mut removals = Vec::new();
        for change in changes {
            match change {
                ReplicaChange::Put(message) => {
                    if held.state.insert(message.clone()) == Applied::Changed {
                        persists.push(QueuePersist::Put { queue: queue.clone(), message });
                    }
                }
                ReplicaChange::Remove(removal) => {
                    if let Some(role) = held.owner.as_mut() {
                        role.forget(removal.id);
                    }
                    removals.push((removal, held.state.remove(removal, max_removed)));
                }
            }
        }
        self.persists.extend(persists);
        for (removal, outcome) in removals {
            self.persist_removal(&queue, removal, outcome);
        }
        self.send(from, QueueMessage::Replicated { req });
    }

    pub(super) fn on_sync_digest(
        &mut self,
        from: A,
        req: u64,
        queue: QueueName,
        epoch: u64,
        digest: QueueDigest,
        now: Time,
    ) {
        let Some(held) = self.held.get_mut(&queue) else {
            let answer = empty_state(req);
            self.send(from, answer);
            return;
        };
        held.last_heard = now;
        held.state.epoch = held.state.epoch.max(epoch);
        if held.state.digest() == digest {
            self.send(from, QueueMessage::InSync { req });
        } else {
            let answer = state_page(req, held, None);
            self.send(from, answer);
        }
    }

    pub(super) fn on_fetch_state(
        &mut self,
        from: A,
        req: u64,
        queue: QueueName,
        after: Option<Key>,
        now: Time,
    ) {
        let answer = match self.held.get_mut(&queue) {
            Some(held) => {
                held.last_heard = now;
                state_page(req, held, after)
            }
            None => empty_state(req),
        };
        self.send(from, answer);
    }

    /// Drops copies of queues this node does not order that nobody refreshed for `replica_ttl`.
    pub(super) fn expire_replicas(&mut self, ring: &Node<A>, now: Time) {
        let ttl = self.config.replica_ttl;
        let stale: Vec<QueueName> = self
            .held
            .iter()
            .filter(|(name, held)| {
                held.owner.is_none() && !ring.owns(&name.id()) && now.saturating_since(held.last_heard) >= ttl
            })
            .map(|(name, _)| name.clone())
            .collect();
        for queue in stale {
            self.held.remove(&queue);
            self.counters.replicas_expired += 1;
            self.persists.push_back(QueuePersist::Drop { queue });
        }
    }
}

fn empty_state<A>(req: u64) -> QueueMessage<A> {
    QueueMessage::State {
        req,
        epoch: 0,
        messages: Vec::new(),
        removed: Vec::new(),
        more: false,
        known: false,
    }
}

/// A page of `held`'s copy after `after` (the first page carries the removals).
fn state_page<A>(req: u64, held: &Held<A>, after: Option<Key>) -> QueueMessage<A> {
    let candidates = held.state.page(after, MAX_PAGE);
    let mut messages: Vec<StoredMessage> = Vec::with_capacity(candidates.len());
    let mut bytes = 0;
    for message in candidates {
        if !messages.is_empty() && bytes + message.body.len() > PAGE_BYTES {
            break;
        }
        bytes += message.body.len();
        messages.push(message);
    }
    let more = messages.last().is_some_and(|last| !held.state.page(Some((last.seq, last.id)), 1).is_empty());
    let removed = if after.is_none() { held.state.removals().collect() } else { Vec::new() };
    QueueMessage::State { req, epoch: held.state.epoch, messages, removed, more, known: true }
}
