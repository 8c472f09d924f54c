//! The node's on-disk record store: one redb file, `<data_dir>/records.redb`.
//!
//! [`Storage`] owns that file and is the only code that touches it. The file holds one table,
//! `records`, keyed by `key id (20 bytes, SHA-1 of the key) ++ key bytes` and valued by the
//! CBOR-encoded [`Record`]. Table keys sort as bytes, so table order is ring order and the records
//! of a ring interval `(start, end]` are one range scan, or two when the interval wraps past zero.
//!
//! Writes go through one writer thread fed by a bounded queue. It takes a job, drains whatever else
//! is queued (up to [`GROUP_COMMIT_RECORDS`] records), appends them all as one entry to the
//! write-ahead log ([`crate::wal`], `<data_dir>/records.wal`) and syncs it, then applies them in
//! one redb transaction committed without fsync: many concurrent puts share one small sequential
//! sync. Callers are answered only after both. When the log holds [`wal::CHECKPOINT_BYTES`] (and
//! when the store closes) a checkpoint, one redb commit with fsync, makes the database durable and
//! the log starts over; at
//! open, whatever the log still holds is applied again (replaying is idempotent: a record never
//! replaces a newer version). A group too large for the log is committed to redb with fsync
//! directly. Reads open their own read transactions on the calling thread; redb serves them from
//! a snapshot while the writer works, and they see a write as soon as its caller is answered.
//!
//! Invariants:
//! - every row's table key is `Id::hash(record.key) ++ record.key` of the record it holds;
//! - for each key the row holds the newest version ever accepted ([`Record::supersedes`]), until
//!   [`Storage::remove_exact`] drops it (only copies of keys this node no longer replicates, once
//!   their replica set holds them); deletes are tombstone records, kept so that they win over
//!   older writes and replicate;
//! - only the writer thread writes, and an `Ok` from [`Storage::put`] means the record is on disk
//!   (in the synced log or in a durable redb commit);
//! - a row that does not decode, fails its checksum or sits under the wrong table key is *corrupt*
//!   and is never returned: [`Storage::get`] answers [`StorageError::Corrupt`], scans skip it, each
//!   such read counts in [`StorageStats::corrupt_reads`], and the next write of the key replaces it;
//! - [`StorageStats`] `keys`, `bytes` and `tombstones` count the intact rows: counted by one scan at
//!   open, then adjusted by the writer after each commit.

use std::fmt;
use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dht::Id;
use dht::id::ID_BYTES;
use dht::store::{self, BucketHash, DIGEST_BUCKETS, Entry, Record, Version};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::wal::{self, Wal};

/// The one table: `key id ++ key` → CBOR-encoded [`Record`].
const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");

/// Name of the database file inside the data directory.
const FILE_NAME: &str = "records.redb";

/// Name of the write-ahead log inside the data directory.
const WAL_FILE_NAME: &str = "records.wal";

/// Most records the writer applies in one transaction (one fsync). A single `put_many` larger than
/// this is still applied whole, in a transaction of its own.
pub const GROUP_COMMIT_RECORDS: usize = 256;

/// Capacity of the writer's queue, in jobs (one `put` or `put_many` call each). When it is full,
/// callers wait in `put`: back-pressure instead of unbounded memory.
const WRITE_QUEUE_JOBS: usize = 1024;

/// How many (key id, version) pairs a digest scan buffers before folding them into the buckets.
const DIGEST_CHUNK: usize = 1024;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// redb or the file system failed (I/O error, full disk, a damaged file that redb detected).
    /// The operation had no effect; retrying may help if the cause was transient.
    #[error("database error: {0}")]
    Db(String),
    /// The stored record for the key did not decode or failed its checksum, or a record handed to
    /// `put` failed its checksum (then nothing of that call was written). A corrupt stored record
    /// is replaced by the next write of the key: fetch it from another replica and put it.
    #[error("stored record for a key failed its checksum")]
    Corrupt,
    /// The writer's queue is full: nothing was queued or written. Retry later; the queue drains
    /// as fast as the disk syncs.
    #[error("the storage queue is full")]
    Busy,
    /// The writer thread is gone (it only stops when the store is dropped, or on a bug). Writes
    /// cannot succeed any more; reads still work.
    #[error("storage writer has stopped")]
    Closed,
}

/// The result of writing one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    /// The record was newer than the stored one (or the key was absent) and is now durable.
    pub applied: bool,
    /// A live (non-tombstone) record for the key was stored before this write.
    pub existed: bool,
    /// When not applied: the version stored, the same as or newer than the record's.
    pub held: Option<Version>,
}

