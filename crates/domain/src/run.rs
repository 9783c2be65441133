//! The run lifecycle as a pure state machine.
//!
//! `queued → scheduled → provisioning → running → succeeded | failed | cancelled`, with
//! `retrying` (back to `queued` after a backoff, attempt + 1). The drivers in the services
//! compute the next state here, then persist it with the previous state as a guard
//! (compare-and-set), so two actors can never both move one run.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Scheduled,
    Provisioning,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunState {
    pub const ALL: [RunState; 8] = [
        RunState::Queued,
        RunState::Scheduled,
        RunState::Provisioning,
        RunState::Running,
        RunState::Retrying,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Cancelled,
    ];

    /// The states in which a worker holds the run under a lease (`is_leased`), for queries that
    /// bind them as a list.
    pub const LEASED: [RunState; 3] = [
        RunState::Scheduled,
        RunState::Provisioning,
        RunState::Running,
    ];

    /// The end states (`is_terminal`), for queries that bind them as a list.
    pub const TERMINAL: [RunState; 3] =
        [RunState::Succeeded, RunState::Failed, RunState::Cancelled];

    /// The leased states in which the holder has accepted the run and drives it (its writes for
    /// the run, the journal and the diff among them, are allowed only here).
    pub const DRIVEN: [RunState; 2] = [RunState::Provisioning, RunState::Running];

    /// The names of `states`, as stored, to bind as a `text[]` parameter.
    pub fn names(states: &[RunState]) -> Vec<&'static str> {
        states.iter().map(|state| state.as_str()).collect()
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Scheduled => "scheduled",
            RunState::Provisioning => "provisioning",
            RunState::Running => "running",
            RunState::Retrying => "retrying",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    /// End states: nothing moves a run out of them.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled
        )
    }

    /// States in which a worker holds the run and must keep its lease alive.
    pub const fn is_leased(self) -> bool {
        matches!(
            self,
            RunState::Scheduled | RunState::Provisioning | RunState::Running
        )
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown run state `{0}`")]
pub struct UnknownRunState(pub String);

impl FromStr for RunState {
    type Err = UnknownRunState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownRunState(s.to_owned()))
    }
}

/// Why a run ended (or is being retried), as a stable machine-readable code. The human-readable
/// detail travels beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminalCode {
    /// The agent finished its task.
    AgentFinished,
    /// The agent-server reported an error or a stuck conversation.
    AgentError,
    /// The workspace container could not be created or started (e.g. a missing image).
    ContainerFailed,
    /// The agent-server in the container never became healthy or stopped answering.
    AgentUnreachable,
    /// The agent-server answered and refused what Cadenza sent as malformed (a 4xx such as a
    /// 422 on creating the conversation): the image speaks another version of the contract.
    /// Retrying cannot help; the detail names the refused fields, never their values.
    AgentContract,
    /// The run exceeded its wall-clock budget.
    TimedOut,
    /// The worker holding the run stopped renewing its lease.
    LeaseExpired,
    /// Someone cancelled the run.
    Cancelled,
    /// The worker shut down before the run could finish.
    WorkerShutdown,
    /// The project's repository could not be cloned into the workspace.
    RepositoryUnavailable,
    /// A secret the project refers to is missing or cannot be decrypted.
    SecretUnavailable,
    /// Neither the project nor the worker names an LLM model for an agent that needs one.
    LlmUnconfigured,
    /// A follow-up turn's workspace is gone (its worker stopped or removed it).
    WorkspaceUnavailable,
    /// The project's agent image is not one this instance (or its org) allows.
    ImageRefused,
    /// Anything else: a bug or an infrastructure failure; the detail says which.
    Internal,
}

