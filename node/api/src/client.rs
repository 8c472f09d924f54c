//! Blocking client of one node's API (`client` feature), over ureq.
//!
//! Owns: one typed method per endpoint, checking what it sends (non-empty keys, the group-name
//! and sender-label rules) before it asks; mapping HTTP answers onto [`ApiError`] variants a
//! caller can act on (the CLI turns them into exit codes); and opening the event streams, which
//! [`streams`] reads ([`GroupStream`], [`QueueStream`], closable from another thread). JSON
//! answers come back as [`Document`]s, typed and raw.
//! [`Client::raw`] sends what the typed methods would refuse to build, for tests of hostile
//! input.

use std::fmt;
use std::io::Read;
use std::time::Duration;

use serde::de::DeserializeOwned;
pub use ureq::http::{Method, StatusCode};

use crate::auth;
use crate::consistency::Consistency;
use crate::document::Document;
use crate::groups::{
    GroupLeft, GroupList, GroupReceipt, GroupSummary, GroupTree, check_group_name, check_sender_label,
};
use crate::kv::{
    Condition, ConflictBody, Lookup, PutReceipt, SIGNATURE_HEADER, SIGNER_HEADER, VERSION_HEADER,
};
use crate::path;
use crate::queues::{QueueAck, QueueAckReceipt, QueueItem, QueuePutReceipt, QueueStat, check_queue_name};
use crate::ring::{Ring, Status};
use crate::sse::EventReader;

mod streams;

use self::streams::EventStream;
pub use self::streams::{GroupStream, QueueStream, StreamCloser};

/// Largest response body the client reads. The node caps values (1 MiB by default); this only
/// guards the client against a misbehaving server, so it is far above any sane cap.
const MAX_RESPONSE_BYTES: u64 = 1 << 30;

/// Connecting to a node on loopback either works at once or not at all; a short connect
/// time-out makes "node not running" fail fast while slow quorum operations still get the
/// request time-out.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a request to the node failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No connection could be made: the node is not running, or the URL is wrong.
    #[error("cannot reach the node at {url} ({reason})")]
    Unreachable {
        /// The node's base URL.
        url: String,
        /// What the connection attempt met.
        reason: String,
    },
    /// Connected, but the node did not answer in time.
    #[error("the node at {url} did not answer within {after:?}")]
    TimedOut {
        /// The node's base URL.
        url: String,
        /// The time-out that passed.
        after: Duration,
    },
    /// The key has no live value (GET/DELETE answered 404).
    #[error("key {key:?} not found")]
    KeyNotFound {
        /// The key asked for.
        key: String,
    },
    /// The node answered with an error status; `message` is its `{"error": ...}` text.
    #[error("the node answered {status}: {message}")]
    Rejected {
        /// The status.
        status: StatusCode,
        /// The node's reason, on one line.
        message: String,
    },
    /// The node needs a bearer token (401) and got none, or a wrong one: give the right one
    /// with [`Client::with_token`].
    #[error("the node refused the request without the right API token: {message}")]
    Unauthorized {
        /// The node's reason.
        message: String,
    },
    /// The node answered something that does not follow the API contract.
    #[error("unexpected answer from {url}: {reason}")]
    Protocol {
        /// The request's URL.
        url: String,
        /// What was wrong with the answer.
        reason: String,
    },
    /// A signed write's version was already passed at a replica (409): nothing was written; the
    /// owner signs again above `held`.
    #[error("key {key:?} already holds a newer version ({held}); sign again with a later one")]
    Superseded {
        /// The key.
        key: String,
        /// The version a replica holds.
        held: String,
    },
    /// A conditional write found the key in another state (412): nothing was written.
    #[error("key {key:?} is not in the expected state (current version: {})", current_version.as_deref().unwrap_or("none"))]
    Conflict {
        /// The key.
        key: String,
        /// Its current version (`None`: it holds nothing), to pass on a retry.
        current_version: Option<String>,
    },
    /// The node could not confirm a conditional write either way (504): it may or may not have
    /// taken effect. A linearizable read tells.
    #[error("the write of key {key:?} may or may not have taken effect: {message}")]
    OutcomeUnknown {
        /// The key.
        key: String,
        /// The node's reason.
        message: String,
    },
    /// The request could not even be formed (bad base URL, empty key, bad group name).
    #[error("{0}")]
    InvalidRequest(String),
}