/// Counters of the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Live (non-tombstone) records.
    pub keys: u64,
    /// Value bytes of the live records.
    pub bytes: u64,
    /// Tombstones held.
    pub tombstones: u64,
    /// Reads that met a corrupt row since open (a scan meeting one corrupt row counts once).
    pub corrupt_reads: u64,
}

/// Handle to the on-disk record store. Cheap to clone; all clones share one database and one
/// writer thread. Dropping the last clone stops the writer (after it finishes what is queued) and
/// closes the file; that drop blocks until the writer has stopped.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    // Fields drop in declaration order, and the order matters: dropping the sender ends the writer's
    // receive loop, `_writer` (never read, only dropped) then joins the thread, which holds a clone
    // of `db`, and only then is the database closed, so reopening the file right after works.
    jobs: mpsc::Sender<Work>,
    _writer: WriterThread,
    db: Arc<Database>,
    counters: Arc<Counters>,
    path: PathBuf,
}

/// What the writer thread is asked to do.
enum Work {
    Put(Job),
    Remove(Removal),
}

/// One caller's records and where to send their outcomes (in the same order).
struct Job {
    records: Vec<Record>,
    reply: oneshot::Sender<Result<Vec<PutOutcome>, StorageError>>,
}

/// Keys to drop if stored at exactly these versions, and where to send how many went.
struct Removal {
    entries: Vec<Entry>,
    reply: oneshot::Sender<Result<u64, StorageError>>,
}

#[derive(Default)]
struct Counters {
    keys: AtomicU64,
    bytes: AtomicU64,
    tombstones: AtomicU64,
    corrupt_reads: AtomicU64,
    /// Write transactions committed by the writer since open.
    commits: AtomicU64,
    /// Checkpoints (durable redb commits that emptied the write-ahead log) since open.
    checkpoints: AtomicU64,
}

/// Joins the writer thread on drop.
struct WriterThread(Option<JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take()
            && handle.join().is_err()
        {
            error!("storage writer thread panicked");
        }
    }
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage").field("path", &self.inner.path).field("stats", &self.stats()).finish()
    }
}

/// redb's in-process page cache.
const CACHE_BYTES: usize = 512 * 1024;

impl Storage {
    /// Opens (creating if needed) `<data_dir>/records.redb`, counts its records and starts the
    /// writer thread.
    ///
    /// The open verifies the checksum of every redb page, so a damaged file is reported as
    /// [`StorageError::Db`] rather than trusted; it then scans every record once to count
    /// [`StorageStats`]. Both take time proportional to the file size.
    pub fn open(data_dir: &Path) -> Result<Storage, StorageError> {
        Self::open_with(data_dir, Duration::ZERO)
    }

    /// Whether `data_dir` already holds a record store (this node ran there before).
    pub fn exists_in(data_dir: &Path) -> bool {
        data_dir.join(FILE_NAME).exists()
    }

