//! The node's HTTP/JSON API: keys, lookups, status, the ring, multicast groups, and metrics.
//!
//! Handlers only translate between HTTP and [`Command`]s sent to the event loop over a bounded
//! channel; errors are `{"error": "..."}` with a status that says what to do (413 too large, 404
//! missing, 503 retry later).

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
use axum::{Json, Router};
use dht::NodeRef;
use dht::store::Consistency;
use futures::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot};

use crate::address::PeerAddr;
use crate::event_loop::{Command, KvError, Located, RingWalk, Status, Written};
use crate::groups::{self, GroupError, GroupItem, GroupView, HistoryItem, Reorder, Subscription, TreeView};
use crate::metrics::Metrics;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// The event loop's command channel.
    pub commands: mpsc::Sender<Command>,
    /// The node's counters.
    pub metrics: Arc<Metrics>,
    /// The address the API is served at, reported in status.
    pub http: String,
}

/// The API's routes. Bodies larger than `max_value_bytes` are refused with 413 before they are
/// read in full.
pub fn router(state: ApiState, max_value_bytes: usize) -> Router {
    Router::new()
        .route("/v1/kv/{key}", get(get_key).put(put_key).delete(delete_key))
        .route("/v1/lookup/{key}", get(lookup))
        .route("/v1/status", get(status))
        .route("/v1/ring", get(ring))
        .route("/v1/groups", get(list_groups))
        .route("/v1/groups/{group}/join", post(join_group))
        .route("/v1/groups/{group}/leave", post(leave_group))
        .route("/v1/groups/{group}/messages", post(send_message).get(listen))
        .route("/v1/groups/{group}/tree", get(group_tree))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such route; the API is under /v1/".into()) })
        .layer(DefaultBodyLimit::max(max_value_bytes))
        .with_state(state)
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
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
            | KvError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            KvError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
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

#[derive(Debug, Deserialize)]
struct KvQuery {
    consistency: Option<String>,
    /// `true`: read only this node's own copy (to inspect replication), no quorum.
    #[serde(default)]
    local: bool,
}

impl KvQuery {
    fn consistency(&self) -> Result<Consistency, ApiError> {
        match &self.consistency {
            None => Ok(Consistency::Quorum),
            Some(text) => text.parse().map_err(|e: String| ApiError(StatusCode::BAD_REQUEST, e)),
        }
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
    let consistency = query.consistency()?;
    let key = key.into_bytes();
    let record = if query.local {
        ask(&state, |reply| Command::GetLocal { key, reply }).await??
    } else {
        ask(&state, |reply| Command::Get { key, consistency, reply }).await??
    };
    match record {
        Some(record) if !record.tombstone => {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            if let Ok(v) = HeaderValue::from_str(&record.version.to_string()) {
                headers.insert("x-overlay-version", v);
            }
            Ok((StatusCode::OK, headers, record.value).into_response())
        }
        _ => Err(ApiError(StatusCode::NOT_FOUND, "no such key".into())),
    }
}

fn written_json(key: &str, written: &Written) -> Value {
    json!({ "key": key, "version": written.version.to_string(), "replicas_acked": written.acked })
}

async fn put_key(
    State(state): State<ApiState>,
    Segment(key): Segment,
    Query(query): Query<KvQuery>,
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
    let written =
        ask(&state, |reply| Command::Put { key: key_bytes, value: body.to_vec(), consistency, reply })
            .await??;
    let status = if written.existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(written_json(&key, &written))).into_response())
}

async fn delete_key(
    State(state): State<ApiState>,
    Segment(key): Segment,
    Query(query): Query<KvQuery>,
) -> Result<Response, ApiError> {
    let consistency = query.consistency()?;
    let key_bytes = key.into_bytes();
    let written = ask(&state, |reply| Command::Delete { key: key_bytes, consistency, reply }).await??;
    if written.existed {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError(StatusCode::NOT_FOUND, "no such key".into()))
    }
}

