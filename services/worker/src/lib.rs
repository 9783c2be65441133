//! The worker: a pool member that accepts leases, runs each leased run in its own workspace
//! container, drives the agent-server inside it, journals every event, and heartbeats so the
//! scheduler knows it is alive and its leases stay valid.

mod agent;
pub mod config;
pub mod docker;
mod normalize;
mod retry;
mod run;
mod runtime;
mod secrets;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use cadenza_bus::messages::LeaseOffered;
use cadenza_bus::{Bus, subjects};
use cadenza_domain::{
    Fence, OnLostWorkspace, Run, RunEvent, RunId, RunState, Scope, TerminalCode, TerminalReason,
    Worker,
};
use cadenza_service_runtime::{Check, ReadinessProbe, health_routes};
use cadenza_storage::runs::{self, Actor};
use cadenza_storage::{PgPool, StorageError, workers};
use futures::FutureExt;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use agent::{AgentConnector, HttpAgents};
pub use config::WorkerConfig;
use docker::DockerRuntime;
use run::control::{Progress, RunCommand, RunHandle};
use runtime::ContainerRuntime;

/// A worker's lease consumer is deleted by NATS after this long without a pull: the worker is
/// gone (a renamed or retired host). Its unconsumed offers stay in the work queue.
const CONSUMER_EXPIRY: Duration = Duration::from_secs(3600);

pub(crate) struct Core {
    pub(crate) pool: PgPool,
    /// The heartbeat's own connection: lease renewal never waits behind run traffic.
    heartbeat_pool: PgPool,
    pub(crate) bus: Bus,
    pub(crate) runtime: Arc<dyn ContainerRuntime>,
    pub(crate) agents: Arc<dyn AgentConnector>,
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
    /// The runs this worker drives, each with the lease epoch it holds.
    pub(crate) active: std::sync::Mutex<HashMap<RunId, RunHandle>>,
    /// One permit per run slot.
    slots: Arc<Semaphore>,
    /// The supervisor tasks.
    tasks: std::sync::Mutex<JoinSet<()>>,
    /// Cancelled on SIGTERM: no new leases; supervisors detach (their containers stay, to be
    /// adopted by the next worker on this engine).
    detach: CancellationToken,
    draining: CancellationToken,
}

