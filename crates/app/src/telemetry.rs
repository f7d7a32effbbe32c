//! The binary's exporter and log subscriber. The library's metric names live in
//! `x402_upto::telemetry`; those of `serve` alone (rate limits, reloads) are here.

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};

/// The handle of the recorder this process installed, if any: what the admin API reads the
/// counters from (rejections by reason, paid requests).
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

use metrics::{describe_counter, describe_gauge};

/// Requests answered 429 by a rate limit (labels `scope`: `ip` or `payer`; `route`: prefix).
pub const RATE_LIMITED: &str = "x402_rate_limited_total";
/// Rate-limit buckets dropped while still refilling, to keep within `limits.max_tracked`.
pub const RATE_LIMIT_EVICTIONS: &str = "x402_rate_limit_evictions_total";
/// Requests served free by a route's free tier (label `route`).
pub const FREE_REQUESTS: &str = "x402_free_requests_total";
/// Configuration reloads on SIGHUP (label `outcome`: `applied` or `refused`).
pub const CONFIG_RELOADS: &str = "x402_config_reloads_total";
/// Unix time of the configuration now served (start-up or the last applied reload).
pub const CONFIG_LOADED: &str = "x402_config_loaded_unixtime";

/// Installs the global recorder with a Prometheus scrape endpoint on `addr` (`GET /metrics`).
/// Must run inside a tokio runtime. Fails if a recorder is already installed.
pub fn install_prometheus(addr: SocketAddr) -> Result<(), BuildError> {
    let (recorder, exporter) = PrometheusBuilder::new().with_http_listener(addr).build()?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    tokio::spawn(exporter);
    let _ = HANDLE.set(handle);
    x402_upto::telemetry::describe();
    describe_counter!(
        RATE_LIMITED,
        "requests refused 429 by a rate limit, by scope and route"
    );
    describe_counter!(
        RATE_LIMIT_EVICTIONS,
        "rate-limit buckets dropped before refilling, to stay within limits.max_tracked"
    );
    describe_counter!(
        FREE_REQUESTS,
        "requests served free by a free tier, by route"
    );
    describe_counter!(
        CONFIG_RELOADS,
        "configuration reloads on SIGHUP, by outcome"
    );
    describe_gauge!(
        CONFIG_LOADED,
        "unix time the served configuration was loaded"
    );
    Ok(())
}

/// The recorder's handle: the one [`install_prometheus`] installed, else a recorder without
/// a scrape endpoint, installed now. `None` when another recorder was installed first (a
/// test process running several servers).
pub fn prometheus_handle() -> Option<&'static PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Some(h);
    }
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    // Histograms are drained by upkeep; the scrape endpoint's task does it otherwise.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    x402_upto::telemetry::describe();
    Some(HANDLE.get_or_init(|| handle))
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
