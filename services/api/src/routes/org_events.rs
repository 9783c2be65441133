//! The org event journal over REST and Server-Sent Events: what changed in an org, from a cursor.
//!
//! Entries are written by Postgres alongside each change (the `org_events` migration) and
//! announced at commit; `crate::org_feed` hands the announcements to the streams of this process.
//! A stream subscribes before it reads history, delivers a live entry only when it is exactly the
//! next number, and reads Postgres for anything else: a gap, an entry announced by number only,
//! a lost listener connection, a slow safety poll, or having fallen behind its bounded queue
//! (which it says with a `stream_lagged` event before it catches up). Each reader sees the
//! entries its permissions in the org allow (runs: `runs.read`, projects: `projects.read`,
//! members and the org: `org.read`), re-checked while the stream is open.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cadenza_domain::{OrgEvent, OrgId, Permission};
use cadenza_storage::{StorageError, org_events};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use crate::auth::{Authorized, perm};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, page_limit, parse_id};
use crate::org_feed::Signal;
use crate::principal::Principal;
use crate::routes::events::{
    CloseReason, credentials, parse_cursor, recheck_access, resume_cursor,
};

use crate::routes::wire::{OrgEventView, Page};
use crate::state::AppState;
use crate::streams::StreamLease;

const STREAM_BATCH: i64 = 500;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The last `seq` seen (0, or none, for the beginning).
    cursor: Option<String>,
    limit: Option<i64>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// The last `seq` seen; `Last-Event-ID` wins when both are sent.
    cursor: Option<String>,
}

/// Refuses a cursor the journal cannot continue from: past its head (400: it is not this org's
/// cursor) or older than what is kept (410: load a snapshot and follow from its cursor).
pub(crate) async fn check_cursor(state: &AppState, org: OrgId, cursor: i64) -> ApiResult<()> {
    let mut conn = state.pool.acquire().await?;
    let head = org_events::head(&mut conn, org).await?;
    if cursor > head {
        return Err(ApiError::BadRequest(format!(
            "cursor {cursor} is past the end of this org's events (the last is {head})"
        )));
    }
    if cursor < head {
        let next = org_events::list_after(&mut conn, org, cursor, 1).await?;
        if next.first().is_some_and(|event| event.seq != cursor + 1) {
            return Err(ApiError::Gone(format!(
                "events after {cursor} are no longer kept; load GET /orgs/{org}/snapshot and follow from its cursor"
            )));
        }
    }
    Ok(())
}

/// Whether `principal` may see `event`.
fn visible(principal: &Principal, event: &OrgEvent) -> bool {
    principal.can(event.org_id, event.required_permission())
}

/// `GET /orgs/{org}/events?cursor=&limit=`: the entries after `cursor`, oldest first, that the
/// caller may see. `next_cursor` is the last entry read (seen or not), so a poller never reads an
/// entry twice; with nothing new it stays put.
pub async fn list(
    State(state): State<AppState>,
    auth: Authorized<perm::OrgRead>,
    Path(org): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<OrgEventView>>> {
    let org: OrgId = parse_id(&org, "org")?;
    auth.require(org)?;
    let after = parse_cursor(query.cursor.as_deref())?;
    let limit = page_limit(query.limit, 100, 1000)?;
    check_cursor(&state, org, after).await?;
    let mut conn = state.pool.acquire().await?;
    let events = org_events::list_after(&mut conn, org, after, limit).await?;
    let next = events.last().map(|event| event.seq).unwrap_or(after);
    Ok(Json(Page {
        items: events
            .iter()
            .filter(|event| visible(&auth.principal, event))
            .map(OrgEventView::from)
            .collect(),
        next_cursor: Some(next.to_string()),
    }))
}

/// `GET /orgs/{org}/events/stream`: SSE of the org's entries after `Last-Event-ID` (or
/// `?cursor=`), each with `id:` its `seq` and `event:` its kind; never ends on its own. A
/// `stream_lagged` event says the stream fell behind (what it missed follows, from the journal);
/// a final `stream_closed` event says why it ended (access lost, server stopping).
pub async fn stream(
    State(state): State<AppState>,
    auth: Authorized<perm::OrgRead>,
    Path(org): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<StreamQuery>,
) -> ApiResult<Response> {
    let org: OrgId = parse_id(&org, "org")?;
    auth.require(org)?;
    let cursor = resume_cursor(&headers, query.cursor.as_deref())?;
    check_cursor(&state, org, cursor).await?;
    let lease = state
        .streams
        .open(&auth.principal.rate_limit_bucket())
        .await?;
    // Subscribe before the first history read, so nothing committed in between is missed.
    let live = state.org_feed.subscribe(org);
    let keepalive = state.streams.settings.keepalive;
    let reader = OrgStreamReader {
        org,
        principal: auth.principal,
        credentials: credentials(&headers),
        lease,
        state,
    };
    let events = reader
        .run(cursor, live)
        .map(|item| Ok::<_, Infallible>(item.into_sse()));
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keepalive))
        .into_response())
}

/// What an org stream sends.
pub(crate) enum OrgStreamItem {
    Entry(Arc<OrgEvent>),
    /// The stream fell behind its queue by `missed` entries; it goes on from the journal after
    /// `cursor`, so nothing is lost.
    Lagged {
        missed: u64,
        cursor: i64,
    },
    Closed(CloseReason),
}

