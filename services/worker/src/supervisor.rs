//! Drives one run attempt: workspace container, agent-server conversation, journal, diff, end
//! state, clean-up. Every step is bounded in time, and every way out (success, failure, timeout,
//! shutdown) removes the container and records a terminal reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cadenza_agent_client::{
    AgentEvent, AgentServerClient, AgentSpec, Error as AgentError, ExecutionStatus, LlmConfig,
    SessionFrame, StartConversationRequest, TypedEvent,
};
use cadenza_crypto::Redactor;
use cadenza_domain::{Project, Run, RunEvent, RunState, Scope, TerminalCode, TerminalReason};
use cadenza_storage::journal::{self, NewJournalEvent};
use cadenza_storage::run_messages::{self, RunMessage};
use cadenza_storage::runs::{self, Actor};
use cadenza_storage::{StorageError, diffs, projects, workspaces};
use futures::StreamExt;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use url::Url;

use crate::Core;
use crate::docker::{
    LABEL_ATTEMPT, LABEL_DEPLOYMENT, LABEL_MANAGED, LABEL_ORG, LABEL_PROJECT, LABEL_RUN,
    LABEL_WORKER, WorkspaceSpec,
};
use crate::normalize::normalize;
use crate::secrets::{self, LogLines, RunSecrets};

/// Git's empty tree: the base of a diff in a workspace without commits.
const EMPTY_TREE: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";
/// Consecutive failed socket (re)connects before the agent counts as unreachable.
const MAX_RECONNECTS: u32 = 10;
/// How long a terminal status seen on the socket may take to show up over REST.
const CONFIRM_BUDGET: Duration = Duration::from_secs(30);

/// Why a run should stop early: someone cancelled it (`user`: the run ends cancelled), or the
/// worker lets go of it: it shuts down (`shutdown`) or no longer holds the run (`lost`). Letting
/// go records nothing and leaves the container, for the worker that adopts the run.
#[derive(Clone, Default)]
pub(crate) struct Stop {
    pub(crate) shutdown: CancellationToken,
    pub(crate) user: CancellationToken,
    pub(crate) lost: CancellationToken,
    /// Set once `running` is committed: the agent has its task, and a shutdown may detach.
    pub(crate) running: Arc<std::sync::atomic::AtomicBool>,
    /// Set once the run's end is recorded: only clean-up is left.
    pub(crate) ended: Arc<std::sync::atomic::AtomicBool>,
    /// The cancel request's correlation id, set before `user` is cancelled.
    pub(crate) correlation: Arc<std::sync::OnceLock<uuid::Uuid>>,
    /// User messages waiting to be sent to the conversation.
    pub(crate) inbox: Arc<std::sync::Mutex<Inbox>>,
    pub(crate) inbox_ready: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
pub(crate) struct Inbox {
    queue: std::collections::VecDeque<RunMessage>,
    /// Messages queued or being sent, so a heartbeat does not offer one twice.
    taken: std::collections::HashSet<uuid::Uuid>,
}

impl Stop {
    /// Resolves when a stop is requested, with the reason to record (a detach records
    /// nothing: see `detached`).
    async fn requested(&self) -> TerminalReason {
        tokio::select! {
            _ = self.user.cancelled() => cancelled_reason(self.correlation.get().copied()),
            _ = self.shutdown.cancelled() => shutdown_reason(),
            _ = self.lost.cancelled() => lost_reason(),
        }
    }

    fn any(&self) -> bool {
        self.user.is_cancelled() || self.detached()
    }

    /// The worker lets go of the run (shutdown or lost), and nobody cancelled it.
    pub(crate) fn detached(&self) -> bool {
        !self.user.is_cancelled() && (self.shutdown.is_cancelled() || self.lost.is_cancelled())
    }

