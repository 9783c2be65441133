//! The browser login against a real (fake) OpenID Connect provider over HTTP: the happy path
//! and every rejection a relying party must make.

use std::time::Duration;

use cadenza_fake_oidc::{
    ClientAuthMethod, FakeClient, FakeOidcConfig, FakeUser, IdTokenTamper, RunningFakeOidc, spawn,
};
use cadenza_identity::{Error, ErrorKind, LoginStart, OidcConfig, OidcProvider};
use secrecy::SecretString;
use url::Url;

const CLIENT_ID: &str = "cadenza-test";
const CLIENT_SECRET: &str = "client-secret";
const REDIRECT_URL: &str = "http://127.0.0.1:9/api/v1/auth/callback";

fn fake_config() -> FakeOidcConfig {
    let mut user = FakeUser::new("user-7", "ada@example.com").with_name("Ada Lovelace");
    user.extra_claims
        .insert("hd".into(), serde_json::json!("example.com"));
    FakeOidcConfig::new(
        FakeClient::new(CLIENT_ID, CLIENT_SECRET, REDIRECT_URL),
        user,
    )
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn relying_party_config(fake: &RunningFakeOidc, client_secret: &str) -> OidcConfig {
    OidcConfig::new(
        fake.issuer(),
        CLIENT_ID,
        SecretString::from(client_secret),
        Url::parse(REDIRECT_URL).unwrap(),
    )
}

async fn setup(config: FakeOidcConfig) -> (RunningFakeOidc, OidcProvider) {
    let fake = spawn(config).await.unwrap();
    let provider = OidcProvider::discover(relying_party_config(&fake, CLIENT_SECRET), http())
        .await
        .unwrap();
    (fake, provider)
}

/// Opens the authorization URL like a browser, and returns the `code` from the redirect to
/// the callback after checking it carries our `state`.
async fn authorize(login: &LoginStart) -> String {
    let response = http()
        .get(login.authorize_url.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::FOUND);
    let location = Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(
        location.as_str().split('?').next(),
        Some(REDIRECT_URL),
        "redirected to {location}"
    );
    let param = |name: &str| {
        location
            .query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    };
    assert_eq!(param("state").as_deref(), Some(login.state.as_str()));
    param("code").expect("the callback carries a code")
}

/// One complete login attempt.
async fn log_in(provider: &OidcProvider) -> Result<cadenza_identity::VerifiedIdentity, Error> {
    let login = provider.begin_login();
    let code = authorize(&login).await;
    provider
        .complete_login(&code, login.pkce_verifier, &login.nonce)
        .await
}

async fn log_in_with(tamper: IdTokenTamper) -> Error {
    let (fake, provider) = setup(fake_config()).await;
    fake.set_tamper(tamper);
    let error = log_in(&provider).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Rejected, "{error}");
    error
}

#[tokio::test]
async fn a_browser_login_yields_the_providers_identity() {
    let (fake, provider) = setup(fake_config()).await;
    assert_eq!(
        provider.issuer(),
        fake.issuer().as_str().trim_end_matches('/')
    );
    let identity = log_in(&provider).await.unwrap();
    assert_eq!(identity.issuer, provider.issuer());
    assert_eq!(identity.subject, "user-7");
    assert_eq!(identity.email.as_deref(), Some("ada@example.com"));
    assert!(identity.email_verified);
    assert_eq!(identity.name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(identity.claims["hd"], "example.com");
}

#[tokio::test]
async fn a_provider_that_only_takes_the_secret_in_the_body_works_too() {
    let (_fake, provider) = setup(FakeOidcConfig {
        token_endpoint_auth_methods: vec![ClientAuthMethod::ClientSecretPost],
        ..fake_config()
    })
    .await;
    assert_eq!(log_in(&provider).await.unwrap().subject, "user-7");
}

#[tokio::test]
async fn a_replayed_authorization_code_is_rejected() {
    let (_fake, provider) = setup(fake_config()).await;
    let login = provider.begin_login();
    let code = authorize(&login).await;
    provider
        .complete_login(&code, login.pkce_verifier.clone(), &login.nonce)
        .await
        .unwrap();

    let error = provider
        .complete_login(&code, login.pkce_verifier, &login.nonce)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::TokenExchangeRejected { error, .. } if error == "invalid_grant"),
        "{error}"
    );
    assert_eq!(error.kind(), ErrorKind::Rejected);
}

#[tokio::test]
async fn a_code_without_its_pkce_verifier_is_rejected() {
    let (_fake, provider) = setup(fake_config()).await;
    let login = provider.begin_login();
    let code = authorize(&login).await;
    // The verifier of another login attempt, as an attacker who stole only the code has.
    let other = provider.begin_login();
    let error = provider
        .complete_login(&code, other.pkce_verifier, &login.nonce)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::TokenExchangeRejected { error, .. } if error == "invalid_grant"),
        "{error}"
    );
}

