//! The two Rust targets of the side-by-side benchmark, each a separate process:
//!
//! - `internal bench-server`: our [`PaymentLayer`] over a trivial handler that charges a fixed
//!   amount below the price (the "upto" part), on an [`Engine`] with the **default durable
//!   `group`** sled store in a temporary directory and the escrow on the given RPC (deposits go
//!   through the normal x402 flow). This is the server the goals are about.
//! - `internal bench-ceiling`: the same header decoded the same way (the one-pass voucher
//!   decoder, `VoucherView`), then exactly one
//!   secp256k1 recovery compared with the channel's `payerAuthorizer`. No ledger, no store, no
//!   chain: the most any voucher server can do per request on this machine.
//!
//! Both print one `READY {json}` line on stdout when listening and stop on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::Address;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::json;

use x402_upto::client::{CANONICAL_COLLECTOR, CANONICAL_ESCROW};
use x402_upto::engine::{ChainAccess, ColdReadLimits, Engine, EngineConfig};
use x402_upto::server::{Charge, PaymentLayer};
use x402_upto::store::{Durability, PgOptions, PostgresStore, SledOptions, SledStore, Store};
use x402_upto::typed_data::EscrowDomain;
use x402_upto::verify::recover_signer;
use x402_upto::wire::{
    Eip155Network, MAX_PAYMENT_HEADER_BYTES, PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SIGNATURE,
    VoucherView, decode_header_bytes,
};

/// anvil's default account 5 (the bench server's relayer: it sends the deposit transactions).
pub const ANVIL_KEY_5: &str = "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba";
/// anvil's default account 6 (the bench server's receiver authorizer).
pub const ANVIL_KEY_6: &str = "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e";

/// Arguments of `internal bench-server`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchServerArgs {
    /// JSON-RPC endpoint of the chain holding the escrow (anvil).
    #[arg(long)]
    pub rpc: String,
    /// The token (`asset`).
    #[arg(long)]
    pub token: Address,
    /// Escrow (default: the canonical x402 address, as installed by `interop/chain.mjs`).
    #[arg(long, default_value_t = CANONICAL_ESCROW)]
    pub escrow: Address,
    /// ERC-3009 deposit collector (default: the canonical x402 address).
    #[arg(long, default_value_t = CANONICAL_COLLECTOR)]
    pub collector: Address,
    /// Route price: the most one request may cost (atomic units).
    #[arg(long, default_value_t = 1000)]
    pub price: u128,
    /// What the handler actually charges per request (≤ price).
    #[arg(long, default_value_t = 500)]
    pub charge: u128,
    /// Relayer key (sends deposits); default anvil account 5.
    #[arg(long, env = "X402_BENCH_RELAYER_KEY", hide_env_values = true, default_value = ANVIL_KEY_5)]
    pub relayer_key: String,
    /// Receiver authorizer key; default anvil account 6.
    #[arg(long, env = "X402_BENCH_AUTHORIZER_KEY", hide_env_values = true, default_value = ANVIL_KEY_6)]
    pub authorizer_key: String,
    /// `payTo` (default: the authorizer's address).
    #[arg(long)]
    pub pay_to: Option<Address>,
    /// Store durability: `group` (the default of `serve`), `every` or `none`.
    #[arg(long, default_value = "group")]
    pub durability: Durability,
    /// Group mode: the longest the store thread gathers writes into one commit, in
    /// microseconds (the default is `serve`'s; 0 commits whatever is queued at once).
    #[arg(long, default_value_t = x402_upto::store::DEFAULT_GROUP_LINGER.as_micros() as u64)]
    pub group_linger_us: u64,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Keep the channels in this PostgreSQL database (the shared store of several
    /// instances) instead of sled; `--durability` does not apply (commits are durable).
    #[arg(long)]
    pub postgres: Option<String>,
    /// This instance's name in the shared store (several bench servers on one database).
    #[arg(long)]
    pub instance: Option<String>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address, as `serve` does: e.g. the
    /// store's group commits (`x402_store_*`) under a load run. None by default: the
    /// recorder's own work is then absent from the measured server.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
}

