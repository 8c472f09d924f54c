//! The node's HTTP/JSON API: keys, lookups, status, the ring, multicast groups, queues ([`queues`]),
//! and metrics.
//!
//! Handlers only translate between HTTP and [`Command`]s sent to the event loop over a bounded
//! channel; errors are `{"error": "..."}` with a status that says what to do (413 too large, 404
//! missing, 503 retry later). Every JSON document, and the rules for group names and sender
//! labels, are `overlay_api`'s, shared with the CLI and the tests; this module only fills them in
//! from the event loop's answers. Who may ask is [`api_token`]'s concern: a layer in front of
//! every route. How many connections and group listeners are served at once, and how long a
//! client may take to send a request, is [`serve`]'s.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use dht::NodeRef;
use dht::signed::SignatureError;
use dht::store::{Consistency, Owner, Record, Version};
use futures::{Stream, StreamExt};
use overlay_api::groups::{ERROR_EVENT, GAP_EVENT, MESSAGE_EVENT};
use overlay_api::{
    CURRENT_VERSION_HEADER, ConflictBody, ErrorBody, Finger, GroupGap, GroupLeft, GroupList, GroupMessage,
    GroupReceipt, GroupSummary, GroupTree, Lookup, NodeInfo, PutReceipt, Ring, RingMember, SIGNATURE_HEADER,
    SIGNER_HEADER, TreeNode, VERSION_HEADER,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::address::PeerAddr;
use crate::api_token::{self, ApiToken};
use crate::event_loop::{Command, Expect, KvError, Located, RingWalk, Status, Written};
use crate::groups::{self, GroupError, GroupItem, GroupView, HistoryItem, Merge, Subscription, TreeView};
use crate::metrics;
use crate::page;
use crate::serve;

mod queues;

// The API documents the protocol's limits; were they to drift apart, the node would refuse what
// its documentation allows, or the reverse.
const _: () = {
    assert!(overlay_api::MAX_GROUP_NAME_BYTES == dht::multicast::MAX_GROUP_NAME_BYTES);
    assert!(overlay_api::MAX_SENDER_LABEL_BYTES == dht::multicast::MAX_FROM_BYTES);
    assert!(overlay_api::MAX_MESSAGE_BYTES == groups::MAX_BODY_BYTES);
};

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// The event loop's command channel.
    pub commands: mpsc::Sender<Command>,
    /// The address the API is served at, reported in status.
    pub http: String,
    /// Requests refused for want of the token ([`api_token`]), for `/metrics`.
    pub refusals: Arc<api_token::Refusals>,
    /// The bounds on connections and event streams ([`serve`]), for `listen` and `/metrics`.
    pub limits: Arc<serve::Limits>,
    /// The node's chat state (`crate::chat`), for the `/v1/chat` routes.
    pub chat: Arc<crate::chat::Chat>,
}

