use std::time::Duration;

use cadenza_domain::{
    Fence, LeaseEffect, Milestone, OnLostWorkspace, OrgId, ProjectId, Run, RunEvent, RunId,
    RunState, Scope, TerminalReason, WorkerId,
};
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::journal::{self, NewJournalEvent};
use crate::{StorageError, StorageResult};

struct RunRow {
    id: Uuid,
    org_id: Uuid,
    project_id: Uuid,
    state: String,
    attempt: i32,
    prompt: String,
    idempotency_key: Option<String>,
    lease_holder: Option<Uuid>,
    lease_expires_at: Option<OffsetDateTime>,
    lease_epoch: i64,
    terminal_code: Option<String>,
    terminal_reason: Option<String>,
    conversation_id: Option<Uuid>,
    final_message: Option<String>,
    last_event_seq: i64,
    created_at: OffsetDateTime,
    scheduled_at: Option<OffsetDateTime>,
    provisioning_at: Option<OffsetDateTime>,
    running_at: Option<OffsetDateTime>,
    finished_at: Option<OffsetDateTime>,
    updated_at: OffsetDateTime,
}

impl TryFrom<RunRow> for Run {
    type Error = StorageError;

    fn try_from(row: RunRow) -> Result<Self, Self::Error> {
        let state = row
            .state
            .parse()
            .map_err(|err| StorageError::Corrupt(format!("run {}: {err}", row.id)))?;
        let terminal_reason = match row.terminal_code {
            Some(code) => Some(TerminalReason {
                code: code.parse().map_err(StorageError::Corrupt)?,
                message: row.terminal_reason.unwrap_or_default(),
            }),
            None => None,
        };
        Ok(Run {
            id: row.id.into(),
            org_id: row.org_id.into(),
            project_id: row.project_id.into(),
            state,
            attempt: row.attempt,
            prompt: row.prompt,
            idempotency_key: row.idempotency_key,
            lease_holder: row.lease_holder.map(WorkerId::from),
            lease_expires_at: row.lease_expires_at,
            lease_epoch: row.lease_epoch,
            terminal_reason,
            conversation_id: row.conversation_id,
            final_message: row.final_message,
            last_event_seq: row.last_event_seq,
            created_at: row.created_at,
            scheduled_at: row.scheduled_at,
            provisioning_at: row.provisioning_at,
            running_at: row.running_at,
            finished_at: row.finished_at,
            updated_at: row.updated_at,
        })
    }
}

pub struct NewRun<'a> {
    pub org_id: OrgId,
    pub project_id: ProjectId,
    pub prompt: &'a str,
    pub idempotency_key: Option<&'a str>,
}

/// The outcome of submitting a run: a new row, or the run an earlier request with the same
/// idempotency key created.
#[derive(Debug)]
pub enum Submitted {
    Created(Run),
    Existing(Run),
}

/// Stores a queued run and journals its first entry. With an idempotency key, a second submit
/// returns the first run instead of creating another one.
pub async fn submit(conn: &mut PgConnection, new: NewRun<'_>) -> StorageResult<Submitted> {
    let inserted = sqlx::query_as!(
        RunRow,
        r#"insert into runs (id, org_id, project_id, state, prompt, idempotency_key)
           values ($1, $2, $3, 'queued', $4, $5)
           on conflict (project_id, idempotency_key) where idempotency_key is not null do nothing
           returning id, org_id, project_id, state, attempt, prompt, idempotency_key, lease_holder,
                     lease_expires_at, lease_epoch, terminal_code, terminal_reason, conversation_id,
                     final_message, last_event_seq, created_at, scheduled_at, provisioning_at,
                     running_at, finished_at, updated_at"#,
        RunId::new().as_uuid(),
        new.org_id.as_uuid(),
        new.project_id.as_uuid(),
        new.prompt,
        new.idempotency_key
    )
    .fetch_optional(&mut *conn)
    .await?;
    match inserted {
        Some(row) => {
            let run = Run::try_from(row)?;
            journal::append(
                &mut *conn,
                NewJournalEvent::run_state(&run, None, RunState::Queued, None),
            )
            .await?;
            // Re-read so the caller sees the journal position.
            let run = get(conn, &Scope::Org(run.org_id), run.id).await?;
            Ok(Submitted::Created(run))
        }
        None => {
            let key = new.idempotency_key.unwrap_or_default();
            let row = sqlx::query_as!(
                RunRow,
                r#"select id, org_id, project_id, state, attempt, prompt, idempotency_key,
                          lease_holder, lease_expires_at, lease_epoch, terminal_code, terminal_reason,
                          conversation_id, final_message, last_event_seq, created_at, scheduled_at,
                          provisioning_at, running_at, finished_at, updated_at
                   from runs where project_id = $1 and idempotency_key = $2"#,
                new.project_id.as_uuid(),
                key
            )
            .fetch_one(conn)
            .await?;
            Ok(Submitted::Existing(row.try_into()?))
        }
    }
}

