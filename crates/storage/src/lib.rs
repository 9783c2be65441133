//! Cadenza's system of record: sqlx repositories per aggregate, the migrator, and pool set-up.
//!
//! Repository functions take an executor (`&mut PgConnection` or a pool), so the caller owns the
//! transaction: a state change, its journal entry and its outbox message commit together.

pub mod agent_images;
pub mod audit;
pub mod diffs;
pub mod domain_rules;
pub mod error;
pub mod invitations;
pub mod journal;
pub mod memberships;
pub mod org_events;
pub mod orgs;
pub mod outbox;
pub mod projects;
pub mod run_messages;
pub mod runs;
pub mod secrets;
pub mod tokens;
pub mod users;
pub mod workers;
pub mod workspaces;

use std::time::Duration;

pub use error::{StorageError, StorageResult};
pub use sqlx::{PgConnection, PgPool, Postgres, Transaction};

/// The schema history under `migrations/`, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Opens a pool. `acquire_timeout` bounds how long a request waits for a connection, so an
/// overloaded database shows up as an error rather than a hang.
pub async fn connect(database_url: &str, max_connections: u32) -> StorageResult<PgPool> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(database_url)
        .await?;
    Ok(pool)
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> StorageResult<()> {
    MIGRATOR.run(pool).await.map_err(StorageError::Migration)
}

/// A cheap round trip, for readiness probes.
pub async fn ping(pool: &PgPool) -> StorageResult<()> {
    sqlx::query("select 1").execute(pool).await?;
    Ok(())
}
