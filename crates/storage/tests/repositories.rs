//! Repository behaviour against a real Postgres (a fresh database per test).

use std::time::Duration;

use cadenza_domain::{
    AgentSettings, EventKind, Fence, OrgId, RunEvent, RunState, Scope, TerminalCode, TerminalReason,
};
use cadenza_storage::journal::{self, NewJournalEvent};
use cadenza_storage::runs::{self, Actor, Lease, NewRun, Submitted};
use cadenza_storage::{StorageError, orgs, projects, tokens, workers};
use cadenza_testkit::infra::TestDatabase;
use serde_json::json;
use time::OffsetDateTime;

async fn org_with_project(db: &TestDatabase, slug: &str) -> (OrgId, cadenza_domain::ProjectId) {
    let mut conn = db.pool.acquire().await.expect("conn");
    let org = orgs::create(&mut conn, slug, slug).await.expect("org");
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
    (org.id, project.id)
}

async fn submit(
    db: &TestDatabase,
    org: OrgId,
    project: cadenza_domain::ProjectId,
    key: Option<&str>,
) -> Submitted {
    let mut conn = db.pool.acquire().await.expect("conn");
    runs::submit(
        &mut conn,
        NewRun {
            org_id: org,
            project_id: project,
            prompt: "$ true",
            idempotency_key: key,
        },
    )
    .await
    .expect("submit")
}

fn agent_event(run: &cadenza_domain::Run, source_id: &str) -> NewJournalEvent {
    NewJournalEvent {
        run_id: run.id,
        org_id: run.org_id,
        kind: EventKind::Message,
        payload: json!({"text": source_id}),
        raw: Some(json!({"id": source_id})),
        source_event_id: Some(source_id.to_owned()),
        source_seq: None,
        occurred_at: OffsetDateTime::now_utc(),
        fence: None,
    }
}