    /// Like [`Storage::open`], choosing when writes reach the disk. With `fsync_interval` zero
    /// (the default) the log is synced for every group before its callers hear back. Otherwise
    /// groups are written to the log without a sync, and one sync follows within
    /// `fsync_interval`: acknowledged writes survive a crash of this process (the kernel holds
    /// them) but a crash of the machine only if they were synced, so the caller relies on other
    /// replicas for the last `fsync_interval` (as Cassandra's periodic commit log does). Closing
    /// the store checkpoints.
    pub fn open_with(data_dir: &Path, fsync_interval: Duration) -> Result<Storage, StorageError> {
        std::fs::create_dir_all(data_dir).map_err(db_error("creating the data directory"))?;
        let path = data_dir.join(FILE_NAME);
        // Without the integrity check a file altered outside redb may make the open panic.
        let db = redb::Builder::new()
            .set_check_integrity_on_open(true)
            // redb's default page cache is 1 GiB; a node's working set is small, and many nodes
            // share one machine. The OS page cache still holds hot pages.
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(db_error("opening the database file"))?;
        // Create the table up front so that readers never find it missing.
        let txn = db.begin_write().map_err(db_error("beginning a write transaction"))?;
        txn.open_table(RECORDS).map_err(db_error("creating the records table"))?;
        txn.commit().map_err(db_error("committing"))?;

        // Writes acknowledged before a crash may be only in the log: apply them durably, then
        // start the log over.
        let (mut log, replay) = Wal::open(&data_dir.join(WAL_FILE_NAME), wal::DEFAULT_CAPACITY)
            .map_err(db_error("opening the write-ahead log"))?;
        if !replay.records.is_empty() {
            let mut records = replay.records;
            let before = records.len();
            records.retain(Record::is_intact);
            if records.len() < before {
                warn!(
                    dropped = before - records.len(),
                    "write-ahead log records failing their checksum dropped"
                );
            }
            apply_batches(&db, &[records.as_slice()], Durability::Immediate)?;
        }
        log.checkpointed().map_err(db_error("resetting the write-ahead log"))?;

        let counters = Arc::new(Counters::default());
        let corrupt = count_records(&db, &counters)?;
        if corrupt > 0 {
            warn!(corrupt, "corrupt records found at open; they read as errors until rewritten");
        }
        info!(
            path = %path.display(),
            keys = counters.keys.load(Ordering::Relaxed),
            bytes = counters.bytes.load(Ordering::Relaxed),
            tombstones = counters.tombstones.load(Ordering::Relaxed),
            "storage opened"
        );

        let db = Arc::new(db);
        let (jobs, queue) = mpsc::channel(WRITE_QUEUE_JOBS);
        let handle = {
            let db = Arc::clone(&db);
            let counters = Arc::clone(&counters);
            std::thread::Builder::new()
                .name("storage-writer".into())
                .spawn(move || run_writer(&db, queue, &counters, Some(log), fsync_interval))
                .map_err(db_error("starting the writer thread"))?
        };
        Ok(Storage {
            inner: Arc::new(Inner { jobs, _writer: WriterThread(Some(handle)), db, counters, path }),
        })
    }

    /// Jobs the writer's queue can take now without waiting (0: full). A write asked for when
    /// it is 0 waits in [`Storage::put_many`], or is refused by [`Storage::try_put_many`].
    pub fn write_queue_free(&self) -> usize {
        self.inner.jobs.capacity()
    }

    /// The record stored for `key`, tombstones included.
    ///
    /// Verifies the record's checksum: a corrupt row gives [`StorageError::Corrupt`] (and counts in
    /// `corrupt_reads`), never its contents.
    pub fn get(&self, key: &[u8]) -> Result<Option<Record>, StorageError> {
        let txn = self.inner.db.begin_read().map_err(db_error("beginning a read transaction"))?;
        let table = txn.open_table(RECORDS).map_err(db_error("opening the records table"))?;
        let row = row_key(key);
        let Some(value) = table.get(row.as_slice()).map_err(db_error("reading a record"))? else {
            return Ok(None);
        };
        match decode_row(&row, value.value()) {
            Some((_, record)) => Ok(Some(record)),
            None => {
                self.note_corrupt(&row);
                Err(StorageError::Corrupt)
            }
        }
    }

    /// Stores `record` unless the stored version for its key is the same or newer.
    ///
    /// Returns once the write is durable (committed with [`Durability::Immediate`]). A record that
    /// fails its own checksum is refused with [`StorageError::Corrupt`]. If the returned future is
    /// dropped after the record was queued, the write may still happen.
    pub async fn put(&self, record: Record) -> Result<PutOutcome, StorageError> {
        let mut outcomes = self.put_many(vec![record]).await?;
        let outcome = outcomes.pop().expect("the writer answers one outcome per record");
        Ok(outcome)
    }

