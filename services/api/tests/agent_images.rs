//! The agent-image allowlist at the API: projects may name only images the instance allows, or
//! that an instance administrator allowed for their org.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use cadenza_domain::Role;
use cadenza_storage::orgs;
use cadenza_testkit::fixtures::user_with_token;
use cadenza_testkit::infra::unique_name;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;
use common::{App, app};

async fn call(
    app: &App,
    method: Method,
    path: &str,
    token: &str,
    body: Value,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(format!("/api/v1{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = app.router.clone().oneshot(request).await.expect("answer");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// An org with an owner (who may manage projects) and an instance administrator.
struct Tenants {
    org: String,
    owner: String,
    admin: String,
}

async fn tenants(app: &App) -> Tenants {
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let org = orgs::create(&mut conn, &unique_name("img"), "Images")
        .await
        .expect("org");
    let (_, owner) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("owner-")),
        &[(org.id, Role::Owner)],
        false,
        None,
    )
    .await
    .expect("owner");
    let (_, admin) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("admin-")),
        &[],
        true,
        None,
    )
    .await
    .expect("admin");
    Tenants {
        org: org.id.to_string(),
        owner,
        admin,
    }
}

#[tokio::test]
async fn projects_may_name_only_images_the_instance_or_their_org_allows() {
    let app =
        app(json!({"agent_images": "ghcr.io/openhands/agent-server, registry.example.com/team/"}))
            .await;
    let t = tenants(&app).await;
    let create =
        |image: &str| json!({"slug": unique_name("p-"), "name": "P", "agent": {"image": image}});
    let projects = format!("/orgs/{}/projects", t.org);

    // The default image and allowed ones are accepted.
    let (status, project) = call(
        &app,
        Method::POST,
        &projects,
        &t.owner,
        json!({"slug": "default", "name": "D"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{project}");
    let (status, _) = call(
        &app,
        Method::POST,
        &projects,
        &t.owner,
        create("registry.example.com/team/agent:2"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    // Anything else is refused with a message naming the image and what is allowed; the
    // refused spellings include the worker host's loopback and network (SSRF from the daemon).
    for image in [
        "ubuntu:24.04",
        "127.0.0.1:5432/x:y",
        "10.0.3.7:8080/x:y",
        "ghcr.io/openhands/agent-server-evil:1",
        "registry.example.com/other/agent:1",
        "registry.example.com.evil.io/team/agent:1",
    ] {
        let (status, problem) = call(&app, Method::POST, &projects, &t.owner, create(image)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{image}: {problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(image) && detail.contains("allowed: ghcr.io/openhands/agent-server"),
            "{detail}"
        );
    }
    let project_path = format!("/projects/{}", project["id"].as_str().expect("id"));
    let (status, _) = call(
        &app,
        Method::PATCH,
        &project_path,
        &t.owner,
        json!({"agent": {"image": "ghcr.io/acme/agent:1"}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "PATCH is checked too");

    // An org owner cannot widen its own list; an instance administrator can, for that org only.
    let images = format!("/admin/orgs/{}/agent-images", t.org);
    let (status, _) = call(
        &app,
        Method::PUT,
        &images,
        &t.owner,
        json!({"rules": ["ghcr.io/acme/"]}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, view) = call(
        &app,
        Method::PUT,
        &images,
        &t.admin,
        json!({"rules": ["ghcr.io/acme/"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["org"], json!(["ghcr.io/acme/"]));
    assert_eq!(
        view["instance"],
        json!([
            "ghcr.io/openhands/agent-server",
            "registry.example.com/team/"
        ])
    );
    let (status, patched) = call(
        &app,
        Method::PATCH,
        &project_path,
        &t.owner,
        json!({"agent": {"image": "ghcr.io/acme/agent:1"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");

    // Another org does not get the override.
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let other = orgs::create(&mut conn, &unique_name("other"), "Other")
        .await
        .expect("org");
    let (_, other_owner) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("o-")),
        &[(other.id, Role::Owner)],
        false,
        None,
    )
    .await
    .expect("owner");
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/orgs/{}/projects", other.id),
        &other_owner,
        create("ghcr.io/acme/agent:1"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Bad rules are refused, naming the rule; an unknown org is 404.
    let (status, problem) = call(
        &app,
        Method::PUT,
        &images,
        &t.admin,
        json!({"rules": ["acme/agent:1"]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    let unknown = format!("/admin/orgs/{}/agent-images", uuid::Uuid::now_v7());
    let (status, _) = call(&app, Method::GET, &unknown, &t.admin, Value::Null).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_bad_allowlist_setting_is_refused_at_start_up() {
    let settings: cadenza_api::ApiConfig = serde_json::from_value(json!({
        "database_url": "postgres://unused",
        "nats_url": "nats://unused",
        "redis_url": "redis://unused",
        "agent_images": "acme/agent:1",
    }))
    .expect("config");
    let err = settings.image_policy().expect_err("a tag is no rule");
    assert!(err.to_string().contains("CADENZA_AGENT_IMAGES"), "{err}");
}
