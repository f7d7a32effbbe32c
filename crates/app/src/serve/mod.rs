//! `x402-upto serve`: a paying reverse proxy in front of any HTTP upstream.
//!
//! Priced path prefixes go through [`PaymentLayer`]; everything else is forwarded for free.
//! The upstream may report the actual cost of a request in the `X-Upto-Charge` response
//! header (decimal atomic units, ≤ the route's price); without it the full price is charged.

pub mod listener;
pub mod request_target;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::Address;
use axum::Router;
use axum::body::Body;
use std::convert::Infallible;

use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderName, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

use listener::{ConnectionLimits, serve_connections};
use request_target::RequestTarget;
use x402_upto::chain::escrow::DepositConfirmations;
use x402_upto::chain::tx::TxPolicy;
use x402_upto::engine::{ColdReadLimits, Engine, EngineConfig, RefundLimits};
use x402_upto::server::{ActualCharge, PaymentLayer};
use x402_upto::settlement::{RefundPolicy, SettlementConfig, WatcherConfig};
use x402_upto::store::{DEFAULT_GROUP_LINGER, Durability, SledOptions, Store};
use x402_upto::telemetry;
use x402_upto::wire::Eip155Network;

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
    /// `[refunds]`: idle-channel refunds, and limits on refunds clients ask for.
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
    /// Public origin of this server (`https://api.example.com`): the base of every offer's
    /// `resource.url`. Without it the request's `Host` is used, bounded and validated.
    #[serde(default)]
    pub public_url: Option<String>,
    /// `[http]`: timeouts and limits of the client connections and the upstream.
    #[serde(default)]
    pub http: HttpKnobs,
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

/// `public_url`: an absolute `http(s)` origin, optionally with a base path, nothing else.
fn check_public_url(url: &str) -> Result<(), String> {
    let parsed: reqwest::Url = url
        .parse()
        .map_err(|e| format!("public_url {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https")
        || parsed.host().is_none()
        || parsed.query().is_some()
        || parsed.fragment().is_some()
        || !parsed.username().is_empty()
        || url.len() > 1024
    {
        return Err(format!(
            "public_url {url:?} must be an http(s) origin with an optional path, at most 1024 bytes"
        ));
    }
    Ok(())
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
        let h = &self.http;
        let checks: [(bool, &str); 25] = [
            (
                h.header_read_timeout_secs >= 1,
                "http.header_read_timeout_secs must be at least 1",
            ),
            (
                h.idle_timeout_secs >= 1,
                "http.idle_timeout_secs must be at least 1",
            ),
            (
                h.request_body_timeout_secs >= 1,
                "http.request_body_timeout_secs must be at least 1",
            ),
            (
                h.upstream_timeout_secs >= 1,
                "http.upstream_timeout_secs must be at least 1",
            ),
            (
                h.max_connections >= 1,
                "http.max_connections must be at least 1",
            ),
            (
                h.max_target_bytes >= 64,
                "http.max_target_bytes must be at least 64",
            ),
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
                self.refunds.max_per_channel_per_hour >= 1,
                "refunds.max_per_channel_per_hour must be at least 1",
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
        if let Some((_, why)) = checks.iter().find(|(ok, _)| !ok) {
            return Err((*why).to_owned());
        }
        if let Some(url) = &self.public_url {
            check_public_url(url)?;
        }
        for r in &self.routes {
            if request_target::route_prefix(&r.prefix).is_none() {
                return Err(format!(
                    "route prefix {:?} must be a normalised path (no '..', '//', escapes of \
                     unreserved characters, ';' or '\\')",
                    r.prefix
                ));
            }
        }
        Ok(())
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

/// The upstream origin: scheme and authority, and a base path every forwarded path goes under.
#[derive(Clone, Debug)]
struct Upstream {
    http: reqwest::Client,
    /// `scheme://authority` without a trailing slash.
    origin: String,
    /// The origin's own path (`/base`), or empty.
    base_path: String,
    /// Longest time the upstream may take to answer, headers and body.
    timeout: Duration,
    /// Longest time to read a request body from the client.
    body_timeout: Duration,
}

impl Upstream {
    fn new(upstream: &str, http: &HttpKnobs) -> Result<Self, String> {
        let url: reqwest::Url = upstream
            .parse()
            .map_err(|e| format!("upstream {upstream:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
            return Err(format!(
                "upstream {upstream:?} must be an http(s) origin with an optional base path"
            ));
        }
        let origin = url.origin().ascii_serialization();
        let base_path = url.path().trim_end_matches('/').to_owned();
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(http.upstream_timeout_secs))
                .build()
                .map_err(|e| format!("upstream client: {e}"))?,
            origin,
            base_path,
            timeout: Duration::from_secs(http.upstream_timeout_secs),
            body_timeout: Duration::from_secs(http.request_body_timeout_secs),
        })
    }

    /// The upstream URL of a normalised target, checked to serialise to exactly the bytes
    /// that were priced (no re-resolution by the URL parser); `None` if it would not.
    fn url(&self, target: &RequestTarget) -> Option<reqwest::Url> {
        let path = format!("{}{}", self.base_path, target.path());
        let full = match target.query() {
            Some(q) => format!("{}{path}?{q}", self.origin),
            None => format!("{}{path}", self.origin),
        };
        let url: reqwest::Url = full.parse().ok()?;
        (url.path() == path && url.query() == target.query()).then_some(url)
    }
}

type HttpService = BoxCloneSyncService<Request, Response, Infallible>;

/// What the proxy routes on: each priced prefix's service, longest prefix first, and the
/// free forwarder.
#[derive(Clone)]
struct Proxy {
    routes: Arc<Vec<(String, HttpService)>>,
    free: HttpService,
    upstream: Arc<Upstream>,
    max_target_bytes: usize,
    /// `resource.url` is built from this origin; without it, from a validated `Host`.
    public_url: Option<String>,
}

/// The proxy router: the request target is normalised once ([`request_target`]); the
/// normalised path picks the price (the longest matching prefix, by whole segments, the
/// prefix itself included) and is what the upstream receives, byte for byte. What cannot
/// be normalised unambiguously is refused with 400 before any pricing or forwarding.
pub fn proxy_router<S: Store + 'static>(
    engine: Engine<S>,
    cfg: &ServeConfig,
) -> Result<Router, String> {
    let upstream = Arc::new(Upstream::new(&cfg.upstream, &cfg.http)?);
    let forwarder = {
        let up = Arc::clone(&upstream);
        tower::service_fn(move |req: Request| {
            let up = Arc::clone(&up);
            async move { Ok::<_, Infallible>(forward(&up, req).await) }
        })
    };
    let mut routes = Vec::with_capacity(cfg.routes.len());
    for r in &cfg.routes {
        let prefix = request_target::route_prefix(&r.prefix)
            .ok_or_else(|| format!("route prefix {:?} is not a normalised path", r.prefix))?;
        let mut layer = PaymentLayer::fixed(engine.clone(), u128::from(r.price));
        if let Some(d) = &r.description {
            layer = layer.with_description(d.clone());
        }
        if let Some(base) = &cfg.public_url {
            layer = layer.with_base_url(base.clone());
        }
        routes.push((
            prefix,
            BoxCloneSyncService::new(layer.layer(forwarder.clone())),
        ));
    }
    // Longest prefix first, so the first match is the most specific price.
    routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
    let proxy = Proxy {
        routes: Arc::new(routes),
        free: BoxCloneSyncService::new(forwarder),
        upstream,
        max_target_bytes: cfg.http.max_target_bytes,
        public_url: cfg.public_url.clone(),
    };
    Ok(Router::new().fallback(dispatch).with_state(proxy))
}

