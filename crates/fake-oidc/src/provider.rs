//! The provider's state: registered clients and users, issued codes and access tokens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use url::Url;

use crate::config::{ClientAuthMethod, FakeClient, FakeOidcConfig, FakeUser, IdTokenTamper};
use crate::keys::SigningKey;

/// Authorization codes are meant to be exchanged immediately (RFC 6749 §4.1.2 suggests at
/// most ten minutes).
pub(crate) const CODE_LIFETIME: Duration = Duration::from_secs(600);
pub(crate) const ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
pub(crate) const ID_TOKEN_LIFETIME_SECONDS: i64 = 3600;

pub(crate) struct Provider {
    /// The issuer identifier as it appears in `iss` and the discovery document: no trailing
    /// slash, as real providers spell it.
    pub(crate) issuer: String,
    /// The path the endpoints live under (`""` or `/realms/acme`).
    pub(crate) path_prefix: String,
    pub(crate) key: Arc<SigningKey>,
    pub(crate) auth_methods: Vec<ClientAuthMethod>,
    state: Mutex<State>,
}

pub(crate) struct State {
    pub(crate) users: Vec<FakeUser>,
    pub(crate) clients: Vec<FakeClient>,
    pub(crate) tamper: IdTokenTamper,
    pub(crate) codes: HashMap<String, PendingCode>,
    /// Codes already exchanged, with the access token they bought: a replayed code revokes it
    /// (RFC 6749 §4.1.2), as a stolen code may be what is being replayed.
    pub(crate) used_codes: HashMap<String, String>,
    pub(crate) access_tokens: HashMap<String, AccessGrant>,
}

pub(crate) struct PendingCode {
    pub(crate) client_id: String,
    pub(crate) redirect_uri: String,
    pub(crate) code_challenge: String,
    pub(crate) subject: String,
    pub(crate) nonce: Option<String>,
    pub(crate) scopes: Vec<String>,
    pub(crate) auth_time: i64,
    pub(crate) expires_at: Instant,
}

pub(crate) struct AccessGrant {
    pub(crate) subject: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) expires_at: Instant,
}

impl Provider {
    pub(crate) fn new(config: FakeOidcConfig, issuer: &Url, key: Arc<SigningKey>) -> Self {
        let path_prefix = issuer.path().trim_end_matches('/').to_owned();
        let issuer = issuer.as_str().trim_end_matches('/').to_owned();
        Self {
            issuer,
            path_prefix,
            key,
            auth_methods: config.auth_methods(),
            state: Mutex::new(State {
                users: config.users,
                clients: config.clients,
                tamper: config.tamper,
                codes: HashMap::new(),
                used_codes: HashMap::new(),
                access_tokens: HashMap::new(),
            }),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent, so a panic elsewhere is no reason
        // to stop serving.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }
}

impl State {
    pub(crate) fn client(&self, client_id: &str) -> Option<&FakeClient> {
        self.clients
            .iter()
            .find(|client| client.client_id == client_id)
    }

    pub(crate) fn user(&self, subject: &str) -> Option<&FakeUser> {
        self.users.iter().find(|user| user.subject == subject)
    }

    /// The user `login_hint` names (subject first, then email), or the first user.
    pub(crate) fn user_for_hint(&self, login_hint: Option<&str>) -> Option<&FakeUser> {
        match login_hint {
            None => self.users.first(),
            Some(hint) => self.user(hint).or_else(|| {
                self.users
                    .iter()
                    .find(|user| user.email.as_deref() == Some(hint))
            }),
        }
    }

    pub(crate) fn upsert_user(&mut self, user: FakeUser) {
        match self
            .users
            .iter_mut()
            .find(|known| known.subject == user.subject)
        {
            Some(known) => *known = user,
            None => self.users.push(user),
        }
    }

    pub(crate) fn upsert_client(&mut self, client: FakeClient) {
        match self
            .clients
            .iter_mut()
            .find(|known| known.client_id == client.client_id)
        {
            Some(known) => *known = client,
            None => self.clients.push(client),
        }
    }

    /// Drops what can no longer be used, so a long-running demo does not grow without bound.
    pub(crate) fn forget_expired(&mut self, now: Instant) {
        self.codes.retain(|_, code| code.expires_at > now);
        self.access_tokens.retain(|_, grant| grant.expires_at > now);
        // A replayed code whose access token is gone has nothing left to revoke.
        let access_tokens = &self.access_tokens;
        self.used_codes
            .retain(|_, access_token| access_tokens.contains_key(access_token));
    }
}

/// 256 random bits, base64url: codes and access tokens.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}
