//! The held side of a paid request: [`Ledger::reserve`] → [`Reservation`] → [`StagedCommit`] →
//! [`Receipt`].
//!
//! Both guards release the channel when dropped, so an early return, a panic in the handler
//! or a failed store write can never leave a channel held, and never changes its state.
//!
//! A metered stream may *renew* its reservation in place ([`Reservation::stage_renewal`] →
//! persist → [`Reservation::apply_renewal`]): the hold is kept, the budget grows by one
//! increment, and the charge delivered so far is checkpointed with the new voucher, so a
//! crash mid-stream loses at most one increment of the server's revenue.

use std::fmt;

use alloy_primitives::Address;

use crate::ledger::book::Ledger;
use crate::ledger::channel::{ChannelRecord, ChannelSnapshot};
use crate::ledger::reject::{Detail, Reject};
use crate::reason::Reason;
use crate::typed_data::{ChannelConfig, ChannelId};
use crate::verify::{SignatureFault, SignedVoucher, VerifiedVoucher, VoucherSigner};

impl Ledger {
    /// The ECDSA fast path: look up the signer, recover outside any lock, then reserve.
    /// Smart-wallet channels are refused with [`Detail::Erc1271Required`]; verify those with
    /// [`SignedVoucher::verify`] and call [`Ledger::reserve`].
    pub fn verify_and_reserve(
        &self,
        voucher: SignedVoucher,
        price: u128,
    ) -> Result<Reservation, Reject> {
        let id = voucher.channel_id;
        let VoucherSigner::Ecdsa(authorizer) = self.signer(&id)? else {
            let reason = SignatureFault::WrongSigner.reason();
            return Err(Reject::with(reason, Some(id), Detail::Erc1271Required));
        };
        let verified = voucher
            .verify_ecdsa(self.domain(), authorizer)
            .map_err(|fault| Reject::signature(Some(id), fault))?;
        self.reserve(verified, price)
    }

    /// Checks a verified voucher against the channel for a request of maximum price `price`
    /// and holds the channel until the returned [`Reservation`] is committed or dropped.
    pub fn reserve(&self, voucher: VerifiedVoucher, price: u128) -> Result<Reservation, Reject> {
        let id = voucher.channel_id();
        let token = self.next_token();
        let (snapshot, payer, version) = self.with_slot(&id, |slot| {
            if voucher.signer() != slot.record.signer() {
                return Err(Reject::signature(Some(id), SignatureFault::WrongSigner));
            }
            if slot.hold.is_some() {
                return Err(Reject::busy(id));
            }
            slot.record.check_voucher(voucher.max_claimable(), price)?;
            slot.hold = Some(token);
            Ok((
                slot.record.snapshot(),
                slot.record.payer(),
                slot.record.version,
            ))
        })?;
        let mut reservation =
            Reservation::new(self.clone(), token, voucher, price, snapshot, payer);
        reservation.checked_version = version;
        Ok(reservation)
    }
}

/// A held channel with a checked voucher for a request of maximum price `price`.
pub struct Reservation {
    ledger: Ledger,
    /// False once consumed by `commit`, so `Drop` does not release twice.
    active: bool,
    token: u64,
    voucher: VerifiedVoucher,
    price: u128,
    snapshot: ChannelSnapshot,
    payer: Address,
    /// Part of this reservation's charge already made durable by renewal checkpoints (the
    /// record's `charged` includes it); `commit` adds only what exceeds it.
    checkpointed: u128,
    /// Version of the record the voucher was checked against. If the record changes under
    /// the hold (a cache reloaded from a shared store), `commit` refuses instead of adding
    /// the charge to a state the voucher was never checked against.
    checked_version: u64,
}

/// A renewal checked against the held channel, waiting for its record to be durable. It
/// holds nothing itself: the [`Reservation`] it came from keeps the hold.
pub struct StagedRenewal {
    id: ChannelId,
    token: u64,
    record: ChannelRecord,
    expected_version: Option<u64>,
    voucher: VerifiedVoucher,
    increment: u128,
    stream_charged: u128,
    /// `charged` and `signedMaxClaimable` the checkpoint was built on.
    base: (u128, u128),
}

impl fmt::Debug for StagedRenewal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StagedRenewal")
            .field("channel_id", &self.id)
            .field("version", &self.record.version)
            .field("max_claimable", &self.voucher.max_claimable())
            .field("stream_charged", &self.stream_charged)
            .finish()
    }
}

