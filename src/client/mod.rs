//! A paying HTTP client for `batch-settlement` servers (ours or the stock x402 SDK's).
//!
//! ```no_run
//! # async fn demo() -> Result<(), x402_upto::client::ClientError> {
//! use x402_upto::client::{ClientConfig, PayingClient};
//! let key: alloy::signers::local::PrivateKeySigner = "0x…".parse().unwrap();
//! let client = PayingClient::new(ClientConfig::new(key).with_state_dir("./channels"));
//! let answer = client.get("http://127.0.0.1:8080/paid").await?;   // pays on 402
//! println!("{} cost {:?}", answer.status, answer.charged());
//! client.refund("http://127.0.0.1:8080/paid", None).await?;        // unspent deposit back
//! # Ok(()) }
//! ```
//!
//! On a 402 the client picks the `batch-settlement` offer, opens a channel with a gasless
//! ERC-3009 deposit (`multiplier × price`, at least the offer's `minDeposit`, capped by the
//! spend limit), and signs one cumulative voucher per request. Every `PAYMENT-RESPONSE` is
//! checked (charge ≤ max, cumulative = previous + charge, our channel; `checks.rs`); a server
//! that breaks a rule is never paid again by this client. After its first 402 on a resource the client
//! pays later requests there at once (one round trip), with the offer it remembered; a
//! changed offer comes back in the server's 402 and is paid from there. A corrective 402 is adopted only when its
//! `voucherState` carries our own signature over a ceiling covering the claimed charge.
//!
//! Metered streams: [`PayingClient::stream`] reads a Server-Sent-Events response and renews
//! its voucher mid-stream when the server asks, within a caller's `max_total`, checking each
//! checkpoint (`src/client/stream.rs`, `docs/protocol.md` §10).

mod checks;
mod onchain;
mod payment;
mod request;
mod state;
mod stream;

pub use state::ChannelState;
pub use stream::{PaidStream, StreamEvent};

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::{Address, B256, address};
use bytes::Bytes as BodyBytes;
use parking_lot::Mutex;

use crate::typed_data::ChannelId;
use crate::wire::{PaymentRequired, SettleResponse};
use checks::{Response, Terms};
pub(crate) use payment::Target;

/// Escrow address the stock SDK uses on every chain.
pub const CANONICAL_ESCROW: Address = address!("0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003");
/// ERC-3009 deposit collector address the stock SDK uses on every chain.
pub const CANONICAL_COLLECTOR: Address = address!("0x4020806089470a89826cB9fB1f4059150b550004");

/// How the client pays.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The payer: owns the deposited tokens and signs ERC-3009 deposits.
    pub payer: PrivateKeySigner,
    /// Signs vouchers (`payerAuthorizer`); the payer itself when `None`.
    pub voucher_signer: Option<PrivateKeySigner>,
    /// Escrow contract (channel ids and voucher signatures depend on it).
    pub escrow: Address,
    /// ERC-3009 deposit collector.
    pub collector: Address,
    /// Deposit = `multiplier × price` (at least the offer's `minDeposit`).
    pub deposit_multiplier: u128,
    /// Most this client deposits in total per channel.
    pub spend_limit: u128,
    /// Channel salt (a new salt is a new channel).
    pub salt: B256,
    /// One JSON file per channel here; memory only when `None`.
    pub state_dir: Option<PathBuf>,
    /// JSON-RPC endpoint of the offer's chain, for the cold start: a channel with no local
    /// state is read from the escrow (`balance`, `totalClaimed`) before the first voucher,
    /// and again when a server refuses our cumulative as below what was claimed. Without
    /// it, a client that lost its state relies on the server's corrective 402.
    pub rpc: Option<String>,
}

impl ClientConfig {
    /// Defaults: canonical escrow/collector, deposit 10 × price, spend limit 10 USDC (6 dec.).
    pub fn new(payer: PrivateKeySigner) -> Self {
        Self {
            payer,
            voucher_signer: None,
            escrow: CANONICAL_ESCROW,
            collector: CANONICAL_COLLECTOR,
            deposit_multiplier: 10,
            spend_limit: 10_000_000,
            salt: B256::ZERO,
            state_dir: None,
            rpc: None,
        }
    }
    /// Reads channels from the chain through `rpc` when there is no local state (cold start).
    pub fn with_rpc(mut self, rpc: impl Into<String>) -> Self {
        self.rpc = Some(rpc.into());
        self
    }
    /// Keeps channel state in `dir`.
    pub fn with_state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }
    /// Uses another escrow deployment.
    pub fn with_contracts(mut self, escrow: Address, collector: Address) -> Self {
        self.escrow = escrow;
        self.collector = collector;
        self
    }
    /// Delegates voucher signing to `key` (it becomes the channel's `payerAuthorizer`).
    pub fn with_voucher_signer(mut self, key: PrivateKeySigner) -> Self {
        self.voucher_signer = Some(key);
        self
    }
    fn voucher_key(&self) -> &PrivateKeySigner {
        self.voucher_signer.as_ref().unwrap_or(&self.payer)
    }
}

