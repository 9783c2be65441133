//! The worker: a pool member that accepts leases, runs each leased run in its own workspace
//! container, drives the agent-server inside it, journals every event, and heartbeats so the
//! scheduler knows it is alive and its leases stay valid.

pub mod config;
pub mod docker;
mod normalize;
mod secrets;
mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use cadenza_bus::messages::{LeaseOffered, VERSION};
use cadenza_bus::{Bus, subjects};
use cadenza_domain::{RunEvent, RunState, Scope, TerminalCode, TerminalReason, Worker};
use cadenza_service_runtime::{Check, ReadinessProbe, health_routes};
use cadenza_storage::runs::{self, Actor};
use cadenza_storage::{PgPool, StorageError, workers};
use futures::StreamExt;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::WorkerConfig;
use docker::DockerRuntime;

/// A worker's lease consumer is deleted by NATS after this long without a pull: the worker is
/// gone (a renamed or retired host). Its unconsumed offers stay in the work queue.
const CONSUMER_EXPIRY: Duration = Duration::from_secs(3600);

pub(crate) struct Core {
    pub(crate) pool: PgPool,
    pub(crate) bus: Bus,
    pub(crate) docker: DockerRuntime,
    pub(crate) config: WorkerConfig,
    pub(crate) worker: Worker,
    pub(crate) keyring: cadenza_crypto::KeyRing,
    /// The agent images runs may use (each org may have more, in Postgres).
    pub(crate) images: cadenza_domain::ImagePolicy,
    /// Who containers run as when their image would run as root.
    pub(crate) fallback_user: (u32, u32),
    /// Held while a run makes room for its network and creates it, so two runs never both take
    /// the last free one.
    pub(crate) network_room: tokio::sync::Mutex<()>,
    /// The stop handles of the runs this worker is executing.
    pub(crate) active:
        std::sync::Mutex<std::collections::HashMap<cadenza_domain::RunId, supervisor::Stop>>,
}

pub struct WorkerService {
    core: Arc<Core>,
    shutdown: CancellationToken,
}

pub async fn build(
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<WorkerService> {
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
    let keyring = config.keyring()?;
    let images = config.image_policy()?;
    let fallback_user = config.fallback_user()?;
    {
        let mut conn = pool.acquire().await?;
        cadenza_storage::secrets::check_keyring(&mut conn, &keyring)
            .await
            .context(
                "refusing to start: the configured key ring cannot open every stored secret",
            )?;
    }
    let bus = Bus::connect(&config.nats_url, &config.bus_prefix)
        .await
        .context("connecting to NATS (CADENZA_NATS_URL)")?;
    let docker = DockerRuntime::connect(config.subnet_pool()?)
        .await
        .context("connecting to the Docker Engine (DOCKER_HOST or the local socket)")?;
    let name = config.resolved_name();
    let mut conn = pool.acquire().await?;
    let worker = workers::register(&mut conn, &name, config.worker_capacity)
        .await
        .context("registering the worker")?;
    drop(conn);
    tracing::info!(worker_id = %worker.id, worker = %worker.name, capacity = worker.capacity, "worker registered");
    Ok(WorkerService {
        core: Arc::new(Core {
            pool,
            bus,
            docker,
            config,
            worker,
            keyring,
            images,
            fallback_user,
            network_room: tokio::sync::Mutex::new(()),
            active: Default::default(),
        }),
        shutdown,
    })
}

impl WorkerService {
    pub fn router(&self) -> Router {
        let core = self.core.clone();
        let probe: ReadinessProbe = Arc::new(move || {
            let core = core.clone();
            Box::pin(async move {
                vec![
                    Check::from_result("postgres", cadenza_storage::ping(&core.pool).await),
                    Check::from_result("nats", core.bus.ping().await),
                    Check::from_result("docker", core.docker.ping().await),
                ]
            })
        });
        health_routes(probe)
    }

    pub async fn run(self, listener: TcpListener) -> anyhow::Result<()> {
        tracing::info!(addr = %listener.local_addr()?, "worker health endpoints listening");
        let http = tokio::spawn(cadenza_service_runtime::serve(
            listener,
            self.router(),
            self.shutdown.clone(),
        ));
        let core = self.core.clone();
        let runs_cancel = CancellationToken::new();
        let mut tasks: JoinSet<()> = JoinSet::new();
        let slots = Arc::new(Semaphore::new(
            usize::try_from(core.config.worker_capacity.max(0)).unwrap_or(0),
        ));

        recover_after_restart(&core, &slots, &mut tasks, &runs_cancel).await;

        let heartbeat = tokio::spawn(heartbeat_loop(core.clone(), self.shutdown.clone()));
        consume_leases(&core, &slots, &mut tasks, &runs_cancel, &self.shutdown).await;

        // Drain: in-flight runs may finish within the grace period; then they are stopped and
        // recorded as ended by the shutdown.
        if !tasks.is_empty() {
            tracing::info!(in_flight = tasks.len(), grace = ?core.config.shutdown_grace, "waiting for in-flight runs");
            let drained = tokio::time::timeout(core.config.shutdown_grace, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                runs_cancel.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(30), async {
                    while tasks.join_next().await.is_some() {}
                })
                .await;
            }
        }
        heartbeat.abort();
        // Kept workspaces end with the worker: no follow-up turn could reach them.
        reap_idle_workspaces(&core, true).await;
        if let Ok(mut conn) = core.pool.acquire().await {
            let _ = workers::mark_stopped(&mut conn, core.worker.id).await;
        }
        let _ = http.await;
        tracing::info!("worker stopped");
        Ok(())
    }
}

