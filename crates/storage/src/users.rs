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
    /// The identity provider vouched for `email` when the account was linked.
    pub email_verified: bool,
    /// Linked to an identity (has logged in); a pre-created account is not.
    pub linked: bool,
}

impl User {
    /// Whether `email` may be relied on to grant access addressed to it (invitations): the
    /// provider verified it, or an operator created the account for it and nobody has linked it
    /// since.
    pub fn email_is_trusted(&self) -> bool {
        self.email_verified || !self.linked
    }
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
            email_verified: $row.email_verified,
            linked: $row.linked,
        }
    };
}

/// What an OpenID Connect login says about its user.
pub struct LoginIdentity<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    pub email: &'a str,
    pub email_verified: bool,
    pub name: Option<&'a str>,
}

/// How a login maps to an account.
#[derive(Clone, Debug, PartialEq)]
pub enum LoginOutcome {
    /// The identity's own account. `token_email` is set when the provider now reports another
    /// address than the stored one (which is kept: an email never changes silently).
    Returning {
        user: User,
        token_email: Option<String>,
    },
    /// A pre-created account (bootstrap admin, `admin grant`) claimed by a verified email.
    Claimed(User),
    /// A new account.
    Created(User),
    /// The email belongs to an account this login may not have.
    Refused(LoginRefusal),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginRefusal {
    /// An account claims this email and the provider did not verify it.
    UnverifiedEmailInUse,
    /// The email is already linked to another identity.
    EmailLinkedToAnotherIdentity,
}

/// Maps a login to an account (docs/ACCESS.md, "Signing in"):
/// - an identity seen before gets its own account back, whatever email the token carries now;
/// - otherwise a verified email claims the pre-created account with that address, if any;
/// - an unverified email that an account claims is refused, so it can never take over or block
///   the real owner; an unverified email nobody claims gets a new account that claims nothing.
pub async fn login(
    conn: &mut PgConnection,
    identity: &LoginIdentity<'_>,
) -> StorageResult<LoginOutcome> {
    if let Some(row) = sqlx::query!(
        r#"update users set last_login_at = now(), name = coalesce($3, name)
           where oidc_issuer = $1 and oidc_subject = $2
           returning id, email, name, is_instance_admin, created_at, last_login_at, email_verified, (oidc_subject is not null) as "linked!""#,
        identity.issuer,
        identity.subject,
        identity.name
    )
    .fetch_optional(&mut *conn)
    .await?
    {
        let user = user_from_row!(row);
        let token_email = (!user.email.eq_ignore_ascii_case(identity.email))
            .then(|| identity.email.to_owned());
        return Ok(LoginOutcome::Returning { user, token_email });
    }
    let claimed = sqlx::query!(
        r#"select id, (oidc_subject is not null) as "linked!" from users
           where lower(email) = lower($1) and (email_verified or oidc_subject is null)
           for update"#,
        identity.email
    )
    .fetch_optional(&mut *conn)
    .await?;
    match claimed {
        Some(row) if row.linked => Ok(LoginOutcome::Refused(
            LoginRefusal::EmailLinkedToAnotherIdentity,
        )),
        Some(_) if !identity.email_verified => {
            Ok(LoginOutcome::Refused(LoginRefusal::UnverifiedEmailInUse))
        }
        Some(row) => {
            let row = sqlx::query!(
                r#"update users set last_login_at = now(), oidc_issuer = $2, oidc_subject = $3,
                                    email_verified = true, name = coalesce($4, name)
                   where id = $1 and oidc_subject is null
                   returning id, email, name, is_instance_admin, created_at, last_login_at, email_verified, (oidc_subject is not null) as "linked!""#,
                row.id,
                identity.issuer,
                identity.subject,
                identity.name
            )
            .fetch_one(&mut *conn)
            .await?;
            Ok(LoginOutcome::Claimed(user_from_row!(row)))
        }
        None => {
            let row = sqlx::query!(
                r#"insert into users (id, email, name, oidc_issuer, oidc_subject, email_verified,
                                      last_login_at)
                   values ($1, $2, $3, $4, $5, $6, now())
                   returning id, email, name, is_instance_admin, created_at, last_login_at, email_verified, (oidc_subject is not null) as "linked!""#,
                UserId::new().as_uuid(),
                identity.email,
                identity.name,
                identity.issuer,
                identity.subject,
                identity.email_verified
            )
            .fetch_one(conn)
            .await?;
            Ok(LoginOutcome::Created(user_from_row!(row)))
        }
    }
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
           returning id, email, name, is_instance_admin, created_at, last_login_at, email_verified, (oidc_subject is not null) as "linked!""#,
        UserId::new().as_uuid(),
        email,
        name
    )
    .fetch_one(conn)
    .await?;
    Ok(user_from_row!(row))
}

/// The account that claims `email` (pre-created, or linked by a verified email). Accounts whose
/// email was never verified are not found by it.
pub async fn find_by_email(conn: &mut PgConnection, email: &str) -> StorageResult<Option<User>> {
    let row = sqlx::query!(
        r#"select id, email, name, is_instance_admin, created_at, last_login_at, email_verified, (oidc_subject is not null) as "linked!"
           from users where lower(email) = lower($1) and (email_verified or oidc_subject is null)"#,
        email
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|row| user_from_row!(row)))
}

pub async fn get(conn: &mut PgConnection, id: UserId) -> StorageResult<User> {
    let row = sqlx::query!(
        r#"select id, email, name, is_instance_admin, created_at, last_login_at, email_verified, (oidc_subject is not null) as "linked!"
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
        r#"select id, email, name, is_instance_admin, created_at, last_login_at, email_verified, (oidc_subject is not null) as "linked!"
           from users where ($1::uuid is null or id < $1) order by id desc limit $2"#,
        before.map(|id| id.as_uuid()),
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|row| user_from_row!(row)).collect())
}
