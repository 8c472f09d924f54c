//! Typed, blocking client of one overlay-node's HTTP API (`/v1/...`).
//!
//! Owns: building request URLs (percent-encoding keys as path segments), mapping HTTP answers
//! onto [`ApiError`] variants the CLI turns into exit codes, and the serde shapes of the node's
//! JSON documents. It holds no protocol logic: every decision is the node's.
//!
//! JSON answers are kept twice in a [`Document`]: the typed view for human output and the raw
//! value for `--json`, so the CLI prints exactly what the node said instead of a re-serialised
//! subset that would silently drop fields the node adds later.

use std::collections::VecDeque;
use std::fmt;
use std::io::Read;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use ureq::http::StatusCode;

use crate::sse::{SseEvent, SseParser};

/// Largest response body the client reads. The node caps values (1 MiB by default); this only
/// guards the CLI against a misbehaving server, so it is far above any sane cap.
const MAX_RESPONSE_BYTES: u64 = 1 << 30;

/// Connecting to a node on loopback either works at once or not at all; a short connect
/// time-out makes "node not running" fail fast while slow quorum operations still get the
/// request time-out.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Read/write consistency a request asks the node for (`?consistency=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Consistency {
    /// One replica answers.
    One,
    /// A majority of the replica set answers.
    Quorum,
    /// Every replica answers.
    All,
}

impl Consistency {
    fn as_query_value(self) -> &'static str {
        match self {
            Consistency::One => "one",
            Consistency::Quorum => "quorum",
            Consistency::All => "all",
        }
    }
}

/// Why a request to the node failed; the CLI maps these onto exit codes.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// No connection could be made: the node is not running, or the URL is wrong.
    #[error("cannot reach the node at {url} ({reason})")]
    Unreachable { url: String, reason: String },
    /// Connected, but the node did not answer in time.
    #[error("the node at {url} did not answer within {after:?}")]
    TimedOut { url: String, after: Duration },
    /// The key has no live value (GET/DELETE answered 404).
    #[error("key {key:?} not found")]
    KeyNotFound { key: String },
    /// The node answered with an error status; `message` is its `{"error": ...}` text.
    #[error("the node answered {status}: {message}")]
    Rejected { status: StatusCode, message: String },
    /// The node answered something that does not follow the API contract.
    #[error("unexpected answer from {url}: {reason}")]
    Protocol { url: String, reason: String },
    /// The request could not even be formed (bad base URL, empty key).
    #[error("{0}")]
    InvalidRequest(String),
}

/// A node as the API describes it (owner, replica, successor, finger, ring member).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct NodeInfo {
    pub(crate) peer_id: String,
    pub(crate) ring_id: String,
    #[serde(default)]
    pub(crate) addr: String,
}

/// `GET /v1/status`. Fields the human view can live without default, so a node that omits one
/// still gets a readable status rather than a parse error.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Status {
    pub(crate) peer_id: String,
    pub(crate) ring_id: String,
    #[serde(default)]
    pub(crate) addresses: Vec<String>,
    #[serde(default)]
    pub(crate) http: String,
    #[serde(default)]
    pub(crate) member: bool,
    #[serde(default)]
    pub(crate) predecessor: Option<NodeInfo>,
    #[serde(default)]
    pub(crate) successors: Vec<NodeInfo>,
    #[serde(default)]
    pub(crate) fingers: Vec<Finger>,
    #[serde(default)]
    pub(crate) keys: u64,
    #[serde(default)]
    pub(crate) bytes: u64,
    #[serde(default)]
    pub(crate) uptime_s: f64,
    #[serde(default)]
    pub(crate) version: String,
}

/// One distinct finger-table entry of `GET /v1/status`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Finger {
    pub(crate) index: u32,
    pub(crate) node: NodeInfo,
}

/// `GET /v1/ring`: members in ring order starting at the answering node.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Ring {
    pub(crate) nodes: Vec<NodeInfo>,
    #[serde(default)]
    pub(crate) complete: bool,
}

/// `GET /v1/lookup/{key}`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Lookup {
    pub(crate) key: String,
    pub(crate) key_id: String,
    pub(crate) owner: NodeInfo,
    #[serde(default)]
    pub(crate) replicas: Vec<NodeInfo>,
    pub(crate) hops: u32,
}

