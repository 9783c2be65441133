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

#[tokio::test]
async fn a_run_exports_as_an_archive_of_its_metadata_journal_and_patch() {
    use std::io::Read;

    let app = app(json!({})).await;
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let (org, _, run) = org_with_queued_run(&mut conn, "export").await.expect("run");
    let (_, token) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("viewer-")),
        &[(org.id, Role::Viewer)],
        false,
        None,
    )
    .await
    .expect("viewer");
    sqlx::query("insert into run_diffs (run_id, org_id, patch) values ($1, $2, $3)")
        .bind(run.id.as_uuid())
        .bind(org.id.as_uuid())
        .bind(PATCH)
        .execute(&mut *conn)
        .await
        .expect("diff");
    let journal = cadenza_storage::journal::list_after(
        &mut conn,
        &cadenza_domain::Scope::Instance,
        run.id,
        0,
        100,
    )
    .await
    .expect("journal");
    assert!(!journal.is_empty(), "a queued run has its first entry");
    drop(conn);

    let response = app
        .router
        .clone()
        .oneshot(
            Request::get(format!("/api/v1/runs/{}/export", run.id))
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/gzip");
    assert_eq!(
        response.headers()["content-disposition"],
        format!("attachment; filename=\"run-{}.tar.gz\"", run.id).as_str()
    );
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&body[..]));
    let mut files = std::collections::BTreeMap::new();
    for entry in archive.entries().expect("a tar archive") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").to_string_lossy().into_owned();
        let mut text = String::new();
        entry.read_to_string(&mut text).expect("text");
        files.insert(name, text);
    }
    assert_eq!(
        files.keys().map(String::as_str).collect::<Vec<_>>(),
        ["journal.jsonl", "manifest.json", "patch.diff", "run.json"]
    );
    assert_eq!(files["patch.diff"], PATCH);
    let exported: Value = serde_json::from_str(&files["run.json"]).expect("run");
    assert_eq!(exported["id"], run.id.to_string());
    let seqs: Vec<i64> = files["journal.jsonl"]
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).expect("a JSON line")["seq"]
                .as_i64()
                .expect("seq")
        })
        .collect();
    let stored: Vec<i64> = journal.iter().map(|event| event.seq).collect();
    assert_eq!(seqs, stored, "every journal entry, in order");
    let manifest: Value = serde_json::from_str(&files["manifest.json"]).expect("manifest");
    assert_eq!(manifest["format"], "cadenza-run-export");
    assert_eq!(manifest["journal_entries"], stored.len());
}
