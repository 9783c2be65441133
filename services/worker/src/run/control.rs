//! How the rest of the worker talks to a run's driver: a mailbox of commands (cancel, lost,
//! messages to deliver) and a progress report back. No flags are shared: the heartbeat and the
//! chores send, the driver alone reads and decides.

use std::collections::{HashSet, VecDeque};

use cadenza_domain::{TerminalCode, TerminalReason};
use cadenza_storage::run_messages::RunMessage;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Commands a driver may be sent; more than this many unread and a send waits for the next
/// heartbeat (every command is repeated until it takes effect).
const MAILBOX: usize = 64;

/// A command for a run's driver.
#[derive(Debug, Clone)]
pub(crate) enum RunCommand {
    /// Someone cancelled the run: it ends `cancelled`, with the request's correlation id.
    Cancel { correlation: Option<uuid::Uuid> },
    /// The worker no longer holds the run (another holder or attempt has it): stop, record
    /// nothing, leave the container.
    Lost,
    /// A user message for the conversation. Offered at every heartbeat until delivered; the
    /// driver sends each one once.
    Deliver(RunMessage),
}

/// How far a driver has come, as the rest of the worker needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Preparing the workspace: the agent does not have its task.
    Preparing,
    /// `running` is committed: the agent has (or is being given) its task, and a shutdown may
    /// leave it working for the next holder.
    Running,
    /// The run's end is recorded: only clean-up is left; nothing can take the run away.
    Ended,
}

/// The worker's side of a run it drives: the lease epoch it holds, the mailbox, the progress.
#[derive(Debug, Clone)]
pub(crate) struct RunHandle {
    pub(crate) epoch: i64,
    /// A cancel was sent: the chores do not send (and log) it again.
    pub(crate) cancel_sent: bool,
    commands: mpsc::Sender<RunCommand>,
    progress: watch::Receiver<Progress>,
}

impl RunHandle {
    /// Sends a command without waiting; a full mailbox drops it (it is sent again at the next
    /// heartbeat). Returns whether it was taken.
    pub(crate) fn send(&self, command: RunCommand) -> bool {
        self.commands.try_send(command).is_ok()
    }

    pub(crate) fn progress(&self) -> Progress {
        *self.progress.borrow()
    }
}

/// Why a driver stops early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopping {
    /// Cancelled by a user (or because its project or org was deleted).
    Cancelled,
    /// The worker lets go of the run: it shuts down, or no longer holds the run.
    Detached(Detach),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detach {
    Shutdown,
    Lost,
}

/// The driver's side: reads the mailbox, keeps what it learned (a cancel, a lost lease, the
/// messages to deliver), and reports progress.
pub(crate) struct RunControl {
    commands: mpsc::Receiver<RunCommand>,
    progress: watch::Sender<Progress>,
    shutdown: CancellationToken,
    stopping: Option<Stopping>,
    correlation: Option<uuid::Uuid>,
    /// Messages waiting to be sent to the conversation.
    inbox: VecDeque<RunMessage>,
    /// Messages queued or sent by this driver, so a repeated offer is not sent twice.
    taken: HashSet<uuid::Uuid>,
}

/// A new mailbox for a run held with `epoch`; `shutdown` is the worker's detach token.
pub(crate) fn channel(
    epoch: i64,
    shutdown: CancellationToken,
    start: Progress,
) -> (RunHandle, RunControl) {
    let (commands_tx, commands) = mpsc::channel(MAILBOX);
    let (progress, progress_rx) = watch::channel(start);
    (
        RunHandle {
            epoch,
            cancel_sent: false,
            commands: commands_tx,
            progress: progress_rx,
        },
        RunControl {
            commands,
            progress,
            shutdown,
            stopping: None,
            correlation: None,
            inbox: VecDeque::new(),
            taken: HashSet::new(),
        },
    )
}