/// The API's routes. Bodies larger than `max_value_bytes` are refused with 413 before they are
/// read in full. With a `token`, every route but the open ones
/// ([`overlay_api::auth::OPEN_PATHS`]) needs it as a bearer token ([`api_token`]).
pub fn router(state: ApiState, max_value_bytes: usize, token: Option<ApiToken>) -> Router {
    let refusals = state.refusals.clone();
    let routes = Router::new()
        .route("/v1/kv/{key}", get(get_key).put(put_key).delete(delete_key))
        .route("/v1/lookup/{key}", get(lookup))
        .route("/v1/status", get(status))
        .route("/v1/ring", get(ring))
        .route("/v1/groups", get(list_groups))
        .route("/v1/groups/{group}/join", post(join_group))
        .route("/v1/groups/{group}/leave", post(leave_group))
        .route("/v1/groups/{group}/messages", post(send_message).get(listen))
        .route("/v1/groups/{group}/tree", get(group_tree))
        .merge(crate::chat::http::routes())
        .route("/v1/queues/{queue}", get(queues::stat))
        .route("/v1/queues/{queue}/messages", post(queues::put).get(queues::listen))
        .route("/v1/queues/{queue}/take", post(queues::take))
        .route("/v1/queues/{queue}/ack", post(queues::ack))
        .route("/metrics", get(metrics))
        .route("/", get(page::index))
        .route("/page.js", get(page::script))
        .route("/page.css", get(page::style))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such route; the API is under /v1/".into()) })
        .layer(DefaultBodyLimit::max(max_value_bytes))
        .with_state(state);
    match token {
        // The outermost layer, so a refused request is answered before anything reads its body.
        Some(token) => {
            let guard = api_token::Guard { token: Arc::new(token), refusals };
            routes.layer(middleware::from_fn_with_state(guard, api_token::require_token))
        }
        None => routes,
    }
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<KvError> for ApiError {
    fn from(error: KvError) -> Self {
        let status = match &error {
            KvError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            KvError::KeyTooLarge { .. } => StatusCode::BAD_REQUEST,
            KvError::NoQuorum { .. }
            | KvError::Contended { .. }
            | KvError::Lookup(_)
            | KvError::Busy
            | KvError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            KvError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            KvError::Signature(SignatureError::Malformed | SignatureError::Unexpected)
            | KvError::SignedKeyCas
            | KvError::FromTheFuture { .. } => StatusCode::BAD_REQUEST,
            KvError::Signature(_) | KvError::NotOwner => StatusCode::FORBIDDEN,
            // Signed-write handlers answer this themselves with the version held (`superseded`).
            KvError::Superseded { .. } => StatusCode::CONFLICT,
            // Handlers of conditional writes answer a conflict themselves (`conflict`); this is
            // the bare status for any other path.
            KvError::Conflict { .. } => StatusCode::PRECONDITION_FAILED,
            // Like a handler time-out: the write may or may not have happened.
            KvError::OutcomeUnknown => StatusCode::GATEWAY_TIMEOUT,
        };
        ApiError(status, error.to_string())
    }
}

/// One path segment (a key or a group name), refused with a JSON error when it is not valid
/// percent-encoded UTF-8.
struct Segment(String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(segment)) => Ok(Segment(segment)),
            Err(rejection) => Err(ApiError(rejection.status(), rejection.body_text())),
        }
    }
}

impl From<GroupError> for ApiError {
    fn from(error: GroupError) -> Self {
        let status = match &error {
            GroupError::InvalidName(_) | GroupError::Invalid(_) => StatusCode::BAD_REQUEST,
            GroupError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GroupError::NoTree(_) => StatusCode::NOT_FOUND,
            GroupError::Unreachable(_) | GroupError::Busy(_) | GroupError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        ApiError(status, error.to_string())
    }
}

impl From<overlay_api::InvalidGroupName> for ApiError {
    fn from(error: overlay_api::InvalidGroupName) -> Self {
        GroupError::InvalidName(error.to_string()).into()
    }
}

#[derive(Debug, Deserialize)]
struct KvQuery {
    consistency: Option<String>,
    /// `true`: read only this node's own copy (to inspect replication), no quorum.
    #[serde(default)]
    local: bool,
    /// Write only if the current version is this one (compare-and-set).
    #[serde(rename = "if-version")]
    if_version: Option<String>,
    /// Write only if the key has no live value; present and not `false` means yes.
    #[serde(rename = "if-absent")]
    if_absent: Option<String>,
}

/// How a read is served.
enum ReadLevel {
    Quorum(Consistency),
    Linearizable,
}

impl KvQuery {
    /// The level asked for (the API's word); quorum by default.
    fn read_level(&self) -> Result<ReadLevel, ApiError> {
        let Some(text) = &self.consistency else { return Ok(ReadLevel::Quorum(Consistency::Quorum)) };
        let level: overlay_api::Consistency = text
            .parse()
            .map_err(|e: overlay_api::UnknownConsistency| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
        Ok(match level {
            overlay_api::Consistency::One => ReadLevel::Quorum(Consistency::One),
            overlay_api::Consistency::Quorum => ReadLevel::Quorum(Consistency::Quorum),
            overlay_api::Consistency::All => ReadLevel::Quorum(Consistency::All),
            overlay_api::Consistency::Linearizable => ReadLevel::Linearizable,
        })
    }

    /// The level of a write, as the protocol counts it.
    fn consistency(&self) -> Result<Consistency, ApiError> {
        match self.read_level()? {
            ReadLevel::Quorum(consistency) => Ok(consistency),
            ReadLevel::Linearizable => Err(ApiError(
                StatusCode::BAD_REQUEST,
                "consistency=linearizable applies to reads; a write that must see the current state uses if-version or if-absent".into(),
            )),
        }
    }

    /// The compare-and-set condition, if the request has one.
    fn condition(&self) -> Result<Option<Expect>, ApiError> {
        let absent = self.if_absent.as_deref().is_some_and(|v| v != "false");
        match (&self.if_version, absent) {
            (Some(_), true) => {
                Err(ApiError(StatusCode::BAD_REQUEST, "give if-version or if-absent, not both".into()))
            }
            (Some(text), false) => match Version::from_token(text) {
                Some(version) => Ok(Some(Expect::Version(version))),
                None => Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "if-version {text:?} is not a version as reads report them (MILLIS.COUNTER-WRITER)"
                    ),
                )),
            },
            (None, true) => Ok(Some(Expect::Absent)),
            (None, false) => Ok(None),
        }
    }
}

