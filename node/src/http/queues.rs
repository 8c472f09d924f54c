//! The queue endpoints, `/v1/queues/{q}/...` (documented in `overlay_api::queues`): they only
//! translate between HTTP and the event loop's queue commands.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use dht::queue::{AckOutcome, MsgId, QueueError, QueueName, Refusal, StoredMessage};
use futures::Stream;
use overlay_api::{QueueAck, QueueAckReceipt, QueueItem, QueuePutReceipt, QueueStat};
use serde::Deserialize;
use tracing::debug;

use super::{ApiError, ApiState, Segment, ask, json_event, node_info};
use crate::event_loop::Command;

// The API documents the protocol's limits.
const _: () = {
    assert!(overlay_api::MAX_QUEUE_NAME_BYTES == dht::queue::wire::MAX_QUEUE_NAME_BYTES);
    assert!(overlay_api::MAX_QUEUE_MESSAGE_BYTES == dht::queue::MAX_QUEUE_BODY_BYTES);
};

/// Longest wait a take may ask for, and longest lease.
const MAX_WAIT_SECONDS: f64 = 300.0;
/// Who an HTTP put is from, for quotas (users' puts go through the chat endpoints).
const API_SENDER: &str = "api";

impl From<QueueError> for ApiError {
    fn from(error: QueueError) -> Self {
        let status = match &error {
            QueueError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            QueueError::Refused(Refusal::Full | Refusal::OverQuota) => StatusCode::INSUFFICIENT_STORAGE,
            QueueError::Refused(
                Refusal::TooManyWaiters | Refusal::TooManySubscribers | Refusal::TooManyQueues,
            ) => StatusCode::SERVICE_UNAVAILABLE,
            QueueError::Refused(_)
            | QueueError::Lookup(_)
            | QueueError::Overloaded
            | QueueError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            QueueError::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
        };
        ApiError(status, error.to_string())
    }
}

fn queue_name(text: String) -> Result<QueueName, ApiError> {
    QueueName::new(text).map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid queue name: {e}")))
}

/// Mailboxes are queues only their owner takes from and anyone puts into within a quota: both
/// rules live in the chat endpoints (`/v1/chat/dm`, `/v1/chat/mailbox/...`), which check the
/// sender's signature and the owner's session. The generic endpoints would bypass them.
fn refuse_mailbox(name: &QueueName) -> Result<(), ApiError> {
    if name.as_str().starts_with(crate::chat::MAILBOX_PREFIX) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "mailboxes are reached through /v1/chat (send a DM; the owner takes with its session)".into(),
        ));
    }
    Ok(())
}

fn id_text(id: MsgId) -> String {
    format!("{:032x}", id.0)
}

fn parse_id(text: &str) -> Result<MsgId, ApiError> {
    u128::from_str_radix(text, 16)
        .ok()
        .filter(|_| text.len() == 32)
        .map(MsgId)
        .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, format!("id {text:?} is not 32 hex digits")))
}

/// A message as the API shows it.
pub(super) fn item(queue: &str, message: StoredMessage, lease: Option<u64>) -> QueueItem {
    let (body, body_base64) = match String::from_utf8(message.body) {
        Ok(text) => (Some(text), None),
        Err(e) => (None, Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes()))),
    };
    QueueItem {
        body,
        body_base64,
        id: id_text(message.id),
        lease,
        put_ms: message.put_ms,
        queue: queue.to_string(),
        sender: message.sender,
        seq: message.seq,
    }
}

pub(super) async fn put(
    State(state): State<ApiState>,
    Segment(queue): Segment,
    body: Bytes,
) -> Result<Json<QueuePutReceipt>, ApiError> {
    let name = queue_name(queue.clone())?;
    refuse_mailbox(&name)?;
    let body = body.to_vec();
    let (seq, id) = ask(&state, |reply| Command::QueuePut {
        queue: name,
        body,
        sender: API_SENDER.to_string(),
        quota: None,
        reply,
    })
    .await??;
    Ok(Json(QueuePutReceipt { id: id_text(id), queue, seq }))
}

#[derive(Debug, Deserialize)]
pub(super) struct TakeQuery {
    wait: Option<f64>,
    lease: Option<f64>,
}

