use std::time::Duration;

use http::StatusCode;
use tokio_tungstenite::tungstenite;

/// Result alias used by every call of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// WebSocket close code the server uses when the session API key is missing or wrong.
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
/// WebSocket close code the server uses when the conversation does not exist.
pub const CLOSE_NOT_FOUND: u16 = 4004;
/// WebSocket close code for "try again later": `slow_consumer`, `frame_too_large`, too many
/// subscribers. Reconnecting with `after_seq` loses nothing.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
/// Close code reported when the connection ended without a close frame (RFC 6455 §7.1.5).
pub const CLOSE_ABNORMAL: u16 = 1006;

/// Everything that can go wrong when talking to an agent-server.
///
/// `endpoint` fields read like `POST /api/conversations/{id}/run` so a log line says which call
/// failed; they never contain the session key or query strings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The base URL cannot address an agent-server (not http/https, or cannot take a path).
    #[error("invalid agent-server base URL {base_url}: {reason}")]
    InvalidBaseUrl {
        base_url: String,
        reason: &'static str,
    },

    /// The session API key cannot travel in an HTTP header (control characters).
    #[error("the session API key contains characters that are not allowed in an HTTP header")]
    InvalidSessionApiKey,

    /// 401: the session API key is missing or wrong. Retrying with the same key is pointless.
    #[error("{endpoint}: the agent-server rejected the session API key (401): {detail}")]
    Unauthorized { endpoint: String, detail: String },

    /// 404: unknown conversation, event or route.
    #[error("{endpoint}: not found (404): {detail}")]
    NotFound { endpoint: String, detail: String },

    /// 409: the conversation is busy or owned elsewhere. `retryable` mirrors the body's
    /// `"retryable": true`, which the server sets when waiting and retrying can succeed.
    #[error("{endpoint}: conflict (409): {detail}")]
    Conflict {
        endpoint: String,
        detail: String,
        retryable: bool,
    },

    /// 429: the server's run capacity is full. A message sent with `POST .../events` that got
    /// this answer *was* saved: retry `run`, do not re-send it.
    #[error("{endpoint}: agent-server run capacity is full (429): {detail}")]
    CapacityFull { endpoint: String, detail: String },

    /// 422: the server's request validation refused the body, a query parameter or a path
    /// segment. The same request can never succeed. Each problem keeps where the server found
    /// it and what it says, never the refused value (`input`), which can be a secret.
    #[error(
        "{endpoint}: the agent-server refused the request (422): {}",
        describe_problems(problems)
    )]
    Invalid {
        endpoint: String,
        problems: Vec<FieldProblem>,
    },

    /// Any other non-success status, with the body's `detail` (or the start of the body).
    #[error("{endpoint}: HTTP {status}: {detail}")]
    Status {
        endpoint: String,
        status: StatusCode,
        detail: String,
    },

    /// The HTTP exchange failed before a complete response arrived: DNS, connect, TLS,
    /// timeout, or a broken body.
    #[error("{endpoint}: request failed")]
    Transport {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },

    /// The response arrived but its body does not have the expected shape.
    #[error("{endpoint}: could not decode the response")]
    Decode {
        endpoint: String,
        #[source]
        source: BoxError,
    },

    /// An answer (or one session-socket message) was larger than the client reads; the rest
    /// was not read.
    #[error("{endpoint}: the answer is larger than {limit} bytes, the most this client reads")]
    TooLarge { endpoint: String, limit: usize },

    /// The WebSocket could not be opened, or failed while in use.
    #[error("{endpoint}: WebSocket failure")]
    WebSocket {
        endpoint: String,
        // Boxed because the handshake variant carries a whole HTTP response.
        #[source]
        source: Box<tungstenite::Error>,
    },

    /// No answer within the budget: socket handshake, keepalive, or a health wait.
    #[error("{endpoint}: no answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },

    /// The session socket was closed, by a close frame or by the connection dropping
    /// ([`CLOSE_ABNORMAL`]).
    #[error("{endpoint}: session socket closed with code {code}: {reason}")]
    SocketClosed {
        endpoint: String,
        code: u16,
        reason: String,
    },

    /// A resume cursor names an event the server does not know. The server would silently
    /// restart paging from the first event, so this is reported instead of replaying history.
    #[error("{endpoint}: event {event_id} is unknown to the server")]
    UnknownEventId { endpoint: String, event_id: String },

    /// The server handed back a page cursor it had already given, so paging would never end.
    #[error("{endpoint}: paging returned page {page_id} twice")]
    PagingLoop { endpoint: String, page_id: String },
}

