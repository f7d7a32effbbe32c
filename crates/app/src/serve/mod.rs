//! `x402-upto serve`: a paying reverse proxy in front of any HTTP upstream.
//!
//! Priced path prefixes go through [`PaymentLayer`]; everything else is forwarded for free.
//! The upstream may report the actual cost of a request in the `X-Upto-Charge` response
//! header (decimal atomic units, ≤ the route's price); without it the full price is charged.

//!
//! | module | holds |
//! |---|---|
//! | [`config`] | the TOML file: [`ServeConfig`], [`RouteConfig`] |
//! | [`knobs`] | its tables: settlement, refunds, watcher, tx, cold reads, http, deposits |
//! | [`proxy`] | [`proxy_router`]: pricing by prefix, dispatch, forwarding upstream |
//! | [`listener`] | connection limits and timeouts around hyper |
//! | [`request_target`] | request-target normalisation |

pub mod config;
pub mod knobs;
pub mod listener;
pub mod proxy;
pub mod request_target;

pub use config::{RouteConfig, ServeConfig};
pub use knobs::{
    ColdReadKnobs, DepositKnobs, HttpKnobs, RefundKnobs, SettlementKnobs, TxKnobs, WatcherKnobs,
};
pub use proxy::{CHARGE_HEADER, MAX_PROXY_BODY, proxy_router};

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
async fn shutdown_signal() {
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
    use alloy::network::EthereumWallet;
    use alloy::providers::{Provider, ProviderBuilder};

    cfg.validate()?;

    let url: reqwest::Url = cfg.rpc.parse().map_err(|e| format!("rpc url: {e}"))?;
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(relayer.clone()))
        .connect_http(url)
        .erased();
    let domain = x402_upto::typed_data::EscrowDomain::new(cfg.chain_id, cfg.escrow);
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
    let store = Arc::new(
        x402_upto::SledStore::open(&cfg.store, cfg.store_options())
            .map_err(|e| format!("store {}: {e}", cfg.store.display()))?,
    );
    let ledger = x402_upto::Ledger::new(domain);
    let engine = Engine::new(
        cfg.engine_config(receiver_authorizer),
        ledger.clone(),
        Arc::clone(&store),
        Some(escrow.clone()),
    )?;
    engine.set_cold_read_limits(cfg.cold_reads.limits());
    engine.set_refund_limits(cfg.refunds.limits())?;
    let restored = engine.restore().await.map_err(|e| e.to_string())?;
    if let Some(addr) = cfg.metrics_listen {
        crate::telemetry::install_prometheus(addr).map_err(|e| format!("metrics {addr}: {e}"))?;
    }

    // Vouchers only become money when claimed: the scheduler claims (threshold, interval, at
    // once on a withdrawal), sweeps and refunds idle channels; the watcher keeps the mirror
    // of every channel fresh and wakes the scheduler when a payer starts a withdrawal.
    let journal = x402_upto::settlement::ClaimJournal::open(&store)
        .map_err(|e| format!("claim journal: {e}"))?;
    let mut settlement = x402_upto::settlement::Settlement::new(
        ledger.clone(),
        escrow.clone(),
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
    let settlement = settlement.spawn();
    let head = provider
        .get_block_number()
        .await
        .map_err(|e| format!("rpc {}: {e}", cfg.rpc))?;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut watcher = x402_upto::settlement::Watcher::new(
        escrow,
        ledger,
        cfg.watcher.config(),
        Some(settlement.waker()),
        head + 1,
    );
    // During an RPC outage the mirror ages; past `max_staleness_secs` vouchers are refused
    // (a withdrawal started meanwhile would be unseen) until a read or a poll succeeds.
    if cfg.watcher.max_staleness_secs > 0 {
        let freshness = x402_upto::settlement::Freshness::new(Duration::from_secs(
            cfg.watcher.max_staleness_secs,
        ));
        engine.set_freshness(freshness.clone());
        watcher = watcher.with_freshness(freshness);
    }
    let watcher = watcher.spawn(stop.clone());

    let app = proxy_router(engine, &cfg)?;
    let local = listener
        .local_addr()
        .map_or_else(|_| cfg.listen.clone(), |a| a.to_string());
    tracing::info!(listen = %local, upstream = %cfg.upstream, restored, "serving");
    let served = serve_connections(listener, app, cfg.http.connection_limits(), shutdown)
        .await
        .map_err(|e| e.to_string());
    // Stop watching, then let the scheduler finish its round so a started claim is journalled.
    stop.cancel();
    let _ = watcher.await;
    settlement.shutdown().await;
    served
}
