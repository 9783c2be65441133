//! The one place requests are authenticated and authorized.
//!
//! `Principal` is who is calling (a user through a personal token or a session, or an org's
//! service token) and what they may do in each org. Handlers take `Authorized<P>` for the
//! permission `P` they need: it authenticates the caller, and `require(org)` answers 404 when the
//! caller cannot see that org at all (so foreign ids reveal nothing) and 403 when they can see it
//! but lack `P`. Deny by default: a permission is granted only through the role table.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use cadenza_domain::{OrgId, Permission, Role, Scope, TokenId, UserId};
use cadenza_storage::tokens::{self, TokenOwner};
use cadenza_storage::{StorageError, memberships, users};

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    User { id: UserId, email: String },
    ServiceToken { id: TokenId, name: String },
}

#[derive(Clone, Debug)]
pub struct Principal {
    pub actor: Actor,
    /// The token the request came with, if any.
    pub token_id: Option<TokenId>,
    pub instance_admin: bool,
    /// The caller's role in each org it belongs to.
    pub roles: BTreeMap<OrgId, Role>,
    /// When set, the token is narrowed to these permissions.
    pub scopes: Option<Vec<Permission>>,
}

impl Principal {
    pub fn user_id(&self) -> Option<UserId> {
        match &self.actor {
            Actor::User { id, .. } => Some(*id),
            Actor::ServiceToken { .. } => None,
        }
    }

    fn within_scopes(&self, permission: Permission) -> bool {
        self.scopes
            .as_ref()
            .is_none_or(|scopes| scopes.contains(&permission))
    }

    /// Whether the caller holds `permission` in `org`.
    pub fn can(&self, org: OrgId, permission: Permission) -> bool {
        if !self.within_scopes(permission) {
            return false;
        }
        if self.instance_admin {
            return true;
        }
        self.roles
            .get(&org)
            .is_some_and(|role| role.grants(permission))
    }

    /// Whether the org exists for this caller at all (any role, or instance administration).
    pub fn sees(&self, org: OrgId) -> bool {
        self.instance_admin || self.roles.contains_key(&org)
    }

    /// 404 for an org the caller cannot see, 403 for a missing permission in an org it can.
    pub fn require(&self, org: OrgId, permission: Permission) -> Result<(), ApiError> {
        if !self.sees(org) {
            return Err(ApiError::NotFound(format!("no org with id `{org}`")));
        }
        if !self.can(org, permission) {
            return Err(ApiError::Forbidden(format!(
                "this requires the `{permission}` permission in org {org}"
            )));
        }
        Ok(())
    }

    /// The orgs where the caller holds `permission`, as a storage scope.
    pub fn scope_for(&self, permission: Permission) -> Scope {
        if self.instance_admin && self.within_scopes(permission) {
            return Scope::Instance;
        }
        Scope::Orgs(
            self.roles
                .keys()
                .copied()
                .filter(|org| self.can(*org, permission))
                .collect(),
        )
    }

    pub fn require_instance_admin(&self) -> Result<(), ApiError> {
        if self.instance_admin && self.within_scopes(Permission::InstanceAdmin) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this requires the `instance.admin` permission".into(),
            ))
        }
    }

    /// The acting user, for endpoints that only make sense for a person (personal tokens,
    /// creating orgs).
    pub fn require_user(&self) -> Result<UserId, ApiError> {
        self.user_id().ok_or_else(|| {
            ApiError::Forbidden("this endpoint needs a user; service tokens cannot use it".into())
        })
    }

    /// A short label for logs and the audit log.
    pub fn label(&self) -> String {
        match &self.actor {
            Actor::User { email, .. } => email.clone(),
            Actor::ServiceToken { name, .. } => format!("service token `{name}`"),
        }
    }
}

fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(header) = parts.headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let header = header.to_str().map_err(|_| ApiError::Unauthenticated)?;
    let secret = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or(ApiError::Unauthenticated)?
        .trim();
    Ok(Some(secret))
}

