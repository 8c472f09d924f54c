//! The write-ahead log in front of the record store: one preallocated file,
//! `<data_dir>/records.wal`.
//!
//! [`Wal`] owns that file; only the storage writer thread uses it. Why it exists: a redb commit
//! with fsync copies the changed B-tree pages, the table root and the allocator state to new places
//! and syncs them, about eight scattered page writes per commit, and on a small machine running
//! many nodes that work bounded how many puts a node could acknowledge. Appending the group's
//! records to this log and syncing it is one contiguous write into blocks that already exist, so
//! the sync has no file metadata to write. redb then commits without fsync, and a *checkpoint*
//! (one redb commit with fsync) makes everything durable in the database whenever the log fills,
//! after which the log starts again at offset zero.
//!
//! Format: the file is [`Wal::capacity`] bytes long, zero-filled when created. Entries lie end to
//! end from offset 0, each [`HEADER_BYTES`] of header then a CBOR payload (the group's records):
//!
//! ```text
//! magic u32 | lsn u64 | payload length u32 | crc32 u32 (of lsn, length and payload) | payload
//! ```
//!
//! all little-endian. `lsn` (log sequence number) grows by one per entry and is never reused, in
//! this process or the next, so the log's live entries are the run of intact entries from offset 0
//! whose lsns are consecutive. A torn write at the end, zeros, or the leftovers of an earlier round
//! (smaller lsns, or bytes that no longer start at an entry boundary) end the run. A checkpoint
//! writes a *checkpoint marker* over the first header (magic "OCKP", the next lsn, no payload): a
//! log reopened after a checkpoint replays nothing and numbers on from the marker, so a leftover of
//! an earlier round can never carry the lsn that follows a new entry. (Replaying a stale record
//! would not replace a newer version, but it would bring back a copy the store had removed.)

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use dht::store::Record;
use tracing::{debug, info, warn};

/// Marks the start of an entry ("OWAL").
pub(crate) const MAGIC: u32 = 0x4f57_414c;

/// Marks a checkpoint at offset 0 ("OCKP"): nothing to replay; its lsn is the next one to use.
pub(crate) const CHECKPOINT_MAGIC: u32 = 0x4f43_4b50;

/// Bytes of an entry's header.
pub(crate) const HEADER_BYTES: usize = 4 + 8 + 4 + 4;

/// Default size of the log file. Large enough that a maximal value (1 MiB by default) fits with
/// room to spare, small enough that replaying a full log at start takes well under a second.
pub(crate) const DEFAULT_CAPACITY: u64 = 4 * 1024 * 1024;

/// Once this many bytes of entries are in the log, the writer checkpoints before the next append,
/// even though the log has room. redb holds the pages changed by commits without fsync in memory
/// until a durable commit writes them, so this bounds that memory (each node's resident size
/// counts) at the price of a durable commit per this many bytes of writes.
pub(crate) const CHECKPOINT_BYTES: u64 = 64 * 1024;

/// An encoded entry, ready to be appended.
#[derive(Debug)]
pub(crate) struct Entry {
    bytes: Vec<u8>,
}

impl Entry {
    pub(crate) fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// What the log held when it was opened.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// The records of the live entries, in the order they were written.
    pub(crate) records: Vec<Record>,
    /// Live entries found.
    pub(crate) entries: u64,
}

/// The open log. See the module documentation for the format.
#[derive(Debug)]
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    capacity: u64,
    /// Where the next entry goes.
    tail: u64,
    /// The lsn of the next entry.
    next_lsn: u64,
}

