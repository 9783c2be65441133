//! Envelope encryption of secret values: a fresh data key (DEK) per secret version encrypts the
//! value; a key-encryption key (KEK) from the [`KeyRing`] wraps the DEK.

use std::fmt;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::AeadInOut as _;
use rand::RngCore as _;
use rand::rngs::OsRng;
use secrecy::{ExposeSecret as _, SecretString};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::error::{Error, Result, SealedPart};
use crate::keyring::{self, KEY_LEN, KeyRing};

/// The version of the sealed-secret format this build writes. It is the first byte of
/// [`SealedSecret::to_bytes`] and part of the data key's associated data, so one format can
/// never be confused with another.
///
/// Format 2 binds the secret's project and name as well as its org, id and version. Format 1
/// (org, id and version only) is still read, and [`rewrap`] upgrades it to format 2.
pub const FORMAT_VERSION: u8 = 2;
/// The first format, which bound org, secret id and version but not project and name. Still
/// opened; [`SealedSecret::needs_rewrap`] reports it, and [`rewrap`] upgrades it.
pub const FORMAT_V1: u8 = 1;
/// Length of the AES-GCM nonces.
pub const NONCE_LEN: usize = 12;
/// Length of the AES-GCM authentication tag at the end of each ciphertext.
pub const TAG_LEN: usize = 16;
/// Length of a wrapped data key: the 32-byte key encrypted, then its tag.
pub const WRAPPED_DEK_LEN: usize = KEY_LEN + TAG_LEN;

// Distinct labels keep the two ciphertexts of an envelope from ever standing in for each other.
const PAYLOAD_LABEL: &[u8] = b"cadenza.secret.payload";
const DATA_KEY_LABEL: &[u8] = b"cadenza.secret.data-key";

/// What a sealed secret is bound to. Both the payload and the wrapped data key are
/// authenticated against it, so a ciphertext copied to another org, project, secret or name, or
/// an older version put back in place of the current one, fails to open.
///
/// Canonical encoding of the data key's associated data, format 2:
///
/// | bytes | field |
/// |---|---|
/// | 24 | label `cadenza.secret.data-key` (ASCII) |
/// | 1 | `0x00` (ends the label) |
/// | 1 | format version (`0x02`) |
/// | 16 | `org_id`, RFC 4122 byte order |
/// | 16 | `secret_id`, RFC 4122 byte order |
/// | 4 | `version`, big-endian two's complement |
/// | 1 | `0x00` for an org-wide secret, `0x01` for a project's |
/// | 0 or 16 | `project_id`, RFC 4122 byte order, when there is one |
/// | 4 + n | length of the name, big-endian, then its UTF-8 bytes |
/// | 1 + n | length of the KEK id, then its ASCII bytes |
///
/// Format 1 stopped after `version`, before the KEK id: project and name were not bound.
///
/// The payload's associated data is the label `cadenza.secret.payload`, `0x00`, `0x01`,
/// `org_id`, `secret_id` and `version`, the same in both formats. Project and name reach the
/// payload through the data key: it is unique to one secret version and only unwraps with the
/// full binding. This keeps the format upgrade, like key rotation, a re-wrap of the data key
/// that never decrypts a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Aad {
    pub org_id: Uuid,
    /// `None` for an org-wide secret.
    pub project_id: Option<Uuid>,
    pub secret_id: Uuid,
    pub name: String,
    pub version: i32,
}

impl Aad {
    pub fn new(
        org_id: Uuid,
        project_id: Option<Uuid>,
        secret_id: Uuid,
        name: &str,
        version: i32,
    ) -> Self {
        Self {
            org_id,
            project_id,
            secret_id,
            name: name.to_owned(),
            version,
        }
    }

    fn payload_bytes(&self) -> Vec<u8> {
        // Unchanged since format 1 (see the type's documentation).
        self.encode(PAYLOAD_LABEL, FORMAT_V1, 0)
    }

