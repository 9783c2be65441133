//! Who is calling and what they may do: pure authorization logic, no I/O.
//!
//! A `Principal` is a user (through a personal token or a session) or an org's service token,
//! with its role in each org and, for a narrowed token, the permissions it is narrowed to.
//! `require(org, p)` answers 404 when the caller cannot see `org` at all (so foreign ids reveal
//! nothing) and 403 when it can but lacks `p`. Deny by default: a permission is granted only
//! through the role table, and a token's scopes only ever take permissions away.

use std::collections::BTreeMap;

use cadenza_domain::{OrgId, Permission, Role, Scope, TokenId, UserId};

use crate::error::ApiError;

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
    /// The person this caller acts for: the user itself, or the member a service token was made
    /// by (tokens it makes are recorded as made by that person too).
    pub on_behalf_of: Option<UserId>,
}

/// The rate-limit bucket a caller's requests count against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerBucket(pub String);

impl Principal {
    /// A user, through a session (`token` is `None`) or a personal token.
    pub fn for_user(
        user: &cadenza_storage::users::User,
        roles: impl IntoIterator<Item = (OrgId, Role)>,
        token_id: Option<TokenId>,
        scopes: Option<Vec<Permission>>,
    ) -> Self {
        Principal {
            actor: Actor::User {
                id: user.id,
                email: user.email.clone(),
            },
            token_id,
            instance_admin: user.is_instance_admin,
            roles: roles.into_iter().collect(),
            scopes,
            on_behalf_of: Some(user.id),
        }
    }

    /// An org's service token.
    pub fn for_service_token(
        token: &cadenza_storage::tokens::TokenPrincipal,
        org: OrgId,
        role: Role,
    ) -> Self {
        Principal {
            actor: Actor::ServiceToken {
                id: token.token_id,
                name: token.name.clone(),
            },
            token_id: Some(token.token_id),
            instance_admin: false,
            roles: BTreeMap::from([(org, role)]),
            scopes: token.scopes.clone(),
            on_behalf_of: token.created_by,
        }
    }

    pub fn user_id(&self) -> Option<UserId> {
        match &self.actor {
            Actor::User { id, .. } => Some(*id),
            Actor::ServiceToken { .. } => None,
        }
    }

    pub fn within_scopes(&self, permission: Permission) -> bool {
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

    /// Whether the caller holds `permission` in at least one org (or instance-wide).
    pub fn can_anywhere(&self, permission: Permission) -> bool {
        (self.instance_admin && self.within_scopes(permission))
            || self.roles.keys().any(|org| self.can(*org, permission))
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

    /// The role the caller acts with in `org`: its own, `owner` for an instance admin.
    pub fn role_in(&self, org: OrgId) -> Option<Role> {
        if self.instance_admin {
            return Some(Role::Owner);
        }
        self.roles.get(&org).copied()
    }

    /// What the caller may actually do in `org`: its role's permissions within its scopes.
    pub fn permissions_in(&self, org: OrgId) -> Vec<Permission> {
        Permission::ALL
            .into_iter()
            .filter(|permission| *permission != Permission::InstanceAdmin)
            .filter(|permission| self.can(org, *permission))
            .collect()
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

    /// The acting user, for actions on the user's own account (joining orgs, creating them,
    /// managing the user's tokens, logging out): refused for a token narrowed without
    /// `account.manage`.
    pub fn require_account(&self) -> Result<UserId, ApiError> {
        let user = self.require_user()?;
        if !self.within_scopes(Permission::AccountManage) {
            return Err(ApiError::Forbidden(
                "this token is narrowed and lacks the `account.manage` scope".into(),
            ));
        }
        Ok(user)
    }

    /// The bucket for per-caller rate limits: the token, or the session's user.
    pub fn rate_limit_bucket(&self) -> CallerBucket {
        CallerBucket(match (&self.actor, self.token_id) {
            (_, Some(token)) => format!("token:{token}"),
            (Actor::User { id, .. }, None) => format!("user:{id}"),
            (Actor::ServiceToken { id, .. }, None) => format!("token:{id}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn user(roles: &[(OrgId, Role)], admin: bool, scopes: Option<Vec<Permission>>) -> Principal {
        let id = UserId::new();
        Principal {
            actor: Actor::User {
                id,
                email: "a@example.com".into(),
            },
            token_id: None,
            instance_admin: admin,
            roles: roles.iter().copied().collect(),
            scopes,
            on_behalf_of: Some(id),
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
        assert_eq!(narrowed.permissions_in(org), vec![Permission::RunsRead]);
        assert!(narrowed.require_account().is_err());
    }

    #[test]
    fn account_actions_need_an_unnarrowed_token_or_the_account_scope() {
        let org = OrgId::new();
        assert!(
            user(&[(org, Role::Viewer)], false, None)
                .require_account()
                .is_ok()
        );
        assert!(
            user(&[], false, Some(vec![Permission::AccountManage]))
                .require_account()
                .is_ok()
        );
        assert!(
            user(
                &[(org, Role::Owner)],
                false,
                Some(vec![Permission::TokensManage])
            )
            .require_account()
            .is_err()
        );
    }
}
