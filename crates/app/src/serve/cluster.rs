//! Several `serve` instances on one PostgreSQL store (`docs/operations.md`, "Several
//! instances"). Every instance serves any channel (the store's holds and compare-and-set
//! keep its ledger honest) and refreshes its cache from what the others wrote. One of them,
//! the holder of the settler lease, also runs the claim scheduler, sweeps, idle refunds and
//! the chain watcher, and publishes the chain state it sees; when it dies, another takes the
//! lease over once it expires.
//!
//! Transactions: each instance sends its own deposits and refunds with its own relayer key
//! (one key per instance: two processes sharing a key would race on its nonces); the
//! settler sends the claims and sweeps with its key. The receiver-authorizer key only
//! signs, so all instances share it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use x402_upto::Ledger;
use x402_upto::settlement::{Freshness, Gate, RefreshCursor, refresh_from_store};
use x402_upto::store::{PostgresStore, SettlerLease};

use super::knobs::PostgresKnobs;
use super::{ChainParts, ServeConfig, Settler, admin, freshness_of, serve_app};

/// Serves on a shared store until `shutdown`, taking part in the settler election.
pub(super) async fn serve_shared(
    cfg: ServeConfig,
    pg: PostgresKnobs,
    chain: ChainParts,
    store: Arc<PostgresStore>,
    listener: tokio::net::TcpListener,
    mut admin: Option<admin::Prepared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    // One relayer key per instance (see the module docs): refuse a key another live
    // instance sends with.
    let live = Duration::from_secs(pg.lease_secs);
    match store.register_instance(chain.relayer, live).await {
        Ok(None) => {}
        Ok(Some(other)) => {
            return Err(format!(
                "relayer {} is in use by the live instance {other:?}: give each instance its own \
                 relayer key (or wait {} s after a crash, or reuse the crashed instance's \
                 [postgres] instance name)",
                chain.relayer, pg.lease_secs
            ));
        }
        Err(e) => return Err(format!("registering this instance: {e}")),
    }
    if let Some(a) = &mut admin {
        a.use_store(Arc::clone(&store)).await?;
    }
    let (engine, ledger) = chain.engine(&cfg, Arc::clone(&store)).await?;
    let freshness = freshness_of(&cfg, &engine);
    // The admin API serves on every instance; its actions go to this instance's settler
    // while it holds the lease, and are refused (409) otherwise.
    let hooks = admin.as_ref().map(|a| {
        engine.set_blocked_payers(a.blocked_payers());
        a.hooks::<PostgresStore>()
    });
    let admin = admin.zip(hooks.clone()).map(|(a, hooks)| {
        a.spawn(admin::Parts {
            ledger: ledger.clone(),
            store: Arc::clone(&store),
            escrow: Arc::clone(&chain.escrow),
            pay_to: cfg.pay_to,
            asset: cfg.asset,
            asset_name: cfg.asset_name.clone(),
            shared: true,
            hooks,
        })
    });
    // One settler per escrow, chain and receiver: instances of another deployment may share
    // the database without sharing the role.
    let name = format!("settler:{}:{}:{}", cfg.chain_id, cfg.escrow, cfg.pay_to);
    let lease = Arc::new(store.settler_lease(&name, Duration::from_secs(pg.lease_secs)));
    tracing::info!(instance = store.instance(), lease = %name, "serving on the shared store");
    let stop = CancellationToken::new();
    let role = Role {
        cfg: cfg.clone(),
        chain,
        ledger,
        store,
        lease,
        freshness,
        refresh: Duration::from_millis(pg.refresh_ms),
        admin: hooks,
    };
    let role = tokio::spawn(role.run(stop.clone()));
    let served = serve_app(&cfg, engine, listener, shutdown).await;
    if let Some(a) = admin {
        a.abort();
    }
    stop.cancel();
    let _ = role.await;
    served
}

struct Role {
    cfg: ServeConfig,
    chain: ChainParts,
    ledger: Ledger,
    store: Arc<PostgresStore>,
    lease: Arc<SettlerLease>,
    freshness: Option<Freshness>,
    refresh: Duration,
    admin: Option<admin::Hooks<PostgresStore>>,
}

impl Role {
    /// Refreshes the cache every `refresh`; renews or seeks the lease every third of its
    /// length; starts the settler on taking the lease and stops it on losing it.
    async fn run(self, stop: CancellationToken) {
        let mut settler: Option<Settler<PostgresStore>> = None;
        let mut cursor = RefreshCursor::default();
        let renew_every = self.lease.ttl() / 3;
        let mut last_renew: Option<Instant> = None;
        loop {
            if let Err(e) = refresh_from_store(&*self.store, &self.ledger, &mut cursor).await {
                tracing::warn!(error = %e, "reading other instances' writes failed");
            }
            if last_renew.is_none_or(|t| t.elapsed() >= renew_every) {
                last_renew = Some(Instant::now());
                settler = self.renew(settler).await;
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(self.refresh.min(renew_every)) => {}
            }
        }
        if let Some(s) = settler {
            s.stop().await;
            self.ledger.track_mirror_changes(false);
            if let Err(e) = self.lease.release().await {
                tracing::warn!(error = %e, "releasing the settler lease failed; it expires");
            }
        }
        if let Err(e) = self.store.deregister_instance().await {
            tracing::warn!(error = %e, "forgetting this instance failed; it ages out");
        }
    }

    /// One renewal: keeps, starts or stops the settler.
    async fn renew(
        &self,
        settler: Option<Settler<PostgresStore>>,
    ) -> Option<Settler<PostgresStore>> {
        if let Err(e) = self.store.heartbeat(self.chain.relayer).await {
            tracing::warn!(error = %e, "recording this instance as live failed");
        }
        let polled = self.freshness.as_ref().map_or(0, Freshness::last_poll);
        let held = match self.lease.acquire(polled).await {
            Ok(epoch) => epoch,
            Err(e) => {
                tracing::warn!(error = %e, "renewing the settler lease failed");
                None
            }
        };
        metrics::gauge!(x402_upto::telemetry::SETTLER).set(if held.is_some() { 1.0 } else { 0.0 });
        match (held, settler) {
            (Some(_), Some(s)) => Some(s),
            (Some(epoch), None) => {
                tracing::info!(
                    epoch,
                    instance = self.store.instance(),
                    "took the settler lease"
                );
                // Everything the others charged, before the first claim round.
                if let Ok(all) = x402_upto::store::Store::load_all(&*self.store).await {
                    self.ledger.merge(all);
                }
                self.ledger.track_mirror_changes(true);
                let lease = Arc::clone(&self.lease);
                let gate = Gate(Arc::new(move || lease.is_safe()));
                match Settler::start(
                    &self.cfg,
                    &self.chain,
                    self.ledger.clone(),
                    Arc::clone(&self.store),
                    self.freshness.clone(),
                    Some(gate),
                    self.admin.clone(),
                )
                .await
                {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::error!(error = %e, "starting the settler failed; giving the lease up");
                        self.ledger.track_mirror_changes(false);
                        let _ = self.lease.release().await;
                        None
                    }
                }
            }
            (None, Some(s)) => {
                tracing::warn!("lost the settler lease; stopping claims and the watcher");
                s.stop().await;
                self.ledger.track_mirror_changes(false);
                None
            }
            (None, None) => {
                // Not the settler: the settler's polls vouch for our mirrors' freshness.
                if let Some(f) = &self.freshness
                    && let Ok(at) = self.lease.last_poll().await
                {
                    f.mark(at);
                }
                None
            }
        }
    }
}
