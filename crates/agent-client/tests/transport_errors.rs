//! How network failures surface, with no agent-server involved: a caller waiting for a
//! container must be able to tell "nothing listening yet" from "listening but not answering",
//! and a session reader must learn why its socket ended.

use std::time::Duration;

use cadenza_agent_client::{
    AgentServerClient, CLOSE_ABNORMAL, CLOSE_TRY_AGAIN_LATER, Error, SessionFrame, SessionSocket,
};
use futures::{SinkExt, StreamExt};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
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

/// A WebSocket server that completes the handshake, sends `frames`, then acts per `ending`.
async fn scripted_socket_server(frames: Vec<Message>, ending: Ending) -> Url {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
        for frame in frames {
            socket.send(frame).await.unwrap();
        }
        match ending {
            Ending::Close(code, reason) => {
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                };
                socket.close(Some(frame)).await.unwrap();
                while socket.next().await.is_some() {}
            }
            Ending::DropConnection => drop(socket),
            // Never reading means never answering the client's pings.
            Ending::GoSilent => {
                tokio::time::sleep(TEST_BUDGET).await;
                drop(socket);
            }
        }
    });
    Url::parse(&format!("http://{address}")).unwrap()
}

enum Ending {
    Close(u16, &'static str),
    DropConnection,
    GoSilent,
}

async fn read_frame(socket: &mut SessionSocket) -> Result<SessionFrame, Error> {
    tokio::time::timeout(TEST_BUDGET, socket.next_frame())
        .await
        .expect("no frame or close within the budget")
}

fn sync_frame() -> Message {
    Message::text(r#"{"type":"sync","from_seq":null,"through_seq":null}"#)
}

#[tokio::test]
async fn slow_consumer_close_keeps_code_and_reason_and_invites_a_reconnect() {
    let url = scripted_socket_server(
        vec![
            sync_frame(),
            Message::text(r#"{"type":"durable","seq":0,"event":{"kind":"PauseEvent","id":"p"}}"#),
        ],
        Ending::Close(CLOSE_TRY_AGAIN_LATER, "slow_consumer"),
    )
    .await;
    let client = client(url);
    let mut socket = client.open_session(Uuid::new_v4(), Some(-1)).await.unwrap();
    assert!(matches!(
        read_frame(&mut socket).await.unwrap(),
        SessionFrame::Sync { .. }
    ));
    assert!(matches!(
        read_frame(&mut socket).await.unwrap(),
        SessionFrame::Durable { seq: 0, .. }
    ));
    let error = read_frame(&mut socket).await.unwrap_err();
    assert!(
        matches!(&error, Error::SocketClosed { code: CLOSE_TRY_AGAIN_LATER, reason, .. } if reason == "slow_consumer"),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert_eq!(socket.resume_after_seq(), Some(0));
}

#[tokio::test]
async fn a_dropped_connection_reads_as_an_abnormal_close() {
    let url = scripted_socket_server(vec![sync_frame()], Ending::DropConnection).await;
    let client = client(url);
    let mut socket = client.open_session(Uuid::new_v4(), None).await.unwrap();
    assert!(matches!(
        read_frame(&mut socket).await.unwrap(),
        SessionFrame::Sync { .. }
    ));
    let error = read_frame(&mut socket).await.unwrap_err();
    assert_eq!(error.close_code(), Some(CLOSE_ABNORMAL), "{error:?}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn keepalive_gives_up_on_a_server_that_stops_answering() {
    let url = scripted_socket_server(vec![sync_frame()], Ending::GoSilent).await;
    let client = AgentServerClient::builder(url, SecretString::from("key"))
        .socket_keepalive(Some(Duration::from_millis(100)))
        .build();
    let mut socket = client.open_session(Uuid::new_v4(), None).await.unwrap();
    assert!(matches!(
        read_frame(&mut socket).await.unwrap(),
        SessionFrame::Sync { .. }
    ));
    let error = read_frame(&mut socket).await.unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert!(error.is_retryable());
}