/// The 412 answer to a conditional write: the current version in the body and a header.
fn conflict(current: Option<&Record>) -> Response {
    let current_version = current.map(|r| r.version.token());
    let body = ConflictBody {
        current_version: current_version.clone(),
        deleted: current.is_some_and(|r| r.tombstone),
        error: "the key is not in the expected state; nothing was written".into(),
    };
    let mut headers = HeaderMap::new();
    if let Some(v) = current_version.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert(CURRENT_VERSION_HEADER, v);
    }
    (StatusCode::PRECONDITION_FAILED, headers, Json(body)).into_response()
}

/// The record of a signed write (`PUT` with `value`, `DELETE` with `None`) from its headers, or
/// `None` for an ordinary write (no signature headers). The coordinator verifies it.
fn signed_record(
    headers: &HeaderMap,
    key: &[u8],
    value: Option<Vec<u8>>,
) -> Result<Option<Record>, ApiError> {
    let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or_default().to_owned());
    let (signer, signature) = match (text(SIGNER_HEADER), text(SIGNATURE_HEADER)) {
        (None, None) => return Ok(None),
        (Some(signer), Some(signature)) => (signer, signature),
        _ => {
            let message = format!("a signed write needs both {SIGNER_HEADER} and {SIGNATURE_HEADER}");
            return Err(ApiError(StatusCode::BAD_REQUEST, message));
        }
    };
    let bad =
        |what: &str| ApiError(StatusCode::BAD_REQUEST, format!("{what} is not hex of the right length"));
    let public_key =
        dht::bytes::from_hex(&signer).filter(|k| k.len() == 32).ok_or_else(|| bad(SIGNER_HEADER))?;
    let signature =
        dht::bytes::from_hex(&signature).filter(|s| s.len() == 64).ok_or_else(|| bad(SIGNATURE_HEADER))?;
    let version = text(VERSION_HEADER).as_deref().and_then(Version::from_token).ok_or_else(|| {
        let message =
            format!("a signed write needs {VERSION_HEADER}: the version signed (MILLIS.COUNTER-WRITER)");
        ApiError(StatusCode::BAD_REQUEST, message)
    })?;
    let mut record = match value {
        Some(value) => Record::new(key.to_vec(), value, version),
        None => Record::tombstone(key.to_vec(), version),
    };
    record.owner = Some(Owner { public_key, signature });
    Ok(Some(record))
}

