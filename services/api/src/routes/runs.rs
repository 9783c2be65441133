use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cadenza_bus::messages::{LiveEvent, RunRequested};
use cadenza_bus::subjects;
use cadenza_domain::validation::{validate_idempotency_key, validate_prompt};
use cadenza_domain::{CancelDisposition, ProjectId, RunId, RunState, Scope};
use cadenza_storage::runs::{self, NewRun, RunFilter, Submitted};
use cadenza_storage::{StorageError, diffs, journal, outbox};
use serde::Deserialize;

use crate::audit::{AuditedTx, Change, RequestMeta};
use crate::auth::{Authorized, RequiredPermission, perm};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery, next_cursor, page_limit, parse_cursor, parse_id};
use crate::routes::wire::{FileView, Page, Receipt, RunFilesView, RunView};
use crate::state::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    prompt: String,
    idempotency_key: Option<String>,
}

/// `POST /projects/{id}/runs`: stores a queued run (201). With an idempotency key (in the body or
/// the `Idempotency-Key` header) a repeat returns the first run (200) instead of a second one.
pub async fn create(
    State(state): State<AppState>,
    auth: Authorized<perm::RunsCreate>,
    meta: RequestMeta,
    Path(project_id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateRun>,
) -> ApiResult<Response> {
    let project = crate::routes::projects::load(&state, &auth, &project_id).await?;
    validate_prompt(&body.prompt).map_err(|err| ApiError::BadRequest(err.to_string()))?;
    let header_key = idempotency_header(&headers)?;
    let idempotency_key = match (body.idempotency_key, header_key) {
        (Some(body_key), Some(header_key)) if body_key != header_key => {
            return Err(ApiError::BadRequest(
                "`idempotency_key` and the `Idempotency-Key` header disagree".into(),
            ));
        }
        (body_key, header_key) => body_key.or(header_key),
    };
    let (run, created) = submit_run(
        &state,
        &auth,
        &meta,
        &project,
        &body.prompt,
        idempotency_key.as_deref(),
        None,
    )
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = format!("/api/v1/runs/{}", run.id);
    let mut response = (status, Json(RunView::from(run))).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if !created {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The `Idempotency-Key` header, when the request has one.
fn idempotency_header(headers: &HeaderMap) -> ApiResult<Option<String>> {
    headers
        .get("idempotency-key")
        .map(|value| {
            value.to_str().map(str::to_owned).map_err(|_| {
                ApiError::BadRequest("the `Idempotency-Key` header is not valid text".into())
            })
        })
        .transpose()
}

/// Stores a queued run in `project` (audited, its `runs.requested` message in the outbox) and
/// wakes the relay. With an idempotency key a repeat returns the first run (`false`), refused
/// when its prompt differs. `retry_of` names the run this one retries.
/// The run a new run retries, and the correlation id of the retry's receipt.
struct RetryOf {
    run: RunId,
    correlation_id: uuid::Uuid,
}

async fn submit_run(
    state: &AppState,
    auth: &Authorized<perm::RunsCreate>,
    meta: &RequestMeta,
    project: &cadenza_domain::Project,
    prompt: &str,
    idempotency_key: Option<&str>,
    retry: Option<RetryOf>,
) -> ApiResult<(cadenza_domain::Run, bool)> {
    let retry_of = retry.as_ref().map(|retry| retry.run);
    if let Some(key) = idempotency_key {
        validate_idempotency_key(key).map_err(|err| ApiError::BadRequest(err.to_string()))?;
    }
    let mut tx = AuditedTx::begin(&state.pool, &auth.principal, meta).await?;
    if let Some(retry) = &retry {
        // The new run's `run.created` org event answers the retry's receipt.
        cadenza_storage::org_events::set_correlation(&mut tx, retry.correlation_id).await?;
    }
    let submitted = runs::submit(
        &mut tx,
        NewRun {
            org_id: project.org_id,
            project_id: project.id,
            prompt,
            idempotency_key,
        },
    )
    .await?;
    let (run, created) = match submitted {
        Submitted::Created(run) => {
            enqueue_run_requested(&mut tx, &run).await?;
            let mut diff = serde_json::json!({
                "project_id": {"before": null, "after": run.project_id.to_string()},
                "idempotency_key": {"before": null, "after": run.idempotency_key},
            });
            if let Some(original) = retry_of {
                diff["retry_of"] =
                    serde_json::json!({"before": null, "after": original.to_string()});
            }
            tx.record(Change {
                org: Some(run.org_id),
                action: if retry_of.is_some() {
                    "run.retry"
                } else {
                    "run.create"
                },
                resource_type: "run",
                resource_id: Some(run.id.to_string()),
                diff,
            })
            .await?;
            (run, true)
        }
        Submitted::Existing(run) => {
            if run.prompt != prompt {
                return Err(ApiError::Conflict(format!(
                    "idempotency key `{}` was already used for run {} with a different prompt",
                    idempotency_key.unwrap_or_default(),
                    run.id
                )));
            }
            (run, false)
        }
    };
    tx.commit().await?;
    if created {
        state.relay.nudge();
        tracing::info!(run_id = %run.id, org_id = %run.org_id, project_id = %run.project_id, retry_of = ?retry_of, "run queued");
        publish_journal_head(state, run.id, &Scope::Org(run.org_id)).await;
    }
    Ok((run, created))
}

/// `POST /runs/{id}/retry`: a new run of an ended run's prompt in the same project, with the
/// project's settings as they are now (201; with an `Idempotency-Key` a repeat answers the
/// first retry, 200). A run that has not ended is refused (409): cancel it first.
pub async fn retry(
    State(state): State<AppState>,
    auth: Authorized<perm::RunsCreate>,
    meta: RequestMeta,
    Path(run_id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let original = load_run(&state, &auth, &run_id).await?;
    if !original.state.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "run {} is `{}`; only an ended run can be retried (cancel it first)",
            original.id, original.state
        )));
    }
    let project =
        crate::routes::projects::load(&state, &auth, &original.project_id.to_string()).await?;
    let key = idempotency_header(&headers)?;
    let correlation_id = uuid::Uuid::now_v7();
    let (run, created) = submit_run(
        &state,
        &auth,
        &meta,
        &project,
        &original.prompt,
        key.as_deref(),
        Some(RetryOf {
            run: original.id,
            correlation_id,
        }),
    )
    .await?;
    let receipt = Receipt {
        action: "retry",
        run_id: original.id.to_string(),
        follow_up_run_id: None,
        retry_run_id: Some(run.id.to_string()),
        correlation_id: correlation_id.to_string(),
        state: run.state.as_str(),
        delivered: None,
        accepted_at: run.created_at,
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = (status, Json(receipt)).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("/api/v1/runs/{}", run.id)) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// Publishes the journal entries of a just-created run for live readers. Best effort: readers
/// fill any gap from Postgres.
async fn publish_journal_head(state: &AppState, run_id: RunId, scope: &Scope) {
    let Ok(mut conn) = state.pool.acquire().await else {
        return;
    };
    if let Ok(events) = journal::list_after(&mut conn, scope, run_id, 0, 10).await {
        for event in &events {
            let subject = subjects::live_events(run_id);
            if let Err(err) = state
                .bus
                .publish_live(&subject, &LiveEvent::from_journal(event))
                .await
            {
                tracing::debug!(error = %err, "live publish failed");
            }
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    project_id: Option<String>,
    state: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

pub async fn list(
    State(state): State<AppState>,
    auth: Authorized<perm::RunsRead>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<RunView>>> {
    let limit = page_limit(
        query.limit,
        state.limits.default_page,
        state.limits.max_page,
    )?;
    let project_id = query
        .project_id
        .as_deref()
        .map(|raw| {
            raw.parse::<ProjectId>()
                .map_err(|_| ApiError::BadRequest(format!("invalid `project_id` `{raw}`")))
        })
        .transpose()?;
    let run_state = query
        .state
        .as_deref()
        .map(|raw| {
            raw.parse::<RunState>().map_err(|_| {
                let known: Vec<_> = RunState::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::BadRequest(format!(
                    "invalid `state` `{raw}`; expected one of {}",
                    known.join(", ")
                ))
            })
        })
        .transpose()?;
    let before = parse_cursor::<RunId>(query.cursor.as_deref())?;
    let mut conn = state.pool.acquire().await?;
    let items = runs::list(
        &mut conn,
        &auth.scope(),
        &RunFilter {
            project_id,
            state: run_state,
            before,
            limit,
        },
    )
    .await?;
    let next_cursor = next_cursor(&items, limit, |run| run.id);
    Ok(Json(Page {
        items: items.into_iter().map(RunView::from).collect(),
        next_cursor,
    }))
}

/// Loads a run for a caller who needs `P` in its org: 404 when the caller cannot see the org.
pub(crate) async fn load_run<P: RequiredPermission>(
    state: &AppState,
    auth: &Authorized<P>,
    raw_id: &str,
) -> ApiResult<cadenza_domain::Run> {
    let id: RunId = parse_id(raw_id, "run")?;
    let mut conn = state.pool.acquire().await?;
    let run = runs::get(&mut conn, &Scope::Instance, id)
        .await
        .map_err(|err| match err {
            StorageError::NotFound(_) => ApiError::not_found("run", id),
            other => other.into(),
        })?;
    auth.require(run.org_id).map_err(|err| match err {
        ApiError::NotFound(_) => ApiError::not_found("run", id),
        other => other,
    })?;
    Ok(run)
}

pub async fn get(
    State(state): State<AppState>,
    auth: Authorized<perm::RunsRead>,
    Path(run_id): Path<String>,
) -> ApiResult<Json<RunView>> {
    let run = load_run(&state, &auth, &run_id).await?;
    Ok(Json(run.into()))
}

/// `GET /runs/{id}/diff`: the patch the run produced, as text. 404 until the run has one.
pub async fn diff(
    State(state): State<AppState>,
    auth: Authorized<perm::RunsRead>,
    Path(run_id): Path<String>,
) -> ApiResult<Response> {
    let run = load_run(&state, &auth, &run_id).await?;
    let diff = stored_diff(&state, &run).await?;
    let mut response = diff.patch.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/x-patch; charset=utf-8"),
    );
    if let Some(base) = diff
        .base_commit
        .and_then(|base| HeaderValue::from_str(&base).ok())
    {
        headers.insert("x-base-commit", base);
    }
    Ok(response)
}

/// The run's stored diff, or 404 naming the state it is in.
async fn stored_diff(
    state: &AppState,
    run: &cadenza_domain::Run,
) -> ApiResult<cadenza_storage::diffs::RunDiff> {
    let mut conn = state.pool.acquire().await?;
    diffs::get(&mut conn, &Scope::Org(run.org_id), run.id)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "run {} has no diff yet (state `{}`)",
                run.id, run.state
            ))
        })
}

