use anyhow::Context;
use cadenza_scheduler::SchedulerConfig;
use cadenza_service_runtime::config::figment_from_environment;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: SchedulerConfig = cadenza_service_runtime::load_config(figment_from_environment())?;
    cadenza_service_runtime::init_tracing("scheduler", config.log_json);
    let shutdown = cadenza_service_runtime::shutdown_on_signal();
    let listener = tokio::net::TcpListener::bind(config.scheduler_listen)
        .await
        .with_context(|| {
            format!(
                "binding {} (CADENZA_SCHEDULER_LISTEN)",
                config.scheduler_listen
            )
        })?;
    let scheduler = cadenza_scheduler::build(config, shutdown).await?;
    scheduler.run(listener).await
}