impl TerminalCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            TerminalCode::AgentFinished => "agent_finished",
            TerminalCode::AgentError => "agent_error",
            TerminalCode::ContainerFailed => "container_failed",
            TerminalCode::AgentUnreachable => "agent_unreachable",
            TerminalCode::AgentContract => "agent_contract",
            TerminalCode::TimedOut => "timed_out",
            TerminalCode::LeaseExpired => "lease_expired",
            TerminalCode::Cancelled => "cancelled",
            TerminalCode::WorkerShutdown => "worker_shutdown",
            TerminalCode::RepositoryUnavailable => "repository_unavailable",
            TerminalCode::SecretUnavailable => "secret_unavailable",
            TerminalCode::LlmUnconfigured => "llm_unconfigured",
            TerminalCode::WorkspaceUnavailable => "workspace_unavailable",
            TerminalCode::ImageRefused => "image_refused",
            TerminalCode::Internal => "internal",
        }
    }
}

impl fmt::Display for TerminalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TerminalCode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const ALL: [TerminalCode; 15] = [
            TerminalCode::ImageRefused,
            TerminalCode::WorkspaceUnavailable,
            TerminalCode::RepositoryUnavailable,
            TerminalCode::SecretUnavailable,
            TerminalCode::LlmUnconfigured,
            TerminalCode::AgentFinished,
            TerminalCode::AgentError,
            TerminalCode::ContainerFailed,
            TerminalCode::AgentUnreachable,
            TerminalCode::AgentContract,
            TerminalCode::TimedOut,
            TerminalCode::LeaseExpired,
            TerminalCode::Cancelled,
            TerminalCode::WorkerShutdown,
            TerminalCode::Internal,
        ];
        ALL.into_iter()
            .find(|code| code.as_str() == s)
            .ok_or_else(|| format!("unknown terminal code `{s}`"))
    }
}

/// The reason recorded on every end state (and on a retry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalReason {
    pub code: TerminalCode,
    pub message: String,
}

impl TerminalReason {
    pub fn new(code: TerminalCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The fencing token of one worker's hold on one run: the worker and the lease epoch it was
/// given (by the scheduler's lease, or by adopting the run after its holder died). Every write
/// the worker makes for the run carries it, and storage refuses the write once the run's epoch
/// has moved on, so a worker that lost a run (a stall, a partition, a takeover) can never write
/// over the current holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    pub worker: crate::ids::WorkerId,
    pub epoch: i64,
}

/// What happened to a run. Each event is legal only from some states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEvent {
    /// The scheduler leased the run to a worker.
    Leased,
    /// The worker accepted the lease and starts creating the workspace.
    ProvisioningStarted,
    /// The agent-server accepted the task.
    AgentStarted,
    /// The agent finished and the end was confirmed.
    Succeeded(TerminalReason),
    /// The run cannot complete.
    Failed(TerminalReason),
    /// Someone asked to stop the run.
    Cancelled(TerminalReason),
    /// The attempt was lost (e.g. its lease expired before the agent started) and will be retried.
    RetryScheduled(TerminalReason),
    /// The retry backoff elapsed.
    Requeued,
}

impl RunEvent {
    pub fn reason(&self) -> Option<&TerminalReason> {
        match self {
            RunEvent::Succeeded(reason)
            | RunEvent::Failed(reason)
            | RunEvent::Cancelled(reason)
            | RunEvent::RetryScheduled(reason) => Some(reason),
            RunEvent::Leased
            | RunEvent::ProvisioningStarted
            | RunEvent::AgentStarted
            | RunEvent::Requeued => None,
        }
    }