impl OrgStreamItem {
    fn into_sse(self) -> Event {
        match self {
            OrgStreamItem::Entry(event) => {
                let view = OrgEventView::from(event.as_ref());
                Event::default()
                    .id(view.seq.to_string())
                    .event(view.kind.clone())
                    .data(serde_json::to_string(&view).unwrap_or_else(|_| "{}".to_owned()))
            }
            OrgStreamItem::Lagged { missed, cursor } => Event::default()
                .event("stream_lagged")
                .data(lagged_notice(missed, cursor).to_string()),
            OrgStreamItem::Closed(reason) => reason.into_sse(),
        }
    }
}

/// The body of a `stream_lagged` notice.
pub(crate) fn lagged_notice(missed: u64, cursor: i64) -> serde_json::Value {
    serde_json::json!({
        "missed": missed,
        "cursor": cursor.to_string(),
        "detail": "this stream fell behind; what it missed follows from the journal",
    })
}

/// What woke a waiting org stream.
enum Wake {
    Live(Result<Signal, RecvError>),
    SafetyPoll,
    Recheck,
    Shutdown,
}

/// One open org stream.
pub(crate) struct OrgStreamReader {
    pub(crate) state: AppState,
    pub(crate) org: OrgId,
    /// Who reads, as of the last access re-check: decides which entries it sees.
    pub(crate) principal: Principal,
    pub(crate) credentials: HeaderMap,
    pub(crate) lease: StreamLease,
}

impl OrgStreamReader {
    pub(crate) fn run(
        mut self,
        mut cursor: i64,
        mut live: tokio::sync::broadcast::Receiver<Signal>,
    ) -> impl Stream<Item = OrgStreamItem> {
        async_stream::stream! {
            let settings = self.state.streams.settings.clone();
            let shutdown = self.state.streams.shutdown.clone();
            let mut recheck = tokio::time::interval_at(
                tokio::time::Instant::now() + settings.access_recheck,
                settings.access_recheck,
            );
            recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            'outer: loop {
                // Catch up from Postgres.
                loop {
                    let batch = match self.read_after(cursor).await {
                        Ok(batch) => batch,
                        Err(err) => {
                            tracing::warn!(org_id = %self.org, error = %err, "org journal read failed; closing the stream");
                            yield OrgStreamItem::Closed(CloseReason::Unavailable);
                            break 'outer;
                        }
                    };
                    let full = batch.len() as i64 == STREAM_BATCH;
                    for event in batch {
                        cursor = event.seq;
                        if visible(&self.principal, &event) {
                            yield OrgStreamItem::Entry(Arc::new(event));
                        }
                    }
                    if !full {
                        break;
                    }
                }
                let safety_poll = tokio::time::sleep(settings.safety_poll);
                tokio::pin!(safety_poll);
                loop {
                    let wake = tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => Wake::Shutdown,
                        _ = recheck.tick() => Wake::Recheck,
                        signal = live.recv() => Wake::Live(signal),
                        _ = &mut safety_poll => Wake::SafetyPoll,
                    };
                    match wake {
                        Wake::Shutdown => {
                            yield OrgStreamItem::Closed(CloseReason::ServerShutdown);
                            break 'outer;
                        }
                        Wake::Recheck => {
                            match recheck_access(&self.state, &self.credentials, self.org, Permission::OrgRead).await {
                                Ok(Some(principal)) => {
                                    self.principal = principal;
                                    self.lease.renew().await;
                                }
                                Ok(None) => {}
                                Err(reason) => {
                                    yield OrgStreamItem::Closed(reason);
                                    break 'outer;
                                }
                            }
                        }
                        Wake::SafetyPoll => continue 'outer,
                        Wake::Live(Ok(Signal::Entry(event))) => {
                            if event.seq <= cursor {
                                continue;
                            }
                            if event.seq != cursor + 1 {
                                continue 'outer;
                            }
                            cursor = event.seq;
                            if visible(&self.principal, &event) {
                                yield OrgStreamItem::Entry(event);
                            }
                        }
                        Wake::Live(Ok(Signal::Announced(seq))) => {
                            if seq > cursor {
                                continue 'outer;
                            }
                        }
                        Wake::Live(Ok(Signal::Resync)) => continue 'outer,
                        Wake::Live(Err(RecvError::Lagged(missed))) => {
                            tracing::info!(org_id = %self.org, missed, "an org stream fell behind; it catches up from the journal");
                            yield OrgStreamItem::Lagged { missed, cursor };
                            continue 'outer;
                        }
                        Wake::Live(Err(RecvError::Closed)) => {
                            // The feed dropped this org's channel: subscribe again, then read.
                            live = self.state.org_feed.subscribe(self.org);
                            continue 'outer;
                        }
                    }
                }
            }
        }
    }

    async fn read_after(&self, cursor: i64) -> Result<Vec<OrgEvent>, StorageError> {
        self.state.streams.stats.count_read();
        let mut conn = self.state.pool.acquire().await?;
        org_events::list_after(&mut conn, self.org, cursor, STREAM_BATCH).await
    }
}
