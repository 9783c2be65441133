//! The provider's signing keys: parsed defensively, cached, and refreshed when a token names a
//! key we have not seen (the provider rotated its keys), at most once per interval so a stream
//! of forged `kid`s cannot turn us into a load generator against the provider.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use crate::error::{Error, Result};
use crate::jwt::{self, TokenHeader};

use super::transport::get_json;

/// The least time between two key set fetches triggered by unknown `kid`s.
pub(crate) const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// Keys are re-fetched when older than this even if every `kid` is known, so a key the
/// provider withdrew (e.g. after a compromise) stops being trusted.
pub(crate) const MAX_KEY_SET_AGE: Duration = Duration::from_secs(60 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    fn signs_with(self, algorithm: Algorithm) -> bool {
        match self {
            KeyKind::Rsa => matches!(
                algorithm,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            KeyKind::EcP256 => algorithm == Algorithm::ES256,
            KeyKind::EcP384 => algorithm == Algorithm::ES384,
            KeyKind::Ed25519 => algorithm == Algorithm::EdDSA,
        }
    }
}

#[derive(Clone)]
pub(crate) struct ProviderKey {
    kid: Option<String>,
    /// The `alg` the key is restricted to, when the JWK declares one.
    algorithm: Option<Algorithm>,
    kind: KeyKind,
    decoding_key: DecodingKey,
}

impl std::fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl ProviderKey {
    fn accepts(&self, algorithm: Algorithm) -> bool {
        self.kind.signs_with(algorithm) && self.algorithm.is_none_or(|only| only == algorithm)
    }
}

#[derive(Deserialize)]
struct RawKeySet {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// One fetched key set.
#[derive(Debug)]
pub(crate) struct KeySet {
    keys: Vec<ProviderKey>,
}

enum Lookup<'a> {
    Found(&'a ProviderKey),
    /// The key exists but cannot have produced this algorithm's signature.
    WrongAlgorithm,
    NotFound,
}

impl KeySet {
    /// Parses a JWKS document, skipping keys we cannot or must not use (encryption keys,
    /// unknown key types, weak RSA moduli) instead of rejecting the whole set: providers
    /// publish such keys next to their signing keys.
    pub(crate) fn parse(document: Value) -> std::result::Result<Self, String> {
        let raw: RawKeySet = serde_json::from_value(document)
            .map_err(|_| "the key set is not a JSON object with a keys array".to_string())?;
        let keys: Vec<ProviderKey> = raw
            .keys
            .into_iter()
            .filter_map(|key| match parse_key(key) {
                Ok(key) => key,
                Err(reason) => {
                    tracing::debug!(%reason, "skipping unusable key in the provider's key set");
                    None
                }
            })
            .collect();
        if keys.is_empty() {
            return Err("the key set contains no usable signing key".into());
        }
        Ok(Self { keys })
    }

    fn find(&self, header: &TokenHeader) -> Lookup<'_> {
        match &header.kid {
            Some(kid) => {
                let mut named = self
                    .keys
                    .iter()
                    .filter(|key| key.kid.as_deref() == Some(kid.as_str()))
                    .peekable();
                if named.peek().is_none() {
                    return Lookup::NotFound;
                }
                named
                    .find(|key| key.accepts(header.algorithm))
                    .map_or(Lookup::WrongAlgorithm, Lookup::Found)
            }
            // Without a kid the key is only unambiguous when exactly one fits the algorithm.
            None => {
                let mut fitting = self.keys.iter().filter(|key| key.accepts(header.algorithm));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Lookup::Found(key),
                    _ => Lookup::NotFound,
                }
            }
        }
    }
}

