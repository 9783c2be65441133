//! The public HTTP API (`/api/v1`): projects, runs, the run journal (REST and SSE) and diffs.
//!
//! Modules depend on each other one way (see README.md): `error` ← `principal`, `client`,
//! `limits`, `sessions` ← `audit` ← `state` ← `auth` (extractors, the access layer) ← `routes`.

pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod client;
pub mod config;
pub mod domain_verification;
pub mod error;
pub mod extract;
pub mod headers;
pub mod idempotency;
pub mod limits;
pub mod openapi;
pub mod org_feed;
pub mod principal;
pub mod routes;
pub mod sessions;
pub mod state;
pub mod streams;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use cadenza_bus::Bus;
use cadenza_service_runtime::{Check, ReadinessProbe, health_routes};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::PropagateRequestIdLayer;
use tower_http::trace::TraceLayer;

use client::{REQUEST_ID, SiteOrigin, TrustedProxies};
pub use config::ApiConfig;
use headers::SecurityHeaders;
use limits::{RateLimiter, RateLimits};
use state::{AppState, Limits};

/// A built, not yet serving, API service.
pub struct Api {
    state: AppState,
    http: Arc<HttpPolicy>,
    relay: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
}

/// How the HTTP layer treats every request, decided once from the config.
struct HttpPolicy {
    proxies: Arc<TrustedProxies>,
    headers: Arc<SecurityHeaders>,
}

/// Connects to every dependency (failing with a clear error when one is unreachable), applies
/// migrations when configured, and starts the outbox relay.
pub async fn build(config: &ApiConfig, shutdown: CancellationToken) -> anyhow::Result<Api> {
    let pool = cadenza_storage::connect(
        config.database_url.expose_secret(),
        config.database_pool_size,
    )
    .await
    .context("connecting to Postgres (CADENZA_DATABASE_URL)")?;
    if config.migrate_on_start {
        apply_migrations(config).await?;
    }
    warn_when_the_runtime_role_owns_the_audit_log(&pool).await?;
    let keyring = config.keyring()?;
    let dns = config.dns_verifier()?;
    let images = config.image_policy()?;
    let stream_settings = config.stream_settings()?;
    check_keyring(&pool, &keyring).await?;
    let bus = Bus::connect_with_replicas(
        &config.nats_url,
        &config.bus_prefix,
        config.nats_stream_replicas,
    )
    .await
    .context("connecting to NATS (CADENZA_NATS_URL)")?;
    let redis_client = redis::Client::open(config.redis_url.expose_secret())
        .context("parsing CADENZA_REDIS_URL")?;
    let redis = tokio::time::timeout(
        Duration::from_secs(10),
        redis::aio::ConnectionManager::new(redis_client),
    )
    .await
    .context("connecting to Redis (CADENZA_REDIS_URL) timed out")?
    .context("connecting to Redis (CADENZA_REDIS_URL)")?;
    let http = Arc::new(HttpPolicy {
        proxies: Arc::new(config.trusted_proxies()?),
        headers: Arc::new(SecurityHeaders::new(
            &config.frame_ancestors()?,
            config.dev_mode,
        )?),
    });
    let sessions = sessions::Sessions::new(
        sessions::load_keys(config.session_keys_file.as_deref())?,
        cadenza_identity::SessionLifetime {
            token_ttl: config.session_token_ttl,
            max_lifetime: config.session_max_lifetime,
        },
        config.dev_mode,
        config.oidc()?,
        redis.clone(),
        config.bus_prefix.clone(),
    )?;
    let rate_limiter = RateLimiter::new(
        redis.clone(),
        config.bus_prefix.clone(),
        RateLimits {
            per_caller_per_minute: config.rate_limit_per_caller,
            per_org_per_minute: config.rate_limit_per_org,
            logins_per_ip_per_minute: config.rate_limit_logins_per_ip,
        },
    );
    let origins = SiteOrigin::new(
        config
            .public_url
            .as_ref()
            .or(config.oidc_redirect_url.as_ref()),
    );
    let streams = streams::StreamHub::new(
        redis.clone(),
        config.bus_prefix.clone(),
        stream_settings,
        shutdown.clone(),
    );
    let (relay, relay_handle) =
        cadenza_outbox_relay::spawn(pool.clone(), bus.clone(), shutdown.clone());
    let org_feed = Arc::new(org_feed::OrgFeed::new(config.org_stream_queue));
    org_feed.spawn_listener(pool.clone(), shutdown.clone());
    Ok(Api {
        state: AppState {
            pool,
            bus,
            redis,
            relay,
            limits: Arc::new(Limits {
                default_page: 50,
                max_page: 500,
                redis_prefix: config.bus_prefix.clone(),
                request_timeout: config.request_timeout,
                max_body_bytes: config.max_body_bytes,
            }),
            rate_limiter,
            streams: Arc::new(streams),
            org_feed,
            sessions: Arc::new(sessions),
            origins: Arc::new(origins),
            keyring: Arc::new(keyring),
            dns: Arc::new(dns),
            images: Arc::new(images),
        },
        http,
        relay: relay_handle,
        shutdown,
    })
}

