//! The audit log: append-only (the database refuses UPDATE, DELETE and TRUNCATE).

use cadenza_domain::{OrgId, Scope};
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::StorageResult;

#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    pub org_id: Option<OrgId>,
    /// `user`, `token`, `anonymous` or `system`.
    pub actor_type: String,
    pub actor_id: Option<Uuid>,
    pub actor_label: Option<String>,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    /// Changed fields as `{"field": {"before": .., "after": ..}}`; never secret values.
    pub diff: serde_json::Value,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AuditRecord {
    pub id: i64,
    pub entry: AuditEntry,
    pub created_at: OffsetDateTime,
}

pub async fn record(conn: &mut PgConnection, entry: &AuditEntry) -> StorageResult<i64> {
    let row = sqlx::query!(
        r#"insert into audit_log (org_id, actor_type, actor_id, actor_label, action, resource_type,
                                  resource_id, diff, request_id, ip, user_agent)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) returning id"#,
        entry.org_id.map(|org| org.as_uuid()),
        entry.actor_type,
        entry.actor_id,
        entry.actor_label,
        entry.action,
        entry.resource_type,
        entry.resource_id,
        entry.diff,
        entry.request_id,
        entry.ip,
        entry.user_agent
    )
    .fetch_one(conn)
    .await?;
    Ok(row.id)
}

#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub actor_id: Option<Uuid>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    /// The id of the last entry of the previous page (newest first).
    pub before: Option<i64>,
    pub limit: i64,
}

pub async fn list(
    conn: &mut PgConnection,
    scope: &Scope,
    filter: &AuditFilter,
) -> StorageResult<Vec<AuditRecord>> {
    let orgs = scope.org_filter();
    let rows = sqlx::query!(
        r#"select id, org_id, actor_type, actor_id, actor_label, action, resource_type, resource_id,
                  diff, request_id, ip, user_agent, created_at
           from audit_log
           where ($1::uuid[] is null or org_id = any($1))
             and ($2::uuid is null or actor_id = $2)
             and ($3::text is null or action = $3)
             and ($4::text is null or resource_type = $4)
             and ($5::text is null or resource_id = $5)
             and ($6::timestamptz is null or created_at >= $6)
             and ($7::timestamptz is null or created_at < $7)
             and ($8::bigint is null or id < $8)
           order by id desc limit $9"#,
        orgs.as_deref(),
        filter.actor_id,
        filter.action,
        filter.resource_type,
        filter.resource_id,
        filter.since,
        filter.until,
        filter.before,
        filter.limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| AuditRecord {
            id: row.id,
            entry: AuditEntry {
                org_id: row.org_id.map(OrgId::from),
                actor_type: row.actor_type,
                actor_id: row.actor_id,
                actor_label: row.actor_label,
                action: row.action,
                resource_type: row.resource_type,
                resource_id: row.resource_id,
                diff: row.diff,
                request_id: row.request_id,
                ip: row.ip,
                user_agent: row.user_agent,
            },
            created_at: row.created_at,
        })
        .collect())
}

/// Whether the connection's role owns `audit_log` (directly or through a role it is a member
/// of): such a role can alter the table, disable its triggers or grant itself the rights the
/// migrations revoke, so the log is append-only against it only by convention.
pub async fn current_role_owns_audit_log(conn: &mut PgConnection) -> StorageResult<bool> {
    let owns = sqlx::query_scalar!(
        r#"select pg_has_role(current_user, relowner, 'usage') as "owns!"
           from pg_class where oid = 'audit_log'::regclass"#
    )
    .fetch_one(conn)
    .await?;
    Ok(owns)
}