    /// Stores each record as [`Storage::put`] would, all in one transaction, in order (a later
    /// record for the same key sees the earlier one). Outcomes are in the order of `records`.
    ///
    /// If any record fails its checksum, nothing is written and the answer is
    /// [`StorageError::Corrupt`].
    pub async fn put_many(&self, records: Vec<Record>) -> Result<Vec<PutOutcome>, StorageError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(bad) = records.iter().find(|record| !record.is_intact()) {
            debug!(key_id = %bad.key_id().short(), "refused to store a record failing its checksum");
            return Err(StorageError::Corrupt);
        }
        let expected = records.len();
        let (reply, answer) = oneshot::channel();
        self.inner.jobs.send(Work::Put(Job { records, reply })).await.map_err(|_| StorageError::Closed)?;
        let outcomes = answer.await.map_err(|_| StorageError::Closed)??;
        debug_assert_eq!(outcomes.len(), expected, "one outcome per record");
        Ok(outcomes)
    }

    /// Like [`Storage::put_many`], but never waits for room in the writer's queue: when it is
    /// full the answer is [`StorageError::Busy`] at once and nothing is written. Otherwise the
    /// records are queued before this returns, and the future answers their outcomes.
    pub fn try_put_many(
        &self,
        records: Vec<Record>,
    ) -> Result<impl Future<Output = Result<Vec<PutOutcome>, StorageError>> + Send + 'static, StorageError>
    {
        if let Some(bad) = records.iter().find(|record| !record.is_intact()) {
            debug!(key_id = %bad.key_id().short(), "refused to store a record failing its checksum");
            return Err(StorageError::Corrupt);
        }
        let (reply, answer) = oneshot::channel();
        let queued = if records.is_empty() {
            drop(reply.send(Ok(Vec::new())));
            Ok(())
        } else {
            self.inner.jobs.try_send(Work::Put(Job { records, reply }))
        };
        match queued {
            Ok(()) => Ok(async move { answer.await.map_err(|_| StorageError::Closed)? }),
            Err(mpsc::error::TrySendError::Full(_)) => Err(StorageError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(StorageError::Closed),
        }
    }

    /// Drops the stored record of each entry's key if it is at exactly the entry's version (a
    /// newer or older one stays); returns how many went.
    ///
    /// For copies of keys this node does not replicate, once their replica set holds them. The
    /// removal is committed without fsync and is not logged: after a crash a removed record may
    /// be back (from the log or an earlier commit), never a record the removal did not name.
    pub async fn remove_exact(&self, entries: Vec<Entry>) -> Result<u64, StorageError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .jobs
            .send(Work::Remove(Removal { entries, reply }))
            .await
            .map_err(|_| StorageError::Closed)?;
        answer.await.map_err(|_| StorageError::Closed)?
    }

    /// Entries (key, version) of the records whose key id lies in `(start, end]`, in ring order
    /// from `start`, tombstones included; `start == end` means the whole ring.
    ///
    /// With `buckets`, only records in those digest buckets of the range ([`store::bucket_of`]).
    /// At most `limit` entries; the flag is true when matching entries were left out.
    pub fn entries(
        &self,
        start: &Id,
        end: &Id,
        buckets: Option<&[u16]>,
        limit: usize,
    ) -> Result<(Vec<Entry>, bool), StorageError> {
        self.entries_after(start, end, buckets, None, limit)
    }

    /// [`Storage::entries`] from a cursor: only records whose key id comes after `after` (in ring
    /// order from `start`). The scan starts at the cursor, so a page costs what it returns.
    pub fn entries_after(
        &self,
        start: &Id,
        end: &Id,
        buckets: Option<&[u16]>,
        after: Option<&Id>,
        limit: usize,
    ) -> Result<(Vec<Entry>, bool), StorageError> {
        let wanted = buckets.map(|buckets| {
            let mut wanted = [false; DIGEST_BUCKETS];
            for &bucket in buckets {
                if let Some(slot) = wanted.get_mut(usize::from(bucket)) {
                    *slot = true;
                }
            }
            wanted
        });
        let mut entries = Vec::new();
        let mut truncated = false;
        self.scan(start, end, after, |key_id, record| {
            if let Some(wanted) = &wanted
                && !wanted[store::bucket_of(&key_id, start, end)]
            {
                return ControlFlow::Continue(());
            }
            if entries.len() == limit {
                truncated = true;
                return ControlFlow::Break(());
            }
            entries.push(Entry { key: record.key, version: record.version });
            ControlFlow::Continue(())
        })?;
        Ok((entries, truncated))
    }

    /// The anti-entropy digest of `(start, end]`: [`store::digest`] over the (key id, version)
    /// pairs of the records held there, tombstones included.
    pub fn digest(&self, start: &Id, end: &Id) -> Result<Vec<BucketHash>, StorageError> {
        let mut buckets = vec![0; DIGEST_BUCKETS];
        let mut chunk = Vec::with_capacity(DIGEST_CHUNK);
        self.scan(start, end, None, |key_id, record| {
            chunk.push((key_id, record.version));
            if chunk.len() == DIGEST_CHUNK {
                fold_digest(&mut buckets, start, end, &mut chunk);
            }
            ControlFlow::Continue(())
        })?;
        fold_digest(&mut buckets, start, end, &mut chunk);
        Ok(buckets)
    }

    /// Full records whose key id lies in `(start, end]`, in ring order from `start`, tombstones
    /// included; at most `limit`. For handing a range over to another node.
    pub fn records(&self, start: &Id, end: &Id, limit: usize) -> Result<Vec<Record>, StorageError> {
        Ok(self.records_after(start, end, None, limit)?.0)
    }

    /// [`Storage::records`] from a cursor (after the key id `after`), starting the scan there; the
    /// flag is true when more records follow.
    pub fn records_after(
        &self,
        start: &Id,
        end: &Id,
        after: Option<&Id>,
        limit: usize,
    ) -> Result<(Vec<Record>, bool), StorageError> {
        let mut records = Vec::new();
        let mut truncated = false;
        self.scan(start, end, after, |_, record| {
            if records.len() == limit {
                truncated = true;
                return ControlFlow::Break(());
            }
            records.push(record);
            ControlFlow::Continue(())
        })?;
        Ok((records, truncated))
    }

    /// Current counters.
    pub fn stats(&self) -> StorageStats {
        let counters = &self.inner.counters;
        StorageStats {
            keys: counters.keys.load(Ordering::Relaxed),
            bytes: counters.bytes.load(Ordering::Relaxed),
            tombstones: counters.tombstones.load(Ordering::Relaxed),
            corrupt_reads: counters.corrupt_reads.load(Ordering::Relaxed),
        }
    }

    /// Calls `visit` with each intact record in `(start, end]`, in ring order from `start`, until it
    /// breaks. Corrupt rows are counted and skipped.
    fn scan(
        &self,
        start: &Id,
        end: &Id,
        after: Option<&Id>,
        mut visit: impl FnMut(Id, Record) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        let segments = match after {
            // A cursor at the range's end: nothing follows it.
            Some(after) if after == end => return Ok(()),
            Some(after) => ring_segments(after, end),
            None => ring_segments(start, end),
        };
        let txn = self.inner.db.begin_read().map_err(db_error("beginning a read transaction"))?;
        let table = txn.open_table(RECORDS).map_err(db_error("opening the records table"))?;
        for (low, high) in segments {
            let lower = Bound::Included(low.as_bytes().as_slice());
            let upper = match &high {
                Some(high) => Bound::Excluded(high.as_bytes().as_slice()),
                None => Bound::Unbounded,
            };
            for row in table.range::<&[u8]>((lower, upper)).map_err(db_error("scanning records"))? {
                let (row, value) = row.map_err(db_error("scanning records"))?;
                let Some((key_id, record)) = decode_row(row.value(), value.value()) else {
                    self.note_corrupt(row.value());
                    continue;
                };
                debug_assert!(key_id.in_open_closed(start, end), "the segments cover exactly (start, end]");
                if visit(key_id, record).is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn note_corrupt(&self, row: &[u8]) {
        self.inner.counters.corrupt_reads.fetch_add(1, Ordering::Relaxed);
        match row_id(row) {
            Some(key_id) => warn!(key_id = %key_id.short(), "stored record is corrupt; not returned"),
            None => warn!(row_len = row.len(), "stored row with a malformed key; not returned"),
        }
    }
}

/// The table key of `key`: its ring id, then the key itself.
fn row_key(key: &[u8]) -> Vec<u8> {
    let mut row = Vec::with_capacity(ID_BYTES + key.len());
    row.extend_from_slice(Id::hash(key).as_bytes());
    row.extend_from_slice(key);
    row
}

/// The key id prefix of a table key, if it is long enough to have one.
fn row_id(row: &[u8]) -> Option<Id> {
    let prefix: [u8; ID_BYTES] = row.get(..ID_BYTES)?.try_into().ok()?;
    Some(Id::from_bytes(prefix))
}

/// Decodes and verifies one row: the value must decode as a [`Record`] that passes its checksum
/// and belongs under this table key. `None` means the row is corrupt.
fn decode_row(row: &[u8], value: &[u8]) -> Option<(Id, Record)> {
    let record: Record = ciborium::from_reader(value).ok()?;
    if !record.is_intact() {
        return None;
    }
    let key_id = record.key_id();
    let (prefix, key) = row.split_at_checked(ID_BYTES)?;
    (prefix == key_id.as_bytes() && key == record.key).then_some((key_id, record))
}

fn encode(record: &Record) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(record.key.len() + record.value.len() + 64);
    ciborium::into_writer(record, &mut bytes)
        .expect("a Record has only CBOR-encodable fields and writing to a Vec cannot fail");
    bytes
}

/// The id ranges covering `(start, end]` in ring order from `start`, each as (inclusive low,
/// exclusive high; `None` = to the end of the id space). Two when the interval wraps past zero;
/// `start == end` is the whole ring.
fn ring_segments(start: &Id, end: &Id) -> Vec<(Id, Option<Id>)> {
    let one = Id::pow2(0);
    let after = |id: &Id| if *id == Id::MAX { None } else { Some(id.wrapping_add(&one)) };
    if start < end {
        // start < end ≤ MAX, so start + 1 does not wrap.
        vec![(start.wrapping_add(&one), after(end))]
    } else {
        let mut segments = Vec::with_capacity(2);
        if *start != Id::MAX {
            segments.push((start.wrapping_add(&one), None));
        }
        segments.push((Id::ZERO, after(end)));
        segments
    }
}

/// Adds the pairs in `chunk` to `buckets` and empties it. Bucket hashes are XORs, so folding the
/// digest of each chunk equals the digest of them all.
fn fold_digest(buckets: &mut [BucketHash], start: &Id, end: &Id, chunk: &mut Vec<(Id, Version)>) {
    if chunk.is_empty() {
        return;
    }
    let part = store::digest(start, end, chunk.iter().map(|(key_id, version)| (key_id, version)));
    for (bucket, hash) in buckets.iter_mut().zip(part) {
        *bucket ^= hash;
    }
    chunk.clear();
}

/// Counts the intact rows into `counters`; returns the number of corrupt rows.
fn count_records(db: &Database, counters: &Counters) -> Result<u64, StorageError> {
    let txn = db.begin_read().map_err(db_error("beginning a read transaction"))?;
    let table = txn.open_table(RECORDS).map_err(db_error("opening the records table"))?;
    let mut delta = StatsDelta::default();
    let mut corrupt = 0;
    for row in table.range::<&[u8]>(..).map_err(db_error("scanning records"))? {
        let (row, value) = row.map_err(db_error("scanning records"))?;
        match decode_row(row.value(), value.value()) {
            Some((_, record)) => delta.add(&record),
            None => corrupt += 1,
        }
    }
    delta.apply(counters);
    Ok(corrupt)
}

/// Changes to the record counters made by one transaction.
#[derive(Default)]
struct StatsDelta {
    keys: i64,
    bytes: i64,
    tombstones: i64,
}

impl StatsDelta {
    fn add(&mut self, record: &Record) {
        self.count(record, 1);
    }

    fn remove(&mut self, record: &Record) {
        self.count(record, -1);
    }

    fn count(&mut self, record: &Record, sign: i64) {
        if record.tombstone {
            self.tombstones += sign;
        } else {
            self.keys += sign;
            // Values are capped far below i64::MAX by the protocol and by redb.
            self.bytes += sign * i64::try_from(record.value.len()).unwrap_or(i64::MAX);
        }
    }

    fn apply(&self, counters: &Counters) {
        let add = |counter: &AtomicU64, delta: i64| {
            // Saturating: a row that went bad after it was counted must not wrap a counter.
            let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |value| {
                Some(value.saturating_add_signed(delta))
            });
        };
        add(&counters.keys, self.keys);
        add(&counters.bytes, self.bytes);
        add(&counters.tombstones, self.tombstones);
    }
}