impl Wal {
    /// Opens the log at `path`, creating it (zero-filled, `capacity` bytes) if it is missing or has
    /// another size, and returns the records of its live entries. The caller must make those
    /// durable elsewhere and then call [`Wal::checkpointed`] before appending: until then the log
    /// still holds them.
    ///
    /// A file of the wrong size is read first and only then replaced, so an interrupted creation or
    /// a change of capacity loses nothing.
    pub(crate) fn open(path: &Path, capacity: u64) -> io::Result<(Wal, Replay)> {
        let capacity = capacity.max(HEADER_BYTES as u64 * 2);
        let (replay, last_lsn, found_len) = match File::open(path) {
            Ok(file) => {
                let len = file.metadata()?.len();
                let (replay, last_lsn) = read_entries(&file, len)?;
                (replay, last_lsn, Some(len))
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => (Replay::default(), 0, None),
            Err(error) => return Err(error),
        };
        if found_len != Some(capacity) {
            create_zeroed(path, capacity)?;
        }
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        if replay.entries > 0 {
            info!(
                path = %path.display(),
                entries = replay.entries,
                records = replay.records.len(),
                "replaying the write-ahead log"
            );
        }
        let wal = Wal { file, path: path.to_path_buf(), capacity, tail: 0, next_lsn: last_lsn + 1 };
        Ok((wal, replay))
    }

    /// Size of the log file.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes of entries appended since the last checkpoint.
    pub(crate) fn used(&self) -> u64 {
        self.tail
    }

    /// Encodes `records` as the next entry. `None` if the entry could never fit in the log (the
    /// caller then writes the records to the database durably instead).
    pub(crate) fn encode<'a>(&self, records: impl IntoIterator<Item = &'a Record>) -> Option<Entry> {
        let records: Vec<&Record> = records.into_iter().collect();
        let mut bytes = vec![0; HEADER_BYTES];
        ciborium::into_writer(&records, &mut bytes)
            .expect("a Record has only CBOR-encodable fields and writing to a Vec cannot fail");
        let payload_len = u32::try_from(bytes.len() - HEADER_BYTES).ok()?;
        if bytes.len() as u64 > self.capacity {
            return None;
        }
        debug_assert_eq!(payload_len as usize, bytes.len() - HEADER_BYTES);
        let header = header(MAGIC, self.next_lsn, &bytes[HEADER_BYTES..]);
        bytes[..HEADER_BYTES].copy_from_slice(&header);
        Some(Entry { bytes })
    }

    /// Whether `entry` fits after the entries already in the log.
    pub(crate) fn has_room_for(&self, entry: &Entry) -> bool {
        self.tail + entry.len() <= self.capacity
    }

    /// Whether the writer should checkpoint before appending `entry`: it does not fit, or the log
    /// already holds [`CHECKPOINT_BYTES`].
    pub(crate) fn wants_checkpoint_before(&self, entry: &Entry) -> bool {
        !self.has_room_for(entry) || self.tail >= CHECKPOINT_BYTES
    }

    /// Writes `entry` after the others, without syncing. The caller must have encoded it with the
    /// current lsn (by [`Wal::encode`] since the last append) and checked [`Wal::has_room_for`].
    pub(crate) fn append(&mut self, entry: &Entry) -> io::Result<()> {
        debug_assert!(self.has_room_for(entry), "the caller checks for room");
        debug_assert_eq!(entry.bytes[4..12], self.next_lsn.to_le_bytes(), "encoded for this slot");
        self.file.write_all_at(&entry.bytes, self.tail)?;
        self.tail += entry.len();
        self.next_lsn += 1;
        Ok(())
    }

    /// Makes every appended entry durable (`fdatasync`: the file's size never changes).
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Starts the log over after the database has made everything in it durable: writes the
    /// checkpoint marker over the first header (so that a reopened log replays nothing and numbers
    /// on from here) and appends from offset 0 again.
    pub(crate) fn checkpointed(&mut self) -> io::Result<()> {
        self.file.write_all_at(&header(CHECKPOINT_MAGIC, self.next_lsn, &[]), 0)?;
        self.file.sync_data()?;
        debug!(path = %self.path.display(), bytes = self.tail, "write-ahead log checkpointed");
        self.tail = 0;
        Ok(())
    }
}