pub async fn get(conn: &mut PgConnection, scope: &Scope, id: RunId) -> StorageResult<Run> {
    let orgs = scope.org_filter();
    sqlx::query_as!(
        RunRow,
        r#"select id, org_id, project_id, state, attempt, prompt, idempotency_key, lease_holder,
                  lease_expires_at, lease_epoch, terminal_code, terminal_reason, conversation_id, final_message,
                  last_event_seq, created_at, scheduled_at, provisioning_at, running_at,
                  finished_at, updated_at
           from runs where id = $1 and ($2::uuid[] is null or org_id = any($2))"#,
        id.as_uuid(),
        orgs.as_deref()
    )
    .fetch_optional(conn)
    .await?
    .ok_or(StorageError::NotFound("run"))?
    .try_into()
}

pub struct RunFilter {
    pub project_id: Option<ProjectId>,
    pub state: Option<RunState>,
    /// The id of the last run of the previous page (lists are newest first).
    pub before: Option<RunId>,
    pub limit: i64,
}

pub async fn list(
    conn: &mut PgConnection,
    scope: &Scope,
    filter: &RunFilter,
) -> StorageResult<Vec<Run>> {
    let orgs = scope.org_filter();
    let rows = sqlx::query_as!(
        RunRow,
        r#"select id, org_id, project_id, state, attempt, prompt, idempotency_key, lease_holder,
                  lease_expires_at, lease_epoch, terminal_code, terminal_reason, conversation_id, final_message,
                  last_event_seq, created_at, scheduled_at, provisioning_at, running_at,
                  finished_at, updated_at
           from runs
           where ($1::uuid[] is null or org_id = any($1))
             and ($2::uuid is null or project_id = $2)
             and ($3::text is null or state = $3)
             and ($4::uuid is null or id < $4)
           order by id desc limit $5"#,
        orgs.as_deref(),
        filter.project_id.map(|id| id.as_uuid()),
        filter.state.map(|state| state.as_str()),
        filter.before.map(|id| id.as_uuid()),
        filter.limit
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Run::try_from).collect()
}

/// Who is allowed to make a transition, beyond the expected previous state.
#[derive(Clone, Copy, Debug)]
pub enum Actor {
    /// Any actor (the API, the scheduler's reaper).
    Any,
    /// Only the worker holding the lease, with this lease epoch: a worker whose hold was taken
    /// over (a retry, an adoption) is refused.
    LeaseHolder(Fence),
}

/// A lease granted with the `Leased` transition.
#[derive(Clone, Copy, Debug)]
pub struct Lease {
    pub worker: WorkerId,
    pub ttl: Duration,
}

/// Moves a run from `expected` by `event`, compare-and-set on the previous state (and on the lease
/// holder when `actor` says so), and journals the change in the same transaction. Returns the
/// updated run and its journal entry, or `Conflict` when the run is no longer in `expected`
/// (someone else moved it).
pub async fn transition(
    conn: &mut PgConnection,
    run_id: RunId,
    expected: RunState,
    event: &RunEvent,
    actor: Actor,
    lease: Option<Lease>,
) -> StorageResult<Transitioned> {
    transition_correlated(conn, run_id, expected, event, actor, lease, None).await
}

