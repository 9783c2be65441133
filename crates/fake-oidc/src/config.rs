use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use url::Url;

/// How the fake is started. Deserialisable, so the binary can read it from a JSON file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FakeOidcConfig {
    /// The issuer identifier. `None`: the server's own base URL (`http://127.0.0.1:PORT`).
    /// A URL with a path (`http://host/realms/acme`) serves every endpoint under that path,
    /// as multi-tenant providers do.
    pub issuer: Option<Url>,
    /// `/authorize` logs in the user its `login_hint` names (subject or email), else the first.
    pub users: Vec<FakeUser>,
    pub clients: Vec<FakeClient>,
    /// Misbehaviour applied to every ID token, unless the user has its own.
    pub tamper: IdTokenTamper,
    /// The client authentication methods advertised and accepted at `/token`; empty means
    /// both.
    pub token_endpoint_auth_methods: Vec<ClientAuthMethod>,
}

impl FakeOidcConfig {
    /// One client and one user: what most tests need.
    pub fn new(client: FakeClient, user: FakeUser) -> Self {
        Self {
            users: vec![user],
            clients: vec![client],
            ..Self::default()
        }
    }

    pub(crate) fn auth_methods(&self) -> Vec<ClientAuthMethod> {
        if self.token_endpoint_auth_methods.is_empty() {
            vec![
                ClientAuthMethod::ClientSecretBasic,
                ClientAuthMethod::ClientSecretPost,
            ]
        } else {
            self.token_endpoint_auth_methods.clone()
        }
    }
}

/// How a client proves its identity at the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// `Authorization: Basic` with the URL-encoded id and secret.
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

impl ClientAuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthMethod::ClientSecretBasic => "client_secret_basic",
            ClientAuthMethod::ClientSecretPost => "client_secret_post",
        }
    }
}

/// A user the fake logs in without asking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeUser {
    pub subject: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default = "yes")]
    pub email_verified: bool,
    #[serde(default)]
    pub name: Option<String>,
    /// Added to the ID token and userinfo; never replaces a standard claim.
    #[serde(default)]
    pub extra_claims: Map<String, Value>,
    /// Overrides the global tamper for this user's ID tokens.
    #[serde(default)]
    pub tamper: Option<IdTokenTamper>,
}

fn yes() -> bool {
    true
}

impl FakeUser {
    /// A user with a verified email and no name.
    pub fn new(subject: impl Into<String>, email: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            email: Some(email.into()),
            email_verified: true,
            name: None,
            extra_claims: Map::new(),
            tamper: None,
        }
    }

    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub fn with_tamper(mut self, tamper: IdTokenTamper) -> Self {
        self.tamper = Some(tamper);
        self
    }
}

/// A registered relying party.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeClient {
    pub client_id: String,
    pub client_secret: String,
    /// Compared as exact strings, as real providers do.
    pub redirect_uris: Vec<String>,
}

impl FakeClient {
    pub fn new(
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        redirect_uri: impl Into<String>,
    ) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            redirect_uris: vec![redirect_uri.into()],
        }
    }
}

impl std::fmt::Debug for FakeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .field("redirect_uris", &self.redirect_uris)
            .finish()
    }
}

/// Ways to spoil an ID token, for testing a relying party's checks. The default spoils
/// nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdTokenTamper {
    /// `aud` names this instead of the client.
    pub wrong_audience: Option<String>,
    /// `exp` an hour in the past.
    pub expired: bool,
    /// `nonce` is this instead of the one from the authorization request.
    pub nonce_override: Option<String>,
    /// The signature is computed, then one bit of it flipped.
    pub bad_signature: bool,
    /// `iss` is this instead of the issuer.
    pub issuer_override: Option<String>,
    /// The header names a `kid` that is not in the JWKS (the signature is still genuine).
    pub unknown_kid: bool,
}

impl IdTokenTamper {
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_example_configuration_parses() {
        let readme = include_str!("../README.md");
        let (_, rest) = readme.split_once("```json\n").expect("a JSON example");
        let (example, _) = rest.split_once("```").expect("a closed JSON example");
        let config: FakeOidcConfig = serde_json::from_str(example).unwrap();
        assert_eq!(config.users.len(), 2);
        assert!(config.users[0].email_verified);
        assert_eq!(
            config.users[1].tamper,
            Some(IdTokenTamper {
                expired: true,
                ..IdTokenTamper::default()
            })
        );
        assert_eq!(config.clients[0].client_id, "cadenza");
        assert_eq!(config.auth_methods().len(), 2);
    }

    #[test]
    fn unknown_settings_are_refused_rather_than_ignored() {
        assert!(serde_json::from_str::<FakeOidcConfig>(r#"{"tamper": {"expird": true}}"#).is_err());
    }
}
