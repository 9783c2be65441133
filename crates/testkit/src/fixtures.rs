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

/// An org (slug made unique from `slug`) with one project (image `img`, no repository) and one
/// queued run in it.
pub async fn org_with_queued_run(
    conn: &mut PgConnection,
    slug: &str,
) -> anyhow::Result<(
    cadenza_domain::Org,
    cadenza_domain::Project,
    cadenza_domain::Run,
)> {
    use cadenza_storage::runs::{self, NewRun, Submitted};
    let org = cadenza_storage::orgs::create(conn, &crate::infra::unique_name(slug), slug).await?;
    let project = cadenza_storage::projects::create(
        conn,
        org.id,
        "p",
        "p",
        &cadenza_domain::AgentSettings::with_image("img"),
        &cadenza_domain::Repository::default(),
    )
    .await?;
    let submitted = runs::submit(
        conn,
        NewRun {
            org_id: org.id,
            project_id: project.id,
            prompt: "$ true",
            idempotency_key: None,
        },
    )
    .await?;
    let Submitted::Created(run) = submitted else {
        anyhow::bail!("a run submitted without an idempotency key already existed");
    };
    Ok((org, project, run))
}