/// `transition`, with the correlation id of the request that caused it recorded on the journal
/// entry (e.g. the cancel request behind a `cancelled`).
pub async fn transition_correlated(
    conn: &mut PgConnection,
    run_id: RunId,
    expected: RunState,
    event: &RunEvent,
    actor: Actor,
    lease: Option<Lease>,
    correlation_id: Option<Uuid>,
) -> StorageResult<Transitioned> {
    let step = cadenza_domain::transition(expected, event)
        .map_err(|err| StorageError::Conflict(err.to_string()))?;
    let next = step.next;
    let reason = event.reason();
    let (lease_holder_guard, epoch_guard) = match actor {
        Actor::Any => (None, None),
        Actor::LeaseHolder(fence) => (Some(fence.worker.as_uuid()), Some(fence.epoch)),
    };
    let grant = step.lease == LeaseEffect::Grant;
    let ends_lease = matches!(step.lease, LeaseEffect::Clear | LeaseEffect::Release);
    let forgets_holder = step.lease == LeaseEffect::Release;
    let lease_ttl_ms = lease.map(|lease| lease.ttl.as_millis() as f64);
    let reached = |milestone| step.milestone == Some(milestone);
    // The effects come from the state machine (`cadenza_domain::transition`) as plain values.
    // A grant bumps the lease epoch, which fences every earlier holder (ADR 0007).
    let row = sqlx::query_as!(
        RunRow,
        r#"update runs set
             state = $3,
             attempt = attempt + $4::int4,
             lease_holder = case when $5::bool then $6
                                 when $7::bool then null
                                 else lease_holder end,
             lease_epoch = case when $5::bool then lease_epoch + 1 else lease_epoch end,
             lease_expires_at = case
                 when $5::bool then now() + make_interval(secs => $8::float8 / 1000.0)
                 when $9::bool then null
                 else lease_expires_at end,
             terminal_code = $10,
             terminal_reason = $11,
             scheduled_at = case when $12::bool then now() else scheduled_at end,
             provisioning_at = case when $13::bool then now() else provisioning_at end,
             running_at = case when $14::bool then now() else running_at end,
             finished_at = case when $15::bool then now() else finished_at end,
             updated_at = now()
           where id = $1 and state = $2
             and ($16::uuid is null or (lease_holder = $16 and lease_epoch = $17))
           returning id, org_id, project_id, state, attempt, prompt, idempotency_key, lease_holder,
                     lease_expires_at, lease_epoch, terminal_code, terminal_reason, conversation_id,
                     final_message, last_event_seq, created_at, scheduled_at, provisioning_at,
                     running_at, finished_at, updated_at"#,
        run_id.as_uuid(),
        expected.as_str(),
        next.as_str(),
        step.attempt.delta(),
        grant,
        lease.map(|lease| lease.worker.as_uuid()),
        forgets_holder,
        lease_ttl_ms,
        ends_lease,
        step.terminal.as_ref().map(|reason| reason.code.as_str()),
        step.terminal.as_ref().map(|reason| reason.message.as_str()),
        reached(Milestone::Scheduled),
        reached(Milestone::Provisioning),
        reached(Milestone::Running),
        reached(Milestone::Finished),
        lease_holder_guard,
        epoch_guard
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Err(StorageError::Conflict(format!(
            "run {run_id} is no longer `{expected}` (or not held by this actor)"
        )));
    };
    let mut run = Run::try_from(row)?;
    let mut journal_entry = NewJournalEvent::run_state(&run, Some(expected), next, reason);
    if let Some(correlation_id) = correlation_id {
        journal_entry.payload["correlation_id"] = serde_json::json!(correlation_id.to_string());
    }
    let entry = journal::append(&mut *conn, journal_entry)
        .await?
        .ok_or_else(|| {
            StorageError::Conflict(format!("run {run_id} vanished during a transition"))
        })?;
    run.last_event_seq = entry.seq;
    Ok(Transitioned { run, entry })
}

