//! The payment logic of a paid HTTP request, independent of HTTP.
//!
//! [`Engine::authorize`] turns an optional `PAYMENT-SIGNATURE` value into either a held
//! channel ([`Paid`], run the handler) or a finished refund, or a [`Refusal`] (answer 402).
//! [`Engine::settle`] commits the actual charge, waits for the store's durability ticket and
//! returns the `PAYMENT-RESPONSE` body. Dropping a [`Paid`] releases the channel unchanged:
//! that is how a failed handler charges nothing.
//!
//! Refusals are made at the edge: every step below an entry point ([`Engine::authorize`],
//! [`Engine::settle`], [`Engine::renew`]) says no with a [`Reject`] (reason, channel, and the
//! numbers or message the client is told), and only the entry point turns it into a
//! [`Refusal`] with the 402 offer for the request's resource and price.
//!
//! | file | holds |
//! |---|---|
//! | `config.rs` | [`EngineConfig`]: what this server offers |
//! | `decode.rs` | header → checked payload: version, `accepted`, shape, channel config, channel id |
//! | `voucher.rs` | the voucher flow: channel lookup, freshness, signature (ECDSA or ERC-1271), reservation |
//! | `deposit.rs` | the deposit flow: minimum, validity window, single flight, the transaction |
//! | `refund.rs` | the cooperative refund flow: replay, rate and minimum, the transaction |
//! | `stream.rs` | [`Engine::renew`]: mid-stream renewal |
//! | `chain.rs` | [`ChainAccess`]: reading channels, submitting deposits and refunds |
//! | `refusal.rs` | [`Refusal`]: status, reason code, the 402 offer |
//! | `paid.rs` | [`Paid`]: a held channel between authorize and settle, and a shared store's hold |
//! | `offer.rs` | building `PaymentRequirements` / `PaymentRequired` / `PAYMENT-RESPONSE` bodies |
//! | `guards.rs` | [`RefundLimits`], the deposit single flight and used-authorization memory |
//! | `blocked.rs` | [`BlockedPayers`]: payers the operator refuses |

mod blocked;
mod chain;
mod config;
mod decode;
mod deposit;
mod guards;
mod offer;
mod paid;
mod refund;
mod refusal;
mod stream;
mod voucher;

use std::sync::Arc;

use alloy_primitives::{Address, B256};
use http::StatusCode;

use crate::clock::unix_now as now;
use crate::ledger::{Detail, Freshness, Ledger, Reject, Reservation};
use crate::reason::Reason;
use crate::store::{Hold, Store, StoreError};
use crate::typed_data::{ChannelConfig, ChannelId, EscrowDomain};
use crate::wire::{
    BatchPayload, PaymentRequired, PaymentRequirements, PreparedOffer, ResourceInfo, SettleResponse,
};

pub use blocked::BlockedPayers;
pub use chain::{BoxFuture, ChainAccess, ChainAccessError, ChainOutcome, ColdReadLimits};
pub use config::{ConfigError, EngineConfig, MAX_WITHDRAW_DELAY, MIN_WITHDRAW_DELAY};
pub use guards::RefundLimits;
pub use offer::{channel_state_wire, failed_response};
pub use paid::Paid;
use paid::SharedHold;
pub use refusal::Refusal;

/// The old name of [`ChainAccessError`], kept for implementations of [`ChainAccess`]
/// written against it.
pub type ChainFailure = ChainAccessError;

use chain::ColdReads;
use decode::decode;

