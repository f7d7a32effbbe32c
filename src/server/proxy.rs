//! `x402-upto serve`: a paying reverse proxy in front of any HTTP upstream.
//!
//! Priced path prefixes go through [`PaymentLayer`]; everything else is forwarded for free.
//! The upstream may report the actual cost of a request in the `X-Upto-Charge` response
//! header (decimal atomic units, ≤ the route's price); without it the full price is charged.

use std::path::PathBuf;
use std::sync::Arc;

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::Address;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderName, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::engine::{Engine, EngineConfig};
use crate::server::{ActualCharge, PaymentLayer};
use crate::store::{Durability, Store};
use crate::wire::Eip155Network;

/// Response header through which the upstream reports the actual charge.
pub const CHARGE_HEADER: &str = "x-upto-charge";

/// Largest request or response body the proxy buffers (bytes).
pub const MAX_PROXY_BODY: usize = 32 * 1024 * 1024;

/// The `serve` TOML file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on, e.g. `127.0.0.1:8080`.
    pub listen: String,
    /// Upstream origin, e.g. `http://127.0.0.1:9000`.
    pub upstream: String,
    /// JSON-RPC endpoint of the chain.
    pub rpc: String,
    /// Chain id (the network is `eip155:<chain_id>`).
    pub chain_id: u64,
    /// Escrow contract.
    pub escrow: Address,
    /// ERC-3009 deposit collector.
    pub collector: Address,
    /// Token.
    pub asset: Address,
    /// Token EIP-712 name.
    pub asset_name: String,
    /// Token EIP-712 version.
    pub asset_version: String,
    /// Receiver.
    pub pay_to: Address,
    /// Withdraw delay of channels we accept (seconds).
    #[serde(default = "default_withdraw_delay")]
    pub withdraw_delay: u64,
    /// `maxTimeoutSeconds` of the offers.
    #[serde(default = "default_timeout")]
    pub max_timeout_seconds: u64,
    /// Channel store directory.
    pub store: PathBuf,
    /// `none`, `group` (default) or `every`.
    #[serde(default)]
    pub durability: Durability,
    /// Advertised `extra.minDeposit`, if any.
    #[serde(default)]
    pub min_deposit: Option<String>,
    /// Priced path prefixes.
    #[serde(rename = "route", default)]
    pub routes: Vec<RouteConfig>,
    /// Prometheus scrape address (`GET /metrics`), e.g. `127.0.0.1:9464`; none by default.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// One priced path prefix.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path prefix, e.g. `/api/` (longest prefix wins).
    pub prefix: String,
    /// Maximum price per request in atomic units.
    pub price: u64,
    /// `resource.description`.
    #[serde(default)]
    pub description: Option<String>,
}

fn default_withdraw_delay() -> u64 {
    900
}
fn default_timeout() -> u64 {
    300
}

impl ServeConfig {
    /// The engine configuration; `receiver_authorizer` is the address of the key we hold.
    pub fn engine_config(&self, receiver_authorizer: Address) -> EngineConfig {
        let mut extra = Map::new();
        if let Some(m) = &self.min_deposit {
            extra.insert("minDeposit".into(), Value::String(m.clone()));
        }
        EngineConfig {
            network: Eip155Network(self.chain_id),
            pay_to: self.pay_to,
            asset: self.asset,
            asset_name: self.asset_name.clone(),
            asset_version: self.asset_version.clone(),
            receiver_authorizer,
            withdraw_delay: self.withdraw_delay,
            max_timeout_seconds: self.max_timeout_seconds,
            extra,
        }
    }
}

#[derive(Clone, Debug)]
struct Upstream {
    http: reqwest::Client,
    origin: String,
}

/// The proxy router: each route's prefix priced through the engine, the rest free.
pub fn proxy_router<S: Store + 'static>(
    engine: Engine<S>,
    routes: &[RouteConfig],
    upstream: &str,
) -> Router {
    let up = Upstream {
        http: reqwest::Client::new(),
        origin: upstream.trim_end_matches('/').to_owned(),
    };
    let mut router = Router::new();
    for r in routes {
        let mut layer = PaymentLayer::fixed(engine.clone(), u128::from(r.price));
        if let Some(d) = &r.description {
            layer = layer.with_description(d.clone());
        }
        let prefix = r.prefix.trim_end_matches('/');
        let service = axum::routing::any(forward).layer(layer);
        router = router
            .route(&format!("{prefix}/{{*rest}}"), service.clone())
            .route(if prefix.is_empty() { "/" } else { prefix }, service);
    }
    router.fallback(forward).with_state(up)
}

