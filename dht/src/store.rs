//! Replicated key/value records: versions, checksums, the storage wire protocol, quorum
//! arithmetic and the range digests that anti-entropy compares.
//!
//! Everything here is a decision or a data type; the node executes it (sends the messages, writes
//! the records to disk). Invariants:
//! - a record's checksum covers its key, value, version and tombstone flag, and is verified on every
//!   receipt ([`KvRequest::validate`]) and by the store on every read from disk;
//! - of two records for one key the one with the greater [`Version`] wins everywhere, so replicas
//!   that exchange records converge regardless of order;
//! - digests depend only on the (key id, version) pairs in a range, so equal replicas give equal
//!   digests.

use std::cmp::Ordering;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use thiserror::Error;

use crate::id::Id;

/// Version of a record: a hybrid logical clock reading and the writer that took it.
///
/// Ordered by clock, then writer id, so two writes never tie: the newest write wins, and writes
/// in the same clock tick are ordered deterministically by writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    /// Hybrid logical clock: milliseconds since the Unix epoch in the high 48 bits, a counter in
    /// the low 16.
    pub hlc: u64,
    /// Ring id of the node that took the reading.
    pub writer: Id,
}

impl Version {
    /// Whether its physical part (wall-clock milliseconds) lies more than `max_skew` past
    /// `wall_ms`, the receiver's wall clock: no honest clock is that far ahead, and taking such a
    /// version in would pin the key (every later honest write is older) and drag every clock that
    /// observes it along.
    pub fn is_ahead_of(&self, wall_ms: u64, max_skew: Duration) -> bool {
        let max_skew_ms = u64::try_from(max_skew.as_millis()).unwrap_or(u64::MAX);
        self.hlc >> 16 > wall_ms.saturating_add(max_skew_ms)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}-{}", self.hlc >> 16, self.hlc & 0xffff, self.writer.short())
    }
}

impl Version {
    /// The version as clients see and pass it back (`if-version`): the clock's milliseconds and
    /// counter, then the writer's whole id, so it parses back to exactly this version
    /// ([`Version::from_token`]). [`fmt::Display`] shortens the writer for logs.
    pub fn token(&self) -> String {
        format!("{}.{}-{}", self.hlc >> 16, self.hlc & 0xffff, self.writer)
    }

    /// Parses [`Version::token`]'s form; `None` for anything else.
    pub fn from_token(text: &str) -> Option<Version> {
        let (clock, writer) = text.split_once('-')?;
        let (millis, counter) = clock.split_once('.')?;
        let millis: u64 = millis.parse().ok()?;
        let counter: u64 = counter.parse().ok()?;
        if millis >= 1 << 48 || counter > 0xffff {
            return None;
        }
        Some(Version { hlc: millis << 16 | counter, writer: Id::from_hex(writer)? })
    }
}

/// A hybrid logical clock (Kulkarni et al.): readings follow wall time when it advances, never go
/// backwards, and move past every reading observed from other nodes.
#[derive(Clone, Debug)]
pub struct HybridClock {
    last: u64,
    writer: Id,
}

impl HybridClock {
    /// A clock for writer `writer`.
    pub fn new(writer: Id) -> Self {
        HybridClock { last: 0, writer }
    }

    /// A new version, later than every version this clock produced or observed. `wall_ms` is the
    /// driver's wall clock in milliseconds since the Unix epoch.
    /// Saturates at `u64::MAX` rather than wrap to the smallest version there is; receivers
    /// refuse versions far ahead of their wall clock ([`Version::is_ahead_of`]), so it is never
    /// reached in practice.
    pub fn tick(&mut self, wall_ms: u64) -> Version {
        let physical = wall_ms.saturating_mul(1 << 16);
        self.last = if physical > self.last { physical } else { self.last.saturating_add(1) };
        Version { hlc: self.last, writer: self.writer }
    }

    /// Moves the clock past a version seen from elsewhere. Callers first refuse versions from
    /// peers that are too far ahead ([`Version::is_ahead_of`]).
    pub fn observe(&mut self, version: &Version) {
        self.last = self.last.max(version.hlc);
    }
}

