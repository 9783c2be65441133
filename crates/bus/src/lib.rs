//! The message bus: NATS subjects, versioned message types, and publish/consume helpers.
//!
//! NATS is never the only copy of anything: every message here is a nudge about state that is
//! already committed to Postgres, so a lost or redelivered message costs latency, never data.
//! Durable messages (run requested, lease offered) go through JetStream with a de-duplication id;
//! live journal fan-out uses core NATS, because readers fill any gap from Postgres.

pub mod consume;
pub mod messages;
pub mod subjects;

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, stream::RetentionPolicy};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

pub use async_nats::jetstream::Message as DurableMessage;
pub use consume::{Disposition, Durable, consume};
pub use messages::Message;

#[derive(Debug, Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("publishing to `{subject}` failed: {detail}")]
    Publish { subject: String, detail: String },
    #[error("JetStream request failed: {0}")]
    JetStream(String),
    #[error("subscribing to `{subject}` failed: {detail}")]
    Subscribe { subject: String, detail: String },
    #[error("message on `{subject}` does not decode: {source}")]
    Decode {
        subject: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("message does not encode: {0}")]
    Encode(#[source] serde_json::Error),
}

impl BusError {
    /// The kind of failure: the bus being away is `Unavailable` (worth a retry), a body that does
    /// not decode is `Invalid`, one that does not encode is a bug.
    pub fn kind(&self) -> cadenza_domain::ErrorKind {
        use cadenza_domain::ErrorKind;
        match self {
            BusError::Connect { .. }
            | BusError::Publish { .. }
            | BusError::JetStream(_)
            | BusError::Subscribe { .. } => ErrorKind::Unavailable,
            BusError::Decode { .. } => ErrorKind::Invalid,
            BusError::Encode(_) => ErrorKind::Internal,
        }
    }
}

pub type BusResult<T> = Result<T, BusError>;

/// A connection to the bus, with every subject and stream name under one prefix, so several
/// deployments (or tests) can share a NATS server without seeing each other's messages.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    prefix: String,
    /// Replicas of the runs stream (3 on a clustered JetStream).
    replicas: usize,
    /// Live fan-out goes through one background publisher, in order, so a caller never waits on
    /// NATS: while NATS is away the queue fills and further live events are dropped (readers
    /// fill gaps from Postgres).
    live: tokio::sync::mpsc::Sender<(String, bytes::Bytes)>,
}

/// Live events waiting for the background publisher; more are dropped.
const LIVE_QUEUE: usize = 4096;
/// How long the background publisher waits on NATS for one live event before dropping it.
const LIVE_PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

impl Bus {
    /// Connects (a comma-separated list of URLs names the servers of a cluster) and makes sure
    /// the runs stream exists, with one replica.
    pub async fn connect(url: &str, prefix: &str) -> BusResult<Self> {
        Self::connect_with_replicas(url, prefix, 1).await
    }