/// Arguments of `internal bench-ceiling`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchCeilingArgs {
    /// Chain id of the voucher domain.
    #[arg(long, default_value_t = 31337)]
    pub chain_id: u64,
    /// Escrow of the voucher domain.
    #[arg(long, default_value_t = CANONICAL_ESCROW)]
    pub escrow: Address,
    /// Price announced in the 402 (the load generator signs `cumulative + price`).
    #[arg(long, default_value_t = 1000)]
    pub price: u128,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
}

fn runtime(workers: Option<usize>) -> crate::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n.max(1));
    }
    b.enable_all().build().map_err(crate::Error::Runtime)
}

fn fail(what: &str, e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Command(format!("{what}: {e}"))
}

/// Resolves on SIGTERM or SIGINT (bench.sh stops its servers with SIGTERM).
pub(crate) async fn stopped() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Counts the paid answers our layer sent (200 with a `PAYMENT-RESPONSE`), so that the load
/// generator can check that every 200 it saw was charged, and nothing else was.
#[derive(Debug, Default)]
struct Stats {
    paid_responses: AtomicU64,
}

impl Stats {
    /// Counts `res` if it is a paid answer. A response map, not a middleware: no boxed
    /// future or request extension per request, work the ceiling does not do either.
    fn count(&self, res: Response) -> Response {
        if res.status() == StatusCode::OK && res.headers().contains_key(PAYMENT_RESPONSE) {
            self.paid_responses.fetch_add(1, Ordering::Relaxed);
        }
        res
    }
}

/// Runs `internal bench-server` until SIGTERM.
pub fn run_server_blocking(args: &BenchServerArgs) -> crate::Result<()> {
    runtime(args.workers)?.block_on(run_server(args))
}

async fn run_server(args: &BenchServerArgs) -> crate::Result<()> {
    use alloy::network::EthereumWallet;
    use alloy::providers::{Provider, ProviderBuilder};

    if let Some(addr) = args.metrics {
        crate::telemetry::install_prometheus(addr).map_err(|e| fail("--metrics", e))?;
    }
    if args.charge > args.price {
        return Err(fail("--charge", "must not exceed --price"));
    }
    let relayer: PrivateKeySigner = args
        .relayer_key
        .trim()
        .parse()
        .map_err(|_| fail("--relayer-key", "not a 32-byte hex key"))?;
    let authorizer: PrivateKeySigner = args
        .authorizer_key
        .trim()
        .parse()
        .map_err(|_| fail("--authorizer-key", "not a 32-byte hex key"))?;
    let url: reqwest::Url = args.rpc.parse().map_err(|e| fail("--rpc", e))?;
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(relayer.clone()))
        .connect_http(url);
    // anvil mines at once; alloy's default 250 ms receipt polling would stretch every deposit.
    provider
        .client()
        .set_poll_interval(std::time::Duration::from_millis(10));
    let provider = provider.erased();
    let chain_id = provider
        .get_chain_id()
        .await
        .map_err(|e| fail("eth_chainId", e))?;
    let domain = EscrowDomain::new(chain_id, args.escrow);
    let policy = x402_upto::chain::tx::TxPolicy {
        poll_interval: std::time::Duration::from_millis(10),
        ..Default::default()
    };
    let sender = x402_upto::chain::tx::TxSender::new(provider.clone(), relayer, chain_id, policy);
    let escrow = Arc::new(x402_upto::chain::escrow::EscrowClient::new(
        provider,
        args.escrow,
        args.collector,
        Arc::new(sender),
        Some(authorizer.clone()),
        domain.clone(),
    ));
    let config = EngineConfig {
        network: Eip155Network(chain_id),
        pay_to: args.pay_to.unwrap_or(authorizer.address()),
        asset: args.token,
        asset_name: x402_upto_testkit::devnet::TOKEN_NAME.into(),
        asset_version: x402_upto_testkit::devnet::TOKEN_VERSION.into(),
        receiver_authorizer: authorizer.address(),
        withdraw_delay: 900,
        max_timeout_seconds: 300,
        extra: Default::default(),
    };
    let ledger = x402_upto::Ledger::new(domain);
    let access: Arc<dyn ChainAccess> = escrow;
    if let Some(url) = &args.postgres {
        let mut options = PgOptions::new(url.clone());
        if let Some(name) = &args.instance {
            options.instance = name.clone();
        }
        let store = Arc::new(
            PostgresStore::open(options)
                .await
                .map_err(|e| fail("postgres store", e))?,
        );
        let commits = {
            let store = Arc::clone(&store);
            move || {
                let store = Arc::clone(&store);
                async move { store.database_commits().await.ok() }
            }
        };
        let label = "postgres";
        return serve_engine(
            args, chain_id, config, ledger, access, store, label, commits,
        )
        .await;
    }
    let dir = tempfile::tempdir().map_err(|e| fail("temp dir", e))?;
    let store = Arc::new(
        SledStore::open(
            dir.path(),
            SledOptions {
                group_linger: std::time::Duration::from_micros(args.group_linger_us),
                ..SledOptions::with_durability(args.durability)
            },
        )
        .map_err(|e| fail("store", e))?,
    );
    let label = format!("{:?}", args.durability).to_lowercase();
    let served = serve_engine(
        args,
        chain_id,
        config,
        ledger,
        access,
        store,
        &label,
        || async { None },
    )
    .await;
    // Dropped last: the store directory goes away only after the server stopped.
    drop(dir);
    served
}