impl StagedRenewal {
    /// The checkpoint record to persist (version already bumped).
    pub fn record(&self) -> &ChannelRecord {
        &self.record
    }
    /// Version the store must hold for the compare-and-set (`None`: not stored yet).
    pub fn expected_version(&self) -> Option<u64> {
        self.expected_version
    }

    /// Like [`StagedCommit::rebase`], for a checkpoint: after a conflict that only the
    /// chain's side of `stored` explains, rebuilds the checkpoint on `stored`.
    pub fn rebase(&mut self, stored: &ChannelRecord, ledger: &Ledger) -> bool {
        rebase_record(
            ledger,
            self.token,
            self.base,
            &mut self.record,
            &mut self.expected_version,
            stored,
        )
    }
}

/// Rebuilds `record` (built on a state with `base` = (`charged`, `signedMaxClaimable`)) on
/// `stored`, if `stored` differs from that state only in its chain mirror and refund
/// marks; also refreshes the held slot's mirror. Returns whether it did.
fn rebase_record(
    ledger: &Ledger,
    token: u64,
    base: (u128, u128),
    record: &mut ChannelRecord,
    expected_version: &mut Option<u64>,
    stored: &ChannelRecord,
) -> bool {
    let (charged, signed) = base;
    if stored.channel_id != record.channel_id
        || stored.charged != charged
        || stored.signed_max_claimable != signed
        || stored.version == 0
    {
        return false;
    }
    let moved = ledger.with_held(&record.channel_id, token, |slot| {
        slot.record.onchain = stored.onchain;
        slot.record.onchain_synced_at = stored.onchain_synced_at;
    });
    if moved.is_err() {
        return false;
    }
    record.onchain = stored.onchain;
    record.onchain_synced_at = stored.onchain_synced_at;
    record.refunds = stored.refunds;
    record.version = stored.version.saturating_add(1);
    *expected_version = Some(stored.version);
    true
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("channel_id", &self.voucher.channel_id())
            .field("price", &self.price)
            .field("max_claimable", &self.voucher.max_claimable())
            .finish()
    }
}

/// `commit` refused the charge; the reservation is handed back, still holding the channel.
#[derive(Debug)]
pub struct CommitRefused {
    /// Why (`charge_exceeds_signed_cumulative`).
    pub reject: Reject,
    /// The untouched reservation: commit a smaller charge, or drop it to release.
    pub reservation: Box<Reservation>,
}

impl Reservation {
    pub(crate) fn new(
        ledger: Ledger,
        token: u64,
        voucher: VerifiedVoucher,
        price: u128,
        snapshot: ChannelSnapshot,
        payer: Address,
    ) -> Self {
        Self {
            ledger,
            active: true,
            token,
            voucher,
            price,
            snapshot,
            payer,
            checkpointed: 0,
            checked_version: 0,
        }
    }

    /// Version of the record the voucher was checked against (0: never stored).
    pub fn checked_version(&self) -> u64 {
        self.checked_version
    }

    /// The held channel.
    pub fn channel_id(&self) -> ChannelId {
        self.voucher.channel_id()
    }
    /// Maximum price of this request (what the voucher pays for); for a renewed stream, the
    /// sum of its increments.
    pub fn price(&self) -> u128 {
        self.price
    }
    /// The part of the charge already durable through renewal checkpoints.
    pub fn checkpointed(&self) -> u128 {
        self.checkpointed
    }
    /// The accepted voucher.
    pub fn voucher(&self) -> &VerifiedVoucher {
        &self.voucher
    }
    /// Channel state when the reservation was taken.
    pub fn snapshot(&self) -> ChannelSnapshot {
        self.snapshot
    }
    /// The channel's payer.
    pub fn payer(&self) -> Address {
        self.payer
    }

