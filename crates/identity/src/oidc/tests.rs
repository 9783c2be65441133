//! Provider behaviour the fake provider does not cover: other signature algorithms, key
//! rotation, hostile input, broken endpoints. A minimal provider runs in-process.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{EncodingKey, Header};
use rand::RngCore as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::*;
use crate::ErrorKind;

const CLIENT_ID: &str = "cadenza";
const NONCE: &str = "nonce-123";

/// A signing key with its public JWK.
struct TestKey {
    algorithm: jsonwebtoken::Algorithm,
    encoding_key: EncodingKey,
    jwk: Value,
}

impl TestKey {
    fn ed25519(kid: &str) -> Self {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        Self {
            algorithm: jsonwebtoken::Algorithm::EdDSA,
            encoding_key: EncodingKey::from_ed_der(key.to_pkcs8_der().unwrap().as_bytes()),
            jwk: json!({
                "kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig",
                "x": jwt::base64url(&key.verifying_key().to_bytes()),
            }),
        }
    }

    fn p256(kid: &str) -> Self {
        use p256::pkcs8::EncodePrivateKey as _;
        let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let point = key.verifying_key().to_encoded_point(false);
        Self {
            algorithm: jsonwebtoken::Algorithm::ES256,
            encoding_key: EncodingKey::from_ec_der(key.to_pkcs8_der().unwrap().as_bytes()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
                "x": jwt::base64url(point.x().unwrap()),
                "y": jwt::base64url(point.y().unwrap()),
            }),
        }
    }

    fn kid(&self) -> &str {
        self.jwk["kid"].as_str().unwrap()
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.kid(), claims)
    }

    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding_key).unwrap()
    }
}

#[derive(Clone)]
struct Idp {
    discovery: Arc<Mutex<Value>>,
    jwks: Arc<Mutex<Value>>,
    jwks_fetches: Arc<AtomicUsize>,
    token_response: Arc<Mutex<(StatusCode, &'static str, String)>>,
}

/// A provider with a discovery document and JWKS, on a random local port.
struct TestIdp {
    issuer: String,
    state: Idp,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TestIdp {
    async fn start(keys: &[&TestKey]) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let state = Idp {
            discovery: Arc::new(Mutex::new(json!({
                "issuer": issuer,
                "authorization_endpoint": format!("{issuer}/authorize"),
                "token_endpoint": format!("{issuer}/token"),
                "jwks_uri": format!("{issuer}/jwks"),
                "code_challenge_methods_supported": ["S256"],
            }))),
            jwks: Arc::new(Mutex::new(Value::Null)),
            jwks_fetches: Arc::new(AtomicUsize::new(0)),
            token_response: Arc::new(Mutex::new((
                StatusCode::OK,
                "application/json",
                "{}".into(),
            ))),
        };
        let idp = Self {
            issuer,
            server: tokio::spawn({
                let router = Router::new()
                    .route("/.well-known/openid-configuration", get(discovery_document))
                    .route("/jwks", get(key_set))
                    .route("/token", post(token_endpoint))
                    .with_state(state.clone());
                async move {
                    axum::serve(listener, router).await.unwrap();
                }
            }),
            state,
        };
        idp.publish(keys);
        idp
    }

    fn publish(&self, keys: &[&TestKey]) {
        let jwks: Vec<&Value> = keys.iter().map(|key| &key.jwk).collect();
        *self.state.jwks.lock().unwrap() = json!({ "keys": jwks });
    }

    fn edit_discovery(&self, edit: impl FnOnce(&mut Value)) {
        edit(&mut self.state.discovery.lock().unwrap());
    }

    fn answer_token_requests_with(
        &self,
        status: StatusCode,
        content_type: &'static str,
        body: &str,
    ) {
        *self.state.token_response.lock().unwrap() = (status, content_type, body.to_owned());
    }

    fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    fn config(&self) -> OidcConfig {
        OidcConfig::new(
            Url::parse(&self.issuer).unwrap(),
            CLIENT_ID,
            SecretString::from("client-secret-value"),
            Url::parse("http://127.0.0.1:9/api/v1/auth/callback").unwrap(),
        )
    }

