//! The provider's endpoints: discovery, JWKS, authorize, token, userinfo.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use url::Url;

use crate::config::{ClientAuthMethod, FakeUser, IdTokenTamper};
use crate::keys::spoil_signature;
use crate::provider::{
    ACCESS_TOKEN_LIFETIME, AccessGrant, CODE_LIFETIME, ID_TOKEN_LIFETIME_SECONDS, PendingCode,
    Provider, random_token,
};

pub(crate) fn router(provider: Arc<Provider>) -> Router {
    let routes = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/authorize", get(authorize))
        .route("/token", axum::routing::post(token))
        .route("/userinfo", get(userinfo).post(userinfo));
    let prefix = provider.path_prefix.clone();
    let routes = if prefix.is_empty() {
        routes
    } else {
        Router::new().nest(&prefix, routes)
    };
    routes.with_state(provider)
}

async fn discovery(State(provider): State<Arc<Provider>>) -> Response {
    let auth_methods: Vec<&str> = provider
        .auth_methods
        .iter()
        .map(|method| method.as_str())
        .collect();
    axum::Json(json!({
        "issuer": provider.issuer,
        "authorization_endpoint": provider.endpoint("/authorize"),
        "token_endpoint": provider.endpoint("/token"),
        "userinfo_endpoint": provider.endpoint("/userinfo"),
        "jwks_uri": provider.endpoint("/jwks"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "email", "profile"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": [
            "iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "azp", "at_hash",
            "email", "email_verified", "name",
        ],
    }))
    .into_response()
}

async fn jwks(State(provider): State<Arc<Provider>>) -> Response {
    axum::Json(provider.key.jwks()).into_response()
}

/// Form or query parameters; OAuth forbids repeating one (RFC 6749 §3.1), so a repeat is an
/// error rather than a silent pick.
fn parameters(encoded: &[u8]) -> Result<HashMap<String, String>, String> {
    let mut parameters = HashMap::new();
    for (name, value) in url::form_urlencoded::parse(encoded) {
        if parameters
            .insert(name.to_string(), value.into_owned())
            .is_some()
        {
            return Err(format!("parameter {name} is repeated"));
        }
    }
    Ok(parameters)
}

/// An error shown to the user agent instead of redirecting: with an unknown client or
/// redirect URI there is nowhere safe to redirect to (RFC 6749 §4.1.2.1).
fn error_page(description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        format!("authorization request refused: {description}\n"),
    )
        .into_response()
}

fn redirect(mut target: Url, parameters: &[(&str, &str)]) -> Response {
    {
        let mut query = target.query_pairs_mut();
        for (name, value) in parameters {
            query.append_pair(name, value);
        }
    }
    let mut response = StatusCode::FOUND.into_response();
    match HeaderValue::from_str(target.as_str()) {
        Ok(location) => {
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        Err(_) => error_page("the redirect URI cannot be sent as a header"),
    }
}

async fn authorize(State(provider): State<Arc<Provider>>, RawQuery(query): RawQuery) -> Response {
    let params = match parameters(query.unwrap_or_default().as_bytes()) {
        Ok(params) => params,
        Err(description) => return error_page(&description),
    };
    let param = |name: &str| params.get(name).map(String::as_str);

    let mut state = provider.state();
    let Some(client_id) = param("client_id") else {
        return error_page("client_id is missing");
    };
    let Some(client) = state.client(client_id) else {
        return error_page("unknown client_id");
    };
    let Some(redirect_uri) = param("redirect_uri") else {
        return error_page("redirect_uri is missing");
    };
    if !client
        .redirect_uris
        .iter()
        .any(|known| known == redirect_uri)
    {
        return error_page("redirect_uri is not registered for this client");
    }
    let Ok(redirect_target) = Url::parse(redirect_uri) else {
        return error_page("redirect_uri is not a URL");
    };

    // From here on, errors go back to the client through the redirect (RFC 6749 §4.1.2.1).
    let client_state = param("state");
    let fail = |error: &str, description: &str| {
        let mut parameters = vec![("error", error), ("error_description", description)];
        if let Some(client_state) = client_state {
            parameters.push(("state", client_state));
        }
        redirect(redirect_target.clone(), &parameters)
    };
    if param("response_type") != Some("code") {
        return fail(
            "unsupported_response_type",
            "only the authorization code flow (response_type=code) is supported",
        );
    }
    let scopes: Vec<String> = param("scope")
        .unwrap_or_default()
        .split(' ')
        .filter(|scope| !scope.is_empty())
        .map(str::to_owned)
        .collect();
    if !scopes.iter().any(|scope| scope == "openid") {
        return fail("invalid_scope", "the openid scope is required");
    }
    let Some(code_challenge) = param("code_challenge") else {
        return fail(
            "invalid_request",
            "PKCE is required: code_challenge is missing",
        );
    };
    if param("code_challenge_method") != Some("S256") {
        return fail(
            "invalid_request",
            "only code_challenge_method=S256 is supported",
        );
    }
    // A SHA-256 digest in base64url is always 43 characters.
    if code_challenge.len() != 43 || URL_SAFE_NO_PAD.decode(code_challenge).is_err() {
        return fail("invalid_request", "code_challenge is not a S256 challenge");
    }
    let Some(user) = state.user_for_hint(param("login_hint")) else {
        return fail("access_denied", "no such user");
    };
    let subject = user.subject.clone();

    let code = random_token();
    let now = Instant::now();
    state.forget_expired(now);
    state.codes.insert(
        code.clone(),
        PendingCode {
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            code_challenge: code_challenge.to_owned(),
            subject,
            nonce: param("nonce").map(str::to_owned),
            scopes,
            auth_time: unix_now(),
            expires_at: now + CODE_LIFETIME,
        },
    );
    drop(state);
    let mut parameters = vec![("code", code.as_str())];
    if let Some(client_state) = client_state {
        parameters.push(("state", client_state));
    }
    redirect(redirect_target, &parameters)
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// An OAuth error response from the token endpoint (RFC 6749 §5.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = (
        status,
        no_store(),
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="cadenza-fake-oidc""#),
        );
    }
    response
}

