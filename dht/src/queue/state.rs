//! One queue's replicated contents, the same at its ordering node and at the replicas: the
//! messages not yet taken, the removals (so a merge never brings a taken message back), the
//! highest epoch seen, and an index of message ids (so a retried put is stored once).
//!
//! Owns [`QueueState`]. Merging two states is a union of messages minus the union of removals,
//! deduplicated by message id: commutative, associative and idempotent, so the ordering node and
//! its replicas converge whatever order their exchanges take.
//!
//! Invariants: a removed message id is never present; a message id appears under at most one key (the
//! lowest); at most `max_removed` removals are remembered (oldest forgotten first — a replica
//! that missed a removal for that long may bring the message back, which costs a second delivery,
//! never a loss); sizes are tracked exactly for the caps in [`super::QueueConfig`].

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::wire::{MsgId, QueueDigest, Removal, StoredMessage};

/// Bits of a sequence number that count within an epoch; the epoch is above them.
pub(super) const EPOCH_SHIFT: u32 = 40;

/// The sequence number `n` of epoch `epoch`: ordered by epoch, then by number.
pub(super) fn seq_of(epoch: u64, n: u64) -> u64 {
    (epoch << EPOCH_SHIFT) | (n & ((1 << EPOCH_SHIFT) - 1))
}

/// The epoch a sequence number was stamped in.
pub(super) fn epoch_of(seq: u64) -> u64 {
    seq >> EPOCH_SHIFT
}

/// Where a message sits in its queue: its sequence number, then its id (two ordering nodes that
/// both believed they owned the queue may have stamped the same number; both messages are kept).
pub(super) type Key = (u64, MsgId);

/// A queue's contents.
#[derive(Clone, Debug, Default)]
pub(super) struct QueueState {
    messages: BTreeMap<Key, StoredMessage>,
    /// Message id → its key, for every present message.
    ids: HashMap<MsgId, Key>,
    /// Ids of removed messages (every copy of a put is removed with it), and in removal order
    /// for forgetting the oldest.
    /// With the lease that removed each (0: not known).
    removed: HashMap<MsgId, u64>,
    removed_order: VecDeque<MsgId>,
    /// Bytes of the bodies present.
    bytes: usize,
    /// Messages present by sender, for quotas.
    senders: HashMap<String, usize>,
    /// The highest epoch any message or ordering node of this queue used.
    pub(super) epoch: u64,
}

/// What applying a change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Applied {
    /// The state changed.
    Changed,
    /// Nothing to do: already there (or already removed).
    Unchanged,
}

impl QueueState {
    pub(super) fn len(&self) -> usize {
        self.messages.len()
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn key_of(&self, id: &MsgId) -> Option<Key> {
        self.ids.get(id).copied()
    }

    pub(super) fn get(&self, key: &Key) -> Option<&StoredMessage> {
        self.messages.get(key)
    }

    pub(super) fn is_removed(&self, id: &MsgId) -> bool {
        self.removed.contains_key(id)
    }

    /// The lease whose acknowledgement removed `id`, if it was removed (0: not known).
    pub(super) fn removed_by(&self, id: &MsgId) -> Option<u64> {
        self.removed.get(id).copied()
    }

    /// Present messages in queue order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&Key, &StoredMessage)> {
        self.messages.iter()
    }

    /// Present messages after `after` (exclusive), in order, at most `limit`.
    pub(super) fn page(&self, after: Option<Key>, limit: usize) -> Vec<StoredMessage> {
        let range = match after {
            Some(after) => {
                self.messages.range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            }
            None => self.messages.range(..),
        };
        range.take(limit).map(|(_, m)| m.clone()).collect()
    }