/// Answer to `PUT /v1/kv/{key}`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PutReceipt {
    pub(crate) key: String,
    /// The contract does not fix the version's JSON type (number, string or object), so it is
    /// kept as JSON and shown as-is.
    pub(crate) version: serde_json::Value,
    pub(crate) replicas_acked: u32,
}

/// Answer to `POST /v1/groups/{g}/join` and `.../leave`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct GroupMembership {
    pub(crate) group: String,
    pub(crate) member: bool,
    /// `root`, `forwarder` or `member`; absent after a leave.
    #[serde(default)]
    pub(crate) role: Option<String>,
}

/// Answer to `POST /v1/groups/{g}/messages`: the sequence number the group's root stamped.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct GroupReceipt {
    pub(crate) group: String,
    pub(crate) seq: u64,
}

/// `GET /v1/groups`: the groups this node takes part in.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct GroupList {
    #[serde(default)]
    pub(crate) groups: Vec<GroupSummary>,
}

/// One group of `GET /v1/groups`, as this node sees it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct GroupSummary {
    pub(crate) group: String,
    #[serde(default)]
    pub(crate) group_id: String,
    /// `root`, `forwarder` or `member`, kept as text so a role added later still shows.
    pub(crate) role: String,
    #[serde(default)]
    pub(crate) member: bool,
    #[serde(default)]
    pub(crate) listeners: u64,
    #[serde(default)]
    pub(crate) head_seq: Option<u64>,
    #[serde(default)]
    pub(crate) parent: Option<NodeInfo>,
    #[serde(default)]
    pub(crate) children: Vec<NodeInfo>,
}

/// `GET /v1/groups/{g}/tree`: the group's tree, breadth-first from the root.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct GroupTree {
    pub(crate) group: String,
    #[serde(default)]
    pub(crate) group_id: String,
    pub(crate) root: NodeInfo,
    #[serde(default)]
    pub(crate) complete: bool,
    #[serde(default)]
    pub(crate) nodes: Vec<TreeNode>,
}

/// One node of a [`GroupTree`]; `parent` and `children` are peer ids.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct TreeNode {
    pub(crate) node: NodeInfo,
    #[serde(default)]
    pub(crate) parent: Option<String>,
    #[serde(default)]
    pub(crate) depth: u32,
    pub(crate) role: String,
    #[serde(default)]
    pub(crate) member: bool,
    #[serde(default)]
    pub(crate) children: Vec<String>,
}

/// One `event: message` of a group's stream. The human view needs only these fields; `group`
/// and `ts` (milliseconds since the Unix epoch when it was sent) are in the raw document.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct GroupMessage {
    pub(crate) seq: u64,
    pub(crate) from: String,
    pub(crate) body: String,
}

/// One `event: gap` of a group's stream: messages `from..=to` are no longer in the history.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct GroupGap {
    /// Empty if the node left it out; the caller knows which group it listens to.
    #[serde(default)]
    pub(crate) group: String,
    pub(crate) from: u64,
    pub(crate) to: u64,
}

/// What a group's stream delivers.
#[derive(Debug, Clone)]
pub(crate) enum GroupEvent {
    Message(Document<GroupMessage>),
    Gap(Document<GroupGap>),
    /// An `event: error` (`{"error": "..."}`): the node gives up on this stream, e.g. because the
    /// listener fell too far behind, and ends it next.
    Error(String),
    /// A `message` or `gap` event whose data does not follow the contract. The stream itself is
    /// still usable; whether to go on is the caller's choice.
    Unreadable {
        event: String,
        reason: String,
    },
}

/// An open `GET /v1/groups/{g}/messages` stream. While it is open the node is a member of the
/// group; dropping it closes the connection.
pub(crate) struct GroupStream {
    url: String,
    limit: Option<Duration>,
    reader: ureq::BodyReader<'static>,
    parser: SseParser,
    /// Events parsed but not yet returned, oldest first.
    pending: VecDeque<SseEvent>,
    buffer: Box<[u8]>,
}