fn invalid_grant(description: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

fn no_store() -> [(header::HeaderName, HeaderValue); 2] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
    ]
}

/// RFC 6749 §2.3.1: the id and secret are form-encoded before going into the Basic header.
fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[index], escaped) {
            (_, Some(byte)) => {
                decoded.push(byte);
                index += 3;
            }
            (b'+', None) => {
                decoded.push(b' ');
                index += 1;
            }
            (byte, None) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The client's credentials and how it sent them.
fn client_credentials(
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<(String, String, ClientAuthMethod), &'static str> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "));
    match (basic, params.get("client_secret")) {
        (Some(_), Some(_)) => Err("use one client authentication method, not two"),
        (Some(credentials), None) => {
            let decoded = STANDARD
                .decode(credentials.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or("the Basic credentials are not base64 UTF-8")?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or("the Basic credentials have no colon")?;
            let (id, secret) = (form_decode(id), form_decode(secret));
            if params
                .get("client_id")
                .is_some_and(|body_id| *body_id != id)
            {
                return Err("client_id differs between the header and the body");
            }
            Ok((id, secret, ClientAuthMethod::ClientSecretBasic))
        }
        (None, Some(secret)) => {
            let id = params
                .get("client_id")
                .ok_or("client_secret without client_id")?;
            Ok((
                id.clone(),
                secret.clone(),
                ClientAuthMethod::ClientSecretPost,
            ))
        }
        (None, None) => Err("no client authentication"),
    }
}

/// RFC 7636 §4.1: 43 to 128 unreserved characters.
fn is_valid_code_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-._~".contains(&byte))
}

async fn token(State(provider): State<Arc<Provider>>, headers: HeaderMap, body: Bytes) -> Response {
    let form_encoded = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    if !form_encoded {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        );
    }
    let params = match parameters(&body) {
        Ok(params) => params,
        Err(description) => {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &description);
        }
    };
    let (client_id, client_secret, method) = match client_credentials(&headers, &params) {
        Ok(credentials) => credentials,
        Err(description) => {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", description);
        }
    };
    if !provider.auth_methods.contains(&method) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            &format!("{} is not accepted here", method.as_str()),
        );
    }

    let mut state = provider.state();
    let authenticated = state
        .client(&client_id)
        .is_some_and(|client| client.client_secret == client_secret);
    if !authenticated {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        );
    }
    if params.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only authorization_code is supported",
        );
    }
    let Some(code) = params.get("code") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code is missing",
        );
    };
    // Taken out before any further check: a code gets exactly one attempt.
    let Some(pending) = state.codes.remove(code.as_str()) else {
        if let Some(access_token) = state.used_codes.remove(code.as_str()) {
            state.access_tokens.remove(&access_token);
            tracing::info!("authorization code replayed; revoked the access token it bought");
        }
        return invalid_grant("unknown, expired or already used authorization code");
    };
    if pending.expires_at <= Instant::now() {
        return invalid_grant("the authorization code has expired");
    }
    if pending.client_id != client_id {
        return invalid_grant("the authorization code was issued to another client");
    }
    if params.get("redirect_uri") != Some(&pending.redirect_uri) {
        return invalid_grant("redirect_uri differs from the authorization request");
    }
    let Some(verifier) = params.get("code_verifier") else {
        return invalid_grant("PKCE code_verifier is missing");
    };
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    if !is_valid_code_verifier(verifier) || challenge != pending.code_challenge {
        return invalid_grant("PKCE code_verifier does not match the code_challenge");
    }
    let Some(user) = state.user(&pending.subject).cloned() else {
        return invalid_grant("the user no longer exists");
    };
    let tamper = user.tamper.clone().unwrap_or_else(|| state.tamper.clone());

    let access_token = random_token();
    state.access_tokens.insert(
        access_token.clone(),
        AccessGrant {
            subject: user.subject.clone(),
            scopes: pending.scopes.clone(),
            expires_at: Instant::now() + ACCESS_TOKEN_LIFETIME,
        },
    );
    state.used_codes.insert(code.clone(), access_token.clone());
    drop(state);

    let id_token = match id_token(&provider, &pending, &user, &access_token, &tamper) {
        Ok(id_token) => id_token,
        Err(error) => {
            tracing::error!(%error, "cannot sign the ID token");
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "cannot sign the ID token",
            );
        }
    };
    (
        no_store(),
        axum::Json(json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": ACCESS_TOKEN_LIFETIME.as_secs(),
            "scope": pending.scopes.join(" "),
            "id_token": id_token,
        })),
    )
        .into_response()
}

