//! Cadenza's own session tokens: short-lived JWTs signed with Ed25519 keys from a rotating set.
//!
//! The first configured key signs; every configured key verifies. Rotation without logging
//! anyone out:
//!
//! 1. add the new key *after* the current one and deploy (every replica can now verify it);
//! 2. move it to the front and deploy (new tokens use it; old ones still verify);
//! 3. once the old key's last token has expired (one token lifetime), remove the old key.
//!
//! Removing a key invalidates every token it signed, which is also the emergency response to
//! a leaked key.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, SigningKey};
use jsonwebtoken::{Algorithm, DecodingKey};
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::jwt::{self, numeric_date, string_claim};

/// `iss` of every session token.
pub const SESSION_ISSUER: &str = "cadenza";
/// `aud` of every session token, so no other token Cadenza might sign one day passes as one.
pub const SESSION_AUDIENCE: &str = "cadenza-session";

const MAX_KID_LEN: usize = 64;

/// One signing key as an operator configures it.
#[derive(Debug, Clone, Deserialize)]
pub struct SessionKeyConfig {
    /// Published in the JWKS and in each token's header; unique within the set.
    pub kid: String,
    /// An Ed25519 private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as written by
    /// `openssl genpkey -algorithm ed25519`.
    pub private_key_pem: SecretString,
}

impl SessionKeyConfig {
    /// A fresh key with a date-stamped `kid` (`20260501-3f9a1c2b`), ready to paste into the
    /// configuration.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let pem = pkcs8_pem(&seed);
        seed.fill(0);
        Self {
            kid: generated_kid(""),
            private_key_pem: pem,
        }
    }
}

/// PKCS#8 v1 for Ed25519 (RFC 8410 §7) is a fixed prefix followed by the 32-byte seed; writing
/// it by hand keeps key generation infallible. The output is what `openssl genpkey` writes.
fn pkcs8_pem(seed: &[u8; 32]) -> SecretString {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = [0u8; 48];
    der[..16].copy_from_slice(&PREFIX);
    der[16..].copy_from_slice(seed);
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(der)
    );
    der.fill(0);
    SecretString::from(pem)
}

fn generated_kid(prefix: &str) -> String {
    let today = OffsetDateTime::now_utc().date();
    format!(
        "{prefix}{:04}{:02}{:02}-{:08x}",
        today.year(),
        u8::from(today.month()),
        today.day(),
        rand::random::<u32>()
    )
}

/// How long tokens and sessions live. The API decides; these are only the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLifetime {
    /// Lifetime of one token; a refresh issues a new one.
    pub token_ttl: Duration,
    /// Time after the login beyond which no refresh is granted: the user logs in again.
    pub max_lifetime: Duration,
}

impl Default for SessionLifetime {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(15 * 60),
            max_lifetime: Duration::from_secs(12 * 60 * 60),
        }
    }
}

fn add(instant: OffsetDateTime, duration: Duration) -> OffsetDateTime {
    time::Duration::try_from(duration)
        .ok()
        .and_then(|duration| instant.checked_add(duration))
        .unwrap_or(OffsetDateTime::new_utc(
            time::Date::MAX,
            time::Time::MIDNIGHT,
        ))
}

fn whole_seconds(instant: OffsetDateTime) -> OffsetDateTime {
    instant.replace_nanosecond(0).unwrap_or(instant)
}

/// What a session token says. Times are whole seconds, as they travel in the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// The user id.
    pub sub: String,
    /// The session id: stays the same across refreshes; what logout puts on the deny-list.
    pub sid: Uuid,
    #[serde(with = "time::serde::timestamp")]
    pub iat: OffsetDateTime,
    #[serde(with = "time::serde::timestamp")]
    pub exp: OffsetDateTime,
    /// When the user logged in; bounds the session's total lifetime across refreshes.
    #[serde(with = "time::serde::timestamp")]
    pub auth_time: OffsetDateTime,
}