/// `Ok(None)`: a key that is fine but not for signatures.
fn parse_key(key: Value) -> std::result::Result<Option<ProviderKey>, String> {
    let raw: RawJwk = serde_json::from_value(key).map_err(|_| "not a JWK object".to_string())?;
    if raw.usage.as_deref().is_some_and(|usage| usage != "sig") {
        return Ok(None);
    }
    let algorithm = match raw.alg.as_deref() {
        None => None,
        Some(name) => match jwt::ACCEPTED_ALGORITHMS
            .iter()
            .copied()
            .find(|algorithm| jwt::algorithm_name_of(*algorithm) == name)
        {
            Some(algorithm) => Some(algorithm),
            None => return Ok(None),
        },
    };
    let component = |name: &str, value: &Option<String>| {
        value
            .as_deref()
            .and_then(jwt::base64url_decode)
            .ok_or_else(|| format!("{name} is missing or not base64url"))
    };
    let (kind, decoding_key) = match (raw.kty.as_str(), raw.crv.as_deref()) {
        ("RSA", _) => {
            let modulus = component("n", &raw.n)?;
            let exponent = component("e", &raw.e)?;
            let significant = modulus.iter().skip_while(|byte| **byte == 0).count();
            // Below 2048 bits is too weak; the verifier refuses more than 4096 bits anyway.
            if !(256..=512).contains(&significant) {
                return Err(format!("RSA modulus of {} bits", significant * 8));
            }
            if exponent.is_empty() || exponent.len() > 8 {
                return Err("RSA exponent out of range".into());
            }
            (
                KeyKind::Rsa,
                DecodingKey::from_rsa_raw_components(&modulus, &exponent),
            )
        }
        ("EC", Some(curve @ ("P-256" | "P-384"))) => {
            let (kind, length) = if curve == "P-256" {
                (KeyKind::EcP256, 32)
            } else {
                (KeyKind::EcP384, 48)
            };
            let x = component("x", &raw.x)?;
            let y = component("y", &raw.y)?;
            if x.len() != length || y.len() != length {
                return Err(format!("{curve} coordinates of the wrong length"));
            }
            let decoding_key = DecodingKey::from_ec_components(
                raw.x.as_deref().unwrap_or_default(),
                raw.y.as_deref().unwrap_or_default(),
            )
            .map_err(|error| format!("unusable {curve} key: {error}"))?;
            (kind, decoding_key)
        }
        ("OKP", Some("Ed25519")) => {
            let x = component("x", &raw.x)?;
            // The verifier slices the first 32 bytes without checking the length first.
            if x.len() != 32 {
                return Err("Ed25519 public key is not 32 bytes".into());
            }
            let decoding_key =
                DecodingKey::from_ed_components(raw.x.as_deref().unwrap_or_default())
                    .map_err(|error| format!("unusable Ed25519 key: {error}"))?;
            (KeyKind::Ed25519, decoding_key)
        }
        (kty, crv) => return Err(format!("unsupported key type {kty} {crv:?}")),
    };
    Ok(Some(ProviderKey {
        kid: raw.kid,
        algorithm,
        kind,
        decoding_key,
    }))
}

#[derive(Clone)]
struct Snapshot {
    keys: Arc<KeySet>,
    fetched_at: Instant,
    last_attempt: Instant,
}

/// The cached key set of one provider.
pub(crate) struct KeyCache {
    jwks_uri: Url,
    snapshot: RwLock<Snapshot>,
    /// Serialises fetches so concurrent logins with a new `kid` cause one fetch, not many.
    refreshing: tokio::sync::Mutex<()>,
    min_refresh_interval: Duration,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("jwks_uri", &self.jwks_uri.as_str())
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    pub(crate) async fn fetch(http: &reqwest::Client, jwks_uri: Url) -> Result<Self> {
        let keys = fetch_key_set(http, &jwks_uri).await?;
        let now = Instant::now();
        Ok(Self {
            jwks_uri,
            snapshot: RwLock::new(Snapshot {
                keys: Arc::new(keys),
                fetched_at: now,
                last_attempt: now,
            }),
            refreshing: tokio::sync::Mutex::new(()),
            min_refresh_interval: MIN_REFRESH_INTERVAL,
        })
    }

    #[cfg(test)]
    pub(crate) fn set_min_refresh_interval(&mut self, interval: Duration) {
        self.min_refresh_interval = interval;
    }

    /// Makes the last fetch look `age` old, so a test can allow a refresh without waiting.
    #[cfg(test)]
    pub(crate) fn backdate_last_attempt(&self, age: Duration) {
        let then = Instant::now()
            .checked_sub(age)
            .expect("the monotonic clock is older than the interval");
        self.update(|snapshot| snapshot.last_attempt = then);
    }

