//! A run's patch read as files: the list with line counts, and one file's part.

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

const PATCH: &str = "Cadenza left changes out of this diff:\n  big.bin: larger than the limit\n\n\
diff --git a/README.md b/README.md\nnew file mode 100644\n--- /dev/null\n+++ b/README.md\n@@ -0,0 +1,2 @@\n+# Hello\n+world\n\
diff --git a/src/lib.rs b/src/lib.rs\n--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1 +1 @@\n-old\n+new\n";

async fn get(app: &common::App, token: &str, uri: &str) -> (StatusCode, String, String) {
    let response = app
        .router
        .clone()
        .oneshot(
            Request::get(uri)
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("answer");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn a_runs_patch_is_listed_as_files_and_each_file_can_be_read_alone() {
    let app = app(json!({})).await;
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let (org, _, run) = org_with_queued_run(&mut conn, "files").await.expect("run");
    let (_, token) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("viewer-")),
        &[(org.id, Role::Viewer)],
        false,
        None,
    )
    .await
    .expect("viewer");

    let (status, _, body) = get(&app, &token, &format!("/api/v1/runs/{}/files", run.id)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no diff yet: {body}");
    assert!(body.contains("has no diff yet"), "{body}");

    // As the run's worker stores it (fenced there; directly here).
    sqlx::query(
        "insert into run_diffs (run_id, org_id, patch, base_commit) values ($1, $2, $3, $4)",
    )
    .bind(run.id.as_uuid())
    .bind(org.id.as_uuid())
    .bind(PATCH)
    .bind("abc123")
    .execute(&mut *conn)
    .await
    .expect("diff");
    drop(conn);

    let (status, _, body) = get(&app, &token, &format!("/api/v1/runs/{}/files", run.id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(listed["base_commit"], "abc123");
    assert_eq!(
        listed["omitted"],
        "Cadenza left changes out of this diff:\n  big.bin: larger than the limit"
    );
    assert_eq!(
        listed["files"],
        json!([
            {"path": "README.md", "old_path": null, "status": "added", "additions": 2, "deletions": 0, "binary": false},
            {"path": "src/lib.rs", "old_path": null, "status": "modified", "additions": 1, "deletions": 1, "binary": false},
        ])
    );

    let (status, content_type, body) = get(
        &app,
        &token,
        &format!("/api/v1/runs/{}/files/patch?path=src%2Flib.rs", run.id),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(content_type.starts_with("text/x-patch"), "{content_type}");
    assert_eq!(
        body,
        "diff --git a/src/lib.rs b/src/lib.rs\n--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1 +1 @@\n-old\n+new\n"
    );

    let (status, _, body) = get(
        &app,
        &token,
        &format!("/api/v1/runs/{}/files/patch?path=nope.txt", run.id),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("does not change `nope.txt`"), "{body}");
}
