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
//! checked (charge ≤ max, cumulative = previous + charge, our channel); a server that breaks
//! a rule is never paid again by this client. After its first 402 on a resource the client
//! pays later requests there at once (one round trip), with the offer it remembered; a
//! changed offer comes back in the server's 402 and is paid from there. A corrective 402 is adopted only when its
//! `voucherState` carries our own signature over a ceiling covering the claimed charge.
//!
//! Metered streams: [`PayingClient::stream`] reads a Server-Sent-Events response and renews
//! its voucher mid-stream when the server asks, within a caller's `max_total`, checking each
//! checkpoint (`src/client/stream.rs`, `docs/protocol.md` §10).

mod checks;
mod state;
mod stream;

pub use stream::{PaidStream, StreamEvent};

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy::primitives::aliases::U40;
use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::{Address, B256, Bytes, U256, address};
use bytes::Bytes as BodyBytes;
use parking_lot::Mutex;
use serde_json::{Value, json};

pub use state::ChannelState;

use crate::reason::Reason;
use crate::typed_data::{
    ChannelConfig, ChannelId, EscrowDomain, ReceiveWithAuthorization, erc3009_deposit_nonce,
    sign_receive_with_authorization, sign_voucher, token_domain,
};
use crate::wire::{
    BATCH_SETTLEMENT, BatchSettlementExtra, ChannelConfigWire, MAX_PAYMENT_HEADER_BYTES,
    PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SIGNATURE, PaymentRequired, PaymentRequirements,
    SettleResponse, decode_header, encode_header,
};
use checks::{Response, Terms};

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
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What [`PayingClient::send_paid`] got back.
enum Sent {
    /// No 402: the resource is free (or refused without an offer).
    Free(reqwest::Response),
    /// The answer to our paid request (any status but 402), body unread.
    Paid {
        res: reqwest::Response,
        target: Box<Target>,
        deposit: Option<u128>,
    },
}

/// One chosen offer and the channel it maps to.
#[derive(Clone, Debug)]
struct Target {
    offer: PaymentRequirements,
    extra: BatchSettlementExtra,
    price: u128,
    config: ChannelConfig,
    id: ChannelId,
    domain: EscrowDomain,
    pay_to: Address,
    resource: Value,
}

const MAX_ATTEMPTS: usize = 4;

