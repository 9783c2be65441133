//! The lifecycle of a run's workspace container after the run (ADR 0005, ADR 0009): a succeeded
//! run's container may be kept for a follow-up turn, which claims it, or it is released
//! (removed). Storage carries out the edges of a kept workspace with guarded updates:
//! `workspaces::keep` (active → kept), `claim` (kept → claimed, while its time is not up, once)
//! and `release` (kept → released, refused once claimed); any other run has its container
//! removed at once (active → released). This is the rule those guards follow.

use time::OffsetDateTime;

/// Where a run's workspace is in its lifecycle, as seen from that run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkspaceState {
    /// The run's own container, while the run works in it (or before anything was decided).
    Active,
    /// The run ended and its container waits for a follow-up turn until `until`.
    Kept { until: OffsetDateTime },
    /// A follow-up turn took the container; it is that turn's workspace now.
    Claimed,
    /// The container was removed (its time was up, the worker needed the room or stopped, or
    /// the run did not succeed).
    Released,
}

/// What can happen to a run's workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkspaceEvent {
    /// The run succeeded and its worker keeps workspaces: kept until `until`.
    Keep { until: OffsetDateTime },
    /// A follow-up turn asks for the workspace at `at`.
    Claim { at: OffsetDateTime },
    /// The container is removed.
    Release,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a workspace in state {from:?} cannot take {event:?}")]
pub struct IllegalWorkspaceTransition {
    pub from: WorkspaceState,
    pub event: WorkspaceEvent,
}

impl WorkspaceState {
    /// The next state, or why the event is refused: only a kept workspace whose time is not up
    /// can be claimed, and only once; a claimed workspace belongs to the follow-up turn, so
    /// the run it came from can no longer release it; claimed and released are final.
    pub fn next(self, event: WorkspaceEvent) -> Result<WorkspaceState, IllegalWorkspaceTransition> {
        use WorkspaceEvent as E;
        use WorkspaceState as S;
        match (self, event) {
            (S::Active, E::Keep { until }) => Ok(S::Kept { until }),
            (S::Kept { until }, E::Claim { at }) if at < until => Ok(S::Claimed),
            (S::Active | S::Kept { .. }, E::Release) => Ok(S::Released),
            (from, event) => Err(IllegalWorkspaceTransition { from, event }),
        }
    }

    /// Whether a follow-up turn may still claim the workspace at `at`.
    pub fn claimable_at(self, at: OffsetDateTime) -> bool {
        matches!(self, WorkspaceState::Kept { until } if at < until)
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::days(20_000)
    }

    fn kept() -> WorkspaceState {
        WorkspaceState::Active
            .next(WorkspaceEvent::Keep {
                until: now() + Duration::minutes(15),
            })
            .expect("a finished run's workspace can be kept")
    }

    #[test]
    fn a_kept_workspace_is_claimed_once_while_its_time_is_not_up() {
        let claimed = kept()
            .next(WorkspaceEvent::Claim { at: now() })
            .expect("claimed");
        assert_eq!(claimed, WorkspaceState::Claimed);
        assert!(
            claimed.next(WorkspaceEvent::Claim { at: now() }).is_err(),
            "claimed twice"
        );
        let late = now() + Duration::minutes(15);
        assert!(!kept().claimable_at(late));
        assert!(kept().next(WorkspaceEvent::Claim { at: late }).is_err());
        assert!(
            WorkspaceState::Active
                .next(WorkspaceEvent::Claim { at: now() })
                .is_err(),
            "a workspace nobody kept"
        );
    }

    #[test]
    fn a_claimed_workspace_is_the_follow_ups_and_cannot_be_released_by_its_parent() {
        let claimed = kept()
            .next(WorkspaceEvent::Claim { at: now() })
            .expect("claimed");
        assert!(claimed.next(WorkspaceEvent::Release).is_err());
        assert_eq!(
            kept().next(WorkspaceEvent::Release),
            Ok(WorkspaceState::Released)
        );
        assert_eq!(
            WorkspaceState::Active.next(WorkspaceEvent::Release),
            Ok(WorkspaceState::Released)
        );
    }

    #[test]
    fn claimed_and_released_are_final() {
        let events = [
            WorkspaceEvent::Keep {
                until: now() + Duration::minutes(15),
            },
            WorkspaceEvent::Claim { at: now() },
            WorkspaceEvent::Release,
        ];
        for state in [WorkspaceState::Claimed, WorkspaceState::Released] {
            for event in events {
                assert!(state.next(event).is_err(), "{state:?} took {event:?}");
            }
        }
        assert!(
            kept()
                .next(WorkspaceEvent::Keep {
                    until: now() + Duration::hours(1),
                })
                .is_err(),
            "kept twice"
        );
    }
}