/// Starts the proxy: opens the store, restores channels, serves until the process ends.
pub async fn serve(
    cfg: ServeConfig,
    relayer: PrivateKeySigner,
    authorizer: PrivateKeySigner,
) -> Result<(), String> {
    use alloy::network::EthereumWallet;
    use alloy::providers::{Provider, ProviderBuilder};

    let url: reqwest::Url = cfg.rpc.parse().map_err(|e| format!("rpc url: {e}"))?;
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(relayer.clone()))
        .connect_http(url)
        .erased();
    let domain = crate::typed_data::EscrowDomain::new(cfg.chain_id, cfg.escrow);
    let sender = crate::chain::tx::TxSender::new(
        provider.clone(),
        relayer,
        cfg.chain_id,
        crate::chain::tx::TxPolicy::default(),
    );
    let receiver_authorizer = authorizer.address();
    let escrow = Arc::new(crate::chain::escrow::EscrowClient::new(
        provider.clone(),
        cfg.escrow,
        cfg.collector,
        Arc::new(sender),
        Some(authorizer),
        domain.clone(),
    ));
    let store = Arc::new(
        crate::SledStore::open(
            &cfg.store,
            crate::SledOptions::with_durability(cfg.durability),
        )
        .map_err(|e| format!("store {}: {e}", cfg.store.display()))?,
    );
    let ledger = crate::Ledger::new(domain);
    let engine = Engine::new(
        cfg.engine_config(receiver_authorizer),
        ledger.clone(),
        Arc::clone(&store),
        Some(escrow.clone()),
    )?;
    let restored = engine.restore().await.map_err(|e| e.to_string())?;
    if let Some(addr) = cfg.metrics_listen {
        crate::telemetry::install_prometheus(addr).map_err(|e| format!("metrics {addr}: {e}"))?;
    }

    // Vouchers only become money when claimed: the scheduler claims (threshold, interval, at
    // once on a withdrawal), sweeps and refunds idle channels; the watcher keeps the mirror
    // of every channel fresh and wakes the scheduler when a payer starts a withdrawal.
    let journal =
        crate::settlement::ClaimJournal::open(&store).map_err(|e| format!("claim journal: {e}"))?;
    let settlement = crate::settlement::Settlement::new(
        ledger.clone(),
        escrow.clone(),
        journal,
        crate::settlement::SettlementConfig::default(),
    )
    .with_refunds(
        Arc::clone(&store),
        crate::settlement::RefundPolicy::default(),
        std::time::Duration::from_secs(60),
    )
    .spawn();
    let head = provider
        .get_block_number()
        .await
        .map_err(|e| format!("rpc {}: {e}", cfg.rpc))?;
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = crate::settlement::Watcher::new(
        escrow,
        ledger,
        crate::settlement::WatcherConfig::default(),
        Some(settlement.waker()),
        head + 1,
    )
    .spawn(stop.clone());

    let app = proxy_router(engine, &cfg.routes, &cfg.upstream);
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| format!("listen {}: {e}", cfg.listen))?;
    tracing::info!(listen = %cfg.listen, upstream = %cfg.upstream, restored, "serving");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string());
    // Stop watching, then let the scheduler finish its round so a started claim is journalled.
    stop.cancel();
    let _ = watcher.await;
    settlement.shutdown().await;
    served
}

async fn forward(State(up): State<Upstream>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let bytes = match axum::body::to_bytes(body, MAX_PROXY_BODY).await {
        Ok(b) => b,
        Err(_) => return status(StatusCode::PAYLOAD_TOO_LARGE),
    };
    let mut out = up
        .http
        .request(parts.method.clone(), format!("{}{path}", up.origin))
        .body(bytes);
    for (name, value) in &parts.headers {
        // Payment headers stay here; hop-by-hop headers are not forwarded.
        if !is_hop_or_payment(name) {
            out = out.header(name, value);
        }
    }
    let res = match out.send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "upstream request failed");
            return status(StatusCode::BAD_GATEWAY);
        }
    };
    let code = res.status();
    let headers = res.headers().clone();
    let charge = headers
        .get(CHARGE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u128>().ok());
    let body = match res.bytes().await {
        Ok(b) => b,
        Err(_) => return status(StatusCode::BAD_GATEWAY),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = code;
    for (name, value) in &headers {
        if !is_hop_or_payment(name) && name.as_str() != CHARGE_HEADER {
            response.headers_mut().append(name, value.clone());
        }
    }
    if let Some(c) = charge {
        response.extensions_mut().insert(ActualCharge(c));
    }
    response
}

fn is_hop_or_payment(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authorization"
            | "content-length"
            | "payment-signature"
            | "payment-response"
            | "payment-required"
    )
}

fn status(code: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = code;
    r
}
