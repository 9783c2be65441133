//! The API in-process against real Postgres, NATS and Redis, for the integration tests that need
//! only the router and its state.

// Each test binary that includes this uses only part of it.
#![allow(dead_code)]

use axum::Router;
use cadenza_api::state::AppState;
use cadenza_testkit::infra::{TestDatabase, nats_url, redis_url, unique_name};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub struct App {
    pub router: Router,
    pub state: AppState,
    pub db: TestDatabase,
    pub shutdown: CancellationToken,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The API with the test defaults, and `extra` settings over them.
pub async fn app(extra: Value) -> App {
    let db = TestDatabase::create().await.expect("db");
    let (kek_id, kek) = cadenza_crypto::KeyRing::generate_key().expect("kek");
    let mut settings = json!({
        "secret_keks": format!("{kek_id}:{}", secrecy::ExposeSecret::expose_secret(&kek)),
        "database_url": db.url,
        "nats_url": nats_url(),
        "redis_url": redis_url(),
        "bus_prefix": unique_name("t"),
        "migrate_on_start": false,
    });
    if let (Some(target), Some(extra)) = (settings.as_object_mut(), extra.as_object()) {
        target.extend(extra.clone());
    }
    let config: cadenza_api::ApiConfig = serde_json::from_value(settings).expect("config");
    let shutdown = CancellationToken::new();
    let api = cadenza_api::build(&config, shutdown.clone())
        .await
        .expect("api builds");
    App {
        router: api.router(),
        state: api.state(),
        db,
        shutdown,
    }
}
