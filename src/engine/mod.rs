//! The payment logic of a paid HTTP request, independent of HTTP.
//!
//! [`Engine::authorize`] turns an optional `PAYMENT-SIGNATURE` value into either a held
//! channel ([`Paid`], run the handler) or a finished refund, or a [`Refusal`] (answer 402).
//! [`Engine::settle`] commits the actual charge, waits for the store's durability ticket and
//! returns the `PAYMENT-RESPONSE` body. Dropping a [`Paid`] releases the channel unchanged:
//! that is how a failed handler charges nothing.
//!
//! | file | holds |
//! |---|---|
//! | `decode.rs` | header → checked payload: version, `accepted`, shape, channel config, channel id |
//! | `chain.rs` | [`ChainAccess`]: reading channels, submitting deposits and refunds |
//! | `refusal.rs` | [`Refusal`]: status, reason code, the 402 offer |
//! | `offer.rs` | building `PaymentRequirements` / `PaymentRequired` / `PAYMENT-RESPONSE` bodies |
//! | `guards.rs` | [`RefundLimits`], the deposit single flight and used-authorization memory |

mod chain;
mod decode;
mod guards;
mod offer;
mod refusal;
mod stream;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, B256};
use http::StatusCode;
use serde_json::{Map, Value};

use crate::ledger::{ChannelRecord, Detail, Ledger, Reject, Reservation};
use crate::reason::Reason;
use crate::settlement::Freshness;
use crate::store::{PersistError, Store, StoreError, persist};
use crate::typed_data::{ChannelConfig, ChannelId, EscrowDomain};
use crate::verify::{SignatureFault, SignedVoucher, VerifiedVoucher, VoucherError, VoucherSigner};
use crate::wire::{
    BatchPayload, Eip155Network, PaymentRequired, PaymentRequirements, ResourceInfo,
    SettleResponse, VoucherFields,
};

pub use chain::{BoxFuture, ChainAccess, ChainFailure, ChainOutcome, ColdReadLimits};
pub use guards::RefundLimits;
pub use offer::{channel_state_wire, failed_response};
pub use refusal::Refusal;

use chain::{ChainErc1271, ColdReads};
use decode::{Checked, decode};

/// The HTTP layer's stateless decoder, for the facilitator endpoints: payload, channel config
/// and channel id, or the reason code.
pub(crate) fn decode_for_facilitator(
    raw: &[u8],
    offer: &PaymentRequirements,
    ours: &EngineConfig,
    domain: &EscrowDomain,
) -> Result<(BatchPayload, ChannelConfig, ChannelId), (Reason, String)> {
    decode(raw, offer, ours, domain).map(|c| (c.payload, c.config, c.channel_id))
}

/// Longest withdraw delay the escrow accepts (30 days).
pub const MAX_WITHDRAW_DELAY: u64 = 2_592_000;
/// Shortest withdraw delay the escrow accepts (15 minutes).
pub const MIN_WITHDRAW_DELAY: u64 = 900;

/// What this server offers: the fixed part of every `accepts[]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// CAIP-2 network; its chain id must be the escrow domain's.
    pub network: Eip155Network,
    /// `payTo`: the channel receiver.
    pub pay_to: Address,
    /// The token (`asset`, the channel's `token`).
    pub asset: Address,
    /// The token's EIP-712 `name` (the client signs the ERC-3009 deposit with it).
    pub asset_name: String,
    /// The token's EIP-712 `version`.
    pub asset_version: String,
    /// `extra.receiverAuthorizer`: signs claims and refunds.
    pub receiver_authorizer: Address,
    /// `extra.withdrawDelay` in seconds (900 ..= 2,592,000).
    pub withdraw_delay: u64,
    /// `maxTimeoutSeconds` of the offer.
    pub max_timeout_seconds: u64,
    /// More `extra` keys to advertise (e.g. `minDeposit`); ours win on a clash.
    pub extra: Map<String, Value>,
}

