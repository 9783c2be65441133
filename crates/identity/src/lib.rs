//! Who is calling Cadenza: browser login through any OpenID Connect provider ([`oidc`]) and
//! Cadenza's own short-lived session tokens ([`session`]).
//!
//! This crate holds the protocol and cryptography only. The HTTP routes, the cookie, and the
//! short-lived storage (login state, the logout deny-list) belong to the API service.

mod error;
mod jwt;
pub mod oidc;
pub mod session;

pub use error::{Error, ErrorKind, Result};
pub use oidc::{LoginStart, OidcConfig, OidcProvider, VerifiedIdentity};
pub use session::{SessionClaims, SessionKeyConfig, SessionKeys, SessionLifetime};
