//! The node's on-disk queue store: one redb file, `<data_dir>/queues.redb`, holding this node's
//! copies of the queues it orders or replicates ([`dht::queue`]).
//!
//! [`QueueStore`] owns that file and is the only code that touches it. Three tables, each keyed
//! by the queue's ring id (20 bytes) first, so one queue's rows are one range:
//! - `queue_meta`: `queue id` → CBOR [`Meta`] (the queue's name and the highest epoch this node
//!   numbered it in);
//! - `queue_messages`: `queue id ++ put id (16 bytes, big-endian)` → CBOR
//!   [`StoredMessage`];
//! - `queue_removed`: `queue id ++ put id` → (the removal's order, a counter, so the core can
//!   forget the oldest removals first after a restart, as it did before; the lease that removed
//!   it, so a repeated acknowledgement is answered the same way).
//!
//! The event loop applies every batch of [`QueuePersist`] changes the core emitted in one write
//! transaction committed with fsync, *before* it sends any message the core drained after them:
//! that is the core's rule for "nothing acknowledged before it is durable". Queue traffic is small
//! next to the record store's (one commit per loop turn, however many changes it carries).
//!
//! Invariants: a row that does not decode is skipped at load and counted, never returned; a
//! queue's meta row exists whenever any of its rows does.

use std::collections::BTreeMap;
use std::path::Path;

use dht::id::ID_BYTES;
use dht::queue::{MsgId, QueueName, QueuePersist, QueueSnapshot, Removal, StoredMessage};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tracing::warn;

const META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("queue_meta");
const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("queue_messages");
const REMOVED: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("queue_removed");

/// Name of the database file inside the data directory.
const FILE_NAME: &str = "queues.redb";

/// What the store keeps per queue besides its rows.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Meta {
    name: String,
    epoch: u64,
}

/// The queue store.
#[allow(missing_debug_implementations)] // holds the database handle
pub struct QueueStore {
    db: Database,
    /// The next removal's order.
    next_order: u64,
    /// Rows skipped at load because they did not decode.
    pub corrupt_rows: u64,
}

fn row_key(queue: &QueueName, id: MsgId) -> [u8; ID_BYTES + 16] {
    let mut key = [0u8; ID_BYTES + 16];
    key[..ID_BYTES].copy_from_slice(queue.id().as_bytes());
    key[ID_BYTES..].copy_from_slice(&id.0.to_be_bytes());
    key
}

/// The range of rows of the queue with id `prefix`.
fn prefix_range(prefix: &[u8; ID_BYTES]) -> ([u8; ID_BYTES + 16], [u8; ID_BYTES + 16]) {
    let mut start = [0u8; ID_BYTES + 16];
    start[..ID_BYTES].copy_from_slice(prefix);
    let mut end = [0xffu8; ID_BYTES + 16];
    end[..ID_BYTES].copy_from_slice(prefix);
    (start, end)
}

fn encode<T: Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    ciborium::into_writer(value, &mut bytes)?;
    Ok(bytes)
}

