//! Invitations: bound to an email, expiring, single use. Only a hash of the invitation token is
//! stored, like API tokens.

use cadenza_domain::{InvitationId, OrgId, Role, UserId};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::{StorageError, StorageResult};

pub const INVITATION_PREFIX: &str = "cdzi_";

#[derive(Clone, Debug, PartialEq)]
pub struct Invitation {
    pub id: InvitationId,
    pub org_id: OrgId,
    pub email: String,
    pub role: Role,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub accepted_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

macro_rules! invitation_from_row {
    ($row:expr) => {
        Invitation {
            id: $row.id.into(),
            org_id: $row.org_id.into(),
            email: $row.email,
            role: $row.role.parse().map_err(StorageError::Corrupt)?,
            created_at: $row.created_at,
            expires_at: $row.expires_at,
            accepted_at: $row.accepted_at,
            revoked_at: $row.revoked_at,
        }
    };
}

/// Creates an invitation and returns it with its secret token (not stored).
pub async fn create(
    conn: &mut PgConnection,
    org: OrgId,
    email: &str,
    role: Role,
    expires_at: OffsetDateTime,
    created_by: Option<UserId>,
) -> StorageResult<(Invitation, String)> {
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = format!("{INVITATION_PREFIX}{}", hex::encode(bytes));
    let row = sqlx::query!(
        r#"insert into invitations (id, org_id, email, role, token_hash, created_by, expires_at)
           values ($1, $2, $3, $4, $5, $6, $7)
           returning id, org_id, email, role, created_at, expires_at, accepted_at, revoked_at"#,
        InvitationId::new().as_uuid(),
        org.as_uuid(),
        email,
        role.as_str(),
        hash(&secret),
        created_by.map(|user| user.as_uuid()),
        expires_at
    )
    .fetch_one(conn)
    .await?;
    Ok((invitation_from_row!(row), secret))
}

pub async fn list(conn: &mut PgConnection, org: OrgId) -> StorageResult<Vec<Invitation>> {
    let rows = sqlx::query!(
        r#"select id, org_id, email, role, created_at, expires_at, accepted_at, revoked_at
           from invitations where org_id = $1 order by id desc"#,
        org.as_uuid()
    )
    .fetch_all(conn)
    .await?;
    let mut invitations = Vec::with_capacity(rows.len());
    for row in rows {
        invitations.push(invitation_from_row!(row));
    }
    Ok(invitations)
}

/// Revokes a pending invitation of the org.
pub async fn revoke(conn: &mut PgConnection, org: OrgId, id: InvitationId) -> StorageResult<()> {
    let done = sqlx::query!(
        r#"update invitations set revoked_at = now()
           where id = $1 and org_id = $2 and revoked_at is null and accepted_at is null"#,
        id.as_uuid(),
        org.as_uuid()
    )
    .execute(conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StorageError::NotFound("invitation"));
    }
    Ok(())
}

/// Why an invitation cannot be accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum AcceptError {
    Unknown,
    AlreadyUsed,
    Revoked,
    Expired,
    WrongEmail,
}

/// Accepts an invitation for `user` (whose email must match), adding the membership. Locks the
/// row, so two concurrent accepts cannot both succeed.
pub async fn accept(
    conn: &mut PgConnection,
    secret: &str,
    user: UserId,
    user_email: &str,
) -> StorageResult<Result<Invitation, AcceptError>> {
    let Some(row) = sqlx::query!(
        r#"select id, org_id, email, role, created_at, expires_at, accepted_at, revoked_at,
                  expires_at < now() as "expired!"
           from invitations where token_hash = $1 for update"#,
        hash(secret)
    )
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(Err(AcceptError::Unknown));
    };
    let expired = row.expired;
    let invitation = invitation_from_row!(row);
    if invitation.accepted_at.is_some() {
        return Ok(Err(AcceptError::AlreadyUsed));
    }
    if invitation.revoked_at.is_some() {
        return Ok(Err(AcceptError::Revoked));
    }
    if expired {
        return Ok(Err(AcceptError::Expired));
    }
    if !invitation.email.eq_ignore_ascii_case(user_email) {
        return Ok(Err(AcceptError::WrongEmail));
    }
    sqlx::query!(
        "update invitations set accepted_at = now(), accepted_by = $2 where id = $1",
        invitation.id.as_uuid(),
        user.as_uuid()
    )
    .execute(&mut *conn)
    .await?;
    crate::memberships::add(conn, invitation.org_id, user, invitation.role).await?;
    Ok(Ok(invitation))
}