async fn heartbeat_loop(core: Arc<Core>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(core.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tick.tick() => {}
        }
        // Keep renewing during the drain too, so runs finishing in the grace period keep their
        // leases; the task is aborted after the drain.
        let result = async {
            let mut conn = core.pool.acquire().await?;
            workers::heartbeat(&mut conn, core.worker.id, core.config.lease_ttl).await
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(error = %err, "heartbeat failed");
        }
        deliver_cancellations(&core).await;
        deliver_messages(&core).await;
        reap_idle_workspaces(&core, false).await;
        stop_deleted_runs(&core).await;
        remove_workspaces_of_deleted_runs(&core).await;
        if shutdown.is_cancelled() {
            tokio::time::sleep(core.config.heartbeat_interval).await;
        }
    }
}

/// Cancellation requests are recorded on the run; the worker picks them up at each heartbeat and
/// stops the runs it is executing.
async fn deliver_cancellations(core: &Core) {
    let requests = async {
        let mut conn = core.pool.acquire().await?;
        runs::cancel_requests_for(&mut conn, core.worker.id).await
    }
    .await;
    let requests = match requests {
        Ok(requests) => requests,
        Err(err) => {
            tracing::warn!(error = %err, "reading cancellation requests failed");
            return;
        }
    };
    let active = match core.active.lock() {
        Ok(active) => active,
        Err(poisoned) => poisoned.into_inner(),
    };
    for (run_id, correlation) in requests {
        if let Some(stop) = active.get(&run_id)
            && !stop.user.is_cancelled()
        {
            let _ = stop.correlation.set(correlation);
            stop.user.cancel();
            tracing::info!(%run_id, %correlation, "cancelling run on request");
        }
    }
}

