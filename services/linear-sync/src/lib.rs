//! The Linear sync service. For now it only serves its health endpoints and checks that its
//! dependencies answer; webhook intake, polling and write-back arrive with the Linear issue.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use cadenza_bus::Bus;
use cadenza_service_runtime::{Check, ReadinessProbe, health_routes};
use cadenza_storage::PgPool;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Deserialize)]
pub struct LinearSyncConfig {
    #[serde(default = "default_listen")]
    pub linear_sync_listen: SocketAddr,
    pub database_url: SecretString,
    pub nats_url: String,
    #[serde(default = "default_bus_prefix")]
    pub bus_prefix: String,
    /// Replicas of the JetStream stream (3 on a NATS cluster).
    #[serde(default = "default_stream_replicas")]
    pub nats_stream_replicas: usize,
    #[serde(default)]
    pub log_json: bool,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8083))
}

fn default_stream_replicas() -> usize {
    1
}

fn default_bus_prefix() -> String {
    "cadenza".to_owned()
}

pub struct LinearSync {
    pool: PgPool,
    bus: Bus,
    shutdown: CancellationToken,
}

pub async fn build(
    config: LinearSyncConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<LinearSync> {
    let pool = cadenza_storage::connect(config.database_url.expose_secret(), 4)
        .await
        .context("connecting to Postgres (CADENZA_DATABASE_URL)")?;
    let bus = Bus::connect_with_replicas(
        &config.nats_url,
        &config.bus_prefix,
        config.nats_stream_replicas,
    )
    .await
    .context("connecting to NATS (CADENZA_NATS_URL)")?;
    Ok(LinearSync {
        pool,
        bus,
        shutdown,
    })
}

impl LinearSync {
    pub fn router(&self) -> Router {
        let pool = self.pool.clone();
        let bus = self.bus.clone();
        let probe: ReadinessProbe = Arc::new(move || {
            let pool = pool.clone();
            let bus = bus.clone();
            Box::pin(async move {
                vec![
                    Check::from_result("postgres", cadenza_storage::ping(&pool).await),
                    Check::from_result("nats", bus.ping().await),
                ]
            })
        });
        health_routes(probe)
    }

    pub async fn run(self, listener: TcpListener) -> anyhow::Result<()> {
        tracing::info!(addr = %listener.local_addr()?, "linear-sync health endpoints listening");
        cadenza_service_runtime::serve(listener, self.router(), self.shutdown.clone()).await?;
        tracing::info!("linear-sync stopped");
        Ok(())
    }
}
