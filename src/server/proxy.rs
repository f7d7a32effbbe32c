//! `x402-upto serve`: a paying reverse proxy in front of any HTTP upstream.
//!
//! Priced path prefixes go through [`PaymentLayer`]; everything else is forwarded for free.
//! The upstream may report the actual cost of a request in the `X-Upto-Charge` response
//! header (decimal atomic units, ≤ the route's price); without it the full price is charged.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::Address;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderName, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::chain::escrow::DepositConfirmations;
use crate::chain::tx::TxPolicy;
use crate::engine::{ColdReadLimits, Engine, EngineConfig};
use crate::server::{ActualCharge, PaymentLayer};
use crate::settlement::{RefundPolicy, SettlementConfig, WatcherConfig};
use crate::store::{DEFAULT_GROUP_LINGER, Durability, SledOptions, Store};
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
    /// `fdatasync` the store after each flush (power-loss durability); default `true`.
    #[serde(default = "default_true")]
    pub fdatasync: bool,
    /// Group durability: how long writes gather before a flush, microseconds (default 200).
    #[serde(default = "default_linger_us")]
    pub group_linger_us: u64,
    /// Advertised `extra.minDeposit`, if any.
    #[serde(default)]
    pub min_deposit: Option<String>,
    /// Priced path prefixes.
    #[serde(rename = "route", default)]
    pub routes: Vec<RouteConfig>,
    /// Prometheus scrape address (`GET /metrics`), e.g. `127.0.0.1:9464`; none by default.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[settlement]`: claim threshold, intervals, batch size, confirmations.
    #[serde(default)]
    pub settlement: SettlementKnobs,
    /// `[refunds]`: idle-channel refunds.
    #[serde(default)]
    pub refunds: RefundKnobs,
    /// `[watcher]`: the chain watcher.
    #[serde(default)]
    pub watcher: WatcherKnobs,
    /// `[tx]`: fee caps and timeouts of the transactions sent.
    #[serde(default)]
    pub tx: TxKnobs,
    /// `[cold_reads]`: limits on chain reads for unknown channels.
    #[serde(default)]
    pub cold_reads: ColdReadKnobs,
    /// `[deposits]`: confirmations before a relayed deposit is credited.
    #[serde(default)]
    pub deposits: DepositKnobs,
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
fn default_true() -> bool {
    true
}
fn default_linger_us() -> u64 {
    u64::try_from(DEFAULT_GROUP_LINGER.as_micros()).unwrap_or(u64::MAX)
}