    async fn discover(&self) -> Result<OidcProvider> {
        OidcProvider::discover(self.config(), http_client()).await
    }

    fn claims(&self) -> Value {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        json!({
            "iss": self.issuer, "sub": "user-1", "aud": CLIENT_ID,
            "iat": now, "exp": now + 300, "nonce": NONCE,
        })
    }
}

async fn discovery_document(State(idp): State<Idp>) -> Response {
    axum::Json(idp.discovery.lock().unwrap().clone()).into_response()
}

async fn key_set(State(idp): State<Idp>) -> Response {
    idp.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    axum::Json(idp.jwks.lock().unwrap().clone()).into_response()
}

async fn token_endpoint(State(idp): State<Idp>) -> Response {
    let (status, content_type, body) = idp.token_response.lock().unwrap().clone();
    (
        status,
        [(axum::http::header::CONTENT_TYPE, content_type)],
        body,
    )
        .into_response()
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn with_min_refresh_interval(mut provider: OidcProvider, interval: Duration) -> OidcProvider {
    Arc::get_mut(&mut provider.inner)
        .expect("a freshly discovered provider is not shared yet")
        .keys
        .set_min_refresh_interval(interval);
    provider
}

#[tokio::test]
async fn eddsa_and_es256_id_tokens_verify() {
    let ed = TestKey::ed25519("ed");
    let ec = TestKey::p256("ec");
    let idp = TestIdp::start(&[&ed, &ec]).await;
    let provider = idp.discover().await.unwrap();
    for key in [&ed, &ec] {
        let identity = provider
            .verify_id_token(&key.sign(&idp.claims()), NONCE)
            .await
            .unwrap();
        assert_eq!(identity.subject, "user-1");
        assert_eq!(identity.issuer, idp.issuer);
    }
}

#[tokio::test]
async fn a_known_kid_with_a_signature_from_another_key_is_a_bad_signature() {
    let genuine = TestKey::ed25519("k1");
    let impostor = TestKey::ed25519("k1");
    let idp = TestIdp::start(&[&genuine]).await;
    let provider = idp.discover().await.unwrap();
    assert!(matches!(
        provider
            .verify_id_token(&impostor.sign(&idp.claims()), NONCE)
            .await,
        Err(Error::BadSignature)
    ));
}

#[tokio::test]
async fn an_hmac_token_keyed_with_the_public_key_is_refused() {
    let key = TestKey::ed25519("k1");
    let idp = TestIdp::start(&[&key]).await;
    let provider = idp.discover().await.unwrap();
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("k1".into());
    let public_key = key.jwk["x"].as_str().unwrap().as_bytes();
    let forged = jsonwebtoken::encode(
        &header,
        &idp.claims(),
        &EncodingKey::from_secret(public_key),
    )
    .unwrap();
    assert!(matches!(
        provider.verify_id_token(&forged, NONCE).await,
        Err(Error::UnsupportedAlgorithm { .. })
    ));
}

#[tokio::test]
async fn a_token_claiming_another_algorithm_than_its_key_is_a_bad_signature() {
    let ed = TestKey::ed25519("ed");
    let ec = TestKey::p256("ec");
    let idp = TestIdp::start(&[&ed, &ec]).await;
    let provider = idp.discover().await.unwrap();
    // Signed ES256 but naming the Ed25519 key.
    assert!(matches!(
        provider
            .verify_id_token(&ec.sign_as("ed", &idp.claims()), NONCE)
            .await,
        Err(Error::BadSignature)
    ));
}

#[tokio::test]
async fn a_rotated_provider_key_is_fetched_on_first_sight() {
    let old = TestKey::ed25519("old");
    let new = TestKey::p256("new");
    let idp = TestIdp::start(&[&old]).await;
    let provider = with_min_refresh_interval(idp.discover().await.unwrap(), Duration::ZERO);
    assert_eq!(idp.jwks_fetches(), 1);

    idp.publish(&[&old, &new]);
    let identity = provider
        .verify_id_token(&new.sign(&idp.claims()), NONCE)
        .await
        .unwrap();
    assert_eq!(identity.subject, "user-1");
    assert_eq!(idp.jwks_fetches(), 2);

    // Known keys are served from the cache.
    provider
        .verify_id_token(&old.sign(&idp.claims()), NONCE)
        .await
        .unwrap();
    assert_eq!(idp.jwks_fetches(), 2);
}

#[tokio::test]
async fn unknown_kids_cannot_make_us_hammer_the_provider() {
    let key = TestKey::ed25519("k1");
    let idp = TestIdp::start(&[&key]).await;
    let provider = idp.discover().await.unwrap();
    for attempt in 0..20 {
        let token = key.sign_as(&format!("forged-{attempt}"), &idp.claims());
        assert!(matches!(
            provider.verify_id_token(&token, NONCE).await,
            Err(Error::UnknownKey { kid: Some(_) })
        ));
    }
    // Only the fetch made at discovery: every refresh fell within the interval.
    assert_eq!(idp.jwks_fetches(), 1);
}

#[tokio::test]
async fn concurrent_unknown_kids_cause_a_single_fetch() {
    let key = TestKey::ed25519("k1");
    let idp = TestIdp::start(&[&key]).await;
    let provider = idp.discover().await.unwrap();
    provider
        .inner
        .keys
        .backdate_last_attempt(jwks::MIN_REFRESH_INTERVAL);
    let token = key.sign_as("forged", &idp.claims());
    let verifications: Vec<_> = (0..8)
        .map(|_| {
            let provider = provider.clone();
            let token = token.clone();
            tokio::spawn(async move { provider.verify_id_token(&token, NONCE).await })
        })
        .collect();
    for verification in verifications {
        assert!(matches!(
            verification.await.unwrap(),
            Err(Error::UnknownKey { .. })
        ));
    }
    // One fetch at discovery, one for the whole burst.
    assert_eq!(idp.jwks_fetches(), 2);
}

#[tokio::test]
async fn hostile_id_tokens_are_errors_not_panics() {
    let key = TestKey::ed25519("k1");
    let idp = TestIdp::start(&[&key]).await;
    let provider = idp.discover().await.unwrap();
    let genuine = key.sign(&idp.claims());
    let (header, rest) = genuine.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let header_of = |value: Value| jwt::base64url(value.to_string().as_bytes());
    let hostile = [
        String::new(),
        "a.b.c".into(),
        format!("{header}.{payload}"),
        format!("{header}.{payload}.{signature}.extra"),
        format!("{header}.{payload}."),
        format!("{header}..{signature}"),
        format!("{header}.{payload}.%%%"),
        format!("{header}.{}.{signature}", jwt::base64url(b"[1,2,3]")),
        format!("{header}.{}.{signature}", jwt::base64url(b"\xff\xfe")),
        format!(
            "{}.{payload}.{signature}",
            header_of(json!({"alg": "EdDSA", "kid": 7}))
        ),
        format!(
            "{}.{payload}.{signature}",
            header_of(json!({"alg": "ES256", "kid": "k1"}))
        ),
        format!(
            "{}.{payload}.{signature}",
            header_of(json!({"alg": "RS256"}))
        ),
        format!(
            "{}.{payload}.{signature}",
            header_of(json!("just a string"))
        ),
        format!("{header}.{payload}.{}", jwt::base64url(&[0; 3])),
        format!("{header}.{payload}.{}", jwt::base64url(&[0; 4096])),
        format!("{header}.{}.{signature}", "A".repeat(100_000)),
    ];
    for token in hostile {
        let result = provider.verify_id_token(&token, NONCE).await;
        assert!(result.is_err(), "{token:.80}");
    }
    assert!(matches!(
        provider.verify_id_token(&genuine, "").await,
        Err(Error::NonceMismatch)
    ));
}

#[tokio::test]
async fn discovery_refuses_a_document_for_another_issuer() {
    let key = TestKey::ed25519("k1");
    let idp = TestIdp::start(&[&key]).await;
    idp.edit_discovery(|document| document["issuer"] = json!("https://accounts.example.com"));
    assert!(matches!(
        idp.discover().await,
        Err(Error::DiscoveryIssuerMismatch { advertised, .. }) if advertised == "https://accounts.example.com"
    ));
}

#[tokio::test]
async fn discovery_requires_pkce_s256_and_a_usable_client_authentication() {
    let key = TestKey::ed25519("k1");
    let idp = TestIdp::start(&[&key]).await;
    idp.edit_discovery(|document| document["code_challenge_methods_supported"] = json!(["plain"]));
    assert!(matches!(idp.discover().await, Err(Error::Discovery { .. })));

    idp.edit_discovery(|document| {
        document["code_challenge_methods_supported"] = json!(["S256"]);
        document["token_endpoint_auth_methods_supported"] = json!(["private_key_jwt"]);
    });
    assert!(matches!(idp.discover().await, Err(Error::Discovery { .. })));
}

#[tokio::test]
async fn discovery_fails_cleanly_when_the_key_set_is_unusable_or_the_provider_is_down() {
    let idp = TestIdp::start(&[]).await;
    assert!(matches!(idp.discover().await, Err(Error::Discovery { .. })));

    let closed = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let mut config = idp.config();
    config.issuer = Url::parse(&format!("http://{address}")).unwrap();
    let error = OidcProvider::discover(config, http_client())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Discovery { .. }));
    assert_eq!(error.kind(), ErrorKind::ProviderUnavailable);
}

