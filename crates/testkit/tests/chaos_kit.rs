//! The chaos test kit's private infrastructure does what chaos tests rely on: it can be killed
//! and started again, keeping (or, when asked, losing) its data, without touching the shared
//! servers.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use cadenza_testkit::chaos::{NatsCluster, PrivateNats, PrivatePostgres};
use cadenza_testkit::infra::{TestDatabase, unique_name};
use cadenza_testkit::stack::{Stack, StackOptions};
use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn private_postgres_keeps_committed_data_across_a_crash_and_a_restart() {
    let postgres = PrivatePostgres::start()
        .await
        .expect("private postgres starts");
    let db = TestDatabase::create_on(&postgres.admin_url(), &postgres.runtime_url())
        .await
        .expect("a migrated database on the private server");
    let slug = unique_name("chaos-org-");
    {
        let mut conn = db.pool.acquire().await.expect("runtime connection");
        cadenza_storage::orgs::create(&mut conn, &slug, "Chaos org")
            .await
            .expect("the runtime role writes");
    }

    postgres.kill().await.expect("kill");
    assert!(!postgres.is_up().await);
    assert!(
        PgConnection::connect(&db.url).await.is_err(),
        "a killed server refuses connections"
    );

    postgres.start_again().await.expect("start again");
    assert!(postgres.is_up().await);
    let mut conn = PgConnection::connect(&db.url)
        .await
        .expect("the runtime role connects again");
    let org = cadenza_storage::orgs::find_by_slug(&mut conn, &slug)
        .await
        .expect("query after the restart");
    assert!(org.is_some(), "the committed org survived the crash");
    // The pool's connections died with the server; it replaces them.
    let mut pooled = db.pool.acquire().await.expect("the pool reconnects");
    let org = cadenza_storage::orgs::find_by_slug(&mut pooled, &slug)
        .await
        .expect("query through the pool");
    assert!(org.is_some());
}

#[tokio::test]
async fn a_test_database_on_a_killed_private_postgres_drops_without_hanging() {
    let postgres = PrivatePostgres::start()
        .await
        .expect("private postgres starts");
    let db = TestDatabase::create_on(&postgres.admin_url(), &postgres.runtime_url())
        .await
        .expect("a migrated database on the private server");
    postgres.kill().await.expect("kill");
    let started = Instant::now();
    drop(db);
    assert!(
        started.elapsed() <= TestDatabase::DROP_BUDGET + Duration::from_secs(2),
        "dropping took {:?}",
        started.elapsed()
    );
}

async fn jetstream_of(url: &str) -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .expect("connects");
    jetstream::new(client)
}

