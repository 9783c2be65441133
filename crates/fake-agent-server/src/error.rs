//! Error responses in the real server's shapes (FastAPI): `{"detail": ...}` for 4xx, a list of
//! validation errors for 422, and `{"detail","exception","error_id"}` for 500.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

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
    #[error("invalid {location}: {message}")]
    Validation {
        location: &'static str,
        message: String,
    },
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub(crate) fn validation(location: &'static str, message: impl std::fmt::Display) -> Self {
        Self::Validation {
            location,
            message: message.to_string(),
        }
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
            Self::Validation { location, message } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({
                    "detail": [{
                        "type": "value_error",
                        "loc": [location],
                        "msg": message,
                    }]
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