/// The value of a key as `GET /v1/kv/{key}` returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValue {
    /// The value, byte for byte.
    pub value: Vec<u8>,
    /// The [`VERSION_HEADER`], when the node sent one.
    pub version: Option<String>,
    /// The [`SIGNER_HEADER`] of a signed key: the owner's public key in hex.
    pub signer: Option<String>,
}

/// What a signed write carries besides the value: the version signed, the owner's public key and
/// the signature, each as the node's headers take them (see [`SIGNER_HEADER`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The version signed, as a token (`MILLIS.COUNTER-WRITER`).
    pub version: String,
    /// The ed25519 public key, 64 hex digits.
    pub signer: String,
    /// The signature, 128 hex digits.
    pub signature: String,
}

/// Whether a PUT created the key (201) or overwrote it (200).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// 201: the key had no live value.
    Created,
    /// 200: the key had a live value, now replaced.
    Overwritten,
}

/// Any answer, as [`Client::raw`] returns it: status and body, unjudged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The body as untyped JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The body as one of the API's documents.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// Blocking client of one node. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    base_url: String,
    timeout: Duration,
    agent: ureq::Agent,
    /// `Bearer <token>` when the node needs one; never printed (see `Debug`).
    authorization: Option<String>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url)
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the node at `base_url` (`http://host:port`, or just `host:port`) whose
    /// requests each give up after `timeout`. `idle_connections` bounds the kept-alive
    /// connections (a load generator raises it to its concurrency so every worker reuses its
    /// connection).
    pub fn new(base_url: &str, timeout: Duration, idle_connections: usize) -> Result<Self, ApiError> {
        let base_url = normalize_base_url(base_url)?;
        let config = ureq::Agent::config_builder()
            // Error statuses carry the node's `{"error": ...}` body; they are mapped here.
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(timeout))
            .max_idle_connections(idle_connections.max(1))
            .max_idle_connections_per_host(idle_connections.max(1))
            .build();
        Ok(Client { base_url, timeout, agent: ureq::Agent::new_with_config(config), authorization: None })
    }

    /// This client, sending `token` as a bearer token with every request (`None`: no token).
    /// A node whose API binds anything but loopback needs one for all but
    /// [`auth::OPEN_PATHS`](crate::auth::OPEN_PATHS).
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.authorization = token.map(auth::bearer);
        self
    }

    /// The normalised base URL, e.g. `http://127.0.0.1:7001`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /v1/kv/{key}`.
    pub fn get(&self, key: &str, consistency: Option<Consistency>) -> Result<StoredValue, ApiError> {
        check_key(key)?;
        self.get_value(key, &self.url(&path::kv(key, consistency)))
    }

    /// This node's own copy of `key`, without asking the other replicas (`?local=true`).
    pub fn get_local(&self, key: &str) -> Result<StoredValue, ApiError> {
        check_key(key)?;
        self.get_value(key, &self.url(&path::kv_local(key)))
    }

    fn get_value(&self, key: &str, url: &str) -> Result<StoredValue, ApiError> {
        let mut response =
            self.authorize(self.agent.get(url)).call().map_err(|e| self.transport_error(url, e))?;
        match response.status() {
            StatusCode::OK => {
                let header = |name: &str| {
                    response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
                };
                let (version, signer) = (header(VERSION_HEADER), header(SIGNER_HEADER));
                let value = read_body(url, &mut response)?;
                Ok(StoredValue { value, version, signer })
            }
            StatusCode::NOT_FOUND => Err(ApiError::KeyNotFound { key: key.to_owned() }),
            status => Err(rejection(url, status, &mut response)),
        }
    }

    /// `PUT /v1/kv/{key}` with `value` as the raw body.
    pub fn put(
        &self,
        key: &str,
        value: &[u8],
        consistency: Option<Consistency>,
    ) -> Result<(PutOutcome, Document<PutReceipt>), ApiError> {
        check_key(key)?;
        let url = self.url(&path::kv(key, consistency));
        self.send_put(&url, value, |status, response| rejection(&url, status, response))
    }

    /// `PUT /v1/kv/{key}?if-version=V` (or `?if-absent=true`): writes `value` only if the key's
    /// current state is as `condition` says.
    pub fn put_if(
        &self,
        key: &str,
        value: &[u8],
        condition: &Condition,
    ) -> Result<(PutOutcome, Document<PutReceipt>), ApiError> {
        check_key(key)?;
        let url = self.url(&path::kv_conditional(key, condition));
        self.send_put(&url, value, |status, response| conditional_rejection(key, &url, status, response))
    }

    /// `PUT /v1/kv/{key}` of a key under `signed/` with its owner's `signature` over `value`.
    pub fn put_signed(
        &self,
        key: &str,
        value: &[u8],
        signature: &Signature,
        consistency: Option<Consistency>,
    ) -> Result<(PutOutcome, Document<PutReceipt>), ApiError> {
        check_key(key)?;
        let url = self.url(&path::kv(key, consistency));
        let request = with_signature(self.authorize(self.agent.put(&url)), signature);
        let mut response = request
            .header("content-type", "application/octet-stream")
            .send(value)
            .map_err(|e| self.transport_error(&url, e))?;
        let outcome = match response.status() {
            StatusCode::CREATED => PutOutcome::Created,
            StatusCode::OK => PutOutcome::Overwritten,
            status => return Err(signed_rejection(key, &url, status, &mut response)),
        };
        let body = read_body(&url, &mut response)?;
        Ok((outcome, parse_document(&url, &body)?))
    }

    /// `DELETE /v1/kv/{key}` of a key under `signed/`: a tombstone its owner signed.
    pub fn delete_signed(
        &self,
        key: &str,
        signature: &Signature,
        consistency: Option<Consistency>,
    ) -> Result<(), ApiError> {
        check_key(key)?;
        let url = self.url(&path::kv(key, consistency));
        let request = with_signature(self.authorize(self.agent.delete(&url)), signature);
        let mut response = request.call().map_err(|e| self.transport_error(&url, e))?;
        match response.status() {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            StatusCode::NOT_FOUND => Err(ApiError::KeyNotFound { key: key.to_owned() }),
            status => Err(signed_rejection(key, &url, status, &mut response)),
        }
    }

    /// Sends `value` to `url` with `PUT` and reads the receipt; any status but 201 and 200 is
    /// turned into an error by `reject`.
    fn send_put(
        &self,
        url: &str,
        value: &[u8],
        reject: impl FnOnce(StatusCode, &mut ureq::http::Response<ureq::Body>) -> ApiError,
    ) -> Result<(PutOutcome, Document<PutReceipt>), ApiError> {
        let mut response = self
            .authorize(self.agent.put(url))
            .header("content-type", "application/octet-stream")
            .send(value)
            .map_err(|e| self.transport_error(url, e))?;
        let outcome = match response.status() {
            StatusCode::CREATED => PutOutcome::Created,
            StatusCode::OK => PutOutcome::Overwritten,
            status => return Err(reject(status, &mut response)),
        };
        let body = read_body(url, &mut response)?;
        Ok((outcome, parse_document(url, &body)?))
    }

    /// `DELETE /v1/kv/{key}?if-version=V` (or `?if-absent=true`).
    pub fn delete_if(&self, key: &str, condition: &Condition) -> Result<(), ApiError> {
        check_key(key)?;
        let url = self.url(&path::kv_conditional(key, condition));
        let mut response =
            self.authorize(self.agent.delete(&url)).call().map_err(|e| self.transport_error(&url, e))?;
        match response.status() {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            StatusCode::NOT_FOUND => Err(ApiError::KeyNotFound { key: key.to_owned() }),
            status => Err(conditional_rejection(key, &url, status, &mut response)),
        }
    }

    /// `DELETE /v1/kv/{key}`.
    pub fn delete(&self, key: &str, consistency: Option<Consistency>) -> Result<(), ApiError> {
        check_key(key)?;
        let url = self.url(&path::kv(key, consistency));
        let mut response =
            self.authorize(self.agent.delete(&url)).call().map_err(|e| self.transport_error(&url, e))?;
        match response.status() {
            // 204 is the contract; 200 is accepted too because it means the same thing.
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            StatusCode::NOT_FOUND => Err(ApiError::KeyNotFound { key: key.to_owned() }),
            status => Err(rejection(&url, status, &mut response)),
        }
    }

    /// `GET /v1/lookup/{key}`.
    pub fn lookup(&self, key: &str) -> Result<Document<Lookup>, ApiError> {
        check_key(key)?;
        self.get_json(&self.url(&path::lookup(key)))
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<Document<Status>, ApiError> {
        self.get_json(&self.url(path::STATUS))
    }

    /// `GET /v1/ring`.
    pub fn ring(&self) -> Result<Document<Ring>, ApiError> {
        self.get_json(&self.url(path::RING))
    }

    /// `POST /v1/groups/{g}/join`.
    pub fn join_group(&self, group: &str) -> Result<Document<GroupSummary>, ApiError> {
        check_group(group)?;
        self.post_json(&self.url(&path::group_join(group)), b"", &[StatusCode::OK])
    }

    /// `POST /v1/groups/{g}/leave`.
    pub fn leave_group(&self, group: &str) -> Result<Document<GroupLeft>, ApiError> {
        check_group(group)?;
        self.post_json(&self.url(&path::group_leave(group)), b"", &[StatusCode::OK])
    }

    /// `POST /v1/groups/{g}/messages[?from=LABEL]` with `message` as the body.
    pub fn send_to_group(
        &self,
        group: &str,
        message: &[u8],
        from: Option<&str>,
    ) -> Result<Document<GroupReceipt>, ApiError> {
        check_group(group)?;
        if let Some(from) = from {
            check_sender_label(from).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
        }
        // 201 is the contract; 200 would mean the same.
        self.post_json(
            &self.url(&path::group_send(group, from)),
            message,
            &[StatusCode::CREATED, StatusCode::OK],
        )
    }

    /// `GET /v1/groups`.
    pub fn groups(&self) -> Result<Document<GroupList>, ApiError> {
        self.get_json(&self.url(path::GROUPS))
    }

    /// `GET /v1/groups/{g}/tree`.
    pub fn group_tree(&self, group: &str) -> Result<Document<GroupTree>, ApiError> {
        check_group(group)?;
        self.get_json(&self.url(&path::group_tree(group)))
    }

    /// Opens `GET /v1/groups/{g}/messages[?from=SEQ]`. The connect time-out and, for the
    /// response's head, the request time-out apply; after that the stream has no read time-out
    /// (a quiet group is not a dead node: keep-alives arrive every 15 s), unless `limit` bounds
    /// the whole exchange.
    pub fn group_messages(
        &self,
        group: &str,
        from: Option<u64>,
        limit: Option<Duration>,
    ) -> Result<GroupStream, ApiError> {
        check_group(group)?;
        let url = self.url(&path::group_listen(group, from));
        let (events, agent) = self.open_stream(&url, limit)?;
        Ok(GroupStream(EventStream { url, limit, events, agent }))
    }

    /// Opens any event stream of the API (`GET path_and_query`, appended to the base URL as
    /// given), read with [`GroupStream::next_raw_event`]; time-outs as for
    /// [`Client::group_messages`].
    pub fn event_stream(
        &self,
        path_and_query: &str,
        limit: Option<Duration>,
    ) -> Result<GroupStream, ApiError> {
        let url = self.url(path_and_query);
        let (events, agent) = self.open_stream(&url, limit)?;
        Ok(GroupStream(EventStream { url, limit, events, agent }))
    }

    /// Opens an event stream at `url`: its events, and the agent that holds its connection.
    fn open_stream(
        &self,
        url: &str,
        limit: Option<Duration>,
    ) -> Result<(EventReader<ureq::BodyReader<'static>>, ureq::Agent), ApiError> {
        // An agent of its own, so that closing the stream (which shuts its agent down) touches
        // no other request; a stream holds its connection for its whole life, so it loses
        // nothing by not sharing the pool.
        let agent = ureq::Agent::new_with_config(self.agent.config().clone());
        let mut response = self
            .authorize(agent.get(url))
            .header("accept", "text/event-stream")
            .config()
            .timeout_global(limit)
            .timeout_recv_response(Some(self.timeout))
            .build()
            .call()
            .map_err(|e| self.transport_error(url, e))?;
        if response.status() != StatusCode::OK {
            return Err(rejection(url, response.status(), &mut response));
        }
        // Unlimited on purpose: a stream runs for as long as the caller listens; the event
        // reader bounds what it buffers.
        Ok((EventReader::new(response.into_body().into_reader()), agent))
    }

    /// `POST /v1/queues/{q}/messages` with `body`: appends it once the queue's replicas hold it.
    pub fn queue_put(&self, queue: &str, body: &[u8]) -> Result<Document<QueuePutReceipt>, ApiError> {
        check_queue(queue)?;
        self.post_json(&self.url(&path::queue_messages(queue, None)), body, &[StatusCode::OK])
    }

    /// `POST /v1/queues/{q}/take?wait=..&lease=..`: the first message, leased to this caller, or
    /// `None` when nothing came within `wait`.
    pub fn queue_take(
        &self,
        queue: &str,
        wait: Duration,
        lease: Duration,
    ) -> Result<Option<Document<QueueItem>>, ApiError> {
        check_queue(queue)?;
        let url = self.url(&path::queue_take(queue, wait.as_secs_f64(), lease.as_secs_f64()));
        let mut response = self
            .authorize(self.agent.post(&url))
            .config()
            .timeout_global(Some(wait + self.timeout))
            .build()
            .send(&b""[..])
            .map_err(|e| self.transport_error(&url, e))?;
        match response.status() {
            StatusCode::NO_CONTENT => Ok(None),
            StatusCode::OK => {
                let body = read_body(&url, &mut response)?;
                parse_document(&url, &body).map(Some)
            }
            status => Err(rejection(&url, status, &mut response)),
        }
    }

    /// `POST /v1/queues/{q}/ack`: removes a message a take returned.
    pub fn queue_ack(&self, queue: &str, item: &QueueItem) -> Result<Document<QueueAckReceipt>, ApiError> {
        check_queue(queue)?;
        let Some(lease) = item.lease else {
            return Err(ApiError::InvalidRequest(
                "only a taken message (with a lease) can be acknowledged".into(),
            ));
        };
        let body = QueueAck { id: item.id.clone(), lease, seq: item.seq };
        let body = serde_json::to_vec(&body).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
        let url = self.url(&path::queue_ack(queue));
        let mut response = self
            .authorize(self.agent.post(&url))
            .header("content-type", "application/json")
            .send(&body[..])
            .map_err(|e| self.transport_error(&url, e))?;
        if response.status() != StatusCode::OK {
            return Err(rejection(&url, response.status(), &mut response));
        }
        let body = read_body(&url, &mut response)?;
        parse_document(&url, &body)
    }

    /// `GET /v1/queues/{q}`.
    pub fn queue_stat(&self, queue: &str) -> Result<Document<QueueStat>, ApiError> {
        check_queue(queue)?;
        self.get_json(&self.url(&path::queue_stat(queue)))
    }

    /// Opens `GET /v1/queues/{q}/messages[?from=SEQ]`: every message put, as it is put, without
    /// taking it. Time-outs as for [`Client::group_messages`].
    pub fn queue_messages(
        &self,
        queue: &str,
        from: Option<u64>,
        limit: Option<Duration>,
    ) -> Result<QueueStream, ApiError> {
        check_queue(queue)?;
        let url = self.url(&path::queue_messages(queue, from));
        let (events, agent) = self.open_stream(&url, limit)?;
        Ok(QueueStream(EventStream { url, limit, events, agent }))
    }

    /// Sends `method` to `path_and_query` (appended to the base URL as given, not encoded) and
    /// returns whatever came back. GET and DELETE send no body. For tests that must send what
    /// the typed methods refuse to build; everything else should use those.
    pub fn raw(&self, method: &Method, path_and_query: &str, body: &[u8]) -> Result<RawResponse, ApiError> {
        let url = self.url(path_and_query);
        let sent = match *method {
            Method::GET => self.authorize(self.agent.get(&url)).call(),
            Method::DELETE => self.authorize(self.agent.delete(&url)).call(),
            Method::PUT => self.authorize(self.agent.put(&url)).send(body),
            Method::POST => self.authorize(self.agent.post(&url)).send(body),
            _ => return Err(ApiError::InvalidRequest(format!("no raw {method} requests"))),
        };
        let mut response = sent.map_err(|e| self.transport_error(&url, e))?;
        let status = response.status().as_u16();
        let body = read_body(&url, &mut response)?;
        Ok(RawResponse { status, body })
    }

    /// Adds the `Authorization` header when this client has a token.
    fn authorize<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(value) => request.header("authorization", value),
            None => request,
        }
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base_url)
    }

    fn post_json<T: DeserializeOwned>(
        &self,
        url: &str,
        body: &[u8],
        expected: &[StatusCode],
    ) -> Result<Document<T>, ApiError> {
        let mut response = self
            .authorize(self.agent.post(url))
            .header("content-type", "text/plain; charset=utf-8")
            .send(body)
            .map_err(|e| self.transport_error(url, e))?;
        if !expected.contains(&response.status()) {
            return Err(rejection(url, response.status(), &mut response));
        }
        let body = read_body(url, &mut response)?;
        parse_document(url, &body)
    }

    fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<Document<T>, ApiError> {
        let mut response =
            self.authorize(self.agent.get(url)).call().map_err(|e| self.transport_error(url, e))?;
        match response.status() {
            StatusCode::OK => {
                let body = read_body(url, &mut response)?;
                parse_document(url, &body)
            }
            status => Err(rejection(url, status, &mut response)),
        }
    }

    fn transport_error(&self, url: &str, error: ureq::Error) -> ApiError {
        classify_transport_error(&self.base_url, url, self.timeout, error)
    }
}

