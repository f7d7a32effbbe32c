//! One channel's state as data: the record the store persists, its on-chain mirror, the
//! views handed out ([`ChannelSnapshot`], [`LastVoucher`], [`Claimable`]).
//!
//! Field names follow the spec's per-channel state table. The voucher rules over this data
//! are in `rules.rs`.

use alloy_primitives::{Address, Bytes, U256};

use crate::typed_data::{ChannelConfig, ChannelId, ClaimEntry};
use crate::verify::VoucherSigner;

/// Mirrored on-chain fields, as read from `channels(id)`, `pendingWithdrawals(id)` and
/// `refundNonce(id)` (or a facilitator's `channelState`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OnchainState {
    /// `balance`: deposited minus withdrawn and refunded.
    pub balance: u128,
    /// `totalClaimed`: cumulative amount claimed by the receiver side.
    pub total_claimed: u128,
    /// `withdrawRequestedAt`: timed withdrawal start, 0 if none.
    pub withdraw_requested_at: u64,
    /// `refundNonce`: next nonce for `refundWithSignature`.
    pub refund_nonce: U256,
}

/// Everything the server keeps for a channel; this is what the store persists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelRecord {
    /// `keccak`-EIP-712 id of `config`.
    pub channel_id: ChannelId,
    /// Immutable channel parameters.
    pub config: ChannelConfig,
    /// `chargedCumulativeAmount`: sum of actual charges; the most the server may claim.
    pub charged: u128,
    /// `signedMaxClaimable` of the latest voucher (equals `charged` when there is none).
    pub signed_max_claimable: u128,
    /// Signature of the latest voucher; empty when there is none yet.
    pub signature: Bytes,
    /// Mirrored on-chain state.
    pub onchain: OnchainState,
    /// `onchainSyncedAt`: when `onchain` was last refreshed (unix seconds).
    pub onchain_synced_at: u64,
    /// `lastRequestTimestamp`: last paid request (unix seconds).
    pub last_request_at: u64,
    /// Bumped by every durable write; the store's compare-and-set key. 0 = never persisted.
    pub version: u64,
    /// Client-requested refunds on this channel (not in the spec's table: the server's own
    /// guard against replayed refund headers and refund spam; see [`RefundMarks`]).
    pub refunds: RefundMarks,
}

/// What the server remembers of the cooperative refunds it executed on request.
///
/// A refund payload's `amount` is not signed; only its zero-charge voucher is, at the
/// channel's cumulative `charged`. So a voucher at cumulative `X` is spent once a refund was
/// executed with it: anyone holding the header could otherwise replay it (with any amount)
/// and empty the channel one relayer-paid transaction at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefundMarks {
    /// `charged` when the last refund was executed (`None`: never). A refund voucher at this
    /// cumulative is refused; a paid request in between moves `charged` and frees the payer
    /// to ask again.
    pub refunded_at: Option<u128>,
    /// Start (unix seconds) of the current rate window.
    pub window_start: u64,
    /// Refunds executed in the current rate window.
    pub window_count: u32,
}

impl RefundMarks {
    /// Whether another refund fits `max` per `window` seconds at `now`; when not, the unix
    /// second from which it will.
    pub fn next_allowed(&self, now: u64, max: u32, window: u64) -> Result<(), u64> {
        let open = now.saturating_sub(self.window_start) < window;
        if open && self.window_count >= max {
            Err(self.window_start.saturating_add(window))
        } else {
            Ok(())
        }
    }

    /// Records a refund executed at cumulative `charged` at `now`.
    pub fn record(&mut self, charged: u128, now: u64, window: u64) {
        self.refunded_at = Some(charged);
        if now.saturating_sub(self.window_start) < window {
            self.window_count = self.window_count.saturating_add(1);
        } else {
            self.window_start = now;
            self.window_count = 1;
        }
    }
}

/// The `channelState` object of `PAYMENT-RESPONSE` and of the corrective 402.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelSnapshot {
    /// Channel id.
    pub channel_id: ChannelId,
    /// Mirrored `balance`.
    pub balance: u128,
    /// Mirrored `totalClaimed`.
    pub total_claimed: u128,
    /// Mirrored `withdrawRequestedAt`.
    pub withdraw_requested_at: u64,
    /// Mirrored `refundNonce`.
    pub refund_nonce: U256,
    /// `chargedCumulativeAmount`.
    pub charged: u128,
}

/// The latest voucher the server holds for a channel (`voucherState` of the corrective 402).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastVoucher {
    /// `signedMaxClaimable`.
    pub signed_max_claimable: u128,
    /// The client's signature over it (canonical: v = 27/28 for ECDSA).
    pub signature: Bytes,
}

impl ChannelRecord {
    /// A channel first seen on chain. The charged baseline is on-chain `totalClaimed`
    /// (spec: "Server state loss"); there is no voucher yet.
    pub fn from_chain(
        channel_id: ChannelId,
        config: ChannelConfig,
        onchain: OnchainState,
        now: u64,
    ) -> Self {
        Self {
            channel_id,
            config,
            charged: onchain.total_claimed,
            signed_max_claimable: onchain.total_claimed,
            signature: Bytes::new(),
            onchain,
            onchain_synced_at: now,
            last_request_at: 0,
            version: 0,
            refunds: RefundMarks::default(),
        }
    }

