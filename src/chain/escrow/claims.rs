//! Claims and settlement: `claimWithSignature` batches signed by our receiver-authorizer
//! key, and `settle`, the sweep of claimed funds to the receiver.

use alloy::rpc::types::TransactionReceipt;
use alloy_primitives::{Address, B256, Bytes};
use alloy_sol_types::{SolCall, SolEvent};

use super::{ChainError, EscrowClient, Op};
use crate::chain::bindings::{IUptoEscrow, UptoEscrow};
use crate::ledger::Claimable;
use crate::typed_data::{ChannelId, ClaimEntry, sign_claim_batch};

/// A mined `claimWithSignature`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimOutcome {
    /// Mined transaction.
    pub tx_hash: B256,
    /// Gas it used.
    pub gas_used: u64,
    /// Rows submitted.
    pub rows: usize,
    /// `(channel, newTotalClaimed)` for every row that raised its channel's total (from the
    /// `Claimed` events; rows already at or below on-chain `totalClaimed` emit nothing).
    pub claimed: Vec<(ChannelId, u128)>,
    /// Block it was mined in.
    pub block: Option<u64>,
}

/// A `settle` (sweep to the receiver).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettleOutcome {
    /// Mined transaction; `None` when nothing was left to sweep (no transaction sent).
    pub tx_hash: Option<B256>,
    /// Amount transferred to the receiver.
    pub amount: u128,
    /// Gas used (0 when nothing was sent).
    pub gas_used: u64,
}

impl EscrowClient {
    /// Claims `rows` in one `claimWithSignature`, with a `ClaimBatch` signed by our
    /// receiver-authorizer key. Each row claims `claim_total` (= charged), never the
    /// voucher ceiling. Rows at or below on-chain `totalClaimed` are no-ops on chain.
    pub async fn claim(&self, rows: &[Claimable]) -> Result<ClaimOutcome, ChainError> {
        let (signed, sig) = self.sign_claim(rows)?;
        let call = UptoEscrow::claimWithSignatureCall {
            voucherClaims: signed,
            authorizerSignature: sig,
        };
        let (tx_hash, receipt) = self.send(Op::Claim, call.abi_encode(), "claim").await?;
        let claimed = claimed_events(&receipt);
        tracing::info!(rows = rows.len(), raised = claimed.len(), gas = receipt.gas_used, tx = %tx_hash, "claim batch mined");
        Ok(ClaimOutcome {
            tx_hash,
            gas_used: receipt.gas_used,
            rows: rows.len(),
            claimed,
            block: receipt.block_number,
        })
    }

    /// Sweeps what `receiver` has claimed in `token` but not yet received. Reads
    /// `receivers(receiver, token)` first and sends nothing when there is nothing to sweep.
    pub async fn settle(
        &self,
        receiver: Address,
        token: Address,
    ) -> Result<SettleOutcome, ChainError> {
        let pending = self.unsettled(receiver, token).await?;
        if pending == 0 {
            return Ok(SettleOutcome {
                tx_hash: None,
                amount: 0,
                gas_used: 0,
            });
        }
        let call = UptoEscrow::settleCall { receiver, token };
        let (tx_hash, receipt) = self.send(Op::Settle, call.abi_encode(), "settle").await?;
        let amount = self
            .events::<UptoEscrow::Settled>(&receipt)
            .map(|e| e.amount)
            .sum();
        tracing::info!(%receiver, %token, amount, tx = %tx_hash, "settle mined");
        Ok(SettleOutcome {
            tx_hash: Some(tx_hash),
            amount,
            gas_used: receipt.gas_used,
        })
    }

    /// Claim rows plus our `ClaimBatch` signature. Every row must name our key as
    /// `receiverAuthorizer`: the contract checks the batch signature against row 0's only.
    pub(super) fn sign_claim(
        &self,
        rows: &[Claimable],
    ) -> Result<(Vec<IUptoEscrow::VoucherClaim>, Bytes), ChainError> {
        let first = rows.first().ok_or(ChainError::EmptyBatch)?;
        let signer = self.signer_for(first.config.receiverAuthorizer)?;
        if let Some(bad) = rows
            .iter()
            .find(|r| r.config.receiverAuthorizer != signer.address())
        {
            return Err(ChainError::AuthorizerMismatch {
                expected: bad.config.receiverAuthorizer,
                ours: Some(signer.address()),
            });
        }
        let entries: Vec<ClaimEntry> = rows.iter().map(Claimable::entry).collect();
        let sig = sign_claim_batch(signer, &self.domain, &entries)?;
        let signed = rows.iter().map(IUptoEscrow::VoucherClaim::from).collect();
        Ok((signed, Bytes::copy_from_slice(&sig.as_bytes())))
    }
}

/// `(channel, newTotalClaimed)` of every `Claimed` event in `receipt`.
pub fn claimed_events(receipt: &TransactionReceipt) -> Vec<(ChannelId, u128)> {
    receipt
        .inner
        .logs()
        .iter()
        .filter_map(|log| UptoEscrow::Claimed::decode_log(&log.inner).ok())
        .map(|e| (ChannelId(e.data.channelId), e.data.newTotalClaimed))
        .collect()
}
