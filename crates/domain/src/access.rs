//! Roles and permissions: one catalogue and one role → permission table. Deny by default: a
//! permission not listed for a role is not granted.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Everything an actor can be allowed to do. Handlers name the one they need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Permission {
    #[serde(rename = "org.read")]
    OrgRead,
    #[serde(rename = "org.manage")]
    OrgManage,
    #[serde(rename = "org.delete")]
    OrgDelete,
    #[serde(rename = "members.manage")]
    MembersManage,
    #[serde(rename = "projects.read")]
    ProjectsRead,
    #[serde(rename = "projects.manage")]
    ProjectsManage,
    #[serde(rename = "runs.read")]
    RunsRead,
    #[serde(rename = "runs.create")]
    RunsCreate,
    #[serde(rename = "runs.cancel")]
    RunsCancel,
    #[serde(rename = "secrets.manage")]
    SecretsManage,
    #[serde(rename = "audit.read")]
    AuditRead,
    #[serde(rename = "tokens.manage")]
    TokensManage,
    #[serde(rename = "instance.admin")]
    InstanceAdmin,
    /// Acting on the caller's own account: creating orgs, accepting invitations, managing the
    /// user's other personal tokens, logging out. No role grants it; only an unnarrowed token
    /// or one narrowed to include it may do these.
    #[serde(rename = "account.manage")]
    AccountManage,
}

impl Permission {
    pub const ALL: [Permission; 14] = [
        Permission::OrgRead,
        Permission::OrgManage,
        Permission::OrgDelete,
        Permission::MembersManage,
        Permission::ProjectsRead,
        Permission::ProjectsManage,
        Permission::RunsRead,
        Permission::RunsCreate,
        Permission::RunsCancel,
        Permission::SecretsManage,
        Permission::AuditRead,
        Permission::TokensManage,
        Permission::InstanceAdmin,
        Permission::AccountManage,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Permission::OrgRead => "org.read",
            Permission::OrgManage => "org.manage",
            Permission::OrgDelete => "org.delete",
            Permission::MembersManage => "members.manage",
            Permission::ProjectsRead => "projects.read",
            Permission::ProjectsManage => "projects.manage",
            Permission::RunsRead => "runs.read",
            Permission::RunsCreate => "runs.create",
            Permission::RunsCancel => "runs.cancel",
            Permission::SecretsManage => "secrets.manage",
            Permission::AuditRead => "audit.read",
            Permission::TokensManage => "tokens.manage",
            Permission::InstanceAdmin => "instance.admin",
            Permission::AccountManage => "account.manage",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Permission::ALL
            .into_iter()
            .find(|permission| permission.as_str() == s)
            .ok_or_else(|| format!("unknown permission `{s}`"))
    }
}

/// A member's role in one org.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Member,
    Admin,
    Owner,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Member, Role::Admin, Role::Owner];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// The role → permission table. Each role includes the one below it.
    pub fn permissions(self) -> &'static [Permission] {
        use Permission as P;
        const VIEWER: &[Permission] = &[P::OrgRead, P::ProjectsRead, P::RunsRead];
        const MEMBER: &[Permission] = &[
            P::OrgRead,
            P::ProjectsRead,
            P::RunsRead,
            P::RunsCreate,
            P::RunsCancel,
        ];
        const ADMIN: &[Permission] = &[
            P::OrgRead,
            P::ProjectsRead,
            P::RunsRead,
            P::RunsCreate,
            P::RunsCancel,
            P::OrgManage,
            P::MembersManage,
            P::ProjectsManage,
            P::SecretsManage,
            P::AuditRead,
            P::TokensManage,
        ];
        const OWNER: &[Permission] = &[
            P::OrgRead,
            P::ProjectsRead,
            P::RunsRead,
            P::RunsCreate,
            P::RunsCancel,
            P::OrgManage,
            P::MembersManage,
            P::ProjectsManage,
            P::SecretsManage,
            P::AuditRead,
            P::TokensManage,
            P::OrgDelete,
        ];
        match self {
            Role::Viewer => VIEWER,
            Role::Member => MEMBER,
            Role::Admin => ADMIN,
            Role::Owner => OWNER,
        }
    }

    pub fn grants(self, permission: Permission) -> bool {
        self.permissions().contains(&permission)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| format!("unknown role `{s}`; expected viewer, member, admin or owner"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_includes_the_one_below() {
        for pair in Role::ALL.windows(2) {
            for permission in pair[0].permissions() {
                assert!(
                    pair[1].grants(*permission),
                    "{} lacks {permission}",
                    pair[1]
                );
            }
        }
    }

    #[test]
    fn instance_administration_is_never_an_org_role() {
        for role in Role::ALL {
            assert!(!role.grants(Permission::InstanceAdmin));
        }
    }

    #[test]
    fn only_owners_delete_orgs_and_viewers_only_read() {
        assert_eq!(
            Role::ALL
                .iter()
                .filter(|role| role.grants(Permission::OrgDelete))
                .count(),
            1
        );
        assert!(
            Role::Viewer
                .permissions()
                .iter()
                .all(|permission| permission.as_str().ends_with(".read"))
        );
    }

    #[test]
    fn names_round_trip() {
        for permission in Permission::ALL {
            assert_eq!(permission.as_str().parse::<Permission>(), Ok(permission));
            assert_eq!(
                serde_json::to_string(&permission).expect("json"),
                format!("\"{permission}\"")
            );
        }
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
    }
}