/// Runs a signed write; a version a replica already passed becomes its 409 answer.
async fn put_signed(
    state: &ApiState,
    record: Record,
    consistency: Consistency,
) -> Result<Result<Written, Response>, ApiError> {
    match ask(state, |reply| Command::PutSigned { record, consistency, reply }).await? {
        Ok(written) => Ok(Ok(written)),
        Err(KvError::Superseded { held }) => {
            let body = ConflictBody {
                current_version: Some(held.token()),
                deleted: false,
                error: KvError::Superseded { held }.to_string(),
            };
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&held.token()) {
                headers.insert(CURRENT_VERSION_HEADER, v);
            }
            Ok(Err((StatusCode::CONFLICT, headers, Json(body)).into_response()))
        }
        Err(error) => Err(error.into()),
    }
}

/// Runs a compare-and-set; a conflict becomes its 412 answer.
async fn compare_and_set(
    state: &ApiState,
    key: Vec<u8>,
    expect: Expect,
    value: Option<Vec<u8>>,
) -> Result<Result<Written, Response>, ApiError> {
    match ask(state, |reply| Command::CompareAndSet { key, expect, value, reply }).await? {
        Ok(written) => Ok(Ok(written)),
        Err(KvError::Conflict { current }) => Ok(Err(conflict(current.as_deref()))),
        Err(error) => Err(error.into()),
    }
}

/// Longest a handler waits for the event loop (operations time out inside it sooner).
const HANDLER_TIMEOUT: Duration = Duration::from_secs(15);

async fn ask<T>(state: &ApiState, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ApiError> {
    let (reply, answer) = oneshot::channel();
    let unavailable = || ApiError(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down".into());
    state.commands.send(make(reply)).await.map_err(|_| unavailable())?;
    match tokio::time::timeout(HANDLER_TIMEOUT, answer).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err(unavailable()),
        Err(_) => Err(ApiError(StatusCode::GATEWAY_TIMEOUT, "the node did not answer in time".into())),
    }
}

async fn get_key(
    State(state): State<ApiState>,
    Segment(key): Segment,
    Query(query): Query<KvQuery>,
) -> Result<Response, ApiError> {
    let level = query.read_level()?;
    let key = key.into_bytes();
    let record = match level {
        _ if query.local => ask(&state, |reply| Command::GetLocal { key, reply }).await??,
        ReadLevel::Quorum(consistency) => {
            ask(&state, |reply| Command::Get { key, consistency, reply }).await??
        }
        ReadLevel::Linearizable => ask(&state, |reply| Command::GetLinearizable { key, reply }).await??,
    };
    match record {
        Some(record) if !record.tombstone => {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            if let Ok(v) = HeaderValue::from_str(&record.version.token()) {
                headers.insert(VERSION_HEADER, v);
            }
            if let Some(owner) = &record.owner
                && let Ok(v) = HeaderValue::from_str(&owner.public_key_hex())
            {
                headers.insert(SIGNER_HEADER, v);
            }
            Ok((StatusCode::OK, headers, record.value).into_response())
        }
        _ => Err(ApiError(StatusCode::NOT_FOUND, "no such key".into())),
    }
}

fn put_receipt(key: String, written: &Written) -> PutReceipt {
    PutReceipt { key, replicas_acked: written.acked as u64, version: written.version.token() }
}

async fn put_key(
    State(state): State<ApiState>,
    Segment(key): Segment,
    Query(query): Query<KvQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError(status, "value exceeds the node's --max-value-bytes".into())
        } else {
            ApiError(status, rejection.body_text())
        }
    })?;
    let consistency = query.consistency()?;
    let key_bytes = key.clone().into_bytes();
    let signed = signed_record(&headers, &key_bytes, Some(body.to_vec()))?;
    let written = match (signed, query.condition()?) {
        (Some(_), Some(_)) => return Err(KvError::SignedKeyCas.into()),
        (Some(record), None) => match put_signed(&state, record, consistency).await? {
            Ok(written) => written,
            Err(superseded) => return Ok(superseded),
        },
        (None, Some(expect)) => {
            match compare_and_set(&state, key_bytes, expect, Some(body.to_vec())).await? {
                Ok(written) => written,
                Err(conflict) => return Ok(conflict),
            }
        }
        (None, None) => {
            ask(&state, |reply| Command::Put { key: key_bytes, value: body.to_vec(), consistency, reply })
                .await??
        }
    };
    let status = if written.existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(put_receipt(key, &written))).into_response())
}

