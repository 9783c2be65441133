//! `GET /orgs/{org}/snapshot`: everything a dashboard shows, read in one consistent view of
//! Postgres together with the org event cursor it matches. A client loads it, then follows
//! `GET /orgs/{org}/events/stream?cursor=<cursor>` and applies each entry: it misses no change
//! and sees none twice.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use cadenza_domain::{OrgId, Permission, Run, RunState};
use cadenza_storage::{org_events, runs, workers};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::auth::{Authorized, perm};
use crate::error::ApiResult;
use crate::extract::parse_id;
use crate::routes::wire::{OrgEventView, RunView};
use crate::state::AppState;

/// A worker whose heartbeat is older than this counts as gone.
const WORKER_LIVENESS: Duration = Duration::from_secs(30);
/// At most this many active runs and queued runs are listed (the counts are complete).
const ACTIVE_LIMIT: i64 = 500;
const RECENT_EVENTS: i64 = 50;

#[derive(Serialize, ToSchema)]
pub struct SnapshotView {
    pub org_id: String,
    /// The org event cursor this snapshot is consistent with: follow the org stream from it.
    pub cursor: String,
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: OffsetDateTime,
    pub health: HealthView,
    /// Runs of the org that have not ended, oldest first (at most 500), each with why it waits
    /// when it does. Empty without `runs.read`.
    pub active_runs: Vec<ActiveRunView>,
    /// How many of the org's runs are in each state (all of them, ended ones included).
    pub runs_by_state: BTreeMap<String, i64>,
    /// The org's queued runs in the order the scheduler takes them.
    pub queue: Vec<QueuedRunView>,
    /// The org's last entries the caller may see, oldest first.
    pub recent_events: Vec<OrgEventView>,
    pub capacity: CapacityView,
}

#[derive(Serialize, ToSchema)]
pub struct HealthView {
    /// `ok` when every dependency answers, else `degraded`.
    #[schema(examples("ok"))]
    pub status: &'static str,
    /// Postgres, NATS and Redis as this API process reaches them (errors for instance
    /// administrators only).
    pub dependencies: Vec<DependencyView>,
}

