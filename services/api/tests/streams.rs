//! Run event streams: the per-caller cap, access re-checks while a stream is open, what an idle
//! stream costs, and shutdown. Against the real router with real Postgres, NATS and Redis.

use std::time::Duration;

use axum::http::StatusCode;
use cadenza_domain::{EventKind, OrgId, Role, RunId, UserId};
use cadenza_storage::journal::{self, NewJournalEvent};
use cadenza_storage::memberships;
use cadenza_testkit::fixtures::{org_with_queued_run, user_with_token};
use cadenza_testkit::infra::unique_name;
use serde_json::{Value, json};

mod common;
use common::{App, BUDGET, Frame, Reader, app};

/// An org with one run that has not ended, and a member (with a personal token) who may read it.
struct Fixture {
    org: OrgId,
    run: RunId,
    member: UserId,
    token: String,
}

async fn fixture(app: &App) -> Fixture {
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let (org, _, run) = org_with_queued_run(&mut conn, "s")
        .await
        .expect("org with a run");
    let (member, token) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("viewer-")),
        &[(org.id, Role::Viewer)],
        false,
        None,
    )
    .await
    .expect("member");
    Fixture {
        org: org.id,
        run: run.id,
        member,
        token,
    }
}

async fn open(app: &App, run: RunId, token: &str) -> Result<Reader, (StatusCode, Value)> {
    common::open_stream(
        app,
        &format!("/api/v1/runs/{run}/events/stream"),
        token,
        None,
    )
    .await
}

/// Opens a stream and reads the run's first entry (`queued`), so what follows is new.
async fn open_caught_up(app: &App, run: RunId, token: &str) -> Reader {
    let mut reader = open(app, run, token).await.expect("the stream opens");
    let (id, event, _) = reader.next_event().await.expect("the first entry");
    assert_eq!((id.as_deref(), event.as_str()), (Some("1"), "run_state"));
    reader
}

/// Appends an entry to the run's journal and fans it out, as the worker does.
async fn append(app: &App, fixture: &Fixture, text: &str) -> i64 {
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let event = journal::append(
        &mut conn,
        NewJournalEvent {
            run_id: fixture.run,
            org_id: fixture.org,
            kind: EventKind::Message,
            payload: json!({ "role": "assistant", "text": text }),
            raw: None,
            source_event_id: None,
            source_seq: None,
            occurred_at: time::OffsetDateTime::now_utc(),
            fence: None,
        },
    )
    .await
    .expect("append")
    .expect("appended");
    app.state.bus.publish_journal_event(&event).await;
    event.seq
}

/// Reads the stream to its end and returns the final event, which must say why it closed.
async fn closing_event(reader: &mut Reader) -> Value {
    let mut last = None;
    while let Some((id, event, data)) = reader.next_event().await {
        if event == "stream_closed" {
            assert_eq!(
                id, None,
                "the closing event carries no id, so a resume skips it"
            );
            last = Some(data);
            break;
        }
    }
    let closed = last.expect("a stream_closed event before the end");
    assert!(
        reader.next_event().await.is_none(),
        "nothing follows stream_closed"
    );
    closed
}

