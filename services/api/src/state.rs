//! What every request handler can reach. It sits above the modules it holds (sessions, rate
//! limits, streams, client identification), none of which import it.

use std::sync::Arc;
use std::time::Duration;

use cadenza_bus::Bus;
use cadenza_outbox_relay::RelayNudge;
use cadenza_storage::PgPool;

use crate::client::SiteOrigin;
use crate::limits::RateLimiter;
use crate::sessions::Sessions;
use crate::streams::StreamHub;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub bus: Bus,
    pub redis: redis::aio::ConnectionManager,
    pub relay: RelayNudge,
    pub limits: Arc<Limits>,
    pub rate_limiter: RateLimiter,
    pub sessions: Arc<Sessions>,
    /// Caps and timing of the event streams.
    pub streams: Arc<StreamHub>,
    /// Live entries of the org event journals, for the org streams of this process.
    pub org_feed: Arc<crate::org_feed::OrgFeed>,
    /// What counts as this site for cookie-authenticated requests that change something.
    pub origins: Arc<SiteOrigin>,
    /// Seals secret values; the API never opens them.
    pub keyring: Arc<cadenza_crypto::KeyRing>,
    /// The agent images every org may use (instance administrators add more per org).
    pub images: Arc<cadenza_domain::ImagePolicy>,
    /// Looks up the TXT records that prove an org controls an email domain.
    pub dns: Arc<crate::domain_verification::DnsVerifier>,
}

/// Bounds on what one request may ask for.
#[derive(Clone, Debug)]
pub struct Limits {
    pub default_page: i64,
    pub max_page: i64,
    /// Prefix of every Redis key of this deployment.
    pub redis_prefix: String,
    /// How long a request may take to produce its response head.
    pub request_timeout: Duration,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}
