//! Durable consumers against a real NATS JetStream.

use std::time::{Duration, Instant};

use cadenza_bus::Bus;
use cadenza_testkit::infra::{nats_url, unique_name};

#[tokio::test]
async fn a_consumer_with_an_expiry_goes_once_nobody_pulls_and_one_without_stays() {
    let bus = Bus::connect(&nats_url(), &unique_name("t"))
        .await
        .expect("bus");
    let idle = bus
        .durable_consumer(
            "idle-worker",
            "runs.lease.idle",
            Some(Duration::from_secs(1)),
        )
        .await
        .expect("idle consumer");
    let kept = bus
        .durable_consumer("kept", "runs.lease.kept", None)
        .await
        .expect("kept consumer");
    drop(idle);
    let jetstream = async_nats::jetstream::new(bus.client().clone());
    let mut kept = kept;
    let stream_name = kept.info().await.expect("info").stream_name.clone();
    let runs = jetstream.get_stream(&stream_name).await.expect("stream");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let gone = runs.consumer_info("idle-worker").await.is_err();
        if gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle consumer was never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        runs.consumer_info("kept").await.is_ok(),
        "a consumer without an expiry stays"
    );
    bus.delete_streams().await.expect("clean up");
}