#[tokio::test]
async fn a_broken_token_endpoint_is_a_provider_failure_not_a_rejected_login() {
    let key = TestKey::ed25519("k1");
    let idp = TestIdp::start(&[&key]).await;
    let provider = idp.discover().await.unwrap();
    let complete = || provider.complete_login("code", SecretString::from("verifier"), NONCE);

    idp.answer_token_requests_with(
        StatusCode::BAD_GATEWAY,
        "text/html",
        "<html>upstream down</html>",
    );
    assert!(matches!(complete().await, Err(Error::TokenEndpoint { .. })));

    idp.answer_token_requests_with(
        StatusCode::OK,
        "application/json",
        r#"{"access_token":"at","token_type":"Bearer"}"#,
    );
    assert!(matches!(complete().await, Err(Error::MissingIdToken)));

    idp.answer_token_requests_with(
        StatusCode::UNAUTHORIZED,
        "application/json",
        r#"{"error":"invalid_client","error_description":"bad secret"}"#,
    );
    let error = complete().await.unwrap_err();
    assert!(
        matches!(&error, Error::TokenExchangeRejected { error, description }
        if error == "invalid_client" && description.as_deref() == Some("bad secret"))
    );
    assert_eq!(error.kind(), ErrorKind::Misconfigured);

    let huge = format!(
        r#"{{"access_token":"{}","token_type":"Bearer"}}"#,
        "a".repeat(2 << 20)
    );
    idp.answer_token_requests_with(StatusCode::OK, "application/json", &huge);
    assert!(matches!(complete().await, Err(Error::TokenEndpoint { .. })));
}