/// A committed-together state change and the journal entry that records it.
#[derive(Debug)]
pub struct Transitioned {
    pub run: Run,
    pub entry: cadenza_domain::JournalEvent,
}

/// Records the run's conversation, as its holder: refused (`Fenced`) once another holds the run.
pub async fn set_conversation(
    conn: &mut PgConnection,
    run_id: RunId,
    fence: Fence,
    conversation_id: Uuid,
) -> StorageResult<()> {
    let done = sqlx::query!(
        r#"update runs set conversation_id = $2, updated_at = now()
           where id = $1 and lease_holder = $3 and lease_epoch = $4"#,
        run_id.as_uuid(),
        conversation_id,
        fence.worker.as_uuid(),
        fence.epoch
    )
    .execute(conn)
    .await?;
    fenced_unless(done.rows_affected() == 1, run_id)
}

/// Records the agent's final message, as the run's holder (see `set_conversation`).
pub async fn set_final_message(
    conn: &mut PgConnection,
    run_id: RunId,
    fence: Fence,
    message: &str,
) -> StorageResult<()> {
    let done = sqlx::query!(
        r#"update runs set final_message = $2, updated_at = now()
           where id = $1 and lease_holder = $3 and lease_epoch = $4 and state = any($5)"#,
        run_id.as_uuid(),
        message,
        fence.worker.as_uuid(),
        fence.epoch,
        &RunState::names(&RunState::DRIVEN) as &[&str]
    )
    .execute(conn)
    .await?;
    fenced_unless(done.rows_affected() == 1, run_id)
}

pub(crate) fn fenced_unless(held: bool, run_id: RunId) -> StorageResult<()> {
    if held {
        Ok(())
    } else {
        Err(StorageError::Fenced(format!(
            "run {run_id} is no longer held with this lease"
        )))
    }
}

/// Whether `fence` is still the run's current hold (in a leased state).
pub async fn holds(conn: &mut PgConnection, run_id: RunId, fence: Fence) -> StorageResult<bool> {
    let row = sqlx::query_scalar!(
        r#"select exists (select 1 from runs
               where id = $1 and lease_holder = $2 and lease_epoch = $3
                 and state = any($4)) as "held!""#,
        run_id.as_uuid(),
        fence.worker.as_uuid(),
        fence.epoch,
        &RunState::names(&RunState::LEASED) as &[&str]
    )
    .fetch_one(conn)
    .await?;
    Ok(row)
}

/// Renews the leases of exactly the runs a worker is driving (each with the epoch it holds) and
/// returns those it still holds. A run missing from the answer was taken from the worker (it
/// ended, was retried or adopted elsewhere): its supervisor must stop. `scheduled` runs are not
/// renewed: a worker accepts them within a lease period, or the reaper retries them.
pub async fn renew(
    conn: &mut PgConnection,
    worker: WorkerId,
    held: &[(RunId, i64)],
    ttl: Duration,
) -> StorageResult<Vec<RunId>> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = held.iter().map(|(id, _)| id.as_uuid()).collect();
    let epochs: Vec<i64> = held.iter().map(|(_, epoch)| *epoch).collect();
    let rows = sqlx::query_scalar!(
        r#"update runs r set lease_expires_at = now() + make_interval(secs => $2::float8)
           from unnest($3::uuid[], $4::int8[]) as h(id, epoch)
           where r.id = h.id and r.lease_epoch = h.epoch and r.lease_holder = $1
             and r.state = any($5)
           returning r.id"#,
        worker.as_uuid(),
        ttl.as_secs_f64(),
        &ids,
        &epochs,
        &RunState::names(&RunState::DRIVEN) as &[&str]
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(RunId::from).collect())
}

