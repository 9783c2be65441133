//! Messages to a running run's conversation: recorded by the API, delivered by the worker that
//! holds the run.

use cadenza_domain::{OrgId, RunId, WorkerId};
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::StorageResult;

#[derive(Clone, Debug, PartialEq)]
pub struct RunMessage {
    pub id: Uuid,
    pub run_id: RunId,
    pub org_id: OrgId,
    pub correlation_id: Uuid,
    pub text: String,
    pub created_at: OffsetDateTime,
    pub delivered_at: Option<OffsetDateTime>,
}

struct Row {
    id: Uuid,
    run_id: Uuid,
    org_id: Uuid,
    correlation_id: Uuid,
    text: String,
    created_at: OffsetDateTime,
    delivered_at: Option<OffsetDateTime>,
}

impl From<Row> for RunMessage {
    fn from(row: Row) -> Self {
        RunMessage {
            id: row.id,
            run_id: row.run_id.into(),
            org_id: row.org_id.into(),
            correlation_id: row.correlation_id,
            text: row.text,
            created_at: row.created_at,
            delivered_at: row.delivered_at,
        }
    }
}

/// Records a message. With an idempotency key already used for this run, returns the first
/// message instead (and `false`).
pub async fn create(
    conn: &mut PgConnection,
    run_id: RunId,
    org_id: OrgId,
    text: &str,
    idempotency_key: Option<&str>,
    actor: &str,
) -> StorageResult<(RunMessage, bool)> {
    let inserted = sqlx::query_as!(
        Row,
        r#"insert into run_messages (id, run_id, org_id, correlation_id, text, idempotency_key,
                                     created_by)
           values ($1, $2, $3, $4, $5, $6, $7)
           on conflict (run_id, idempotency_key) where idempotency_key is not null do nothing
           returning id, run_id, org_id, correlation_id, text, created_at, delivered_at"#,
        Uuid::now_v7(),
        run_id.as_uuid(),
        org_id.as_uuid(),
        Uuid::now_v7(),
        text,
        idempotency_key,
        actor
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = inserted {
        return Ok((row.into(), true));
    }
    let existing = sqlx::query_as!(
        Row,
        r#"select id, run_id, org_id, correlation_id, text, created_at, delivered_at
           from run_messages where run_id = $1 and idempotency_key = $2"#,
        run_id.as_uuid(),
        idempotency_key
    )
    .fetch_one(conn)
    .await?;
    Ok((existing.into(), false))
}

/// Undelivered messages of running runs held by `worker`, oldest first.
pub async fn pending_for(
    conn: &mut PgConnection,
    worker: WorkerId,
) -> StorageResult<Vec<RunMessage>> {
    let rows = sqlx::query_as!(
        Row,
        r#"select m.id, m.run_id, m.org_id, m.correlation_id, m.text, m.created_at, m.delivered_at
           from run_messages m join runs r on r.id = m.run_id
           where r.lease_holder = $1 and r.state = 'running' and m.delivered_at is null
           order by m.created_at, m.id
           limit 100"#,
        worker.as_uuid()
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

pub async fn mark_delivered(conn: &mut PgConnection, id: Uuid) -> StorageResult<()> {
    sqlx::query!(
        "update run_messages set delivered_at = now() where id = $1 and delivered_at is null",
        id
    )
    .execute(conn)
    .await?;
    Ok(())
}
