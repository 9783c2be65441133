//! Users, memberships and tokens for tests, written straight to storage.

use cadenza_domain::{OrgId, Permission, Role, UserId};
use cadenza_storage::PgConnection;
use cadenza_storage::tokens::{self, NewToken, TokenOwner};
use cadenza_storage::{memberships, users};

/// A user with the given roles and a personal token (narrowed to `scopes` when given).
pub async fn user_with_token(
    conn: &mut PgConnection,
    email: &str,
    roles: &[(OrgId, Role)],
    instance_admin: bool,
    scopes: Option<&[Permission]>,
) -> anyhow::Result<(UserId, String)> {
    let user = users::ensure(conn, email, None).await?;
    if instance_admin {
        users::set_instance_admin(conn, user.id, true).await?;
    }
    for (org, role) in roles {
        memberships::add(conn, *org, user.id, *role).await?;
    }
    let (_, secret) = tokens::create(
        conn,
        NewToken {
            name: "test",
            owner: TokenOwner::User(user.id),
            scopes,
            expires_at: None,
            created_by: Some(user.id),
            created_by_token: None,
        },
    )
    .await?;
    Ok((user.id, secret))
}

/// A service token of `org` with `role`.
pub async fn service_token(
    conn: &mut PgConnection,
    org: OrgId,
    role: Role,
    scopes: Option<&[Permission]>,
) -> anyhow::Result<String> {
    let (_, secret) = tokens::create(
        conn,
        NewToken {
            name: "test service",
            owner: TokenOwner::Service { org, role },
            scopes,
            expires_at: None,
            created_by: None,
            created_by_token: None,
        },
    )
    .await?;
    Ok(secret)
}