#[tokio::test]
async fn concurrent_journal_writers_get_dense_unique_sequence_numbers() {
    let db = TestDatabase::create().await.expect("db");
    let (org, project) = org_with_project(&db, "dense").await;
    let Submitted::Created(run) = submit(&db, org, project, None).await else {
        panic!("new run expected");
    };
    let writers = (0..8).map(|writer| {
        let pool = db.pool.clone();
        let run = run.clone();
        tokio::spawn(async move {
            for i in 0..25 {
                let mut conn = pool.acquire().await.expect("conn");
                journal::append(&mut conn, agent_event(&run, &format!("w{writer}-{i}")))
                    .await
                    .expect("append")
                    .expect("new event");
            }
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer.expect("writer");
    }
    let mut conn = db.pool.acquire().await.expect("conn");
    let events = journal::list_after(&mut conn, &Scope::Instance, run.id, 0, 1000)
        .await
        .expect("list");
    let seqs: Vec<i64> = events.iter().map(|event| event.seq).collect();
    // The queued entry plus 200 appends, numbered 1..=201 without a gap.
    assert_eq!(seqs, (1..=201).collect::<Vec<_>>());
    let run = runs::get(&mut conn, &Scope::Instance, run.id)
        .await
        .expect("run");
    assert_eq!(run.last_event_seq, 201);
}

#[tokio::test]
async fn a_replayed_agent_event_is_journaled_once() {
    let db = TestDatabase::create().await.expect("db");
    let (org, project) = org_with_project(&db, "replay").await;
    let Submitted::Created(run) = submit(&db, org, project, None).await else {
        panic!("new run expected");
    };
    let mut conn = db.pool.acquire().await.expect("conn");
    let first = journal::append(&mut conn, agent_event(&run, "evt-1"))
        .await
        .expect("append");
    let again = journal::append(&mut conn, agent_event(&run, "evt-1"))
        .await
        .expect("append");
    assert_eq!(first.map(|event| event.seq), Some(2));
    assert!(again.is_none());
    let next = journal::append(&mut conn, agent_event(&run, "evt-2"))
        .await
        .expect("append");
    assert_eq!(
        next.map(|event| event.seq),
        Some(3),
        "no gap after the skipped duplicate"
    );
}

#[tokio::test]
async fn transitions_are_compare_and_set_and_journaled() {
    let db = TestDatabase::create().await.expect("db");
    let (org, project) = org_with_project(&db, "cas").await;
    let Submitted::Created(run) = submit(&db, org, project, None).await else {
        panic!("new run expected");
    };
    let mut conn = db.pool.acquire().await.expect("conn");
    let worker = workers::register(&mut conn, "w1", 2).await.expect("worker");
    let lease = Lease {
        worker: worker.id,
        ttl: Duration::from_secs(30),
    };
    let leased = runs::transition(
        &mut conn,
        run.id,
        RunState::Queued,
        &RunEvent::Leased,
        Actor::Any,
        Some(lease),
    )
    .await
    .expect("lease");
    assert_eq!(leased.run.state, RunState::Scheduled);
    assert_eq!(leased.run.lease_holder, Some(worker.id));
    assert!(leased.run.lease_expires_at.is_some());
    assert_eq!(leased.entry.payload["to"], "scheduled");

    // A second actor expecting `queued` loses.
    let lost = runs::transition(
        &mut conn,
        run.id,
        RunState::Queued,
        &RunEvent::Leased,
        Actor::Any,
        Some(lease),
    )
    .await;
    assert!(matches!(lost, Err(StorageError::Conflict(_))));

    // Only the lease holder may move the run on.
    let other = workers::register(&mut conn, "w2", 2).await.expect("worker");
    let stolen = runs::transition(
        &mut conn,
        run.id,
        RunState::Scheduled,
        &RunEvent::ProvisioningStarted,
        Actor::LeaseHolder(Fence {
            worker: other.id,
            epoch: leased.run.lease_epoch,
        }),
        None,
    )
    .await;
    assert!(matches!(stolen, Err(StorageError::Conflict(_))));

    // An illegal event is refused before touching the row.
    let illegal = runs::transition(
        &mut conn,
        run.id,
        RunState::Scheduled,
        &RunEvent::Succeeded(TerminalReason::new(TerminalCode::AgentFinished, "no")),
        Actor::Any,
        None,
    )
    .await;
    assert!(matches!(illegal, Err(StorageError::Conflict(_))));

    let failed = runs::transition(
        &mut conn,
        run.id,
        RunState::Scheduled,
        &RunEvent::Failed(TerminalReason::new(TerminalCode::ContainerFailed, "boom")),
        Actor::LeaseHolder(Fence {
            worker: worker.id,
            epoch: leased.run.lease_epoch,
        }),
        None,
    )
    .await
    .expect("fail");
    assert_eq!(failed.run.state, RunState::Failed);
    assert!(failed.run.finished_at.is_some());
    let reason = failed.run.terminal_reason.expect("reason");
    assert_eq!(reason.code, TerminalCode::ContainerFailed);
    assert_eq!(failed.entry.payload["terminal"], true);
    assert_eq!(failed.entry.payload["reason"]["message"], "boom");
}

/// What storage wrote for one transition, checked against the effects the state machine gives.
fn assert_effects_written(
    before: &cadenza_domain::Run,
    after: &cadenza_domain::Run,
    step: &cadenza_domain::Transition,
    lease: Option<Lease>,
) {
    use cadenza_domain::{LeaseEffect, Milestone};
    let context = format!("{} -> {}", before.state, step.next);
    assert_eq!(after.state, step.next, "{context}");
    assert_eq!(
        after.attempt,
        before.attempt + step.attempt.delta(),
        "{context}"
    );
    match step.lease {
        LeaseEffect::Grant => {
            assert_eq!(
                after.lease_holder,
                lease.map(|lease| lease.worker),
                "{context}"
            );
            assert_eq!(
                after.lease_epoch,
                before.lease_epoch + 1,
                "{context}: epoch"
            );
            assert!(
                after.lease_expires_at > Some(OffsetDateTime::now_utc()),
                "{context}"
            );
        }
        LeaseEffect::Keep => {
            assert_eq!(after.lease_holder, before.lease_holder, "{context}");
            assert_eq!(after.lease_epoch, before.lease_epoch, "{context}");
            assert_eq!(after.lease_expires_at, before.lease_expires_at, "{context}");
        }
        LeaseEffect::Clear => {
            assert_eq!(
                after.lease_holder, before.lease_holder,
                "{context}: last holder"
            );
            assert_eq!(after.lease_epoch, before.lease_epoch, "{context}");
            assert_eq!(after.lease_expires_at, None, "{context}");
        }
        LeaseEffect::Release => {
            assert_eq!(after.lease_holder, None, "{context}");
            assert_eq!(after.lease_epoch, before.lease_epoch, "{context}");
            assert_eq!(after.lease_expires_at, None, "{context}");
        }
    }
    assert_eq!(
        after.lease_expires_at.is_some(),
        after.state.is_leased(),
        "{context}"
    );
    assert_eq!(after.terminal_reason, step.terminal, "{context}");
    let stamps = |run: &cadenza_domain::Run| {
        [
            (Milestone::Scheduled, run.scheduled_at),
            (Milestone::Provisioning, run.provisioning_at),
            (Milestone::Running, run.running_at),
            (Milestone::Finished, run.finished_at),
        ]
    };
    for ((milestone, was), (_, is)) in stamps(before).into_iter().zip(stamps(after)) {
        if step.milestone == Some(milestone) {
            assert!(
                is.is_some() && is > was,
                "{context}: {milestone:?} not stamped"
            );
        } else {
            assert_eq!(is, was, "{context}: {milestone:?} moved");
        }
    }
}

#[tokio::test]
async fn every_transition_writes_the_effects_the_state_machine_gives() {
    let db = TestDatabase::create().await.expect("db");
    let (org, project) = org_with_project(&db, "effects").await;
    let mut conn = db.pool.acquire().await.expect("conn");
    let worker = workers::register(&mut conn, "w1", 10)
        .await
        .expect("worker");
    let lease = Lease {
        worker: worker.id,
        ttl: Duration::from_secs(30),
    };
    let reason = |code| TerminalReason::new(code, "effects");
    // A retry and a second attempt that succeeds, a run cancelled in the queue, one that fails
    // while running and one cancelled while retrying: every effect and every milestone.
    let paths = [
        vec![
            RunEvent::Leased,
            RunEvent::ProvisioningStarted,
            RunEvent::RetryScheduled(reason(TerminalCode::LeaseExpired)),
            RunEvent::Requeued,
            RunEvent::Leased,
            RunEvent::ProvisioningStarted,
            RunEvent::AgentStarted,
            RunEvent::Succeeded(reason(TerminalCode::AgentFinished)),
        ],
        vec![RunEvent::Cancelled(reason(TerminalCode::Cancelled))],
        vec![
            RunEvent::Leased,
            RunEvent::ProvisioningStarted,
            RunEvent::AgentStarted,
            RunEvent::Failed(reason(TerminalCode::AgentError)),
        ],
        vec![
            RunEvent::Leased,
            RunEvent::RetryScheduled(reason(TerminalCode::LeaseExpired)),
            RunEvent::Cancelled(reason(TerminalCode::Cancelled)),
        ],
    ];
    for path in paths {
        let Submitted::Created(mut run) = submit(&db, org, project, None).await else {
            panic!("new run expected");
        };
        for event in path {
            let step = cadenza_domain::transition(run.state, &event).expect("a legal path");
            let actor = match (run.state.is_leased(), run.lease_holder) {
                (true, Some(holder)) => Actor::LeaseHolder(Fence {
                    worker: holder,
                    epoch: run.lease_epoch,
                }),
                _ => Actor::Any,
            };
            let done = runs::transition(&mut conn, run.id, run.state, &event, actor, Some(lease))
                .await
                .expect("transition");
            assert_effects_written(&run, &done.run, &step, Some(lease));
            run = done.run;
        }
        assert!(run.state.is_terminal());
    }
}

#[tokio::test]
async fn an_idempotency_key_is_unique_per_project() {
    let db = TestDatabase::create().await.expect("db");
    let (org, project) = org_with_project(&db, "idem").await;
    let Submitted::Created(first) = submit(&db, org, project, Some("k")).await else {
        panic!("new run expected");
    };
    let Submitted::Existing(second) = submit(&db, org, project, Some("k")).await else {
        panic!("existing run expected");
    };
    assert_eq!(first.id, second.id);
    // Another project may use the same key.
    let (other_org, other_project) = org_with_project(&db, "idem2").await;
    assert!(matches!(
        submit(&db, other_org, other_project, Some("k")).await,
        Submitted::Created(_)
    ));
}

#[tokio::test]
async fn an_org_scope_never_sees_another_orgs_rows() {
    let db = TestDatabase::create().await.expect("db");
    let (org_a, project_a) = org_with_project(&db, "org-a").await;
    let (org_b, project_b) = org_with_project(&db, "org-b").await;
    let Submitted::Created(run_b) = submit(&db, org_b, project_b, None).await else {
        panic!("new run expected");
    };
    let mut conn = db.pool.acquire().await.expect("conn");
    let scope_a = &Scope::Org(org_a);
    assert!(matches!(
        runs::get(&mut conn, scope_a, run_b.id).await,
        Err(StorageError::NotFound(_))
    ));
    assert!(matches!(
        projects::get(&mut conn, scope_a, project_b).await,
        Err(StorageError::NotFound(_))
    ));
    assert!(
        journal::list_after(&mut conn, scope_a, run_b.id, 0, 100)
            .await
            .expect("list")
            .is_empty()
    );
    let listed = runs::list(
        &mut conn,
        scope_a,
        &runs::RunFilter {
            project_id: None,
            state: None,
            before: None,
            limit: 100,
        },
    )
    .await
    .expect("list");
    assert!(listed.is_empty());
    let projects_a = projects::list(&mut conn, scope_a, None, 100)
        .await
        .expect("list");
    assert_eq!(
        projects_a.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![project_a]
    );
}

#[tokio::test]
async fn tokens_are_stored_hashed_and_resolve_to_their_owner() {
    let db = TestDatabase::create().await.expect("db");
    let (org, _) = org_with_project(&db, "tok").await;
    let mut conn = db.pool.acquire().await.expect("conn");
    let owner = tokens::TokenOwner::Service {
        org,
        role: cadenza_domain::Role::Member,
    };
    let (_, secret) = tokens::create(
        &mut conn,
        tokens::NewToken {
            name: "ci",
            owner: owner.clone(),
            scopes: None,
            expires_at: None,
            created_by: None,
            created_by_token: None,
        },
    )
    .await
    .expect("token");
    assert!(secret.starts_with("cdz_"));
    let principal = tokens::authenticate(&mut conn, &secret)
        .await
        .expect("auth")
        .expect("valid");
    assert_eq!(principal.owner, owner);
    assert!(
        tokens::authenticate(&mut conn, "cdz_wrong")
            .await
            .expect("auth")
            .is_none()
    );
    // Nothing in the table contains the secret.
    let leaked: i64 =
        sqlx::query_scalar("select count(*) from api_tokens t where t::text like '%' || $1 || '%'")
            .bind(&secret)
            .fetch_one(&mut *conn)
            .await
            .expect("query");
    assert_eq!(leaked, 0);
}

/// Moves the run's lease expiry into the past, as if its holder had been silent that long.
async fn expire_lease(db: &TestDatabase, run: cadenza_domain::RunId, ago_secs: f64) {
    sqlx::query(
        "update runs set lease_expires_at = now() - make_interval(secs => $2) where id = $1",
    )
    .bind(run.as_uuid())
    .bind(ago_secs)
    .execute(&db.pool)
    .await
    .expect("forge the lease expiry");
}

async fn expired(db: &TestDatabase, grace: Duration) -> Vec<cadenza_domain::RunId> {
    let mut tx = db.pool.begin().await.expect("tx");
    let expired = runs::lock_expired_leases(&mut tx, grace, 10)
        .await
        .expect("expired")
        .into_iter()
        .map(|lease| lease.run_id)
        .collect();
    tx.rollback().await.expect("rollback");
    expired
}

/// A leased run moved on to `provisioning` by its holder.
async fn provisioning_run(
    db: &TestDatabase,
    worker: cadenza_domain::WorkerId,
) -> cadenza_domain::Run {
    let (org, project) = org_with_project(db, &cadenza_testkit::infra::unique_name("o")).await;
    let Submitted::Created(run) = submit(db, org, project, None).await else {
        panic!("new run expected");
    };
    let mut conn = db.pool.acquire().await.expect("conn");
    let lease = Lease {
        worker,
        ttl: Duration::from_secs(30),
    };
    let leased = runs::transition(
        &mut conn,
        run.id,
        RunState::Queued,
        &RunEvent::Leased,
        Actor::Any,
        Some(lease),
    )
    .await
    .expect("lease");
    let fence = Fence {
        worker,
        epoch: leased.run.lease_epoch,
    };
    runs::transition(
        &mut conn,
        run.id,
        RunState::Scheduled,
        &RunEvent::ProvisioningStarted,
        Actor::LeaseHolder(fence),
        None,
    )
    .await
    .expect("provisioning")
    .run
}

#[tokio::test]
async fn leases_are_renewed_only_for_the_runs_a_worker_names_with_their_epoch() {
    let db = TestDatabase::create().await.expect("db");
    let mut conn = db.pool.acquire().await.expect("conn");
    let worker = workers::register(&mut conn, "w", 4).await.expect("worker");
    let driven = provisioning_run(&db, worker.id).await;
    let forgotten = provisioning_run(&db, worker.id).await;
    assert_eq!(driven.lease_epoch, 1, "the first lease is epoch 1");
    for run in [driven.id, forgotten.id] {
        expire_lease(&db, run, 1.0).await;
    }
    assert_eq!(expired(&db, Duration::ZERO).await.len(), 2);

    // A stale epoch renews nothing; the worker learns it no longer holds the run.
    let renewed = runs::renew(
        &mut conn,
        worker.id,
        &[(driven.id, 0)],
        Duration::from_secs(30),
    )
    .await
    .expect("renew");
    assert!(renewed.is_empty());
    // The worker drives only one of its two runs: only that one is renewed.
    let renewed = runs::renew(
        &mut conn,
        worker.id,
        &[(driven.id, driven.lease_epoch)],
        Duration::from_secs(30),
    )
    .await
    .expect("renew");
    assert_eq!(renewed, [driven.id]);
    assert_eq!(expired(&db, Duration::ZERO).await, [forgotten.id]);
    workers::heartbeat(&mut conn, worker.id)
        .await
        .expect("heartbeat");

    // A worker full of runs gets no more.
    let mut tx = db.pool.begin().await.expect("tx");
    let _third = provisioning_run(&db, worker.id).await;
    let _fourth = provisioning_run(&db, worker.id).await;
    assert_eq!(
        workers::lock_worker_with_capacity(&mut tx, Duration::from_secs(5), None)
            .await
            .expect("pick"),
        None
    );
}

#[tokio::test]
async fn a_running_run_whose_lease_expired_waits_out_the_re_attach_grace() {
    let db = TestDatabase::create().await.expect("db");
    let mut conn = db.pool.acquire().await.expect("conn");
    let worker = workers::register(&mut conn, "w", 4).await.expect("worker");
    let run = provisioning_run(&db, worker.id).await;
    let fence = Fence {
        worker: worker.id,
        epoch: run.lease_epoch,
    };
    runs::transition(
        &mut conn,
        run.id,
        RunState::Provisioning,
        &RunEvent::AgentStarted,
        Actor::LeaseHolder(fence),
        None,
    )
    .await
    .expect("running");
    expire_lease(&db, run.id, 5.0).await;
    assert!(expired(&db, Duration::from_secs(60)).await.is_empty());
    assert_eq!(expired(&db, Duration::from_secs(1)).await, [run.id]);
}

#[tokio::test]
async fn a_worker_that_lost_a_run_can_write_nothing_more_for_it() {
    let db = TestDatabase::create().await.expect("db");
    let mut conn = db.pool.acquire().await.expect("conn");
    let old = workers::register(&mut conn, "old", 4)
        .await
        .expect("worker");
    let new = workers::register(&mut conn, "new", 4)
        .await
        .expect("worker");
    let run = provisioning_run(&db, old.id).await;
    let stale = Fence {
        worker: old.id,
        epoch: run.lease_epoch,
    };
    runs::transition(
        &mut conn,
        run.id,
        RunState::Provisioning,
        &RunEvent::AgentStarted,
        Actor::LeaseHolder(stale),
        None,
    )
    .await
    .expect("running");
    let agent_event = |id: &str, fence: Fence| NewJournalEvent {
        fence: Some(fence),
        ..agent_event(&run, id)
    };
    journal::append(&mut conn, agent_event("e1", stale))
        .await
        .expect("the holder journals")
        .expect("a new entry");

    // The old holder is alive: nobody else may take the run.
    let taken = runs::adopt(
        &mut conn,
        run.id,
        run.lease_epoch,
        new.id,
        Duration::from_secs(30),
        Duration::from_secs(5),
    )
    .await
    .expect("adopt");
    assert!(taken.is_none(), "a live holder's run was taken");
    // Once its lease runs out, a worker on the same engine adopts it; the epoch moves on.
    expire_lease(&db, run.id, 1.0).await;
    let adopted = runs::adopt(
        &mut conn,
        run.id,
        run.lease_epoch,
        new.id,
        Duration::from_secs(30),
        Duration::from_secs(5),
    )
    .await
    .expect("adopt")
    .expect("adopted");
    assert_eq!(adopted.lease_holder, Some(new.id));
    assert_eq!(adopted.lease_epoch, run.lease_epoch + 1);
    assert_eq!(adopted.attempt, run.attempt, "adopting is not a retry");
    // Only one adopter wins.
    assert!(
        runs::adopt(
            &mut conn,
            run.id,
            run.lease_epoch,
            old.id,
            Duration::from_secs(30),
            Duration::from_secs(5)
        )
        .await
        .expect("adopt")
        .is_none()
    );
    let current = Fence {
        worker: new.id,
        epoch: adopted.lease_epoch,
    };

    // Every write of the old holder is refused, none is silently dropped.
    let refused = journal::append(&mut conn, agent_event("e2", stale)).await;
    assert!(
        matches!(refused, Err(StorageError::Fenced(_))),
        "{refused:?}"
    );
    // A replay of an event already journaled is still just a replay for the current holder.
    assert!(
        journal::append(&mut conn, agent_event("e1", current))
            .await
            .expect("replay")
            .is_none()
    );
    assert!(matches!(
        runs::set_final_message(&mut conn, run.id, stale, "late").await,
        Err(StorageError::Fenced(_))
    ));
    assert!(matches!(
        runs::set_conversation(&mut conn, run.id, stale, uuid::Uuid::new_v4()).await,
        Err(StorageError::Fenced(_))
    ));
    assert!(matches!(
        cadenza_storage::diffs::upsert(&mut conn, run.id, run.org_id, stale, None, "late").await,
        Err(StorageError::Fenced(_))
    ));
    let late_end = runs::transition(
        &mut conn,
        run.id,
        RunState::Running,
        &RunEvent::Succeeded(TerminalReason::new(TerminalCode::AgentFinished, "late")),
        Actor::LeaseHolder(stale),
        None,
    )
    .await;
    assert!(matches!(late_end, Err(StorageError::Conflict(_))));

    // The current holder writes and ends the run; after the end, nothing more is journaled.
    journal::append(&mut conn, agent_event("e2", current))
        .await
        .expect("journal")
        .expect("entry");
    runs::set_final_message(&mut conn, run.id, current, "done")
        .await
        .expect("final message");
    cadenza_storage::diffs::upsert(&mut conn, run.id, run.org_id, current, None, "patch")
        .await
        .expect("diff");
    let ended = runs::transition(
        &mut conn,
        run.id,
        RunState::Running,
        &RunEvent::Succeeded(TerminalReason::new(TerminalCode::AgentFinished, "done")),
        Actor::LeaseHolder(current),
        None,
    )
    .await
    .expect("end");
    assert!(matches!(
        journal::append(&mut conn, agent_event("e3", current)).await,
        Err(StorageError::Fenced(_))
    ));
    let entries = journal::list_after(&mut conn, &Scope::Instance, run.id, 0, 100)
        .await
        .expect("journal");
    assert_eq!(entries.last().map(|entry| entry.seq), Some(ended.entry.seq));
    assert_eq!(
        entries
            .last()
            .map(|entry| entry.payload["terminal"].clone()),
        Some(json!(true))
    );
}

#[tokio::test]
async fn the_outbox_is_pruned_of_old_published_rows_only() {
    use cadenza_storage::outbox;
    let db = TestDatabase::create().await.expect("db");
    let mut conn = db.pool.acquire().await.expect("conn");
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            outbox::enqueue(&mut conn, "runs.requested", &json!({"i": i}))
                .await
                .expect("enqueue"),
        );
    }
    // ids[0]: unpublished; ids[1]: published just now; ids[2], ids[3]: published two hours ago.
    outbox::mark_published(&mut conn, &ids[1..])
        .await
        .expect("mark");
    sqlx::query("update outbox set published_at = now() - interval '2 hours' where id = any($1)")
        .bind(&ids[2..])
        .execute(&mut *conn)
        .await
        .expect("age");
    // In batches: one at a time here, until fewer than the batch go.
    assert_eq!(
        outbox::prune(&mut conn, Duration::from_secs(3600), 1)
            .await
            .expect("prune"),
        1
    );
    assert_eq!(
        outbox::prune(&mut conn, Duration::from_secs(3600), 1)
            .await
            .expect("prune"),
        1
    );
    assert_eq!(
        outbox::prune(&mut conn, Duration::from_secs(3600), 1)
            .await
            .expect("prune"),
        0
    );
    let left: Vec<i64> = sqlx::query_scalar("select id from outbox order by id")
        .fetch_all(&mut *conn)
        .await
        .expect("left");
    assert_eq!(
        left,
        ids[..2].to_vec(),
        "the unpublished and the recent rows stay"
    );
}

#[tokio::test]
async fn the_lease_and_retry_queries_can_use_their_indexes() {
    let db = TestDatabase::create().await.expect("db");
    // A handful of rows would always be scanned; forbid scans to see whether an index serves.
    let plan = |sql: &'static str| {
        let begin = db.pool.begin();
        async move {
            let mut tx = begin.await.expect("tx");
            sqlx::query("set local enable_seqscan = off")
                .execute(&mut *tx)
                .await
                .expect("set");
            let rows: Vec<String> = sqlx::query_scalar(sql)
                .fetch_all(&mut *tx)
                .await
                .expect("explain");
            rows.join("\n")
        }
    };
    let active = plan(
        "explain select count(*) from runs r where r.lease_holder = gen_random_uuid() \
         and r.state in ('scheduled', 'provisioning', 'running')",
    )
    .await;
    assert!(active.contains("runs_active_by_holder"), "{active}");
    let retrying = plan(
        "explain select id from runs where state = 'retrying' \
         and updated_at < now() - interval '10 seconds' limit 100",
    )
    .await;
    assert!(retrying.contains("runs_retrying"), "{retrying}");
    // The queries bind the leased states as a parameter: the planner sees its value and still
    // proves the partial indexes' predicates.
    let leased = RunState::names(&RunState::LEASED);
    let bound_plan = |sql: &'static str| {
        let begin = db.pool.begin();
        let leased = leased.clone();
        async move {
            let mut tx = begin.await.expect("tx");
            sqlx::query("set local enable_seqscan = off")
                .execute(&mut *tx)
                .await
                .expect("set");
            let rows: Vec<String> = sqlx::query_scalar(sql)
                .bind(leased)
                .fetch_all(&mut *tx)
                .await
                .expect("explain");
            rows.join("\n")
        }
    };
    let active = bound_plan(
        "explain select count(*) from runs r where r.lease_holder = gen_random_uuid() \
         and r.state = any($1)",
    )
    .await;
    assert!(active.contains("runs_active_by_holder"), "{active}");
    let expired = bound_plan(
        "explain select id from runs r where r.state = any($1) \
         and r.lease_expires_at < now() order by r.lease_expires_at limit 10",
    )
    .await;
    assert!(expired.contains("runs_leased"), "{expired}");
    let cancels = bound_plan(
        "explain select id from runs where lease_holder = gen_random_uuid() \
         and cancel_requested_at is not null and state = any($1)",
    )
    .await;
    assert!(cancels.contains("runs_cancel_requested"), "{cancels}");
}

