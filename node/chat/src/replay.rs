//! [`ReplayGuard`]: remembers recent message ids per sender, in bounded memory, to refuse
//! replays.
//!
//! Pure and deterministic: it reads no clock (every call takes `now_ms`) and iterates only
//! ordered maps. A `now_ms` earlier than one already seen is taken as the latest one seen: the
//! guard forgets what has left the window, so its clock must not run back.
//!
//! A message is `(sender's signing key, id, ts_ms)`. The guard admits it only when `ts_ms` lies
//! within `window_ms` of `now_ms`, the id is not remembered for that sender, and `ts_ms` is newer
//! than the sender's *floor* and the global floor. Memory is bounded by `ids_per_sender` ids per
//! sender and `max_senders` senders. When a sender's ids are full its oldest (by `ts_ms`) is
//! forgotten and the sender's floor rises to that id's time; when the senders are full the sender
//! whose newest message is oldest is forgotten and the global floor rises to that message's time.
//!
//! Invariant: a message admitted once is never admitted again. Either its id is still remembered,
//! or it was forgotten and its time is at or below a floor, or it has left the window. The price
//! under load is that an unseen message older than a floor is refused too, as
//! [`ChatError::Replayed`] ("replayed, or too old to tell"): the floors only rise as far as the
//! oldest thing forgotten, so this touches messages that arrive out of order by more than what the
//! guard can hold.

use std::collections::{BTreeMap, BTreeSet};

use crate::{ChatError, Envelope, RoomMessage};

/// Bounds of a [`ReplayGuard`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayConfig {
    /// Senders remembered at once. Default 10,000.
    pub max_senders: usize,
    /// Ids remembered per sender. Default 1,024.
    pub ids_per_sender: usize,
    /// How far `ts_ms` may lie from `now_ms`, either way. Default 10 minutes.
    pub window_ms: u64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig { max_senders: 10_000, ids_per_sender: 1024, window_ms: 10 * 60 * 1000 }
    }
}

#[derive(Debug, Default)]
struct SenderIds {
    /// id → ts_ms.
    ids: BTreeMap<[u8; 16], u64>,
    /// The same, in age order, to forget the oldest.
    by_time: BTreeSet<(u64, [u8; 16])>,
    /// Messages at or before this time are refused: some were forgotten.
    floor: Option<u64>,
}

impl SenderIds {
    fn newest(&self) -> Option<u64> {
        self.by_time.last().map(|&(ts, _)| ts)
    }
}

/// Refuses messages already seen, within bounded memory; see the module docs.
#[derive(Debug)]
pub struct ReplayGuard {
    config: ReplayConfig,
    senders: BTreeMap<[u8; 32], SenderIds>,
    /// (newest ts_ms, sender) for every sender, to forget the least recent.
    by_newest: BTreeSet<(u64, [u8; 32])>,
    floor: Option<u64>,
    /// The latest `now_ms` seen.
    now_ms: u64,
}

impl ReplayGuard {
    /// An empty guard. Bounds of zero are taken as one.
    pub fn new(config: ReplayConfig) -> ReplayGuard {
        let config = ReplayConfig {
            max_senders: config.max_senders.max(1),
            ids_per_sender: config.ids_per_sender.max(1),
            window_ms: config.window_ms,
        };
        ReplayGuard { config, senders: BTreeMap::new(), by_newest: BTreeSet::new(), floor: None, now_ms: 0 }
    }

    /// The bounds in force.
    pub fn config(&self) -> ReplayConfig {
        self.config
    }

    /// Senders remembered.
    pub fn senders(&self) -> usize {
        self.senders.len()
    }

    /// Ids remembered, over all senders.
    pub fn ids(&self) -> usize {
        self.senders.values().map(|s| s.ids.len()).sum()
    }

    /// Admits and remembers the message `id` of `sender` sealed at `ts_ms`, or refuses it:
    /// [`ChatError::Expired`] (older than the window), [`ChatError::NotYetValid`] (newer than
    /// the window), [`ChatError::Replayed`] (seen, or older than what the guard remembers).
    pub fn check_and_record(
        &mut self,
        sender: &[u8; 32],
        id: &[u8; 16],
        ts_ms: u64,
        now_ms: u64,
    ) -> Result<(), ChatError> {
        self.now_ms = self.now_ms.max(now_ms);
        let now_ms = self.now_ms;
        let oldest_allowed = now_ms.saturating_sub(self.config.window_ms);
        if ts_ms < oldest_allowed {
            return Err(ChatError::Expired);
        }
        if ts_ms > now_ms.saturating_add(self.config.window_ms) {
            return Err(ChatError::NotYetValid);
        }
        if self.floor.is_some_and(|floor| ts_ms <= floor) {
            return Err(ChatError::Replayed);
        }
        self.forget_senders_before(oldest_allowed);
        if let Some(ids) = self.senders.get(sender) {
            if ids.ids.contains_key(id) || ids.floor.is_some_and(|floor| ts_ms <= floor) {
                return Err(ChatError::Replayed);
            }
        } else if self.senders.len() >= self.config.max_senders {
            self.forget_least_recent_sender();
        }

        let ids = self.senders.entry(*sender).or_default();
        let newest_before = ids.newest();
        // Ids out of the window would be refused by the window check anyway: no floor needed.
        while let Some(&(ts, old)) = ids.by_time.first() {
            if ts >= oldest_allowed {
                break;
            }
            ids.by_time.pop_first();
            ids.ids.remove(&old);
        }
        ids.ids.insert(*id, ts_ms);
        ids.by_time.insert((ts_ms, *id));
        while ids.by_time.len() > self.config.ids_per_sender {
            let Some((ts, old)) = ids.by_time.pop_first() else { break };
            ids.ids.remove(&old);
            ids.floor = Some(ids.floor.map_or(ts, |f| f.max(ts)));
        }
        let newest_after = ids.newest();
        if newest_before != newest_after {
            if let Some(before) = newest_before {
                self.by_newest.remove(&(before, *sender));
            }
            if let Some(after) = newest_after {
                self.by_newest.insert((after, *sender));
            }
        }
        Ok(())
    }

    /// [`ReplayGuard::check_and_record`] for an envelope, keyed by its sender's signing key.
    /// Verify the envelope first: an unverified one could spend another sender's memory.
    pub fn check_envelope(&mut self, envelope: &Envelope, now_ms: u64) -> Result<(), ChatError> {
        self.check_and_record(&envelope.from_key.sign, &envelope.id, envelope.ts_ms, now_ms)
    }

    /// [`ReplayGuard::check_and_record`] for a room message, keyed by its sender's signing key.
    pub fn check_room_message(&mut self, message: &RoomMessage, now_ms: u64) -> Result<(), ChatError> {
        self.check_and_record(&message.from_key.sign, &message.id, message.ts_ms, now_ms)
    }

    /// Forgets senders whose every message has left the window; they raise no floor, since the
    /// window check refuses their old messages anyway.
    fn forget_senders_before(&mut self, oldest_allowed: u64) {
        while let Some(&(newest, sender)) = self.by_newest.first() {
            if newest >= oldest_allowed {
                break;
            }
            self.by_newest.pop_first();
            self.senders.remove(&sender);
        }
    }

    fn forget_least_recent_sender(&mut self) {
        if let Some((newest, sender)) = self.by_newest.pop_first() {
            self.senders.remove(&sender);
            self.floor = Some(self.floor.map_or(newest, |f| f.max(newest)));
        }
    }
}