    /// Checks a renewal voucher against the held channel and stages a checkpoint: the
    /// record with `charged` = baseline + `stream_charged` (this reservation's charge so
    /// far) and the new voucher as `signedMaxClaimable`. The voucher must extend the held
    /// one by exactly `increment` (strictly increasing, so a replayed voucher is a
    /// mismatch), stay within the balance, and no withdrawal may be pending. Nothing changes
    /// until [`Reservation::apply_renewal`], which the caller runs once the record is
    /// durable; dropping the staged renewal changes nothing.
    pub fn stage_renewal(
        &self,
        voucher: VerifiedVoucher,
        increment: u128,
        stream_charged: u128,
        now: u64,
    ) -> Result<StagedRenewal, Reject> {
        let id = self.channel_id();
        if voucher.channel_id() != id {
            return Err(Reject::new(Reason::ChannelIdMismatch, Some(id)));
        }
        if stream_charged > self.price {
            let detail = Detail::ChargeExceedsPrice {
                actual: stream_charged,
                price: self.price,
            };
            return Err(Reject::with(
                Reason::ChargeExceedsSignedCumulative,
                Some(id),
                detail,
            ));
        }
        // Charges only move up: a handler lowering its charge cannot undo a checkpoint.
        let stream_charged = stream_charged.max(self.checkpointed);
        let held = self.voucher.max_claimable();
        let held_signature = self.voucher.signature().clone();
        let checkpointed = self.checkpointed;
        let staged = self.ledger.with_held(&id, self.token, |slot| {
            let old = &slot.record;
            if voucher.signer() != old.signer() {
                return Err(Reject::signature(Some(id), SignatureFault::WrongSigner));
            }
            let mut corrective = old.clone();
            // The corrective 402 proves the ceiling with the voucher this stream holds.
            corrective.signed_max_claimable = held;
            corrective.signature = held_signature;
            corrective.check_extension(held, voucher.max_claimable(), increment)?;
            let mut record = old.clone();
            record.charged = old
                .charged
                .saturating_add(stream_charged - checkpointed)
                .min(voucher.max_claimable());
            record.signed_max_claimable = voucher.max_claimable();
            record.signature = voucher.signature().clone();
            record.last_request_at = now;
            record.version = old.version.saturating_add(1);
            let expected_version = (old.version != 0).then_some(old.version);
            let base = (old.charged, old.signed_max_claimable);
            Ok((record, expected_version, base))
        })??;
        let (record, expected_version, base) = staged;
        Ok(StagedRenewal {
            id,
            token: self.token,
            record,
            expected_version,
            voucher,
            increment,
            stream_charged,
            base,
        })
    }

    /// Makes a durable checkpoint the channel's state while keeping the hold, and extends
    /// this reservation: the renewal voucher becomes the held one and the budget grows by
    /// the increment. Call only once [`StagedRenewal::record`] is durable. Returns what the
    /// renewal's `PAYMENT-RESPONSE` reports (`chargedAmount`: the stream's charge so far).
    pub fn apply_renewal(&mut self, staged: StagedRenewal) -> Result<Receipt, Reject> {
        let id = self.channel_id();
        if staged.id != id || staged.token != self.token {
            return Err(Reject::missing(staged.id));
        }
        let StagedRenewal {
            record,
            voucher,
            increment,
            stream_charged,
            ..
        } = staged;
        let receipt = self.ledger.with_held(&id, self.token, |slot| {
            let onchain = slot.record.onchain;
            let synced = slot.record.onchain_synced_at;
            slot.record = record;
            slot.record.onchain = onchain;
            slot.record.onchain_synced_at = synced;
            Receipt {
                charged_amount: stream_charged,
                snapshot: slot.record.snapshot(),
                payer: slot.record.payer(),
                version: slot.record.version,
            }
        })?;
        self.voucher = voucher;
        self.price = self.price.saturating_add(increment);
        self.checkpointed = stream_charged;
        self.checked_version = receipt.version;
        Ok(receipt)
    }

    /// Stages the actual charge `actual <= price`. The channel stays held until the staged
    /// record is applied (after it is durable) or dropped. After renewals, `actual` is the
    /// whole reservation's charge (checkpoints included) and is never taken below the
    /// checkpointed amount.
    pub fn commit(mut self, actual: u128, now: u64) -> Result<StagedCommit, CommitRefused> {
        if actual > self.price {
            let detail = Detail::ChargeExceedsPrice {
                actual,
                price: self.price,
            };
            let reject = Reject::with(
                Reason::ChargeExceedsSignedCumulative,
                Some(self.channel_id()),
                detail,
            );
            return Err(CommitRefused {
                reject,
                reservation: Box::new(self),
            });
        }
        let actual = actual.max(self.checkpointed);
        let delta = actual - self.checkpointed;
        let id = self.voucher.channel_id();
        let max = self.voucher.max_claimable();
        let signature = self.voucher.signature().clone();
        let checked = self.checked_version;
        let staged = self.ledger.with_held(&id, self.token, |slot| {
            let old = &slot.record;
            if old.version != checked {
                // Reloaded under the hold: the voucher was checked against another state.
                return Err(Reject::busy(id));
            }
            let mut record = old.clone();
            record.charged = old.charged.saturating_add(delta).min(max);
            record.signed_max_claimable = max;
            record.signature = signature;
            record.last_request_at = now;
            record.version = old.version.saturating_add(1);
            let expected_version = (old.version != 0).then_some(old.version);
            let base = (old.charged, old.signed_max_claimable);
            Ok((record, expected_version, base))
        });
        match staged.and_then(|s| s) {
            Ok((record, expected_version, base)) => {
                // The hold passes to the staged commit.
                self.active = false;
                Ok(StagedCommit {
                    ledger: self.ledger.clone(),
                    active: true,
                    token: self.token,
                    record,
                    expected_version,
                    charged_amount: actual,
                    base,
                })
            }
            // The hold vanished (the ledger was restored underneath us); nothing to release.
            Err(reject) => Err(CommitRefused {
                reject,
                reservation: Box::new(self),
            }),
        }
    }