#[tokio::test]
async fn private_nats_keeps_jetstream_messages_across_a_kill_and_loses_them_with_an_empty_store() {
    let mut nats = PrivateNats::start().await.expect("private nats starts");
    let js = jetstream_of(&nats.url()).await;
    js.create_stream(stream::Config {
        name: "CHAOS".into(),
        subjects: vec!["chaos.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream created");
    js.publish("chaos.one", "kept".into())
        .await
        .expect("published")
        .await
        .expect("acknowledged");
    drop(js);

    nats.kill().await.expect("kill");
    let refused = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        .connect(nats.url())
        .await;
    assert!(refused.is_err(), "a killed server refuses connections");

    nats.start_again().await.expect("start again");
    let js = jetstream_of(&nats.url()).await;
    let stream = js.get_stream("CHAOS").await.expect("the stream survived");
    let message = stream
        .get_raw_message(1)
        .await
        .expect("the message survived");
    assert_eq!(message.payload.as_ref(), b"kept");
    drop(js);

    nats.kill().await.expect("kill");
    nats.start_again_with_empty_store()
        .await
        .expect("start again with an empty store");
    let js = jetstream_of(&nats.url()).await;
    assert!(
        js.get_stream("CHAOS").await.is_err(),
        "the stream is gone with the store"
    );
}

#[tokio::test]
async fn nats_cluster_acknowledges_r3_publishes_with_its_stream_leader_down() {
    let mut cluster = NatsCluster::start().await.expect("cluster starts");

    // One string with comma-separated URLs is not a server list to async-nats 0.51: it
    // parses as a single URL with an invalid port. A list of URLs is.
    assert!(
        async_nats::connect(cluster.url()).await.is_err(),
        "async-nats took {} as one string",
        cluster.url()
    );
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(cluster.urls())
        .await
        .expect("connects to the cluster");
    let js = jetstream::new(client);
    let mut stream = js
        .create_stream(stream::Config {
            name: "CHAOS".into(),
            subjects: vec!["chaos.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("R3 stream created");
    js.publish("chaos.one", "before".into())
        .await
        .expect("published")
        .await
        .expect("acknowledged");

    let leader = stream
        .info()
        .await
        .expect("stream info")
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.leader.clone())
        .expect("the stream has a leader");
    let node = cluster.node_named(&leader).expect("the leader is a node");
    cluster.kill(node).await.expect("kill the stream leader");

    // The client may have been on the killed node, and the stream elects a new leader: retry
    // until a publish is acknowledged, within a deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let acknowledged = async {
            js.publish("chaos.two", "during".into())
                .await?
                .await
                .map_err(anyhow::Error::from)
        };
        match tokio::time::timeout(Duration::from_secs(5), acknowledged).await {
            Ok(Ok(_)) => break,
            Ok(Err(error)) => assert!(Instant::now() < deadline, "no ack: {error:#}"),
            Err(_) => assert!(Instant::now() < deadline, "no ack within the deadline"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    cluster.start_node(node).await.expect("the node comes back");
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.state.messages, 2, "{info:?}");
    let replicas = &info.cluster.as_ref().expect("cluster info").replicas;
    assert_eq!(replicas.len(), 2, "two followers besides the leader");
}

/// Needs the service binaries (`cargo build --bins`), like the tests in `tests/`.
#[tokio::test]
async fn a_stack_runs_on_private_postgres_and_nats_with_two_workers() {
    let postgres = PrivatePostgres::start()
        .await
        .expect("private postgres starts");
    let nats = PrivateNats::start().await.expect("private nats starts");
    let mut stack = Stack::start_with(StackOptions {
        database: Some((postgres.admin_url(), postgres.runtime_url())),
        nats_url: Some(nats.url()),
        workers: 2,
        ..Default::default()
    })
    .await
    .expect("stack starts");
    assert_eq!(stack.nats_url, nats.url());
    assert_eq!(
        stack.worker_names,
        [
            stack.worker_name.clone(),
            format!("{}-2", stack.worker_name)
        ]
    );

    // Both workers registered in the private database...
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let names: Vec<String> =
            sqlx::query_scalar("select name from workers where stopped_at is null order by name")
                .fetch_all(&stack.db.pool)
                .await
                .expect("workers");
        if names == stack.worker_names {
            break;
        }
        assert!(Instant::now() < deadline, "registered workers: {names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and the services' stream is on the private NATS.
    let js = jetstream_of(&nats.url()).await;
    js.get_stream(format!("{}_RUNS", stack.bus_prefix.to_ascii_uppercase()))
        .await
        .expect("the stack's stream is on the private NATS");

    let first_port = stack.service("worker").expect("worker").port;
    let worker = stack.service("worker-2").expect("the second worker");
    assert_ne!(
        worker.port, first_port,
        "each worker listens on its own port"
    );
    worker.kill();
    assert!(!worker.is_running());
    worker.restart().expect("restart after a kill");
    worker
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("ready again");
    worker.terminate();
    let deadline = Instant::now() + Duration::from_secs(15);
    while worker.is_running() {
        assert!(
            Instant::now() < deadline,
            "still running 15 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(worker.logs().contains("stopped"), "{}", worker.logs());

    // With its NATS down, the stack still tears down (its stream clean-up gives up in bounded
    // time); the services it stops exit within their grace.
    let mut nats = nats;
    nats.kill().await.expect("kill nats");
    let started = Instant::now();
    drop(stack);
    eprintln!(
        "the stack dropped in {:?} with its NATS down",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "dropping took {:?}",
        started.elapsed()
    );
}