#[tokio::test]
async fn a_connection_the_server_terminates_is_a_transient_error() {
    let db = TestDatabase::create().await.expect("db");
    let mut victim = db.pool.acquire().await.expect("conn");
    let pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut *victim)
        .await
        .expect("pid");
    let mut other = db.pool.acquire().await.expect("conn");
    let terminated: bool = sqlx::query_scalar("select pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut *other)
        .await
        .expect("terminate");
    assert!(terminated);
    // What a failover or an administrator's restart looks like to a service mid-work.
    let err = cadenza_storage::StorageError::from(
        sqlx::query("select 1")
            .execute(&mut *victim)
            .await
            .expect_err("the connection is gone"),
    );
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(err.kind(), cadenza_domain::ErrorKind::Unavailable);
}

#[tokio::test]
async fn a_typed_message_is_enqueued_on_the_subject_of_its_kind() {
    use cadenza_bus::messages::{LeaseOffered, RunRequested};
    use cadenza_storage::outbox;
    let db = TestDatabase::create().await.expect("db");
    let mut conn = db.pool.acquire().await.expect("conn");
    let worker = cadenza_domain::WorkerId::new();
    let offer = LeaseOffered::new(cadenza_domain::RunId::new(), OrgId::new(), worker, 2);
    let request = RunRequested::new(cadenza_domain::RunId::new(), OrgId::new());
    let offer_id = outbox::enqueue_message(&mut conn, &offer)
        .await
        .expect("enqueue the offer");
    let request_id = outbox::enqueue_message(&mut conn, &request)
        .await
        .expect("enqueue the request");
    let rows = outbox::lock_unpublished(&mut conn, 10).await.expect("rows");
    let row = |id| rows.iter().find(|row| row.id == id).expect("enqueued");
    assert_eq!(row(offer_id).subject, format!("runs.lease.{worker}"));
    assert_eq!(row(offer_id).payload["v"], 1);
    let read: LeaseOffered = serde_json::from_value(row(offer_id).payload.clone()).expect("decode");
    assert_eq!(read, offer);
    assert_eq!(row(request_id).subject, "runs.requested");
    let read: RunRequested =
        serde_json::from_value(row(request_id).payload.clone()).expect("decode");
    assert_eq!(read, request);
}

