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
    #[serde(default)]
    pub log_json: bool,
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
