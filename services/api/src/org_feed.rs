//! Live fan-out of the org event journal inside one API process.
//!
//! Postgres announces each new org entry on `cadenza_org_events` when its transaction commits
//! (the trigger in the `org_events` migration). One listener connection per process receives
//! them and hands each to the org's broadcast channel, which every open org stream of that org
//! reads. A channel holds a bounded number of entries: a stream that does not keep up loses its
//! place in it and is told so (`Lagged`), then reads what it missed from Postgres. A stream never
//! skips an entry: it delivers a live entry only when it is exactly the next number, and reads
//! Postgres for anything else. When the listener loses its connection every stream is told to
//! read Postgres (`Resync`), since notifications sent meanwhile are gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cadenza_domain::{OrgEvent, OrgId};
use cadenza_storage::PgPool;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// What an org stream hears from the feed.
#[derive(Clone, Debug)]
pub enum Signal {
    /// A committed entry, whole.
    Entry(Arc<OrgEvent>),
    /// A committed entry too large for a notification: read it from Postgres.
    Announced(i64),
    /// Notifications may have been lost: read Postgres from the cursor.
    Resync,
}

/// The org channels of this process.
pub struct OrgFeed {
    channels: Mutex<HashMap<OrgId, broadcast::Sender<Signal>>>,
    capacity: usize,
}

/// A notification that carries only the entry's place.
#[derive(Deserialize)]
struct Announcement {
    org_id: OrgId,
    seq: i64,
}

impl OrgFeed {
    /// A feed whose per-stream queues hold `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            channels: Mutex::default(),
            capacity: capacity.max(1),
        }
    }

    /// Entries of `org` committed from now on.
    pub fn subscribe(&self, org: OrgId) -> broadcast::Receiver<Signal> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels
            .entry(org)
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe()
    }

    /// Hands a notification's payload to its org's streams.
    pub fn dispatch(&self, payload: &str) {
        let (org, signal) = match serde_json::from_str::<OrgEvent>(payload) {
            Ok(entry) => (entry.org_id, Signal::Entry(Arc::new(entry))),
            Err(_) => match serde_json::from_str::<Announcement>(payload) {
                Ok(announced) => (announced.org_id, Signal::Announced(announced.seq)),
                Err(err) => {
                    tracing::warn!(error = %err, "unreadable org event notification");
                    return;
                }
            },
        };
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = channels.get(&org)
            && sender.send(signal).is_err()
        {
            // Nobody listens to this org any more.
            channels.remove(&org);
        }
    }

    /// Tells every stream to read Postgres.
    pub fn resync(&self) {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels.retain(|_, sender| sender.send(Signal::Resync).is_ok());
    }

    /// Orgs with at least one open stream in this process.
    pub fn orgs_followed(&self) -> usize {
        let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels
            .values()
            .filter(|sender| sender.receiver_count() > 0)
            .count()
    }

    /// Listens to Postgres until `shutdown`, reconnecting after a lost connection.
    pub fn spawn_listener(
        self: &Arc<Self>,
        pool: PgPool,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let feed = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            while !shutdown.is_cancelled() {
                match feed.listen(&pool, &shutdown).await {
                    Ok(()) => return,
                    Err(err) => {
                        tracing::warn!(error = %err, "org event listener lost Postgres; streams read the journal until it is back");
                        feed.resync();
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    }

    /// One listening connection's life: `Ok` at shutdown, `Err` when the connection is lost.
    async fn listen(&self, pool: &PgPool, shutdown: &CancellationToken) -> Result<(), sqlx::Error> {
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener
            .listen(cadenza_storage::org_events::CHANNEL)
            .await?;
        // Anything committed before LISTEN took effect is in the journal: streams catch up.
        self.resync();
        loop {
            let notification = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                notification = listener.try_recv() => notification?,
            };
            match notification {
                Some(notification) => self.dispatch(notification.payload()),
                None => {
                    return Err(sqlx::Error::Protocol(
                        "the listening connection closed".into(),
                    ));
                }
            }
        }
    }
}
