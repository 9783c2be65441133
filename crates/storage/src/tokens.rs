//! API tokens. The secret is shown once at creation; only its SHA-256 is stored. Tokens carry a
//! recognizable `cdz_` prefix so leaked ones can be found by secret scanners.

use cadenza_domain::{OrgId, TokenId};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::StorageResult;

pub const TOKEN_PREFIX: &str = "cdz_";

/// Who a valid token speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenPrincipal {
    pub token_id: TokenId,
    /// `None` for an instance-wide (administrator) token.
    pub org_id: Option<OrgId>,
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Creates a token and returns its id and the secret, which is not stored anywhere.
pub async fn create(
    conn: &mut PgConnection,
    org_id: Option<OrgId>,
    name: &str,
) -> StorageResult<(TokenId, String)> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let id = TokenId::new();
    sqlx::query!(
        r#"insert into api_tokens (id, org_id, name, token_hash, prefix)
           values ($1, $2, $3, $4, $5)"#,
        id.as_uuid(),
        org_id.map(|org| org.as_uuid()),
        name,
        hash(&secret),
        &secret[..TOKEN_PREFIX.len() + 8]
    )
    .execute(conn)
    .await?;
    Ok((id, secret))
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
        r#"select id, org_id,
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
        org_id: row.org_id.map(OrgId::from),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_not_the_secret() {
        let digest = hash("cdz_abc");
        assert_eq!(digest.len(), 32);
        assert_ne!(digest, b"cdz_abc".to_vec());
    }
}
