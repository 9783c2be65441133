//! The session socket, `/sockets/session/{id}?after_seq=N`: an ordered, resumable event feed.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite};

use crate::conversation::user_message_json;
use crate::error::{CLOSE_ABNORMAL, Error, Result};
use crate::events::AgentEvent;
use crate::json::{i64_at, str_at, string_at, text_at};

/// One frame of the session socket.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SessionFrame {
    /// First frame: the replay covers `(from_seq, through_seq]`; `None` when the socket is
    /// live-only or the log is empty.
    Sync {
        from_seq: Option<i64>,
        through_seq: Option<i64>,
    },
    /// A persisted event and its 0-based position in the log: the resume cursor.
    Durable { seq: i64, event: AgentEvent },
    /// A published but unpersisted event, such as the connect-time `full_state` snapshot.
    /// It has no seq, so it must not move the resume cursor.
    Transient { event: AgentEvent },
    /// LLM token streaming: an item (a future MessageEvent with id `item_id`) started.
    ItemStarted {
        item_id: String,
        attempt: i64,
        anchor_seq: Option<i64>,
    },
    /// LLM token streaming: a chunk of text or reasoning for an item.
    Delta(StreamDelta),
    /// LLM token streaming: the attempt was abandoned; drop what was shown for it.
    ItemAborted {
        item_id: String,
        attempt: i64,
        reason: String,
    },
    /// A problem with this socket (not with the conversation).
    Error { code: String, detail: String },
    /// A frame type this client does not know, or a malformed frame, kept as received.
    Unknown(Value),
}

/// A `delta` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamDelta {
    pub item_id: String,
    pub attempt: i64,
    pub order: i64,
    /// `text` or `reasoning`.
    pub kind: String,
    pub content: String,
}

impl SessionFrame {
    /// Parses one text frame. Never fails: what cannot be understood becomes `Unknown`.
    pub fn parse(text: &str) -> Self {
        match serde_json::from_str::<Value>(text) {
            Ok(value) => Self::from_value(value),
            Err(_) => Self::Unknown(Value::String(text.to_owned())),
        }
    }

    pub fn from_value(value: Value) -> Self {
        let event = |value: &Value| {
            value
                .get("event")
                .filter(|event| event.is_object())
                .cloned()
                .map(AgentEvent::from_value)
        };
        let parsed = match str_at(&value, "type") {
            Some("sync") => Some(Self::Sync {
                from_seq: i64_at(&value, "from_seq"),
                through_seq: i64_at(&value, "through_seq"),
            }),
            Some("durable") => i64_at(&value, "seq")
                .zip(event(&value))
                .map(|(seq, event)| Self::Durable { seq, event }),
            Some("transient") => event(&value).map(|event| Self::Transient { event }),
            Some("item_started") => string_at(&value, "item_id").map(|item_id| Self::ItemStarted {
                item_id,
                attempt: i64_at(&value, "attempt").unwrap_or(0),
                anchor_seq: i64_at(&value, "anchor_seq"),
            }),
            Some("delta") => string_at(&value, "item_id").map(|item_id| {
                Self::Delta(StreamDelta {
                    item_id,
                    attempt: i64_at(&value, "attempt").unwrap_or(0),
                    order: i64_at(&value, "order").unwrap_or(0),
                    kind: string_at(&value, "kind").unwrap_or_default(),
                    content: string_at(&value, "content").unwrap_or_default(),
                })
            }),
            Some("item_aborted") => string_at(&value, "item_id").map(|item_id| Self::ItemAborted {
                item_id,
                attempt: i64_at(&value, "attempt").unwrap_or(0),
                reason: string_at(&value, "reason").unwrap_or_default(),
            }),
            Some("error") => Some(Self::Error {
                code: text_at(&value, "code").unwrap_or_default(),
                detail: string_at(&value, "detail").unwrap_or_default(),
            }),
            _ => None,
        };
        parsed.unwrap_or(Self::Unknown(value))
    }
}

pub(crate) type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An open session socket.
///
/// Read with [`SessionSocket::next_frame`]. A close, by the server or by the connection
/// dropping, is returned as [`Error::SocketClosed`] with its code and reason; decide with
/// [`Error::is_retryable`] whether to reconnect with
/// [`SessionSocket::resume_after_seq`] (4001 and 4004 are final, 1013 `slow_consumer` and
/// dropped connections are not).
pub struct SessionSocket {
    stream: WsStream,
    endpoint: String,
    resume_after_seq: Option<i64>,
    keepalive: Option<Duration>,
    ping_outstanding: bool,
    closed: Option<(u16, String)>,
}