/// The writer thread: group commits until every sender is gone and the queue is empty, then a
/// checkpoint. With a non-zero `fsync_interval`, groups go to the log without a sync and a sync
/// follows within the interval. `log` is `None` only if the log failed: then groups are committed
/// to redb directly (with fsync, unless deferred).
fn run_writer(
    db: &Database,
    mut queue: mpsc::Receiver<Work>,
    counters: &Counters,
    mut log: Option<Wal>,
    fsync_interval: Duration,
) {
    let deferred = !fsync_interval.is_zero();
    let mut unsynced_since: Option<Instant> = None;
    loop {
        let first = match unsynced_since {
            None => match queue.blocking_recv() {
                Some(job) => job,
                None => break,
            },
            Some(since) => {
                // Wait for work, but sync once the oldest unsynced group is due.
                match queue.try_recv() {
                    Ok(job) => job,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if since.elapsed() >= fsync_interval {
                            sync(db, &mut log);
                            unsynced_since = None;
                        } else {
                            std::thread::sleep(Duration::from_micros(500));
                        }
                        continue;
                    }
                }
            }
        };
        let first = match first {
            Work::Put(job) => job,
            Work::Remove(removal) => {
                remove_exact(db, removal, counters);
                continue;
            }
        };
        let mut records = first.records.len();
        let mut group = vec![first];
        // A removal ends the group and runs after it, so that the two apply in queue order.
        let mut removal_after = None;
        while records < GROUP_COMMIT_RECORDS {
            match queue.try_recv() {
                Ok(Work::Put(job)) => {
                    records += job.records.len();
                    group.push(job);
                }
                Ok(Work::Remove(removal)) => {
                    removal_after = Some(removal);
                    break;
                }
                Err(_) => break,
            }
        }
        match commit_group(db, &mut log, &group, deferred, counters) {
            Ok((outcomes, delta)) => {
                if deferred && unsynced_since.is_none() {
                    unsynced_since = Some(Instant::now());
                }
                delta.apply(counters);
                counters.commits.fetch_add(1, Ordering::Relaxed);
                let applied = outcomes.iter().flatten().filter(|outcome| outcome.applied).count();
                debug!(jobs = group.len(), records, applied, "group committed");
                for (job, outcomes) in group.into_iter().zip(outcomes) {
                    // The caller may have stopped waiting; the write stands either way.
                    let _ = job.reply.send(Ok(outcomes));
                }
            }
            Err(err) => {
                warn!(jobs = group.len(), records, error = %err, "group commit failed");
                for job in group {
                    let reply = match &err {
                        StorageError::Db(message) => StorageError::Db(message.clone()),
                        StorageError::Corrupt => StorageError::Corrupt,
                        StorageError::Busy => StorageError::Busy,
                        StorageError::Closed => StorageError::Closed,
                    };
                    let _ = job.reply.send(Err(reply));
                }
            }
        }
        if let Some(removal) = removal_after {
            remove_exact(db, removal, counters);
        }
    }
    match log.as_mut() {
        Some(wal) => {
            if let Err(error) = checkpoint(db, wal, counters) {
                warn!(%error, "final checkpoint failed; the log is replayed at the next open");
            }
        }
        None => flush(db).unwrap_or_else(|error| warn!(%error, "flushing the store failed")),
    }
    debug!("storage writer stopped");
}