/// One stored key: its value (or a tombstone), version and checksum.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The user's key.
    #[serde(with = "crate::bytes")]
    pub key: Vec<u8>,
    /// The value; empty for a tombstone.
    #[serde(with = "crate::bytes")]
    pub value: Vec<u8>,
    /// Who wrote it, when.
    pub version: Version,
    /// Whether this records a delete.
    pub tombstone: bool,
    /// Checksum of the fields above; see [`Record::compute_checksum`].
    pub checksum: u64,
    /// For a key under `signed/`, who signed this version ([`crate::signed`]); `None` for every
    /// other key. Absent from the encoding when `None`, so unsigned records encode as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

/// The signer of a signed record and its signature ([`crate::signed`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The ed25519 public key (32 bytes).
    #[serde(with = "crate::bytes")]
    pub public_key: Vec<u8>,
    /// The ed25519 signature (64 bytes) over the record's fields.
    #[serde(with = "crate::bytes")]
    pub signature: Vec<u8>,
}

impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Owner({})", self.public_key_hex())
    }
}

impl Owner {
    /// The public key in lowercase hex: how users name a signer.
    pub fn public_key_hex(&self) -> String {
        crate::bytes::to_hex(&self.public_key)
    }
}

impl fmt::Debug for Record {
    // Values are user data: never print them, only their size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("key_len", &self.key.len())
            .field("value_len", &self.value.len())
            .field("version", &self.version)
            .field("tombstone", &self.tombstone)
            .field("owner", &self.owner)
            .finish()
    }
}

impl Record {
    /// A live record with its checksum.
    pub fn new(key: Vec<u8>, value: Vec<u8>, version: Version) -> Self {
        let mut record = Record { key, value, version, tombstone: false, checksum: 0, owner: None };
        record.checksum = record.compute_checksum();
        record
    }

    /// A tombstone: the key deleted at `version`.
    pub fn tombstone(key: Vec<u8>, version: Version) -> Self {
        let mut record =
            Record { key, value: Vec::new(), version, tombstone: true, checksum: 0, owner: None };
        record.checksum = record.compute_checksum();
        record
    }

    /// The same state (value or tombstone) under another version. Never for a signed record:
    /// its signature covers the version, so the result would be refused everywhere; callers check
    /// [`Record::is_signed`] (and the owner signs again instead).
    pub fn reversioned(&self, version: Version) -> Record {
        debug_assert!(!self.is_signed(), "a signed record is never re-versioned");
        if self.tombstone {
            Record::tombstone(self.key.clone(), version)
        } else {
            Record::new(self.key.clone(), self.value.clone(), version)
        }
    }

    /// The ring position of the key.
    pub fn key_id(&self) -> Id {
        Id::hash(&self.key)
    }

    /// First 8 bytes of SHA-1 over the length-prefixed key and value, the version and the flag.
    pub fn compute_checksum(&self) -> u64 {
        let mut hasher = Sha1::new();
        hasher.update((self.key.len() as u64).to_be_bytes());
        hasher.update(&self.key);
        hasher.update((self.value.len() as u64).to_be_bytes());
        hasher.update(&self.value);
        hasher.update(self.version.hlc.to_be_bytes());
        hasher.update(self.version.writer.as_bytes());
        hasher.update([u8::from(self.tombstone)]);
        let digest = hasher.finalize();
        u64::from_be_bytes(digest[..8].try_into().expect("SHA-1 digests are 20 bytes"))
    }

    /// Whether the stored checksum matches the contents and the record keeps the signed
    /// namespace's rules ([`crate::signed::check`]: a key under `signed/` carries its owner's
    /// valid signature, no other key carries one).
    pub fn is_intact(&self) -> bool {
        self.checksum == self.compute_checksum() && crate::signed::check(self).is_ok()
    }

    /// Whether this record carries an owner's signature (its key is under `signed/`).
    pub fn is_signed(&self) -> bool {
        self.owner.is_some()
    }

    /// Whether `self` should replace `other`: it is strictly newer and, for a signed key, signed
    /// by the same key as `other` (a signed key stays bound to its owner; [`crate::signed`]).
    pub fn supersedes(&self, other: &Record) -> bool {
        let same_owner = match (&self.owner, &other.owner) {
            (Some(mine), Some(theirs)) => mine.public_key == theirs.public_key,
            (None, None) => true,
            // A signed record against an unsigned one of the same key: the unsigned one broke the
            // rules (written before they existed, or corrupt), so the signature wins.
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        self.version > other.version && same_owner
    }
}

/// How many replicas must answer an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// One replica.
    One,
    /// A majority of the replica set.
    Quorum,
    /// Every replica.
    All,
}

