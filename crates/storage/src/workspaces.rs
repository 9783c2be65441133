//! Workspaces kept after a run for follow-up turns (migration 0006): which container a run
//! used, which worker holds it, until when it is kept, and which run a follow-up continues.

use std::time::Duration;

use cadenza_domain::{RunId, RunState, WorkerId};
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::StorageResult;

/// A run's workspace as the worker needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunWorkspace {
    pub parent_run_id: Option<RunId>,
    pub container: Option<String>,
    pub worker: Option<WorkerId>,
    pub kept_until: Option<OffsetDateTime>,
}

pub async fn of_run(conn: &mut PgConnection, run: RunId) -> StorageResult<RunWorkspace> {
    let row = sqlx::query!(
        r#"select parent_run_id, workspace_container, workspace_worker, workspace_kept_until
           from runs where id = $1"#,
        run.as_uuid()
    )
    .fetch_one(conn)
    .await?;
    Ok(RunWorkspace {
        parent_run_id: row.parent_run_id.map(Into::into),
        container: row.workspace_container,
        worker: row.workspace_worker.map(Into::into),
        kept_until: row.workspace_kept_until,
    })
}

/// Keeps a finished run's container for `ttl`, held by `worker`.
pub async fn keep(
    conn: &mut PgConnection,
    run: RunId,
    container: &str,
    worker: WorkerId,
    ttl: Duration,
) -> StorageResult<()> {
    sqlx::query!(
        r#"update runs set workspace_container = $2, workspace_worker = $3,
                  workspace_kept_until = now() + make_interval(secs => $4::float8)
           where id = $1"#,
        run.as_uuid(),
        container,
        worker.as_uuid(),
        ttl.as_secs_f64()
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes a kept workspace for a follow-up turn: only one caller gets it, and only while it is
/// kept. Returns the container and its worker.
pub async fn claim(
    conn: &mut PgConnection,
    run: RunId,
) -> StorageResult<Option<(String, WorkerId)>> {
    let row = sqlx::query!(
        r#"update runs set workspace_kept_until = null
           where id = $1 and workspace_kept_until > now()
             and workspace_container is not null and workspace_worker is not null
           returning workspace_container as "container!", workspace_worker as "worker!""#,
        run.as_uuid()
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|row| (row.container, row.worker.into())))
}

/// Marks `run` as a follow-up turn of `parent` on `container`, pinned to `worker`.
pub async fn set_follow_up(
    conn: &mut PgConnection,
    run: RunId,
    parent: RunId,
    container: &str,
    worker: WorkerId,
) -> StorageResult<()> {
    sqlx::query!(
        r#"update runs set parent_run_id = $2, workspace_container = $3, workspace_worker = $4
           where id = $1"#,
        run.as_uuid(),
        parent.as_uuid(),
        container,
        worker.as_uuid()
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The worker a queued run must go to (a follow-up turn's), if any.
pub async fn pinned_worker(conn: &mut PgConnection, run: RunId) -> StorageResult<Option<WorkerId>> {
    let row = sqlx::query!(
        r#"select workspace_worker from runs where id = $1 and parent_run_id is not null"#,
        run.as_uuid()
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.and_then(|row| row.workspace_worker).map(Into::into))
}

/// Kept workspaces of `worker` whose time is up (or all of them with `all`), as (run, container).
pub async fn expired(
    conn: &mut PgConnection,
    worker: WorkerId,
    all: bool,
) -> StorageResult<Vec<(RunId, String)>> {
    let rows = sqlx::query!(
        r#"select id, workspace_container as "container!" from runs
           where workspace_worker = $1 and workspace_kept_until is not null
             and workspace_container is not null
             and ($2 or workspace_kept_until <= now())
           limit 100"#,
        worker.as_uuid(),
        all
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (RunId::from(row.id), row.container))
        .collect())
}

/// The kept workspace of `worker` that has waited longest for a follow-up, as (run, container):
/// the one to give up when the worker needs its network for a new run.
pub async fn oldest_kept(
    conn: &mut PgConnection,
    worker: WorkerId,
) -> StorageResult<Option<(RunId, String)>> {
    let row = sqlx::query!(
        r#"select id, workspace_container as "container!" from runs
           where workspace_worker = $1 and workspace_kept_until is not null
             and workspace_container is not null
           order by workspace_kept_until limit 1"#,
        worker.as_uuid()
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|row| (RunId::from(row.id), row.container)))
}

/// Forgets a kept workspace (its container was removed). Guarded: a workspace a follow-up has
/// claimed meanwhile is left alone, and `false` says so.
pub async fn release(conn: &mut PgConnection, run: RunId) -> StorageResult<bool> {
    let done = sqlx::query!(
        r#"update runs set workspace_kept_until = null
           where id = $1 and workspace_kept_until is not null"#,
        run.as_uuid()
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The last agent-server event journaled for `run`: (its agent seq, its id), so a follow-up turn
/// reads only what comes after.
pub async fn last_agent_event(
    conn: &mut PgConnection,
    run: RunId,
) -> StorageResult<Option<(i64, String)>> {
    let row = sqlx::query!(
        r#"select source_seq as "seq!", source_event_id as "event_id!" from run_events
           where run_id = $1 and source_seq is not null and source_event_id is not null
           order by source_seq desc limit 1"#,
        run.as_uuid()
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|row| (row.seq, row.event_id)))
}

/// Queued follow-up turns whose worker is gone (stopped, or silent for `liveness`): they can
/// never run. Locked for the caller's transaction, in org order (see
/// `runs::lock_expired_leases`).
pub async fn lock_orphaned_follow_ups(
    conn: &mut PgConnection,
    liveness: Duration,
) -> StorageResult<Vec<RunId>> {
    let rows = sqlx::query!(
        r#"select r.id from runs r left join workers w on w.id = r.workspace_worker
           where r.state = 'queued' and r.parent_run_id is not null
             and (w.id is null or w.stopped_at is not null
                  or w.last_heartbeat_at <= now() - make_interval(secs => $1::float8))
           order by r.org_id, r.id limit 100
           for update of r skip locked"#,
        liveness.as_secs_f64()
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|row| RunId::from(row.id)).collect())
}

/// Records that a message to a finished run became the follow-up turn `run`.
pub async fn link_message(conn: &mut PgConnection, message: Uuid, run: RunId) -> StorageResult<()> {
    sqlx::query!(
        r#"update run_messages set follow_up_run_id = $2, delivered_at = now() where id = $1"#,
        message,
        run.as_uuid()
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The follow-up turn a message started, if it did.
pub async fn follow_up_of_message(
    conn: &mut PgConnection,
    message: Uuid,
) -> StorageResult<Option<RunId>> {
    let row = sqlx::query!(
        "select follow_up_run_id from run_messages where id = $1",
        message
    )
    .fetch_one(conn)
    .await?;
    Ok(row.follow_up_run_id.map(Into::into))
}

/// The agent-server conversation a run used.
pub async fn conversation_of(conn: &mut PgConnection, run: RunId) -> StorageResult<Option<Uuid>> {
    let row = sqlx::query!(
        "select conversation_id from runs where id = $1",
        run.as_uuid()
    )
    .fetch_one(conn)
    .await?;
    Ok(row.conversation_id)
}

/// The correlation id of the message that started follow-up turn `run`.
pub async fn follow_up_correlation(
    conn: &mut PgConnection,
    run: RunId,
) -> StorageResult<Option<Uuid>> {
    let row = sqlx::query!(
        "select correlation_id from run_messages where follow_up_run_id = $1",
        run.as_uuid()
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|row| row.correlation_id))
}

/// Which of `containers` a run still needs: kept for a follow-up turn, or the workspace of a
/// follow-up turn that has not ended.
pub async fn in_use(conn: &mut PgConnection, containers: &[String]) -> StorageResult<Vec<String>> {
    if containers.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query_scalar!(
        r#"select distinct workspace_container as "container!" from runs
           where workspace_container = any($1)
             and (workspace_kept_until is not null
                  or state <> all($2))"#,
        containers,
        &RunState::names(&RunState::TERMINAL) as &[&str]
    )
    .fetch_all(conn)
    .await?;
    Ok(rows)
}
