use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use url::Url;
use uuid::Uuid;

use crate::conversation::{
    ConversationInfo, CreateOutcome, RunOutcome, StartConversationRequest, user_message_json,
};
use crate::error::{Error, Result, status_error};
use crate::events::{AgentEvent, EventPage};
use crate::server::ServerInfo;
use crate::session::SessionSocket;
use crate::workspace::{BashOutput, DiffCollector, DiffLimits, GitDelta};

/// Header that carries the session API key, on REST calls and on the socket handshake.
pub const SESSION_API_KEY_HEADER: &str = "X-Session-API-Key";

/// The server caps `limit` on search routes at 100 and answers 422 above it.
pub const MAX_PAGE_SIZE: u32 = 100;

const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_SOCKET_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_SOCKET_KEEPALIVE: Duration = Duration::from_secs(30);
/// `execute_bash_command` blocks for up to the command's own timeout; the HTTP call must
/// outlive it or a slow command would look like a dead server.
const BASH_RESPONSE_GRACE: Duration = Duration::from_secs(30);
/// The largest JSON body read from the server (it is untrusted: a custom image answers what it
/// likes).
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// The largest session-socket message (one event).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// How much of an error answer is kept for its message.
const ERROR_BODY_BYTES: usize = 64 * 1024;

/// Typed client for one agent-server (REST and session socket).
///
/// Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct AgentServerClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: Url,
    session_api_key: SecretString,
    request_timeout: Duration,
    socket_connect_timeout: Duration,
    socket_keepalive: Option<Duration>,
    max_body_bytes: usize,
    max_message_bytes: usize,
}

impl fmt::Debug for AgentServerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentServerClient")
            .field("base_url", &redacted_url(&self.inner.base_url).as_str())
            .field("session_api_key", &"[REDACTED]")
            .field("request_timeout", &self.inner.request_timeout)
            .field("socket_connect_timeout", &self.inner.socket_connect_timeout)
            .field("socket_keepalive", &self.inner.socket_keepalive)
            .finish()
    }
}

/// A password in the base URL is as secret as the key; `Debug` must hide both.
fn redacted_url(url: &Url) -> Url {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("REDACTED"));
    }
    url
}

/// Configures an [`AgentServerClient`].
pub struct AgentServerClientBuilder {
    base_url: Url,
    session_api_key: SecretString,
    http: Option<reqwest::Client>,
    request_timeout: Duration,
    socket_connect_timeout: Duration,
    socket_keepalive: Option<Duration>,
    max_body_bytes: usize,
    max_message_bytes: usize,
}

impl fmt::Debug for AgentServerClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentServerClientBuilder")
            .field("base_url", &redacted_url(&self.base_url).as_str())
            .field("session_api_key", &"[REDACTED]")
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl AgentServerClientBuilder {
    /// Uses this HTTP client (shared pool, proxy, TLS settings). Its own default timeout is
    /// overridden per request by [`Self::request_timeout`].
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// Budget for one REST call, headers and body (default 30 s). Shell commands get their own
    /// timeout plus a grace period instead.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The largest JSON answer read (default [`DEFAULT_MAX_BODY_BYTES`]); a larger one is
    /// [`Error::TooLarge`], read no further.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// The largest session-socket message, i.e. one event (default
    /// [`DEFAULT_MAX_MESSAGE_BYTES`]); a larger one fails the socket with [`Error::TooLarge`].
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Budget for opening the session socket, TCP and handshake (default 30 s).
    pub fn socket_connect_timeout(mut self, timeout: Duration) -> Self {
        self.socket_connect_timeout = timeout;
        self
    }

    /// Ping an idle session socket after this long and give up after twice as long
    /// (default 30 s); `None` waits for ever.
    pub fn socket_keepalive(mut self, interval: Option<Duration>) -> Self {
        self.socket_keepalive = interval;
        self
    }

    /// # Panics
    /// Without a preset HTTP client, when the TLS backend cannot be initialised (as
    /// `reqwest::Client::new` does).
    pub fn build(self) -> AgentServerClient {
        let http = self.http.unwrap_or_else(|| {
            reqwest::Client::builder()
                .connect_timeout(DEFAULT_CONNECT_TIMEOUT)
                .build()
                .expect("the TLS backend of the HTTP client failed to initialise")
        });
        AgentServerClient {
            inner: Arc::new(Inner {
                http,
                base_url: self.base_url,
                session_api_key: self.session_api_key,
                request_timeout: self.request_timeout,
                socket_connect_timeout: self.socket_connect_timeout,
                socket_keepalive: self.socket_keepalive,
                max_body_bytes: self.max_body_bytes,
                max_message_bytes: self.max_message_bytes,
            }),
        }
    }
}