impl fmt::Debug for GroupStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupStream").field("url", &self.url).finish_non_exhaustive()
    }
}

impl GroupStream {
    /// The next message or gap; `Ok(None)` when the node ended the stream. Blocks until one
    /// arrives (keep-alive comments are consumed silently), or until the stream's time limit.
    pub(crate) fn next_event(&mut self) -> Result<Option<GroupEvent>, ApiError> {
        loop {
            while let Some(event) = self.pending.pop_front() {
                if let Some(event) = interpret_group_event(event) {
                    return Ok(Some(event));
                }
            }
            let read = match self.reader.read(&mut self.buffer) {
                Ok(0) => return Ok(None),
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(ApiError::TimedOut {
                        url: self.url.clone(),
                        after: self.limit.unwrap_or_default(),
                    });
                }
                Err(e) => {
                    return Err(ApiError::Protocol {
                        url: self.url.clone(),
                        reason: format!("the stream broke: {e}"),
                    });
                }
            };
            let mut parsed = Vec::new();
            let result = self.parser.feed(&self.buffer[..read], &mut parsed);
            self.pending.extend(parsed);
            if let Err(e) = result {
                return Err(ApiError::Protocol { url: self.url.clone(), reason: e.to_string() });
            }
        }
    }
}

/// Turns one server-sent event into a [`GroupEvent`]; events of other names are skipped
/// (`None`), so a node that adds kinds of events does not break older clients.
pub(crate) fn interpret_group_event(event: SseEvent) -> Option<GroupEvent> {
    fn parse<T: DeserializeOwned>(data: &str) -> Result<Document<T>, String> {
        let raw: serde_json::Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
        let parsed = T::deserialize(&raw).map_err(|e| e.to_string())?;
        Ok(Document { parsed, raw })
    }
    let result = match event.event.as_str() {
        "message" => parse(&event.data).map(GroupEvent::Message),
        "gap" => parse(&event.data).map(GroupEvent::Gap),
        "error" => {
            #[derive(Deserialize)]
            struct ErrorData {
                error: String,
            }
            let message =
                serde_json::from_str::<ErrorData>(&event.data).map_or(event.data, |data| data.error);
            Ok(GroupEvent::Error(message.split_whitespace().collect::<Vec<_>>().join(" ")))
        }
        _ => return None,
    };
    Some(result.unwrap_or_else(|reason| GroupEvent::Unreadable { event: event.event, reason }))
}

/// A JSON answer, typed for humans and raw for `--json`.
#[derive(Debug, Clone)]
pub(crate) struct Document<T> {
    pub(crate) parsed: T,
    pub(crate) raw: serde_json::Value,
}

/// The value of a key as `GET /v1/kv/{key}` returned it.
#[derive(Debug, Clone)]
pub(crate) struct StoredValue {
    pub(crate) value: Vec<u8>,
    /// The `x-overlay-version` header, when the node sent one.
    pub(crate) version: Option<String>,
}

/// Whether a PUT created the key (201) or overwrote it (200).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PutOutcome {
    Created,
    Overwritten,
}

/// Blocking client of one node. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub(crate) struct NodeClient {
    base_url: String,
    timeout: Duration,
    agent: ureq::Agent,
}

impl fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeClient").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

