//! The key ring of key-encryption keys, from `CADENZA_SECRET_KEKS` (a key spec) or
//! `CADENZA_SECRET_KEKS_FILE` (a JSON key file). Every service that seals or opens secrets needs
//! one; `docs/SECURITY.md` describes both forms and rotation.

use anyhow::{Context, bail};
use cadenza_crypto::KeyRing;
use secrecy::{ExposeSecret, SecretString};

/// Loads the key ring from exactly one of the two settings. Errors name the setting and never
/// repeat key material.
pub fn load_keyring(spec: Option<&SecretString>, file: Option<&str>) -> anyhow::Result<KeyRing> {
    let spec = spec.filter(|spec| !spec.expose_secret().trim().is_empty());
    let file = file.map(str::trim).filter(|file| !file.is_empty());
    match (spec, file) {
        (Some(_), Some(_)) => {
            bail!("both CADENZA_SECRET_KEKS and CADENZA_SECRET_KEKS_FILE are set; set only one")
        }
        (Some(spec), None) => KeyRing::from_spec(spec.expose_secret())
            .context("CADENZA_SECRET_KEKS is not a valid key spec"),
        (None, Some(file)) => {
            KeyRing::from_file(file).context("CADENZA_SECRET_KEKS_FILE cannot be used")
        }
        (None, None) => bail!(
            "no key-encryption key is configured: set CADENZA_SECRET_KEKS_FILE to a key file or \
             CADENZA_SECRET_KEKS to `id:base64key` (generate one with `cadenza-api secrets \
             generate-kek`; see docs/SECURITY.md)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_source_is_required_and_errors_hide_key_material() {
        let (id, key) = KeyRing::generate_key().expect("key");
        let spec = SecretString::from(format!("{id}:{}", key.expose_secret()));
        let ring = load_keyring(Some(&spec), None).expect("spec");
        assert_eq!(ring.active_id(), id);

        let none = load_keyring(None, None).expect_err("nothing configured");
        assert!(format!("{none:#}").contains("CADENZA_SECRET_KEKS"));
        let blank = SecretString::from("  ");
        assert!(load_keyring(Some(&blank), Some("")).is_err());
        assert!(load_keyring(Some(&spec), Some("/keys.json")).is_err());

        let bad = SecretString::from(format!("{id}:{}x", key.expose_secret()));
        let err = format!("{:#}", load_keyring(Some(&bad), None).expect_err("bad key"));
        assert!(err.contains("CADENZA_SECRET_KEKS"), "{err}");
        assert!(!err.contains(key.expose_secret()), "{err}");

        let missing = format!(
            "{:#}",
            load_keyring(None, Some("/nonexistent/keys.json")).expect_err("missing file")
        );
        assert!(missing.contains("CADENZA_SECRET_KEKS_FILE"), "{missing}");
    }
}