fn node_json(node: &NodeRef<PeerAddr>) -> Value {
    json!({ "peer_id": node.addr.peer.to_string(), "ring_id": node.id.to_string(), "addr": node.addr.addr.to_string() })
}

async fn lookup(State(state): State<ApiState>, Segment(key): Segment) -> Result<Json<Value>, ApiError> {
    let key_bytes = key.clone().into_bytes();
    let located: Located = ask(&state, |reply| Command::Lookup { key: key_bytes, reply }).await??;
    Ok(Json(json!({
        "key": key,
        "key_id": located.key_id.to_string(),
        "owner": located.replicas.first().map(node_json),
        "replicas": located.replicas.iter().map(node_json).collect::<Vec<_>>(),
        "hops": located.hops,
    })))
}

async fn status(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let status: Status = ask(&state, |reply| Command::Status { reply }).await?;
    let peer = status.me.addr.peer;
    Ok(Json(json!({
        "peer_id": peer.to_string(),
        "ring_id": status.me.id.to_string(),
        "addresses": status.listen.iter().map(|a| format!("{a}/p2p/{peer}")).collect::<Vec<_>>(),
        "announce": status.me.addr.addr.to_string(),
        "http": state.http,
        "member": status.member,
        "predecessor": status.predecessor.as_ref().map(node_json),
        "successors": status.successors.iter().map(node_json).collect::<Vec<_>>(),
        "fingers": status.fingers.iter().map(|(i, n)| json!({ "index": i, "node": node_json(n) })).collect::<Vec<_>>(),
        "keys": status.keys,
        "bytes": status.bytes,
        "uptime_s": status.uptime.as_secs_f64(),
        "version": env!("CARGO_PKG_VERSION"),
    })))
}

async fn ring(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let walk: RingWalk = ask(&state, |reply| Command::Ring { reply }).await?;
    Ok(Json(json!({
        "nodes": walk.nodes.iter().map(node_json).collect::<Vec<_>>(),
        "complete": walk.complete,
    })))
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], state.metrics.render())
}

// ----- multicast groups ------------------------------------------------------------------------

fn group_json(view: &GroupView) -> Value {
    json!({
        "group": view.name,
        "group_id": view.id.to_string(),
        "role": view.role,
        "member": view.member,
        "listeners": view.listeners,
        "head_seq": view.head_seq,
        "parent": view.parent.as_ref().map(node_json),
        "children": view.children.iter().map(node_json).collect::<Vec<_>>(),
    })
}

async fn list_groups(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let views: Vec<GroupView> = ask(&state, |reply| Command::Groups { reply }).await?;
    Ok(Json(json!({ "groups": views.iter().map(group_json).collect::<Vec<_>>() })))
}

async fn join_group(State(state): State<ApiState>, Segment(group): Segment) -> Result<Json<Value>, ApiError> {
    groups::check_name(&group)?;
    let view = ask(&state, |reply| Command::JoinGroup { group, reply }).await??;
    Ok(Json(group_json(&view)))
}

