//! Cooperative refunds of idle channels: the remainder (`balance - charged`) goes back to
//! the payer with a receiver-authorizer-signed `refundWithSignature`, claiming any unclaimed
//! charge first in the same transaction, so the payer's money is not parked in escrow
//! forever and nothing owed is given back.

use std::time::Duration;

use crate::chain::escrow::{ChainError, EscrowClient};
use crate::clock::unix_now;
use crate::ledger::{ChannelRecord, Claimable, Ledger, OnchainState};
use crate::store::{Hold, Store};
use crate::typed_data::ChannelId;

/// When an idle channel is refunded.
#[derive(Clone, Debug)]
pub struct RefundPolicy {
    /// Refund a channel whose last paid request is at least this old. Channels that never
    /// served a request are left alone (the payer just deposited and may be about to pay).
    pub idle_after: Duration,
    /// Only refund channels with no unclaimed charge (claims then stay the claim
    /// scheduler's job); otherwise the refund claims it in the same transaction.
    pub only_when_claimed: bool,
}

impl Default for RefundPolicy {
    fn default() -> Self {
        Self {
            idle_after: Duration::from_secs(24 * 3_600),
            only_when_claimed: false,
        }
    }
}

/// One refund made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refunded {
    /// Channel.
    pub channel_id: ChannelId,
    /// Returned to the payer.
    pub amount: u128,
    /// Claimed in the same transaction.
    pub claimed: u128,
    /// The mined refund transaction.
    pub tx_hash: alloy_primitives::B256,
}

/// Refunds every idle channel per `policy`. A channel is first fenced in the ledger (its
/// mirrored balance is lowered to what was charged, so no new voucher fits) and skipped if
/// a request holds it; after the refund its mirror is re-read, and a channel left with
/// nothing is removed from the ledger and the store.
pub async fn refund_idle<S: Store + ?Sized>(
    ledger: &Ledger,
    store: &S,
    client: &EscrowClient,
    policy: &RefundPolicy,
) -> Vec<Result<Refunded, (ChannelId, ChainError)>> {
    let now = unix_now();
    let ours = client.receiver_authorizer();
    let mut out = Vec::new();
    for record in ledger.records() {
        let id = record.channel_id;
        let idle = record.last_request_at != 0
            && now.saturating_sub(record.last_request_at) >= policy.idle_after.as_secs();
        let remainder = record.onchain.balance.saturating_sub(record.charged);
        let unclaimed = record.unclaimed();
        if !idle
            || remainder == 0
            || Some(record.config.receiverAuthorizer) != ours
            || (policy.only_when_claimed && unclaimed > 0)
        {
            continue;
        }
        match refund_record(ledger, store, client, &record).await {
            Ok(Some(done)) => out.push(Ok(done)),
            Ok(None) => {}
            Err(e) => out.push(Err((id, e))),
        }
    }
    out
}

/// Why [`refund_channel`] refunded nothing.
#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    /// The ledger does not know the channel.
    #[error("no such channel")]
    UnknownChannel,
    /// The channel names another receiver authorizer: we cannot sign its refund.
    #[error("the channel's receiver authorizer is not our key")]
    NotOurs,
    /// Nothing left to refund (`balance == charged`).
    #[error("nothing to refund: the balance is all charged")]
    NothingToRefund,
    /// A request holds the channel (here or, over a shared store, on another instance), or
    /// the channel moved while it was fenced: try again.
    #[error("the channel is busy; try again")]
    Busy,
    /// This instance may not act on chain now (it is not the settler).
    #[error("{0}")]
    NotNow(&'static str),
    /// The refund transaction failed; the fence was lifted, nothing changed.
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// Refunds channel `id`'s remainder (`balance - charged`) to its payer now, whatever its
/// idle time, with the same fence, shared-store hold and clean-up as [`refund_idle`]; the
/// channel's unclaimed charge is claimed in the same transaction.
pub async fn refund_channel<S: Store + ?Sized>(
    ledger: &Ledger,
    store: &S,
    client: &EscrowClient,
    id: ChannelId,
) -> Result<Refunded, RefundError> {
    let record = ledger.record(&id).ok_or(RefundError::UnknownChannel)?;
    if Some(record.config.receiverAuthorizer) != client.receiver_authorizer() {
        return Err(RefundError::NotOurs);
    }
    if record.onchain.balance.saturating_sub(record.charged) == 0 {
        return Err(RefundError::NothingToRefund);
    }
    refund_record(ledger, store, client, &record)
        .await?
        .ok_or(RefundError::Busy)
}

/// Fences, refunds and cleans up one channel (`record` as copied before); `None` when it was
/// left alone (held, moved, or nothing left once fenced).
async fn refund_record<S: Store + ?Sized>(
    ledger: &Ledger,
    store: &S,
    client: &EscrowClient,
    record: &ChannelRecord,
) -> Result<Option<Refunded>, ChainError> {
    let id = record.channel_id;
    // Fence: with balance == charged, every new voucher exceeds the balance.
    let fenced = OnchainState {
        balance: record.charged.max(record.onchain.total_claimed),
        ..record.onchain
    };
    if ledger
        .refresh(&id, fenced, record.onchain_synced_at)
        .is_err()
        || ledger.is_held(&id)
    {
        let _ = ledger.refresh(&id, record.onchain, record.onchain_synced_at);
        return Ok(None);
    }
    // The record may have moved between the copy and the fence: use the fenced state.
    let Some(current) = ledger.record(&id) else {
        return Ok(None);
    };
    // Over a shared store, other instances serve this channel too: hold it in the
    // database at the version refunded against, or leave it for the next round. The
    // hold lasts until the refund's outcome is written (no instance may serve on the
    // balance from before the refund).
    if store.is_shared()
        && !matches!(
            store
                .hold(id, (current.version != 0).then_some(current.version))
                .await,
            Ok(Hold::Held)
        )
    {
        let _ = ledger.refresh(&id, record.onchain, record.onchain_synced_at);
        return Ok(None);
    }
    let claim = Claimable::of(&current);
    let remainder = record.onchain.balance.saturating_sub(current.charged);
    if remainder == 0 {
        let _ = ledger.refresh(&id, record.onchain, record.onchain_synced_at);
        return Ok(None);
    }
    match client
        .refund(&current.config, remainder, claim.as_ref())
        .await
    {
        Ok(done) => {
            let _ = ledger.refresh(&id, done.state, unix_now());
            let claimed = claim
                .as_ref()
                .map_or(0, |c| c.claim_total.saturating_sub(c.onchain_total_claimed));
            tracing::info!(channel = %id, refunded = done.refunded, claimed, tx = %done.tx_hash, "channel refunded");
            if done.state.balance == done.state.total_claimed
                && let Ok(removed) = ledger.remove(&id)
                && removed.version != 0
            {
                if let Err(e) = store.remove(id, removed.version).await {
                    tracing::warn!(channel = %id, error = %e, "store removal after refund failed");
                }
            } else if store.is_shared() {
                // The new balance reaches the other instances with this write; only
                // then may they serve the channel again.
                super::shared::publish_one(store, ledger, id).await;
                store.release(id);
            }
            Ok(Some(Refunded {
                channel_id: id,
                amount: done.refunded,
                claimed,
                tx_hash: done.tx_hash,
            }))
        }
        Err(e) => {
            // Unfence: the mirror goes back to what chain said before.
            let _ = ledger.refresh(&id, record.onchain, record.onchain_synced_at);
            store.release(id);
            tracing::warn!(channel = %id, error = %e, reason = %e.reason(), "refund failed");
            Err(e)
        }
    }
}
