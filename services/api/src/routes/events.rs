//! The run journal over REST and Server-Sent Events.
//!
//! The SSE stream is gap-free by construction: it subscribes to live fan-out *before* reading
//! history, delivers a live event directly only when it is exactly the next sequence number, and
//! otherwise (a gap, a lost message, a quiet period) reads Postgres from its cursor. Postgres is
//! the source of truth; NATS only makes delivery fast.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cadenza_bus::messages::LiveEvent;
use cadenza_bus::subjects;
use cadenza_domain::{JournalEvent, RunId, Scope};
use cadenza_storage::{StorageError, journal, runs};
use futures::{Stream, StreamExt};
use serde::Deserialize;

use crate::auth::{Authorized, perm};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, page_limit};
use crate::routes::runs::load_run;
use crate::routes::wire::{EventView, Page};
use crate::state::AppState;

/// How long the stream waits for a live event before checking Postgres anyway.
const POLL_FALLBACK: Duration = Duration::from_secs(1);
const STREAM_BATCH: i64 = 500;

#[derive(Deserialize)]
pub struct ListQuery {
    cursor: Option<String>,
    limit: Option<i64>,
    include_raw: Option<bool>,
}

fn parse_cursor(raw: Option<&str>) -> ApiResult<i64> {
    match raw {
        None | Some("") => Ok(0),
        Some(raw) => match raw.trim().parse::<i64>() {
            Ok(seq) if seq >= 0 => Ok(seq),
            _ => Err(ApiError::BadRequest(format!(
                "invalid cursor `{raw}`: expected the last sequence number seen (an integer >= 0)"
            ))),
        },
    }
}

