//! The node's HTTP/JSON API: keys, lookups, status, the ring, and metrics.
//!
//! Handlers only translate between HTTP and [`Command`]s sent to the event loop over a bounded
//! channel; errors are `{"error": "..."}` with a status that says what to do (413 too large, 404
//! missing, 503 retry later).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use dht::NodeRef;
use dht::store::Consistency;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::address::PeerAddr;
use crate::event_loop::{Command, KvError, Located, RingWalk, Status, Written};
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
        .route("/metrics", get(metrics))
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
            KvError::NoQuorum { .. } | KvError::Lookup(_) | KvError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            KvError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
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
    Path(key): Path<String>,
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
    Path(key): Path<String>,
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
    Path(key): Path<String>,
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

async fn lookup(State(state): State<ApiState>, Path(key): Path<String>) -> Result<Json<Value>, ApiError> {
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
