//! Email-domain rules: a user whose *verified* email is in the domain joins the org with the
//! rule's role at login, once the org has proved control of the domain (a DNS TXT record with the
//! rule's token, or an instance administrator's approval). A pending rule joins nobody.

use cadenza_domain::{OrgId, Role, UserId};
use rand::RngCore;
use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::{StorageError, StorageResult};

/// How an org proved control of a rule's domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerificationMethod {
    /// The TXT record with the rule's token was found.
    Dns,
    /// An instance administrator approved the rule.
    Admin,
}

impl VerificationMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationMethod::Dns => "dns",
            VerificationMethod::Admin => "admin",
        }
    }
}

impl std::str::FromStr for VerificationMethod {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "dns" => Ok(VerificationMethod::Dns),
            "admin" => Ok(VerificationMethod::Admin),
            other => Err(format!("unknown domain verification method `{other}`")),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Verification {
    pub method: VerificationMethod,
    pub at: OffsetDateTime,
    /// The user who verified or approved (none when that user was deleted, or a service token).
    pub by: Option<UserId>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DomainRule {
    pub org_id: OrgId,
    pub domain: String,
    pub role: Role,
    pub created_at: OffsetDateTime,
    /// The random value the org publishes in DNS to prove control of the domain.
    pub verification_token: String,
    /// `None` while the rule is pending.
    pub verification: Option<Verification>,
}

impl DomainRule {
    pub fn is_verified(&self) -> bool {
        self.verification.is_some()
    }
}

fn new_verification_token() -> String {
    let mut bytes = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A row of `org_domain_rules` as stored.
struct RuleRow {
    org_id: uuid::Uuid,
    domain: String,
    role: String,
    created_at: OffsetDateTime,
    verification_token: String,
    verified_at: Option<OffsetDateTime>,
    verification_method: Option<String>,
    verified_by: Option<uuid::Uuid>,
}

impl TryFrom<RuleRow> for DomainRule {
    type Error = StorageError;

    fn try_from(row: RuleRow) -> StorageResult<Self> {
        let verification = match (row.verified_at, row.verification_method) {
            (Some(at), Some(method)) => Some(Verification {
                method: method.parse().map_err(StorageError::Corrupt)?,
                at,
                by: row.verified_by.map(UserId::from),
            }),
            _ => None,
        };
        Ok(DomainRule {
            org_id: row.org_id.into(),
            domain: row.domain,
            role: row.role.parse().map_err(StorageError::Corrupt)?,
            created_at: row.created_at,
            verification_token: row.verification_token,
            verification,
        })
    }
}

/// Creates or changes the rule for `domain` in `org`. A new rule is pending with a fresh token;
/// changing the role of an existing rule keeps its token and verification. Returns the rule and
/// the previous role, if any.
pub async fn put(
    conn: &mut PgConnection,
    org: OrgId,
    domain: &str,
    role: Role,
) -> StorageResult<(DomainRule, Option<Role>)> {
    let previous = sqlx::query!(
        "select role from org_domain_rules where org_id = $1 and domain = $2 for update",
        org.as_uuid(),
        domain
    )
    .fetch_optional(&mut *conn)
    .await?
    .map(|row| row.role.parse().map_err(StorageError::Corrupt))
    .transpose()?;
    let row = sqlx::query_as!(
        RuleRow,
        r#"insert into org_domain_rules (org_id, domain, role, verification_token)
           values ($1, $2, $3, $4)
           on conflict (org_id, domain) do update set role = excluded.role
           returning org_id, domain, role, created_at, verification_token, verified_at,
                     verification_method, verified_by"#,
        org.as_uuid(),
        domain,
        role.as_str(),
        new_verification_token()
    )
    .fetch_one(conn)
    .await?;
    let rule = DomainRule::try_from(row)?;
    Ok((rule, previous))
}

pub async fn get(conn: &mut PgConnection, org: OrgId, domain: &str) -> StorageResult<DomainRule> {
    let row = sqlx::query_as!(
        RuleRow,
        r#"select org_id, domain, role, created_at, verification_token, verified_at,
                  verification_method, verified_by
           from org_domain_rules where org_id = $1 and domain = $2"#,
        org.as_uuid(),
        domain
    )
    .fetch_optional(conn)
    .await?
    .ok_or(StorageError::NotFound("domain rule"))?;
    DomainRule::try_from(row)
}

/// Marks a pending rule verified. `Ok(None)` when it was already verified (nothing changes: the
/// first proof stays on record); not found when there is no such rule.
pub async fn mark_verified(
    conn: &mut PgConnection,
    org: OrgId,
    domain: &str,
    method: VerificationMethod,
    by: Option<UserId>,
) -> StorageResult<Option<DomainRule>> {
    let row = sqlx::query_as!(
        RuleRow,
        r#"update org_domain_rules
           set verified_at = now(), verification_method = $3, verified_by = $4
           where org_id = $1 and domain = $2 and verified_at is null
           returning org_id, domain, role, created_at, verification_token, verified_at,
                     verification_method, verified_by"#,
        org.as_uuid(),
        domain,
        method.as_str(),
        by.map(|id| id.as_uuid())
    )
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => Ok(Some(DomainRule::try_from(row)?)),
        None => {
            get(conn, org, domain).await?;
            Ok(None)
        }
    }
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
    let rows = sqlx::query_as!(
        RuleRow,
        r#"select org_id, domain, role, created_at, verification_token, verified_at,
                  verification_method, verified_by
           from org_domain_rules where org_id = $1 order by domain"#,
        org.as_uuid()
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(DomainRule::try_from).collect()
}

/// The orgs (and roles) a verified address in `domain` joins: verified rules only.
pub async fn matching(conn: &mut PgConnection, domain: &str) -> StorageResult<Vec<(OrgId, Role)>> {
    let rows = sqlx::query!(
        r#"select org_id, role from org_domain_rules
           where domain = lower($1) and verified_at is not null"#,
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
