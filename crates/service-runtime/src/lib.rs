//! What every Cadenza service process shares: configuration loading, logging, health endpoints
//! and graceful shutdown.

pub mod config;
pub mod health;
pub mod keys;
pub mod shutdown;
pub mod telemetry;

pub use config::{ConfigError, load_config};
pub use health::{Check, ReadinessProbe, health_routes};
pub use keys::load_keyring;
pub use shutdown::{serve, shutdown_on_signal};
pub use telemetry::init_tracing;
