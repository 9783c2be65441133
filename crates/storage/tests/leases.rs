//! A property test of the run state machine and the lease rules against a real Postgres: random
//! interleavings of the scheduler (leases, expiries, retries), two workers (accepts, starts,
//! adoptions, journal writes, ends) and crashes (a holder forgetting its hold, stale fences
//! replayed) never give a run two holders, never let a stale holder write, never journal after
//! the terminal entry, and move the run only along legal transitions.

use std::time::Duration;

use cadenza_domain::{
    AgentSettings, EventKind, Fence, Run, RunEvent, RunState, Scope, TerminalCode, TerminalReason,
    WorkerId, apply,
};
use cadenza_storage::journal::{self, NewJournalEvent};
use cadenza_storage::runs::{self, Actor, Lease, NewRun, Submitted};
use cadenza_storage::{StorageError, orgs, projects, workers};
use cadenza_testkit::infra::TestDatabase;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgConnection;

const SEEDS: u64 = 20;
const STEPS: usize = 120;

fn reason(code: TerminalCode) -> TerminalReason {
    TerminalReason::new(code, "property test")
}

async fn current(conn: &mut PgConnection, run: &Run) -> Run {
    runs::get(conn, &Scope::Instance, run.id)
        .await
        .expect("read the run")
}

/// Every fence ever handed out for the run, current or stale.
fn fences_of(run: &Run, seen: &mut Vec<Fence>) {
    if let Some(worker) = run.lease_holder {
        let fence = Fence {
            worker,
            epoch: run.lease_epoch,
        };
        if !seen.contains(&fence) {
            seen.push(fence);
        }
    }
}