impl Consistency {
    /// Replies needed out of a replica set of `n` (at least 1, at most n).
    pub fn required(self, n: usize) -> usize {
        let n = n.max(1);
        match self {
            Consistency::One => 1,
            Consistency::Quorum => n / 2 + 1,
            Consistency::All => n,
        }
    }
}

impl std::str::FromStr for Consistency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "one" => Ok(Consistency::One),
            "quorum" => Ok(Consistency::Quorum),
            "all" => Ok(Consistency::All),
            other => Err(format!("unknown consistency {other:?}: use one, quorum or all")),
        }
    }
}

/// Number of buckets a range is split into for anti-entropy digests.
pub const DIGEST_BUCKETS: usize = 64;

/// A bucket's fingerprint: XOR of a hash of each (key id, version) in it, so it does not depend on
/// the order records are visited in.
pub type BucketHash = u64;

/// Which of the [`DIGEST_BUCKETS`] buckets of range `(start, end]` holds `key_id`: the range is
/// cut into equal arcs.
pub fn bucket_of(key_id: &Id, start: &Id, end: &Id) -> usize {
    // Position within the arc as a fraction, using the top 64 bits of the distances.
    let top = |id: Id| u64::from_be_bytes(id.as_bytes()[..8].try_into().expect("ids have 20 bytes"));
    let span = top(start.distance_to(end));
    let offset = top(start.distance_to(key_id));
    if span == 0 {
        // The whole ring (start == end) or a tiny arc: spread by the key's own top bits.
        return (top(*key_id) >> 58) as usize % DIGEST_BUCKETS;
    }
    let bucket = (u128::from(offset) * DIGEST_BUCKETS as u128 / (u128::from(span) + 1)) as usize;
    bucket.min(DIGEST_BUCKETS - 1)
}

/// The fingerprint contribution of one record.
pub fn entry_hash(key_id: &Id, version: &Version) -> BucketHash {
    let mut hasher = Sha1::new();
    hasher.update(key_id.as_bytes());
    hasher.update(version.hlc.to_be_bytes());
    hasher.update(version.writer.as_bytes());
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("SHA-1 digests are 20 bytes"))
}

/// The digest of range `(start, end]` from the (key id, version) pairs held in it.
pub fn digest<'a>(
    start: &Id,
    end: &Id,
    entries: impl IntoIterator<Item = (&'a Id, &'a Version)>,
) -> Vec<BucketHash> {
    let mut buckets = vec![0; DIGEST_BUCKETS];
    for (key_id, version) in entries {
        buckets[bucket_of(key_id, start, end)] ^= entry_hash(key_id, version);
    }
    buckets
}

/// One record's identity and version, as exchanged by anti-entropy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The user's key.
    #[serde(with = "crate::bytes")]
    pub key: Vec<u8>,
    /// Its version at the sender.
    pub version: Version,
}

/// What anti-entropy must move after comparing two replicas' entries for the same buckets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncPlan {
    /// Keys the local side holds newer (or alone): push these records to the peer.
    pub push: Vec<Vec<u8>>,
    /// Keys the peer holds newer (or alone): fetch these from the peer.
    pub pull: Vec<Vec<u8>>,
}

/// Whether `key_id` lies after `after` (or `after` is `None`) and at or before `until`, walking
/// the ring from `start`: the part of a range one page of entries covers.
pub fn in_page(key_id: &Id, start: &Id, after: Option<&Id>, until: &Id) -> bool {
    let d = start.distance_to(key_id);
    after.is_none_or(|a| d > start.distance_to(a)) && d <= start.distance_to(until)
}

