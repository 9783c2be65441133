//! The transactional outbox. Messages are enqueued in the transaction that causes them and
//! relayed to NATS afterwards; the row id doubles as the NATS de-duplication id.

use cadenza_bus::Message;
use sqlx::PgConnection;

use crate::{StorageError, StorageResult};

#[derive(Clone, Debug)]
pub struct OutboxMessage {
    pub id: i64,
    /// A subject relative to the deployment's bus prefix.
    pub subject: String,
    pub payload: serde_json::Value,
}

/// Enqueues a typed message on its own subject, in the caller's transaction.
pub async fn enqueue_message<M: Message>(
    conn: &mut PgConnection,
    message: &M,
) -> StorageResult<i64> {
    let payload = serde_json::to_value(message).map_err(StorageError::Encode)?;
    enqueue(conn, &message.subject(), &payload).await
}

/// Enqueues a raw body on a subject relative to the bus prefix (for tests and tools; services
/// enqueue typed messages with `enqueue_message`).
pub async fn enqueue(
    conn: &mut PgConnection,
    subject: &str,
    payload: &serde_json::Value,
) -> StorageResult<i64> {
    let row = sqlx::query!(
        "insert into outbox (subject, payload) values ($1, $2) returning id",
        subject,
        payload
    )
    .fetch_one(conn)
    .await?;
    Ok(row.id)
}

/// A message that failed this many times while others went through is set aside: kept, with
/// its last error, but no longer retried, so it cannot hold up the rows behind it.
pub const MAX_ATTEMPTS: i32 = 10;

/// Locks the oldest unpublished messages (not set aside); other relays skip them until this
/// transaction ends.
pub async fn lock_unpublished(
    conn: &mut PgConnection,
    limit: i64,
) -> StorageResult<Vec<OutboxMessage>> {
    let rows = sqlx::query!(
        r#"select id, subject, payload from outbox where published_at is null and attempts < $2
           order by id limit $1 for update skip locked"#,
        limit,
        MAX_ATTEMPTS
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| OutboxMessage {
            id: row.id,
            subject: row.subject,
            payload: row.payload,
        })
        .collect())
}

pub async fn mark_published(conn: &mut PgConnection, ids: &[i64]) -> StorageResult<()> {
    sqlx::query!(
        "update outbox set published_at = now() where id = any($1)",
        ids
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Counts a failed publish of each message (one the bus refused while it took others).
pub async fn record_failures(
    conn: &mut PgConnection,
    ids: &[i64],
    error: &str,
) -> StorageResult<()> {
    sqlx::query!(
        "update outbox set attempts = attempts + 1, last_error = $2 where id = any($1)",
        ids,
        error
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// How many messages were set aside after `MAX_ATTEMPTS` failures (for health and alerts).
pub async fn set_aside(conn: &mut PgConnection) -> StorageResult<i64> {
    let count = sqlx::query_scalar!(
        r#"select count(*) as "count!" from outbox where published_at is null and attempts >= $1"#,
        MAX_ATTEMPTS
    )
    .fetch_one(conn)
    .await?;
    Ok(count)
}

/// Drops up to `batch` messages published more than `keep` ago, so the table stays small (a
/// published row is only needed for JetStream's de-duplication window, minutes long). Returns
/// how many went; call again while it returns `batch`.
pub async fn prune(
    conn: &mut PgConnection,
    keep: std::time::Duration,
    batch: i64,
) -> StorageResult<u64> {
    let done = sqlx::query!(
        r#"delete from outbox where id in (
               select id from outbox
               where published_at is not null
                 and published_at < now() - make_interval(secs => $1::float8)
               order by id limit $2)"#,
        keep.as_secs_f64(),
        batch
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
