//! The decisions the services take about a run's lifecycle, as pure functions beside the state
//! machine: what an expired lease or a lost workspace becomes, how a cancel request is carried
//! out, and which event ends a supervised run. The services gather the inputs (I/O), call these,
//! and persist the event through the state machine.

use std::time::Duration;

use uuid::Uuid;

use crate::entities::OnLostWorkspace;
use crate::run::{RunEvent, RunState, TerminalCode, TerminalReason};

/// What the reaper knows about a leased run whose holder stopped renewing the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseExpiry {
    pub state: RunState,
    pub attempt: i32,
    pub max_attempts: i32,
    /// The correlation id of a cancel request on record: the run ends cancelled, never retried.
    pub cancel_requested: Option<Uuid>,
    /// The project's policy for a run whose workspace is lost while its agent works.
    pub on_lost_workspace: OnLostWorkspace,
    /// How long a `running` run was left past its lease for a worker on its engine to adopt it.
    pub reattach_grace: Duration,
}

/// What an expired lease becomes. A cancel on record wins. Before `running` the agent has not
/// been given its task (it is started only after `running` is committed), so another attempt
/// is always safe; a `running` run no worker adopted within the grace lost its workspace, and
/// the project's `on_lost_workspace` says whether it starts again from scratch (while attempts
/// remain). Otherwise it fails with `lease_expired`.
pub fn lease_expired_event(expiry: &LeaseExpiry) -> RunEvent {
    let state = expiry.state;
    if let Some(correlation) = expiry.cancel_requested {
        return RunEvent::Cancelled(TerminalReason::new(
            TerminalCode::Cancelled,
            format!(
                "cancelled on request (correlation id {correlation}); its worker had stopped \
                 renewing the lease"
            ),
        ));
    }
    let lost = match state {
        RunState::Running => format!(
            "the worker running it stopped renewing its lease and no worker on its Docker Engine \
             adopted the workspace within {:?}",
            expiry.reattach_grace
        ),
        _ => format!("the worker stopped renewing its lease while the run was `{state}`"),
    };
    retry_or_fail(
        TerminalCode::LeaseExpired,
        &lost,
        state,
        expiry.attempt,
        expiry.max_attempts,
        expiry.on_lost_workspace,
    )
}

/// What a run held by a worker becomes when its workspace is lost (its container is gone):
/// before `running` the agent never had its task, so it is retried while attempts remain;
/// a `running` run follows the project's `policy`; on the last attempt it fails. The reason's
/// code is `workspace_unavailable` and its message starts with `why`.
pub fn lost_workspace_event(
    state: RunState,
    attempt: i32,
    max_attempts: i32,
    policy: OnLostWorkspace,
    why: &str,
) -> RunEvent {
    retry_or_fail(
        TerminalCode::WorkspaceUnavailable,
        why,
        state,
        attempt,
        max_attempts,
        policy,
    )
}

/// The rule shared by expired leases and lost workspaces: the policy applies only to a run whose
/// agent had its task (`running`); any run may start again from scratch while attempts remain.
fn retry_or_fail(
    code: TerminalCode,
    lost: &str,
    state: RunState,
    attempt: i32,
    max_attempts: i32,
    policy: OnLostWorkspace,
) -> RunEvent {
    if state == RunState::Running && policy == OnLostWorkspace::Fail {
        return RunEvent::Failed(TerminalReason::new(
            code,
            format!(
                "{lost}; the project does not start such runs again (`agent.on_lost_workspace`: \
                 `fail`)"
            ),
        ));
    }
    if attempt < max_attempts {
        RunEvent::RetryScheduled(TerminalReason::new(
            code,
            format!(
                "{lost}; retrying from scratch (attempt {} of {max_attempts})",
                attempt + 1
            ),
        ))
    } else {
        RunEvent::Failed(TerminalReason::new(
            code,
            format!("{lost}, on the last of {max_attempts} attempts"),
        ))
    }
}

/// How a cancel request is carried out, by the run's state when it arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelDisposition {
    /// No worker holds the run (`queued`, `retrying`): it is cancelled at once.
    Immediate,
    /// A worker holds the run: the request is recorded and the holder stops the run (its agent,
    /// its container) and records the end.
    ByHolder,
    /// The run already ended: there is nothing to cancel.
    AlreadyEnded,
}

