use std::net::SocketAddr;

use secrecy::SecretString;
use serde::Deserialize;

/// The API service's settings. Every field can be set as `CADENZA_<FIELD>` or in the file named
/// by `CADENZA_CONFIG_FILE`.
#[derive(Clone, Debug, Deserialize)]
pub struct ApiConfig {
    /// Where the public HTTP API listens.
    #[serde(default = "default_listen")]
    pub api_listen: SocketAddr,
    pub database_url: SecretString,
    pub nats_url: String,
    pub redis_url: SecretString,
    /// Prefix for every NATS subject and stream of this deployment.
    #[serde(default = "default_bus_prefix")]
    pub bus_prefix: String,
    #[serde(default = "default_pool_size")]
    pub database_pool_size: u32,
    /// Apply pending migrations at start-up (safe with several replicas: the migrator locks).
    #[serde(default = "default_true")]
    pub migrate_on_start: bool,
    /// Requests per minute per token or session (0: unlimited).
    #[serde(default = "default_caller_limit")]
    pub rate_limit_per_caller: u64,
    /// Requests per minute touching one org (0: unlimited).
    #[serde(default = "default_org_limit")]
    pub rate_limit_per_org: u64,
    /// Login attempts per minute per client address (0: unlimited).
    #[serde(default = "default_login_limit")]
    pub rate_limit_logins_per_ip: u64,
    #[serde(default)]
    pub log_json: bool,
}

fn default_caller_limit() -> u64 {
    600
}

fn default_org_limit() -> u64 {
    3000
}

fn default_login_limit() -> u64 {
    30
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

pub fn default_bus_prefix() -> String {
    "cadenza".to_owned()
}

fn default_pool_size() -> u32 {
    20
}

fn default_true() -> bool {
    true
}