impl AgentServerClient {
    /// A client with default timeouts. `base_url` is the server root (`http://127.0.0.1:8000`);
    /// a path prefix is kept, for servers behind a `root_path`.
    ///
    /// # Panics
    /// When the TLS backend cannot be initialised (as `reqwest::Client::new` does).
    pub fn new(base_url: Url, session_api_key: SecretString) -> Self {
        Self::builder(base_url, session_api_key).build()
    }

    /// A client on a preconfigured HTTP client; per-request timeouts still apply.
    pub fn with_http_client(
        base_url: Url,
        session_api_key: SecretString,
        http: reqwest::Client,
    ) -> Self {
        Self::builder(base_url, session_api_key)
            .http_client(http)
            .build()
    }

    pub fn builder(base_url: Url, session_api_key: SecretString) -> AgentServerClientBuilder {
        AgentServerClientBuilder {
            base_url,
            session_api_key,
            http: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            socket_connect_timeout: DEFAULT_SOCKET_CONNECT_TIMEOUT,
            socket_keepalive: Some(DEFAULT_SOCKET_KEEPALIVE),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    pub fn base_url(&self) -> &Url {
        &self.inner.base_url
    }

    /// `GET /health`: `Ok` once the server answers 200. Before the server has bound its port
    /// this fails with [`Error::is_connect`].
    pub async fn health(&self) -> Result<()> {
        let call = self.call(Method::GET, &["health"])?;
        self.execute(call, None).await.map(drop)
    }

    /// Polls [`Self::health`] until it succeeds, for at most `budget`. Refused connections,
    /// timeouts and 5xx count as "still starting"; anything else is returned at once.
    pub async fn wait_until_healthy(&self, budget: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + budget;
        let mut pause = Duration::from_millis(100);
        loop {
            match self.health().await {
                Ok(()) => return Ok(()),
                Err(error) if error.is_retryable() => {
                    tracing::debug!(error = %error, "agent-server not healthy yet");
                }
                Err(error) => return Err(error),
            }
            if tokio::time::Instant::now() + pause >= deadline {
                return Err(Error::Timeout {
                    endpoint: "GET /health".to_owned(),
                    timeout: budget,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// `GET /server_info`.
    pub async fn server_info(&self) -> Result<ServerInfo> {
        let call = self.call(Method::GET, &["server_info"])?;
        let (value, _) = self.execute_json(call, None).await?;
        Ok(ServerInfo::from_value(value))
    }

    /// `POST /api/conversations`. Idempotent when the request carries a `conversation_id`:
    /// a repeat returns the existing conversation with [`CreateOutcome::Existing`].
    pub async fn create_conversation(
        &self,
        request: &StartConversationRequest,
    ) -> Result<(ConversationInfo, CreateOutcome)> {
        let call = self.call(Method::POST, &["api", "conversations"])?;
        let endpoint = call.endpoint.clone();
        let (value, status) = self.execute_json(call, Some(request.to_json())).await?;
        let outcome = if status == StatusCode::OK {
            CreateOutcome::Existing
        } else {
            CreateOutcome::Created
        };
        Ok((conversation_info(endpoint, value)?, outcome))
    }

    /// `GET /api/conversations/{id}`.
    pub async fn get_conversation(&self, id: Uuid) -> Result<ConversationInfo> {
        let call = self.call(Method::GET, &["api", "conversations", &id.to_string()])?;
        let endpoint = call.endpoint.clone();
        let (value, _) = self.execute_json(call, None).await?;
        conversation_info(endpoint, value)
    }

    /// `POST /api/conversations/{id}/events`: appends a user message, and with `run` starts a
    /// run if none is active.
    ///
    /// On [`Error::CapacityFull`] the message was saved anyway: call [`Self::run`] later
    /// rather than sending it again.
    pub async fn send_message(&self, id: Uuid, text: &str, run: bool) -> Result<()> {
        let call = self.conversation_call(Method::POST, id, &["events"])?;
        self.execute(call, Some(user_message_json(text, run)))
            .await
            .map(drop)
    }

    /// `POST /api/conversations/{id}/run`. A plain 409 means a run is already active and is
    /// reported as [`RunOutcome::AlreadyRunning`]; a 409 marked retryable (an ownership or
    /// credential problem) stays an error.
    pub async fn run(&self, id: Uuid) -> Result<RunOutcome> {
        let call = self.conversation_call(Method::POST, id, &["run"])?;
        match self.execute(call, None).await {
            Ok(_) => Ok(RunOutcome::Started),
            Err(Error::Conflict {
                retryable: false, ..
            }) => Ok(RunOutcome::AlreadyRunning),
            Err(error) => Err(error),
        }
    }

    /// `POST /api/conversations/{id}/pause`: stops after the current LLM call.
    pub async fn pause(&self, id: Uuid) -> Result<()> {
        let call = self.conversation_call(Method::POST, id, &["pause"])?;
        self.execute(call, None).await.map(drop)
    }

    /// `POST /api/conversations/{id}/interrupt`: cancels the in-flight LLM call at once.
    pub async fn interrupt(&self, id: Uuid) -> Result<()> {
        let call = self.conversation_call(Method::POST, id, &["interrupt"])?;
        self.execute(call, None).await.map(drop)
    }

    /// `DELETE /api/conversations/{id}`: removes the history; the workspace stays.
    pub async fn delete_conversation(&self, id: Uuid) -> Result<()> {
        let call = self.call(Method::DELETE, &["api", "conversations", &id.to_string()])?;
        self.execute(call, None).await.map(drop)
    }

    /// The agent's final answer: the last finish message, else the last agent message, else
    /// an empty string.
    pub async fn agent_final_response(&self, id: Uuid) -> Result<String> {
        let call = self.conversation_call(Method::GET, id, &["agent_final_response"])?;
        let endpoint = call.endpoint.clone();
        let (value, _) = self.execute_json(call, None).await?;
        match value.get("response") {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(Value::Null) => Ok(String::new()),
            _ => Err(Error::Decode {
                endpoint,
                source: "the body has no string `response`".into(),
            }),
        }
    }

    /// One page of `GET /api/conversations/{id}/events/search`, oldest first. `page_id` is an
    /// event id and the page starts *at* it. The server silently restarts from the first
    /// event when it does not know `page_id`; [`Self::events_after`] guards against that.
    /// `limit` is clamped to 1..=[`MAX_PAGE_SIZE`].
    pub async fn search_events(
        &self,
        id: Uuid,
        page_id: Option<&str>,
        limit: u32,
    ) -> Result<EventPage> {
        let mut call = self.conversation_call(Method::GET, id, &["events", "search"])?;
        {
            let mut query = call.url.query_pairs_mut();
            if let Some(page_id) = page_id {
                query.append_pair("page_id", page_id);
            }
            query.append_pair("limit", &limit.clamp(1, MAX_PAGE_SIZE).to_string());
        }
        let endpoint = call.endpoint.clone();
        let (value, _) = self.execute_json(call, None).await?;
        serde_json::from_value(value).map_err(|error| Error::Decode {
            endpoint,
            source: error.into(),
        })
    }

    /// Every event after `after_event_id` (all events when `None`), oldest first.
    ///
    /// Fails with [`Error::UnknownEventId`] when the server does not know the anchor, instead
    /// of returning the whole history as if it were new, and with [`Error::PagingLoop`] when
    /// a cursor repeats. Events repeated across pages are returned once.
    pub async fn events_after(
        &self,
        id: Uuid,
        after_event_id: Option<&str>,
    ) -> Result<Vec<AgentEvent>> {
        let endpoint = format!(
            "GET {}",
            self.conversation_call(Method::GET, id, &["events", "search"])?
                .url
                .path()
        );
        let mut events = Vec::new();
        let mut seen_event_ids = HashSet::new();
        let mut seen_page_ids: HashSet<String> =
            after_event_id.map(str::to_owned).into_iter().collect();
        let mut page_id = after_event_id.map(str::to_owned);
        let mut anchor = after_event_id;
        loop {
            let page = self
                .search_events(id, page_id.as_deref(), MAX_PAGE_SIZE)
                .await?;
            let mut items = page.items.into_iter().peekable();
            if let Some(anchor) = anchor.take() {
                match items.next_if(|first| first.id == anchor) {
                    Some(_) => {}
                    None => {
                        return Err(Error::UnknownEventId {
                            endpoint,
                            event_id: anchor.to_owned(),
                        });
                    }
                }
            }
            events.extend(items.filter(|event| seen_event_ids.insert(event.id.clone())));
            match page.next_page_id {
                None => return Ok(events),
                Some(next) if !seen_page_ids.insert(next.clone()) => {
                    return Err(Error::PagingLoop {
                        endpoint,
                        page_id: next,
                    });
                }
                Some(next) => page_id = Some(next),
            }
        }
    }

    /// `POST /api/bash/execute_bash_command`: runs a shell command on the server and waits
    /// for it. `timeout` is the command's own limit (whole seconds, at least one); the HTTP
    /// call is given that plus a grace period.
    pub async fn execute_bash(
        &self,
        command: &str,
        cwd: Option<&str>,
        timeout: Duration,
    ) -> Result<BashOutput> {
        let mut call = self.call(Method::POST, &["api", "bash", "execute_bash_command"])?;
        let seconds = timeout.as_secs().max(1);
        call.timeout = call
            .timeout
            .max(Duration::from_secs(seconds) + BASH_RESPONSE_GRACE);
        let body = json!({"command": command, "cwd": cwd, "timeout": seconds});
        let (value, _) = self.execute_json(call, Some(body)).await?;
        Ok(BashOutput::from_value(value))
    }

    /// `GET /api/file/archive?format=git-delta`: the changes of the repository at `path` (an
    /// absolute path on the server) as one patch, including untracked files, against
    /// `base_ref` or the base the server detects. Read as it streams within `limits`: a file
    /// whose diff is too large, or that comes after the patch is full, is left out and named in
    /// [`GitDelta::omitted`]; memory stays within the limits whatever the server sends.
    pub async fn archive_git_delta(
        &self,
        path: &str,
        base_ref: Option<&str>,
        limits: DiffLimits,
    ) -> Result<GitDelta> {
        let mut call = self.call(Method::GET, &["api", "file", "archive"])?;
        {
            let mut query = call.url.query_pairs_mut();
            query
                .append_pair("path", path)
                .append_pair("format", "git-delta");
            if let Some(base_ref) = base_ref {
                query.append_pair("base_ref", base_ref);
            }
        }
        let endpoint = call.endpoint.clone();
        let mut response = self.execute(call, None).await?;
        let headers = response.headers().clone();
        let mut collector = DiffCollector::new(limits);
        let mut read: u64 = 0;
        loop {
            let chunk = response.chunk().await.map_err(|source| Error::Transport {
                endpoint: endpoint.clone(),
                source,
            })?;
            let Some(chunk) = chunk else { break };
            read += chunk.len() as u64;
            collector.push(&chunk);
            if read > limits.max_read_bytes {
                collector.stop_reading(read);
                break;
            }
        }
        let (patch, omitted, unread_after) = collector.finish();
        // A patch must apply byte for byte, so invalid UTF-8 is an error, not a lossy guess.
        let patch = String::from_utf8(patch).map_err(|error| Error::Decode {
            endpoint,
            source: error.into(),
        })?;
        let mut delta = GitDelta::from_parts(&headers, patch);
        delta.omitted = omitted;
        delta.unread_after = unread_after;
        Ok(delta)
    }

    /// Opens `/sockets/session/{id}`: `after_seq = None` is live only, `Some(-1)` replays the
    /// whole log, `Some(n)` replays everything after seq `n`. The key goes in the handshake
    /// header; the server accepts the socket before checking it, so a wrong key or an unknown
    /// conversation shows up as a close (4001 or 4004) on the first read.
    pub async fn open_session(&self, id: Uuid, after_seq: Option<i64>) -> Result<SessionSocket> {
        let url = session_socket_url(&self.inner.base_url, id, after_seq)?;
        let endpoint = format!("GET {}", url.path());
        let socket_error = |error: tungstenite::Error| Error::WebSocket {
            endpoint: endpoint.clone(),
            source: Box::new(error),
        };
        let mut request = url.as_str().into_client_request().map_err(socket_error)?;
        request
            .headers_mut()
            .insert(SESSION_API_KEY_HEADER, self.session_key_header()?);
        let config = tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(self.inner.max_message_bytes))
            .max_frame_size(Some(self.inner.max_message_bytes));
        let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), false);
        let (stream, _response) = tokio::time::timeout(self.inner.socket_connect_timeout, connect)
            .await
            .map_err(|_elapsed| Error::Timeout {
                endpoint: endpoint.clone(),
                timeout: self.inner.socket_connect_timeout,
            })?
            .map_err(|error| handshake_error(&endpoint, error))?;
        tracing::debug!(endpoint = %endpoint, ?after_seq, "session socket open");
        Ok(SessionSocket::new(
            stream,
            endpoint,
            after_seq,
            self.inner.socket_keepalive,
        ))
    }

    fn call(&self, method: Method, segments: &[&str]) -> Result<Call> {
        let url = endpoint_url(&self.inner.base_url, segments)?;
        Ok(Call {
            endpoint: format!("{method} {}", url.path()),
            method,
            url,
            timeout: self.inner.request_timeout,
        })
    }

    fn conversation_call(&self, method: Method, id: Uuid, tail: &[&str]) -> Result<Call> {
        let id = id.to_string();
        let mut segments = vec!["api", "conversations", id.as_str()];
        segments.extend_from_slice(tail);
        self.call(method, &segments)
    }

    fn session_key_header(&self) -> Result<HeaderValue> {
        let mut value = HeaderValue::from_str(self.inner.session_api_key.expose_secret())
            .map_err(|_| Error::InvalidSessionApiKey)?;
        // Keeps the key out of `Debug` output of requests and out of HPACK tables.
        value.set_sensitive(true);
        Ok(value)
    }

    /// Sends the call and turns every non-success status into its error variant.
    async fn execute(&self, call: Call, body: Option<Value>) -> Result<reqwest::Response> {
        let Call {
            method,
            url,
            endpoint,
            timeout,
        } = call;
        let mut request = self
            .inner
            .http
            .request(method, url)
            .timeout(timeout)
            .header(SESSION_API_KEY_HEADER, self.session_key_header()?);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|source| Error::Transport {
            endpoint: endpoint.clone(),
            source,
        })?;
        let status = response.status();
        tracing::debug!(endpoint = %endpoint, status = status.as_u16(), "agent-server answered");
        if status.is_success() {
            return Ok(response);
        }
        // Only the start of an error answer matters for its message.
        let body = read_bounded(response, ERROR_BODY_BYTES, &endpoint, false).await?;
        Err(status_error(endpoint, status, &body))
    }

    async fn execute_json(&self, call: Call, body: Option<Value>) -> Result<(Value, StatusCode)> {
        let endpoint = call.endpoint.clone();
        let response = self.execute(call, body).await?;
        let status = response.status();
        let bytes = read_bounded(response, self.inner.max_body_bytes, &endpoint, true).await?;
        let value = serde_json::from_slice(&bytes).map_err(|error| Error::Decode {
            endpoint,
            source: error.into(),
        })?;
        Ok((value, status))
    }
}

/// Reads at most `limit` bytes of a body: more is [`Error::TooLarge`] (`strict`) or cut off.
async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
    endpoint: &str,
    strict: bool,
) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|source| Error::Transport {
        endpoint: endpoint.to_owned(),
        source,
    })? {
        if body.len() + chunk.len() > limit {
            if strict {
                return Err(Error::TooLarge {
                    endpoint: endpoint.to_owned(),
                    limit,
                });
            }
            body.extend_from_slice(&chunk[..limit - body.len()]);
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

struct Call {
    method: Method,
    url: Url,
    endpoint: String,
    timeout: Duration,
}

fn conversation_info(endpoint: String, value: Value) -> Result<ConversationInfo> {
    ConversationInfo::from_value(value).map_err(|reason| Error::Decode {
        endpoint,
        source: reason.into(),
    })
}

/// Appends percent-encoded segments to the base URL's path, keeping any prefix it has.
pub(crate) fn endpoint_url(base_url: &Url, segments: &[&str]) -> Result<Url> {
    if !matches!(base_url.scheme(), "http" | "https") {
        return Err(Error::InvalidBaseUrl {
            base_url: redacted_url(base_url).to_string(),
            reason: "the scheme must be http or https",
        });
    }
    let mut url = base_url.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| Error::InvalidBaseUrl {
            base_url: redacted_url(base_url).to_string(),
            reason: "the URL cannot take a path",
        })?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// `ws://` or `wss://` URL of the session socket, following the base URL's scheme.
pub(crate) fn session_socket_url(base_url: &Url, id: Uuid, after_seq: Option<i64>) -> Result<Url> {
    let mut url = endpoint_url(base_url, &["sockets", "session", &id.to_string()])?;
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    url.set_scheme(scheme).map_err(|()| Error::InvalidBaseUrl {
        base_url: redacted_url(base_url).to_string(),
        reason: "the URL cannot be turned into a WebSocket URL",
    })?;
    if let Some(after_seq) = after_seq {
        url.query_pairs_mut()
            .append_pair("after_seq", &after_seq.to_string());
    }
    Ok(url)
}

/// A handshake refused with an HTTP status (a proxy, or a server without the route) maps to
/// the same variants as a REST answer.
fn handshake_error(endpoint: &str, error: tungstenite::Error) -> Error {
    match error {
        // The real server refuses a socket with a wrong key during the handshake (403) rather
        // than closing it with 4001 afterwards: both mean the key was rejected.
        tungstenite::Error::Http(response) if response.status() == StatusCode::FORBIDDEN => {
            let body = response.body().as_deref().unwrap_or_default();
            Error::Unauthorized {
                endpoint: endpoint.to_owned(),
                detail: String::from_utf8_lossy(body).into_owned(),
            }
        }
        tungstenite::Error::Http(response) => {
            let body = response.body().as_deref().unwrap_or_default();
            status_error(endpoint.to_owned(), response.status(), body)
        }
        error => Error::WebSocket {
            endpoint: endpoint.to_owned(),
            source: Box::new(error),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Uuid {
        Uuid::parse_str("2f1d6c0e-7a39-4f7a-9d55-5a0c8c1b7e21").unwrap()
    }

    #[test]
    fn rest_urls_keep_a_base_path_prefix_and_encode_segments() {
        let base = Url::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(
            endpoint_url(&base, &["api", "conversations"])
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8000/api/conversations"
        );
        let prefixed = Url::parse("https://host.example/agent/?x=1#frag").unwrap();
        assert_eq!(
            endpoint_url(&prefixed, &["api", "file", "a b/c"])
                .unwrap()
                .as_str(),
            "https://host.example/agent/api/file/a%20b%2Fc"
        );
        let error = endpoint_url(&Url::parse("ftp://host/").unwrap(), &["health"]).unwrap_err();
        assert!(matches!(error, Error::InvalidBaseUrl { .. }));
        let error = endpoint_url(&Url::parse("mailto:a@b").unwrap(), &["health"]).unwrap_err();
        assert!(matches!(error, Error::InvalidBaseUrl { .. }));
    }

    #[test]
    fn session_socket_url_follows_the_base_scheme() {
        let plain = Url::parse("http://127.0.0.1:8000/").unwrap();
        assert_eq!(
            session_socket_url(&plain, id(), Some(-1)).unwrap().as_str(),
            "ws://127.0.0.1:8000/sockets/session/2f1d6c0e-7a39-4f7a-9d55-5a0c8c1b7e21?after_seq=-1"
        );
        let tls = Url::parse("https://agents.example/root").unwrap();
        assert_eq!(
            session_socket_url(&tls, id(), Some(41)).unwrap().as_str(),
            "wss://agents.example/root/sockets/session/2f1d6c0e-7a39-4f7a-9d55-5a0c8c1b7e21?after_seq=41"
        );
        assert_eq!(
            session_socket_url(&plain, id(), None).unwrap().as_str(),
            "ws://127.0.0.1:8000/sockets/session/2f1d6c0e-7a39-4f7a-9d55-5a0c8c1b7e21"
        );
    }

    #[test]
    fn debug_never_prints_the_session_key_or_url_password() {
        let client = AgentServerClient::new(
            Url::parse("http://user:url-password@127.0.0.1:8000").unwrap(),
            SecretString::from("session-key-that-must-not-leak"),
        );
        let printed = format!("{client:?}");
        assert!(
            !printed.contains("session-key-that-must-not-leak"),
            "{printed}"
        );
        assert!(!printed.contains("url-password"), "{printed}");
        assert!(printed.contains("127.0.0.1:8000"));

        let builder = AgentServerClient::builder(
            Url::parse("http://127.0.0.1:8000").unwrap(),
            SecretString::from("session-key-that-must-not-leak"),
        );
        assert!(!format!("{builder:?}").contains("session-key-that-must-not-leak"));
    }

    #[test]
    fn session_key_header_is_sensitive_and_invalid_keys_are_rejected() {
        let client = AgentServerClient::new(
            Url::parse("http://127.0.0.1:8000").unwrap(),
            SecretString::from("k"),
        );
        let header = client.session_key_header().unwrap();
        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains('k'));

        let client = AgentServerClient::new(
            Url::parse("http://127.0.0.1:8000").unwrap(),
            SecretString::from("line\nbreak"),
        );
        assert!(matches!(
            client.session_key_header(),
            Err(Error::InvalidSessionApiKey)
        ));
    }

    #[test]
    fn handshake_rejections_map_to_rest_error_variants() {
        let response = http::Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Some(br#"{"detail":"Not Found"}"#.to_vec()))
            .unwrap();
        let error = handshake_error("GET /sockets/session/x", tungstenite::Error::Http(response));
        assert!(error.is_not_found());
    }
}
