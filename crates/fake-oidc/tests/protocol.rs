//! The fake speaks OpenID Connect the way real providers do, over real HTTP.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cadenza_fake_oidc::{
    ClientAuthMethod, FakeClient, FakeOidcConfig, FakeUser, IdTokenTamper, RunningFakeOidc, spawn,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use url::Url;

const CLIENT_ID: &str = "cadenza";
const CLIENT_SECRET: &str = "s3cret:with&odd=chars";
const REDIRECT_URI: &str = "http://127.0.0.1:9/api/v1/auth/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

fn config() -> FakeOidcConfig {
    let mut config = FakeOidcConfig::new(
        FakeClient::new(CLIENT_ID, CLIENT_SECRET, REDIRECT_URI),
        FakeUser::new("user-1", "ada@example.com").with_name("Ada Lovelace"),
    );
    let mut grace = FakeUser::new("user-2", "grace@example.com");
    grace
        .extra_claims
        .insert("groups".into(), json!(["admins"]));
    // A profile claim must not be able to masquerade as a standard one.
    grace
        .extra_claims
        .insert("sub".into(), json!("someone-else"));
    config.users.push(grace);
    config
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn authorize_url(provider: &RunningFakeOidc, extra: &[(&str, &str)]) -> Url {
    let mut url = Url::parse(&format!("{}/authorize", issuer(provider))).unwrap();
    let challenge = challenge(VERIFIER);
    let mut params: HashMap<&str, &str> = HashMap::from([
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT_URI),
        ("scope", "openid email profile"),
        ("state", "st-123"),
        ("nonce", "n-456"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ]);
    for (name, value) in extra {
        if value.is_empty() {
            params.remove(name);
        } else {
            params.insert(name, value);
        }
    }
    url.query_pairs_mut().extend_pairs(params);
    url
}

fn issuer(provider: &RunningFakeOidc) -> String {
    provider.issuer().as_str().trim_end_matches('/').to_owned()
}

/// Follows `/authorize` like a browser and returns the callback's query parameters.
async fn callback_params(url: Url) -> HashMap<String, String> {
    let response = http().get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = response.headers()["location"].to_str().unwrap();
    let location = Url::parse(location).unwrap();
    assert!(location.as_str().starts_with(REDIRECT_URI), "{location}");
    location.query_pairs().into_owned().collect()
}

async fn code_for(provider: &RunningFakeOidc, extra: &[(&str, &str)]) -> String {
    let params = callback_params(authorize_url(provider, extra)).await;
    assert_eq!(params["state"], "st-123");
    params["code"].clone()
}

async fn exchange(
    provider: &RunningFakeOidc,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (StatusCode, Value) {
    let mut request = http()
        .post(format!("{}/token", issuer(provider)))
        .form(form);
    if let Some((id, secret)) = basic {
        let encode =
            |text: &str| url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
        request = request.basic_auth(encode(id), Some(encode(secret)));
    }
    let response = request.send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn exchange_code(provider: &RunningFakeOidc, code: &str) -> (StatusCode, Value) {
    exchange(
        provider,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", VERIFIER),
        ],
        Some((CLIENT_ID, CLIENT_SECRET)),
    )
    .await
}

async fn jwks(provider: &RunningFakeOidc) -> Value {
    http()
        .get(format!("{}/jwks", issuer(provider)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn unverified_parts(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut decode = || -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap()
    };
    (decode(), decode())
}

async fn verify(provider: &RunningFakeOidc, token: &str) -> jsonwebtoken::errors::Result<Value> {
    let jwks = jwks(provider).await;
    let key = &jwks["keys"][0];
    let decoding_key =
        DecodingKey::from_rsa_components(key["n"].as_str().unwrap(), key["e"].as_str().unwrap())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[CLIENT_ID]);
    validation.set_issuer(&[issuer(provider)]);
    jsonwebtoken::decode::<Value>(token, &decoding_key, &validation).map(|data| data.claims)
}

async fn login(provider: &RunningFakeOidc, extra: &[(&str, &str)]) -> Value {
    let code = code_for(provider, extra).await;
    let (status, body) = exchange_code(provider, &code).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn discovery_names_the_issuer_and_endpoints_under_it() {
    let provider = spawn(config()).await.unwrap();
    let issuer = issuer(&provider);
    let document: Value = http()
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["issuer"], issuer);
    assert_eq!(
        document["authorization_endpoint"],
        format!("{issuer}/authorize")
    );
    assert_eq!(document["token_endpoint"], format!("{issuer}/token"));
    assert_eq!(document["jwks_uri"], format!("{issuer}/jwks"));
    assert_eq!(
        document["code_challenge_methods_supported"],
        json!(["S256"])
    );
    assert_eq!(
        document["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );

    let keys = jwks(&provider).await;
    assert_eq!(keys["keys"][0]["kty"], "RSA");
    assert_eq!(keys["keys"][0]["alg"], "RS256");
    assert_eq!(keys["keys"][0]["kid"], provider.signing_kid());
    assert!(keys["keys"][0].get("d").is_none());
}

#[tokio::test]
async fn the_code_flow_yields_a_signed_id_token_and_userinfo() {
    let provider = spawn(config()).await.unwrap();
    let tokens = login(&provider, &[]).await;
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens["expires_in"].as_u64().unwrap() > 0);

    let id_token = tokens["id_token"].as_str().unwrap();
    let claims = verify(&provider, id_token).await.unwrap();
    assert_eq!(claims["sub"], "user-1");
    assert_eq!(claims["nonce"], "n-456");
    assert_eq!(claims["email"], "ada@example.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["name"], "Ada Lovelace");
    assert_eq!(claims["azp"], CLIENT_ID);
    let access_token = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        claims["at_hash"],
        URL_SAFE_NO_PAD.encode(&Sha256::digest(access_token.as_bytes())[..16])
    );
    let (header, _) = unverified_parts(id_token);
    assert_eq!(header["kid"], provider.signing_kid());

    let userinfo = http()
        .get(format!("{}/userinfo", issuer(&provider)))
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(userinfo.status(), StatusCode::OK);
    let userinfo: Value = userinfo.json().await.unwrap();
    assert_eq!(userinfo["sub"], "user-1");
    assert_eq!(userinfo["email"], "ada@example.com");

    let anonymous = http()
        .get(format!("{}/userinfo", issuer(&provider)))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn login_hint_picks_the_user_and_scopes_limit_the_claims() {
    let provider = spawn(config()).await.unwrap();
    let tokens = login(
        &provider,
        &[("login_hint", "grace@example.com"), ("scope", "openid")],
    )
    .await;
    let claims = verify(&provider, tokens["id_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(claims["sub"], "user-2");
    assert_eq!(claims["groups"], json!(["admins"]));
    assert!(claims.get("email").is_none());

    let params = callback_params(authorize_url(&provider, &[("login_hint", "nobody")])).await;
    assert_eq!(params["error"], "access_denied");
    assert_eq!(params["state"], "st-123");
}

#[tokio::test]
async fn a_code_works_once_and_its_replay_revokes_the_access_token() {
    let provider = spawn(config()).await.unwrap();
    let code = code_for(&provider, &[]).await;
    let (status, tokens) = exchange_code(&provider, &code).await;
    assert_eq!(status, StatusCode::OK);

    let (status, error) = exchange_code(&provider, &code).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"], "invalid_grant");

    let userinfo = http()
        .get(format!("{}/userinfo", issuer(&provider)))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(userinfo.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_token_endpoint_checks_pkce_and_the_redirect_uri() {
    let provider = spawn(config()).await.unwrap();
    let wrong_verifier = "x".repeat(43);
    for (name, value) in [
        ("code_verifier", wrong_verifier.as_str()),
        ("code_verifier", ""),
        ("redirect_uri", "http://127.0.0.1:9/elsewhere"),
    ] {
        let code = code_for(&provider, &[]).await;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", VERIFIER),
        ];
        form.retain(|(key, _)| *key != name);
        if !value.is_empty() {
            form.push((name, value));
        }
        let (status, error) = exchange(&provider, &form, Some((CLIENT_ID, CLIENT_SECRET))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}={value}");
        assert_eq!(error["error"], "invalid_grant", "{name}={value}");
    }
}

fn code_form(code: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT_URI),
        ("code_verifier", VERIFIER),
    ]
}

#[tokio::test]
async fn client_authentication_accepts_basic_and_post_as_configured() {
    let provider = spawn(config()).await.unwrap();

    let code = code_for(&provider, &[]).await;
    let mut post = code_form(&code);
    post.extend([("client_id", CLIENT_ID), ("client_secret", CLIENT_SECRET)]);
    let (status, _) = exchange(&provider, &post, None).await;
    assert_eq!(status, StatusCode::OK);

    let code = code_for(&provider, &[]).await;
    let (status, error) = exchange(&provider, &code_form(&code), Some((CLIENT_ID, "wrong"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error["error"], "invalid_client");
    // A failed client authentication does not use up the code.
    let (status, _) = exchange_code(&provider, &code).await;
    assert_eq!(status, StatusCode::OK);

    let code = code_for(&provider, &[]).await;
    let (status, error) = exchange(&provider, &code_form(&code), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error["error"], "invalid_client");

    let post_only = spawn(FakeOidcConfig {
        token_endpoint_auth_methods: vec![ClientAuthMethod::ClientSecretPost],
        ..config()
    })
    .await
    .unwrap();
    let code = code_for(&post_only, &[]).await;
    let (status, error) = exchange_code(&post_only, &code).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error["error"], "invalid_client");
}

#[tokio::test]
async fn authorize_refuses_unknown_clients_and_redirect_uris_without_redirecting() {
    let provider = spawn(config()).await.unwrap();
    for extra in [
        [("client_id", "intruder")],
        [("redirect_uri", "https://attacker.example/callback")],
        [("redirect_uri", "http://127.0.0.1:9/api/v1/auth/callback/")],
    ] {
        let response = http()
            .get(authorize_url(&provider, &extra))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{extra:?}");
        assert!(response.headers().get("location").is_none());
    }
}

#[tokio::test]
async fn authorize_redirects_protocol_errors_back_with_the_state() {
    let provider = spawn(config()).await.unwrap();
    for (extra, expected) in [
        (vec![("code_challenge", "")], "invalid_request"),
        (vec![("code_challenge_method", "plain")], "invalid_request"),
        (
            vec![("response_type", "token")],
            "unsupported_response_type",
        ),
        (vec![("scope", "email")], "invalid_scope"),
    ] {
        let params = callback_params(authorize_url(&provider, &extra)).await;
        assert_eq!(params["error"], expected, "{extra:?}");
        assert_eq!(params["state"], "st-123");
        assert!(!params.contains_key("code"));
    }
}

#[tokio::test]
async fn tampering_spoils_exactly_what_it_says() {
    let provider = spawn(config()).await.unwrap();
    let id_token_claims = |tokens: &Value| unverified_parts(tokens["id_token"].as_str().unwrap());

    provider.set_tamper(IdTokenTamper {
        wrong_audience: Some("someone-else".into()),
        nonce_override: Some("other-nonce".into()),
        issuer_override: Some("https://impostor.example".into()),
        ..IdTokenTamper::default()
    });
    let (_, claims) = id_token_claims(&login(&provider, &[]).await);
    assert_eq!(claims["aud"], "someone-else");
    assert_eq!(claims["nonce"], "other-nonce");
    assert_eq!(claims["iss"], "https://impostor.example");

    provider.set_tamper(IdTokenTamper {
        expired: true,
        ..IdTokenTamper::default()
    });
    let tokens = login(&provider, &[]).await;
    let (_, claims) = id_token_claims(&tokens);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(claims["exp"].as_i64().unwrap() < now - 600);
    assert!(
        claims["iat"].as_i64().unwrap() < claims["exp"].as_i64().unwrap(),
        "{claims}"
    );

    provider.set_tamper(IdTokenTamper {
        bad_signature: true,
        ..IdTokenTamper::default()
    });
    let tokens = login(&provider, &[]).await;
    let error = verify(&provider, tokens["id_token"].as_str().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        error.kind(),
        &jsonwebtoken::errors::ErrorKind::InvalidSignature
    );

    provider.set_tamper(IdTokenTamper {
        unknown_kid: true,
        ..IdTokenTamper::default()
    });
    let tokens = login(&provider, &[]).await;
    let (header, _) = id_token_claims(&tokens);
    assert_ne!(header["kid"], provider.signing_kid());
    // Only the kid is wrong: the signature itself is genuine.
    assert!(
        verify(&provider, tokens["id_token"].as_str().unwrap())
            .await
            .is_ok()
    );

    provider.set_tamper(IdTokenTamper::default());
    assert!(provider.set_user_tamper(
        "user-2",
        Some(IdTokenTamper {
            wrong_audience: Some("per-user".into()),
            ..IdTokenTamper::default()
        })
    ));
    let (_, ada) = id_token_claims(&login(&provider, &[]).await);
    assert_eq!(ada["aud"], CLIENT_ID);
    let (_, grace) = id_token_claims(&login(&provider, &[("login_hint", "user-2")]).await);
    assert_eq!(grace["aud"], "per-user");
    assert_eq!(grace["sub"], "user-2");
}

#[tokio::test]
async fn users_and_clients_can_be_added_while_running() {
    let provider = spawn(FakeOidcConfig::default()).await.unwrap();
    let unknown_client = http()
        .get(authorize_url(&provider, &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_client.status(), StatusCode::BAD_REQUEST);

    provider.add_client(FakeClient::new(CLIENT_ID, CLIENT_SECRET, REDIRECT_URI));
    provider.add_user(FakeUser::new("late", "late@example.com"));
    let claims = verify(
        &provider,
        login(&provider, &[]).await["id_token"].as_str().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(claims["sub"], "late");
}

#[tokio::test]
async fn an_issuer_with_a_path_serves_everything_under_that_path() {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    let issuer = format!("http://{address}/realms/acme");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(cadenza_fake_oidc::serve(
        listener,
        FakeOidcConfig {
            issuer: Some(Url::parse(&issuer).unwrap()),
            ..config()
        },
        shutdown.clone(),
    ));
    let get = |path: &str| http().get(format!("{issuer}{path}")).send();
    // `serve` answers once the process's signing key exists, which the first fake of a
    // process has to generate (seconds in a debug build).
    let document: Value = reqwest::Client::new()
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["issuer"], issuer);
    assert_eq!(document["jwks_uri"], format!("{issuer}/jwks"));
    assert_eq!(get("/jwks").await.unwrap().status(), StatusCode::OK);
    let root = http()
        .get(format!("http://{address}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap();
    assert_eq!(root.status(), StatusCode::NOT_FOUND);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops when cancelled")
        .unwrap()
        .unwrap();
}