    pub(crate) fn is_running(&self) -> bool {
        self.running.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        match self.inbox.lock() {
            Ok(inbox) => inbox,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Queues a message for the conversation, once.
    pub(crate) fn offer(&self, message: RunMessage) {
        let mut inbox = self.inbox();
        if inbox.taken.insert(message.id) {
            inbox.queue.push_back(message);
            self.inbox_ready.notify_one();
        }
    }

    fn take_messages(&self) -> Vec<RunMessage> {
        self.inbox().queue.drain(..).collect()
    }

    /// A message that could not be sent: offered again at the next heartbeat.
    fn release(&self, id: uuid::Uuid) {
        self.inbox().taken.remove(&id);
    }
}

fn lost_reason() -> TerminalReason {
    fail(
        TerminalCode::Internal,
        "this worker no longer holds the run (another holder or attempt has it)",
    )
}

/// How a supervisor starts: a run just accepted, or a run adopted in its running container.
pub(crate) enum Entry {
    Fresh,
    /// The container (named by the adopter's engine sweep) in which the run's agent works.
    Resume(String),
}

fn cancelled_reason(correlation: Option<uuid::Uuid>) -> TerminalReason {
    let message = match correlation {
        Some(id) => format!("cancelled on request (correlation id {id})"),
        None => "cancelled on request".to_owned(),
    };
    fail(TerminalCode::Cancelled, message)
}

/// Runs one leased run to its end. `run` is in `provisioning` (a fresh run) or `running` (an
/// adopted one), held by this worker with `run.lease_epoch`.
pub(crate) async fn supervise(core: Arc<Core>, run: Run, cancel: Stop, entry: Entry) {
    let span = tracing::info_span!(
        "run",
        run_id = %run.id,
        org_id = %run.org_id,
        project_id = %run.project_id,
        attempt = run.attempt,
        epoch = run.lease_epoch,
    );
    async move {
        let workspace = async {
            let mut conn = core.pool.acquire().await?;
            workspaces::of_run(&mut conn, run.id).await
        }
        .await;
        let workspace = match workspace {
            Ok(workspace) => workspace,
            Err(err) => {
                // Never a silent fresh start: a follow-up turn would lose its workspace.
                tracing::warn!(error = %err, "reading the run's workspace failed; letting the run go");
                return;
            }
        };
        // A follow-up turn works in its parent's container.
        let container = match (&entry, &workspace.parent_run_id, &workspace.container) {
            (Entry::Resume(container), _, _) => container.clone(),
            (_, Some(_), Some(container)) => container.clone(),
            _ => format!("cadenza-run-{}-{}", run.id, run.attempt),
        };
        let mut state = run.state;
        if state == RunState::Running {
            cancel.running.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        // Replaced by the run's own once its secrets are decrypted; everything recorded about
        // the run, its end reason included, passes through it.
        let mut redactor = Arc::new(Redactor::empty());
        let outcome = execute(
            &core,
            &run,
            &container,
            &cancel,
            &mut state,
            &mut redactor,
            workspace.parent_run_id,
            matches!(entry, Entry::Resume(_)),
        )
        .await;
        if cancel.detached() {
            // Shutting down, or the run is someone else's now: record nothing, leave the
            // container (the next holder adopts it; the engine sweep removes it if no run
            // needs it).
            tracing::info!(state = %state, "let go of the run");
            return;
        }
        let outcome = outcome
            .map(|message| redactor.redact(&message).into_owned())
            .map_err(|reason| {
                TerminalReason::new(reason.code, redactor.redact(&reason.message).into_owned())
            });
        let correlation = cancel.correlation.get().copied();
        // A workspace whose agent finished stays for follow-up turns, if the worker keeps
        // workspaces; any other end removes it, after the end is recorded (a crash in between
        // leaves a container the engine sweep removes, never an end that is lost).
        let keep = outcome.is_ok() && !core.config.workspace_idle_ttl.is_zero() && !cancel.any();
        let event = match outcome {
            Ok(final_message) => RunEvent::Succeeded(TerminalReason::new(
                TerminalCode::AgentFinished,
                if final_message.is_empty() {
                    "the agent finished".to_owned()
                } else {
                    format!("the agent finished: {final_message}")
                },
            )),
            Err(reason) if reason.code == TerminalCode::Cancelled => RunEvent::Cancelled(reason),
            Err(reason) => RunEvent::Failed(reason),
        };
        let recorded = finish(
            &core,
            &run,
            state,
            &event,
            correlation,
            keep.then_some(container.as_str()),
        )
        .await;
        if recorded {
            cancel.ended.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if recorded && !keep {
            core.docker.remove_workspace(&container, &container).await;
        }
    }
    .instrument(span)
    .await
}

/// Records the run's end, as its holder. Transient failures (a Postgres outage) are retried for
/// `database_outage_budget`. Returns whether the end was recorded; when it was not, the run is
/// not ours (or the outage outlasted the budget), and the container is left to whoever adopts
/// the run.
async fn finish(
    core: &Core,
    run: &Run,
    state: RunState,
    event: &RunEvent,
    correlation: Option<uuid::Uuid>,
    kept_container: Option<&str>,
) -> bool {
    let deadline = Instant::now() + core.config.database_outage_budget;
    let mut pause = crate::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let result = async {
            let mut tx = core.pool.begin().await?;
            let correlation = matches!(event, RunEvent::Cancelled(_))
                .then_some(correlation)
                .flatten();
            let done = runs::transition_correlated(
                &mut tx,
                run.id,
                state,
                event,
                Actor::LeaseHolder(fence_of(core, run)),
                None,
                correlation,
            )
            .await?;
            if let Some(container) = kept_container {
                workspaces::keep(
                    &mut tx,
                    run.id,
                    container,
                    core.worker.id,
                    core.config.workspace_idle_ttl,
                )
                .await?;
            }
            tx.commit().await?;
            Ok::<_, StorageError>(done)
        }
        .await;
        match result {
            Ok(done) => {
                tracing::info!(state = %done.run.state, reason = ?event.reason().map(|r| &r.message), "run ended");
                core.bus.publish_journal_event(&done.entry).await;
                return true;
            }
            Err(err) if err.is_transient() && Instant::now() < deadline => {
                tracing::warn!(error = %err, "recording the end failed; retrying");
                tokio::time::sleep(pause.next()).await;
            }
            Err(err) => {
                tracing::error!(error = %err, "recording the end failed; the run is left to whoever adopts it");
                return false;
            }
        }
    }
}

fn fence_of(core: &Core, run: &Run) -> cadenza_domain::Fence {
    cadenza_domain::Fence {
        worker: core.worker.id,
        epoch: run.lease_epoch,
    }
}

/// A supervisor panicked: the run fails with a reason (if this worker still holds it) and its
/// own container goes.
pub(crate) async fn crashed(core: &Core, run: &Run) {
    let current = async {
        let mut conn = core.pool.acquire().await?;
        runs::get(&mut conn, &Scope::Instance, run.id).await
    }
    .await;
    let Ok(current) = current else { return };
    if current.lease_epoch != run.lease_epoch || !current.state.is_leased() {
        return;
    }
    let reason = fail(
        TerminalCode::Internal,
        "the worker's supervisor of this run crashed; the worker's log has the details",
    );
    if finish(
        core,
        &current,
        current.state,
        &RunEvent::Failed(reason),
        None,
        None,
    )
    .await
    {
        let container = format!("cadenza-run-{}-{}", run.id, run.attempt);
        core.docker.remove_workspace(&container, &container).await;
    }
}

fn fail(code: TerminalCode, message: impl Into<String>) -> TerminalReason {
    TerminalReason::new(code, message)
}

fn internal(err: impl std::fmt::Display) -> TerminalReason {
    fail(TerminalCode::Internal, format!("worker error: {err}"))
}

fn random_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Everything between `provisioning` and the agent's confirmed end. Returns the agent's final
/// message, or why the run cannot succeed. Keeps `state` in step with what was committed.
#[allow(clippy::too_many_arguments)]
async fn execute(
    core: &Core,
    run: &Run,
    container: &str,
    cancel: &Stop,
    state: &mut RunState,
    redactor: &mut Arc<Redactor>,
    follow_up_of: Option<cadenza_domain::RunId>,
    resume: bool,
) -> Result<String, TerminalReason> {
    // The budget counts from the run's start, also for a run adopted half-way.
    let spent = run
        .provisioning_at
        .map(|started| OffsetDateTime::now_utc() - started)
        .and_then(|spent| Duration::try_from(spent).ok())
        .unwrap_or_default();
    let deadline = Instant::now() + core.config.run_timeout.saturating_sub(spent);
    let project = {
        let mut conn = core
            .pool
            .acquire()
            .await
            .map_err(|err| internal(StorageError::from(err)))?;
        projects::get(&mut conn, &Scope::Org(run.org_id), run.project_id)
            .await
            .map_err(internal)?
    };
    // The agent-server's session key (a follow-up turn uses its parent container's) is
    // redacted like a secret: the agent can read it from its environment and print it.
    let session_key = if follow_up_of.is_some() || resume {
        core.docker.session_key(container).await
    } else {
        Some(SecretString::from(random_key()))
    };
    // 0. Secrets, decrypted before anything starts: a missing or unreadable one fails the run
    // at once, naming it.
    let secrets = secrets::load(
        &core.pool,
        &core.keyring,
        run,
        &project,
        operator_llm_key(&core.config, &core.images, &project)?,
        session_key.as_ref(),
    )
    .await?;
    *redactor = secrets.redactor.clone();
    let redactor: &Redactor = &secrets.redactor;

    if resume {
        return resume_turn(
            core,
            run,
            follow_up_of,
            container,
            cancel,
            state,
            redactor,
            deadline,
        )
        .await;
    }
    if let Some(parent) = follow_up_of {
        return follow_up_turn(
            core, run, parent, container, cancel, state, redactor, deadline,
        )
        .await;
    }

    // 1. The workspace container, from an image this instance allows for the org.
    check_image(core, run, &project).await?;
    let session_key = session_key.unwrap_or_else(|| SecretString::from(random_key()));
    let spec = workspace_spec(
        core,
        run,
        &project,
        container,
        session_key.expose_secret(),
        secrets.git_credentials.as_ref(),
    );
    let container_failed = |err: crate::docker::ContainerError| {
        tracing::warn!(error = %redactor.redact(&err.to_string()), "the workspace container could not start");
        fail(TerminalCode::ContainerFailed, err.tenant_message())
    };
    let image_user = tokio::select! {
        reason = cancel.requested() => return Err(reason),
        pulled = core.docker.ensure_image(&spec.image, core.config.image_pull_timeout) => {
            pulled.map_err(container_failed)?
        }
    };
    if let Some(clone) = &spec.clone {
        tokio::select! {
            reason = cancel.requested() => return Err(reason),
            pulled = core.docker.ensure_image(&clone.image, core.config.image_pull_timeout) => {
                pulled.map_err(container_failed)?;
            }
        }
    }
    let workspace = {
        let _room = core.network_room.lock().await;
        make_room(core, cancel).await?;
        tokio::select! {
            reason = cancel.requested() => return Err(reason),
            started = core.docker.start_workspace(&spec, &image_user) => {
                started.map_err(|err| match err {
                    crate::docker::ContainerError::CloneFailed { .. }
                    | crate::docker::ContainerError::CloneTimedOut(_) => fail(
                        TerminalCode::RepositoryUnavailable,
                        redactor
                            .redact(&format!(
                                "cloning {} failed: {err}",
                                project.repository.url.as_deref().unwrap_or_default()
                            ))
                            .into_owned(),
                    ),
                    other => container_failed(other),
                })?
            }
        }
    };
    tracing::info!(
        container,
        host_port = workspace.host_port,
        "workspace container started"
    );
    forward_container_logs(core, container, &secrets);

    // An agent without a model cannot do anything: say so now, not after the first LLM call.
    let model = project
        .agent
        .llm_model
        .clone()
        .or_else(|| core.config.default_llm_model.clone())
        .filter(|model| !model.trim().is_empty());
    let model = match model {
        Some(model) => model,
        None if core.docker.is_scripted_agent(&project.agent.image).await => {
            "scripted/none".to_owned()
        }
        None => {
            return Err(fail(
                TerminalCode::LlmUnconfigured,
                format!(
                    "no LLM is configured for this run: set the project's agent.llm_model \
                     (and agent.llm_api_key_secret, agent.llm_base_url as needed) with PATCH \
                     /api/v1/projects/{}, or the worker's CADENZA_DEFAULT_LLM_MODEL, \
                     CADENZA_DEFAULT_LLM_API_KEY and CADENZA_DEFAULT_LLM_BASE_URL (for `make \
                     run`: CADENZA_LLM_MODEL, CADENZA_LLM_API_KEY, CADENZA_LLM_BASE_URL); see \
                     docs/agent-server.md",
                    project.id
                ),
            ));
        }
    };

    let base_url =
        Url::parse(&format!("http://127.0.0.1:{}", workspace.host_port)).map_err(internal)?;
    let client = AgentServerClient::builder(base_url, session_key)
        .request_timeout(Duration::from_secs(60))
        .max_body_bytes(core.config.max_agent_message_bytes)
        .max_message_bytes(core.config.max_agent_message_bytes)
        .build();

    // 2. Wait for the agent-server, watching the container so a crash fails fast.
    wait_healthy(core, &client, container, cancel).await?;

    // 3. The repository, cloned before the agent started (see `docker::CloneSpec`).
    let base_commit = workspace.base_commit.clone();
    if let (Some(url), Some(base_commit)) = (&project.repository.url, &base_commit) {
        journal_workspace(
            core,
            run,
            url,
            project.repository.branch.as_deref(),
            base_commit,
            redactor,
            cancel,
        )
        .await?;
    }

    // 4. The conversation. Its id is the run's, so a retried create returns the same one.
    let conversation_id = run.id.as_uuid();
    let mut llm = LlmConfig::new(model).with_usage_id("agent");
    if let Some(url) = project
        .agent
        .llm_base_url
        .clone()
        .or_else(|| core.config.default_llm_base_url.clone())
    {
        llm = llm.with_base_url(url);
    }
    if let Some(key) = &secrets.llm_api_key {
        llm = llm.with_api_key(key.clone());
    }
    if let Some(mode) = &core.config.llm_api_mode {
        llm.extra.insert("api_mode".into(), serde_json::json!(mode));
    }
    let mut request = StartConversationRequest::new(
        core.config.workspace_dir.clone(),
        AgentSpec::with_standard_tools(llm),
    )
    .with_conversation_id(conversation_id)
    .with_max_iterations(u32::try_from(project.agent.max_iterations).unwrap_or(u32::MAX))
    .with_autotitle(false);
    for (name, value) in &secrets.shell {
        request = request.with_secret(name.clone(), value.clone());
    }
    let created = with_retries(cancel, || client.create_conversation(&request)).await;
    created.map_err(|err| {
        // A refusal names the fields (a 422's `loc`), never their values: the error drops `input`.
        let code = if err.is_refused_request() {
            TerminalCode::AgentContract
        } else {
            TerminalCode::AgentUnreachable
        };
        fail(code, format!("creating the conversation failed: {err}"))
    })?;

    run_turn(
        core,
        run,
        container,
        cancel,
        state,
        redactor,
        Turn {
            client: &client,
            conversation_id,
            base_commit,
            after: None,
            sent: Vec::new(),
            prompt: Prompt::Send {
                text: run.prompt.clone(),
            },
        },
        deadline,
    )
    .await
}

/// One turn of the agent on a conversation (a run's first, or a follow-up): where to read.
struct Turn<'a> {
    client: &'a AgentServerClient,
    conversation_id: uuid::Uuid,
    /// The commit the diff is taken against.
    base_commit: Option<String>,
    /// The last agent event an earlier turn journaled: (agent seq, event id).
    after: Option<(i64, String)>,
    /// Messages sent to start this turn: (text, correlation id).
    sent: Vec<(String, uuid::Uuid)>,
    /// The turn's task for the agent, given only once `running` is committed.
    prompt: Prompt,
}

/// How a turn's task reaches the agent.
enum Prompt {
    /// A fresh turn: commit `running`, then send it.
    Send { text: String },
    /// An adopted turn, already `running`: send it unless the conversation has it already
    /// (as a user message after `after`, the event the previous turn ended with).
    Ensure { text: String, after: Option<String> },
}

/// From a conversation that has its task to the agent's confirmed end: `running`, every event
/// journaled, the final message and the diff stored.
#[allow(clippy::too_many_arguments)]
async fn run_turn(
    core: &Core,
    run: &Run,
    container: &str,
    cancel: &Stop,
    state: &mut RunState,
    redactor: &Redactor,
    turn: Turn<'_>,
    deadline: Instant,
) -> Result<String, TerminalReason> {
    let Turn {
        client,
        conversation_id,
        base_commit,
        after,
        sent,
        prompt,
    } = turn;
    let fence = fence_of(core, run);
    if *state == RunState::Provisioning {
        let mut tx = core
            .pool
            .begin()
            .await
            .map_err(|err| internal(StorageError::from(err)))?;
        runs::set_conversation(&mut tx, run.id, fence, conversation_id)
            .await
            .map_err(|err| held(cancel, err))?;
        let done = runs::transition(
            &mut tx,
            run.id,
            RunState::Provisioning,
            &RunEvent::AgentStarted,
            Actor::LeaseHolder(fence),
            None,
        )
        .await
        .map_err(|err| held(cancel, err))?;
        tx.commit()
            .await
            .map_err(|err| internal(StorageError::from(err)))?;
        *state = RunState::Running;
        cancel
            .running
            .store(true, std::sync::atomic::Ordering::SeqCst);
        core.bus.publish_journal_event(&done.entry).await;
    }
    // The agent gets its task only now that `running` is committed: a run retried before this
    // point never had an agent act on it.
    deliver_prompt(client, conversation_id, prompt, cancel).await?;
    tracing::info!(%conversation_id, "agent running");

    // 4. Follow the session socket until the agent ends, journaling every durable event.
    let mut follower = Follower {
        core,
        run,
        client,
        conversation_id,
        container,
        redactor,
        stop: cancel,
        sent,
        correlation: None,
        last_seq: after.as_ref().map_or(-1, |(seq, _)| *seq),
        last_event_id: after.map(|(_, id)| id),
        last_error: None,
        journaled: 0,
    };
    let status = follower.follow(cancel, deadline).await?;

    // 5. Collect the result.
    let final_message = match status {
        ExecutionStatus::Finished => client
            .agent_final_response(conversation_id)
            .await
            .map(|message| redactor.redact(&message).into_owned())
            .unwrap_or_else(|err| {
                tracing::warn!(error = %redactor.redact(&err.to_string()), "reading the final response failed");
                String::new()
            }),
        ExecutionStatus::Stuck => {
            return Err(fail(
                TerminalCode::AgentError,
                "the agent got stuck (the agent-server's stuck detection fired)",
            ));
        }
        other => {
            let detail = follower.last_error.clone().unwrap_or_else(|| {
                format!("the agent-server reported status `{}`", other.as_str())
            });
            return Err(fail(TerminalCode::AgentError, detail));
        }
    };
    through_outages(core, cancel, || async {
        let mut conn = core.pool.acquire().await?;
        runs::set_final_message(&mut conn, run.id, fence, &final_message).await
    })
    .await?;
    match client
        .archive_git_delta(
            &core.config.workspace_dir,
            base_commit.as_deref(),
            core.config.diff_limits(),
        )
        .await
    {
        Ok(delta) => {
            let patch = with_omissions_noted(&delta);
            let patch = redactor.redact(&patch);
            through_outages(core, cancel, || async {
                let mut conn = core.pool.acquire().await?;
                diffs::upsert(
                    &mut conn,
                    run.id,
                    run.org_id,
                    fence,
                    delta.base_commit.as_deref(),
                    &patch,
                )
                .await
            })
            .await?;
            tracing::info!(
                bytes = delta.patch.len(),
                omitted = delta.omitted.len(),
                "diff stored"
            );
        }
        Err(err) => tracing::warn!(
            error = %redactor.redact(&err.to_string()),
            "collecting the diff failed; the run has no diff"
        ),
    }
    Ok(final_message)
}

/// The patch, preceded (when files were left out) by a note naming them and why. `git apply`
/// skips text before the first `diff --git`, so the patch still applies.
fn with_omissions_noted(delta: &cadenza_agent_client::GitDelta) -> String {
    if delta.omitted.is_empty() && delta.unread_after.is_none() {
        return delta.patch.clone();
    }
    let mut note = String::from("Cadenza left changes out of this diff:\n");
    for file in &delta.omitted {
        note.push_str(&format!("  {}: {}\n", file.path, file.reason));
    }
    if let Some(read) = delta.unread_after {
        note.push_str(&format!(
            "  the agent-server sent more than {read} bytes; changes after that are not listed\n"
        ));
    }
    note.push('\n');
    note + &delta.patch
}

/// A follow-up turn: the parent's container and conversation, the message as the next user
/// message, events read from after the parent's last one, the diff against the parent's base.
#[allow(clippy::too_many_arguments)]
async fn follow_up_turn(
    core: &Core,
    run: &Run,
    parent: cadenza_domain::RunId,
    container: &str,
    cancel: &Stop,
    state: &mut RunState,
    redactor: &Redactor,
    deadline: Instant,
) -> Result<String, TerminalReason> {
    let gone = || {
        fail(
            TerminalCode::WorkspaceUnavailable,
            format!("the workspace of run {parent} is gone; start a new run"),
        )
    };
    let (Some(host_port), Some(session_key)) = (
        core.docker.running_host_port(container).await,
        core.docker.session_key(container).await,
    ) else {
        return Err(gone());
    };
    let (conversation, base, after, correlation) = {
        let mut conn = core
            .pool
            .acquire()
            .await
            .map_err(|err| internal(StorageError::from(err)))?;
        let conversation = workspaces::conversation_of(&mut conn, parent)
            .await
            .map_err(internal)?
            .ok_or_else(gone)?;
        let base = diffs::get(&mut conn, &Scope::Org(run.org_id), parent)
            .await
            .map_err(internal)?
            .and_then(|diff| diff.base_commit)
            // A workspace without a repository has no commit: its diff was against the empty
            // tree, which is what the archive endpoint uses when it gets no base.
            .filter(|base| base != EMPTY_TREE);
        let after = workspaces::last_agent_event(&mut conn, parent)
            .await
            .map_err(internal)?;
        let correlation = workspaces::follow_up_correlation(&mut conn, run.id)
            .await
            .map_err(internal)?;
        (conversation, base, after, correlation)
    };
    let base_url = Url::parse(&format!("http://127.0.0.1:{host_port}")).map_err(internal)?;
    let client = AgentServerClient::builder(base_url, session_key)
        .request_timeout(Duration::from_secs(60))
        .max_body_bytes(core.config.max_agent_message_bytes)
        .max_message_bytes(core.config.max_agent_message_bytes)
        .build();
    wait_healthy(core, &client, container, cancel).await?;
    tracing::info!(%parent, %conversation, "follow-up turn starting");
    run_turn(
        core,
        run,
        container,
        cancel,
        state,
        redactor,
        Turn {
            client: &client,
            conversation_id: conversation,
            base_commit: base,
            after,
            sent: correlation
                .map(|id| vec![(run.prompt.clone(), id)])
                .unwrap_or_default(),
            prompt: Prompt::Send {
                text: run.prompt.clone(),
            },
        },
        deadline,
    )
    .await
}

/// An adopted `running` run: its container (on this engine) still runs the agent. Reconnects
/// with the session key in the container's environment, gives the agent its task if the
/// previous holder died before it could, and follows the conversation after the last event the
/// journal has, so nothing is journaled twice and nothing is run twice.
#[allow(clippy::too_many_arguments)]
async fn resume_turn(
    core: &Core,
    run: &Run,
    follow_up_of: Option<cadenza_domain::RunId>,
    container: &str,
    cancel: &Stop,
    state: &mut RunState,
    redactor: &Redactor,
    deadline: Instant,
) -> Result<String, TerminalReason> {
    let gone = || {
        fail(
            TerminalCode::WorkspaceUnavailable,
            format!("the workspace container {container} of this run is gone"),
        )
    };
    let (Some(host_port), Some(session_key)) = (
        core.docker.running_host_port(container).await,
        core.docker.session_key(container).await,
    ) else {
        return Err(gone());
    };
    let conversation_id = run.conversation_id.unwrap_or_else(|| run.id.as_uuid());
    let (own_last, base, parent_last, correlation) = {
        let mut conn = core
            .pool
            .acquire()
            .await
            .map_err(|err| internal(StorageError::from(err)))?;
        let own_last = workspaces::last_agent_event(&mut conn, run.id)
            .await
            .map_err(internal)?;
        let (base, parent_last, correlation) = match follow_up_of {
            Some(parent) => (
                diffs::get(&mut conn, &Scope::Org(run.org_id), parent)
                    .await
                    .map_err(internal)?
                    .and_then(|diff| diff.base_commit)
                    .filter(|base| base != EMPTY_TREE),
                workspaces::last_agent_event(&mut conn, parent)
                    .await
                    .map_err(internal)?,
                workspaces::follow_up_correlation(&mut conn, run.id)
                    .await
                    .map_err(internal)?,
            ),
            None => (
                journal::base_commit(&mut conn, run.id)
                    .await
                    .map_err(internal)?,
                None,
                None,
            ),
        };
        (own_last, base, parent_last, correlation)
    };
    let base_url = Url::parse(&format!("http://127.0.0.1:{host_port}")).map_err(internal)?;
    let client = AgentServerClient::builder(base_url, session_key)
        .request_timeout(Duration::from_secs(60))
        .max_body_bytes(core.config.max_agent_message_bytes)
        .max_message_bytes(core.config.max_agent_message_bytes)
        .build();
    wait_healthy(core, &client, container, cancel).await?;
    tracing::info!(
        %conversation_id,
        after_seq = own_last.as_ref().or(parent_last.as_ref()).map(|(seq, _)| *seq),
        "re-attached to the agent"
    );
    let prompt_after = parent_last.as_ref().map(|(_, id)| id.clone());
    run_turn(
        core,
        run,
        container,
        cancel,
        state,
        redactor,
        Turn {
            client: &client,
            conversation_id,
            base_commit: base,
            after: own_last.or(parent_last),
            sent: correlation
                .map(|id| vec![(run.prompt.clone(), id)])
                .unwrap_or_default(),
            prompt: Prompt::Ensure {
                text: run.prompt.clone(),
                after: prompt_after,
            },
        },
        deadline,
    )
    .await
}

/// Gives the agent its task. Sent at most once per conversation: an adopted turn first looks
/// for it among the conversation's user messages; a send that failed in transport is looked for
/// before it is sent again.
async fn deliver_prompt(
    client: &AgentServerClient,
    conversation: uuid::Uuid,
    prompt: Prompt,
    cancel: &Stop,
) -> Result<(), TerminalReason> {
    let (text, after, mut check_first) = match prompt {
        Prompt::Send { text } => (text, None, false),
        Prompt::Ensure { text, after } => (text, after, true),
    };
    let mut pause = crate::Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    for _ in 0..5 {
        if check_first {
            match client.events_after(conversation, after.as_deref()).await {
                Ok(events) => {
                    let delivered = events.iter().any(|event| {
                        matches!(event.typed(), TypedEvent::Message(message)
                            if message.role == "user" && message.text == text)
                    });
                    if delivered {
                        return Ok(());
                    }
                }
                Err(err) if err.is_retryable() && !cancel.any() => {
                    tokio::time::sleep(pause.next()).await;
                    continue;
                }
                Err(err) => {
                    return Err(fail(
                        TerminalCode::AgentUnreachable,
                        format!("reading the conversation failed: {err}"),
                    ));
                }
            }
        }
        // The message is saved even when the server is busy.
        match client.send_message(conversation, &text, true).await {
            Ok(()) | Err(AgentError::CapacityFull { .. }) => return Ok(()),
            Err(err) if err.is_retryable() && !cancel.any() => {
                tracing::debug!(error = %err, "sending the task failed; checking whether it arrived");
                check_first = true;
                tokio::time::sleep(pause.next()).await;
            }
            Err(err) => {
                return Err(fail(
                    TerminalCode::AgentUnreachable,
                    format!("sending the task to the agent failed: {err}"),
                ));
            }
        }
    }
    Err(fail(
        TerminalCode::AgentUnreachable,
        "the agent-server did not take the task after several tries",
    ))
}

/// A refused write: `Fenced` (or a compare-and-set conflict on a holder's transition) means
/// another holder has the run, and the supervisor lets it go; anything else fails the run.
fn held(cancel: &Stop, err: StorageError) -> TerminalReason {
    match err {
        StorageError::Fenced(_) | StorageError::Conflict(_) => {
            cancel.lost.cancel();
            lost_reason()
        }
        other => internal(other),
    }
}

/// Waits until this worker holds fewer workspace networks than its bound, giving up the kept
/// workspace that has waited longest for a follow-up when that makes room (kept workspaces count
/// toward the bound). The caller holds `network_room`. Bounded by the agent start timeout.
async fn make_room(core: &Core, cancel: &Stop) -> Result<(), TerminalReason> {
    let max = core.config.max_workspace_networks;
    let deadline = Instant::now() + core.config.agent_start_timeout;
    loop {
        let held = core
            .docker
            .networks_of(&core.worker.name)
            .await
            .map_err(|err| {
                tracing::warn!(error = %err, "listing workspace networks failed");
                fail(TerminalCode::ContainerFailed, err.tenant_message())
            })?;
        if held < max {
            return Ok(());
        }
        let oldest = async {
            let mut conn = core.pool.acquire().await?;
            let Some((run_id, container)) =
                workspaces::oldest_kept(&mut conn, core.worker.id).await?
            else {
                return Ok(None);
            };
            let released = workspaces::release(&mut conn, run_id).await?;
            Ok::<_, StorageError>(Some((run_id, container, released)))
        }
        .await
        .map_err(internal)?;
        match oldest {
            Some((run_id, container, released)) => {
                if released {
                    tracing::info!(%run_id, container, held, max, "giving up a kept workspace to make room for a new run");
                    core.docker.remove_workspace(&container, &container).await;
                }
                continue;
            }
            None if Instant::now() >= deadline => {
                return Err(fail(
                    TerminalCode::ContainerFailed,
                    format!(
                        "no workspace network became free within {:?}: this worker holds {held} of at most {max}",
                        core.config.agent_start_timeout
                    ),
                ));
            }
            None => {
                tokio::select! {
                    reason = cancel.requested() => return Err(reason),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        }
    }
}

/// The instance's LLM key, when this run may have it: only with the operator's own model and
/// endpoint, and only in an image the instance itself allows (not one allowed for the org
/// alone). A project that changes any of these names its own key (`agent.llm_api_key_secret`),
/// or the run fails at once: the operator's key must never reach an endpoint or an image a
/// tenant chose.
fn operator_llm_key<'a>(
    config: &'a crate::WorkerConfig,
    images: &cadenza_domain::ImagePolicy,
    project: &Project,
) -> Result<Option<&'a SecretString>, TerminalReason> {
    let Some(key) = config.default_llm_api_key.as_ref() else {
        return Ok(None);
    };
    if project.agent.llm_api_key_secret.is_some() {
        return Ok(None);
    }
    let differs = |own: &Option<String>, instance: &Option<String>| {
        own.as_deref()
            .is_some_and(|own| Some(own.trim()) != instance.as_deref().map(str::trim))
    };
    let mut own = Vec::new();
    if differs(&project.agent.llm_base_url, &config.default_llm_base_url) {
        own.push("`agent.llm_base_url`");
    }
    if differs(&project.agent.llm_model, &config.default_llm_model) {
        own.push("`agent.llm_model`");
    }
    let instance_image = project
        .agent
        .image
        .parse::<cadenza_domain::ImageRef>()
        .is_ok_and(|image| images.allows(&image));
    if !instance_image {
        own.push("an `agent.image` allowed only for this org");
    }
    if own.is_empty() {
        return Ok(Some(key));
    }
    Err(fail(
        TerminalCode::LlmUnconfigured,
        format!(
            "this project sets its own {}, so it must name its own LLM key: store it as a secret \
             and set `agent.llm_api_key_secret` (PATCH /api/v1/projects/{}); the instance's key \
             is used only with the instance's own model, endpoint and images",
            own.join(" and "),
            project.id
        ),
    ))
}

/// Refuses an image the allowlist (with the org's own rules) does not allow: the project may
/// predate the allowlist, or an administrator may have narrowed it since.
async fn check_image(core: &Core, run: &Run, project: &Project) -> Result<(), TerminalReason> {
    let org_rules = async {
        let mut conn = core.pool.acquire().await?;
        cadenza_storage::agent_images::rules_of(&mut conn, run.org_id).await
    }
    .await
    .map_err(internal)?;
    core.images
        .with(org_rules)
        .check(&project.agent.image)
        .map(|_| ())
        .map_err(|message| fail(TerminalCode::ImageRefused, message))
}

fn shutdown_reason() -> TerminalReason {
    fail(
        TerminalCode::WorkerShutdown,
        "the worker shut down before the run finished",
    )
}

fn workspace_spec(
    core: &Core,
    run: &Run,
    project: &Project,
    container: &str,
    session_key: &str,
    git_credentials: Option<&SecretString>,
) -> WorkspaceSpec {
    let labels = HashMap::from([
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
        (LABEL_ORG.to_owned(), run.org_id.to_string()),
        (LABEL_PROJECT.to_owned(), run.project_id.to_string()),
        (LABEL_RUN.to_owned(), run.id.to_string()),
        (LABEL_ATTEMPT.to_owned(), run.attempt.to_string()),
        (LABEL_WORKER.to_owned(), core.worker.name.clone()),
        (LABEL_DEPLOYMENT.to_owned(), core.config.bus_prefix.clone()),
    ]);
    // Project environment first, so it can never override the settings Cadenza relies on.
    let mut env: Vec<(String, String)> = project
        .agent
        .env
        .iter()
        .filter(|(name, _)| {
            !name.starts_with("OH_SESSION_API_KEY") && name.as_str() != "SESSION_API_KEY"
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    env.extend(
        [
            ("OH_SESSION_API_KEYS_0", session_key),
            // One server per container: no ownership lease to wait out after a restart.
            ("OH_LEASE_TTL_SECONDS", "0"),
            ("OH_ENABLE_VSCODE", "false"),
            ("OH_PRELOAD_TOOLS", "false"),
            ("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
            ("OH_WORKSPACE_PATH", core.config.workspace_dir.as_str()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned())),
    );
    WorkspaceSpec {
        name: container.to_owned(),
        image: project.agent.image.clone(),
        labels,
        env,
        cpus: project.agent.cpus,
        memory_mb: project.agent.memory_mb,
        pids_limit: project.agent.pids_limit,
        attach: core.config.attached_containers(),
        fallback_user: core.fallback_user,
        clone: project
            .repository
            .url
            .as_ref()
            .map(|url| crate::docker::CloneSpec {
                image: core.config.git_image.clone(),
                url: url.clone(),
                branch: project.repository.branch.clone(),
                auth_header: git_credentials.map(basic_auth_header),
                timeout: Duration::from_secs(600),
            }),
        workspace_dir: core.config.workspace_dir.clone(),
    }
}

/// The `Authorization` header the clone sends (`token`, or `user:token`; the user defaults to
/// `x-access-token`, which GitHub and Gitea accept, GitLab takes `oauth2`). It travels as git
/// configuration in the clone helper's environment: never in the URL, so not in `.git/config`,
/// the remote name or git's error messages, and never in the agent's container.
fn basic_auth_header(credentials: &SecretString) -> SecretString {
    use base64::Engine;
    let credentials = credentials.expose_secret().trim();
    let pair = if credentials.contains(':') {
        credentials.to_owned()
    } else {
        format!("x-access-token:{credentials}")
    };
    SecretString::from(format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    ))
}

/// Follows the workspace container's output into this worker's log (at debug level, target
/// `cadenza_worker::agent_log`), redacted line by line, even when a value is split across the
/// chunks the engine sends. Ends when the container goes, or with the run's time budget.
fn forward_container_logs(core: &Core, container: &str, secrets: &RunSecrets) {
    let logs = core.docker.follow_logs(container);
    let redactor = secrets.redactor.clone();
    let budget = core.config.run_timeout + Duration::from_secs(60);
    tokio::spawn(
        async move {
            let mut lines = LogLines::new(&redactor);
            let follow = async {
                futures::pin_mut!(logs);
                while let Some(chunk) = logs.next().await {
                    for line in lines.push(&chunk) {
                        tracing::debug!(target: "cadenza_worker::agent_log", "{line}");
                    }
                }
            };
            let _ = tokio::time::timeout(budget, follow).await;
            for line in lines.finish() {
                tracing::debug!(target: "cadenza_worker::agent_log", "{line}");
            }
        }
        .instrument(tracing::Span::current()),
    );
}

/// A repository URL without the `user:password@` of its authority, for the journal: the API
/// refuses such URLs, but a project saved before it did may still have one.
fn without_userinfo(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Journals the `workspace` entry: which repository and commit the run started from.
async fn journal_workspace(
    core: &Core,
    run: &Run,
    url: &str,
    branch: Option<&str>,
    base_commit: &str,
    redactor: &Redactor,
    cancel: &Stop,
) -> Result<(), TerminalReason> {
    let entry = NewJournalEvent {
        run_id: run.id,
        org_id: run.org_id,
        kind: cadenza_domain::EventKind::Workspace,
        payload: {
            let repository = without_userinfo(url);
            let mut payload = serde_json::json!({"repository": repository, "branch": branch, "base_commit": base_commit});
            redactor.redact_json(&mut payload);
            payload
        },
        raw: None,
        source_event_id: None,
        source_seq: None,
        occurred_at: OffsetDateTime::now_utc(),
        fence: Some(fence_of(core, run)),
    };
    append_through_outages(core, cancel, || entry.clone()).await?;
    tracing::info!(repository = %redactor.redact(url), %base_commit, "repository cloned");
    Ok(())
}

/// Journals one entry as the run's holder (see `through_outages`).
async fn append_through_outages(
    core: &Core,
    stop: &Stop,
    entry: impl Fn() -> NewJournalEvent,
) -> Result<(), TerminalReason> {
    let appended = through_outages(core, stop, || async {
        let mut conn = core.pool.acquire().await?;
        journal::append(&mut conn, entry()).await
    })
    .await?;
    if let Some(entry) = appended {
        core.bus.publish_journal_event(&entry).await;
    }
    Ok(())
}

/// One of the run's writes, as its holder. A transient failure (Postgres restarting, a full
/// pool) is retried for `database_outage_budget` while the agent keeps working (its events wait
/// in the agent-server); a refused fence lets the run go.
async fn through_outages<T, F, Fut>(
    core: &Core,
    stop: &Stop,
    mut write: F,
) -> Result<T, TerminalReason>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StorageError>>,
{
    let deadline = Instant::now() + core.config.database_outage_budget;
    let mut pause = crate::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match write().await {
            Ok(value) => return Ok(value),
            Err(err) if err.is_transient() && Instant::now() < deadline && !stop.any() => {
                tracing::warn!(error = %err, "a write for the run failed; retrying");
                tokio::time::sleep(pause.next()).await;
            }
            Err(err) => return Err(held(stop, err)),
        }
    }
}

async fn wait_healthy(
    core: &Core,
    client: &AgentServerClient,
    container: &str,
    cancel: &Stop,
) -> Result<(), TerminalReason> {
    let deadline = Instant::now() + core.config.agent_start_timeout;
    let mut pause = Duration::from_millis(50);
    loop {
        match client.health().await {
            Ok(()) => return Ok(()),
            Err(err) if err.is_retryable() => {}
            Err(err) => {
                return Err(fail(
                    TerminalCode::AgentUnreachable,
                    format!("the agent-server's health check failed: {err}"),
                ));
            }
        }
        if let Some(exit) = core.docker.exit_status(container).await {
            return Err(fail(TerminalCode::ContainerFailed, exit));
        }
        if Instant::now() + pause > deadline {
            return Err(fail(
                TerminalCode::AgentUnreachable,
                format!(
                    "the agent-server did not become healthy within {:?}",
                    core.config.agent_start_timeout
                ),
            ));
        }
        tokio::select! {
            reason = cancel.requested() => return Err(reason),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Retries an idempotent agent-server call on transport failures, a few times.
async fn with_retries<T, F, Fut>(cancel: &Stop, mut call: F) -> Result<T, AgentError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AgentError>>,
{
    let mut pause = Duration::from_millis(200);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match call().await {
            Ok(value) => return Ok(value),
            Err(err) if err.is_retryable() && attempts < 5 && !cancel.any() => {
                tracing::debug!(error = %err, attempts, "agent-server call failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(err) => return Err(err),
        }
    }
}

struct Follower<'a> {
    core: &'a Core,
    run: &'a Run,
    client: &'a AgentServerClient,
    conversation_id: uuid::Uuid,
    container: &'a str,
    redactor: &'a Redactor,
    stop: &'a Stop,
    /// Messages sent to the conversation whose user-message event has not been journaled yet:
    /// (text, correlation id).
    sent: Vec<(String, uuid::Uuid)>,
    /// The correlation id of the last user message journaled: later events are its effects.
    correlation: Option<uuid::Uuid>,
    /// The agent-server seq of the last journaled durable event (-1: none).
    last_seq: i64,
    last_event_id: Option<String>,
    /// The detail of the last `ConversationErrorEvent`, for the failure reason.
    last_error: Option<String>,
    /// Agent events journaled by this turn.
    journaled: i64,
}

enum Step {
    /// The socket saw a terminal status: confirm it over REST.
    TerminalHint,
    /// The socket dropped: reconnect after `last_seq`.
    Reconnect(String),
}

impl Follower<'_> {
    /// Follows the conversation to a confirmed terminal status.
    async fn follow(
        &mut self,
        cancel: &Stop,
        deadline: Instant,
    ) -> Result<ExecutionStatus, TerminalReason> {
        let mut failures = 0u32;
        loop {
            let step = tokio::select! {
                reason = cancel.requested() => {
                    // A cancel stops the agent first, so it does nothing more while the
                    // container goes; a detach leaves it working for the next holder.
                    if !cancel.detached() {
                        let _ = self.client.interrupt(self.conversation_id).await;
                    }
                    return Err(reason);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = self.client.interrupt(self.conversation_id).await;
                    return Err(fail(
                        TerminalCode::TimedOut,
                        format!("the run exceeded its time budget of {:?}", self.core.config.run_timeout),
                    ));
                }
                step = self.stream_once() => step?,
            };
            match step {
                Step::TerminalHint => {
                    if let Some(status) = self.confirm().await? {
                        self.reconcile_over_rest().await?;
                        return Ok(status);
                    }
                    // Not terminal after all (a stop hook vetoed it): keep following.
                    failures = 0;
                }
                Step::Reconnect(why) => {
                    failures += 1;
                    if let Some(exit) = self.core.docker.exit_status(self.container).await {
                        return Err(fail(TerminalCode::ContainerFailed, exit));
                    }
                    if failures > MAX_RECONNECTS {
                        return Err(fail(
                            TerminalCode::AgentUnreachable,
                            format!("lost the agent-server's event stream: {why}"),
                        ));
                    }
                    tracing::info!(
                        why,
                        failures,
                        after_seq = self.last_seq,
                        "reconnecting to the session socket"
                    );
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(failures))).await;
                }
            }
        }
    }

    /// One socket connection: replay after `last_seq`, then live, until a terminal hint or a drop.
    async fn stream_once(&mut self) -> Result<Step, TerminalReason> {
        let mut socket = match self
            .client
            .open_session(self.conversation_id, Some(self.last_seq))
            .await
        {
            Ok(socket) => socket,
            Err(err) => return Ok(Step::Reconnect(err.to_string())),
        };
        loop {
            // Reading a frame is cancel-safe (the socket keeps what it has not yielded), so a
            // message to deliver can interrupt the wait without losing an event.
            let frame = tokio::select! {
                frame = socket.next_frame() => frame,
                _ = self.stop.inbox_ready.notified() => {
                    self.deliver_messages().await;
                    continue;
                }
            };
            match frame {
                Ok(SessionFrame::Durable { seq, event }) => {
                    if seq <= self.last_seq {
                        continue;
                    }
                    self.journal(Some(seq), &event).await?;
                    self.last_seq = seq;
                    self.last_event_id = Some(event.id.clone());
                    if event
                        .execution_status()
                        .is_some_and(|status| status.is_terminal())
                    {
                        return Ok(Step::TerminalHint);
                    }
                }
                // The connect-time snapshot: after a reconnect it may be the only sign that the
                // run ended while we were away.
                Ok(SessionFrame::Transient { event }) => {
                    if event
                        .execution_status()
                        .is_some_and(|status| status.is_terminal())
                    {
                        return Ok(Step::TerminalHint);
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    if let Some(code) = err.close_code()
                        && (code == cadenza_agent_client::CLOSE_UNAUTHORIZED
                            || code == cadenza_agent_client::CLOSE_NOT_FOUND)
                    {
                        return Err(fail(
                            TerminalCode::AgentUnreachable,
                            format!("the agent-server closed the event stream: {err}"),
                        ));
                    }
                    return Ok(Step::Reconnect(err.to_string()));
                }
            }
        }
    }

    /// Sends queued user messages to the conversation (starting a run of the agent if it is
    /// idle) and records each as delivered. One that fails is offered again later.
    async fn deliver_messages(&mut self) {
        for message in self.stop.take_messages() {
            match self
                .client
                .send_message(self.conversation_id, &message.text, true)
                .await
            {
                // A full server saved the message anyway and runs it when it can.
                Ok(()) | Err(AgentError::CapacityFull { .. }) => {
                    self.sent
                        .push((message.text.clone(), message.correlation_id));
                    let marked = async {
                        let mut conn = self.core.pool.acquire().await?;
                        run_messages::mark_delivered(&mut conn, message.id).await
                    }
                    .await;
                    if let Err(err) = marked {
                        tracing::warn!(error = %err, "recording a delivered message failed");
                    }
                    tracing::info!(correlation_id = %message.correlation_id, "message delivered");
                }
                Err(err) => {
                    tracing::warn!(
                        error = %self.redactor.redact(&err.to_string()),
                        "sending a message failed; retrying at the next heartbeat"
                    );
                    self.stop.release(message.id);
                }
            }
        }
    }

    /// Polls the conversation until REST agrees the status is terminal. `None` when it stays
    /// non-terminal for the whole budget.
    async fn confirm(&self) -> Result<Option<ExecutionStatus>, TerminalReason> {
        let deadline = Instant::now() + CONFIRM_BUDGET;
        loop {
            match self.client.get_conversation(self.conversation_id).await {
                Ok(info) if info.execution_status.is_terminal() => {
                    return Ok(Some(info.execution_status));
                }
                Ok(_) => {}
                Err(err) if err.is_retryable() => {}
                Err(err) => {
                    return Err(fail(
                        TerminalCode::AgentUnreachable,
                        format!("confirming the end failed: {err}"),
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Journals events the socket did not deliver before the end (e.g. the final state dump).
    async fn reconcile_over_rest(&mut self) -> Result<(), TerminalReason> {
        let missed = match self
            .client
            .events_after(self.conversation_id, self.last_event_id.as_deref())
            .await
        {
            Ok(events) => events,
            Err(err) => {
                tracing::warn!(
                    error = %self.redactor.redact(&err.to_string()),
                    "reconciling events over REST failed"
                );
                return Ok(());
            }
        };
        for event in missed {
            self.journal(None, &event).await?;
            self.last_event_id = Some(event.id.clone());
        }
        Ok(())
    }

    async fn journal(
        &mut self,
        seq: Option<i64>,
        event: &AgentEvent,
    ) -> Result<(), TerminalReason> {
        if let TypedEvent::ConversationError(error) = event.typed() {
            self.last_error = Some(format!("{}: {}", error.code, error.detail));
        }
        let (kind, mut payload) = normalize(event, seq);
        if kind == cadenza_domain::EventKind::Message && payload["role"] == "user" {
            let text = payload["text"].as_str().unwrap_or_default();
            if let Some(index) = self.sent.iter().position(|(sent, _)| sent == text) {
                self.correlation = Some(self.sent.remove(index).1);
            }
        }
        if let (Some(correlation), Some(fields)) = (self.correlation, payload.as_object_mut()) {
            fields.insert(
                "correlation_id".into(),
                serde_json::json!(correlation.to_string()),
            );
        }
        let mut raw = event.raw.clone();
        self.redactor.redact_json(&mut payload);
        self.redactor.redact_json(&mut raw);
        // Bounded: a journal entry is at most `max_event_bytes` (long text cut, with a marker),
        // and a run has at most `max_events_per_run` of them.
        let limit = self.core.config.max_event_bytes;
        crate::normalize::bound_json(&mut payload, limit / 2);
        crate::normalize::bound_json(&mut raw, limit / 2);
        self.journaled += 1;
        if self.journaled > self.core.config.max_events_per_run {
            return Err(fail(
                TerminalCode::AgentError,
                format!(
                    "the agent produced more than {} journal entries, the most one run may have \
                     (CADENZA_MAX_EVENTS_PER_RUN); the run was stopped",
                    self.core.config.max_events_per_run
                ),
            ));
        }
        let new_event = || NewJournalEvent {
            run_id: self.run.id,
            org_id: self.run.org_id,
            kind,
            payload: payload.clone(),
            raw: Some(raw.clone()),
            source_event_id: (!event.id.is_empty()).then(|| event.id.clone()),
            source_seq: seq,
            occurred_at: OffsetDateTime::now_utc(),
            fence: Some(fence_of(self.core, self.run)),
        };
        append_through_outages(self.core, self.stop, new_event).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(image: &str) -> Project {
        Project {
            id: cadenza_domain::ProjectId::new(),
            org_id: cadenza_domain::OrgId::new(),
            slug: "p".into(),
            name: "p".into(),
            agent: cadenza_domain::AgentSettings::with_image(image),
            repository: Default::default(),
            created_at: OffsetDateTime::now_utc(),
            updated_at: OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn the_operator_key_goes_only_with_the_operators_model_endpoint_and_images() {
        let mut config = crate::WorkerConfig::new(
            SecretString::from("postgres://unused"),
            "nats://unused".into(),
            "t".into(),
            "w".into(),
        );
        config.default_llm_api_key = Some(SecretString::from("sk-operator"));
        config.default_llm_model = Some("openai/gpt".into());
        config.default_llm_base_url = Some("https://llm.internal/v1".into());
        let images =
            cadenza_domain::ImagePolicy::parse("ghcr.io/openhands/agent-server").expect("policy");
        let official = "ghcr.io/openhands/agent-server:1.58.0-python";

        let plain = project(official);
        let key = operator_llm_key(&config, &images, &plain).expect("allowed");
        assert_eq!(key.map(ExposeSecret::expose_secret), Some("sk-operator"));
        // Naming the operator's own values explicitly is the same as naming none.
        let mut same = project(official);
        same.agent.llm_model = Some("openai/gpt".into());
        same.agent.llm_base_url = Some("https://llm.internal/v1".into());
        assert!(
            operator_llm_key(&config, &images, &same)
                .expect("allowed")
                .is_some()
        );

        for (what, change) in [
            (
                "`agent.llm_base_url`",
                Box::new(|p: &mut Project| {
                    p.agent.llm_base_url = Some("https://attacker.example/v1".into())
                }) as Box<dyn Fn(&mut Project)>,
            ),
            (
                "`agent.llm_model`",
                Box::new(|p: &mut Project| p.agent.llm_model = Some("openai/other".into())),
            ),
            (
                "`agent.image`",
                Box::new(|p: &mut Project| p.agent.image = "ghcr.io/acme/agent:1".into()),
            ),
        ] {
            let mut tenant = project(official);
            change(&mut tenant);
            let refused = operator_llm_key(&config, &images, &tenant).expect_err(what);
            assert_eq!(refused.code, TerminalCode::LlmUnconfigured);
            assert!(refused.message.contains(what), "{}", refused.message);
            assert!(
                refused.message.contains("agent.llm_api_key_secret"),
                "{}",
                refused.message
            );
            // With its own key the project needs nothing from the operator.
            tenant.agent.llm_api_key_secret = Some("MY_KEY".into());
            assert!(
                operator_llm_key(&config, &images, &tenant)
                    .expect("own key")
                    .is_none()
            );
        }
        config.default_llm_api_key = None;
        let mut tenant = project(official);
        tenant.agent.llm_base_url = Some("https://attacker.example/v1".into());
        assert!(
            operator_llm_key(&config, &images, &tenant)
                .expect("no key to give")
                .is_none()
        );
    }

    #[test]
    fn the_journaled_repository_url_carries_no_user_information() {
        assert_eq!(
            without_userinfo("https://user:ghp_token@git.example.com/acme/repo.git"),
            "https://git.example.com/acme/repo.git"
        );
        assert_eq!(
            without_userinfo("https://deploy@git.example.com/r.git"),
            "https://git.example.com/r.git"
        );
        for kept in [
            "https://git.example.com/r.git",
            "git@git.example.com:acme/r.git",
        ] {
            assert_eq!(without_userinfo(kept), kept);
        }
    }

    #[test]
    fn git_credentials_become_a_basic_header() {
        use base64::Engine;
        let header = basic_auth_header(&SecretString::from("ghp_tokenvalue123"));
        let encoded =
            base64::engine::general_purpose::STANDARD.encode("x-access-token:ghp_tokenvalue123");
        assert_eq!(
            header.expose_secret(),
            format!("Authorization: Basic {encoded}")
        );
        assert!(!header.expose_secret().contains("ghp_tokenvalue123"));
        let with_user = basic_auth_header(&SecretString::from(" oauth2:glpat-abc\n"));
        let encoded = base64::engine::general_purpose::STANDARD.encode("oauth2:glpat-abc");
        assert_eq!(
            with_user.expose_secret(),
            format!("Authorization: Basic {encoded}")
        );
    }
}