/// Applies pending migrations as the migration role (`CADENZA_MIGRATION_DATABASE_URL`). Refuses
/// without that setting rather than migrating as the runtime role: a role that can change the
/// schema can also rewrite the audit log (docs/decisions/0006-runtime-and-migration-roles.md).
pub async fn apply_migrations(config: &ApiConfig) -> anyhow::Result<()> {
    let url = config.migration_database_url.as_ref().context(
        "migrations need CADENZA_MIGRATION_DATABASE_URL, the role that owns the schema (not the \
         runtime role of CADENZA_DATABASE_URL): set it, or set CADENZA_MIGRATE_ON_START=false and \
         run `cadenza-api migrate` with it (see docs/OPERATIONS.md)",
    )?;
    let pool = cadenza_storage::connect(url.expose_secret(), 1)
        .await
        .context("connecting to Postgres as the migration role (CADENZA_MIGRATION_DATABASE_URL)")?;
    let applied = cadenza_storage::migrate(&pool)
        .await
        .context("applying migrations (CADENZA_MIGRATION_DATABASE_URL)");
    pool.close().await;
    applied
}

/// A deployment that still connects as the schema owner works, but its audit log is only
/// append-only against accidents; say so once at start-up.
async fn warn_when_the_runtime_role_owns_the_audit_log(
    pool: &cadenza_storage::PgPool,
) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await.context("checking the database role")?;
    if cadenza_storage::audit::current_role_owns_audit_log(&mut conn).await? {
        tracing::warn!(
            "CADENZA_DATABASE_URL connects as the owner of audit_log: this service could alter or \
             erase the audit log; connect as a runtime role instead (docs/OPERATIONS.md)"
        );
    }
    Ok(())
}

/// Refuses to start when a stored secret names a key-encryption key the ring lacks: the error
/// names the missing key ids (docs/SECURITY.md, rotation step 4).
pub async fn check_keyring(
    pool: &cadenza_storage::PgPool,
    keyring: &cadenza_crypto::KeyRing,
) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await.context("checking the key ring")?;
    cadenza_storage::secrets::check_keyring(&mut conn, keyring)
        .await
        .context("refusing to start: the configured key ring cannot open every stored secret")
}

impl Api {
    pub fn router(&self) -> Router {
        router(self.state.clone(), &self.http)
    }

    /// The state handlers see, for tests that mount routes of their own.
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// The full middleware stack around `api` (mounted at `/api/v1`), for tests that mount
    /// routes of their own.
    pub fn router_with(&self, api: Router<AppState>) -> Router {
        wrap(self.state.clone(), &self.http, api)
    }

    /// Serves until the shutdown token is cancelled, then drains.
    pub async fn run(self, listener: TcpListener) -> anyhow::Result<()> {
        let router = self.router();
        tracing::info!(addr = %listener.local_addr()?, "api listening");
        cadenza_service_runtime::serve(listener, router, self.shutdown.clone()).await?;
        self.shutdown.cancel();
        let _ = self.relay.await;
        tracing::info!("api stopped");
        Ok(())
    }
}

fn router(state: AppState, http: &HttpPolicy) -> Router {
    wrap(state.clone(), http, routes::api_routes(state))
}

/// From the outside in: client identification (address, request id), the trace span, the
/// response's request id, security headers, the request deadline, the body limit; then under
/// `/api/v1` the sliding session refresh and each route's access layer.
fn wrap(state: AppState, http: &HttpPolicy, api: Router<AppState>) -> Router {
    let probe_state = state.clone();
    let probe: ReadinessProbe = Arc::new(move || {
        let state = probe_state.clone();
        Box::pin(async move { readiness(&state).await })
    });
    let api = api.layer(axum::middleware::from_fn(headers::etags)).layer(
        axum::middleware::from_fn_with_state(state.clone(), auth::refresh_sessions),
    );
    Router::new()
        .nest("/api/v1", api)
        .fallback(|| async { error::ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.limits.request_timeout,
            headers::deadline,
        ))
        .with_state(state)
        .merge(health_routes(probe))
        .layer(axum::middleware::from_fn_with_state(
            http.headers.clone(),
            headers::security_headers,
        ))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                let client = request.extensions().get::<client::ClientInfo>();
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                    request_id = client.map_or("-", |client| client.request_id.as_str()),
                    client_ip = client
                        .and_then(|client| client.ip)
                        .map(tracing::field::display),
                    token_id = tracing::field::Empty,
                )
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            http.proxies.clone(),
            client::identify_client,
        ))
}

/// Every dependency's state with its error, for logs and instance admins only.
pub async fn readiness_details(state: &AppState) -> Vec<Check> {
    readiness(state).await
}

async fn readiness(state: &AppState) -> Vec<Check> {
    let postgres = cadenza_storage::ping(&state.pool).await;
    let nats = state.bus.ping().await;
    let mut redis = state.redis.clone();
    let redis_result: Result<(), String> = tokio::time::timeout(Duration::from_secs(2), async {
        redis::cmd("PING")
            .query_async::<String>(&mut redis)
            .await
            .map(|_| ())
            .map_err(|err| err.to_string())
    })
    .await
    .unwrap_or_else(|_| Err("Redis did not answer within 2 s".into()));
    vec![
        Check::from_result("postgres", postgres),
        Check::from_result("nats", nats),
        Check::from_result("redis", redis_result),
    ]
}
