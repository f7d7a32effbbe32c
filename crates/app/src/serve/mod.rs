//! `x402-upto serve`: a paying reverse proxy in front of any HTTP upstream.
//!
//! Priced path prefixes go through [`PaymentLayer`]; everything else is forwarded for free.
//! The upstream may report the actual cost of a request in the `X-Upto-Charge` response
//! header (decimal atomic units, ≤ the route's price); without it the full price is charged.
//! A token route prices an LLM API by its tokens instead ([`tokens`]).

//!
//! | module | holds |
//! |---|---|
//! | [`config`] | the TOML file: [`ServeConfig`], [`RouteConfig`] |
//! | [`knobs`] | its tables: settlement, refunds, watcher, tx, cold reads, http, deposits |
//! | [`proxy`] | [`proxy_router`]: pricing by prefix, dispatch, forwarding upstream |
//! | [`limits`] | rate limits by address and payer, the free tier |
//! | [`listener`] | connection limits and timeouts around hyper |
//! | [`reload`] | SIGHUP: routes, prices and limits swapped without dropping a request |
//! | [`request_target`] | request-target normalisation |
//! | [`tokens`] | routes priced by tokens (OpenAI / Anthropic APIs): quote, `usage`, streams |
//! | `cluster` | several instances on one PostgreSQL store: the settler lease, cache refresh |
//! | [`admin`] | the admin API and dashboard on their own listener (`[admin]`) |

pub mod admin;
mod cluster;
pub mod config;
pub mod knobs;
pub mod limits;
pub mod listener;
pub mod proxy;
pub mod reload;
pub mod request_target;
pub mod tokens;

pub use config::{RouteConfig, ServeConfig};
pub use knobs::{
    ColdReadKnobs, DepositKnobs, HttpKnobs, PostgresKnobs, RefundKnobs, SettlementKnobs, TxKnobs,
    WatcherKnobs,
};
pub use proxy::{CHARGE_HEADER, MAX_PROXY_BODY, proxy_router};
pub use tokens::{ModelPrice, TokenApi};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;

use listener::serve_connections;
use x402_upto::engine::Engine;

/// Starts the proxy: opens the store, restores channels, serves until SIGINT (Ctrl-C) or
/// SIGTERM (what systemd, Docker and Kubernetes send), then shuts down gracefully.
pub async fn serve(
    cfg: ServeConfig,
    relayer: PrivateKeySigner,
    authorizer: PrivateKeySigner,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| format!("listen {}: {e}", cfg.listen))?;
    serve_with(cfg, relayer, authorizer, listener, shutdown_signal()).await
}

/// Completes on SIGINT or (on Unix) SIGTERM.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops gracefully");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested");
}

/// [`serve`] on an already bound `listener` (its address wins over `cfg.listen`), until
/// `shutdown` completes; then the watcher stops and the scheduler finishes its round.
pub async fn serve_with(
    cfg: ServeConfig,
    relayer: PrivateKeySigner,
    authorizer: PrivateKeySigner,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    cfg.validate()?;
    let chain = ChainParts::connect(&cfg, relayer, authorizer)?;
    // Before anything starts: an `[admin]` table without its token stops here.
    let admin = match &cfg.admin {
        Some(knobs) => {
            let sled = cfg.postgres().is_none().then_some(cfg.store.as_path());
            Some(admin::Prepared::bind(knobs, sled).await?)
        }
        None => None,
    };
    if let Some(pg) = cfg.postgres() {
        let store = x402_upto::store::PostgresStore::open(pg.options())
            .await
            .map_err(|e| format!("store (postgres): {e}"))?;
        return cluster::serve_shared(cfg, pg, chain, Arc::new(store), listener, admin, shutdown)
            .await;
    }
    let store = Arc::new(
        x402_upto::SledStore::open(&cfg.store, cfg.store_options())
            .map_err(|e| format!("store {}: {e}", cfg.store.display()))?,
    );
    let (engine, ledger) = chain.engine(&cfg, Arc::clone(&store)).await?;
    let freshness = freshness_of(&cfg, &engine);
    let hooks = admin.as_ref().map(|a| {
        engine.set_blocked_payers(a.blocked_payers());
        a.hooks()
    });
    let settler = Settler::start(
        &cfg,
        &chain,
        ledger.clone(),
        Arc::clone(&store),
        freshness,
        None,
        hooks.clone(),
    )
    .await?;
    let admin = admin.zip(hooks).map(|(a, hooks)| {
        a.spawn(admin::Parts {
            ledger,
            store,
            escrow: Arc::clone(&chain.escrow),
            pay_to: cfg.pay_to,
            asset: cfg.asset,
            asset_name: cfg.asset_name.clone(),
            shared: false,
            hooks,
        })
    });
    let served = serve_app(&cfg, engine, listener, shutdown).await;
    if let Some(a) = admin {
        a.abort();
    }
    settler.stop().await;
    served
}

