//! The run journal over REST and Server-Sent Events.
//!
//! The SSE stream is gap-free by construction: it subscribes to live fan-out *before* reading
//! history, delivers a live event directly only when it is exactly the next sequence number, and
//! otherwise (a gap, a lost message, the slow safety poll) reads Postgres from its cursor.
//! Postgres is the source of truth; NATS makes delivery fast and lets an idle stream cost nothing.
//! Each stream holds a lease under its caller's cap and re-checks the caller's access while open
//! (see `crate::streams`).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::{HeaderMap, Method};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cadenza_bus::messages::LiveEvent;
use cadenza_bus::subjects;
use cadenza_domain::{JournalEvent, OrgId, Permission, RunId, Scope};
use cadenza_storage::{StorageError, journal, runs};
use futures::{Stream, StreamExt};
use serde::Deserialize;

use crate::auth::{Authorized, authenticate, perm};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, page_limit};
use crate::routes::runs::load_run;
use crate::routes::wire::{EventView, Page};
use crate::state::AppState;
use crate::streams::StreamLease;

/// How often a stream whose NATS subscription ended reads Postgres.
const POLL_WITHOUT_BUS: Duration = Duration::from_secs(2);
const STREAM_BATCH: i64 = 500;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    cursor: Option<String>,
    limit: Option<i64>,
    include_raw: Option<bool>,
}

pub(crate) fn parse_cursor(raw: Option<&str>) -> ApiResult<i64> {
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    cursor: Option<String>,
    include_raw: Option<bool>,
}

/// `GET /runs/{id}/events/stream`: SSE, each event's `id:` its seq; resumes from `Last-Event-ID`
/// or `?cursor=`; closes after the run's terminal event, or with a final `stream_closed` event
/// when the caller loses access or the server shuts down.
pub async fn stream(
    State(state): State<AppState>,
    auth: Authorized<perm::RunsRead>,
    Path(run_id): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<StreamQuery>,
) -> ApiResult<Response> {
    let run = load_run(&state, &auth, &run_id).await?;
    let cursor = resume_cursor(&headers, query.cursor.as_deref())?;
    let include_raw = query.include_raw.unwrap_or(false);
    let lease = state
        .streams
        .open(&auth.principal.rate_limit_bucket())
        .await?;
    // Subscribe before the first history read, so nothing published in between is missed.
    let live = state
        .bus
        .subscribe_live(&subjects::live_events(run.id))
        .await
        .map_err(|err| ApiError::Unavailable(Box::new(err)))?;
    let keepalive = state.streams.settings.keepalive;
    let reader = StreamReader {
        scope: Scope::Org(run.org_id),
        org: run.org_id,
        run_id: run.id,
        credentials: credentials(&headers),
        include_raw,
        lease,
        state,
    };
    let events = reader
        .run(cursor, live)
        .map(move |item| Ok::<_, Infallible>(item.into_sse(include_raw)));
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keepalive))
        .into_response())
}

/// Where a stream starts: after `Last-Event-ID` if sent, else after `?cursor=`. The header wins:
/// a browser's EventSource resends it on reconnect while the URL keeps the original cursor.
pub(crate) fn resume_cursor(headers: &HeaderMap, query_cursor: Option<&str>) -> ApiResult<i64> {
    let last_event_id = headers
        .get("last-event-id")
        .map(|value| {
            value
                .to_str()
                .map_err(|_| ApiError::BadRequest("invalid `Last-Event-ID` header".into()))
        })
        .transpose()?;
    parse_cursor(last_event_id.or(query_cursor))
}

