//! A small OpenID Connect provider for tests and demos: discovery, JWKS, the authorization code
//! flow with PKCE, userinfo, and switchable misbehaviour for testing a relying party's checks.
//!
//! It logs users in without asking: `/authorize` picks the user named by `login_hint` (or the
//! first one) and redirects straight back with a code. Everything else follows the
//! specifications closely enough that a relying party which works here works against a real
//! provider: exact redirect URI matching, mandatory PKCE (S256), single-use codes, client
//! authentication with `client_secret_basic` or `client_secret_post`, RS256 ID tokens.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use cadenza_fake_oidc::{FakeClient, FakeOidcConfig, FakeUser, IdTokenTamper, spawn};
//!
//! let provider = spawn(FakeOidcConfig::new(
//!     FakeClient::new("cadenza", "s3cret", "http://127.0.0.1:8080/api/v1/auth/callback"),
//!     FakeUser::new("user-1", "ada@example.com").with_name("Ada Lovelace"),
//! ))
//! .await?;
//! let issuer = provider.issuer(); // configure the relying party with this
//! provider.set_tamper(IdTokenTamper { expired: true, ..IdTokenTamper::default() });
//! # let _ = issuer;
//! # Ok(())
//! # }
//! ```

mod config;
mod http;
mod keys;
mod provider;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

pub use config::{ClientAuthMethod, FakeClient, FakeOidcConfig, FakeUser, IdTokenTamper};

use provider::Provider;

async fn provider_for(
    config: FakeOidcConfig,
    address: SocketAddr,
) -> std::io::Result<(Arc<Provider>, Url)> {
    let issuer = match &config.issuer {
        Some(issuer) => issuer.clone(),
        None => Url::parse(&format!("http://{address}")).map_err(std::io::Error::other)?,
    };
    let key = keys::process_signing_key().await?;
    Ok((Arc::new(Provider::new(config, &issuer, key)), issuer))
}

/// Serves on a bound listener until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    config: FakeOidcConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let (provider, _) = provider_for(config, listener.local_addr()?).await?;
    run(listener, provider, shutdown).await
}

async fn run(
    listener: TcpListener,
    provider: Arc<Provider>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, http::router(provider))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Starts the fake on `127.0.0.1` with an ephemeral port. The first call in a process also
/// generates the RSA signing key, which takes a few seconds in a debug build.
pub async fn spawn(config: FakeOidcConfig) -> std::io::Result<RunningFakeOidc> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let address = listener.local_addr()?;
    let (provider, issuer) = provider_for(config, address).await?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(listener, provider.clone(), shutdown.clone()));
    Ok(RunningFakeOidc {
        address,
        issuer,
        provider,
        shutdown,
        task,
    })
}

/// A fake started by [`spawn`]; dropping it stops the server. Changes made through it apply
/// to the next request.
pub struct RunningFakeOidc {
    address: SocketAddr,
    issuer: Url,
    provider: Arc<Provider>,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl std::fmt::Debug for RunningFakeOidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningFakeOidc")
            .field("address", &self.address)
            .field("issuer", &self.issuer.as_str())
            .finish_non_exhaustive()
    }
}

impl RunningFakeOidc {
    /// The issuer URL a relying party is configured with.
    pub fn issuer(&self) -> Url {
        self.issuer.clone()
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The `kid` of the genuine signing key.
    pub fn signing_kid(&self) -> String {
        self.provider.key.kid().to_owned()
    }

    /// Misbehaviour for every later ID token of users without their own;
    /// `IdTokenTamper::default()` restores good behaviour.
    pub fn set_tamper(&self, tamper: IdTokenTamper) {
        self.provider.state().tamper = tamper;
    }

    /// Misbehaviour for one user's later ID tokens (`None`: the global setting applies).
    /// Returns false when there is no such user.
    pub fn set_user_tamper(&self, subject: &str, tamper: Option<IdTokenTamper>) -> bool {
        let mut state = self.provider.state();
        match state.users.iter_mut().find(|user| user.subject == subject) {
            Some(user) => {
                user.tamper = tamper;
                true
            }
            None => false,
        }
    }

    /// Adds a user, or replaces the one with the same subject.
    pub fn add_user(&self, user: FakeUser) {
        self.provider.state().upsert_user(user);
    }

    /// Registers a client, or replaces the one with the same id.
    pub fn add_client(&self, client: FakeClient) {
        self.provider.state().upsert_client(client);
    }
}

impl Drop for RunningFakeOidc {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}