/// Compares local and remote entries (each for the same differing buckets) key by key.
pub fn plan_sync(local: &[Entry], remote: &[Entry]) -> SyncPlan {
    let mut local_sorted: Vec<&Entry> = local.iter().collect();
    let mut remote_sorted: Vec<&Entry> = remote.iter().collect();
    local_sorted.sort_by(|a, b| a.key.cmp(&b.key));
    remote_sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut plan = SyncPlan::default();
    let (mut i, mut j) = (0, 0);
    while i < local_sorted.len() || j < remote_sorted.len() {
        match (local_sorted.get(i), remote_sorted.get(j)) {
            (Some(l), Some(r)) => match l.key.cmp(&r.key) {
                Ordering::Less => {
                    plan.push.push(l.key.clone());
                    i += 1;
                }
                Ordering::Greater => {
                    plan.pull.push(r.key.clone());
                    j += 1;
                }
                Ordering::Equal => {
                    match l.version.cmp(&r.version) {
                        Ordering::Greater => plan.push.push(l.key.clone()),
                        Ordering::Less => plan.pull.push(r.key.clone()),
                        Ordering::Equal => {}
                    }
                    i += 1;
                    j += 1;
                }
            },
            (Some(l), None) => {
                plan.push.push(l.key.clone());
                i += 1;
            }
            (None, Some(r)) => {
                plan.pull.push(r.key.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    plan
}

/// Largest value a node accepts by default.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Most entries or records in one storage message; anti-entropy pages through larger ranges.
pub const MAX_BATCH: usize = 256;

/// Requests of the storage protocol (`/overlay/kv/1`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvRequest {
    /// Store this record if it is newer than what the receiver holds.
    Store {
        /// The record.
        record: Record,
    },
    /// A delete: store this tombstone if the receiver holds any record of its key (tombstones
    /// included), as [`KvRequest::Store`] would; answer [`KvResponse::NotHeld`] without storing
    /// anything if it holds none. A delete of a key no replica holds then leaves nothing behind;
    /// the writer sends the tombstone as a plain `Store` to the replicas that answered `NotHeld`
    /// as soon as any replica shows the key may exist somewhere ([`crate::kv`]'s `ops` module).
    Delete {
        /// The tombstone.
        record: Record,
    },
    /// Return the receiver's record for `key`.
    Fetch {
        /// The user's key.
        #[serde(with = "crate::bytes")]
        key: Vec<u8>,
    },
    /// Anti-entropy, step 1: the sender's digest of range `(start, end]`.
    Digest {
        /// Exclusive start of the range.
        start: Id,
        /// Inclusive end of the range.
        end: Id,
        /// [`DIGEST_BUCKETS`] bucket hashes.
        buckets: Vec<BucketHash>,
    },
    /// Anti-entropy, step 2: the receiver's entries in these buckets of `(start, end]`, in ring
    /// order from `start`, beginning after the key id `after` (paging through large ranges).
    Entries {
        /// Exclusive start of the range.
        start: Id,
        /// Inclusive end of the range.
        end: Id,
        /// Bucket indexes.
        buckets: Vec<u16>,
        /// Continue after this key id (exclusive); `None` from the start of the range.
        #[serde(default)]
        after: Option<Id>,
    },
    /// Compare-and-set, phase 1: promise to accept nothing for `key` below `ballot` (for a
    /// while) and answer with the record held ([`crate::kv`]'s `cas` module).
    Prepare {
        /// The user's key.
        #[serde(with = "crate::bytes")]
        key: Vec<u8>,
        /// The proposer's ballot; it becomes the version of what it writes.
        ballot: Version,
    },
    /// Compare-and-set, phase 2: store this record, whose version is the ballot promised, unless
    /// a higher ballot was promised or a newer version is held since. Answered like
    /// [`KvRequest::Store`].
    Accept {
        /// The record.
        record: Record,
    },
}

/// Responses of the storage protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResponse {
    /// Answer to [`KvRequest::Store`]: the record is durable at the receiver, or the receiver
    /// kept what it holds.
    Stored {
        /// The key existed (as a live value) before this write.
        existed: bool,
        /// The version the receiver holds, when it did not store the record: a newer one, which
        /// a writer passes and writes again (see [`crate::kv`]); the same one (a duplicate,
        /// stored); or, for a signed key, an older one signed by another key, which no version
        /// of this signer passes ([`crate::signed`]).
        #[serde(default)]
        newer: Option<Version>,
    },
    /// Answer to [`KvRequest::Fetch`].
    Found {
        /// The record, if the receiver holds one (tombstones included).
        record: Option<Record>,
    },
    /// Answer to [`KvRequest::Digest`]: the buckets whose hashes differ.
    DigestDiff {
        /// Indexes of differing buckets.
        buckets: Vec<u16>,
    },
    /// Answer to [`KvRequest::Entries`].
    Entries {
        /// The receiver's entries in the asked buckets, in ring order (at most [`MAX_BATCH`];
        /// `truncated` if more follow the last one).
        entries: Vec<Entry>,
        /// Whether entries were left out.
        truncated: bool,
    },
    /// Answer to [`KvRequest::Prepare`]: promised; the record held (tombstones included).
    Promised {
        /// The receiver's record, if any.
        record: Option<Record>,
    },
    /// Answer to [`KvRequest::Prepare`]: not promised, because the receiver promised or holds
    /// this ballot or a higher one.
    NotPromised {
        /// The ballot promised or the version held; a proposer passes it and prepares again.
        higher: Version,
    },
    /// Answer to [`KvRequest::Store`] and [`KvRequest::Accept`]: the key is outside the
    /// receiver's replica range by its own view ([`crate::kv::range`]); nothing was stored. The
    /// writer's view of the key's replica set is stale: it looks the key up again.
    NotReplica,
    /// Answer to [`KvRequest::Delete`]: the receiver holds no record of the key and stored
    /// nothing.
    NotHeld,
    /// The request was refused.
    Refused {
        /// Why, for the sender's logs.
        reason: String,
    },
}

/// Why a storage message was rejected after it parsed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum InvalidKv {
    /// A record's checksum does not match its contents.
    #[error("record checksum mismatch")]
    Corrupt,
    /// A value or key is larger than accepted.
    #[error("record of {len} bytes exceeds the cap of {max} bytes")]
    TooLarge {
        /// The record's key + value size.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A list is longer than allowed.
    #[error("list of {len} exceeds the cap of {max}")]
    ListTooLong {
        /// The length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A record breaks the signed namespace's rules ([`crate::signed`]).
    #[error("{0}")]
    Signature(#[from] crate::signed::SignatureError),
    /// A compare-and-set step (prepare or accept) for a key under `signed/`: only its owner's
    /// signed writes change a signed key.
    #[error("compare-and-set does not apply to keys under signed/")]
    SignedKeyCas,
    /// A [`KvRequest::Delete`] whose record is not a tombstone.
    #[error("a delete must carry a tombstone")]
    NotATombstone,
}

/// Largest key accepted.
pub const MAX_KEY_BYTES: usize = 4096;

fn check_record(record: &Record, max_value: usize) -> Result<(), InvalidKv> {
    if record.key.len() > MAX_KEY_BYTES || record.value.len() > max_value {
        return Err(InvalidKv::TooLarge { len: record.key.len() + record.value.len(), max: max_value });
    }
    if record.checksum != record.compute_checksum() {
        return Err(InvalidKv::Corrupt);
    }
    crate::signed::check(record)?;
    Ok(())
}

fn check_len(len: usize, max: usize) -> Result<(), InvalidKv> {
    if len > max { Err(InvalidKv::ListTooLong { len, max }) } else { Ok(()) }
}

impl KvRequest {
    /// Checks sizes and checksums of a received request.
    pub fn validate(&self, max_value: usize) -> Result<(), InvalidKv> {
        match self {
            KvRequest::Store { record } => check_record(record, max_value),
            KvRequest::Delete { record } if !record.tombstone => Err(InvalidKv::NotATombstone),
            KvRequest::Delete { record } => check_record(record, max_value),
            KvRequest::Fetch { key } => check_len(key.len(), MAX_KEY_BYTES),
            KvRequest::Digest { buckets, .. } => {
                if buckets.len() == DIGEST_BUCKETS {
                    Ok(())
                } else {
                    Err(InvalidKv::ListTooLong { len: buckets.len(), max: DIGEST_BUCKETS })
                }
            }
            KvRequest::Entries { buckets, .. } => check_len(buckets.len(), DIGEST_BUCKETS),
            KvRequest::Prepare { key, .. } if crate::signed::is_signed_key(key) => {
                Err(InvalidKv::SignedKeyCas)
            }
            KvRequest::Prepare { key, .. } => check_len(key.len(), MAX_KEY_BYTES),
            KvRequest::Accept { record } if crate::signed::is_signed_key(&record.key) => {
                Err(InvalidKv::SignedKeyCas)
            }
            KvRequest::Accept { record } => check_record(record, max_value),
        }
    }
}

impl KvResponse {
    /// The newest version the response carries, if any: what its sender claims to have seen.
    pub fn newest_version(&self) -> Option<Version> {
        match self {
            KvResponse::Stored { newer, .. } => *newer,
            KvResponse::Found { record } | KvResponse::Promised { record } => {
                record.as_ref().map(|r| r.version)
            }
            KvResponse::NotPromised { higher } => Some(*higher),
            KvResponse::Entries { entries, .. } => entries.iter().map(|e| e.version).max(),
            KvResponse::DigestDiff { .. }
            | KvResponse::NotReplica
            | KvResponse::NotHeld
            | KvResponse::Refused { .. } => None,
        }
    }

    /// Checks sizes and checksums of a received response.
    pub fn validate(&self, max_value: usize) -> Result<(), InvalidKv> {
        match self {
            KvResponse::Found { record: Some(record) } | KvResponse::Promised { record: Some(record) } => {
                check_record(record, max_value)
            }
            KvResponse::Entries { entries, .. } => {
                check_len(entries.len(), MAX_BATCH)?;
                entries.iter().try_for_each(|e| check_len(e.key.len(), MAX_KEY_BYTES))
            }
            KvResponse::DigestDiff { buckets } => check_len(buckets.len(), DIGEST_BUCKETS),
            KvResponse::Stored { .. }
            | KvResponse::Found { record: None }
            | KvResponse::Promised { record: None }
            | KvResponse::NotPromised { .. }
            | KvResponse::NotReplica
            | KvResponse::NotHeld
            | KvResponse::Refused { .. } => Ok(()),
        }
    }
}

/// Whom a node compares its own range `(predecessor, me]` with: its next `replicas − 1`
/// successors, which hold every other replica of every key it owns. Anti-entropy is driven by
/// owners because a node knows its successors but not its predecessors' predecessors.
pub fn sync_targets<A: Clone>(successors: &[crate::NodeRef<A>], replicas: usize) -> Vec<crate::NodeRef<A>> {
    successors.iter().take(replicas.saturating_sub(1)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_tokens_round_trip_and_refuse_anything_else() {
        let version = Version { hlc: (1_767_225_600_123 << 16) | 7, writer: Id::hash(b"writer") };
        let token = version.token();
        assert_eq!(Version::from_token(&token), Some(version));
        assert!(token.starts_with("1767225600123.7-"));
        for bad in
            ["", "1.2", "1.2-zz", "x.1-00", &version.to_string(), &format!("1.65536-{}", version.writer)]
        {
            assert_eq!(Version::from_token(bad), None, "{bad:?}");
        }
    }
    use proptest::prelude::*;

    fn version(hlc: u64, w: u8) -> Version {
        Version { hlc, writer: Id::hash(&[w]) }
    }

    #[test]
    fn clock_never_goes_back_and_passes_observed_versions() {
        let mut clock = HybridClock::new(Id::hash(b"w"));
        let a = clock.tick(1_000);
        let b = clock.tick(1_000);
        let c = clock.tick(999); // wall clock stepped back
        assert!(a < b && b < c);
        clock.observe(&Version { hlc: (5_000 << 16) + 3, writer: Id::ZERO });
        assert!(clock.tick(1_001).hlc > (5_000 << 16) + 3);
    }

    #[test]
    fn a_clock_pushed_to_the_end_saturates_instead_of_wrapping() {
        let mut clock = HybridClock::new(Id::hash(b"w"));
        clock.observe(&Version { hlc: u64::MAX - 1, writer: Id::ZERO });
        assert_eq!(clock.tick(1_000).hlc, u64::MAX);
        assert_eq!(clock.tick(1_000).hlc, u64::MAX, "no wrap to 0");
    }

    #[test]
    fn versions_beyond_the_skew_bound_are_ahead() {
        let skew = Duration::from_secs(300);
        let wall_ms = 1_700_000_000_000;
        let at = |ms: u64| Version { hlc: (ms << 16) + 0xffff, writer: Id::ZERO };
        assert!(!at(wall_ms).is_ahead_of(wall_ms, skew));
        assert!(!at(wall_ms + 300_000).is_ahead_of(wall_ms, skew), "at the bound itself");
        assert!(at(wall_ms + 300_001).is_ahead_of(wall_ms, skew));
        assert!(Version { hlc: u64::MAX, writer: Id::ZERO }.is_ahead_of(wall_ms, skew));
        assert!(!at(wall_ms).is_ahead_of(u64::MAX, skew), "no overflow at the end of time");
    }

    #[test]
    fn checksums_catch_any_change() {
        let record = Record::new(b"k".to_vec(), b"v".to_vec(), version(7, 1));
        assert!(record.is_intact());
        let mut flipped = record.clone();
        flipped.value[0] ^= 1;
        assert!(!flipped.is_intact());
        let mut dead = record.clone();
        dead.tombstone = true;
        assert!(!dead.is_intact());
        assert!(Record::tombstone(b"k".to_vec(), version(8, 1)).is_intact());
    }

    #[test]
    fn quorum_sizes() {
        assert_eq!(Consistency::Quorum.required(3), 2);
        assert_eq!(Consistency::Quorum.required(1), 1);
        assert_eq!(Consistency::All.required(3), 3);
        assert_eq!(Consistency::One.required(0), 1);
    }

    #[test]
    fn sync_plan_moves_only_what_differs() {
        let local = vec![
            Entry { key: b"a".to_vec(), version: version(1, 1) },
            Entry { key: b"b".to_vec(), version: version(5, 1) },
            Entry { key: b"c".to_vec(), version: version(3, 1) },
        ];
        let remote = vec![
            Entry { key: b"b".to_vec(), version: version(4, 1) },
            Entry { key: b"c".to_vec(), version: version(3, 1) },
            Entry { key: b"d".to_vec(), version: version(2, 1) },
        ];
        let plan = plan_sync(&local, &remote);
        assert_eq!(plan.push, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(plan.pull, vec![b"d".to_vec()]);
    }

    #[test]
    fn pages_cover_a_range_in_ring_order_without_gaps_or_overlap() {
        let start = Id::MAX; // a range that wraps past zero
        let end = Id::pow2(100);
        let a = Id::ZERO;
        let b = Id::pow2(50);
        // First page up to b, second page after b up to the end.
        assert!(in_page(&a, &start, None, &b));
        assert!(in_page(&b, &start, None, &b));
        assert!(!in_page(&b, &start, Some(&b), &end), "the cursor itself belongs to the previous page");
        assert!(in_page(&Id::pow2(60), &start, Some(&b), &end));
        assert!(!in_page(&Id::pow2(120), &start, Some(&b), &end), "past the range's end");
    }

    proptest! {
        #[test]
        fn buckets_stay_in_bounds(key in any::<[u8; 20]>(), s in any::<[u8; 20]>(), e in any::<[u8; 20]>()) {
            let b = bucket_of(&Id::from_bytes(key), &Id::from_bytes(s), &Id::from_bytes(e));
            prop_assert!(b < DIGEST_BUCKETS);
        }

        #[test]
        fn digests_ignore_order(mut keys in proptest::collection::vec(any::<u16>(), 0..50)) {
            let entries: Vec<(Id, Version)> = keys.iter().map(|k| (Id::hash(&k.to_be_bytes()), version(u64::from(*k), 1))).collect();
            let start = Id::ZERO;
            let end = Id::MAX;
            let a = digest(&start, &end, entries.iter().map(|(k, v)| (k, v)));
            keys.reverse();
            let b = digest(&start, &end, entries.iter().rev().map(|(k, v)| (k, v)));
            prop_assert_eq!(a, b);
        }

        #[test]
        fn records_round_trip_and_survive_validation(key in proptest::collection::vec(any::<u8>(), 0..64), value in proptest::collection::vec(any::<u8>(), 0..256), hlc in any::<u64>()) {
            let req = KvRequest::Store { record: Record::new(key, value, version(hlc, 3)) };
            let mut buf = Vec::new();
            ciborium::into_writer(&req, &mut buf).expect("vec write");
            let back: KvRequest = ciborium::from_reader(buf.as_slice()).expect("decodes");
            prop_assert_eq!(&back, &req);
            prop_assert_eq!(back.validate(DEFAULT_MAX_VALUE_BYTES), Ok(()));
        }
    }

    #[test]
    fn validation_refuses_corrupt_and_oversized_records() {
        let mut record = Record::new(b"k".to_vec(), vec![0; 10], version(1, 1));
        assert_eq!(
            KvRequest::Store { record: record.clone() }.validate(5),
            Err(InvalidKv::TooLarge { len: 11, max: 5 })
        );
        record.value[0] = 1;
        assert_eq!(KvRequest::Store { record }.validate(100), Err(InvalidKv::Corrupt));
    }
}