    /// The `channelState` view.
    pub fn snapshot(&self) -> ChannelSnapshot {
        ChannelSnapshot {
            channel_id: self.channel_id,
            balance: self.onchain.balance,
            total_claimed: self.onchain.total_claimed,
            withdraw_requested_at: self.onchain.withdraw_requested_at,
            refund_nonce: self.onchain.refund_nonce,
            charged: self.charged,
        }
    }

    /// The latest voucher, if one was accepted.
    pub fn last_voucher(&self) -> Option<LastVoucher> {
        (!self.signature.is_empty()).then(|| LastVoucher {
            signed_max_claimable: self.signed_max_claimable,
            signature: self.signature.clone(),
        })
    }

    /// Who must sign this channel's vouchers.
    pub fn signer(&self) -> VoucherSigner {
        VoucherSigner::of(&self.config)
    }

    /// The payer (`config.payer`).
    pub fn payer(&self) -> Address {
        self.config.payer
    }

    /// Charged but not yet claimed on chain: what a claim would add.
    pub fn unclaimed(&self) -> u128 {
        self.charged.saturating_sub(self.onchain.total_claimed)
    }

    /// Copies fresh on-chain state in.
    pub(crate) fn mirror(&mut self, onchain: OnchainState, now: u64) {
        self.onchain = onchain;
        self.onchain_synced_at = now;
    }

    /// Copies in a read that may be older than what we already know (the watcher reads
    /// confirmed blocks, behind the head where our own claims land). `totalClaimed` and
    /// `refundNonce` only ever grow on chain, so such a read never lowers them: a lower
    /// value is stale, and mirroring it would make charged value look unclaimed again and
    /// send a claim that raises nothing. A reorg that really drops a claim is corrected by
    /// the authoritative reads ([`Self::mirror`]: journal reconciliation, `sync_all`).
    pub(crate) fn mirror_monotonic(&mut self, mut onchain: OnchainState, now: u64) {
        onchain.total_claimed = onchain.total_claimed.max(self.onchain.total_claimed);
        onchain.refund_nonce = onchain.refund_nonce.max(self.onchain.refund_nonce);
        self.mirror(onchain, now);
    }

    /// If more was claimed on chain than we charged (state lost, restored from an old
    /// backup, or another writer), adopt `totalClaimed` as the baseline as the spec's
    /// recovery rule says; the stored voucher is superseded. Returns whether it rebased.
    pub(crate) fn rebase_if_claimed_beyond(&mut self) -> bool {
        if self.onchain.total_claimed <= self.charged {
            return false;
        }
        tracing::warn!(
            channel = %self.channel_id,
            charged = self.charged,
            total_claimed = self.onchain.total_claimed,
            "on-chain totalClaimed is above the charged amount; rebasing"
        );
        self.charged = self.onchain.total_claimed;
        self.signed_max_claimable = self.charged;
        self.signature = Bytes::new();
        true
    }
}

/// One channel ready to be claimed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimable {
    /// Channel id.
    pub channel_id: ChannelId,
    /// Channel config (the contract takes the config, not the id).
    pub config: ChannelConfig,
    /// Voucher ceiling (`maxClaimableAmount`).
    pub max_claimable: u128,
    /// Voucher signature.
    pub signature: Bytes,
    /// The `totalClaimed` to claim: `charged`, never the ceiling.
    pub claim_total: u128,
    /// Mirrored on-chain `totalClaimed` (the claim adds `claim_total - this`).
    pub onchain_total_claimed: u128,
    /// Mirrored `withdrawRequestedAt`: non-zero means claim before the delay runs out.
    pub withdraw_requested_at: u64,
}

impl Claimable {
    pub(crate) fn of(record: &ChannelRecord) -> Option<Self> {
        let has_value = record.charged > record.onchain.total_claimed;
        let covered = record.signed_max_claimable >= record.charged;
        (has_value && covered && !record.signature.is_empty()).then(|| Self {
            channel_id: record.channel_id,
            config: record.config.clone(),
            max_claimable: record.signed_max_claimable,
            signature: record.signature.clone(),
            claim_total: record.charged,
            onchain_total_claimed: record.onchain.total_claimed,
            withdraw_requested_at: record.onchain.withdraw_requested_at,
        })
    }

    /// The `ClaimEntry` row of a `ClaimBatch` for this channel.
    pub fn entry(&self) -> ClaimEntry {
        ClaimEntry {
            channelId: self.channel_id.0,
            maxClaimableAmount: self.max_claimable,
            totalClaimed: self.claim_total,
        }
    }
}

#[cfg(test)]
impl ChannelRecord {
    /// A record with `charged` (and a matching ceiling, no voucher) over a mirror of
    /// `balance` and `total_claimed`, for the ledger's unit tests.
    pub(crate) fn for_test(charged: u128, balance: u128, total_claimed: u128) -> Self {
        let onchain = OnchainState {
            balance,
            total_claimed,
            ..Default::default()
        };
        let id = ChannelId(alloy_primitives::B256::repeat_byte(1));
        let mut r = Self::from_chain(id, ChannelConfig::default(), onchain, 0);
        r.charged = charged;
        r.signed_max_claimable = charged;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebases_when_more_was_claimed_than_charged() {
        let mut r = ChannelRecord::for_test(100, 1_000, 0);
        r.signature = Bytes::from_static(&[1; 65]);
        r.signed_max_claimable = 150;
        r.onchain.total_claimed = 120;
        assert!(r.rebase_if_claimed_beyond());
        assert_eq!(
            (r.charged, r.signed_max_claimable, r.last_voucher()),
            (120, 120, None)
        );
        assert!(!r.rebase_if_claimed_beyond());
    }
}
