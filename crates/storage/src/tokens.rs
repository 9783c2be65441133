//! API tokens. The secret is shown once at creation; only its SHA-256 is stored. Tokens carry a
//! recognizable `cdz_` prefix so leaked ones can be found by secret scanners.
//!
//! Two kinds: `personal` tokens act as their user (optionally narrowed to some permissions);
//! `service` tokens belong to an org and act with the role they were created with.

use cadenza_domain::{OrgId, Permission, Role, TokenId, UserId};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::{StorageError, StorageResult};

pub const TOKEN_PREFIX: &str = "cdz_";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenOwner {
    /// Acts as this user.
    User(UserId),
    /// Belongs to this org and acts with this role.
    Service { org: OrgId, role: Role },
}

/// Who a valid token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenPrincipal {
    pub token_id: TokenId,
    pub name: String,
    pub owner: TokenOwner,
    /// `None`: everything the owner may do.
    pub scopes: Option<Vec<Permission>>,
    /// The person the token was made in the name of (for a token made by a token, that token's
    /// person).
    pub created_by: Option<UserId>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TokenRecord {
    pub id: TokenId,
    pub name: String,
    /// The first characters of the secret, to recognise it in lists.
    pub prefix: String,
    pub owner: TokenOwner,
    pub scopes: Option<Vec<Permission>>,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
    pub last_used_at: Option<OffsetDateTime>,
    pub created_by: Option<UserId>,
    /// The token that made this one, when a token did.
    pub created_by_token: Option<TokenId>,
}

pub struct NewToken<'a> {
    pub name: &'a str,
    pub owner: TokenOwner,
    pub scopes: Option<&'a [Permission]>,
    pub expires_at: Option<OffsetDateTime>,
    pub created_by: Option<UserId>,
    pub created_by_token: Option<TokenId>,
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn owner_from(
    kind: &str,
    user_id: Option<uuid::Uuid>,
    org_id: Option<uuid::Uuid>,
    role: Option<String>,
) -> StorageResult<TokenOwner> {
    match (kind, user_id, org_id, role) {
        ("personal", Some(user), _, _) => Ok(TokenOwner::User(user.into())),
        ("service", _, Some(org), Some(role)) => Ok(TokenOwner::Service {
            org: org.into(),
            role: role.parse().map_err(StorageError::Corrupt)?,
        }),
        (kind, ..) => Err(StorageError::Corrupt(format!(
            "token of kind `{kind}` without an owner"
        ))),
    }
}

fn scopes_from(raw: Option<Vec<String>>) -> StorageResult<Option<Vec<Permission>>> {
    raw.map(|scopes| {
        scopes
            .iter()
            .map(|scope| scope.parse().map_err(StorageError::Corrupt))
            .collect()
    })
    .transpose()
}

/// Creates a token and returns it with the secret, which is not stored anywhere.
pub async fn create(
    conn: &mut PgConnection,
    new: NewToken<'_>,
) -> StorageResult<(TokenRecord, String)> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let prefix = secret[..TOKEN_PREFIX.len() + 8].to_owned();
    let (kind, user_id, org_id, role) = match &new.owner {
        TokenOwner::User(user) => ("personal", Some(user.as_uuid()), None, None),
        TokenOwner::Service { org, role } => {
            ("service", None, Some(org.as_uuid()), Some(role.as_str()))
        }
    };
    let scopes: Option<Vec<String>> = new.scopes.map(|scopes| {
        scopes
            .iter()
            .map(|scope| scope.as_str().to_owned())
            .collect()
    });
    let row = sqlx::query!(
        r#"insert into api_tokens (id, kind, user_id, org_id, role, scopes, name, token_hash, prefix,
                                   expires_at, created_by, created_by_token)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
           returning id, created_at"#,
        TokenId::new().as_uuid(),
        kind,
        user_id,
        org_id,
        role,
        scopes.as_deref(),
        new.name,
        hash(&secret),
        prefix,
        new.expires_at,
        new.created_by.map(|user| user.as_uuid()),
        new.created_by_token.map(|token| token.as_uuid())
    )
    .fetch_one(conn)
    .await?;
    Ok((
        TokenRecord {
            id: row.id.into(),
            name: new.name.to_owned(),
            prefix,
            owner: new.owner,
            scopes: new.scopes.map(<[Permission]>::to_vec),
            created_at: row.created_at,
            expires_at: new.expires_at,
            revoked_at: None,
            last_used_at: None,
            created_by: new.created_by,
            created_by_token: new.created_by_token,
        },
        secret,
    ))
}

