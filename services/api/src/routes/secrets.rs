//! Secrets: write-only values, org-wide or per project. Every route needs `secrets.manage`;
//! no route returns a value, and no error message repeats one.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use cadenza_domain::OrgId;
use cadenza_storage::StorageError;
use cadenza_storage::secrets::{self, SecretMeta, SecretScope};
use secrecy::SecretString;
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::audit::{AuditedTx, Change, RequestMeta};
use crate::auth::{Authorized, perm};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, parse_id};
use crate::state::AppState;

/// Largest accepted value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

#[derive(Serialize, utoipa::ToSchema)]
pub struct SecretView {
    pub name: String,
    /// `org` or `project`.
    pub scope: &'static str,
    pub project_id: Option<String>,
    pub version: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub created_by: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub updated_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
}

impl From<SecretMeta> for SecretView {
    fn from(meta: SecretMeta) -> Self {
        SecretView {
            name: meta.name,
            scope: if meta.project_id.is_some() {
                "project"
            } else {
                "org"
            },
            project_id: meta.project_id.map(|id| id.to_string()),
            version: meta.version,
            created_at: meta.created_at,
            created_by: meta.created_by,
            updated_at: meta.updated_at,
            updated_by: meta.updated_by,
            last_used_at: meta.last_used_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SecretList {
    pub items: Vec<SecretView>,
}

fn checked_name(name: &str) -> ApiResult<&str> {
    if secrets::valid_name(name) {
        Ok(name)
    } else {
        Err(ApiError::BadRequest(format!(
            "`{name}` is not a valid secret name: use A-Z, 0-9 and `_`, not starting with a \
             digit, at most 64 characters (it becomes an environment variable)"
        )))
    }
}

/// Takes the value out of `{"value": "..."}`. Parsed by hand so that no error message (serde's
/// quote the offending input) can ever contain the value.
/// The body of a secret's `PUT`, as documented. The handlers read it from a plain JSON value,
/// so that every refusal can say exactly what is wrong without echoing the value.
#[derive(utoipa::ToSchema)]
#[allow(
    dead_code,
    reason = "describes the body for the API document; parsed by `secret_value`"
)]
pub struct SecretValue {
    /// The secret (at most 64 KiB; at least a few characters besides whitespace, so it can be
    /// recognised and redacted).
    value: String,
}

fn secret_value(body: Value) -> ApiResult<SecretString> {
    let bad = |detail: &str| Err(ApiError::BadRequest(detail.to_owned()));
    let Value::Object(mut fields) = body else {
        return bad("the body must be a JSON object: {\"value\": \"...\"}");
    };
    let value = match fields.remove("value") {
        Some(Value::String(value)) => SecretString::from(value),
        Some(_) => return bad("`value` must be a string"),
        None => return bad("the body needs a `value`"),
    };
    if let Some(unknown) = fields.keys().next() {
        return Err(ApiError::BadRequest(format!(
            "unknown field `{}`: the body takes only `value`",
            unknown.chars().take(64).collect::<String>()
        )));
    }
    let text = secrecy::ExposeSecret::expose_secret(&value);
    if text.len() > MAX_VALUE_BYTES {
        return Err(ApiError::BadRequest(format!(
            "`value` is {} bytes; the limit is {MAX_VALUE_BYTES}",
            text.len()
        )));
    }
    if text.trim().len() < cadenza_crypto::MIN_REDACTED_LEN {
        return Err(ApiError::BadRequest(format!(
            "`value` must have at least {} characters besides surrounding whitespace, so it \
             can be recognised and redacted",
            cadenza_crypto::MIN_REDACTED_LEN
        )));
    }
    Ok(value)
}

fn not_found(name: &str) -> impl FnOnce(StorageError) -> ApiError + '_ {
    move |err| match err {
        StorageError::NotFound(_) => ApiError::NotFound(format!("no secret named `{name}`")),
        other => other.into(),
    }
}

fn resource_id(scope: SecretScope, name: &str) -> String {
    match scope.project() {
        None => format!("org/{name}"),
        Some(project) => format!("project/{project}/{name}"),
    }
}

fn org_scope(auth: &Authorized<perm::SecretsManage>, raw_org: &str) -> ApiResult<SecretScope> {
    let org: OrgId = parse_id(raw_org, "org")?;
    auth.require(org)?;
    Ok(SecretScope::Org(org))
}

async fn project_scope(
    state: &AppState,
    auth: &Authorized<perm::SecretsManage>,
    raw_project: &str,
) -> ApiResult<SecretScope> {
    let project = crate::routes::projects::load(state, auth, raw_project).await?;
    Ok(SecretScope::Project(project.org_id, project.id))
}

async fn list_scope(state: &AppState, scope: SecretScope) -> ApiResult<Json<SecretList>> {
    let mut conn = state.pool.acquire().await?;
    let items = secrets::list(&mut conn, scope).await?;
    Ok(Json(SecretList {
        items: items.into_iter().map(SecretView::from).collect(),
    }))
}

async fn get_scope(
    state: &AppState,
    scope: SecretScope,
    name: &str,
) -> ApiResult<Json<SecretView>> {
    let name = checked_name(name)?;
    let mut conn = state.pool.acquire().await?;
    let meta = secrets::get(&mut conn, scope, name)
        .await
        .map_err(not_found(name))?;
    Ok(Json(meta.into()))
}