impl EngineConfig {
    /// Checks the values the escrow would refuse.
    pub fn validate(&self, domain: &EscrowDomain) -> Result<(), String> {
        if !(MIN_WITHDRAW_DELAY..=MAX_WITHDRAW_DELAY).contains(&self.withdraw_delay) {
            return Err(format!(
                "withdrawDelay {} is outside {MIN_WITHDRAW_DELAY}..={MAX_WITHDRAW_DELAY}",
                self.withdraw_delay
            ));
        }
        if self.network.chain_id() != domain.chain_id() {
            return Err(format!(
                "network {} is not the escrow domain's chain {}",
                self.network,
                domain.chain_id()
            ));
        }
        if self.pay_to == Address::ZERO || self.receiver_authorizer == Address::ZERO {
            return Err("payTo and receiverAuthorizer must be non-zero".into());
        }
        Ok(())
    }
}

/// The payment engine. Cheap to clone; share one per escrow deployment and receiver.
#[derive(Debug)]
pub struct Engine<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

#[derive(Debug)]
struct Inner<S> {
    config: EngineConfig,
    ledger: Ledger,
    store: Arc<S>,
    chain: Option<Arc<dyn ChainAccess>>,
    /// Rate limit, negative cache and coalescing of chain reads for unknown channels.
    cold: ColdReads,
    /// How old a channel's mirror may be and still be served on (unset: any age).
    freshness: std::sync::OnceLock<Freshness>,
    /// Channels with a refund in flight: no request may be served on them meanwhile, or its
    /// charge would land after the refund's claim and be unclaimable.
    refunding: parking_lot::Mutex<std::collections::HashSet<ChannelId>>,
    /// Deposits in flight (per channel and per ERC-3009 nonce) and authorizations submitted.
    deposits: guards::Deposits,
    /// Limits on client-requested refunds.
    refund_limits: parking_lot::Mutex<RefundLimits>,
}

/// Marks a channel as refunding until dropped.
struct RefundMark<'a> {
    set: &'a parking_lot::Mutex<std::collections::HashSet<ChannelId>>,
    id: ChannelId,
}

impl Drop for RefundMark<'_> {
    fn drop(&mut self) {
        self.set.lock().remove(&self.id);
    }
}

/// A checked payment holding its channel: run the handler, then [`Engine::settle`]. Dropping
/// it releases the channel with nothing charged.
#[derive(Debug)]
pub struct Paid {
    reservation: Reservation,
    /// The deposit that came with this request: transaction and amount.
    deposit: Option<(B256, u128)>,
}

impl Paid {
    /// The per-request maximum this payment covers.
    pub fn price(&self) -> u128 {
        self.reservation.price()
    }
    /// The held channel.
    pub fn channel_id(&self) -> ChannelId {
        self.reservation.channel_id()
    }
    /// Who pays.
    pub fn payer(&self) -> Address {
        self.reservation.payer()
    }
    /// Whether a deposit came with this payment (it is on chain already).
    pub fn with_deposit(&self) -> bool {
        self.deposit.is_some()
    }
}