/// The engine of a `serve` TOML (chain, sled store, restored channels) with its claim
/// scheduler and watcher running, handed to another front end (`x402-upto mcp`) until it
/// returns; then the settlement side stops as in [`serve_with`]. Only the sled store.
pub async fn with_engine<F, Fut>(
    cfg: ServeConfig,
    relayer: PrivateKeySigner,
    authorizer: PrivateKeySigner,
    run: F,
) -> Result<(), String>
where
    F: FnOnce(Engine<x402_upto::SledStore>) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    cfg.validate()?;
    if cfg.postgres().is_some() {
        return Err("this front end runs on the sled store only (no [postgres])".into());
    }
    let chain = ChainParts::connect(&cfg, relayer, authorizer)?;
    let store = Arc::new(
        x402_upto::SledStore::open(&cfg.store, cfg.store_options())
            .map_err(|e| format!("store {}: {e}", cfg.store.display()))?,
    );
    let (engine, ledger) = chain.engine(&cfg, Arc::clone(&store)).await?;
    let freshness = freshness_of(&cfg, &engine);
    let settler = Settler::start(&cfg, &chain, ledger, store, freshness, None, None).await?;
    let ran = run(engine).await;
    settler.stop().await;
    ran
}

/// The chain side every instance needs: provider, escrow client, domain.
struct ChainParts {
    provider: alloy::providers::DynProvider,
    escrow: Arc<x402_upto::chain::escrow::EscrowClient>,
    domain: x402_upto::typed_data::EscrowDomain,
    receiver_authorizer: alloy_primitives::Address,
    /// The address this instance sends its transactions from.
    relayer: alloy_primitives::Address,
}

impl ChainParts {
    fn connect(
        cfg: &ServeConfig,
        relayer: PrivateKeySigner,
        authorizer: PrivateKeySigner,
    ) -> Result<Self, String> {
        use alloy::network::EthereumWallet;
        use alloy::providers::{Provider, ProviderBuilder};

        let url: reqwest::Url = cfg.rpc.parse().map_err(|e| format!("rpc url: {e}"))?;
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(relayer.clone()))
            .connect_http(url)
            .erased();
        let domain = x402_upto::typed_data::EscrowDomain::new(cfg.chain_id, cfg.escrow);
        let relayer_address = relayer.address();
        let sender = x402_upto::chain::tx::TxSender::new(
            provider.clone(),
            relayer,
            cfg.chain_id,
            cfg.tx.policy(),
        );
        let receiver_authorizer = authorizer.address();
        let escrow = Arc::new(
            x402_upto::chain::escrow::EscrowClient::new(
                provider.clone(),
                cfg.escrow,
                cfg.collector,
                Arc::new(sender),
                Some(authorizer),
                domain.clone(),
            )
            .with_deposit_confirmations(cfg.deposits.policy()),
        );
        Ok(Self {
            provider,
            escrow,
            domain,
            receiver_authorizer,
            relayer: relayer_address,
        })
    }

    /// The engine over `store`, with every channel restored into its ledger.
    async fn engine<S: x402_upto::store::Store + 'static>(
        &self,
        cfg: &ServeConfig,
        store: Arc<S>,
    ) -> Result<(Engine<S>, x402_upto::Ledger), String> {
        let ledger = x402_upto::Ledger::new(self.domain.clone());
        let engine = Engine::new(
            cfg.engine_config(self.receiver_authorizer),
            ledger.clone(),
            store,
            Some(self.escrow.clone()),
        )?;
        engine.set_cold_read_limits(cfg.cold_reads.limits());
        engine.set_refund_limits(cfg.refunds.limits())?;
        let restored = engine.restore().await.map_err(|e| e.to_string())?;
        tracing::info!(restored, "channels restored");
        if let Some(addr) = cfg.metrics_listen {
            crate::telemetry::install_prometheus(addr)
                .map_err(|e| format!("metrics {addr}: {e}"))?;
        }
        Ok((engine, ledger))
    }
}

