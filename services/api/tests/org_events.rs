//! The org event journal, its stream and the dashboard snapshot, against the real router with
//! real Postgres, NATS and Redis: every change leaves one entry in order, readers see what their
//! permissions allow, a stream resumes exactly where it left off, a slow reader is told it fell
//! behind and loses nothing while a fast one keeps up, and a snapshot followed by the stream
//! from its cursor ends with exactly the state the database holds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use cadenza_domain::{OrgId, Permission, ProjectId, Role};
use cadenza_storage::runs::{self, NewRun};
use cadenza_storage::{memberships, org_events, users};
use cadenza_testkit::fixtures::user_with_token;
use cadenza_testkit::infra::unique_name;
use serde_json::{Value, json};

mod common;
use common::{App, BUDGET, Reader, app, call, open_stream};

/// An org made through the API by its owner, with one project.
struct Org {
    id: OrgId,
    project: ProjectId,
    owner_token: String,
}

async fn org(app: &App, name: &str) -> Org {
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let (_, owner_token) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("owner-")),
        &[],
        false,
        None,
    )
    .await
    .expect("owner");
    drop(conn);
    let slug = unique_name(name);
    let (status, org) = call(
        app,
        "POST",
        "/api/v1/orgs",
        &owner_token,
        Some(json!({"slug": slug, "name": name})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{org}");
    let id: OrgId = org["id"].as_str().expect("id").parse().expect("org id");
    let (status, project) = call(
        app,
        "POST",
        &format!("/api/v1/orgs/{id}/projects"),
        &owner_token,
        Some(json!({"slug": "web", "name": "Web"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{project}");
    Org {
        id,
        project: project["id"]
            .as_str()
            .expect("id")
            .parse()
            .expect("project id"),
        owner_token,
    }
}

/// Every entry of the org after `after`, read through the list endpoint page by page.
async fn list_all(app: &App, org: OrgId, token: &str, after: i64) -> Vec<Value> {
    let mut cursor = after.to_string();
    let mut entries = Vec::new();
    for _ in 0..1000 {
        let (status, page) = call(
            app,
            "GET",
            &format!("/api/v1/orgs/{org}/events?cursor={cursor}&limit=7"),
            token,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let next = page["next_cursor"].as_str().expect("cursor").to_owned();
        let items = page["items"].as_array().expect("items").clone();
        if next == cursor {
            assert!(
                items.is_empty(),
                "a page that did not advance holds nothing"
            );
            return entries;
        }
        entries.extend(items);
        cursor = next;
    }
    panic!("the journal did not end within 1000 pages");
}

async fn head(app: &App, org: OrgId) -> i64 {
    let mut conn = app.db.pool.acquire().await.expect("conn");
    org_events::head(&mut conn, org).await.expect("head")
}

/// Queues `count` runs in one transaction, straight in storage (a burst of `run.created`).
async fn queue_runs(app: &App, org: &Org, count: usize) {
    let mut tx = app.db.pool.begin().await.expect("tx");
    for _ in 0..count {
        runs::submit(
            &mut tx,
            NewRun {
                org_id: org.id,
                project_id: org.project,
                prompt: "$ true",
                idempotency_key: None,
            },
        )
        .await
        .expect("run");
    }
    tx.commit().await.expect("commit");
}

/// Reads `reader` until it has delivered entry `until`; the entries' seqs and how many
/// `stream_lagged` notices came with them.
async fn read_through(reader: &mut Reader, until: i64) -> (Vec<i64>, usize) {
    let mut seqs = Vec::new();
    let mut lagged = 0;
    while seqs.last().copied().unwrap_or(i64::MIN) < until {
        let (id, event, data) = reader.next_event().await.expect("the stream goes on");
        match event.as_str() {
            "stream_lagged" => {
                assert!(id.is_none(), "a notice has no id");
                assert!(data["missed"].as_u64().unwrap_or(0) > 0, "{data}");
                lagged += 1;
            }
            "stream_closed" => panic!("the stream closed: {data}"),
            kind => {
                let seq = data["seq"].as_i64().expect("seq");
                assert_eq!(id, Some(seq.to_string()), "the SSE id is the seq");
                assert_eq!(data["kind"], kind, "the SSE event is the kind");
                assert_eq!(data["version"], 1);
                seqs.push(seq);
            }
        }
    }
    (seqs, lagged)
}

#[tokio::test]
async fn every_change_in_an_org_leaves_one_entry_in_order_with_the_receipts_correlation() {
    let app = app(json!({})).await;
    let org = org(&app, "journal").await;
    let other = self::org(&app, "elsewhere").await;
    let token = org.owner_token.clone();

    // A run, cancelled; then retried.
    let (status, run) = call(
        &app,
        "POST",
        &format!("/api/v1/projects/{}/runs", org.project),
        &token,
        Some(json!({"prompt": "fix the build"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let run_id = run["id"].as_str().expect("id").to_owned();
    let (status, cancel) = call(
        &app,
        "POST",
        &format!("/api/v1/runs/{run_id}/cancel"),
        &token,
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a queued run ends at once: {cancel}"
    );
    let (status, retry) = call(
        &app,
        "POST",
        &format!("/api/v1/runs/{run_id}/retry"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{retry}");
    // A member added, promoted, removed.
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let member = users::ensure(
        &mut conn,
        &format!("{}@example.com", unique_name("m-")),
        None,
    )
    .await
    .expect("user");
    memberships::add(&mut conn, org.id, member.id, Role::Viewer)
        .await
        .expect("member");
    drop(conn);
    let (status, body) = call(
        &app,
        "PATCH",
        &format!("/api/v1/orgs/{}/members/{}", org.id, member.id),
        &token,
        Some(json!({"role": "member"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(
        &app,
        "DELETE",
        &format!("/api/v1/orgs/{}/members/{}", org.id, member.id),
        &token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    // The org renamed, the project renamed then deleted.
    let (status, body) = call(
        &app,
        "PATCH",
        &format!("/api/v1/orgs/{}", org.id),
        &token,
        Some(json!({"name": "Journal Inc"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(
        &app,
        "PATCH",
        &format!("/api/v1/projects/{}", org.project),
        &token,
        Some(json!({"name": "Website"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(
        &app,
        "DELETE",
        &format!("/api/v1/projects/{}", org.project),
        &token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    let entries = list_all(&app, org.id, &token, 0).await;
    let kinds: Vec<&str> = entries
        .iter()
        .map(|entry| entry["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(
        kinds,
        [
            "member.added", // the owner, when the org was made
            "project.created",
            "run.created",
            "run.state_changed",
            "run.created",
            "member.added",
            "member.role_changed",
            "member.removed",
            "org.updated",
            "project.updated",
            "project.deleted",
        ],
        "{entries:#?}"
    );
    let seqs: Vec<i64> = entries
        .iter()
        .map(|entry| entry["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "dense from 1"
    );
    assert_eq!(head(&app, org.id).await, seqs.len() as i64);
    assert!(
        entries
            .iter()
            .all(|entry| entry["org_id"] == org.id.to_string()),
        "only this org's entries"
    );
    let cancelled = &entries[3];
    assert_eq!(cancelled["data"]["to"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["data"]["terminal"], true);
    assert_eq!(cancelled["subject"], json!({"kind": "run", "id": run_id}));
    assert_eq!(cancelled["correlation_id"], cancel["correlation_id"]);
    let retried = &entries[4];
    assert_eq!(retried["data"]["run_id"], retry["retry_run_id"]);
    assert_eq!(retried["correlation_id"], retry["correlation_id"]);
    assert_eq!(
        entries[2]["correlation_id"],
        Value::Null,
        "a plain create names none"
    );
    assert_eq!(
        entries[6]["data"],
        json!({"user_id": member.id.to_string(), "from": "viewer", "to": "member"})
    );
    assert_eq!(entries[8]["data"]["name"], "Journal Inc");

    // The other org's journal is its own.
    let theirs = list_all(&app, other.id, &other.owner_token, 0).await;
    assert_eq!(theirs.len(), 2, "{theirs:#?}");
    let (status, _) = call(
        &app,
        "GET",
        &format!("/api/v1/orgs/{}/events", other.id),
        &token,
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another org's journal does not exist for us"
    );
}

#[tokio::test]
async fn a_reader_sees_only_the_entries_its_permissions_allow() {
    let app = app(json!({})).await;
    let org = org(&app, "perms").await;
    queue_runs(&app, &org, 2).await;
    let mut conn = app.db.pool.acquire().await.expect("conn");
    // Narrowed to reading the org: members and the org itself, not runs or projects.
    let (_, narrowed) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("n-")),
        &[(org.id, Role::Admin)],
        false,
        Some(&[Permission::OrgRead]),
    )
    .await
    .expect("narrowed");
    drop(conn);
    let all = list_all(&app, org.id, &org.owner_token, 0).await;
    let seen = list_all(&app, org.id, &narrowed, 0).await;
    let kinds = |entries: &[Value]| -> Vec<String> {
        entries
            .iter()
            .map(|entry| entry["kind"].as_str().expect("kind").to_owned())
            .collect()
    };
    assert_eq!(
        kinds(&all),
        [
            "member.added",
            "project.created",
            "run.created",
            "run.created",
            "member.added"
        ]
    );
    assert_eq!(kinds(&seen), ["member.added", "member.added"]);
    // The stream filters the same way, and its cursor still moves over what it hides.
    let mut reader = open_stream(
        &app,
        &format!("/api/v1/orgs/{}/events/stream", org.id),
        &narrowed,
        None,
    )
    .await
    .expect("stream");
    let (seqs, _) = read_through(&mut reader, 5).await;
    assert_eq!(seqs, [1, 5]);
}

#[tokio::test]
async fn the_stream_resumes_after_last_event_id_with_no_gap_and_no_repeat() {
    let app = app(json!({})).await;
    let org = org(&app, "resume").await;
    queue_runs(&app, &org, 3).await;
    let uri = format!("/api/v1/orgs/{}/events/stream", org.id);
    let mut reader = open_stream(&app, &uri, &org.owner_token, None)
        .await
        .expect("stream");
    let (first, _) = read_through(&mut reader, 3).await;
    assert_eq!(first, [1, 2, 3]);
    drop(reader);
    queue_runs(&app, &org, 4).await;
    let mut reader = open_stream(&app, &uri, &org.owner_token, Some("3"))
        .await
        .expect("stream");
    let (rest, _) = read_through(&mut reader, 9).await;
    assert_eq!(
        rest,
        [4, 5, 6, 7, 8, 9],
        "history after the cursor, then live"
    );
    queue_runs(&app, &org, 1).await;
    let (live, _) = read_through(&mut reader, 10).await;
    assert_eq!(live, [10]);

    // Cursors the journal cannot continue from are refused, by name.
    let (status, problem) = open_stream(&app, &uri, &org.owner_token, Some("11"))
        .await
        .err()
        .expect("refused");
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    let (status, problem) = call(
        &app,
        "GET",
        &format!("/api/v1/orgs/{}/events?cursor=x", org.id),
        &org.owner_token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    let mut conn = app.db.pool.acquire().await.expect("conn");
    sqlx::query("update org_events set occurred_at = now() - interval '40 days' where org_id = $1 and seq <= 4")
        .bind(org.id.as_uuid())
        .execute(&mut *conn)
        .await
        .expect("age");
    let pruned = org_events::prune(&mut conn, 30, 1000).await.expect("prune");
    assert!(pruned >= 4, "pruned {pruned}");
    drop(conn);
    let (status, problem) = open_stream(&app, &uri, &org.owner_token, Some("2"))
        .await
        .err()
        .expect("gone");
    assert_eq!(status, StatusCode::GONE, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("snapshot"),
        "{problem}"
    );
    let (status, page) = call(
        &app,
        "GET",
        &format!("/api/v1/orgs/{}/events?cursor=4", org.id),
        &org.owner_token,
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a cursor at the kept edge goes on: {page}"
    );
    assert_eq!(page["items"][0]["seq"], 5);
}

#[tokio::test]
async fn a_slow_reader_is_told_it_fell_behind_and_loses_nothing_while_a_fast_one_keeps_up() {
    const QUEUE: usize = 32;
    const BATCHES: usize = 20;
    const PER_BATCH: usize = 25;
    let app = app(json!({"org_stream_queue": QUEUE})).await;
    let org = org(&app, "slow").await;
    let start = head(&app, org.id).await;
    let uri = format!("/api/v1/orgs/{}/events/stream", org.id);
    let mut slow = open_stream(&app, &uri, &org.owner_token, None)
        .await
        .expect("slow");
    let mut fast = open_stream(&app, &uri, &org.owner_token, None)
        .await
        .expect("fast");
    // Both are live (past their history) before the burst.
    assert_eq!(read_through(&mut slow, start).await.0.len() as i64, start);
    assert_eq!(read_through(&mut fast, start).await.0.len() as i64, start);

    // The slow reader reads nothing during the burst; the fast one keeps up with each batch.
    let mut fast_seqs = Vec::new();
    let mut latencies = Vec::new();
    for batch in 1..=BATCHES {
        queue_runs(&app, &org, PER_BATCH).await;
        let committed = Instant::now();
        let until = start + (batch * PER_BATCH) as i64;
        let (seqs, lagged) = tokio::time::timeout(BUDGET, read_through(&mut fast, until))
            .await
            .expect("the fast reader keeps up");
        latencies.push(committed.elapsed());
        assert_eq!(lagged, 0, "the fast reader never falls behind");
        fast_seqs.extend(seqs);
    }
    let end = start + (BATCHES * PER_BATCH) as i64;
    let expected: Vec<i64> = (start + 1..=end).collect();
    assert_eq!(fast_seqs, expected);

    let (slow_seqs, lagged) = tokio::time::timeout(BUDGET, read_through(&mut slow, end))
        .await
        .expect("the slow reader catches up");
    assert!(lagged >= 1, "the slow reader was told it fell behind");
    assert_eq!(slow_seqs, expected, "and lost nothing, saw nothing twice");

    latencies.sort();
    println!(
        "fast reader, commit to last entry of a batch of {PER_BATCH}: median {:?}, max {:?}; \
         slow reader: {lagged} lag notice(s), {} entries, queue {QUEUE}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        slow_seqs.len()
    );
}

/// What a dashboard holds: each active run's state.
type Board = BTreeMap<String, String>;

#[tokio::test]
async fn a_snapshot_then_the_stream_from_its_cursor_ends_with_exactly_the_database_state() {
    let app = app(json!({})).await;
    let org = org(&app, "board").await;
    let midway = Arc::new(tokio::sync::Notify::new());
    // A burst of creations and cancellations through the API, while the snapshot is taken.
    let burst = {
        let router = app.router.clone();
        let project = org.project;
        let token = org.owner_token.clone();
        let midway = midway.clone();
        tokio::spawn(async move {
            for round in 0..40 {
                let (status, run) = common::call_router(
                    &router,
                    "POST",
                    &format!("/api/v1/projects/{project}/runs"),
                    &token,
                    Some(json!({"prompt": format!("task {round}")})),
                )
                .await;
                assert_eq!(status, StatusCode::CREATED, "{run}");
                if round % 3 == 0 {
                    let (status, receipt) = common::call_router(
                        &router,
                        "POST",
                        &format!("/api/v1/runs/{}/cancel", run["id"].as_str().expect("id")),
                        &token,
                        None,
                    )
                    .await;
                    assert_eq!(status, StatusCode::OK, "{receipt}");
                }
                if round == 15 {
                    midway.notify_one();
                }
            }
        })
    };
    tokio::time::timeout(BUDGET, midway.notified())
        .await
        .expect("the burst gets midway");
    let (status, snapshot) = call(
        &app,
        "GET",
        &format!("/api/v1/orgs/{}/snapshot", org.id),
        &org.owner_token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{snapshot}");
    let mut board: Board = snapshot["active_runs"]
        .as_array()
        .expect("active runs")
        .iter()
        .map(|active| {
            (
                active["run"]["id"].as_str().expect("id").to_owned(),
                active["run"]["state"].as_str().expect("state").to_owned(),
            )
        })
        .collect();
    assert!(!board.is_empty(), "taken during the burst: {snapshot}");
    let queued = snapshot["queue"].as_array().expect("queue");
    assert_eq!(
        queued.len(),
        board.values().filter(|state| *state == "queued").count()
    );
    assert!(
        queued
            .iter()
            .all(|entry| entry["wait_reason"]["code"] == "no_worker"),
        "no worker runs here: {snapshot}"
    );
    let cursor: i64 = snapshot["cursor"]
        .as_str()
        .expect("cursor")
        .parse()
        .expect("number");

    burst.await.expect("the burst ran");
    let end = head(&app, org.id).await;
    assert!(end > cursor, "the burst went on after the snapshot");
    let mut reader = open_stream(
        &app,
        &format!("/api/v1/orgs/{}/events/stream?cursor={cursor}", org.id),
        &org.owner_token,
        None,
    )
    .await
    .expect("stream");
    let mut last = cursor;
    while last < end {
        let (_, kind, entry) = tokio::time::timeout(BUDGET, reader.next_event())
            .await
            .expect("in time")
            .expect("the stream goes on");
        let seq = entry["seq"].as_i64().expect("seq");
        assert_eq!(seq, last + 1, "{kind}: no gap, no repeat");
        last = seq;
        let run = entry["subject"]["id"].as_str().expect("subject").to_owned();
        match kind.as_str() {
            "run.created" => {
                let previous = board.insert(
                    run,
                    entry["data"]["state"].as_str().expect("state").to_owned(),
                );
                assert!(previous.is_none(), "a run created twice: {entry}");
            }
            "run.state_changed" => {
                if entry["data"]["terminal"] == true {
                    board.remove(&run).expect("an active run ended");
                } else {
                    board.insert(run, entry["data"]["to"].as_str().expect("to").to_owned());
                }
            }
            other => panic!("unexpected {other}"),
        }
    }
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let held: Board = runs::active_in_org(&mut conn, org.id, 1000)
        .await
        .expect("active")
        .into_iter()
        .map(|run| (run.id.to_string(), run.state.as_str().to_owned()))
        .collect();
    assert_eq!(board, held, "the dashboard ends where the database is");
    assert_eq!(held.len(), 40 - 14, "40 runs, 14 cancelled");
}

#[tokio::test]
async fn the_snapshot_shows_capacity_and_health_as_the_caller_may_see_them() {
    let app = app(json!({})).await;
    let org = org(&app, "cap").await;
    let mut conn = app.db.pool.acquire().await.expect("conn");
    cadenza_storage::workers::register(&mut conn, &unique_name("w-"), 3)
        .await
        .expect("worker");
    let (_, admin) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("admin-")),
        &[],
        true,
        None,
    )
    .await
    .expect("admin");
    drop(conn);
    let uri = format!("/api/v1/orgs/{}/snapshot", org.id);
    let (status, member_view) = call(&app, "GET", &uri, &org.owner_token, None).await;
    assert_eq!(status, StatusCode::OK, "{member_view}");
    let (status, admin_view) = call(&app, "GET", &uri, &admin, None).await;
    assert_eq!(status, StatusCode::OK, "{admin_view}");
    for view in [&member_view, &admin_view] {
        assert!(
            view["capacity"]["workers"].as_u64().unwrap_or(0) >= 1,
            "{view}"
        );
        assert!(
            view["capacity"]["slots"].as_i64().unwrap_or(0) >= 3,
            "{view}"
        );
        assert_eq!(view["health"]["status"], "ok", "{view}");
        let names: Vec<&str> = view["health"]["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .map(|dependency| dependency["name"].as_str().expect("name"))
            .collect();
        assert_eq!(names, ["postgres", "nats", "redis"]);
    }
    assert!(
        member_view["capacity"].get("per_worker").is_none(),
        "summarized for members"
    );
    assert!(
        admin_view["capacity"]["per_worker"]
            .as_array()
            .is_some_and(|workers| !workers.is_empty()),
        "each worker for instance administrators: {admin_view}"
    );
    assert_eq!(
        member_view["recent_events"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(member_view["cursor"], "2");
}
