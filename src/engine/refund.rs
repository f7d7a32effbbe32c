//! The cooperative refund flow: the payer's refund voucher, checked against replays, this
//! server's rate and minimum, then `refundWithSignature` (with the outstanding claim) on
//! chain. No handler runs; the answer is the refund's `PAYMENT-RESPONSE`.

use std::collections::HashSet;

use super::decode::Checked;
use super::{Authorized, Engine, now, offer};
use crate::ledger::Reject;
use crate::reason::Reason;
use crate::store::Store;
use crate::typed_data::ChannelId;
use crate::wire::BatchPayload;

/// Marks a channel as refunding until dropped.
struct RefundMark<'a> {
    set: &'a parking_lot::Mutex<HashSet<ChannelId>>,
    id: ChannelId,
}

impl Drop for RefundMark<'_> {
    fn drop(&mut self) {
        self.set.lock().remove(&self.id);
    }
}

impl<S: Store + 'static> Engine<S> {
    pub(super) async fn refund(&self, checked: Checked) -> Result<Authorized, Reject> {
        let id = checked.channel_id;
        let BatchPayload::Refund {
            voucher, amount, ..
        } = &checked.payload
        else {
            return Err(Reject::explained(Reason::PayloadType, None, ""));
        };
        self.ensure_known(&checked).await?;
        let Some(chain) = self.inner.chain.clone() else {
            return Err(Reject::new(Reason::RefundSimulationFailed, Some(id)));
        };
        let ledger = &self.inner.ledger;
        // Mark first, then look for a hold; a request reserves first, then looks for the mark
        // (`Engine::hold`): whichever comes second sees the other, so they never overlap.
        if !self.inner.refunding.lock().insert(id) {
            return Err(Reject::busy(id));
        }
        let _mark = RefundMark {
            set: &self.inner.refunding,
            id,
        };
        if ledger.is_held(&id) {
            return Err(Reject::busy(id));
        }
        // Across instances: the stored record (its refund marks) and the database hold, so a
        // refund never overlaps a request or another refund served elsewhere.
        let _shared = self.hold_for_refund(id).await?;
        let limits = *self.inner.refund_limits.lock();
        let window = limits.window.as_secs().max(1);
        let now = now();
        // Cheap refusals before any signature work (an ERC-1271 check costs an RPC): a
        // replayed refund header, and the per-channel rate.
        if let Some(record) = ledger.record(&id) {
            let max = voucher.max_claimable_amount;
            if max == record.charged && record.refunds.refunded_at == Some(max) {
                return Err(refund_refused(
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
                return Err(refund_refused(
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
        let verified = self.verify_signature(&checked.config, voucher, id).await?;
        let snapshot = ledger.check_refund_voucher(&verified)?;
        let refundable = snapshot.balance.saturating_sub(snapshot.charged);
        if refundable == 0 {
            return Err(Reject::new(Reason::RefundNoBalance, Some(id)));
        }
        let amount = amount.unwrap_or(refundable);
        if amount > refundable {
            return Err(Reject::new(Reason::RefundAmountInvalid, Some(id)));
        }
        if amount < refundable && amount < limits.min_partial {
            return Err(refund_refused(
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
            .map_err(|f| Self::chain_reject(id, f))?;
        let after = ledger.refresh(&id, outcome.state, now)?;
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

    /// On a shared store: reloads the channel and holds it in the database for the refund.
    async fn hold_for_refund(&self, id: ChannelId) -> Result<Option<super::SharedHold>, Reject> {
        let store = &self.inner.store;
        if !store.is_shared() {
            return Ok(None);
        }
        if !self.reload(id, "refund").await? {
            return Ok(None);
        }
        let version = self.inner.ledger.record(&id).map_or(0, |r| r.version);
        match store.hold(id, (version != 0).then_some(version)).await {
            Ok(crate::store::Hold::Held) => Ok(Some(super::SharedHold::new(store, id))),
            Ok(_) => Err(Reject::busy(id)),
            Err(e) => Err(self.store_down(id, &e)),
        }
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
}

/// A refund refused by this server's limits, with `message` (counted by reason).
fn refund_refused(id: ChannelId, reason: Reason, message: String) -> Reject {
    metrics::counter!("x402_refunds_refused_total", "reason" => reason.as_str()).increment(1);
    Reject::explained(reason, Some(id), message)
}
