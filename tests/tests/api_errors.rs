//! Bad input gets a clear problem+json answer: never a panic, never a 500.

use cadenza_e2e::Api;
use cadenza_testkit::stack::Stack;
use serde_json::Value;

async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json", "status {status}");
    let body: Value = response.json().await.expect("a JSON problem");
    assert_eq!(body["status"], status);
    assert!(body["code"].is_string() && body["type"].is_string() && body["detail"].is_string());
    (status, body)
}

#[tokio::test]
async fn bad_requests_are_answered_with_problems() {
    let stack = Stack::start().await.expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let http = reqwest::Client::new();
    let runs_url = api.url(&format!("/projects/{}/runs", stack.project.id));

    // Unknown project, well-formed or not.
    for project in [uuid::Uuid::now_v7().to_string(), "not-a-uuid".to_owned()] {
        let response = http
            .post(api.url(&format!("/projects/{project}/runs")))
            .bearer_auth(&api.token)
            .json(&serde_json::json!({"prompt": "$ true"}))
            .send()
            .await
            .expect("request");
        let (status, body) = problem(response).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["code"], "not_found");
    }

    // Malformed JSON.
    let response = http
        .post(&runs_url)
        .bearer_auth(&api.token)
        .header("content-type", "application/json")
        .body("{\"prompt\": ")
        .send()
        .await
        .expect("request");
    let (status, body) = problem(response).await;
    assert_eq!(status, 400);
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("not valid JSON"),
        "{body}"
    );

    // A missing prompt names the field.
    let response = http
        .post(&runs_url)
        .bearer_auth(&api.token)
        .json(&serde_json::json!({"idempotency_key": "k"}))
        .send()
        .await
        .expect("request");
    let (status, body) = problem(response).await;
    assert_eq!(status, 400);
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("prompt"),
        "{body}"
    );

    // An empty prompt and an unknown field are rejected too.
    for bad in [
        serde_json::json!({"prompt": "  "}),
        serde_json::json!({"prompt": "x", "promt": "y"}),
    ] {
        let response = http
            .post(&runs_url)
            .bearer_auth(&api.token)
            .json(&bad)
            .send()
            .await
            .expect("request");
        let (status, body) = problem(response).await;
        assert_eq!(status, 400, "{body}");
    }

    // No token, a wrong token, a malformed header.
    let response = http
        .post(&runs_url)
        .json(&serde_json::json!({"prompt": "$ true"}))
        .send()
        .await
        .expect("request");
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    let (status, _) = problem(response).await;
    assert_eq!(status, 401);
    for header in ["Bearer cdz_0000", "Bearer nonsense", "Basic abc", "Bearer "] {
        let response = http
            .get(api.url("/projects"))
            .header("authorization", header)
            .send()
            .await
            .expect("request");
        let (status, _) = problem(response).await;
        assert_eq!(status, 401, "{header}");
    }

    // Bad query parameters.
    for query in [
        "/runs?state=bogus",
        "/runs?limit=0",
        "/runs?limit=abc",
        "/runs?cursor=zzz",
    ] {
        let response = api.get(query).await.expect("request");
        let (status, body) = problem(response).await;
        assert_eq!(status, 400, "{query}: {body}");
    }
    let response = api
        .get(&format!("/runs/{}/events?cursor=-3", uuid::Uuid::now_v7()))
        .await
        .expect("request");
    let (status, _) = problem(response).await;
    assert_eq!(
        status, 404,
        "an unknown run is 404 before its cursor is looked at"
    );

    // Unknown runs and routes.
    for path in [
        format!("/runs/{}", uuid::Uuid::now_v7()),
        format!("/runs/{}/events", uuid::Uuid::now_v7()),
        format!("/runs/{}/events/stream", uuid::Uuid::now_v7()),
        format!("/runs/{}/diff", uuid::Uuid::now_v7()),
        format!("/projects/{}", uuid::Uuid::now_v7()),
        "/no/such/route".to_owned(),
    ] {
        let response = api.get(&path).await.expect("request");
        let (status, _) = problem(response).await;
        assert_eq!(status, 404, "{path}");
    }

    // The API still serves good requests after all that.
    let projects = api.get_json("/projects").await.expect("projects");
    assert_eq!(projects["items"][0]["id"], stack.project.id.to_string());
    assert!(!stack.logs().contains("panicked"), "no service panicked");
}
