//! `GET /capabilities`: what this instance offers the caller, so a client can adapt instead of
//! probing: the API version, how to follow runs live, the actions on runs, the agent harness and
//! the images it may run, the tracker adapters, the limits that apply, and feature flags.

use axum::Json;
use axum::extract::State;
use axum::http::Method;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Access, Authenticated};
use crate::openapi::API_VERSION;
use crate::routes::route_specs;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Capabilities {
    /// The version of this API's contract (`info.version` of the OpenAPI document).
    pub api_version: &'static str,
    /// The version of the server answering.
    pub server_version: &'static str,
    /// Where the OpenAPI document is.
    pub openapi: &'static str,
    /// How a client can follow changes live.
    pub streams: Vec<StreamTransport>,
    /// What a caller can do to a run (each needs the named permission in the run's org).
    pub actions: Vec<Action>,
    /// The agent harnesses runs use.
    pub harnesses: Vec<Harness>,
    /// Issue trackers runs can come from (none is connected to this instance yet).
    pub trackers: Vec<Tracker>,
    pub limits: CallerLimits,
    pub features: Features,
}

#[derive(Serialize, ToSchema)]
pub struct StreamTransport {
    /// `sse`.
    pub transport: &'static str,
    /// What it follows: `run`.
    pub resource: &'static str,
    pub path: &'static str,
    /// Whether a dropped stream resumes where it stopped (`Last-Event-ID`).
    pub resumable: bool,
}

#[derive(Serialize, ToSchema)]
pub struct Action {
    /// e.g. `cancel`, `messages`.
    pub name: String,
    pub method: String,
    pub path: &'static str,
    /// The permission it needs in the run's org.
    pub permission: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Harness {
    /// `openhands-agent-server`.
    pub name: &'static str,
    /// The agent images every org may use, as allowlist rules (repositories, with any tag or
    /// digest); an instance administrator may allow more for one org.
    pub images: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Tracker {
    /// e.g. `linear`.
    pub name: String,
    pub connected: bool,
}

#[derive(Serialize, ToSchema)]
pub struct CallerLimits {
    /// Requests per minute per token or session (0: unlimited).
    pub requests_per_minute: u64,
    /// Requests per minute per org (0: unlimited).
    pub org_requests_per_minute: u64,
    /// Open event streams per caller (0: unlimited).
    pub streams_per_caller: u64,
    /// The largest request body, in bytes.
    pub max_body_bytes: usize,
    /// The largest prompt or message, in bytes.
    pub max_prompt_bytes: usize,
    pub default_page_size: i64,
    pub max_page_size: i64,
    /// How long a request may take before it is answered `503 timeout`.
    pub request_timeout_secs: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Features {
    /// Browser login through the instance's OIDC provider.
    pub oidc_login: bool,
    /// A message to a finished run continues it in the same workspace as a follow-up run.
    pub follow_up_turns: bool,
    /// `Idempotency-Key` on run creation.
    pub idempotent_run_creation: bool,
    /// The org-wide event stream (not offered yet).
    pub org_event_stream: bool,
    /// The WebSocket transport (not offered yet).
    pub websocket: bool,
}

/// The actions on a run: the route table's `POST /runs/{run_id}/...` routes.
fn run_actions() -> Vec<Action> {
    route_specs()
        .into_iter()
        .filter(|spec| spec.method == Method::POST)
        .filter_map(|spec| {
            let name = spec.path.strip_prefix("/runs/{run_id}/")?;
            let Access::Org(permission) = spec.access else {
                return None;
            };
            Some(Action {
                name: name.to_owned(),
                method: spec.method.to_string(),
                path: spec.path,
                permission: permission.as_str(),
            })
        })
        .collect()
}

pub async fn get(
    State(state): State<AppState>,
    Authenticated(_): Authenticated,
) -> Json<Capabilities> {
    let rates = state.rate_limiter.limits();
    Json(Capabilities {
        api_version: API_VERSION,
        server_version: env!("CARGO_PKG_VERSION"),
        openapi: "/api/v1/openapi.json",
        streams: vec![StreamTransport {
            transport: "sse",
            resource: "run",
            path: "/api/v1/runs/{run_id}/events/stream",
            resumable: true,
        }],
        actions: run_actions(),
        harnesses: vec![Harness {
            name: "openhands-agent-server",
            images: state.images.rules.iter().map(ToString::to_string).collect(),
        }],
        trackers: Vec::new(),
        limits: CallerLimits {
            requests_per_minute: rates.per_caller_per_minute,
            org_requests_per_minute: rates.per_org_per_minute,
            streams_per_caller: state.streams.settings.max_per_caller,
            max_body_bytes: state.limits.max_body_bytes,
            max_prompt_bytes: cadenza_domain::validation::MAX_PROMPT_BYTES,
            default_page_size: state.limits.default_page,
            max_page_size: state.limits.max_page,
            request_timeout_secs: state.limits.request_timeout.as_secs(),
        },
        features: Features {
            oidc_login: state.sessions.login_available(),
            follow_up_turns: true,
            idempotent_run_creation: true,
            org_event_stream: false,
            websocket: false,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_actions_are_the_tables_post_routes_on_a_run() {
        let actions = run_actions();
        let names: Vec<&str> = actions.iter().map(|action| action.name.as_str()).collect();
        assert_eq!(names, ["cancel", "messages", "retry"]);
        assert_eq!(actions[0].permission, "runs.cancel");
        assert_eq!(actions[1].permission, "runs.create");
    }
}