fn seconds(value: Option<f64>, default: f64, what: &str) -> Result<Duration, ApiError> {
    let value = value.unwrap_or(default);
    if !value.is_finite() || !(0.0..=MAX_WAIT_SECONDS).contains(&value) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("{what} must be 0 to {MAX_WAIT_SECONDS} seconds"),
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

pub(super) async fn take(
    State(state): State<ApiState>,
    Segment(queue): Segment,
    Query(query): Query<TakeQuery>,
) -> Result<Response, ApiError> {
    let name = queue_name(queue.clone())?;
    refuse_mailbox(&name)?;
    let wait = seconds(query.wait, 0.0, "wait")?;
    let lease = seconds(query.lease, overlay_api::queues::DEFAULT_LEASE_SECONDS, "lease")?;
    if lease.is_zero() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "lease must be more than 0 seconds".into()));
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let command = Command::QueueTake { queue: name, consumer: "api".into(), wait, lease, reply };
    let unavailable = || ApiError(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down".into());
    state.commands.send(command).await.map_err(|_| unavailable())?;
    // The loop answers by the end of the wait plus its own operation time-out.
    let taken = match tokio::time::timeout(wait + Duration::from_secs(20), answer).await {
        Ok(Ok(result)) => result?,
        Ok(Err(_)) => return Err(unavailable()),
        Err(_) => {
            return Err(ApiError(StatusCode::GATEWAY_TIMEOUT, "the node did not answer in time".into()));
        }
    };
    Ok(match taken {
        Some(leased) => Json(item(&queue, leased.message, Some(leased.lease))).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

pub(super) async fn ack(
    State(state): State<ApiState>,
    Segment(queue): Segment,
    body: Bytes,
) -> Result<Json<QueueAckReceipt>, ApiError> {
    let name = queue_name(queue)?;
    refuse_mailbox(&name)?;
    // Read as JSON whatever the content type says: `curl -d` sends a form type.
    let body: QueueAck = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("an acknowledgement is {{\"id\", \"lease\", \"seq\"}} as JSON: {e}"),
        )
    })?;
    let id = parse_id(&body.id)?;
    let (seq, lease) = (body.seq, body.lease);
    let outcome = ask(&state, |reply| Command::QueueAck { queue: name, seq, id, lease, reply }).await??;
    let outcome = match outcome {
        AckOutcome::Removed => "removed",
        AckOutcome::Gone => "gone",
        AckOutcome::LeasedToAnother => "leased_to_another",
    };
    Ok(Json(QueueAckReceipt { outcome: outcome.to_string() }))
}

pub(super) async fn stat(
    State(state): State<ApiState>,
    Segment(queue): Segment,
) -> Result<Json<QueueStat>, ApiError> {
    let name = queue_name(queue.clone())?;
    refuse_mailbox(&name)?;
    let (stats, owner) = ask(&state, |reply| Command::QueueStat { queue: name, reply }).await??;
    Ok(Json(QueueStat {
        bytes: stats.bytes,
        consumers: stats.consumers,
        epoch: stats.epoch,
        last_seq: stats.last_seq,
        leased: stats.leased,
        len: stats.len,
        queue,
        root: node_info(&owner),
        subscribers: stats.subscribers,
        waiting: stats.waiting,
    }))
}

#[derive(Debug, Deserialize)]
pub(super) struct ListenQuery {
    from: Option<u64>,
}

pub(super) async fn listen(
    State(state): State<ApiState>,
    Segment(queue): Segment,
    Query(query): Query<ListenQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let name = queue_name(queue.clone())?;
    refuse_mailbox(&name)?;
    let Some(slot) = state.limits.listener_slot() else {
        debug!(%queue, max = state.limits.max_listeners(), "queue listener refused: too many open");
        let message = format!(
            "{} listeners are open, the most this node serves; try again later",
            state.limits.max_listeners()
        );
        return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, message));
    };
    let from_seq = query.from.unwrap_or(0);
    let receiver = ask(&state, |reply| Command::QueueListen { queue: name, from_seq, reply }).await??;
    let events = futures::stream::unfold((receiver, slot, queue), |(mut receiver, slot, queue)| async move {
        let message = receiver.recv().await?;
        let event = json_event(overlay_api::groups::MESSAGE_EVENT, &item(&queue, message, None));
        Some((Ok(event), (receiver, slot, queue)))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)).text("keep-alive")))
}