async fn delete_key(
    State(state): State<ApiState>,
    Segment(key): Segment,
    Query(query): Query<KvQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let consistency = query.consistency()?;
    let key_bytes = key.into_bytes();
    let signed = signed_record(&headers, &key_bytes, None)?;
    let written = match (signed, query.condition()?) {
        (Some(_), Some(_)) => return Err(KvError::SignedKeyCas.into()),
        (Some(record), None) => match put_signed(&state, record, consistency).await? {
            Ok(written) => written,
            Err(superseded) => return Ok(superseded),
        },
        (None, Some(expect)) => match compare_and_set(&state, key_bytes, expect, None).await? {
            Ok(written) => written,
            Err(conflict) => return Ok(conflict),
        },
        (None, None) => ask(&state, |reply| Command::Delete { key: key_bytes, consistency, reply }).await??,
    };
    if written.existed {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError(StatusCode::NOT_FOUND, "no such key".into()))
    }
}

fn node_info(node: &NodeRef<PeerAddr>) -> NodeInfo {
    NodeInfo {
        addr: node.addr.addr.to_string(),
        peer_id: node.addr.peer.to_string(),
        ring_id: node.id.to_string(),
    }
}

async fn lookup(State(state): State<ApiState>, Segment(key): Segment) -> Result<Json<Lookup>, ApiError> {
    let key_bytes = key.clone().into_bytes();
    let located: Located = ask(&state, |reply| Command::Lookup { key: key_bytes, reply }).await??;
    Ok(Json(Lookup {
        hops: located.hops,
        key,
        key_id: located.key_id.to_string(),
        owner: located.replicas.first().map(node_info),
        path: located.path.iter().map(node_info).collect(),
        replicas: located.replicas.iter().map(node_info).collect(),
    }))
}

async fn status(State(state): State<ApiState>) -> Result<Json<overlay_api::Status>, ApiError> {
    let status: Status = ask(&state, |reply| Command::Status { reply }).await?;
    let peer = status.me.addr.peer;
    Ok(Json(overlay_api::Status {
        addresses: status.listen.iter().map(|a| format!("{a}/p2p/{peer}")).collect(),
        announce: status.me.addr.addr.to_string(),
        bytes: status.bytes,
        fingers: status
            .fingers
            .iter()
            .map(|(i, n)| Finger {
                index: u32::try_from(*i).expect("finger indexes are below 160"),
                node: node_info(n),
            })
            .collect(),
        http: state.http.clone(),
        keys: status.keys,
        member: status.member,
        peer_id: peer.to_string(),
        predecessor: status.predecessor.as_ref().map(node_info),
        ring_id: status.me.id.to_string(),
        successors: status.successors.iter().map(node_info).collect(),
        uptime_s: status.uptime.as_secs_f64(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }))
}

async fn ring(State(state): State<ApiState>) -> Result<Json<Ring>, ApiError> {
    let walk: RingWalk = ask(&state, |reply| Command::Ring { reply }).await?;
    let nodes = walk.nodes.iter().map(|n| RingMember { node: node_info(&n.node), keys: n.keys }).collect();
    Ok(Json(Ring { complete: walk.complete, nodes }))
}

/// The loop copies its counters; the encoding happens here, off the loop.
async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let mut snapshot = ask(&state, |reply| Command::Metrics { reply }).await?;
    snapshot.api_refused = state.refusals.counts();
    snapshot.http = state.limits.load();
    let content_type = HeaderValue::from_static(metrics::CONTENT_TYPE);
    Ok(([(header::CONTENT_TYPE, content_type)], metrics::render(snapshot)).into_response())
}

// ----- multicast groups ------------------------------------------------------------------------