/// Resolves the caller from a bearer token or, without one, from the session cookie.
pub async fn authenticate(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    let Some(secret) = bearer(parts)? else {
        let (user_id, _) = crate::session::authenticate_cookie(state, &parts.headers)
            .await?
            .ok_or(ApiError::Unauthenticated)?;
        let mut conn = state.pool.acquire().await.map_err(StorageError::from)?;
        let user = users::get(&mut conn, user_id)
            .await
            .map_err(|err| match err {
                StorageError::NotFound(_) => ApiError::Unauthenticated,
                other => other.into(),
            })?;
        let roles = memberships::roles_of(&mut conn, user_id).await?;
        return Ok(Principal {
            actor: Actor::User {
                id: user.id,
                email: user.email,
            },
            token_id: None,
            instance_admin: user.is_instance_admin,
            roles: roles.into_iter().collect(),
            scopes: None,
        });
    };
    let mut conn = state.pool.acquire().await.map_err(StorageError::from)?;
    let token = tokens::authenticate(&mut conn, secret)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let principal = match token.owner {
        TokenOwner::User(user_id) => {
            let user = users::get(&mut conn, user_id)
                .await
                .map_err(|err| match err {
                    StorageError::NotFound(_) => ApiError::Unauthenticated,
                    other => other.into(),
                })?;
            let roles = memberships::roles_of(&mut conn, user_id).await?;
            Principal {
                actor: Actor::User {
                    id: user.id,
                    email: user.email,
                },
                token_id: Some(token.token_id),
                instance_admin: user.is_instance_admin,
                roles: roles.into_iter().collect(),
                scopes: token.scopes,
            }
        }
        TokenOwner::Service { org, role } => Principal {
            actor: Actor::ServiceToken {
                id: token.token_id,
                name: token.name,
            },
            token_id: Some(token.token_id),
            instance_admin: false,
            roles: BTreeMap::from([(org, role)]),
            scopes: token.scopes,
        },
    };
    let span = tracing::Span::current();
    if let Some(token_id) = principal.token_id {
        span.record("token_id", tracing::field::display(token_id));
    }
    Ok(principal)
}

/// Any authenticated caller.
pub struct Authenticated(pub Principal);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = authenticate(parts, state).await?;
        crate::ratelimit::check_principal(state, &principal).await?;
        Ok(Authenticated(principal))
    }
}

/// A permission as a type, so a handler's signature says what it needs.
pub trait RequiredPermission: Send + Sync + 'static {
    const PERMISSION: Permission;
}

macro_rules! permission_types {
    ($($name:ident => $permission:ident),* $(,)?) => {
        pub mod perm {
            $(
                pub struct $name;
                impl super::RequiredPermission for $name {
                    const PERMISSION: cadenza_domain::Permission = cadenza_domain::Permission::$permission;
                }
            )*
        }
    };
}

permission_types!(
    OrgRead => OrgRead,
    OrgManage => OrgManage,
    OrgDelete => OrgDelete,
    MembersManage => MembersManage,
    ProjectsRead => ProjectsRead,
    ProjectsManage => ProjectsManage,
    RunsRead => RunsRead,
    RunsCreate => RunsCreate,
    RunsCancel => RunsCancel,
    SecretsManage => SecretsManage,
    AuditRead => AuditRead,
    TokensManage => TokensManage,
    InstanceAdmin => InstanceAdmin,
);

/// An authenticated caller that a handler will check for permission `P`.
pub struct Authorized<P: RequiredPermission> {
    pub principal: Principal,
    _permission: PhantomData<P>,
}

impl<P: RequiredPermission> Authorized<P> {
    pub const PERMISSION: Permission = P::PERMISSION;

    /// Checks `P` in `org` (404 when the org is invisible to the caller, 403 when `P` is
    /// missing) and counts the request against the org's rate limit.
    pub async fn require(&self, state: &AppState, org: OrgId) -> Result<(), ApiError> {
        self.principal.require(org, P::PERMISSION)?;
        crate::ratelimit::check_org(state, org).await
    }

    /// The orgs where the caller holds `P`.
    pub fn scope(&self) -> Scope {
        self.principal.scope_for(P::PERMISSION)
    }
}

impl<P: RequiredPermission> FromRequestParts<AppState> for Authorized<P> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Authenticated(principal) = Authenticated::from_request_parts(parts, state).await?;
        if P::PERMISSION == Permission::InstanceAdmin {
            principal.require_instance_admin()?;
        }
        Ok(Self {
            principal,
            _permission: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(roles: &[(OrgId, Role)], admin: bool, scopes: Option<Vec<Permission>>) -> Principal {
        Principal {
            actor: Actor::User {
                id: UserId::new(),
                email: "a@example.com".into(),
            },
            token_id: None,
            instance_admin: admin,
            roles: roles.iter().copied().collect(),
            scopes,
        }
    }

    #[test]
    fn foreign_orgs_are_not_found_and_missing_permissions_forbidden() {
        let mine = OrgId::new();
        let theirs = OrgId::new();
        let viewer = user(&[(mine, Role::Viewer)], false, None);
        assert!(viewer.require(mine, Permission::RunsRead).is_ok());
        assert!(matches!(
            viewer.require(mine, Permission::RunsCreate),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            viewer.require(theirs, Permission::RunsRead),
            Err(ApiError::NotFound(_))
        ));
    }

    #[test]
    fn scopes_narrow_even_an_owner_or_an_admin() {
        let org = OrgId::new();
        let narrowed = user(
            &[(org, Role::Owner)],
            true,
            Some(vec![Permission::RunsRead]),
        );
        assert!(narrowed.can(org, Permission::RunsRead));
        assert!(!narrowed.can(org, Permission::RunsCreate));
        assert!(narrowed.require_instance_admin().is_err());
        assert_eq!(narrowed.scope_for(Permission::RunsRead), Scope::Instance);
        assert_eq!(
            narrowed.scope_for(Permission::ProjectsManage),
            Scope::Orgs(Vec::new())
        );
    }
}
