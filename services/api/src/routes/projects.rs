use axum::Json;
use axum::extract::{Path, State};
use cadenza_domain::ProjectId;
use cadenza_storage::projects;
use serde::Deserialize;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, page_limit, parse_id};
use crate::routes::wire::{Page, ProjectView};
use crate::state::AppState;

#[derive(Deserialize)]
pub struct ListQuery {
    cursor: Option<String>,
    limit: Option<i64>,
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<ProjectView>>> {
    let limit = page_limit(
        query.limit,
        state.limits.default_page,
        state.limits.max_page,
    )?;
    let before = query
        .cursor
        .as_deref()
        .map(|cursor| {
            cursor
                .parse::<ProjectId>()
                .map_err(|_| ApiError::BadRequest(format!("invalid cursor `{cursor}`")))
        })
        .transpose()?;
    let mut conn = state
        .pool
        .acquire()
        .await
        .map_err(cadenza_storage::StorageError::from)?;
    let items = projects::list(&mut conn, principal.scope, before, limit).await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|project| project.id.to_string()))
        .flatten();
    Ok(Json(Page {
        items: items.into_iter().map(ProjectView::from).collect(),
        next_cursor,
    }))
}

pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(project_id): Path<String>,
) -> ApiResult<Json<ProjectView>> {
    let id: ProjectId = parse_id(&project_id, "project")?;
    let mut conn = state
        .pool
        .acquire()
        .await
        .map_err(cadenza_storage::StorageError::from)?;
    let project = projects::get(&mut conn, principal.scope, id)
        .await
        .map_err(|err| match err {
            cadenza_storage::StorageError::NotFound(_) => ApiError::not_found("project", id),
            other => other.into(),
        })?;
    Ok(Json(project.into()))
}