/// Serves the paid route over an engine on `store` until SIGTERM. `commits` reads the
/// database's commit counter, where there is one (reported in `/admin/stats`).
#[allow(clippy::too_many_arguments)]
async fn serve_engine<S, F, Fut>(
    args: &BenchServerArgs,
    chain_id: u64,
    config: EngineConfig,
    ledger: x402_upto::Ledger,
    access: Arc<dyn ChainAccess>,
    store: Arc<S>,
    durability: &str,
    commits: F,
) -> crate::Result<()>
where
    S: Store + 'static,
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<u64>> + Send,
{
    let engine =
        Engine::new(config, ledger.clone(), store, Some(access)).map_err(|e| fail("engine", e))?;
    // A load run opens every virtual client's channel at once; the default cold-read bucket
    // (500 burst) is sized for strangers, not for a benchmark's own warm-up.
    engine.set_cold_read_limits(ColdReadLimits {
        burst: 100_000,
        per_second: 100_000,
        ..Default::default()
    });

    let charge = args.charge;
    let paid = move |Extension(c): Extension<Charge>| async move {
        c.set(charge);
        "ok"
    };
    let stats = Arc::new(Stats::default());
    let admin_stats = {
        let (stats, ledger) = (Arc::clone(&stats), ledger.clone());
        move || async move {
            let records = ledger.records();
            let charged: u128 = records.iter().map(|r| r.charged).sum();
            Json(json!({
                "paidResponses": stats.paid_responses.load(Ordering::Relaxed),
                "chargedTotal": charged.to_string(),
                "channels": records.len(),
                "dbCommits": commits().await,
            }))
        }
    };
    let app = Router::new()
        .route(
            "/paid",
            get(paid).layer(
                PaymentLayer::fixed(engine, args.price)
                    .with_description("x402-upto bench: one paid request"),
            ),
        )
        .route("/admin/stats", get(admin_stats))
        .layer(tower::util::MapResponseLayer::new(move |res: Response| {
            stats.count(res)
        }));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| fail("bind", e))?;
    let addr = listener.local_addr().map_err(|e| fail("local addr", e))?;
    let url = format!("http://{addr}");
    println!(
        "READY {}",
        json!({"url": url, "paid": format!("{url}/paid"), "stats": format!("{url}/admin/stats"),
               "price": args.price.to_string(), "charge": args.charge.to_string(),
               "durability": durability, "chainId": chain_id})
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(stopped())
        .await
        .map_err(|e| fail("serve", e))
}