/// Makes `group` durable and applies it, answering each job's outcomes. Through the log when
/// there is one: append (and sync, unless `deferred`), then a redb commit without fsync. A group
/// too large for the log, or any group once the log has failed, is committed to redb directly.
///
/// An error may come after the group reached the log; its records are then applied at the next
/// open, as for a caller that stopped waiting.
#[allow(clippy::type_complexity)]
fn commit_group(
    db: &Database,
    log: &mut Option<Wal>,
    group: &[Job],
    deferred: bool,
    counters: &Counters,
) -> Result<(Vec<Vec<PutOutcome>>, StatsDelta), StorageError> {
    let batches: Vec<&[Record]> = group.iter().map(|job| job.records.as_slice()).collect();
    let direct = if deferred { Durability::None } else { Durability::Immediate };
    let Some(wal) = log.as_mut() else {
        return apply_batches(db, &batches, direct);
    };
    let Some(entry) = wal.encode(batches.iter().copied().flatten()) else {
        // Larger than the whole log. A durable commit also makes every earlier commit durable,
        // so the log starts over after it.
        let applied = apply_batches(db, &batches, Durability::Immediate)?;
        if let Err(error) = wal.checkpointed() {
            abandon_log(log, &error);
        }
        return Ok(applied);
    };
    if wal.wants_checkpoint_before(&entry)
        && let Err(error) = checkpoint(db, wal, counters)
    {
        abandon_log(log, &error);
        return Err(error);
    }
    if let Err(error) = wal.append(&entry).and_then(|()| if deferred { Ok(()) } else { wal.sync() }) {
        let error = StorageError::Db(format!("writing the write-ahead log: {error}"));
        abandon_log(log, &error);
        return Err(error);
    }
    apply_batches(db, &batches, Durability::None)
}

