//! Reloading routes, prices and limits on SIGHUP without a restart.
//!
//! The proxy a request is dispatched to is read once, at its start, from a slot that a
//! reload replaces whole: a request in flight finishes (and is charged) under the
//! configuration it started with; the next one sees the new one. Listener, connections,
//! engine, store, ledger and settler are not touched, so no connection is dropped and no
//! payment is lost. Routes whose configuration did not change but for their limits keep
//! their services, limits replaced in place (a live metered stream keeps renewing).
//!
//! What the running process cannot take on without a restart (the listener, the chain and
//! its contracts, the offer's terms, the store, the settler's and watcher's knobs) refuses
//! the whole reload with the list of those keys: nothing half-applied, the old configuration
//! kept. So does a file that does not parse or validate.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use parking_lot::Mutex;

use super::config::ServeConfig;
use super::limits::LimitState;
use super::proxy::{ProxySlot, build_proxy, router};
use crate::telemetry;
use x402_upto::engine::Engine;
use x402_upto::store::Store;

/// The served proxy and what a reload needs to build the next one.
pub struct Reloader<S> {
    engine: Engine<S>,
    slot: ProxySlot,
    /// Rate-limit buckets: kept across reloads (a reload changes rates, not what was spent).
    limits: Arc<LimitState>,
    /// The configuration being served. Also serialises reloads.
    current: Mutex<ServeConfig>,
}

impl<S> std::fmt::Debug for Reloader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl<S: Store + 'static> Reloader<S> {
    /// The proxy router for `cfg`, and its reloader.
    pub fn new(engine: Engine<S>, cfg: &ServeConfig) -> Result<(Router, Self), String> {
        let limits = Arc::new(LimitState::new(cfg.limits.max_tracked));
        let proxy = build_proxy(&engine, cfg, &limits, None)?;
        let slot: ProxySlot = Arc::new(parking_lot::RwLock::new(Arc::new(proxy)));
        metrics::gauge!(telemetry::CONFIG_LOADED).set(x402_upto::clock::unix_now() as f64);
        let reloader = Self {
            engine,
            slot: Arc::clone(&slot),
            limits,
            current: Mutex::new(cfg.clone()),
        };
        Ok((router(slot), reloader))
    }

    /// Serves `new` from the next request on, or refuses it (the current one stays).
    pub fn reload(&self, new: ServeConfig) -> Result<(), String> {
        new.validate()?;
        let mut current = self.current.lock();
        let fixed = unreloadable_changes(&current, &new);
        if !fixed.is_empty() {
            return Err(format!(
                "{} cannot change without a restart",
                fixed.join(", ")
            ));
        }
        let previous = Arc::clone(&self.slot.read());
        let proxy = build_proxy(&self.engine, &new, &self.limits, Some(&previous))?;
        *self.slot.write() = Arc::new(proxy);
        *current = new;
        Ok(())
    }

    /// Reads `path` and [`Self::reload`]s it; logs and counts the outcome.
    pub fn reload_file(&self, path: &Path) -> Result<(), String> {
        let outcome = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: {e}", path.display()))
            .and_then(|text| {
                toml::from_str::<ServeConfig>(&text).map_err(|e| format!("{}: {e}", path.display()))
            })
            .and_then(|mut cfg| {
                cfg.source = Some(path.to_owned());
                self.reload(cfg)
            });
        match &outcome {
            Ok(()) => {
                metrics::counter!(telemetry::CONFIG_RELOADS, "outcome" => "applied").increment(1);
                metrics::gauge!(telemetry::CONFIG_LOADED).set(x402_upto::clock::unix_now() as f64);
                let routes = self.current.lock().routes.len();
                tracing::info!(config = %path.display(), routes, "configuration reloaded");
            }
            Err(why) => {
                metrics::counter!(telemetry::CONFIG_RELOADS, "outcome" => "refused").increment(1);
                tracing::error!(config = %path.display(), "reload refused, the running configuration is kept: {why}");
            }
        }
        outcome
    }
}

/// Reloads `path` on every SIGHUP until the task is dropped.
#[cfg(unix)]
pub(super) async fn on_sighup<S: Store + 'static>(
    reloader: Arc<Reloader<S>>,
    path: std::path::PathBuf,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the configuration will not reload");
            return;
        }
    };
    while hup.recv().await.is_some() {
        let _ = reloader.reload_file(&path);
    }
}

/// The keys whose change a running process cannot apply, that differ between `old` and
/// `new`. Everything else (`upstream`, `public_url`, `[[route]]`, `[limits]` but its
/// `max_tracked`, and `[http]`'s `upstream_timeout_secs`, `request_body_timeout_secs`,
/// `max_target_bytes`) is reloadable.
pub fn unreloadable_changes(old: &ServeConfig, new: &ServeConfig) -> Vec<&'static str> {
    let (oh, nh) = (&old.http, &new.http);
    let checks: [(&'static str, bool); 29] = [
        ("listen", old.listen == new.listen),
        ("rpc", old.rpc == new.rpc),
        ("chain_id", old.chain_id == new.chain_id),
        ("escrow", old.escrow == new.escrow),
        ("collector", old.collector == new.collector),
        ("asset", old.asset == new.asset),
        ("asset_name", old.asset_name == new.asset_name),
        ("asset_version", old.asset_version == new.asset_version),
        ("pay_to", old.pay_to == new.pay_to),
        ("withdraw_delay", old.withdraw_delay == new.withdraw_delay),
        (
            "max_timeout_seconds",
            old.max_timeout_seconds == new.max_timeout_seconds,
        ),
        ("min_deposit", old.min_deposit == new.min_deposit),
        ("store", old.store == new.store),
        ("durability", old.durability == new.durability),
        ("fdatasync", old.fdatasync == new.fdatasync),
        (
            "group_linger_us",
            old.group_linger_us == new.group_linger_us,
        ),
        ("postgres", old.postgres == new.postgres),
        ("metrics_listen", old.metrics_listen == new.metrics_listen),
        // The admin listener, its token variable and its rings are set up once, at start.
        ("admin", old.admin == new.admin),
        ("settlement", old.settlement == new.settlement),
        ("refunds", old.refunds == new.refunds),
        ("watcher", old.watcher == new.watcher),
        ("tx", old.tx == new.tx),
        ("cold_reads", old.cold_reads == new.cold_reads),
        ("deposits", old.deposits == new.deposits),
        (
            "http.header_read_timeout_secs",
            oh.header_read_timeout_secs == nh.header_read_timeout_secs,
        ),
        (
            "http.idle_timeout_secs",
            oh.idle_timeout_secs == nh.idle_timeout_secs,
        ),
        (
            "http.max_connections",
            oh.max_connections == nh.max_connections,
        ),
        (
            "limits.max_tracked",
            old.limits.max_tracked == new.limits.max_tracked,
        ),
    ];
    checks
        .iter()
        .filter(|(_, same)| !same)
        .map(|(key, _)| *key)
        .collect()
}
