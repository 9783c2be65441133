//! The fake's RS256 signing key.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// The smallest modulus relying parties accept.
const RSA_BITS: usize = 2048;

pub(crate) struct SigningKey {
    kid: String,
    encoding_key: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    fn generate() -> Result<Self, rsa::Error> {
        let private_key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, RSA_BITS)?;
        let der = private_key.to_pkcs1_der()?;
        let modulus = private_key.n().to_bytes_be();
        let exponent = private_key.e().to_bytes_be();
        // A stable id derived from the key itself, like RFC 7638 thumbprints.
        let kid = format!(
            "fake-rs256-{}",
            &URL_SAFE_NO_PAD.encode(Sha256::digest(&modulus))[..12]
        );
        let jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(&modulus),
            "e": URL_SAFE_NO_PAD.encode(&exponent),
        });
        Ok(Self {
            kid,
            encoding_key: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk,
        })
    }

    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    pub(crate) fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk] })
    }

    /// Signs `claims` as a compact JWS naming `kid` in its header.
    pub(crate) fn sign(&self, kid: &str, claims: &Value) -> jsonwebtoken::errors::Result<String> {
        // Explicit, so a second jsonwebtoken backend enabled elsewhere cannot make the
        // crate's default provider the panicking one.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding_key)
    }
}

/// RSA key generation takes seconds in an unoptimised build, so every fake in a process
/// shares one key, generated on first use off the async threads.
pub(crate) async fn process_signing_key() -> std::io::Result<Arc<SigningKey>> {
    static KEY: tokio::sync::OnceCell<Arc<SigningKey>> = tokio::sync::OnceCell::const_new();
    KEY.get_or_try_init(|| async {
        tokio::task::spawn_blocking(SigningKey::generate)
            .await
            .map_err(std::io::Error::other)?
            .map(Arc::new)
            .map_err(std::io::Error::other)
    })
    .await
    .cloned()
}

/// Flips one bit of a compact JWS's signature, keeping it valid base64url of the right length.
pub(crate) fn spoil_signature(token: &str) -> String {
    let Some((signing_input, signature)) = token.rsplit_once('.') else {
        return token.to_owned();
    };
    let Ok(mut signature) = URL_SAFE_NO_PAD.decode(signature) else {
        return token.to_owned();
    };
    if let Some(byte) = signature.get_mut(0) {
        *byte ^= 0x01;
    }
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}