impl std::fmt::Debug for SessionSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSocket")
            .field("endpoint", &self.endpoint)
            .field("resume_after_seq", &self.resume_after_seq)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl SessionSocket {
    pub(crate) fn new(
        stream: WsStream,
        endpoint: String,
        after_seq: Option<i64>,
        keepalive: Option<Duration>,
    ) -> Self {
        Self {
            stream,
            endpoint,
            resume_after_seq: after_seq,
            keepalive,
            ping_outstanding: false,
            closed: None,
        }
    }

    /// The `after_seq` to reconnect with so that nothing is missed or repeated: the seq of
    /// the last durable frame returned, or the `after_seq` this socket was opened with.
    pub fn resume_after_seq(&self) -> Option<i64> {
        self.resume_after_seq
    }

    /// Waits for the next frame. Pings are answered and pongs skipped along the way.
    ///
    /// With keepalive on, a socket silent for one interval gets a ping; if it stays silent
    /// for another interval the call fails with [`Error::Timeout`], because a peer that
    /// vanished without closing TCP would otherwise hang the reader for ever.
    ///
    /// Cancel-safe: dropping the future never loses a frame.
    pub async fn next_frame(&mut self) -> Result<SessionFrame> {
        if let Some((code, reason)) = &self.closed {
            return Err(self.closed_error(*code, reason.clone()));
        }
        loop {
            let message = match self.keepalive {
                None => self.stream.next().await,
                Some(interval) => match tokio::time::timeout(interval, self.stream.next()).await {
                    Ok(message) => message,
                    Err(_elapsed) if self.ping_outstanding => {
                        return Err(Error::Timeout {
                            endpoint: self.endpoint.clone(),
                            timeout: interval * 2,
                        });
                    }
                    Err(_elapsed) => {
                        self.ping_outstanding = true;
                        self.stream
                            .send(Message::Ping(Default::default()))
                            .await
                            .map_err(|error| self.socket_error(error))?;
                        continue;
                    }
                },
            };
            self.ping_outstanding = false;
            match message {
                None => {
                    return Err(self.record_close(
                        CLOSE_ABNORMAL,
                        "connection ended without a close frame".to_owned(),
                    ));
                }
                Some(Err(
                    tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake),
                )) => {
                    return Err(self.record_close(
                        CLOSE_ABNORMAL,
                        "connection ended without a close frame".to_owned(),
                    ));
                }
                Some(Err(error)) => return Err(self.socket_error(error)),
                Some(Ok(Message::Text(text))) => {
                    let frame = SessionFrame::parse(text.as_str());
                    if let SessionFrame::Durable { seq, .. } = &frame {
                        // max() so that a replayed older frame can never move the cursor back.
                        self.resume_after_seq =
                            Some(self.resume_after_seq.map_or(*seq, |last| last.max(*seq)));
                    }
                    if let SessionFrame::Unknown(value) = &frame {
                        tracing::debug!(endpoint = %self.endpoint, frame = %value, "unrecognised session frame");
                    }
                    return Ok(frame);
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = match frame {
                        Some(frame) => (u16::from(frame.code), frame.reason.to_string()),
                        // A close frame without a body has "no status code" (RFC 6455 §7.1.5).
                        None => (1005, String::new()),
                    };
                    tracing::debug!(endpoint = %self.endpoint, code, reason = %reason, "session socket closed by server");
                    return Err(self.record_close(code, reason));
                }
                Some(Ok(Message::Binary(_))) => {
                    tracing::debug!(endpoint = %self.endpoint, "ignoring binary frame on session socket");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            }
        }
    }

    /// Sends a user message over the socket; the server appends it and starts a run, like
    /// `send_message(id, text, true)`.
    pub async fn send_user_message(&mut self, text: &str) -> Result<()> {
        let mut message = user_message_json(text, true);
        if let Some(object) = message.as_object_mut() {
            // The socket's inbound frame is a plain Message: it always runs.
            object.remove("run");
        }
        self.stream
            .send(Message::text(message.to_string()))
            .await
            .map_err(|error| self.socket_error(error))
    }

    /// Closes the socket politely and waits briefly for the server's close reply.
    pub async fn close(mut self) -> Result<()> {
        if self.closed.is_some() {
            return Ok(());
        }
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        match self.stream.close(Some(frame)).await {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => {}
            Err(error) => return Err(self.socket_error(error)),
        }
        // Draining completes the close handshake; a server that never answers is not worth
        // waiting for.
        let drain = async { while let Some(Ok(_)) = self.stream.next().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        Ok(())
    }

    fn record_close(&mut self, code: u16, reason: String) -> Error {
        self.closed = Some((code, reason.clone()));
        self.closed_error(code, reason)
    }

    fn closed_error(&self, code: u16, reason: String) -> Error {
        Error::SocketClosed {
            endpoint: self.endpoint.clone(),
            code,
            reason,
        }
    }

    fn socket_error(&self, error: tungstenite::Error) -> Error {
        Error::WebSocket {
            endpoint: self.endpoint.clone(),
            source: Box::new(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn sync_durable_and_transient_frames_decode() {
        assert_eq!(
            SessionFrame::parse(r#"{"type":"sync","from_seq":-1,"through_seq":12}"#),
            SessionFrame::Sync {
                from_seq: Some(-1),
                through_seq: Some(12)
            }
        );
        assert_eq!(
            SessionFrame::parse(r#"{"type":"sync","from_seq":null,"through_seq":null}"#),
            SessionFrame::Sync {
                from_seq: None,
                through_seq: None
            }
        );

        let durable = SessionFrame::parse(
            r#"{"type":"durable","seq":3,"event":{"kind":"ActionEvent","id":"a1","source":"agent","tool_name":"terminal"},"envelope_field_from_the_future":1}"#,
        );
        let SessionFrame::Durable { seq, event } = durable else {
            panic!("expected a durable frame, got {durable:?}");
        };
        assert_eq!(seq, 3);
        assert_eq!(event.id, "a1");
        assert_eq!(event.kind, "ActionEvent");

        let transient = SessionFrame::parse(
            r#"{"type":"transient","event":{"kind":"ConversationStateUpdateEvent","id":"t1","source":"environment","key":"full_state","value":{"execution_status":"idle"}}}"#,
        );
        let SessionFrame::Transient { event } = transient else {
            panic!("expected a transient frame");
        };
        assert_eq!(event.execution_status(), Some(crate::ExecutionStatus::Idle));
    }

    #[test]
    fn streaming_and_error_frames_decode() {
        assert_eq!(
            SessionFrame::parse(
                r#"{"type":"item_started","item_id":"m1","attempt":1,"anchor_seq":4}"#
            ),
            SessionFrame::ItemStarted {
                item_id: "m1".into(),
                attempt: 1,
                anchor_seq: Some(4)
            }
        );
        assert_eq!(
            SessionFrame::parse(
                r#"{"type":"delta","item_id":"m1","attempt":1,"order":0,"kind":"text","content":"Hel","chunk_id":"c","choice_index":0}"#
            ),
            SessionFrame::Delta(StreamDelta {
                item_id: "m1".into(),
                attempt: 1,
                order: 0,
                kind: "text".into(),
                content: "Hel".into()
            })
        );
        assert_eq!(
            SessionFrame::parse(
                r#"{"type":"item_aborted","item_id":"m1","attempt":1,"reason":"retry"}"#
            ),
            SessionFrame::ItemAborted {
                item_id: "m1".into(),
                attempt: 1,
                reason: "retry".into()
            }
        );
        assert_eq!(
            SessionFrame::parse(r#"{"type":"error","code":"bad_frame","detail":"invalid JSON"}"#),
            SessionFrame::Error {
                code: "bad_frame".into(),
                detail: "invalid JSON".into()
            }
        );
    }

    #[test]
    fn unknown_and_malformed_frames_are_kept_as_unknown() {
        let future = json!({"type": "checkpoint", "seq": 9});
        assert_eq!(
            SessionFrame::parse(&future.to_string()),
            SessionFrame::Unknown(future)
        );
        let durable_without_seq = json!({"type": "durable", "event": {"kind": "PauseEvent"}});
        assert_eq!(
            SessionFrame::from_value(durable_without_seq.clone()),
            SessionFrame::Unknown(durable_without_seq)
        );
        assert_eq!(
            SessionFrame::parse("not json"),
            SessionFrame::Unknown(Value::String("not json".into()))
        );
    }
}
