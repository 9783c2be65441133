//! The cryptography every secret in Cadenza goes through: envelope encryption of secret values
//! ([`seal`], [`open`], [`rewrap`]) under key-encryption keys from a [`KeyRing`], and
//! [`Redactor`]s that keep secret values out of events, logs and errors.
//!
//! This crate does no I/O beyond reading a key file it is handed, and knows nothing about
//! storage: callers persist [`SealedSecret`]s and decide which values a redactor covers.
//! `docs/SECURITY.md` describes the key hierarchy, rotation and where redaction happens.

mod envelope;
mod error;
mod keyring;
mod redact;

pub use envelope::{
    Aad, FORMAT_V1, FORMAT_VERSION, NONCE_LEN, SealedSecret, TAG_LEN, WRAPPED_DEK_LEN, open,
    rewrap, seal,
};
pub use error::{Error, Result, SealedPart};
pub use keyring::{KEY_LEN, KeyRing, MAX_KEY_ID_LEN};
pub use redact::{MIN_REDACTED_LEN, Redactor, StreamRedactor};

#[cfg(test)]
mod tests {
    use super::*;

    fn shareable_across_tasks<T: Send + Sync + 'static>() {}

    #[test]
    fn every_public_type_can_be_shared_across_tasks() {
        shareable_across_tasks::<KeyRing>();
        shareable_across_tasks::<SealedSecret>();
        shareable_across_tasks::<Aad>();
        shareable_across_tasks::<Redactor>();
        shareable_across_tasks::<StreamRedactor>();
        shareable_across_tasks::<Error>();
    }
}