/// Makes the database durable (a redb commit with fsync) and starts the log over.
fn checkpoint(db: &Database, wal: &mut Wal, counters: &Counters) -> Result<(), StorageError> {
    let bytes = wal.used();
    flush(db)?;
    wal.checkpointed().map_err(db_error("resetting the write-ahead log"))?;
    counters.checkpoints.fetch_add(1, Ordering::Relaxed);
    debug!(bytes, capacity = wal.capacity(), "checkpoint");
    Ok(())
}

/// Gives up on a log that failed (after an I/O error its contents are uncertain): from now on
/// groups are committed to redb directly, whose first durable commit also covers every commit
/// made since the last checkpoint.
fn abandon_log(log: &mut Option<Wal>, error: &dyn fmt::Display) {
    error!(%error, "write-ahead log failed; committing straight to the database from now on");
    *log = None;
}

/// Makes the unsynced groups of deferred mode durable: a log sync, or a durable redb commit
/// without a log.
fn sync(db: &Database, log: &mut Option<Wal>) {
    if let Some(wal) = log.as_mut() {
        match wal.sync() {
            Ok(()) => return,
            Err(error) => abandon_log(log, &error),
        }
    }
    if let Err(error) = flush(db) {
        warn!(%error, "flushing the store failed");
    }
}