/// Runs leased to `worker` that it has not accepted yet (`scheduled`, lease not expired): a
/// worker reads these at every heartbeat, so an offer lost on the bus delays nothing for long.
pub async fn offered_to(conn: &mut PgConnection, worker: WorkerId) -> StorageResult<Vec<RunId>> {
    let rows = sqlx::query_scalar!(
        r#"select id from runs
           where lease_holder = $1 and state = 'scheduled' and lease_expires_at > now()
           order by scheduled_at"#,
        worker.as_uuid()
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(RunId::from).collect())
}

/// Takes over a `provisioning` or `running` run whose workspace container runs on this worker's
/// Docker Engine: allowed when the run is still at `epoch` and its holder is this worker (a
/// previous process of it), a worker that stopped or stopped heartbeating, or its lease ran out.
/// The epoch moves on, which fences the previous holder. `None` when another got there first or
/// the holder is alive.
pub async fn adopt(
    conn: &mut PgConnection,
    run_id: RunId,
    epoch: i64,
    worker: WorkerId,
    ttl: Duration,
    liveness: Duration,
) -> StorageResult<Option<Run>> {
    let row = sqlx::query_as!(
        RunRow,
        r#"update runs r set lease_holder = $3, lease_epoch = lease_epoch + 1,
                  lease_expires_at = now() + make_interval(secs => $4::float8), updated_at = now()
           where id = $1 and lease_epoch = $2 and state = any($6)
             and (lease_holder = $3 or lease_holder is null or lease_expires_at < now()
                  or exists (select 1 from workers w where w.id = r.lease_holder
                             and (w.stopped_at is not null or w.draining_at is not null
                                  or w.last_heartbeat_at < now() - make_interval(secs => $5::float8))))
           returning id, org_id, project_id, state, attempt, prompt, idempotency_key, lease_holder,
                     lease_expires_at, lease_epoch, terminal_code, terminal_reason, conversation_id,
                     final_message, last_event_seq, created_at, scheduled_at, provisioning_at,
                     running_at, finished_at, updated_at"#,
        run_id.as_uuid(),
        epoch,
        worker.as_uuid(),
        ttl.as_secs_f64(),
        liveness.as_secs_f64(),
        &RunState::names(&RunState::DRIVEN) as &[&str]
    )
    .fetch_optional(conn)
    .await?;
    row.map(Run::try_from).transpose()
}

/// Locks up to `limit` queued runs, oldest first, skipping rows another scheduler holds.
pub async fn lock_queued(conn: &mut PgConnection, limit: i64) -> StorageResult<Vec<RunId>> {
    let rows = sqlx::query!(
        r#"select id from runs where state = 'queued'
           order by created_at limit $1 for update skip locked"#,
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|row| RunId::from(row.id)).collect())
}

/// Locks a queued run by id if it is still queued (the fast path of a `run requested` nudge).
pub async fn lock_if_queued(conn: &mut PgConnection, id: RunId) -> StorageResult<bool> {
    let row = sqlx::query!(
        "select id from runs where id = $1 and state = 'queued' for update skip locked",
        id.as_uuid()
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some())
}

/// A leased run whose holder stopped renewing it, locked for the reaper.
#[derive(Clone, Copy, Debug)]
pub struct ExpiredLease {
    pub run_id: RunId,
    pub state: RunState,
    pub attempt: i32,
    /// Someone asked to cancel the run: it ends cancelled, never retried.
    pub cancel_requested: Option<Uuid>,
    /// The project's policy for a run whose workspace is lost while its agent works.
    pub on_lost_workspace: OnLostWorkspace,
}