/// The request headers that say who the caller is, kept to re-check access while the stream is
/// open (nothing else of the request is held).
pub(crate) fn credentials(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for name in [AUTHORIZATION, COOKIE] {
        for value in headers.get_all(&name) {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// What a stream sends: journal entries, then possibly a last word on why it ended early.
enum StreamItem {
    Entry(JournalEvent),
    Closed(CloseReason),
}

/// Why a stream ended early (for a run stream: before the run's terminal entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The token was revoked or expired, the session ended, or the account is gone.
    Unauthenticated,
    /// The caller may no longer read this run (removed from the org, demoted, scope narrowed).
    AccessRevoked,
    /// This API process is stopping; reconnect with `Last-Event-ID` to go on.
    ServerShutdown,
    /// The journal could not be read; reconnect with `Last-Event-ID` to go on.
    Unavailable,
}

impl CloseReason {
    fn code(self) -> &'static str {
        match self {
            CloseReason::Unauthenticated => "unauthenticated",
            CloseReason::AccessRevoked => "access_revoked",
            CloseReason::ServerShutdown => "server_shutdown",
            CloseReason::Unavailable => "unavailable",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            CloseReason::Unauthenticated => {
                "the credential this stream was opened with is no longer valid; sign in again"
            }
            CloseReason::AccessRevoked => "the caller may no longer read these events",
            CloseReason::ServerShutdown => {
                "the server is restarting; reconnect with Last-Event-ID to continue"
            }
            CloseReason::Unavailable => {
                "the run journal is unavailable; reconnect with Last-Event-ID to continue"
            }
        }
    }

    /// Whether reconnecting can help (the client should retry with `Last-Event-ID`).
    fn retryable(self) -> bool {
        matches!(self, CloseReason::ServerShutdown | CloseReason::Unavailable)
    }

    /// The stream's last event. It has no `id:`, so a reconnect resumes after the last entry.
    pub(crate) fn into_sse(self) -> Event {
        Event::default().event("stream_closed").data(
            serde_json::json!({
                "reason": self.code(),
                "detail": self.detail(),
                "retryable": self.retryable(),
            })
            .to_string(),
        )
    }
}

/// Authenticates a stream's caller again and checks it still holds `permission` in `org`: the
/// fresh principal, `None` when a dependency did not answer (the stream stays open and the next
/// re-check tries again: losing Redis or Postgres for a moment must not cut every reader off),
/// or why the stream must end.
pub(crate) async fn recheck_access(
    state: &AppState,
    credentials: &HeaderMap,
    org: OrgId,
    permission: Permission,
) -> Result<Option<crate::principal::Principal>, CloseReason> {
    let verdict = match authenticate(state, &Method::GET, credentials).await {
        Ok(principal) => principal.require(org, permission).map(|()| principal),
        Err(err) => Err(err),
    };
    match verdict {
        Ok(principal) => Ok(Some(principal)),
        Err(ApiError::Unauthenticated) => Err(CloseReason::Unauthenticated),
        Err(ApiError::NotFound(_) | ApiError::Forbidden(_)) => Err(CloseReason::AccessRevoked),
        Err(err) => {
            tracing::warn!(org_id = %org, error = %err, "could not re-check a stream's access; trying again later");
            Ok(None)
        }
    }
}

impl StreamItem {
    fn into_sse(self, include_raw: bool) -> Event {
        match self {
            StreamItem::Entry(event) => {
                let seq = event.seq;
                let view = EventView::from_journal(event, include_raw);
                let data = serde_json::to_string(&view).unwrap_or_else(|_| "{}".to_owned());
                Event::default()
                    .id(seq.to_string())
                    .event(view.kind.clone())
                    .data(data)
            }
            StreamItem::Closed(reason) => reason.into_sse(),
        }
    }
}

fn is_terminal(event: &JournalEvent) -> bool {
    event.kind == cadenza_domain::EventKind::RunState.as_str()
        && event.payload.get("terminal") == Some(&serde_json::Value::Bool(true))
}

/// What woke a waiting stream.
enum Wake {
    Live(Option<async_nats::Message>),
    SafetyPoll,
    Recheck,
    Shutdown,
}

/// One open stream: where it reads, who asked, and its place under the caller's cap.
struct StreamReader {
    state: AppState,
    scope: Scope,
    org: OrgId,
    run_id: RunId,
    credentials: HeaderMap,
    include_raw: bool,
    lease: StreamLease,
}

impl StreamReader {
    /// The stream itself. It reads Postgres when it starts, when NATS delivers an entry out of
    /// order (or one it must complete with its raw form), and at each slow safety poll; an idle
    /// stream is woken by NATS alone. At every access re-check it authenticates the caller again
    /// and renews its lease.
    fn run(
        self,
        mut cursor: i64,
        mut live: async_nats::Subscriber,
    ) -> impl Stream<Item = StreamItem> {
        async_stream::stream! {
            let settings = self.state.streams.settings.clone();
            let shutdown = self.state.streams.shutdown.clone();
            let mut recheck = tokio::time::interval_at(
                tokio::time::Instant::now() + settings.access_recheck,
                settings.access_recheck,
            );
            recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut live_open = true;
            'outer: loop {
                // Catch up from Postgres.
                let batch = match self.read_after(cursor).await {
                    Ok(batch) => batch,
                    Err(err) => {
                        tracing::warn!(run_id = %self.run_id, error = %err, "journal read failed; closing the stream");
                        yield StreamItem::Closed(CloseReason::Unavailable);
                        break;
                    }
                };
                let full = batch.len() as i64 == STREAM_BATCH;
                let caught_up = batch.is_empty();
                for event in batch {
                    cursor = event.seq;
                    let terminal = is_terminal(&event);
                    yield StreamItem::Entry(event);
                    if terminal {
                        break 'outer;
                    }
                }
                if full {
                    continue;
                }
                // A cursor at or past the end of a finished run has nothing more to wait for.
                if caught_up && self.finished_and_drained(cursor).await {
                    break;
                }
                // Wait; deliver live entries that continue the sequence exactly.
                let safety_poll = tokio::time::sleep(if live_open {
                    settings.safety_poll
                } else {
                    // Without NATS the poll is all there is; keep it brisk.
                    settings.safety_poll.min(POLL_WITHOUT_BUS)
                });
                tokio::pin!(safety_poll);
                loop {
                    let wake = tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => Wake::Shutdown,
                        _ = recheck.tick() => Wake::Recheck,
                        message = live.next(), if live_open => Wake::Live(message),
                        _ = &mut safety_poll => Wake::SafetyPoll,
                    };
                    match wake {
                        Wake::Shutdown => {
                            yield StreamItem::Closed(CloseReason::ServerShutdown);
                            break 'outer;
                        }
                        Wake::Recheck => {
                            if let Some(reason) = self.recheck().await {
                                yield StreamItem::Closed(reason);
                                break 'outer;
                            }
                        }
                        Wake::SafetyPoll => continue 'outer,
                        Wake::Live(None) => {
                            // The subscription ended (the NATS client closed): poll from now on.
                            tracing::warn!(run_id = %self.run_id, "live subscription ended; the stream polls Postgres");
                            live_open = false;
                            continue 'outer;
                        }
                        Wake::Live(Some(message)) => {
                            let Ok(live_event) = serde_json::from_slice::<LiveEvent>(&message.payload) else {
                                continue;
                            };
                            if live_event.seq <= cursor {
                                continue;
                            }
                            // Live messages carry no raw payload: a client that wants it reads
                            // each entry from Postgres, using the message only as a wake-up.
                            if live_event.seq != cursor + 1 || self.include_raw {
                                continue 'outer;
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
                            yield StreamItem::Entry(event);
                            if terminal {
                                break 'outer;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Authenticates the caller again and checks it may still read the run (renewing the
    /// stream's lease); `Some` says why the stream must end.
    async fn recheck(&self) -> Option<CloseReason> {
        match recheck_access(
            &self.state,
            &self.credentials,
            self.org,
            Permission::RunsRead,
        )
        .await
        {
            Ok(fresh) => {
                if fresh.is_some() {
                    self.lease.renew().await;
                }
                None
            }
            Err(reason) => Some(reason),
        }
    }

    async fn read_after(&self, cursor: i64) -> Result<Vec<JournalEvent>, StorageError> {
        self.state.streams.stats.count_read();
        let mut conn = self.state.pool.acquire().await?;
        journal::list_after(&mut conn, &self.scope, self.run_id, cursor, STREAM_BATCH).await
    }

    /// True when the run has ended and the client has everything (for cursors at or past the
    /// end).
    async fn finished_and_drained(&self, cursor: i64) -> bool {
        self.state.streams.stats.count_read();
        let Ok(mut conn) = self.state.pool.acquire().await else {
            return false;
        };
        match runs::get(&mut conn, &self.scope, self.run_id).await {
            Ok(run) => run.state.is_terminal() && cursor >= run.last_event_seq,
            Err(_) => false,
        }
    }
}
