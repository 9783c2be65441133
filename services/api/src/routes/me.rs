use axum::Json;
use axum::extract::State;
use cadenza_storage::{orgs, users};

use crate::auth::Authenticated;
use crate::error::ApiResult;
use crate::principal::Actor;
use crate::routes::wire::{ActorView, MeView, MembershipView};
use crate::state::AppState;

/// `GET /me`: who the caller is, the orgs it belongs to with its role, and what its token may do.
pub async fn get(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> ApiResult<Json<MeView>> {
    let mut conn = state.pool.acquire().await?;
    let mut memberships = Vec::new();
    for (org_id, role) in &principal.roles {
        let org = orgs::get(&mut conn, &cadenza_domain::Scope::Instance, *org_id).await?;
        memberships.push(MembershipView {
            org_id: org.id.to_string(),
            slug: org.slug,
            name: org.name,
            role: *role,
        });
    }
    let actor = match &principal.actor {
        Actor::User { id, .. } => {
            let user = users::get(&mut conn, *id).await?;
            ActorView::User {
                id: user.id.to_string(),
                email: user.email,
                name: user.name,
            }
        }
        Actor::ServiceToken { id, name } => ActorView::ServiceToken {
            id: id.to_string(),
            name: name.clone(),
        },
    };
    Ok(Json(MeView {
        actor,
        instance_admin: principal.instance_admin,
        orgs: memberships,
        token_id: principal.token_id.map(|id| id.to_string()),
        scopes: principal.scopes.clone(),
    }))
}