/// The header of an entry (or, with [`CHECKPOINT_MAGIC`] and no payload, of a checkpoint marker).
fn header(magic: u32, lsn: u64, payload: &[u8]) -> [u8; HEADER_BYTES] {
    let payload_len = u32::try_from(payload.len()).expect("the caller checked the payload's length");
    let mut header = [0u8; HEADER_BYTES];
    header[0..4].copy_from_slice(&magic.to_le_bytes());
    header[4..12].copy_from_slice(&lsn.to_le_bytes());
    header[12..16].copy_from_slice(&payload_len.to_le_bytes());
    header[16..20].copy_from_slice(&entry_crc(lsn, payload_len, payload).to_le_bytes());
    header
}

/// The CRC-32 of an entry's lsn, length and payload.
fn entry_crc(lsn: u64, payload_len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&lsn.to_le_bytes());
    hasher.update(&payload_len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// The live entries of the log `file` (`len` bytes long), and the lsn of the last one. Reads entry
/// by entry rather than the whole file, so that opening costs no more memory than one entry.
fn read_entries(file: &File, len: u64) -> io::Result<(Replay, u64)> {
    let mut replay = Replay::default();
    if let Some((CHECKPOINT_MAGIC, next_lsn, _)) = header_at(file, len, 0)? {
        return Ok((replay, next_lsn.saturating_sub(1)));
    }
    let mut offset = 0u64;
    let mut expected_lsn = None;
    let mut last_lsn = 0;
    while let Some((lsn, payload)) = entry_at(file, len, offset)? {
        if expected_lsn.is_some_and(|expected| lsn != expected) {
            break;
        }
        let records: Vec<Record> = match ciborium::from_reader(payload.as_slice()) {
            Ok(records) => records,
            Err(error) => {
                // The checksum matched, so this is a bug or a different format, not a torn write.
                warn!(lsn, %error, "write-ahead log entry does not decode; replay stops there");
                break;
            }
        };
        replay.entries += 1;
        replay.records.extend(records);
        last_lsn = lsn;
        expected_lsn = Some(lsn + 1);
        offset += (HEADER_BYTES + payload.len()) as u64;
    }
    Ok((replay, last_lsn))
}

/// The entry at `offset` of `file` (`len` bytes long), if one intact entry starts there: its lsn
/// and payload.
fn entry_at(file: &File, len: u64, offset: u64) -> io::Result<Option<(u64, Vec<u8>)>> {
    let found = header_at(file, len, offset)?;
    Ok(found.and_then(|(magic, lsn, payload)| (magic == MAGIC).then_some((lsn, payload))))
}

/// The intact header at `offset` of `file` (`len` bytes long) and its payload, whatever its
/// magic: (magic, lsn, payload).
fn header_at(file: &File, len: u64, offset: u64) -> io::Result<Option<(u32, u64, Vec<u8>)>> {
    let mut header = [0u8; HEADER_BYTES];
    if offset + HEADER_BYTES as u64 > len {
        return Ok(None);
    }
    file.read_exact_at(&mut header, offset)?;
    let [m0, m1, m2, m3, l0, l1, l2, l3, l4, l5, l6, l7, n0, n1, n2, n3, c0, c1, c2, c3] = header;
    let magic = u32::from_le_bytes([m0, m1, m2, m3]);
    let lsn = u64::from_le_bytes([l0, l1, l2, l3, l4, l5, l6, l7]);
    let payload_len = u32::from_le_bytes([n0, n1, n2, n3]);
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    let start = offset + HEADER_BYTES as u64;
    // The length is checked against the file before anything is allocated for it.
    if !matches!(magic, MAGIC | CHECKPOINT_MAGIC) || start + u64::from(payload_len) > len {
        return Ok(None);
    }
    let mut payload = vec![0; payload_len as usize];
    file.read_exact_at(&mut payload, start)?;
    Ok((entry_crc(lsn, payload_len, &payload) == crc).then_some((magic, lsn, payload)))
}

/// Creates `path` as `capacity` zero bytes, durably: written to a temporary file, synced, renamed
/// over `path`, and the directory synced.
fn create_zeroed(path: &Path, capacity: u64) -> io::Result<()> {
    let temporary = path.with_extension("wal.new");
    {
        let mut file = File::create(&temporary)?;
        let zeros = vec![0u8; 64 * 1024];
        let mut left = capacity;
        while left > 0 {
            let chunk = left.min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..chunk])?;
            left -= chunk as u64;
        }
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use dht::Id;
    use dht::id::ID_BYTES;
    use dht::store::Version;

    use super::*;

    fn record(key: &str, hlc: u64) -> Record {
        let version = Version { hlc, writer: Id::from_bytes([1; ID_BYTES]) };
        Record::new(key.as_bytes().to_vec(), format!("value of {key} at {hlc}").into_bytes(), version)
    }

    fn append(wal: &mut Wal, records: &[Record]) {
        let entry = wal.encode(records).expect("fits");
        assert!(wal.has_room_for(&entry));
        wal.append(&entry).expect("append");
    }

    fn keys(replay: &Replay) -> Vec<(Vec<u8>, u64)> {
        replay.records.iter().map(|r| (r.key.clone(), r.version.hlc)).collect()
    }

    const TEST_CAPACITY: u64 = 64 * 1024;

    /// A new log in a temporary directory (kept alive by the returned guard).
    fn fresh_log() -> (tempfile::TempDir, PathBuf, Wal) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("records.wal");
        let (wal, replay) = Wal::open(&path, TEST_CAPACITY).expect("open");
        assert_eq!(replay.entries, 0);
        (dir, path, wal)
    }

    fn reopen(path: &Path) -> (Wal, Replay) {
        Wal::open(path, TEST_CAPACITY).expect("reopen")
    }

    #[test]
    fn appended_entries_replay_in_order_and_a_checkpoint_clears_them() {
        let (_dir, path, mut wal) = fresh_log();
        assert_eq!(std::fs::metadata(&path).expect("created").len(), TEST_CAPACITY);
        append(&mut wal, &[record("a", 1), record("b", 2)]);
        append(&mut wal, &[record("a", 3)]);
        wal.sync().expect("sync");
        drop(wal);

        let (mut wal, replay) = reopen(&path);
        assert_eq!(replay.entries, 2);
        assert_eq!(keys(&replay), vec![(b"a".to_vec(), 1), (b"b".to_vec(), 2), (b"a".to_vec(), 3)]);
        assert!(replay.records.iter().all(Record::is_intact));

        wal.checkpointed().expect("checkpoint");
        append(&mut wal, &[record("c", 4)]);
        drop(wal);
        let (_, replay) = reopen(&path);
        // Only the entry written after the checkpoint; the older ones further on are leftovers.
        assert_eq!(keys(&replay), vec![(b"c".to_vec(), 4)]);
    }

    #[test]
    fn a_checkpointed_log_replays_nothing() {
        let (_dir, path, mut wal) = fresh_log();
        append(&mut wal, &[record("a", 1)]);
        append(&mut wal, &[record("b", 2)]);
        wal.checkpointed().expect("checkpoint");
        drop(wal);
        let (_, replay) = reopen(&path);
        assert_eq!(replay.entries, 0);
    }

    #[test]
    fn lsns_keep_growing_across_reopens_so_leftovers_never_join_the_run() {
        let (_dir, path, mut wal) = fresh_log();
        // Round one: three entries of the same size, replayed at a reopen.
        for hlc in 1..=3 {
            append(&mut wal, &[record("k", hlc)]);
        }
        drop(wal);
        let (mut wal, replay) = reopen(&path);
        assert_eq!(replay.entries, 3);
        // The caller made them durable; the header is zeroed and round two starts.
        wal.checkpointed().expect("checkpoint");
        append(&mut wal, &[record("k", 7)]);
        drop(wal);
        // The second and third entries of round one still sit right after the new one, intact,
        // but their lsns (2, 3) do not follow the new entry's (4).
        let (_, replay) = reopen(&path);
        assert_eq!(keys(&replay), vec![(b"k".to_vec(), 7)]);
    }

    #[test]
    fn lsns_keep_growing_across_a_checkpoint_and_a_restart() {
        let (_dir, path, mut wal) = fresh_log();
        // Round one: three entries of the same size, checkpointed, then the node stops cleanly.
        for hlc in 1..=3 {
            append(&mut wal, &[record("k", hlc)]);
        }
        wal.checkpointed().expect("checkpoint");
        drop(wal);
        // The next run replays nothing, writes one entry of the same size and crashes.
        let (mut wal, replay) = reopen(&path);
        assert_eq!(replay.entries, 0);
        append(&mut wal, &[record("k", 7)]);
        drop(wal);
        // Round one's second entry still sits right after the new one, intact; had the numbering
        // started again at 1 its lsn (2) would follow the new entry's and it would be replayed.
        let (_, replay) = reopen(&path);
        assert_eq!(keys(&replay), vec![(b"k".to_vec(), 7)]);
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_replay_and_earlier_entries_survive() {
        let (_dir, path, mut wal) = fresh_log();
        append(&mut wal, &[record("a", 1)]);
        let second_at = wal.used();
        append(&mut wal, &[record("b", 2)]);
        let end = wal.used();
        drop(wal);

        // A torn second entry: its last bytes never reached the disk.
        let mut bytes = std::fs::read(&path).expect("read");
        let intact = bytes.clone();
        for byte in &mut bytes[end as usize - 5..end as usize] {
            *byte = 0;
        }
        std::fs::write(&path, &bytes).expect("write");
        let (_, replay) = reopen(&path);
        assert_eq!(keys(&replay), vec![(b"a".to_vec(), 1)]);

        // A flipped bit in the second entry's payload.
        let mut bytes = intact.clone();
        bytes[second_at as usize + HEADER_BYTES + 3] ^= 0x10;
        std::fs::write(&path, &bytes).expect("write");
        let (_, replay) = reopen(&path);
        assert_eq!(keys(&replay), vec![(b"a".to_vec(), 1)]);

        // A length field pointing far past the end of the file.
        let mut bytes = intact;
        bytes[second_at as usize + 12..second_at as usize + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &bytes).expect("write");
        let (_, replay) = reopen(&path);
        assert_eq!(keys(&replay), vec![(b"a".to_vec(), 1)]);
    }

    #[test]
    fn a_file_of_another_size_is_replayed_then_recreated() {
        let (_dir, path, mut wal) = fresh_log();
        append(&mut wal, &[record("a", 1)]);
        drop(wal);
        let (_, replay) = Wal::open(&path, 128 * 1024).expect("reopen larger");
        assert_eq!(keys(&replay), vec![(b"a".to_vec(), 1)]);
        assert_eq!(std::fs::metadata(&path).expect("exists").len(), 128 * 1024);
        // Garbage of any length is read without panicking and replays nothing.
        std::fs::write(&path, b"not a log at all").expect("write");
        let (_, replay) = reopen(&path);
        assert_eq!(replay.entries, 0);
    }

    #[test]
    fn an_entry_larger_than_the_log_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(&dir.path().join("records.wal"), 4096).expect("open");
        let big = Record::new(b"big".to_vec(), vec![7; 8192], Version { hlc: 1, writer: Id::ZERO });
        assert!(wal.encode([&big]).is_none());
        // Filling the log: entries stop fitting, a checkpoint makes room again.
        let small = [record("s", 1)];
        let entry = wal.encode(&small).expect("fits");
        while wal.has_room_for(&entry) {
            let entry = wal.encode(&small).expect("fits");
            wal.append(&entry).expect("append");
        }
        wal.checkpointed().expect("checkpoint");
        assert_eq!(wal.used(), 0);
        assert!(wal.has_room_for(&entry));
    }
}