impl SessionClaims {
    /// A new session for `subject`, logged in at `now`, with a fresh random session id.
    pub fn start(
        subject: impl Into<String>,
        now: OffsetDateTime,
        lifetime: &SessionLifetime,
    ) -> Self {
        let now = whole_seconds(now);
        Self {
            sub: subject.into(),
            sid: Uuid::new_v4(),
            iat: now,
            exp: add(now, lifetime.token_ttl).min(add(now, lifetime.max_lifetime)),
            auth_time: now,
        }
    }

    /// The claims for the next token of this session (same `sid` and `auth_time`), or `None`
    /// once the session has reached its maximum lifetime.
    pub fn refreshed(&self, now: OffsetDateTime, lifetime: &SessionLifetime) -> Option<Self> {
        let now = whole_seconds(now);
        let deadline = self.max_expiry(lifetime);
        if now >= deadline {
            return None;
        }
        Some(Self {
            sub: self.sub.clone(),
            sid: self.sid,
            iat: now,
            exp: add(now, lifetime.token_ttl).min(deadline),
            auth_time: self.auth_time,
        })
    }

    /// True once half of this token's lifetime has passed: refreshing then keeps an active
    /// user logged in without re-issuing a token on every request.
    pub fn is_due_for_refresh(&self, now: OffsetDateTime) -> bool {
        now >= self.iat + (self.exp - self.iat) / 2
    }

    /// No token of this session can be valid after this: how long a logged-out `sid` must
    /// stay on the deny-list to cover tokens refreshed concurrently with the logout.
    pub fn max_expiry(&self, lifetime: &SessionLifetime) -> OffsetDateTime {
        add(self.auth_time, lifetime.max_lifetime)
    }
}

struct SessionKey {
    kid: String,
    signing_key: SigningKey,
    verifying_key: DecodingKey,
    public_key: [u8; 32],
}

impl SessionKey {
    fn new(kid: String, signing_key: SigningKey) -> Self {
        let public_key = signing_key.verifying_key().to_bytes();
        Self {
            kid,
            // The raw 32-byte key, which is also what `from_ed_components` decodes `x` into.
            verifying_key: DecodingKey::from_ed_der(&public_key),
            public_key,
            signing_key,
        }
    }
}

