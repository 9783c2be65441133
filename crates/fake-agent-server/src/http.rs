//! The REST surface: health, server info, conversations, events, bash and file archive.

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use uuid::Uuid;

use super::agent;
use super::archive::{self, Archive, ArchiveError, ArchiveRequest};
use super::error::ApiError;
use super::events;
use super::shell::{self, ShellCommand, ShellOutcome};
use super::sockets;
use super::state::{Conversation, FakeServer, NewConversation};
use super::wire::{
    self, ExecuteBashRequest, QueryParams, StartConversationRequest, UpdateConversationRequest,
    UpdateSecretsRequest,
};

/// Reported as `server_info.version`: the real release the fake follows, marked as a fake.
const FAKE_VERSION: &str = "1.58.0-cadenza-fake";
const SDK_VERSION: &str = "1.58.0";
const SESSION_KEY_HEADER: &str = "x-session-api-key";
const DEFAULT_BASH_TIMEOUT_SECONDS: f64 = 300.0;
/// Tools a conversation gets when `agent_settings` names none: the real server's standard set
/// without the browser, which its images only have with Chromium.
const DEFAULT_TOOLS: &[&str] = &["terminal", "file_editor", "task_tracker"];

type ApiResult<T> = Result<T, ApiError>;

pub(crate) fn build_router(server: Arc<FakeServer>) -> Router {
    let api = Router::new()
        .route(
            "/conversations",
            post(create_conversation).get(batch_get_conversations),
        )
        .route("/conversations/search", get(search_conversations))
        .route("/conversations/count", get(count_conversations))
        .route(
            "/conversations/{conversation_id}",
            get(get_conversation)
                .delete(delete_conversation)
                .patch(update_conversation),
        )
        .route(
            "/conversations/{conversation_id}/run",
            post(run_conversation),
        )
        .route(
            "/conversations/{conversation_id}/pause",
            post(pause_conversation),
        )
        .route(
            "/conversations/{conversation_id}/interrupt",
            post(interrupt_conversation),
        )
        .route(
            "/conversations/{conversation_id}/secrets",
            post(update_secrets),
        )
        .route(
            "/conversations/{conversation_id}/agent_final_response",
            get(agent_final_response),
        )
        .route(
            "/conversations/{conversation_id}/events",
            post(send_message),
        )
        .route(
            "/conversations/{conversation_id}/events/search",
            get(search_events),
        )
        .route(
            "/conversations/{conversation_id}/events/count",
            get(count_events),
        )
        .route(
            "/conversations/{conversation_id}/events/{event_id}",
            get(get_event),
        )
        .route("/bash/execute_bash_command", post(execute_bash_command))
        .route("/file/archive", get(file_archive))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&server),
            require_session_key,
        ));

    Router::new()
        .route("/", get(server_info))
        .route("/alive", get(health))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/server_info", get(server_info))
        .route(
            "/sockets/events/{conversation_id}",
            get(sockets::events_socket),
        )
        .route(
            "/sockets/session/{conversation_id}",
            get(sockets::session_socket),
        )
        .nest("/api", api)
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(json!({ "detail": "Method Not Allowed" })),
            )
        })
        .with_state(server)
}

