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
    pub sessions: Arc<crate::session::Sessions>,
    /// Seals secret values; the API never opens them.
    pub keyring: Arc<cadenza_crypto::KeyRing>,
    /// Looks up the TXT records that prove an org controls an email domain.
    pub dns: Arc<crate::domain_verification::DnsVerifier>,
}

/// Bounds on what one request, caller or org may ask for.
#[derive(Clone, Debug)]
pub struct Limits {
    pub default_page: i64,
    pub max_page: i64,
    /// Requests per minute per token (or session); 0 disables the limit.
    pub per_caller_per_minute: u64,
    /// Requests per minute touching one org; 0 disables the limit.
    pub per_org_per_minute: u64,
    /// Login attempts per minute per client address; 0 disables the limit.
    pub logins_per_ip_per_minute: u64,
    /// Prefix of every Redis key of this deployment.
    pub redis_prefix: String,
}
