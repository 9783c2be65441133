use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: JSON lines when `json` (for log shippers), human-readable
/// otherwise. `RUST_LOG` overrides the default filter.
pub fn init_tracing(service: &'static str, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,async_nats=warn,hyper=warn,bollard=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if result.is_ok() {
        tracing::info!(service, "logging initialised");
    }
}