#[tokio::test]
async fn begin_login_asks_for_a_code_with_pkce_s256_state_and_nonce() {
    let key = TestKey::ed25519("k1");
    let idp = TestIdp::start(&[&key]).await;
    let provider = idp.discover().await.unwrap();
    let login = provider.begin_login();
    let query: std::collections::HashMap<String, String> =
        login.authorize_url.query_pairs().into_owned().collect();
    assert!(
        login
            .authorize_url
            .as_str()
            .starts_with(&format!("{}/authorize?", idp.issuer))
    );
    assert_eq!(query["response_type"], "code");
    assert_eq!(query["client_id"], CLIENT_ID);
    assert_eq!(
        query["redirect_uri"],
        "http://127.0.0.1:9/api/v1/auth/callback"
    );
    assert_eq!(query["scope"], "openid email profile");
    assert_eq!(query["state"], login.state);
    assert_eq!(query["nonce"], login.nonce);
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(
        query["code_challenge"],
        jwt::base64url(&Sha256::digest(
            login.pkce_verifier.expose_secret().as_bytes()
        ))
    );
    assert!(!query.contains_key("client_secret"));

    let again = provider.begin_login();
    assert_ne!(again.state, login.state);
    assert_ne!(again.nonce, login.nonce);
    assert_ne!(
        again.pkce_verifier.expose_secret(),
        login.pkce_verifier.expose_secret()
    );
    assert!(login.state.len() >= 22 && login.nonce.len() >= 22);
}

