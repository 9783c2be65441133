//! The parts of JWS handling shared by ID tokens and session tokens: reading the header before
//! anything is trusted, and checking a signature without jsonwebtoken's own claim validation,
//! which reports too coarsely for our error enum.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Real ID tokens are a few KiB; anything far larger is hostile or broken, and parsing it
/// would only waste memory.
pub(crate) const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The algorithms accepted for ID tokens: everything asymmetric that providers actually use.
/// HMAC is excluded on purpose: with a client secret as the key, anyone holding the secret
/// could mint identities, and mixing it with public keys invites key-confusion attacks.
pub(crate) const ACCEPTED_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The protected header, as far as we use it.
#[derive(Debug)]
pub(crate) struct TokenHeader {
    pub(crate) algorithm: Algorithm,
    pub(crate) kid: Option<String>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<Value>,
}

/// Reads a compact JWS header without verifying anything, rejecting algorithms we never accept
/// before any key lookup happens.
pub(crate) fn read_header(token: &str) -> Result<TokenHeader> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Error::malformed(format!(
            "longer than {MAX_TOKEN_LEN} bytes"
        )));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::malformed("not three dot-separated parts"));
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| Error::malformed("header is not base64url"))?;
    let header: RawHeader = serde_json::from_slice(&header)
        .map_err(|_| Error::malformed("header is not a JSON object"))?;
    // RFC 7515 §4.1.11: extensions marked critical must be understood; we understand none.
    if header.crit.is_some() {
        return Err(Error::malformed(
            "critical header extensions are not supported",
        ));
    }
    let algorithm_name = header
        .alg
        .ok_or_else(|| Error::malformed("header has no alg"))?;
    let algorithm = ACCEPTED_ALGORITHMS
        .iter()
        .copied()
        .find(|algorithm| algorithm_name_of(*algorithm) == algorithm_name)
        .ok_or(Error::UnsupportedAlgorithm {
            algorithm: algorithm_name,
        })?;
    Ok(TokenHeader {
        algorithm,
        kid: header.kid,
    })
}

pub(crate) fn algorithm_name_of(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        // `Algorithm` is non-exhaustive; a future variant is one we do not accept yet.
        _ => "unsupported",
    }
}

/// Verifies the signature with `key` and returns the claims object, checking no claim.
pub(crate) fn verify_signature(
    token: &str,
    key: &DecodingKey,
    algorithm: Algorithm,
) -> Result<Map<String, Value>> {
    install_crypto_provider();
    let mut validation = Validation::new(algorithm);
    // Every claim is checked by the caller, which knows which error each failure deserves.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let data =
        jsonwebtoken::decode::<Value>(token, key, &validation).map_err(|error| {
            match error.kind() {
                JwtErrorKind::InvalidSignature
                | JwtErrorKind::InvalidAlgorithm
                | JwtErrorKind::InvalidEcdsaKey
                | JwtErrorKind::InvalidEddsaKey
                | JwtErrorKind::InvalidRsaKey(_)
                | JwtErrorKind::InvalidKeyFormat => Error::BadSignature,
                JwtErrorKind::Base64(_) => Error::malformed("a part is not base64url"),
                JwtErrorKind::Json(_) | JwtErrorKind::Utf8(_) => {
                    Error::malformed("a part is not valid JSON")
                }
                _ => Error::malformed(error.to_string()),
            }
        })?;
    match data.claims {
        Value::Object(claims) => Ok(claims),
        _ => Err(Error::malformed("claims are not a JSON object")),
    }
}

/// jsonwebtoken picks its crypto backend from its crate features, and falls back to a provider
/// that panics when feature unification enables two. Installing ours explicitly keeps
/// verification working either way; once any provider is installed this is a no-op.
pub(crate) fn install_crypto_provider() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

/// A NumericDate claim (RFC 7519 §2): JSON number of seconds, fractions allowed.
pub(crate) fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => number
            .as_i64()
            .or_else(|| {
                number
                    .as_f64()
                    .filter(|seconds| seconds.is_finite() && seconds.abs() < 1e15)
                    .map(|seconds| seconds.floor() as i64)
            })
            .map(Some)
            .ok_or_else(|| Error::malformed(format!("{name} is not a usable date"))),
        Some(_) => Err(Error::malformed(format!("{name} is not a number"))),
    }
}

pub(crate) fn string_claim<'a>(
    claims: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(Error::malformed(format!("{name} is not a string"))),
    }
}

pub(crate) fn base64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_with_header(header: &str) -> String {
        format!("{}.e30.c2ln", base64url(header.as_bytes()))
    }

    #[test]
    fn none_and_hmac_algorithms_are_refused_before_any_key_is_looked_up() {
        for algorithm in ["none", "HS256", "RSA-OAEP", ""] {
            let header = format!(r#"{{"alg":"{algorithm}","kid":"k"}}"#);
            match read_header(&token_with_header(&header)) {
                Err(Error::UnsupportedAlgorithm { algorithm: named }) => {
                    assert_eq!(named, algorithm)
                }
                other => panic!("{algorithm}: expected UnsupportedAlgorithm, got {other:?}"),
            }
        }
    }

    #[test]
    fn header_garbage_is_reported_as_malformed_never_panics() {
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        let inputs = [
            "",
            ".",
            "..",
            "a.b",
            "a.b.c.d",
            "!!!.e30.c2ln",
            "bnVsbA.e30.c2ln",
            "W10.e30.c2ln",
            long.as_str(),
            "\u{0}.\u{0}.\u{0}",
        ];
        for input in inputs {
            assert!(
                matches!(read_header(input), Err(Error::MalformedToken { .. })),
                "{input:?}"
            );
        }
        assert!(matches!(
            read_header(&token_with_header(r#"{"kid":"k"}"#)),
            Err(Error::MalformedToken { .. })
        ));
        assert!(matches!(
            read_header(&token_with_header(r#"{"alg":"RS256","crit":["exp"]}"#)),
            Err(Error::MalformedToken { .. })
        ));
    }

    #[test]
    fn numeric_dates_accept_integers_and_fractions_and_reject_other_types() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"a":1700000000,"b":1700000000.9,"c":"1700000000","d":1e300,"e":null}"#,
        )
        .unwrap();
        assert_eq!(numeric_date(&claims, "a").unwrap(), Some(1_700_000_000));
        assert_eq!(numeric_date(&claims, "b").unwrap(), Some(1_700_000_000));
        assert!(numeric_date(&claims, "c").is_err());
        assert!(numeric_date(&claims, "d").is_err());
        assert_eq!(numeric_date(&claims, "e").unwrap(), None);
        assert_eq!(numeric_date(&claims, "missing").unwrap(), None);
    }
}