impl RunControl {
    fn take(&mut self, command: RunCommand) {
        match command {
            // A cancel wins over a detach that has not yet been acted on: the user asked for
            // an end, and recording it is still possible.
            RunCommand::Cancel { correlation } => {
                if !matches!(self.stopping, Some(Stopping::Cancelled)) {
                    self.stopping = Some(Stopping::Cancelled);
                    self.correlation = correlation;
                }
            }
            RunCommand::Lost => {
                if self.stopping.is_none() {
                    self.stopping = Some(Stopping::Detached(Detach::Lost));
                }
            }
            RunCommand::Deliver(message) => {
                if self.taken.insert(message.id) {
                    self.inbox.push_back(message);
                }
            }
        }
    }

    /// Reads what the mailbox holds now, without waiting.
    fn refresh(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            self.take(command);
        }
        if self.stopping.is_none() && self.shutdown.is_cancelled() {
            self.stopping = Some(Stopping::Detached(Detach::Shutdown));
        }
    }

    /// The reason to stop, if a stop was asked for.
    fn reason(&self) -> Option<TerminalReason> {
        self.stopping.map(|stopping| match stopping {
            Stopping::Cancelled => cancelled_reason(self.correlation),
            Stopping::Detached(Detach::Shutdown) => shutdown_reason(),
            Stopping::Detached(Detach::Lost) => lost_reason(),
        })
    }

    /// Resolves when the run should stop, with the reason to record (a detach records nothing:
    /// see [`RunControl::detached`]). Messages that arrive meanwhile are kept for delivery.
    /// Cancel-safe.
    pub(crate) async fn stopped(&mut self) -> TerminalReason {
        loop {
            self.refresh();
            if let Some(reason) = self.reason() {
                return reason;
            }
            self.wait().await;
        }
    }

    /// Waits for the next command (or the shutdown) and takes it. Cancel-safe.
    async fn wait(&mut self) {
        tokio::select! {
            command = self.commands.recv() => match command {
                Some(command) => self.take(command),
                // The worker dropped the handle: it is going away.
                None => {
                    self.stopping.get_or_insert(Stopping::Detached(Detach::Shutdown));
                }
            },
            _ = self.shutdown.cancelled() => {}
        }
    }

    /// Resolves when a message waits for delivery or the run should stop. Cancel-safe.
    pub(crate) async fn signal(&mut self) -> Signal {
        loop {
            self.refresh();
            if let Some(reason) = self.reason() {
                return Signal::Stop(reason);
            }
            if !self.inbox.is_empty() {
                return Signal::Deliver;
            }
            self.wait().await;
        }
    }

    /// Whether a stop (of any kind) was asked for.
    pub(crate) fn stopping(&mut self) -> bool {
        self.refresh();
        self.stopping.is_some()
    }

    /// The worker lets go of the run (shutdown or lost) and nobody cancelled it: the driver
    /// records nothing and leaves the container to the next holder.
    pub(crate) fn detached(&mut self) -> bool {
        self.refresh();
        matches!(self.stopping, Some(Stopping::Detached(_)))
    }

    /// A write was refused because another holder has the run.
    pub(crate) fn mark_lost(&mut self) {
        self.take(RunCommand::Lost);
    }

    /// The cancel request's correlation id, when the run was cancelled.
    pub(crate) fn correlation(&self) -> Option<uuid::Uuid> {
        matches!(self.stopping, Some(Stopping::Cancelled))
            .then_some(self.correlation)
            .flatten()
    }

    /// The messages to send now.
    pub(crate) fn take_messages(&mut self) -> Vec<RunMessage> {
        self.inbox.drain(..).collect()
    }

    /// A message that could not be sent: it is taken again when next offered.
    pub(crate) fn release(&mut self, id: uuid::Uuid) {
        self.taken.remove(&id);
    }

    pub(crate) fn report(&self, progress: Progress) {
        self.progress.send_replace(progress);
    }
}

/// What [`RunControl::signal`] saw.
#[derive(Debug)]
pub(crate) enum Signal {
    Stop(TerminalReason),
    Deliver,
}

