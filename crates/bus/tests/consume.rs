//! `cadenza_bus::consume` against a real NATS JetStream, each test under a prefix of its own.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cadenza_bus::messages::{Message, RunRequested};
use cadenza_bus::{Bus, Disposition, Durable};
use cadenza_domain::{OrgId, RunId};
use cadenza_testkit::infra::{nats_url, unique_name};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// A consumer of run requests under a fresh prefix, answering with the scripted dispositions in
/// order (then `Ack`), and reporting every message its handler sees with the time it saw it.
struct Harness {
    bus: Bus,
    durable: String,
    seen: mpsc::UnboundedReceiver<(RunRequested, Instant)>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    async fn start(script: Vec<Disposition>) -> Self {
        let bus = Bus::connect(&nats_url(), &unique_name("consume"))
            .await
            .expect("bus");
        let durable = unique_name("durable-");
        let (report, seen) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let bus = bus.clone();
            let durable = durable.clone();
            let shutdown = shutdown.clone();
            async move {
                let spec = Durable {
                    name: &durable,
                    filter: cadenza_bus::subjects::RUN_REQUESTED,
                    expire_after: None,
                };
                cadenza_bus::consume(&bus, spec, &shutdown, |request: RunRequested| {
                    let _ = report.send((request, Instant::now()));
                    let disposition = script
                        .lock()
                        .expect("script")
                        .pop_front()
                        .unwrap_or(Disposition::Ack);
                    std::future::ready(disposition)
                })
                .await;
            }
        });
        Self {
            bus,
            durable,
            seen,
            shutdown,
            task,
        }
    }

    async fn publish(&self, request: &RunRequested) {
        let body = serde_json::to_value(request).expect("encode");
        self.publish_raw(&body).await;
    }

    async fn publish_raw(&self, body: &serde_json::Value) {
        self.bus
            .publish_durable(
                cadenza_bus::subjects::RUN_REQUESTED,
                body,
                &uuid::Uuid::new_v4().to_string(),
            )
            .await
            .expect("publish");
    }

    async fn next_seen(&mut self) -> (RunRequested, Instant) {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .expect("the handler saw nothing in time")
            .expect("the consumer stopped")
    }

    /// The consumer's state on the server, after the messages it had were settled.
    async fn settled_info(&self) -> async_nats::jetstream::consumer::Info {
        let jetstream = async_nats::jetstream::new(self.bus.client().clone());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(stream) = jetstream.get_stream(stream_name(&self.bus)).await
                && let Ok(info) = stream.consumer_info(&self.durable).await
                && info.num_ack_pending == 0
                && info.num_pending == 0
            {
                return info;
            }
            assert!(Instant::now() < deadline, "messages were never settled");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Subscribes to the server's advisories about messages this consumer terminated.
    async fn terminations(&self) -> async_nats::Subscriber {
        let subject = format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{}.{}",
            stream_name(&self.bus),
            self.durable
        );
        let subscriber = self
            .bus
            .client()
            .subscribe(subject)
            .await
            .expect("subscribe");
        self.bus.client().flush().await.expect("flush");
        subscriber
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("consume returned on shutdown")
            .expect("consume did not panic");
        self.bus.delete_streams().await.expect("clean up");
    }
}