/// During an RPC outage the mirror ages; past `max_staleness_secs` vouchers are refused (a
/// withdrawal started meanwhile would be unseen) until a read or a poll succeeds.
fn freshness_of<S: x402_upto::store::Store + 'static>(
    cfg: &ServeConfig,
    engine: &Engine<S>,
) -> Option<x402_upto::settlement::Freshness> {
    (cfg.watcher.max_staleness_secs > 0).then(|| {
        let freshness = x402_upto::settlement::Freshness::new(Duration::from_secs(
            cfg.watcher.max_staleness_secs,
        ));
        engine.set_freshness(freshness.clone());
        freshness
    })
}

/// The claim scheduler (claims, sweeps, idle refunds) and the chain watcher, running.
///
/// Vouchers only become money when claimed: the scheduler claims (threshold, interval, at
/// once on a withdrawal), sweeps and refunds idle channels; the watcher keeps the mirror of
/// every channel fresh and wakes the scheduler when a payer starts a withdrawal.
struct Settler<S: x402_upto::store::SettlementStore> {
    settlement: x402_upto::settlement::SettlementHandle<S>,
    watcher: tokio::task::JoinHandle<()>,
    stop: tokio_util::sync::CancellationToken,
    /// The admin API's view of this settler (its actions go to it while it runs).
    admin: Option<admin::Hooks<S>>,
}

impl<S: x402_upto::store::SettlementStore> Settler<S> {
    async fn start(
        cfg: &ServeConfig,
        chain: &ChainParts,
        ledger: x402_upto::Ledger,
        store: Arc<S>,
        freshness: Option<x402_upto::settlement::Freshness>,
        gate: Option<x402_upto::settlement::Gate>,
        admin: Option<admin::Hooks<S>>,
    ) -> Result<Self, String> {
        use alloy::providers::Provider;

        let journal = x402_upto::settlement::ClaimJournal::open(&store)
            .map_err(|e| format!("claim journal: {e}"))?;
        let mut settlement = x402_upto::settlement::Settlement::new(
            ledger.clone(),
            chain.escrow.clone(),
            journal,
            cfg.settlement.config(),
        );
        if cfg.refunds.enabled {
            settlement = settlement.with_refunds(
                Arc::clone(&store),
                cfg.refunds.policy(),
                Duration::from_secs(cfg.refunds.every_secs),
            );
        }
        if let Some(gate) = gate {
            settlement = settlement.with_gate(gate);
        }
        if let Some(hooks) = &admin {
            settlement = settlement.with_observer(hooks.observer());
        }
        let head = chain
            .provider
            .get_block_number()
            .await
            .map_err(|e| format!("rpc {}: {e}", cfg.rpc))?;
        let settlement = settlement.spawn();
        if let Some(hooks) = &admin {
            hooks.set_settler(Some(Arc::clone(settlement.settlement())));
        }
        let stop = tokio_util::sync::CancellationToken::new();
        let mut watcher = x402_upto::settlement::Watcher::new(
            chain.escrow.clone(),
            ledger,
            cfg.watcher.config(),
            Some(settlement.waker()),
            head + 1,
        );
        if let Some(freshness) = freshness {
            watcher = watcher.with_freshness(freshness);
        }
        let watcher = watcher.spawn(stop.clone());
        Ok(Self {
            settlement,
            watcher,
            stop,
            admin,
        })
    }

    /// Stops watching, then lets the scheduler finish its round so a started claim is
    /// journalled.
    async fn stop(self) {
        if let Some(hooks) = &self.admin {
            hooks.set_settler(None);
        }
        self.stop.cancel();
        let _ = self.watcher.await;
        self.settlement.shutdown().await;
    }
}

/// Serves the proxy on `listener` until `shutdown`.
async fn serve_app<S: x402_upto::store::Store + 'static>(
    cfg: &ServeConfig,
    engine: Engine<S>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let (app, reloader) = reload::Reloader::new(engine, cfg)?;
    // Reloads only when the configuration came from a file (`serve --config`).
    #[cfg(unix)]
    let reloading = cfg
        .source
        .clone()
        .map(|path| tokio::spawn(reload::on_sighup(std::sync::Arc::new(reloader), path)));
    let local = listener
        .local_addr()
        .map_or_else(|_| cfg.listen.clone(), |a| a.to_string());
    tracing::info!(listen = %local, upstream = %cfg.upstream, "serving");
    let served = serve_connections(listener, app, cfg.http.connection_limits(), shutdown)
        .await
        .map_err(|e| e.to_string());
    #[cfg(unix)]
    if let Some(task) = reloading {
        task.abort();
    }
    served
}
