//! The replica's side of the storage protocol: serving peers' requests.
//!
//! Owns the rule for each request a peer may send: it is validated (sizes, checksums, list
//! lengths), turned into one store operation, and answered when that operation's result comes
//! back. A `Store` is acknowledged only after the record is durable; one older than what the store
//! holds is answered with the newer version held, so the writer can pass it. Nothing here keeps
//! state between requests: what an answer needs travels with the store operation ([`Served`]).

use crate::address::Address;
use crate::message::RequestId;
use crate::store::{BucketHash, HybridClock, KvRequest, KvResponse, MAX_BATCH, Version};

use super::{IoPurpose, KvConfig, Outbox, StoreOp, StoreResult};

/// What a store operation serves, and what its answer needs.
#[derive(Clone, Debug)]
pub(super) enum Served {
    Store { version: Version },
    Fetch,
    Digest { theirs: Vec<BucketHash> },
    Entries,
}

/// Serves peers' storage requests.
#[derive(Debug, Default)]
pub(super) struct Serving;

impl Serving {
    pub(super) fn handle<A: Address>(
        &mut self,
        from: A,
        id: RequestId,
        request: KvRequest,
        config: &KvConfig,
        clock: &mut HybridClock,
        out: &mut Outbox<A>,
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
                let served = Served::Store { version: record.version };
                out.store(IoPurpose::Serve { from, id, request: served }, |io| StoreOp::Persist {
                    io,
                    records: vec![record],
                });
            }
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

    pub(super) fn on_store_result<A: Address>(
        &mut self,
        from: A,
        id: RequestId,
        served: Served,
        result: StoreResult,
        out: &mut Outbox<A>,
    ) {
        let response = match (served, result) {
            (Served::Store { version }, StoreResult::Persisted(outcomes)) => match outcomes.first() {
                Some(outcome) => KvResponse::Stored {
                    existed: outcome.existed,
                    newer: outcome.held.filter(|held| !outcome.applied && *held > version),
                },
                None => KvResponse::Refused { reason: "the store answered no outcome".into() },
            },
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
