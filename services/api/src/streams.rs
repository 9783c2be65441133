//! Bounds on long-lived event streams: how many one caller may hold open at once, how often an
//! open stream re-checks its caller's access, how often an idle one looks at Postgres anyway.
//!
//! The cap is counted in Redis, so it holds across API replicas: each open stream holds a lease
//! (a member of the caller's sorted set, scored by its expiry) that it renews at every access
//! re-check and drops when it ends. A replica that dies leaves leases that expire on their own.
//! When Redis is unreachable the cap fails open, like the rate limits: losing Redis must not take
//! live runs away from their readers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::principal::CallerBucket;

/// Drops expired leases, refuses when the caller is at the cap, otherwise adds (or renews) this
/// lease. KEYS[1]: the caller's set; ARGV: now (ms), expiry (ms), cap, lease id, key TTL (ms).
const ACQUIRE: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[4]) == false and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"#;

/// Stream settings; see `ApiConfig` for what each means.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    /// Concurrent streams per caller (token, or user for sessions); 0: unlimited.
    pub max_per_caller: u64,
    /// How often an open stream checks that its caller may still read the run.
    pub access_recheck: Duration,
    /// How often an idle stream reads Postgres without a wake-up from NATS.
    pub safety_poll: Duration,
    /// How often an idle stream sends a comment to keep proxies from closing it.
    pub keepalive: Duration,
}

/// What the streams of this process have done, for operators and tests.
#[derive(Debug, Default)]
pub struct StreamStats {
    open: AtomicU64,
    journal_reads: AtomicU64,
}

impl StreamStats {
    /// Streams open now in this process.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Postgres reads the streams of this process have made since start.
    pub fn journal_reads(&self) -> u64 {
        self.journal_reads.load(Ordering::Relaxed)
    }

    pub(crate) fn count_read(&self) {
        self.journal_reads.fetch_add(1, Ordering::Relaxed);
    }
}

/// The streams of one API process.
pub struct StreamHub {
    redis: redis::aio::ConnectionManager,
    prefix: String,
    pub settings: StreamSettings,
    pub stats: Arc<StreamStats>,
    /// Cancelled when the process shuts down: open streams end with a final event saying so.
    pub shutdown: CancellationToken,
}

/// One open stream's place under its caller's cap; released when dropped.
pub struct StreamLease {
    redis: redis::aio::ConnectionManager,
    key: String,
    id: String,
    cap: u64,
    ttl: Duration,
    stats: Arc<StreamStats>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or_default()
}

impl StreamHub {
    pub fn new(
        redis: redis::aio::ConnectionManager,
        prefix: String,
        settings: StreamSettings,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            redis,
            prefix,
            settings,
            stats: Arc::default(),
            shutdown,
        }
    }

    /// A place for one more stream of this caller, or 429 when it already holds the maximum.
    pub async fn open(&self, caller: &CallerBucket) -> Result<StreamLease, ApiError> {
        let lease = StreamLease {
            redis: self.redis.clone(),
            key: format!("{}:streams:{}", self.prefix, caller.0),
            id: uuid::Uuid::now_v7().to_string(),
            cap: self.settings.max_per_caller,
            // A lease outlives two missed renewals before it counts as abandoned.
            ttl: self.settings.access_recheck * 3,
            stats: self.stats.clone(),
        };
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        if !lease.renew().await {
            // `lease` drops here, giving back the count taken above.
            return Err(ApiError::TooManyStreams {
                limit: self.settings.max_per_caller,
                retry_after_secs: 5,
            });
        }
        Ok(lease)
    }
}

impl StreamLease {
    /// Renews the lease; false only when Redis answered that the caller is over the cap.
    pub async fn renew(&self) -> bool {
        if self.cap == 0 {
            return true;
        }
        let now = now_ms();
        let ttl_ms = self.ttl.as_millis() as u64;
        let mut redis = self.redis.clone();
        let result: Result<i64, redis::RedisError> = redis::Script::new(ACQUIRE)
            .key(&self.key)
            .arg(now)
            .arg(now + ttl_ms)
            .arg(self.cap)
            .arg(&self.id)
            .arg(ttl_ms)
            .invoke_async(&mut redis)
            .await;
        match result {
            Ok(granted) => granted == 1,
            Err(err) => {
                tracing::warn!(error = %err, "stream cap unavailable (Redis); allowing the stream");
                true
            }
        }
    }
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        if self.cap == 0 {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // The lease expires on its own.
        };
        let mut redis = self.redis.clone();
        let key = std::mem::take(&mut self.key);
        let id = std::mem::take(&mut self.id);
        runtime.spawn(async move {
            let removed: Result<i64, redis::RedisError> = redis::cmd("ZREM")
                .arg(&key)
                .arg(&id)
                .query_async(&mut redis)
                .await;
            if let Err(err) = removed {
                tracing::debug!(error = %err, "could not release a stream lease; it will expire");
            }
        });
    }
}
