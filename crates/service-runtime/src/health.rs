//! `/healthz` (the process is alive) and `/readyz` (its dependencies answer).
//!
//! Both are public, so `/readyz` says only `ready` or `not ready`: which dependency failed and
//! why (hosts, ports, driver messages) goes to the log, and to instance admins where a service
//! offers them an endpoint for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

/// One dependency's answer.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Check {
    pub fn from_result<E: std::fmt::Display>(name: &'static str, result: Result<(), E>) -> Self {
        match result {
            Ok(()) => Self {
                name,
                ok: true,
                error: None,
            },
            Err(err) => Self {
                name,
                ok: false,
                error: Some(err.to_string()),
            },
        }
    }
}

pub type ReadinessProbe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<Check>> + Send>> + Send + Sync>;

#[derive(Serialize)]
struct Readiness {
    status: &'static str,
}

pub fn health_routes<S: Clone + Send + Sync + 'static>(probe: ReadinessProbe) -> Router<S> {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let probe = probe.clone();
                async move { readiness(probe).await }
            }),
        )
}

async fn readiness(probe: ReadinessProbe) -> Response {
    let checks = probe().await;
    let ready = checks.iter().all(|check| check.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    for check in checks.iter().filter(|check| !check.ok) {
        tracing::warn!(
            dependency = check.name,
            error = check.error.as_deref().unwrap_or("-"),
            "not ready: a dependency does not answer"
        );
    }
    let body = Readiness {
        status: if ready { "ready" } else { "not ready" },
    };
    (status, Json(body)).into_response()
}