/// Normalises the target, checks `Host`, then hands the request to its route's service.
async fn dispatch(State(proxy): State<Proxy>, mut req: Request) -> Response {
    let raw = req.uri().path_and_query().map_or("", |p| p.as_str());
    let target = match request_target::normalize(raw, proxy.max_target_bytes) {
        Ok(t) => t,
        Err(e) => {
            metrics::counter!(telemetry::TARGETS_REFUSED, "reason" => e.code()).increment(1);
            return bad_request(e.code(), &e.to_string());
        }
    };
    if proxy.public_url.is_none() && !valid_host(&req) {
        metrics::counter!(telemetry::TARGETS_REFUSED, "reason" => "bad_host").increment(1);
        return bad_request(
            "bad_host",
            "the Host header is missing or not a host[:port]",
        );
    }
    if proxy.upstream.url(&target).is_none() {
        metrics::counter!(telemetry::TARGETS_REFUSED, "reason" => "target_not_forwardable")
            .increment(1);
        return bad_request(
            "target_not_forwardable",
            "the request target cannot be forwarded unchanged",
        );
    }
    let Ok(uri) = target.to_path_and_query().parse::<http::Uri>() else {
        return bad_request("target_not_forwardable", "the request target is not a URI");
    };
    *req.uri_mut() = uri;
    let service = proxy
        .routes
        .iter()
        .find(|(prefix, _)| request_target::matches_prefix(target.path(), prefix))
        .map_or(&proxy.free, |(_, s)| s)
        .clone();
    let Ok(response) = service.oneshot(req).await;
    response
}

/// Longest `Host` accepted when `resource.url` is built from it (a DNS name is at most 253
/// bytes; an IPv6 literal with a port fits too).
const MAX_HOST_BYTES: usize = 261;