/// Leased runs whose holder stopped renewing the lease, locked for the reaper. A `running` run
/// is left alone for `running_grace` more: its agent may still work in a container a worker on
/// the same engine is about to adopt. They come in org order: changing their states appends to
/// each org's event journal, whose head rows must be locked in one order by every transaction
/// that touches several orgs, or two reapers could deadlock.
pub async fn lock_expired_leases(
    conn: &mut PgConnection,
    running_grace: Duration,
    limit: i64,
) -> StorageResult<Vec<ExpiredLease>> {
    let rows = sqlx::query!(
        r#"select r.id, r.org_id, r.state, r.attempt, r.cancel_correlation_id,
                  p.agent_on_lost_workspace
           from runs r join projects p on p.id = r.project_id
           where r.state = any($3)
             and r.lease_expires_at < now() - case when r.state = 'running'
                 then make_interval(secs => $1::float8) else interval '0' end
           order by r.lease_expires_at limit $2 for update of r skip locked"#,
        running_grace.as_secs_f64(),
        limit,
        &RunState::names(&RunState::LEASED) as &[&str]
    )
    .fetch_all(conn)
    .await?;
    let mut rows = rows;
    rows.sort_by_key(|row| (row.org_id, row.id));
    rows.into_iter()
        .map(|row| {
            let corrupt = |err: String| StorageError::Corrupt(format!("run {}: {err}", row.id));
            Ok(ExpiredLease {
                run_id: RunId::from(row.id),
                state: row
                    .state
                    .parse()
                    .map_err(|err: cadenza_domain::run::UnknownRunState| {
                        corrupt(err.to_string())
                    })?,
                attempt: row.attempt,
                cancel_requested: row.cancel_correlation_id,
                on_lost_workspace: row.agent_on_lost_workspace.parse().map_err(corrupt)?,
            })
        })
        .collect()
}

/// Runs waiting out a retry backoff that are due to go back to the queue, in org order (see
/// `lock_expired_leases`).
pub async fn lock_due_retries(
    conn: &mut PgConnection,
    backoff: Duration,
    limit: i64,
) -> StorageResult<Vec<RunId>> {
    let rows = sqlx::query!(
        r#"select id from runs
           where state = 'retrying'
             and updated_at < now() - make_interval(secs => $1::float8 * power(2, least(attempt - 1, 6)))
           order by org_id, id limit $2 for update skip locked"#,
        backoff.as_secs_f64(),
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|row| RunId::from(row.id)).collect())
}

/// Runs a worker holds, for start-up reconciliation and lease renewal.
pub async fn held_by(conn: &mut PgConnection, worker: WorkerId) -> StorageResult<Vec<Run>> {
    let rows = sqlx::query_as!(
        RunRow,
        r#"select id, org_id, project_id, state, attempt, prompt, idempotency_key, lease_holder,
                  lease_expires_at, lease_epoch, terminal_code, terminal_reason, conversation_id, final_message,
                  last_event_seq, created_at, scheduled_at, provisioning_at, running_at,
                  finished_at, updated_at
           from runs
           where lease_holder = $1 and state = any($2)"#,
        worker.as_uuid(),
        &RunState::names(&RunState::LEASED) as &[&str]
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Run::try_from).collect()
}

/// The runs of `ids` that exist, in no particular order.
pub async fn by_ids(conn: &mut PgConnection, ids: &[RunId]) -> StorageResult<Vec<Run>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
    let rows = sqlx::query_as!(
        RunRow,
        r#"select id, org_id, project_id, state, attempt, prompt, idempotency_key, lease_holder,
                  lease_expires_at, lease_epoch, terminal_code, terminal_reason, conversation_id,
                  final_message, last_event_seq, created_at, scheduled_at, provisioning_at,
                  running_at, finished_at, updated_at
           from runs where id = any($1)"#,
        &ids
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Run::try_from).collect()
}

/// Which of `ids` are runs that still exist. A worker asks about the runs it executes and the
/// containers it owns: a run that is gone was deleted with its project or org, and its
/// workspace must go too.
pub async fn existing(conn: &mut PgConnection, ids: &[RunId]) -> StorageResult<Vec<RunId>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
    let rows = sqlx::query_scalar!("select id from runs where id = any($1)", &ids)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(RunId::from).collect())
}

/// Locks the run's row for the rest of the transaction and returns the run as it is now: a
/// decision taken on it cannot race a state change (the scheduler's lease, a worker's step).
pub async fn lock(conn: &mut PgConnection, scope: &Scope, id: RunId) -> StorageResult<Run> {
    sqlx::query!("select id from runs where id = $1 for update", id.as_uuid())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StorageError::NotFound("run"))?;
    get(conn, scope, id).await
}