fn check_queue(queue: &str) -> Result<(), ApiError> {
    check_queue_name(queue).map_err(|e| ApiError::InvalidRequest(format!("invalid queue name: {e}")))
}

fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::InvalidRequest("a key must not be empty".to_owned()));
    }
    Ok(())
}

fn check_group(group: &str) -> Result<(), ApiError> {
    check_group_name(group).map_err(|e| ApiError::InvalidRequest(format!("invalid group name: {e}")))
}

/// Sorts a failed exchange into "could not connect" and everything else.
fn classify_transport_error(base_url: &str, url: &str, timeout: Duration, error: ureq::Error) -> ApiError {
    use std::io::ErrorKind;
    use ureq::Timeout;
    let unreachable = |reason: String| ApiError::Unreachable { url: base_url.to_owned(), reason };
    match error {
        ureq::Error::Io(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::NotFound
            ) =>
        {
            unreachable(e.kind().to_string())
        }
        ureq::Error::HostNotFound => unreachable("host not found".to_owned()),
        ureq::Error::ConnectionFailed => unreachable("connection failed".to_owned()),
        ureq::Error::Timeout(Timeout::Connect | Timeout::Resolve) => {
            unreachable(format!("no connection within {CONNECT_TIMEOUT:?}"))
        }
        ureq::Error::Timeout(_) => ApiError::TimedOut { url: base_url.to_owned(), after: timeout },
        other => ApiError::Protocol { url: url.to_owned(), reason: other.to_string() },
    }
}

