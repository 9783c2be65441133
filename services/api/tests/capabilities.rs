//! `GET /capabilities` tells a signed-in caller what the instance offers, from its real settings.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cadenza_testkit::fixtures::user_with_token;
use cadenza_testkit::infra::unique_name;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;
use common::app;

#[tokio::test]
async fn capabilities_describe_this_instance_to_a_signed_in_caller_only() {
    let app = app(json!({
        "rate_limit_per_caller": 321,
        "max_streams_per_caller": 7,
        "agent_images": "ghcr.io/openhands/agent-server,registry.example/agent",
    }))
    .await;
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let (_, token) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("caps-")),
        &[],
        false,
        None,
    )
    .await
    .expect("user");
    drop(conn);

    let anonymous = app
        .router
        .clone()
        .oneshot(
            Request::get("/api/v1/capabilities")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("answer");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let response = app
        .router
        .clone()
        .oneshot(
            Request::get("/api/v1/capabilities")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let caps: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(caps["api_version"], cadenza_api::openapi::API_VERSION);
    assert_eq!(caps["openapi"], "/api/v1/openapi.json");
    assert_eq!(caps["limits"]["requests_per_minute"], 321);
    assert_eq!(caps["limits"]["streams_per_caller"], 7);
    assert_eq!(
        caps["harnesses"][0]["images"],
        json!(["ghcr.io/openhands/agent-server", "registry.example/agent"])
    );
    let actions: Vec<&str> = caps["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter_map(|action| action["name"].as_str())
        .collect();
    assert_eq!(actions, ["cancel", "messages", "retry"]);
    assert_eq!(caps["streams"][0]["transport"], "sse");
    assert_eq!(
        caps["features"]["oidc_login"], false,
        "no provider configured"
    );
}