/// `GET /runs/{id}/files`: the files the run's patch changes, with their line counts.
pub async fn files(
    State(state): State<AppState>,
    auth: Authorized<perm::RunsRead>,
    Path(run_id): Path<String>,
) -> ApiResult<Json<RunFilesView>> {
    let run = load_run(&state, &auth, &run_id).await?;
    let diff = stored_diff(&state, &run).await?;
    let files = cadenza_domain::patch::files(&diff.patch);
    let omitted = diff
        .patch
        .split("\ndiff --git ")
        .next()
        .filter(|head| !head.starts_with("diff --git ") && !head.trim().is_empty())
        .map(|head| head.trim_end().to_owned());
    Ok(Json(RunFilesView {
        run_id: run.id.to_string(),
        base_commit: diff.base_commit.clone(),
        files: files
            .into_iter()
            .map(|file| FileView {
                path: file.path,
                old_path: file.old_path,
                status: file.status.as_str(),
                additions: file.additions,
                deletions: file.deletions,
                binary: file.binary,
            })
            .collect(),
        omitted,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FileQuery {
    /// The file's path (after the change; before it, for a deleted file), as `files` lists it.
    path: String,
}

/// `GET /runs/{id}/files/patch?path=`: one file's part of the run's patch.
pub async fn file_patch(
    State(state): State<AppState>,
    auth: Authorized<perm::RunsRead>,
    Path(run_id): Path<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
) -> ApiResult<Response> {
    let run = load_run(&state, &auth, &run_id).await?;
    let diff = stored_diff(&state, &run).await?;
    let file = cadenza_domain::patch::files(&diff.patch)
        .into_iter()
        .find(|file| file.path == query.path)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "the diff of run {} does not change `{}`",
                run.id,
                query.path.chars().take(256).collect::<String>()
            ))
        })?;
    let mut response = file.text.to_owned().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/x-patch; charset=utf-8"),
    );
    Ok(response)
}

