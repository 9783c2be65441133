use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use cadenza_domain::{OrgId, Permission, Role, TokenId};
use cadenza_storage::StorageError;
use cadenza_storage::tokens::{self, NewToken, TokenOwner};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::audit::{AuditedTx, Change, RequestMeta};
use crate::auth::{Authenticated, Authorized, perm};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, parse_id};
use crate::principal::Principal;
use crate::routes::wire::{Page, TokenView};
use crate::state::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    name: String,
    /// Narrow the token to these permissions.
    #[schema(schema_with = crate::routes::wire::schemas::permissions, required = false)]
    scopes: Option<Vec<String>>,
    /// Role of an org service token (default `member`).
    #[schema(schema_with = crate::routes::wire::schemas::role, required = false)]
    role: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
}

fn parse_scopes(raw: Option<Vec<String>>) -> ApiResult<Option<Vec<Permission>>> {
    raw.map(|scopes| {
        scopes
            .iter()
            .map(|scope| scope.parse::<Permission>().map_err(ApiError::BadRequest))
            .collect()
    })
    .transpose()
}

fn validate(body: &CreateToken) -> ApiResult<()> {
    if body.name.trim().is_empty() || body.name.len() > 200 {
        return Err(ApiError::BadRequest(
            "`name` must be 1-200 characters".into(),
        ));
    }
    if let Some(expires_at) = body.expires_at
        && expires_at <= OffsetDateTime::now_utc()
    {
        return Err(ApiError::BadRequest(
            "`expires_at` must be in the future".into(),
        ));
    }
    Ok(())
}

async fn create(
    state: &AppState,
    principal: &Principal,
    meta: &RequestMeta,
    owner: TokenOwner,
    body: CreateToken,
    scopes: Option<Vec<Permission>>,
) -> ApiResult<(StatusCode, Json<TokenView>)> {
    let org = match &owner {
        TokenOwner::Service { org, .. } => Some(*org),
        TokenOwner::User(_) => None,
    };
    let mut tx = AuditedTx::begin(&state.pool, principal, meta).await?;
    let (record, secret) = tokens::create(
        &mut tx,
        NewToken {
            name: &body.name,
            owner,
            scopes: scopes.as_deref(),
            expires_at: body.expires_at,
            created_by: principal.on_behalf_of,
            created_by_token: principal.token_id,
        },
    )
    .await?;
    tx.record(Change {
            org,
            action: "token.create",
            resource_type: "token",
            resource_id: Some(record.id.to_string()),
            diff: json!({"name": {"before": null, "after": record.name}, "scopes": {"before": null, "after": scopes}}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenView::new(record, Some(secret))),
    ))
}

