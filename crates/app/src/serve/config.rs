//! The `serve` TOML file ([`ServeConfig`]): listener, upstream, priced routes, chain, store,
//! and the knob tables it is checked against at start-up.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use alloy_primitives::Address;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::knobs::{
    ColdReadKnobs, DepositKnobs, HttpKnobs, PostgresKnobs, RefundKnobs, SettlementKnobs, TxKnobs,
    WatcherKnobs,
};
use super::limits::{FreeTierKnobs, LimitKnobs, RouteLimitKnobs};
use super::request_target;
pub use super::tokens::{ModelPrice, TokenApi};
use x402_upto::engine::EngineConfig;
use x402_upto::store::{DEFAULT_GROUP_LINGER, Durability, SledOptions};
use x402_upto::wire::Eip155Network;

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
    /// Channel store: a sled directory, or `postgres://…` for the store shared by several
    /// instances (same as a `[postgres]` table with that `url`).
    #[serde(default)]
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
    /// `[postgres]`: the channel store shared by several instances.
    #[serde(default)]
    pub postgres: Option<PostgresKnobs>,
    /// `[admin]`: the admin API and dashboard on their own listener (off without it).
    #[serde(default)]
    pub admin: Option<super::admin::AdminKnobs>,
    /// `[limits]`: rate limits of the priced routes, trusted reverse proxies.
    #[serde(default)]
    pub limits: LimitKnobs,
    /// The file this configuration was read from: `serve` reads it again on SIGHUP.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// One priced path prefix: a fixed `price`, or priced by tokens (`tokens = "openai"` or
/// `"anthropic"` with a `models` table; see [`super::tokens`]).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path prefix, e.g. `/api/` (longest prefix wins).
    pub prefix: String,
    /// Maximum price per request in atomic units (fixed routes).
    #[serde(default)]
    pub price: Option<u64>,
    /// `resource.description`.
    #[serde(default)]
    pub description: Option<String>,
    /// A route priced by tokens: the API whose request and `usage` shapes it reads.
    #[serde(default)]
    pub tokens: Option<TokenApi>,
    /// Token routes: price per million input and output tokens of each model, in atomic
    /// units, by the request's `model`.
    #[serde(default)]
    pub models: BTreeMap<String, ModelPrice>,
    /// Token routes: the output bound of a request without `max_tokens`; without it such a
    /// request is refused (400).
    #[serde(default)]
    pub default_max_tokens: Option<u64>,
    /// Token routes: a cap on the input bound (the model's context window); the bound is
    /// otherwise the request body's length in bytes.
    #[serde(default)]
    pub max_input_tokens: Option<u64>,
    /// Token routes: output tokens one voucher of a stream covers; the stream renews for
    /// each further such slice. Without it a stream's one voucher covers `max_tokens`.
    #[serde(default)]
    pub stream_increment_tokens: Option<u64>,
    /// Token routes: how long a stream whose budget is used up waits for the client's
    /// renewal before it is cut (seconds).
    #[serde(default = "default_renewal_grace")]
    pub renewal_grace_secs: u64,
    /// This route's rate limits instead of `[limits]`'s.
    #[serde(default)]
    pub limits: Option<RouteLimitKnobs>,
    /// Requests per period per payer served without charge (fixed-price routes).
    #[serde(default)]
    pub free_tier: Option<FreeTierKnobs>,
}

fn default_renewal_grace() -> u64 {
    30
}

impl RouteConfig {
    /// A fixed route has a `price` and nothing of a token route; a token route the reverse.
    pub(super) fn check_kind(&self) -> Result<(), String> {
        let p = &self.prefix;
        match (self.price, self.tokens) {
            (Some(_), None) => {
                let token_only = !self.models.is_empty()
                    || self.default_max_tokens.is_some()
                    || self.max_input_tokens.is_some()
                    || self.stream_increment_tokens.is_some();
                if token_only {
                    return Err(format!(
                        "route {p:?}: models, default_max_tokens, max_input_tokens and \
                         stream_increment_tokens belong to a token route (tokens = …)"
                    ));
                }
                Ok(())
            }
            (None, Some(_)) => super::tokens::check_route(self),
            (Some(_), Some(_)) => Err(format!(
                "route {p:?}: a token route is priced by its models, not by price"
            )),
            (None, None) => Err(format!(
                "route {p:?}: needs a price, or tokens = \"openai\" | \"anthropic\" with models"
            )),
        }
    }
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
                self.min_deposit
                    .as_deref()
                    .is_none_or(|m| x402_upto::wire::parse_u128(m).is_some()),
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
        match (self.postgres(), self.store.as_os_str().is_empty()) {
            (None, true) => {
                return Err("store: a directory or postgres://…, or a [postgres] table".into());
            }
            (Some(_), false) if self.postgres.is_some() => {
                return Err("store and [postgres] both name a store; keep one".into());
            }
            (Some(pg), _) => {
                if pg.url.is_empty() {
                    return Err("postgres.url is required".into());
                }
                if pg.lease_secs < 3 || pg.refresh_ms < 10 || pg.hold_secs < 1 {
                    return Err(
                        "postgres: lease_secs ≥ 3, refresh_ms ≥ 10 and hold_secs ≥ 1".into(),
                    );
                }
            }
            (None, false) => {}
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
            r.check_kind()?;
            super::limits::check_route(&r.prefix, r.limits, r.free_tier, r.price.is_some())?;
        }
        self.limits.check()?;
        Ok(())
    }

    /// The shared store's settings, if the channel store is PostgreSQL (`[postgres]`, or
    /// `store = "postgres://…"`).
    pub fn postgres(&self) -> Option<PostgresKnobs> {
        if let Some(pg) = &self.postgres {
            return Some(pg.clone());
        }
        let store = self.store.to_str()?;
        (store.starts_with("postgres://") || store.starts_with("postgresql://")).then(|| {
            PostgresKnobs {
                url: store.to_owned(),
                ..PostgresKnobs::default()
            }
        })
    }

    /// The store options (`durability`, `fdatasync`, `group_linger_us`).
    pub fn store_options(&self) -> SledOptions {
        SledOptions {
            durability: self.durability,
            fdatasync: self.fdatasync,
            group_linger: Duration::from_micros(self.group_linger_us),
            ..SledOptions::default()
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

/// An amount in atomic units from TOML: an integer, or a decimal string for values above
/// `i64::MAX` (TOML integers are 64-bit signed).
pub(super) fn atomic<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(u128::from(n)),
        Raw::Text(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            x402_upto::wire::parse_u128(&s)
                .ok_or_else(|| serde::de::Error::custom(format!("{s:?} does not fit in 128 bits")))
        }
        Raw::Text(s) => Err(serde::de::Error::custom(format!(
            "{:?} is not a decimal amount",
            s.chars().take(40).collect::<String>()
        ))),
    }
}

pub(super) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