pub(crate) fn cancelled_reason(correlation: Option<uuid::Uuid>) -> TerminalReason {
    let message = match correlation {
        Some(id) => format!("cancelled on request (correlation id {id})"),
        None => "cancelled on request".to_owned(),
    };
    TerminalReason::new(TerminalCode::Cancelled, message)
}

pub(crate) fn shutdown_reason() -> TerminalReason {
    TerminalReason::new(
        TerminalCode::WorkerShutdown,
        "the worker shut down before the run finished",
    )
}

pub(crate) fn lost_reason() -> TerminalReason {
    TerminalReason::new(
        TerminalCode::Internal,
        "this worker no longer holds the run (another holder or attempt has it)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> RunMessage {
        RunMessage {
            id: uuid::Uuid::new_v4(),
            run_id: cadenza_domain::RunId::new(),
            org_id: cadenza_domain::OrgId::new(),
            correlation_id: uuid::Uuid::new_v4(),
            text: text.to_owned(),
            created_at: time::OffsetDateTime::now_utc(),
            delivered_at: None,
        }
    }

    #[tokio::test]
    async fn a_cancel_ends_the_wait_with_its_correlation_and_wins_over_a_later_lost() {
        let (handle, mut control) = channel(3, CancellationToken::new(), Progress::Preparing);
        assert!(!control.stopping());
        let correlation = uuid::Uuid::new_v4();
        assert!(handle.send(RunCommand::Cancel {
            correlation: Some(correlation)
        }));
        assert!(handle.send(RunCommand::Lost));
        let reason = control.stopped().await;
        assert_eq!(reason.code, TerminalCode::Cancelled);
        assert!(reason.message.contains(&correlation.to_string()));
        assert!(!control.detached());
        assert_eq!(control.correlation(), Some(correlation));
    }

    #[tokio::test]
    async fn a_lost_lease_or_a_shutdown_detaches_unless_cancelled_later() {
        let shutdown = CancellationToken::new();
        let (handle, mut control) = channel(1, shutdown.clone(), Progress::Running);
        shutdown.cancel();
        assert_eq!(control.stopped().await.code, TerminalCode::WorkerShutdown);
        assert!(control.detached());
        // A cancel that arrives after the detach is still the user's wish: it is recorded.
        handle.send(RunCommand::Cancel { correlation: None });
        assert_eq!(control.stopped().await.code, TerminalCode::Cancelled);
        assert!(!control.detached());

        let (handle, mut control) = channel(1, CancellationToken::new(), Progress::Running);
        handle.send(RunCommand::Lost);
        assert_eq!(control.stopped().await.code, TerminalCode::Internal);
        assert!(control.detached());
        assert_eq!(control.correlation(), None);
    }

    #[tokio::test]
    async fn a_message_offered_twice_is_delivered_once_and_again_after_a_release() {
        let (handle, mut control) = channel(1, CancellationToken::new(), Progress::Running);
        let hello = message("hello");
        handle.send(RunCommand::Deliver(hello.clone()));
        handle.send(RunCommand::Deliver(hello.clone()));
        assert!(matches!(control.signal().await, Signal::Deliver));
        let taken = control.take_messages();
        assert_eq!(taken.len(), 1);
        handle.send(RunCommand::Deliver(hello.clone()));
        control.refresh();
        assert!(control.take_messages().is_empty(), "taken: not again");
        control.release(hello.id);
        handle.send(RunCommand::Deliver(hello.clone()));
        assert!(matches!(control.signal().await, Signal::Deliver));
        assert_eq!(control.take_messages()[0].id, hello.id);
    }

    #[tokio::test]
    async fn progress_is_seen_by_the_handle_and_a_dropped_handle_detaches() {
        let (handle, mut control) = channel(1, CancellationToken::new(), Progress::Preparing);
        assert_eq!(handle.progress(), Progress::Preparing);
        control.report(Progress::Running);
        assert_eq!(handle.progress(), Progress::Running);
        drop(handle);
        assert_eq!(control.stopped().await.code, TerminalCode::WorkerShutdown);
        assert!(control.detached());
    }
}