/// Runs deleted with their project or org (the rows cascade away) stop at the next heartbeat:
/// their supervisors are cancelled, which removes the containers. Nothing can be recorded about
/// them any more.
async fn stop_deleted_runs(core: &Core) {
    let active: Vec<cadenza_domain::RunId> = match core.active.lock() {
        Ok(active) => active.keys().copied().collect(),
        Err(poisoned) => poisoned.into_inner().keys().copied().collect(),
    };
    if active.is_empty() {
        return;
    }
    let existing = async {
        let mut conn = core.pool.acquire().await?;
        runs::existing(&mut conn, &active).await
    }
    .await;
    let existing = match existing {
        Ok(existing) => existing,
        Err(err) => {
            tracing::warn!(error = %err, "checking for deleted runs failed");
            return;
        }
    };
    let current = match core.active.lock() {
        Ok(current) => current,
        Err(poisoned) => poisoned.into_inner(),
    };
    for run_id in deleted_among(&active, &existing) {
        if let Some(stop) = current.get(run_id)
            && !stop.user.is_cancelled()
        {
            tracing::info!(%run_id, "the run was deleted with its project or org; stopping it");
            stop.user.cancel();
        }
    }
}

/// The runs looked up that were not found. Only those: a run accepted after the lookup is not
/// among the found, yet exists.
fn deleted_among<'a>(
    looked_up: &'a [cadenza_domain::RunId],
    found: &'a [cadenza_domain::RunId],
) -> impl Iterator<Item = &'a cadenza_domain::RunId> {
    looked_up.iter().filter(|run_id| !found.contains(run_id))
}

/// Removes this worker's containers (running or kept for a follow-up) whose run no longer
/// exists: deleted with its project or org. Only a successful lookup removes anything, and a
/// run's row exists before its container is made, so a starting run is never touched.
async fn remove_workspaces_of_deleted_runs(core: &Core) {
    let containers = match core.docker.owned_workspaces(&core.worker.name).await {
        Ok(containers) => containers,
        Err(err) => {
            tracing::warn!(error = %err, "listing workspace containers failed");
            return;
        }
    };
    let labelled: Vec<(String, cadenza_domain::RunId)> = containers
        .into_iter()
        .filter_map(|(container, run)| {
            let run = uuid::Uuid::parse_str(run.as_deref()?).ok()?;
            Some((container, cadenza_domain::RunId::from(run)))
        })
        .collect();
    if labelled.is_empty() {
        return;
    }
    let ids: Vec<cadenza_domain::RunId> = labelled.iter().map(|(_, run)| *run).collect();
    let existing = async {
        let mut conn = core.pool.acquire().await?;
        runs::existing(&mut conn, &ids).await
    }
    .await;
    let existing = match existing {
        Ok(existing) => existing,
        Err(err) => {
            tracing::warn!(error = %err, "checking workspaces for deleted runs failed");
            return;
        }
    };
    for (container, run_id) in labelled {
        if !existing.contains(&run_id) {
            tracing::info!(%run_id, container, "removing the workspace of a deleted run");
            core.docker.remove_workspace(&container, &container).await;
        }
    }
}

/// Removes kept workspaces whose time is up (or, with `all`, every kept workspace of this
/// worker). Each is released in Postgres first, guarded, so a workspace a follow-up turn has
/// just claimed is left alone.
async fn reap_idle_workspaces(core: &Core, all: bool) {
    let expired = async {
        let mut conn = core.pool.acquire().await?;
        cadenza_storage::workspaces::expired(&mut conn, core.worker.id, all).await
    }
    .await;
    let expired = match expired {
        Ok(expired) => expired,
        Err(err) => {
            tracing::warn!(error = %err, "listing idle workspaces failed");
            return;
        }
    };
    for (run_id, container) in expired {
        let released = async {
            let mut conn = core.pool.acquire().await?;
            cadenza_storage::workspaces::release(&mut conn, run_id).await
        }
        .await;
        match released {
            Ok(true) => {
                tracing::info!(%run_id, container, "removing an idle workspace");
                core.docker.remove_workspace(&container, &container).await;
            }
            Ok(false) => {}
            Err(err) => tracing::warn!(%run_id, error = %err, "releasing an idle workspace failed"),
        }
    }
}