fn read_body(url: &str, response: &mut ureq::http::Response<ureq::Body>) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    response
        .body_mut()
        .as_reader()
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::Protocol { url: url.to_owned(), reason: format!("reading the body: {e}") })?;
    Ok(body)
}

fn parse_document<T: DeserializeOwned>(url: &str, body: &[u8]) -> Result<Document<T>, ApiError> {
    Document::from_slice(body).map_err(|e| ApiError::Protocol { url: url.to_owned(), reason: e.to_string() })
}

/// A conditional write's error answer: 412 and 504 have their own variants.
fn conditional_rejection(
    key: &str,
    url: &str,
    status: StatusCode,
    response: &mut ureq::http::Response<ureq::Body>,
) -> ApiError {
    let body = read_body(url, response).unwrap_or_default();
    match status {
        StatusCode::PRECONDITION_FAILED => match serde_json::from_slice::<ConflictBody>(&body) {
            Ok(conflict) => {
                ApiError::Conflict { key: key.to_owned(), current_version: conflict.current_version }
            }
            Err(error) => {
                ApiError::Protocol { url: url.to_owned(), reason: format!("a 412 without its body: {error}") }
            }
        },
        StatusCode::GATEWAY_TIMEOUT => {
            ApiError::OutcomeUnknown { key: key.to_owned(), message: error_message(status, &body) }
        }
        status => status_error(status, &body),
    }
}

