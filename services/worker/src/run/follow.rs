//! Following a conversation to its confirmed end: the session socket with replay after the
//! last journaled event, reconnects, a terminal status confirmed over REST, events the socket
//! missed read over REST, user messages delivered as they come, every durable event journaled.

use std::time::Duration;

use cadenza_agent_client::{
    AgentEvent, CLOSE_NOT_FOUND, CLOSE_UNAUTHORIZED, Error as AgentError, ExecutionStatus,
    SessionFrame, TypedEvent,
};
use cadenza_crypto::Redactor;
use cadenza_domain::{EventKind, TerminalCode, TerminalReason};
use cadenza_storage::run_messages;
use tokio::time::Instant;

use super::control::{RunControl, Signal};
use super::journal::RunJournal;
use super::outcome::fail;
use crate::agent::{AgentSession, EventSocket};
use crate::normalize::{bound_json, normalize};
use crate::retry::Backoff;
use crate::runtime::ContainerRuntime;

/// Consecutive failed socket (re)connects before the agent counts as unreachable.
const MAX_RECONNECTS: u32 = 10;
/// How long a terminal status seen on the socket may take to show up over REST.
pub(crate) const CONFIRM_BUDGET: Duration = Duration::from_secs(30);

/// How much one run may journal, and how long a follower waits for REST to confirm an end.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FollowLimits {
    /// The largest journal entry (long text is cut, with a marker).
    pub(crate) max_event_bytes: usize,
    /// The most agent events one run may journal.
    pub(crate) max_events_per_run: i64,
    /// How long a terminal status seen on the socket may take to show up over REST.
    pub(crate) confirm_budget: Duration,
}

/// Where a turn starts reading, and what it sent to start.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cursor {
    /// The last agent event already journaled: (agent seq, event id).
    pub(crate) after: Option<(i64, String)>,
    /// Messages sent to the conversation whose user-message event is not journaled yet:
    /// (text, correlation id).
    pub(crate) sent: Vec<(String, uuid::Uuid)>,
}

/// What a follower reads from and writes to.
#[derive(Clone, Copy)]
pub(crate) struct FollowContext<'a> {
    pub(crate) agent: &'a dyn AgentSession,
    pub(crate) runtime: &'a dyn ContainerRuntime,
    pub(crate) journal: &'a RunJournal,
    pub(crate) redactor: &'a Redactor,
    pub(crate) limits: FollowLimits,
    pub(crate) conversation_id: uuid::Uuid,
    pub(crate) container: &'a str,
}

pub(crate) struct Follower<'a> {
    ctx: FollowContext<'a>,
    sent: Vec<(String, uuid::Uuid)>,
    /// The correlation id of the last user message journaled: later events are its effects.
    correlation: Option<uuid::Uuid>,
    /// The agent-server seq of the last journaled durable event (-1: none).
    last_seq: i64,
    last_event_id: Option<String>,
    /// The detail of the last `ConversationErrorEvent`, for the failure reason.
    pub(crate) last_error: Option<String>,
    /// Agent events journaled by this turn.
    journaled: i64,
}

enum Step {
    /// The socket saw a terminal status: confirm it over REST.
    TerminalHint,
    /// The socket dropped: reconnect after `last_seq`.
    Reconnect(String),
}

impl<'a> Follower<'a> {
    pub(crate) fn new(ctx: FollowContext<'a>, cursor: Cursor) -> Self {
        Self {
            ctx,
            sent: cursor.sent,
            correlation: None,
            last_seq: cursor.after.as_ref().map_or(-1, |(seq, _)| *seq),
            last_event_id: cursor.after.map(|(_, id)| id),
            last_error: None,
            journaled: 0,
        }
    }