fn group_summary(view: &GroupView) -> GroupSummary {
    GroupSummary {
        children: view.children.iter().map(node_info).collect(),
        group: view.name.clone(),
        group_id: view.id.to_string(),
        head_seq: view.head_seq,
        listeners: view.listeners as u64,
        member: view.member,
        parent: view.parent.as_ref().map(node_info),
        role: view.role.to_owned(),
    }
}

async fn list_groups(State(state): State<ApiState>) -> Result<Json<GroupList>, ApiError> {
    let views: Vec<GroupView> = ask(&state, |reply| Command::Groups { reply }).await?;
    Ok(Json(GroupList { groups: views.iter().map(group_summary).collect() }))
}

async fn join_group(
    State(state): State<ApiState>,
    Segment(group): Segment,
) -> Result<Json<GroupSummary>, ApiError> {
    overlay_api::check_group_name(&group)?;
    let view = ask(&state, |reply| Command::JoinGroup { group, reply }).await??;
    Ok(Json(group_summary(&view)))
}

async fn leave_group(
    State(state): State<ApiState>,
    Segment(group): Segment,
) -> Result<Json<GroupLeft>, ApiError> {
    overlay_api::check_group_name(&group)?;
    let name = group.clone();
    ask(&state, |reply| Command::LeaveGroup { group, reply }).await??;
    let group_id = dht::Id::hash(name.as_bytes()).to_string();
    Ok(Json(GroupLeft { group: name, group_id, member: false }))
}

#[derive(Debug, Deserialize)]
struct SendQuery {
    /// The sender's label.
    from: Option<String>,
}

async fn send_message(
    State(state): State<ApiState>,
    Segment(group): Segment,
    Query(query): Query<SendQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    overlay_api::check_group_name(&group)?;
    let body = body.map_err(|rejection| ApiError(rejection.status(), rejection.body_text()))?;
    if body.len() > groups::MAX_BODY_BYTES {
        return Err(GroupError::TooLarge { len: body.len(), max: groups::MAX_BODY_BYTES }.into());
    }
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| GroupError::Invalid("the message must be UTF-8 text".into()))?;
    if let Some(from) = &query.from {
        overlay_api::check_sender_label(from).map_err(|e| GroupError::Invalid(e.to_string()))?;
    }
    let name = group.clone();
    let seq = ask(&state, |reply| Command::Publish { group, from: query.from, body, reply }).await??;
    Ok((StatusCode::CREATED, Json(GroupReceipt { group: name, seq })).into_response())
}

#[derive(Debug, Deserialize)]
struct ListenQuery {
    /// First sequence number to replay.
    from: Option<String>,
}

async fn listen(
    State(state): State<ApiState>,
    Segment(group): Segment,
    Query(query): Query<ListenQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    overlay_api::check_group_name(&group)?;
    let from = match &query.from {
        None => None,
        Some(text) => Some(
            text.parse::<u64>()
                .map_err(|_| GroupError::Invalid(format!("from must be a sequence number, not {text:?}")))?,
        ),
    };
    // Taken before the loop is asked anything, so that refused listeners cost it nothing.
    let Some(slot) = state.limits.listener_slot() else {
        debug!(%group, max = state.limits.max_listeners(), "group listener refused: too many open");
        let message = format!(
            "{} group listeners are open, the most this node serves; try again later",
            state.limits.max_listeners()
        );
        return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, message));
    };
    let name = group.clone();
    let subscription = ask(&state, |reply| Command::Subscribe { group, from, reply }).await??;
    // The stream owns the slot: hyper drops the stream when its client goes away, and that frees it.
    let events = listener_stream(name, subscription).map(move |event| {
        let _slot = &slot;
        event
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)).text("keep-alive")))
}

/// One server-sent event named `name` whose data is `document` as JSON.
fn json_event(name: &'static str, document: &impl Serialize) -> SseEvent {
    SseEvent::default()
        .event(name)
        .json_data(document)
        .expect("the API's documents serialise: plain structs of strings and numbers")
}

