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

/// Whether an `If-None-Match` value names `tag` (or is `*`). Weak and strong forms compare
/// equal, as RFC 9110 has `If-None-Match` use the weak comparison.
fn none_match_names(value: &str, tag: &str) -> bool {
    value.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == tag
    })
}

/// Strong `ETag`s on successful JSON reads (a hash of the body the caller gets, so two callers
/// who may see different things never share one), and `304 Not Modified` without a body when
/// the request's `If-None-Match` names the current one. Streams, archives and patches pass
/// through untouched.
pub async fn etags(request: Request, next: Next) -> Response {
    use axum::http::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
    use axum::http::{Method, StatusCode};
    use sha2::Digest;

    if request.method() != Method::GET {
        return next.run(request).await;
    }
    let wanted = request
        .headers()
        .get(IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let response = next.run(request).await;
    let json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|media| media.starts_with("application/json"));
    if response.status() != StatusCode::OK || !json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(err) => return ApiError::Internal(Box::new(err)).into_response(),
    };
    let digest = sha2::Sha256::digest(&bytes);
    let tag = format!("\"{}\"", hex::encode(&digest[..16]));
    let Ok(value) = HeaderValue::from_str(&tag) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    parts.headers.insert(ETAG, value);
    if wanted.is_some_and(|wanted| none_match_names(&wanted, &tag)) {
        parts.status = StatusCode::NOT_MODIFIED;
        parts.headers.remove(CONTENT_TYPE);
        parts.headers.remove(axum::http::header::CONTENT_LENGTH);
        return Response::from_parts(parts, axum::body::Body::empty());
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

#[cfg(test)]
mod etag_tests {
    use super::none_match_names;

    #[test]
    fn if_none_match_names_a_tag_in_a_list_weakly_or_as_a_star() {
        let tag = "\"abc\"";
        assert!(none_match_names("\"abc\"", tag));
        assert!(none_match_names("\"x\", W/\"abc\"", tag));
        assert!(none_match_names("*", tag));
        assert!(!none_match_names("\"abcd\"", tag));
        assert!(!none_match_names("", tag));
    }
}
