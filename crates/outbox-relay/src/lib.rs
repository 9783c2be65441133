//! Relays committed outbox rows to NATS JetStream.
//!
//! A service writes a state change and its message in one transaction; this relay publishes the
//! message afterwards and marks the row. Publishing uses the row id as `Nats-Msg-Id`, so a crash
//! between publish and mark (which leads to a second publish) is absorbed by JetStream's
//! de-duplication window. Several relays may run at once: rows are claimed with SKIP LOCKED.

use std::sync::Arc;
use std::time::Duration;

use cadenza_bus::Bus;
use cadenza_storage::{PgPool, StorageError, outbox};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const BATCH: i64 = 100;
/// How often the relay looks for rows even when nobody nudged it (rows written by another
/// process, or left behind by a crash).
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Published rows are kept this long (JetStream's de-duplication window is two minutes), then
/// pruned, at most once per `PRUNE_INTERVAL`, in batches.
pub const KEEP_PUBLISHED: Duration = Duration::from_secs(3600);
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);
const PRUNE_BATCH: i64 = 10_000;

/// Wakes the relay right after a commit, so messages do not wait for the next poll.
#[derive(Clone, Default)]
pub struct RelayNudge(Arc<Notify>);

impl RelayNudge {
    pub fn nudge(&self) {
        self.0.notify_one();
    }
}

pub fn spawn(pool: PgPool, bus: Bus, shutdown: CancellationToken) -> (RelayNudge, JoinHandle<()>) {
    let nudge = RelayNudge::default();
    let waker = nudge.clone();
    let handle = tokio::spawn(async move {
        let mut next_prune = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_prune {
                next_prune = tokio::time::Instant::now() + PRUNE_INTERVAL;
                match prune_published(&pool, KEEP_PUBLISHED).await {
                    Ok(0) => {}
                    Ok(pruned) => tracing::debug!(pruned, "pruned published outbox rows"),
                    Err(err) => tracing::warn!(error = %err, "pruning the outbox failed"),
                }
            }
            match relay_once(&pool, &bus).await {
                // A full batch: there may be more, go again at once.
                Ok(count) if count as i64 == BATCH => continue,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "outbox relay pass failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = waker.0.notified() => {}
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
        // One last pass so messages committed just before shutdown are not left for the poll
        // of another process.
        if let Err(err) = relay_once(&pool, &bus).await {
            tracing::warn!(error = %err, "final outbox relay pass failed");
        }
    });
    (nudge, handle)
}

/// Deletes the rows published more than `keep` ago, batch by batch (each its own short
/// statement, so no long lock); returns how many went.
pub async fn prune_published(pool: &PgPool, keep: Duration) -> Result<u64, StorageError> {
    let mut total = 0;
    loop {
        let mut conn = pool.acquire().await?;
        let pruned = outbox::prune(&mut conn, keep, PRUNE_BATCH).await?;
        total += pruned;
        if pruned < PRUNE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Publishes one batch; returns how many rows were published. Every row is tried: a row the
/// bus refuses while it takes others has its failure counted (and is set aside after
/// `outbox::MAX_ATTEMPTS`); when every row fails the bus is down, and nothing is counted.
pub async fn relay_once(pool: &PgPool, bus: &Bus) -> Result<usize, StorageError> {
    let mut tx = pool.begin().await?;
    let messages = outbox::lock_unpublished(&mut tx, BATCH).await?;
    if messages.is_empty() {
        return Ok(0);
    }
    let mut published = Vec::with_capacity(messages.len());
    let mut failed = Vec::new();
    let mut last_error = String::new();
    for message in &messages {
        let dedup_id = format!("outbox-{}", message.id);
        match bus
            .publish_durable(&message.subject, &message.payload, &dedup_id)
            .await
        {
            Ok(()) => published.push(message.id),
            Err(err) => {
                tracing::warn!(error = %err, outbox_id = message.id, "publish failed");
                last_error = err.to_string();
                failed.push(message.id);
                if published.is_empty() && failed.len() >= 3 {
                    // The bus takes nothing: try again later, counting nothing against the rows.
                    break;
                }
            }
        }
    }
    if !published.is_empty() {
        outbox::mark_published(&mut tx, &published).await?;
        if !failed.is_empty() {
            outbox::record_failures(&mut tx, &failed, &last_error).await?;
        }
    }
    tx.commit().await?;
    Ok(published.len())
}
