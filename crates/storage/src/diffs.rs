use cadenza_domain::{Fence, OrgId, RunId, RunState, Scope};
use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::StorageResult;

#[derive(Clone, Debug, PartialEq)]
pub struct RunDiff {
    pub run_id: RunId,
    pub base_commit: Option<String>,
    pub patch: String,
    pub created_at: OffsetDateTime,
}

/// Stores the run's diff, as its holder: refused (`Fenced`) once another holds the run.
pub async fn upsert(
    conn: &mut PgConnection,
    run_id: RunId,
    org_id: OrgId,
    fence: Fence,
    base_commit: Option<&str>,
    patch: &str,
) -> StorageResult<()> {
    let done = sqlx::query!(
        r#"insert into run_diffs (run_id, org_id, base_commit, patch)
           select $1, $2, $3, $4 where exists (
               select 1 from runs where id = $1 and lease_holder = $5 and lease_epoch = $6
                 and state = any($7))
           on conflict (run_id) do update
             set base_commit = excluded.base_commit, patch = excluded.patch, created_at = now()"#,
        run_id.as_uuid(),
        org_id.as_uuid(),
        base_commit,
        patch,
        fence.worker.as_uuid(),
        fence.epoch,
        &RunState::names(&RunState::DRIVEN) as &[&str]
    )
    .execute(conn)
    .await?;
    crate::runs::fenced_unless(done.rows_affected() == 1, run_id)
}

pub async fn get(
    conn: &mut PgConnection,
    scope: &Scope,
    run_id: RunId,
) -> StorageResult<Option<RunDiff>> {
    let orgs = scope.org_filter();
    let row = sqlx::query!(
        r#"select run_id, base_commit, patch, created_at from run_diffs
           where run_id = $1 and ($2::uuid[] is null or org_id = any($2))"#,
        run_id.as_uuid(),
        orgs.as_deref()
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|row| RunDiff {
        run_id: row.run_id.into(),
        base_commit: row.base_commit,
        patch: row.patch,
        created_at: row.created_at,
    }))
}
