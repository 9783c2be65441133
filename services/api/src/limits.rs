//! Rate limits in Redis: per caller (token or user) and per org, fixed one-minute windows. Each
//! org has its own bucket, so one noisy org never slows another. When Redis is unreachable the
//! limits fail open: losing Redis must not take the API down.

use std::time::{SystemTime, UNIX_EPOCH};

use cadenza_domain::OrgId;

use crate::error::ApiError;
use crate::principal::CallerBucket;

const WINDOW_MS: u64 = 60_000;

/// `INCR` the window's counter, set its expiry on first use, return the count and the time left.
const SCRIPT: &str = r#"
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('PTTL', KEYS[1])}
"#;

/// Requests per minute allowed per bucket; 0 disables that limit.
#[derive(Clone, Debug)]
pub struct RateLimits {
    /// Per token (or session).
    pub per_caller_per_minute: u64,
    /// Per org touched.
    pub per_org_per_minute: u64,
    /// Login attempts per client address.
    pub logins_per_ip_per_minute: u64,
}

/// Counts requests in Redis under one deployment's key prefix.
#[derive(Clone)]
pub struct RateLimiter {
    redis: redis::aio::ConnectionManager,
    prefix: String,
    limits: RateLimits,
}

impl RateLimiter {
    /// The limits this limiter enforces.
    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    pub fn new(redis: redis::aio::ConnectionManager, prefix: String, limits: RateLimits) -> Self {
        Self {
            redis,
            prefix,
            limits,
        }
    }

    async fn hit(&self, bucket: &str, limit: u64, scope: &'static str) -> Result<(), ApiError> {
        if limit == 0 {
            return Ok(());
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or_default();
        let window = now_ms / WINDOW_MS;
        let key = format!("{}:ratelimit:{bucket}:{window}", self.prefix);
        let mut redis = self.redis.clone();
        let result: Result<(u64, i64), redis::RedisError> = redis::Script::new(SCRIPT)
            .key(&key)
            .arg(WINDOW_MS)
            .invoke_async(&mut redis)
            .await;
        match result {
            Ok((count, ttl_ms)) if count > limit => Err(ApiError::RateLimited {
                scope,
                limit,
                retry_after_secs: (ttl_ms.max(0) as u64).div_ceil(1000).max(1),
            }),
            Ok(_) => Ok(()),
            Err(err) => {
                tracing::warn!(error = %err, "rate limiting unavailable (Redis); allowing the request");
                Ok(())
            }
        }
    }

    /// One request by this caller.
    pub async fn caller(&self, bucket: &CallerBucket) -> Result<(), ApiError> {
        self.hit(&bucket.0, self.limits.per_caller_per_minute, "caller")
            .await
    }

    /// One request touching this org.
    pub async fn org(&self, org: OrgId) -> Result<(), ApiError> {
        self.hit(&format!("org:{org}"), self.limits.per_org_per_minute, "org")
            .await
    }

    /// One login attempt from this client address (`None`: the address is unknown, which only
    /// in-process tests produce; they share one bucket).
    pub async fn login(&self, client: Option<std::net::IpAddr>) -> Result<(), ApiError> {
        let client = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        self.hit(
            &format!("login:{client}"),
            self.limits.logins_per_ip_per_minute,
            "login",
        )
        .await
    }
}