/// Why a paid request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Transport.
    #[error("http")]
    Http(#[from] reqwest::Error),
    /// The 402 offers nothing this client can pay.
    #[error("no batch-settlement offer this client can pay: {0}")]
    NoOffer(String),
    /// The server refused the payment.
    #[error("payment refused with {status}: {reason}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's reason code.
        reason: String,
        /// Its message, if any.
        message: String,
    },
    /// The server broke a protocol rule; this client no longer pays it.
    #[error("server {pay_to} broke the protocol: {what}")]
    ServerCheated {
        /// The offending receiver.
        pay_to: String,
        /// What it did.
        what: String,
    },
    /// A deposit would exceed the spend limit.
    #[error("deposit of {needed} would exceed the spend limit {limit} (deposited {deposited})")]
    SpendLimit {
        /// Deposit needed.
        needed: u128,
        /// Already deposited.
        deposited: u128,
        /// Limit.
        limit: u128,
    },
    /// No channel to refund.
    #[error("no open channel for this resource")]
    NoChannel,
    /// Local signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
    /// Channel state file.
    #[error("channel state i/o")]
    Io(#[from] std::io::Error),
    /// A stream's `max_total` is below the route's price (checked before paying).
    #[error("the route's price {price} is above the stream's max_total {max_total}")]
    StreamLimit {
        /// The route's price (one budget increment).
        price: u128,
        /// The caller's limit for the stream.
        max_total: u128,
    },
    /// Reading the channel from the chain (cold start) failed.
    #[error("cold start: reading the channel from the chain failed: {0}")]
    ColdStart(String),
    /// A payer transaction (timed withdrawal) failed.
    #[error("{what} transaction failed")]
    Chain {
        /// Which transaction.
        what: &'static str,
        /// Cause.
        #[source]
        source: Box<crate::chain::tx::TxError>,
    },
}

/// A response to a (possibly paid) request.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: reqwest::StatusCode,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body.
    pub body: BodyBytes,
    /// The verified `PAYMENT-RESPONSE`, when the request was paid.
    pub settle: Option<SettleResponse>,
}

impl Answer {
    /// What this request cost, when paid.
    pub fn charged(&self) -> Option<u128> {
        self.settle
            .as_ref()
            .and_then(|s| s.extra.as_ref())
            .and_then(|e| e.charged_amount)
    }
}

/// The paying client. Share one per payer key; channels are serialised per client.
#[derive(Debug)]
pub struct PayingClient {
    http: reqwest::Client,
    config: ClientConfig,
    dir: state::StateDir,
    channels: Mutex<HashMap<ChannelId, ChannelState>>,
    /// Receivers that broke the protocol with this client (and what they did); persisted in
    /// the state dir, so a restarted client keeps refusing them.
    cheaters: Mutex<BTreeMap<Address, String>>,
    /// The offer each resource (URL without query) made last time it was paid: the next
    /// request there pays at once instead of asking first.
    offers: Mutex<HashMap<String, Target>>,
    /// One paid call at a time per channel (HTTP requests and MCP tool calls): a receipt is
    /// checked against the state its voucher was signed on, so calls on one channel must not
    /// interleave (the server serves one at a time per channel anyway).
    turns: Mutex<HashMap<ChannelId, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

impl PayingClient {
    /// A client with its own connection pool.
    pub fn new(config: ClientConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Self::with_http(http, config)
    }

    /// A client over an existing `reqwest::Client`.
    pub fn with_http(http: reqwest::Client, config: ClientConfig) -> Self {
        let dir = state::dir(config.state_dir.as_deref());
        let cheaters = dir.load_cheaters().unwrap_or_else(|e| {
            // Not fatal (a server cannot write our disk), but loudly: the list is then empty.
            tracing::error!(error = %e, "cannot read the list of cheating servers; starting empty");
            BTreeMap::new()
        });
        Self {
            http,
            config,
            dir,
            channels: Mutex::new(HashMap::new()),
            cheaters: Mutex::new(cheaters),
            offers: Mutex::new(HashMap::new()),
            turns: Mutex::new(HashMap::new()),
        }
    }

