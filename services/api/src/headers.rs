//! Response headers every answer carries, and the request deadline.
//!
//! Every API answer is private to its caller (tokens shown once, secret metadata, run output), so
//! nothing under `/api/v1` may be stored by a browser or an intermediary unless a handler says
//! otherwise. The CSP forbids everything a JSON or patch answer never needs, and
//! `frame-ancestors` says who may embed the app (nobody by default).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, STRICT_TRANSPORT_SECURITY,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderValue, header::X_FRAME_OPTIONS};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The headers of [`security_headers`], decided once at start-up.
#[derive(Clone, Debug)]
pub struct SecurityHeaders {
    csp: HeaderValue,
    /// Only when served over HTTPS (not in dev mode).
    hsts: bool,
    /// `X-Frame-Options: DENY` for browsers without `frame-ancestors`, when nobody may embed.
    deny_frames: bool,
}

impl SecurityHeaders {
    pub fn new(frame_ancestors: &str, dev_mode: bool) -> anyhow::Result<Self> {
        let csp = HeaderValue::from_str(&format!(
            "default-src 'none'; frame-ancestors {frame_ancestors}; base-uri 'none'; form-action 'self'"
        ))
        .map_err(|_| anyhow::anyhow!("CADENZA_FRAME_ANCESTORS makes an invalid header"))?;
        Ok(Self {
            csp,
            hsts: !dev_mode,
            deny_frames: frame_ancestors == "'none'",
        })
    }
}

pub async fn security_headers(
    State(policy): State<Arc<SecurityHeaders>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(CONTENT_SECURITY_POLICY, policy.csp.clone());
    if policy.deny_frames {
        headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    if policy.hsts {
        headers.insert(
            STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        );
    }
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A request that has not produced its response head within the deadline answers 503. A stream
/// (SSE) has produced its head once it starts, so the deadline never cuts a stream.
pub async fn deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(limit).into_response(),
    }
}