async fn require_session_key(
    State(server): State<Arc<FakeServer>>,
    request: Request,
    next: Next,
) -> Response {
    if server.auth_enabled() {
        let accepted = request
            .headers()
            .get(SESSION_KEY_HEADER)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|key| server.accepts_key(key));
        if !accepted {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

fn success() -> Json<Value> {
    Json(json!({ "success": true }))
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn ready() -> Json<Value> {
    Json(json!({ "status": "ready" }))
}

async fn server_info(State(server): State<Arc<FakeServer>>) -> Json<Value> {
    Json(json!({
        "uptime": server.uptime_seconds(),
        "idle_time": server.idle_seconds(),
        "title": "OpenHands Agent Server (Cadenza fake)",
        "version": FAKE_VERSION,
        "sdk_version": SDK_VERSION,
        "tools_version": SDK_VERSION,
        "workspace_version": SDK_VERSION,
        "build_git_sha": "unknown",
        "build_git_ref": "unknown",
        "python_version": null,
        "usable_tools": DEFAULT_TOOLS,
        "runtime_idle_timeout_seconds": 1200,
        "conversation_runtime": "local",
        "available_conversation_runtimes": ["local"],
        "capabilities": ["idempotent_conversation_create_v1"],
        "max_foreground_terminal_timeout_seconds": DEFAULT_BASH_TIMEOUT_SECONDS,
        "docs": "/docs",
        "redoc": "/redoc",
    }))
}

fn find_conversation(server: &FakeServer, raw_id: &str) -> ApiResult<Arc<Conversation>> {
    let id = wire::parse_uuid(raw_id, "path.conversation_id")?;
    server.conversation(id).ok_or(ApiError::NotFound)
}

async fn create_conversation(
    State(server): State<Arc<FakeServer>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let request: StartConversationRequest = wire::parse_body(&body)?;
    let agent = resolve_agent(&request)?;
    // Field by field in the model's order, every refusal at once, as pydantic reports them.
    let mut refused = request
        .agent
        .as_ref()
        .map(wire::check_llm_api_key)
        .unwrap_or_default();
    refused.extend(wire::check_max_iterations(request.max_iterations));
    let secrets = match wire::start_secrets(request.secrets.as_ref()) {
        Ok(secrets) => secrets,
        Err(errors) => {
            refused.extend(errors);
            BTreeMap::new()
        }
    };
    if !refused.is_empty() {
        return Err(ApiError::Validation(refused));
    }
    let initial_content = request
        .initial_message
        .as_ref()
        .map(wire::SendMessageRequest::validated_content)
        .transpose()?;
    let id = request.conversation_id.unwrap_or_else(Uuid::new_v4);
    if let Some(existing) = server.conversation(id) {
        return Ok((StatusCode::OK, Json(existing.info())));
    }

    let working_dir = std::path::absolute(&request.workspace.working_dir)
        .map_err(|error| ApiError::validation("body.workspace.working_dir", error))?;
    prepare_workspace(&working_dir).await?;

    let candidate = Conversation::new(
        NewConversation {
            id,
            working_dir,
            agent,
            max_iterations: request.max_iterations,
            stuck_detection: request.stuck_detection,
            secrets,
            tags: request.tags.unwrap_or_else(|| json!({})),
        },
        &server.shutdown,
    );
    let (conversation, created) = server.insert_if_absent(candidate);
    if !created {
        return Ok((StatusCode::OK, Json(conversation.info())));
    }
    server.touch();
    if let Some(content) = initial_content {
        // The initial message always starts a run, whatever its `run` flag says.
        agent::send_user_message(&conversation, &content);
        let _ = agent::start_run(&server, &conversation);
    }
    Ok((StatusCode::CREATED, Json(conversation.info())))
}

/// The agent as `ConversationInfo` shows it, from exactly one of `agent` / `agent_settings`.
fn resolve_agent(request: &StartConversationRequest) -> ApiResult<Value> {
    let given = [
        request.agent.is_some(),
        request.agent_settings.is_some(),
        request.agent_profile_id.is_some(),
    ];
    if given.iter().filter(|&&present| present).count() != 1 {
        return Err(ApiError::validation(
            "body",
            "exactly one of agent, agent_settings or agent_profile_id is required",
        ));
    }
    if request.agent_profile_id.is_some() {
        return Err(ApiError::validation(
            "body.agent_profile_id",
            "agent profiles are not supported by this server",
        ));
    }
    let mut agent = if let Some(agent) = &request.agent {
        let Value::Object(fields) = agent.clone() else {
            return Err(ApiError::validation("body.agent", "must be an object"));
        };
        let mut agent = Value::Object(fields);
        if agent.get("kind").is_none() {
            agent["kind"] = json!("Agent");
        }
        if agent.get("tools").is_none() {
            agent["tools"] = json!([]);
        }
        agent
    } else {
        let settings = request.agent_settings.clone().unwrap_or_default();
        if !settings.is_object() {
            return Err(ApiError::validation(
                "body.agent_settings",
                "must be an object",
            ));
        }
        let tools = match settings.get("tools") {
            Some(tools) if !tools.is_null() => tools.clone(),
            _ => DEFAULT_TOOLS
                .iter()
                .map(|name| json!({ "name": name, "params": {} }))
                .collect(),
        };
        json!({
            "kind": "Agent",
            "llm": settings.get("llm").cloned().unwrap_or_else(|| json!({})),
            "tools": tools,
        })
    };
    if let Some(Value::Object(llm)) = agent.get_mut("llm") {
        for (name, value) in llm.iter_mut() {
            if value.is_string() && (name.contains("key") || name.contains("secret")) {
                *value = json!("**********");
            }
        }
    }
    Ok(agent)
}

/// Creates the working directory and, like the real server, makes it a git repository.
async fn prepare_workspace(working_dir: &FsPath) -> ApiResult<()> {
    tokio::fs::create_dir_all(working_dir)
        .await
        .map_err(ApiError::internal)?;
    let inside_repository = tokio::process::Command::new("git")
        .arg("-C")
        .arg(working_dir)
        .args(["rev-parse", "--is-inside-work-tree"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .is_ok_and(|output| output.status.success());
    if !inside_repository {
        let init = tokio::process::Command::new("git")
            .arg("-C")
            .arg(working_dir)
            .args(["init", "--quiet"])
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        match init {
            Ok(output) if output.status.success() => {}
            // The real server logs and carries on: the agent can still work without git.
            Ok(output) => tracing::warn!(
                dir = %working_dir.display(),
                stderr = %String::from_utf8_lossy(&output.stderr).trim(),
                "git init failed"
            ),
            Err(error) => tracing::warn!(dir = %working_dir.display(), %error, "git init failed"),
        }
    }
    Ok(())
}

async fn get_conversation(
    State(server): State<Arc<FakeServer>>,
    Path(conversation_id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(find_conversation(&server, &conversation_id)?.info()))
}

async fn batch_get_conversations(
    State(server): State<Arc<FakeServer>>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let params = QueryParams::parse(query.as_deref());
    let ids = params.get_all("ids");
    if ids.len() > 99 {
        return Err(ApiError::validation("query.ids", "at most 99 ids"));
    }
    let infos = ids
        .into_iter()
        .map(|raw| {
            let id = wire::parse_uuid(raw, "query.ids")?;
            Ok(server
                .conversation(id)
                .map_or(Value::Null, |conversation| conversation.info()))
        })
        .collect::<ApiResult<Vec<Value>>>()?;
    Ok(Json(Value::Array(infos)))
}

/// The `status` filter of conversation search and count.
fn status_filter(params: &QueryParams) -> impl Fn(&Value) -> bool + use<> {
    let status = params.get("status").map(str::to_owned);
    move |info: &Value| {
        status
            .as_deref()
            .is_none_or(|status| info["execution_status"] == status)
    }
}

async fn search_conversations(
    State(server): State<Arc<FakeServer>>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let params = QueryParams::parse(query.as_deref());
    let limit = params.limit()?;
    let keep = status_filter(&params);
    let (sort_key, descending) = match params.get("sort_order").unwrap_or("CREATED_AT_DESC") {
        "CREATED_AT" => ("created_at", false),
        "CREATED_AT_DESC" => ("created_at", true),
        "UPDATED_AT" => ("updated_at", false),
        "UPDATED_AT_DESC" => ("updated_at", true),
        other => {
            return Err(ApiError::validation(
                "query.sort_order",
                format!("unknown sort order {other:?}"),
            ));
        }
    };
    let mut infos: Vec<Value> = server
        .all_conversations()
        .iter()
        .map(|conversation| conversation.info())
        .filter(|info| keep(info))
        .collect();
    infos.sort_by(|a, b| {
        let key = |info: &Value| {
            (
                info[sort_key].as_str().unwrap_or_default().to_owned(),
                info["id"].as_str().unwrap_or_default().to_owned(),
            )
        };
        if descending {
            key(b).cmp(&key(a))
        } else {
            key(a).cmp(&key(b))
        }
    });
    let (items, next_page_id) = page(infos, params.get("page_id"), limit, |info| {
        info["id"].as_str().unwrap_or_default()
    });
    Ok(Json(
        json!({ "items": items, "next_page_id": next_page_id }),
    ))
}

async fn count_conversations(
    State(server): State<Arc<FakeServer>>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<usize>> {
    let params = QueryParams::parse(query.as_deref());
    let keep = status_filter(&params);
    Ok(Json(
        server
            .all_conversations()
            .iter()
            .filter(|conversation| keep(&conversation.info()))
            .count(),
    ))
}

/// One page starting at the item whose id is `page_id` (inclusive). An unknown `page_id`
/// restarts from the first item, as the real server does.
fn page<T>(
    items: Vec<T>,
    page_id: Option<&str>,
    limit: usize,
    id_of: impl Fn(&T) -> &str,
) -> (Vec<T>, Option<String>) {
    let start = page_id
        .and_then(|page_id| items.iter().position(|item| id_of(item) == page_id))
        .unwrap_or(0);
    let next_page_id = items.get(start + limit).map(|item| id_of(item).to_owned());
    let page = items.into_iter().skip(start).take(limit).collect();
    (page, next_page_id)
}

async fn delete_conversation(
    State(server): State<Arc<FakeServer>>,
    Path(conversation_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = wire::parse_uuid(&conversation_id, "path.conversation_id")?;
    let conversation = server.remove(id).ok_or(ApiError::NotFound)?;
    // Stops the run (killing its command) and closes the sockets; the workspace stays.
    conversation.closed.cancel();
    Ok(success())
}

async fn update_conversation(
    State(server): State<Arc<FakeServer>>,
    Path(conversation_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let conversation = find_conversation(&server, &conversation_id)?;
    let request: UpdateConversationRequest = wire::parse_body(&body)?;
    let mut state = conversation.lock();
    if let Some(title) = request.title {
        state.title = Some(title);
    }
    if let Some(tags) = request.tags {
        state.tags = tags;
    }
    Ok(success())
}

async fn run_conversation(
    State(server): State<Arc<FakeServer>>,
    Path(conversation_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let conversation = find_conversation(&server, &conversation_id)?;
    agent::start_run(&server, &conversation)
        .map_err(|already_running| ApiError::Conflict(already_running.to_string()))?;
    Ok(success())
}

async fn pause_conversation(
    State(server): State<Arc<FakeServer>>,
    Path(conversation_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let conversation = find_conversation(&server, &conversation_id)?;
    agent::pause(&conversation).await;
    Ok(success())
}

async fn interrupt_conversation(
    State(server): State<Arc<FakeServer>>,
    Path(conversation_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let conversation = find_conversation(&server, &conversation_id)?;
    agent::interrupt(&conversation).await;
    Ok(success())
}

async fn update_secrets(
    State(server): State<Arc<FakeServer>>,
    Path(conversation_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let conversation = find_conversation(&server, &conversation_id)?;
    let request: UpdateSecretsRequest = wire::parse_body(&body)?;
    conversation
        .lock()
        .secrets
        .extend(wire::resolve_secrets(request.secrets));
    Ok(success())
}

async fn agent_final_response(
    State(server): State<Arc<FakeServer>>,
    Path(conversation_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let conversation = find_conversation(&server, &conversation_id)?;
    let state = conversation.lock();
    let response = state
        .events()
        .iter()
        .rev()
        .find_map(|event| match events::kind(event) {
            "ActionEvent" if event["action"]["kind"] == "FinishAction" => Some(
                event["action"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            "MessageEvent" if events::source(event) == "agent" => events::message_text(event),
            _ => None,
        })
        .unwrap_or_default();
    Ok(Json(json!({ "response": response })))
}

async fn send_message(
    State(server): State<Arc<FakeServer>>,
    Path(conversation_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let conversation = find_conversation(&server, &conversation_id)?;
    let request: wire::SendMessageRequest = wire::parse_body(&body)?;
    let content = request.validated_content()?;
    agent::send_user_message(&conversation, &content);
    server.touch();
    if request.run {
        // A live run picks the message up itself.
        let _ = agent::start_run(&server, &conversation);
    }
    Ok(success())
}

/// The `events/search` and `events/count` filters.
struct EventFilter {
    kind: Option<String>,
    source: Option<String>,
    body: Option<String>,
    timestamp_gte: Option<String>,
    timestamp_lt: Option<String>,
}

impl EventFilter {
    fn from_query(params: &QueryParams) -> ApiResult<Self> {
        let timestamp = |name: &'static str| {
            params
                .get(name)
                .map(|raw| wire::normalize_timestamp(raw, name))
                .transpose()
        };
        Ok(Self {
            kind: params.get("kind").map(str::to_owned),
            source: params.get("source").map(str::to_owned),
            body: params.get("body").map(str::to_lowercase),
            timestamp_gte: timestamp("timestamp__gte")?,
            timestamp_lt: timestamp("timestamp__lt")?,
        })
    }

    fn matches(&self, event: &Value) -> bool {
        let stamp = events::timestamp(event);
        self.kind
            .as_deref()
            .is_none_or(|kind| events::kind(event) == kind)
            && self
                .source
                .as_deref()
                .is_none_or(|source| events::source(event) == source)
            && self.body.as_deref().is_none_or(|needle| {
                events::kind(event) == "MessageEvent"
                    && events::message_text(event)
                        .is_some_and(|text| text.to_lowercase().contains(needle))
            })
            && self.timestamp_gte.as_deref().is_none_or(|gte| stamp >= gte)
            && self.timestamp_lt.as_deref().is_none_or(|lt| stamp < lt)
    }
}

async fn search_events(
    State(server): State<Arc<FakeServer>>,
    Path(conversation_id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let conversation = find_conversation(&server, &conversation_id)?;
    let params = QueryParams::parse(query.as_deref());
    let limit = params.limit()?;
    let filter = EventFilter::from_query(&params)?;
    let descending = match params.get("sort_order").unwrap_or("TIMESTAMP") {
        "TIMESTAMP" => false,
        "TIMESTAMP_DESC" => true,
        other => {
            return Err(ApiError::validation(
                "query.sort_order",
                format!("unknown sort order {other:?}"),
            ));
        }
    };
    let mut matching: Vec<Arc<Value>> = conversation
        .lock()
        .events()
        .iter()
        .filter(|event| filter.matches(event))
        .cloned()
        .collect();
    if descending {
        matching.reverse();
    }
    let (items, next_page_id) = page(matching, params.get("page_id"), limit, |event| {
        events::id(event)
    });
    let items: Vec<Value> = items.into_iter().map(Arc::unwrap_or_clone).collect();
    Ok(Json(
        json!({ "items": items, "next_page_id": next_page_id }),
    ))
}

async fn count_events(
    State(server): State<Arc<FakeServer>>,
    Path(conversation_id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<usize>> {
    let conversation = find_conversation(&server, &conversation_id)?;
    let filter = EventFilter::from_query(&QueryParams::parse(query.as_deref()))?;
    let count = conversation
        .lock()
        .events()
        .iter()
        .filter(|event| filter.matches(event))
        .count();
    Ok(Json(count))
}

async fn get_event(
    State(server): State<Arc<FakeServer>>,
    Path((conversation_id, event_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let conversation = find_conversation(&server, &conversation_id)?;
    let state = conversation.lock();
    let event = state.event_by_id(&event_id).ok_or(ApiError::NotFound)?;
    Ok(Json(Value::clone(event)))
}

async fn execute_bash_command(
    State(server): State<Arc<FakeServer>>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let request: ExecuteBashRequest = wire::parse_body(&body)?;
    let timeout_seconds = request.timeout.unwrap_or(DEFAULT_BASH_TIMEOUT_SECONDS);
    let timeout = Duration::try_from_secs_f64(timeout_seconds)
        .ok()
        .filter(|timeout| !timeout.is_zero())
        .ok_or_else(|| {
            ApiError::validation("body.timeout", "must be a positive number of seconds")
        })?;
    let cwd = match request.cwd.as_deref() {
        Some(cwd) => {
            let cwd = PathBuf::from(cwd);
            if !cwd.is_absolute() {
                return Err(ApiError::BadRequest(format!(
                    "cwd must be an absolute path: {}",
                    cwd.display()
                )));
            }
            if !cwd.is_dir() {
                return Err(ApiError::BadRequest(format!(
                    "cwd is not a directory: {}",
                    cwd.display()
                )));
            }
            cwd
        }
        None if server.config.default_working_dir.is_dir() => {
            server.config.default_working_dir.clone()
        }
        None => PathBuf::from("/"),
    };
    server.touch();
    let env = Default::default();
    let outcome = shell::run_shell(
        ShellCommand {
            command: &request.command,
            cwd: &cwd,
            env: &env,
            timeout,
            merge_stderr: false,
        },
        &server.shutdown,
    )
    .await
    .map_err(ApiError::internal)?;
    server.touch();
    let (exit_code, stdout, stderr) = match outcome {
        ShellOutcome::Exited {
            exit_code,
            stdout,
            stderr,
            ..
        } => (exit_code, stdout, stderr),
        ShellOutcome::TimedOut { stdout, stderr, .. } => (-1, stdout, stderr),
        ShellOutcome::Cancelled => (-1, String::new(), String::new()),
    };
    Ok(Json(json!({
        "kind": "BashOutput",
        "id": events::new_event_id(),
        "timestamp": events::naive_timestamp_now(),
        "command_id": events::new_event_id(),
        "order": 0,
        "exit_code": exit_code,
        "stdout": stdout,
        "stderr": stderr,
    })))
}

async fn file_archive(
    State(server): State<Arc<FakeServer>>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let params = QueryParams::parse(query.as_deref());
    let path = params
        .get("path")
        .ok_or_else(|| ApiError::validation("query.path", "field required"))?;
    let format = params
        .get("format")
        .ok_or_else(|| ApiError::validation("query.format", "field required"))?;
    let request = ArchiveRequest {
        path: path.to_owned(),
        format: format.to_owned(),
        base_ref: params.get("base_ref").map(str::to_owned),
        use_default_excludes: params.flag("use_default_excludes", true)?,
        excludes: params
            .get_all("exclude")
            .into_iter()
            .map(str::to_owned)
            .collect(),
    };
    server.touch();
    let archive = archive::build(&request)
        .await
        .map_err(|error| match error {
            ArchiveError::RelativePath(_)
            | ArchiveError::Missing(_)
            | ArchiveError::NotARepository(_)
            | ArchiveError::UnknownBaseRef(_)
            | ArchiveError::UnsupportedFormat(_) => ApiError::BadRequest(error.to_string()),
            ArchiveError::CommandFailed { .. } | ArchiveError::Spawn { .. } => {
                ApiError::internal(error)
            }
        })?;

    let mut headers = HeaderMap::new();
    let body = match archive {
        Archive::GitDelta(delta) => {
            let name = FsPath::new(&delta.repo_root).file_name().map_or_else(
                || "repository".into(),
                |name| name.to_string_lossy().into_owned(),
            );
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/x-patch"),
            );
            set_header(
                &mut headers,
                header::CONTENT_DISPOSITION,
                &format!("attachment; filename=\"{name}.patch\""),
            );
            let archive_headers = [
                ("x-archive-base-commit", Some(delta.base_commit.as_str())),
                ("x-archive-base-ref", Some(delta.base_ref.as_str())),
                ("x-archive-head-commit", Some(delta.head_commit.as_str())),
                ("x-archive-branch", Some(delta.branch.as_str())),
                ("x-archive-repo-root", Some(delta.repo_root.as_str())),
                ("x-archive-repo-remote", delta.remote.as_deref()),
            ];
            for (name, value) in archive_headers {
                if let Some(value) = value {
                    set_header(&mut headers, HeaderName::from_static(name), value);
                }
            }
            delta.patch
        }
        Archive::TarGz { bytes, name } => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/gzip"),
            );
            set_header(
                &mut headers,
                header::CONTENT_DISPOSITION,
                &format!("attachment; filename=\"{name}.tar.gz\""),
            );
            bytes
        }
    };
    Ok((headers, Body::from(body)).into_response())
}

/// Sets a header when the value is representable; a non-ASCII path cannot be sent as a header
/// and is left out rather than failing the whole archive.
fn set_header(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(value) => {
            headers.insert(name, value);
        }
        Err(_) => tracing::warn!(header = %name, "archive header value is not valid ASCII"),
    }
}
