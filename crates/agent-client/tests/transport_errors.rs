//! How network failures surface, with no agent-server involved: a caller waiting for a
//! container must be able to tell "nothing listening yet" from "listening but not answering".

use std::time::Duration;

use cadenza_agent_client::{AgentServerClient, Error};
use secrecy::SecretString;
use tokio::net::TcpListener;
use url::Url;
use uuid::Uuid;

const TEST_BUDGET: Duration = Duration::from_secs(10);

/// A loopback port that nothing listens on.
async fn closed_port_url() -> Url {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    Url::parse(&format!("http://{address}")).unwrap()
}

/// A server that accepts connections and then says nothing.
async fn silent_server_url() -> (Url, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (Url::parse(&format!("http://{address}")).unwrap(), task)
}

fn client(base_url: Url) -> AgentServerClient {
    AgentServerClient::builder(base_url, SecretString::from("key"))
        .request_timeout(Duration::from_millis(300))
        .socket_connect_timeout(Duration::from_millis(300))
        .build()
}

#[tokio::test]
async fn refused_connections_are_connect_errors_on_rest_and_socket() {
    let client = client(closed_port_url().await);

    let error = tokio::time::timeout(TEST_BUDGET, client.health())
        .await
        .unwrap()
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    assert!(!error.is_timeout());
    assert!(error.is_retryable());
    assert!(matches!(error, Error::Transport { .. }));

    let error = tokio::time::timeout(TEST_BUDGET, client.open_session(Uuid::new_v4(), Some(-1)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");
}

#[tokio::test]
async fn a_server_that_never_answers_gives_timeouts_not_hangs() {
    let (url, server) = silent_server_url().await;
    let client = client(url);

    let error = tokio::time::timeout(TEST_BUDGET, client.server_info())
        .await
        .unwrap()
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert!(!error.is_connect());

    let error = tokio::time::timeout(TEST_BUDGET, client.open_session(Uuid::new_v4(), None))
        .await
        .unwrap()
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    server.abort();
}

#[tokio::test]
async fn waiting_for_health_gives_up_after_its_budget() {
    let client = client(closed_port_url().await);
    let started = tokio::time::Instant::now();
    let error = tokio::time::timeout(
        TEST_BUDGET,
        client.wait_until_healthy(Duration::from_millis(500)),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