impl Error {
    /// The HTTP status behind this error, when the server answered with one (REST calls and
    /// a refused WebSocket handshake).
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Unauthorized { .. } => Some(StatusCode::UNAUTHORIZED),
            Error::NotFound { .. } => Some(StatusCode::NOT_FOUND),
            Error::Conflict { .. } => Some(StatusCode::CONFLICT),
            Error::CapacityFull { .. } => Some(StatusCode::TOO_MANY_REQUESTS),
            Error::Invalid { .. } => Some(StatusCode::UNPROCESSABLE_ENTITY),
            Error::Status { status, .. } => Some(*status),
            Error::Transport { source, .. } => source.status(),
            _ => None,
        }
    }

    /// The WebSocket close code, when the session socket was closed.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Error::SocketClosed { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The server answered and refused the call as it was made: a 4xx that waiting cannot
    /// change (not full capacity, not a retryable conflict). For a call that is always valid
    /// when the server keeps its contract (creating a conversation), this means Cadenza and the
    /// server disagree about the contract.
    pub fn is_refused_request(&self) -> bool {
        self.status().is_some_and(|status| status.is_client_error()) && !self.is_retryable()
    }

    /// The fields a 422 refused, as dotted locations such as `body.secrets.GITHUB_TOKEN`.
    pub fn refused_fields(&self) -> Vec<&str> {
        match self {
            Error::Invalid { problems, .. } => problems
                .iter()
                .map(|problem| problem.location.as_str())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The key was rejected: HTTP 401 or close code 4001.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Error::Unauthorized { .. }) || self.close_code() == Some(CLOSE_UNAUTHORIZED)
    }

    /// The conversation (or route) does not exist: HTTP 404 or close code 4004.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. }) || self.close_code() == Some(CLOSE_NOT_FOUND)
    }

    /// Nothing accepted the connection. While a container starts, this means "not up yet".
    pub fn is_connect(&self) -> bool {
        match self {
            Error::Transport { source, .. } => source.is_connect(),
            Error::WebSocket { source, .. } => match source.as_ref() {
                tungstenite::Error::Io(io) => matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::NotConnected
                        | std::io::ErrorKind::AddrNotAvailable
                ),
                _ => false,
            },
            _ => false,
        }
    }

    /// The call ran out of time: the server may be alive but slow, or the network is stalled.
    pub fn is_timeout(&self) -> bool {
        match self {
            Error::Timeout { .. } => true,
            Error::Transport { source, .. } => source.is_timeout(),
            Error::WebSocket { source, .. } => matches!(
                source.as_ref(),
                tungstenite::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut
            ),
            _ => false,
        }
    }

    /// The same call may succeed later without changing anything: connection problems,
    /// timeouts, full capacity, 5xx answers, retryable conflicts and socket closes other than
    /// 4001/4004. For a closed session socket this means "reconnect with `after_seq`".
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Conflict { retryable, .. } => *retryable,
            Error::CapacityFull { .. } | Error::Timeout { .. } => true,
            Error::Status { status, .. } => status.is_server_error(),
            Error::Transport { source, .. } => {
                source.is_connect()
                    || source.is_timeout()
                    || source.is_request()
                    || source.is_body()
                    || source
                        .status()
                        .is_some_and(|status| status.is_server_error())
            }
            Error::WebSocket { source, .. } => {
                matches!(
                    source.as_ref(),
                    tungstenite::Error::Io(_)
                        | tungstenite::Error::ConnectionClosed
                        | tungstenite::Error::Protocol(_)
                ) || self.is_connect()
            }
            Error::SocketClosed { code, .. } => {
                *code != CLOSE_UNAUTHORIZED && *code != CLOSE_NOT_FOUND
            }
            _ => false,
        }
    }
}

