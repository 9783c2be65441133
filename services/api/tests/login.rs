//! Browser login against a fake OpenID Connect provider: the full code flow with PKCE, the
//! session cookie, refresh, logout, and each way a login must be refused.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
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
/// This site's origin (from the redirect URL, as no public URL is configured).
const ORIGIN: &str = "http://127.0.0.1";

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
    // A browser sends its own origin on every unsafe request.
    let headers: &[(&str, &str)] = if method == "GET" {
        &[]
    } else {
        &[("origin", ORIGIN)]
    };
    send_with(router, method, uri, cookie, headers, None).await
}

/// A request as it reaches the server: extra headers, and the TCP peer it came from.
async fn send_with(
    router: &Router,
    method: &str,
    uri: &str,
    cookie: Option<&str>,
    headers: &[(&str, &str)],
    peer: Option<&str>,
) -> axum::response::Response {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(Body::empty()).expect("request");
    if let Some(peer) = peer {
        let addr: std::net::SocketAddr = peer.parse().expect("peer address");
        request.extensions_mut().insert(ConnectInfo(addr));
    }
    router.clone().oneshot(request).await.expect("response")
}

fn location(response: &axum::response::Response) -> String {
    response.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned()
}

/// A browser partway through login: where the provider sent it back, and the login cookie the
/// API set when the login started.
struct Started {
    code: String,
    state: String,
    login_cookie: String,
}

/// Drives a browser through login up to the callback URL the provider sends it to.
async fn authorize(login: &Login) -> (String, String) {
    let started = start_login(login, "/runs", None).await;
    (started.code, started.state)
}

async fn start_login(login: &Login, redirect: &str, login_hint: Option<&str>) -> Started {
    let start = send(
        &login.router,
        "GET",
        &format!("/api/v1/auth/login?redirect={redirect}"),
        None,
    )
    .await;
    assert_eq!(start.status(), StatusCode::FOUND);
    let login_cookie = set_cookie_pair(&start, "cadenza_login");
    let mut authorize_url = location(&start);
    assert!(authorize_url.starts_with(login.provider.issuer().as_str()));
    assert!(authorize_url.contains("code_challenge_method=S256"));
    if let Some(hint) = login_hint {
        authorize_url.push_str(&format!("&login_hint={hint}"));
    }
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
    Started {
        code: query["code"].clone(),
        state: query["state"].clone(),
        login_cookie,
    }
}

/// The `name=value` of the `Set-Cookie` for `name` (or a name ending in it).
fn set_cookie_pair(response: &axum::response::Response, name: &str) -> String {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| {
            value
                .split_once('=')
                .is_some_and(|(cookie, _)| cookie.ends_with(name))
        })
        .unwrap_or_else(|| panic!("no `{name}` cookie set"))
        .split(';')
        .next()
        .expect("pair")
        .to_owned()
}

/// The callback in the browser that started the login.
async fn finish(login: &Login, started: &Started) -> axum::response::Response {
    send(
        &login.router,
        "GET",
        &format!(
            "/api/v1/auth/callback?code={}&state={}",
            started.code, started.state
        ),
        Some(&started.login_cookie),
    )
    .await
}

async fn callback(login: &Login, code: &str, state: &str) -> axum::response::Response {
    // The login cookie holds the SHA-256 of the state, as the browser that started it has.
    use sha2::Digest;
    let binding = hex::encode(sha2::Sha256::digest(state.as_bytes()));
    send(
        &login.router,
        "GET",
        &format!("/api/v1/auth/callback?code={code}&state={state}"),
        Some(&format!("cadenza_login={binding}")),
    )
    .await
}