    /// Every channel this client knows (memory and state dir).
    pub fn channels(&self) -> Vec<ChannelState> {
        let mut all: HashMap<ChannelId, ChannelState> = self
            .dir
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.channel_id, s))
            .collect();
        for (id, s) in self.channels.lock().iter() {
            all.insert(*id, s.clone());
        }
        all.into_values().collect()
    }

    /// Receivers this client refuses to pay (they broke the protocol with it), with what each
    /// did. Loaded from the state dir at start.
    pub fn cheaters(&self) -> Vec<(Address, String)> {
        self.cheaters
            .lock()
            .iter()
            .map(|(a, w)| (*a, w.clone()))
            .collect()
    }

    /// Refuses to pay a receiver that broke the protocol with this client before.
    pub(crate) fn refuse_cheater(&self, pay_to: Address) -> Result<(), ClientError> {
        if self.cheaters.lock().contains_key(&pay_to) {
            return Err(ClientError::ServerCheated {
                pay_to: pay_to.to_string(),
                what: "broke the protocol earlier; not paying it again".into(),
            });
        }
        Ok(())
    }

    /// Adopts a corrective 402's state only if it proves itself with our own signature.
    pub(crate) fn resync(&self, t: &Target, required: &PaymentRequired) -> Result<(), ClientError> {
        self.apply_checked(t, Response::Corrective(required))
    }

    /// Checks a paid request's `PAYMENT-RESPONSE` and records it in the channel state.
    pub(crate) fn check_settle(
        &self,
        t: &Target,
        settle: SettleResponse,
        deposit: Option<u128>,
    ) -> Result<SettleResponse, ClientError> {
        let paid = Response::Paid {
            settle: &settle,
            deposit,
        };
        self.apply_checked(t, paid)?;
        Ok(settle)
    }

    /// Takes in the receipt of a call that failed after paying with a deposit (charged 0, the
    /// deposit on chain all the same), checked like any receipt.
    pub(crate) fn record_failed(
        &self,
        t: &Target,
        settle: &SettleResponse,
        deposit: Option<u128>,
    ) -> Result<(), ClientError> {
        self.apply_checked(t, Response::Failed { settle, deposit })
    }

    /// Waits for the turn to pay on channel `id`: held from signing a voucher until its
    /// receipt is recorded.
    pub(crate) async fn channel_turn(&self, id: ChannelId) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = std::sync::Arc::clone(self.turns.lock().entry(id).or_default());
        turn.lock_owned().await
    }

    /// Whether the client can read channels from the chain (cold start, re-read).
    pub(crate) fn reads_chain(&self) -> bool {
        self.config.rpc.is_some()
    }

    /// Runs [`checks::check`] on `t`'s channel: stores the next state, or marks the server
    /// as cheating.
    fn apply_checked(&self, t: &Target, response: Response<'_>) -> Result<(), ClientError> {
        let state = self.state(t)?.unwrap_or_else(|| self.fresh(t));
        let next = self.checked(t, &state, response)?;
        self.store(next)
    }

    /// [`checks::check`] of `response` against `state` under `t`'s terms; a cheat marks the
    /// server.
    fn checked(
        &self,
        t: &Target,
        state: &ChannelState,
        response: Response<'_>,
    ) -> Result<ChannelState, ClientError> {
        let terms = Terms {
            network: &t.offer.network,
            channel: t.id,
            price: t.price,
            domain: &t.domain,
            voucher_signer: self.config.voucher_key().address(),
        };
        checks::check(state, &terms, response).map_err(|c| self.cheated(t, c.0))
    }

    /// Marks `t`'s receiver as cheating (persisted, its remembered offers dropped) and
    /// returns the error that reports `what` it did.
    pub(crate) fn cheated(&self, t: &Target, what: &str) -> ClientError {
        tracing::warn!(pay_to = %t.pay_to, "{what}");
        // Saved under the lock (rare, small): concurrent saves cannot land out of order.
        let mut cheaters = self.cheaters.lock();
        cheaters.entry(t.pay_to).or_insert_with(|| what.to_owned());
        if let Err(e) = self.dir.save_cheaters(&cheaters) {
            // Still refused for this process's lifetime; only the next start would forget.
            tracing::error!(pay_to = %t.pay_to, error = %e, "cannot persist the cheating server");
        }
        drop(cheaters);
        self.offers.lock().retain(|_, o| o.pay_to != t.pay_to);
        ClientError::ServerCheated {
            pay_to: t.pay_to.to_string(),
            what: what.to_owned(),
        }
    }
}