async fn revoke(
    state: &AppState,
    principal: &Principal,
    meta: &RequestMeta,
    owner: TokenOwner,
    raw_id: &str,
) -> ApiResult<StatusCode> {
    let id: TokenId = parse_id(raw_id, "token")?;
    let org = match &owner {
        TokenOwner::Service { org, .. } => Some(*org),
        TokenOwner::User(_) => None,
    };
    let mut tx = AuditedTx::begin(&state.pool, principal, meta).await?;
    tokens::revoke(&mut tx, &owner, id)
        .await
        .map_err(|err| match err {
            StorageError::NotFound(_) => ApiError::not_found("token", id),
            other => other.into(),
        })?;
    tx.record(Change {
        org,
        action: "token.revoke",
        resource_type: "token",
        resource_id: Some(id.to_string()),
        diff: json!({"revoked": {"before": false, "after": true}}),
    })
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_personal(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> ApiResult<Json<Page<TokenView>>> {
    let user = principal.require_user()?;
    let mut conn = state.pool.acquire().await?;
    let records = tokens::list(&mut conn, &TokenOwner::User(user)).await?;
    Ok(Json(Page {
        items: records
            .into_iter()
            .map(|record| TokenView::new(record, None))
            .collect(),
        next_cursor: None,
    }))
}

/// `POST /tokens`: a personal token acting as the caller, optionally narrowed. A narrowed token
/// can only make tokens narrowed at least as much.
pub async fn create_personal(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    meta: RequestMeta,
    ApiJson(body): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<TokenView>)> {
    let user = principal.require_user()?;
    validate(&body)?;
    if body.role.is_some() {
        return Err(ApiError::BadRequest(
            "personal tokens act as their user and take no `role`".into(),
        ));
    }
    let mut scopes = parse_scopes(body.scopes.clone())?;
    if let Some(own) = &principal.scopes {
        let requested = scopes.clone().unwrap_or_else(|| own.clone());
        if requested.iter().any(|scope| !own.contains(scope)) {
            return Err(ApiError::Forbidden(
                "a narrowed token cannot create a broader one".into(),
            ));
        }
        scopes = Some(requested);
    }
    create(
        &state,
        &principal,
        &meta,
        TokenOwner::User(user),
        body,
        scopes,
    )
    .await
}

/// `DELETE /tokens/{id}`: revokes one of the caller's personal tokens. A narrowed token may
/// revoke itself; revoking the user's other tokens takes `account.manage`.
pub async fn revoke_personal(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    meta: RequestMeta,
    Path(token_id): Path<String>,
) -> ApiResult<StatusCode> {
    let user = principal.require_user()?;
    let itself = principal
        .token_id
        .is_some_and(|own| own.to_string() == token_id);
    if !itself {
        principal.require_account()?;
    }
    revoke(&state, &principal, &meta, TokenOwner::User(user), &token_id).await
}

pub async fn list_service(
    State(state): State<AppState>,
    auth: Authorized<perm::TokensManage>,
    Path(org_id): Path<String>,
) -> ApiResult<Json<Page<TokenView>>> {
    let org_id: OrgId = parse_id(&org_id, "org")?;
    auth.require(org_id)?;
    let mut conn = state.pool.acquire().await?;
    let owner = TokenOwner::Service {
        org: org_id,
        role: Role::Viewer,
    };
    let records = tokens::list(&mut conn, &owner).await?;
    Ok(Json(Page {
        items: records
            .into_iter()
            .map(|record| TokenView::new(record, None))
            .collect(),
        next_cursor: None,
    }))
}

/// `POST /orgs/{org}/tokens`: a service token of the org. It can never do more than its maker:
/// its role is at most the caller's role there, and what it may do (its role's permissions
/// within its scopes) must be a subset of what the caller may do there. A narrowed caller's
/// token inherits the caller's scopes unless it asks for fewer.
pub async fn create_service(
    State(state): State<AppState>,
    auth: Authorized<perm::TokensManage>,
    meta: RequestMeta,
    Path(org_id): Path<String>,
    ApiJson(body): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<TokenView>)> {
    let org_id: OrgId = parse_id(&org_id, "org")?;
    auth.require(org_id)?;
    validate(&body)?;
    let role: Role = body
        .role
        .as_deref()
        .unwrap_or("member")
        .parse()
        .map_err(ApiError::BadRequest)?;
    let caller = &auth.principal;
    let caller_role = caller.role_in(org_id).unwrap_or(Role::Viewer);
    if role > caller_role {
        return Err(ApiError::Forbidden(format!(
            "a `{caller_role}` cannot create a token with the `{role}` role"
        )));
    }
    let scopes = parse_scopes(body.scopes.clone())?.or_else(|| caller.scopes.clone());
    let granted: Vec<Permission> = role
        .permissions()
        .iter()
        .copied()
        .filter(|permission| {
            scopes
                .as_ref()
                .is_none_or(|scopes| scopes.contains(permission))
        })
        .collect();
    if let Some(beyond) = granted
        .iter()
        .find(|permission| !caller.can(org_id, **permission))
    {
        return Err(ApiError::Forbidden(format!(
            "the new token could use `{beyond}`, which this caller may not; narrow it with `scopes`"
        )));
    }
    create(
        &state,
        caller,
        &meta,
        TokenOwner::Service { org: org_id, role },
        body,
        scopes,
    )
    .await
}

pub async fn revoke_service(
    State(state): State<AppState>,
    auth: Authorized<perm::TokensManage>,
    meta: RequestMeta,
    Path((org_id, token_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let org_id: OrgId = parse_id(&org_id, "org")?;
    auth.require(org_id)?;
    let owner = TokenOwner::Service {
        org: org_id,
        role: Role::Viewer,
    };
    revoke(&state, &auth.principal, &meta, owner, &token_id).await
}
