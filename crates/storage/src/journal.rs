//! The run journal: every event a client can see, with a dense per-run sequence number.
//!
//! The next number comes from `runs.last_event_seq`, bumped in the same statement that inserts
//! the event. The row lock that bump takes serializes writers of one run, so numbers are dense
//! and monotonic even when the API, the scheduler and a worker all journal state changes.

use cadenza_domain::{
    EventKind, Fence, JournalEvent, OrgId, Run, RunId, RunState, Scope, TerminalReason,
};
use serde_json::json;
use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::StorageResult;

#[derive(Clone, Debug)]
pub struct NewJournalEvent {
    pub run_id: RunId,
    pub org_id: OrgId,
    pub kind: EventKind,
    pub payload: serde_json::Value,
    pub raw: Option<serde_json::Value>,
    /// The agent-server's event id and seq, when the event came from the agent: a second append
    /// with the same id is ignored, so replays after a reconnect are safe.
    pub source_event_id: Option<String>,
    pub source_seq: Option<i64>,
    pub occurred_at: OffsetDateTime,
    /// A worker's write: journaled only while this is the run's current hold and the run is
    /// `provisioning` or `running`, else refused with `Fenced` (so nothing a stale worker sends
    /// lands after the terminal entry).
    pub fence: Option<Fence>,
}

impl NewJournalEvent {
    /// The entry that records a lifecycle transition.
    pub fn run_state(
        run: &Run,
        from: Option<RunState>,
        to: RunState,
        reason: Option<&TerminalReason>,
    ) -> Self {
        let mut payload = json!({
            "from": from.map(RunState::as_str),
            "to": to.as_str(),
            "attempt": run.attempt,
            "terminal": to.is_terminal(),
        });
        if let Some(reason) = reason {
            payload["reason"] = json!({ "code": reason.code.as_str(), "message": reason.message });
        }
        if let (RunState::Scheduled, Some(worker)) = (to, run.lease_holder) {
            payload["worker_id"] = json!(worker.to_string());
        }
        Self {
            run_id: run.id,
            org_id: run.org_id,
            kind: EventKind::RunState,
            payload,
            raw: None,
            source_event_id: None,
            source_seq: None,
            occurred_at: OffsetDateTime::now_utc(),
            fence: None,
        }
    }
}

/// Appends an event with the run's next sequence number. Returns `None` when the event carries a
/// source id that is already journaled (a replay, or the same event from a concurrent writer),
/// and `Fenced` when the event carries a fence that no longer holds.
pub async fn append(
    conn: &mut PgConnection,
    event: NewJournalEvent,
) -> StorageResult<Option<JournalEvent>> {
    let row = sqlx::query!(
        r#"with next as (
               update runs set last_event_seq = last_event_seq + 1
               where id = $1 and org_id = $2
                 and ($6::text is null or not exists (
                       select 1 from run_events where run_id = $1 and source_event_id = $6))
                 and ($9::uuid is null or (lease_holder = $9 and lease_epoch = $10
                                           and state = any($11)))
               returning last_event_seq
           )
           insert into run_events (run_id, org_id, seq, kind, payload, raw, source_event_id,
                                   source_seq, occurred_at)
           select $1, $2, next.last_event_seq, $3, $4, $5, $6, $7, $8 from next
           returning seq"#,
        event.run_id.as_uuid(),
        event.org_id.as_uuid(),
        event.kind.as_str(),
        event.payload,
        event.raw,
        event.source_event_id,
        event.source_seq,
        event.occurred_at,
        event.fence.map(|fence| fence.worker.as_uuid()),
        event.fence.map(|fence| fence.epoch),
        &RunState::names(&RunState::DRIVEN) as &[&str]
    )
    .fetch_optional(&mut *conn)
    .await;
    let row = match row {
        Ok(row) => row,
        // Two writers of one event raced past the `not exists` check: the second one's event
        // is already there, which is what it wanted.
        Err(sqlx::Error::Database(db)) if db.constraint() == Some("run_events_source") => None,
        Err(err) => return Err(err.into()),
    };
    if row.is_none()
        && let Some(fence) = event.fence
        && !crate::runs::holds(conn, event.run_id, fence).await?
    {
        return Err(crate::StorageError::Fenced(format!(
            "run {} is no longer held with this lease; the event was not journaled",
            event.run_id
        )));
    }
    Ok(row.map(|row| JournalEvent {
        run_id: event.run_id,
        org_id: event.org_id,
        seq: row.seq,
        kind: event.kind.as_str().to_owned(),
        payload: event.payload,
        raw: event.raw,
        occurred_at: event.occurred_at,
    }))
}

/// Events with `seq > after`, in order, at most `limit`.
pub async fn list_after(
    conn: &mut PgConnection,
    scope: &Scope,
    run_id: RunId,
    after: i64,
    limit: i64,
) -> StorageResult<Vec<JournalEvent>> {
    let orgs = scope.org_filter();
    let rows = sqlx::query!(
        r#"select run_id, org_id, seq, kind, payload, raw, occurred_at
           from run_events
           where run_id = $1 and ($2::uuid[] is null or org_id = any($2)) and seq > $3
           order by seq limit $4"#,
        run_id.as_uuid(),
        orgs.as_deref(),
        after,
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| JournalEvent {
            run_id: row.run_id.into(),
            org_id: row.org_id.into(),
            seq: row.seq,
            kind: row.kind,
            payload: row.payload,
            raw: row.raw,
            occurred_at: row.occurred_at,
        })
        .collect())
}

/// The highest agent-server seq journaled for a run, so a reconnect can resume after it.
pub async fn last_source_seq(conn: &mut PgConnection, run_id: RunId) -> StorageResult<Option<i64>> {
    let row = sqlx::query!(
        r#"select max(source_seq) as "max_seq" from run_events where run_id = $1"#,
        run_id.as_uuid()
    )
    .fetch_one(conn)
    .await?;
    Ok(row.max_seq)
}

/// The base commit the run's `workspace` entry recorded, the base of its diff.
pub async fn base_commit(conn: &mut PgConnection, run_id: RunId) -> StorageResult<Option<String>> {
    let row = sqlx::query_scalar!(
        r#"select payload->>'base_commit' from run_events
           where run_id = $1 and kind = 'workspace' order by seq desc limit 1"#,
        run_id.as_uuid()
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.flatten())
}
