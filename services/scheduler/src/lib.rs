//! The scheduler: turns queued runs into leases on live workers, reaps expired leases, and
//! requeues retries after their backoff.
//!
//! Postgres is the queue. A `run requested` message is only a nudge to look at one run now;
//! a periodic reconcile pass finds everything else (runs that waited for capacity, messages lost
//! while NATS was down). Each lease is a compare-and-set transition plus an outbox message to the
//! chosen worker, committed together, and the NATS message is acked only after that commit.

pub mod config;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use cadenza_bus::messages::{LeaseOffered, RunRequested};
use cadenza_bus::{Bus, Disposition, Durable, subjects};
use cadenza_domain::{
    JournalEvent, LeaseExpiry, RunEvent, RunId, RunState, TerminalCode, TerminalReason,
    lease_expired_event,
};
use cadenza_outbox_relay::RelayNudge;
use cadenza_service_runtime::{Check, ReadinessProbe, health_routes};
use cadenza_storage::runs::{self, Actor, Lease};
use cadenza_storage::{PgPool, StorageError, outbox, workers};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::SchedulerConfig;

const DURABLE_NAME: &str = "scheduler";
const RECONCILE_BATCH: i64 = 100;

pub struct Scheduler {
    core: Arc<Core>,
    relay: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
}

struct Core {
    pool: PgPool,
    bus: Bus,
    relay: RelayNudge,
    config: SchedulerConfig,
}

/// What happened when the scheduler tried to lease one run.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Leased,
    /// No live worker has a free slot; the run stays queued.
    NoCapacity,
    /// The run is no longer queued (another scheduler took it, or it was cancelled).
    NotQueued,
}