#[tokio::test]
async fn no_interleaving_of_leases_adoptions_and_crashes_gives_a_run_two_holders() {
    let db = TestDatabase::create().await.expect("db");
    let mut conn = db.pool.acquire().await.expect("conn");
    let org = orgs::create(&mut conn, "prop", "prop").await.expect("org");
    let project = projects::create(
        &mut conn,
        org.id,
        "p",
        "p",
        &AgentSettings::with_image("img"),
        &cadenza_domain::Repository::default(),
    )
    .await
    .expect("project");
    let workers: Vec<WorkerId> = {
        let mut ids = Vec::new();
        for name in ["a", "b"] {
            ids.push(
                workers::register(&mut conn, name, 100)
                    .await
                    .expect("worker")
                    .id,
            );
        }
        ids
    };
    let ttl = Duration::from_secs(30);
    let liveness = Duration::from_secs(3600);
    let mut transitions = 0usize;
    let mut refused_stale = 0usize;
    let mut ends = 0usize;
    for seed in 0..SEEDS {
        let mut rng = StdRng::seed_from_u64(seed);
        let Submitted::Created(mut run) = runs::submit(
            &mut conn,
            NewRun {
                org_id: org.id,
                project_id: project.id,
                prompt: "$ true",
                idempotency_key: None,
            },
        )
        .await
        .expect("submit") else {
            panic!("a new run");
        };
        let mut fences: Vec<Fence> = Vec::new();
        for step in 0..STEPS {
            let before = current(&mut conn, &run).await;
            // Mostly the latest hold (a live worker), sometimes a stale one (a worker that
            // stalled or crashed and came back).
            let any_fence = |rng: &mut StdRng, fences: &[Fence]| -> Option<Fence> {
                let latest = fences.last().copied()?;
                Some(if rng.gen_bool(0.7) {
                    latest
                } else {
                    fences[rng.gen_range(0..fences.len())]
                })
            };
            let worker = workers[rng.gen_range(0..workers.len())];
            let outcome: Result<(), StorageError> = match rng.gen_range(0..9) {
                // The scheduler leases a queued run.
                0 => runs::transition(
                    &mut conn,
                    run.id,
                    before.state,
                    &RunEvent::Leased,
                    Actor::Any,
                    Some(Lease { worker, ttl }),
                )
                .await
                .map(|_| ()),
                // A holder (current or stale) moves the run on.
                1 | 2 => {
                    let Some(fence) = any_fence(&mut rng, &fences) else {
                        continue;
                    };
                    let event = match before.state {
                        RunState::Scheduled => RunEvent::ProvisioningStarted,
                        RunState::Provisioning => RunEvent::AgentStarted,
                        _ => RunEvent::Succeeded(reason(TerminalCode::AgentFinished)),
                    };
                    runs::transition(
                        &mut conn,
                        run.id,
                        before.state,
                        &event,
                        Actor::LeaseHolder(fence),
                        None,
                    )
                    .await
                    .map(|_| ())
                }
                // A holder journals an agent event.
                3 | 4 => {
                    let Some(fence) = any_fence(&mut rng, &fences) else {
                        continue;
                    };
                    journal::append(
                        &mut conn,
                        NewJournalEvent {
                            run_id: run.id,
                            org_id: run.org_id,
                            kind: EventKind::Message,
                            payload: serde_json::json!({"step": step}),
                            raw: None,
                            source_event_id: Some(format!("{seed}-{step}")),
                            source_seq: Some(step as i64),
                            occurred_at: time::OffsetDateTime::now_utc(),
                            fence: Some(fence),
                        },
                    )
                    .await
                    .map(|_| ())
                }
                // The holder crashes: its lease runs out; another worker on the engine adopts
                // the run, at the epoch it last saw (maybe stale).
                5 => {
                    sqlx::query(
                        "update runs set lease_expires_at = now() - interval '1 minute' where id = $1",
                    )
                    .bind(run.id.as_uuid())
                    .execute(&mut *conn)
                    .await
                    .expect("forge expiry");
                    let epoch = any_fence(&mut rng, &fences)
                        .map_or(before.lease_epoch, |fence| fence.epoch);
                    runs::adopt(&mut conn, run.id, epoch, worker, ttl, liveness)
                        .await
                        .map(|_| ())
                }
                // The reaper retries a leased run (its lease expired).
                6 => runs::transition(
                    &mut conn,
                    run.id,
                    before.state,
                    &RunEvent::RetryScheduled(reason(TerminalCode::LeaseExpired)),
                    Actor::Any,
                    None,
                )
                .await
                .map(|_| ()),
                // The retry goes back to the queue.
                7 => runs::transition(
                    &mut conn,
                    run.id,
                    before.state,
                    &RunEvent::Requeued,
                    Actor::Any,
                    None,
                )
                .await
                .map(|_| ()),
                // A holder renews what it thinks it holds.
                _ => {
                    let Some(fence) = any_fence(&mut rng, &fences) else {
                        continue;
                    };
                    runs::renew(&mut conn, fence.worker, &[(run.id, fence.epoch)], ttl)
                        .await
                        .map(|renewed| {
                            let current_hold = before.lease_holder == Some(fence.worker)
                                && before.lease_epoch == fence.epoch
                                && matches!(
                                    before.state,
                                    RunState::Provisioning | RunState::Running
                                );
                            assert_eq!(
                                renewed.contains(&run.id),
                                current_hold,
                                "seed {seed} step {step}: renewal of {fence:?} on {before:?}"
                            );
                        })
                }
            };
            let after = current(&mut conn, &run).await;
            // Only legal transitions.
            if after.state != before.state {
                transitions += 1;
                let legal = [
                    RunEvent::Leased,
                    RunEvent::ProvisioningStarted,
                    RunEvent::AgentStarted,
                    RunEvent::Succeeded(reason(TerminalCode::AgentFinished)),
                    RunEvent::RetryScheduled(reason(TerminalCode::LeaseExpired)),
                    RunEvent::Requeued,
                ]
                .iter()
                .any(|event| apply(before.state, event) == Ok(after.state));
                assert!(
                    legal,
                    "seed {seed} step {step}: {} -> {}",
                    before.state, after.state
                );
            }
            // The epoch never goes back.
            assert!(after.lease_epoch >= before.lease_epoch);
            // A write by a stale fence changed nothing.
            if outcome.is_err() {
                refused_stale += 1;
                assert_eq!(
                    after.state, before.state,
                    "seed {seed} step {step}: a refused write moved the run"
                );
                assert_eq!(after.last_event_seq, before.last_event_seq);
            }
            fences_of(&after, &mut fences);
            // At most one fence holds the run.
            let mut holding = 0;
            for fence in &fences {
                if runs::holds(&mut conn, run.id, *fence).await.expect("holds") {
                    holding += 1;
                }
            }
            assert!(holding <= 1, "seed {seed} step {step}: {holding} holders");
            // Nothing is journaled after the terminal entry: not even by the last holder.
            if after.state.is_terminal() {
                for fence in &fences {
                    let late = journal::append(
                        &mut conn,
                        NewJournalEvent {
                            run_id: run.id,
                            org_id: run.org_id,
                            kind: EventKind::Message,
                            payload: serde_json::json!({"late": true}),
                            raw: None,
                            source_event_id: None,
                            source_seq: None,
                            occurred_at: time::OffsetDateTime::now_utc(),
                            fence: Some(*fence),
                        },
                    )
                    .await;
                    assert!(
                        matches!(late, Err(StorageError::Fenced(_))),
                        "seed {seed} step {step}: {late:?}"
                    );
                }
                let ended = current(&mut conn, &after).await;
                assert_eq!(
                    ended.last_event_seq, after.last_event_seq,
                    "journaled after the end"
                );
                ends += 1;
                // The next run.
                let Submitted::Created(next) = runs::submit(
                    &mut conn,
                    NewRun {
                        org_id: org.id,
                        project_id: project.id,
                        prompt: "$ true",
                        idempotency_key: None,
                    },
                )
                .await
                .expect("submit") else {
                    panic!("a new run");
                };
                run = next;
                fences.clear();
                continue;
            }
            run = after;
        }
    }
    // The walk went somewhere: many transitions, many refusals.
    assert!(transitions > 50, "only {transitions} transitions");
    assert!(refused_stale > 50, "only {refused_stale} refused writes");
    assert!(ends > 5, "only {ends} runs reached their end");
    println!("{transitions} transitions, {refused_stale} refused writes, {ends} runs ended");
}