impl Core {
    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, RunHandle>> {
        match self.active.lock() {
            Ok(active) => active,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, JoinSet<()>> {
        match self.tasks.lock() {
            Ok(tasks) => tasks,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn fence(&self, run: &Run) -> Fence {
        Fence {
            worker: self.worker.id,
            epoch: run.lease_epoch,
        }
    }
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
    anyhow::ensure!(
        config.heartbeat_interval * 3 <= config.lease_ttl,
        "CADENZA_HEARTBEAT_INTERVAL ({:?}) must be at most a third of CADENZA_LEASE_TTL ({:?}), so \
         a lease survives a missed heartbeat or two",
        config.heartbeat_interval,
        config.lease_ttl
    );
    let pool = cadenza_storage::connect(
        config.database_url.expose_secret(),
        config.database_pool_size,
    )
    .await
    .context("connecting to Postgres (CADENZA_DATABASE_URL)")?;
    let heartbeat_pool = cadenza_storage::connect(config.database_url.expose_secret(), 1)
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
    let bus = Bus::connect_with_replicas(
        &config.nats_url,
        &config.bus_prefix,
        config.nats_stream_replicas,
    )
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
    let slots = Arc::new(Semaphore::new(
        usize::try_from(config.worker_capacity.max(0)).unwrap_or(0),
    ));
    Ok(WorkerService {
        core: Arc::new(Core {
            pool,
            heartbeat_pool,
            bus,
            runtime: Arc::new(docker),
            agents: Arc::new(HttpAgents {
                max_message_bytes: config.max_agent_message_bytes,
            }),
            config,
            worker,
            keyring,
            images,
            fallback_user,
            network_room: tokio::sync::Mutex::new(()),
            active: Default::default(),
            slots,
            tasks: Default::default(),
            detach: CancellationToken::new(),
            draining: CancellationToken::new(),
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
                    Check::from_result("docker", core.runtime.ping().await),
                ]
            })
        });
        health_routes(probe)
    }

    pub async fn run(self, listener: TcpListener) -> anyhow::Result<()> {
        tracing::info!(addr = %listener.local_addr()?, "worker health endpoints listening");
        let core = self.core.clone();
        // Health answers until the very end: a draining worker is still alive.
        let http_stop = CancellationToken::new();
        let http = tokio::spawn(cadenza_service_runtime::serve(
            listener,
            self.router(),
            http_stop.clone(),
        ));
        let loops = CancellationToken::new();
        let (offers, offered) = tokio::sync::mpsc::channel::<RunId>(1024);

        recover_after_restart(&core).await;

        let heartbeat = tokio::spawn(heartbeat_loop(core.clone(), loops.clone(), offers.clone()));
        let chores = tokio::spawn(chores_loop(core.clone(), loops.clone()));
        let acceptor = tokio::spawn(accept_offers(core.clone(), offered));
        consume_leases(&core, &offers, &self.shutdown).await;

        // SIGTERM: take nothing new, let runs still preparing their workspace start their agent
        // (bounded), then detach from every run. Containers stay; the next worker on this
        // engine adopts them. Nothing is failed because of the shutdown.
        core.draining.cancel();
        drop(offers);
        acceptor.abort();
        if let Ok(mut conn) = core.pool.acquire().await {
            let _ = workers::set_draining(&mut conn, core.worker.id).await;
        }
        let preparing = |core: &Core| {
            core.active()
                .values()
                .filter(|handle| handle.progress() == Progress::Preparing)
                .count()
        };
        let deadline = tokio::time::Instant::now() + core.config.shutdown_grace;
        while preparing(&core) > 0 && tokio::time::Instant::now() < deadline {
            tracing::info!(
                preparing = preparing(&core),
                "waiting for runs to start their agent before detaching"
            );
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        let in_flight = core.active().len();
        tracing::info!(
            in_flight,
            "detaching from the runs in flight; their containers stay for the next worker"
        );
        core.detach.cancel();
        let mut tasks = std::mem::take(&mut *core.tasks());
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        loops.cancel();
        let _ = heartbeat.await;
        let _ = chores.await;
        // Kept workspaces end with the worker: no follow-up turn could reach them.
        reap_idle_workspaces(&core, true).await;
        if let Ok(mut conn) = core.pool.acquire().await {
            let _ = workers::mark_stopped(&mut conn, core.worker.id).await;
        }
        http_stop.cancel();
        let _ = http.await;
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// Every heartbeat: the worker is alive; the leases of exactly the runs it drives are renewed,
/// and a run it no longer holds (retried, adopted elsewhere, ended by someone else) has its
/// supervisor stopped; runs leased to it and not yet accepted are offered to the acceptor, so a
/// lost NATS offer delays a run by one heartbeat at most. Its own task and connection: nothing
/// here waits on Docker or on run traffic.
async fn heartbeat_loop(
    core: Arc<Core>,
    stop: CancellationToken,
    offers: tokio::sync::mpsc::Sender<RunId>,
) {
    let mut tick = tokio::time::interval(core.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let held: Vec<(RunId, i64)> = core
            .active()
            .iter()
            .map(|(run, handle)| (*run, handle.epoch))
            .collect();
        let draining = core.draining.is_cancelled();
        let beat = async {
            let mut conn = core.heartbeat_pool.acquire().await?;
            workers::heartbeat(&mut conn, core.worker.id).await?;
            let renewed =
                runs::renew(&mut conn, core.worker.id, &held, core.config.lease_ttl).await?;
            let offered = if draining {
                Vec::new()
            } else {
                runs::offered_to(&mut conn, core.worker.id).await?
            };
            Ok::<_, StorageError>((renewed, offered))
        };
        let (renewed, offered) =
            match tokio::time::timeout(core.config.heartbeat_interval * 2, beat).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "heartbeat failed");
                    continue;
                }
                Err(_) => {
                    tracing::warn!("heartbeat timed out");
                    continue;
                }
            };
        for (run_id, epoch) in held.iter().filter(|(run, _)| !renewed.contains(run)) {
            lost(&core, *run_id, *epoch);
        }
        for run_id in offered {
            let _ = offers.try_send(run_id);
        }
    }
}

/// The worker no longer holds the run with this epoch: its supervisor stops without writing
/// anything more (storage would refuse it) and leaves the container to the new holder or the
/// engine sweep.
fn lost(core: &Core, run_id: RunId, epoch: i64) {
    if let Some(handle) = core.active().get(&run_id)
        && handle.epoch == epoch
        && handle.progress() != Progress::Ended
    {
        tracing::warn!(%run_id, epoch, "this worker no longer holds the run; stopping its supervisor");
        handle.send(RunCommand::Lost);
    }
}

/// Everything periodic that may wait on Docker or on a busy pool, apart from the heartbeat.
async fn chores_loop(core: Arc<Core>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(core.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        round += 1;
        deliver_cancellations(&core).await;
        deliver_messages(&core).await;
        if core.draining.is_cancelled() {
            continue;
        }
        reap_idle_workspaces(&core, false).await;
        stop_deleted_runs(&core).await;
        // The engine sweep (adopting the runs of dead workers, removing what no run needs)
        // lists every container: every few heartbeats is enough.
        if round.is_multiple_of(3) {
            sweep_engine(&core).await;
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
    let mut active = core.active();
    for (run_id, correlation) in requests {
        if let Some(handle) = active.get_mut(&run_id)
            && !handle.cancel_sent
        {
            handle.cancel_sent = handle.send(RunCommand::Cancel {
                correlation: Some(correlation),
            });
            tracing::info!(%run_id, %correlation, "cancelling run on request");
        }
    }
}

/// Runs deleted with their project or org (the rows cascade away) stop at the next heartbeat:
/// their supervisors are cancelled, which removes the containers. Nothing can be recorded about
/// them any more.
async fn stop_deleted_runs(core: &Core) {
    let active: Vec<RunId> = core.active().keys().copied().collect();
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
    let mut current = core.active();
    for run_id in deleted_among(&active, &existing) {
        if let Some(handle) = current.get_mut(run_id)
            && !handle.cancel_sent
        {
            tracing::info!(%run_id, "the run was deleted with its project or org; stopping it");
            handle.cancel_sent = handle.send(RunCommand::Cancel { correlation: None });
        }
    }
}

/// The runs looked up that were not found. Only those: a run accepted after the lookup is not
/// among the found, yet exists.
fn deleted_among<'a>(
    looked_up: &'a [RunId],
    found: &'a [RunId],
) -> impl Iterator<Item = &'a RunId> {
    looked_up.iter().filter(|run_id| !found.contains(run_id))
}

/// What the engine sweep does with one managed container.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Ours, or another live worker's, or a kept workspace: leave it.
    Leave,
    /// Its run is `provisioning` or `running` at the container's attempt: take the run over if
    /// its holder is gone.
    Adopt,
    /// No run needs it: its run was deleted, ended, or moved on to another attempt.
    Remove,
}

fn verdict(
    container: &docker::ManagedContainer,
    run: Option<&Run>,
    in_use: bool,
    driven_here: bool,
) -> Verdict {
    if in_use || driven_here {
        return Verdict::Leave;
    }
    let Some(run) = run else {
        // A container without a run label is not a workspace; one whose run is gone goes.
        return if container.run.is_some() {
            Verdict::Remove
        } else {
            Verdict::Leave
        };
    };
    let current = container.attempt == Some(run.attempt)
        && matches!(run.state, RunState::Provisioning | RunState::Running);
    match (current, container.clone_helper) {
        (true, false) => Verdict::Adopt,
        (true, true) => Verdict::Leave,
        (false, _) => Verdict::Remove,
    }
}

/// Looks at every container Cadenza manages on this Docker Engine, whichever worker made it:
/// runs whose holder died (or a previous process of this worker) are adopted, and containers
/// no run needs are removed. Only a successful lookup removes anything, and a run's row exists
/// before its container is made, so a starting run is never touched.
async fn sweep_engine(core: &Arc<Core>) {
    let containers = match core
        .runtime
        .managed_containers(&core.config.bus_prefix)
        .await
    {
        Ok(containers) => containers,
        Err(err) => {
            tracing::warn!(error = %err, "listing workspace containers failed");
            return;
        }
    };
    if containers.is_empty() {
        return;
    }
    let ids: Vec<RunId> = containers.iter().filter_map(|c| c.run).collect();
    let names: Vec<String> = containers.iter().map(|c| c.name.clone()).collect();
    let looked_up = async {
        let mut conn = core.pool.acquire().await?;
        let runs = runs::by_ids(&mut conn, &ids).await?;
        let in_use = cadenza_storage::workspaces::in_use(&mut conn, &names).await?;
        Ok::<_, StorageError>((runs, in_use))
    }
    .await;
    let (found, in_use) = match looked_up {
        Ok(found) => found,
        Err(err) => {
            tracing::warn!(error = %err, "looking up the runs of workspace containers failed");
            return;
        }
    };
    let found: HashMap<RunId, Run> = found.into_iter().map(|run| (run.id, run)).collect();
    for container in containers {
        let run = container.run.and_then(|id| found.get(&id));
        let driven_here = container
            .run
            .is_some_and(|id| core.active().contains_key(&id));
        match verdict(
            &container,
            run,
            in_use.contains(&container.name),
            driven_here,
        ) {
            Verdict::Leave => {}
            Verdict::Remove => {
                tracing::info!(
                    container = container.name,
                    "removing a container no run needs"
                );
                core.runtime
                    .remove_workspace(&container.name, &container.name)
                    .await;
            }
            Verdict::Adopt => {
                if let Some(run) = run {
                    adopt(core, run, &container).await;
                }
            }
        }
    }
}

/// Takes over a run whose container is on this engine and whose holder is gone. A `running` run
/// is resumed where its journal ends; a `provisioning` run never gave its agent the task, so it
/// is retried from scratch (safe) and its half-made workspace removed.
async fn adopt(core: &Arc<Core>, run: &Run, container: &docker::ManagedContainer) {
    if core.draining.is_cancelled() {
        return;
    }
    let adopted = async {
        let mut conn = core.pool.acquire().await?;
        runs::adopt(
            &mut conn,
            run.id,
            run.lease_epoch,
            core.worker.id,
            core.config.lease_ttl,
            core.config.worker_liveness,
        )
        .await
    }
    .await;
    let adopted = match adopted {
        Ok(Some(adopted)) => adopted,
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(run_id = %run.id, error = %err, "adopting a run failed");
            return;
        }
    };
    if adopted.state == RunState::Running && container.running {
        tracing::info!(run_id = %adopted.id, container = container.name, epoch = adopted.lease_epoch, "re-attaching to a run whose worker is gone");
        // An adopted run is driven even beyond the slot count: it holds its container already.
        let permit = core.slots.clone().try_acquire_owned().ok();
        spawn_supervisor(
            core,
            adopted,
            permit,
            run::Entry::Resume(container.name.clone()),
        );
        return;
    }
    let why = if adopted.state == RunState::Running {
        "its workspace container stopped"
    } else {
        "its worker stopped while preparing the workspace (the agent had not started)"
    };
    lose_workspace(core, &adopted, why).await;
    core.runtime
        .remove_workspace(&container.name, &container.name)
        .await;
}

