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
    assert_eq!(storage.put(tie).await.expect("put"), PutOutcome { applied: true, existed: true, held: None });
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
    assert_eq!(entries.iter().map(|entry| entry.key.as_slice()).collect::<Vec<_>>(), [b"good".as_slice()]);
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
    assert_eq!(storage.entries(&a, &b, Some(&wanted), n).expect("entries"), (entries_of(&expected), false));
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
                assert_eq!(outcome.expect("put"), PutOutcome { applied: true, existed: false, held: None });
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
        storage.inner.jobs.send(Work::Put(Job { records: vec![record], reply })).await.expect("queue open");
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
    assert_eq!(log[..4], wal::MAGIC.to_le_bytes(), "the records are in the log, not checkpointed");

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
    assert_eq!(log[..4], wal::CHECKPOINT_MAGIC.to_le_bytes());
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

#[tokio::test]
async fn remove_exact_drops_only_the_versions_named_and_keeps_the_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open(&dir);
    storage.put(live(b"a", b"one", 10)).await.expect("put");
    storage.put(live(b"b", b"two", 20)).await.expect("put");
    storage.put(Record::tombstone(b"c".to_vec(), version(30, 1))).await.expect("put");
    assert_eq!(storage.stats(), stats(2, 6, 1, 0));

    let entry = |key: &[u8], hlc| Entry { key: key.to_vec(), version: version(hlc, 1) };
    // `a` at an older and a newer version than stored, `absent` not stored: nothing goes.
    let removed = storage.remove_exact(vec![entry(b"a", 9), entry(b"a", 11), entry(b"absent", 1)]).await;
    assert_eq!(removed.expect("removed"), 0);
    assert_eq!(storage.get(b"a").expect("get").expect("kept").value, b"one");

    let removed = storage.remove_exact(vec![entry(b"a", 10), entry(b"c", 30)]).await.expect("removed");
    assert_eq!(removed, 2);
    assert_eq!(storage.get(b"a").expect("get"), None);
    assert_eq!(storage.get(b"c").expect("get"), None);
    assert_eq!(storage.get(b"b").expect("get").expect("kept").value, b"two");
    assert_eq!(storage.stats(), stats(1, 3, 0, 0));

    // A removal queued behind a newer write of the key does not take the newer write.
    let write = storage.put(live(b"b", b"three", 21));
    let remove = storage.remove_exact(vec![entry(b"b", 20)]);
    let (written, removed) = tokio::join!(write, remove);
    assert!(written.expect("put").applied);
    assert_eq!(removed.expect("removed"), 0);
    assert_eq!(storage.get(b"b").expect("get").expect("kept").value, b"three");

    // After a reopen the removal holds (it was committed, and the log holds no older copy of it
    // once checkpointed at close).
    drop(storage);
    let storage = open(&dir);
    assert_eq!(storage.get(b"a").expect("get"), None);
    assert_eq!(storage.stats(), stats(1, 5, 0, 0));
}

#[tokio::test]
async fn a_full_queue_refuses_at_once_and_loses_nothing_it_took() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open(&dir);
    // An open write transaction stalls the writer at its first group (redb allows one writer at
    // a time), so the queue fills up behind it.
    let stall = storage.inner.db.begin_write().expect("begin write");
    let mut taken = Vec::new();
    let mut refused = Vec::new();
    for i in 0..2 * WRITE_QUEUE_JOBS + GROUP_COMMIT_RECORDS {
        let key = format!("k{i}").into_bytes();
        match storage.try_put_many(vec![live(&key, b"v", 1)]) {
            Ok(written) => taken.push((key, written)),
            Err(StorageError::Busy) => refused.push(key),
            Err(other) => panic!("only Busy is expected, got {other}"),
        }
    }
    assert!(!refused.is_empty(), "the queue is bounded");
    assert!(taken.len() <= WRITE_QUEUE_JOBS + GROUP_COMMIT_RECORDS, "{} taken", taken.len());
    assert_eq!(storage.write_queue_free(), 0);
    drop(stall);

    // Every write the queue took is done and readable; none it refused was written.
    for (key, written) in taken {
        let outcomes = written.await.expect("a taken write is done");
        assert!(outcomes[0].applied);
        assert!(storage.get(&key).expect("get").is_some());
    }
    for key in refused {
        assert!(storage.get(&key).expect("get").is_none());
    }
    assert!(storage.write_queue_free() > 0);
}
