//! API errors as RFC 9457 `application/problem+json`, with a stable `code`. Internal details are
//! logged once here and never sent to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cadenza_domain::ErrorKind;
use cadenza_storage::StorageError;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required")]
    Unauthenticated,
    #[error("login failed: {0}")]
    LoginFailed(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// What was asked for existed once and is gone for good (e.g. a cursor older than the
    /// journal's retention).
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The proof of control of an email domain was not found (the detail says what to publish).
    #[error("{0}")]
    DomainNotVerified(String),
    #[error("too many requests: {scope} limit of {limit} per minute reached")]
    RateLimited {
        scope: &'static str,
        limit: u64,
        retry_after_secs: u64,
    },
    #[error(
        "too many open streams: at most {limit} at once per caller; close one (or wait for one to end) and retry"
    )]
    TooManyStreams { limit: u64, retry_after_secs: u64 },
    #[error("{0}")]
    LoginRefused(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("the request did not finish within {} s", .0.as_secs())]
    Timeout(std::time::Duration),
    #[error("a dependency is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    code: &'a str,
}

impl ApiError {
    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        ApiError::NotFound(format!("no {what} with id `{id}`"))
    }

    pub(crate) fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request", "Bad request"),
            ApiError::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
            ),
            ApiError::LoginFailed(_) => (StatusCode::UNAUTHORIZED, "login_failed", "Login failed"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::LoginRefused(_) => (StatusCode::FORBIDDEN, "login_refused", "Login refused"),
            ApiError::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
            ),
            ApiError::Timeout(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "Request timed out",
            ),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", "Not found"),
            ApiError::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests",
            ),
            ApiError::TooManyStreams { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                "Too many open streams",
            ),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::Gone(_) => (StatusCode::GONE, "gone", "Gone"),
            ApiError::DomainNotVerified(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "domain_not_verified",
                "Domain not verified",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
            ),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }
}

impl ApiError {
    /// One error of each kind, for the API's description of its problem types.
    pub(crate) fn catalogue() -> Vec<ApiError> {
        let source = || -> Box<dyn std::error::Error + Send + Sync> { "example".into() };
        vec![
            ApiError::BadRequest(String::new()),
            ApiError::Unauthenticated,
            ApiError::LoginFailed(String::new()),
            ApiError::Forbidden(String::new()),
            ApiError::LoginRefused(String::new()),
            ApiError::NotFound(String::new()),
            ApiError::Conflict(String::new()),
            ApiError::Gone(String::new()),
            ApiError::PayloadTooLarge(String::new()),
            ApiError::UnsupportedMediaType(String::new()),
            ApiError::DomainNotVerified(String::new()),
            ApiError::RateLimited {
                scope: "example",
                limit: 0,
                retry_after_secs: 0,
            },
            ApiError::TooManyStreams {
                limit: 0,
                retry_after_secs: 0,
            },
            ApiError::Internal(source()),
            ApiError::Unavailable(source()),
            ApiError::Timeout(std::time::Duration::ZERO),
        ]
    }
}

/// A storage error becomes the answer its kind calls for; internal details stay in the log.
impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> Self {
        match err.kind() {
            ErrorKind::NotFound => ApiError::NotFound(err.to_string()),
            ErrorKind::Conflict => ApiError::Conflict(match err {
                StorageError::Conflict(detail) => detail,
                other => other.to_string(),
            }),
            ErrorKind::Invalid => ApiError::BadRequest(err.to_string()),
            ErrorKind::Unauthenticated => ApiError::Unauthenticated,
            ErrorKind::Forbidden => ApiError::Forbidden(err.to_string()),
            ErrorKind::RateLimited | ErrorKind::Unavailable => ApiError::Unavailable(Box::new(err)),
            ErrorKind::Internal => ApiError::Internal(Box::new(err)),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        StorageError::from(err).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title) = self.parts();
        let detail = match &self {
            ApiError::Internal(source) | ApiError::Unavailable(source) => {
                tracing::error!(error = %source, debug = ?source, code, "request failed");
                match self {
                    ApiError::Unavailable(_) => {
                        "a dependency is unavailable; retry later".to_owned()
                    }
                    _ => "an internal error occurred; it has been logged".to_owned(),
                }
            }
            other => other.to_string(),
        };
        let problem = Problem {
            kind: format!("urn:cadenza:problem:{code}"),
            title,
            status: status.as_u16(),
            detail,
            code,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let ApiError::RateLimited {
            limit,
            retry_after_secs,
            ..
        } = &self
        {
            let headers = response.headers_mut();
            for (name, value) in [
                ("retry-after", retry_after_secs.to_string()),
                ("ratelimit-limit", limit.to_string()),
                ("ratelimit-remaining", "0".to_owned()),
                ("ratelimit-reset", retry_after_secs.to_string()),
            ] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            }
        }
        if let ApiError::TooManyStreams {
            retry_after_secs, ..
        } = &self
            && let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string())
        {
            response.headers_mut().insert("retry-after", value);
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