/// The resource part of a URL (no query, no fragment): what one remembered offer covers.
fn offer_key(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
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

    /// GETs `url`, paying on a 402.
    pub async fn get(&self, url: &str) -> Result<Answer, ClientError> {
        let (res, target, deposit) = match self.send_paid(url, None, None).await? {
            Sent::Free(res) => return answer(res, None).await,
            Sent::Paid {
                res,
                target,
                deposit,
            } => (res, target, deposit),
        };
        if !res.status().is_success() {
            // Nothing was charged (the server releases the channel on a failure). A deposit
            // made for this request is on chain all the same; the server's receipt (charged
            // 0) tells us, and without taking it in we would deposit again next time.
            if deposit.is_some()
                && let Ok(settle) = read_response(&res)
            {
                let settle = &settle;
                self.apply_checked(&target, Response::Failed { settle, deposit })?;
            }
            return answer(res, None).await;
        }
        if res.headers().get(PAYMENT_RESPONSE).is_none() && is_sse(&res) {
            // A metered stream: the payment result is its final event.
            let mut streamed = answer(res, None).await?;
            let settle = sse_payment(&streamed.body)
                .ok_or_else(|| self.cheated(&target, "stream ended without payment-response"))?;
            streamed.settle = Some(self.check_settle(&target, settle, deposit)?);
            return Ok(streamed);
        }
        let settle = read_response(&res)
            .map_err(|_| self.cheated(&target, "paid response without a valid PAYMENT-RESPONSE"))?;
        let settle = self.check_settle(&target, settle, deposit)?;
        answer(res, Some(settle)).await
    }

    /// GETs `url`; on a 402 pays with the next voucher (retrying `channel_busy` and adopting
    /// a proven corrective 402) and returns the paid response with its body unread.
    /// `cover`: the stream budget the channel balance should cover beyond the charged
    /// amount (a deposit tops it up); `timeout` overrides the client's request timeout.
    async fn send_paid(
        &self,
        url: &str,
        cover: Option<u128>,
        timeout: Option<Duration>,
    ) -> Result<Sent, ClientError> {
        // A resource paid before is paid at once with the offer it made then: one round trip
        // instead of two. If the offer changed, the server's 402 carries the new one and the
        // request is paid again from it (once).
        let key = offer_key(url);
        let cached = self.offers.lock().get(key).cloned();
        let mut ahead = cached.is_some();
        let mut target = match cached {
            Some(mut t) => {
                self.refuse_cheater(t.pay_to)?;
                if let Some(resource) = t.resource.as_object_mut() {
                    resource.insert("url".into(), Value::String(url.to_owned()));
                }
                t
            }
            None => {
                let first = self.http.get(url).send().await?;
                if first.status() != reqwest::StatusCode::PAYMENT_REQUIRED {
                    return Ok(Sent::Free(first));
                }
                self.target(&read_required(&first)?)?
            }
        };
        if let Some(max_total) = cover
            && max_total < target.price
        {
            return Err(ClientError::StreamLimit {
                price: target.price,
                max_total,
            });
        }
        let mut busy_waits = 0;
        let mut attempt = 0;
        // The channel last cold-started (read from chain when we had no state) in this call,
        // and whether a refusal already made us re-read the chain: each at most once.
        let mut cold_for = None;
        let mut reread = false;
        loop {
            attempt += 1;
            if cold_for != Some(target.id) {
                cold_for = Some(target.id);
                self.cold_start(&target, false).await?;
            }
            let (header, deposit) = self.build_payment(&target, cover)?;
            let mut req = self.http.get(url).header(PAYMENT_SIGNATURE, header);
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            let res = req.send().await?;
            if res.status() == reqwest::StatusCode::PAYMENT_REQUIRED {
                let again = read_required(&res)?;
                let reason = again.error.clone().unwrap_or_default();
                if reason == Reason::ChannelBusy.as_str() && busy_waits < 50 {
                    busy_waits += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    attempt -= 1;
                    continue;
                }
                // The server knows nothing better than the chain (it restarted without its
                // vouchers, or its corrective 402 carries no state): the escrow's
                // `totalClaimed` is the spec's baseline. Read once; retry only if it moved us.
                let chain_baseline = reason == Reason::CumulativeBelowClaimed.as_str()
                    || (reason == Reason::CumulativeAmountMismatch.as_str()
                        && !has_channel_state(&again));
                if chain_baseline && !reread && attempt < MAX_ATTEMPTS && self.config.rpc.is_some()
                {
                    reread = true;
                    if self.cold_start(&target, true).await? {
                        continue;
                    }
                }
                if reason == Reason::CumulativeAmountMismatch.as_str() && attempt < MAX_ATTEMPTS {
                    self.resync(&target, &again)?;
                    continue;
                }
                if ahead {
                    // The remembered offer no longer fits: start over from the server's.
                    ahead = false;
                    self.offers.lock().remove(key);
                    target = self.target(&again)?;
                    if let Some(max_total) = cover
                        && max_total < target.price
                    {
                        return Err(ClientError::StreamLimit {
                            price: target.price,
                            max_total,
                        });
                    }
                    attempt -= 1;
                    continue;
                }
                let message = String::from_utf8_lossy(&res.bytes().await?)
                    .chars()
                    .take(300)
                    .collect();
                return Err(ClientError::Refused {
                    status: 402,
                    reason,
                    message,
                });
            }
            if res.status().is_success() {
                self.offers.lock().insert(key.to_owned(), target.clone());
            }
            return Ok(Sent::Paid {
                res,
                target: Box::new(target),
                deposit,
            });
        }
    }

    /// Asks `url`'s server for a cooperative refund of `amount` (everything when `None`).
    pub async fn refund(
        &self,
        url: &str,
        amount: Option<u128>,
    ) -> Result<SettleResponse, ClientError> {
        let first = self.http.get(url).send().await?;
        if first.status() != reqwest::StatusCode::PAYMENT_REQUIRED {
            return Err(ClientError::NoOffer(format!(
                "expected 402, got {}",
                first.status()
            )));
        }
        let required = read_required(&first)?;
        let target = self.target(&required)?;
        self.cold_start(&target, false).await?;
        for attempt in 1..=MAX_ATTEMPTS {
            let Some(state) = self.state(&target)? else {
                return Err(ClientError::NoChannel);
            };
            let voucher = self.voucher_json(&target, state.charged)?;
            let mut payload =
                json!({"type": "refund", "channelConfig": state.config, "voucher": voucher});
            if let Some(a) = amount {
                payload["amount"] = json!(a.to_string());
            }
            let res = self
                .http
                .get(url)
                .header(PAYMENT_SIGNATURE, self.envelope(&target, payload))
                .send()
                .await?;
            if res.status() == reqwest::StatusCode::PAYMENT_REQUIRED {
                let again = read_required(&res)?;
                let reason = again.error.clone().unwrap_or_default();
                if reason == Reason::CumulativeAmountMismatch.as_str() && attempt < MAX_ATTEMPTS {
                    self.resync(&target, &again)?;
                    continue;
                }
                return Err(ClientError::Refused {
                    status: 402,
                    reason,
                    message: String::new(),
                });
            }
            let settle = read_response(&res)?;
            if !res.status().is_success() || !settle.success {
                return Err(ClientError::Refused {
                    status: res.status().as_u16(),
                    reason: settle.error_reason.unwrap_or_default(),
                    message: settle.error_message.unwrap_or_default(),
                });
            }
            let cs = settle.extra.as_ref().and_then(|e| e.channel_state.clone());
            let mut state = state;
            if let Some(cs) = cs {
                if cs.channel_id != target.id.0 {
                    return Err(self.cheated(&target, "refund response for another channel"));
                }
                state.balance = cs.balance;
            }
            if state.balance <= state.charged {
                self.channels.lock().remove(&target.id);
                self.dir.remove(&target.id)?;
            } else {
                self.store(state)?;
            }
            return Ok(settle);
        }
        Err(ClientError::NoChannel)
    }

    /// The payer's trustless exit, no server involved: `initiateWithdraw` of the unspent
    /// balance (`finalize == false`), or `finalizeWithdraw` once `withdrawDelay` has passed.
    /// The payer pays the gas. Returns the mined transaction.
    pub async fn withdraw(
        &self,
        rpc: &str,
        channel: ChannelId,
        finalize: bool,
    ) -> Result<B256, ClientError> {
        use alloy::network::{EthereumWallet, TransactionBuilder as _};
        use alloy::providers::{Provider as _, ProviderBuilder};
        use alloy::rpc::types::TransactionRequest;
        use alloy_sol_types::SolCall as _;

        use crate::chain::bindings::UptoEscrow;

        let state = self
            .channels()
            .into_iter()
            .find(|s| s.channel_id == channel)
            .ok_or(ClientError::NoChannel)?;
        let chain_id = state
            .network
            .parse::<crate::wire::Eip155Network>()
            .map_err(|()| ClientError::NoOffer(format!("network {}", state.network)))?
            .chain_id();
        let url: reqwest::Url = rpc
            .parse()
            .map_err(|e| ClientError::NoOffer(format!("rpc url: {e}")))?;
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(self.config.payer.clone()))
            .connect_http(url)
            .erased();
        let sender = crate::chain::tx::TxSender::new(
            provider,
            self.config.payer.clone(),
            chain_id,
            crate::chain::tx::TxPolicy::default(),
        );
        let config = ChannelConfig {
            payer: state.config.payer,
            payerAuthorizer: state.config.payer_authorizer,
            receiver: state.config.receiver,
            receiverAuthorizer: state.config.receiver_authorizer,
            token: state.config.token,
            withdrawDelay: U40::saturating_from(state.config.withdraw_delay),
            salt: state.config.salt,
        };
        let (input, what) = if finalize {
            let call = UptoEscrow::finalizeWithdrawCall {
                config: (&config).into(),
            };
            (call.abi_encode(), "finalizeWithdraw")
        } else {
            // Only what we did not spend: the rest is owed to the server.
            let amount = state.balance.saturating_sub(state.charged);
            let call = UptoEscrow::initiateWithdrawCall {
                config: (&config).into(),
                amount,
            };
            (call.abi_encode(), "initiateWithdraw")
        };
        let tx = TransactionRequest::default()
            .with_to(self.config.escrow)
            .with_input(input);
        let sent = sender
            .send(tx, what)
            .await
            .map_err(|source| ClientError::Chain {
                what,
                source: Box::new(source),
            })?;
        Ok(sent.hash)
    }

    /// The spec's client cold start, when an RPC URL is configured: reads `t`'s channel from
    /// the escrow and bases the next voucher on its on-chain `totalClaimed` (only a claim
    /// carrying our own voucher signature can have raised it, so it is safe to adopt).
    /// Without `force`, only a channel with no local state is read (one read per new
    /// channel; an empty channel stays unknown). With `force`, the local state is raised to
    /// the chain's if the chain is ahead. Returns whether the local state changed.
    async fn cold_start(&self, t: &Target, force: bool) -> Result<bool, ClientError> {
        let Some(rpc) = self.config.rpc.as_deref() else {
            return Ok(false);
        };
        let known = self.state(t)?;
        if known.is_some() && !force {
            return Ok(false);
        }
        let (balance, total_claimed) = self.read_channel(rpc, t).await?;
        let mut state = known.unwrap_or_else(|| self.fresh(t));
        if balance == 0 && state.balance == 0 {
            // No channel on chain: a first deposit opens it.
            return Ok(false);
        }
        let before = state.clone();
        state.charged = state.charged.max(total_claimed);
        state.signed_max = state.signed_max.max(total_claimed);
        state.balance = balance;
        // What is in the channel counts against the spend limit (we may have deposited it
        // from another machine).
        state.deposited = state.deposited.max(balance);
        let moved = state.charged != before.charged;
        tracing::info!(channel = %t.id, balance, total_claimed, "channel read from chain");
        self.store(state)?;
        Ok(moved || before.balance != balance)
    }

    /// `(balance, totalClaimed)` of `t`'s channel, read from the escrow through `rpc` after
    /// checking that the endpoint serves the offer's chain.
    async fn read_channel(&self, rpc: &str, t: &Target) -> Result<(u128, u128), ClientError> {
        use alloy::network::TransactionBuilder as _;
        use alloy::providers::{Provider as _, ProviderBuilder};
        use alloy::rpc::types::TransactionRequest;
        use alloy_sol_types::SolCall as _;

        use crate::chain::bindings::UptoEscrow;

        let fail = |what: &str, e: &dyn std::fmt::Display| {
            ClientError::ColdStart(format!("{what}: {e}").chars().take(300).collect())
        };
        let url: reqwest::Url = rpc.parse().map_err(|e| fail("rpc url", &e))?;
        let provider = ProviderBuilder::new().connect_http(url);
        let chain_id = provider
            .get_chain_id()
            .await
            .map_err(|e| fail("eth_chainId", &e))?;
        if chain_id != t.domain.chain_id() {
            return Err(ClientError::ColdStart(format!(
                "the rpc serves chain {chain_id}, the offer is for chain {}",
                t.domain.chain_id()
            )));
        }
        let tx = TransactionRequest::default()
            .with_to(self.config.escrow)
            .with_input(UptoEscrow::channelsCall { channelId: t.id.0 }.abi_encode());
        let raw = provider
            .call(tx)
            .await
            .map_err(|e| fail("channels()", &e))?;
        let ch = UptoEscrow::channelsCall::abi_decode_returns(&raw)
            .map_err(|e| fail("channels() returned", &e))?;
        Ok((ch.balance, ch.totalClaimed))
    }

    /// Refuses to pay a receiver that broke the protocol with this client before.
    fn refuse_cheater(&self, pay_to: Address) -> Result<(), ClientError> {
        if self.cheaters.lock().contains_key(&pay_to) {
            return Err(ClientError::ServerCheated {
                pay_to: pay_to.to_string(),
                what: "broke the protocol earlier; not paying it again".into(),
            });
        }
        Ok(())
    }

    fn target(&self, required: &PaymentRequired) -> Result<Target, ClientError> {
        let offer = required
            .accepts
            .iter()
            .find(|o| o.scheme == BATCH_SETTLEMENT && o.eip155_network().is_some())
            .ok_or_else(|| ClientError::NoOffer("no batch-settlement eip155 entry".into()))?
            .clone();
        let bad = |w: &str| ClientError::NoOffer(w.to_owned());
        let extra = offer
            .batch_extra()
            .map_err(|e| bad(&format!("extra: {e}")))?;
        let price = offer.amount_u128().ok_or_else(|| bad("amount"))?;
        let chain_id = offer
            .eip155_network()
            .map(|n| n.chain_id())
            .ok_or_else(|| bad("network"))?;
        let pay_to: Address = offer.pay_to.parse().map_err(|_| bad("payTo"))?;
        let token: Address = offer.asset.parse().map_err(|_| bad("asset"))?;
        self.refuse_cheater(pay_to)?;
        let config = ChannelConfig {
            payer: self.config.payer.address(),
            payerAuthorizer: self.config.voucher_key().address(),
            receiver: pay_to,
            receiverAuthorizer: extra.receiver_authorizer,
            token,
            withdrawDelay: U40::saturating_from(extra.withdraw_delay),
            salt: self.config.salt,
        };
        let domain = EscrowDomain::new(chain_id, self.config.escrow);
        let id = domain.channel_id(&config);
        Ok(Target {
            extra,
            price,
            config,
            id,
            domain,
            pay_to,
            resource: serde_json::to_value(&required.resource).unwrap_or(Value::Null),
            offer,
        })
    }

    fn state(&self, t: &Target) -> Result<Option<ChannelState>, ClientError> {
        if let Some(s) = self.channels.lock().get(&t.id) {
            return Ok(Some(s.clone()));
        }
        let loaded = self.dir.load(&t.id)?;
        if let Some(s) = &loaded {
            self.channels.lock().insert(t.id, s.clone());
        }
        Ok(loaded)
    }

    fn store(&self, s: ChannelState) -> Result<(), ClientError> {
        self.dir.save(&s)?;
        self.channels.lock().insert(s.channel_id, s);
        Ok(())
    }

    fn fresh(&self, t: &Target) -> ChannelState {
        ChannelState {
            channel_id: t.id,
            network: t.offer.network.clone(),
            config: wire_config(&t.config),
            charged: 0,
            balance: 0,
            deposited: 0,
            signed_max: 0,
            requests: 0,
        }
    }

    fn voucher_json(&self, t: &Target, max: u128) -> Result<Value, ClientError> {
        let sig = sign_voucher(self.config.voucher_key(), &t.domain, t.id, max)
            .map_err(|e| ClientError::Signing(e.to_string()))?;
        Ok(
            json!({"channelId": t.id.0, "maxClaimableAmount": max.to_string(),
                  "signature": Bytes::from(sig.as_bytes().to_vec())}),
        )
    }

    fn envelope(&self, t: &Target, payload: Value) -> String {
        encode_header(&json!({"x402Version": 2, "accepted": t.offer,
                              "payload": payload, "resource": t.resource}))
    }

    /// The `PAYMENT-SIGNATURE` for the next request, and the deposit amount if one is made.
    /// With `cover`, a deposit is made unless the balance covers `charged + cover` (a
    /// stream's whole budget), so that its renewals never run into the balance.
    fn build_payment(
        &self,
        t: &Target,
        cover: Option<u128>,
    ) -> Result<(String, Option<u128>), ClientError> {
        let mut state = self.state(t)?.unwrap_or_else(|| self.fresh(t));
        let max = state.charged.saturating_add(t.price);
        let voucher = self.voucher_json(t, max)?;
        let mut payload =
            json!({"type": "voucher", "channelConfig": state.config, "voucher": voucher});
        let mut deposit = None;
        let need = state
            .charged
            .saturating_add(cover.unwrap_or(t.price).max(t.price));
        if need > state.balance {
            let min_deposit = t
                .extra
                .other
                .get("minDeposit")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<u128>().ok())
                .unwrap_or(0);
            let amount = t
                .price
                .saturating_mul(self.config.deposit_multiplier)
                .max(min_deposit)
                .max(need - state.balance);
            if state.deposited.saturating_add(amount) > self.config.spend_limit {
                return Err(ClientError::SpendLimit {
                    needed: amount,
                    deposited: state.deposited,
                    limit: self.config.spend_limit,
                });
            }
            payload["type"] = json!("deposit");
            payload["deposit"] = json!({"amount": amount.to_string(),
                "authorization": {"erc3009Authorization": self.erc3009(t, amount)?}});
            deposit = Some(amount);
        }
        state.signed_max = state.signed_max.max(max);
        self.store(state)?;
        Ok((self.envelope(t, payload), deposit))
    }

    fn erc3009(&self, t: &Target, amount: u128) -> Result<Value, ClientError> {
        let salt = B256::from(rand::random::<[u8; 32]>());
        let valid_before = U256::from(now() + t.offer.max_timeout_seconds.max(60));
        let auth = ReceiveWithAuthorization {
            from: self.config.payer.address(),
            to: self.config.collector,
            value: U256::from(amount),
            validAfter: U256::ZERO,
            validBefore: valid_before,
            nonce: erc3009_deposit_nonce(t.id, salt),
        };
        let domain = token_domain(
            &t.extra.name,
            &t.extra.version,
            t.domain.chain_id(),
            t.config.token,
        );
        let sig = sign_receive_with_authorization(&self.config.payer, &domain, &auth)
            .map_err(|e| ClientError::Signing(e.to_string()))?;
        Ok(
            json!({"validAfter": "0", "validBefore": valid_before.to_string(), "salt": salt,
                  "signature": Bytes::from(sig.as_bytes().to_vec())}),
        )
    }

    /// Adopts a corrective 402's state only if it proves itself with our own signature.
    fn resync(&self, t: &Target, required: &PaymentRequired) -> Result<(), ClientError> {
        self.apply_checked(t, Response::Corrective(required))
    }

    /// Checks a paid request's `PAYMENT-RESPONSE` and records it in the channel state.
    fn check_settle(
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

    /// Runs [`checks::check`] on `t`'s channel: stores the next state, or marks the server
    /// as cheating.
    fn apply_checked(&self, t: &Target, response: Response<'_>) -> Result<(), ClientError> {
        let state = self.state(t)?.unwrap_or_else(|| self.fresh(t));
        let terms = Terms {
            network: &t.offer.network,
            channel: t.id,
            price: t.price,
            domain: &t.domain,
            voucher_signer: self.config.voucher_key().address(),
        };
        let next = checks::check(&state, &terms, response).map_err(|c| self.cheated(t, c.0))?;
        self.store(next)
    }

    fn cheated(&self, t: &Target, what: &str) -> ClientError {
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

fn wire_config(c: &ChannelConfig) -> ChannelConfigWire {
    ChannelConfigWire {
        payer: c.payer,
        payer_authorizer: c.payerAuthorizer,
        receiver: c.receiver,
        receiver_authorizer: c.receiverAuthorizer,
        token: c.token,
        withdraw_delay: c.withdrawDelay.to::<u64>(),
        salt: c.salt,
    }
}

/// Whether a 402's `batch-settlement` offer carries a `channelState`.
fn has_channel_state(required: &PaymentRequired) -> bool {
    required
        .accepts
        .iter()
        .filter(|o| o.scheme == BATCH_SETTLEMENT)
        .filter_map(|o| o.batch_extra().ok())
        .any(|e| e.channel_state.is_some())
}

fn read_required(res: &reqwest::Response) -> Result<PaymentRequired, ClientError> {
    let raw = res
        .headers()
        .get(PAYMENT_REQUIRED)
        .ok_or_else(|| ClientError::NoOffer("402 without PAYMENT-REQUIRED".into()))?;
    decode_header(raw.as_bytes(), 64 * 1024).map_err(|e| ClientError::NoOffer(e.to_string()))
}

fn read_response(res: &reqwest::Response) -> Result<SettleResponse, ClientError> {
    let raw = res
        .headers()
        .get(PAYMENT_RESPONSE)
        .ok_or_else(|| ClientError::NoOffer("no PAYMENT-RESPONSE".into()))?;
    decode_header(raw.as_bytes(), MAX_PAYMENT_HEADER_BYTES * 4)
        .map_err(|e| ClientError::NoOffer(e.to_string()))
}

async fn answer(
    res: reqwest::Response,
    settle: Option<SettleResponse>,
) -> Result<Answer, ClientError> {
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.bytes().await?;
    Ok(Answer {
        status,
        headers,
        body,
        settle,
    })
}

fn is_sse(res: &reqwest::Response) -> bool {
    res.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// The `data` of the last `event: payment-response` in an SSE body, decoded.
fn sse_payment(body: &[u8]) -> Option<SettleResponse> {
    let text = std::str::from_utf8(body).ok()?;
    let mut found = None;
    let mut event = "";
    for line in text.lines() {
        if let Some(e) = line.strip_prefix("event:") {
            event = e.trim();
        } else if let Some(d) = line.strip_prefix("data:") {
            if event == "payment-response" {
                found = decode_header(d.trim().as_bytes(), MAX_PAYMENT_HEADER_BYTES * 4).ok();
            }
        } else if line.is_empty() {
            event = "";
        }
    }
    found
}
