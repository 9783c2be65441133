use std::net::SocketAddr;

use secrecy::SecretString;
use serde::Deserialize;

/// The API service's settings. Every field can be set as `CADENZA_<FIELD>` or in the file named
/// by `CADENZA_CONFIG_FILE`.
#[derive(Clone, Debug, Deserialize)]
pub struct ApiConfig {
    /// Where the public HTTP API listens.
    #[serde(default = "default_listen")]
    pub api_listen: SocketAddr,
    /// The runtime role's connection: it may read and write the tables, and only read and append
    /// to the audit log.
    pub database_url: SecretString,
    /// The migration role's connection (the schema owner), used only to apply migrations. Never
    /// needed by a running API unless `migrate_on_start` is on.
    #[serde(default)]
    pub migration_database_url: Option<SecretString>,
    pub nats_url: String,
    pub redis_url: SecretString,
    /// Prefix for every NATS subject and stream of this deployment.
    #[serde(default = "default_bus_prefix")]
    pub bus_prefix: String,
    /// Replicas of the JetStream stream (3 on a NATS cluster).
    #[serde(default = "default_stream_replicas")]
    pub nats_stream_replicas: usize,
    #[serde(default = "default_pool_size")]
    pub database_pool_size: u32,
    /// Apply pending migrations at start-up (safe with several replicas: the migrator locks).
    /// Needs `migration_database_url`; start-up is refused without it.
    #[serde(default = "default_true")]
    pub migrate_on_start: bool,
    /// Requests per minute per token or session (0: unlimited).
    #[serde(default = "default_caller_limit")]
    pub rate_limit_per_caller: u64,
    /// Requests per minute touching one org (0: unlimited).
    #[serde(default = "default_org_limit")]
    pub rate_limit_per_org: u64,
    /// Login attempts per minute per client address (0: unlimited).
    #[serde(default = "default_login_limit")]
    pub rate_limit_logins_per_ip: u64,
    /// OpenID Connect provider for browser login (unset: no browser login).
    #[serde(default)]
    pub oidc_issuer: Option<url::Url>,
    #[serde(default)]
    pub oidc_client_id: Option<String>,
    #[serde(default)]
    pub oidc_client_secret: Option<SecretString>,
    /// The callback URL registered with the provider (`https://<host>/api/v1/auth/callback`).
    #[serde(default)]
    pub oidc_redirect_url: Option<url::Url>,
    /// A JSON list of `{kid, private_key_pem}` (Ed25519, PKCS#8); the first signs, all verify.
    #[serde(default)]
    pub session_keys_file: Option<String>,
    /// Session token lifetime (refreshed while in use) and absolute session lifetime.
    #[serde(default = "default_session_ttl", with = "humantime_serde")]
    pub session_token_ttl: std::time::Duration,
    #[serde(default = "default_session_max", with = "humantime_serde")]
    pub session_max_lifetime: std::time::Duration,
    /// The key ring that seals secrets, as a key spec (`id:base64key,...`, first is active).
    #[serde(default)]
    pub secret_keks: Option<SecretString>,
    /// The key ring as a JSON key file (preferred over `secret_keks`; see docs/SECURITY.md).
    #[serde(default)]
    pub secret_keks_file: Option<String>,
    /// Name servers for email-domain verification, `ip:port` separated by commas (unset: the
    /// system resolver configuration).
    #[serde(default)]
    pub dns_nameservers: Option<String>,
    /// Local development over plain HTTP: cookies without `Secure` (and so without the
    /// `__Host-` prefix), no HSTS.
    #[serde(default)]
    pub dev_mode: bool,
    /// The URL people open (`https://cadenza.example`). Its origin is the only one from which a
    /// browser session may change things; unset, the request's `Host` is compared instead.
    #[serde(default)]
    pub public_url: Option<url::Url>,
    /// Reverse proxies (comma-separated CIDRs or addresses) whose `Forwarded`/`X-Forwarded-For`
    /// and `X-Request-Id` are believed. Empty: none, the socket peer is the client.
    #[serde(default)]
    pub trusted_proxies: String,
    /// The CSP `frame-ancestors` sources that may embed the app (`'none'`: nobody).
    #[serde(default = "default_frame_ancestors")]
    pub frame_ancestors: String,
    /// How long a request may take to produce its response head (streams then go on).
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: std::time::Duration,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Event streams one caller (a token, or a user's sessions) may hold open at once (0:
    /// unlimited).
    #[serde(default = "default_max_streams")]
    pub max_streams_per_caller: u64,
    /// How often an open event stream checks that its caller may still read the run (at most
    /// 60 s); a revoked token or removed member gets a final `stream_closed` event.
    #[serde(default = "default_stream_interval", with = "humantime_serde")]
    pub stream_access_recheck: std::time::Duration,
    /// How often an idle event stream reads Postgres without a wake-up from NATS (a safety net
    /// for lost messages; NATS delivers the events themselves).
    #[serde(default = "default_stream_interval", with = "humantime_serde")]
    pub stream_safety_poll: std::time::Duration,
    /// How often an idle event stream sends a keep-alive comment.
    #[serde(default = "default_stream_keepalive", with = "humantime_serde")]
    pub stream_keepalive: std::time::Duration,
    /// Live org entries an org stream may fall behind by before it is told so and catches up
    /// from Postgres instead (its bounded queue).
    #[serde(default = "default_org_stream_queue")]
    pub org_stream_queue: usize,
    /// The agent images projects may use (comma-separated rules: `registry/`, `registry/path/`
    /// or `registry/repository`; `*` allows any). Instance administrators can allow more per org.
    /// Must match the workers' setting, which checks again before each run.
    #[serde(default = "default_agent_images")]
    pub agent_images: String,
    #[serde(default)]
    pub log_json: bool,
}

fn default_session_ttl() -> std::time::Duration {
    std::time::Duration::from_secs(15 * 60)
}

fn default_session_max() -> std::time::Duration {
    std::time::Duration::from_secs(12 * 3600)
}

impl ApiConfig {
    pub fn trusted_proxies(&self) -> anyhow::Result<crate::client::TrustedProxies> {
        crate::client::TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|err| anyhow::anyhow!("CADENZA_TRUSTED_PROXIES: {err}"))
    }

