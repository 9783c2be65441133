//! Error responses in the real server's shapes (FastAPI): `{"detail": ...}` for 4xx, a list of
//! validation errors for 422, and `{"detail","exception","error_id"}` for 500.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("Unauthorized")]
    Unauthorized,
    #[error("Not Found")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid request: {}", .0.first().map(|error| error.msg.as_str()).unwrap_or_default())]
    Validation(Vec<FieldError>),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One pydantic validation error as FastAPI renders it in a 422's `detail` list. Like the real
/// server, `input` is the refused value as sent (a plain-string secret included).
#[derive(Debug)]
pub(crate) struct FieldError {
    pub(crate) kind: &'static str,
    pub(crate) loc: Vec<Value>,
    pub(crate) msg: String,
    pub(crate) input: Value,
    pub(crate) ctx: Option<Value>,
}

impl FieldError {
    pub(crate) fn new(
        kind: &'static str,
        loc: Vec<Value>,
        msg: impl Into<String>,
        input: Value,
    ) -> Self {
        Self {
            kind,
            loc,
            msg: msg.into(),
            input,
            ctx: None,
        }
    }

    pub(crate) fn with_ctx(mut self, ctx: Value) -> Self {
        self.ctx = Some(ctx);
        self
    }

    fn to_json(&self) -> Value {
        let mut entry = json!({
            "type": self.kind,
            "loc": self.loc,
            "msg": self.msg,
            "input": self.input,
        });
        if let Some(ctx) = &self.ctx {
            entry["ctx"] = ctx.clone();
        }
        entry
    }
}

impl ApiError {
    /// A refusal the fake checks in its own words: `location` is dotted (`body.max_iterations`)
    /// and becomes the `loc` list; the refused value is not at hand, so `input` is null.
    pub(crate) fn validation(location: &'static str, message: impl std::fmt::Display) -> Self {
        let loc = location.split('.').map(Value::from).collect();
        Self::Validation(vec![FieldError::new(
            "value_error",
            loc,
            message.to_string(),
            Value::Null,
        )])
    }

    pub(crate) fn internal(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal(Box::new(error))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Unauthorized => detail(StatusCode::UNAUTHORIZED, "Unauthorized"),
            Self::NotFound => detail(StatusCode::NOT_FOUND, "Not Found"),
            Self::BadRequest(message) => detail(StatusCode::BAD_REQUEST, &message),
            Self::Conflict(message) => detail(StatusCode::CONFLICT, &message),
            Self::Validation(errors) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({
                    "detail": errors.iter().map(FieldError::to_json).collect::<Vec<_>>(),
                })),
            )
                .into_response(),
            Self::Internal(error) => {
                let error_id = uuid::Uuid::new_v4().simple().to_string();
                tracing::error!(%error_id, error = %error, source = ?error.source(), "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({
                        "detail": "Internal Server Error",
                        "exception": error.to_string(),
                        "error_id": error_id,
                    })),
                )
                    .into_response()
            }
        }
    }
}

fn detail(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "detail": message }))).into_response()
}