async fn leave_group(
    State(state): State<ApiState>,
    Segment(group): Segment,
) -> Result<Json<Value>, ApiError> {
    groups::check_name(&group)?;
    let name = group.clone();
    ask(&state, |reply| Command::LeaveGroup { group, reply }).await??;
    Ok(Json(
        json!({ "group": name, "group_id": dht::Id::hash(name.as_bytes()).to_string(), "member": false }),
    ))
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
    groups::check_name(&group)?;
    let body = body.map_err(|rejection| ApiError(rejection.status(), rejection.body_text()))?;
    if body.len() > groups::MAX_BODY_BYTES {
        return Err(GroupError::TooLarge { len: body.len(), max: groups::MAX_BODY_BYTES }.into());
    }
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| GroupError::Invalid("the message must be UTF-8 text".into()))?;
    if let Some(from) = &query.from
        && (from.len() > groups::MAX_FROM_BYTES || from.chars().any(char::is_control))
    {
        return Err(GroupError::Invalid(format!(
            "from must be at most {} bytes without control characters",
            groups::MAX_FROM_BYTES
        ))
        .into());
    }
    let name = group.clone();
    let seq = ask(&state, |reply| Command::Publish { group, from: query.from, body, reply }).await??;
    Ok((StatusCode::CREATED, Json(json!({ "group": name, "seq": seq }))).into_response())
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
    groups::check_name(&group)?;
    let from = match &query.from {
        None => None,
        Some(text) => Some(
            text.parse::<u64>()
                .map_err(|_| GroupError::Invalid(format!("from must be a sequence number, not {text:?}")))?,
        ),
    };
    let name = group.clone();
    let subscription = ask(&state, |reply| Command::Subscribe { group, from, reply }).await??;
    Ok(Sse::new(listener_stream(name, subscription))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)).text("keep-alive")))
}

fn item_event(group: &str, item: &GroupItem) -> SseEvent {
    match item {
        GroupItem::Message(m) => SseEvent::default().event("message").data(
            json!({ "group": m.group, "seq": m.seq, "from": m.from, "body": m.body, "ts": m.ts_ms })
                .to_string(),
        ),
        GroupItem::Gap { from, to } => SseEvent::default()
            .event("gap")
            .data(json!({ "group": group, "from": from, "to": to }).to_string()),
    }
}

/// One listener's events: the backlog, the replay fetched for it and the live feed, through a
/// [`Reorder`] so that each sequence number comes once and in order. A listener that falls too
/// far behind, or whose replay cannot be had, gets an `error` event and the stream ends (its
/// client can reconnect with `?from=`).
fn listener_stream(
    group: String,
    subscription: Subscription,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    struct State {
        group: String,
        reorder: Reorder,
        backlog: std::vec::IntoIter<GroupItem>,
        live: tokio::sync::broadcast::Receiver<GroupItem>,
        history: Option<mpsc::Receiver<HistoryItem>>,
        ready: std::collections::VecDeque<GroupItem>,
        done: bool,
    }
    fn error_event(message: String) -> SseEvent {
        SseEvent::default().event("error").data(json!({ "error": message }).to_string())
    }
    let Subscription { backlog, live, history, next_seq } = subscription;
    let state = State {
        group,
        reorder: Reorder::new(next_seq),
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
            let resume = state.reorder.next().unwrap_or(1);
            let item = if let Some(item) = state.backlog.next() {
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
                            Some(HistoryItem::Item(item)) => item,
                            Some(HistoryItem::Failed(reason)) => {
                                state.done = true;
                                let message = format!("{reason}; reconnect with ?from={resume} to try again");
                                return Some((Ok(error_event(message)), state));
                            }
                            None => {
                                state.history = None; // the replay has met the live feed
                                continue;
                            }
                        }
                    }
                }
            };
            match state.reorder.push(item) {
                Ok(ready) => state.ready.extend(ready),
                Err(held) => {
                    state.done = true;
                    let message = format!(
                        "{held} messages are waiting for a missing one; reconnect with ?from={resume}"
                    );
                    return Some((Ok(error_event(message)), state));
                }
            }
        }
    })
}

async fn group_tree(State(state): State<ApiState>, Segment(group): Segment) -> Result<Json<Value>, ApiError> {
    groups::check_name(&group)?;
    let tree: TreeView = ask(&state, |reply| Command::GroupTree { group, reply }).await??;
    Ok(Json(json!({
        "group": tree.name,
        "group_id": tree.id.to_string(),
        "root": node_json(&tree.root),
        "complete": tree.complete,
        "nodes": tree.nodes.iter().map(|n| json!({
            "node": node_json(&n.node),
            "parent": n.parent.map(|p| p.to_string()),
            "depth": n.depth,
            "role": n.role,
            "member": n.member,
            "children": n.children.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })))
}
