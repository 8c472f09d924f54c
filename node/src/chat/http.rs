//! The chat routes of the HTTP API (`/v1/chat/...`; documents in `overlay_api::chat`).
//!
//! Handlers parse and bound the body, hand it to [`Chat`], and turn its refusals into
//! `{"error": ...}` answers. Request bodies are JSON chat records; a body that does not parse is
//! 400, one over its cap 413, before anything is verified or stored.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use futures::Stream;
use overlay_api::ErrorBody;
use overlay_api::chat::{ChatNode, DM_EVENT, LogoutRequest, MailboxAck, MailboxTake};
use overlay_chat::{Envelope, Grant, MAX_ENVELOPE_JSON_BYTES, NameRecord};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast::error::RecvError;

use super::{Chat, Refused};
use crate::http::ApiState;

/// The largest JSON name record, grant or logout request.
const MAX_RECORD_JSON_BYTES: usize = 16 * 1024;

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

/// The chat routes, merged into the API's router.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/chat/node", get(node))
        .route("/v1/chat/names/{name}", get(get_name).post(post_name))
        .route("/v1/chat/login", post(login))
        .route("/v1/chat/logout", post(logout))
        .route("/v1/chat/presence/{name}", get(presence))
        .route("/v1/chat/dm", post(dm))
        .route("/v1/chat/listen", get(listen))
        .route("/v1/chat/mailbox/take", post(mailbox_take))
        .route("/v1/chat/mailbox/ack", post(mailbox_ack))
}

fn body_of(body: Result<Bytes, BytesRejection>, max: usize, what: &str) -> Result<Bytes, Refused> {
    let body = body.map_err(|r| Refused(r.status(), r.body_text()))?;
    if body.len() > max {
        return Err(Refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what} is {} bytes, over the cap of {max}", body.len()),
        ));
    }
    Ok(body)
}

fn json_of<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Refused> {
    serde_json::from_slice(body)
        .map_err(|e| Refused(StatusCode::BAD_REQUEST, format!("malformed {what}: {e}")))
}

fn chat(state: &ApiState) -> &Chat {
    &state.chat
}

async fn node(State(state): State<ApiState>) -> Json<ChatNode> {
    let chat = chat(&state);
    Json(ChatNode {
        ed25519: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(chat.node_public()),
        peer_id: chat.peer().to_string(),
    })
}

async fn get_name(State(state): State<ApiState>, Path(name): Path<String>) -> Result<Response, Refused> {
    overlay_chat::validate_name(&name).map_err(|e| super::refusal("name", &e))?;
    match chat(&state).name_record(&name, false).await? {
        Some((record, _)) => Ok(Json(record).into_response()),
        None => Err(Refused(StatusCode::NOT_FOUND, format!("unknown user {name:?}"))),
    }
}

async fn post_name(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refused> {
    overlay_chat::validate_name(&name).map_err(|e| super::refusal("name", &e))?;
    let body = body_of(body, MAX_RECORD_JSON_BYTES, "the name record")?;
    let record: NameRecord = json_of(&body, "name record")?;
    let receipt = chat(&state).register(&name, record).await?;
    let status = if receipt.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(receipt)).into_response())
}

async fn login(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refused> {
    let body = body_of(body, MAX_RECORD_JSON_BYTES, "the grant")?;
    let grant: Grant = json_of(&body, "grant")?;
    Ok(Json(chat(&state).login(grant).await?).into_response())
}

async fn logout(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refused> {
    let body = body_of(body, MAX_RECORD_JSON_BYTES, "the logout request")?;
    let request: LogoutRequest = json_of(&body, "logout request")?;
    chat(&state).logout(&request.name, &request.session).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn presence(State(state): State<ApiState>, Path(name): Path<String>) -> Result<Response, Refused> {
    Ok(Json(chat(&state).presence(&name).await?).into_response())
}

async fn dm(State(state): State<ApiState>, body: Result<Bytes, BytesRejection>) -> Result<Response, Refused> {
    let body = body_of(body, MAX_ENVELOPE_JSON_BYTES, "the envelope")?;
    let envelope = Envelope::from_json(&body).map_err(|e| super::refusal("envelope", &e))?;
    let receipt = chat(&state).send_dm(envelope).await?;
    Ok((StatusCode::CREATED, Json(receipt)).into_response())
}

/// Longest a mailbox take may wait.
const MAX_TAKE_WAIT: Duration = Duration::from_secs(60);

async fn mailbox_take(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refused> {
    let body = body_of(body, MAX_RECORD_JSON_BYTES, "the take request")?;
    let request: MailboxTake = json_of(&body, "take request")?;
    let wait = Duration::from_millis(request.wait_ms).min(MAX_TAKE_WAIT);
    Ok(match chat(&state).mailbox_take(&request.name, &request.session, wait).await? {
        Some(item) => Json(item).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

async fn mailbox_ack(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refused> {
    let body = body_of(body, MAX_RECORD_JSON_BYTES, "the acknowledgement")?;
    let ack: MailboxAck = json_of(&body, "acknowledgement")?;
    let outcome = chat(&state).mailbox_ack(&ack.name, &ack.session, ack.seq, &ack.id, ack.lease).await?;
    Ok(Json(serde_json::json!({ "outcome": outcome })).into_response())
}

#[derive(Debug, Deserialize)]
struct ListenQuery {
    name: String,
    session: String,
}

async fn listen(
    State(state): State<ApiState>,
    Query(query): Query<ListenQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Refused> {
    let Some(slot) = state.limits.listener_slot() else {
        return Err(Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many listeners open; try again later".into(),
        ));
    };
    let receiver = chat(&state).listen(&query.name, &query.session)?;
    let events = futures::stream::unfold((receiver, slot, false), |(mut receiver, slot, done)| async move {
        if done {
            return None;
        }
        match receiver.recv().await {
            Ok(envelope) => {
                let event = SseEvent::default().event(DM_EVENT).data(envelope.to_json());
                Some((Ok(event), (receiver, slot, false)))
            }
            Err(RecvError::Closed) => None,
            Err(RecvError::Lagged(missed)) => {
                let body =
                    ErrorBody { error: format!("this listener fell {missed} messages behind; reconnect") };
                let event = SseEvent::default()
                    .event(overlay_api::groups::ERROR_EVENT)
                    .json_data(&body)
                    .expect("an error body serialises");
                Some((Ok(event), (receiver, slot, true)))
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)).text("keep-alive")))
}
