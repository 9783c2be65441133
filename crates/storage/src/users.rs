use cadenza_domain::UserId;
use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::{StorageError, StorageResult};

#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub name: Option<String>,
    pub is_instance_admin: bool,
    pub created_at: OffsetDateTime,
    pub last_login_at: Option<OffsetDateTime>,
}

macro_rules! user_from_row {
    ($row:expr) => {
        User {
            id: $row.id.into(),
            email: $row.email,
            name: $row.name,
            is_instance_admin: $row.is_instance_admin,
            created_at: $row.created_at,
            last_login_at: $row.last_login_at,
        }
    };
}

/// The user an OpenID Connect identity maps to, created at first login. An existing user with
/// the same email (e.g. the bootstrap admin) is linked to the identity on first login.
pub async fn upsert_from_login(
    conn: &mut PgConnection,
    issuer: &str,
    subject: &str,
    email: &str,
    name: Option<&str>,
) -> StorageResult<(User, bool)> {
    if let Some(row) = sqlx::query!(
        r#"update users set last_login_at = now(), email = $3, name = coalesce($4, name)
           where oidc_issuer = $1 and oidc_subject = $2
           returning id, email, name, is_instance_admin, created_at, last_login_at"#,
        issuer,
        subject,
        email,
        name
    )
    .fetch_optional(&mut *conn)
    .await?
    {
        return Ok((user_from_row!(row), false));
    }
    if let Some(row) = sqlx::query!(
        r#"update users set last_login_at = now(), oidc_issuer = $1, oidc_subject = $2,
                            name = coalesce($4, name)
           where lower(email) = lower($3) and oidc_subject is null
           returning id, email, name, is_instance_admin, created_at, last_login_at"#,
        issuer,
        subject,
        email,
        name
    )
    .fetch_optional(&mut *conn)
    .await?
    {
        return Ok((user_from_row!(row), false));
    }
    let row = sqlx::query!(
        r#"insert into users (id, email, name, oidc_issuer, oidc_subject, last_login_at)
           values ($1, $2, $3, $4, $5, now())
           returning id, email, name, is_instance_admin, created_at, last_login_at"#,
        UserId::new().as_uuid(),
        email,
        name,
        issuer,
        subject
    )
    .fetch_one(conn)
    .await?;
    Ok((user_from_row!(row), true))
}

/// Creates a user that has not logged in yet (bootstrap, CLI), or returns the existing one.
pub async fn ensure(
    conn: &mut PgConnection,
    email: &str,
    name: Option<&str>,
) -> StorageResult<User> {
    if let Some(user) = find_by_email(&mut *conn, email).await? {
        return Ok(user);
    }
    let row = sqlx::query!(
        r#"insert into users (id, email, name) values ($1, $2, $3)
           returning id, email, name, is_instance_admin, created_at, last_login_at"#,
        UserId::new().as_uuid(),
        email,
        name
    )
    .fetch_one(conn)
    .await?;
    Ok(user_from_row!(row))
}

pub async fn find_by_email(conn: &mut PgConnection, email: &str) -> StorageResult<Option<User>> {
    let row = sqlx::query!(
        r#"select id, email, name, is_instance_admin, created_at, last_login_at
           from users where lower(email) = lower($1)"#,
        email
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|row| user_from_row!(row)))
}

pub async fn get(conn: &mut PgConnection, id: UserId) -> StorageResult<User> {
    let row = sqlx::query!(
        r#"select id, email, name, is_instance_admin, created_at, last_login_at
           from users where id = $1"#,
        id.as_uuid()
    )
    .fetch_optional(conn)
    .await?
    .ok_or(StorageError::NotFound("user"))?;
    Ok(user_from_row!(row))
}

pub async fn set_instance_admin(
    conn: &mut PgConnection,
    id: UserId,
    admin: bool,
) -> StorageResult<()> {
    sqlx::query!(
        "update users set is_instance_admin = $2 where id = $1",
        id.as_uuid(),
        admin
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Every user, newest first (instance administration).
pub async fn list(
    conn: &mut PgConnection,
    before: Option<UserId>,
    limit: i64,
) -> StorageResult<Vec<User>> {
    let rows = sqlx::query!(
        r#"select id, email, name, is_instance_admin, created_at, last_login_at
           from users where ($1::uuid is null or id < $1) order by id desc limit $2"#,
        before.map(|id| id.as_uuid()),
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|row| user_from_row!(row)).collect())
}
