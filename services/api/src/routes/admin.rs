use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use cadenza_domain::{ImageRule, OrgId, Scope, UserId};
use cadenza_storage::domain_rules::{self, VerificationMethod};
use cadenza_storage::{StorageError, agent_images, orgs, secrets, users};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::{AuditedTx, Change, RequestMeta};
use crate::auth::{Authorized, perm};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, next_cursor, page_limit, parse_cursor};
use crate::routes::wire::{OrgView, Page, UserView};
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    cursor: Option<String>,
    limit: Option<i64>,
}

/// `GET /admin/orgs`: every org (instance administrators only).
pub async fn orgs(
    State(state): State<AppState>,
    _admin: Authorized<perm::InstanceAdmin>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<OrgView>>> {
    let limit = page_limit(
        query.limit,
        state.limits.default_page,
        state.limits.max_page,
    )?;
    let before: Option<OrgId> = parse_cursor(query.cursor.as_deref())?;
    let mut conn = state.pool.acquire().await?;
    let items = orgs::list(&mut conn, &Scope::Instance, before, limit).await?;
    let next_cursor = next_cursor(&items, limit, |org| org.id);
    Ok(Json(Page {
        items: items
            .into_iter()
            .map(|org| OrgView::new(org, None))
            .collect(),
        next_cursor,
    }))
}

/// `GET /admin/health`: each dependency's state with its error (the public `/readyz` says only
/// ready or not).
pub async fn health(
    State(state): State<AppState>,
    _admin: Authorized<perm::InstanceAdmin>,
) -> Json<Value> {
    let checks = crate::readiness_details(&state).await;
    let ready = checks.iter().all(|check| check.ok);
    Json(json!({"status": if ready { "ready" } else { "not ready" }, "checks": checks}))
}

/// `GET /admin/users`: every user (instance administrators only).
pub async fn users(
    State(state): State<AppState>,
    _admin: Authorized<perm::InstanceAdmin>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<UserView>>> {
    let limit = page_limit(
        query.limit,
        state.limits.default_page,
        state.limits.max_page,
    )?;
    let before: Option<UserId> = parse_cursor(query.cursor.as_deref())?;
    let mut conn = state.pool.acquire().await?;
    let items = users::list(&mut conn, before, limit).await?;
    let next_cursor = next_cursor(&items, limit, |user| user.id);
    Ok(Json(Page {
        items: items.into_iter().map(UserView::from).collect(),
        next_cursor,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RewrapQuery {
    batch_size: Option<i64>,
    /// Seconds the request may spend before answering with `complete: false`.
    budget_seconds: Option<u64>,
}

fn by_kek_json(by_kek: &[(String, i64)]) -> Value {
    Value::Array(
        by_kek
            .iter()
            .map(|(kek_id, count)| json!({"kek_id": kek_id, "secrets": count}))
            .collect(),
    )
}

/// `GET /admin/secrets/keys`: the active key, the configured ones, how many secrets each
/// stored key id wraps (a key may be removed once it wraps none), and how many are sealed in an
/// older format (the re-wrap upgrades them).
pub async fn secret_keys(
    State(state): State<AppState>,
    _admin: Authorized<perm::InstanceAdmin>,
) -> ApiResult<Json<Value>> {
    let mut conn = state.pool.acquire().await?;
    let by_kek = secrets::count_by_kek(&mut conn).await?;
    let outdated_format = secrets::count_outdated_format(&mut conn).await?;
    Ok(Json(json!({
        "active_kek_id": state.keyring.active_id(),
        "configured_kek_ids": state.keyring.ids().collect::<Vec<_>>(),
        "by_kek": by_kek_json(&by_kek),
        "outdated_format": outdated_format,
    })))
}

/// `POST /admin/secrets/rewrap`: re-wraps data keys with the active key (upgrading secrets of
/// an older format on the way), in batches, for at
/// most `budget_seconds` (default 20, at most 120). Answers `complete: false` when time ran out
/// or some secrets could not be re-wrapped; calling again continues where it stopped.
pub async fn rewrap_secrets(
    State(state): State<AppState>,
    admin: Authorized<perm::InstanceAdmin>,
    meta: RequestMeta,
    ApiQuery(query): ApiQuery<RewrapQuery>,
) -> ApiResult<Json<Value>> {
    let batch_size = query.batch_size.unwrap_or(100);
    if !(1..=10_000).contains(&batch_size) {
        return Err(ApiError::BadRequest(
            "`batch_size` must be between 1 and 10000".into(),
        ));
    }
    let budget = Duration::from_secs(query.budget_seconds.unwrap_or(20).clamp(1, 120));
    let started = Instant::now();
    let report = secrets::rewrap_all(
        &state.pool,
        &state.keyring,
        batch_size,
        |_| {},
        || started.elapsed() >= budget,
    )
    .await?;
    let complete = !report.interrupted && report.failed.is_empty();
    let mut tx = AuditedTx::begin(&state.pool, &admin.principal, &meta).await?;
    tx.record(Change {
        org: None,
        action: "secrets.rewrapped",
        resource_type: "key_ring",
        resource_id: Some(state.keyring.active_id().to_owned()),
        diff: json!({
            "rewrapped": report.progress.rewrapped,
            "failed": report.failed.len(),
            "complete": complete,
            "by_kek": by_kek_json(&report.by_kek),
        }),
    })
    .await?;
    tx.commit().await?;
    Ok(Json(json!({
        "active_kek_id": state.keyring.active_id(),
        "rewrapped": report.progress.rewrapped,
        "batches": report.progress.batches,
        "failed": report.failed.iter().map(|(id, why)| json!({"secret_id": id, "error": why})).collect::<Vec<_>>(),
        "by_kek": by_kek_json(&report.by_kek),
        "complete": complete,
    })))
}

/// `POST /admin/orgs/{org_id}/domains/{domain}/approve`: an instance administrator vouches that
/// the org controls the domain (when it cannot publish a DNS record), which activates the rule.
pub async fn approve_domain(
    State(state): State<AppState>,
    admin: Authorized<perm::InstanceAdmin>,
    meta: RequestMeta,
    axum::extract::Path((org_id, domain)): axum::extract::Path<(String, String)>,
) -> ApiResult<Json<super::wire::DomainView>> {
    let org_id: OrgId = crate::extract::parse_id(&org_id, "org")?;
    let domain = super::invitations::normalize_domain(&domain)?;
    let no_rule = |err| match err {
        StorageError::NotFound(_) => ApiError::NotFound(format!("no rule for `{domain}`")),
        other => ApiError::from(other),
    };
    let mut tx = state.pool.begin().await?;
    let approved = domain_rules::mark_verified(
        &mut tx,
        org_id,
        &domain,
        VerificationMethod::Admin,
        admin.principal.user_id(),
    )
    .await
    .map_err(no_rule)?;
    let Some(approved) = approved else {
        let rule = domain_rules::get(&mut tx, org_id, &domain)
            .await
            .map_err(no_rule)?;
        return Ok(Json(super::invitations::domain_rule_view(&rule)));
    };
    super::invitations::record_verification(&mut tx, &admin.principal, &meta, &approved).await?;
    tx.commit().await?;
    Ok(Json(super::invitations::domain_rule_view(&approved)))
}

/// `GET /admin/orgs/{org_id}/agent-images`: the instance's image rules and the org's own.
pub async fn agent_images(
    State(state): State<AppState>,
    _admin: Authorized<perm::InstanceAdmin>,
    axum::extract::Path(org_id): axum::extract::Path<String>,
) -> ApiResult<Json<Value>> {
    let org_id: OrgId = crate::extract::parse_id(&org_id, "org")?;
    let mut conn = state.pool.acquire().await?;
    orgs::get(&mut conn, &Scope::Instance, org_id).await?;
    let org_rules = agent_images::rules_of(&mut conn, org_id).await?;
    Ok(Json(images_view(&state, &org_rules)))
}

fn images_view(state: &AppState, org_rules: &[ImageRule]) -> Value {
    let texts = |rules: &[ImageRule]| rules.iter().map(ToString::to_string).collect::<Vec<_>>();
    json!({"instance": texts(&state.images.rules), "org": texts(org_rules)})
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentImagesBody {
    rules: Vec<String>,
}

/// `PUT /admin/orgs/{org_id}/agent-images {"rules": [...]}`: replaces the images this org may use
/// beyond the instance's rules (an empty list removes them all).
pub async fn put_agent_images(
    State(state): State<AppState>,
    admin: Authorized<perm::InstanceAdmin>,
    meta: RequestMeta,
    axum::extract::Path(org_id): axum::extract::Path<String>,
    crate::extract::ApiJson(body): crate::extract::ApiJson<AgentImagesBody>,
) -> ApiResult<Json<Value>> {
    let org_id: OrgId = crate::extract::parse_id(&org_id, "org")?;
    if body.rules.len() > 100 {
        return Err(ApiError::BadRequest(
            "at most 100 image rules per org".into(),
        ));
    }
    let rules = body
        .rules
        .iter()
        .map(|rule| rule.parse::<ImageRule>())
        .collect::<Result<Vec<_>, String>>()
        .map_err(ApiError::BadRequest)?;
    let mut tx = AuditedTx::begin(&state.pool, &admin.principal, &meta).await?;
    orgs::get(&mut tx, &Scope::Instance, org_id).await?;
    let before = agent_images::replace(&mut tx, org_id, &rules, admin.principal.user_id()).await?;
    let after = agent_images::rules_of(&mut tx, org_id).await?;
    let texts = |rules: &[ImageRule]| rules.iter().map(ToString::to_string).collect::<Vec<_>>();
    tx.record(Change {
        org: Some(org_id),
        action: "org.agent_images.replace",
        resource_type: "org",
        resource_id: Some(org_id.to_string()),
        diff: json!({"rules": {"before": texts(&before), "after": texts(&after)}}),
    })
    .await?;
    tx.commit().await?;
    Ok(Json(images_view(&state, &after)))
}