#[tokio::test]
async fn the_workspace_guards_follow_the_workspace_lifecycle() {
    use cadenza_domain::{WorkspaceEvent, WorkspaceState};
    use cadenza_storage::workspaces;
    let db = TestDatabase::create().await.expect("db");
    let (org, project) = org_with_project(&db, "workspaces").await;
    let mut conn = db.pool.acquire().await.expect("conn");
    let worker = workers::register(&mut conn, "w1", 2).await.expect("worker");
    let later = OffsetDateTime::now_utc() + time::Duration::minutes(15);
    // Each step: what storage did, and what the lifecycle says, from the same state.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Claim,
        Release,
    }
    let paths: [(Duration, &[Step]); 3] = [
        (
            Duration::from_secs(900),
            &[Step::Claim, Step::Claim, Step::Release],
        ),
        (Duration::from_secs(900), &[Step::Release, Step::Claim]),
        // Its time is up at once: nobody can claim it, its worker can still release it.
        (Duration::ZERO, &[Step::Claim, Step::Release]),
    ];
    for (ttl, steps) in paths {
        let Submitted::Created(run) = submit(&db, org, project, None).await else {
            panic!("new run expected");
        };
        workspaces::keep(&mut conn, run.id, "container", worker.id, ttl)
            .await
            .expect("keep");
        let until = if ttl.is_zero() {
            OffsetDateTime::now_utc()
        } else {
            later
        };
        let mut state = WorkspaceState::Active
            .next(WorkspaceEvent::Keep { until })
            .expect("kept");
        for step in steps {
            let (stored, event) = match step {
                Step::Claim => (
                    workspaces::claim(&mut conn, run.id)
                        .await
                        .expect("claim")
                        .is_some(),
                    WorkspaceEvent::Claim {
                        at: OffsetDateTime::now_utc(),
                    },
                ),
                Step::Release => (
                    workspaces::release(&mut conn, run.id)
                        .await
                        .expect("release"),
                    WorkspaceEvent::Release,
                ),
            };
            let modelled = state.next(event);
            assert_eq!(stored, modelled.is_ok(), "{state:?} {step:?} (ttl {ttl:?})");
            if let Ok(next) = modelled {
                state = next;
            }
        }
    }
}