    /// Removals remembered, oldest first.
    pub(super) fn removals(&self) -> impl Iterator<Item = Removal> + '_ {
        self.removed_order
            .iter()
            .map(|id| Removal { id: *id, lease: self.removed.get(id).copied().unwrap_or(0) })
    }

    /// Adds `message` unless it was removed or its id is already present (then under the lower
    /// key).
    pub(super) fn insert(&mut self, message: StoredMessage) -> Applied {
        let key = (message.seq, message.id);
        self.epoch = self.epoch.max(epoch_of(message.seq));
        if self.removed.contains_key(&message.id) || self.messages.contains_key(&key) {
            return Applied::Unchanged;
        }
        if let Some(existing) = self.ids.get(&message.id).copied() {
            if existing <= key {
                return Applied::Unchanged;
            }
            // The same put stamped twice (a retry reached a second ordering node): keep the
            // earlier place only.
            self.drop_message(&existing);
        }
        self.bytes += message.body.len();
        *self.senders.entry(message.sender.clone()).or_default() += 1;
        self.ids.insert(message.id, key);
        self.messages.insert(key, message);
        Applied::Changed
    }

    /// Removes message `id` for good, wherever it sits (remembered so a merge cannot bring it
    /// back).
    /// Returns the removals forgotten to make room.
    pub(super) fn remove(&mut self, removal: Removal, max_removed: usize) -> (Applied, Vec<MsgId>) {
        let id = removal.id;
        match self.removed.get_mut(&id) {
            Some(known) => {
                if *known == 0 {
                    *known = removal.lease;
                }
                return (Applied::Unchanged, Vec::new());
            }
            None => {
                self.removed.insert(id, removal.lease);
            }
        }
        if let Some(key) = self.ids.get(&id).copied() {
            self.drop_message(&key);
        }
        self.removed_order.push_back(id);
        let mut forgotten = Vec::new();
        while self.removed_order.len() > max_removed {
            if let Some(oldest) = self.removed_order.pop_front() {
                self.removed.remove(&oldest);
                forgotten.push(oldest);
            }
        }
        (Applied::Changed, forgotten)
    }

    /// Messages present that `sender` put.
    pub(super) fn held_by(&self, sender: &str) -> usize {
        self.senders.get(sender).copied().unwrap_or(0)
    }

    fn drop_message(&mut self, key: &Key) {
        if let Some(message) = self.messages.remove(key) {
            self.bytes -= message.body.len();
            if let Some(count) = self.senders.get_mut(&message.sender) {
                *count -= 1;
                if *count == 0 {
                    self.senders.remove(&message.sender);
                }
            }
            if self.ids.get(&message.id) == Some(key) {
                self.ids.remove(&message.id);
            }
        }
    }

    /// A summary two holders compare: equal digests mean (with overwhelming probability) equal
    /// contents.
    pub(super) fn digest(&self) -> QueueDigest {
        let mut hash = 0u64;
        for key in self.messages.keys() {
            hash ^= mix(key, 1);
        }
        for id in self.removed.keys() {
            hash ^= mix(&(0, *id), 2);
        }
        QueueDigest { messages: self.messages.len() as u64, removed: self.removed.len() as u64, hash }
    }
}

/// A 64-bit fingerprint of a key and its kind (FNV-1a over the bytes, then a final mix).
fn mix(key: &Key, kind: u8) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.0.to_be_bytes().into_iter().chain(key.1.0.to_be_bytes()).chain([kind]) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removal(id: u128) -> Removal {
        Removal { id: MsgId(id), lease: 1 }
    }

    fn message(seq: u64, id: u128) -> StoredMessage {
        StoredMessage { seq, id: MsgId(id), sender: "s".into(), body: vec![1, 2, 3], put_ms: 0 }
    }

    #[test]
    fn a_removed_message_never_comes_back() {
        let mut state = QueueState::default();
        assert_eq!(state.insert(message(1, 10)), Applied::Changed);
        assert_eq!(state.remove(removal(10), 100).0, Applied::Changed);
        assert_eq!(state.insert(message(1, 10)), Applied::Unchanged);
        assert_eq!(state.len(), 0);
        assert_eq!(state.bytes(), 0);
    }

    #[test]
    fn a_put_stamped_twice_is_kept_once_at_the_earlier_place() {
        let mut a = QueueState::default();
        a.insert(message(seq_of(2, 1), 7));
        a.insert(message(seq_of(1, 5), 7));
        assert_eq!(a.len(), 1);
        assert_eq!(a.key_of(&MsgId(7)), Some((seq_of(1, 5), MsgId(7))));
        a.insert(message(seq_of(3, 1), 7));
        assert_eq!(a.len(), 1);
        assert_eq!(a.bytes(), 3);
    }

    #[test]
    fn merging_in_any_order_gives_the_same_digest() {
        let ops: Vec<(bool, u64, u128)> = vec![
            (true, 1, 1),
            (true, 2, 2),
            (false, 1, 1),
            (true, 3, 3),
            (true, seq_of(1, 1), 2),
            (false, 3, 3),
        ];
        let mut forward = QueueState::default();
        for &(put, seq, id) in &ops {
            if put {
                forward.insert(message(seq, id));
            } else {
                forward.remove(removal(id), 100);
            }
        }
        let mut backward = QueueState::default();
        for &(put, seq, id) in ops.iter().rev() {
            if put {
                backward.insert(message(seq, id));
            } else {
                backward.remove(removal(id), 100);
            }
        }
        assert_eq!(forward.digest(), backward.digest());
        assert_eq!(forward.len(), 1);
        assert_eq!(forward.epoch, 1);
    }

    #[test]
    fn removals_are_forgotten_oldest_first_beyond_the_cap() {
        let mut state = QueueState::default();
        for id in 0..5u128 {
            let (_, forgotten) = state.remove(removal(id), 3);
            assert_eq!(forgotten.len(), usize::from(id >= 3));
        }
        assert!(!state.is_removed(&MsgId(0)));
        assert!(!state.is_removed(&MsgId(1)));
        assert!(state.is_removed(&MsgId(4)));
        assert_eq!(state.removals().count(), 3);
    }
}