/// What [`Engine::authorize`] accepted.
#[derive(Debug)]
pub enum Authorized {
    /// A voucher (or deposit + voucher): run the handler, then settle.
    Paid(Paid),
    /// A cooperative refund was executed; answer with this `PAYMENT-RESPONSE` and do not run
    /// the handler.
    Refunded(SettleResponse),
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<S: Store + 'static> Engine<S> {
    /// An engine over `ledger` and `store`. `chain` loads unknown channels and submits
    /// deposits and refunds; without it only channels already in the ledger are served.
    pub fn new(
        config: EngineConfig,
        ledger: Ledger,
        store: Arc<S>,
        chain: Option<Arc<dyn ChainAccess>>,
    ) -> Result<Self, String> {
        config.validate(ledger.domain())?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                ledger,
                store,
                chain,
                cold: ColdReads::new(ColdReadLimits::default()),
                freshness: std::sync::OnceLock::new(),
                refunding: Default::default(),
                deposits: Default::default(),
                refund_limits: parking_lot::Mutex::new(RefundLimits::default()),
            }),
        })
    }

    /// Loads every persisted channel into the ledger (call once, before serving).
    pub async fn restore(&self) -> Result<usize, StoreError> {
        let records = self.inner.store.load_all().await?;
        Ok(self.inner.ledger.restore(records))
    }

    /// Replaces the limits on chain reads for unknown channels (default:
    /// [`ColdReadLimits::default`]). Takes effect at once, also on clones of this engine.
    pub fn set_cold_read_limits(&self, limits: ColdReadLimits) {
        self.inner.cold.set_limits(limits);
    }

    /// Replaces the limits on client-requested refunds (default: [`RefundLimits::default`]).
    /// Takes effect at once, also on clones of this engine.
    pub fn set_refund_limits(&self, limits: RefundLimits) -> Result<(), String> {
        if limits.max_per_window == 0 || limits.window.as_secs() == 0 {
            return Err("refund limits: max_per_window and window must be at least 1".into());
        }
        *self.inner.refund_limits.lock() = limits;
        Ok(())
    }

    /// Refuses vouchers (402 `rpc_read_failed`) on channels whose mirror is older than
    /// `freshness` allows: neither read directly nor covered by a successful watcher poll
    /// (give the same `Freshness` to [`crate::settlement::Watcher::with_freshness`]). During
    /// an RPC outage this bounds how long the server serves without seeing a withdrawal.
    /// Set once; returns `false` if a policy was already set.
    pub fn set_freshness(&self, freshness: Freshness) -> bool {
        self.inner.freshness.set(freshness).is_ok()
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }
    /// The channel ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.inner.ledger
    }
    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.inner.store
    }
    /// The escrow domain.
    pub fn domain(&self) -> &EscrowDomain {
        self.inner.ledger.domain()
    }

    /// Our `accepts[]` entry for a request of maximum price `price`.
    pub fn offer(&self, price: u128) -> PaymentRequirements {
        offer::requirements(&self.inner.config, price)
    }

    /// The plain 402 offer (no payment, or a payment we could not use).
    pub fn payment_required(
        &self,
        resource: &ResourceInfo,
        price: u128,
        error: Option<Reason>,
    ) -> PaymentRequired {
        offer::payment_required(
            resource,
            self.offer(price),
            error.map(|r| r.as_str().to_owned()),
        )
    }

    /// A 402 for a payment refused before it reached the engine (e.g. two payment headers).
    pub fn refusal(
        &self,
        resource: &ResourceInfo,
        price: u128,
        reason: Reason,
        message: String,
    ) -> Refusal {
        self.refuse(resource, price, Some(reason), message)
    }

    /// Checks a request's payment for a resource of maximum price `price`. `header` is the
    /// raw `PAYMENT-SIGNATURE` value, if any.
    pub async fn authorize(
        &self,
        header: Option<&[u8]>,
        price: u128,
        resource: &ResourceInfo,
    ) -> Result<Authorized, Refusal> {
        let Some(raw) = header else {
            return Err(self.refuse(
                resource,
                price,
                None,
                "this resource requires payment".into(),
            ));
        };
        let offer = self.offer(price);
        let checked = decode(raw, &offer, &self.inner.config, self.domain())
            .map_err(|(reason, msg)| self.refuse(resource, price, Some(reason), msg))?;
        match checked.payload {
            BatchPayload::Voucher { .. } => self.voucher(checked, price, resource).await,
            BatchPayload::Deposit { .. } => self.deposit(checked, price, resource).await,
            BatchPayload::Refund { .. } => self.refund(checked, price, resource).await,
        }
    }

    /// Commits the actual charge (`actual <= price`), makes it durable and returns the
    /// `PAYMENT-RESPONSE` body. On any error nothing is charged and the channel is released.
    pub async fn settle(&self, paid: Paid, actual: u128) -> Result<SettleResponse, Refusal> {
        let Paid {
            reservation,
            deposit,
        } = paid;
        let id = reservation.channel_id();
        let staged = reservation
            .commit(actual, now())
            .map_err(|refused| self.failure(StatusCode::INTERNAL_SERVER_ERROR, &refused.reject))?;
        match persist(&*self.inner.store, staged).await {
            Ok(receipt) => Ok(offer::paid_response(&self.inner.config, &receipt, deposit)),
            Err(e) => {
                if let PersistError::Store(StoreError::Conflict { .. }) = &e {
                    // Someone else wrote this channel: reload it before serving it again.
                    if let Ok(Some(record)) = self.inner.store.load(id).await {
                        self.inner.ledger.restore([record]);
                    }
                }
                tracing::error!(channel = %id, error = %e, "persisting a voucher failed");
                let reject = Reject::new(Reason::UnexpectedSettleError, Some(id));
                Err(self.failure(StatusCode::INTERNAL_SERVER_ERROR, &reject))
            }
        }
    }

    async fn voucher(
        &self,
        checked: Checked,
        price: u128,
        resource: &ResourceInfo,
    ) -> Result<Authorized, Refusal> {
        self.ensure_known(&checked, price, resource).await?;
        let id = checked.channel_id;
        if self.stale(&id) {
            let failure = ChainFailure {
                reason: Reason::RpcReadFailed,
                message:
                    "this channel's on-chain state could not be refreshed recently; retry later"
                        .into(),
            };
            return Err(self.chain_refusal(resource, price, id, failure));
        }
        let voucher = signed(checked.payload.voucher(), id);
        // ECDSA channels: one recovery under the ledger, no RPC. Smart-wallet channels are
        // refused there with `Erc1271Required`; they are verified through the chain, then
        // reserved (the reservation re-checks the hold and the cumulative rules).
        let reservation = match self.inner.ledger.verify_and_reserve(voucher, price) {
            Ok(reservation) => reservation,
            Err(r) if r.detail == Detail::Erc1271Required => {
                let voucher = signed(checked.payload.voucher(), id);
                let verified = self
                    .verify_erc1271(VoucherSigner::of(&checked.config), voucher, price, resource)
                    .await?;
                self.inner
                    .ledger
                    .reserve(verified, price)
                    .map_err(|r| self.reject(resource, price, &r))?
            }
            Err(r) => return Err(self.reject(resource, price, &r)),
        };
        if self.refunding(&reservation.channel_id()) {
            let reject = Reject::new(Reason::ChannelBusy, Some(reservation.channel_id()));
            return Err(self.reject(resource, price, &reject));
        }
        Ok(Authorized::Paid(Paid {
            reservation,
            deposit: None,
        }))
    }

    /// Makes sure the ledger knows the channel, reading it from chain if it can.
    async fn ensure_known(
        &self,
        checked: &Checked,
        price: u128,
        resource: &ResourceInfo,
    ) -> Result<(), Refusal> {
        let id = checked.channel_id;
        if self.inner.ledger.snapshot(&id).is_some() {
            return Ok(());
        }
        let Some(chain) = &self.inner.chain else {
            let reject = Reject::new(Reason::MissingChannel, Some(id));
            return Err(self.reject(resource, price, &reject));
        };
        // Anyone can name a channel we do not know: the read is rate-limited, coalesced and
        // negatively cached (`ColdReadLimits`).
        let state = self
            .inner
            .cold
            .read(chain.as_ref(), id, true)
            .await
            .map_err(|f| self.chain_refusal(resource, price, id, f))?;
        if state.balance == 0 {
            let reject = Reject::new(Reason::ChannelNotFound, Some(id));
            return Err(self.reject(resource, price, &reject));
        }
        self.inner
            .ledger
            .upsert_from_chain(checked.config.clone(), state, now());
        Ok(())
    }

    async fn deposit(
        &self,
        checked: Checked,
        price: u128,
        resource: &ResourceInfo,
    ) -> Result<Authorized, Refusal> {
        let id = checked.channel_id;
        let BatchPayload::Deposit {
            voucher, deposit, ..
        } = &checked.payload
        else {
            return Err(self.refuse(resource, price, Some(Reason::PayloadType), String::new()));
        };
        let Some(chain) = self.inner.chain.clone() else {
            let reject = Reject::new(Reason::DepositSimulationFailed, Some(id));
            return Err(self.reject(resource, price, &reject));
        };
        let Some(auth) = &deposit.authorization.erc3009_authorization else {
            let reject = Reject::new(Reason::Erc3009AuthorizationRequired, Some(id));
            return Err(self.reject(resource, price, &reject));
        };
        // The relayer pays the gas of every deposit: an advertised minimum is enforced, so
        // dust deposits cannot make it spend more on gas than the channel can bring in.
        if let Some(min) = self.min_deposit()
            && deposit.amount < min
        {
            let reject = Reject::new(Reason::DepositBelowMinDeposit, Some(id));
            let mut refusal = self.reject(resource, price, &reject);
            refusal.message = format!("deposit {} is below minDeposit {min}", deposit.amount);
            return Err(refusal);
        }
        // Everything that can be checked before spending gas is checked first: the ERC-3009
        // validity window, the voucher signature, and the voucher against the channel as it
        // will be after the deposit.
        let t = alloy_primitives::U256::from(now());
        if auth.valid_after > t {
            let reject = Reject::new(Reason::PayloadAuthorizationValidAfter, Some(id));
            return Err(self.reject(resource, price, &reject));
        }
        if auth.valid_before <= t {
            let reject = Reject::new(Reason::PayloadAuthorizationValidBefore, Some(id));
            return Err(self.reject(resource, price, &reject));
        }
        // Single flight per channel and per authorization, before any read, estimate or
        // send: six copies of one header in parallel must cost one transaction, not six
        // (five of them reverting). A replay of an authorization this server already
        // submitted costs none.
        let nonce = crate::typed_data::erc3009_deposit_nonce(id, auth.salt);
        let mut flight = self
            .inner
            .deposits
            .begin(id, nonce)
            .map_err(|blocked| self.deposit_blocked(resource, price, id, nonce, blocked))?;
        let verified = self
            .verify_signature(&checked.config, voucher, id, price, resource)
            .await?;
        let mut projected = match self.inner.ledger.record(&id) {
            Some(record) => {
                if self.inner.ledger.is_held(&id) {
                    let reject = Reject::new(Reason::ChannelBusy, Some(id));
                    return Err(self.reject(resource, price, &reject));
                }
                record
            }
            None => {
                // Same limit as any cold read; an empty channel is expected here (first
                // deposit), so the negative cache is not consulted.
                let state = self
                    .inner
                    .cold
                    .read(chain.as_ref(), id, false)
                    .await
                    .map_err(|f| self.chain_refusal(resource, price, id, f))?;
                ChannelRecord::from_chain(id, checked.config.clone(), state, now())
            }
        };
        projected.onchain.balance = projected.onchain.balance.saturating_add(deposit.amount);
        projected
            .check_voucher(voucher.max_claimable_amount, price)
            .map_err(|mut r| {
                // A corrective 402 reports the channel as it is, not as it would be.
                if let Detail::CumulativeMismatch(m) = &mut r.detail {
                    m.state.balance = m.state.balance.saturating_sub(deposit.amount);
                }
                self.reject(resource, price, &r)
            })?;
        flight.submitting();
        let outcome = match chain.deposit(&checked.config, deposit.amount, auth).await {
            Ok(outcome) => outcome,
            Err(f) => {
                if f.reason == Reason::DepositSimulationFailed {
                    // Refused by the estimate: nothing was broadcast, so the same
                    // authorization may be retried (the estimate refuses a used one again).
                    flight.not_sent();
                }
                return Err(self.chain_refusal(resource, price, id, f));
            }
        };
        self.inner.cold.forget_empty(&id);
        self.inner
            .ledger
            .upsert_from_chain(checked.config.clone(), outcome.state, now());
        // Verified above (no second recovery, no second ERC-1271 call).
        let reservation = self
            .inner
            .ledger
            .reserve(verified, price)
            .map_err(|r| self.reject(resource, price, &r))?;
        if self.refunding(&reservation.channel_id()) {
            let reject = Reject::new(Reason::ChannelBusy, Some(reservation.channel_id()));
            return Err(self.reject(resource, price, &reject));
        }
        Ok(Authorized::Paid(Paid {
            reservation,
            deposit: Some((outcome.tx_hash, outcome.amount)),
        }))
    }

    async fn refund(
        &self,
        checked: Checked,
        price: u128,
        resource: &ResourceInfo,
    ) -> Result<Authorized, Refusal> {
        let id = checked.channel_id;
        let BatchPayload::Refund {
            voucher, amount, ..
        } = &checked.payload
        else {
            return Err(self.refuse(resource, price, Some(Reason::PayloadType), String::new()));
        };
        self.ensure_known(&checked, price, resource).await?;
        let Some(chain) = self.inner.chain.clone() else {
            let reject = Reject::new(Reason::RefundSimulationFailed, Some(id));
            return Err(self.reject(resource, price, &reject));
        };
        let ledger = &self.inner.ledger;
        // Mark first, then look for a hold; a request reserves first, then looks for the mark
        // (`not_refunding`): whichever comes second sees the other, so they never overlap.
        if !self.inner.refunding.lock().insert(id) {
            return Err(self.reject(resource, price, &Reject::new(Reason::ChannelBusy, Some(id))));
        }
        let _mark = RefundMark {
            set: &self.inner.refunding,
            id,
        };
        if ledger.is_held(&id) {
            return Err(self.reject(resource, price, &Reject::new(Reason::ChannelBusy, Some(id))));
        }
        let limits = *self.inner.refund_limits.lock();
        let window = limits.window.as_secs().max(1);
        let now = now();
        // Cheap refusals before any signature work (an ERC-1271 check costs an RPC): a
        // replayed refund header, and the per-channel rate.
        if let Some(record) = ledger.record(&id) {
            let max = voucher.max_claimable_amount;
            if max == record.charged && record.refunds.refunded_at == Some(max) {
                return Err(self.refund_refused(
                    resource,
                    price,
                    id,
                    Reason::RefundAlreadyExecuted,
                    format!(
                        "a refund was already executed with a voucher at cumulative {max}; \
                         a refund voucher is spent by its refund"
                    ),
                ));
            }
            if let Err(at) = record
                .refunds
                .next_allowed(now, limits.max_per_window, window)
            {
                return Err(self.refund_refused(
                    resource,
                    price,
                    id,
                    Reason::RefundRateLimited,
                    format!(
                        "at most {} refunds per channel every {window} s; the next one is \
                         allowed from unix time {at}",
                        limits.max_per_window
                    ),
                ));
            }
        }
        let verified = self
            .verify_signature(&checked.config, voucher, id, price, resource)
            .await?;
        let snapshot = ledger
            .check_refund_voucher(&verified)
            .map_err(|r| self.reject(resource, price, &r))?;
        let refundable = snapshot.balance.saturating_sub(snapshot.charged);
        if refundable == 0 {
            let reject = Reject::new(Reason::RefundNoBalance, Some(id));
            return Err(self.reject(resource, price, &reject));
        }
        let amount = amount.unwrap_or(refundable);
        if amount > refundable {
            let reject = Reject::new(Reason::RefundAmountInvalid, Some(id));
            return Err(self.reject(resource, price, &reject));
        }
        if amount < refundable && amount < limits.min_partial {
            return Err(self.refund_refused(
                resource,
                price,
                id,
                Reason::RefundAmountInvalid,
                format!(
                    "a partial refund must be at least {}; ask for {refundable} (everything \
                     refundable) or at least the minimum",
                    limits.min_partial
                ),
            ));
        }
        let claim = ledger.claimable().into_iter().find(|c| c.channel_id == id);
        let outcome = chain
            .refund(&checked.config, amount, claim.as_ref())
            .await
            .map_err(|f| self.chain_refusal(resource, price, id, f))?;
        let after = ledger
            .refresh(&id, outcome.state, now)
            .map_err(|r| self.reject(resource, price, &r))?;
        if amount == refundable {
            // Nothing left to spend: forget the channel, as the stock server does. A replay
            // then finds no refundable balance on chain (`refund_no_balance`, no gas).
            if let Ok(record) = ledger.remove(&id) {
                self.forget(id, record.version).await;
            }
        } else {
            self.persist_refund_marks(id, now, window).await;
        }
        Ok(Authorized::Refunded(offer::refund_response(
            &self.inner.config,
            checked.config.payer,
            &after,
            outcome.tx_hash,
            outcome.amount,
        )))
    }

    /// The refusal of a deposit that may not start (see `guards.rs`).
    fn deposit_blocked(
        &self,
        resource: &ResourceInfo,
        price: u128,
        id: ChannelId,
        nonce: B256,
        blocked: guards::DepositBlocked,
    ) -> Refusal {
        let (reason, message) = match blocked {
            guards::DepositBlocked::InFlight => (
                Reason::ChannelBusy,
                "a deposit on this channel or with this authorization is in flight; retry \
                 once it is answered"
                    .to_owned(),
            ),
            // What the token would answer (the collector's `receiveWithAuthorization`
            // reverts on a used nonce), without spending an estimate or a transaction.
            guards::DepositBlocked::Used => (
                Reason::DepositSimulationFailed,
                format!(
                    "ERC-3009 authorization {nonce} was already submitted; sign a new one \
                     with a fresh salt"
                ),
            ),
        };
        metrics::counter!("x402_deposit_duplicates_refused_total").increment(1);
        let mut refusal = self.reject(resource, price, &Reject::new(reason, Some(id)));
        refusal.message = message;
        refusal
    }

    /// A 402 for a refund refused by this server's limits, with `message`.
    fn refund_refused(
        &self,
        resource: &ResourceInfo,
        price: u128,
        id: ChannelId,
        reason: Reason,
        message: String,
    ) -> Refusal {
        metrics::counter!("x402_refunds_refused_total", "reason" => reason.as_str()).increment(1);
        let mut refusal = self.reject(resource, price, &Reject::new(reason, Some(id)));
        refusal.message = message;
        refusal
    }

    /// Writes the refund marks (see [`crate::ledger::RefundMarks`]) durably. The marks are
    /// in memory already, so a failure here is logged: the next paid request's write
    /// carries them, and until a restart the replay is refused from memory.
    async fn persist_refund_marks(&self, id: ChannelId, now: u64, window: u64) {
        let (record, expected) = match self.inner.ledger.note_refund(&id, now, window) {
            Ok(staged) => staged,
            Err(r) => {
                tracing::warn!(channel = %id, error = %r, "refund marks not recorded");
                return;
            }
        };
        let store = &self.inner.store;
        let result = match store.compare_and_set(expected, &record).await {
            Ok(ticket) => store.wait_durable(ticket).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => self
                .inner
                .ledger
                .persisted(&id, expected.unwrap_or(0), record.version),
            Err(e) => {
                tracing::error!(channel = %id, error = %e, "persisting refund marks failed")
            }
        }
    }

    /// The advertised `extra.minDeposit` (a decimal string, as the stock server writes it),
    /// if any. `EngineConfig::validate` does not look at `extra`, so an unparsable value is
    /// logged and not enforced rather than refusing every deposit.
    fn min_deposit(&self) -> Option<u128> {
        let raw = self.inner.config.extra.get("minDeposit")?;
        let parsed = match raw {
            Value::String(s) => s.parse::<u128>().ok(),
            Value::Number(n) => n.as_u64().map(u128::from),
            _ => None,
        };
        if parsed.is_none() {
            tracing::warn!(value = %raw, "extra.minDeposit is not an amount; not enforced");
        }
        parsed
    }

    /// Whether `id`'s mirror is too old to serve on. The common case (the watcher polled
    /// recently) costs two atomic loads; only then is the channel's own last read looked up.
    fn stale(&self, id: &ChannelId) -> bool {
        let Some(f) = self.inner.freshness.get() else {
            return false;
        };
        let now = now();
        if now.saturating_sub(f.last_poll()) <= f.max_age().as_secs() {
            return false;
        }
        !f.is_fresh(&self.inner.ledger, id, now)
    }

    /// The refusal for a channel whose mirror is too old ([`Self::stale`]).
    fn stale_refusal(&self, resource: &ResourceInfo, price: u128, id: ChannelId) -> Refusal {
        let failure = ChainFailure {
            reason: Reason::RpcReadFailed,
            message: "this channel's on-chain state could not be refreshed recently; retry later"
                .into(),
        };
        self.chain_refusal(resource, price, id, failure)
    }

    /// Whether a refund is in flight on `id` (checked after reserving: the caller then drops
    /// the reservation, releasing the channel unchanged).
    fn refunding(&self, id: &ChannelId) -> bool {
        self.inner.refunding.lock().contains(id)
    }

    async fn forget(&self, id: ChannelId, version: u64) {
        if version == 0 {
            return;
        }
        let store = &self.inner.store;
        let result = match store.remove(id, version).await {
            Ok(ticket) => store.wait_durable(ticket).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            // The refund is on chain; a stale record is re-based from chain on restore.
            tracing::warn!(channel = %id, error = %e, "removing a refunded channel failed");
        }
    }

    /// The voucher's signature under the channel's rule: ECDSA in memory, or ERC-1271
    /// through the chain for a smart-wallet payer (`payerAuthorizer == 0`).
    async fn verify_signature(
        &self,
        config: &ChannelConfig,
        voucher: &VoucherFields,
        id: ChannelId,
        price: u128,
        resource: &ResourceInfo,
    ) -> Result<VerifiedVoucher, Refusal> {
        match VoucherSigner::of(config) {
            VoucherSigner::Ecdsa(authorizer) => signed(voucher, id)
                .verify_ecdsa(self.domain(), authorizer)
                .map_err(|fault| self.reject(resource, price, &Reject::signature(Some(id), fault))),
            signer @ VoucherSigner::Erc1271(_) => {
                self.verify_erc1271(signer, signed(voucher, id), price, resource)
                    .await
            }
        }
    }

    /// ERC-1271 verification (`SignedVoucher::verify`: the wallet's own ECDSA signature
    /// first, then `isValidSignature` through [`ChainAccess`]). A bad signature is
    /// `voucher_signature`; a wallet that could not be asked is `rpc_read_failed` (not the
    /// client's fault, retry later). Without chain access only the ECDSA form can pass.
    async fn verify_erc1271(
        &self,
        signer: VoucherSigner,
        voucher: SignedVoucher,
        price: u128,
        resource: &ResourceInfo,
    ) -> Result<VerifiedVoucher, Refusal> {
        let id = voucher.channel_id;
        let Some(chain) = &self.inner.chain else {
            return voucher
                .verify(self.domain(), signer, &NoErc1271)
                .await
                .map_err(|_| {
                    let reject =
                        Reject::with(Reason::VoucherSignature, Some(id), Detail::Erc1271Required);
                    self.reject(resource, price, &reject)
                });
        };
        if self.inner.cold.wallet_backing_off(&id) {
            let failure = ChainFailure {
                reason: Reason::RpcReadFailed,
                message: "this channel's wallet refused a voucher just now; retry shortly".into(),
            };
            return Err(self.chain_refusal(resource, price, id, failure));
        }
        match voucher
            .verify(self.domain(), signer, &ChainErc1271(chain.as_ref()))
            .await
        {
            Ok(verified) => Ok(verified),
            Err(VoucherError::Invalid(fault)) => {
                if fault == SignatureFault::WrongSigner {
                    // The wallet was asked and said no: slow further asks on this channel.
                    self.inner.cold.note_wallet_refusal(id);
                }
                Err(self.reject(resource, price, &Reject::signature(Some(id), fault)))
            }
            Err(VoucherError::Checker(e)) => {
                let failure = ChainFailure {
                    reason: Reason::RpcReadFailed,
                    message: format!("{e}: {}", e.source),
                };
                Err(self.chain_refusal(resource, price, id, failure))
            }
        }
    }

    fn refuse(
        &self,
        resource: &ResourceInfo,
        price: u128,
        reason: Option<Reason>,
        message: String,
    ) -> Refusal {
        Refusal {
            status: StatusCode::PAYMENT_REQUIRED,
            reason,
            message,
            required: Some(self.payment_required(resource, price, reason)),
            response: None,
        }
    }

    /// A ledger rejection as a 402; a cumulative mismatch carries the corrective state.
    fn reject(&self, resource: &ResourceInfo, price: u128, reject: &Reject) -> Refusal {
        let mut required = self.payment_required(resource, price, Some(reject.reason));
        if let Detail::CumulativeMismatch(m) = &reject.detail {
            offer::add_corrective(&mut required, m);
        }
        Refusal {
            status: StatusCode::PAYMENT_REQUIRED,
            reason: Some(reject.reason),
            message: reject.to_string(),
            required: Some(required),
            response: None,
        }
    }

    fn chain_refusal(
        &self,
        resource: &ResourceInfo,
        price: u128,
        id: ChannelId,
        failure: ChainFailure,
    ) -> Refusal {
        tracing::warn!(channel = %id, reason = %failure.reason, "{}", failure.message);
        let mut refusal = self.reject(resource, price, &Reject::new(failure.reason, Some(id)));
        refusal.message = failure.message;
        refusal
    }

    /// A failure after the handler ran: 500 with a failed `PAYMENT-RESPONSE`.
    fn failure(&self, status: StatusCode, reject: &Reject) -> Refusal {
        Refusal {
            status,
            reason: Some(reject.reason),
            message: reject.to_string(),
            required: None,
            response: Some(failed_response(&self.inner.config, reject)),
        }
    }
}

/// No wallet can be asked (engine without chain access): every ERC-1271 call says "not
/// signed", so only a wallet's own ECDSA signature passes.
struct NoErc1271;

impl crate::verify::Erc1271Checker for NoErc1271 {
    async fn is_valid_signature(
        &self,
        _wallet: Address,
        _digest: B256,
        _signature: &[u8],
    ) -> Result<bool, crate::verify::Erc1271Error> {
        Ok(false)
    }
}

fn signed(v: &VoucherFields, id: ChannelId) -> SignedVoucher {
    SignedVoucher {
        channel_id: id,
        max_claimable: v.max_claimable_amount,
        signature: v.signature.clone(),
    }
}