#[tokio::test]
async fn one_caller_holds_at_most_the_configured_number_of_streams() {
    let app = app(json!({ "max_streams_per_caller": 2 })).await;
    let fixture = fixture(&app).await;
    let first = open(&app, fixture.run, &fixture.token)
        .await
        .expect("first");
    let _second = open(&app, fixture.run, &fixture.token)
        .await
        .expect("second");
    let Err((status, problem)) = open(&app, fixture.run, &fixture.token).await else {
        panic!("a third stream of the same caller was accepted");
    };
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem["code"], "too_many_streams", "{problem}");
    assert!(
        problem["detail"].as_str().unwrap_or_default().contains('2'),
        "{problem}"
    );

    // Another caller is not affected.
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let (_, other) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("other-")),
        &[(fixture.org, Role::Viewer)],
        false,
        None,
    )
    .await
    .expect("other");
    let _theirs = open(&app, fixture.run, &other)
        .await
        .expect("another caller's stream");

    // Closing a stream gives its place back (released asynchronously; bounded wait).
    drop(first);
    let deadline = tokio::time::Instant::now() + BUDGET;
    loop {
        match open(&app, fixture.run, &fixture.token).await {
            Ok(_) => break,
            Err((status, _)) if status == StatusCode::TOO_MANY_REQUESTS => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the closed stream's place was never released"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("unexpected answer {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_stream_closes_with_a_reason_when_its_token_is_revoked() {
    let app = app(json!({ "stream_access_recheck": "200ms" })).await;
    let fixture = fixture(&app).await;
    let mut reader = open_caught_up(&app, fixture.run, &fixture.token).await;
    let seq = append(&app, &fixture, "before").await;
    let (id, _, _) = reader.next_event().await.expect("the entry arrives");
    assert_eq!(id, Some(seq.to_string()));

    sqlx::query("update api_tokens set revoked_at = now() where user_id = $1")
        .bind(fixture.member.as_uuid())
        .execute(&app.db.pool)
        .await
        .expect("revoke");
    let closed = closing_event(&mut reader).await;
    assert_eq!(closed["reason"], "unauthenticated", "{closed}");
    assert_eq!(closed["retryable"], false);
}

#[tokio::test]
async fn a_stream_closes_with_a_reason_when_its_member_is_removed() {
    let app = app(json!({ "stream_access_recheck": "200ms" })).await;
    let fixture = fixture(&app).await;
    let mut reader = open_caught_up(&app, fixture.run, &fixture.token).await;
    let mut conn = app.db.pool.acquire().await.expect("conn");
    memberships::remove(&mut conn, fixture.org, fixture.member)
        .await
        .expect("remove");
    let closed = closing_event(&mut reader).await;
    assert_eq!(closed["reason"], "access_revoked", "{closed}");
    // Once closed, the same caller cannot open it again.
    let Err((status, _)) = open(&app, fixture.run, &fixture.token).await else {
        panic!("a removed member reopened the stream");
    };
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_idle_stream_reads_postgres_only_when_woken() {
    // Keep-alives every 100 ms are the clock: 15 of them span 1.5 s, in which the old 1 s
    // fallback poll read Postgres at least once.
    let app = app(json!({
        "stream_keepalive": "100ms",
        "stream_safety_poll": "1h",
        "stream_access_recheck": "60s",
    }))
    .await;
    let fixture = fixture(&app).await;
    let stats = app.state.streams.stats.clone();
    let mut reader = open_caught_up(&app, fixture.run, &fixture.token).await;
    let mut comments = 0;
    let mut reads_when_parked = None;
    while comments < 15 {
        match reader.next().await.expect("stream open") {
            Frame::Comment => {
                comments += 1;
                // The first keep-alive comes only once the stream waits: its catch-up is done.
                reads_when_parked.get_or_insert(stats.journal_reads());
            }
            Frame::Event { event, .. } => panic!("unexpected {event}"),
        }
    }
    let parked = reads_when_parked.expect("parked");
    assert_eq!(
        stats.journal_reads(),
        parked,
        "an idle stream read Postgres with nothing to read"
    );

    // A new entry arrives over NATS, in order, without a Postgres read.
    for text in ["one", "two", "three"] {
        let seq = append(&app, &fixture, text).await;
        let (id, event, data) = reader.next_event().await.expect("entry");
        assert_eq!((id, event.as_str()), (Some(seq.to_string()), "message"));
        assert_eq!(data["payload"]["text"], text);
    }
    assert_eq!(
        stats.journal_reads(),
        parked,
        "entries delivered in order over NATS need no Postgres read"
    );
    assert_eq!(stats.open(), 1);
    drop(reader);
    assert_eq!(stats.open(), 0, "a dropped stream is no longer counted");
}

#[tokio::test]
async fn a_missed_live_message_is_recovered_from_postgres() {
    // The safety poll recovers an entry whose NATS message never came.
    let app = app(json!({ "stream_safety_poll": "200ms" })).await;
    let fixture = fixture(&app).await;
    let mut reader = open_caught_up(&app, fixture.run, &fixture.token).await;
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let event = journal::append(
        &mut conn,
        NewJournalEvent {
            run_id: fixture.run,
            org_id: fixture.org,
            kind: EventKind::Message,
            payload: json!({ "role": "assistant", "text": "never published" }),
            raw: None,
            source_event_id: None,
            source_seq: None,
            occurred_at: time::OffsetDateTime::now_utc(),
            fence: None,
        },
    )
    .await
    .expect("append")
    .expect("appended");
    let (id, _, data) = reader.next_event().await.expect("recovered");
    assert_eq!(id, Some(event.seq.to_string()));
    assert_eq!(data["payload"]["text"], "never published");
}

#[tokio::test]
async fn shutting_down_closes_open_streams_with_a_retryable_reason() {
    let app = app(json!({})).await;
    let fixture = fixture(&app).await;
    let mut reader = open_caught_up(&app, fixture.run, &fixture.token).await;
    app.shutdown.cancel();
    let closed = closing_event(&mut reader).await;
    assert_eq!(closed["reason"], "server_shutdown", "{closed}");
    assert_eq!(closed["retryable"], true);
}
