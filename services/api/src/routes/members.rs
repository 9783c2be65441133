use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use cadenza_domain::{OrgId, Role, UserId};
use cadenza_storage::{StorageError, memberships, tokens};
use serde::Deserialize;
use serde_json::json;

use crate::audit::{self, AuditedTx, Change, RequestMeta};
use crate::auth::{Authorized, perm};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, parse_id};
use crate::routes::wire::{MemberView, Page};
use crate::state::AppState;

pub async fn list(
    State(state): State<AppState>,
    auth: Authorized<perm::OrgRead>,
    Path(org_id): Path<String>,
) -> ApiResult<Json<Page<MemberView>>> {
    let org_id: OrgId = parse_id(&org_id, "org")?;
    auth.require(org_id)?;
    let mut conn = state.pool.acquire().await?;
    let members = memberships::list(&mut conn, org_id).await?;
    Ok(Json(Page {
        items: members.into_iter().map(MemberView::from).collect(),
        next_cursor: None,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMember {
    role: String,
}

fn not_a_member(err: StorageError, user: UserId) -> ApiError {
    match err {
        StorageError::NotFound(_) => ApiError::not_found("member", user),
        StorageError::Conflict(detail) => ApiError::Conflict(detail),
        other => other.into(),
    }
}

/// Only owners grant or take away the owner role.
fn check_owner_change(
    auth: &Authorized<perm::MembersManage>,
    org: OrgId,
    from: Option<Role>,
    to: Option<Role>,
) -> ApiResult<()> {
    let touches_owner = from == Some(Role::Owner) || to == Some(Role::Owner);
    let caller_is_owner =
        auth.principal.instance_admin || auth.principal.roles.get(&org) == Some(&Role::Owner);
    if touches_owner && !caller_is_owner {
        return Err(ApiError::Forbidden(
            "only an owner can grant or remove the owner role".into(),
        ));
    }
    Ok(())
}

pub async fn update(
    State(state): State<AppState>,
    auth: Authorized<perm::MembersManage>,
    meta: RequestMeta,
    Path((org_id, user_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<UpdateMember>,
) -> ApiResult<Json<crate::routes::wire::RoleGranted>> {
    let org_id: OrgId = parse_id(&org_id, "org")?;
    auth.require(org_id)?;
    let user_id: UserId = parse_id(&user_id, "member")?;
    let role: Role = body.role.parse().map_err(ApiError::BadRequest)?;
    let mut tx = AuditedTx::begin(&state.pool, &auth.principal, &meta).await?;
    let current = memberships::role_of(&mut tx, org_id, user_id).await?;
    check_owner_change(&auth, org_id, current, Some(role))?;
    let previous = memberships::set_role(&mut tx, org_id, user_id, role)
        .await
        .map_err(|err| not_a_member(err, user_id))?;
    // Service tokens made in the member's name never act above the member: a demotion lowers
    // them to the new role.
    let lowered = tokens::cap_service_tokens_made_by(&mut tx, org_id, user_id, role).await?;
    tx.record(Change {
            org: Some(org_id),
            action: "member.update",
            resource_type: "member",
            resource_id: Some(user_id.to_string()),
            diff: {
                let mut diff = audit::diff(&json!({"role": previous}), &json!({"role": role}));
                if !lowered.is_empty() {
                    diff["service_tokens_lowered"] = json!(lowered
                        .iter()
                        .map(|(id, was)| json!({"id": id.to_string(), "role": {"before": was, "after": role}}))
                        .collect::<Vec<_>>());
                }
                diff
            },
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Json(crate::routes::wire::RoleGranted {
        org_id: org_id.to_string(),
        user_id: Some(user_id.to_string()),
        role,
    }))
}

pub async fn remove(
    State(state): State<AppState>,
    auth: Authorized<perm::MembersManage>,
    meta: RequestMeta,
    Path((org_id, user_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let org_id: OrgId = parse_id(&org_id, "org")?;
    auth.require(org_id)?;
    let user_id: UserId = parse_id(&user_id, "member")?;
    let mut tx = AuditedTx::begin(&state.pool, &auth.principal, &meta).await?;
    let current = memberships::role_of(&mut tx, org_id, user_id).await?;
    check_owner_change(&auth, org_id, current, None)?;
    let previous = memberships::remove(&mut tx, org_id, user_id)
        .await
        .map_err(|err| not_a_member(err, user_id))?;
    // Service tokens made in the member's name stop working with the membership.
    let revoked = tokens::revoke_service_tokens_made_by(&mut tx, org_id, user_id).await?;
    tx.record(Change {
        org: Some(org_id),
        action: "member.remove",
        resource_type: "member",
        resource_id: Some(user_id.to_string()),
        diff: json!({
            "role": {"before": previous, "after": null},
            "service_tokens_revoked": revoked.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }),
    })
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
