//! Every write a driver makes for its run, as the run's holder: each carries the attempt's
//! fence (refused once another holder has the run), rides out Postgres outages for
//! `database_outage_budget`, and what it journals is published after the commit.

use std::time::Duration;

use cadenza_bus::Bus;
use cadenza_domain::{EventKind, Fence, OrgId, Run, RunEvent, RunId, RunState, TerminalReason};
use cadenza_storage::journal::{self, NewJournalEvent};
use cadenza_storage::runs::{self, Actor};
use cadenza_storage::{PgPool, StorageError, workspaces};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::control::{RunControl, lost_reason};
use super::outcome::internal;
use crate::retry::Backoff;

/// The journal writer of one run attempt.
#[derive(Clone)]
pub(crate) struct RunJournal {
    pool: PgPool,
    bus: Bus,
    pub(crate) run_id: RunId,
    pub(crate) org_id: OrgId,
    pub(crate) fence: Fence,
    outage_budget: Duration,
}

/// Keeps the workspace for follow-up turns when the run ends.
pub(crate) struct Keep<'a> {
    pub(crate) container: &'a str,
    pub(crate) idle_ttl: Duration,
}

impl RunJournal {
    pub(crate) fn new(
        pool: PgPool,
        bus: Bus,
        run: &Run,
        worker: cadenza_domain::WorkerId,
        outage_budget: Duration,
    ) -> Self {
        Self {
            pool,
            bus,
            run_id: run.id,
            org_id: run.org_id,
            fence: Fence {
                worker,
                epoch: run.lease_epoch,
            },
            outage_budget,
        }
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// An entry of this run, as its holder.
    pub(crate) fn entry(&self, kind: EventKind, payload: serde_json::Value) -> NewJournalEvent {
        NewJournalEvent {
            run_id: self.run_id,
            org_id: self.org_id,
            kind,
            payload,
            raw: None,
            source_event_id: None,
            source_seq: None,
            occurred_at: OffsetDateTime::now_utc(),
            fence: Some(self.fence),
        }
    }

    /// One of the run's writes. A transient failure (Postgres restarting, a full pool) is
    /// retried for the outage budget while the agent keeps working (its events wait in the
    /// agent-server); a refused fence lets the run go.
    pub(crate) async fn write<T, F, Fut>(
        &self,
        control: &mut RunControl,
        mut write: F,
    ) -> Result<T, TerminalReason>
    where
        F: FnMut(PgPool) -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        let deadline = Instant::now() + self.outage_budget;
        let mut pause = Backoff::for_storage();
        loop {
            match write(self.pool.clone()).await {
                Ok(value) => return Ok(value),
                Err(err)
                    if err.is_transient() && Instant::now() < deadline && !control.stopping() =>
                {
                    tracing::warn!(error = %err, "a write for the run failed; retrying");
                    tokio::time::sleep(pause.next()).await;
                }
                Err(err) => return Err(held(control, err)),
            }
        }
    }

    /// Journals one entry (a replayed agent event is journaled once) and publishes it.
    pub(crate) async fn append(
        &self,
        control: &mut RunControl,
        entry: NewJournalEvent,
    ) -> Result<(), TerminalReason> {
        let appended = self
            .write(control, |pool| {
                let entry = entry.clone();
                async move {
                    let mut conn = pool.acquire().await?;
                    journal::append(&mut conn, entry).await
                }
            })
            .await?;
        if let Some(entry) = appended {
            self.bus.publish_journal_event(&entry).await;
        }
        Ok(())
    }

    /// Commits `running` with the run's conversation, in one transaction, and publishes it.
    pub(crate) async fn commit_running(
        &self,
        control: &mut RunControl,
        conversation: uuid::Uuid,
    ) -> Result<(), TerminalReason> {
        let fence = self.fence;
        let run_id = self.run_id;
        let done = async {
            let mut tx = self.pool.begin().await?;
            runs::set_conversation(&mut tx, run_id, fence, conversation).await?;
            let done = runs::transition(
                &mut tx,
                run_id,
                RunState::Provisioning,
                &RunEvent::AgentStarted,
                Actor::LeaseHolder(fence),
                None,
            )
            .await?;
            tx.commit().await?;
            Ok::<_, StorageError>(done)
        }
        .await
        .map_err(|err| held(control, err))?;
        self.bus.publish_journal_event(&done.entry).await;
        Ok(())
    }

    /// Records the run's end (and keeps its workspace, when asked), retrying transient failures
    /// for the outage budget. Returns whether the end was recorded; when it was not, the run is
    /// not ours (or the outage outlasted the budget), and the container is left to whoever
    /// adopts the run.
    pub(crate) async fn record_end(
        &self,
        from: RunState,
        event: &RunEvent,
        correlation: Option<uuid::Uuid>,
        keep: Option<Keep<'_>>,
    ) -> bool {
        let deadline = Instant::now() + self.outage_budget;
        let mut pause = Backoff::for_storage();
        let correlation = matches!(event, RunEvent::Cancelled(_))
            .then_some(correlation)
            .flatten();
        loop {
            let result = async {
                let mut tx = self.pool.begin().await?;
                let done = runs::transition_correlated(
                    &mut tx,
                    self.run_id,
                    from,
                    event,
                    Actor::LeaseHolder(self.fence),
                    None,
                    correlation,
                )
                .await?;
                if let Some(keep) = &keep {
                    workspaces::keep(
                        &mut tx,
                        self.run_id,
                        keep.container,
                        self.fence.worker,
                        keep.idle_ttl,
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
                    self.bus.publish_journal_event(&done.entry).await;
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
}

/// A refused write: `Fenced` (or a compare-and-set conflict on a holder's transition) means
/// another holder has the run, and the driver lets it go; anything else fails the run.
pub(crate) fn held(control: &mut RunControl, err: StorageError) -> TerminalReason {
    match err {
        StorageError::Fenced(_) | StorageError::Conflict(_) => {
            control.mark_lost();
            lost_reason()
        }
        other => internal(other),
    }
}

/// Commits a transition of a run this worker holds, outside a driver (accepting, losing a
/// workspace), and publishes its journal entry. One try: the caller's next round retries.
pub(crate) async fn commit_transition(
    pool: &PgPool,
    bus: &Bus,
    run: &Run,
    fence: Fence,
    event: &RunEvent,
    reason_correlation: Option<uuid::Uuid>,
) -> Result<Run, StorageError> {
    let mut tx = pool.begin().await?;
    let done = runs::transition_correlated(
        &mut tx,
        run.id,
        run.state,
        event,
        Actor::LeaseHolder(fence),
        None,
        reason_correlation,
    )
    .await?;
    tx.commit().await?;
    bus.publish_journal_event(&done.entry).await;
    Ok(done.run)
}