fn session_cookie(response: &axum::response::Response) -> String {
    let set_cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.contains("cadenza_session="))
        .expect("a session cookie")
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
async fn login_attempts_are_rate_limited_per_client_address() {
    let login = setup_with(
        "dan@example.com",
        json!({"rate_limit_logins_per_ip": 3, "trusted_proxies": "10.0.0.0/8"}),
    )
    .await;
    let attempt = |peer: &'static str, forwarded: Option<&'static str>| {
        let router = login.router.clone();
        async move {
            let headers: Vec<(&str, &str)> = forwarded
                .map(|ip| ("x-forwarded-for", ip))
                .into_iter()
                .collect();
            send_with(
                &router,
                "GET",
                "/api/v1/auth/login",
                None,
                &headers,
                Some(peer),
            )
            .await
            .status()
        }
    };
    // One client spends its budget...
    for _ in 0..3 {
        assert_eq!(attempt("198.51.100.1:5000", None).await, StatusCode::FOUND);
    }
    assert_eq!(
        attempt("198.51.100.1:5001", None).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // ...and cannot buy more by claiming to be someone else from an untrusted address.
    assert_eq!(
        attempt("198.51.100.1:5002", Some("203.0.113.50")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client is not affected.
    assert_eq!(attempt("198.51.100.2:5000", None).await, StatusCode::FOUND);
    // Behind a trusted proxy, each forwarded client has its own budget, and the proxy's own
    // address is not one shared bucket.
    for _ in 0..3 {
        assert_eq!(
            attempt("10.0.0.5:6000", Some("203.0.113.7")).await,
            StatusCode::FOUND
        );
    }
    assert_eq!(
        attempt("10.0.0.5:6000", Some("203.0.113.7")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        attempt("10.0.0.5:6000", Some("203.0.113.8")).await,
        StatusCode::FOUND
    );
}

#[tokio::test]
async fn the_audit_log_records_the_client_behind_a_trusted_proxy_and_a_request_id_it_cannot_choose()
{
    let login = setup_with("gus@example.com", json!({"trusted_proxies": "10.0.0.0/8"})).await;
    let forged = [
        ("x-forwarded-for", "203.0.113.99"),
        ("x-request-id", "forged-id"),
    ];
    let callback = "/api/v1/auth/callback?code=x&state=y";
    let direct = send_with(
        &login.router,
        "GET",
        callback,
        None,
        &forged,
        Some("198.51.100.9:1"),
    )
    .await;
    assert_eq!(direct.status(), StatusCode::UNAUTHORIZED);
    let direct_id = direct.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    assert_ne!(
        direct_id, "forged-id",
        "an untrusted peer cannot set the request id"
    );
    let proxied = send_with(
        &login.router,
        "GET",
        callback,
        None,
        &[
            ("x-forwarded-for", "203.0.113.10"),
            ("x-request-id", "proxy-id-1"),
        ],
        Some("10.1.1.1:1"),
    )
    .await;
    assert_eq!(proxied.headers()["x-request-id"], "proxy-id-1");
    let rows: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "select ip, request_id from audit_log where action = 'login.failed' order by id",
    )
    .fetch_all(&login.db.pool)
    .await
    .expect("audit");
    assert_eq!(
        rows,
        [
            (Some("198.51.100.9".into()), Some(direct_id)),
            (Some("203.0.113.10".into()), Some("proxy-id-1".into())),
        ]
    );
}

#[tokio::test]
async fn an_active_session_is_refreshed_on_the_way() {
    // Tokens are minted here with the API's own keys at chosen times, so no test waits for a
    // clock.
    let keys_dir = tempfile::tempdir().expect("dir");
    let keys_file = keys_dir.path().join("session-keys.json");
    let key = cadenza_identity::SessionKeyConfig::generate();
    {
        use secrecy::ExposeSecret;
        std::fs::write(
            &keys_file,
            json!([{"kid": key.kid, "private_key_pem": key.private_key_pem.expose_secret()}])
                .to_string(),
        )
        .expect("write keys");
    }
    let login = setup_with(
        "fay@example.com",
        json!({"session_token_ttl": "60s", "session_keys_file": keys_file}),
    )
    .await;
    let (code, state) = authorize(&login).await;
    let cookie = session_cookie(&callback(&login, &code, &state).await);
    let me = body(send(&login.router, "GET", "/api/v1/me", Some(&cookie)).await).await;
    let user = me["actor"]["id"].as_str().expect("user id").to_owned();

    let keys = cadenza_identity::SessionKeys::from_config(vec![key]).expect("keys");
    let lifetime = cadenza_identity::SessionLifetime {
        token_ttl: Duration::from_secs(60),
        max_lifetime: Duration::from_secs(12 * 3600),
    };
    let now = time::OffsetDateTime::now_utc();
    let minted = |issued_ago: u64| {
        let claims = cadenza_identity::SessionClaims::start(
            user.clone(),
            now - Duration::from_secs(issued_ago),
            &lifetime,
        );
        format!("cadenza_session={}", keys.issue(claims))
    };

    let fresh = send(&login.router, "GET", "/api/v1/me", Some(&minted(5))).await;
    assert_eq!(fresh.status(), StatusCode::OK);
    assert!(
        fresh.headers().get("set-cookie").is_none(),
        "a fresh token is not refreshed"
    );
    let halfway = minted(40);
    let later = send(&login.router, "GET", "/api/v1/me", Some(&halfway)).await;
    assert_eq!(later.status(), StatusCode::OK);
    let refreshed = session_cookie(&later);
    assert_ne!(refreshed, halfway);
    assert_eq!(
        send(&login.router, "GET", "/api/v1/me", Some(&refreshed))
            .await
            .status(),
        StatusCode::OK
    );
    // A token past its lifetime is refused.
    assert_eq!(
        send(&login.router, "GET", "/api/v1/me", Some(&minted(61)))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

/// An account an operator made before its owner ever signed in (bootstrap admin, `admin grant`).
async fn precreated_admin(login: &Login, email: &str) -> uuid::Uuid {
    let mut conn = login.db.pool.acquire().await.expect("conn");
    let user = cadenza_storage::users::ensure(&mut conn, email, Some("Administrator"))
        .await
        .expect("user");
    cadenza_storage::users::set_instance_admin(&mut conn, user.id, true)
        .await
        .expect("admin");
    user.id.as_uuid()
}

async fn linked_subject(login: &Login, user: uuid::Uuid) -> Option<String> {
    sqlx::query_scalar("select oidc_subject from users where id = $1")
        .bind(user)
        .fetch_one(&login.db.pool)
        .await
        .expect("user row")
}

#[tokio::test]
async fn an_unverified_email_never_claims_or_blocks_an_existing_account() {
    let login = setup("someone@example.com").await;
    let admin = precreated_admin(&login, "admin@localhost").await;
    // An attacker registers the admin's address at the provider and leaves it unverified.
    let mut attacker = FakeUser::new("attacker", "ADMIN@localhost");
    attacker.email_verified = false;
    login.provider.add_user(attacker);
    let refused = finish(&login, &start_login(&login, "/", Some("attacker")).await).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(refused.headers().get_all("set-cookie").iter().all(|value| {
        !value
            .to_str()
            .unwrap_or_default()
            .contains("cadenza_session=")
            || value.to_str().unwrap_or_default().contains("Max-Age=0")
    }));
    let problem = body(refused).await;
    assert_eq!(problem["code"], "login_refused");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("not verified"),
        "{problem}"
    );
    assert_eq!(
        linked_subject(&login, admin).await,
        None,
        "the admin stays unclaimed"
    );
    let refusals: Vec<Value> =
        sqlx::query_scalar("select diff from audit_log where action = 'login.refused' order by id")
            .fetch_all(&login.db.pool)
            .await
            .expect("audit");
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0]["email"], "ADMIN@localhost");

    // The real owner, verified, claims the account and is its instance admin.
    login
        .provider
        .add_user(FakeUser::new("real-admin", "admin@localhost"));
    let claimed = finish(&login, &start_login(&login, "/", Some("real-admin")).await).await;
    assert_eq!(claimed.status(), StatusCode::FOUND);
    let me = body(
        send(
            &login.router,
            "GET",
            "/api/v1/me",
            Some(&session_cookie(&claimed)),
        )
        .await,
    )
    .await;
    assert_eq!(me["actor"]["id"], admin.to_string());
    assert_eq!(me["instance_admin"], true);
    assert_eq!(
        linked_subject(&login, admin).await.as_deref(),
        Some("real-admin")
    );

    // Once linked, nobody else gets the address, verified or not.
    login
        .provider
        .add_user(FakeUser::new("second", "admin@localhost"));
    let taken = finish(&login, &start_login(&login, "/", Some("second")).await).await;
    assert_eq!(taken.status(), StatusCode::FORBIDDEN);
    assert_eq!(body(taken).await["code"], "login_refused");
}

#[tokio::test]
async fn an_unverified_first_login_does_not_block_the_real_owner_nor_take_invitations() {
    let login = setup("someone@example.com").await;
    let mut squatter = FakeUser::new("squatter", "victim@example.com");
    squatter.email_verified = false;
    login.provider.add_user(squatter);
    let first = finish(&login, &start_login(&login, "/", Some("squatter")).await).await;
    assert_eq!(
        first.status(),
        StatusCode::FOUND,
        "an unverified newcomer gets an account"
    );
    let squatter_cookie = session_cookie(&first);

    // An invitation to the address cannot be taken by the unverified account.
    let mut conn = login.db.pool.acquire().await.expect("conn");
    let org = cadenza_storage::orgs::create(&mut conn, &unique_name("v-"), "Victim's")
        .await
        .expect("org");
    let (_, invitation) = cadenza_storage::invitations::create(
        &mut conn,
        org.id,
        "victim@example.com",
        cadenza_domain::Role::Admin,
        time::OffsetDateTime::now_utc() + Duration::from_secs(3600),
        None,
    )
    .await
    .expect("invitation");
    let accept = |cookie: String, token: String| {
        let router = login.router.clone();
        async move {
            let request = Request::builder()
                .method("POST")
                .uri("/api/v1/invitations/accept")
                .header("cookie", cookie)
                .header("origin", ORIGIN)
                .header("content-type", "application/json")
                .body(Body::from(json!({"token": token}).to_string()))
                .expect("request");
            router.oneshot(request).await.expect("response").status()
        }
    };
    assert_eq!(
        accept(squatter_cookie, invitation.clone()).await,
        StatusCode::FORBIDDEN
    );

    // The verified owner signs in to an account of their own and takes the invitation.
    login
        .provider
        .add_user(FakeUser::new("owner", "victim@example.com"));
    let owner = finish(&login, &start_login(&login, "/", Some("owner")).await).await;
    assert_eq!(owner.status(), StatusCode::FOUND);
    assert_eq!(
        accept(session_cookie(&owner), invitation).await,
        StatusCode::OK
    );
    let accounts: i64 =
        sqlx::query_scalar("select count(*) from users where lower(email) = 'victim@example.com'")
            .fetch_one(&login.db.pool)
            .await
            .expect("count");
    assert_eq!(accounts, 2);
}

#[tokio::test]
async fn a_returning_users_stored_email_does_not_change_silently() {
    let login = setup("hal@example.com").await;
    let first = finish(&login, &start_login(&login, "/", None).await).await;
    assert_eq!(first.status(), StatusCode::FOUND);
    login
        .provider
        .add_user(FakeUser::new("user-1", "hal@elsewhere.example"));
    let again = finish(&login, &start_login(&login, "/", None).await).await;
    assert_eq!(again.status(), StatusCode::FOUND);
    let me = body(
        send(
            &login.router,
            "GET",
            "/api/v1/me",
            Some(&session_cookie(&again)),
        )
        .await,
    )
    .await;
    assert_eq!(me["actor"]["email"], "hal@example.com");
    let noted: Value = sqlx::query_scalar(
        "select diff from audit_log where action = 'login' order by id desc limit 1",
    )
    .fetch_one(&login.db.pool)
    .await
    .expect("audit");
    assert_eq!(noted["provider_email"], "hal@elsewhere.example");
}

#[tokio::test]
async fn a_callback_this_browser_did_not_start_is_refused() {
    let login = setup("ivy@example.com").await;
    // The attacker starts a login and completes it at the provider as themself...
    let attackers = start_login(&login, "/", None).await;
    // ...then sends the callback link to a victim, whose browser has no (or its own) login
    // cookie.
    let victim_own = start_login(&login, "/", None).await;
    for cookie in [None, Some(victim_own.login_cookie.as_str())] {
        let response = send(
            &login.router,
            "GET",
            &format!(
                "/api/v1/auth/callback?code={}&state={}",
                attackers.code, attackers.state
            ),
            cookie,
        )
        .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(
            response
                .headers()
                .get_all("set-cookie")
                .iter()
                .next()
                .is_none(),
            "no session for a login this browser did not start"
        );
        assert!(
            body(response).await["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("did not start"),
        );
    }
    // The attacker's pending login was not consumed by the refusals; in the browser that
    // started it, it still completes, once.
    assert_eq!(finish(&login, &attackers).await.status(), StatusCode::FOUND);
    assert_eq!(
        finish(&login, &attackers).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn post_login_redirects_stay_on_this_site() {
    let login = setup("jan@example.com").await;
    // (query value as sent, where the browser ends up)
    let cases = [
        ("%2Fruns%2F42%3Ftab%3Ddiff", "/runs/42?tab=diff"),
        ("%2F%09%2Fevil.example", "/"),
        ("%2F%5Cevil.example", "/"),
        ("%2F%09%5Cevil.example", "/"),
        ("%2F%2Fevil.example", "/"),
        ("https%3A%2F%2Fevil.example", "/"),
        ("%2F%0D%0ALocation%3A%20https%3A%2F%2Fevil", "/"),
        ("%2F%0A%2Fevil", "/"),
        ("%2F%00evil", "/"),
        ("%2F%7Fevil", "/"),
        ("evil.example", "/"),
        ("", "/"),
    ];
    for (raw, expected) in cases {
        let started = start_login(&login, raw, None).await;
        let done = finish(&login, &started).await;
        assert_eq!(done.status(), StatusCode::FOUND, "{raw}");
        assert_eq!(location(&done), expected, "redirect={raw}");
    }
}

#[tokio::test]
async fn hosted_cookies_are_host_prefixed_and_secure() {
    let login = setup_with("kim@example.com", json!({"dev_mode": false})).await;
    let start = send(&login.router, "GET", "/api/v1/auth/login", None).await;
    let login_cookie = start.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_owned();
    assert!(
        login_cookie.starts_with("__Host-cadenza_login="),
        "{login_cookie}"
    );
    assert!(login_cookie.contains("; Secure") && login_cookie.contains("Path=/"));
    assert!(!login_cookie.contains("Domain"));
    assert!(
        start.headers()["strict-transport-security"]
            .to_str()
            .expect("hsts")
            .contains("max-age=")
    );
    // A plain-named cookie (as a sibling subdomain could set) is not a session here.
    let started = start_login(&login, "/", None).await;
    let done = finish(&login, &started).await;
    let session = session_cookie(&done);
    assert!(session.starts_with("__Host-cadenza_session="), "{session}");
    let value = session.split_once('=').expect("pair").1;
    let plain = send(
        &login.router,
        "GET",
        "/api/v1/me",
        Some(&format!("cadenza_session={value}")),
    )
    .await;
    assert_eq!(plain.status(), StatusCode::UNAUTHORIZED);
    let hosted = send(&login.router, "GET", "/api/v1/me", Some(&session)).await;
    assert_eq!(hosted.status(), StatusCode::OK);
}

#[tokio::test]
async fn cookie_sessions_change_things_only_from_this_site() {
    let login = setup("lou@example.com").await;
    let (code, state) = authorize(&login).await;
    let cookie = session_cookie(&callback(&login, &code, &state).await);
    let create_org = |headers: Vec<(&'static str, &'static str)>, auth: Option<String>| {
        let router = login.router.clone();
        let cookie = cookie.clone();
        async move {
            let mut request = Request::builder()
                .method("POST")
                .uri("/api/v1/orgs")
                .header("content-type", "application/json");
            match auth {
                Some(token) => request = request.header("authorization", format!("Bearer {token}")),
                None => request = request.header("cookie", cookie),
            }
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let body = json!({"slug": unique_name("o-"), "name": "Org"}).to_string();
            let response = router
                .oneshot(request.body(Body::from(body)).expect("request"))
                .await
                .expect("response");
            response.status()
        }
    };
    assert_eq!(
        create_org(vec![("origin", ORIGIN)], None).await,
        StatusCode::CREATED
    );
    assert_eq!(
        create_org(vec![("sec-fetch-site", "same-origin")], None).await,
        StatusCode::CREATED
    );
    for refused in [
        vec![("origin", "https://evil.example")],
        vec![("origin", "null")],
        vec![("origin", "http://127.0.0.1:9999")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
        vec![],
    ] {
        assert_eq!(
            create_org(refused.clone(), None).await,
            StatusCode::FORBIDDEN,
            "{refused:?}"
        );
    }
    // Body-less unsafe requests too: logout from another site does nothing.
    let foreign_logout = send_with(
        &login.router,
        "POST",
        "/api/v1/auth/logout",
        Some(&cookie),
        &[("origin", "https://evil.example")],
        None,
    )
    .await;
    assert_eq!(foreign_logout.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        send(&login.router, "GET", "/api/v1/me", Some(&cookie))
            .await
            .status(),
        StatusCode::OK,
        "the session survived"
    );
    // Bearer tokens are not a browser's ambient credential: no origin needed.
    let mut conn = login.db.pool.acquire().await.expect("conn");
    let (_, token) = cadenza_testkit::fixtures::user_with_token(
        &mut conn,
        "bearer@example.com",
        &[],
        false,
        None,
    )
    .await
    .expect("token");
    assert_eq!(
        create_org(vec![("origin", "https://evil.example")], Some(token)).await,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn provider_errors_are_stored_bounded() {
    let login = setup("mo@example.com").await;
    let flood = "x".repeat(10_000);
    let response = send(
        &login.router,
        "GET",
        &format!("/api/v1/auth/callback?error=access_denied&error_description={flood}"),
        None,
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let stored: Value =
        sqlx::query_scalar("select diff from audit_log where action = 'login.failed'")
            .fetch_one(&login.db.pool)
            .await
            .expect("audit");
    let reason = stored["reason"].as_str().expect("reason");
    assert!(reason.len() < 600, "{} bytes stored", reason.len());
}

fn test_kek_spec() -> String {
    use secrecy::ExposeSecret;
    let (id, key) = cadenza_crypto::KeyRing::generate_key().expect("kek");
    format!("{id}:{}", key.expose_secret())
}