    pub const fn name(&self) -> &'static str {
        match self {
            RunEvent::Leased => "leased",
            RunEvent::ProvisioningStarted => "provisioning_started",
            RunEvent::AgentStarted => "agent_started",
            RunEvent::Succeeded(_) => "succeeded",
            RunEvent::Failed(_) => "failed",
            RunEvent::Cancelled(_) => "cancelled",
            RunEvent::RetryScheduled(_) => "retry_scheduled",
            RunEvent::Requeued => "requeued",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a run in state `{from}` cannot take the event `{event}`")]
pub struct IllegalTransition {
    pub from: RunState,
    pub event: &'static str,
}

/// What a transition does to the run's lease (its holder, epoch and expiry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseEffect {
    /// A new lease: the holder named with the event, a fresh expiry, and the next lease epoch,
    /// which fences every earlier holder.
    Grant,
    /// The lease stays as it is: holder, epoch and expiry.
    Keep,
    /// The lease ends (no expiry any more). The last holder stays on record with its epoch, so
    /// its late writes are still recognised as stale.
    Clear,
    /// The lease ends and the holder is forgotten: the run is back in the queue for any worker.
    Release,
}

impl LeaseEffect {
    /// Whether the run holds a lease after a transition with this effect, given whether it held
    /// one before.
    pub const fn leased_after(self, leased_before: bool) -> bool {
        match self {
            LeaseEffect::Grant => true,
            LeaseEffect::Keep => leased_before,
            LeaseEffect::Clear | LeaseEffect::Release => false,
        }
    }
}

/// What a transition does to the run's attempt counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptEffect {
    Same,
    /// A new attempt starts (a retry goes back to the queue).
    Increment,
}

impl AttemptEffect {
    /// What to add to the attempt counter.
    pub const fn delta(self) -> i32 {
        match self {
            AttemptEffect::Same => 0,
            AttemptEffect::Increment => 1,
        }
    }
}

/// The moment a transition records on the run (each is stamped when the run reaches it, again
/// on a later attempt).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Milestone {
    Scheduled,
    Provisioning,
    Running,
    Finished,
}

/// Everything a legal event does to a run: its next state and the effects storage writes with
/// it, in one place, so the SQL takes them as plain values and never re-derives them from
/// state names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub next: RunState,
    pub lease: LeaseEffect,
    pub attempt: AttemptEffect,
    pub milestone: Option<Milestone>,
    /// The reason recorded on the run: set on reaching an end state, cleared by every other
    /// transition (a retry's reason is journaled, not kept on the run).
    pub terminal: Option<TerminalReason>,
}

/// The transition function with its effects, or why the event is not allowed.
pub fn transition(state: RunState, event: &RunEvent) -> Result<Transition, IllegalTransition> {
    use RunState as S;
    let (next, lease, attempt, milestone) = match (state, event) {
        (S::Queued, RunEvent::Leased) => (
            S::Scheduled,
            LeaseEffect::Grant,
            AttemptEffect::Same,
            Some(Milestone::Scheduled),
        ),
        (S::Scheduled, RunEvent::ProvisioningStarted) => (
            S::Provisioning,
            LeaseEffect::Keep,
            AttemptEffect::Same,
            Some(Milestone::Provisioning),
        ),
        (S::Provisioning, RunEvent::AgentStarted) => (
            S::Running,
            LeaseEffect::Keep,
            AttemptEffect::Same,
            Some(Milestone::Running),
        ),
        (S::Running, RunEvent::Succeeded(_)) => (
            S::Succeeded,
            LeaseEffect::Clear,
            AttemptEffect::Same,
            Some(Milestone::Finished),
        ),
        (from, RunEvent::Failed(_)) if !from.is_terminal() => (
            S::Failed,
            LeaseEffect::Clear,
            AttemptEffect::Same,
            Some(Milestone::Finished),
        ),
        (from, RunEvent::Cancelled(_)) if !from.is_terminal() => (
            S::Cancelled,
            LeaseEffect::Clear,
            AttemptEffect::Same,
            Some(Milestone::Finished),
        ),
        (from, RunEvent::RetryScheduled(_)) if from.is_leased() => {
            (S::Retrying, LeaseEffect::Clear, AttemptEffect::Same, None)
        }
        (S::Retrying, RunEvent::Requeued) => (
            S::Queued,
            LeaseEffect::Release,
            AttemptEffect::Increment,
            None,
        ),
        (from, event) => {
            return Err(IllegalTransition {
                from,
                event: event.name(),
            });
        }
    };
    let terminal = event.reason().filter(|_| next.is_terminal()).cloned();
    Ok(Transition {
        next,
        lease,
        attempt,
        milestone,
        terminal,
    })
}