    fn snapshot(&self) -> Snapshot {
        // A poisoned lock only means a panic elsewhere while swapping an Arc: the data is whole.
        self.snapshot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The key that must have signed a token with this header.
    pub(crate) async fn key_for(
        &self,
        http: &reqwest::Client,
        header: &TokenHeader,
    ) -> Result<DecodingKey> {
        let mut snapshot = self.snapshot();
        if snapshot.fetched_at.elapsed() > MAX_KEY_SET_AGE {
            match self.refresh(http).await {
                Ok(keys) => snapshot.keys = keys,
                // The old keys were valid an hour ago; refusing every login because the key
                // endpoint hiccups would be worse than trusting them a little longer.
                Err(error) => {
                    tracing::warn!(%error, "refreshing the provider's key set failed; using the cached keys")
                }
            }
        }
        match snapshot.keys.find(header) {
            Lookup::Found(key) => return Ok(key.decoding_key.clone()),
            Lookup::WrongAlgorithm => return Err(Error::BadSignature),
            Lookup::NotFound => {}
        }
        let keys = self.refresh(http).await?;
        match keys.find(header) {
            Lookup::Found(key) => Ok(key.decoding_key.clone()),
            Lookup::WrongAlgorithm => Err(Error::BadSignature),
            Lookup::NotFound => Err(Error::UnknownKey {
                kid: header.kid.clone(),
            }),
        }
    }

    /// Fetches the key set unless a fetch was attempted within the refresh interval; returns
    /// the newest keys either way.
    async fn refresh(&self, http: &reqwest::Client) -> Result<Arc<KeySet>> {
        let _refreshing = self.refreshing.lock().await;
        // Whoever held the lock before us may just have fetched.
        let current = self.snapshot();
        if current.last_attempt.elapsed() < self.min_refresh_interval {
            return Ok(current.keys);
        }
        self.update(|snapshot| snapshot.last_attempt = Instant::now());
        let keys = Arc::new(fetch_key_set(http, &self.jwks_uri).await?);
        self.update(|snapshot| {
            snapshot.keys = keys.clone();
            snapshot.fetched_at = Instant::now();
        });
        tracing::debug!(jwks_uri = %self.jwks_uri, "refreshed the provider's key set");
        Ok(keys)
    }

    fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        let mut snapshot = self
            .snapshot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut snapshot);
    }
}

async fn fetch_key_set(http: &reqwest::Client, jwks_uri: &Url) -> Result<KeySet> {
    let document: Value = get_json(http, jwks_uri).await?;
    KeySet::parse(document).map_err(|reason| Error::Discovery {
        url: jwks_uri.to_string(),
        reason,
        source: None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn header(algorithm: Algorithm, kid: Option<&str>) -> TokenHeader {
        TokenHeader {
            algorithm,
            kid: kid.map(str::to_owned),
        }
    }

    fn ed25519_jwk(kid: &str) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": jwt::base64url(&[7; 32])})
    }

    #[test]
    fn encryption_keys_and_unknown_key_types_are_skipped_not_fatal() {
        let keys = KeySet::parse(json!({"keys": [
            {"kty": "RSA", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "X25519", "kid": "x", "x": jwt::base64url(&[1; 32])},
            {"kty": "RSA", "kid": "short", "n": jwt::base64url(&[0xff; 128]), "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "bad-ec", "x": "AA", "y": "AA"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "short-ed", "x": "AAAA"},
            {"kty": "RSA", "alg": "RSA-OAEP", "kid": "oaep", "n": "AQAB", "e": "AQAB"},
            "not an object",
            ed25519_jwk("good"),
        ]}))
        .unwrap();
        assert_eq!(keys.keys.len(), 1);
        assert_eq!(keys.keys[0].kid.as_deref(), Some("good"));
    }

    #[test]
    fn a_key_set_without_any_usable_key_is_an_error() {
        assert!(KeySet::parse(json!({"keys": []})).is_err());
        assert!(KeySet::parse(json!({"nokeys": true})).is_err());
        assert!(KeySet::parse(json!([1, 2])).is_err());
    }

    #[test]
    fn a_kid_signed_with_an_algorithm_its_key_cannot_produce_is_not_a_match() {
        let keys = KeySet::parse(json!({"keys": [ed25519_jwk("ed")]})).unwrap();
        assert!(matches!(
            keys.find(&header(Algorithm::EdDSA, Some("ed"))),
            Lookup::Found(_)
        ));
        assert!(matches!(
            keys.find(&header(Algorithm::RS256, Some("ed"))),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            keys.find(&header(Algorithm::EdDSA, Some("other"))),
            Lookup::NotFound
        ));
    }

    #[test]
    fn a_token_without_kid_uses_the_only_fitting_key_and_refuses_to_guess_between_several() {
        let one = KeySet::parse(json!({"keys": [ed25519_jwk("a")]})).unwrap();
        assert!(matches!(
            one.find(&header(Algorithm::EdDSA, None)),
            Lookup::Found(_)
        ));
        let two = KeySet::parse(json!({"keys": [ed25519_jwk("a"), ed25519_jwk("b")]})).unwrap();
        assert!(matches!(
            two.find(&header(Algorithm::EdDSA, None)),
            Lookup::NotFound
        ));
    }

    #[test]
    fn a_declared_alg_restricts_the_key_to_that_algorithm() {
        let n = jwt::base64url(&[0xab; 256]);
        let keys = KeySet::parse(json!({"keys": [
            {"kty": "RSA", "alg": "RS256", "kid": "rsa", "n": n, "e": "AQAB"}
        ]}))
        .unwrap();
        assert!(matches!(
            keys.find(&header(Algorithm::RS256, Some("rsa"))),
            Lookup::Found(_)
        ));
        assert!(matches!(
            keys.find(&header(Algorithm::PS256, Some("rsa"))),
            Lookup::WrongAlgorithm
        ));
    }
}
