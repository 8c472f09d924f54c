//! The acceptor's memory for compare-and-set: ballots promised per key, and the records being
//! persisted right now.
//!
//! Owns the rules that make a replica a Paxos acceptor for one key at a time ([`Promises`]):
//! - a `Prepare` with ballot `b` is promised only if `b` is above every ballot promised for the
//!   key and above the version held, and the answer carries that record, so "promise" and "report
//!   what I accepted" are one atomic step: while a write of the key is still being persisted
//!   ([`InFlight`]) the prepare waits for it and reads again;
//! - an `Accept` (or any write) below a live promise is refused, naming the promise, so a write the
//!   proposer did not see can never slip under it;
//! - promises live in memory, expire after [`PROMISE_TTL_FACTOR`] × the operation time-out, and a
//!   node that restarts on its old store promises and accepts nothing for that long: a promise it
//!   made before a crash has outlived every operation that could rely on it by then. That is the timing
//!   assumption compare-and-set rests on (messages are not delayed past an operation's deadline),
//!   instead of a disk write per prepare.
//!
//! Bounded: at most [`MAX_PROMISES`] keys; expired ones are dropped first, and when every slot is
//! live a new prepare is refused as busy.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::store::{HybridClock, Record, Version};
use crate::time::Time;

use super::{IoId, Outbox};

/// Most keys with a live promise at once.
pub const MAX_PROMISES: usize = 65_536;

/// Promises last this many operation time-outs (and a restarted node waits as long).
pub const PROMISE_TTL_FACTOR: u32 = 2;

/// Why a prepare was not promised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NotPromised {
    /// This ballot or a higher one was promised, or a version at least as new is held.
    Higher(Version),
    /// The node started too recently to promise (see the module docs).
    Starting,
    /// Every promise slot is live.
    Busy,
}

#[derive(Clone, Copy, Debug)]
struct Promise {
    ballot: Version,
    expires: Time,
}

/// Ballots promised per key. See the module docs.
#[derive(Debug)]
pub(super) struct Promises {
    promised: HashMap<Vec<u8>, Promise>,
    ttl: Duration,
    /// Nothing is promised or accepted before this (a restart's grace).
    quiet_until: Time,
    /// `false`: promise everything, remember nothing ([`super::KvConfig::keep_promises`]).
    enabled: bool,
}

impl Promises {
    pub(super) fn new(op_timeout: Duration, enabled: bool) -> Self {
        let ttl = op_timeout * PROMISE_TTL_FACTOR;
        Promises { promised: HashMap::new(), ttl, quiet_until: Time::ZERO, enabled }
    }

    /// Promises and accepts nothing for one promise lifetime from `now` (a restart's grace).
    pub(super) fn stay_quiet(&mut self, now: Time) {
        self.quiet_until = now + self.ttl;
    }

    /// Whether the restart grace is still running.
    pub(super) fn starting(&self, now: Time) -> bool {
        now < self.quiet_until
    }

    /// The live promise for `key`, if any.
    pub(super) fn promised(&self, key: &[u8], now: Time) -> Option<Version> {
        self.promised.get(key).filter(|p| p.expires > now).map(|p| p.ballot)
    }

    /// Whether a write of `key` at `version` may be persisted: not below a live promise.
    pub(super) fn admits(&self, key: &[u8], version: Version, now: Time) -> Result<(), Version> {
        match self.promised(key, now) {
            Some(ballot) if version < ballot => Err(ballot),
            _ => Ok(()),
        }
    }

    /// Whether an accept at `ballot` may be persisted (the grace is over, no higher promise).
    pub(super) fn admits_accept(&self, key: &[u8], ballot: Version, now: Time) -> Result<(), NotPromised> {
        if self.starting(now) {
            return Err(NotPromised::Starting);
        }
        self.admits(key, ballot, now).map_err(NotPromised::Higher)
    }

    /// Checks a prepare before reading the store (cheap refusals first).
    pub(super) fn precheck(&self, key: &[u8], ballot: Version, now: Time) -> Result<(), NotPromised> {
        if self.starting(now) {
            return Err(NotPromised::Starting);
        }
        match self.promised(key, now) {
            Some(promised) if ballot <= promised => Err(NotPromised::Higher(promised)),
            _ => Ok(()),
        }
    }

    /// Decides a prepare once the held record is known (`held`: the newest of the store's answer
    /// and the persists in flight). On success the promise is recorded.
    pub(super) fn promise(
        &mut self,
        key: &[u8],
        ballot: Version,
        held: Option<&Record>,
        now: Time,
    ) -> Result<(), NotPromised> {
        self.precheck(key, ballot, now)?;
        if let Some(held) = held
            && held.version >= ballot
        {
            return Err(NotPromised::Higher(held.version));
        }
        if !self.enabled {
            return Ok(());
        }
        if self.promised.len() >= MAX_PROMISES && !self.promised.contains_key(key) {
            self.promised.retain(|_, p| p.expires > now);
            if self.promised.len() >= MAX_PROMISES {
                return Err(NotPromised::Busy);
            }
        }
        self.promised.insert(key.to_vec(), Promise { ballot, expires: now + self.ttl });
        Ok(())
    }

    /// Drops expired promises (called now and then so the map does not keep dead keys).
    pub(super) fn expire(&mut self, now: Time) {
        if !self.promised.is_empty() {
            self.promised.retain(|_, p| p.expires > now);
        }
    }

    /// Live promises (for tests and metrics).
    pub(super) fn len(&self) -> usize {
        self.promised.len()
    }
}