#[derive(Serialize, ToSchema)]
pub struct DependencyView {
    pub name: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ActiveRunView {
    pub run: RunView,
    /// Why it is not running yet, while it is not.
    pub wait_reason: Option<WaitReason>,
}

#[derive(Serialize, ToSchema)]
pub struct QueuedRunView {
    pub run_id: String,
    /// Queued runs of any org the scheduler takes before this one.
    pub ahead: i64,
    pub wait_reason: WaitReason,
}

/// Why a run waits, with a stable code and a sentence for people.
#[derive(Clone, Serialize, ToSchema)]
pub struct WaitReason {
    /// `no_worker`, `no_free_slot`, `next_in_line`, `retry_backoff`, `starting_on_worker`,
    /// `provisioning`.
    #[schema(examples("no_free_slot"))]
    pub code: &'static str,
    pub detail: String,
}

/// Worker capacity across the instance: totals for everyone, each worker for instance
/// administrators.
#[derive(Serialize, ToSchema)]
pub struct CapacityView {
    pub workers: usize,
    pub slots: i64,
    pub busy: i64,
    pub free: i64,
    /// Each live worker (instance administrators only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_worker: Option<Vec<WorkerCapacityView>>,
}

#[derive(Serialize, ToSchema)]
pub struct WorkerCapacityView {
    pub id: String,
    pub name: String,
    pub capacity: i32,
    pub busy: i64,
    pub draining: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub last_heartbeat_at: OffsetDateTime,
}

/// Why `run` waits, given the instance's capacity and the queued runs ahead of it.
fn wait_reason(run: &Run, capacity: &CapacityView, ahead: Option<i64>) -> Option<WaitReason> {
    let reason = |code, detail: String| Some(WaitReason { code, detail });
    match run.state {
        RunState::Queued if capacity.workers == 0 => reason(
            "no_worker",
            "no worker is running; it starts when one joins".to_owned(),
        ),
        RunState::Queued if capacity.free <= 0 => reason(
            "no_free_slot",
            format!(
                "all {} worker slots are busy; {} queued runs are ahead of it",
                capacity.slots,
                ahead.unwrap_or(0)
            ),
        ),
        RunState::Queued => reason(
            "next_in_line",
            format!(
                "a worker slot is free; the scheduler takes it after {} queued runs",
                ahead.unwrap_or(0)
            ),
        ),
        RunState::Retrying => reason(
            "retry_backoff",
            format!(
                "attempt {} ended early; it goes back to the queue after a backoff",
                run.attempt
            ),
        ),
        RunState::Scheduled => reason(
            "starting_on_worker",
            "a worker holds it and is about to start its workspace".to_owned(),
        ),
        RunState::Provisioning => reason("provisioning", "its workspace is starting".to_owned()),
        _ => None,
    }
}

/// `GET /orgs/{org}/snapshot`.
pub async fn get(
    State(state): State<AppState>,
    auth: Authorized<perm::OrgRead>,
    Path(org): Path<String>,
) -> ApiResult<Json<SnapshotView>> {
    let org: OrgId = parse_id(&org, "org")?;
    auth.require(org)?;
    let admin = auth.principal.instance_admin;
    let sees_runs = auth.principal.can(org, Permission::RunsRead);
    let checks = crate::readiness_details(&state).await;

    let mut tx = state.pool.begin().await?;
    // One view of the database for every read below, the cursor included.
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await
        .map_err(cadenza_storage::StorageError::from)?;
    let cursor = org_events::head(&mut tx, org).await?;
    let loads = workers::live_with_load(&mut tx, WORKER_LIVENESS).await?;
    let (active, counts, positions) = if sees_runs {
        (
            runs::active_in_org(&mut tx, org, ACTIVE_LIMIT).await?,
            runs::count_by_state(&mut tx, org).await?,
            runs::queue_positions(&mut tx, org, ACTIVE_LIMIT).await?,
        )
    } else {
        (Vec::new(), Vec::new(), Vec::new())
    };
    let recent = org_events::recent(&mut tx, org, RECENT_EVENTS * 4).await?;
    tx.commit().await?;

    let slots: i64 = loads.iter().map(|load| i64::from(load.capacity)).sum();
    let busy: i64 = loads.iter().map(|load| load.busy).sum();
    let capacity = CapacityView {
        workers: loads.len(),
        slots,
        busy,
        free: loads
            .iter()
            .filter(|load| !load.draining)
            .map(|load| (i64::from(load.capacity) - load.busy).max(0))
            .sum(),
        per_worker: admin.then(|| {
            loads
                .into_iter()
                .map(|load| WorkerCapacityView {
                    id: load.id.to_string(),
                    name: load.name,
                    capacity: load.capacity,
                    busy: load.busy,
                    draining: load.draining,
                    last_heartbeat_at: load.last_heartbeat_at,
                })
                .collect()
        }),
    };
    let ahead: BTreeMap<_, _> = positions.iter().copied().collect();
    let queue = active
        .iter()
        .filter(|run| run.state == RunState::Queued)
        .filter_map(|run| {
            let ahead = ahead.get(&run.id).copied();
            Some(QueuedRunView {
                run_id: run.id.to_string(),
                ahead: ahead.unwrap_or(0),
                wait_reason: wait_reason(run, &capacity, ahead)?,
            })
        })
        .collect();
    let active_runs = active
        .into_iter()
        .map(|run| {
            let wait_reason = wait_reason(&run, &capacity, ahead.get(&run.id).copied());
            ActiveRunView {
                run: RunView::from(run),
                wait_reason,
            }
        })
        .collect();
    let mut recent_events: Vec<OrgEventView> = recent
        .iter()
        .filter(|event| auth.principal.can(org, event.required_permission()))
        .map(OrgEventView::from)
        .collect();
    let skip = recent_events.len().saturating_sub(RECENT_EVENTS as usize);
    recent_events.drain(..skip);
    let healthy = checks.iter().all(|check| check.ok);
    Ok(Json(SnapshotView {
        org_id: org.to_string(),
        cursor: cursor.to_string(),
        taken_at: OffsetDateTime::now_utc(),
        health: HealthView {
            status: if healthy { "ok" } else { "degraded" },
            dependencies: checks
                .into_iter()
                .map(|check| DependencyView {
                    name: check.name,
                    ok: check.ok,
                    error: if admin { check.error } else { None },
                })
                .collect(),
        },
        active_runs,
        runs_by_state: counts
            .into_iter()
            .map(|(state, count)| (state.as_str().to_owned(), count))
            .collect(),
        queue,
        recent_events,
        capacity,
    }))
}