impl CancelDisposition {
    pub const fn for_state(state: RunState) -> Self {
        match state {
            RunState::Queued | RunState::Retrying => CancelDisposition::Immediate,
            RunState::Scheduled | RunState::Provisioning | RunState::Running => {
                CancelDisposition::ByHolder
            }
            RunState::Succeeded | RunState::Failed | RunState::Cancelled => {
                CancelDisposition::AlreadyEnded
            }
        }
    }
}

/// The event that ends a supervised run: the agent's final message (possibly empty) when it
/// finished, else the reason it stopped; a reason coded `cancelled` cancels the run, any other
/// fails it.
pub fn end_event(outcome: Result<String, TerminalReason>) -> RunEvent {
    match outcome {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expiry(state: RunState, attempt: i32, cancel: Option<Uuid>) -> LeaseExpiry {
        LeaseExpiry {
            state,
            attempt,
            max_attempts: 3,
            cancel_requested: cancel,
            on_lost_workspace: OnLostWorkspace::Retry,
            reattach_grace: Duration::from_secs(60),
        }
    }

    #[test]
    fn an_expired_lease_is_retried_while_attempts_remain_and_a_recorded_cancel_wins() {
        for state in RunState::LEASED {
            let retried = lease_expired_event(&expiry(state, 1, None));
            assert!(
                matches!(&retried, RunEvent::RetryScheduled(reason)
                    if reason.code == TerminalCode::LeaseExpired
                        && reason.message.contains("attempt 2 of 3")),
                "{state}: {retried:?}"
            );
            let last = lease_expired_event(&expiry(state, 3, None));
            assert!(
                matches!(&last, RunEvent::Failed(reason)
                    if reason.code == TerminalCode::LeaseExpired
                        && reason.message.ends_with("on the last of 3 attempts")),
                "{state}: {last:?}"
            );
            let correlation = Uuid::new_v4();
            for attempt in [1, 3] {
                let cancelled = lease_expired_event(&expiry(state, attempt, Some(correlation)));
                assert!(
                    matches!(&cancelled, RunEvent::Cancelled(reason)
                        if reason.code == TerminalCode::Cancelled
                            && reason.message.contains(&correlation.to_string())),
                    "{state}: {cancelled:?}"
                );
            }
        }
    }

    #[test]
    fn a_running_run_lost_past_the_grace_says_so_and_follows_the_project_policy() {
        let RunEvent::RetryScheduled(reason) =
            lease_expired_event(&expiry(RunState::Running, 1, None))
        else {
            panic!("a retry expected");
        };
        assert!(reason.message.contains("adopted"), "{}", reason.message);
        assert!(reason.message.contains("60s"), "{}", reason.message);
        let strict = |state| LeaseExpiry {
            on_lost_workspace: OnLostWorkspace::Fail,
            ..expiry(state, 1, None)
        };
        assert!(matches!(
            lease_expired_event(&strict(RunState::Running)),
            RunEvent::Failed(reason) if reason.message.contains("on_lost_workspace")
        ));
        // A run whose agent never got its task is retried all the same.
        for state in [RunState::Scheduled, RunState::Provisioning] {
            assert!(matches!(
                lease_expired_event(&strict(state)),
                RunEvent::RetryScheduled(_)
            ));
        }
    }

    #[test]
    fn reasons_read_as_one_sentence_without_runs_of_spaces() {
        let mut events = Vec::new();
        for state in RunState::LEASED {
            for attempt in [1, 3] {
                for policy in [OnLostWorkspace::Retry, OnLostWorkspace::Fail] {
                    events.push(lease_expired_event(&LeaseExpiry {
                        on_lost_workspace: policy,
                        ..expiry(state, attempt, None)
                    }));
                    events.push(lost_workspace_event(state, attempt, 3, policy, "gone"));
                }
                events.push(lease_expired_event(&expiry(
                    state,
                    attempt,
                    Some(Uuid::new_v4()),
                )));
            }
        }
        for event in events {
            let message = &event.reason().expect("a reason").message;
            assert!(!message.contains("  "), "{message:?}");
        }
    }

    #[test]
    fn a_lost_workspace_is_retried_before_running_whatever_the_policy() {
        for state in [RunState::Scheduled, RunState::Provisioning] {
            for policy in [OnLostWorkspace::Retry, OnLostWorkspace::Fail] {
                let event = lost_workspace_event(state, 1, 3, policy, "its container is gone");
                assert_eq!(
                    event,
                    RunEvent::RetryScheduled(TerminalReason::new(
                        TerminalCode::WorkspaceUnavailable,
                        "its container is gone; retrying from scratch (attempt 2 of 3)"
                    )),
                    "{state} {policy:?}"
                );
            }
        }
    }

    #[test]
    fn a_lost_workspace_of_a_running_run_follows_the_policy_and_the_last_attempt_fails() {
        assert_eq!(
            lost_workspace_event(RunState::Running, 1, 3, OnLostWorkspace::Retry, "gone"),
            RunEvent::RetryScheduled(TerminalReason::new(
                TerminalCode::WorkspaceUnavailable,
                "gone; retrying from scratch (attempt 2 of 3)"
            ))
        );
        assert_eq!(
            lost_workspace_event(RunState::Running, 1, 3, OnLostWorkspace::Fail, "gone"),
            RunEvent::Failed(TerminalReason::new(
                TerminalCode::WorkspaceUnavailable,
                "gone; the project does not start such runs again \
                 (`agent.on_lost_workspace`: `fail`)"
            ))
        );
        for state in RunState::LEASED {
            assert_eq!(
                lost_workspace_event(state, 3, 3, OnLostWorkspace::Retry, "gone"),
                RunEvent::Failed(TerminalReason::new(
                    TerminalCode::WorkspaceUnavailable,
                    "gone, on the last of 3 attempts"
                )),
                "{state}"
            );
        }
    }

    #[test]
    fn only_a_run_no_worker_holds_is_cancelled_at_once() {
        for state in RunState::ALL {
            let expected = if state.is_terminal() {
                CancelDisposition::AlreadyEnded
            } else if state.is_leased() {
                CancelDisposition::ByHolder
            } else {
                CancelDisposition::Immediate
            };
            assert_eq!(CancelDisposition::for_state(state), expected, "{state}");
        }
        assert_eq!(
            CancelDisposition::for_state(RunState::Queued),
            CancelDisposition::Immediate
        );
        assert_eq!(
            CancelDisposition::for_state(RunState::Retrying),
            CancelDisposition::Immediate
        );
    }

    #[test]
    fn every_run_that_has_not_ended_takes_a_cancel_one_way_or_the_other() {
        let reason = TerminalReason::new(TerminalCode::Cancelled, "by a test");
        for state in RunState::ALL {
            let legal = crate::run::apply(state, &RunEvent::Cancelled(reason.clone())).is_ok();
            let disposition = CancelDisposition::for_state(state);
            assert_eq!(
                legal,
                disposition != CancelDisposition::AlreadyEnded,
                "{state}"
            );
        }
    }

    #[test]
    fn the_end_of_a_supervised_run_succeeds_cancels_or_fails_by_its_outcome() {
        assert_eq!(
            end_event(Ok(String::new())),
            RunEvent::Succeeded(TerminalReason::new(
                TerminalCode::AgentFinished,
                "the agent finished"
            ))
        );
        assert_eq!(
            end_event(Ok("all tests pass".into())),
            RunEvent::Succeeded(TerminalReason::new(
                TerminalCode::AgentFinished,
                "the agent finished: all tests pass"
            ))
        );
        let cancelled = TerminalReason::new(TerminalCode::Cancelled, "cancelled by someone");
        assert_eq!(
            end_event(Err(cancelled.clone())),
            RunEvent::Cancelled(cancelled)
        );
        for code in [
            TerminalCode::AgentError,
            TerminalCode::TimedOut,
            TerminalCode::WorkerShutdown,
            TerminalCode::Internal,
        ] {
            let reason = TerminalReason::new(code, "stopped");
            assert_eq!(end_event(Err(reason.clone())), RunEvent::Failed(reason));
        }
    }
}