fn stream_name(bus: &Bus) -> String {
    let cleaned: String = bus
        .prefix()
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

fn request() -> RunRequested {
    RunRequested::new(RunId::new(), OrgId::new())
}

async fn next_termination(terminations: &mut async_nats::Subscriber) {
    tokio::time::timeout(WAIT, terminations.next())
        .await
        .expect("no termination advisory in time")
        .expect("advisory subscription ended");
}

#[tokio::test]
async fn an_acked_message_leaves_the_work_queue() {
    let mut harness = Harness::start(vec![]).await;
    let sent = request();
    harness.publish(&sent).await;
    let (seen, _) = harness.next_seen().await;
    assert_eq!(seen, sent);
    let jetstream = async_nats::jetstream::new(harness.bus.client().clone());
    let mut stream = jetstream
        .get_stream(stream_name(&harness.bus))
        .await
        .expect("stream");
    let deadline = Instant::now() + WAIT;
    while stream.info().await.expect("info").state.messages != 0 {
        assert!(Instant::now() < deadline, "the acked message stayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info = harness.settled_info().await;
    assert_eq!(info.num_redelivered, 0);
    harness.stop().await;
}

#[tokio::test]
async fn a_retried_message_comes_back_after_its_delay() {
    let delay = Duration::from_millis(1500);
    let mut harness = Harness::start(vec![Disposition::Retry(delay)]).await;
    let sent = request();
    harness.publish(&sent).await;
    let (first, first_at) = harness.next_seen().await;
    let (again, again_at) = harness.next_seen().await;
    assert_eq!(first, sent);
    assert_eq!(again, sent);
    let waited = again_at - first_at;
    assert!(waited >= delay, "redelivered after {waited:?}");
    harness.settled_info().await;
    harness.stop().await;
}

#[tokio::test]
async fn a_rejected_message_is_terminated_and_never_comes_back() {
    let mut harness = Harness::start(vec![Disposition::Reject]).await;
    let mut terminations = harness.terminations().await;
    let rejected = request();
    harness.publish(&rejected).await;
    assert_eq!(harness.next_seen().await.0, rejected);
    next_termination(&mut terminations).await;
    // The next message is the next one seen: the rejected one was not handed back.
    let after = request();
    harness.publish(&after).await;
    assert_eq!(harness.next_seen().await.0, after);
    let info = harness.settled_info().await;
    assert_eq!(info.num_redelivered, 0);
    assert!(harness.seen.try_recv().is_err(), "a redelivery");
    harness.stop().await;
}

#[tokio::test]
async fn an_undecodable_message_is_rejected_without_reaching_the_handler() {
    let mut harness = Harness::start(vec![]).await;
    let mut terminations = harness.terminations().await;
    harness
        .publish_raw(&serde_json::json!({"v": 1, "run_id": "not an id"}))
        .await;
    harness.publish_raw(&serde_json::json!("no version")).await;
    next_termination(&mut terminations).await;
    next_termination(&mut terminations).await;
    let valid = request();
    harness.publish(&valid).await;
    assert_eq!(harness.next_seen().await.0, valid);
    harness.settled_info().await;
    assert!(harness.seen.try_recv().is_err(), "the handler saw more");
    harness.stop().await;
}

#[tokio::test]
async fn a_newer_version_is_left_for_a_newer_consumer_and_redelivered() {
    let mut harness = Harness::start(vec![]).await;
    let mut terminations = harness.terminations().await;
    let newer = serde_json::json!({
        "v": RunRequested::VERSION + 1,
        "run_id": RunId::new(),
        "org_id": OrgId::new(),
        "priority": "a field this build does not know",
    });
    harness.publish_raw(&newer).await;
    // The newer message waits without blocking the ones behind it.
    let current = request();
    harness.publish(&current).await;
    assert_eq!(harness.next_seen().await.0, current);
    let jetstream = async_nats::jetstream::new(harness.bus.client().clone());
    let stream = jetstream
        .get_stream(stream_name(&harness.bus))
        .await
        .expect("stream");
    let deadline = Instant::now() + WAIT;
    loop {
        let info = stream
            .consumer_info(&harness.durable)
            .await
            .expect("consumer info");
        if info.num_redelivered >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the newer message never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        harness.seen.try_recv().is_err(),
        "the handler saw the newer message"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), terminations.next())
            .await
            .is_err(),
        "the newer message was terminated"
    );
    harness.stop().await;
}

#[tokio::test]
async fn the_consumer_opens_again_after_its_stream_is_deleted_and_created_again() {
    let mut harness = Harness::start(vec![]).await;
    let before = request();
    harness.publish(&before).await;
    assert_eq!(harness.next_seen().await.0, before);
    harness
        .bus
        .delete_streams()
        .await
        .expect("delete the stream");
    harness.bus.ensure_streams().await.expect("create it again");
    let after = request();
    harness.publish(&after).await;
    assert_eq!(harness.next_seen().await.0, after);
    harness.stop().await;
}