    /// `connect`, with the runs stream created with `replicas` replicas (a clustered JetStream).
    pub async fn connect_with_replicas(
        url: &str,
        prefix: &str,
        replicas: usize,
    ) -> BusResult<Self> {
        let servers = server_addrs(url).map_err(|source| BusError::Connect {
            url: url.to_owned(),
            source,
        })?;
        let client = async_nats::ConnectOptions::new()
            .name("cadenza")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(servers)
            .await
            .map_err(|source| BusError::Connect {
                url: url.to_owned(),
                source,
            })?;
        // A bounded initial wait: `retry_on_initial_connect` returns at once and connects in the
        // background, so check the server answers before declaring the bus usable.
        let mut bus = Self::from_client(client, prefix);
        bus.replicas = replicas.max(1);
        // A cluster that is electing its leaders (or several services creating the stream at
        // once) may time a request out: try for up to a minute before giving up.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut pause = Duration::from_millis(250);
        loop {
            match bus.ensure_streams().await {
                Ok(()) => return Ok(bus),
                Err(err) if tokio::time::Instant::now() + pause < deadline => {
                    tracing::warn!(error = %err, "creating the JetStream stream failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// A bus over an existing connection. Must be called inside a Tokio runtime (it starts the
    /// live publisher).
    pub fn from_client(client: async_nats::Client, prefix: &str) -> Self {
        let jetstream = jetstream::new(client.clone());
        let (live, mut queue) = tokio::sync::mpsc::channel::<(String, bytes::Bytes)>(LIVE_QUEUE);
        let publisher = client.clone();
        tokio::spawn(async move {
            while let Some((subject, body)) = queue.recv().await {
                let sent = tokio::time::timeout(
                    LIVE_PUBLISH_TIMEOUT,
                    publisher.publish(subject.clone(), body),
                )
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    tracing::debug!(%subject, "live publish failed or timed out; dropped");
                }
            }
        });
        Self {
            client,
            jetstream,
            prefix: prefix.to_owned(),
            replicas: 1,
            live,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The absolute subject for a subject relative to the prefix.
    pub fn subject(&self, relative: &str) -> String {
        format!("{}.{relative}", self.prefix)
    }

    fn runs_stream_name(&self) -> String {
        let cleaned: String = self
            .prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("{cleaned}_RUNS")
    }

    /// Creates the JetStream stream for run commands if it does not exist.
    pub async fn ensure_streams(&self) -> BusResult<()> {
        self.jetstream
            .get_or_create_stream(jetstream::stream::Config {
                name: self.runs_stream_name(),
                subjects: vec![self.subject("runs.>")],
                retention: RetentionPolicy::WorkQueue,
                duplicate_window: Duration::from_secs(120),
                max_age: Duration::from_secs(7 * 24 * 3600),
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await
            .map_err(|err| BusError::JetStream(err.to_string()))?;
        Ok(())
    }

    /// Publishes to JetStream and waits for the server's acknowledgement. `dedup_id` becomes the
    /// `Nats-Msg-Id`, so a relay that publishes the same outbox row twice stores it once.
    pub async fn publish_durable(
        &self,
        relative_subject: &str,
        payload: &serde_json::Value,
        dedup_id: &str,
    ) -> BusResult<()> {
        match self
            .publish_durable_once(relative_subject, payload, dedup_id)
            .await
        {
            Ok(()) => Ok(()),
            Err(first) => {
                // JetStream may have lost the stream (a server restarted without its store):
                // create it again and retry once. Deduplication makes the retry safe.
                if self.ensure_streams().await.is_err() {
                    return Err(first);
                }
                self.publish_durable_once(relative_subject, payload, dedup_id)
                    .await
            }
        }
    }

    async fn publish_durable_once(
        &self,
        relative_subject: &str,
        payload: &serde_json::Value,
        dedup_id: &str,
    ) -> BusResult<()> {
        let subject = self.subject(relative_subject);
        let body = serde_json::to_vec(payload).map_err(BusError::Encode)?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", dedup_id);
        let ack = self
            .jetstream
            .publish_with_headers(subject.clone(), headers, body.into())
            .await
            .map_err(|err| BusError::Publish {
                subject: subject.clone(),
                detail: err.to_string(),
            })?;
        ack.await.map_err(|err| BusError::Publish {
            subject,
            detail: err.to_string(),
        })?;
        Ok(())
    }

    /// Fire-and-forget publish on core NATS, for live fan-out.
    pub async fn publish_live<T: Serialize>(
        &self,
        relative_subject: &str,
        message: &T,
    ) -> BusResult<()> {
        let subject = self.subject(relative_subject);
        let body = serde_json::to_vec(message).map_err(BusError::Encode)?;
        self.client
            .publish(subject.clone(), body.into())
            .await
            .map_err(|err| BusError::Publish {
                subject,
                detail: err.to_string(),
            })
    }

    /// Fans a committed journal entry out to live readers. Best effort by design, and never
    /// waits on NATS: the entry is queued for the background publisher (dropped when the queue
    /// is full, as while NATS is down); a reader that misses it reads Postgres.
    pub async fn publish_journal_event(&self, event: &cadenza_domain::JournalEvent) {
        let subject = self.subject(&subjects::live_events(event.run_id));
        let message = messages::LiveEvent::from_journal(event);
        match serde_json::to_vec(&message) {
            Ok(body) => {
                if self.live.try_send((subject, body.into())).is_err() {
                    tracing::debug!(run_id = %event.run_id, "live queue full; event dropped");
                }
            }
            Err(err) => {
                tracing::warn!(run_id = %event.run_id, error = %err, "live event does not encode")
            }
        }
    }

    /// Subscribes and waits until the server has the subscription, so a message published after
    /// this returns is delivered: a reader may then read history knowing nothing falls in
    /// between. The server handles a connection's operations in order, so the answer to a
    /// request sent after the `SUB` (a "no responders" status, as nobody listens on a fresh
    /// inbox) proves the subscription is in place. Without that answer (an old server, a slow
    /// link) the subscription is returned anyway; readers also poll, slowly.
    pub async fn subscribe_live(
        &self,
        relative_subject: &str,
    ) -> BusResult<async_nats::Subscriber> {
        let subject = self.subject(relative_subject);
        let subscriber = self
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|err| BusError::Subscribe {
                subject: subject.clone(),
                detail: err.to_string(),
            })?;
        let probe = self
            .client
            .send_request(
                self.client.new_inbox(),
                async_nats::Request::new().timeout(Some(std::time::Duration::from_secs(2))),
            )
            .await;
        match probe {
            Ok(_) => {}
            Err(err) if err.kind() == async_nats::RequestErrorKind::NoResponders => {}
            Err(err) => {
                tracing::debug!(%subject, error = %err, "could not confirm a live subscription");
            }
        }
        Ok(subscriber)
    }

    /// A durable pull consumer on the runs stream, created if missing. Messages are acked only
    /// after the consumer has committed what they asked for. With `expire_after`, the server
    /// deletes the consumer once nobody has pulled from it for that long (a worker that is gone
    /// for good); its unconsumed messages stay in the work queue.
    pub async fn durable_consumer(
        &self,
        durable_name: &str,
        relative_filter: &str,
        expire_after: Option<Duration>,
    ) -> BusResult<PullConsumer> {
        // The stream is created again if JetStream lost it (a server restarted without its store).
        let stream = match self.jetstream.get_stream(self.runs_stream_name()).await {
            Ok(stream) => stream,
            Err(_) => {
                self.ensure_streams().await?;
                self.jetstream
                    .get_stream(self.runs_stream_name())
                    .await
                    .map_err(|err| BusError::JetStream(err.to_string()))?
            }
        };
        stream
            .get_or_create_consumer(
                durable_name,
                jetstream::consumer::pull::Config {
                    durable_name: Some(durable_name.to_owned()),
                    filter_subject: self.subject(relative_filter),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_deliver: 20,
                    inactive_threshold: expire_after.unwrap_or_default(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|err| BusError::JetStream(err.to_string()))
    }

    /// Removes a durable consumer (e.g. a worker retiring for good).
    pub async fn delete_consumer(&self, durable_name: &str) -> BusResult<()> {
        let stream = self
            .jetstream
            .get_stream(self.runs_stream_name())
            .await
            .map_err(|err| BusError::JetStream(err.to_string()))?;
        stream
            .delete_consumer(durable_name)
            .await
            .map_err(|err| BusError::JetStream(err.to_string()))?;
        Ok(())
    }

    /// Deletes this prefix's streams (and with them their consumers). For tearing down a
    /// deployment or a test; never called by the services.
    pub async fn delete_streams(&self) -> BusResult<()> {
        match self.jetstream.delete_stream(self.runs_stream_name()).await {
            Ok(_) => Ok(()),
            Err(err) => Err(BusError::JetStream(err.to_string())),
        }
    }

    /// Whether the server answers, for readiness probes.
    pub async fn ping(&self) -> BusResult<()> {
        tokio::time::timeout(Duration::from_secs(2), self.client.flush())
            .await
            .map_err(|_| BusError::JetStream("NATS did not answer within 2 s".into()))?
            .map_err(|err| BusError::JetStream(err.to_string()))
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

/// The servers of a URL list: `nats://a:4222,nats://b:4222` names the nodes of a cluster (the
/// client also learns the others from the one it reaches).
fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>, async_nats::ConnectError> {
    let servers: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            url.parse::<async_nats::ServerAddr>().map_err(|err| {
                async_nats::ConnectError::with_source(
                    async_nats::ConnectErrorKind::ServerParse,
                    err,
                )
            })
        })
        .collect::<Result<_, _>>()?;
    if servers.is_empty() {
        return Err(async_nats::ConnectError::new(
            async_nats::ConnectErrorKind::ServerParse,
        ));
    }
    Ok(servers)
}

/// Decodes a message body.
pub fn decode<T: DeserializeOwned>(subject: &str, body: &[u8]) -> BusResult<T> {
    serde_json::from_slice(body).map_err(|source| BusError::Decode {
        subject: subject.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unreachable_bus_is_worth_a_retry_and_an_unreadable_body_is_not() {
        use cadenza_domain::ErrorKind;
        let unreachable = super::BusError::JetStream("timed out".into());
        assert_eq!(unreachable.kind(), ErrorKind::Unavailable);
        assert!(unreachable.kind().is_transient());
        let unreadable = super::decode::<u32>("runs.requested", b"{").expect_err("garbage");
        assert_eq!(unreadable.kind(), ErrorKind::Invalid);
        assert!(!unreadable.kind().is_transient());
    }

    #[test]
    fn a_comma_separated_list_names_every_server_of_a_cluster() {
        let servers =
            super::server_addrs("nats://127.0.0.1:4222, nats://127.0.0.1:4223,,").expect("a list");
        let ports: Vec<u16> = servers.iter().map(|server| server.port()).collect();
        assert_eq!(ports, [4222, 4223]);
        assert!(super::server_addrs(" , ").is_err());
        assert!(super::server_addrs("nats://127.0.0.1:notaport").is_err());
    }
}
