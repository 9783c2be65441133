//! Drives one run attempt through its phases (see [`phase`]) to a recorded end, then cleans
//! up. Every step is bounded in time; every way out (success, failure, timeout, cancel) records
//! a terminal reason, except letting go of the run (a shutdown, or another holder has it),
//! which records nothing and leaves the container to whoever adopts the run.

pub(crate) mod control;
mod follow;
mod journal;
mod outcome;
mod phase;
mod provision;
mod repository;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use cadenza_crypto::Redactor;
use cadenza_domain::{Project, Run, RunEvent, RunState, Scope, TerminalCode};
use cadenza_storage::{projects, runs, workspaces};
use rand::RngCore;
use secrecy::SecretString;
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::Instrument;

use self::control::{Progress, RunControl};
use self::journal::Keep;
pub(crate) use self::journal::{RunJournal, commit_transition};
use self::outcome::{fail, internal, keep_workspace};
use self::phase::Phase;
use crate::Core;
use crate::secrets::{self, RunSecrets};

/// How a driver starts: a run just accepted, or a run adopted in its running container.
pub(crate) enum Entry {
    Fresh,
    /// The container (named by the adopter's engine sweep) in which the run's agent works.
    Resume(String),
}

/// One attempt of a run, as its phases need it.
pub(crate) struct Attempt {
    pub(crate) core: Arc<Core>,
    pub(crate) run: Run,
    pub(crate) project: Project,
    /// The workspace container's name (a follow-up turn works in its parent's).
    pub(crate) container: String,
    /// The agent-server's session key: a fresh one for a new container, else the container's.
    pub(crate) session_key: Option<SecretString>,
    pub(crate) secrets: RunSecrets,
    pub(crate) journal: RunJournal,
    /// The end of the run's time budget, counted from its start (also for a run adopted
    /// half-way).
    pub(crate) deadline: Instant,
}

fn random_key() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    SecretString::from(hex::encode(bytes))
}

/// The name of the container a fresh attempt makes.
pub(crate) fn container_name(run: &Run) -> String {
    format!("cadenza-run-{}-{}", run.id, run.attempt)
}

impl Attempt {
    /// Reads what the attempt needs (its project, its secrets, decrypted before anything
    /// starts: a missing or unreadable one fails the run at once, naming it) and the phase it
    /// starts in.
    async fn prepare(
        core: &Arc<Core>,
        run: &Run,
        journal: RunJournal,
        container: String,
        entry: Entry,
        follow_up_of: Option<cadenza_domain::RunId>,
    ) -> Result<(Attempt, Phase), cadenza_domain::TerminalReason> {
        let spent = run
            .provisioning_at
            .map(|started| OffsetDateTime::now_utc() - started)
            .and_then(|spent| Duration::try_from(spent).ok())
            .unwrap_or_default();
        let deadline = Instant::now() + core.config.run_timeout.saturating_sub(spent);
        let project = async {
            let mut conn = core.pool.acquire().await?;
            projects::get(&mut conn, &Scope::Org(run.org_id), run.project_id).await
        }
        .await
        .map_err(internal)?;
        let phase = match (entry, follow_up_of) {
            (Entry::Resume(_), follow_up_of) => Phase::Reattach { follow_up_of },
            (Entry::Fresh, Some(parent)) => Phase::FollowUp { parent },
            (Entry::Fresh, None) => Phase::Provision,
        };
        // The session key is redacted like a secret: the agent can read it from its
        // environment and print it.
        let session_key = match phase {
            Phase::Provision => Some(random_key()),
            _ => core.runtime.session_key(&container).await,
        };
        let secrets = secrets::load(
            &core.pool,
            &core.keyring,
            run,
            &project,
            provision::operator_llm_key(&core.config, &core.images, &project)?,
            session_key.as_ref(),
        )
        .await?;
        let attempt = Attempt {
            core: core.clone(),
            run: run.clone(),
            project,
            container,
            session_key,
            secrets,
            journal,
            deadline,
        };
        Ok((attempt, phase))
    }
}

/// Runs one leased run to its end. `run` is in `provisioning` (a fresh run) or `running` (an
/// adopted one), held by this worker with `run.lease_epoch`.
pub(crate) async fn supervise(core: Arc<Core>, run: Run, mut control: RunControl, entry: Entry) {
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
            _ => container_name(&run),
        };
        let journal = RunJournal::new(
            core.pool.clone(),
            core.bus.clone(),
            &run,
            core.worker.id,
            core.config.database_outage_budget,
        );
        let prepared = Attempt::prepare(
            &core,
            &run,
            journal.clone(),
            container.clone(),
            entry,
            workspace.parent_run_id,
        )
        .await;
        let (state, outcome, redactor) = match prepared {
            Ok((attempt, phase)) => {
                let (state, outcome) = drive(&attempt, phase, &mut control).await;
                (state, outcome, attempt.secrets.redactor.clone())
            }
            Err(reason) => (run.state, Err(reason), Arc::new(Redactor::empty())),
        };
        if control.detached() {
            // Shutting down, or the run is someone else's now: record nothing, leave the
            // container (the next holder adopts it; the engine sweep removes it if no run
            // needs it).
            tracing::info!(state = %state, "let go of the run");
            return;
        }
        // Everything recorded about the run, its end reason included, passes through the
        // run's redactor.
        let outcome = outcome
            .map(|message| redactor.redact(&message).into_owned())
            .map_err(|reason| {
                cadenza_domain::TerminalReason::new(
                    reason.code,
                    redactor.redact(&reason.message).into_owned(),
                )
            });
        // A crash between recording the end and removing the container leaves a container
        // the engine sweep removes, never an end that is lost.
        let idle_ttl = core.config.workspace_idle_ttl;
        let keep = keep_workspace(outcome.is_ok(), idle_ttl, control.stopping());
        let event = cadenza_domain::end_event(outcome);
        let recorded = journal
            .record_end(
                state,
                &event,
                control.correlation(),
                keep.then_some(Keep {
                    container: &container,
                    idle_ttl,
                }),
            )
            .await;
        if recorded {
            control.report(Progress::Ended);
            if !keep {
                core.runtime.remove_workspace(&container, &container).await;
            }
        }
    }
    .instrument(span)
    .await
}

/// Runs the phases from `phase` to the end; returns the state the run was in when they
/// stopped and the agent's final message or why the run cannot succeed.
async fn drive(
    attempt: &Attempt,
    mut phase: Phase,
    control: &mut RunControl,
) -> (RunState, Result<String, cadenza_domain::TerminalReason>) {
    loop {
        let state = phase.run_state();
        if let Phase::Ended(message) = phase {
            return (state, Ok(message));
        }
        match phase.next(attempt, control).await {
            Ok(next) => {
                if next.run_state() == RunState::Running && state != RunState::Running {
                    control.report(Progress::Running);
                }
                phase = next;
            }
            Err(reason) => return (state, Err(reason)),
        }
    }
}

/// A driver panicked: the run fails with a reason (if this worker still holds it at the same
/// epoch) and its own container goes.
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
    let journal = RunJournal::new(
        core.pool.clone(),
        core.bus.clone(),
        &current,
        core.worker.id,
        core.config.database_outage_budget,
    );
    if journal
        .record_end(current.state, &RunEvent::Failed(reason), None, None)
        .await
    {
        let container = container_name(run);
        core.runtime.remove_workspace(&container, &container).await;
    }
}
