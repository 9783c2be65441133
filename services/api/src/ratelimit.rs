//! Rate limits in Redis: per caller (token or user) and per org, fixed one-minute windows. Each
//! org has its own bucket, so one noisy org never slows another. When Redis is unreachable the
//! limits fail open: losing Redis must not take the API down.

use std::time::{SystemTime, UNIX_EPOCH};

use cadenza_domain::OrgId;

use crate::auth::{Actor, Principal};
use crate::error::ApiError;
use crate::state::AppState;

const WINDOW_MS: u64 = 60_000;

/// `INCR` the window's counter, set its expiry on first use, return the count and the time left.
const SCRIPT: &str = r#"
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('PTTL', KEYS[1])}
"#;

async fn hit(
    state: &AppState,
    bucket: &str,
    limit: u64,
    scope: &'static str,
) -> Result<(), ApiError> {
    if limit == 0 {
        return Ok(());
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or_default();
    let window = now_ms / WINDOW_MS;
    let key = format!("{}:ratelimit:{bucket}:{window}", state.limits.redis_prefix);
    let mut redis = state.redis.clone();
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
pub async fn check_principal(state: &AppState, principal: &Principal) -> Result<(), ApiError> {
    let bucket = match (&principal.actor, principal.token_id) {
        (_, Some(token)) => format!("token:{token}"),
        (Actor::User { id, .. }, None) => format!("user:{id}"),
        (Actor::ServiceToken { id, .. }, None) => format!("token:{id}"),
    };
    hit(state, &bucket, state.limits.per_caller_per_minute, "caller").await
}

/// One request touching this org.
pub async fn check_org(state: &AppState, org: OrgId) -> Result<(), ApiError> {
    hit(
        state,
        &format!("org:{org}"),
        state.limits.per_org_per_minute,
        "org",
    )
    .await
}

/// One login attempt from this address.
pub async fn check_login(state: &AppState, ip: &str) -> Result<(), ApiError> {
    hit(
        state,
        &format!("login:{ip}"),
        state.limits.logins_per_ip_per_minute,
        "login",
    )
    .await
}
