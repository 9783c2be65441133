use axum::Json;
use axum::extract::State;
use cadenza_domain::{OrgId, Scope, UserId};
use cadenza_storage::{StorageError, orgs, users};
use serde::Deserialize;

use crate::auth::{Authorized, perm};
use crate::error::ApiResult;
use crate::extract::{ApiQuery, next_cursor, page_limit, parse_cursor};
use crate::routes::wire::{OrgView, Page, UserView};
use crate::state::AppState;

#[derive(Deserialize)]
pub struct ListQuery {
    cursor: Option<String>,
    limit: Option<i64>,
}

/// `GET /admin/orgs`: every org (instance administrators only).
pub async fn orgs(
    State(state): State<AppState>,
    _admin: Authorized<perm::InstanceAdmin>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<OrgView>>> {
    let limit = page_limit(
        query.limit,
        state.limits.default_page,
        state.limits.max_page,
    )?;
    let before: Option<OrgId> = parse_cursor(query.cursor.as_deref())?;
    let mut conn = state.pool.acquire().await.map_err(StorageError::from)?;
    let items = orgs::list(&mut conn, &Scope::Instance, before, limit).await?;
    let next_cursor = next_cursor(&items, limit, |org| org.id);
    Ok(Json(Page {
        items: items
            .into_iter()
            .map(|org| OrgView::new(org, None))
            .collect(),
        next_cursor,
    }))
}

/// `GET /admin/users`: every user (instance administrators only).
pub async fn users(
    State(state): State<AppState>,
    _admin: Authorized<perm::InstanceAdmin>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<UserView>>> {
    let limit = page_limit(
        query.limit,
        state.limits.default_page,
        state.limits.max_page,
    )?;
    let before: Option<UserId> = parse_cursor(query.cursor.as_deref())?;
    let mut conn = state.pool.acquire().await.map_err(StorageError::from)?;
    let items = users::list(&mut conn, before, limit).await?;
    let next_cursor = next_cursor(&items, limit, |user| user.id);
    Ok(Json(Page {
        items: items.into_iter().map(UserView::from).collect(),
        next_cursor,
    }))
}