fn with_signature<B>(request: ureq::RequestBuilder<B>, signature: &Signature) -> ureq::RequestBuilder<B> {
    request
        .header(VERSION_HEADER, &signature.version)
        .header(SIGNER_HEADER, &signature.signer)
        .header(SIGNATURE_HEADER, &signature.signature)
}

/// A signed write's error: 409 is [`ApiError::Superseded`] (with the version held), the rest as
/// any other request's.
fn signed_rejection(
    key: &str,
    url: &str,
    status: StatusCode,
    response: &mut ureq::http::Response<ureq::Body>,
) -> ApiError {
    let body = read_body(url, response).unwrap_or_default();
    if status == StatusCode::CONFLICT
        && let Ok(ConflictBody { current_version: Some(held), .. }) = serde_json::from_slice(&body)
    {
        return ApiError::Superseded { key: key.to_owned(), held };
    }
    status_error(status, &body)
}

fn rejection(url: &str, status: StatusCode, response: &mut ureq::http::Response<ureq::Body>) -> ApiError {
    // A body that cannot be read still leaves the status, which is the important part.
    let body = read_body(url, response).unwrap_or_default();
    status_error(status, &body)
}

/// An error status with its body: 401 is [`ApiError::Unauthorized`], the rest
/// [`ApiError::Rejected`].
fn status_error(status: StatusCode, body: &[u8]) -> ApiError {
    match status {
        StatusCode::UNAUTHORIZED => ApiError::Unauthorized { message: error_message(status, body) },
        status => ApiError::Rejected { status, message: error_message(status, body) },
    }
}

