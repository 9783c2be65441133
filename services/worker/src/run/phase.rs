//! A run attempt as phases that consume themselves: each does its part and hands over the next,
//! or the reason the run cannot go on. The run's state is the phase's; nothing else keeps it.
//!
//! ```text
//! Provision ──► Start ──► Follow ──► Collect ──► Ended
//! FollowUp ───┘            ▲
//! Reattach ────────────────┘
//! ```

use std::sync::Arc;

use cadenza_agent_client::{AgentSpec, ExecutionStatus, LlmConfig, StartConversationRequest};
use cadenza_domain::{RunId, RunState, Scope, TerminalCode, TerminalReason};
use cadenza_storage::{StorageError, diffs, journal, runs, workspaces};
use secrecy::ExposeSecret;

use super::Attempt;
use super::control::RunControl;
use super::follow::{
    CONFIRM_BUDGET, Cursor, FollowContext, FollowLimits, Follower, Prompt, deliver_prompt,
    with_retries,
};
use super::outcome::{fail, internal, with_omissions_noted};
use super::provision::{
    check_image, choose_model, forward_container_logs, make_room, wait_healthy, workspace_spec,
};
use super::repository::journal_workspace;
use crate::agent::AgentSession;
use crate::docker::ContainerError;

/// Git's empty tree: the base of a diff in a workspace without commits.
const EMPTY_TREE: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";

pub(crate) enum Phase {
    /// A fresh run: its workspace container, the agent-server healthy, the conversation made
    /// (without the task).
    Provision,
    /// A follow-up turn: its parent's container and conversation.
    FollowUp { parent: RunId },
    /// An adopted `running` run: its container (on this engine) still runs the agent.
    Reattach { follow_up_of: Option<RunId> },
    /// The conversation exists and the agent does not have its task: commit `running`.
    Start(Turn),
    /// `running` is committed: give the agent its task (once) and follow it to its end.
    Follow(Turn),
    /// The agent finished: its final message and the diff.
    Collect(Turn),
    /// The agent's work is done, with its final message.
    Ended(String),
}

/// One turn of the agent on a conversation: where to read, what to send.
pub(crate) struct Turn {
    agent: Arc<dyn AgentSession>,
    conversation_id: uuid::Uuid,
    /// The commit the diff is taken against.
    base_commit: Option<String>,
    cursor: Cursor,
    /// The turn's task for the agent, given only once `running` is committed.
    prompt: Prompt,
}

impl Phase {
    /// The run's state while in this phase.
    pub(crate) fn run_state(&self) -> RunState {
        match self {
            Phase::Provision | Phase::FollowUp { .. } | Phase::Start(_) => RunState::Provisioning,
            Phase::Reattach { .. } | Phase::Follow(_) | Phase::Collect(_) | Phase::Ended(_) => {
                RunState::Running
            }
        }
    }

    pub(crate) async fn next(
        self,
        attempt: &Attempt,
        control: &mut RunControl,
    ) -> Result<Phase, TerminalReason> {
        match self {
            Phase::Provision => provision(attempt, control).await,
            Phase::FollowUp { parent } => follow_up(attempt, control, parent).await,
            Phase::Reattach { follow_up_of } => reattach(attempt, control, follow_up_of).await,
            Phase::Start(turn) => {
                attempt
                    .journal
                    .commit_running(control, turn.conversation_id)
                    .await?;
                tracing::info!(conversation_id = %turn.conversation_id, "agent running");
                Ok(Phase::Follow(turn))
            }
            Phase::Follow(turn) => follow(attempt, control, turn).await,
            Phase::Collect(turn) => collect(attempt, control, turn).await,
            Phase::Ended(message) => Ok(Phase::Ended(message)),
        }
    }
}

