use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use cadenza_domain::{OrgId, Role, Scope};
use cadenza_storage::{StorageError, memberships, orgs};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::{self, AuditedTx, Change, RequestMeta};
use crate::auth::{Authenticated, Authorized, perm};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery, next_cursor, page_limit, parse_cursor, parse_id};
use crate::routes::wire::{OrgView, Page};
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    cursor: Option<String>,
    limit: Option<i64>,
}

/// `GET /orgs`: the orgs the caller belongs to (every org for an instance admin).
pub async fn list(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<OrgView>>> {
    let limit = page_limit(
        query.limit,
        state.limits.default_page,
        state.limits.max_page,
    )?;
    let before = parse_cursor::<OrgId>(query.cursor.as_deref())?;
    let scope = if principal.instance_admin {
        Scope::Instance
    } else {
        Scope::Orgs(principal.roles.keys().copied().collect())
    };
    let mut conn = state.pool.acquire().await?;
    let items = orgs::list(&mut conn, &scope, before, limit).await?;
    let next_cursor = next_cursor(&items, limit, |org| org.id);
    Ok(Json(Page {
        items: items
            .into_iter()
            .map(|org| {
                let role = principal.roles.get(&org.id).copied();
                OrgView::new(org, role)
            })
            .collect(),
        next_cursor,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    slug: String,
    name: String,
}

fn validate_slug(slug: &str) -> ApiResult<()> {
    let valid = !slug.is_empty()
        && slug.len() <= 63
        && slug
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !slug.starts_with('-');
    if valid {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid slug `{slug}`: use 1-63 lowercase letters, digits and dashes, not starting with a dash"
        )))
    }
}

pub fn validate_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(ApiError::BadRequest(
            "`name` must be 1-200 characters".into(),
        ));
    }
    Ok(())
}

/// Slugs nobody gets: names of the site's own paths and of roles people might mistake for
/// official ones. Refused exactly like a slug in use, so "unavailable" says nothing about
/// whether another tenant exists.
const RESERVED_SLUGS: &[&str] = &[
    "admin", "api", "app", "auth", "billing", "cadenza", "docs", "help", "login", "logout", "new",
    "org", "orgs", "root", "security", "settings", "status", "support", "system", "www",
];

/// The answer for a slug that cannot be had, with a free one to use instead. It does not say
/// why (reserved or in use), nor whose it is.
async fn slug_unavailable(conn: &mut cadenza_storage::PgConnection, slug: &str) -> ApiError {
    let stem: String = slug.chars().take(56).collect();
    let mut suggestion = None;
    for _ in 0..5 {
        let candidate = format!("{stem}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
        if let Ok(None) = orgs::find_by_slug(conn, &candidate).await {
            suggestion = Some(candidate);
            break;
        }
    }
    ApiError::Conflict(match suggestion {
        Some(free) => format!("the slug `{slug}` is not available; `{free}` is"),
        None => format!("the slug `{slug}` is not available; choose another"),
    })
}

/// `POST /orgs`: creates an org; the creating user becomes its owner.
pub async fn create(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    meta: RequestMeta,
    ApiJson(body): ApiJson<CreateOrg>,
) -> ApiResult<(StatusCode, Json<OrgView>)> {
    let user = principal.require_account()?;
    validate_slug(&body.slug)?;
    validate_name(&body.name)?;
    let mut tx = AuditedTx::begin(&state.pool, &principal, &meta).await?;
    if RESERVED_SLUGS.contains(&body.slug.as_str()) {
        return Err(slug_unavailable(&mut tx, &body.slug).await);
    }
    let org = match orgs::create(&mut tx, &body.slug, &body.name).await {
        Ok(org) => org,
        Err(StorageError::Conflict(_)) => {
            drop(tx);
            let mut conn = state.pool.acquire().await?;
            return Err(slug_unavailable(&mut conn, &body.slug).await);
        }
        Err(other) => return Err(other.into()),
    };
    memberships::add(&mut tx, org.id, user, Role::Owner).await?;
    tx.record(Change {
            org: Some(org.id),
            action: "org.create",
            resource_type: "org",
            resource_id: Some(org.id.to_string()),
            diff: json!({"slug": {"before": null, "after": org.slug}, "name": {"before": null, "after": org.name}}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(OrgView::new(org, Some(Role::Owner))),
    ))
}

pub async fn get(
    State(state): State<AppState>,
    auth: Authorized<perm::OrgRead>,
    Path(org_id): Path<String>,
) -> ApiResult<Json<OrgView>> {
    let org_id: OrgId = parse_id(&org_id, "org")?;
    auth.require(org_id)?;
    let mut conn = state.pool.acquire().await?;
    let org = orgs::get(&mut conn, &Scope::Org(org_id), org_id).await?;
    let role = auth.principal.roles.get(&org_id).copied();
    Ok(Json(OrgView::new(org, role)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrg {
    name: Option<String>,
}

pub async fn update(
    State(state): State<AppState>,
    auth: Authorized<perm::OrgManage>,
    meta: RequestMeta,
    Path(org_id): Path<String>,
    ApiJson(body): ApiJson<UpdateOrg>,
) -> ApiResult<Json<OrgView>> {
    let org_id: OrgId = parse_id(&org_id, "org")?;
    auth.require(org_id)?;
    let mut tx = AuditedTx::begin(&state.pool, &auth.principal, &meta).await?;
    let before = orgs::get(&mut tx, &Scope::Org(org_id), org_id).await?;
    if let Some(name) = &body.name {
        validate_name(name)?;
        orgs::rename(&mut tx, org_id, name).await?;
    }
    let after = orgs::get(&mut tx, &Scope::Org(org_id), org_id).await?;
    tx.record(Change {
        org: Some(org_id),
        action: "org.update",
        resource_type: "org",
        resource_id: Some(org_id.to_string()),
        diff: audit::diff(&json!({"name": before.name}), &json!({"name": after.name})),
    })
    .await?;
    tx.commit().await?;
    let role = auth.principal.roles.get(&org_id).copied();
    Ok(Json(OrgView::new(after, role)))
}

pub async fn delete(
    State(state): State<AppState>,
    auth: Authorized<perm::OrgDelete>,
    meta: RequestMeta,
    Path(org_id): Path<String>,
) -> ApiResult<StatusCode> {
    let org_id: OrgId = parse_id(&org_id, "org")?;
    auth.require(org_id)?;
    let mut tx = AuditedTx::begin(&state.pool, &auth.principal, &meta).await?;
    let org = orgs::get(&mut tx, &Scope::Org(org_id), org_id).await?;
    orgs::delete(&mut tx, org_id).await?;
    tx.record(Change {
        org: Some(org_id),
        action: "org.delete",
        resource_type: "org",
        resource_id: Some(org_id.to_string()),
        diff: json!({"slug": {"before": org.slug, "after": null}}),
    })
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

pub fn role_json(role: Option<Role>) -> Value {
    role.map(|role| json!(role)).unwrap_or(Value::Null)
}
