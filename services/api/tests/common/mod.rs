//! The API in-process against real Postgres, NATS and Redis, for the integration tests that need
//! only the router and its state.

// Each test binary that includes this uses only part of it.
#![allow(dead_code)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use cadenza_api::state::AppState;
use cadenza_testkit::infra::{TestDatabase, nats_url, redis_url, unique_name};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub struct App {
    pub router: Router,
    pub state: AppState,
    pub db: TestDatabase,
    pub shutdown: CancellationToken,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The API with the test defaults, and `extra` settings over them.
pub async fn app(extra: Value) -> App {
    let db = TestDatabase::create().await.expect("db");
    let (kek_id, kek) = cadenza_crypto::KeyRing::generate_key().expect("kek");
    let mut settings = json!({
        "secret_keks": format!("{kek_id}:{}", secrecy::ExposeSecret::expose_secret(&kek)),
        "database_url": db.url,
        "nats_url": nats_url(),
        "redis_url": redis_url(),
        "bus_prefix": unique_name("t"),
        "migrate_on_start": false,
    });
    if let (Some(target), Some(extra)) = (settings.as_object_mut(), extra.as_object()) {
        target.extend(extra.clone());
    }
    let config: cadenza_api::ApiConfig = serde_json::from_value(settings).expect("config");
    let shutdown = CancellationToken::new();
    let api = cadenza_api::build(&config, shutdown.clone())
        .await
        .expect("api builds");
    App {
        router: api.router(),
        state: api.state(),
        db,
        shutdown,
    }
}

/// Every wait on a stream in these tests is bounded by this.
pub const BUDGET: Duration = Duration::from_secs(20);

/// One SSE block: a comment (keep-alive) or an event.
#[derive(Debug)]
pub enum Frame {
    Comment,
    Event {
        id: Option<String>,
        event: String,
        data: Value,
    },
}

/// Reads SSE blocks off an in-process response body.
pub struct Reader {
    pub body: Body,
    pub buffer: String,
}

impl Reader {
    /// The next block, `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut event = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("event:") {
                        event = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                return Some(match event {
                    None if data.is_empty() => Frame::Comment,
                    event => Frame::Event {
                        id,
                        event: event.unwrap_or_else(|| "message".to_owned()),
                        data: serde_json::from_str(&data).expect("event data is JSON"),
                    },
                });
            }
            let frame = tokio::time::timeout(BUDGET, self.body.frame())
                .await
                .expect("the stream says something within the budget")?
                .expect("the body reads");
            if let Ok(chunk) = frame.into_data() {
                self.buffer
                    .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
            }
        }
    }

    /// The next event, skipping keep-alive comments.
    pub async fn next_event(&mut self) -> Option<(Option<String>, String, Value)> {
        loop {
            match self.next().await? {
                Frame::Comment => continue,
                Frame::Event { id, event, data } => return Some((id, event, data)),
            }
        }
    }
}

/// Opens an SSE stream at `uri` (after `last_event_id`, when given) as the holder of `token`;
/// the problem when it is refused.
pub async fn open_stream(
    app: &App,
    uri: &str,
    token: &str,
    last_event_id: Option<&str>,
) -> Result<Reader, (StatusCode, Value)> {
    let mut request = Request::get(uri)
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let request = request.body(Body::empty()).expect("request");
    let response = app.router.clone().oneshot(request).await.expect("answer");
    let status = response.status();
    if status != StatusCode::OK {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        return Err((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ));
    }
    Ok(Reader {
        body: response.into_body(),
        buffer: String::new(),
    })
}

/// Sends a JSON request as the holder of `token`; the status and the JSON body (`null` when
/// there is none).
pub async fn call(
    app: &App,
    method: &str,
    uri: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    call_router(&app.router, method, uri, token, body).await
}

/// `call`, with only the router (for a task of its own).
pub async fn call_router(
    router: &Router,
    method: &str,
    uri: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"));
    let body = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    let response = router
        .clone()
        .oneshot(request.body(body).expect("request"))
        .await
        .expect("answer");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}