/// Resolves a presented secret to its principal when the token exists, is not revoked and has
/// not expired. Records the use at most once a minute, so a busy token costs a read per request,
/// not a write.
pub async fn authenticate(
    conn: &mut PgConnection,
    secret: &str,
) -> StorageResult<Option<TokenPrincipal>> {
    if !secret.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let Some(row) = sqlx::query!(
        r#"select id, name, kind, user_id, org_id, role, scopes, created_by,
                  (last_used_at is null or last_used_at < now() - interval '1 minute') as "stale!"
           from api_tokens
           where token_hash = $1 and revoked_at is null
             and (expires_at is null or expires_at > now())"#,
        hash(secret)
    )
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    if row.stale {
        sqlx::query!(
            "update api_tokens set last_used_at = now() where id = $1",
            row.id
        )
        .execute(conn)
        .await?;
    }
    Ok(Some(TokenPrincipal {
        token_id: row.id.into(),
        name: row.name,
        owner: owner_from(&row.kind, row.user_id, row.org_id, row.role)?,
        scopes: scopes_from(row.scopes)?,
        created_by: row.created_by.map(UserId::from),
    }))
}

/// The tokens of one owner, newest first (revoked ones included, marked).
pub async fn list(conn: &mut PgConnection, owner: &TokenOwner) -> StorageResult<Vec<TokenRecord>> {
    let (user_id, org_id) = match owner {
        TokenOwner::User(user) => (Some(user.as_uuid()), None),
        TokenOwner::Service { org, .. } => (None, Some(org.as_uuid())),
    };
    let rows = sqlx::query!(
        r#"select id, name, prefix, kind, user_id, org_id, role, scopes, created_at, expires_at,
                  revoked_at, last_used_at, created_by, created_by_token
           from api_tokens
           where ($1::uuid is not null and kind = 'personal' and user_id = $1)
              or ($2::uuid is not null and kind = 'service' and org_id = $2)
           order by id desc"#,
        user_id,
        org_id
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(TokenRecord {
                id: row.id.into(),
                name: row.name,
                prefix: row.prefix,
                owner: owner_from(&row.kind, row.user_id, row.org_id, row.role)?,
                scopes: scopes_from(row.scopes)?,
                created_at: row.created_at,
                expires_at: row.expires_at,
                revoked_at: row.revoked_at,
                last_used_at: row.last_used_at,
                created_by: row.created_by.map(UserId::from),
                created_by_token: row.created_by_token.map(TokenId::from),
            })
        })
        .collect()
}

/// Revokes a token of this owner. `NotFound` when the owner has no such live token.
pub async fn revoke(conn: &mut PgConnection, owner: &TokenOwner, id: TokenId) -> StorageResult<()> {
    let (user_id, org_id) = match owner {
        TokenOwner::User(user) => (Some(user.as_uuid()), None),
        TokenOwner::Service { org, .. } => (None, Some(org.as_uuid())),
    };
    let done = sqlx::query!(
        r#"update api_tokens set revoked_at = now()
           where id = $1 and revoked_at is null
             and (($2::uuid is not null and kind = 'personal' and user_id = $2)
               or ($3::uuid is not null and kind = 'service' and org_id = $3))"#,
        id.as_uuid(),
        user_id,
        org_id
    )
    .execute(conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StorageError::NotFound("token"));
    }
    Ok(())
}

/// When a member leaves an org, the service tokens made in their name there stop working:
/// returns the ids revoked.
pub async fn revoke_service_tokens_made_by(
    conn: &mut PgConnection,
    org: OrgId,
    user: UserId,
) -> StorageResult<Vec<TokenId>> {
    let rows = sqlx::query!(
        r#"update api_tokens set revoked_at = now()
           where kind = 'service' and org_id = $1 and created_by = $2 and revoked_at is null
           returning id"#,
        org.as_uuid(),
        user.as_uuid()
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|row| row.id.into()).collect())
}

/// When a member is demoted, the service tokens made in their name there are lowered to the new
/// role (a token can never act above the person it was made for): returns the ids lowered with
/// their previous role.
pub async fn cap_service_tokens_made_by(
    conn: &mut PgConnection,
    org: OrgId,
    user: UserId,
    cap: Role,
) -> StorageResult<Vec<(TokenId, Role)>> {
    let above: Vec<&str> = Role::ALL
        .into_iter()
        .filter(|role| *role > cap)
        .map(Role::as_str)
        .collect();
    let rows = sqlx::query!(
        r#"update api_tokens t set role = $3
           from api_tokens old
           where t.id = old.id and t.kind = 'service' and t.org_id = $1 and t.created_by = $2
             and t.revoked_at is null and t.role = any($4)
           returning t.id, old.role as "previous!""#,
        org.as_uuid(),
        user.as_uuid(),
        cap.as_str(),
        &above as &[&str]
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok((
                row.id.into(),
                row.previous.parse().map_err(StorageError::Corrupt)?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sha256_of_the_secret_is_kept() {
        assert_eq!(
            hex::encode(hash("cdz_abc")),
            // `printf %s cdz_abc | sha256sum`
            "2def90685d6d5869e35b2d66dfd21b1332ff90cba79dfd2daddba5e6cb12854e"
        );
    }
}