pub async fn build(
    config: SchedulerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<Scheduler> {
    anyhow::ensure!(
        config.database_pool_size > 0,
        "CADENZA_DATABASE_POOL_SIZE must be at least 1"
    );
    let pool = cadenza_storage::connect(
        config.database_url.expose_secret(),
        config.database_pool_size,
    )
    .await
    .context("connecting to Postgres (CADENZA_DATABASE_URL)")?;
    let bus = Bus::connect_with_replicas(
        &config.nats_url,
        &config.bus_prefix,
        config.nats_stream_replicas,
    )
    .await
    .context("connecting to NATS (CADENZA_NATS_URL)")?;
    let (relay, relay_handle) =
        cadenza_outbox_relay::spawn(pool.clone(), bus.clone(), shutdown.clone());
    Ok(Scheduler {
        core: Arc::new(Core {
            pool,
            bus,
            relay,
            config,
        }),
        relay: relay_handle,
        shutdown,
    })
}

impl Scheduler {
    pub fn router(&self) -> Router {
        let core = self.core.clone();
        let probe: ReadinessProbe = Arc::new(move || {
            let core = core.clone();
            Box::pin(async move {
                vec![
                    Check::from_result("postgres", cadenza_storage::ping(&core.pool).await),
                    Check::from_result("nats", core.bus.ping().await),
                ]
            })
        });
        health_routes(probe)
    }

    pub async fn run(self, listener: TcpListener) -> anyhow::Result<()> {
        tracing::info!(addr = %listener.local_addr()?, "scheduler health endpoints listening");
        let http = tokio::spawn(cadenza_service_runtime::serve(
            listener,
            self.router(),
            self.shutdown.clone(),
        ));
        let consumer = tokio::spawn(consume_requests(self.core.clone(), self.shutdown.clone()));
        let reconciler = tokio::spawn(reconcile_loop(self.core.clone(), self.shutdown.clone()));
        self.shutdown.cancelled().await;
        let _ = consumer.await;
        let _ = reconciler.await;
        let _ = self.relay.await;
        let _ = http.await;
        tracing::info!("scheduler stopped");
        Ok(())
    }
}

/// Run requests from NATS: a nudge to lease that run now. Acked once the lease (or the finding
/// that there is nothing to lease) is committed; retried shortly when Postgres fails.
async fn consume_requests(core: Arc<Core>, shutdown: CancellationToken) {
    let durable = Durable {
        name: DURABLE_NAME,
        filter: subjects::RUN_REQUESTED,
        expire_after: None,
    };
    cadenza_bus::consume(&core.bus, durable, &shutdown, |request: RunRequested| {
        let core = core.clone();
        async move {
            match schedule_run(&core, Some(request.run_id)).await {
                Ok(outcome) => {
                    tracing::debug!(run_id = %request.run_id, ?outcome, "run request handled");
                    Disposition::Ack
                }
                Err(err) => {
                    tracing::warn!(run_id = %request.run_id, error = %err, "scheduling failed; will retry");
                    Disposition::Retry(Duration::from_secs(1))
                }
            }
        }
    })
    .await;
}

/// Leases one run: the given one if it is still queued, or else the oldest queued run.
async fn schedule_run(core: &Core, run_id: Option<RunId>) -> Result<Outcome, StorageError> {
    let mut tx = core.pool.begin().await?;
    let run_id = match run_id {
        Some(run_id) => {
            if !runs::lock_if_queued(&mut tx, run_id).await? {
                return Ok(Outcome::NotQueued);
            }
            run_id
        }
        None => match runs::lock_queued(&mut tx, 1).await?.into_iter().next() {
            Some(run_id) => run_id,
            None => return Ok(Outcome::NotQueued),
        },
    };
    // A follow-up turn runs where its workspace is, or waits.
    let pinned = cadenza_storage::workspaces::pinned_worker(&mut tx, run_id).await?;
    let Some(worker) =
        workers::lock_worker_with_capacity(&mut tx, core.config.worker_liveness, pinned).await?
    else {
        return Ok(Outcome::NoCapacity);
    };
    let done = runs::transition(
        &mut tx,
        run_id,
        RunState::Queued,
        &RunEvent::Leased,
        Actor::Any,
        Some(Lease {
            worker,
            ttl: core.config.lease_ttl,
        }),
    )
    .await?;
    let offer = LeaseOffered::new(run_id, done.run.org_id, worker, done.run.attempt);
    outbox::enqueue_message(&mut tx, &offer).await?;
    tx.commit().await?;
    core.relay.nudge();
    tracing::info!(run_id = %run_id, org_id = %done.run.org_id, worker_id = %worker, attempt = done.run.attempt, "run leased");
    core.bus.publish_journal_event(&done.entry).await;
    Ok(Outcome::Leased)
}

async fn reconcile_loop(core: Arc<Core>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(core.config.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reachable = Reachability::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let reap = reachable.for_at_least(core.config.lease_ttl);
        match reconcile_once(&core, reap).await {
            Ok(()) => reachable.succeeded(),
            Err(err) => {
                reachable.failed();
                tracing::warn!(error = %err, "reconcile pass failed");
            }
        }
    }
}

/// Since when the scheduler has reached Postgres without a failure. A lease is only as good as
/// the holder's chance to renew it: after an outage, every lease looks expired although every
/// worker is fine, so nothing is reaped until Postgres has been reachable for a full lease
/// period (the workers have renewed by then).
struct Reachability {
    since: Option<tokio::time::Instant>,
}

impl Reachability {
    /// A process that just started has seen Postgres for no time at all.
    fn new() -> Self {
        Self {
            since: Some(tokio::time::Instant::now()),
        }
    }

    fn succeeded(&mut self) {
        self.since.get_or_insert_with(tokio::time::Instant::now);
    }

    fn failed(&mut self) {
        self.since = None;
    }

    fn for_at_least(&self, period: Duration) -> bool {
        self.since.is_some_and(|since| since.elapsed() >= period)
    }
}

/// One pass over Postgres: reap expired leases (when `reap`), requeue due retries, lease queued
/// runs while there is capacity.
async fn reconcile_once(core: &Core, reap: bool) -> Result<(), StorageError> {
    if reap {
        reap_expired_leases(core).await?;
    } else {
        // Still a round trip, so an outage that is not over is noticed.
        cadenza_storage::ping(&core.pool).await?;
    }
    requeue_due_retries(core).await?;
    fail_orphaned_follow_ups(core).await?;
    for _ in 0..RECONCILE_BATCH {
        match schedule_run(core, None).await? {
            Outcome::Leased => continue,
            Outcome::NoCapacity | Outcome::NotQueued => break,
        }
    }
    Ok(())
}

async fn reap_expired_leases(core: &Core) -> Result<(), StorageError> {
    let mut tx = core.pool.begin().await?;
    let expired =
        runs::lock_expired_leases(&mut tx, core.config.reattach_grace, RECONCILE_BATCH).await?;
    let mut entries: Vec<JournalEvent> = Vec::new();
    for lease in expired {
        let event = lease_expired_event(&LeaseExpiry {
            state: lease.state,
            attempt: lease.attempt,
            max_attempts: core.config.max_attempts,
            cancel_requested: lease.cancel_requested,
            on_lost_workspace: lease.on_lost_workspace,
            reattach_grace: core.config.reattach_grace,
        });
        let correlation = match &event {
            RunEvent::Cancelled(_) => lease.cancel_requested,
            _ => None,
        };
        let done = runs::transition_correlated(
            &mut tx,
            lease.run_id,
            lease.state,
            &event,
            Actor::Any,
            None,
            correlation,
        )
        .await?;
        tracing::warn!(run_id = %lease.run_id, org_id = %done.run.org_id, from = %lease.state, to = %done.run.state, "lease expired");
        entries.push(done.entry);
    }
    tx.commit().await?;
    for entry in &entries {
        core.bus.publish_journal_event(entry).await;
    }
    Ok(())
}

/// Follow-up turns whose worker is gone can never run: they fail with a reason.
async fn fail_orphaned_follow_ups(core: &Core) -> Result<(), StorageError> {
    let mut tx = core.pool.begin().await?;
    let orphaned =
        cadenza_storage::workspaces::lock_orphaned_follow_ups(&mut tx, core.config.worker_liveness)
            .await?;
    let event = RunEvent::Failed(cadenza_domain::TerminalReason::new(
        cadenza_domain::TerminalCode::WorkspaceUnavailable,
        "the worker holding this follow-up turn's workspace is gone; start a new run",
    ));
    transition_locked(core, tx, orphaned, RunState::Queued, &event).await
}

/// Retries whose backoff is over go back to the queue, unless someone cancelled them meanwhile.
async fn requeue_due_retries(core: &Core) -> Result<(), StorageError> {
    let mut tx = core.pool.begin().await?;
    let due = runs::lock_due_retries(&mut tx, core.config.retry_backoff, RECONCILE_BATCH).await?;
    let mut entries = Vec::new();
    for run_id in due {
        let done = match runs::cancel_request(&mut tx, run_id).await? {
            Some(correlation) => {
                runs::transition_correlated(
                    &mut tx,
                    run_id,
                    RunState::Retrying,
                    &RunEvent::Cancelled(TerminalReason::new(
                        TerminalCode::Cancelled,
                        format!("cancelled on request (correlation id {correlation})"),
                    )),
                    Actor::Any,
                    None,
                    Some(correlation),
                )
                .await?
            }
            None => {
                runs::transition(
                    &mut tx,
                    run_id,
                    RunState::Retrying,
                    &RunEvent::Requeued,
                    Actor::Any,
                    None,
                )
                .await?
            }
        };
        entries.push(done.entry);
    }
    tx.commit().await?;
    for entry in &entries {
        core.bus.publish_journal_event(entry).await;
    }
    Ok(())
}

/// Moves runs locked in `tx` from `from` with `event`, commits, then publishes their entries.
async fn transition_locked(
    core: &Core,
    mut tx: cadenza_storage::Transaction<'static, cadenza_storage::Postgres>,
    run_ids: Vec<RunId>,
    from: RunState,
    event: &RunEvent,
) -> Result<(), StorageError> {
    let mut entries = Vec::new();
    for run_id in run_ids {
        let done = runs::transition(&mut tx, run_id, from, event, Actor::Any, None).await?;
        entries.push(done.entry);
    }
    tx.commit().await?;
    for entry in &entries {
        core.bus.publish_journal_event(entry).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn nothing_is_reaped_until_postgres_was_reachable_for_a_full_lease() {
        let lease = Duration::from_secs(30);
        let mut reachable = Reachability::new();
        assert!(
            !reachable.for_at_least(lease),
            "a fresh scheduler reaped at once"
        );
        tokio::time::advance(lease).await;
        reachable.succeeded();
        assert!(reachable.for_at_least(lease));
        // An outage: the clock starts again when Postgres answers.
        reachable.failed();
        assert!(!reachable.for_at_least(lease));
        reachable.succeeded();
        tokio::time::advance(lease / 2).await;
        reachable.succeeded();
        assert!(!reachable.for_at_least(lease));
        tokio::time::advance(lease / 2).await;
        assert!(reachable.for_at_least(lease));
    }
}