/// The claims a user's profile contributes, by scope (OpenID Connect Core §5.4).
fn profile_claims(user: &FakeUser, scopes: &[String]) -> Map<String, Value> {
    let mut claims = user.extra_claims.clone();
    let has = |scope: &str| scopes.iter().any(|granted| granted == scope);
    if has("email")
        && let Some(email) = &user.email
    {
        claims.insert("email".into(), json!(email));
        claims.insert("email_verified".into(), json!(user.email_verified));
    }
    if has("profile")
        && let Some(name) = &user.name
    {
        claims.insert("name".into(), json!(name));
    }
    claims
}

fn id_token(
    provider: &Provider,
    pending: &PendingCode,
    user: &FakeUser,
    access_token: &str,
    tamper: &IdTokenTamper,
) -> jsonwebtoken::errors::Result<String> {
    let now = unix_now();
    let (issued_at, expires_at) = if tamper.expired {
        (
            now - 2 * ID_TOKEN_LIFETIME_SECONDS,
            now - ID_TOKEN_LIFETIME_SECONDS,
        )
    } else {
        (now, now + ID_TOKEN_LIFETIME_SECONDS)
    };
    // OpenID Connect Core §3.1.3.6: the left half of the access token's SHA-256.
    let access_token_hash = URL_SAFE_NO_PAD.encode(&Sha256::digest(access_token.as_bytes())[..16]);
    let mut claims = profile_claims(user, &pending.scopes);
    let standard = json!({
        "iss": tamper.issuer_override.as_deref().unwrap_or(&provider.issuer),
        "sub": user.subject,
        "aud": tamper.wrong_audience.as_deref().unwrap_or(&pending.client_id),
        "azp": pending.client_id,
        "iat": issued_at,
        "exp": expires_at,
        "auth_time": pending.auth_time,
        "at_hash": access_token_hash,
    });
    if let Value::Object(standard) = standard {
        claims.extend(standard);
    }
    if let Some(nonce) = tamper.nonce_override.as_ref().or(pending.nonce.as_ref()) {
        claims.insert("nonce".into(), json!(nonce));
    }
    let kid = if tamper.unknown_kid {
        format!("unknown-{}", &random_token()[..8])
    } else {
        provider.key.kid().to_owned()
    };
    let token = provider.key.sign(&kid, &Value::Object(claims))?;
    Ok(if tamper.bad_signature {
        spoil_signature(&token)
    } else {
        token
    })
}

async fn userinfo(State(provider): State<Arc<Provider>>, headers: HeaderMap) -> Response {
    let unauthorized = |error: &str| {
        let mut response = StatusCode::UNAUTHORIZED.into_response();
        if let Ok(challenge) = HeaderValue::from_str(&format!(r#"Bearer error="{error}""#)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    };
    let Some(access_token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    else {
        return unauthorized("invalid_request");
    };
    let state = provider.state();
    let Some(grant) = state
        .access_tokens
        .get(access_token.trim())
        .filter(|grant| grant.expires_at > Instant::now())
    else {
        return unauthorized("invalid_token");
    };
    let Some(user) = state.user(&grant.subject) else {
        return unauthorized("invalid_token");
    };
    let mut claims = profile_claims(user, &grant.scopes);
    claims.insert("sub".into(), json!(user.subject));
    axum::Json(Value::Object(claims)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        assert_eq!(form_decode("my%3Aclient"), "my:client");
        assert_eq!(form_decode("a+b%26c"), "a b&c");
        assert_eq!(form_decode("plain"), "plain");
        assert_eq!(form_decode("raw&=%zz%+1%4"), "raw&=%zz% 1%4");
    }

    #[test]
    fn code_verifiers_follow_rfc_7636() {
        assert!(is_valid_code_verifier(&"a".repeat(43)));
        assert!(is_valid_code_verifier(&"-._~".repeat(32)));
        assert!(!is_valid_code_verifier(&"a".repeat(42)));
        assert!(!is_valid_code_verifier(&"a".repeat(129)));
        assert!(!is_valid_code_verifier(&format!("{}+", "a".repeat(43))));
    }

    #[test]
    fn repeated_parameters_are_refused() {
        assert!(parameters(b"a=1&b=2").is_ok());
        assert!(parameters(b"a=1&a=2").is_err());
    }
}
