pub mod events;
pub mod projects;
pub mod runs;
pub mod wire;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

pub fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/projects", get(projects::list))
        .route("/projects/{project_id}", get(projects::get))
        .route("/projects/{project_id}/runs", post(runs::create))
        .route("/runs", get(runs::list))
        .route("/runs/{run_id}", get(runs::get))
        .route("/runs/{run_id}/events", get(events::list))
        .route("/runs/{run_id}/events/stream", get(events::stream))
        .route("/runs/{run_id}/diff", get(runs::diff))
}