/// `GET /runs/{id}/events?cursor=&limit=`: the events after `cursor` (the last seq seen), in order.
pub async fn list(
    State(state): State<AppState>,
    auth: Authorized<perm::RunsRead>,
    Path(run_id): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<EventView>>> {
    let run = load_run(&state, &auth, &run_id).await?;
    let after = parse_cursor(query.cursor.as_deref())?;
    let limit = page_limit(query.limit, 100, 1000)?;
    let include_raw = query.include_raw.unwrap_or(true);
    let mut conn = state.pool.acquire().await?;
    let events =
        journal::list_after(&mut conn, &Scope::Org(run.org_id), run.id, after, limit).await?;
    // The cursor always advances to the last event returned; with no events it stays put, so a
    // poller can keep asking with it.
    let next = events.last().map(|event| event.seq).unwrap_or(after);
    Ok(Json(Page {
        items: events
            .into_iter()
            .map(|event| EventView::from_journal(event, include_raw))
            .collect(),
        next_cursor: Some(next.to_string()),
    }))
}

#[derive(Deserialize)]
pub struct StreamQuery {
    cursor: Option<String>,
    include_raw: Option<bool>,
}

/// `GET /runs/{id}/events/stream`: SSE, each event's `id:` its seq; resumes from `Last-Event-ID`
/// or `?cursor=`; closes after the run's terminal event.
pub async fn stream(
    State(state): State<AppState>,
    auth: Authorized<perm::RunsRead>,
    Path(run_id): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<StreamQuery>,
) -> ApiResult<Response> {
    let run = load_run(&state, &auth, &run_id).await?;
    let last_event_id = headers
        .get("last-event-id")
        .map(|value| {
            value
                .to_str()
                .map_err(|_| ApiError::BadRequest("invalid `Last-Event-ID` header".into()))
        })
        .transpose()?;
    // The header wins: a browser's EventSource resends it on reconnect while the URL keeps the
    // original cursor.
    let cursor = parse_cursor(last_event_id.or(query.cursor.as_deref()))?;
    let include_raw = query.include_raw.unwrap_or(false);
    // Subscribe before the first history read, so nothing published in between is missed.
    let live = state
        .bus
        .subscribe_live(&subjects::live_events(run.id))
        .await
        .map_err(|err| ApiError::Unavailable(Box::new(err)))?;
    let events = journal_stream(
        state,
        Scope::Org(run.org_id),
        run.id,
        cursor,
        live,
        include_raw,
    )
    .map(move |event| Ok::<_, Infallible>(to_sse(event, include_raw)));
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn to_sse(event: JournalEvent, include_raw: bool) -> Event {
    let seq = event.seq;
    let view = EventView::from_journal(event, include_raw);
    let data = serde_json::to_string(&view).unwrap_or_else(|_| "{}".to_owned());
    Event::default()
        .id(seq.to_string())
        .event(view.kind.clone())
        .data(data)
}

fn is_terminal(event: &JournalEvent) -> bool {
    event.kind == cadenza_domain::EventKind::RunState.as_str()
        && event.payload.get("terminal") == Some(&serde_json::Value::Bool(true))
}

fn journal_stream(
    state: AppState,
    scope: Scope,
    run_id: RunId,
    mut cursor: i64,
    mut live: async_nats::Subscriber,
    include_raw: bool,
) -> impl Stream<Item = JournalEvent> {
    async_stream::stream! {
        loop {
            // Catch up from Postgres.
            let batch = match read_after(&state, &scope, run_id, cursor).await {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::warn!(%run_id, error = %err, "journal read failed; closing the stream");
                    break;
                }
            };
            let full = batch.len() as i64 == STREAM_BATCH;
            let mut ended = false;
            for event in batch {
                cursor = event.seq;
                ended = is_terminal(&event);
                yield event;
                if ended {
                    break;
                }
            }
            if ended {
                break;
            }
            if full {
                continue;
            }
            if run_finished_and_drained(&state, &scope, run_id, cursor).await {
                break;
            }
            // Wait for live events; deliver those that continue the sequence exactly.
            let mut resync = false;
            while !resync {
                match tokio::time::timeout(POLL_FALLBACK, live.next()).await {
                    Ok(Some(message)) => {
                        let Ok(live_event) = serde_json::from_slice::<LiveEvent>(&message.payload) else {
                            continue;
                        };
                        if live_event.seq <= cursor {
                            continue;
                        }
                        // Live messages carry no raw payload: a client that wants it reads
                        // each event from Postgres, using the message only as a wake-up.
                        if live_event.seq != cursor + 1 || include_raw {
                            resync = true;
                            continue;
                        }
                        let event = JournalEvent {
                            run_id: live_event.run_id,
                            org_id: live_event.org_id,
                            seq: live_event.seq,
                            kind: live_event.kind,
                            payload: live_event.payload,
                            raw: None,
                            occurred_at: live_event.occurred_at,
                        };
                        cursor = event.seq;
                        let terminal = is_terminal(&event);
                        yield event;
                        if terminal {
                            ended = true;
                            break;
                        }
                    }
                    // The subscription ended (NATS reconnecting) or nothing arrived: read Postgres.
                    Ok(None) | Err(_) => resync = true,
                }
            }
            if ended {
                break;
            }
        }
    }
}

async fn read_after(
    state: &AppState,
    scope: &Scope,
    run_id: RunId,
    cursor: i64,
) -> Result<Vec<JournalEvent>, StorageError> {
    let mut conn = state.pool.acquire().await?;
    journal::list_after(&mut conn, scope, run_id, cursor, STREAM_BATCH).await
}

/// True when the run has ended and the client has everything (for cursors at or past the end).
async fn run_finished_and_drained(
    state: &AppState,
    scope: &Scope,
    run_id: RunId,
    cursor: i64,
) -> bool {
    let Ok(mut conn) = state.pool.acquire().await else {
        return false;
    };
    match runs::get(&mut conn, scope, run_id).await {
        Ok(run) => run.state.is_terminal() && cursor >= run.last_event_seq,
        Err(_) => false,
    }
}
