use anyhow::Context;
use cadenza_linear_sync::LinearSyncConfig;
use cadenza_service_runtime::config::figment_from_environment;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: LinearSyncConfig =
        cadenza_service_runtime::load_config(figment_from_environment())?;
    cadenza_service_runtime::init_tracing("linear-sync", config.log_json);
    let shutdown = cadenza_service_runtime::shutdown_on_signal();
    let listener = tokio::net::TcpListener::bind(config.linear_sync_listen)
        .await
        .with_context(|| {
            format!(
                "binding {} (CADENZA_LINEAR_SYNC_LISTEN)",
                config.linear_sync_listen
            )
        })?;
    let service = cadenza_linear_sync::build(config, shutdown).await?;
    service.run(listener).await
}