#[tokio::test]
async fn a_wrong_client_secret_is_an_operator_problem() {
    let fake = spawn(fake_config()).await.unwrap();
    let provider = OidcProvider::discover(relying_party_config(&fake, "wrong-secret"), http())
        .await
        .unwrap();
    let error = log_in(&provider).await.unwrap_err();
    assert!(
        matches!(&error, Error::TokenExchangeRejected { error, .. } if error == "invalid_client"),
        "{error}"
    );
    assert_eq!(error.kind(), ErrorKind::Misconfigured);
}

#[tokio::test]
async fn a_tampered_id_token_signature_is_rejected() {
    let error = log_in_with(IdTokenTamper {
        bad_signature: true,
        ..IdTokenTamper::default()
    })
    .await;
    assert!(matches!(error, Error::BadSignature), "{error}");
}

#[tokio::test]
async fn an_expired_id_token_is_rejected() {
    let error = log_in_with(IdTokenTamper {
        expired: true,
        ..IdTokenTamper::default()
    })
    .await;
    assert!(matches!(error, Error::Expired { .. }), "{error}");
}

#[tokio::test]
async fn an_id_token_for_another_client_is_rejected() {
    let error = log_in_with(IdTokenTamper {
        wrong_audience: Some("some-other-app".into()),
        ..IdTokenTamper::default()
    })
    .await;
    assert!(matches!(error, Error::WrongAudience { .. }), "{error}");
}

#[tokio::test]
async fn an_id_token_with_another_nonce_is_rejected() {
    let error = log_in_with(IdTokenTamper {
        nonce_override: Some("nonce-of-another-login".into()),
        ..IdTokenTamper::default()
    })
    .await;
    assert!(matches!(error, Error::NonceMismatch), "{error}");
}

#[tokio::test]
async fn a_callback_completed_with_another_logins_nonce_is_rejected() {
    let (_fake, provider) = setup(fake_config()).await;
    let login = provider.begin_login();
    let other = provider.begin_login();
    let code = authorize(&login).await;
    let error = provider
        .complete_login(&code, login.pkce_verifier, &other.nonce)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::NonceMismatch), "{error}");
}

#[tokio::test]
async fn an_id_token_from_another_issuer_is_rejected() {
    let error = log_in_with(IdTokenTamper {
        issuer_override: Some("https://impostor.example.com".into()),
        ..IdTokenTamper::default()
    })
    .await;
    assert!(
        matches!(&error, Error::WrongIssuer { actual: Some(actual), .. } if actual == "https://impostor.example.com"),
        "{error}"
    );
}

#[tokio::test]
async fn an_id_token_signed_with_an_unpublished_key_is_rejected() {
    let error = log_in_with(IdTokenTamper {
        unknown_kid: true,
        ..IdTokenTamper::default()
    })
    .await;
    assert!(
        matches!(&error, Error::UnknownKey { kid: Some(kid) } if kid.starts_with("unknown-")),
        "{error}"
    );
}

#[tokio::test]
async fn one_users_misbehaving_tokens_do_not_affect_another() {
    let (fake, provider) = setup(fake_config()).await;
    fake.add_user(
        FakeUser::new("user-8", "eve@example.com").with_tamper(IdTokenTamper {
            expired: true,
            ..IdTokenTamper::default()
        }),
    );
    let login = provider.begin_login();
    let mut url = login.authorize_url.clone();
    url.query_pairs_mut()
        .append_pair("login_hint", "eve@example.com");
    let eve = LoginStart {
        authorize_url: url,
        ..login
    };
    let code = authorize(&eve).await;
    assert!(matches!(
        provider
            .complete_login(&code, eve.pkce_verifier, &eve.nonce)
            .await,
        Err(Error::Expired { .. })
    ));
    assert_eq!(log_in(&provider).await.unwrap().subject, "user-7");
}

#[tokio::test]
async fn a_provider_describing_itself_as_another_issuer_is_refused_at_discovery() {
    let fake = spawn(FakeOidcConfig {
        issuer: Some(Url::parse("https://accounts.example.com").unwrap()),
        ..fake_config()
    })
    .await
    .unwrap();
    // Reached at its real address, it claims to be accounts.example.com.
    let mut config = relying_party_config(&fake, CLIENT_SECRET);
    config.issuer = Url::parse(&format!("http://{}", fake.address())).unwrap();
    let error = OidcProvider::discover(config, http()).await.unwrap_err();
    assert!(
        matches!(&error, Error::DiscoveryIssuerMismatch { advertised, .. } if advertised == "https://accounts.example.com"),
        "{error}"
    );
    assert_eq!(error.kind(), ErrorKind::Misconfigured);
}