/// What a prepare comes to once the store answered.
#[derive(Debug)]
pub(super) enum Prepared {
    /// Promised; the record held.
    Promised(Option<Record>),
    /// Not promised.
    Refused(NotPromised),
    /// A write of the key is being persisted: read again once store operation `IoId` is done.
    Wait(IoId),
}

/// Decides a prepare of `key` at `ballot` once the store answered `read`. Counts refusals; moves
/// the clock past the ballot (promised or not), so this node's own later writes of the key land
/// above it.
pub(super) fn decide<A>(
    out: &mut Outbox<A>,
    clock: &mut HybridClock,
    key: &[u8],
    read: Option<Record>,
    ballot: Version,
    now: Time,
) -> Prepared {
    clock.observe(&ballot);
    if let Some(io) = out.in_flight.persisting(key) {
        return Prepared::Wait(io);
    }
    match out.promises.promise(key, ballot, read.as_ref(), now) {
        Ok(()) => Prepared::Promised(read),
        Err(refusal) => {
            out.counters.promise_refusals += 1;
            if let NotPromised::Higher(higher) = refusal {
                clock.observe(&higher);
            }
            Prepared::Refused(refusal)
        }
    }
}

/// Keys handed to the driver to persist and not yet reported durable. A prepare that finds its
/// key among them must not answer from a read that may predate the write (the write would then be
/// accepted after the promise without being reported by it): it waits and reads again.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    keys: BTreeMap<IoId, Vec<Vec<u8>>>,
}

impl InFlight {
    pub(super) fn started(&mut self, io: IoId, records: &[Record]) {
        self.keys.insert(io, records.iter().map(|r| r.key.clone()).collect());
    }

    pub(super) fn finished(&mut self, io: IoId) {
        self.keys.remove(&io);
    }

    /// A store operation persisting `key`, if any.
    pub(super) fn persisting(&self, key: &[u8]) -> Option<IoId> {
        self.keys.iter().find(|(_, keys)| keys.iter().any(|k| k == key)).map(|(io, _)| *io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;

    fn version(hlc: u64) -> Version {
        Version { hlc, writer: Id::hash(b"w") }
    }

    const OP: Duration = Duration::from_secs(5);

    fn ready() -> (Promises, Time) {
        (Promises::new(OP, true), Time::ZERO + OP)
    }

    #[test]
    fn a_higher_ballot_is_promised_and_a_lower_one_refused() {
        let (mut promises, now) = ready();
        assert_eq!(promises.promise(b"k", version(10), None, now), Ok(()));
        assert_eq!(promises.promise(b"k", version(9), None, now), Err(NotPromised::Higher(version(10))));
        assert_eq!(promises.promise(b"k", version(10), None, now), Err(NotPromised::Higher(version(10))));
        assert_eq!(promises.promise(b"k", version(11), None, now), Ok(()));
        // Other keys are independent.
        assert_eq!(promises.promise(b"other", version(1), None, now), Ok(()));
    }

    #[test]
    fn a_ballot_not_above_the_version_held_is_refused() {
        let (mut promises, now) = ready();
        let held = Record::new(b"k".to_vec(), b"v".to_vec(), version(20));
        assert_eq!(
            promises.promise(b"k", version(20), Some(&held), now),
            Err(NotPromised::Higher(version(20)))
        );
        assert_eq!(promises.promise(b"k", version(21), Some(&held), now), Ok(()));
    }

    #[test]
    fn writes_below_a_live_promise_are_refused_until_it_expires() {
        let (mut promises, now) = ready();
        promises.promise(b"k", version(10), None, now).expect("promised");
        assert_eq!(promises.admits(b"k", version(9), now), Err(version(10)));
        assert_eq!(promises.admits(b"k", version(10), now), Ok(()), "the accept of the promised ballot");
        assert_eq!(promises.admits(b"k", version(11), now), Ok(()));
        let later = now + OP * PROMISE_TTL_FACTOR;
        assert_eq!(promises.admits(b"k", version(9), later), Ok(()));
        promises.expire(later);
        assert_eq!(promises.len(), 0);
    }

    #[test]
    fn a_node_that_restarted_promises_nothing_for_a_promise_lifetime() {
        let mut promises = Promises::new(OP, true);
        promises.stay_quiet(Time::ZERO);
        let early = Time::ZERO + OP;
        assert_eq!(promises.promise(b"k", version(1), None, early), Err(NotPromised::Starting));
        assert_eq!(promises.admits_accept(b"k", version(1), early), Err(NotPromised::Starting));
        // Plain writes are not held up by the grace.
        assert_eq!(promises.admits(b"k", version(1), early), Ok(()));
        let after = Time::ZERO + OP * PROMISE_TTL_FACTOR;
        assert_eq!(promises.promise(b"k", version(1), None, after), Ok(()));
    }

    #[test]
    fn keys_being_persisted_are_known_until_durable() {
        let mut in_flight = InFlight::default();
        let a = Record::new(b"k".to_vec(), b"a".to_vec(), version(1));
        let b = Record::new(b"k".to_vec(), b"b".to_vec(), version(2));
        in_flight.started(IoId(1), std::slice::from_ref(&a));
        in_flight.started(IoId(2), std::slice::from_ref(&b));
        assert_eq!(in_flight.persisting(b"k"), Some(IoId(1)));
        in_flight.finished(IoId(1));
        assert_eq!(in_flight.persisting(b"k"), Some(IoId(2)));
        in_flight.finished(IoId(2));
        assert_eq!(in_flight.persisting(b"k"), None);
        assert_eq!(in_flight.persisting(b"x"), None);
    }
}