/// Builds the error for a non-success HTTP answer from its status and raw body.
pub(crate) fn status_error(endpoint: String, status: StatusCode, body: &[u8]) -> Error {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let detail = parsed
        .as_ref()
        .and_then(|value| value.get("detail"))
        .map(detail_text)
        .unwrap_or_else(|| body_excerpt(body));
    let retryable = parsed
        .as_ref()
        .and_then(|value| value.get("retryable"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    if status == StatusCode::UNPROCESSABLE_ENTITY
        && let Some(problems) = parsed
            .as_ref()
            .and_then(|value| value.get("detail"))
            .and_then(serde_json::Value::as_array)
    {
        let problems = problems.iter().map(FieldProblem::from_wire).collect();
        return Error::Invalid { endpoint, problems };
    }
    match status {
        StatusCode::UNAUTHORIZED => Error::Unauthorized { endpoint, detail },
        StatusCode::NOT_FOUND => Error::NotFound { endpoint, detail },
        StatusCode::CONFLICT => Error::Conflict {
            endpoint,
            detail,
            retryable,
        },
        StatusCode::TOO_MANY_REQUESTS => Error::CapacityFull { endpoint, detail },
        status => Error::Status {
            endpoint,
            status,
            detail,
        },
    }
}

/// One entry of a 422's `detail` list (`{"type","loc","msg","input",...}`), without `input`
/// and `ctx`: both can carry the refused value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// `loc` joined with dots, e.g. `body.secrets.GITHUB_TOKEN`.
    pub location: String,
    /// pydantic's error type, e.g. `model_attributes_type` or `missing`.
    pub kind: String,
    /// pydantic's message, e.g. `Field required`.
    pub message: String,
}

impl FieldProblem {
    fn from_wire(entry: &serde_json::Value) -> Self {
        let location = entry
            .get("loc")
            .and_then(serde_json::Value::as_array)
            .map(|segments| {
                segments
                    .iter()
                    .map(|segment| match segment {
                        serde_json::Value::String(text) => text.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(".")
            })
            .unwrap_or_default();
        let text = |key: &str| {
            entry
                .get(key)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Self {
            location,
            kind: text("type"),
            message: text("msg"),
        }
    }
}

impl std::fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

fn describe_problems(problems: &[FieldProblem]) -> String {
    if problems.is_empty() {
        return "no detail given".to_owned();
    }
    problems
        .iter()
        .map(FieldProblem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `detail` is a string for most errors. A list (validation errors outside a 422) is reduced to
/// locations and messages, so the refused values it echoes never reach a log line.
fn detail_text(detail: &serde_json::Value) -> String {
    match detail {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Array(entries) => describe_problems(
            &entries
                .iter()
                .map(FieldProblem::from_wire)
                .collect::<Vec<_>>(),
        ),
        other => other.to_string(),
    }
}

/// Bodies that are not JSON (a proxy's HTML page, say) are cut so an error stays one line.
fn body_excerpt(body: &[u8]) -> String {
    const LIMIT: usize = 300;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.chars().count() <= LIMIT {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(LIMIT).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> String {
        "GET /api/conversations/x".to_owned()
    }

    #[test]
    fn statuses_map_to_distinct_variants_with_the_body_detail() {
        let error = status_error(
            endpoint(),
            StatusCode::UNAUTHORIZED,
            br#"{"detail":"Unauthorized"}"#,
        );
        assert!(matches!(&error, Error::Unauthorized { detail, .. } if detail == "Unauthorized"));
        assert!(error.is_unauthorized());
        assert!(!error.is_retryable());

        let error = status_error(endpoint(), StatusCode::NOT_FOUND, br#"{"detail":"gone"}"#);
        assert!(error.is_not_found());
        assert_eq!(error.status(), Some(StatusCode::NOT_FOUND));

        let error = status_error(
            endpoint(),
            StatusCode::TOO_MANY_REQUESTS,
            br#"{"detail":"full"}"#,
        );
        assert!(matches!(error, Error::CapacityFull { .. }));
        assert!(error.is_retryable());

        let error = status_error(
            endpoint(),
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"detail":"Internal Server Error","exception":"boom","error_id":"ab"}"#,
        );
        assert!(
            matches!(&error, Error::Status { status, detail, .. } if *status == StatusCode::INTERNAL_SERVER_ERROR && detail == "Internal Server Error")
        );
        assert!(error.is_retryable());
    }

    #[test]
    fn conflict_keeps_the_retryable_flag() {
        let error = status_error(
            endpoint(),
            StatusCode::CONFLICT,
            br#"{"detail":"credential_binding_activation_required","retryable":true}"#,
        );
        assert!(matches!(
            error,
            Error::Conflict {
                retryable: true,
                ..
            }
        ));
        assert!(error.is_retryable());

        let error = status_error(
            endpoint(),
            StatusCode::CONFLICT,
            br#"{"detail":"Conversation already running"}"#,
        );
        assert!(matches!(
            error,
            Error::Conflict {
                retryable: false,
                ..
            }
        ));
        assert!(!error.is_retryable());
    }

    #[test]
    fn a_validation_refusal_names_the_field_and_never_the_refused_value() {
        // What the real server answers to a plain-string secret: `input` is the value itself.
        let error = status_error(
            "POST /api/conversations".to_owned(),
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"detail":[{"type":"model_attributes_type","loc":["body","secrets","CANARY"],"msg":"Input should be a valid dictionary or object to extract fields from","input":"hunter2-value"},{"type":"missing","loc":["body","workspace"],"msg":"Field required","input":{"api_key":"hunter2-value"},"ctx":{"error":"hunter2-value"}}]}"#,
        );
        assert_eq!(error.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
        assert_eq!(
            error.refused_fields(),
            vec!["body.secrets.CANARY", "body.workspace"]
        );
        assert!(error.is_refused_request());
        assert!(!error.is_retryable());
        let message = error.to_string();
        assert_eq!(
            message,
            "POST /api/conversations: the agent-server refused the request (422): \
             body.secrets.CANARY: Input should be a valid dictionary or object to extract fields \
             from; body.workspace: Field required"
        );
        assert!(!format!("{error:?}").contains("hunter2"), "{error:?}");

        // A validation list under another status is reduced the same way.
        let error = status_error(
            endpoint(),
            StatusCode::BAD_REQUEST,
            br#"{"detail":[{"type":"x","loc":["query","limit",0],"msg":"bad","input":"hunter2-value"}]}"#,
        );
        assert!(
            matches!(&error, Error::Status { detail, .. } if detail == "query.limit.0: bad"),
            "{error:?}"
        );
        assert!(error.is_refused_request());
    }

    #[test]
    fn capacity_and_retryable_conflicts_are_not_refusals() {
        for (status, body) in [
            (StatusCode::TOO_MANY_REQUESTS, &br#"{"detail":"full"}"#[..]),
            (
                StatusCode::CONFLICT,
                br#"{"detail":"credential_binding_activation_required","retryable":true}"#,
            ),
            (StatusCode::BAD_GATEWAY, b"<html></html>"),
        ] {
            assert!(!status_error(endpoint(), status, body).is_refused_request());
        }
    }

    #[test]
    fn non_json_bodies_become_readable_text() {
        let long_page = format!("<html>{}</html>", "x".repeat(1000));
        let error = status_error(endpoint(), StatusCode::BAD_GATEWAY, long_page.as_bytes());
        let Error::Status { detail, .. } = &error else {
            panic!("expected a status error, got {error:?}");
        };
        assert!(detail.starts_with("<html>"));
        assert!(detail.chars().count() <= 301);
    }

    #[test]
    fn socket_close_codes_classify_fatal_and_reconnectable_closes() {
        let closed = |code: u16| Error::SocketClosed {
            endpoint: "GET /sockets/session/x".to_owned(),
            code,
            reason: String::new(),
        };
        assert!(closed(CLOSE_UNAUTHORIZED).is_unauthorized());
        assert!(!closed(CLOSE_UNAUTHORIZED).is_retryable());
        assert!(closed(CLOSE_NOT_FOUND).is_not_found());
        assert!(!closed(CLOSE_NOT_FOUND).is_retryable());
        assert!(closed(CLOSE_TRY_AGAIN_LATER).is_retryable());
        assert!(closed(CLOSE_ABNORMAL).is_retryable());
        assert_eq!(closed(1000).close_code(), Some(1000));
    }

    #[test]
    fn refused_socket_connection_counts_as_connect_error() {
        let error = Error::WebSocket {
            endpoint: "GET /sockets/session/x".to_owned(),
            source: Box::new(tungstenite::Error::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            ))),
        };
        assert!(error.is_connect());
        assert!(error.is_retryable());
        assert!(!error.is_timeout());
    }
}