fn item_event(group: &str, item: &GroupItem) -> SseEvent {
    match item {
        GroupItem::Message(m) => json_event(
            MESSAGE_EVENT,
            &GroupMessage {
                body: m.body.clone(),
                from: m.from.clone(),
                group: m.group.clone(),
                epoch: m.epoch,
                seq: m.seq,
                ts: m.ts_ms,
            },
        ),
        GroupItem::Gap { from, to } => {
            json_event(GAP_EVENT, &GroupGap { from: *from, group: group.to_owned(), to: *to })
        }
    }
}

/// One listener's events: the replay fetched for it, the backlog and the live feed, through a
/// [`Merge`] so that each message comes once, in the order the node delivered it. A listener that
/// falls too far behind, or whose replay cannot be had, gets an `error` event and the stream ends
/// (its client can reconnect with `?from=`).
fn listener_stream(
    group: String,
    subscription: Subscription,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    struct State {
        group: String,
        merge: Merge,
        backlog: std::vec::IntoIter<GroupItem>,
        live: tokio::sync::broadcast::Receiver<GroupItem>,
        history: Option<mpsc::Receiver<HistoryItem>>,
        ready: std::collections::VecDeque<GroupItem>,
        done: bool,
    }
    fn error_event(message: String) -> SseEvent {
        json_event(ERROR_EVENT, &ErrorBody { error: message })
    }
    let Subscription { backlog, live, history, next_seq } = subscription;
    let state = State {
        group,
        merge: Merge::new(next_seq, history.is_some()),
        backlog: backlog.into_iter(),
        live,
        history,
        ready: Default::default(),
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(item) = state.ready.pop_front() {
                return Some((Ok(item_event(&state.group, &item)), state));
            }
            if state.done {
                return None;
            }
            let resume = state.merge.resume().unwrap_or(1);
            let delivered = if let Some(item) = state.backlog.next() {
                item
            } else {
                tokio::select! {
                    live = state.live.recv() => match live {
                        Ok(item) => item,
                        Err(RecvError::Closed) => return None,
                        Err(RecvError::Lagged(missed)) => {
                            state.done = true;
                            let message = format!(
                                "this listener fell {missed} messages behind; reconnect with ?from={resume}"
                            );
                            return Some((Ok(error_event(message)), state));
                        }
                    },
                    replayed = async { state.history.as_mut().expect("guarded").recv().await },
                        if state.history.is_some() =>
                    {
                        match replayed {
                            Some(HistoryItem::Item(item)) => state.ready.extend(state.merge.push_replayed(item)),
                            Some(HistoryItem::Failed(reason)) => {
                                state.done = true;
                                let message = format!("{reason}; reconnect with ?from={resume} to try again");
                                return Some((Ok(error_event(message)), state));
                            }
                            None => {
                                state.history = None; // the replay has met the backlog or live feed
                                state.ready.extend(state.merge.replay_done());
                            }
                        }
                        continue;
                    }
                }
            };
            match state.merge.push_delivered(delivered) {
                Ok(ready) => state.ready.extend(ready),
                Err(held) => {
                    state.done = true;
                    let message = format!(
                        "{held} messages are waiting for the replay of older ones; reconnect with ?from={resume}"
                    );
                    return Some((Ok(error_event(message)), state));
                }
            }
        }
    })
}

async fn group_tree(
    State(state): State<ApiState>,
    Segment(group): Segment,
) -> Result<Json<GroupTree>, ApiError> {
    overlay_api::check_group_name(&group)?;
    let tree: TreeView = ask(&state, |reply| Command::GroupTree { group, reply }).await??;
    Ok(Json(GroupTree {
        complete: tree.complete,
        group: tree.name,
        group_id: tree.id.to_string(),
        nodes: tree
            .nodes
            .iter()
            .map(|n| TreeNode {
                children: n.children.iter().map(ToString::to_string).collect(),
                depth: n.depth,
                member: n.member,
                node: node_info(&n.node),
                parent: n.parent.map(|p| p.to_string()),
                role: n.role.clone(),
            })
            .collect(),
        root: node_info(&tree.root),
    }))
}
