//! The replica's side of the storage protocol: serving peers' requests.
//!
//! Owns the rule for each request a peer may send: it is validated (sizes, checksums, list
//! lengths), turned into one store operation, and answered when that operation's result comes
//! back. A `Store` is acknowledged only after the record is durable; one older than what the store
//! holds — or below a compare-and-set promise — is answered with the newer version held (or the
//! ballot promised), so the writer can pass it. `Prepare` and `Accept` make this node a
//! compare-and-set acceptor; their rules live in [`super::promise`]. Nothing here keeps state
//! between requests: what an answer needs travels with the store operation ([`Served`]).

use crate::address::Address;
use crate::message::RequestId;
use crate::store::{BucketHash, HybridClock, KvRequest, KvResponse, MAX_BATCH, Version};
use crate::time::Time;

use super::promise::{self, NotPromised, Prepared};
use super::{IoPurpose, KvConfig, Outbox, StoreOp, StoreResult};

/// What a store operation serves, and what its answer needs.
#[derive(Clone, Debug)]
pub(super) enum Served {
    Store { version: Version },
    Fetch,
    Digest { theirs: Vec<BucketHash> },
    Entries,
    Prepare { key: Vec<u8>, ballot: Version },
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
        now: Time,
    ) {
        if let Err(error) = request.validate(config.max_value_bytes) {
            tracing::debug!(%error, "refused an invalid storage request");
            out.counters.rejected_invalid += 1;
            out.respond(from, id, KvResponse::Refused { reason: error.to_string() });
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
                let served = Served::Store { version: record.version };
                out.store(IoPurpose::Serve { from, id, request: served }, |io| StoreOp::Persist {
                    io,
                    records: vec![record],
                });
            }
            KvRequest::Accept { record } => {
                clock.observe(&record.version);
                match out.promises.admits_accept(&record.key, record.version, now) {
                    Ok(()) => {
                        let served = Served::Store { version: record.version };
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
            (Served::Store { version }, StoreResult::Persisted(outcomes)) => match outcomes.first() {
                Some(outcome) => KvResponse::Stored {
                    existed: outcome.existed,
                    newer: outcome.held.filter(|held| !outcome.applied && *held > version),
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
