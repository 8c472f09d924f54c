//! The replica's side of the storage protocol: serving peers' requests.
//!
//! Owns the rule for each request a peer may send: it is validated (sizes, checksums, list
//! lengths, versions no further ahead of the wall clock than `max_future_skew`), turned into one
//! store operation, and answered when that operation's result comes
//! back. A `Store` is acknowledged only after the record is durable; one older than what the store
//! holds — or below a compare-and-set promise — is answered with the newer version held (or the
//! ballot promised), so the writer can pass it. `Prepare` and `Accept` make this node a
//! compare-and-set acceptor; their rules live in [`super::promise`]. Nothing here keeps state
//! between requests: what an answer needs travels with the store operation ([`Served`]).

use crate::address::Address;
use crate::message::RequestId;
use crate::store::{BucketHash, HybridClock, KvRequest, KvResponse, MAX_BATCH, Record, Version};
use crate::time::Time;

use super::promise::{self, NotPromised, Prepared};
use super::{IoPurpose, KvConfig, Outbox, StoreOp, StoreResult};

/// What a store operation serves, and what its answer needs.
#[derive(Clone, Debug)]
pub(super) enum Served {
    Store,
    /// A delete: the key's record was read to see whether this node holds any.
    Delete {
        record: Record,
    },
    Fetch,
    Digest {
        theirs: Vec<BucketHash>,
    },
    Entries,
    Prepare {
        key: Vec<u8>,
        ballot: Version,
    },
}

/// Serves peers' storage requests.
#[derive(Debug, Default)]
pub(super) struct Serving;