/// Makes every earlier commit durable: an empty commit with fsync.
fn flush(db: &Database) -> Result<(), StorageError> {
    let mut txn = db.begin_write().map_err(db_error("beginning a write transaction"))?;
    txn.set_durability(Durability::Immediate).map_err(db_error("setting durability"))?;
    txn.commit().map_err(db_error("committing"))
}

/// Applies `batches` (each job's records) in one transaction and commits it with `durability`,
/// returning each batch's outcomes. On error nothing is written.
#[allow(clippy::type_complexity)]
fn apply_batches(
    db: &Database,
    batches: &[&[Record]],
    durability: Durability,
) -> Result<(Vec<Vec<PutOutcome>>, StatsDelta), StorageError> {
    let mut txn = db.begin_write().map_err(db_error("beginning a write transaction"))?;
    txn.set_durability(durability).map_err(db_error("setting durability"))?;
    let mut delta = StatsDelta::default();
    let mut outcomes = Vec::with_capacity(batches.len());
    {
        let mut table = txn.open_table(RECORDS).map_err(db_error("opening the records table"))?;
        for batch in batches {
            let mut batch_outcomes = Vec::with_capacity(batch.len());
            for record in *batch {
                batch_outcomes.push(apply_one(&mut table, record, &mut delta)?);
            }
            outcomes.push(batch_outcomes);
        }
    }
    txn.commit().map_err(db_error("committing"))?;
    Ok((outcomes, delta))
}

/// Writes `record` if it supersedes the stored one; a corrupt stored row counts as absent.
fn apply_one(
    table: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    record: &Record,
    delta: &mut StatsDelta,
) -> Result<PutOutcome, StorageError> {
    let row = row_key(&record.key);
    let existing = match table.get(row.as_slice()).map_err(db_error("reading a record"))? {
        Some(value) => {
            let decoded = decode_row(&row, value.value()).map(|(_, record)| record);
            if decoded.is_none() {
                warn!(key_id = %record.key_id().short(), "overwriting a corrupt stored record");
            }
            decoded
        }
        None => None,
    };
    let existed = existing.as_ref().is_some_and(|old| !old.tombstone);
    if let Some(old) = &existing {
        if !record.supersedes(old) {
            return Ok(PutOutcome { applied: false, existed, held: Some(old.version) });
        }
        delta.remove(old);
    }
    table.insert(row.as_slice(), encode(record).as_slice()).map_err(db_error("writing a record"))?;
    delta.add(record);
    Ok(PutOutcome { applied: true, existed, held: None })
}

/// Drops each entry's row if it holds exactly the entry's version, in one transaction committed
/// without fsync (see [`Storage::remove_exact`]), and answers how many went.
fn remove_exact(db: &Database, removal: Removal, counters: &Counters) {
    let result = (|| {
        let mut txn = db.begin_write().map_err(db_error("beginning a write transaction"))?;
        txn.set_durability(Durability::None).map_err(db_error("setting durability"))?;
        let mut delta = StatsDelta::default();
        let mut removed = 0;
        {
            let mut table = txn.open_table(RECORDS).map_err(db_error("opening the records table"))?;
            for entry in &removal.entries {
                let row = row_key(&entry.key);
                let stored = match table.get(row.as_slice()).map_err(db_error("reading a record"))? {
                    Some(value) => decode_row(&row, value.value()).map(|(_, record)| record),
                    None => None,
                };
                let Some(stored) = stored.filter(|record| record.version == entry.version) else {
                    continue;
                };
                table.remove(row.as_slice()).map_err(db_error("removing a record"))?;
                delta.remove(&stored);
                removed += 1;
            }
        }
        txn.commit().map_err(db_error("committing"))?;
        delta.apply(counters);
        counters.commits.fetch_add(1, Ordering::Relaxed);
        Ok(removed)
    })();
    match &result {
        Ok(removed) => debug!(asked = removal.entries.len(), removed, "records removed"),
        Err(error) => warn!(%error, "removing records failed"),
    }
    let _ = removal.reply.send(result);
}

/// Wraps a redb or I/O error, saying what was being done.
fn db_error<E: fmt::Display>(context: &'static str) -> impl FnOnce(E) -> StorageError {
    move |err| StorageError::Db(format!("{context}: {err}"))
}

#[cfg(test)]
mod tests;