#[tokio::test]
async fn the_client_secret_never_appears_in_debug_output() {
    let key = TestKey::ed25519("k1");
    let idp = TestIdp::start(&[&key]).await;
    let provider = idp.discover().await.unwrap();
    let login = provider.begin_login();
    for debug in [
        format!("{provider:?}"),
        format!("{:?}", idp.config()),
        format!("{login:?}"),
    ] {
        assert!(!debug.contains("client-secret-value"), "{debug}");
        assert!(
            !debug.contains(login.pkce_verifier.expose_secret()),
            "{debug}"
        );
    }
}

#[test]
fn login_futures_can_be_spawned_on_a_multithreaded_runtime() {
    fn assert_send<T: Send + 'static>(_: T) {}
    fn check(provider: OidcProvider) {
        assert_send(async move {
            let login = provider.begin_login();
            provider
                .complete_login("code", login.pkce_verifier, &login.nonce)
                .await
        });
    }
    // Compiling `check` is the test.
    let _ = check;
}

#[test]
fn the_discovery_url_keeps_the_issuer_path() {
    let url = |issuer: &str| {
        discovery_url(&Url::parse(issuer).unwrap())
            .unwrap()
            .to_string()
    };
    assert_eq!(
        url("https://accounts.google.com"),
        "https://accounts.google.com/.well-known/openid-configuration"
    );
    assert_eq!(
        url("https://sso.example.com/realms/acme"),
        "https://sso.example.com/realms/acme/.well-known/openid-configuration"
    );
    assert_eq!(
        url("https://sso.example.com/realms/acme/"),
        "https://sso.example.com/realms/acme/.well-known/openid-configuration"
    );
}

#[test]
fn client_authentication_prefers_basic_and_falls_back_to_post() {
    let methods =
        |methods: &[&str]| -> Vec<String> { methods.iter().map(|m| m.to_string()).collect() };
    assert!(matches!(client_auth_type(None), Ok(AuthType::BasicAuth)));
    assert!(matches!(
        client_auth_type(Some(&methods(&[
            "client_secret_post",
            "client_secret_basic"
        ]))),
        Ok(AuthType::BasicAuth)
    ));
    assert!(matches!(
        client_auth_type(Some(&methods(&["client_secret_post"]))),
        Ok(AuthType::RequestBody)
    ));
    assert!(client_auth_type(Some(&methods(&["private_key_jwt"]))).is_err());
}

#[test]
fn configuration_mistakes_name_the_setting() {
    let config = || {
        OidcConfig::new(
            Url::parse("https://idp.example.com").unwrap(),
            CLIENT_ID,
            SecretString::from("s"),
            Url::parse("https://cadenza.example.com/api/v1/auth/callback").unwrap(),
        )
    };
    assert!(config().validate().is_ok());
    let setting_of = |config: OidcConfig| match config.validate() {
        Err(Error::InvalidConfig { setting, .. }) => setting,
        other => panic!("expected InvalidConfig, got {other:?}"),
    };
    assert_eq!(
        setting_of(OidcConfig {
            scopes: vec!["email".into()],
            ..config()
        }),
        "scopes"
    );
    assert_eq!(
        setting_of(OidcConfig {
            scopes: vec!["openid email".into()],
            ..config()
        }),
        "scopes"
    );
    assert_eq!(
        setting_of(OidcConfig {
            client_id: String::new(),
            ..config()
        }),
        "client_id"
    );
    assert_eq!(
        setting_of(OidcConfig {
            issuer: Url::parse("https://idp.example.com/?tenant=1").unwrap(),
            ..config()
        }),
        "issuer"
    );
}

#[test]
fn the_config_deserialises_with_default_scopes() {
    let config: OidcConfig = serde_json::from_value(json!({
        "issuer": "https://accounts.google.com",
        "client_id": "1234.apps.googleusercontent.com",
        "client_secret": "GOCSPX-secret",
        "redirect_url": "https://cadenza.example.com/api/v1/auth/callback",
    }))
    .unwrap();
    assert_eq!(config.scopes, ["openid", "email", "profile"]);
}
