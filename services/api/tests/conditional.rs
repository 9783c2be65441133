//! Conditional reads: a JSON read carries an `ETag`; asking again with it answers `304` until
//! what the caller would see changes.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cadenza_domain::{Role, RunEvent, RunState, TerminalCode, TerminalReason};
use cadenza_storage::runs::{self, Actor};
use cadenza_testkit::fixtures::{org_with_queued_run, user_with_token};
use cadenza_testkit::infra::unique_name;
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

mod common;
use common::app;

async fn get(
    app: &common::App,
    token: &str,
    uri: &str,
    if_none_match: Option<&str>,
) -> (StatusCode, Option<String>, Vec<u8>) {
    let mut request = Request::get(uri).header("authorization", format!("Bearer {token}"));
    if let Some(tag) = if_none_match {
        request = request.header("if-none-match", tag);
    }
    let response = app
        .router
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("answer");
    let status = response.status();
    let etag = response
        .headers()
        .get("etag")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, etag, body.to_vec())
}

#[tokio::test]
async fn a_read_answers_not_modified_until_the_run_changes() {
    let app = app(json!({})).await;
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let (org, _, run) = org_with_queued_run(&mut conn, "etag").await.expect("run");
    let (_, token) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("viewer-")),
        &[(org.id, Role::Viewer)],
        false,
        None,
    )
    .await
    .expect("viewer");
    let uri = format!("/api/v1/runs/{}", run.id);

    let (status, etag, body) = get(&app, &token, &uri, None).await;
    assert_eq!(status, StatusCode::OK);
    let etag = etag.expect("a JSON read has an ETag");
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert!(!body.is_empty());

    let (status, again, body) = get(&app, &token, &uri, Some(&etag)).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(again.as_deref(), Some(etag.as_str()));
    assert!(body.is_empty(), "no body with 304");
    let (status, _, _) = get(&app, &token, &uri, Some("\"something-else\"")).await;
    assert_eq!(status, StatusCode::OK, "another tag is not a match");

    runs::transition(
        &mut conn,
        run.id,
        RunState::Queued,
        &RunEvent::Cancelled(TerminalReason::new(TerminalCode::Cancelled, "test")),
        Actor::Any,
        None,
    )
    .await
    .expect("changed");
    let (status, changed, body) = get(&app, &token, &uri, Some(&etag)).await;
    assert_eq!(status, StatusCode::OK, "the run changed");
    assert_ne!(changed.as_deref(), Some(etag.as_str()));
    let view: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(view["state"], "cancelled");

    // Not JSON: a patch or a stream carries no ETag.
    let (status, none, _) = get(&app, &token, &format!("{uri}/diff"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(none.is_none());
}
