//! Browser login against a fake OpenID Connect provider: the full code flow with PKCE, the
//! session cookie, refresh, logout, and each way a login must be refused.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use cadenza_fake_oidc::{FakeClient, FakeOidcConfig, FakeUser, IdTokenTamper, RunningFakeOidc};
use cadenza_testkit::infra::{TestDatabase, nats_url, redis_url, unique_name};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const CLIENT_ID: &str = "cadenza";
const CLIENT_SECRET: &str = "s3cret";
const REDIRECT: &str = "http://127.0.0.1/api/v1/auth/callback";

struct Login {
    router: Router,
    provider: RunningFakeOidc,
    db: TestDatabase,
    http: reqwest::Client,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn setup(email: &str) -> Login {
    setup_with(email, json!({})).await
}

async fn setup_with(email: &str, extra: Value) -> Login {
    let provider = cadenza_fake_oidc::spawn(FakeOidcConfig::new(
        FakeClient::new(CLIENT_ID, CLIENT_SECRET, REDIRECT),
        FakeUser::new("user-1", email).with_name("Ada"),
    ))
    .await
    .expect("fake provider");
    let db = TestDatabase::create().await.expect("db");
    let mut settings = json!({
        "database_url": db.url,
        "nats_url": nats_url(),
        "redis_url": redis_url(),
        "secret_keks": test_kek_spec(),
        "bus_prefix": unique_name("t"),
        "migrate_on_start": false,
        "oidc_issuer": provider.issuer().as_str(),
        "oidc_client_id": CLIENT_ID,
        "oidc_client_secret": CLIENT_SECRET,
        "oidc_redirect_url": REDIRECT,
        "dev_mode": true,
    });
    if let (Some(target), Some(extra)) = (settings.as_object_mut(), extra.as_object()) {
        target.extend(extra.clone());
    }
    let config: cadenza_api::ApiConfig = serde_json::from_value(settings).expect("config");
    let shutdown = CancellationToken::new();
    let api = cadenza_api::build(&config, shutdown.clone())
        .await
        .expect("api");
    Login {
        router: api.router(),
        provider,
        db,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        _shutdown: shutdown.drop_guard(),
    }
}

async fn send(
    router: &Router,
    method: &str,
    uri: &str,
    cookie: Option<&str>,
) -> axum::response::Response {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    router
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("response")
}

fn location(response: &axum::response::Response) -> String {
    response.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned()
}

/// Drives a browser through login up to the callback URL the provider sends it to.
async fn authorize(login: &Login) -> (String, String) {
    let start = send(
        &login.router,
        "GET",
        "/api/v1/auth/login?redirect=/runs",
        None,
    )
    .await;
    assert_eq!(start.status(), StatusCode::FOUND);
    let authorize_url = location(&start);
    assert!(authorize_url.starts_with(login.provider.issuer().as_str()));
    assert!(authorize_url.contains("code_challenge_method=S256"));
    let answer = login
        .http
        .get(&authorize_url)
        .send()
        .await
        .expect("authorize");
    assert_eq!(answer.status(), 302);
    let back =
        url::Url::parse(answer.headers()["location"].to_str().expect("location")).expect("url");
    let query: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    (query["code"].clone(), query["state"].clone())
}

async fn callback(login: &Login, code: &str, state: &str) -> axum::response::Response {
    send(
        &login.router,
        "GET",
        &format!("/api/v1/auth/callback?code={code}&state={state}"),
        None,
    )
    .await
}

fn session_cookie(response: &axum::response::Response) -> String {
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    set_cookie.split(';').next().expect("pair").to_owned()
}

async fn body(response: axum::response::Response) -> Value {
    use http_body_util::BodyExt;
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

async fn failed_logins(login: &Login) -> i64 {
    sqlx::query_scalar("select count(*) from audit_log where action = 'login.failed'")
        .fetch_one(&login.db.pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn a_user_logs_in_uses_the_session_and_logs_out() {
    let login = setup("ada@example.com").await;
    let (code, state) = authorize(&login).await;
    let done = callback(&login, &code, &state).await;
    assert_eq!(done.status(), StatusCode::FOUND);
    assert_eq!(location(&done), "/runs");
    let cookie = session_cookie(&done);

    let me = send(&login.router, "GET", "/api/v1/me", Some(&cookie)).await;
    assert_eq!(me.status(), StatusCode::OK);
    let me = body(me).await;
    assert_eq!(me["actor"]["email"], "ada@example.com");
    assert_eq!(me["actor"]["name"], "Ada");

    // Replaying the callback (same code and state) is refused.
    let replay = callback(&login, &code, &state).await;
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);

    // The session keys are published.
    let jwks = body(send(&login.router, "GET", "/api/v1/.well-known/jwks.json", None).await).await;
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert!(jwks.to_string().contains("\"kid\""));
    assert!(
        !jwks.to_string().contains("\"d\""),
        "no private key material"
    );

    let out = send(&login.router, "POST", "/api/v1/auth/logout", Some(&cookie)).await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let after = send(&login.router, "GET", "/api/v1/me", Some(&cookie)).await;
    assert_eq!(
        after.status(),
        StatusCode::UNAUTHORIZED,
        "the session is revoked"
    );

    let actions: Vec<String> = sqlx::query_scalar(
        "select action from audit_log where resource_type = 'session' order by id",
    )
    .fetch_all(&login.db.pool)
    .await
    .expect("audit");
    assert_eq!(actions, ["login", "login.failed", "logout"]);
}

#[tokio::test]
async fn a_wrong_state_is_refused_and_audited() {
    let login = setup("bob@example.com").await;
    let (code, _) = authorize(&login).await;
    let response = callback(&login, &code, "forged-state").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body(response).await["code"], "login_failed");
    assert_eq!(failed_logins(&login).await, 1);
}

#[tokio::test]
async fn tampered_expired_misaddressed_or_replayed_id_tokens_are_refused() {
    let cases = [
        (
            "bad signature",
            IdTokenTamper {
                bad_signature: true,
                ..Default::default()
            },
        ),
        (
            "expired",
            IdTokenTamper {
                expired: true,
                ..Default::default()
            },
        ),
        (
            "wrong audience",
            IdTokenTamper {
                wrong_audience: Some("someone-else".into()),
                ..Default::default()
            },
        ),
        (
            "wrong nonce",
            IdTokenTamper {
                nonce_override: Some("not-the-nonce".into()),
                ..Default::default()
            },
        ),
        (
            "wrong issuer",
            IdTokenTamper {
                issuer_override: Some("https://evil.example".into()),
                ..Default::default()
            },
        ),
        (
            "unknown key",
            IdTokenTamper {
                unknown_kid: true,
                ..Default::default()
            },
        ),
    ];
    let login = setup("eve@example.com").await;
    for (expected, (name, tamper)) in cases.into_iter().enumerate() {
        login.provider.set_tamper(tamper);
        let (code, state) = authorize(&login).await;
        let response = callback(&login, &code, &state).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{name}");
        assert!(
            response.headers().get("set-cookie").is_none(),
            "{name} set a cookie"
        );
        assert_eq!(
            failed_logins(&login).await,
            expected as i64 + 1,
            "{name} was audited"
        );
    }
    // A code exchanged once cannot be exchanged again, even with a fresh state.
    login.provider.set_tamper(IdTokenTamper::default());
    let (code, state) = authorize(&login).await;
    assert_eq!(
        callback(&login, &code, &state).await.status(),
        StatusCode::FOUND
    );
    let (_, fresh_state) = authorize(&login).await;
    let replayed = callback(&login, &code, &fresh_state).await;
    assert_eq!(
        replayed.status(),
        StatusCode::UNAUTHORIZED,
        "a replayed authorization code"
    );
}

#[tokio::test]
async fn a_verified_email_domain_joins_the_org_of_its_rule() {
    let login = setup("carol@acme.test").await;
    let mut conn = login.db.pool.acquire().await.expect("conn");
    let org = cadenza_storage::orgs::create(&mut conn, &unique_name("acme-"), "Acme")
        .await
        .expect("org");
    cadenza_storage::domain_rules::put(
        &mut conn,
        org.id,
        "acme.test",
        cadenza_domain::Role::Member,
    )
    .await
    .expect("rule");
    let (code, state) = authorize(&login).await;
    let done = callback(&login, &code, &state).await;
    assert_eq!(done.status(), StatusCode::FOUND);
    let cookie = session_cookie(&done);
    let me = body(send(&login.router, "GET", "/api/v1/me", Some(&cookie)).await).await;
    assert_eq!(me["orgs"][0]["org_id"], org.id.to_string());
    assert_eq!(me["orgs"][0]["role"], "member");
    let _ = Duration::from_secs(0);
}

#[tokio::test]
async fn login_attempts_are_rate_limited_per_address() {
    let login = setup_with("dan@example.com", json!({"rate_limit_logins_per_ip": 3})).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            send(&login.router, "GET", "/api/v1/auth/login", None)
                .await
                .status(),
        );
    }
    assert_eq!(&statuses[..3], &[StatusCode::FOUND; 3]);
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn an_active_session_is_refreshed_on_the_way() {
    // Tokens live 4 s (times have one-second resolution): past half of that, a request gets a
    // fresh cookie.
    let login = setup_with("fay@example.com", json!({"session_token_ttl": "4s"})).await;
    let (code, state) = authorize(&login).await;
    let cookie = session_cookie(&callback(&login, &code, &state).await);
    let early = send(&login.router, "GET", "/api/v1/me", Some(&cookie)).await;
    assert_eq!(early.status(), StatusCode::OK);
    assert!(
        early.headers().get("set-cookie").is_none(),
        "a fresh token is not refreshed"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = send(&login.router, "GET", "/api/v1/me", Some(&cookie)).await;
    assert_eq!(later.status(), StatusCode::OK);
    let refreshed = session_cookie(&later);
    assert_ne!(refreshed, cookie);
    // The old token expires; the refreshed one goes on working.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        send(&login.router, "GET", "/api/v1/me", Some(&cookie))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&login.router, "GET", "/api/v1/me", Some(&refreshed))
            .await
            .status(),
        StatusCode::OK
    );
}

fn test_kek_spec() -> String {
    use secrecy::ExposeSecret;
    let (id, key) = cadenza_crypto::KeyRing::generate_key().expect("kek");
    format!("{id}:{}", key.expose_secret())
}
