//! Connections to the real infrastructure tests run against (started by `scripts/infra.sh`), with
//! per-test isolation: a fresh database, a unique NATS prefix, a unique Redis key prefix.

use std::time::Duration;

use anyhow::Context;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// The server tests create their databases on, as the migration role (it owns each test database
/// and runs the migrations). Override with `CADENZA_TEST_DATABASE_URL`.
pub fn admin_database_url() -> String {
    std::env::var("CADENZA_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("CADENZA_MIGRATION_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://cadenza:cadenza@127.0.0.1:15432/cadenza".to_owned())
}

/// The runtime role tests and the services under test connect as: a member of `cadenza_runtime`
/// that owns nothing (made by `scripts/infra.sh`). Override with
/// `CADENZA_TEST_RUNTIME_DATABASE_URL`; only its user and password are used.
pub fn runtime_database_url() -> String {
    std::env::var("CADENZA_TEST_RUNTIME_DATABASE_URL")
        .or_else(|_| std::env::var("CADENZA_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://cadenza_app:cadenza_app@127.0.0.1:15432/cadenza".to_owned())
}

pub fn nats_url() -> String {
    std::env::var("CADENZA_TEST_NATS_URL")
        .or_else(|_| std::env::var("CADENZA_NATS_URL"))
        .unwrap_or_else(|_| "nats://127.0.0.1:14222".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("CADENZA_TEST_REDIS_URL")
        .or_else(|_| std::env::var("CADENZA_REDIS_URL"))
        .unwrap_or_else(|_| "redis://127.0.0.1:16379".to_owned())
}

/// A short unique name for one test's resources.
pub fn unique_name(prefix: &str) -> String {
    let id = Uuid::new_v4().simple().to_string();
    format!("{prefix}{}", &id[..12])
}

/// A database of its own for one test, owned by the migration role and migrated, dropped when the
/// value is dropped. `url` and `pool` connect as the runtime role, like the services do; fixtures
/// that must do what the application cannot (change the schema, forge history) use
/// `owner_connection`.
pub struct TestDatabase {
    pub name: String,
    /// The runtime role's URL of this database (what the services get as `CADENZA_DATABASE_URL`).
    pub url: String,
    /// Connections as the runtime role.
    pub pool: PgPool,
    /// The migration role's URL of this database (owner of every table).
    pub owner_url: String,
    admin_url: String,
}

impl TestDatabase {
    /// A database on the shared test server (`admin_database_url`, `runtime_database_url`).
    pub async fn create() -> anyhow::Result<Self> {
        Self::create_on(&admin_database_url(), &runtime_database_url())
            .await
            .context("creating a database on the shared test Postgres; run `scripts/infra.sh up`")
    }

    /// A database on the server `admin_url` names (e.g. a `chaos::PrivatePostgres`), created and
    /// migrated as that URL's role (which needs CREATEDB), and connected to as `runtime_url`'s
    /// user and password (its host and database are ignored). Dropping it drops the database,
    /// waiting at most `DROP_BUDGET` (a server that is down is not waited for).
    pub async fn create_on(admin_url: &str, runtime_url: &str) -> anyhow::Result<Self> {
        let admin_url = admin_url.to_owned();
        let name = unique_name("cadenza_test_");
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .with_context(|| format!("connecting to the test Postgres at {admin_url}"))?;
        sqlx::query(&format!("create database \"{name}\""))
            .execute(&mut admin)
            .await
            .context("creating the test database")?;
        admin.close().await.ok();
        let owner_url = replace_database(&admin_url, &name)?;
        {
            let owner = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect(&owner_url)
                .await?;
            cadenza_storage::migrate(&owner)
                .await
                .context("migrating the test database as its owner")?;
            owner.close().await;
        }
        let url = replace_credentials(&owner_url, runtime_url)?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .context(
                "connecting to the test database as the runtime role; `scripts/infra.sh up` \
                 creates it (CADENZA_TEST_RUNTIME_DATABASE_URL names another)",
            )?;
        Ok(Self {
            name,
            url,
            pool,
            owner_url,
            admin_url,
        })
    }

    /// The longest dropping a `TestDatabase` waits for its server.
    pub const DROP_BUDGET: Duration = Duration::from_secs(10);

    /// A connection as the database's owner (the migration role), for fixtures only.
    pub async fn owner_connection(&self) -> anyhow::Result<PgConnection> {
        Ok(PgConnection::connect(&self.owner_url).await?)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside any async context guarantee, so use a thread with its own runtime.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // The pool is not closed first: closing waits for connections the test runtime still has
        // to return (e.g. a transaction dropped without commit), and that runtime is blocked on
        // this drop. `with (force)` ends those sessions instead.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                // Bounded: a private server a chaos test killed (or stopped) must not hang the
                // test's end; its data goes with the server anyway.
                let _ = tokio::time::timeout(Self::DROP_BUDGET, async {
                    if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                        let _ = sqlx::query(&format!(
                            "drop database if exists \"{name}\" with (force)"
                        ))
                        .execute(&mut admin)
                        .await;
                    }
                })
                .await;
            });
        })
        .join();
    }
}

fn replace_database(url: &str, database: &str) -> anyhow::Result<String> {
    let mut parsed = url::Url::parse(url).context("parsing the database URL")?;
    parsed.set_path(&format!("/{database}"));
    Ok(parsed.to_string())
}

/// `url` with the user and password of `credentials_from`.
fn replace_credentials(url: &str, credentials_from: &str) -> anyhow::Result<String> {
    let mut parsed = url::Url::parse(url).context("parsing the database URL")?;
    let credentials =
        url::Url::parse(credentials_from).context("parsing the runtime database URL")?;
    parsed
        .set_username(credentials.username())
        .map_err(|()| anyhow::anyhow!("cannot set the user of {url}"))?;
    parsed
        .set_password(credentials.password())
        .map_err(|()| anyhow::anyhow!("cannot set the password of {url}"))?;
    Ok(parsed.to_string())
}
