//! `Idempotency-Key` on every mutating request: the first request with a key runs; a repeat of
//! the same request (same caller, method, path, query and body) within a day gets the first
//! one's answer again, marked `Idempotent-Replayed: true`, and runs nothing; the same key for a
//! different request, or while the first is still running, is refused (`409`). Only successful
//! answers are kept: after a failure the request may be sent again and runs again.
//!
//! Records live in Redis under the deployment's prefix, keyed by a hash of the caller's
//! credential (never the credential) and the key. Without Redis the requests run as if they had
//! no key, as rate limiting does.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, LOCATION};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// How long a finished request's answer is replayed.
const KEEP: Duration = Duration::from_secs(24 * 3600);
/// How long a request may hold its key before a repeat may run it again (a crash mid-request).
const IN_FLIGHT: Duration = Duration::from_secs(120);
/// The largest answer kept for replay; a larger one is not kept (a repeat runs again).
const MAX_KEPT_BYTES: usize = 1024 * 1024;

#[derive(Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Record {
    InFlight {
        fingerprint: String,
    },
    Done {
        fingerprint: String,
        status: u16,
        content_type: Option<String>,
        location: Option<String>,
        /// Base64 of the body.
        body: String,
    },
}

fn hash(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

/// Who is asking, as a hash of the credential the request carries.
fn caller(request: &Request) -> Option<String> {
    let headers = request.headers();
    let credential = headers.get(AUTHORIZATION).or_else(|| headers.get(COOKIE))?;
    Some(hash(&[credential.as_bytes()]))
}

fn conflict(detail: &str) -> Response {
    ApiError::Conflict(detail.to_owned()).into_response()
}

pub async fn idempotency(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let Some(key) = request.headers().get("idempotency-key") else {
        return next.run(request).await;
    };
    let Ok(key) = key.to_str().map(str::to_owned) else {
        return ApiError::BadRequest("the `Idempotency-Key` header is not valid text".into())
            .into_response();
    };
    if let Err(err) = cadenza_domain::validation::validate_idempotency_key(&key) {
        return ApiError::BadRequest(format!("`Idempotency-Key`: {err}")).into_response();
    }
    let Some(caller) = caller(&request) else {
        // Nobody to keep it for: the request is refused as unauthenticated anyway.
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, state.limits.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => {
            return ApiError::PayloadTooLarge(format!(
                "the body is larger than {} bytes",
                state.limits.max_body_bytes
            ))
            .into_response();
        }
    };
    let target = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |target| target.as_str());
    let fingerprint = hash(&[parts.method.as_str().as_bytes(), target.as_bytes(), &body]);
    let slot = format!(
        "{}:idempotency:{caller}:{}",
        state.limits.redis_prefix,
        hash(&[key.as_bytes()])
    );
    let mut redis = state.redis.clone();
    let claim = serde_json::to_string(&Record::InFlight {
        fingerprint: fingerprint.clone(),
    })
    .unwrap_or_default();
    let claimed: Result<Option<String>, redis::RedisError> = redis::cmd("SET")
        .arg(&slot)
        .arg(&claim)
        .arg("NX")
        .arg("PX")
        .arg(IN_FLIGHT.as_millis() as u64)
        .query_async(&mut redis)
        .await;
    let request = Request::from_parts(parts, Body::from(body));
    match claimed {
        Err(err) => {
            tracing::warn!(error = %err, "idempotency keys unavailable (Redis); running the request");
            return next.run(request).await;
        }
        // Ours: run it below.
        Ok(Some(_)) => {}
        Ok(None) => {
            let existing: Result<Option<String>, redis::RedisError> =
                redis::cmd("GET").arg(&slot).query_async(&mut redis).await;
            let record = existing
                .ok()
                .flatten()
                .and_then(|text| serde_json::from_str::<Record>(&text).ok());
            let different = || conflict("this Idempotency-Key was used for a different request");
            return match record {
                Some(Record::Done {
                    fingerprint: first,
                    status,
                    content_type,
                    location,
                    body,
                }) => {
                    if first == fingerprint {
                        replay(status, content_type, location, &body)
                    } else {
                        different()
                    }
                }
                Some(Record::InFlight { fingerprint: first }) => {
                    if first == fingerprint {
                        conflict(
                            "a request with this Idempotency-Key is still in progress; retry shortly",
                        )
                    } else {
                        different()
                    }
                }
                // Expired between the two reads: run it (the next repeat finds it kept).
                None => next.run(request).await,
            };
        }
    }
    let response = next.run(request).await;
    keep(&mut redis, &slot, fingerprint, response).await
}

/// Keeps a successful answer for replay (anything else frees the key) and returns it.
async fn keep(
    redis: &mut redis::aio::ConnectionManager,
    slot: &str,
    fingerprint: String,
    response: Response,
) -> Response {
    let free = |redis: &mut redis::aio::ConnectionManager| {
        let mut redis = redis.clone();
        let slot = slot.to_owned();
        async move {
            let _: Result<(), redis::RedisError> =
                redis::cmd("DEL").arg(&slot).query_async(&mut redis).await;
        }
    };
    let streamed = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|media| media.as_bytes().starts_with(b"text/event-stream"));
    if !response.status().is_success() || streamed {
        free(redis).await;
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_KEPT_BYTES).await else {
        free(redis).await;
        return ApiError::Internal("the answer was larger than an idempotent replay keeps".into())
            .into_response();
    };
    let header = |name| {
        parts
            .headers
            .get(name)
            .and_then(|value: &HeaderValue| value.to_str().ok())
            .map(str::to_owned)
    };
    let record = Record::Done {
        fingerprint,
        status: parts.status.as_u16(),
        content_type: header(CONTENT_TYPE),
        location: header(LOCATION),
        body: base64::engine::general_purpose::STANDARD.encode(&bytes),
    };
    let stored: Result<(), redis::RedisError> = redis::cmd("SET")
        .arg(slot)
        .arg(serde_json::to_string(&record).unwrap_or_default())
        .arg("PX")
        .arg(KEEP.as_millis() as u64)
        .query_async(redis)
        .await;
    if let Err(err) = stored {
        tracing::warn!(error = %err, "keeping an idempotent answer failed; a repeat runs again");
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn replay(
    status: u16,
    content_type: Option<String>,
    location: Option<String>,
    body: &str,
) -> Response {
    let Ok(body) = base64::engine::general_purpose::STANDARD.decode(body) else {
        return ApiError::Internal("a kept idempotent answer is unreadable".into()).into_response();
    };
    let mut response =
        (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body).into_response();
    let headers = response.headers_mut();
    for (name, value) in [(CONTENT_TYPE, content_type), (LOCATION, location)] {
        if let Some(value) = value.and_then(|value| HeaderValue::from_str(&value).ok()) {
            headers.insert(name, value);
        }
    }
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}
