//! Writing audit entries: one per mutating action, in the same transaction as the change, with
//! the actor, the request's id, address and user agent, and a before/after diff of the changed
//! fields (never secret values).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use cadenza_domain::OrgId;
use cadenza_storage::audit::{self, AuditEntry};
use cadenza_storage::{PgConnection, PgPool, StorageError};
use serde_json::{Map, Value, json};

use crate::client::ClientInfo;
use crate::principal::{Actor, Principal};

/// What the audit log records about the request itself.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub client_ip: Option<std::net::IpAddr>,
    pub user_agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(|value| value.chars().take(512).collect::<String>())
        };
        // The client as `client::identify_client` worked it out: the address behind trusted
        // proxies only, and a request id a client cannot choose.
        let client = parts.extensions.get::<ClientInfo>();
        Ok(RequestMeta {
            request_id: client.map(|client| client.request_id.clone()),
            ip: client.and_then(|client| client.ip).map(|ip| ip.to_string()),
            client_ip: client.and_then(|client| client.ip),
            user_agent: header("user-agent"),
        })
    }
}

/// The fields that differ between `before` and `after` (objects), as `{field: {before, after}}`.
pub fn diff(before: &Value, after: &Value) -> Value {
    let empty = Map::new();
    let before = before.as_object().unwrap_or(&empty);
    let after = after.as_object().unwrap_or(&empty);
    let mut changes = Map::new();
    for key in before.keys().chain(after.keys()) {
        let (old, new) = (before.get(key), after.get(key));
        if old != new && !changes.contains_key(key) {
            changes.insert(
                key.clone(),
                json!({ "before": old.cloned().unwrap_or(Value::Null), "after": new.cloned().unwrap_or(Value::Null) }),
            );
        }
    }
    Value::Object(changes)
}

pub struct Change<'a> {
    pub org: Option<OrgId>,
    pub action: &'a str,
    pub resource_type: &'a str,
    pub resource_id: Option<String>,
    pub diff: Value,
}

/// Records one entry for `principal` (or an anonymous caller when `None`).
pub async fn record(
    conn: &mut PgConnection,
    principal: Option<&Principal>,
    meta: &RequestMeta,
    change: Change<'_>,
) -> Result<(), StorageError> {
    let (actor_type, actor_id) = match principal.map(|principal| &principal.actor) {
        Some(Actor::User { id, .. }) => ("user", Some(id.as_uuid())),
        Some(Actor::ServiceToken { id, .. }) => ("token", Some(id.as_uuid())),
        None => ("anonymous", None),
    };
    let entry = AuditEntry {
        org_id: change.org,
        actor_type: actor_type.to_owned(),
        actor_id,
        actor_label: principal.map(Principal::label),
        action: change.action.to_owned(),
        resource_type: change.resource_type.to_owned(),
        resource_id: change.resource_id,
        diff: change.diff,
        request_id: meta.request_id.clone(),
        ip: meta.ip.clone(),
        user_agent: meta.user_agent.clone(),
    };
    audit::record(conn, &entry).await?;
    Ok(())
}

/// A transaction whose change is audited in it: begin, make the change through it (it derefs to
/// the connection), `record` what changed, `commit`. The entry and the change commit together
/// or not at all.
pub struct AuditedTx<'a> {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    principal: &'a Principal,
    meta: &'a RequestMeta,
}

impl<'a> AuditedTx<'a> {
    pub async fn begin(
        pool: &PgPool,
        principal: &'a Principal,
        meta: &'a RequestMeta,
    ) -> Result<Self, StorageError> {
        Ok(Self {
            tx: pool.begin().await?,
            principal,
            meta,
        })
    }

    /// Records one entry for the transaction's caller.
    pub async fn record(&mut self, change: Change<'_>) -> Result<(), StorageError> {
        record(&mut self.tx, Some(self.principal), self.meta, change).await
    }

    pub async fn commit(self) -> Result<(), StorageError> {
        Ok(self.tx.commit().await?)
    }
}

impl std::ops::Deref for AuditedTx<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for AuditedTx<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_lists_only_changed_fields() {
        let before = json!({"name": "a", "role": "member", "same": 1});
        let after = json!({"name": "b", "role": "member", "same": 1, "new": true});
        assert_eq!(
            diff(&before, &after),
            json!({"name": {"before": "a", "after": "b"}, "new": {"before": null, "after": true}})
        );
    }
}