#[derive(Clone, Debug)]
struct Ceiling {
    domain: EscrowDomain,
    required: Arc<str>,
}

/// One paid request at the ceiling: decode, hash, recover, compare. Refuses like a server
/// would (402) on anything that does not check out, so that a broken load generator shows
/// up as errors rather than as a flattering rate.
async fn ceiling(Extension(c): Extension<Ceiling>, headers: HeaderMap) -> Response {
    let Some(raw) = headers.get(PAYMENT_SIGNATURE) else {
        return (
            StatusCode::PAYMENT_REQUIRED,
            [(PAYMENT_REQUIRED, c.required.to_string())],
            "{}",
        )
            .into_response();
    };
    // Decoded as our server decodes a voucher: one pass, no JSON tree (`VoucherView`).
    let checked = decode_header_bytes(raw.as_bytes(), MAX_PAYMENT_HEADER_BYTES)
        .map_err(|e| e.to_string())
        .and_then(|json| {
            VoucherView::parse(&json)
                .map(|v| (v.channel_config, v.voucher))
                .ok_or_else(|| "not a voucher payment".to_owned())
        })
        .and_then(|(config, voucher)| {
            let digest = c.domain.voucher_digest(
                x402_upto::ChannelId(voucher.channel_id),
                voucher.max_claimable_amount,
            );
            let signer = recover_signer(&digest, &voucher.signature)
                .map_err(|e| format!("signature: {e:?}"))?;
            if signer == config.payer_authorizer {
                Ok(())
            } else {
                Err("signer is not the payerAuthorizer".to_owned())
            }
        });
    match checked {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(e) => (StatusCode::PAYMENT_REQUIRED, e).into_response(),
    }
}

/// Runs `internal bench-ceiling` until SIGTERM.
pub fn run_ceiling_blocking(args: &BenchCeilingArgs) -> crate::Result<()> {
    runtime(args.workers)?.block_on(run_ceiling(args))
}

async fn run_ceiling(args: &BenchCeilingArgs) -> crate::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| fail("bind", e))?;
    let addr = listener.local_addr().map_err(|e| fail("local addr", e))?;
    let url = format!("http://{addr}");
    // A 402 shaped like ours, so the load generator builds the same voucher header for every
    // target. The addresses are placeholders: nothing here touches a chain.
    let required = json!({
        "x402Version": 2,
        "error": "Payment required",
        "resource": {"url": format!("{url}/paid")},
        "accepts": [{
            "scheme": x402_upto::wire::BATCH_SETTLEMENT,
            "network": format!("eip155:{}", args.chain_id),
            "amount": args.price.to_string(),
            "asset": Address::repeat_byte(0xc0).to_checksum(None),
            "payTo": Address::repeat_byte(0xa0).to_checksum(None),
            "maxTimeoutSeconds": 300,
            "extra": {"receiverAuthorizer": Address::repeat_byte(0xb0).to_checksum(None),
                      "withdrawDelay": 900, "name": "USDC", "version": "2"}
        }]
    });
    let ceiling_state = Ceiling {
        domain: EscrowDomain::new(args.chain_id, args.escrow),
        required: x402_upto::wire::encode_header(&required).into(),
    };
    let app = Router::new()
        .route("/paid", get(ceiling))
        .layer(Extension(ceiling_state));
    println!(
        "READY {}",
        json!({"url": url, "paid": format!("{url}/paid"), "price": args.price.to_string()})
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(stopped())
        .await
        .map_err(|e| fail("serve", e))
}