/// Messages for running runs are recorded in Postgres; the worker hands each to the run's
/// supervisor, which sends it to the conversation.
async fn deliver_messages(core: &Core) {
    let pending = async {
        let mut conn = core.pool.acquire().await?;
        cadenza_storage::run_messages::pending_for(&mut conn, core.worker.id).await
    }
    .await;
    let pending = match pending {
        Ok(pending) => pending,
        Err(err) => {
            tracing::warn!(error = %err, "reading pending messages failed");
            return;
        }
    };
    let active = match core.active.lock() {
        Ok(active) => active,
        Err(poisoned) => poisoned.into_inner(),
    };
    for message in pending {
        if let Some(stop) = active.get(&message.run_id) {
            stop.offer(message);
        }
    }
}

/// After a restart: runs this worker held that never got past `scheduled` are started now; runs
/// that were already provisioning or running lost their supervisor, so they fail with a reason
/// (re-attaching to a live container is not supported yet), and leftover containers are removed.
async fn recover_after_restart(
    core: &Arc<Core>,
    slots: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
    runs_cancel: &CancellationToken,
) {
    let held = async {
        let mut conn = core.pool.acquire().await?;
        runs::held_by(&mut conn, core.worker.id).await
    }
    .await;
    let held = match held {
        Ok(held) => held,
        Err(err) => {
            tracing::warn!(error = %err, "listing held runs failed");
            Vec::new()
        }
    };
    for run in held {
        if run.state == RunState::Scheduled {
            accept_lease(core, slots, tasks, runs_cancel, run.id)
                .await
                .ok();
            continue;
        }
        let reason = TerminalReason::new(
            TerminalCode::WorkerShutdown,
            format!("the worker restarted while the run was `{}`", run.state),
        );
        let result = async {
            let mut tx = core.pool.begin().await?;
            let done = runs::transition(
                &mut tx,
                run.id,
                run.state,
                &RunEvent::Failed(reason),
                Actor::LeaseHolder(core.worker.id),
                None,
            )
            .await?;
            tx.commit().await?;
            Ok::<_, StorageError>(done)
        }
        .await;
        match result {
            Ok(done) => core.bus.publish_journal_event(&done.entry).await,
            Err(err) => {
                tracing::warn!(run_id = %run.id, error = %err, "failing an orphaned run failed")
            }
        }
    }
    // Kept workspaces do not survive a restart: forget them, and their containers go below.
    reap_idle_workspaces(core, true).await;
    match core.docker.owned_containers(&core.worker.name).await {
        Ok(containers) => {
            for container in containers {
                tracing::info!(
                    container,
                    "removing a container left by a previous worker process"
                );
                core.docker.remove_workspace(&container, &container).await;
            }
        }
        Err(err) => tracing::warn!(error = %err, "listing leftover containers failed"),
    }
}

fn consumer_name(core: &Core) -> String {
    let cleaned: String = core
        .worker
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("worker-{cleaned}")
}

async fn consume_leases(
    core: &Arc<Core>,
    slots: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
    runs_cancel: &CancellationToken,
    shutdown: &CancellationToken,
) {
    let filter = subjects::lease_offered(core.worker.id);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let result = async {
            let consumer = core
                .bus
                .durable_consumer(&consumer_name(core), &filter, Some(CONSUMER_EXPIRY))
                .await?;
            let messages = consumer
                .messages()
                .await
                .map_err(|err| anyhow::anyhow!("opening the lease stream: {err}"))?;
            Ok::<_, anyhow::Error>(messages)
        }
        .await;
        let mut messages = match result {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(error = %err, "lease consumer unavailable; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            // Reap finished run tasks as we go, so the set does not grow without bound.
            while tasks.try_join_next().is_some() {}
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = messages.next() => match next {
                    Some(Ok(message)) => message,
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "lease stream error; reopening");
                        break;
                    }
                    None => break,
                },
            };
            let offer: LeaseOffered = match cadenza_bus::decode(&message.subject, &message.payload)
            {
                Ok(offer) => offer,
                Err(err) => {
                    tracing::error!(error = %err, "undecodable lease offer; terminating it");
                    let _ = message.ack_with(async_nats::jetstream::AckKind::Term).await;
                    continue;
                }
            };
            if offer.v > VERSION || offer.worker_id != core.worker.id {
                let _ = message.ack_with(async_nats::jetstream::AckKind::Term).await;
                continue;
            }
            match accept_lease(core, slots, tasks, runs_cancel, offer.run_id).await {
                Ok(()) => {
                    if let Err(err) = message.ack().await {
                        tracing::warn!(error = %err, "ack failed; a redelivery will be ignored");
                    }
                }
                Err(err) => {
                    tracing::warn!(run_id = %offer.run_id, error = %err, "accepting a lease failed; will retry");
                    let _ = message
                        .ack_with(async_nats::jetstream::AckKind::Nak(Some(
                            Duration::from_secs(1),
                        )))
                        .await;
                }
            }
        }
    }
}