    /// The KEK id is bound too, so the id stored beside a wrapped key cannot be changed
    /// without detection. The payload does not include it: re-wrapping changes the id and must
    /// leave the payload untouched.
    fn data_key_bytes(&self, format: u8, kek_id: &str) -> Vec<u8> {
        let scope_len = 1 + 16 + 4 + self.name.len();
        let mut bytes = self.encode(DATA_KEY_LABEL, format, scope_len + 1 + kek_id.len());
        if format >= 2 {
            match self.project_id {
                Some(project) => {
                    bytes.push(1);
                    bytes.extend_from_slice(project.as_bytes());
                }
                None => bytes.push(0),
            }
            // Names are at most 64 bytes in practice; four length bytes leave no ambiguity.
            bytes.extend_from_slice(
                &u32::try_from(self.name.len())
                    .unwrap_or(u32::MAX)
                    .to_be_bytes(),
            );
            bytes.extend_from_slice(self.name.as_bytes());
        }
        // Ids are at most 64 bytes, checked when a key ring or sealed secret is built.
        bytes.push(u8::try_from(kek_id.len()).unwrap_or(u8::MAX));
        bytes.extend_from_slice(kek_id.as_bytes());
        bytes
    }

    fn encode(&self, label: &[u8], format: u8, extra_capacity: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(label.len() + 2 + 16 + 16 + 4 + extra_capacity);
        bytes.extend_from_slice(label);
        bytes.push(0);
        bytes.push(format);
        bytes.extend_from_slice(self.org_id.as_bytes());
        bytes.extend_from_slice(self.secret_id.as_bytes());
        bytes.extend_from_slice(&self.version.to_be_bytes());
        bytes
    }
}

/// An encrypted secret value, safe to store: nothing in it is secret, and it only opens with
/// the key ring holding `kek_id` and the same [`Aad`].
///
/// Stable byte layout of [`to_bytes`](Self::to_bytes), the same in formats 1 and 2 (they differ
/// only in what the data key is bound to, see [`Aad`]):
///
/// | offset | bytes | field |
/// |---|---|---|
/// | 0 | 1 | format version, `0x02` (or `0x01`) |
/// | 1 | 1 | `n`, length of the KEK id (1 to 64) |
/// | 2 | n | KEK id, ASCII (`A-Z a-z 0-9 . _ -`) |
/// | 2 + n | 12 | nonce of the wrapped data key |
/// | 14 + n | 48 | wrapped data key: 32 bytes of AES-256-GCM ciphertext, then the 16-byte tag |
/// | 62 + n | 12 | nonce of the payload |
/// | 74 + n | rest | payload: the UTF-8 value encrypted (same length), then the 16-byte tag |
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    format: u8,
    kek_id: String,
    wrapped_dek: [u8; WRAPPED_DEK_LEN],
    dek_nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
    nonce: [u8; NONCE_LEN],
}

impl SealedSecret {
    /// Reassembles a sealed secret of the current format stored as separate columns, checking
    /// only its shape; authenticity is checked by [`open`].
    pub fn from_parts(
        kek_id: &str,
        wrapped_dek: &[u8],
        dek_nonce: &[u8],
        ciphertext: &[u8],
        nonce: &[u8],
    ) -> Result<Self> {
        Self::from_format_parts(
            FORMAT_VERSION,
            kek_id,
            wrapped_dek,
            dek_nonce,
            ciphertext,
            nonce,
        )
    }

    fn from_format_parts(
        format: u8,
        kek_id: &str,
        wrapped_dek: &[u8],
        dek_nonce: &[u8],
        ciphertext: &[u8],
        nonce: &[u8],
    ) -> Result<Self> {
        let malformed = |reason| Error::MalformedSealedSecret { reason };
        keyring::validate_key_id(kek_id).map_err(|_| malformed("the key id is invalid"))?;
        if ciphertext.len() < TAG_LEN {
            return Err(malformed("the ciphertext is shorter than its tag"));
        }
        Ok(Self {
            format,
            kek_id: kek_id.to_owned(),
            wrapped_dek: wrapped_dek
                .try_into()
                .map_err(|_| malformed("the wrapped data key is not 48 bytes"))?,
            dek_nonce: dek_nonce
                .try_into()
                .map_err(|_| malformed("the data key nonce is not 12 bytes"))?,
            ciphertext: ciphertext.to_vec(),
            nonce: nonce
                .try_into()
                .map_err(|_| malformed("the nonce is not 12 bytes"))?,
        })
    }

