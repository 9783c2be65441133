use cadenza_domain::{Org, OrgId};
use sqlx::PgConnection;

use crate::StorageResult;

pub async fn create(conn: &mut PgConnection, slug: &str, name: &str) -> StorageResult<Org> {
    let row = sqlx::query!(
        r#"insert into orgs (id, slug, name) values ($1, $2, $3)
           returning id, slug, name, created_at"#,
        OrgId::new().as_uuid(),
        slug,
        name
    )
    .fetch_one(conn)
    .await?;
    Ok(Org {
        id: row.id.into(),
        slug: row.slug,
        name: row.name,
        created_at: row.created_at,
    })
}

pub async fn find_by_slug(conn: &mut PgConnection, slug: &str) -> StorageResult<Option<Org>> {
    let row = sqlx::query!(
        "select id, slug, name, created_at from orgs where slug = $1",
        slug
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|row| Org {
        id: row.id.into(),
        slug: row.slug,
        name: row.name,
        created_at: row.created_at,
    }))
}

pub async fn get(
    conn: &mut PgConnection,
    scope: &cadenza_domain::Scope,
    id: OrgId,
) -> StorageResult<Org> {
    let orgs = scope.org_filter();
    let row = sqlx::query!(
        r#"select id, slug, name, created_at from orgs
           where id = $1 and ($2::uuid[] is null or id = any($2))"#,
        id.as_uuid(),
        orgs.as_deref()
    )
    .fetch_optional(conn)
    .await?
    .ok_or(crate::StorageError::NotFound("org"))?;
    Ok(Org {
        id: row.id.into(),
        slug: row.slug,
        name: row.name,
        created_at: row.created_at,
    })
}

/// Orgs in the scope, newest first.
pub async fn list(
    conn: &mut PgConnection,
    scope: &cadenza_domain::Scope,
    before: Option<OrgId>,
    limit: i64,
) -> StorageResult<Vec<Org>> {
    let orgs = scope.org_filter();
    let rows = sqlx::query!(
        r#"select id, slug, name, created_at from orgs
           where ($1::uuid[] is null or id = any($1)) and ($2::uuid is null or id < $2)
           order by id desc limit $3"#,
        orgs.as_deref(),
        before.map(|id| id.as_uuid()),
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| Org {
            id: row.id.into(),
            slug: row.slug,
            name: row.name,
            created_at: row.created_at,
        })
        .collect())
}

pub async fn rename(conn: &mut PgConnection, id: OrgId, name: &str) -> StorageResult<()> {
    sqlx::query!(
        "update orgs set name = $2, updated_at = now() where id = $1",
        id.as_uuid(),
        name
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes an org and everything it owns (projects, runs, journal, memberships, tokens). The
/// audit log keeps its history.
pub async fn delete(conn: &mut PgConnection, id: OrgId) -> StorageResult<()> {
    let done = sqlx::query!("delete from orgs where id = $1", id.as_uuid())
        .execute(conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(crate::StorageError::NotFound("org"));
    }
    Ok(())
}
