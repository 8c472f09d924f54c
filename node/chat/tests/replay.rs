//! The replay guard: replays refused, the window kept, memory bounded, nothing replayed after
//! being forgotten.

use overlay_chat::{ChatError, Envelope, ReplayConfig, ReplayGuard, UserKeys};
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000_000;
const WINDOW: u64 = 60_000;

fn new_guard(max_senders: usize, ids_per_sender: usize) -> ReplayGuard {
    ReplayGuard::new(ReplayConfig { max_senders, ids_per_sender, window_ms: WINDOW })
}

fn id(n: u8) -> [u8; 16] {
    [n; 16]
}

#[test]
fn a_replayed_envelope_is_refused() {
    let alice = UserKeys::generate();
    let bob = UserKeys::generate();
    let envelope = Envelope::seal(&alice, "alice", "bob", &bob.public(), 1, NOW, b"once").expect("seals");
    let mut guard = ReplayGuard::new(ReplayConfig::default());
    guard.check_envelope(&envelope, NOW).expect("first time");
    assert!(matches!(guard.check_envelope(&envelope, NOW + 5), Err(ChatError::Replayed)));
    // The same id from another sender is another message.
    guard.check_and_record(&[9; 32], &envelope.id, NOW, NOW).expect("other sender");
}

#[test]
fn messages_outside_the_window_are_refused() {
    let mut guard = new_guard(10, 10);
    assert!(matches!(
        guard.check_and_record(&[1; 32], &id(1), NOW - WINDOW - 1, NOW),
        Err(ChatError::Expired)
    ));
    assert!(matches!(
        guard.check_and_record(&[1; 32], &id(2), NOW + WINDOW + 1, NOW),
        Err(ChatError::NotYetValid)
    ));
    guard.check_and_record(&[1; 32], &id(3), NOW - WINDOW, NOW).expect("at the window's edge");
    // Once it has left the window it is refused for that reason, whether remembered or not.
    assert!(matches!(
        guard.check_and_record(&[1; 32], &id(3), NOW - WINDOW, NOW + 1),
        Err(ChatError::Expired)
    ));
    // The window saturates at both ends of time.
    new_guard(1, 1).check_and_record(&[0; 32], &id(0), 0, 0).expect("at the epoch");
    new_guard(1, 1).check_and_record(&[0; 32], &id(0), u64::MAX, u64::MAX).expect("at the end of time");
}

#[test]
fn forgotten_ids_are_refused_by_the_senders_floor() {
    let mut guard = new_guard(10, 3);
    let alice = [1; 32];
    for n in 0..5u8 {
        guard.check_and_record(&alice, &id(n), NOW + u64::from(n), NOW).expect("new");
    }
    assert_eq!(guard.ids(), 3);
    // ids 0 and 1 were forgotten; their replays still fail.
    for n in 0..5u8 {
        assert!(matches!(
            guard.check_and_record(&alice, &id(n), NOW + u64::from(n), NOW),
            Err(ChatError::Replayed)
        ));
    }
    // An unseen message older than what is remembered cannot be told from a replay.
    assert!(matches!(guard.check_and_record(&alice, &id(50), NOW, NOW), Err(ChatError::Replayed)));
    guard.check_and_record(&alice, &id(51), NOW + 10, NOW).expect("newer than the floor");
}

#[test]
fn forgotten_senders_are_refused_by_the_global_floor() {
    let mut guard = new_guard(2, 10);
    guard.check_and_record(&[1; 32], &id(1), NOW, NOW).expect("new");
    guard.check_and_record(&[2; 32], &id(2), NOW + 1, NOW).expect("new");
    guard.check_and_record(&[3; 32], &id(3), NOW + 2, NOW).expect("new; forgets sender 1");
    assert_eq!(guard.senders(), 2);
    assert!(matches!(guard.check_and_record(&[1; 32], &id(1), NOW, NOW), Err(ChatError::Replayed)));
    assert!(matches!(guard.check_and_record(&[2; 32], &id(2), NOW + 1, NOW), Err(ChatError::Replayed)));
}

#[test]
fn senders_out_of_the_window_free_their_memory() {
    let mut guard = new_guard(100, 100);
    for n in 0..50u8 {
        guard.check_and_record(&[n; 32], &id(n), NOW, NOW).expect("new");
    }
    assert_eq!(guard.senders(), 50);
    guard.check_and_record(&[200; 32], &id(0), NOW + WINDOW + 1, NOW + WINDOW + 1).expect("new");
    assert_eq!((guard.senders(), guard.ids()), (1, 1));
}

#[test]
fn a_clock_running_back_does_not_reopen_the_window() {
    let mut guard = new_guard(10, 10);
    guard.check_and_record(&[1; 32], &id(1), NOW, NOW).expect("new");
    // Much later the id has left the window and is forgotten...
    guard.check_and_record(&[2; 32], &id(2), NOW + 2 * WINDOW, NOW + 2 * WINDOW).expect("new");
    // ...so a clock stepping back to NOW must not admit it again.
    assert!(matches!(guard.check_and_record(&[1; 32], &id(1), NOW, NOW), Err(ChatError::Expired)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the traffic: memory stays within bounds, and no message (sender, id and time, all
    /// signed) is admitted twice.
    #[test]
    fn bounded_and_never_admits_twice(
        traffic in proptest::collection::vec((0u8..6, 0u8..12, 0u64..200, 0u64..100, any::<bool>()), 1..300),
    ) {
        let mut guard = ReplayGuard::new(ReplayConfig { max_senders: 3, ids_per_sender: 4, window_ms: 150 });
        let mut admitted = std::collections::BTreeSet::new();
        let mut now = 1_000;
        for (sender, n, ts_offset, advance, back) in traffic {
            // The caller's clock mostly advances, sometimes steps back.
            if back { now -= (advance / 10).min(now - 1_000) } else { now += advance / 10 }
            let ts = now + 75 - ts_offset.min(150);
            if guard.check_and_record(&[sender; 32], &id(n), ts, now).is_ok() {
                prop_assert!(admitted.insert((sender, n, ts)), "admitted twice: {:?}", (sender, n, ts));
            }
            prop_assert!(guard.senders() <= 3);
            prop_assert!(guard.ids() <= 3 * 4);
        }
    }
}
