//! Cancelling a run while something else changes it: the cancel waits for the change and is
//! recorded, never refused with nothing recorded.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cadenza_domain::{Role, RunEvent, RunState, Scope};
use cadenza_storage::runs::{self, Actor, Lease};
use cadenza_storage::workers;
use cadenza_testkit::fixtures::{org_with_queued_run, user_with_token};
use cadenza_testkit::infra::unique_name;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;
use common::app;

#[tokio::test]
async fn a_cancel_racing_a_lease_waits_for_it_and_is_recorded() {
    let app = app(json!({})).await;
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let (org, _, run) = org_with_queued_run(&mut conn, "c")
        .await
        .expect("org with a run");
    let worker = workers::register(&mut conn, &unique_name("w"), 4)
        .await
        .expect("worker");
    let (_, token) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("owner-")),
        &[(org.id, Role::Owner)],
        false,
        None,
    )
    .await
    .expect("owner");
    drop(conn);

    // The scheduler, mid-lease: the run's row is locked and about to become `scheduled`.
    let mut lease = app.db.pool.begin().await.expect("tx");
    runs::transition(
        &mut lease,
        run.id,
        RunState::Queued,
        &RunEvent::Leased,
        Actor::Any,
        Some(Lease {
            worker: worker.id,
            ttl: Duration::from_secs(30),
        }),
    )
    .await
    .expect("lease");

    // The cancel arrives meanwhile, reads the run as `queued`, and has to wait for the lock.
    let router = app.router.clone();
    let cancel = tokio::spawn(async move {
        let request = Request::post(format!("/api/v1/runs/{}/cancel", run.id))
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request");
        let response = router.oneshot(request).await.expect("answer");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
        )
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity \
             where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(&app.db.pool)
        .await
        .expect("activity");
        if waiting > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cancel never waited for the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lease.commit().await.expect("commit the lease");

    let (status, receipt) = cancel.await.expect("cancel");
    assert_eq!(status, StatusCode::ACCEPTED, "{receipt}");
    assert_eq!(receipt["state"], "scheduled", "{receipt}");
    let mut conn = app.db.pool.acquire().await.expect("conn");
    assert_eq!(
        runs::cancel_request(&mut conn, run.id).await.expect("read"),
        Some(
            receipt["correlation_id"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .expect("correlation id")
        ),
        "the cancel is recorded, for the worker to honour"
    );
    let run = runs::get(&mut conn, &Scope::Instance, run.id)
        .await
        .expect("run");
    assert_eq!(run.state, RunState::Scheduled);
}
