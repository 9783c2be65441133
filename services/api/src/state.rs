use std::sync::Arc;

use cadenza_bus::Bus;
use cadenza_outbox_relay::RelayNudge;
use cadenza_storage::PgPool;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub bus: Bus,
    pub redis: redis::aio::ConnectionManager,
    pub relay: RelayNudge,
    pub limits: Arc<Limits>,
}

/// Bounds on what one request may ask for.
#[derive(Clone, Debug)]
pub struct Limits {
    pub default_page: i64,
    pub max_page: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_page: 50,
            max_page: 500,
        }
    }
}