/// The node's `{"error": "..."}` text, else the body as text, else the status' reason phrase;
/// always a single line so that a one-line error report stays one line.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    const MAX_CHARS: usize = 300;
    let text = match serde_json::from_slice::<crate::ErrorBody>(body) {
        Ok(parsed) => parsed.error,
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        return status.canonical_reason().unwrap_or("no reason given").to_owned();
    }
    one_line.chars().take(MAX_CHARS).collect()
}

/// Accepts `http://host:port`, `host:port` and trailing slashes; refuses other schemes because
/// the node API is plain HTTP.
pub fn normalize_base_url(input: &str) -> Result<String, ApiError> {
    let trimmed = input.trim().trim_end_matches('/');
    let with_scheme = if trimmed.contains("://") { trimmed.to_owned() } else { format!("http://{trimmed}") };
    let Some(authority) = with_scheme.strip_prefix("http://") else {
        return Err(ApiError::InvalidRequest(format!(
            "node URL {input:?} must use http:// (the node API does not speak TLS)"
        )));
    };
    if authority.is_empty() || authority.contains('/') {
        return Err(ApiError::InvalidRequest(format!(
            "node URL {input:?} must be http://HOST:PORT with no path, e.g. http://127.0.0.1:7001"
        )));
    }
    Ok(with_scheme)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::GroupEvent;

    fn client() -> Client {
        // Nothing listens on port 9 of loopback (discard); no test here connects.
        Client::new("127.0.0.1:9", Duration::from_secs(1), 1).expect("a valid base URL")
    }

    #[test]
    fn base_urls_are_normalised() {
        assert_eq!(normalize_base_url("127.0.0.1:7001").ok().as_deref(), Some("http://127.0.0.1:7001"));
        assert_eq!(
            normalize_base_url("http://localhost:7001/").ok().as_deref(),
            Some("http://localhost:7001")
        );
        assert!(normalize_base_url("https://127.0.0.1:7001").is_err());
        assert!(normalize_base_url("http://127.0.0.1:7001/v1").is_err());
        assert!(normalize_base_url("").is_err());
    }

    #[test]
    fn error_messages_come_from_the_json_body_on_one_line() {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(error_message(status, br#"{"error":"no quorum:\n1 of 2"}"#), "no quorum: 1 of 2");
        assert_eq!(error_message(status, b"plain text"), "plain text");
        assert_eq!(error_message(status, b""), "Service Unavailable");
    }

    #[test]
    fn bad_requests_are_refused_before_they_are_sent() {
        let client = client();
        let refused = |result: Result<(), ApiError>| match result {
            Err(ApiError::InvalidRequest(reason)) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(refused(client.get("", None).map(drop)), "a key must not be empty");
        assert_eq!(refused(client.lookup("").map(drop)), "a key must not be empty");
        assert_eq!(
            refused(client.join_group("").map(drop)),
            "invalid group name: must be 1 to 128 bytes, not 0"
        );
        assert_eq!(
            refused(client.group_tree("a\u{1b}b").map(drop)),
            "invalid group name: must not contain control characters"
        );
        assert_eq!(
            refused(client.send_to_group("g", b"hi", Some("a\nb")).map(drop)),
            "from must be at most 256 bytes without control characters"
        );
        assert!(matches!(client.raw(&Method::PATCH, "/v1/status", b""), Err(ApiError::InvalidRequest(_))));
    }

    #[test]
    fn documents_keep_fields_the_types_do_not_know() {
        let body = br#"{"complete":true,"nodes":[],"extra":1}"#;
        let document = parse_document::<Ring>("u", body).expect("a ring");
        assert!(document.parsed.complete);
        assert_eq!(document.raw["extra"], 1);
        let missing = parse_document::<Ring>("u", br#"{"nodes":[]}"#).expect_err("complete is required");
        assert!(matches!(missing, ApiError::Protocol { ref reason, .. } if reason.contains("complete")));
    }

    /// Serves one event-stream response on 127.0.0.1: the head, `chunk` as one chunk, then
    /// holds the connection open until the test ends it. Returns the port and the request line.
    fn serve_stream(chunk: &'static str) -> (u16, std::sync::mpsc::Receiver<String>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("bound").port();
        let (request_line, requested) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (socket, _) = listener.accept().expect("the client connects");
            let mut reader = BufReader::new(&socket);
            let mut line = String::new();
            reader.read_line(&mut line).expect("a request line");
            let _ = request_line.send(line.trim_end().to_owned());
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            let body = format!("{:x}\r\n{chunk}\r\n", chunk.len());
            (&socket).write_all(format!("{head}{body}").as_bytes()).expect("the client reads");
            // Hold the connection until the client closes it.
            let _ = reader.read_line(&mut line);
        });
        (port, requested)
    }

    #[test]
    fn a_token_goes_in_every_request_header_and_never_in_debug() {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("bound").port();
        let server = std::thread::spawn(move || {
            let (socket, _) = listener.accept().expect("the client connects");
            let mut reader = BufReader::new(&socket);
            let mut head = Vec::new();
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                head.push(line.trim_end().to_ascii_lowercase());
                line.clear();
            }
            let body = r#"{"error":"the API token is not this node's"}"#;
            let answer = format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            (&socket).write_all(answer.as_bytes()).expect("the client reads");
            head
        });
        let client = Client::new(&format!("127.0.0.1:{port}"), Duration::from_secs(5), 1)
            .expect("a client")
            .with_token(Some("s3cret"));
        assert!(!format!("{client:?}").contains("s3cret"));
        let refused = client.ring().expect_err("a 401");
        assert!(
            matches!(refused, ApiError::Unauthorized { ref message } if message == "the API token is not this node's"),
            "{refused:?}"
        );
        let head = server.join().expect("the server thread");
        assert!(head.contains(&"authorization: bearer s3cret".to_owned()), "{head:?}");
    }

    #[test]
    fn a_stream_yields_typed_events_and_can_be_closed_from_another_thread() {
        let (port, requested) = serve_stream(
            ": keep-alive\n\nevent: message\ndata: {\"body\":\"hi\",\"from\":\"a\",\"group\":\"a b\",\"seq\":3,\"ts\":1}\n\n",
        );
        let client = Client::new(&format!("127.0.0.1:{port}"), Duration::from_secs(5), 1).expect("a client");
        let mut stream = client.group_messages("a b", Some(3), None).expect("the stream opens");
        let request = requested.recv_timeout(Duration::from_secs(5)).expect("a request");
        assert_eq!(request, "GET /v1/groups/a%20b/messages?from=3 HTTP/1.1");
        let Ok(Some(GroupEvent::Message(message))) = stream.next_event() else { panic!("a message") };
        assert_eq!((message.parsed.seq, message.parsed.body.as_str()), (3, "hi"));

        // The next read blocks: the server sends nothing more. Closing ends it at once.
        let closer = stream.closer();
        let (ended, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = ended.send(stream.next_event().map(|event| event.is_some()));
        });
        std::thread::sleep(Duration::from_millis(100));
        closer.close();
        let result = result.recv_timeout(Duration::from_secs(5)).expect("the blocked read returns");
        assert!(result.is_err(), "a closed stream reports an error, not an end: {result:?}");
    }
}