    /// Follows the conversation to a confirmed terminal status, or to `deadline` (the agent is
    /// interrupted and the run times out after `budget`).
    pub(crate) async fn follow(
        &mut self,
        control: &mut RunControl,
        deadline: Instant,
        budget: Duration,
    ) -> Result<ExecutionStatus, TerminalReason> {
        let mut failures = 0u32;
        loop {
            let step = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = self.ctx.agent.interrupt(self.ctx.conversation_id).await;
                    return Err(fail(
                        TerminalCode::TimedOut,
                        format!("the run exceeded its time budget of {budget:?}"),
                    ));
                }
                step = self.stream_once(control) => step?,
            };
            match step {
                Step::TerminalHint => {
                    if let Some(status) = self.confirm().await? {
                        self.reconcile_over_rest(control).await?;
                        return Ok(status);
                    }
                    // Not terminal after all (a stop hook vetoed it): keep following.
                    failures = 0;
                }
                Step::Reconnect(why) => {
                    failures += 1;
                    if let Some(exit) = self.ctx.runtime.exit_status(self.ctx.container).await {
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
                    tokio::select! {
                        reason = control.stopped() => return Err(self.stop(control, reason).await),
                        _ = tokio::time::sleep(Duration::from_millis(100 * u64::from(failures))) => {}
                    }
                }
            }
        }
    }

    /// A stop while following: a cancel stops the agent first, so it does nothing more while
    /// the container goes; a detach leaves it working for the next holder.
    async fn stop(&self, control: &mut RunControl, reason: TerminalReason) -> TerminalReason {
        if !control.detached() {
            let _ = self.ctx.agent.interrupt(self.ctx.conversation_id).await;
        }
        reason
    }

    /// One socket connection: replay after `last_seq`, then live, until a terminal hint or a
    /// drop. Stops and messages to deliver interrupt the wait for the next frame.
    async fn stream_once(&mut self, control: &mut RunControl) -> Result<Step, TerminalReason> {
        let mut socket: Box<dyn EventSocket> = match self
            .ctx
            .agent
            .open_session(self.ctx.conversation_id, Some(self.last_seq))
            .await
        {
            Ok(socket) => socket,
            Err(err) => return Ok(Step::Reconnect(err.to_string())),
        };
        loop {
            // Reading a frame is cancel-safe (the socket keeps what it has not yielded), and so
            // is waiting for a signal: either can interrupt the other without losing anything.
            let frame = tokio::select! {
                frame = socket.next_frame() => frame,
                signal = control.signal() => match signal {
                    Signal::Stop(reason) => return Err(self.stop(control, reason).await),
                    Signal::Deliver => {
                        self.deliver_messages(control).await;
                        continue;
                    }
                },
            };
            match frame {
                Ok(SessionFrame::Durable { seq, event }) => {
                    if seq <= self.last_seq {
                        continue;
                    }
                    self.journal(control, Some(seq), &event).await?;
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
                        && (code == CLOSE_UNAUTHORIZED || code == CLOSE_NOT_FOUND)
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
    /// idle) and records each as delivered. One that fails is taken again when next offered.
    async fn deliver_messages(&mut self, control: &mut RunControl) {
        for message in control.take_messages() {
            match self
                .ctx
                .agent
                .send_message(self.ctx.conversation_id, &message.text, true)
                .await
            {
                // A full server saved the message anyway and runs it when it can.
                Ok(()) | Err(AgentError::CapacityFull { .. }) => {
                    self.sent
                        .push((message.text.clone(), message.correlation_id));
                    let marked = async {
                        let mut conn = self.ctx.journal.pool().acquire().await?;
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
                        error = %self.ctx.redactor.redact(&err.to_string()),
                        "sending a message failed; retrying at the next heartbeat"
                    );
                    control.release(message.id);
                }
            }
        }
    }

    /// Polls the conversation until REST agrees the status is terminal. `None` when it stays
    /// non-terminal for the whole budget.
    async fn confirm(&self) -> Result<Option<ExecutionStatus>, TerminalReason> {
        let deadline = Instant::now() + self.ctx.limits.confirm_budget;
        loop {
            match self
                .ctx
                .agent
                .get_conversation(self.ctx.conversation_id)
                .await
            {
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
    async fn reconcile_over_rest(
        &mut self,
        control: &mut RunControl,
    ) -> Result<(), TerminalReason> {
        let missed = match self
            .ctx
            .agent
            .events_after(self.ctx.conversation_id, self.last_event_id.as_deref())
            .await
        {
            Ok(events) => events,
            Err(err) => {
                tracing::warn!(
                    error = %self.ctx.redactor.redact(&err.to_string()),
                    "reconciling events over REST failed"
                );
                return Ok(());
            }
        };
        for event in missed {
            self.journal(control, None, &event).await?;
            self.last_event_id = Some(event.id.clone());
        }
        Ok(())
    }

    async fn journal(
        &mut self,
        control: &mut RunControl,
        seq: Option<i64>,
        event: &AgentEvent,
    ) -> Result<(), TerminalReason> {
        if let TypedEvent::ConversationError(error) = event.typed() {
            self.last_error = Some(format!("{}: {}", error.code, error.detail));
        }
        let (kind, mut payload) = normalize(event, seq);
        if kind == EventKind::Message && payload["role"] == "user" {
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
        self.ctx.redactor.redact_json(&mut payload);
        self.ctx.redactor.redact_json(&mut raw);
        // Bounded: a journal entry is at most `max_event_bytes` (long text cut, with a marker),
        // and a run has at most `max_events_per_run` of them.
        bound_json(&mut payload, self.ctx.limits.max_event_bytes / 2);
        bound_json(&mut raw, self.ctx.limits.max_event_bytes / 2);
        self.journaled += 1;
        if self.journaled > self.ctx.limits.max_events_per_run {
            return Err(fail(
                TerminalCode::AgentError,
                format!(
                    "the agent produced more than {} journal entries, the most one run may have \
                     (CADENZA_MAX_EVENTS_PER_RUN); the run was stopped",
                    self.ctx.limits.max_events_per_run
                ),
            ));
        }
        let mut entry = self.ctx.journal.entry(kind, payload);
        entry.raw = Some(raw);
        entry.source_event_id = (!event.id.is_empty()).then(|| event.id.clone());
        entry.source_seq = seq;
        self.ctx.journal.append(control, entry).await
    }
}

/// How a turn's task reaches the agent.
#[derive(Debug, Clone)]
pub(crate) enum Prompt {
    /// A fresh turn (`running` just committed): send it.
    Send { text: String },
    /// An adopted turn, already `running`: send it unless the conversation has it already
    /// (as a user message after `after`, the event the previous turn ended with).
    Ensure { text: String, after: Option<String> },
}

/// Gives the agent its task. Sent at most once per conversation: an adopted turn first looks
/// for it among the conversation's user messages; a send that failed in transport is looked for
/// before it is sent again.
pub(crate) async fn deliver_prompt(
    agent: &dyn AgentSession,
    conversation: uuid::Uuid,
    prompt: Prompt,
    control: &mut RunControl,
) -> Result<(), TerminalReason> {
    let (text, after, mut check_first) = match prompt {
        Prompt::Send { text } => (text, None, false),
        Prompt::Ensure { text, after } => (text, after, true),
    };
    let mut pause = Backoff::for_agent();
    for _ in 0..5 {
        if check_first {
            match agent.events_after(conversation, after.as_deref()).await {
                Ok(events) => {
                    let delivered = events.iter().any(|event| {
                        matches!(event.typed(), TypedEvent::Message(message)
                            if message.role == "user" && message.text == text)
                    });
                    if delivered {
                        return Ok(());
                    }
                }
                Err(err) if err.is_retryable() && !control.stopping() => {
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
        match agent.send_message(conversation, &text, true).await {
            Ok(()) | Err(AgentError::CapacityFull { .. }) => return Ok(()),
            Err(err) if err.is_retryable() && !control.stopping() => {
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

/// Retries an idempotent agent-server call on transport failures, a few times.
pub(crate) async fn with_retries<T, F, Fut>(
    control: &mut RunControl,
    mut call: F,
) -> Result<T, AgentError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AgentError>>,
{
    let mut pause = Backoff::for_agent();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match call().await {
            Ok(value) => return Ok(value),
            Err(err) if err.is_retryable() && attempts < 5 && !control.stopping() => {
                tracing::debug!(error = %err, attempts, "agent-server call failed; retrying");
                tokio::time::sleep(pause.next()).await;
            }
            Err(err) => return Err(err),
        }
    }
}