/// The HTTP layer's stateless decoder, for the facilitator endpoints: payload, channel config
/// and channel id, or the refusal (no channel yet, with its message).
pub(crate) fn decode_for_facilitator(
    raw: &[u8],
    offer: &PaymentRequirements,
    ours: &EngineConfig,
    domain: &EscrowDomain,
) -> Result<(BatchPayload, ChannelConfig, ChannelId), Reject> {
    let offer = PreparedOffer::new(offer.clone());
    decode(raw, &offer, ours, domain, None).map(|c| (c.payload, c.config, c.channel_id))
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
    /// Our offer per price, built once.
    offers: offer::Offers,
    /// Payers' EIP-55 addresses for `PAYMENT-RESPONSE`.
    payer_names: offer::PayerNames,
    /// Payers the operator refuses (unset: none).
    blocked: std::sync::OnceLock<BlockedPayers>,
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

impl<S: Store + 'static> Engine<S> {
    /// An engine over `ledger` and `store`. `chain` loads unknown channels and submits
    /// deposits and refunds; without it only channels already in the ledger are served.
    pub fn new(
        config: EngineConfig,
        ledger: Ledger,
        store: Arc<S>,
        chain: Option<Arc<dyn ChainAccess>>,
    ) -> Result<Self, ConfigError> {
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
                offers: offer::Offers::default(),
                payer_names: offer::PayerNames::default(),
                blocked: std::sync::OnceLock::new(),
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
    pub fn set_refund_limits(&self, limits: RefundLimits) -> Result<(), ConfigError> {
        if limits.max_per_window == 0 || limits.window.as_secs() == 0 {
            return Err(ConfigError(
                "refund limits: max_per_window and window must be at least 1".into(),
            ));
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

    /// Refuses the vouchers and deposits of the payers in `blocked` (which the caller may
    /// change at any time; clones share it) with `payer_blocked`, before anything is read or
    /// written. Set once; returns `false` if a set was already given.
    pub fn set_blocked_payers(&self, blocked: BlockedPayers) -> bool {
        self.inner.blocked.set(blocked).is_ok()
    }

    /// A refusal if the operator blocked `payer`.
    fn check_payer(&self, payer: Address, id: Option<ChannelId>) -> Result<(), Reject> {
        match self.inner.blocked.get() {
            Some(blocked) if blocked.contains(&payer) => Err(Reject::explained(
                Reason::PayerBlocked,
                id,
                format!("payer {payer} is blocked by this server's operator"),
            )),
            _ => Ok(()),
        }
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
        self.prepared_offer(price).requirements().clone()
    }

    /// The offer for `price` as the decoder compares it, built once per price.
    fn prepared_offer(&self, price: u128) -> std::sync::Arc<PreparedOffer> {
        self.inner.offers.get(&self.inner.config, price)
    }

    /// A `PAYMENT-SIGNATURE` value decoded and checked against our offer at `price`; a channel
    /// the ledger holds with the payload's exact config is not hashed again.
    fn decode_payment(&self, raw: &[u8], price: u128) -> Result<decode::Checked, Reject> {
        let offer = self.prepared_offer(price);
        decode(
            raw,
            &offer,
            &self.inner.config,
            self.domain(),
            Some(&self.inner.ledger),
        )
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
        self.payment_refusal(resource, price, Reject::explained(reason, None, message))
    }

    /// Checks a request's payment for a resource of maximum price `price`. `header` is the
    /// raw `PAYMENT-SIGNATURE` value, if any.
    pub async fn authorize(
        &self,
        header: Option<&[u8]>,
        price: u128,
        resource: &ResourceInfo,
    ) -> Result<Authorized, Refusal> {
        self.authorize_with(header, price, || resource.clone())
            .await
    }

    /// [`Self::authorize`] with the resource described by `resource`, called only for a
    /// refusal's offer: a payment that passes builds no description (the layer's URL is
    /// formatted per request).
    pub(crate) async fn authorize_with(
        &self,
        header: Option<&[u8]>,
        price: u128,
        resource: impl FnOnce() -> ResourceInfo,
    ) -> Result<Authorized, Refusal> {
        let Some(raw) = header else {
            return Err(Refusal {
                status: StatusCode::PAYMENT_REQUIRED,
                reason: None,
                message: "this resource requires payment".into(),
                required: Some(self.payment_required(&resource(), price, None)),
                response: None,
            });
        };
        self.authorize_payment(raw, price)
            .await
            .map_err(|reject| self.payment_refusal(&resource(), price, reject))
    }

    /// [`Self::authorize`] for a payment that was sent: decode, then the payload's flow.
    async fn authorize_payment(&self, raw: &[u8], price: u128) -> Result<Authorized, Reject> {
        let checked = self.decode_payment(raw, price)?;
        if !matches!(checked.payload, BatchPayload::Refund { .. }) {
            self.check_payer(checked.config.payer, Some(checked.channel_id))?;
        }
        match checked.payload {
            BatchPayload::Voucher { .. } => self.voucher(checked, price).await,
            BatchPayload::Deposit { .. } => self.deposit(checked, price).await,
            BatchPayload::Refund { .. } => self.refund(checked).await,
        }
    }

    /// `PAYMENT-RESPONSE` of a paid request, the payer's name from the cache.
    fn paid_response(
        &self,
        receipt: &crate::ledger::Receipt,
        deposit: Option<(B256, u128)>,
    ) -> SettleResponse {
        let payer = self.inner.payer_names.get(receipt.payer);
        offer::paid_response(&self.inner.config, receipt, &payer, deposit)
    }

    /// Releases a payment whose work failed (an HTTP handler's error, a tool's error): nothing
    /// is charged. A deposit that came with it is on chain already, so it is settled at 0 and
    /// its receipt returned: a client that never learns of it would deposit again.
    pub async fn release_unserved(&self, paid: Paid) -> Option<SettleResponse> {
        if !paid.with_deposit() {
            drop(paid);
            return None;
        }
        match self.settle(paid, 0).await {
            Ok(receipt) => Some(receipt),
            Err(refusal) => {
                tracing::warn!(reason = ?refusal.reason, "no receipt for a deposit whose work failed");
                None
            }
        }
    }

    /// Commits the actual charge (`actual <= price`), makes it durable and returns the
    /// `PAYMENT-RESPONSE` body. On any error nothing is charged and the channel is released.
    pub async fn settle(&self, paid: Paid, actual: u128) -> Result<SettleResponse, Refusal> {
        let Paid {
            reservation,
            deposit,
            shared,
        } = paid;
        let id = reservation.channel_id();
        let mut staged = reservation
            .commit(actual, now())
            .map_err(|refused| self.failure(StatusCode::INTERNAL_SERVER_ERROR, &refused.reject))?;
        let store = &*self.inner.store;
        // A shared store may answer a conflict that only the chain's side of the record
        // explains (the settler published a claim or a withdrawal): the commit is rebuilt on
        // the stored record and written again. Anything else refuses the charge.
        let mut attempts = 0;
        let written = loop {
            attempts += 1;
            let result = match store
                .compare_and_set(staged.expected_version(), staged.record())
                .await
            {
                Ok(ticket) => store.wait_durable(ticket).await,
                Err(e) => Err(e),
            };
            match result {
                Err(StoreError::Conflict { .. }) => {
                    let stored = store.load(id).await.ok().flatten();
                    if attempts < 4
                        && store.is_shared()
                        && let Some(stored) = &stored
                        && staged.rebase(stored)
                    {
                        continue;
                    }
                    drop(staged);
                    // Someone else wrote this channel: reload it before serving it again.
                    match stored {
                        Some(record) => {
                            self.inner.ledger.restore([record]);
                        }
                        None if store.is_shared() => self.inner.ledger.forget(&id),
                        None => {}
                    }
                    break Err(StoreError::Conflict {
                        channel_id: id,
                        expected: None,
                        found: None,
                    });
                }
                other => break other.map(|()| staged),
            }
        };
        let outcome = written.and_then(|staged| {
            staged
                .apply()
                .map_err(|r| StoreError::Unavailable(format!("applying the commit: {r}")))
        });
        match outcome {
            Ok(receipt) => {
                // The write released the hold in the database.
                if let Some(shared) = shared {
                    shared.disarm();
                }
                Ok(self.paid_response(&receipt, deposit))
            }
            Err(e) => {
                tracing::error!(channel = %id, error = %e, "persisting a voucher failed");
                let status = if e.is_unavailable() {
                    metrics::counter!(crate::telemetry::STORE_UNAVAILABLE).increment(1);
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                let reject = Reject::new(Reason::UnexpectedSettleError, Some(id));
                Err(self.failure(status, &reject))
            }
        }
    }

    /// Holds the channel for the handler, unless a refund is in flight on it (checked after
    /// reserving: dropping the reservation then releases the channel unchanged). On a
    /// shared store, also holds it in the database, at the version the voucher was checked
    /// against: a cache another instance made stale is reloaded and the voucher checked
    /// again, before any handler runs.
    async fn hold(
        &self,
        mut reservation: Reservation,
        deposit: Option<(B256, u128)>,
    ) -> Result<Authorized, Reject> {
        let id = reservation.channel_id();
        if self.inner.refunding.lock().contains(&id) {
            return Err(Reject::busy(id));
        }
        let store = &self.inner.store;
        if !store.is_shared() {
            return Ok(Authorized::Paid(Paid {
                reservation,
                deposit,
                shared: None,
            }));
        }
        for _ in 0..3 {
            let checked = reservation.checked_version();
            let expected = (checked != 0).then_some(checked);
            match store.hold(id, expected).await {
                Ok(Hold::Held) => {
                    return Ok(Authorized::Paid(Paid {
                        reservation,
                        deposit,
                        shared: Some(SharedHold::new(store, id)),
                    }));
                }
                Ok(Hold::Busy) => return Err(Reject::busy(id)),
                Ok(Hold::Conflict(stored)) => {
                    metrics::counter!(crate::telemetry::CACHE_RELOADS, "why" => "hold")
                        .increment(1);
                    let voucher = reservation.voucher().clone();
                    let price = reservation.price();
                    drop(reservation);
                    match stored {
                        Some(record) => {
                            self.inner.ledger.restore([*record]);
                        }
                        None => {
                            self.inner.ledger.forget(&id);
                            return Err(Reject::new(Reason::ChannelNotFound, Some(id)));
                        }
                    }
                    reservation = self.inner.ledger.reserve(voucher, price)?;
                }
                Err(e) => return Err(self.store_down(id, &e)),
            }
        }
        Err(Reject::busy(id))
    }

    /// The shared store failed: the request is refused with 503 and nothing changes.
    fn store_down(&self, id: ChannelId, e: &StoreError) -> Reject {
        tracing::warn!(channel = %id, error = %e, "the channel store is unavailable");
        metrics::counter!(crate::telemetry::STORE_UNAVAILABLE).increment(1);
        Reject::unavailable(Some(id))
    }

    /// Replaces the cached record of `id` with the shared store's (no-op for a store this
    /// process owns). Returns whether the channel is stored.
    async fn reload(&self, id: ChannelId, why: &'static str) -> Result<bool, Reject> {
        if !self.inner.store.is_shared() {
            return Ok(self.inner.ledger.snapshot(&id).is_some());
        }
        metrics::counter!(crate::telemetry::CACHE_RELOADS, "why" => why).increment(1);
        match self.inner.store.load(id).await {
            Ok(Some(record)) => {
                self.inner.ledger.merge([record]);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(self.store_down(id, &e)),
        }
    }

    /// A chain failure as a rejection on channel `id`, with the chain's message (logged:
    /// it is the server's trouble, not the client's).
    fn chain_reject(id: ChannelId, failure: ChainAccessError) -> Reject {
        tracing::warn!(channel = %id, reason = %failure.reason, "{}", failure.message);
        Reject::explained(failure.reason, Some(id), failure.message)
    }

    /// The edge: a rejection as a 402 with the offer for (`resource`, `price`); a cumulative
    /// mismatch carries the corrective state.
    fn payment_refusal(&self, resource: &ResourceInfo, price: u128, reject: Reject) -> Refusal {
        if let Detail::Unavailable(message) = &reject.detail {
            // Not a payment problem: a 503 without an offer, so clients retry rather than pay.
            return Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: Some(reject.reason),
                message: message.clone(),
                required: None,
                response: None,
            };
        }
        let mut required = self.payment_required(resource, price, Some(reject.reason));
        if let Detail::CumulativeMismatch(m) = &reject.detail {
            offer::add_corrective(&mut required, m);
        }
        Refusal {
            status: StatusCode::PAYMENT_REQUIRED,
            reason: Some(reject.reason),
            message: reject.message(),
            required: Some(required),
            response: None,
        }
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
