//! Request extractors whose rejections are problem+json with a message that names the problem,
//! instead of axum's plain-text defaults.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(|value| {
                value
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .is_some_and(|media| {
                media == "application/json"
                    || (media.starts_with("application/") && media.ends_with("+json"))
            });
        if !json {
            return Err(ApiError::UnsupportedMediaType(
                "expected a request body with `Content-Type: application/json`".into(),
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| body_rejection(rejection.status(), rejection.body_text()))?;
        let value = serde_json::from_slice::<T>(&bytes).map_err(|err| match err.classify() {
            serde_json::error::Category::Data => {
                ApiError::BadRequest(format!("the request body is not a valid request: {err}"))
            }
            _ => ApiError::BadRequest(format!("the request body is not valid JSON: {err}")),
        })?;
        // Postgres stores no NUL character in text or JSON: refuse it here, by name, rather
        // than fail the write.
        if bytes.windows(6).any(|window| window == b"\\u0000")
            && serde_json::from_slice::<serde_json::Value>(&bytes)
                .is_ok_and(|value| has_nul(&value))
        {
            return Err(ApiError::BadRequest(
                "text in the request body may not contain the NUL character (\\u0000)".into(),
            ));
        }
        Ok(ApiJson(value))
    }
}

/// Whether any string (or object key) in `value` holds a NUL character.
fn has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => text.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(has_nul),
        serde_json::Value::Object(fields) => fields
            .iter()
            .any(|(key, field)| key.contains('\0') || has_nul(field)),
        _ => false,
    }
}

/// A body that could not be read: too large (413, see `CADENZA_MAX_BODY_BYTES`) or broken.
pub fn body_rejection(status: axum::http::StatusCode, text: String) -> ApiError {
    if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("the request body is larger than this server accepts".into())
    } else {
        ApiError::BadRequest(text)
    }
}

pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(err)) => Err(ApiError::BadRequest(
                format!("invalid query string: {}", source_text(&err)),
            )),
            Err(other) => Err(ApiError::BadRequest(other.body_text())),
        }
    }
}

/// The innermost cause's message: serde's text names the field ("missing field `prompt`").
fn source_text(err: &dyn std::error::Error) -> String {
    let mut current: &dyn std::error::Error = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// Parses an id path segment; a malformed id is reported like an unknown one (404), so ids
/// reveal nothing about what exists.
pub fn parse_id<T: std::str::FromStr>(raw: &str, what: &str) -> Result<T, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found(what, raw))
}

/// Applies the page-size rules: default when absent, 1..=max otherwise.
pub fn page_limit(requested: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match requested {
        None => Ok(default),
        Some(limit) if (1..=max).contains(&limit) => Ok(limit),
        Some(limit) => Err(ApiError::BadRequest(format!(
            "`limit` must be between 1 and {max}, got {limit}"
        ))),
    }
}

/// Parses a list cursor (the id of the last item of the previous page).
pub fn parse_cursor<T: std::str::FromStr>(raw: Option<&str>) -> Result<Option<T>, ApiError> {
    raw.map(|raw| {
        raw.parse::<T>()
            .map_err(|_| ApiError::BadRequest(format!("invalid cursor `{raw}`")))
    })
    .transpose()
}

/// The cursor of the next page: the last item's id when the page is full, `None` at the end.
pub fn next_cursor<T, Id: std::fmt::Display>(
    items: &[T],
    limit: i64,
    id: impl Fn(&T) -> Id,
) -> Option<String> {
    (items.len() as i64 == limit)
        .then(|| items.last().map(|item| id(item).to_string()))
        .flatten()
}
