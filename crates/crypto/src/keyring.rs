//! Key-encryption keys (KEKs): which exist, and which one wraps new data keys.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use aes_gcm::{Aes256Gcm, KeyInit as _};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use rand::RngCore as _;
use rand::rngs::OsRng;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Length of a key-encryption key in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// Longest accepted key id. Ids are stored beside every secret, so they stay short.
pub const MAX_KEY_ID_LEN: usize = 64;

/// Operators paste keys from many tools; some drop the padding, none should be refused for it.
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The key-encryption keys a process knows, by id. Exactly one is active: it wraps the data
/// keys of newly sealed secrets and is the target of [`rewrap`](crate::rewrap). The others only
/// unwrap data keys that still name them, until rotation has moved every secret off them.
///
/// Key material never leaves the ring: `Debug` shows the ids only, and the expanded AES key
/// schedules are zeroized when the ring is dropped.
#[derive(Clone)]
pub struct KeyRing {
    /// The active key first, then the others in configured order.
    keys: Vec<KeyEncryptionKey>,
}

#[derive(Clone)]
pub(crate) struct KeyEncryptionKey {
    pub(crate) id: String,
    pub(crate) cipher: Aes256Gcm,
}

impl KeyRing {
    /// Parses the compact form meant for an environment variable:
    /// `kek-2026-11:BASE64KEY,kek-2026-05:BASE64KEY`.
    ///
    /// The **first** entry is the active key; every other entry only decrypts. Whitespace
    /// around entries, ids and keys is ignored. Keys are 32 bytes in standard base64, with or
    /// without padding.
    pub fn from_spec(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(Error::EmptyKeyRing);
        }
        let mut entries = Vec::new();
        for (index, entry) in spec.split(',').enumerate() {
            let entry_number = index + 1;
            let entry = entry.trim();
            if entry.is_empty() {
                return Err(Error::MalformedKeySpec {
                    entry: entry_number,
                    reason: "it is empty (a stray comma?)",
                });
            }
            let Some((id, key)) = entry.split_once(':') else {
                return Err(Error::MalformedKeySpec {
                    entry: entry_number,
                    reason: "expected `id:base64key`",
                });
            };
            entries.push(RawKey {
                entry_number,
                id: id.trim(),
                key_base64: key.trim(),
            });
        }
        let active = entries[0].id.to_owned();
        Self::build(&active, &entries)
    }

    /// Reads a JSON key file:
    ///
    /// ```json
    /// {"active": "kek-2026-11", "keys": [{"id": "kek-2026-11", "key": "BASE64KEY"},
    ///                                    {"id": "kek-2026-05", "key": "BASE64KEY"}]}
    /// ```
    ///
    /// `active` names the key that wraps new data keys; it must be one of `keys`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let contents = std::fs::read_to_string(path)
            .map(Zeroizing::new)
            .map_err(|source| Error::KeyFileUnreadable {
                path: path.to_owned(),
                source,
            })?;
        let malformed = |reason: String| Error::KeyFileMalformed {
            path: path.to_owned(),
            reason,
        };
        let file: KeyFile = serde_json::from_str(&contents)
            .map_err(|error| malformed(describe_json_error(&error)))?;
        if file.keys.is_empty() {
            return Err(Error::EmptyKeyRing);
        }
        let entries: Vec<RawKey<'_>> = file
            .keys
            .iter()
            .enumerate()
            .map(|(index, key)| RawKey {
                entry_number: index + 1,
                id: key.id.trim(),
                key_base64: key.key.expose_secret().trim(),
            })
            .collect();
        Self::build(file.active.trim(), &entries)
    }

    /// A ring with one fresh random key that lives as long as the process: for tests and
    /// throw-away development set-ups. Whatever it seals is lost with it.
    pub fn generate_ephemeral(kek_id: &str) -> Result<Self> {
        validate_key_id(kek_id).map_err(|reason| Error::InvalidKeyId { entry: 1, reason })?;
        let key = random_key()?;
        Ok(Self {
            keys: vec![KeyEncryptionKey {
                id: kek_id.to_owned(),
                cipher: cipher_for(&key[..]),
            }],
        })
    }

    /// A new key for operators: a date-stamped id with a random suffix (e.g.
    /// `kek-2026-11-3f9a`), and 32 random bytes in standard base64, ready for a key spec or
    /// key file. Also available as `cargo run -p cadenza-crypto --example generate-kek`.
    pub fn generate_key() -> Result<(String, SecretString)> {
        let key = random_key()?;
        let mut suffix = [0_u8; 2];
        OsRng
            .try_fill_bytes(&mut suffix)
            .map_err(|source| Error::Randomness { source })?;
        let today = time::OffsetDateTime::now_utc().date();
        let id = format!(
            "kek-{}-{:02}-{}",
            today.year(),
            u8::from(today.month()),
            hex::encode(suffix)
        );
        Ok((id, SecretString::from(STANDARD.encode(&key[..]))))
    }

    /// Whether a key with this id is configured (active or decrypt-only).
    pub fn contains(&self, kek_id: &str) -> bool {
        self.keys.iter().any(|key| key.id == kek_id)
    }

    /// The id of the key that wraps new data keys.
    pub fn active_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Every configured key id, the active one first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|key| key.id.as_str())
    }

    /// Refuses key ids this ring does not hold, e.g. every distinct `kek_id` in the secrets
    /// table at start-up: a process that could not open some of them must not start.
    /// The error lists each missing id once, sorted.
    pub fn check_known<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let missing: BTreeSet<&str> = ids.into_iter().filter(|id| !self.contains(id)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::MissingKeys {
                ids: missing.into_iter().map(str::to_owned).collect(),
            })
        }
    }

    pub(crate) fn active(&self) -> &KeyEncryptionKey {
        &self.keys[0]
    }

    pub(crate) fn cipher(&self, kek_id: &str) -> Result<&Aes256Gcm> {
        self.keys
            .iter()
            .find(|key| key.id == kek_id)
            .map(|key| &key.cipher)
            .ok_or_else(|| Error::UnknownKey {
                kek_id: kek_id.to_owned(),
            })
    }

    fn build(active: &str, entries: &[RawKey<'_>]) -> Result<Self> {
        if entries.is_empty() {
            return Err(Error::EmptyKeyRing);
        }
        let mut decoded: Vec<(&str, Zeroizing<Vec<u8>>)> = Vec::with_capacity(entries.len());
        for entry in entries {
            validate_key_id(entry.id).map_err(|reason| Error::InvalidKeyId {
                entry: entry.entry_number,
                reason,
            })?;
            if decoded.iter().any(|(id, _)| *id == entry.id) {
                return Err(Error::DuplicateKeyId {
                    kek_id: entry.id.to_owned(),
                });
            }
            let key = decode_key(entry.id, entry.key_base64)?;
            if let Some((same_as, _)) = decoded.iter().find(|(_, other)| *other == key) {
                return Err(Error::DuplicateKeyMaterial {
                    kek_id: entry.id.to_owned(),
                    same_as: (*same_as).to_owned(),
                });
            }
            decoded.push((entry.id, key));
        }
        let Some(active_index) = decoded.iter().position(|(id, _)| *id == active) else {
            return Err(Error::ActiveKeyMissing {
                active: active.to_owned(),
            });
        };
        decoded.swap(0, active_index);
        // Keep the configured order for the decrypt-only keys, which `ids()` reports.
        decoded[1..].sort_by_key(|(id, _)| entries.iter().position(|entry| entry.id == *id));
        let keys = decoded
            .iter()
            .map(|(id, key)| KeyEncryptionKey {
                id: (*id).to_owned(),
                cipher: cipher_for(key),
            })
            .collect();
        Ok(Self { keys })
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("KeyRing")
            .field("active", &self.active_id())
            .field("ids", &self.ids().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

struct RawKey<'a> {
    entry_number: usize,
    id: &'a str,
    key_base64: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    active: String,
    keys: Vec<KeyFileEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileEntry {
    id: String,
    key: SecretString,
}

/// Checks the rules for key ids. They are restricted to a small alphabet so they can never be
/// confused with the separators of a key spec, nor with a key.
pub(crate) fn validate_key_id(id: &str) -> std::result::Result<(), &'static str> {
    if id.is_empty() {
        return Err("it is empty");
    }
    if id.len() > MAX_KEY_ID_LEN {
        return Err("it is longer than 64 characters");
    }
    if !id
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
    {
        return Err("only letters, digits, '.', '_' and '-' are allowed");
    }
    // Swapping id and key is an easy mistake; the id would then be logged in later errors.
    if KEY_BASE64
        .decode(id)
        .map(Zeroizing::new)
        .is_ok_and(|bytes| bytes.len() == KEY_LEN)
    {
        return Err("it looks like a key (are the id and the key swapped?)");
    }
    Ok(())
}

fn decode_key(kek_id: &str, key_base64: &str) -> Result<Zeroizing<Vec<u8>>> {
    // Reserving enough up front means decoding never reallocates and leaves no copy behind.
    let mut key = Zeroizing::new(Vec::with_capacity(key_base64.len()));
    KEY_BASE64
        .decode_vec(key_base64, &mut key)
        .map_err(|_| Error::KeyNotBase64 {
            kek_id: kek_id.to_owned(),
        })?;
    if key.len() != KEY_LEN {
        return Err(Error::WrongKeyLength {
            kek_id: kek_id.to_owned(),
            actual_len: key.len(),
        });
    }
    Ok(key)
}

pub(crate) fn random_key() -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let mut key = Zeroizing::new([0_u8; KEY_LEN]);
    OsRng
        .try_fill_bytes(&mut key[..])
        .map_err(|source| Error::Randomness { source })?;
    Ok(key)
}

pub(crate) fn cipher_for(key: &[u8]) -> Aes256Gcm {
    // Every caller has checked the length; a wrong one here is a bug in this crate.
    Aes256Gcm::new_from_slice(key).expect("AES-256 keys are 32 bytes")
}

/// serde_json quotes the offending value in some messages ("invalid type: string \"...\"");
/// when that value is a key, the message must not reach the log.
fn describe_json_error(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let position = format!("line {} column {}", error.line(), error.column());
    match error.classify() {
        Category::Io | Category::Eof => format!("the JSON ends early ({position})"),
        Category::Syntax => format!("invalid JSON at {position}"),
        Category::Data => {
            let message = error.to_string();
            let names_only_fields = ["missing field", "unknown field", "duplicate field"]
                .iter()
                .any(|prefix| message.starts_with(prefix));
            if names_only_fields {
                message
            } else {
                format!(
                    "expected {{\"active\": \"id\", \"keys\": [{{\"id\": \"...\", \"key\": \
                     \"base64\"}}]}}, found a value of another type at {position}"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    // Fixed keys keep failures reproducible; none of them protects anything.
    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEY_B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    fn key_file(contents: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(contents.as_bytes()).unwrap();
        file
    }

    #[test]
    fn the_first_key_of_a_spec_is_active_and_all_are_known() {
        let ring = KeyRing::from_spec(&format!(" kek-new:{KEY_B} , kek-old : {KEY_A} ")).unwrap();
        assert_eq!(ring.active_id(), "kek-new");
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["kek-new", "kek-old"]);
        assert!(ring.contains("kek-old"));
        assert!(!ring.contains("kek-other"));
    }

    #[test]
    fn keys_without_base64_padding_are_accepted() {
        let ring = KeyRing::from_spec(&format!("k1:{}", KEY_A.trim_end_matches('='))).unwrap();
        assert_eq!(ring.active_id(), "k1");
    }

    #[test]
    fn spec_errors_name_the_entry_and_the_problem() {
        assert!(matches!(KeyRing::from_spec("  "), Err(Error::EmptyKeyRing)));
        assert!(matches!(
            KeyRing::from_spec(&format!("k1:{KEY_A},,k2:{KEY_B}")),
            Err(Error::MalformedKeySpec { entry: 2, .. })
        ));
        assert!(matches!(
            KeyRing::from_spec(&format!("k1:{KEY_A},k2{KEY_B}")),
            Err(Error::MalformedKeySpec { entry: 2, .. })
        ));
        assert!(matches!(
            KeyRing::from_spec(&format!("k1:{KEY_A},k1:{KEY_B}")),
            Err(Error::DuplicateKeyId { kek_id }) if kek_id == "k1"
        ));
        assert!(matches!(
            KeyRing::from_spec(&format!("k1:{KEY_A},k2:{KEY_A}")),
            Err(Error::DuplicateKeyMaterial { kek_id, same_as }) if kek_id == "k2" && same_as == "k1"
        ));
        assert!(matches!(
            KeyRing::from_spec(&format!("k:1:{KEY_A}")),
            Err(Error::KeyNotBase64 { .. })
        ));
        assert!(matches!(
            KeyRing::from_spec(&format!("bad id:{KEY_A}")),
            Err(Error::InvalidKeyId { entry: 1, .. })
        ));
        let too_long = "k".repeat(MAX_KEY_ID_LEN + 1);
        assert!(matches!(
            KeyRing::from_spec(&format!("{too_long}:{KEY_A}")),
            Err(Error::InvalidKeyId { entry: 1, .. })
        ));
    }

    #[test]
    fn a_key_of_the_wrong_length_is_refused_with_its_length() {
        let short = STANDARD.encode([7_u8; 16]);
        let error = KeyRing::from_spec(&format!("k1:{short}")).unwrap_err();
        assert!(matches!(
            error,
            Error::WrongKeyLength { actual_len: 16, .. }
        ));
        assert_eq!(
            error.to_string(),
            "key \"k1\" decodes to 16 bytes, an AES-256 key has 32"
        );
    }

    #[test]
    fn errors_never_repeat_key_material() {
        let bad_base64 = format!("{}!", &KEY_A[..43]);
        let swapped = KEY_A.trim_end_matches('=');
        let cases = [
            (format!("k1:{bad_base64}"), bad_base64.clone()),
            // Id and key swapped: the key sits where the id belongs.
            (format!("{swapped}:kek-1"), swapped.to_owned()),
            (format!("{KEY_A}:kek-1"), KEY_A.to_owned()),
        ];
        for (spec, key) in cases {
            let message = KeyRing::from_spec(&spec).unwrap_err().to_string();
            assert!(!message.contains(&key[..8]), "{message}");
        }
    }

    #[test]
    fn a_key_file_names_its_active_key_explicitly() {
        let file = key_file(&format!(
            r#"{{"active": "kek-new", "keys": [{{"id": "kek-old", "key": "{KEY_A}"}},
                                              {{"id": "kek-new", "key": "{KEY_B}"}},
                                              {{"id": "kek-older", "key": "{}"}}]}}"#,
            STANDARD.encode([9_u8; 32])
        ));
        let ring = KeyRing::from_file(file.path()).unwrap();
        assert_eq!(ring.active_id(), "kek-new");
        assert_eq!(
            ring.ids().collect::<Vec<_>>(),
            ["kek-new", "kek-old", "kek-older"]
        );
    }

    #[test]
    fn key_file_errors_name_the_problem_without_key_material() {
        let missing_active = key_file(&format!(
            r#"{{"active": "kek-gone", "keys": [{{"id": "kek-1", "key": "{KEY_A}"}}]}}"#
        ));
        assert!(matches!(
            KeyRing::from_file(missing_active.path()),
            Err(Error::ActiveKeyMissing { active }) if active == "kek-gone"
        ));

        let empty = key_file(r#"{"active": "kek-1", "keys": []}"#);
        assert!(matches!(
            KeyRing::from_file(empty.path()),
            Err(Error::EmptyKeyRing)
        ));

        let key_in_wrong_place =
            key_file(&format!(r#"{{"active": "kek-1", "keys": ["{KEY_A}"]}}"#));
        let error = KeyRing::from_file(key_in_wrong_place.path()).unwrap_err();
        assert!(matches!(error, Error::KeyFileMalformed { .. }));
        assert!(!error.to_string().contains(&KEY_A[..8]), "{error}");

        let unknown_field = key_file(&format!(
            r#"{{"active": "k", "keys": [{{"id": "k", "key": "{KEY_A}", "kind": "aes"}}]}}"#
        ));
        let error = KeyRing::from_file(unknown_field.path()).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `kind`"),
            "{error}"
        );

        let not_json = key_file("active = kek-1");
        assert!(matches!(
            KeyRing::from_file(not_json.path()),
            Err(Error::KeyFileMalformed { .. })
        ));

        let directory = tempfile::tempdir().unwrap();
        assert!(matches!(
            KeyRing::from_file(directory.path().join("absent.json")),
            Err(Error::KeyFileUnreadable { .. })
        ));
    }

    #[test]
    fn check_known_lists_each_missing_id_once_in_order() {
        let ring = KeyRing::from_spec(&format!("k2:{KEY_B},k1:{KEY_A}")).unwrap();
        ring.check_known(["k1", "k2", "k1"]).unwrap();
        ring.check_known([]).unwrap();
        let error = ring.check_known(["k1", "k9", "k3", "k9"]).unwrap_err();
        assert!(matches!(&error, Error::MissingKeys { ids } if ids == &["k3", "k9"]));
        assert_eq!(
            error.to_string(),
            "stored secrets use key ids that are not configured: k3, k9"
        );
    }

    #[test]
    fn generated_keys_load_and_differ() {
        let (first_id, first_key) = KeyRing::generate_key().unwrap();
        let (second_id, second_key) = KeyRing::generate_key().unwrap();
        assert!(first_id.starts_with("kek-") && first_id.len() == "kek-2026-11-3f9a".len());
        assert_ne!(first_key.expose_secret(), second_key.expose_secret());
        assert_eq!(first_key.expose_secret().len(), 44);
        let spec = if first_id == second_id {
            format!("{first_id}:{}", first_key.expose_secret())
        } else {
            format!(
                "{first_id}:{},{second_id}:{}",
                first_key.expose_secret(),
                second_key.expose_secret()
            )
        };
        assert_eq!(KeyRing::from_spec(&spec).unwrap().active_id(), first_id);
    }

    #[test]
    fn debug_shows_ids_only() {
        let ring = KeyRing::from_spec(&format!("k1:{KEY_A},k2:{KEY_B}")).unwrap();
        let debug = format!("{ring:?}");
        assert_eq!(debug, r#"KeyRing { active: "k1", ids: ["k1", "k2"], .. }"#);
    }

    #[test]
    fn an_ephemeral_ring_has_one_active_key() {
        let ring = KeyRing::generate_ephemeral("dev").unwrap();
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["dev"]);
        assert!(matches!(
            KeyRing::generate_ephemeral("no spaces"),
            Err(Error::InvalidKeyId { .. })
        ));
    }
}
