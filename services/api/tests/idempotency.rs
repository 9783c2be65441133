//! `Idempotency-Key` on a mutating route: a repeat replays the first answer and changes nothing;
//! the key for another request is refused; a failed request frees its key; keys are per caller.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cadenza_domain::Role;
use cadenza_testkit::fixtures::{org_with_queued_run, user_with_token};
use cadenza_testkit::infra::unique_name;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;
use common::app;

async fn send(
    app: &common::App,
    method: &str,
    uri: &str,
    token: &str,
    key: &str,
    body: Value,
) -> (StatusCode, bool, Value) {
    let response = app
        .router
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(Body::from(body.to_string()))
                .expect("request"),
        )
        .await
        .expect("answer");
    let status = response.status();
    let replayed = response.headers().get("idempotent-replayed").is_some();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, replayed, body)
}

#[tokio::test]
async fn a_repeated_request_replays_its_first_answer_and_changes_nothing_more() {
    let app = app(json!({})).await;
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let (org, _, _) = org_with_queued_run(&mut conn, "idem").await.expect("org");
    let owner = |label: &'static str| {
        let email = format!("{}@example.com", unique_name(label));
        let org = org.id;
        let pool = app.db.pool.clone();
        async move {
            let mut conn = pool.acquire().await.expect("conn");
            user_with_token(&mut conn, &email, &[(org, Role::Owner)], false, None)
                .await
                .expect("owner")
                .1
        }
    };
    let first = owner("first-").await;
    let second = owner("second-").await;
    let uri = format!("/api/v1/orgs/{}", org.id);
    let audits = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("select count(*) from audit_log where action = 'org.update'")
            .fetch_one(&pool)
            .await
            .expect("count")
    };

    let (status, replayed, renamed) = send(
        &app,
        "PATCH",
        &uri,
        &first,
        "rename-1",
        json!({"name": "Renamed"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert!(!replayed);
    let (status, replayed, again) = send(
        &app,
        "PATCH",
        &uri,
        &first,
        "rename-1",
        json!({"name": "Renamed"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert!(replayed, "marked as a replay");
    assert_eq!(again, renamed, "the first answer");
    assert_eq!(audits(app.db.pool.clone()).await, 1, "changed once");

    // The key for a different request.
    let (status, _, problem) = send(
        &app,
        "PATCH",
        &uri,
        &first,
        "rename-1",
        json!({"name": "Other"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("different request"),
        "{problem}"
    );

    // A failed request frees its key: fixed, it runs.
    let (status, _, _) = send(&app, "PATCH", &uri, &first, "rename-2", json!({"name": ""})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, replayed, fixed) = send(
        &app,
        "PATCH",
        &uri,
        &first,
        "rename-2",
        json!({"name": "Fixed"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{fixed}");
    assert!(!replayed);
    assert_eq!(fixed["name"], "Fixed");

    // Another caller's same key is theirs alone.
    let (status, replayed, theirs) = send(
        &app,
        "PATCH",
        &uri,
        &second,
        "rename-1",
        json!({"name": "Theirs"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{theirs}");
    assert!(!replayed);
    assert_eq!(theirs["name"], "Theirs");
    assert_eq!(audits(app.db.pool.clone()).await, 3);

    // A key that is not one is refused before anything runs.
    let (status, _, _) = send(
        &app,
        "PATCH",
        &uri,
        &first,
        &"k".repeat(300),
        json!({"name": "X"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    drop(conn);
}

#[tokio::test]
async fn a_nul_character_in_a_body_is_refused_by_name_not_failed_in_the_database() {
    let app = app(json!({})).await;
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let (org, project, _) = org_with_queued_run(&mut conn, "nul").await.expect("org");
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
    for (method, uri, body) in [
        (
            "POST",
            format!("/api/v1/projects/{}/runs", project.id),
            json!({"prompt": "run \u{0}this"}),
        ),
        (
            "PATCH",
            format!("/api/v1/orgs/{}", org.id),
            json!({"name": "a\u{0}b"}),
        ),
    ] {
        let (status, _, problem) = send(&app, method, &uri, &token, "nul-1", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri}: {problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("NUL"),
            "{problem}"
        );
    }
    // An escaped backslash followed by `u0000` is ordinary text.
    let (status, _, run) = send(
        &app,
        "POST",
        &format!("/api/v1/projects/{}/runs", project.id),
        &token,
        "nul-2",
        json!({"prompt": "print \\u0000 literally"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
}
