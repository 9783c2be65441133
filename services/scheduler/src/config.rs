use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
pub struct SchedulerConfig {
    /// Where `/healthz` and `/readyz` listen.
    #[serde(default = "default_listen")]
    pub scheduler_listen: SocketAddr,
    pub database_url: SecretString,
    /// Postgres connections this process may hold.
    #[serde(default = "default_pool_size")]
    pub database_pool_size: u32,
    pub nats_url: String,
    #[serde(default = "default_bus_prefix")]
    pub bus_prefix: String,
    /// How long a lease lasts without a heartbeat from its worker.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// A worker whose last heartbeat is older than this gets no new runs.
    #[serde(default = "default_worker_liveness", with = "humantime_serde")]
    pub worker_liveness: Duration,
    /// How often queued runs, expired leases and due retries are reconciled from Postgres, even
    /// when no message arrives.
    #[serde(default = "default_reconcile_interval", with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// First retry delay; doubles per attempt.
    #[serde(default = "default_retry_backoff", with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// How long a `running` run whose lease expired waits, beyond the lease, for a worker on the
    /// same Docker Engine to adopt it (a restarted or a second worker) before it is retried from
    /// scratch or failed.
    #[serde(default = "default_reattach_grace", with = "humantime_serde")]
    pub reattach_grace: Duration,
    /// Replicas of the JetStream stream (3 on a NATS cluster).
    #[serde(default = "default_stream_replicas")]
    pub nats_stream_replicas: usize,
    /// Attempts (including the first) before a run whose lease keeps expiring fails.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: i32,
    #[serde(default)]
    pub log_json: bool,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}
fn default_bus_prefix() -> String {
    "cadenza".to_owned()
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_worker_liveness() -> Duration {
    Duration::from_secs(15)
}
fn default_reconcile_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_retry_backoff() -> Duration {
    Duration::from_secs(5)
}
fn default_reattach_grace() -> Duration {
    Duration::from_secs(60)
}
fn default_stream_replicas() -> usize {
    1
}
fn default_max_attempts() -> i32 {
    3
}

impl SchedulerConfig {
    /// Settings for tests and embedding: defaults everywhere except the connections.
    pub fn new(database_url: SecretString, nats_url: String, bus_prefix: String) -> Self {
        Self {
            scheduler_listen: default_listen(),
            database_url,
            database_pool_size: default_pool_size(),
            nats_url,
            bus_prefix,
            lease_ttl: default_lease_ttl(),
            worker_liveness: default_worker_liveness(),
            reconcile_interval: default_reconcile_interval(),
            retry_backoff: default_retry_backoff(),
            max_attempts: default_max_attempts(),
            reattach_grace: default_reattach_grace(),
            nats_stream_replicas: default_stream_replicas(),
            log_json: false,
        }
    }
}

fn default_pool_size() -> u32 {
    10
}
