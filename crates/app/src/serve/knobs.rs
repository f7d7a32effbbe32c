//! The `serve` TOML tables (`[settlement]`, `[refunds]`, `[watcher]`, `[tx]`, `[cold_reads]`,
//! `[http]`, `[deposits]`, `[postgres]`): each a knob set with its defaults and the library
//! config it makes.

use std::time::Duration;

use serde::Deserialize;

use super::config::{atomic, secs};
use super::listener::ConnectionLimits;
use super::request_target;
use x402_upto::chain::escrow::DepositConfirmations;
use x402_upto::chain::tx::TxPolicy;
use x402_upto::engine::{ColdReadLimits, RefundLimits};
use x402_upto::settlement::{RefundPolicy, SettlementConfig, WatcherConfig};

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

/// `[postgres]`: the shared channel store of several instances
/// ([`x402_upto::store::PostgresStore`]; `docs/operations.md`, "Several instances").
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresKnobs {
    /// Connection string (`postgres://user@host/db` or libpq `key=value` form).
    pub url: String,
    /// Connections for reads and holds (each pipelines concurrent queries).
    pub pool_size: usize,
    /// How long a request's hold on a channel lasts at most (a dead instance's holds expire
    /// after this), seconds.
    pub hold_secs: u64,
    /// The settler lease's length, seconds: a dead settler is replaced within about this.
    pub lease_secs: u64,
    /// How often every instance reads what the others wrote (cache refresh), milliseconds.
    pub refresh_ms: u64,
    /// This instance's name in holds and the lease (default: `pid-<pid>-<random>`).
    pub instance: Option<String>,
}

impl Default for PostgresKnobs {
    fn default() -> Self {
        Self {
            url: String::new(),
            pool_size: 4,
            hold_secs: 30,
            lease_secs: 15,
            refresh_ms: 1000,
            instance: None,
        }
    }
}

impl PostgresKnobs {
    /// The store's options.
    pub fn options(&self) -> x402_upto::store::PgOptions {
        let mut o = x402_upto::store::PgOptions::new(self.url.clone());
        o.pool_size = self.pool_size.max(1);
        o.hold = Duration::from_secs(self.hold_secs.max(1));
        if let Some(name) = &self.instance {
            o.instance = name.clone();
        }
        o
    }
}
