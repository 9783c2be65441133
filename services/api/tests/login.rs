//! Browser login against a fake OpenID Connect provider: the full code flow with PKCE, the
//! session cookie, refresh, logout, and each way a login must be refused.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use cadenza_fake_oidc::{FakeClient, FakeOidcConfig, FakeUser, IdTokenTamper, RunningFakeOidc};
use cadenza_testkit::dns::TestDnsServer;
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
    /// The name server the API verifies email domains against.
    dns: TestDnsServer,
    http: reqwest::Client,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn setup(email: &str) -> Login {
    setup_with(email, json!({})).await
}

async fn setup_with(email: &str, extra: Value) -> Login {
    setup_user(FakeUser::new("user-1", email).with_name("Ada"), extra).await
}

async fn setup_user(user: FakeUser, extra: Value) -> Login {
    let provider = cadenza_fake_oidc::spawn(FakeOidcConfig::new(
        FakeClient::new(CLIENT_ID, CLIENT_SECRET, REDIRECT),
        user,
    ))
    .await
    .expect("fake provider");
    let db = TestDatabase::create().await.expect("db");
    let dns = TestDnsServer::start().await.expect("dns server");
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
        "dns_nameservers": dns.address().to_string(),
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
        dns,
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

/// An org with an owner, and a rule for `domain` put through the API: the rule and the owner's
/// token.
async fn org_with_rule(login: &Login, domain: &str) -> (cadenza_domain::OrgId, String, Value) {
    let mut conn = login.db.pool.acquire().await.expect("conn");
    let org = cadenza_storage::orgs::create(&mut conn, &unique_name("acme-"), "Acme")
        .await
        .expect("org");
    let (_, owner_token) = cadenza_testkit::fixtures::user_with_token(
        &mut conn,
        &format!("{}@owners.test", unique_name("owner-")),
        &[(org.id, cadenza_domain::Role::Owner)],
        false,
        None,
    )
    .await
    .expect("owner");
    let put = send_as(
        &login.router,
        "PUT",
        &format!("/api/v1/orgs/{}/domains/{domain}", org.id),
        &owner_token,
        Some(json!({"role": "member"})),
    )
    .await;
    assert_eq!(put.status(), StatusCode::OK);
    let rule = body(put).await;
    assert_eq!(rule["state"], "pending");
    assert_eq!(rule["verification"], Value::Null);
    assert_eq!(rule["dns_record"]["type"], "TXT");
    assert_eq!(
        rule["dns_record"]["name"],
        format!("_cadenza-challenge.{domain}")
    );
    let value = rule["dns_record"]["value"].as_str().expect("value");
    assert!(
        value.starts_with("cadenza-domain-verification=") && value.len() > 40,
        "{value}"
    );
    (org.id, owner_token, rule)
}

async fn verify(
    login: &Login,
    org: cadenza_domain::OrgId,
    domain: &str,
    token: &str,
) -> (StatusCode, Value) {
    let response = send_as(
        &login.router,
        "POST",
        &format!("/api/v1/orgs/{org}/domains/{domain}/verify"),
        token,
        None,
    )
    .await;
    (response.status(), body(response).await)
}

async fn orgs_after_login(login: &Login) -> Value {
    let (code, state) = authorize(login).await;
    let done = callback(login, &code, &state).await;
    assert_eq!(done.status(), StatusCode::FOUND);
    let cookie = session_cookie(&done);
    body(send(&login.router, "GET", "/api/v1/me", Some(&cookie)).await).await["orgs"].clone()
}

async fn audit_actions(login: &Login, action: &str) -> Vec<Value> {
    sqlx::query_scalar("select diff from audit_log where action = $1 order by id")
        .bind(action)
        .fetch_all(&login.db.pool)
        .await
        .expect("audit")
}

#[tokio::test]
async fn a_verified_email_domain_joins_the_org_of_its_rule() {
    let login = setup("carol@acme.test").await;
    let (org, owner_token, rule) = org_with_rule(&login, "acme.test").await;
    let record = &rule["dns_record"];
    login
        .dns
        .set_txt(
            record["name"].as_str().expect("name"),
            &["v=spf1 -all", record["value"].as_str().expect("value")],
        )
        .await
        .expect("publish");

    let (status, verified) = verify(&login, org, "acme.test", &owner_token).await;
    assert_eq!(status, StatusCode::OK, "{verified}");
    assert_eq!(verified["state"], "verified");
    assert_eq!(verified["verification"]["method"], "dns");
    assert_eq!(audit_actions(&login, "domain_rule.verify").await.len(), 1);

    let listed = body(
        send_as(
            &login.router,
            "GET",
            &format!("/api/v1/orgs/{org}/domains"),
            &owner_token,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(listed["items"][0]["state"], "verified");
    assert_eq!(listed["items"][0]["dns_record"], rule["dns_record"]);

    let orgs = orgs_after_login(&login).await;
    assert_eq!(orgs[0]["org_id"], org.to_string());
    assert_eq!(orgs[0]["role"], "member");
}

#[tokio::test]
async fn a_missing_or_wrong_verification_record_is_refused_and_the_rule_stays_pending() {
    let login = setup("dora@acme.test").await;
    let (org, owner_token, rule) = org_with_rule(&login, "acme.test").await;
    let name = rule["dns_record"]["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let value = rule["dns_record"]["value"]
        .as_str()
        .expect("value")
        .to_owned();

    let (status, problem) = verify(&login, org, "acme.test", &owner_token).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["code"], "domain_not_verified");
    let detail = problem["detail"].as_str().expect("detail");
    assert!(
        detail.contains("no TXT record") && detail.contains(&name) && detail.contains(&value),
        "{detail}"
    );

    // Another org's token (or a stale one) is not this rule's proof.
    login
        .dns
        .set_txt(&name, &["cadenza-domain-verification=0123456789abcdef"])
        .await
        .expect("publish");
    let (status, problem) = verify(&login, org, "acme.test", &owner_token).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let detail = problem["detail"].as_str().expect("detail");
    assert!(detail.contains(&value), "{detail}");

    let listed = body(
        send_as(
            &login.router,
            "GET",
            &format!("/api/v1/orgs/{org}/domains"),
            &owner_token,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(listed["items"][0]["state"], "pending");
    assert!(audit_actions(&login, "domain_rule.verify").await.is_empty());
    assert_eq!(orgs_after_login(&login).await, json!([]));
}

#[tokio::test]
async fn an_instance_admin_approval_activates_a_rule_and_nobody_else_can_approve() {
    let login = setup("erin@acme.test").await;
    let (org, owner_token, _) = org_with_rule(&login, "acme.test").await;
    let approve = format!("/api/v1/admin/orgs/{org}/domains/acme.test/approve");

    // The org's own owner cannot vouch for its domain.
    let refused = send_as(&login.router, "POST", &approve, &owner_token, None).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(audit_actions(&login, "domain_rule.verify").await.is_empty());

    let mut conn = login.db.pool.acquire().await.expect("conn");
    let (admin, admin_token) = cadenza_testkit::fixtures::user_with_token(
        &mut conn,
        &format!("{}@operators.test", unique_name("admin-")),
        &[],
        true,
        None,
    )
    .await
    .expect("instance admin");
    let approved = send_as(&login.router, "POST", &approve, &admin_token, None).await;
    assert_eq!(approved.status(), StatusCode::OK);
    let approved = body(approved).await;
    assert_eq!(approved["state"], "verified");
    assert_eq!(approved["verification"]["method"], "admin");
    assert_eq!(approved["verification"]["verified_by"], admin.to_string());
    assert_eq!(
        audit_actions(&login, "domain_rule.verify").await,
        [
            json!({"state": {"before": "pending", "after": "verified"}, "method": {"before": null, "after": "admin"}})
        ]
    );

    let orgs = orgs_after_login(&login).await;
    assert_eq!(orgs[0]["org_id"], org.to_string());
}

#[tokio::test]
async fn an_unverified_email_does_not_join_even_a_verified_rule() {
    let mut user = FakeUser::new("user-1", "frank@acme.test").with_name("Frank");
    user.email_verified = false;
    let login = setup_user(user, json!({})).await;
    let (org, owner_token, rule) = org_with_rule(&login, "acme.test").await;
    login
        .dns
        .set_txt(
            rule["dns_record"]["name"].as_str().expect("name"),
            &[rule["dns_record"]["value"].as_str().expect("value")],
        )
        .await
        .expect("publish");
    let (status, verified) = verify(&login, org, "acme.test", &owner_token).await;
    assert_eq!(status, StatusCode::OK, "{verified}");
    assert_eq!(orgs_after_login(&login).await, json!([]));
}

/// A request with a bearer token and an optional JSON body.
async fn send_as(
    router: &Router,
    method: &str,
    uri: &str,
    token: &str,
    json_body: Option<Value>,
) -> axum::response::Response {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"));
    let request = match json_body {
        Some(json_body) => request
            .header("content-type", "application/json")
            .body(Body::from(json_body.to_string())),
        None => request.body(Body::empty()),
    };
    router
        .clone()
        .oneshot(request.expect("request"))
        .await
        .expect("response")
}

#[tokio::test]
async fn a_pending_domain_rule_does_not_join_a_user_at_login() {
    let login = setup("gus@pending.test").await;
    let mut conn = login.db.pool.acquire().await.expect("conn");
    let org = cadenza_storage::orgs::create(&mut conn, &unique_name("claim-"), "Claimer")
        .await
        .expect("org");
    let (_, owner_token) = cadenza_testkit::fixtures::user_with_token(
        &mut conn,
        &format!("{}@claimer.test", unique_name("owner-")),
        &[(org.id, cadenza_domain::Role::Owner)],
        false,
        None,
    )
    .await
    .expect("owner");
    let put = send_as(
        &login.router,
        "PUT",
        &format!("/api/v1/orgs/{}/domains/pending.test", org.id),
        &owner_token,
        Some(json!({"role": "member"})),
    )
    .await;
    assert_eq!(put.status(), StatusCode::OK);

    let (code, state) = authorize(&login).await;
    let cookie = session_cookie(&callback(&login, &code, &state).await);
    let me = body(send(&login.router, "GET", "/api/v1/me", Some(&cookie)).await).await;
    assert_eq!(
        me["orgs"],
        json!([]),
        "a rule whose domain is not proven joins nobody"
    );
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