impl ServeConfig {
    /// Parses and checks a `serve` TOML file's text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let cfg: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Values that would make a task spin, stall or never serve: refused at start-up
    /// rather than discovered at run time.
    pub fn validate(&self) -> Result<(), String> {
        let s = &self.settlement;
        let checks: [(bool, &str); 18] = [
            (
                s.batch_size >= 1,
                "settlement.batch_size must be at least 1",
            ),
            (
                s.claim_interval_secs >= 1,
                "settlement.claim_interval_secs must be at least 1",
            ),
            (
                s.settle_interval_secs >= 1,
                "settlement.settle_interval_secs must be at least 1",
            ),
            (s.tick_ms >= 1, "settlement.tick_ms must be at least 1"),
            (
                !self.refunds.enabled
                    || (self.refunds.every_secs >= 1 && self.refunds.idle_after_secs >= 1),
                "refunds.every_secs and refunds.idle_after_secs must be at least 1",
            ),
            (
                self.watcher.poll_ms >= 1,
                "watcher.poll_ms must be at least 1",
            ),
            (
                self.watcher.max_range >= 1,
                "watcher.max_range must be at least 1",
            ),
            (
                self.watcher.history >= 1,
                "watcher.history must be at least 1",
            ),
            (
                self.watcher.max_staleness_secs == 0
                    || self.watcher.max_staleness_secs.saturating_mul(1000)
                        >= self.watcher.poll_ms.saturating_mul(2),
                "watcher.max_staleness_secs must be 0 (off) or at least two polls (poll_ms)",
            ),
            (
                self.watcher.max_staleness_secs < self.withdraw_delay,
                "watcher.max_staleness_secs must be below withdraw_delay",
            ),
            (
                self.tx.bump_percent >= 10,
                "tx.bump_percent must be at least 10 (nodes refuse less)",
            ),
            (
                self.tx.attempt_timeout_secs >= 1,
                "tx.attempt_timeout_secs must be at least 1",
            ),
            (
                self.tx.total_timeout_secs >= self.tx.attempt_timeout_secs,
                "tx.total_timeout_secs must be at least tx.attempt_timeout_secs",
            ),
            (
                self.tx.poll_interval_ms >= 1,
                "tx.poll_interval_ms must be at least 1",
            ),
            (
                self.min_deposit.as_deref().is_none_or(|m| {
                    !m.is_empty()
                        && m.bytes().all(|b| b.is_ascii_digit())
                        && m.parse::<u128>().is_ok()
                }),
                "min_deposit must be a decimal amount in atomic units",
            ),
            (
                self.cold_reads.burst >= 1,
                "cold_reads.burst must be at least 1",
            ),
            (
                self.deposits.confirmations == 0 || self.deposits.timeout_secs >= 1,
                "deposits.timeout_secs must be at least 1 when deposits.confirmations > 0",
            ),
            (
                self.deposits.poll_ms >= 1,
                "deposits.poll_ms must be at least 1",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err((*why).to_owned()),
            None => Ok(()),
        }
    }

    /// The store options (`durability`, `fdatasync`, `group_linger_us`).
    pub fn store_options(&self) -> SledOptions {
        SledOptions {
            durability: self.durability,
            fdatasync: self.fdatasync,
            group_linger: Duration::from_micros(self.group_linger_us),
        }
    }

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
    let domain = crate::typed_data::EscrowDomain::new(cfg.chain_id, cfg.escrow);
    let sender =
        crate::chain::tx::TxSender::new(provider.clone(), relayer, cfg.chain_id, cfg.tx.policy());
    let receiver_authorizer = authorizer.address();
    let escrow = Arc::new(
        crate::chain::escrow::EscrowClient::new(
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
        crate::SledStore::open(&cfg.store, cfg.store_options())
            .map_err(|e| format!("store {}: {e}", cfg.store.display()))?,
    );
    let ledger = crate::Ledger::new(domain);
    let engine = Engine::new(
        cfg.engine_config(receiver_authorizer),
        ledger.clone(),
        Arc::clone(&store),
        Some(escrow.clone()),
    )?;
    engine.set_cold_read_limits(cfg.cold_reads.limits());
    let restored = engine.restore().await.map_err(|e| e.to_string())?;
    if let Some(addr) = cfg.metrics_listen {
        crate::telemetry::install_prometheus(addr).map_err(|e| format!("metrics {addr}: {e}"))?;
    }

    // Vouchers only become money when claimed: the scheduler claims (threshold, interval, at
    // once on a withdrawal), sweeps and refunds idle channels; the watcher keeps the mirror
    // of every channel fresh and wakes the scheduler when a payer starts a withdrawal.
    let journal =
        crate::settlement::ClaimJournal::open(&store).map_err(|e| format!("claim journal: {e}"))?;
    let mut settlement = crate::settlement::Settlement::new(
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
    let mut watcher = crate::settlement::Watcher::new(
        escrow,
        ledger,
        cfg.watcher.config(),
        Some(settlement.waker()),
        head + 1,
    );
    // During an RPC outage the mirror ages; past `max_staleness_secs` vouchers are refused
    // (a withdrawal started meanwhile would be unseen) until a read or a poll succeeds.
    if cfg.watcher.max_staleness_secs > 0 {
        let freshness =
            crate::settlement::Freshness::new(Duration::from_secs(cfg.watcher.max_staleness_secs));
        engine.set_freshness(freshness.clone());
        watcher = watcher.with_freshness(freshness);
    }
    let watcher = watcher.spawn(stop.clone());

    let app = proxy_router(engine, &cfg.routes, &cfg.upstream);
    let local = listener
        .local_addr()
        .map_or_else(|_| cfg.listen.clone(), |a| a.to_string());
    tracing::info!(listen = %local, upstream = %cfg.upstream, restored, "serving");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
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

/// An amount in atomic units from TOML: an integer, or a decimal string for values above
/// `i64::MAX` (TOML integers are 64-bit signed).
fn atomic<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(u128::from(n)),
        Raw::Text(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{s:?} does not fit in 128 bits"))),
        Raw::Text(s) => Err(serde::de::Error::custom(format!(
            "{:?} is not a decimal amount",
            s.chars().take(40).collect::<String>()
        ))),
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `[settlement]`: when claims and sweeps happen ([`SettlementConfig`]).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SettlementKnobs {
    /// Claim a channel once this much is unclaimed (atomic units).
    #[serde(deserialize_with = "atomic")]
    pub claim_threshold: u128,
    /// Claim every unclaimed charge at least this often (seconds).
    pub claim_interval_secs: u64,
    /// Rows per `claimWithSignature`.
    pub batch_size: usize,
    /// Sweep claimed funds to the receiver this often (seconds).
    pub settle_interval_secs: u64,
    /// Threshold checks when nobody wakes the scheduler (milliseconds).
    pub tick_ms: u64,
    /// Wait after a channel fails claim simulation alone (seconds).
    pub retry_backoff_secs: u64,
    /// Blocks a mined claim batch waits before it is read back and closed.
    pub confirmations: u64,
}

impl Default for SettlementKnobs {
    fn default() -> Self {
        let d = SettlementConfig::default();
        Self {
            claim_threshold: d.claim_threshold,
            claim_interval_secs: d.claim_interval.as_secs(),
            batch_size: d.batch_size,
            settle_interval_secs: d.settle_interval.as_secs(),
            tick_ms: u64::try_from(d.tick.as_millis()).unwrap_or(u64::MAX),
            retry_backoff_secs: d.retry_backoff.as_secs(),
            confirmations: d.confirmations,
        }
    }
}

impl SettlementKnobs {
    /// The scheduler's configuration.
    pub fn config(&self) -> SettlementConfig {
        SettlementConfig {
            claim_threshold: self.claim_threshold,
            claim_interval: secs(self.claim_interval_secs),
            batch_size: self.batch_size,
            settle_interval: secs(self.settle_interval_secs),
            tick: Duration::from_millis(self.tick_ms),
            retry_backoff: secs(self.retry_backoff_secs),
            confirmations: self.confirmations,
        }
    }
}

/// `[refunds]`: cooperative refunds of idle channels, run by the scheduler task.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RefundKnobs {
    /// `false` turns idle refunds off (payers then exit by refund request or withdrawal).
    pub enabled: bool,
    /// Refund a channel whose last paid request is at least this old (seconds).
    pub idle_after_secs: u64,
    /// Only refund channels with nothing unclaimed (else the refund claims it too).
    pub only_when_claimed: bool,
    /// Look for idle channels this often (seconds).
    pub every_secs: u64,
}

impl Default for RefundKnobs {
    fn default() -> Self {
        let d = RefundPolicy::default();
        Self {
            enabled: true,
            idle_after_secs: d.idle_after.as_secs(),
            only_when_claimed: d.only_when_claimed,
            every_secs: 60,
        }
    }
}

impl RefundKnobs {
    /// The refund policy.
    pub fn policy(&self) -> RefundPolicy {
        RefundPolicy {
            idle_after: secs(self.idle_after_secs),
            only_when_claimed: self.only_when_claimed,
        }
    }
}

/// `[watcher]`: the chain watcher that mirrors escrow events ([`WatcherConfig`]).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct WatcherKnobs {
    /// Blocks on top before events are applied.
    pub confirmations: u64,
    /// Poll period (milliseconds).
    pub poll_ms: u64,
    /// Most blocks per `eth_getLogs`.
    pub max_range: u64,
    /// Processed-block hashes kept for reorg detection.
    pub history: usize,
    /// Refuse vouchers (`rpc_read_failed`) on a channel whose mirror is older than this:
    /// neither read directly nor covered by a successful poll (seconds; 0: never refuse).
    /// Keep it well below the channels' `withdrawDelay` minus the time a claim needs.
    pub max_staleness_secs: u64,
}

impl Default for WatcherKnobs {
    fn default() -> Self {
        let d = WatcherConfig::default();
        Self {
            confirmations: d.confirmations,
            poll_ms: u64::try_from(d.poll.as_millis()).unwrap_or(u64::MAX),
            max_range: d.max_range,
            history: d.history,
            max_staleness_secs: 300,
        }
    }
}

impl WatcherKnobs {
    /// The watcher's configuration.
    pub fn config(&self) -> WatcherConfig {
        WatcherConfig {
            confirmations: self.confirmations,
            poll: Duration::from_millis(self.poll_ms),
            max_range: self.max_range,
            history: self.history,
        }
    }
}

/// `[tx]`: fees and timeouts of the transactions `serve` sends ([`TxPolicy`]).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TxKnobs {
    /// Never pay more than this `maxFeePerGas` (wei).
    #[serde(deserialize_with = "atomic")]
    pub max_fee_cap_wei: u128,
    /// Never tip more than this `maxPriorityFeePerGas` (wei).
    #[serde(deserialize_with = "atomic")]
    pub priority_fee_cap_wei: u128,
    /// Fee bump of a replacement, percent (nodes require at least 10).
    pub bump_percent: u32,
    /// Gas limit = estimate × (100 + this) / 100.
    pub gas_margin_percent: u64,
    /// Wait this long for a receipt before replacing (seconds).
    pub attempt_timeout_secs: u64,
    /// Give up after this long (seconds).
    pub total_timeout_secs: u64,
    /// Receipt polling interval (milliseconds).
    pub poll_interval_ms: u64,
}

impl Default for TxKnobs {
    fn default() -> Self {
        let d = TxPolicy::default();
        Self {
            max_fee_cap_wei: d.max_fee_cap,
            priority_fee_cap_wei: d.priority_fee_cap,
            bump_percent: d.bump_percent,
            gas_margin_percent: d.gas_margin_percent,
            attempt_timeout_secs: d.attempt_timeout.as_secs(),
            total_timeout_secs: d.total_timeout.as_secs(),
            poll_interval_ms: u64::try_from(d.poll_interval.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl TxKnobs {
    /// The transaction policy.
    pub fn policy(&self) -> TxPolicy {
        TxPolicy {
            max_fee_cap: self.max_fee_cap_wei,
            priority_fee_cap: self.priority_fee_cap_wei,
            bump_percent: self.bump_percent,
            gas_margin_percent: self.gas_margin_percent,
            attempt_timeout: secs(self.attempt_timeout_secs),
            total_timeout: secs(self.total_timeout_secs),
            poll_interval: Duration::from_millis(self.poll_interval_ms),
        }
    }
}

/// `[cold_reads]`: limits on chain reads for unknown channels ([`ColdReadLimits`]).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ColdReadKnobs {
    /// Sustained reads per second.
    pub per_second: u32,
    /// Reads at once.
    pub burst: u32,
    /// An id found empty is refused from memory this long (seconds).
    pub negative_ttl_secs: u64,
    /// Most ids remembered as empty.
    pub negative_capacity: usize,
    /// After a smart wallet refused a voucher, further ERC-1271 calls for that channel wait
    /// this long (milliseconds; 0: off).
    pub erc1271_backoff_ms: u64,
}

impl Default for ColdReadKnobs {
    fn default() -> Self {
        let d = ColdReadLimits::default();
        Self {
            per_second: d.per_second,
            burst: d.burst,
            negative_ttl_secs: d.negative_ttl.as_secs(),
            negative_capacity: d.negative_capacity,
            erc1271_backoff_ms: u64::try_from(d.erc1271_backoff.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl ColdReadKnobs {
    /// The engine's limits.
    pub fn limits(&self) -> ColdReadLimits {
        ColdReadLimits {
            per_second: self.per_second,
            burst: self.burst,
            negative_ttl: secs(self.negative_ttl_secs),
            negative_capacity: self.negative_capacity,
            erc1271_backoff: Duration::from_millis(self.erc1271_backoff_ms),
        }
    }
}

/// `[deposits]`: how deep a deposit relayed for a paying request must be before it is
/// credited ([`DepositConfirmations`]). The request waits for it, at most `timeout_secs`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct DepositKnobs {
    /// Blocks on top of the deposit's block (0: credited as soon as it is mined).
    pub confirmations: u64,
    /// Longest wait for them (seconds); the request is then refused, nothing credited.
    pub timeout_secs: u64,
    /// Head and receipt polling interval (milliseconds).
    pub poll_ms: u64,
}

impl Default for DepositKnobs {
    /// Two blocks: about 4 s on Base or Optimism (2 s blocks), where a reorg of the
    /// sequencer's head is rare and shallow; see `docs/operations.md` for L1 and other L2s.
    fn default() -> Self {
        Self {
            confirmations: 2,
            timeout_secs: 20,
            poll_ms: 250,
        }
    }
}

impl DepositKnobs {
    /// The escrow client's deposit policy.
    pub fn policy(&self) -> DepositConfirmations {
        DepositConfirmations {
            blocks: self.confirmations,
            timeout: secs(self.timeout_secs),
            poll: Duration::from_millis(self.poll_ms),
        }
    }
}
