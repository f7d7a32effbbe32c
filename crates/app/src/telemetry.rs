//! The binary's exporter and log subscriber; metric names live in `x402_upto::telemetry`.

use std::net::SocketAddr;

/// Installs the global recorder with a Prometheus scrape endpoint on `addr` (`GET /metrics`).
/// Must run inside a tokio runtime. Fails if a recorder is already installed.
pub fn install_prometheus(addr: SocketAddr) -> Result<(), metrics_exporter_prometheus::BuildError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()?;
    x402_upto::telemetry::describe();
    Ok(())
}

/// Installs a `tracing` subscriber writing to stderr, filtered by `RUST_LOG` (default `info`).
/// Safe to call twice (the second call does nothing).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
