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
