//! Cooperative refunds, authorised by our receiver-authorizer key (optionally after a
//! claim of what is charged, in the same transaction).

use alloy_primitives::{B256, Bytes};
use alloy_sol_types::SolCall;

use super::{ChainError, EscrowClient, Op};
use crate::chain::bindings::UptoEscrow;
use crate::ledger::{Claimable, OnchainState};
use crate::typed_data::{ChannelConfig, sign_refund};

/// A mined cooperative refund.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundOutcome {
    /// Mined transaction.
    pub tx_hash: B256,
    /// Amount returned to the payer (capped by the contract at `balance - totalClaimed`).
    pub refunded: u128,
    /// Channel state read right after it was mined.
    pub state: OnchainState,
}

impl EscrowClient {
    /// Cooperative refund of up to `amount` to the payer with a receiver-authorizer-signed
    /// `Refund` at the current `refundNonce`. With `claim`, the charged amount is claimed
    /// first in the same transaction (`multicall([claimWithSignature, refundWithSignature])`),
    /// so the refund cannot return money the payer owes.
    pub async fn refund(
        &self,
        config: &ChannelConfig,
        amount: u128,
        claim: Option<&Claimable>,
    ) -> Result<RefundOutcome, ChainError> {
        if amount == 0 {
            return Err(ChainError::ZeroRefund);
        }
        let id = self.domain.channel_id(config);
        let signer = self.signer_for(config.receiverAuthorizer)?;
        let nonce = self
            .read(
                UptoEscrow::refundNonceCall { channelId: id.0 },
                "refundNonce",
            )
            .await?;
        let sig = sign_refund(signer, &self.domain, id, nonce, amount)?;
        let refund = UptoEscrow::refundWithSignatureCall {
            config: config.into(),
            amount,
            nonce,
            receiverAuthorizerSignature: Bytes::copy_from_slice(&sig.as_bytes()),
        }
        .abi_encode();
        let input = match claim {
            None => refund,
            Some(row) => {
                let (signed, sig) = self.sign_claim(std::slice::from_ref(row))?;
                let claim = UptoEscrow::claimWithSignatureCall {
                    voucherClaims: signed,
                    authorizerSignature: sig,
                }
                .abi_encode();
                UptoEscrow::multicallCall {
                    data: vec![claim.into(), refund.into()],
                }
                .abi_encode()
            }
        };
        let (tx_hash, receipt) = self.send(Op::Refund, input, "refund").await?;
        let refunded = self
            .events::<UptoEscrow::Refunded>(&receipt)
            .filter(|e| e.channelId == id.0)
            .map(|e| e.amount)
            .sum();
        tracing::info!(channel = %id, refunded, tx = %tx_hash, "refund mined");
        let state = self.channel_state(id).await?;
        Ok(RefundOutcome {
            tx_hash,
            refunded,
            state,
        })
    }
}