/// The set of session signing keys. The first signs; all verify.
pub struct SessionKeys {
    keys: Vec<SessionKey>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("kids", &self.kids().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl SessionKeys {
    /// Loads the configured keys; the first one signs new tokens.
    pub fn from_config(keys: Vec<SessionKeyConfig>) -> Result<Self> {
        if keys.is_empty() {
            return Err(Error::InvalidConfig {
                setting: "session_keys",
                reason: "at least one signing key is required".into(),
            });
        }
        let mut loaded: Vec<SessionKey> = Vec::with_capacity(keys.len());
        for key in keys {
            let invalid = |reason: &str| Error::InvalidSessionKey {
                kid: key.kid.clone(),
                reason: reason.to_owned(),
            };
            if key.kid.is_empty()
                || key.kid.len() > MAX_KID_LEN
                || !key.kid.chars().all(|c| c.is_ascii_graphic())
            {
                return Err(invalid(
                    "kid must be 1 to 64 visible ASCII characters without spaces",
                ));
            }
            if loaded.iter().any(|other| other.kid == key.kid) {
                return Err(invalid("kid is used by another key"));
            }
            let signing_key = SigningKey::from_pkcs8_pem(
                key.private_key_pem.expose_secret().trim(),
            )
            .map_err(|_| invalid("not an Ed25519 private key in PKCS#8 PEM (BEGIN PRIVATE KEY)"))?;
            loaded.push(SessionKey::new(key.kid, signing_key));
        }
        Ok(Self { keys: loaded })
    }

    /// One random key that lives as long as the process: for development and tests, where
    /// logging in again after a restart is acceptable.
    pub fn generate_ephemeral() -> Self {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let signing_key = SigningKey::from_bytes(&seed);
        seed.fill(0);
        Self {
            keys: vec![SessionKey::new(generated_kid("ephemeral-"), signing_key)],
        }
    }

    /// The `kid` new tokens are signed with.
    pub fn signing_kid(&self) -> &str {
        &self.keys[0].kid
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|key| key.kid.as_str())
    }

    /// Signs `claims` with the first key, adding `iss` and `aud`.
    pub fn issue(&self, claims: SessionClaims) -> String {
        let key = &self.keys[0];
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": key.kid});
        let payload = json!({
            "iss": SESSION_ISSUER,
            "aud": SESSION_AUDIENCE,
            "sub": claims.sub,
            "sid": claims.sid,
            "iat": claims.iat.unix_timestamp(),
            "exp": claims.exp.unix_timestamp(),
            "auth_time": claims.auth_time.unix_timestamp(),
        });
        let signing_input = format!(
            "{}.{}",
            jwt::base64url(header.to_string().as_bytes()),
            jwt::base64url(payload.to_string().as_bytes())
        );
        let signature = key.signing_key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", jwt::base64url(&signature.to_bytes()))
    }

    /// Checks a token's signature (by `kid`), expiry, issuer and audience.
    pub fn verify(&self, token: &str) -> Result<SessionClaims> {
        self.verify_at(token, OffsetDateTime::now_utc())
    }

    /// [`verify`](Self::verify) as of `now`. No clock leeway: all replicas issue and verify
    /// with synchronised clocks, and a deny-list entry kept until `exp` must outlive the token.
    pub fn verify_at(&self, token: &str, now: OffsetDateTime) -> Result<SessionClaims> {
        let header = jwt::read_header(token)?;
        if header.algorithm != Algorithm::EdDSA {
            return Err(Error::UnsupportedAlgorithm {
                algorithm: jwt::algorithm_name_of(header.algorithm).to_owned(),
            });
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.iter().find(|key| key.kid == kid))
            .ok_or_else(|| Error::UnknownKey {
                kid: header.kid.clone(),
            })?;
        let claims = jwt::verify_signature(token, &key.verifying_key, Algorithm::EdDSA)?;

        let issuer = string_claim(&claims, "iss").ok().flatten();
        if issuer != Some(SESSION_ISSUER) {
            return Err(Error::WrongIssuer {
                expected: SESSION_ISSUER.to_owned(),
                actual: issuer.map(str::to_owned),
            });
        }
        if claims.get("aud") != Some(&Value::from(SESSION_AUDIENCE)) {
            return Err(Error::WrongAudience {
                expected: SESSION_AUDIENCE.to_owned(),
                reason: "aud is not the session audience".into(),
            });
        }
        let date = |name: &str| -> Result<OffsetDateTime> {
            let seconds = numeric_date(&claims, name)?
                .ok_or_else(|| Error::malformed(format!("{name} is missing")))?;
            OffsetDateTime::from_unix_timestamp(seconds)
                .map_err(|_| Error::malformed(format!("{name} is out of range")))
        };
        let exp = date("exp")?;
        if now >= exp {
            return Err(Error::Expired {
                expired_at: exp.unix_timestamp(),
            });
        }
        let sub = match string_claim(&claims, "sub")? {
            Some(sub) if !sub.is_empty() => sub.to_owned(),
            _ => return Err(Error::malformed("sub is missing or empty")),
        };
        let sid = string_claim(&claims, "sid")?
            .and_then(|sid| Uuid::parse_str(sid).ok())
            .ok_or_else(|| Error::malformed("sid is missing or not a UUID"))?;
        Ok(SessionClaims {
            sub,
            sid,
            iat: date("iat")?,
            exp,
            auth_time: date("auth_time")?,
        })
    }

    /// The public keys as a JWK Set, for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|key| {
                json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": jwt::base64url(&key.public_key),
                    "kid": key.kid,
                    "alg": "EdDSA",
                    "use": "sig",
                })
            })
            .collect();
        json!({ "keys": keys })
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-05-01 12:00:00 UTC);

    fn lifetime() -> SessionLifetime {
        SessionLifetime {
            token_ttl: Duration::from_secs(900),
            max_lifetime: Duration::from_secs(3600),
        }
    }

    fn config(kid: &str) -> SessionKeyConfig {
        SessionKeyConfig {
            kid: kid.into(),
            ..SessionKeyConfig::generate()
        }
    }

    fn claims() -> SessionClaims {
        SessionClaims::start("user-42", NOW, &lifetime())
    }

    /// A token with `payload` as claims, signed by the first key of `keys`.
    fn token_with_payload(keys: &SessionKeys, payload: Value) -> String {
        let key = &keys.keys[0];
        let header = json!({"alg": "EdDSA", "kid": key.kid});
        let signing_input = format!(
            "{}.{}",
            jwt::base64url(header.to_string().as_bytes()),
            jwt::base64url(payload.to_string().as_bytes())
        );
        let signature = key.signing_key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", jwt::base64url(&signature.to_bytes()))
    }

    #[test]
    fn an_issued_token_verifies_to_the_same_claims() {
        let keys = SessionKeys::from_config(vec![config("k1")]).unwrap();
        let claims = claims();
        let token = keys.issue(claims.clone());
        assert_eq!(keys.verify_at(&token, NOW).unwrap(), claims);
        assert_eq!(claims.exp, NOW + time::Duration::seconds(900));
    }

    #[test]
    fn tokens_expire_exactly_at_exp() {
        let keys = SessionKeys::generate_ephemeral();
        let claims = claims();
        let token = keys.issue(claims.clone());
        assert!(
            keys.verify_at(&token, claims.exp - time::Duration::seconds(1))
                .is_ok()
        );
        assert!(matches!(
            keys.verify_at(&token, claims.exp),
            Err(Error::Expired { .. })
        ));
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_until_their_key_is_removed() {
        let old = config("old");
        let new = config("new");
        let before = SessionKeys::from_config(vec![old.clone()]).unwrap();
        let old_token = before.issue(claims());

        let during = SessionKeys::from_config(vec![new.clone(), old.clone()]).unwrap();
        assert_eq!(during.signing_kid(), "new");
        assert!(during.verify_at(&old_token, NOW).is_ok());
        let new_token = during.issue(claims());
        assert!(
            new_token.starts_with(&jwt::base64url(
                json!({"alg": "EdDSA", "typ": "JWT", "kid": "new"})
                    .to_string()
                    .as_bytes()
            ))
        );

        let after = SessionKeys::from_config(vec![new]).unwrap();
        assert!(after.verify_at(&new_token, NOW).is_ok());
        assert!(matches!(
            after.verify_at(&old_token, NOW),
            Err(Error::UnknownKey { kid: Some(kid) }) if kid == "old"
        ));
    }

    #[test]
    fn a_key_reusing_a_known_kid_cannot_forge_tokens() {
        let genuine = SessionKeys::from_config(vec![config("k1")]).unwrap();
        let impostor = SessionKeys::from_config(vec![config("k1")]).unwrap();
        let forged = impostor.issue(claims());
        assert!(matches!(
            genuine.verify_at(&forged, NOW),
            Err(Error::BadSignature)
        ));
    }

    #[test]
    fn tampered_claims_fail_the_signature_check() {
        let keys = SessionKeys::generate_ephemeral();
        let token = keys.issue(claims());
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let forged_payload = json!({
            "iss": SESSION_ISSUER, "aud": SESSION_AUDIENCE, "sub": "admin",
            "sid": Uuid::nil(), "iat": 0, "exp": i64::MAX / 2, "auth_time": 0,
        });
        parts[1] = jwt::base64url(forged_payload.to_string().as_bytes());
        assert!(matches!(
            keys.verify_at(&parts.join("."), NOW),
            Err(Error::BadSignature)
        ));
    }

    #[test]
    fn issuer_audience_and_required_claims_are_enforced() {
        let keys = SessionKeys::generate_ephemeral();
        let valid = json!({
            "iss": SESSION_ISSUER, "aud": SESSION_AUDIENCE, "sub": "user-42",
            "sid": Uuid::new_v4(), "iat": NOW.unix_timestamp(),
            "exp": NOW.unix_timestamp() + 60, "auth_time": NOW.unix_timestamp(),
        });
        assert!(
            keys.verify_at(&token_with_payload(&keys, valid.clone()), NOW)
                .is_ok()
        );
        let with = |name: &str, value: Value| {
            let mut payload = valid.clone();
            payload[name] = value;
            keys.verify_at(&token_with_payload(&keys, payload), NOW)
        };
        assert!(matches!(
            with("iss", json!("https://idp.example.com")),
            Err(Error::WrongIssuer { .. })
        ));
        assert!(matches!(
            with("aud", json!("cadenza-api")),
            Err(Error::WrongAudience { .. })
        ));
        assert!(matches!(
            with("aud", json!([SESSION_AUDIENCE, "other"])),
            Err(Error::WrongAudience { .. })
        ));
        for (name, value) in [
            ("sid", json!("not-a-uuid")),
            ("sub", json!("")),
            ("auth_time", Value::Null),
            ("exp", json!("soon")),
            ("iat", json!(1e300)),
        ] {
            assert!(
                matches!(with(name, value.clone()), Err(Error::MalformedToken { .. })),
                "{name} = {value}"
            );
        }
    }

    #[test]
    fn other_algorithms_and_missing_kids_are_refused() {
        let keys = SessionKeys::generate_ephemeral();
        let token = keys.issue(claims());
        let (_, rest) = token.split_once('.').unwrap();
        for header in [
            json!({"alg": "HS256", "kid": keys.signing_kid()}),
            json!({"alg": "none", "kid": keys.signing_kid()}),
        ] {
            let forged = format!("{}.{rest}", jwt::base64url(header.to_string().as_bytes()));
            assert!(matches!(
                keys.verify_at(&forged, NOW),
                Err(Error::UnsupportedAlgorithm { .. })
            ));
        }
        let no_kid = format!(
            "{}.{rest}",
            jwt::base64url(json!({"alg": "EdDSA"}).to_string().as_bytes())
        );
        assert!(matches!(
            keys.verify_at(&no_kid, NOW),
            Err(Error::UnknownKey { kid: None })
        ));
    }

    #[test]
    fn garbage_tokens_are_errors_not_panics() {
        let keys = SessionKeys::generate_ephemeral();
        let token = keys.issue(claims());
        let truncated = &token[..token.len() - 5];
        let header_only = token.split('.').next().unwrap();
        for input in [
            "",
            "...",
            "a.b.c",
            truncated,
            header_only,
            &format!("{header_only}.e30.AAAA"),
            &format!("{header_only}.W10.AAAA"),
            &format!("{header_only}.!!.AAAA"),
        ] {
            assert!(keys.verify_at(input, NOW).is_err(), "{input:?}");
        }
    }

    #[test]
    fn jwks_publishes_every_public_key_and_nothing_private() {
        let first = config("first");
        let keys = SessionKeys::from_config(vec![first.clone(), config("second")]).unwrap();
        let jwks = keys.jwks();
        let published = jwks["keys"].as_array().unwrap();
        assert_eq!(published.len(), 2);
        assert_eq!(published[0]["kid"], "first");
        assert_eq!(published[1]["kid"], "second");
        for key in published {
            assert_eq!(key["kty"], "OKP");
            assert_eq!(key["crv"], "Ed25519");
            assert_eq!(key["alg"], "EdDSA");
            assert_eq!(key["use"], "sig");
            assert_eq!(
                jwt::base64url_decode(key["x"].as_str().unwrap())
                    .unwrap()
                    .len(),
                32
            );
            assert!(key.get("d").is_none());
        }
        // The published key verifies what the set signs, as an outside verifier would.
        let token = keys.issue(claims());
        let public = DecodingKey::from_ed_components(published[0]["x"].as_str().unwrap()).unwrap();
        assert!(jwt::verify_signature(&token, &public, Algorithm::EdDSA).is_ok());
    }

    #[test]
    fn generated_pem_is_standard_pkcs8() {
        let generated = SessionKeyConfig::generate();
        let pem = generated.private_key_pem.expose_secret();
        // The same PKCS#8 v1 layout `openssl genpkey -algorithm ed25519` writes.
        assert!(
            pem.starts_with("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI"),
            "{pem}"
        );
        let key = SigningKey::from_pkcs8_pem(pem).unwrap();
        let from_der = SigningKey::from_pkcs8_der(key.to_pkcs8_der().unwrap().as_bytes()).unwrap();
        assert_eq!(key.to_bytes(), from_der.to_bytes());
        assert_eq!(
            generated.kid.len(),
            "20260501-3f9a1c2b".len(),
            "{}",
            generated.kid
        );
        assert_ne!(SessionKeyConfig::generate().kid, generated.kid);
    }

    #[test]
    fn openssl_generated_keys_load() {
        // `openssl genpkey -algorithm ed25519` (RFC 8410 §10.3 test key).
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                   -----END PRIVATE KEY-----\n";
        let keys = SessionKeys::from_config(vec![SessionKeyConfig {
            kid: "rfc8410".into(),
            private_key_pem: pem.into(),
        }])
        .unwrap();
        assert_eq!(
            keys.jwks()["keys"][0]["x"],
            "Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE"
        );
    }

    #[test]
    fn bad_configuration_is_refused_without_echoing_the_key() {
        let secret_looking =
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----";
        let error = SessionKeys::from_config(vec![SessionKeyConfig {
            kid: "k1".into(),
            private_key_pem: secret_looking.into(),
        }])
        .unwrap_err();
        assert!(matches!(error, Error::InvalidSessionKey { .. }));
        assert!(!error.to_string().contains("c2VjcmV0"));

        assert!(matches!(
            SessionKeys::from_config(vec![]),
            Err(Error::InvalidConfig { .. })
        ));
        assert!(matches!(
            SessionKeys::from_config(vec![config("dup"), config("dup")]),
            Err(Error::InvalidSessionKey { .. })
        ));
        assert!(matches!(
            SessionKeys::from_config(vec![config("has space")]),
            Err(Error::InvalidSessionKey { .. })
        ));
    }

    #[test]
    fn debug_output_never_contains_private_keys() {
        let config = SessionKeyConfig::generate();
        let pem_body = config
            .private_key_pem
            .expose_secret()
            .lines()
            .nth(1)
            .unwrap()
            .to_owned();
        assert!(!format!("{config:?}").contains(&pem_body));
        let keys = SessionKeys::from_config(vec![config]).unwrap();
        let debug = format!("{keys:?}");
        assert!(!debug.contains(&pem_body));
        assert!(debug.contains(keys.signing_kid()));
    }

    #[test]
    fn sliding_refresh_keeps_the_session_id_and_stops_at_the_maximum_lifetime() {
        let lifetime = lifetime();
        let first = claims();
        assert!(!first.is_due_for_refresh(NOW + time::Duration::seconds(400)));
        assert!(first.is_due_for_refresh(NOW + time::Duration::seconds(450)));

        let later = NOW + time::Duration::seconds(3000);
        let refreshed = first.refreshed(later, &lifetime).unwrap();
        assert_eq!(refreshed.sid, first.sid);
        assert_eq!(refreshed.auth_time, NOW);
        assert_eq!(refreshed.iat, later);
        // Capped by the maximum lifetime, not a full token lifetime after `later`.
        assert_eq!(refreshed.exp, NOW + time::Duration::seconds(3600));
        assert_eq!(first.max_expiry(&lifetime), refreshed.exp);

        assert_eq!(
            first.refreshed(NOW + time::Duration::seconds(3600), &lifetime),
            None
        );
    }

    #[test]
    fn session_times_are_whole_seconds_so_they_survive_the_round_trip() {
        let keys = SessionKeys::generate_ephemeral();
        let claims = SessionClaims::start(
            "user-42",
            NOW + time::Duration::milliseconds(750),
            &lifetime(),
        );
        assert_eq!(claims.iat, NOW);
        assert_eq!(
            keys.verify_at(&keys.issue(claims.clone()), NOW).unwrap(),
            claims
        );
    }
}
