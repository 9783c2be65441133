//! The agent-image rules an instance administrator added for one org (see
//! `cadenza_domain::images`). They extend the instance's allowlist for that org only.

use cadenza_domain::{ImageRule, OrgId, UserId};
use sqlx::PgConnection;

use crate::StorageResult;

/// The org's own rules, in a stable order. A stored rule that no longer parses (a rule syntax
/// that changed) is skipped rather than widening anything.
pub async fn rules_of(conn: &mut PgConnection, org: OrgId) -> StorageResult<Vec<ImageRule>> {
    let rows = sqlx::query_scalar!(
        "select rule from org_agent_image_rules where org_id = $1 order by rule",
        org.as_uuid()
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|rule| match rule.parse() {
            Ok(rule) => Some(rule),
            Err(err) => {
                tracing::warn!(%org, rule, error = %err, "ignoring an unreadable agent image rule");
                None
            }
        })
        .collect())
}

/// Replaces the org's rules with `rules`; returns the ones it had before.
pub async fn replace(
    conn: &mut PgConnection,
    org: OrgId,
    rules: &[ImageRule],
    by: Option<UserId>,
) -> StorageResult<Vec<ImageRule>> {
    let before = rules_of(&mut *conn, org).await?;
    sqlx::query!(
        "delete from org_agent_image_rules where org_id = $1",
        org.as_uuid()
    )
    .execute(&mut *conn)
    .await?;
    let texts: Vec<String> = rules.iter().map(ToString::to_string).collect();
    sqlx::query!(
        r#"insert into org_agent_image_rules (org_id, rule, created_by)
           select $1, rule, $3 from unnest($2::text[]) as rule
           on conflict do nothing"#,
        org.as_uuid(),
        &texts,
        by.map(|user| user.as_uuid())
    )
    .execute(&mut *conn)
    .await?;
    Ok(before)
}
