use std::fmt;
use std::path::PathBuf;

/// Result alias used by every call of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading keys or sealing, opening and re-wrapping secrets.
///
/// Messages never contain secret values or key material (not even a fragment of a malformed
/// key), so they can be logged as they are. They do contain key ids, which are not secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key ring needs at least one key: the active one.
    #[error("the key ring is empty: configure at least one key-encryption key")]
    EmptyKeyRing,

    /// An entry of a key spec (`id:base64key,...`) cannot be split into an id and a key.
    /// Entries are counted from 1.
    #[error("key spec entry {entry} is malformed: {reason}")]
    MalformedKeySpec { entry: usize, reason: &'static str },

    /// A key id breaks the naming rules. The id is not repeated: a key pasted where the id
    /// belongs would otherwise end up in the log.
    #[error("key entry {entry} has an invalid key id: {reason}")]
    InvalidKeyId { entry: usize, reason: &'static str },

    /// The key is not base64 (standard alphabet, padding optional).
    #[error("key {kek_id:?} is not valid base64 (standard alphabet)")]
    KeyNotBase64 { kek_id: String },

    /// The key does not decode to the 32 bytes of an AES-256 key.
    #[error("key {kek_id:?} decodes to {actual_len} bytes, an AES-256 key has 32")]
    WrongKeyLength { kek_id: String, actual_len: usize },

    /// Two keys share an id, so a stored key id would be ambiguous.
    #[error("key id {kek_id:?} appears more than once")]
    DuplicateKeyId { kek_id: String },

    /// Two ids name the same key material: "rotating" to the second id would rotate nothing.
    #[error("keys {kek_id:?} and {same_as:?} are the same key")]
    DuplicateKeyMaterial { kek_id: String, same_as: String },

    /// The key file names an active key that is not in its list.
    #[error("the active key {active:?} is not among the configured keys")]
    ActiveKeyMissing { active: String },

    /// The key file could not be read.
    #[error("cannot read the key file {}", path.display())]
    KeyFileUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The key file is not JSON of the expected shape.
    #[error("the key file {} is malformed: {reason}", path.display())]
    KeyFileMalformed { path: PathBuf, reason: String },

    /// A sealed secret names a key-encryption key that is not in the key ring: it was removed
    /// too early, or this process was started with an outdated key configuration.
    #[error("no key-encryption key with id {kek_id:?} is configured")]
    UnknownKey { kek_id: String },

    /// Stored secrets name key ids that the key ring does not hold. Start-up refuses to run,
    /// since those secrets could not be opened.
    #[error("stored secrets use key ids that are not configured: {}", ids.join(", "))]
    MissingKeys { ids: Vec<String> },

    /// Authenticated decryption failed: the sealed secret was altered, was copied to another
    /// org, project, secret, name or version, or was sealed under different key material with
    /// the same key id.
    #[error(
        "cannot decrypt the secret's {what}: it was altered, belongs to another org, project, \
         secret, name or version, or the key with its id is not the one that sealed it"
    )]
    Decrypt { what: SealedPart },

    /// Encryption failed. AES-GCM only refuses messages of more than 64 GiB.
    #[error("cannot encrypt the secret: it is too long")]
    Encrypt,

    /// Bytes that do not form a sealed secret of a supported format.
    #[error("malformed sealed secret: {reason}")]
    MalformedSealedSecret { reason: &'static str },

    /// The sealed secret uses a format this version of Cadenza does not know.
    #[error("sealed secret format {format} is not supported (this build knows formats 1 and 2)")]
    UnsupportedFormat { format: u8 },

    /// The operating system's random number generator failed. New keys and nonces cannot be
    /// made without it, so nothing is sealed.
    #[error("the operating system's random number generator failed")]
    Randomness {
        #[source]
        source: rand::Error,
    },
}

/// Which layer of a sealed secret failed to decrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedPart {
    /// The wrapped data key (DEK), decrypted with the key-encryption key it names.
    DataKey,
    /// The secret value, decrypted with the data key.
    Payload,
}

impl fmt::Display for SealedPart {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            SealedPart::DataKey => "data key",
            SealedPart::Payload => "payload",
        })
    }
}
