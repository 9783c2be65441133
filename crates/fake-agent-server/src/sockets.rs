//! The WebSocket endpoints: the legacy event stream `/sockets/events/{id}` and the sequenced
//! session stream `/sockets/session/{id}`.
//!
//! Both follow the conversation's log by position: the socket notes the log length and subscribes
//! to the length watch in one critical section, replays from its cursor, then sends whatever lies
//! past the cursor each time the watch fires. Replay and live delivery therefore neither skip nor
//! repeat an event, and a slow reader never loses events (they wait in the log, not in a queue).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use uuid::Uuid;

use super::agent;
use super::error::ApiError;
use super::events;
use super::state::{Conversation, FakeServer};
use super::wire::{self, QueryParams, SendMessageRequest};

const FIRST_MESSAGE_AUTH_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_AUTH_FAILED: u16 = 4001;
const CLOSE_NOT_FOUND: u16 = 4004;
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;

type Sink = SplitSink<WebSocket, Message>;

/// How the legacy socket replays history before going live.
enum Resend {
    None,
    All,
    Since(String),
}

pub(crate) async fn events_socket(
    State(server): State<Arc<FakeServer>>,
    Path(conversation_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let params = QueryParams::parse(query.as_deref());
    let resend = match legacy_resend(&params) {
        Ok(resend) => resend,
        Err(error) => return error.into_response(),
    };
    let offered_key = offered_key(&params, &headers);
    upgrade.on_upgrade(move |socket| async move {
        let Some((conversation, socket)) =
            connect(&server, &conversation_id, offered_key, socket).await
        else {
            return;
        };
        serve_events(server, conversation, resend, socket).await;
    })
}

fn legacy_resend(params: &QueryParams) -> Result<Resend, ApiError> {
    if params.flag("resend_all", false)? {
        return Ok(Resend::All);
    }
    match params.get("resend_mode") {
        None => Ok(Resend::None),
        Some("all") => Ok(Resend::All),
        Some("since") => {
            let after = params.get("after_timestamp").ok_or_else(|| {
                ApiError::validation("query.after_timestamp", "required with resend_mode=since")
            })?;
            Ok(Resend::Since(wire::normalize_timestamp(
                after,
                "query.after_timestamp",
            )?))
        }
        Some(other) => Err(ApiError::validation(
            "query.resend_mode",
            format!("unknown resend mode {other:?}"),
        )),
    }
}

pub(crate) async fn session_socket(
    State(server): State<Arc<FakeServer>>,
    Path(conversation_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let params = QueryParams::parse(query.as_deref());
    let after_seq = match params.get("after_seq").map(str::parse::<i64>) {
        None => None,
        Some(Ok(after_seq)) if after_seq >= -1 => Some(after_seq),
        Some(_) => {
            return ApiError::validation("query.after_seq", "must be an integer >= -1")
                .into_response();
        }
    };
    let offered_key = offered_key(&params, &headers);
    upgrade.on_upgrade(move |socket| async move {
        let Some((conversation, socket)) =
            connect(&server, &conversation_id, offered_key, socket).await
        else {
            return;
        };
        serve_session(server, conversation, after_seq, socket).await;
    })
}

/// The key offered before the upgrade: the deprecated query parameter, then the header.
fn offered_key(params: &QueryParams, headers: &HeaderMap) -> Option<String> {
    params
        .get("session_api_key")
        .map(str::to_owned)
        .or_else(|| {
            headers
                .get("x-session-api-key")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        })
}

/// Authenticates and finds the conversation. The socket is already accepted, so failures are
/// reported as close codes (4001, 4004) rather than HTTP statuses, as on the real server.
async fn connect(
    server: &FakeServer,
    conversation_id: &str,
    offered_key: Option<String>,
    mut socket: WebSocket,
) -> Option<(Arc<Conversation>, WebSocket)> {
    if !authenticate(server, offered_key, &mut socket).await {
        close(&mut socket, CLOSE_AUTH_FAILED, "Authentication failed").await;
        return None;
    }
    let conversation = Uuid::parse_str(conversation_id)
        .ok()
        .and_then(|id| server.conversation(id));
    match conversation {
        Some(conversation) => Some((conversation, socket)),
        None => {
            close(&mut socket, CLOSE_NOT_FOUND, "Conversation not found").await;
            None
        }
    }
}

async fn authenticate(
    server: &FakeServer,
    offered_key: Option<String>,
    socket: &mut WebSocket,
) -> bool {
    if !server.auth_enabled() {
        return true;
    }
    if let Some(key) = offered_key {
        return server.accepts_key(&key);
    }
    // First-message auth: `{"type":"auth","session_api_key":"..."}` within the time limit.
    let Ok(Some(Ok(Message::Text(text)))) =
        tokio::time::timeout(FIRST_MESSAGE_AUTH_TIMEOUT, socket.recv()).await
    else {
        return false;
    };
    let Ok(frame) = serde_json::from_str::<Value>(&text) else {
        return false;
    };
    frame["type"] == "auth"
        && frame["session_api_key"]
            .as_str()
            .is_some_and(|key| server.accepts_key(key))
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

async fn send_json(sink: &mut Sink, frame: &Value) -> bool {
    sink.send(Message::Text(frame.to_string().into()))
        .await
        .is_ok()
}

async fn serve_events(
    server: Arc<FakeServer>,
    conversation: Arc<Conversation>,
    resend: Resend,
    socket: WebSocket,
) {
    let (mut sink, mut inbound) = socket.split();
    let (snapshot, history, mut cursor, mut live) = {
        let state = conversation.lock();
        let (length, live) = state.subscribe();
        let history: Vec<Arc<Value>> = match &resend {
            Resend::None => Vec::new(),
            Resend::All => state.events().to_vec(),
            Resend::Since(after) => state
                .events()
                .iter()
                .filter(|event| events::timestamp(event) >= after.as_str())
                .cloned()
                .collect(),
        };
        (conversation.full_state_event(&state), history, length, live)
    };
    if !send_json(&mut sink, &snapshot).await {
        return;
    }
    for event in history {
        if !send_json(&mut sink, &event).await {
            return;
        }
    }

    loop {
        tokio::select! {
            changed = live.changed() => {
                if changed.is_err() {
                    return;
                }
                for (seq, event) in events_after(&conversation, cursor) {
                    if !send_json(&mut sink, &event).await {
                        return;
                    }
                    cursor = seq + 1;
                }
            }
            frame = inbound.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if let Err(detail) = accept_inbound(&server, &conversation, &text) {
                        let error = events::server_error_event("invalid_message", &detail);
                        if !send_json(&mut sink, &error).await {
                            return;
                        }
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            () = conversation.closed.cancelled() => {
                close_sink(&server, &mut sink).await;
                return;
            }
        }
    }
}

async fn serve_session(
    server: Arc<FakeServer>,
    conversation: Arc<Conversation>,
    after_seq: Option<i64>,
    socket: WebSocket,
) {
    let (mut sink, mut inbound) = socket.split();
    let (length, mut live, snapshot) = {
        let state = conversation.lock();
        let (length, live) = state.subscribe();
        (length, live, conversation.full_state_event(&state))
    };
    let through_seq = length.checked_sub(1);
    // Live-only sockets start at the end; a cursor beyond the end skips what the client claims
    // to have, which is the dedupe-by-seq rule applied to events not written yet.
    let mut cursor = match after_seq {
        None => length,
        Some(after_seq) => usize::try_from(after_seq + 1).unwrap_or(0),
    };

    let sync = json!({ "type": "sync", "from_seq": after_seq, "through_seq": through_seq });
    if !send_json(&mut sink, &sync).await {
        return;
    }
    let replay: Vec<(usize, Arc<Value>)> = if cursor < length {
        let state = conversation.lock();
        state.events()[cursor..length]
            .iter()
            .cloned()
            .enumerate()
            .map(|(offset, event)| (cursor + offset, event))
            .collect()
    } else {
        Vec::new()
    };
    for (seq, event) in replay {
        if !send_json(&mut sink, &durable(seq, &event)).await {
            return;
        }
        cursor = seq + 1;
    }
    let transient = json!({ "type": "transient", "event": snapshot });
    if !send_json(&mut sink, &transient).await {
        return;
    }

    loop {
        tokio::select! {
            changed = live.changed() => {
                if changed.is_err() {
                    return;
                }
                for (seq, event) in events_after(&conversation, cursor) {
                    if !send_json(&mut sink, &durable(seq, &event)).await {
                        return;
                    }
                    cursor = seq + 1;
                }
            }
            frame = inbound.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if let Err(detail) = accept_inbound(&server, &conversation, &text) {
                        let error = json!({ "type": "error", "code": "invalid_message", "detail": detail });
                        if !send_json(&mut sink, &error).await {
                            return;
                        }
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            () = conversation.closed.cancelled() => {
                close_sink(&server, &mut sink).await;
                return;
            }
        }
    }
}

fn durable(seq: usize, event: &Value) -> Value {
    json!({ "type": "durable", "seq": seq, "event": event })
}

/// The events at positions `cursor..`, copied out so that no lock is held while sending.
fn events_after(conversation: &Conversation, cursor: usize) -> Vec<(usize, Arc<Value>)> {
    let state = conversation.lock();
    state
        .events()
        .iter()
        .enumerate()
        .skip(cursor)
        .map(|(seq, event)| (seq, Arc::clone(event)))
        .collect()
}

async fn close_sink(server: &FakeServer, sink: &mut Sink) {
    let (code, reason) = if server.shutdown.is_cancelled() {
        (CLOSE_GOING_AWAY, "server shutting down")
    } else {
        (CLOSE_NORMAL, "conversation deleted")
    };
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

/// An inbound frame: a user `Message` is appended and starts a run, like `POST /events` with
/// `run: true`. Auth frames after the handshake are ignored.
fn accept_inbound(
    server: &Arc<FakeServer>,
    conversation: &Arc<Conversation>,
    text: &str,
) -> Result<(), String> {
    let frame: Value = serde_json::from_str(text).map_err(|error| error.to_string())?;
    if frame["type"] == "auth" {
        return Ok(());
    }
    let message: SendMessageRequest =
        serde_json::from_value(frame).map_err(|error| error.to_string())?;
    let content = message
        .validated_content()
        .map_err(|error| error.to_string())?;
    agent::send_user_message(conversation, &content);
    server.touch();
    let _ = agent::start_run(server, conversation);
    Ok(())
}