impl QueueStore {
    /// Opens (or creates) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let db = Database::create(data_dir.join(FILE_NAME))?;
        let txn = db.begin_write()?;
        {
            txn.open_table(META)?;
            txn.open_table(MESSAGES)?;
            txn.open_table(REMOVED)?;
        }
        txn.commit()?;
        let next_order = {
            let read = db.begin_read()?;
            let table = read.open_table(REMOVED)?;
            let mut max = 0;
            for row in table.iter()? {
                let (_, value) = row?;
                max = max.max(value.value().0);
            }
            max + 1
        };
        Ok(QueueStore { db, next_order, corrupt_rows: 0 })
    }

    /// Everything held, per queue, for [`dht::queue::Queues::restore`].
    pub fn load(&mut self) -> anyhow::Result<Vec<(QueueName, QueueSnapshot)>> {
        let read = self.db.begin_read()?;
        let meta = read.open_table(META)?;
        let messages = read.open_table(MESSAGES)?;
        let removed = read.open_table(REMOVED)?;
        let mut out = Vec::new();
        for row in meta.iter()? {
            let (key, value) = row?;
            let Ok(prefix) = <[u8; ID_BYTES]>::try_from(key.value()) else {
                self.corrupt_rows += 1;
                continue;
            };
            let Ok(meta) = ciborium::from_reader::<Meta, _>(value.value()) else {
                self.corrupt_rows += 1;
                continue;
            };
            let Ok(name) = QueueName::new(meta.name) else {
                self.corrupt_rows += 1;
                continue;
            };
            let (start, end) = prefix_range(&prefix);
            let mut snapshot = QueueSnapshot { epoch: meta.epoch, ..QueueSnapshot::default() };
            for row in messages.range(start.as_slice()..=end.as_slice())? {
                let (_, value) = row?;
                match ciborium::from_reader::<StoredMessage, _>(value.value()) {
                    Ok(message) => snapshot.messages.push(message),
                    Err(_) => self.corrupt_rows += 1,
                }
            }
            let mut removals: BTreeMap<u64, Removal> = BTreeMap::new();
            for row in removed.range(start.as_slice()..=end.as_slice())? {
                let (key, value) = row?;
                let Ok(id) = <[u8; 16]>::try_from(&key.value()[ID_BYTES..]) else {
                    self.corrupt_rows += 1;
                    continue;
                };
                let (order, lease) = value.value();
                removals.insert(order, Removal { id: MsgId(u128::from_be_bytes(id)), lease });
            }
            snapshot.removed = removals.into_values().collect();
            out.push((name, snapshot));
        }
        if self.corrupt_rows > 0 {
            warn!(rows = self.corrupt_rows, "queue store: rows that do not decode were skipped");
        }
        Ok(out)
    }

    /// Makes `changes` durable, in one transaction synced to disk.
    pub fn apply(&mut self, changes: &[QueuePersist]) -> anyhow::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut meta = txn.open_table(META)?;
            let mut messages = txn.open_table(MESSAGES)?;
            let mut removed = txn.open_table(REMOVED)?;
            for change in changes {
                match change {
                    QueuePersist::Put { queue, message } => {
                        ensure_meta(&mut meta, queue)?;
                        messages
                            .insert(row_key(queue, message.id).as_slice(), encode(message)?.as_slice())?;
                    }
                    QueuePersist::Remove { queue, removal } => {
                        ensure_meta(&mut meta, queue)?;
                        let key = row_key(queue, removal.id);
                        messages.remove(key.as_slice())?;
                        removed.insert(key.as_slice(), (self.next_order, removal.lease))?;
                        self.next_order += 1;
                    }
                    QueuePersist::ForgetRemoval { queue, id } => {
                        removed.remove(row_key(queue, *id).as_slice())?;
                    }
                    QueuePersist::Epoch { queue, epoch } => {
                        let value = encode(&Meta { name: queue.as_str().to_string(), epoch: *epoch })?;
                        meta.insert(queue.id().as_bytes().as_slice(), value.as_slice())?;
                    }
                    QueuePersist::Drop { queue } => {
                        let (start, end) = prefix_range(queue.id().as_bytes());
                        messages.retain_in(start.as_slice()..=end.as_slice(), |_, _| false)?;
                        removed.retain_in(start.as_slice()..=end.as_slice(), |_, _| false)?;
                        meta.remove(queue.id().as_bytes().as_slice())?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

fn ensure_meta(meta: &mut redb::Table<&[u8], &[u8]>, queue: &QueueName) -> anyhow::Result<()> {
    let key = queue.id();
    if meta.get(key.as_bytes().as_slice())?.is_none() {
        let value = encode(&Meta { name: queue.as_str().to_string(), epoch: 0 })?;
        meta.insert(key.as_bytes().as_slice(), value.as_slice())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn message(seq: u64, id: u128) -> StoredMessage {
        StoredMessage { seq, id: MsgId(id), sender: "s".into(), body: vec![7; 10], put_ms: 1 }
    }

    #[test]
    fn what_was_applied_comes_back_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let q = QueueName::new("jobs").unwrap();
        let other = QueueName::new("other").unwrap();
        {
            let mut store = QueueStore::open(dir.path()).unwrap();
            store
                .apply(&[
                    QueuePersist::Put { queue: q.clone(), message: message(1 << 40 | 1, 10) },
                    QueuePersist::Put { queue: q.clone(), message: message(1 << 40 | 2, 11) },
                    QueuePersist::Put { queue: other.clone(), message: message(1 << 40 | 1, 12) },
                    QueuePersist::Remove { queue: q.clone(), removal: Removal { id: MsgId(10), lease: 5 } },
                    QueuePersist::Remove { queue: q.clone(), removal: Removal { id: MsgId(99), lease: 6 } },
                    QueuePersist::Epoch { queue: q.clone(), epoch: 3 },
                    QueuePersist::Drop { queue: other },
                ])
                .unwrap();
            store.apply(&[QueuePersist::ForgetRemoval { queue: q.clone(), id: MsgId(10) }]).unwrap();
        }
        let mut store = QueueStore::open(dir.path()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.len(), 1, "the dropped queue is gone");
        let (name, snapshot) = &loaded[0];
        assert_eq!(name, &q);
        assert_eq!(snapshot.epoch, 3);
        assert_eq!(snapshot.messages, vec![message(1 << 40 | 2, 11)]);
        assert_eq!(snapshot.removed, vec![Removal { id: MsgId(99), lease: 6 }]);
    }
}