/// Moves a run leased to this worker from `scheduled` to `provisioning` and starts its
/// supervisor. A run that is no longer `scheduled` for us (a redelivered offer, a run cancelled
/// meanwhile) is ignored. Errors are transient failures worth a redelivery.
async fn accept_lease(
    core: &Arc<Core>,
    slots: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
    runs_cancel: &CancellationToken,
    run_id: cadenza_domain::RunId,
) -> Result<(), StorageError> {
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        // The scheduler counts leases in Postgres, so this only happens when a run ended in the
        // database before its task finished cleaning up: wait for a slot.
        return Err(StorageError::Conflict("no free slot".into()));
    };
    let mut tx = core.pool.begin().await?;
    let run = runs::get(&mut tx, &Scope::Instance, run_id).await?;
    if run.state != RunState::Scheduled || run.lease_holder != Some(core.worker.id) {
        tracing::debug!(%run_id, state = %run.state, "lease offer no longer applies");
        return Ok(());
    }
    // Cancelled before it started: nothing to stop, just record it.
    if let Some(correlation) = runs::cancel_request(&mut tx, run_id).await? {
        let done = runs::transition_correlated(
            &mut tx,
            run_id,
            RunState::Scheduled,
            &RunEvent::Cancelled(TerminalReason::new(
                TerminalCode::Cancelled,
                format!("cancelled on request (correlation id {correlation})"),
            )),
            Actor::LeaseHolder(core.worker.id),
            None,
            Some(correlation),
        )
        .await?;
        tx.commit().await?;
        core.bus.publish_journal_event(&done.entry).await;
        return Ok(());
    }
    let done = runs::transition(
        &mut tx,
        run_id,
        RunState::Scheduled,
        &RunEvent::ProvisioningStarted,
        Actor::LeaseHolder(core.worker.id),
        None,
    )
    .await?;
    tx.commit().await?;
    core.bus.publish_journal_event(&done.entry).await;
    let stop = supervisor::Stop {
        shutdown: runs_cancel.child_token(),
        ..Default::default()
    };
    if let Ok(mut active) = core.active.lock() {
        active.insert(run_id, stop.clone());
    }
    let core = core.clone();
    tasks.spawn(async move {
        supervisor::supervise(core.clone(), done.run, stop).await;
        if let Ok(mut active) = core.active.lock() {
            active.remove(&run_id);
        }
        drop(permit);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use cadenza_domain::RunId;

    #[test]
    fn a_run_accepted_after_the_lookup_is_not_taken_for_deleted() {
        let (kept, deleted, accepted_since) = (RunId::new(), RunId::new(), RunId::new());
        let looked_up = [kept, deleted];
        let found = [kept];
        let stop: Vec<RunId> = super::deleted_among(&looked_up, &found).copied().collect();
        assert_eq!(stop, [deleted]);
        assert!(!stop.contains(&accepted_since));
    }
}