async fn put_scope(
    state: &AppState,
    auth: &Authorized<perm::SecretsManage>,
    meta: &RequestMeta,
    scope: SecretScope,
    name: &str,
    body: Value,
) -> ApiResult<(StatusCode, Json<SecretView>)> {
    let name = checked_name(name)?;
    let value = secret_value(body)?;
    let mut tx = AuditedTx::begin(&state.pool, &auth.principal, meta).await?;
    let (written, created) = secrets::put(
        &mut tx,
        &state.keyring,
        scope,
        name,
        &value,
        &auth.principal.label(),
    )
    .await?;
    drop(value);
    let before = if created {
        Value::Null
    } else {
        json!(written.version - 1)
    };
    tx.record(Change {
        org: Some(scope.org()),
        action: "secret.written",
        resource_type: "secret",
        resource_id: Some(resource_id(scope, name)),
        diff: json!({"version": {"before": before, "after": written.version}}),
    })
    .await?;
    tx.commit().await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(written.into())))
}

async fn delete_scope(
    state: &AppState,
    auth: &Authorized<perm::SecretsManage>,
    meta: &RequestMeta,
    scope: SecretScope,
    name: &str,
) -> ApiResult<StatusCode> {
    let name = checked_name(name)?;
    let mut tx = AuditedTx::begin(&state.pool, &auth.principal, meta).await?;
    let deleted = secrets::delete(&mut tx, scope, name)
        .await
        .map_err(not_found(name))?;
    tx.record(Change {
        org: Some(scope.org()),
        action: "secret.deleted",
        resource_type: "secret",
        resource_id: Some(resource_id(scope, name)),
        diff: json!({"version": {"before": deleted.version, "after": null}}),
    })
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /orgs/{org}/secrets`: org-wide secrets, metadata only.
pub async fn list_org(
    State(state): State<AppState>,
    auth: Authorized<perm::SecretsManage>,
    Path(org_id): Path<String>,
) -> ApiResult<Json<SecretList>> {
    let scope = org_scope(&auth, &org_id)?;
    list_scope(&state, scope).await
}

pub async fn get_org(
    State(state): State<AppState>,
    auth: Authorized<perm::SecretsManage>,
    Path((org_id, name)): Path<(String, String)>,
) -> ApiResult<Json<SecretView>> {
    let scope = org_scope(&auth, &org_id)?;
    get_scope(&state, scope, &name).await
}

/// `PUT /orgs/{org}/secrets/{name}` `{"value": "..."}`: creates the secret (201) or writes its
/// next version (200).
pub async fn put_org(
    State(state): State<AppState>,
    auth: Authorized<perm::SecretsManage>,
    meta: RequestMeta,
    Path((org_id, name)): Path<(String, String)>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<(StatusCode, Json<SecretView>)> {
    let scope = org_scope(&auth, &org_id)?;
    put_scope(&state, &auth, &meta, scope, &name, body).await
}

pub async fn delete_org(
    State(state): State<AppState>,
    auth: Authorized<perm::SecretsManage>,
    meta: RequestMeta,
    Path((org_id, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let scope = org_scope(&auth, &org_id)?;
    delete_scope(&state, &auth, &meta, scope, &name).await
}

/// `GET /projects/{id}/secrets`: the project's own secrets (overrides), metadata only.
pub async fn list_project(
    State(state): State<AppState>,
    auth: Authorized<perm::SecretsManage>,
    Path(project_id): Path<String>,
) -> ApiResult<Json<SecretList>> {
    let scope = project_scope(&state, &auth, &project_id).await?;
    list_scope(&state, scope).await
}

pub async fn get_project(
    State(state): State<AppState>,
    auth: Authorized<perm::SecretsManage>,
    Path((project_id, name)): Path<(String, String)>,
) -> ApiResult<Json<SecretView>> {
    let scope = project_scope(&state, &auth, &project_id).await?;
    get_scope(&state, scope, &name).await
}

pub async fn put_project(
    State(state): State<AppState>,
    auth: Authorized<perm::SecretsManage>,
    meta: RequestMeta,
    Path((project_id, name)): Path<(String, String)>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<(StatusCode, Json<SecretView>)> {
    let scope = project_scope(&state, &auth, &project_id).await?;
    put_scope(&state, &auth, &meta, scope, &name, body).await
}

pub async fn delete_project(
    State(state): State<AppState>,
    auth: Authorized<perm::SecretsManage>,
    meta: RequestMeta,
    Path((project_id, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let scope = project_scope(&state, &auth, &project_id).await?;
    delete_scope(&state, &auth, &meta, scope, &name).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_errors_never_contain_the_value() {
        let canary = "sk-value-that-must-not-echo";
        for body in [
            json!({"value": canary, "extra": canary}),
            json!({"value": [canary]}),
            json!({"value": {"nested": canary}}),
            json!([canary]),
            json!(canary),
            json!({"value": "x".repeat(MAX_VALUE_BYTES + 1)}),
            json!({"value": "  ab  "}),
        ] {
            let err = secret_value(body).expect_err("refused");
            let text = err.to_string();
            assert!(matches!(err, ApiError::BadRequest(_)), "{text}");
            assert!(!text.contains(canary), "{text}");
            assert!(!text.contains("xxxx"), "{text}");
        }
        assert!(secret_value(json!({"value": canary})).is_ok());
    }
}
