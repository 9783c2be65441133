use cadenza_domain::{OrgId, Role, UserId};
use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::{StorageError, StorageResult};

#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub user_id: UserId,
    pub email: String,
    pub name: Option<String>,
    pub role: Role,
    pub joined_at: OffsetDateTime,
}

fn role(raw: &str) -> StorageResult<Role> {
    raw.parse().map_err(StorageError::Corrupt)
}

pub async fn role_of(
    conn: &mut PgConnection,
    org: OrgId,
    user: UserId,
) -> StorageResult<Option<Role>> {
    let row = sqlx::query!(
        "select role from memberships where org_id = $1 and user_id = $2",
        org.as_uuid(),
        user.as_uuid()
    )
    .fetch_optional(conn)
    .await?;
    row.map(|row| role(&row.role)).transpose()
}

/// Every org the user belongs to, with the role.
pub async fn roles_of(conn: &mut PgConnection, user: UserId) -> StorageResult<Vec<(OrgId, Role)>> {
    let rows = sqlx::query!(
        "select org_id, role from memberships where user_id = $1",
        user.as_uuid()
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| Ok((OrgId::from(row.org_id), role(&row.role)?)))
        .collect()
}

/// Adds a member; an existing membership keeps its role. Returns whether a row was added.
pub async fn add(
    conn: &mut PgConnection,
    org: OrgId,
    user: UserId,
    new_role: Role,
) -> StorageResult<bool> {
    let done = sqlx::query!(
        r#"insert into memberships (org_id, user_id, role) values ($1, $2, $3)
           on conflict (org_id, user_id) do nothing"#,
        org.as_uuid(),
        user.as_uuid(),
        new_role.as_str()
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn list(conn: &mut PgConnection, org: OrgId) -> StorageResult<Vec<Member>> {
    let rows = sqlx::query!(
        r#"select m.user_id, u.email, u.name, m.role, m.created_at
           from memberships m join users u on u.id = m.user_id
           where m.org_id = $1 order by m.created_at, u.email"#,
        org.as_uuid()
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(Member {
                user_id: row.user_id.into(),
                email: row.email,
                name: row.name,
                role: role(&row.role)?,
                joined_at: row.created_at,
            })
        })
        .collect()
}

/// Serializes membership changes of one org (so two admins cannot both demote the last two
/// owners), and returns how many owners it has.
async fn lock_owners(conn: &mut PgConnection, org: OrgId) -> StorageResult<i64> {
    sqlx::query!(
        "select id from orgs where id = $1 for update",
        org.as_uuid()
    )
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StorageError::NotFound("org"))?;
    let row = sqlx::query!(
        r#"select count(*) as "owners!" from memberships where org_id = $1 and role = 'owner'"#,
        org.as_uuid()
    )
    .fetch_one(conn)
    .await?;
    Ok(row.owners)
}

/// Changes a member's role. Returns the previous role. The last owner cannot be demoted.
pub async fn set_role(
    conn: &mut PgConnection,
    org: OrgId,
    user: UserId,
    new_role: Role,
) -> StorageResult<Role> {
    let owners = lock_owners(&mut *conn, org).await?;
    let current = role_of(&mut *conn, org, user)
        .await?
        .ok_or(StorageError::NotFound("member"))?;
    if current == Role::Owner && new_role != Role::Owner && owners <= 1 {
        return Err(StorageError::Conflict(
            "the last owner of an org cannot be demoted; make someone else owner first".into(),
        ));
    }
    sqlx::query!(
        "update memberships set role = $3 where org_id = $1 and user_id = $2",
        org.as_uuid(),
        user.as_uuid(),
        new_role.as_str()
    )
    .execute(conn)
    .await?;
    Ok(current)
}

/// Removes a member. Returns the role they had. The last owner cannot be removed.
pub async fn remove(conn: &mut PgConnection, org: OrgId, user: UserId) -> StorageResult<Role> {
    let owners = lock_owners(&mut *conn, org).await?;
    let current = role_of(&mut *conn, org, user)
        .await?
        .ok_or(StorageError::NotFound("member"))?;
    if current == Role::Owner && owners <= 1 {
        return Err(StorageError::Conflict(
            "the last owner of an org cannot be removed; make someone else owner first".into(),
        ));
    }
    sqlx::query!(
        "delete from memberships where org_id = $1 and user_id = $2",
        org.as_uuid(),
        user.as_uuid()
    )
    .execute(conn)
    .await?;
    Ok(current)
}
