//! The voucher flow: the channel is known (or read from chain), fresh enough, the voucher's
//! signature holds under the channel's rule, and the ledger reserves the channel.

use alloy_primitives::{Address, B256};

use super::chain::ChainErc1271;
use super::decode::Checked;
use super::{Authorized, Engine, now};
use crate::ledger::{Detail, Reject};
use crate::reason::Reason;
use crate::store::Store;
use crate::typed_data::{ChannelConfig, ChannelId};
use crate::verify::{SignatureFault, SignedVoucher, VerifiedVoucher, VoucherError, VoucherSigner};
use crate::wire::VoucherFields;

impl<S: Store + 'static> Engine<S> {
    pub(super) async fn voucher(
        &self,
        checked: Checked,
        price: u128,
    ) -> Result<Authorized, Reject> {
        self.ensure_known(&checked).await?;
        let id = checked.channel_id;
        if self.stale(&id) {
            return Err(Self::stale_reject(id));
        }
        if self.inner.store.is_shared() {
            return self.shared_voucher(checked, price).await;
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
                    .verify_erc1271(VoucherSigner::of(&checked.config), voucher)
                    .await?;
                self.inner.ledger.reserve(verified, price)?
            }
            Err(r) => return Err(r),
        };
        self.hold(reservation, None).await
    }

    /// The voucher flow over a shared store, where the ledger is a cache: a voucher the cache
    /// refuses in a way a newer state could explain (the client saw a higher charge, a
    /// top-up or a claim made through another instance) is checked once more against the
    /// stored record. A replayed voucher (below the cached charge) never costs a read.
    async fn shared_voucher(&self, checked: Checked, price: u128) -> Result<Authorized, Reject> {
        let id = checked.channel_id;
        if self.inner.ledger.is_held(&id) {
            return Err(Reject::busy(id));
        }
        let verified = self
            .verify_signature(&checked.config, checked.payload.voucher(), id)
            .await?;
        let reservation = match self.inner.ledger.reserve(verified.clone(), price) {
            Ok(reservation) => reservation,
            Err(r) if maybe_stale(&r) => {
                if !self.reload(id, "voucher").await? {
                    return Err(r);
                }
                self.inner.ledger.reserve(verified, price)?
            }
            Err(r) => return Err(r),
        };
        self.hold(reservation, None).await
    }

    /// Makes sure the ledger knows the channel, reading it from chain if it can.
    pub(super) async fn ensure_known(&self, checked: &Checked) -> Result<(), Reject> {
        let id = checked.channel_id;
        if self.inner.ledger.snapshot(&id).is_some() {
            return Ok(());
        }
        // Another instance may have served it: the shared store knows before the chain does.
        if self.inner.store.is_shared() && self.reload(id, "unknown").await? {
            return Ok(());
        }
        let Some(chain) = &self.inner.chain else {
            return Err(Reject::missing(id));
        };
        // Anyone can name a channel we do not know: the read is rate-limited, coalesced and
        // negatively cached (`ColdReadLimits`).
        let state = self
            .inner
            .cold
            .read(chain.as_ref(), id, true)
            .await
            .map_err(|f| Self::chain_reject(id, f))?;
        if state.balance == 0 {
            return Err(Reject::new(Reason::ChannelNotFound, Some(id)));
        }
        self.inner
            .ledger
            .upsert_from_chain(checked.config.clone(), state, now());
        Ok(())
    }

    /// Whether `id`'s mirror is too old to serve on. The common case (the watcher polled
    /// recently) costs two atomic loads; only then is the channel's own last read looked up.
    pub(super) fn stale(&self, id: &ChannelId) -> bool {
        let Some(f) = self.inner.freshness.get() else {
            return false;
        };
        let now = now();
        if now.saturating_sub(f.last_poll()) <= f.max_age().as_secs() {
            return false;
        }
        !f.is_fresh(&self.inner.ledger, id, now)
    }

    /// The rejection of a channel whose mirror is too old ([`Self::stale`]).
    pub(super) fn stale_reject(id: ChannelId) -> Reject {
        Self::chain_reject(
            id,
            super::ChainAccessError {
                reason: Reason::RpcReadFailed,
                message:
                    "this channel's on-chain state could not be refreshed recently; retry later"
                        .into(),
            },
        )
    }

    /// The voucher's signature under the channel's rule: ECDSA in memory, or ERC-1271
    /// through the chain for a smart-wallet payer (`payerAuthorizer == 0`).
    pub(super) async fn verify_signature(
        &self,
        config: &ChannelConfig,
        voucher: &VoucherFields,
        id: ChannelId,
    ) -> Result<VerifiedVoucher, Reject> {
        match VoucherSigner::of(config) {
            VoucherSigner::Ecdsa(authorizer) => signed(voucher, id)
                .verify_ecdsa(self.domain(), authorizer)
                .map_err(|fault| Reject::signature(Some(id), fault)),
            signer @ VoucherSigner::Erc1271(_) => {
                self.verify_erc1271(signer, signed(voucher, id)).await
            }
        }
    }

    /// ERC-1271 verification (`SignedVoucher::verify`: the wallet's own ECDSA signature
    /// first, then `isValidSignature` through [`super::ChainAccess`]). A bad signature is
    /// `voucher_signature`; a wallet that could not be asked is `rpc_read_failed` (not the
    /// client's fault, retry later). Without chain access only the ECDSA form can pass.
    async fn verify_erc1271(
        &self,
        signer: VoucherSigner,
        voucher: SignedVoucher,
    ) -> Result<VerifiedVoucher, Reject> {
        let id = voucher.channel_id;
        let Some(chain) = &self.inner.chain else {
            return voucher
                .verify(self.domain(), signer, &NoErc1271)
                .await
                .map_err(|_| {
                    Reject::with(Reason::VoucherSignature, Some(id), Detail::Erc1271Required)
                });
        };
        if self.inner.cold.wallet_backing_off(&id) {
            let failure = super::ChainAccessError {
                reason: Reason::RpcReadFailed,
                message: "this channel's wallet refused a voucher just now; retry shortly".into(),
            };
            return Err(Self::chain_reject(id, failure));
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
                Err(Reject::signature(Some(id), fault))
            }
            Err(VoucherError::Checker(e)) => {
                let failure = super::ChainAccessError {
                    reason: Reason::RpcReadFailed,
                    message: format!("{e}: {}", e.source),
                };
                Err(Self::chain_reject(id, failure))
            }
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

/// Whether a refusal could come from a cache behind the shared store: the voucher is ahead
/// of the cached charge, above the cached balance, or not above the cached claimed total.
fn maybe_stale(r: &Reject) -> bool {
    match &r.detail {
        Detail::CumulativeMismatch(m) => m.got > m.expected,
        Detail::ExceedsBalance { .. } | Detail::BelowClaimed { .. } => true,
        _ => false,
    }
}

fn signed(v: &VoucherFields, id: ChannelId) -> SignedVoucher {
    SignedVoucher {
        channel_id: id,
        max_claimable: v.max_claimable_amount,
        signature: v.signature.clone(),
    }
}
