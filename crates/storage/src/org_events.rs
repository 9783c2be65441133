//! The org event journal (written by triggers in Postgres, see the `org_events` migration):
//! reading it from a cursor, its head, and naming the request behind the changes of a
//! transaction.

use cadenza_domain::{OrgEvent, OrgId};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::StorageResult;

/// The channel Postgres announces each new entry on, at commit.
pub const CHANNEL: &str = "cadenza_org_events";

struct Row {
    org_id: Uuid,
    seq: i64,
    kind: String,
    subject_kind: String,
    subject_id: Uuid,
    project_id: Option<Uuid>,
    data: serde_json::Value,
    correlation_id: Option<Uuid>,
    occurred_at: time::OffsetDateTime,
}

impl From<Row> for OrgEvent {
    fn from(row: Row) -> Self {
        OrgEvent {
            org_id: row.org_id.into(),
            seq: row.seq,
            kind: row.kind,
            subject_kind: row.subject_kind,
            subject_id: row.subject_id,
            project_id: row.project_id.map(Into::into),
            data: row.data,
            correlation_id: row.correlation_id,
            occurred_at: row.occurred_at,
        }
    }
}

/// The org's entries after `after`, in order, at most `limit`.
pub async fn list_after(
    conn: &mut PgConnection,
    org: OrgId,
    after: i64,
    limit: i64,
) -> StorageResult<Vec<OrgEvent>> {
    let rows = sqlx::query_as!(
        Row,
        r#"select org_id, seq, kind, subject_kind, subject_id, project_id, data, correlation_id,
                  occurred_at
           from org_events where org_id = $1 and seq > $2 order by seq limit $3"#,
        org.as_uuid(),
        after,
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(OrgEvent::from).collect())
}

/// The org's last `limit` entries, oldest first.
pub async fn recent(
    conn: &mut PgConnection,
    org: OrgId,
    limit: i64,
) -> StorageResult<Vec<OrgEvent>> {
    let mut rows = sqlx::query_as!(
        Row,
        r#"select org_id, seq, kind, subject_kind, subject_id, project_id, data, correlation_id,
                  occurred_at
           from org_events where org_id = $1 order by seq desc limit $2"#,
        org.as_uuid(),
        limit
    )
    .fetch_all(conn)
    .await?;
    rows.reverse();
    Ok(rows.into_iter().map(OrgEvent::from).collect())
}

/// The number of the org's last entry (0 before the first).
pub async fn head(conn: &mut PgConnection, org: OrgId) -> StorageResult<i64> {
    let seq = sqlx::query_scalar!(
        "select last_seq from org_event_heads where org_id = $1",
        org.as_uuid()
    )
    .fetch_optional(conn)
    .await?;
    Ok(seq.unwrap_or(0))
}

/// Names the request behind the rest of this transaction's changes: their org entries carry
/// `correlation_id`. Call inside a transaction (the setting ends with it).
pub async fn set_correlation(conn: &mut PgConnection, correlation_id: Uuid) -> StorageResult<()> {
    sqlx::query_scalar!(
        "select set_config('cadenza.correlation_id', $1, true)",
        correlation_id.to_string()
    )
    .fetch_one(conn)
    .await?;
    Ok(())
}

/// Drops entries older than `keep_days` days, at most `limit` per call; the number dropped.
/// Heads are kept, so numbering goes on where it was.
pub async fn prune(conn: &mut PgConnection, keep_days: i64, limit: i64) -> StorageResult<u64> {
    let done = sqlx::query!(
        r#"delete from org_events where ctid = any(array(
               select ctid from org_events
               where occurred_at < now() - make_interval(days => $1::int4)
               limit $2))"#,
        keep_days as i32,
        limit
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
