//! Mid-stream renewal of a held payment (metered streams, `docs/protocol.md` §10).
//!
//! A streamed response keeps its channel held. The client extends the stream's budget with
//! a side request carrying the next cumulative voucher; [`Engine::renew`] checks it with the
//! same rules as a paid request (decoding, signature, ceiling = held ceiling + increment,
//! within balance, no pending withdrawal), then *checkpoints*: the charge delivered so far
//! is made durable together with the new voucher before the renewal is acknowledged. The
//! stream keeps the hold throughout, so no other request can interleave.

use http::StatusCode;

use super::{Engine, Paid, Refusal};
use crate::clock::unix_now as now;
use crate::ledger::Reject;
use crate::reason::Reason;
use crate::store::{Store, StoreError};
use crate::typed_data::ChannelId;
use crate::verify::VerifiedVoucher;
use crate::wire::{BatchPayload, ResourceInfo, SettleResponse};

impl<S: Store + 'static> Engine<S> {
    /// Renews the streamed payment `paid` with the raw `PAYMENT-SIGNATURE` value `header`:
    /// a voucher whose ceiling is the held one plus `increment` (the route's price for the
    /// stream). `stream_charged` is what the stream has charged so far; it is checkpointed
    /// with the new voucher and the renewal is answered only once that is durable.
    ///
    /// A refused renewal is a 402 with the spec's reason code (a cumulative mismatch carries
    /// the corrective `channelState`/`voucherState`) and changes nothing: `paid` keeps its
    /// voucher and budget. A store failure is a 500 (`unexpected_settle_error`), also with
    /// `paid` unchanged.
    pub async fn renew(
        &self,
        paid: &mut Paid,
        header: &[u8],
        increment: u128,
        stream_charged: u128,
        resource: &ResourceInfo,
    ) -> Result<SettleResponse, Refusal> {
        let id = paid.channel_id();
        let verified = async {
            self.check_payer(paid.payer(), Some(id))?;
            self.check_renewal(id, header, increment).await
        }
        .await
        .map_err(|r| self.payment_refusal(resource, increment, r))?;
        let mut staged = paid
            .reservation
            .stage_renewal(verified, increment, stream_charged, now())
            .map_err(|r| match r.reason {
                // The server's own metering went past the budget: not the client's fault.
                Reason::ChargeExceedsSignedCumulative => {
                    self.failure(StatusCode::INTERNAL_SERVER_ERROR, &r)
                }
                _ => self.payment_refusal(resource, increment, r),
            })?;
        let store = &*self.inner.store;
        let mut attempts = 0;
        let written = loop {
            attempts += 1;
            // The stream goes on: a shared store keeps its hold.
            let result = match store
                .compare_and_set_held(staged.expected_version(), staged.record())
                .await
            {
                Ok(ticket) => store.wait_durable(ticket).await,
                Err(e) => Err(e),
            };
            // Over a shared store, a conflict that only the chain's side explains (the
            // settler published a claim) is rebased, as in `Engine::settle`.
            if let Err(StoreError::Conflict { .. }) = &result
                && attempts < 4
                && store.is_shared()
                && let Ok(Some(stored)) = store.load(id).await
                && staged.rebase(&stored, &self.inner.ledger)
            {
                continue;
            }
            break result;
        };
        if let Err(e) = written {
            // Nothing was applied in memory. If the write landed but its durability wait
            // failed, the stream's final commit meets a version conflict and reloads the
            // stored record (see `Engine::settle`): the checkpoint is never double-counted.
            tracing::error!(channel = %id, error = %e, "persisting a stream checkpoint failed");
            let reject = Reject::new(Reason::UnexpectedSettleError, Some(id));
            return Err(self.failure(StatusCode::INTERNAL_SERVER_ERROR, &reject));
        }
        let receipt = paid.reservation.apply_renewal(staged).map_err(|r| {
            tracing::error!(channel = %id, "a held stream lost its hold: {r}");
            self.failure(StatusCode::INTERNAL_SERVER_ERROR, &r)
        })?;
        Ok(self.paid_response(&receipt, None))
    }

    /// The renewal's voucher for the stream's channel `id`, decoded and verified.
    async fn check_renewal(
        &self,
        id: ChannelId,
        header: &[u8],
        increment: u128,
    ) -> Result<VerifiedVoucher, Reject> {
        let checked = self.decode_payment(header, increment)?;
        let BatchPayload::Voucher { voucher, .. } = &checked.payload else {
            // Deposits and refunds are separate requests; a renewal only extends the budget.
            return Err(Reject::explained(
                Reason::PayloadType,
                None,
                "a stream renewal carries a voucher payload",
            ));
        };
        if checked.channel_id != id {
            return Err(Reject::new(
                Reason::ChannelIdMismatch,
                Some(checked.channel_id),
            ));
        }
        // Same freshness gate as a paid request: a long stream must not keep extending its
        // budget on a mirror that has not seen the chain (a withdrawal) for too long.
        if self.stale(&id) {
            return Err(Self::stale_reject(id));
        }
        // The stream's channel is held, so the ledger's verify-and-reserve path (which
        // refuses held channels) cannot be used: the signature is checked under the channel's
        // rule here (ECDSA in memory, ERC-1271 through the chain for smart wallets), and the
        // reservation re-checks that the signer is the channel's.
        self.verify_signature(&checked.config, voucher, id).await
    }
}

impl Paid {
    /// The ceiling of the voucher this payment holds (grows with each renewal).
    pub fn max_claimable(&self) -> u128 {
        self.reservation.voucher().max_claimable()
    }
}