    /// Parses the layout documented on the type.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let malformed = |reason| Error::MalformedSealedSecret { reason };
        let (&format, rest) = bytes.split_first().ok_or(malformed("it is empty"))?;
        if format != FORMAT_VERSION && format != FORMAT_V1 {
            return Err(Error::UnsupportedFormat { format });
        }
        let (&id_len, rest) = rest
            .split_first()
            .ok_or(malformed("it ends before the key id"))?;
        let (kek_id, rest) = rest
            .split_at_checked(usize::from(id_len))
            .ok_or(malformed("it ends inside the key id"))?;
        let kek_id = std::str::from_utf8(kek_id).map_err(|_| malformed("the key id is invalid"))?;
        let (dek_nonce, rest) = rest
            .split_at_checked(NONCE_LEN)
            .ok_or(malformed("it ends inside the data key nonce"))?;
        let (wrapped_dek, rest) = rest
            .split_at_checked(WRAPPED_DEK_LEN)
            .ok_or(malformed("it ends inside the wrapped data key"))?;
        let (nonce, ciphertext) = rest
            .split_at_checked(NONCE_LEN)
            .ok_or(malformed("it ends inside the nonce"))?;
        Self::from_format_parts(format, kek_id, wrapped_dek, dek_nonce, ciphertext, nonce)
    }

    /// The layout documented on the type.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(
            2 + self.kek_id.len() + NONCE_LEN + WRAPPED_DEK_LEN + NONCE_LEN + self.ciphertext.len(),
        );
        bytes.push(self.format);
        // Every constructor checked the id against `MAX_KEY_ID_LEN`.
        bytes.push(u8::try_from(self.kek_id.len()).unwrap_or(u8::MAX));
        bytes.extend_from_slice(self.kek_id.as_bytes());
        bytes.extend_from_slice(&self.dek_nonce);
        bytes.extend_from_slice(&self.wrapped_dek);
        bytes.extend_from_slice(&self.nonce);
        bytes.extend_from_slice(&self.ciphertext);
        bytes
    }

    /// The format it was sealed in: [`FORMAT_VERSION`], or [`FORMAT_V1`] until re-wrapped.
    pub fn format(&self) -> u8 {
        self.format
    }

    /// The id of the key-encryption key that wrapped the data key. Store it in its own column
    /// too: rotation finds the rows still to re-wrap by it, and start-up checks every distinct
    /// id against the key ring.
    pub fn kek_id(&self) -> &str {
        &self.kek_id
    }

    pub fn wrapped_dek(&self) -> &[u8] {
        &self.wrapped_dek
    }

    pub fn dek_nonce(&self) -> &[u8; NONCE_LEN] {
        &self.dek_nonce
    }

    pub fn ciphertext(&self) -> &[u8] {
        &self.ciphertext
    }

    pub fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }

    /// Whether [`rewrap`] would change more than a nonce: its KEK is not the active one, or it
    /// is of an older format.
    pub fn needs_rewrap(&self, keyring: &KeyRing) -> bool {
        self.kek_id != keyring.active_id() || self.format != FORMAT_VERSION
    }
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SealedSecret")
            .field("format", &self.format)
            .field("kek_id", &self.kek_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// Encrypts a secret value under a fresh data key, and wraps that key with the active KEK.
pub fn seal(keyring: &KeyRing, aad: &Aad, value: &SecretString) -> Result<SealedSecret> {
    let dek = keyring::random_key()?;
    // Each data key encrypts exactly one value, so the nonce could be fixed; a random one
    // costs nothing and keeps that reasoning out of the security argument.
    let nonce = random_nonce()?;
    let ciphertext = encrypt(
        &keyring::cipher_for(&dek[..]),
        &nonce,
        &aad.payload_bytes(),
        value.expose_secret().as_bytes(),
    )?;
    let wrapped = wrap(keyring, aad, &dek, FORMAT_VERSION)?;
    Ok(SealedSecret {
        format: FORMAT_VERSION,
        kek_id: wrapped.kek_id,
        wrapped_dek: wrapped.wrapped_dek,
        dek_nonce: wrapped.dek_nonce,
        ciphertext,
        nonce,
    })
}

/// Decrypts a sealed secret with the KEK it names. Fails with [`Error::UnknownKey`] when that
/// KEK is not configured, and with [`Error::Decrypt`] when anything was altered or `aad`
/// differs from the one it was sealed with.
pub fn open(keyring: &KeyRing, aad: &Aad, sealed: &SealedSecret) -> Result<SecretString> {
    let dek = unwrap(keyring, aad, sealed)?;
    let plaintext = decrypt(
        &keyring::cipher_for(&dek[..]),
        &sealed.nonce,
        &aad.payload_bytes(),
        &sealed.ciphertext,
    )
    .ok_or(Error::Decrypt {
        what: SealedPart::Payload,
    })?;
    let value = std::str::from_utf8(&plaintext).map_err(|_| Error::MalformedSealedSecret {
        reason: "the decrypted value is not UTF-8",
    })?;
    // An exact-size copy: converting the buffer itself could reallocate and leave the
    // plaintext behind in freed memory; the buffer is zeroized when dropped.
    Ok(SecretString::new(Box::from(value)))
}

/// Moves a sealed secret to the active KEK and the current format: unwraps its data key with
/// the KEK it names (under the binding of the format it was sealed in) and wraps it again with
/// the active one, bound as [`FORMAT_VERSION`] binds, under a new nonce. The payload ciphertext
/// is kept as it is, so neither key rotation nor the format upgrade decrypts a secret value.
pub fn rewrap(keyring: &KeyRing, aad: &Aad, sealed: &SealedSecret) -> Result<SealedSecret> {
    let dek = unwrap(keyring, aad, sealed)?;
    let wrapped = wrap(keyring, aad, &dek, FORMAT_VERSION)?;
    Ok(SealedSecret {
        format: FORMAT_VERSION,
        kek_id: wrapped.kek_id,
        wrapped_dek: wrapped.wrapped_dek,
        dek_nonce: wrapped.dek_nonce,
        ciphertext: sealed.ciphertext.clone(),
        nonce: sealed.nonce,
    })
}

struct WrappedDataKey {
    kek_id: String,
    wrapped_dek: [u8; WRAPPED_DEK_LEN],
    dek_nonce: [u8; NONCE_LEN],
}

fn wrap(keyring: &KeyRing, aad: &Aad, dek: &[u8; KEY_LEN], format: u8) -> Result<WrappedDataKey> {
    let active = keyring.active();
    let dek_nonce = random_nonce()?;
    let wrapped = encrypt(
        &active.cipher,
        &dek_nonce,
        &aad.data_key_bytes(format, &active.id),
        dek,
    )?;
    Ok(WrappedDataKey {
        kek_id: active.id.clone(),
        wrapped_dek: wrapped.try_into().map_err(|_| Error::Encrypt)?,
        dek_nonce,
    })
}

fn unwrap(keyring: &KeyRing, aad: &Aad, sealed: &SealedSecret) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let failed = || Error::Decrypt {
        what: SealedPart::DataKey,
    };
    let kek = keyring.cipher(&sealed.kek_id)?;
    let unwrapped = decrypt(
        kek,
        &sealed.dek_nonce,
        &aad.data_key_bytes(sealed.format, &sealed.kek_id),
        &sealed.wrapped_dek,
    )
    .ok_or_else(failed)?;
    // Authentic, so exactly the 32 bytes that were wrapped; checked rather than trusted.
    if unwrapped.len() != KEY_LEN {
        return Err(failed());
    }
    let mut dek = Zeroizing::new([0_u8; KEY_LEN]);
    dek.copy_from_slice(&unwrapped);
    Ok(dek)
}