    /// Releases the channel unchanged (the handler failed). Same as dropping.
    pub fn release(self) {}
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.active {
            self.ledger.release(&self.voucher.channel_id(), self.token);
        }
    }
}

/// A commit waiting for its record to be durable; the channel is still held.
pub struct StagedCommit {
    ledger: Ledger,
    active: bool,
    token: u64,
    record: ChannelRecord,
    expected_version: Option<u64>,
    charged_amount: u128,
    /// `charged` and `signedMaxClaimable` the commit was built on.
    base: (u128, u128),
}

impl fmt::Debug for StagedCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StagedCommit")
            .field("channel_id", &self.record.channel_id)
            .field("version", &self.record.version)
            .field("charged_amount", &self.charged_amount)
            .finish()
    }
}

/// The outcome of an applied commit: what `PAYMENT-RESPONSE` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// `extra.chargedAmount`: this request's actual charge.
    pub charged_amount: u128,
    /// `extra.channelState` after the charge.
    pub snapshot: ChannelSnapshot,
    /// The payer.
    pub payer: Address,
    /// Record version now in memory and in the store.
    pub version: u64,
}

impl StagedCommit {
    /// The record to persist (version already bumped).
    pub fn record(&self) -> &ChannelRecord {
        &self.record
    }
    /// Version the store must hold for the compare-and-set (`None`: not stored yet).
    pub fn expected_version(&self) -> Option<u64> {
        self.expected_version
    }
    /// This request's actual charge.
    pub fn charged_amount(&self) -> u128 {
        self.charged_amount
    }

    /// After a compare-and-set conflict on a shared store: if `stored` differs from the state
    /// this commit was built on only in what the chain and the refund marks say (the settler
    /// published a claim or a withdrawal; `charged` and the voucher did not move), rebuilds
    /// the commit on top of `stored` and returns `true`: write it again. Otherwise returns
    /// `false` and the commit must be dropped (another instance charged the channel).
    pub fn rebase(&mut self, stored: &ChannelRecord) -> bool {
        rebase_record(
            &self.ledger,
            self.token,
            self.base,
            &mut self.record,
            &mut self.expected_version,
            stored,
        )
    }

    /// Makes the staged record the channel's state and releases the channel. Call only once
    /// the record is durable. Mirrored on-chain fields keep their latest in-memory values.
    /// Fails only if the hold was lost, which the ledger's API does not allow.
    pub fn apply(mut self) -> Result<Receipt, Reject> {
        self.active = false;
        let id = self.record.channel_id;
        let charged_amount = self.charged_amount;
        let staged = std::mem::replace(&mut self.record, placeholder(id));
        self.ledger.with_held(&id, self.token, |slot| {
            let onchain = slot.record.onchain;
            let synced = slot.record.onchain_synced_at;
            slot.record = staged;
            slot.record.onchain = onchain;
            slot.record.onchain_synced_at = synced;
            slot.hold = None;
            slot.record.rebase_if_claimed_beyond();
            Receipt {
                charged_amount,
                snapshot: slot.record.snapshot(),
                payer: slot.record.payer(),
                version: slot.record.version,
            }
        })
    }
}

impl Drop for StagedCommit {
    fn drop(&mut self) {
        if self.active {
            self.ledger.release(&self.record.channel_id, self.token);
        }
    }
}

fn placeholder(id: ChannelId) -> ChannelRecord {
    ChannelRecord::from_chain(id, ChannelConfig::default(), Default::default(), 0)
}