impl Serving {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn handle<A: Address>(
        &mut self,
        from: A,
        id: RequestId,
        request: KvRequest,
        config: &KvConfig,
        clock: &mut HybridClock,
        out: &mut Outbox<A>,
        wall_ms: u64,
        now: Time,
    ) {
        if let Err(error) = request.validate(config.max_value_bytes) {
            tracing::debug!(%error, "refused an invalid storage request");
            out.counters.rejected_invalid += 1;
            out.respond(from, id, KvResponse::Refused { reason: error.to_string() });
            return;
        }
        let claimed = match &request {
            KvRequest::Store { record } | KvRequest::Delete { record } | KvRequest::Accept { record } => {
                Some(record.version)
            }
            KvRequest::Prepare { ballot, .. } => Some(*ballot),
            _ => None,
        };
        if let Some(version) = claimed.filter(|v| v.is_ahead_of(wall_ms, config.max_future_skew)) {
            // Before the clock observes it: taken in, it would pin the key and drag the clock.
            tracing::debug!(%version, "refused a storage request with a version too far ahead");
            out.counters.rejected_future += 1;
            let reason = format!("version {version} is too far ahead of this node's clock");
            out.respond(from, id, KvResponse::Refused { reason });
            return;
        }
        match request {
            KvRequest::Store { record } => {
                clock.observe(&record.version);
                if let Err(promised) = out.promises.admits(&record.key, record.version, now) {
                    // Below a compare-and-set's promise: the writer passes the ballot and retries.
                    out.counters.promise_refusals += 1;
                    out.respond(from, id, KvResponse::Stored { existed: false, newer: Some(promised) });
                    return;
                }
                let served = Served::Store;
                out.store(IoPurpose::Serve { from, id, request: served }, |io| StoreOp::Persist {
                    io,
                    records: vec![record],
                });
            }
            KvRequest::Delete { record } => {
                clock.observe(&record.version);
                if let Err(promised) = out.promises.admits(&record.key, record.version, now) {
                    out.counters.promise_refusals += 1;
                    out.respond(from, id, KvResponse::Stored { existed: false, newer: Some(promised) });
                    return;
                }
                let keys = vec![record.key.clone()];
                let served = Served::Delete { record };
                out.store(IoPurpose::Serve { from, id, request: served }, |io| StoreOp::Read { io, keys });
            }
            KvRequest::Accept { record } => {
                clock.observe(&record.version);
                match out.promises.admits_accept(&record.key, record.version, now) {
                    Ok(()) => {
                        let served = Served::Store;
                        out.store(IoPurpose::Serve { from, id, request: served }, |io| StoreOp::Persist {
                            io,
                            records: vec![record],
                        });
                    }
                    Err(refusal) => {
                        out.counters.promise_refusals += 1;
                        let response = match refusal {
                            NotPromised::Higher(promised) => {
                                KvResponse::Stored { existed: false, newer: Some(promised) }
                            }
                            other => refusal_response(other),
                        };
                        out.respond(from, id, response);
                    }
                }
            }
            KvRequest::Prepare { key, ballot } => match out.promises.precheck(&key, ballot, now) {
                Ok(()) => {
                    let served = Served::Prepare { key: key.clone(), ballot };
                    out.store(IoPurpose::Serve { from, id, request: served }, |io| StoreOp::Read {
                        io,
                        keys: vec![key],
                    });
                }
                Err(refusal) => {
                    clock.observe(&ballot);
                    out.counters.promise_refusals += 1;
                    out.respond(from, id, refusal_response(refusal));
                }
            },
            KvRequest::Fetch { key } => {
                out.store(IoPurpose::Serve { from, id, request: Served::Fetch }, |io| StoreOp::Read {
                    io,
                    keys: vec![key],
                });
            }
            KvRequest::Digest { start, end, buckets } => {
                let served = Served::Digest { theirs: buckets };
                out.store(IoPurpose::Serve { from, id, request: served }, |io| StoreOp::Digest {
                    io,
                    start,
                    end,
                });
            }
            KvRequest::Entries { start, end, buckets, after } => {
                out.store(IoPurpose::Serve { from, id, request: Served::Entries }, |io| StoreOp::Entries {
                    io,
                    start,
                    end,
                    buckets: Some(buckets),
                    after,
                    limit: MAX_BATCH,
                });
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_store_result<A: Address>(
        &mut self,
        from: A,
        id: RequestId,
        served: Served,
        result: StoreResult,
        clock: &mut HybridClock,
        out: &mut Outbox<A>,
        now: Time,
    ) {
        let response = match (served, result) {
            (Served::Store, StoreResult::Persisted(outcomes)) => match outcomes.first() {
                Some(outcome) => KvResponse::Stored {
                    existed: outcome.existed,
                    newer: outcome.held.filter(|_| !outcome.applied),
                },
                None => KvResponse::Refused { reason: "the store answered no outcome".into() },
            },
            (Served::Prepare { key, ballot }, StoreResult::Read(mut records)) => {
                let read = records.pop().flatten();
                match promise::decide(out, clock, &key, read, ballot, now) {
                    Prepared::Promised(record) => KvResponse::Promised { record },
                    Prepared::Refused(refusal) => refusal_response(refusal),
                    Prepared::Wait(io) => {
                        let served = Served::Prepare { key, ballot };
                        out.defer(io, IoPurpose::Serve { from, id, request: served });
                        return;
                    }
                }
            }
            (Served::Delete { record }, StoreResult::Read(mut records)) => {
                if records.pop().flatten().is_none() {
                    KvResponse::NotHeld
                } else {
                    // Held (live or deleted): store the tombstone as a plain write would.
                    out.store(IoPurpose::Serve { from, id, request: Served::Store }, |io| StoreOp::Persist {
                        io,
                        records: vec![record],
                    });
                    return;
                }
            }
            (Served::Fetch, StoreResult::Read(mut records)) => {
                KvResponse::Found { record: records.pop().flatten() }
            }
            (Served::Digest { theirs }, StoreResult::Digest(mine)) => KvResponse::DigestDiff {
                buckets: (0..mine.len().min(theirs.len()))
                    .filter(|&i| mine[i] != theirs[i])
                    .map(|i| i as u16)
                    .collect(),
            },
            (Served::Entries, StoreResult::Entries { entries, truncated }) => {
                KvResponse::Entries { entries, truncated }
            }
            (_, StoreResult::Failed(error)) => KvResponse::Refused { reason: error },
            (_, _) => KvResponse::Refused { reason: "the store answered the wrong kind of result".into() },
        };
        out.respond(from, id, response);
    }
}

/// The answer to a prepare or accept that was not promised or admitted.
fn refusal_response(refusal: NotPromised) -> KvResponse {
    match refusal {
        NotPromised::Higher(higher) => KvResponse::NotPromised { higher },
        NotPromised::Starting => KvResponse::Refused { reason: "started too recently to promise".into() },
        NotPromised::Busy => KvResponse::Refused { reason: "too many promises held".into() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use crate::address::NodeRef;
    use crate::kv::{Coordinator, KvMessage};
    use crate::node::Node;
    use crate::sim::SimAddr;
    use crate::store::Record;

    const WALL_MS: u64 = 1_700_000_000_000;

    fn refused(kv: &mut Coordinator<SimAddr>) -> bool {
        let sent = kv.poll_transmit().expect("an answer");
        matches!(sent.message, KvMessage::Response { body: KvResponse::Refused { .. }, .. })
    }

    #[test]
    fn records_and_ballots_far_ahead_of_the_wall_clock_are_refused_and_leave_the_clock_alone() {
        let mut kv = Coordinator::new(NodeRef::new(SimAddr(1)), KvConfig::default());
        // Not a ring member yet: it takes writes of any key ([`crate::kv::range`]).
        let ring = Node::new(SimAddr(1), Config::default(), 1).expect("valid");
        let peer = SimAddr(2);
        let writer = peer.node_id();
        let future = Version { hlc: u64::MAX - 1, writer };
        let record = Record::new(b"k".to_vec(), b"v".to_vec(), future);
        let requests = [
            KvRequest::Store { record: record.clone() },
            KvRequest::Accept { record },
            KvRequest::Prepare { key: b"k".to_vec(), ballot: future },
        ];
        for (n, request) in requests.into_iter().enumerate() {
            kv.handle_request(peer, RequestId(n as u64), request, &ring, WALL_MS, Time::ZERO);
            assert!(refused(&mut kv), "request {n} refused");
        }
        assert!(kv.poll_store_op().is_none(), "nothing reached the store");
        assert_eq!(kv.counters().rejected_future, 3);
        assert_eq!(kv.clock.tick(WALL_MS).hlc, WALL_MS << 16, "the clock was not dragged along");

        // A peer 30 s ahead (the skew the project tests honest nodes with) is served.
        let ahead = Version { hlc: (WALL_MS + 30_000) << 16, writer };
        let record = Record::new(b"k".to_vec(), b"v".to_vec(), ahead);
        kv.handle_request(peer, RequestId(9), KvRequest::Store { record }, &ring, WALL_MS, Time::ZERO);
        assert!(kv.poll_store_op().is_some(), "stored");
        assert_eq!(kv.counters().rejected_future, 3);
    }
}
