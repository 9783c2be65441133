//! The HTTP surface: chat completions (whole or streamed), the model list and a health check.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::FakeLlmConfig;
use crate::openai::{Completion, Usage, error_body};
use crate::script::{self, Reply};

pub(crate) fn build_router(config: FakeLlmConfig) -> Router {
    let config = Arc::new(config);
    // LiteLLM and OpenAI clients differ on whether `/v1` belongs to the base URL, so both
    // spellings are served.
    let openai = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/models", get(list_models))
        .route("/models", get(list_models))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&config),
            require_api_key,
        ));
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/_fake/api-keys", get(presented_keys))
        .merge(openai)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "Unknown route; this server answers POST /v1/chat/completions and GET /v1/models.",
                "invalid_request_error",
                Some("unknown_url"),
            )
        })
        .with_state(config)
}

fn error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    (status, Json(error_body(message, kind, code))).into_response()
}

async fn presented_keys(State(config): State<Arc<FakeLlmConfig>>) -> Json<Value> {
    Json(json!({"api_keys": config.presented_keys()}))
}

async fn require_api_key(
    State(config): State<Arc<FakeLlmConfig>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if let Some(key) = presented {
        let mut keys = match config.presented.lock() {
            Ok(keys) => keys,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !keys.iter().any(|seen| seen == key) {
            keys.push(key.to_owned());
        }
    }
    let Some(expected) = config.api_key.as_deref() else {
        return next.run(request).await;
    };
    if presented == Some(expected) {
        next.run(request).await
    } else {
        error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided.",
            "invalid_request_error",
            Some("invalid_api_key"),
        )
    }
}

async fn list_models(State(config): State<Arc<FakeLlmConfig>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": config.model(), "object": "model", "created": 0, "owned_by": "cadenza"}],
    }))
}

async fn chat_completions(body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request @ Value::Object(_)) => request,
        Ok(_) | Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "The body must be a JSON object.",
                "invalid_request_error",
                None,
            );
        }
    };
    let reply = match script::next_reply(&request) {
        Ok(reply) => reply,
        Err(problem) => {
            return error(
                StatusCode::BAD_REQUEST,
                &problem.to_string(),
                "invalid_request_error",
                None,
            );
        }
    };
    // The whole conversation, for debugging a script that takes an unexpected turn.
    tracing::debug!(%request, "chat completion request");
    let stream = request.get("stream").and_then(Value::as_bool) == Some(true);
    match &reply {
        Reply::Text(text) => tracing::info!(stream, text = %text, "text reply"),
        Reply::ToolCall {
            name, arguments, ..
        } => tracing::info!(stream, tool = %name, arguments = %arguments, "tool call"),
    }

    let completion = Completion {
        id: format!("chatcmpl-{}", Uuid::new_v4().simple()),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs()),
        model: request
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(crate::DEFAULT_MODEL)
            .to_owned(),
        usage: Usage::estimate(&request, &reply),
        tool_call_id: format!("call_{}", Uuid::new_v4().simple()),
        reply,
    };
    if !stream {
        return Json(completion.to_json()).into_response();
    }

    let include_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    // One SSE event per write, as OpenAI sends them, so clients' incremental parsing is used.
    let frames = completion
        .to_chunks(include_usage)
        .into_iter()
        .map(|data| Ok::<_, Infallible>(Bytes::from(format!("data: {data}\n\n"))));
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (headers, Body::from_stream(futures::stream::iter(frames))).into_response()
}