    /// The `frame-ancestors` sources, refused when they could break out of the header.
    pub fn frame_ancestors(&self) -> anyhow::Result<String> {
        let value = self.frame_ancestors.trim();
        if value.is_empty() || value.contains([';', ',', '\r', '\n']) {
            anyhow::bail!(
                "CADENZA_FRAME_ANCESTORS must be a space-separated list of CSP sources (e.g. `'none'` or `https://portal.example`)"
            );
        }
        Ok(value.to_owned())
    }

    /// The stream settings, refused when they would break the access guarantee.
    pub fn stream_settings(&self) -> anyhow::Result<crate::streams::StreamSettings> {
        let second = std::time::Duration::from_millis(100);
        if self.stream_access_recheck < second
            || self.stream_access_recheck > std::time::Duration::from_secs(60)
        {
            anyhow::bail!(
                "CADENZA_STREAM_ACCESS_RECHECK must be between 100ms and 60s (an open stream must notice a revoked token within a minute)"
            );
        }
        for (name, value) in [
            ("CADENZA_STREAM_SAFETY_POLL", self.stream_safety_poll),
            ("CADENZA_STREAM_KEEPALIVE", self.stream_keepalive),
        ] {
            if value < second {
                anyhow::bail!("{name} must be at least 100ms");
            }
        }
        Ok(crate::streams::StreamSettings {
            max_per_caller: self.max_streams_per_caller,
            access_recheck: self.stream_access_recheck,
            safety_poll: self.stream_safety_poll,
            keepalive: self.stream_keepalive,
        })
    }

    /// The instance's agent-image allowlist.
    pub fn image_policy(&self) -> anyhow::Result<cadenza_domain::ImagePolicy> {
        cadenza_domain::ImagePolicy::parse(&self.agent_images)
            .map_err(|err| anyhow::anyhow!("CADENZA_AGENT_IMAGES: {err}"))
    }

    pub fn keyring(&self) -> anyhow::Result<cadenza_crypto::KeyRing> {
        cadenza_service_runtime::load_keyring(
            self.secret_keks.as_ref(),
            self.secret_keks_file.as_deref(),
        )
    }

    /// The resolver that checks email-domain verification records.
    pub fn dns_verifier(&self) -> anyhow::Result<crate::domain_verification::DnsVerifier> {
        let name_servers = match &self.dns_nameservers {
            Some(raw) => crate::domain_verification::parse_name_servers(raw)?,
            None => Vec::new(),
        };
        crate::domain_verification::DnsVerifier::new(&name_servers)
    }

    /// The OIDC settings when browser login is configured; an error names what is missing.
    pub fn oidc(&self) -> anyhow::Result<Option<cadenza_identity::OidcConfig>> {
        let Some(issuer) = &self.oidc_issuer else {
            return Ok(None);
        };
        let client_id = self.oidc_client_id.clone().ok_or_else(|| {
            anyhow::anyhow!("CADENZA_OIDC_CLIENT_ID is required with CADENZA_OIDC_ISSUER")
        })?;
        let client_secret = self.oidc_client_secret.clone().ok_or_else(|| {
            anyhow::anyhow!("CADENZA_OIDC_CLIENT_SECRET is required with CADENZA_OIDC_ISSUER")
        })?;
        let redirect_url = self.oidc_redirect_url.clone().ok_or_else(|| {
            anyhow::anyhow!("CADENZA_OIDC_REDIRECT_URL is required with CADENZA_OIDC_ISSUER")
        })?;
        Ok(Some(cadenza_identity::OidcConfig::new(
            issuer.clone(),
            client_id,
            client_secret,
            redirect_url,
        )))
    }
}

fn default_frame_ancestors() -> String {
    "'none'".to_owned()
}

fn default_request_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

fn default_max_body_bytes() -> usize {
    1024 * 1024
}

/// The official agent-server image and its local build.
pub fn default_agent_images() -> String {
    "ghcr.io/openhands/agent-server, cadenza/openhands-agent-server".to_owned()
}

fn default_org_stream_queue() -> usize {
    1024
}

fn default_max_streams() -> u64 {
    16
}

fn default_stream_interval() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

fn default_stream_keepalive() -> std::time::Duration {
    std::time::Duration::from_secs(15)
}

fn default_caller_limit() -> u64 {
    600
}

fn default_org_limit() -> u64 {
    3000
}

fn default_login_limit() -> u64 {
    30
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

pub fn default_stream_replicas() -> usize {
    1
}

fn default_bus_prefix() -> String {
    "cadenza".to_owned()
}

fn default_pool_size() -> u32 {
    20
}

fn default_true() -> bool {
    true
}