impl NodeClient {
    /// A client of the node at `base_url` whose requests each give up after `timeout`.
    /// `idle_connections` bounds the kept-alive connections (the bench raises it to its
    /// concurrency so every worker reuses its connection).
    pub(crate) fn new(base_url: &str, timeout: Duration, idle_connections: usize) -> Result<Self, ApiError> {
        let base_url = normalize_base_url(base_url)?;
        let config = ureq::Agent::config_builder()
            // Error statuses carry the node's `{"error": ...}` body; we map them ourselves.
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(timeout))
            .max_idle_connections(idle_connections.max(1))
            .max_idle_connections_per_host(idle_connections.max(1))
            .build();
        Ok(NodeClient { base_url, timeout, agent: ureq::Agent::new_with_config(config) })
    }

    /// The normalised base URL, e.g. `http://127.0.0.1:7001`.
    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /v1/kv/{key}`.
    pub(crate) fn get(&self, key: &str, consistency: Option<Consistency>) -> Result<StoredValue, ApiError> {
        let url = kv_url(&self.base_url, key, consistency)?;
        self.get_url(key, &url)
    }

    /// This node's own copy of `key`, without asking the other replicas (`?local=true`).
    pub(crate) fn get_local(&self, key: &str) -> Result<StoredValue, ApiError> {
        let url = format!("{}?local=true", kv_url(&self.base_url, key, None)?);
        self.get_url(key, &url)
    }

    fn get_url(&self, key: &str, url: &str) -> Result<StoredValue, ApiError> {
        let url = url.to_owned();
        let mut response = self.agent.get(&url).call().map_err(|e| self.transport_error(&url, e))?;
        match response.status() {
            StatusCode::OK => {
                let version = response
                    .headers()
                    .get("x-overlay-version")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let value = read_body(&url, &mut response)?;
                Ok(StoredValue { value, version })
            }
            StatusCode::NOT_FOUND => Err(ApiError::KeyNotFound { key: key.to_owned() }),
            status => Err(rejection(&url, status, &mut response)),
        }
    }

    /// `PUT /v1/kv/{key}` with `value` as the raw body.
    pub(crate) fn put(
        &self,
        key: &str,
        value: &[u8],
        consistency: Option<Consistency>,
    ) -> Result<(PutOutcome, Document<PutReceipt>), ApiError> {
        let url = kv_url(&self.base_url, key, consistency)?;
        let mut response = self
            .agent
            .put(&url)
            .header("content-type", "application/octet-stream")
            .send(value)
            .map_err(|e| self.transport_error(&url, e))?;
        let outcome = match response.status() {
            StatusCode::CREATED => PutOutcome::Created,
            StatusCode::OK => PutOutcome::Overwritten,
            status => return Err(rejection(&url, status, &mut response)),
        };
        let body = read_body(&url, &mut response)?;
        Ok((outcome, parse_document(&url, &body)?))
    }

    /// `DELETE /v1/kv/{key}`.
    pub(crate) fn delete(&self, key: &str, consistency: Option<Consistency>) -> Result<(), ApiError> {
        let url = kv_url(&self.base_url, key, consistency)?;
        let mut response = self.agent.delete(&url).call().map_err(|e| self.transport_error(&url, e))?;
        match response.status() {
            // 204 is the contract; 200 is accepted too because it means the same thing.
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            StatusCode::NOT_FOUND => Err(ApiError::KeyNotFound { key: key.to_owned() }),
            status => Err(rejection(&url, status, &mut response)),
        }
    }

    /// `GET /v1/lookup/{key}`.
    pub(crate) fn lookup(&self, key: &str) -> Result<Document<Lookup>, ApiError> {
        let url = format!("{}/v1/lookup/{}", self.base_url, encode_key(key)?);
        self.get_json(&url)
    }

    /// `GET /v1/status`.
    pub(crate) fn status(&self) -> Result<Document<Status>, ApiError> {
        self.get_json(&format!("{}/v1/status", self.base_url))
    }

    /// `GET /v1/ring`.
    pub(crate) fn ring(&self) -> Result<Document<Ring>, ApiError> {
        self.get_json(&format!("{}/v1/ring", self.base_url))
    }

    /// `POST /v1/groups/{g}/join`.
    pub(crate) fn join_group(&self, group: &str) -> Result<Document<GroupMembership>, ApiError> {
        self.post_json(&group_url(&self.base_url, group, "/join")?, b"", &[StatusCode::OK])
    }

    /// `POST /v1/groups/{g}/leave`.
    pub(crate) fn leave_group(&self, group: &str) -> Result<Document<GroupMembership>, ApiError> {
        self.post_json(&group_url(&self.base_url, group, "/leave")?, b"", &[StatusCode::OK])
    }

    /// `POST /v1/groups/{g}/messages[?from=NAME]` with `message` as the body.
    pub(crate) fn send_to_group(
        &self,
        group: &str,
        message: &[u8],
        from: Option<&str>,
    ) -> Result<Document<GroupReceipt>, ApiError> {
        let mut url = group_url(&self.base_url, group, "/messages")?;
        if let Some(from) = from {
            url.push_str("?from=");
            url.push_str(&encode_path_segment(from));
        }
        // 201 is the contract; 200 would mean the same.
        self.post_json(&url, message, &[StatusCode::CREATED, StatusCode::OK])
    }

    /// `GET /v1/groups`.
    pub(crate) fn groups(&self) -> Result<Document<GroupList>, ApiError> {
        self.get_json(&format!("{}/v1/groups", self.base_url))
    }

    /// `GET /v1/groups/{g}/tree`.
    pub(crate) fn group_tree(&self, group: &str) -> Result<Document<GroupTree>, ApiError> {
        self.get_json(&group_url(&self.base_url, group, "/tree")?)
    }

    /// Opens `GET /v1/groups/{g}/messages[?from=SEQ]`. The connect time-out and, for the
    /// response's head, the request time-out apply; after that the stream has no read time-out
    /// (a quiet group is not a dead node: keep-alives arrive every 15 s), unless `limit` bounds
    /// the whole exchange, as the demo does.
    pub(crate) fn group_messages(
        &self,
        group: &str,
        from: Option<u64>,
        limit: Option<Duration>,
    ) -> Result<GroupStream, ApiError> {
        let mut url = group_url(&self.base_url, group, "/messages")?;
        if let Some(from) = from {
            url.push_str(&format!("?from={from}"));
        }
        let response = self
            .agent
            .get(&url)
            .header("accept", "text/event-stream")
            .config()
            .timeout_global(limit)
            .timeout_recv_response(Some(self.timeout))
            .build()
            .call()
            .map_err(|e| self.transport_error(&url, e))?;
        let mut response = response;
        if response.status() != StatusCode::OK {
            return Err(rejection(&url, response.status(), &mut response));
        }
        // Unlimited on purpose: a stream runs for as long as the user listens; the parser
        // bounds what it buffers.
        let reader = response.into_body().into_reader();
        Ok(GroupStream {
            url,
            limit,
            reader,
            parser: SseParser::new(),
            pending: VecDeque::new(),
            buffer: vec![0; 16 * 1024].into_boxed_slice(),
        })
    }

    fn post_json<T: DeserializeOwned>(
        &self,
        url: &str,
        body: &[u8],
        expected: &[StatusCode],
    ) -> Result<Document<T>, ApiError> {
        let mut response = self
            .agent
            .post(url)
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
        let mut response = self.agent.get(url).call().map_err(|e| self.transport_error(url, e))?;
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

/// Sorts a failed exchange into "could not connect" (exit 2 at the CLI) and everything else.
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
    let protocol = |e: serde_json::Error| ApiError::Protocol { url: url.to_owned(), reason: e.to_string() };
    let raw: serde_json::Value = serde_json::from_slice(body).map_err(protocol)?;
    let parsed = T::deserialize(&raw).map_err(protocol)?;
    Ok(Document { parsed, raw })
}

fn rejection(url: &str, status: StatusCode, response: &mut ureq::http::Response<ureq::Body>) -> ApiError {
    // A body we cannot read still leaves the status, which is the important part.
    let body = read_body(url, response).unwrap_or_default();
    ApiError::Rejected { status, message: error_message(status, &body) }
}

/// The node's `{"error": "..."}` text, else the body as text, else the status' reason phrase;
/// always a single line so the CLI's one-line error stays one line.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    const MAX_CHARS: usize = 300;
    let text = match serde_json::from_slice::<ErrorBody>(body) {
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
pub(crate) fn normalize_base_url(input: &str) -> Result<String, ApiError> {
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

/// `{base}/v1/kv/{key}[?consistency=..]`.
pub(crate) fn kv_url(
    base_url: &str,
    key: &str,
    consistency: Option<Consistency>,
) -> Result<String, ApiError> {
    let mut url = format!("{base_url}/v1/kv/{}", encode_key(key)?);
    if let Some(consistency) = consistency {
        url.push_str("?consistency=");
        url.push_str(consistency.as_query_value());
    }
    Ok(url)
}

/// `{base}/v1/groups/{group}{suffix}`, the group percent-encoded as one path segment.
pub(crate) fn group_url(base_url: &str, group: &str, suffix: &str) -> Result<String, ApiError> {
    if group.is_empty() {
        return Err(ApiError::InvalidRequest("a group name must not be empty".to_owned()));
    }
    Ok(format!("{base_url}/v1/groups/{}{suffix}", encode_path_segment(group)))
}

fn encode_key(key: &str) -> Result<String, ApiError> {
    if key.is_empty() {
        return Err(ApiError::InvalidRequest("a key must not be empty".to_owned()));
    }
    Ok(encode_path_segment(key))
}

/// Percent-encodes `segment` so it stays one path segment: every byte except RFC 3986
/// unreserved characters is encoded. `.` and `..` are encoded whole, because clients and
/// proxies remove such dot-segments from paths before the node would see them.
pub(crate) fn encode_path_segment(segment: &str) -> String {
    if segment == "." || segment == ".." {
        return "%2E".repeat(segment.len());
    }
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreserved_characters_pass_through() {
        assert_eq!(encode_path_segment("Key-1.2_three~"), "Key-1.2_three~");
    }

    #[test]
    fn reserved_and_non_ascii_bytes_are_encoded() {
        assert_eq!(encode_path_segment("a/b"), "a%2Fb");
        assert_eq!(encode_path_segment("a b?c#d%e"), "a%20b%3Fc%23d%25e");
        assert_eq!(encode_path_segment("ü"), "%C3%BC");
        assert_eq!(encode_path_segment("+&="), "%2B%26%3D");
    }

    #[test]
    fn dot_segments_are_encoded_whole() {
        assert_eq!(encode_path_segment("."), "%2E");
        assert_eq!(encode_path_segment(".."), "%2E%2E");
        assert_eq!(encode_path_segment("..."), "...");
    }

    #[test]
    fn kv_url_adds_consistency_only_when_asked() {
        let base = "http://127.0.0.1:7001";
        assert_eq!(kv_url(base, "a/b", None).ok().as_deref(), Some("http://127.0.0.1:7001/v1/kv/a%2Fb"));
        assert_eq!(
            kv_url(base, "k", Some(Consistency::Quorum)).ok().as_deref(),
            Some("http://127.0.0.1:7001/v1/kv/k?consistency=quorum")
        );
        assert!(matches!(kv_url(base, "", None), Err(ApiError::InvalidRequest(_))));
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
    fn group_events_are_read_by_name() {
        let event = |name: &str, data: &str| SseEvent { event: name.to_owned(), data: data.to_owned() };
        let message = r#"{"group":"g","seq":17,"from":"alice","body":"hello","ts":1763877600123}"#;
        let Some(GroupEvent::Message(message)) = interpret_group_event(event("message", message)) else {
            panic!("a message")
        };
        assert_eq!((message.parsed.seq, message.parsed.from.as_str()), (17, "alice"));
        assert_eq!(message.raw["ts"], 1_763_877_600_123u64);
        let gap = interpret_group_event(event("gap", r#"{"from":3,"to":9}"#));
        assert!(matches!(gap, Some(GroupEvent::Gap(ref gap)) if (gap.parsed.from, gap.parsed.to) == (3, 9)));
        let error = interpret_group_event(event("error", r#"{"error":"fell\nbehind"}"#));
        assert!(matches!(error, Some(GroupEvent::Error(ref text)) if text == "fell behind"), "{error:?}");
        let broken = interpret_group_event(event("message", r#"{"seq":"x"}"#));
        assert!(matches!(broken, Some(GroupEvent::Unreadable { ref event, .. }) if event == "message"));
        assert!(interpret_group_event(event("presence", "{}")).is_none());
    }

    #[test]
    fn status_parses_with_optional_fields_missing() {
        let body = br#"{"peer_id":"p","ring_id":"00","predecessor":null,"extra":1}"#;
        let document = parse_document::<Status>("u", body);
        let Ok(document) = document else { panic!("status should parse: {document:?}") };
        assert_eq!(document.parsed.peer_id, "p");
        assert!(document.parsed.predecessor.is_none());
        assert_eq!(document.raw["extra"], 1);
    }
}