/// The transition function: the next state, or why the event is not allowed.
pub fn apply(state: RunState, event: &RunEvent) -> Result<RunState, IllegalTransition> {
    transition(state, event).map(|transition| transition.next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason() -> TerminalReason {
        TerminalReason::new(TerminalCode::Internal, "test")
    }

    fn every_event() -> Vec<RunEvent> {
        vec![
            RunEvent::Leased,
            RunEvent::ProvisioningStarted,
            RunEvent::AgentStarted,
            RunEvent::Succeeded(reason()),
            RunEvent::Failed(reason()),
            RunEvent::Cancelled(reason()),
            RunEvent::RetryScheduled(reason()),
            RunEvent::Requeued,
        ]
    }

    #[test]
    fn the_happy_path_reaches_succeeded() {
        let mut state = RunState::Queued;
        for event in [
            RunEvent::Leased,
            RunEvent::ProvisioningStarted,
            RunEvent::AgentStarted,
            RunEvent::Succeeded(reason()),
        ] {
            state = apply(state, &event).expect("legal");
        }
        assert_eq!(state, RunState::Succeeded);
    }

    #[test]
    fn terminal_states_accept_no_event() {
        for state in RunState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for event in every_event() {
                assert!(apply(state, &event).is_err(), "{state} accepted {event:?}");
            }
        }
    }

    #[test]
    fn every_live_state_can_fail_or_be_cancelled() {
        for state in RunState::ALL.into_iter().filter(|s| !s.is_terminal()) {
            assert_eq!(
                apply(state, &RunEvent::Failed(reason())),
                Ok(RunState::Failed)
            );
            assert_eq!(
                apply(state, &RunEvent::Cancelled(reason())),
                Ok(RunState::Cancelled)
            );
        }
    }

    #[test]
    fn a_run_cannot_skip_provisioning() {
        let err = apply(RunState::Scheduled, &RunEvent::AgentStarted).expect_err("illegal");
        assert_eq!(err.from, RunState::Scheduled);
        assert_eq!(err.event, "agent_started");
        assert!(apply(RunState::Queued, &RunEvent::Succeeded(reason())).is_err());
    }

    #[test]
    fn a_retry_goes_back_to_the_queue() {
        let state = apply(RunState::Provisioning, &RunEvent::RetryScheduled(reason()))
            .expect("retry allowed");
        assert_eq!(state, RunState::Retrying);
        assert_eq!(apply(state, &RunEvent::Requeued), Ok(RunState::Queued));
    }

    #[test]
    fn states_and_codes_round_trip_through_their_names() {
        for state in RunState::ALL {
            assert_eq!(state.as_str().parse::<RunState>(), Ok(state));
        }
        assert!("nonsense".parse::<RunState>().is_err());
        assert_eq!(
            "lease_expired".parse::<TerminalCode>(),
            Ok(TerminalCode::LeaseExpired)
        );
        assert_eq!(
            "agent_contract".parse::<TerminalCode>(),
            Ok(TerminalCode::AgentContract)
        );
        assert_eq!(
            serde_json::to_value(TerminalCode::AgentContract).ok(),
            Some(serde_json::json!("agent_contract"))
        );
    }

    #[test]
    fn random_event_sequences_never_leave_a_terminal_state() {
        // A small exhaustive walk: every sequence of up to 5 events from every start state.
        fn walk(state: RunState, depth: usize) {
            if depth == 0 {
                return;
            }
            for event in every_event() {
                if let Ok(next) = apply(state, &event) {
                    assert!(!state.is_terminal(), "left terminal {state}");
                    walk(next, depth - 1);
                }
            }
        }
        for state in RunState::ALL {
            walk(state, 5);
        }
    }

    fn any_event() -> impl proptest::strategy::Strategy<Value = RunEvent> {
        use proptest::prelude::*;
        (0..every_event().len()).prop_map(|index| every_event().swap_remove(index))
    }

    proptest::proptest! {
        /// Random event sequences from a new run, with the effects applied the way storage
        /// applies them: attempts only grow, a run has a lease exactly while it is in a leased
        /// state (and a holder after every grant), an end state takes no event, and
        /// `transition` agrees with `apply`.
        #[test]
        fn the_effects_of_any_event_sequence_keep_the_lease_and_attempt_invariants(
            events in proptest::collection::vec(any_event(), 0..60)
        ) {
            let mut state = RunState::Queued;
            let mut attempt = 1;
            let mut leased = false;
            let mut holder = false;
            for event in &events {
                let result = transition(state, event);
                proptest::prop_assert_eq!(
                    result.as_ref().map(|transition| transition.next).ok(),
                    apply(state, event).ok()
                );
                let Ok(step) = result else {
                    continue;
                };
                proptest::prop_assert!(!state.is_terminal(), "{} took {:?}", state, event);
                let next_attempt = attempt + step.attempt.delta();
                proptest::prop_assert!(next_attempt >= attempt);
                leased = step.lease.leased_after(leased);
                holder = match step.lease {
                    LeaseEffect::Grant => true,
                    LeaseEffect::Release => false,
                    LeaseEffect::Keep | LeaseEffect::Clear => holder,
                };
                proptest::prop_assert_eq!(leased, step.next.is_leased(), "{:?}", step);
                proptest::prop_assert!(!leased || holder, "a lease without a holder");
                proptest::prop_assert_eq!(
                    step.terminal.is_some(),
                    step.next.is_terminal(),
                    "{:?}",
                    step
                );
                proptest::prop_assert_eq!(
                    step.milestone == Some(Milestone::Finished),
                    step.next.is_terminal()
                );
                attempt = next_attempt;
                state = step.next;
            }
            if state.is_terminal() {
                for event in every_event() {
                    proptest::prop_assert!(transition(state, &event).is_err());
                }
            }
        }
    }

    #[test]
    fn a_retry_starts_the_next_attempt_only_when_it_is_requeued() {
        let retry =
            transition(RunState::Running, &RunEvent::RetryScheduled(reason())).expect("a retry");
        assert_eq!(retry.attempt, AttemptEffect::Same);
        assert_eq!(retry.lease, LeaseEffect::Clear);
        assert_eq!(retry.terminal, None, "a retry is not an end");
        let requeued = transition(RunState::Retrying, &RunEvent::Requeued).expect("requeued");
        assert_eq!(requeued.attempt, AttemptEffect::Increment);
        assert_eq!(requeued.lease, LeaseEffect::Release);
    }

    #[test]
    fn a_lease_is_granted_only_by_leasing_a_queued_run() {
        for state in RunState::ALL {
            for event in every_event() {
                if let Ok(step) = transition(state, &event) {
                    assert_eq!(
                        step.lease == LeaseEffect::Grant,
                        (state, &event) == (RunState::Queued, &RunEvent::Leased),
                        "{state} {event:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_state_lists_match_the_predicates() {
        for state in RunState::ALL {
            assert_eq!(RunState::LEASED.contains(&state), state.is_leased());
            assert_eq!(RunState::TERMINAL.contains(&state), state.is_terminal());
            assert_eq!(
                RunState::DRIVEN.contains(&state),
                matches!(state, RunState::Provisioning | RunState::Running)
            );
        }
        assert_eq!(
            RunState::names(&RunState::LEASED),
            ["scheduled", "provisioning", "running"]
        );
    }
}