/// A `Host` that may go into `resource.url`: present, bounded, `host[:port]` characters only.
fn valid_host(req: &Request) -> bool {
    let Some(host) = req.headers().get(http::header::HOST) else {
        return false;
    };
    let host = host.as_bytes();
    !host.is_empty()
        && host.len() <= MAX_HOST_BYTES
        && host
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

fn bad_request(code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
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

/// Sends a request (its target already normalised by [`dispatch`]) to the upstream.
async fn forward(up: &Upstream, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let target = match parts.uri.path_and_query() {
        Some(pq) => request_target::normalize(pq.as_str(), usize::MAX),
        None => Err(request_target::TargetError::NotOriginForm),
    };
    let Some(url) = target.ok().and_then(|t| up.url(&t)) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let bytes =
        match tokio::time::timeout(up.body_timeout, axum::body::to_bytes(body, MAX_PROXY_BODY))
            .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => return status(StatusCode::PAYLOAD_TOO_LARGE),
            Err(_) => return status(StatusCode::REQUEST_TIMEOUT),
        };
    let mut out = up.http.request(parts.method.clone(), url).body(bytes);
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
    // A charge the upstream reports but we cannot read is an upstream fault: charging the
    // full price would bill the payer for our misunderstanding, charging nothing would give
    // the work away; neither is served.
    let charge = match headers.get(CHARGE_HEADER).map(parse_charge) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(raw)) => {
            tracing::warn!(value = %raw, "upstream sent a malformed {CHARGE_HEADER}; answering 502, nothing charged");
            metrics::counter!(telemetry::UPSTREAM_ERRORS, "kind" => "malformed_charge")
                .increment(1);
            return status(StatusCode::BAD_GATEWAY);
        }
    };
    let body = match tokio::time::timeout(up.timeout, res.bytes()).await {
        Ok(Ok(b)) => b,
        _ => return status(StatusCode::BAD_GATEWAY),
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

/// `X-Upto-Charge`: a plain decimal in atomic units (no sign, no fraction, no exponent,
/// fits 128 bits); otherwise the raw value, bounded, for the log.
fn parse_charge(value: &http::HeaderValue) -> Result<u128, String> {
    let raw = value.as_bytes();
    let parsed = (!raw.is_empty() && raw.len() <= 39 && raw.iter().all(u8::is_ascii_digit))
        .then(|| std::str::from_utf8(raw).ok()?.parse::<u128>().ok())
        .flatten();
    parsed.ok_or_else(|| String::from_utf8_lossy(&raw[..raw.len().min(64)]).into_owned())
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
    /// Smallest partial refund a client may ask for (atomic units; 0: none). Asking for the
    /// whole refundable remainder is always allowed. Each refund's gas is the relayer's.
    pub min_partial_amount: u64,
    /// Most refunds a client may ask for per channel per hour (at least 1).
    pub max_per_channel_per_hour: u32,
}

impl Default for RefundKnobs {
    fn default() -> Self {
        let d = RefundPolicy::default();
        let limits = RefundLimits::default();
        Self {
            enabled: true,
            idle_after_secs: d.idle_after.as_secs(),
            only_when_claimed: d.only_when_claimed,
            every_secs: 60,
            min_partial_amount: u64::try_from(limits.min_partial).unwrap_or(u64::MAX),
            max_per_channel_per_hour: limits.max_per_window,
        }
    }
}

impl RefundKnobs {
    /// The engine's limits on refunds clients ask for.
    pub fn limits(&self) -> RefundLimits {
        RefundLimits {
            min_partial: u128::from(self.min_partial_amount),
            max_per_window: self.max_per_channel_per_hour,
            window: Duration::from_secs(3_600),
        }
    }

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

/// `[http]`: how long and how many client connections may hold the server, and how long the
/// upstream may take. Defaults suit an API behind a load balancer.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpKnobs {
    /// From the moment a connection waits for a request (just opened, or after the previous
    /// response) until that request's whole header has arrived (seconds). A client that
    /// trickles its header (slowloris) or keeps an unused connection is closed after this.
    pub header_read_timeout_secs: u64,
    /// A connection on which no byte moved for this long, with no request being handled, is
    /// closed (seconds): a client that stops reading a response, or stops mid-body.
    pub idle_timeout_secs: u64,
    /// Longest time to receive a request body (seconds); 408 after it.
    pub request_body_timeout_secs: u64,
    /// Longest time the upstream may take to answer (seconds); 502 after it, nothing charged.
    pub upstream_timeout_secs: u64,
    /// Most client connections open at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Longest request target (path and query, bytes); 400 above it.
    pub max_target_bytes: usize,
}

impl Default for HttpKnobs {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            request_body_timeout_secs: 30,
            upstream_timeout_secs: 300,
            max_connections: 1024,
            max_target_bytes: request_target::DEFAULT_MAX_TARGET_BYTES,
        }
    }
}

impl HttpKnobs {
    /// The listener's connection limits.
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: secs(self.header_read_timeout_secs),
            idle_timeout: secs(self.idle_timeout_secs),
            max_connections: self.max_connections,
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