fn encrypt(
    cipher: &Aes256Gcm,
    nonce: &[u8; NONCE_LEN],
    associated_data: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    // Sized for the tag, so encrypting in place never reallocates and leaves no plaintext copy.
    let mut buffer = Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG_LEN));
    buffer.extend_from_slice(plaintext);
    cipher
        .encrypt_in_place(&(*nonce).into(), associated_data, &mut *buffer)
        .map_err(|_| Error::Encrypt)?;
    Ok(std::mem::take(&mut *buffer))
}

fn decrypt(
    cipher: &Aes256Gcm,
    nonce: &[u8; NONCE_LEN],
    associated_data: &[u8],
    ciphertext: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let mut buffer = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_in_place(&(*nonce).into(), associated_data, &mut *buffer)
        .ok()?;
    Some(buffer)
}

fn random_nonce() -> Result<[u8; NONCE_LEN]> {
    let mut nonce = [0_u8; NONCE_LEN];
    OsRng
        .try_fill_bytes(&mut nonce)
        .map_err(|source| Error::Randomness { source })?;
    Ok(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEY_B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
    const KEY_C: &str = "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=";

    fn ring(spec: &str) -> KeyRing {
        KeyRing::from_spec(spec).unwrap()
    }

    fn aad() -> Aad {
        Aad::new(
            Uuid::from_u128(0x0191_0000_0000_7000_8000_0000_0000_0001),
            Some(Uuid::from_u128(0x0191_0000_0000_7000_8000_0000_0000_0003)),
            Uuid::from_u128(0x0191_0000_0000_7000_8000_0000_0000_0002),
            "GIT_TOKEN",
            3,
        )
    }

    /// What a build that wrote format 1 sealed: the same payload, the data key bound to org,
    /// secret and version only.
    fn seal_v1(keyring: &KeyRing, aad: &Aad, value: &SecretString) -> SealedSecret {
        let dek = keyring::random_key().unwrap();
        let nonce = random_nonce().unwrap();
        let ciphertext = encrypt(
            &keyring::cipher_for(&dek[..]),
            &nonce,
            &aad.payload_bytes(),
            value.expose_secret().as_bytes(),
        )
        .unwrap();
        let wrapped = wrap(keyring, aad, &dek, FORMAT_V1).unwrap();
        SealedSecret {
            format: FORMAT_V1,
            kek_id: wrapped.kek_id,
            wrapped_dek: wrapped.wrapped_dek,
            dek_nonce: wrapped.dek_nonce,
            ciphertext,
            nonce,
        }
    }

    fn secret(value: &str) -> SecretString {
        SecretString::from(value)
    }

    #[test]
    fn a_sealed_secret_opens_to_its_value() {
        let keys = ring(&format!("kek-1:{KEY_A}"));
        for value in ["sk-live-0123456789", "", "pässwörd 🔑\n"] {
            let sealed = seal(&keys, &aad(), &secret(value)).unwrap();
            assert_eq!(sealed.kek_id(), "kek-1");
            assert_eq!(sealed.ciphertext().len(), value.len() + TAG_LEN);
            assert_eq!(open(&keys, &aad(), &sealed).unwrap().expose_secret(), value);
        }
    }

    #[test]
    fn sealing_twice_uses_fresh_keys_and_nonces() {
        let keys = ring(&format!("kek-1:{KEY_A}"));
        let first = seal(&keys, &aad(), &secret("same value")).unwrap();
        let second = seal(&keys, &aad(), &secret("same value")).unwrap();
        assert_ne!(first.wrapped_dek(), second.wrapped_dek());
        assert_ne!(first.dek_nonce(), second.dek_nonce());
        assert_ne!(first.nonce(), second.nonce());
        assert_ne!(first.ciphertext(), second.ciphertext());
    }

    #[test]
    fn another_org_project_secret_name_or_version_cannot_open_it() {
        let keys = ring(&format!("kek-1:{KEY_A}"));
        let sealed = seal(&keys, &aad(), &secret("token")).unwrap();
        let elsewhere = [
            Aad {
                project_id: Some(Uuid::from_u128(9)),
                ..aad()
            },
            // Moved to the org scope, or from it into a project.
            Aad {
                project_id: None,
                ..aad()
            },
            Aad {
                name: "LLM_KEY".to_owned(),
                ..aad()
            },
            // The name's length is encoded, so a prefix does not match.
            Aad {
                name: "GIT_TOKE".to_owned(),
                ..aad()
            },
            Aad {
                org_id: Uuid::from_u128(9),
                ..aad()
            },
            Aad {
                secret_id: Uuid::from_u128(9),
                ..aad()
            },
            Aad {
                version: 2,
                ..aad()
            },
            // The ids swapped: the encoding keeps field positions apart.
            Aad {
                org_id: aad().secret_id,
                secret_id: aad().org_id,
                ..aad()
            },
        ];
        for other in elsewhere {
            assert!(matches!(
                open(&keys, &other, &sealed),
                Err(Error::Decrypt {
                    what: SealedPart::DataKey
                })
            ));
            assert!(matches!(
                rewrap(&keys, &other, &sealed),
                Err(Error::Decrypt {
                    what: SealedPart::DataKey
                })
            ));
        }
    }

    #[test]
    fn a_format_1_secret_still_opens_and_rewrap_upgrades_it() {
        let keys = ring(&format!("kek-1:{KEY_A}"));
        let legacy = seal_v1(&keys, &aad(), &secret("token"));
        let stored = SealedSecret::from_bytes(&legacy.to_bytes()).unwrap();
        assert_eq!(stored.format(), FORMAT_V1);
        assert!(stored.needs_rewrap(&keys), "an old format is re-wrapped");
        assert_eq!(
            open(&keys, &aad(), &stored).unwrap().expose_secret(),
            "token"
        );
        // Format 1 did not bind the project or name: moved, it still opened.
        let moved = Aad {
            project_id: None,
            name: "LLM_KEY".to_owned(),
            ..aad()
        };
        assert_eq!(
            open(&keys, &moved, &stored).unwrap().expose_secret(),
            "token"
        );

        let upgraded = rewrap(&keys, &aad(), &stored).unwrap();
        assert_eq!(upgraded.format(), FORMAT_VERSION);
        assert_eq!(upgraded.to_bytes()[0], FORMAT_VERSION);
        assert!(!upgraded.needs_rewrap(&keys));
        assert_eq!(
            upgraded.ciphertext(),
            stored.ciphertext(),
            "no value decrypted"
        );
        assert_eq!(
            open(&keys, &aad(), &upgraded).unwrap().expose_secret(),
            "token"
        );
        assert!(matches!(
            open(&keys, &moved, &upgraded),
            Err(Error::Decrypt {
                what: SealedPart::DataKey
            })
        ));
        // Relabelled as format 1, the upgraded secret does not open: the format is bound.
        let downgraded = SealedSecret {
            format: FORMAT_V1,
            ..upgraded.clone()
        };
        assert!(open(&keys, &aad(), &downgraded).is_err());
    }

    #[test]
    fn a_secret_sealed_under_a_removed_key_names_that_key() {
        let sealed = seal(&ring(&format!("kek-1:{KEY_A}")), &aad(), &secret("token")).unwrap();
        let error = open(&ring(&format!("kek-2:{KEY_B}")), &aad(), &sealed).unwrap_err();
        assert!(matches!(&error, Error::UnknownKey { kek_id } if kek_id == "kek-1"));
    }

    #[test]
    fn the_same_id_with_other_key_material_fails_to_decrypt() {
        let sealed = seal(&ring(&format!("kek-1:{KEY_A}")), &aad(), &secret("token")).unwrap();
        assert!(matches!(
            open(&ring(&format!("kek-1:{KEY_B}")), &aad(), &sealed),
            Err(Error::Decrypt {
                what: SealedPart::DataKey
            })
        ));
    }

    #[test]
    fn relabelling_the_key_id_is_detected() {
        let keys = ring(&format!("kek-1:{KEY_A},kek-2:{KEY_B}"));
        let sealed = seal(&keys, &aad(), &secret("token")).unwrap();
        let relabelled = SealedSecret {
            kek_id: "kek-2".to_owned(),
            ..sealed.clone()
        };
        assert!(matches!(
            open(&keys, &aad(), &relabelled),
            Err(Error::Decrypt {
                what: SealedPart::DataKey
            })
        ));
    }

    #[test]
    fn a_tampered_payload_is_reported_as_such() {
        let keys = ring(&format!("kek-1:{KEY_A}"));
        let mut sealed = seal(&keys, &aad(), &secret("token")).unwrap();
        sealed.ciphertext[0] ^= 1;
        let error = open(&keys, &aad(), &sealed).unwrap_err();
        assert!(matches!(
            error,
            Error::Decrypt {
                what: SealedPart::Payload
            }
        ));
        assert!(
            error
                .to_string()
                .starts_with("cannot decrypt the secret's payload")
        );
    }

    #[test]
    fn rewrap_moves_the_data_key_to_the_active_kek_and_keeps_the_payload() {
        let before = ring(&format!("kek-1:{KEY_A}"));
        let sealed = seal(&before, &aad(), &secret("token")).unwrap();
        let during = ring(&format!("kek-2:{KEY_B},kek-1:{KEY_A}"));
        assert!(sealed.needs_rewrap(&during));

        let rewrapped = rewrap(&during, &aad(), &sealed).unwrap();
        assert_eq!(rewrapped.kek_id(), "kek-2");
        assert!(!rewrapped.needs_rewrap(&during));
        assert_eq!(rewrapped.ciphertext(), sealed.ciphertext());
        assert_eq!(rewrapped.nonce(), sealed.nonce());
        assert_ne!(rewrapped.wrapped_dek(), sealed.wrapped_dek());

        let after = ring(&format!("kek-2:{KEY_B}"));
        assert_eq!(
            open(&after, &aad(), &rewrapped).unwrap().expose_secret(),
            "token"
        );
        assert!(matches!(
            open(&after, &aad(), &sealed),
            Err(Error::UnknownKey { .. })
        ));
    }

    #[test]
    fn rewrapping_an_already_current_secret_changes_only_the_wrapping_nonce() {
        let keys = ring(&format!("kek-1:{KEY_A}"));
        let sealed = seal(&keys, &aad(), &secret("token")).unwrap();
        let rewrapped = rewrap(&keys, &aad(), &sealed).unwrap();
        assert_eq!(rewrapped.kek_id(), "kek-1");
        assert_ne!(rewrapped.dek_nonce(), sealed.dek_nonce());
        assert_eq!(
            open(&keys, &aad(), &rewrapped).unwrap().expose_secret(),
            "token"
        );
    }

    #[test]
    fn the_byte_layout_is_stable() {
        let keys = ring(&format!("kek-1:{KEY_A}"));
        let sealed = seal(&keys, &aad(), &secret("abc")).unwrap();
        let bytes = sealed.to_bytes();
        assert_eq!(bytes.len(), 2 + 5 + 12 + 48 + 12 + 3 + 16);
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(bytes[1], 5);
        assert_eq!(&bytes[2..7], b"kek-1");
        assert_eq!(&bytes[7..19], sealed.dek_nonce());
        assert_eq!(&bytes[19..67], sealed.wrapped_dek());
        assert_eq!(&bytes[67..79], sealed.nonce());
        assert_eq!(&bytes[79..], sealed.ciphertext());
        assert_eq!(SealedSecret::from_bytes(&bytes).unwrap(), sealed);

        let from_parts = SealedSecret::from_parts(
            sealed.kek_id(),
            sealed.wrapped_dek(),
            sealed.dek_nonce(),
            sealed.ciphertext(),
            sealed.nonce(),
        )
        .unwrap();
        assert_eq!(from_parts, sealed);
    }

    #[test]
    fn the_associated_data_encoding_is_stable() {
        let aad = Aad::new(
            Uuid::from_u128(1),
            Some(Uuid::from_u128(4)),
            Uuid::from_u128(2),
            "AB",
            -2,
        );
        let mut expected = b"cadenza.secret.payload\0\x01".to_vec();
        expected.extend_from_slice(&1_u128.to_be_bytes());
        expected.extend_from_slice(&2_u128.to_be_bytes());
        expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xfe]);
        assert_eq!(aad.payload_bytes(), expected);

        let mut expected = b"cadenza.secret.data-key\0\x02".to_vec();
        expected.extend_from_slice(&1_u128.to_be_bytes());
        expected.extend_from_slice(&2_u128.to_be_bytes());
        expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xfe, 1]);
        expected.extend_from_slice(&4_u128.to_be_bytes());
        expected.extend_from_slice(&[0, 0, 0, 2, b'A', b'B', 3]);
        expected.extend_from_slice(b"k-1");
        assert_eq!(aad.data_key_bytes(FORMAT_VERSION, "k-1"), expected);

        let org_wide = Aad {
            project_id: None,
            ..aad.clone()
        };
        let mut expected = b"cadenza.secret.data-key\0\x02".to_vec();
        expected.extend_from_slice(&1_u128.to_be_bytes());
        expected.extend_from_slice(&2_u128.to_be_bytes());
        expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xfe, 0]);
        expected.extend_from_slice(&[0, 0, 0, 2, b'A', b'B', 3]);
        expected.extend_from_slice(b"k-1");
        assert_eq!(org_wide.data_key_bytes(FORMAT_VERSION, "k-1"), expected);

        // Format 1, as earlier builds wrote it: project and name are not part of it.
        let mut expected = b"cadenza.secret.data-key\0\x01".to_vec();
        expected.extend_from_slice(&1_u128.to_be_bytes());
        expected.extend_from_slice(&2_u128.to_be_bytes());
        expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xfe, 3]);
        expected.extend_from_slice(b"k-1");
        assert_eq!(aad.data_key_bytes(FORMAT_V1, "k-1"), expected);
    }

    #[test]
    fn malformed_bytes_are_refused_with_a_reason() {
        let keys = ring(&format!("kek-1:{KEY_A}"));
        let bytes = seal(&keys, &aad(), &secret("abc")).unwrap().to_bytes();
        assert!(matches!(
            SealedSecret::from_bytes(&[]),
            Err(Error::MalformedSealedSecret { .. })
        ));
        let mut future = bytes.clone();
        future[0] = 3;
        assert!(matches!(
            SealedSecret::from_bytes(&future),
            Err(Error::UnsupportedFormat { format: 3 })
        ));
        for length in 1..(2 + 5 + 12 + 48 + 12 + 16) {
            assert!(
                matches!(
                    SealedSecret::from_bytes(&bytes[..length]),
                    Err(Error::MalformedSealedSecret { .. })
                ),
                "{length} bytes parsed"
            );
        }
        let mut bad_id = bytes.clone();
        bad_id[2] = b' ';
        assert!(matches!(
            SealedSecret::from_bytes(&bad_id),
            Err(Error::MalformedSealedSecret { .. })
        ));
        assert!(matches!(
            SealedSecret::from_parts("kek-1", &[0; 47], &[0; 12], &[0; 16], &[0; 12]),
            Err(Error::MalformedSealedSecret { .. })
        ));
        assert!(matches!(
            SealedSecret::from_parts("kek-1", &[0; 48], &[0; 12], &[0; 16], &[0; 11]),
            Err(Error::MalformedSealedSecret { .. })
        ));
    }

    #[test]
    fn debug_output_shows_no_ciphertext_or_value() {
        let keys = ring(&format!("kek-1:{KEY_C}"));
        let value = secret("hunter2-hunter2");
        let sealed = seal(&keys, &aad(), &value).unwrap();
        assert_eq!(
            format!("{sealed:?}"),
            r#"SealedSecret { format: 2, kek_id: "kek-1", ciphertext_len: 31, .. }"#
        );
        let opened = open(&keys, &aad(), &sealed).unwrap();
        assert!(!format!("{opened:?}").contains("hunter2"));
    }
}
