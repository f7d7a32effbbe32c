//! What the engine needs from the chain, as a small object-safe trait.
//!
//! The engine is tested against an in-memory double; production wires the settlement
//! engineer's `EscrowClient` in through a thin adapter. Failures carry the spec's reason
//! (`…_deposit_simulation_failed`, `…_rpc_read_failed`, …) so the 402 says what went wrong.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use alloy_primitives::{Address, B256};

use crate::ledger::{Claimable, OnchainState};
use crate::reason::Reason;
use crate::typed_data::{ChannelConfig, ChannelId};
use crate::verify::{Erc1271Checker, Erc1271Error};
use crate::wire::Erc3009Authorization;

/// A boxed, sendable future (keeps [`ChainAccess`] object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A chain operation failed; nothing was applied to the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainFailure {
    /// Reason code for the 402.
    pub reason: Reason,
    /// What happened (logged, and sent as the human-readable message).
    pub message: String,
}

/// A confirmed deposit or refund.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainOutcome {
    /// The mined transaction.
    pub tx_hash: B256,
    /// Deposited or refunded amount.
    pub amount: u128,
    /// The channel's on-chain state after the transaction.
    pub state: OnchainState,
}

/// Chain access for the engine: reads, and the two transactions a client may ask for.
pub trait ChainAccess: Send + Sync + fmt::Debug + 'static {
    /// `channels(id)`, `pendingWithdrawals(id)`, `refundNonce(id)`.
    fn channel_state(&self, id: ChannelId) -> BoxFuture<'_, Result<OnchainState, ChainFailure>>;

    /// Submits the payer's ERC-3009 deposit through the collector and waits for the receipt.
    fn deposit<'a>(
        &'a self,
        config: &'a ChannelConfig,
        amount: u128,
        authorization: &'a Erc3009Authorization,
    ) -> BoxFuture<'a, Result<ChainOutcome, ChainFailure>>;

    /// Refunds `amount` to the payer (`refundWithSignature`), claiming `claim` in the same
    /// transaction when vouchers are outstanding, and waits for the receipt.
    fn refund<'a>(
        &'a self,
        config: &'a ChannelConfig,
        amount: u128,
        claim: Option<&'a Claimable>,
    ) -> BoxFuture<'a, Result<ChainOutcome, ChainFailure>>;

    /// ERC-1271 `isValidSignature(digest, signature)` on a smart-wallet payer: `Ok(true)`
    /// only for the magic value, `Ok(false)` for "not signed" (a revert, a wallet without
    /// code), `Err` when the wallet could not be asked. Only channels whose
    /// `payerAuthorizer` is zero get here; ECDSA channels never call it.
    ///
    /// The default cannot ask anyone, so an implementation without it refuses smart-wallet
    /// vouchers with `rpc_read_failed` rather than accepting them unchecked.
    fn is_valid_signature<'a>(
        &'a self,
        wallet: Address,
        digest: B256,
        signature: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, ChainFailure>> {
        let _ = (digest, signature);
        Box::pin(async move {
            Err(ChainFailure {
                reason: Reason::RpcReadFailed,
                message: format!("no ERC-1271 check available for wallet {wallet}"),
            })
        })
    }
}

/// [`ChainAccess`] as the verifier's [`Erc1271Checker`], so the engine runs the same
/// [`crate::verify::SignedVoucher::verify`] as the facilitator (including its ECDSA attempt
/// with the wallet address itself, which costs no RPC).
pub(crate) struct ChainErc1271<'a>(pub(crate) &'a dyn ChainAccess);

impl Erc1271Checker for ChainErc1271<'_> {
    async fn is_valid_signature(
        &self,
        wallet: Address,
        digest: B256,
        signature: &[u8],
    ) -> Result<bool, Erc1271Error> {
        self.0
            .is_valid_signature(wallet, digest, signature)
            .await
            .map_err(|f| Erc1271Error {
                wallet,
                source: f.message.into(),
            })
    }
}

/// The settlement engineer's escrow client, as the engine's chain access.
impl ChainAccess for crate::chain::escrow::EscrowClient {
    fn channel_state(&self, id: ChannelId) -> BoxFuture<'_, Result<OnchainState, ChainFailure>> {
        Box::pin(async move {
            crate::chain::escrow::EscrowClient::channel_state(self, id)
                .await
                .map_err(failure)
        })
    }

    fn deposit<'a>(
        &'a self,
        config: &'a ChannelConfig,
        amount: u128,
        authorization: &'a Erc3009Authorization,
    ) -> BoxFuture<'a, Result<ChainOutcome, ChainFailure>> {
        Box::pin(async move {
            let auth = crate::chain::escrow::Erc3009Deposit {
                valid_after: authorization.valid_after,
                valid_before: authorization.valid_before,
                salt: authorization.salt,
                signature: authorization.signature.clone(),
            };
            let out = self
                .deposit_erc3009(config, amount, &auth)
                .await
                .map_err(failure)?;
            Ok(ChainOutcome {
                tx_hash: out.tx_hash,
                amount,
                state: out.state,
            })
        })
    }

    fn refund<'a>(
        &'a self,
        config: &'a ChannelConfig,
        amount: u128,
        claim: Option<&'a Claimable>,
    ) -> BoxFuture<'a, Result<ChainOutcome, ChainFailure>> {
        Box::pin(async move {
            let out = crate::chain::escrow::EscrowClient::refund(self, config, amount, claim)
                .await
                .map_err(failure)?;
            Ok(ChainOutcome {
                tx_hash: out.tx_hash,
                amount: out.refunded,
                state: out.state,
            })
        })
    }

    fn is_valid_signature<'a>(
        &'a self,
        wallet: Address,
        digest: B256,
        signature: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, ChainFailure>> {
        Box::pin(async move {
            Erc1271Checker::is_valid_signature(self, wallet, digest, signature)
                .await
                .map_err(|e| ChainFailure {
                    reason: Reason::RpcReadFailed,
                    message: format!("{e}: {}", e.source).chars().take(500).collect(),
                })
        })
    }
}

fn failure(e: crate::chain::escrow::ChainError) -> ChainFailure {
    // The full cause chain, bounded: revert data can be long.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    ChainFailure {
        reason: e.reason(),
        message: message.chars().take(500).collect(),
    }
}