/// Records a cancellation request, once: a second request returns the first one's correlation
/// id. Returns the correlation id in effect.
pub async fn request_cancel(
    conn: &mut PgConnection,
    run_id: RunId,
    correlation_id: Uuid,
) -> StorageResult<Uuid> {
    let row = sqlx::query!(
        r#"update runs set cancel_requested_at = coalesce(cancel_requested_at, now()),
                           cancel_correlation_id = coalesce(cancel_correlation_id, $2),
                           updated_at = now()
           where id = $1
           returning cancel_correlation_id as "correlation_id!""#,
        run_id.as_uuid(),
        correlation_id
    )
    .fetch_optional(conn)
    .await?
    .ok_or(StorageError::NotFound("run"))?;
    Ok(row.correlation_id)
}

/// Runs held by `worker` that someone asked to cancel, with the request's correlation id.
pub async fn cancel_requests_for(
    conn: &mut PgConnection,
    worker: WorkerId,
) -> StorageResult<Vec<(RunId, Uuid)>> {
    let rows = sqlx::query!(
        r#"select id, cancel_correlation_id as "correlation_id!" from runs
           where lease_holder = $1 and cancel_requested_at is not null
             and cancel_correlation_id is not null
             and state = any($2)"#,
        worker.as_uuid(),
        &RunState::names(&RunState::LEASED) as &[&str]
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (RunId::from(row.id), row.correlation_id))
        .collect())
}

/// The pending cancellation of one run, if any.
pub async fn cancel_request(conn: &mut PgConnection, run_id: RunId) -> StorageResult<Option<Uuid>> {
    let row = sqlx::query!(
        "select cancel_correlation_id from runs where id = $1 and cancel_requested_at is not null",
        run_id.as_uuid()
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.and_then(|row| row.cancel_correlation_id))
}

/// The org's runs that have not ended, oldest first, at most `limit`.
pub async fn active_in_org(
    conn: &mut PgConnection,
    org: OrgId,
    limit: i64,
) -> StorageResult<Vec<Run>> {
    let rows = sqlx::query_as!(
        RunRow,
        r#"select id, org_id, project_id, state, attempt, prompt, idempotency_key, lease_holder,
                  lease_expires_at, lease_epoch, terminal_code, terminal_reason, conversation_id,
                  final_message, last_event_seq, created_at, scheduled_at, provisioning_at,
                  running_at, finished_at, updated_at
           from runs
           where org_id = $1 and state not in ('succeeded', 'failed', 'cancelled')
           order by created_at, id limit $2"#,
        org.as_uuid(),
        limit
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Run::try_from).collect()
}

/// How many of the org's runs are in each state (states with none are left out).
pub async fn count_by_state(
    conn: &mut PgConnection,
    org: OrgId,
) -> StorageResult<Vec<(RunState, i64)>> {
    let rows = sqlx::query!(
        r#"select state, count(*) as "count!" from runs where org_id = $1 group by state
           order by state"#,
        org.as_uuid()
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            let state =
                row.state
                    .parse()
                    .map_err(|err: cadenza_domain::run::UnknownRunState| {
                        StorageError::Corrupt(err.to_string())
                    })?;
            Ok((state, row.count))
        })
        .collect()
}

/// For each of the org's queued runs (oldest first, at most `limit`): how many queued runs of
/// any org the scheduler takes before it.
pub async fn queue_positions(
    conn: &mut PgConnection,
    org: OrgId,
    limit: i64,
) -> StorageResult<Vec<(RunId, i64)>> {
    let rows = sqlx::query!(
        r#"select r.id,
                  (select count(*) from runs q
                   where q.state = 'queued' and (q.created_at, q.id) < (r.created_at, r.id))
                  as "ahead!"
           from runs r where r.org_id = $1 and r.state = 'queued'
           order by r.created_at, r.id limit $2"#,
        org.as_uuid(),
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (RunId::from(row.id), row.ahead))
        .collect())
}