/// `POST /runs/{id}/cancel`: stops a run. A run not yet on a worker is cancelled at once (200);
/// a run on a worker is cancelled by that worker, which interrupts the agent and removes the
/// container (202). The receipt's correlation id appears on the `cancelled` journal entry. A
/// repeated request returns the first one's correlation id.
pub async fn cancel(
    State(state): State<AppState>,
    auth: Authorized<perm::RunsCancel>,
    meta: RequestMeta,
    Path(run_id): Path<String>,
) -> ApiResult<Response> {
    let run = load_run(&state, &auth, &run_id).await?;
    let mut tx = AuditedTx::begin(&state.pool, &auth.principal, &meta).await?;
    // Decided on the run as it is under its row lock: a lease or a worker's step that commits
    // meanwhile is waited for, never raced (which would answer 409 with nothing recorded).
    let run = runs::lock(&mut tx, &Scope::Org(run.org_id), run.id).await?;
    let disposition = CancelDisposition::for_state(run.state);
    if disposition == CancelDisposition::AlreadyEnded {
        return Err(ApiError::Conflict(format!(
            "run {} already ended (`{}`)",
            run.id, run.state
        )));
    }
    let correlation_id = runs::request_cancel(&mut tx, run.id, uuid::Uuid::now_v7()).await?;
    let reason = cadenza_domain::TerminalReason::new(
        cadenza_domain::TerminalCode::Cancelled,
        format!("cancelled by {}", auth.principal.label()),
    );
    let mut entry = None;
    if disposition == CancelDisposition::Immediate {
        let done = runs::transition_correlated(
            &mut tx,
            run.id,
            run.state,
            &cadenza_domain::RunEvent::Cancelled(reason),
            runs::Actor::Any,
            None,
            Some(correlation_id),
        )
        .await?;
        entry = Some(done.entry);
    }
    tx.record(Change {
        org: Some(run.org_id),
        action: "run.cancel",
        resource_type: "run",
        resource_id: Some(run.id.to_string()),
        diff: serde_json::json!({"correlation_id": correlation_id.to_string()}),
    })
    .await?;
    tx.commit().await?;
    let status = match &entry {
        Some(entry) => {
            state.bus.publish_journal_event(entry).await;
            StatusCode::OK
        }
        None => StatusCode::ACCEPTED,
    };
    let receipt = Receipt {
        action: "cancel",
        run_id: run.id.to_string(),
        follow_up_run_id: None,
        retry_run_id: None,
        correlation_id: correlation_id.to_string(),
        state: if entry.is_some() {
            "cancelled"
        } else {
            run.state.as_str()
        },
        delivered: None,
        accepted_at: time::OffsetDateTime::now_utc(),
    };
    Ok((status, Json(receipt)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    text: String,
    idempotency_key: Option<String>,
}

/// `POST /runs/{id}/messages` `{"text": "..."}`: a user message to the run's conversation. The
/// worker holding the run delivers it (within one heartbeat once the agent is running); the
/// receipt's correlation id appears on the journal entries the message causes. A run that has
/// ended has no workspace left to talk to: `409`.
pub async fn message(
    State(state): State<AppState>,
    auth: Authorized<perm::RunsCreate>,
    meta: RequestMeta,
    Path(run_id): Path<String>,
    ApiJson(body): ApiJson<SendMessage>,
) -> ApiResult<Response> {
    let run = load_run(&state, &auth, &run_id).await?;
    if body.text.trim().is_empty() {
        return Err(ApiError::BadRequest("`text` must not be empty".into()));
    }
    if body.text.len() > cadenza_domain::validation::MAX_PROMPT_BYTES {
        return Err(ApiError::BadRequest(format!(
            "`text` is longer than {} bytes",
            cadenza_domain::validation::MAX_PROMPT_BYTES
        )));
    }
    if let Some(key) = &body.idempotency_key {
        validate_idempotency_key(key).map_err(|err| ApiError::BadRequest(err.to_string()))?;
    }
    if run.state == RunState::Succeeded {
        return follow_up(&state, &auth, &meta, &run, body).await;
    }
    if run.state.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "run {} ended `{}` and its workspace is gone; start a new run to continue the work",
            run.id, run.state
        )));
    }
    let mut tx = AuditedTx::begin(&state.pool, &auth.principal, &meta).await?;
    let (message, created) = cadenza_storage::run_messages::create(
        &mut tx,
        run.id,
        run.org_id,
        &body.text,
        body.idempotency_key.as_deref(),
        &auth.principal.label(),
    )
    .await?;
    if created {
        tx.record(Change {
            org: Some(run.org_id),
            action: "run.message",
            resource_type: "run",
            resource_id: Some(run.id.to_string()),
            diff: serde_json::json!({"correlation_id": message.correlation_id.to_string()}),
        })
        .await?;
    }
    tx.commit().await?;
    let receipt = Receipt {
        action: "message",
        run_id: run.id.to_string(),
        follow_up_run_id: None,
        retry_run_id: None,
        correlation_id: message.correlation_id.to_string(),
        state: run.state.as_str(),
        delivered: Some(message.delivered_at.is_some()),
        accepted_at: message.created_at,
    };
    let status = if created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(receipt)).into_response())
}