async fn provision(attempt: &Attempt, control: &mut RunControl) -> Result<Phase, TerminalReason> {
    let Attempt {
        core,
        run,
        project,
        container,
        secrets,
        ..
    } = attempt;
    let redactor = &*secrets.redactor;
    // 1. The workspace container, from an image this instance allows for the org.
    check_image(core, run, project).await?;
    let session_key = attempt
        .session_key
        .clone()
        .ok_or_else(|| internal("a fresh run has no session key"))?;
    let spec = workspace_spec(
        core,
        run,
        project,
        container,
        session_key.expose_secret(),
        secrets.git_credentials.as_ref(),
    );
    let container_failed = |err: ContainerError| {
        tracing::warn!(error = %redactor.redact(&err.to_string()), "the workspace container could not start");
        fail(TerminalCode::ContainerFailed, err.tenant_message())
    };
    let pull_timeout = core.config.image_pull_timeout;
    let image_user = tokio::select! {
        reason = control.stopped() => return Err(reason),
        pulled = core.runtime.ensure_image(&spec.image, pull_timeout) => pulled.map_err(container_failed)?,
    };
    if let Some(clone) = &spec.clone {
        tokio::select! {
            reason = control.stopped() => return Err(reason),
            pulled = core.runtime.ensure_image(&clone.image, pull_timeout) => {
                pulled.map_err(container_failed)?;
            }
        }
    }
    let workspace = {
        let _room = core.network_room.lock().await;
        make_room(core, control).await?;
        tokio::select! {
            reason = control.stopped() => return Err(reason),
            started = core.runtime.start_workspace(&spec, &image_user) => {
                started.map_err(|err| match err {
                    ContainerError::CloneFailed { .. } | ContainerError::CloneTimedOut(_) => fail(
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
    forward_container_logs(core, container, secrets);
    let scripted = core.runtime.is_scripted_agent(&project.agent.image).await;
    let model = choose_model(project, core.config.default_llm_model.as_deref(), scripted)?;
    let agent = core.agents.connect(workspace.host_port, session_key);

    // 2. Wait for the agent-server, watching the container so a crash fails fast.
    wait_healthy(
        &*agent,
        &*core.runtime,
        container,
        core.config.agent_start_timeout,
        control,
    )
    .await?;

    // 3. The repository, cloned before the agent started (see `docker::CloneSpec`).
    if let (Some(url), Some(base_commit)) = (&project.repository.url, &workspace.base_commit) {
        journal_workspace(
            &attempt.journal,
            control,
            url,
            project.repository.branch.as_deref(),
            base_commit,
            redactor,
        )
        .await?;
    }

    // 4. The conversation, without the task. Its id is the run's, so a retried create returns
    // the same one.
    let conversation_id = run.id.as_uuid();
    let request = conversation_request(attempt, model, conversation_id);
    with_retries(control, || agent.create_conversation(&request))
        .await
        .map_err(|err| {
            // A refusal names the fields (a 422's `loc`), never their values: the error drops
            // `input`.
            let code = if err.is_refused_request() {
                TerminalCode::AgentContract
            } else {
                TerminalCode::AgentUnreachable
            };
            fail(code, format!("creating the conversation failed: {err}"))
        })?;
    Ok(Phase::Start(Turn {
        agent,
        conversation_id,
        base_commit: workspace.base_commit,
        cursor: Cursor::default(),
        prompt: Prompt::Send {
            text: run.prompt.clone(),
        },
    }))
}

/// The conversation a fresh run's agent works in: the model and its endpoint and key, the
/// standard tools, the project's secrets for the agent's shell.
fn conversation_request(
    attempt: &Attempt,
    model: String,
    conversation_id: uuid::Uuid,
) -> StartConversationRequest {
    let Attempt {
        core,
        project,
        secrets,
        ..
    } = attempt;
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
    request
}

/// The agent-server of a workspace container that already runs (a follow-up's parent's, an
/// adopted run's), once healthy; `gone` when the container is not running.
async fn attach(
    attempt: &Attempt,
    control: &mut RunControl,
    gone: impl Fn() -> TerminalReason,
) -> Result<Arc<dyn AgentSession>, TerminalReason> {
    let core = &attempt.core;
    let (Some(host_port), Some(session_key)) = (
        core.runtime.running_host_port(&attempt.container).await,
        attempt.session_key.clone(),
    ) else {
        return Err(gone());
    };
    let agent = core.agents.connect(host_port, session_key);
    wait_healthy(
        &*agent,
        &*core.runtime,
        &attempt.container,
        core.config.agent_start_timeout,
        control,
    )
    .await?;
    Ok(agent)
}

/// What a run working in its parent's workspace reads from the parent: the diff's base (none
/// for a workspace without a repository: its diff was against the empty tree, which is what
/// the archive endpoint uses when it gets no base), the parent's last agent event, and the
/// correlation id of the follow-up message.
async fn parent_context(
    attempt: &Attempt,
    parent: RunId,
) -> Result<(Option<String>, Option<(i64, String)>, Option<uuid::Uuid>), StorageError> {
    let mut conn = attempt.journal.pool().acquire().await?;
    let base = diffs::get(&mut conn, &Scope::Org(attempt.run.org_id), parent)
        .await?
        .and_then(|diff| diff.base_commit)
        .filter(|base| base != EMPTY_TREE);
    let last = workspaces::last_agent_event(&mut conn, parent).await?;
    let correlation = workspaces::follow_up_correlation(&mut conn, attempt.run.id).await?;
    Ok((base, last, correlation))
}

/// A follow-up turn: the parent's container and conversation, the message as the next user
/// message, events read from after the parent's last one, the diff against the parent's base.
async fn follow_up(
    attempt: &Attempt,
    control: &mut RunControl,
    parent: RunId,
) -> Result<Phase, TerminalReason> {
    let gone = || {
        fail(
            TerminalCode::WorkspaceUnavailable,
            format!("the workspace of run {parent} is gone; start a new run"),
        )
    };
    let agent = attach(attempt, control, gone).await?;
    let conversation = async {
        let mut conn = attempt.journal.pool().acquire().await?;
        workspaces::conversation_of(&mut conn, parent).await
    }
    .await
    .map_err(internal)?
    .ok_or_else(gone)?;
    let (base, after, correlation) = parent_context(attempt, parent).await.map_err(internal)?;
    tracing::info!(%parent, %conversation, "follow-up turn starting");
    let text = attempt.run.prompt.clone();
    Ok(Phase::Start(Turn {
        agent,
        conversation_id: conversation,
        base_commit: base,
        cursor: Cursor {
            after,
            sent: correlation
                .map(|id| vec![(text.clone(), id)])
                .unwrap_or_default(),
        },
        prompt: Prompt::Send { text },
    }))
}

/// An adopted `running` run: reconnects with the session key in the container's environment,
/// gives the agent its task if the previous holder died before it could, and follows the
/// conversation after the last event the journal has, so nothing is journaled twice and nothing
/// is run twice.
async fn reattach(
    attempt: &Attempt,
    control: &mut RunControl,
    follow_up_of: Option<RunId>,
) -> Result<Phase, TerminalReason> {
    let run = &attempt.run;
    let gone = || {
        fail(
            TerminalCode::WorkspaceUnavailable,
            format!(
                "the workspace container {} of this run is gone",
                attempt.container
            ),
        )
    };
    let agent = attach(attempt, control, gone).await?;
    let conversation_id = run.conversation_id.unwrap_or_else(|| run.id.as_uuid());
    let looked_up = async {
        let own_last = {
            let mut conn = attempt.journal.pool().acquire().await?;
            workspaces::last_agent_event(&mut conn, run.id).await?
        };
        let parent = match follow_up_of {
            Some(parent) => parent_context(attempt, parent).await?,
            None => {
                let mut conn = attempt.journal.pool().acquire().await?;
                (journal::base_commit(&mut conn, run.id).await?, None, None)
            }
        };
        Ok::<_, StorageError>((own_last, parent))
    }
    .await;
    let (own_last, (base, parent_last, correlation)) = looked_up.map_err(internal)?;
    tracing::info!(
        %conversation_id,
        after_seq = own_last.as_ref().or(parent_last.as_ref()).map(|(seq, _)| *seq),
        "re-attached to the agent"
    );
    let text = run.prompt.clone();
    Ok(Phase::Follow(Turn {
        agent,
        conversation_id,
        base_commit: base,
        cursor: Cursor {
            after: own_last.or(parent_last.clone()),
            sent: correlation
                .map(|id| vec![(text.clone(), id)])
                .unwrap_or_default(),
        },
        prompt: Prompt::Ensure {
            text,
            after: parent_last.map(|(_, id)| id),
        },
    }))
}

/// Gives the agent its task and follows the session socket until the agent ends, journaling
/// every durable event.
async fn follow(
    attempt: &Attempt,
    control: &mut RunControl,
    turn: Turn,
) -> Result<Phase, TerminalReason> {
    let core = &attempt.core;
    deliver_prompt(
        &*turn.agent,
        turn.conversation_id,
        turn.prompt.clone(),
        control,
    )
    .await?;
    let mut follower = Follower::new(
        FollowContext {
            agent: &*turn.agent,
            runtime: &*core.runtime,
            journal: &attempt.journal,
            redactor: &attempt.secrets.redactor,
            limits: FollowLimits {
                max_event_bytes: core.config.max_event_bytes,
                max_events_per_run: core.config.max_events_per_run,
                confirm_budget: CONFIRM_BUDGET,
            },
            conversation_id: turn.conversation_id,
            container: &attempt.container,
        },
        turn.cursor.clone(),
    );
    let status = follower
        .follow(control, attempt.deadline, core.config.run_timeout)
        .await?;
    match status {
        ExecutionStatus::Finished => Ok(Phase::Collect(turn)),
        ExecutionStatus::Stuck => Err(fail(
            TerminalCode::AgentError,
            "the agent got stuck (the agent-server's stuck detection fired)",
        )),
        other => Err(fail(
            TerminalCode::AgentError,
            follower.last_error.clone().unwrap_or_else(|| {
                format!("the agent-server reported status `{}`", other.as_str())
            }),
        )),
    }
}

/// The agent's final message and the workspace's diff, stored as the run's holder.
async fn collect(
    attempt: &Attempt,
    control: &mut RunControl,
    turn: Turn,
) -> Result<Phase, TerminalReason> {
    let Attempt {
        core, run, journal, ..
    } = attempt;
    let redactor = &*attempt.secrets.redactor;
    let fence = journal.fence;
    let final_message = match turn.agent.agent_final_response(turn.conversation_id).await {
        Ok(message) => redactor.redact(&message).into_owned(),
        Err(err) => {
            tracing::warn!(error = %redactor.redact(&err.to_string()), "reading the final response failed");
            String::new()
        }
    };
    journal
        .write(control, |pool| {
            let final_message = final_message.clone();
            async move {
                let mut conn = pool.acquire().await?;
                runs::set_final_message(&mut conn, run.id, fence, &final_message).await
            }
        })
        .await?;
    let delta = turn
        .agent
        .archive_git_delta(
            &core.config.workspace_dir,
            turn.base_commit.as_deref(),
            core.config.diff_limits(),
        )
        .await;
    match delta {
        Ok(delta) => {
            let patch = redactor.redact(&with_omissions_noted(&delta)).into_owned();
            let base = delta.base_commit.clone();
            journal
                .write(control, |pool| {
                    let (patch, base) = (patch.clone(), base.clone());
                    async move {
                        let mut conn = pool.acquire().await?;
                        diffs::upsert(
                            &mut conn,
                            run.id,
                            run.org_id,
                            fence,
                            base.as_deref(),
                            &patch,
                        )
                        .await
                    }
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
    Ok(Phase::Ended(final_message))
}
