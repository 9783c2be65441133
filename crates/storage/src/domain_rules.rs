//! Email-domain rules: a user whose *verified* email is in the domain joins the org with the
//! rule's role at login.

use cadenza_domain::{OrgId, Role};
use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::{StorageError, StorageResult};

#[derive(Clone, Debug, PartialEq)]
pub struct DomainRule {
    pub org_id: OrgId,
    pub domain: String,
    pub role: Role,
    pub created_at: OffsetDateTime,
}

/// Creates or changes the rule for `domain` in `org`. Returns the previous role, if any.
pub async fn put(
    conn: &mut PgConnection,
    org: OrgId,
    domain: &str,
    role: Role,
) -> StorageResult<Option<Role>> {
    let previous = sqlx::query!(
        "select role from org_domain_rules where org_id = $1 and domain = $2",
        org.as_uuid(),
        domain
    )
    .fetch_optional(&mut *conn)
    .await?
    .map(|row| row.role.parse().map_err(StorageError::Corrupt))
    .transpose()?;
    sqlx::query!(
        r#"insert into org_domain_rules (org_id, domain, role) values ($1, $2, $3)
           on conflict (org_id, domain) do update set role = excluded.role"#,
        org.as_uuid(),
        domain,
        role.as_str()
    )
    .execute(conn)
    .await?;
    Ok(previous)
}

pub async fn delete(conn: &mut PgConnection, org: OrgId, domain: &str) -> StorageResult<Role> {
    let row = sqlx::query!(
        "delete from org_domain_rules where org_id = $1 and domain = $2 returning role",
        org.as_uuid(),
        domain
    )
    .fetch_optional(conn)
    .await?
    .ok_or(StorageError::NotFound("domain rule"))?;
    row.role.parse().map_err(StorageError::Corrupt)
}

pub async fn list(conn: &mut PgConnection, org: OrgId) -> StorageResult<Vec<DomainRule>> {
    let rows = sqlx::query!(
        "select org_id, domain, role, created_at from org_domain_rules where org_id = $1 order by domain",
        org.as_uuid()
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(DomainRule {
                org_id: row.org_id.into(),
                domain: row.domain,
                role: row.role.parse().map_err(StorageError::Corrupt)?,
                created_at: row.created_at,
            })
        })
        .collect()
}

/// The orgs (and roles) a verified address in `domain` joins.
pub async fn matching(conn: &mut PgConnection, domain: &str) -> StorageResult<Vec<(OrgId, Role)>> {
    let rows = sqlx::query!(
        "select org_id, role from org_domain_rules where domain = lower($1)",
        domain
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok((
                OrgId::from(row.org_id),
                row.role.parse().map_err(StorageError::Corrupt)?,
            ))
        })
        .collect()
}
