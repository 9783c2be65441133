use anyhow::Context;
use cadenza_service_runtime::config::figment_from_environment;
use cadenza_worker::WorkerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: WorkerConfig = cadenza_service_runtime::load_config(figment_from_environment())?;
    cadenza_service_runtime::init_tracing("worker", config.log_json);
    let shutdown = cadenza_service_runtime::shutdown_on_signal();
    let listener = tokio::net::TcpListener::bind(config.worker_listen)
        .await
        .with_context(|| format!("binding {} (CADENZA_WORKER_LISTEN)", config.worker_listen))?;
    let worker = cadenza_worker::build(config, shutdown).await?;
    worker.run(listener).await
}
