use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use cadenza_domain::{OrgId, Scope};
use cadenza_storage::audit::{self, AuditFilter};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::auth::{Authorized, perm};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, next_cursor, page_limit, parse_cursor, parse_id};
use crate::routes::wire::{AuditEntryView, Page};
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    since: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    until: Option<OffsetDateTime>,
    cursor: Option<String>,
    limit: Option<i64>,
    /// `jsonl` exports the matching entries as JSON lines.
    format: Option<String>,
}

/// `GET /orgs/{org}/audit`: newest first; `format=jsonl` streams every match as JSON lines.
pub async fn list(
    State(state): State<AppState>,
    auth: Authorized<perm::AuditRead>,
    Path(org_id): Path<String>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<Response> {
    let org_id: OrgId = parse_id(&org_id, "org")?;
    auth.require(org_id)?;
    let export = match query.format.as_deref() {
        None | Some("json") => false,
        Some("jsonl") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown `format` `{other}`; use json or jsonl"
            )));
        }
    };
    let actor_id = query
        .actor
        .as_deref()
        .map(|raw| {
            raw.parse::<uuid::Uuid>()
                .map_err(|_| ApiError::BadRequest(format!("invalid `actor` `{raw}`")))
        })
        .transpose()?;
    let before = parse_cursor::<i64>(query.cursor.as_deref())?;
    let limit = if export {
        10_000
    } else {
        page_limit(
            query.limit,
            state.limits.default_page,
            state.limits.max_page,
        )?
    };
    let filter = AuditFilter {
        actor_id,
        action: query.action,
        resource_type: query.resource_type,
        resource_id: query.resource_id,
        since: query.since,
        until: query.until,
        before,
        limit,
    };
    let mut conn = state.pool.acquire().await?;
    let records = audit::list(&mut conn, &Scope::Org(org_id), &filter).await?;
    if export {
        let mut body = String::new();
        for record in records {
            let line = serde_json::to_string(&AuditEntryView::from(record))
                .map_err(|err| ApiError::Internal(Box::new(err)))?;
            body.push_str(&line);
            body.push('\n');
        }
        let mut response = body.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        return Ok(response);
    }
    let next_cursor = next_cursor(&records, limit, |record| record.id);
    Ok(Json(Page {
        items: records
            .into_iter()
            .map(AuditEntryView::from)
            .collect::<Vec<_>>(),
        next_cursor,
    })
    .into_response())
}