/// A message to a run that succeeded: a follow-up turn, a new run on the same workspace and
/// conversation, while the worker still keeps them (its `workspace_idle_ttl`). Answers `201` with
/// the receipt and the new run's id; `409` when the workspace is no longer kept.
async fn follow_up(
    state: &AppState,
    auth: &Authorized<perm::RunsCreate>,
    meta: &RequestMeta,
    parent: &cadenza_domain::Run,
    body: SendMessage,
) -> ApiResult<Response> {
    use cadenza_storage::{run_messages, workspaces};
    let mut tx = AuditedTx::begin(&state.pool, &auth.principal, meta).await?;
    let (message, created) = run_messages::create(
        &mut tx,
        parent.id,
        parent.org_id,
        &body.text,
        body.idempotency_key.as_deref(),
        &auth.principal.label(),
    )
    .await?;
    let receipt = |follow_up: RunId| Receipt {
        action: "message",
        run_id: parent.id.to_string(),
        follow_up_run_id: Some(follow_up.to_string()),
        retry_run_id: None,
        correlation_id: message.correlation_id.to_string(),
        state: parent.state.as_str(),
        delivered: Some(true),
        accepted_at: message.created_at,
    };
    if !created {
        // A replay of an earlier request: the turn it started, if it did.
        return match workspaces::follow_up_of_message(&mut tx, message.id).await? {
            Some(run) => Ok((StatusCode::OK, Json(receipt(run))).into_response()),
            None => Err(ApiError::Conflict(
                "this idempotency key was used for a message that started no follow-up turn".into(),
            )),
        };
    }
    let Some((container, worker)) = workspaces::claim(&mut tx, parent.id).await? else {
        return Err(ApiError::Conflict(format!(
            "run {} succeeded but its workspace is no longer kept (or another follow-up turn \
             took it); start a new run to continue the work",
            parent.id
        )));
    };
    let submitted = runs::submit(
        &mut tx,
        NewRun {
            org_id: parent.org_id,
            project_id: parent.project_id,
            prompt: &body.text,
            idempotency_key: None,
        },
    )
    .await?;
    let Submitted::Created(run) = submitted else {
        return Err(ApiError::Internal(
            "a new run without an idempotency key existed".into(),
        ));
    };
    workspaces::set_follow_up(&mut tx, run.id, parent.id, &container, worker).await?;
    workspaces::link_message(&mut tx, message.id, run.id).await?;
    enqueue_run_requested(&mut tx, &run).await?;
    tx.record(Change {
        org: Some(run.org_id),
        action: "run.follow_up",
        resource_type: "run",
        resource_id: Some(run.id.to_string()),
        diff: serde_json::json!({
            "parent_run_id": parent.id.to_string(),
            "correlation_id": message.correlation_id.to_string(),
        }),
    })
    .await?;
    tx.commit().await?;
    state.relay.nudge();
    tracing::info!(run_id = %run.id, parent_run_id = %parent.id, "follow-up turn queued");
    publish_journal_head(state, run.id, &Scope::Org(run.org_id)).await;
    let mut response = (StatusCode::CREATED, Json(receipt(run.id))).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("/api/v1/runs/{}", run.id)) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// The scheduler's nudge for a new run, in the run's transaction (outbox).
async fn enqueue_run_requested(
    tx: &mut cadenza_storage::PgConnection,
    run: &cadenza_domain::Run,
) -> ApiResult<()> {
    outbox::enqueue_message(tx, &RunRequested::new(run.id, run.org_id)).await?;
    Ok(())
}
