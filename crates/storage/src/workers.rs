use std::time::Duration;

use cadenza_domain::{RunState, Worker, WorkerId};
use sqlx::PgConnection;

use crate::StorageResult;

/// Registers a worker by its stable name, keeping its id across restarts so leases and
/// containers it owned can be found again.
pub async fn register(conn: &mut PgConnection, name: &str, capacity: i32) -> StorageResult<Worker> {
    let row = sqlx::query!(
        r#"insert into workers (id, name, capacity) values ($1, $2, $3)
           on conflict (name) do update
             set capacity = excluded.capacity, started_at = now(), last_heartbeat_at = now(),
                 stopped_at = null, draining_at = null
           returning id, name, capacity, started_at, last_heartbeat_at"#,
        WorkerId::new().as_uuid(),
        name,
        capacity
    )
    .fetch_one(conn)
    .await?;
    Ok(Worker {
        id: row.id.into(),
        name: row.name,
        capacity: row.capacity,
        started_at: row.started_at,
        last_heartbeat_at: row.last_heartbeat_at,
    })
}

/// Records that the worker is alive. Leases are renewed per run (`runs::renew`), for the runs
/// the worker is actually driving.
pub async fn heartbeat(conn: &mut PgConnection, worker: WorkerId) -> StorageResult<()> {
    sqlx::query!(
        "update workers set last_heartbeat_at = now() where id = $1",
        worker.as_uuid()
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks the worker draining: the scheduler leases it nothing more, and a worker on the same
/// Docker Engine may adopt its runs at once.
pub async fn set_draining(conn: &mut PgConnection, worker: WorkerId) -> StorageResult<()> {
    sqlx::query!(
        "update workers set draining_at = coalesce(draining_at, now()) where id = $1",
        worker.as_uuid()
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn mark_stopped(conn: &mut PgConnection, worker: WorkerId) -> StorageResult<()> {
    sqlx::query!(
        "update workers set stopped_at = now() where id = $1",
        worker.as_uuid()
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The live worker with the most free slots, locked so two schedulers cannot both fill its last
/// slot. `None` when every live worker is full (or none is alive).
/// With `only`, that worker or none (a follow-up turn must run where its workspace is).
pub async fn lock_worker_with_capacity(
    conn: &mut PgConnection,
    liveness: Duration,
    only: Option<WorkerId>,
) -> StorageResult<Option<WorkerId>> {
    let row = sqlx::query!(
        r#"select w.id from workers w
           cross join lateral (
               select count(*) as active from runs r
               where r.lease_holder = w.id and r.state = any($3)
           ) load
           where w.stopped_at is null and w.draining_at is null
             and w.last_heartbeat_at > now() - make_interval(secs => $1::float8)
             and w.capacity > load.active
             and ($2::uuid is null or w.id = $2)
           order by w.capacity - load.active desc, w.last_heartbeat_at desc
           limit 1
           for update of w skip locked"#,
        liveness.as_secs_f64(),
        only.map(|worker| worker.as_uuid()),
        &RunState::names(&RunState::LEASED) as &[&str]
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|row| WorkerId::from(row.id)))
}

/// One live worker (heartbeat within `liveness`, not stopped) and how many of its slots are
/// taken.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerLoad {
    pub id: WorkerId,
    pub name: String,
    pub capacity: i32,
    pub busy: i64,
    pub draining: bool,
    pub last_heartbeat_at: time::OffsetDateTime,
}

/// Every live worker with its load, by name.
pub async fn live_with_load(
    conn: &mut PgConnection,
    liveness: Duration,
) -> StorageResult<Vec<WorkerLoad>> {
    let rows = sqlx::query!(
        r#"select w.id, w.name, w.capacity, w.draining_at is not null as "draining!",
                  w.last_heartbeat_at,
                  (select count(*) from runs r
                   where r.lease_holder = w.id and r.state = any($2)) as "busy!"
           from workers w
           where w.stopped_at is null
             and w.last_heartbeat_at > now() - make_interval(secs => $1::float8)
           order by w.name"#,
        liveness.as_secs_f64(),
        &RunState::names(&RunState::LEASED) as &[&str]
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| WorkerLoad {
            id: WorkerId::from(row.id),
            name: row.name,
            capacity: row.capacity,
            busy: row.busy,
            draining: row.draining,
            last_heartbeat_at: row.last_heartbeat_at,
        })
        .collect())
}
