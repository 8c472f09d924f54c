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
//! - for each key the row holds the newest version ever accepted ([`Record::supersedes`]);
//!   deletes are tombstone records, kept so that they win over older writes and replicate;
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
    jobs: mpsc::Sender<Job>,
    _writer: WriterThread,
    db: Arc<Database>,
    counters: Arc<Counters>,
    path: PathBuf,
}

/// One caller's records and where to send their outcomes (in the same order).
struct Job {
    records: Vec<Record>,
    reply: oneshot::Sender<Result<Vec<PutOutcome>, StorageError>>,
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
        self.inner.jobs.send(Job { records, reply }).await.map_err(|_| StorageError::Closed)?;
        let outcomes = answer.await.map_err(|_| StorageError::Closed)??;
        debug_assert_eq!(outcomes.len(), expected, "one outcome per record");
        Ok(outcomes)
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
    mut queue: mpsc::Receiver<Job>,
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
        let mut records = first.records.len();
        let mut group = vec![first];
        while records < GROUP_COMMIT_RECORDS {
            let Ok(job) = queue.try_recv() else { break };
            records += job.records.len();
            group.push(job);
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
                        StorageError::Closed => StorageError::Closed,
                    };
                    let _ = job.reply.send(Err(reply));
                }
            }
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

/// Wraps a redb or I/O error, saying what was being done.
fn db_error<E: fmt::Display>(context: &'static str) -> impl FnOnce(E) -> StorageError {
    move |err| StorageError::Db(format!("{context}: {err}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn writer(n: u8) -> Id {
        Id::from_bytes([n; ID_BYTES])
    }

    fn version(hlc: u64, by: u8) -> Version {
        Version { hlc, writer: writer(by) }
    }

    fn live(key: &[u8], value: &[u8], hlc: u64) -> Record {
        Record::new(key.to_vec(), value.to_vec(), version(hlc, 1))
    }

    fn open(dir: &tempfile::TempDir) -> Storage {
        Storage::open(dir.path()).expect("a fresh temp dir opens")
    }

    fn stats(keys: u64, bytes: u64, tombstones: u64, corrupt_reads: u64) -> StorageStats {
        StorageStats { keys, bytes, tombstones, corrupt_reads }
    }

    /// Writes raw bytes under `key`'s table key, bypassing every check of the store.
    fn write_raw(storage: &Storage, key: &[u8], value: &[u8]) {
        let txn = storage.inner.db.begin_write().expect("begin write");
        {
            let mut table = txn.open_table(RECORDS).expect("table exists");
            table.insert(row_key(key).as_slice(), value).expect("insert");
        }
        txn.commit().expect("commit");
    }

    #[tokio::test]
    async fn newest_version_wins_and_existed_reports_live_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(&dir);

        let first = storage.put(live(b"k", b"one", 10)).await.expect("put");
        assert_eq!(first, PutOutcome { applied: true, existed: false, held: None });

        // Older, then equal: neither replaces the stored record, both see it existed.
        let older = storage.put(live(b"k", b"zero", 9)).await.expect("put");
        assert_eq!(older, PutOutcome { applied: false, existed: true, held: Some(version(10, 1)) });
        let same = storage.put(live(b"k", b"one", 10)).await.expect("put");
        assert_eq!(same, PutOutcome { applied: false, existed: true, held: Some(version(10, 1)) });
        assert_eq!(storage.get(b"k").expect("get").expect("present").value, b"one");

        // Same clock reading, greater writer id: newer by the version order.
        let tie = Record::new(b"k".to_vec(), b"two".to_vec(), version(10, 2));
        assert_eq!(
            storage.put(tie).await.expect("put"),
            PutOutcome { applied: true, existed: true, held: None }
        );
        let newer = storage.put(live(b"k", b"three!", 11)).await.expect("put");
        assert_eq!(newer, PutOutcome { applied: true, existed: true, held: None });
        assert_eq!(storage.get(b"k").expect("get").expect("present").value, b"three!");
        assert_eq!(storage.get(b"absent").expect("get"), None);
        assert_eq!(storage.stats(), stats(1, 6, 0, 0));
    }

    #[tokio::test]
    async fn tombstones_delete_and_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(&dir);
        storage.put(live(b"a", b"12345", 10)).await.expect("put");
        storage.put(live(b"b", b"xy", 10)).await.expect("put");
        assert_eq!(storage.stats(), stats(2, 7, 0, 0));

        let delete = storage.put(Record::tombstone(b"a".to_vec(), version(20, 1))).await.expect("put");
        assert_eq!(delete, PutOutcome { applied: true, existed: true, held: None });
        assert_eq!(storage.stats(), stats(1, 2, 1, 0));
        let stored = storage.get(b"a").expect("get").expect("the tombstone is stored");
        assert!(stored.tombstone);

        // A write older than the delete loses, and the key no longer counts as existing.
        let stale = storage.put(live(b"a", b"stale", 15)).await.expect("put");
        assert_eq!(stale, PutOutcome { applied: false, existed: false, held: Some(version(20, 1)) });
        // Deleting again, newer: applied, but nothing live was there.
        let again = storage.put(Record::tombstone(b"a".to_vec(), version(25, 1))).await.expect("put");
        assert_eq!(again, PutOutcome { applied: true, existed: false, held: None });
        assert_eq!(storage.stats(), stats(1, 2, 1, 0));

        // A tombstone for a key never seen is kept too (the delete must win over older replicas).
        let fresh = storage.put(Record::tombstone(b"c".to_vec(), version(5, 1))).await.expect("put");
        assert_eq!(fresh, PutOutcome { applied: true, existed: false, held: None });
        assert_eq!(storage.stats(), stats(1, 2, 2, 0));

        // A write newer than the delete brings the key back.
        let revived = storage.put(live(b"a", b"new", 30)).await.expect("put");
        assert_eq!(revived, PutOutcome { applied: true, existed: false, held: None });
        assert_eq!(storage.stats(), stats(2, 5, 1, 0));
    }

    #[tokio::test]
    async fn put_many_applies_in_order_and_refuses_corrupt_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(&dir);
        let outcomes = storage
            .put_many(vec![live(b"k", b"new", 20), live(b"k", b"old", 10), live(b"j", b"x", 1)])
            .await
            .expect("put_many");
        assert_eq!(
            outcomes,
            vec![
                PutOutcome { applied: true, existed: false, held: None },
                PutOutcome { applied: false, existed: true, held: Some(version(20, 1)) },
                PutOutcome { applied: true, existed: false, held: None },
            ]
        );
        assert_eq!(storage.put_many(Vec::new()).await.expect("empty"), Vec::new());

        let mut bad = live(b"m", b"value", 5);
        bad.value[0] ^= 1;
        let result = storage.put_many(vec![live(b"n", b"fine", 5), bad]).await;
        assert!(matches!(result, Err(StorageError::Corrupt)), "{result:?}");
        assert_eq!(storage.get(b"n").expect("get"), None, "nothing of a refused call is written");
        assert_eq!(storage.stats(), stats(2, 4, 0, 0));
    }

    #[tokio::test]
    async fn records_and_stats_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(&dir);
        let clone = storage.clone();
        storage.put(live(b"a", b"alpha", 1)).await.expect("put");
        clone.put(live(b"b", b"beta", 1)).await.expect("put");
        clone.put(Record::tombstone(b"c".to_vec(), version(1, 1))).await.expect("put");
        let before = storage.stats();
        assert_eq!(before, stats(2, 9, 1, 0));
        drop(storage);
        // One clone left: the writer still runs.
        clone.put(live(b"d", b"", 1)).await.expect("put after dropping one clone");
        drop(clone);

        // Reopening works only if the last drop stopped the writer and closed the file.
        let reopened = open(&dir);
        assert_eq!(reopened.stats(), stats(3, 9, 1, 0));
        assert_eq!(reopened.get(b"a").expect("get").expect("present").value, b"alpha");
        assert_eq!(reopened.get(b"d").expect("get").expect("present").value, b"");
        assert!(reopened.get(b"c").expect("get").expect("present").tombstone);
        let older = reopened.put(live(b"b", b"older", 0)).await.expect("put");
        assert!(!older.applied && older.existed, "versions persist too");
    }

    #[tokio::test]
    async fn corrupt_rows_are_never_returned_and_are_repaired_by_a_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(&dir);
        storage.put(live(b"good", b"fine", 1)).await.expect("put");

        let mut tampered = live(b"bad", b"value", 1);
        tampered.checksum ^= 1;
        write_raw(&storage, b"bad", &encode(&tampered));
        let result = storage.get(b"bad");
        assert!(matches!(result, Err(StorageError::Corrupt)), "{result:?}");
        assert_eq!(storage.stats().corrupt_reads, 1);

        // A value that is not CBOR at all reads the same way.
        write_raw(&storage, b"garbage", b"\xff\x00 not cbor");
        assert!(matches!(storage.get(b"garbage"), Err(StorageError::Corrupt)));
        assert_eq!(storage.stats().corrupt_reads, 2);

        // An intact record under another key's table key is corrupt too.
        write_raw(&storage, b"misplaced", &encode(&live(b"elsewhere", b"v", 1)));
        assert!(matches!(storage.get(b"misplaced"), Err(StorageError::Corrupt)));

        // Scans skip corrupt rows (and count each).
        let (entries, truncated) = storage.entries(&Id::ZERO, &Id::ZERO, None, 10).expect("entries");
        assert_eq!(
            entries.iter().map(|entry| entry.key.as_slice()).collect::<Vec<_>>(),
            [b"good".as_slice()]
        );
        assert!(!truncated);
        assert_eq!(storage.stats().corrupt_reads, 6);

        // Any valid write replaces a corrupt row, whatever its version claimed.
        let repaired = storage.put(live(b"bad", b"repaired", 0)).await.expect("put");
        assert_eq!(repaired, PutOutcome { applied: true, existed: false, held: None });
        assert_eq!(storage.get(b"bad").expect("get").expect("present").value, b"repaired");

        // At reopen the remaining corrupt rows are not counted as records.
        drop(storage);
        let reopened = open(&dir);
        assert_eq!(reopened.stats(), stats(2, 12, 0, 0));
    }

    /// 200 records with known ids, a few of them tombstones, and the same records sorted by id.
    async fn filled(storage: &Storage) -> Vec<(Id, Record)> {
        let mut model = Vec::new();
        for i in 0..200u32 {
            let key = format!("key-{i}").into_bytes();
            let record = if i % 7 == 0 {
                Record::tombstone(key, version(u64::from(i) + 1, 3))
            } else {
                Record::new(key, i.to_be_bytes().to_vec(), version(u64::from(i) + 1, 3))
            };
            model.push((record.key_id(), record));
        }
        let records = model.iter().map(|(_, record)| record.clone()).collect();
        storage.put_many(records).await.expect("put_many");
        model.sort_by_key(|(key_id, _)| *key_id);
        model
    }

    fn entries_of(model: &[(Id, Record)]) -> Vec<Entry> {
        model.iter().map(|(_, record)| Entry { key: record.key.clone(), version: record.version }).collect()
    }

    fn digest_of(start: &Id, end: &Id, model: &[(Id, Record)]) -> Vec<BucketHash> {
        store::digest(start, end, model.iter().map(|(key_id, record)| (key_id, &record.version)))
    }

    #[tokio::test]
    async fn ranges_wrap_past_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(&dir);
        let model = filled(&storage).await;
        let (a, b) = (model[150].0, model[40].0);
        assert!(a > b);
        // (a, b] wraps: the ids above a, then those up to and including b; a itself is excluded.
        let expected: Vec<(Id, Record)> = model[151..].iter().chain(&model[..=40]).cloned().collect();
        assert!(expected.iter().all(|(key_id, _)| key_id.in_open_closed(&a, &b)));
        assert_eq!(expected.len(), 49 + 41);

        let (entries, truncated) = storage.entries(&a, &b, None, 1000).expect("entries");
        assert_eq!(entries, entries_of(&expected));
        assert!(!truncated);
        let records = storage.records(&a, &b, 1000).expect("records");
        assert_eq!(records, expected.iter().map(|(_, record)| record.clone()).collect::<Vec<_>>());
        assert!(records.iter().any(|record| record.tombstone), "hand-off includes tombstones");
        assert_eq!(storage.digest(&a, &b).expect("digest"), digest_of(&a, &b, &expected));

        // The complement (b, a] does not wrap and holds the rest.
        let rest = &model[41..=150];
        assert_eq!(storage.entries(&b, &a, None, 1000).expect("entries").0, entries_of(rest));
        assert_eq!(storage.digest(&b, &a).expect("digest"), digest_of(&b, &a, rest));
        assert_ne!(storage.digest(&a, &b).expect("digest"), storage.digest(&b, &a).expect("digest"));

        // Limits apply in ring order from the start.
        let first_ten = storage.records(&a, &b, 10).expect("records");
        assert_eq!(first_ten, expected[..10].iter().map(|(_, record)| record.clone()).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn equal_ends_and_the_edges_of_the_id_space() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(&dir);
        assert_eq!(storage.entries(&Id::ZERO, &Id::ZERO, None, 10).expect("empty"), (Vec::new(), false));
        assert_eq!(storage.digest(&Id::MAX, &Id::MAX).expect("empty"), vec![0; DIGEST_BUCKETS]);
        let model = filled(&storage).await;
        let all = entries_of(&model);

        // start == end is the whole ring, starting after `start`.
        for edge in [Id::ZERO, Id::MAX] {
            assert_eq!(storage.entries(&edge, &edge, None, 1000).expect("entries").0, all);
            assert_eq!(storage.digest(&edge, &edge).expect("digest"), digest_of(&edge, &edge, &model));
        }
        let pivot = model[99].0;
        let (ring, _) = storage.entries(&pivot, &pivot, None, 1000).expect("entries");
        let rotated: Vec<(Id, Record)> = model[100..].iter().chain(&model[..100]).cloned().collect();
        assert_eq!(ring, entries_of(&rotated), "the pivot itself comes last");

        // (MAX, b] runs from zero; (a, MAX] runs to the top.
        let b = model[10].0;
        assert_eq!(storage.entries(&Id::MAX, &b, None, 1000).expect("entries").0, entries_of(&model[..=10]));
        let a = model[190].0;
        assert_eq!(storage.entries(&a, &Id::MAX, None, 1000).expect("entries").0, entries_of(&model[191..]));
        assert_eq!(storage.entries(&a, &a.wrapping_add(&Id::pow2(0)), None, 10).expect("entries").0, []);
    }

    #[tokio::test]
    async fn entries_filter_by_bucket_and_honour_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(&dir);
        let model = filled(&storage).await;
        let (a, b) = (model[120].0, model[80].0);
        let in_range: Vec<(Id, Record)> = model[121..].iter().chain(&model[..=80]).cloned().collect();

        let pick = [store::bucket_of(&in_range[0].0, &a, &b), store::bucket_of(&in_range[100].0, &a, &b)];
        assert_ne!(pick[0], pick[1]);
        let wanted: Vec<u16> = pick.iter().map(|&bucket| bucket as u16).chain([500]).collect();
        let expected: Vec<(Id, Record)> = in_range
            .iter()
            .filter(|(key_id, _)| pick.contains(&store::bucket_of(key_id, &a, &b)))
            .cloned()
            .collect();
        assert!(expected.len() >= 2 && expected.len() < in_range.len());
        let (entries, truncated) = storage.entries(&a, &b, Some(&wanted), 1000).expect("entries");
        assert_eq!(entries, entries_of(&expected));
        assert!(!truncated);
        assert_eq!(storage.entries(&a, &b, Some(&[][..]), 1000).expect("entries"), (Vec::new(), false));

        // Exactly enough: not truncated. One short: truncated, and the first ones in ring order.
        let n = expected.len();
        assert_eq!(
            storage.entries(&a, &b, Some(&wanted), n).expect("entries"),
            (entries_of(&expected), false)
        );
        let (short, truncated) = storage.entries(&a, &b, Some(&wanted), n - 1).expect("entries");
        assert_eq!(short, entries_of(&expected[..n - 1]));
        assert!(truncated);
        assert_eq!(storage.entries(&a, &b, None, 0).expect("entries"), (Vec::new(), true));
    }

    #[tokio::test]
    async fn digests_agree_whatever_the_insertion_order() {
        let (dir_a, dir_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let (one, two) = (open(&dir_a), open(&dir_b));
        let mut newest = BTreeMap::new();
        let mut all = Vec::new();
        for i in 0..300u32 {
            let key = format!("k{i}").into_bytes();
            let old = Record::new(key.clone(), b"old".to_vec(), version(1, 1));
            let new = if i % 5 == 0 {
                Record::tombstone(key.clone(), version(2, 1))
            } else {
                Record::new(key.clone(), b"new".to_vec(), version(2, 1))
            };
            newest.insert(key, new.clone());
            all.push(old);
            all.push(new);
        }
        // One store sees each key's old version first, the other sees everything reversed (newest
        // first, so the old versions must be refused), one put at a time.
        one.put_many(all.clone()).await.expect("put_many");
        for record in all.into_iter().rev() {
            two.put(record).await.expect("put");
        }
        assert_eq!(one.stats(), two.stats());

        let mid = Id::hash(b"k150");
        for (start, end) in [(Id::ZERO, Id::ZERO), (mid, Id::hash(b"k7")), (Id::hash(b"k7"), mid)] {
            let digest = one.digest(&start, &end).expect("digest");
            assert_eq!(digest, two.digest(&start, &end).expect("digest"));
            let model: Vec<(Id, Record)> = newest
                .values()
                .filter(|record| record.key_id().in_open_closed(&start, &end))
                .map(|record| (record.key_id(), record.clone()))
                .collect();
            assert_eq!(digest, digest_of(&start, &end, &model));
        }

        // One newer record on one side changes exactly its bucket.
        let changed = live(b"k42", b"newer", 3);
        two.put(changed.clone()).await.expect("put");
        let (left, right) =
            (one.digest(&Id::ZERO, &Id::ZERO).expect("d"), two.digest(&Id::ZERO, &Id::ZERO).expect("d"));
        let differing: Vec<usize> = (0..DIGEST_BUCKETS).filter(|&i| left[i] != right[i]).collect();
        assert_eq!(differing, [store::bucket_of(&changed.key_id(), &Id::ZERO, &Id::ZERO)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_puts_are_all_applied_and_durable() {
        const TASKS: usize = 16;
        const PER_TASK: usize = 32;
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(&dir);
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let storage = storage.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let key = format!("t{task}-{i}").into_bytes();
                    let outcome = storage.put(Record::new(key, vec![7; 10], version(1, 1))).await;
                    assert_eq!(
                        outcome.expect("put"),
                        PutOutcome { applied: true, existed: false, held: None }
                    );
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        let puts = (TASKS * PER_TASK) as u64;
        assert_eq!(storage.stats(), stats(puts, puts * 10, 0, 0));
        drop(storage);

        let reopened = open(&dir);
        assert_eq!(reopened.stats(), stats(puts, puts * 10, 0, 0));
        for task in 0..TASKS {
            for i in 0..PER_TASK {
                let key = format!("t{task}-{i}").into_bytes();
                assert!(reopened.get(&key).expect("get").is_some());
            }
        }
    }

    #[tokio::test]
    async fn queued_puts_share_one_commit() {
        const PUTS: usize = 100;
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(&dir);
        // Hold redb's single write transaction so the writer blocks on its first group while
        // every other put queues behind it.
        let blocker = storage.inner.db.begin_write().expect("begin write");
        let commits_before = storage.inner.counters.commits.load(Ordering::Relaxed);
        let mut answers = Vec::new();
        for i in 0..PUTS {
            let (reply, answer) = oneshot::channel();
            let record = live(format!("g{i}").as_bytes(), b"v", 1);
            storage.inner.jobs.send(Job { records: vec![record], reply }).await.expect("queue open");
            answers.push(answer);
        }
        drop(blocker);
        for answer in answers {
            let outcomes = answer.await.expect("answered").expect("written");
            assert_eq!(outcomes, [PutOutcome { applied: true, existed: false, held: None }]);
        }
        let commits = storage.inner.counters.commits.load(Ordering::Relaxed) - commits_before;
        // The group the writer held when it blocked, then everything queued meanwhile.
        assert!(commits <= 2, "{PUTS} queued puts took {commits} commits");
        assert_eq!(storage.stats().keys, PUTS as u64);
    }

    #[test]
    fn segments_cover_the_interval_in_ring_order() {
        let one = Id::pow2(0);
        let (lo, hi) = (Id::pow2(10), Id::pow2(100));
        assert_eq!(ring_segments(&lo, &hi), [(lo.wrapping_add(&one), Some(hi.wrapping_add(&one)))]);
        assert_eq!(
            ring_segments(&hi, &lo),
            [(hi.wrapping_add(&one), None), (Id::ZERO, Some(lo.wrapping_add(&one)))]
        );
        assert_eq!(ring_segments(&Id::MAX, &Id::MAX), [(Id::ZERO, None)]);
        assert_eq!(
            ring_segments(&lo, &lo),
            [(lo.wrapping_add(&one), None), (Id::ZERO, Some(lo.wrapping_add(&one)))]
        );
        assert_eq!(ring_segments(&lo, &Id::MAX), [(lo.wrapping_add(&one), None)]);
        assert_eq!(ring_segments(&Id::MAX, &lo), [(Id::ZERO, Some(lo.wrapping_add(&one)))]);
    }

    #[tokio::test]
    async fn periodic_fsync_still_persists_what_was_acknowledged_once_closed() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let store = Storage::open_with(dir.path(), Duration::from_millis(20)).expect("open");
            for i in 0..50u64 {
                let record = Record::new(
                    format!("k{i}").into_bytes(),
                    b"v".to_vec(),
                    dht::store::Version { hlc: i + 1, writer: dht::Id::ZERO },
                );
                assert!(store.put(record).await.expect("put").applied);
            }
            assert_eq!(store.get(b"k7").expect("get").map(|r| r.value), Some(b"v".to_vec()));
        }
        // Closing flushed: everything is there after a reopen.
        let store = Storage::open(dir.path()).expect("reopen");
        assert_eq!(store.stats().keys, 50);
    }

    /// Set in the child process of [`acknowledged_puts_survive_an_abort`]: the data directory.
    const CRASH_CHILD_DIR: &str = "OVERLAY_STORAGE_CRASH_CHILD_DIR";
    const CRASH_PUTS: u64 = 300;

    /// Every acknowledged put survives the process dying without closing the store. The child
    /// (this test binary, re-run on this test alone) puts records, then aborts: no checkpoint ran,
    /// so the records are in the write-ahead log only, and the reopen must replay them.
    #[test]
    fn acknowledged_puts_survive_an_abort() {
        if let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            runtime.block_on(async {
                let storage = Storage::open(Path::new(&dir)).expect("open");
                for i in 0..CRASH_PUTS {
                    let record = live(format!("crash{i}").as_bytes(), format!("v{i}").as_bytes(), i + 1);
                    assert!(storage.put(record).await.expect("put").applied);
                }
                // A later version of one key, and a delete: replay must keep the newest.
                storage.put(live(b"crash0", b"newer", 1_000)).await.expect("put");
                storage.put(Record::tombstone(b"crash1".to_vec(), version(1_000, 1))).await.expect("delete");
                std::process::abort();
            });
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "storage::tests::acknowledged_puts_survive_an_abort", "--nocapture"])
            .env(CRASH_CHILD_DIR, dir.path())
            .status()
            .expect("child runs");
        assert!(!status.success(), "the child aborts after its puts");
        let log = std::fs::read(dir.path().join(WAL_FILE_NAME)).expect("log exists");
        assert_ne!(log[..4], [0; 4], "the records are in the log, not checkpointed");

        let storage = open(&dir);
        assert_eq!(storage.get(b"crash0").expect("get").expect("present").value, b"newer");
        assert!(storage.get(b"crash1").expect("get").expect("present").tombstone);
        for i in 2..CRASH_PUTS {
            let record = storage.get(format!("crash{i}").as_bytes()).expect("get").expect("present");
            assert_eq!(record.value, format!("v{i}").as_bytes());
        }
        assert_eq!(storage.stats(), stats(CRASH_PUTS - 1, storage.stats().bytes, 1, 0));
        // The replay was checkpointed at open: the log starts empty.
        let log = std::fs::read(dir.path().join(WAL_FILE_NAME)).expect("log exists");
        assert_eq!(log[..4], [0; 4]);
    }

    #[tokio::test]
    async fn a_full_log_checkpoints_and_groups_larger_than_the_log_bypass_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big_value = vec![b'x'; 700 * 1024];
        {
            let storage = open(&dir);
            // 700 KiB records, one per group: each finds the log past its checkpoint size.
            for i in 0..8u64 {
                storage.put(live(format!("big{i}").as_bytes(), &big_value, i + 1)).await.expect("put");
            }
            assert_eq!(storage.inner.counters.checkpoints.load(Ordering::Relaxed), 7);
            // One group of 7 × 700 KiB cannot fit in the log at all: committed to redb directly.
            let records: Vec<Record> =
                (0..7u64).map(|i| live(format!("huge{i}").as_bytes(), &big_value, 100 + i)).collect();
            let outcomes = storage.put_many(records).await.expect("put_many");
            assert!(outcomes.iter().all(|outcome| outcome.applied));
            // Small writes go through the log again afterwards.
            storage.put(live(b"small", b"v", 1)).await.expect("put");
            assert_eq!(storage.stats().keys, 16);
        }
        let storage = open(&dir);
        assert_eq!(storage.stats().keys, 16);
        assert_eq!(storage.get(b"huge6").expect("get").expect("present").value, big_value);
        assert_eq!(storage.get(b"big7").expect("get").expect("present").value, big_value);
    }
}