/// Records that a run held by this worker lost its workspace: retried from scratch while
/// attempts remain (safe before `running`: the agent never got its task), else failed.
async fn lose_workspace(core: &Core, run: &Run, why: &str) {
    // Before `running` the agent never had its task: always safe to retry (the domain's rule
    // ignores the policy then). After, the project says.
    let policy = if run.state == RunState::Running {
        let project = async {
            let mut conn = core.pool.acquire().await?;
            cadenza_storage::projects::get(&mut conn, &Scope::Org(run.org_id), run.project_id).await
        }
        .await;
        project.map_or(OnLostWorkspace::Retry, |project| {
            project.agent.on_lost_workspace
        })
    } else {
        OnLostWorkspace::Retry
    };
    let event = cadenza_domain::lost_workspace_event(
        run.state,
        run.attempt,
        core.config.max_attempts,
        policy,
        why,
    );
    let result =
        run::commit_transition(&core.pool, &core.bus, run, core.fence(run), &event, None).await;
    match result {
        Ok(done) => {
            tracing::warn!(run_id = %run.id, to = %done.state, why, "a run lost its workspace");
        }
        Err(err) => {
            tracing::warn!(run_id = %run.id, error = %err, "recording a lost workspace failed")
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
                core.runtime.remove_workspace(&container, &container).await;
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
    let active = core.active();
    for message in pending {
        if let Some(handle) = active.get(&message.run_id) {
            handle.send(RunCommand::Deliver(message));
        }
    }
}

/// After a restart: kept workspaces of the previous process are given up; the runs whose
/// containers are on this engine are adopted (a `running` run is resumed where its journal
/// ends); runs this worker held whose container is gone lost their workspace (retried from
/// scratch, or failed after the last attempt). Runs leased but not yet accepted come with the
/// first heartbeat.
async fn recover_after_restart(core: &Arc<Core>) {
    reap_idle_workspaces(core, true).await;
    sweep_engine(core).await;
    let held = async {
        let mut conn = core.pool.acquire().await?;
        runs::held_by(&mut conn, core.worker.id).await
    }
    .await;
    let held = match held {
        Ok(held) => held,
        Err(err) => {
            tracing::warn!(error = %err, "listing held runs failed");
            return;
        }
    };
    for run in held {
        if run.state == RunState::Scheduled || core.active().contains_key(&run.id) {
            continue;
        }
        lose_workspace(
            core,
            &run,
            "its workspace container is gone (the worker or its Docker Engine restarted)",
        )
        .await;
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

/// Lease offers from NATS: a nudge to accept now. Postgres is the source of truth (the
/// heartbeat offers every run leased to this worker too), so an offer is acked once handed on.
/// An offer for another worker is rejected.
async fn consume_leases(
    core: &Arc<Core>,
    offers: &tokio::sync::mpsc::Sender<RunId>,
    shutdown: &CancellationToken,
) {
    let filter = subjects::lease_offered(core.worker.id);
    let name = consumer_name(core);
    let durable = cadenza_bus::Durable {
        name: &name,
        filter: &filter,
        expire_after: Some(CONSUMER_EXPIRY),
    };
    let worker = core.worker.id;
    cadenza_bus::consume(&core.bus, durable, shutdown, |offer: LeaseOffered| {
        let disposition = if offer.worker_id == worker {
            let _ = offers.try_send(offer.run_id);
            cadenza_bus::Disposition::Ack
        } else {
            tracing::warn!(run_id = %offer.run_id, worker_id = %offer.worker_id, "a lease offer for another worker; rejecting it");
            cadenza_bus::Disposition::Reject
        };
        std::future::ready(disposition)
    })
    .await;
}

/// Accepts offered runs one at a time, so two offers of one run never race.
async fn accept_offers(core: Arc<Core>, mut offered: tokio::sync::mpsc::Receiver<RunId>) {
    while let Some(run_id) = offered.recv().await {
        if let Err(err) = accept_lease(&core, run_id).await {
            tracing::warn!(%run_id, error = %err, "accepting a lease failed; the next heartbeat offers it again");
        }
    }
}

/// Moves a run leased to this worker from `scheduled` to `provisioning` and starts its
/// supervisor. A run that is no longer `scheduled` for us (a second offer, a run cancelled
/// meanwhile) is ignored; without a free slot the offer waits for the next heartbeat.
async fn accept_lease(core: &Arc<Core>, run_id: RunId) -> Result<(), StorageError> {
    if core.draining.is_cancelled() || core.active().contains_key(&run_id) {
        return Ok(());
    }
    let Ok(permit) = core.slots.clone().try_acquire_owned() else {
        // The scheduler counts leases in Postgres; a run that ended there may not have
        // released its slot here yet.
        tracing::debug!(%run_id, "no free slot yet for an offered run");
        return Ok(());
    };
    let mut tx = core.pool.begin().await?;
    let run = runs::lock(&mut tx, &Scope::Instance, run_id).await?;
    if run.state != RunState::Scheduled || run.lease_holder != Some(core.worker.id) {
        tracing::debug!(%run_id, state = %run.state, "lease offer no longer applies");
        return Ok(());
    }
    let fence = core.fence(&run);
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
            Actor::LeaseHolder(fence),
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
        Actor::LeaseHolder(fence),
        None,
    )
    .await?;
    tx.commit().await?;
    core.bus.publish_journal_event(&done.entry).await;
    spawn_supervisor(core, done.run, Some(permit), run::Entry::Fresh);
    Ok(())
}

/// Starts the supervisor of a run this worker now holds. A supervisor that panics does not
/// leave its run hanging: the run fails with a reason, and its container goes.
fn spawn_supervisor(
    core: &Arc<Core>,
    run: Run,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    entry: run::Entry,
) {
    let start = if run.state == RunState::Running {
        Progress::Running
    } else {
        Progress::Preparing
    };
    let (handle, control) =
        run::control::channel(run.lease_epoch, core.detach.child_token(), start);
    core.active().insert(run.id, handle);
    let core_for_task = core.clone();
    core.tasks().spawn(async move {
        let core = core_for_task;
        let (run_id, epoch) = (run.id, run.lease_epoch);
        let supervised =
            std::panic::AssertUnwindSafe(run::supervise(core.clone(), run.clone(), control, entry))
                .catch_unwind()
                .await;
        if supervised.is_err() {
            tracing::error!(%run_id, "the run's supervisor panicked; failing the run");
            run::crashed(&core, &run).await;
        }
        {
            let mut active = core.active();
            if active
                .get(&run_id)
                .is_some_and(|handle| handle.epoch == epoch)
            {
                active.remove(&run_id);
            }
        }
        drop(permit);
    });
    // Reap finished tasks as we go, so the set does not grow without bound.
    while core.tasks().try_join_next().is_some() {}
}

#[cfg(test)]
mod tests {
    use cadenza_domain::RunId;

    use super::{Verdict, verdict};
    use crate::docker::ManagedContainer;

    fn run(state: cadenza_domain::RunState, attempt: i32) -> cadenza_domain::Run {
        let now = time::OffsetDateTime::now_utc();
        cadenza_domain::Run {
            id: RunId::new(),
            org_id: cadenza_domain::OrgId::new(),
            project_id: cadenza_domain::ProjectId::new(),
            state,
            attempt,
            prompt: String::new(),
            idempotency_key: None,
            lease_holder: None,
            lease_expires_at: None,
            lease_epoch: 1,
            terminal_reason: None,
            conversation_id: None,
            final_message: None,
            last_event_seq: 0,
            created_at: now,
            scheduled_at: None,
            provisioning_at: None,
            running_at: None,
            finished_at: None,
            updated_at: now,
        }
    }

    fn container(run: &cadenza_domain::Run, attempt: i32, clone_helper: bool) -> ManagedContainer {
        ManagedContainer {
            name: format!("cadenza-run-{}-{attempt}", run.id),
            run: Some(run.id),
            attempt: Some(attempt),
            clone_helper,
            running: true,
        }
    }

    #[test]
    fn the_engine_sweep_adopts_live_attempts_and_removes_only_what_no_run_needs() {
        use cadenza_domain::RunState as S;
        let running = run(S::Running, 2);
        let here = container(&running, 2, false);
        assert_eq!(verdict(&here, Some(&running), false, false), Verdict::Adopt);
        assert_eq!(
            verdict(&here, Some(&run(S::Provisioning, 2)), false, false),
            Verdict::Adopt
        );
        // This worker drives it, or a run still needs the container (kept, or a follow-up's).
        assert_eq!(verdict(&here, Some(&running), false, true), Verdict::Leave);
        assert_eq!(verdict(&here, Some(&running), true, false), Verdict::Leave);
        let ended = run(S::Succeeded, 2);
        assert_eq!(
            verdict(&container(&ended, 2, false), Some(&ended), true, false),
            Verdict::Leave
        );
        // An earlier attempt's container, an ended run's, a deleted run's: removed.
        assert_eq!(
            verdict(&container(&running, 1, false), Some(&running), false, false),
            Verdict::Remove
        );
        assert_eq!(
            verdict(&container(&ended, 2, false), Some(&ended), false, false),
            Verdict::Remove
        );
        for state in [
            S::Queued,
            S::Retrying,
            S::Scheduled,
            S::Failed,
            S::Cancelled,
        ] {
            let other = run(state, 2);
            assert_eq!(
                verdict(&container(&other, 2, false), Some(&other), false, false),
                Verdict::Remove,
                "{state}"
            );
        }
        assert_eq!(verdict(&here, None, false, false), Verdict::Remove);
        // A clone helper is never adopted; it goes with its attempt.
        assert_eq!(
            verdict(&container(&running, 2, true), Some(&running), false, false),
            Verdict::Leave
        );
        assert_eq!(
            verdict(&container(&running, 1, true), Some(&running), false, false),
            Verdict::Remove
        );
        // Not a workspace at all.
        let unlabelled = ManagedContainer {
            run: None,
            attempt: None,
            ..here.clone()
        };
        assert_eq!(verdict(&unlabelled, None, false, false), Verdict::Leave);
    }

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
