//! Retrying an ended run starts a new run of its prompt; a repeat with the same key does not.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cadenza_domain::{Role, RunEvent, RunState, Scope, TerminalCode, TerminalReason};
use cadenza_storage::runs::{self, Actor};
use cadenza_testkit::fixtures::{org_with_queued_run, user_with_token};
use cadenza_testkit::infra::unique_name;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;
use common::app;

async fn retry(
    app: &common::App,
    token: &str,
    run: &str,
    key: Option<&str>,
) -> (StatusCode, Option<String>, Value) {
    let mut request = Request::post(format!("/api/v1/runs/{run}/retry"))
        .header("authorization", format!("Bearer {token}"));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = app
        .router
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("answer");
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        location,
        serde_json::from_slice(&body).expect("json"),
    )
}

#[tokio::test]
async fn an_ended_run_is_retried_as_a_new_run_once_per_key_and_a_live_one_is_refused() {
    let app = app(json!({})).await;
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let (org, project, run) = org_with_queued_run(&mut conn, "retry").await.expect("run");
    let (_, token) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("member-")),
        &[(org.id, Role::Member)],
        false,
        None,
    )
    .await
    .expect("member");

    let (status, _, refused) = retry(&app, &token, &run.id.to_string(), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("`queued`"),
        "{refused}"
    );

    runs::transition(
        &mut conn,
        run.id,
        RunState::Queued,
        &RunEvent::Cancelled(TerminalReason::new(TerminalCode::Cancelled, "test")),
        Actor::Any,
        None,
    )
    .await
    .expect("ended");

    let (status, location, receipt) = retry(&app, &token, &run.id.to_string(), Some("k-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{receipt}");
    assert_eq!(receipt["action"], "retry");
    assert_eq!(receipt["run_id"], run.id.to_string());
    let new_id = receipt["retry_run_id"]
        .as_str()
        .expect("the new run")
        .to_owned();
    assert_ne!(new_id, run.id.to_string());
    assert_eq!(
        location.as_deref(),
        Some(format!("/api/v1/runs/{new_id}").as_str())
    );
    let new_run = runs::get(&mut conn, &Scope::Instance, new_id.parse().expect("id"))
        .await
        .expect("stored");
    assert_eq!(new_run.state, RunState::Queued);
    assert_eq!(new_run.prompt, run.prompt);
    assert_eq!(new_run.project_id, project.id);

    let (status, _, again) = retry(&app, &token, &run.id.to_string(), Some("k-1")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        again["retry_run_id"], new_id,
        "the same key answers the first retry"
    );

    let audited: Vec<(String, Value)> =
        sqlx::query_as("select action, diff from audit_log where resource_id = $1 order by id")
            .bind(&new_id)
            .fetch_all(&mut *conn)
            .await
            .expect("audit");
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0].0, "run.retry");
    assert_eq!(audited[0].1["retry_of"]["after"], run.id.to_string());
}
