//! Why an escrow read or write failed, and the x402 reason code each failure maps to.

use std::time::Duration;

use alloy::transports::{RpcError, TransportErrorKind};
use alloy_primitives::{Address, B256};

use crate::chain::tx::TxError;
use crate::reason::Reason;
use crate::typed_data::SigningError;

/// Which escrow operation failed (selects the spec reason code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `deposit` through the collector.
    Deposit,
    /// `claimWithSignature`.
    Claim,
    /// `settle`.
    Settle,
    /// `refundWithSignature` (possibly after a claim in one `multicall`).
    Refund,
}

impl Op {
    const fn simulation(self) -> Reason {
        match self {
            Self::Deposit => Reason::DepositSimulationFailed,
            Self::Claim => Reason::ClaimSimulationFailed,
            Self::Settle => Reason::SettleSimulationFailed,
            Self::Refund => Reason::RefundSimulationFailed,
        }
    }

    const fn transaction(self) -> Reason {
        match self {
            Self::Deposit => Reason::DepositTransactionFailed,
            Self::Claim => Reason::ClaimTransactionFailed,
            Self::Settle => Reason::SettleTransactionFailed,
            Self::Refund => Reason::RefundTransactionFailed,
        }
    }
}

/// An escrow read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A view call failed (transport or revert).
    #[error("escrow read {call} failed")]
    Read {
        /// Which read.
        call: &'static str,
        /// The RPC error.
        #[source]
        source: RpcError<TransportErrorKind>,
    },
    /// A view call returned data that does not decode.
    #[error("escrow read {call} returned undecodable data")]
    Decode {
        /// Which read.
        call: &'static str,
        /// Decoder error.
        #[source]
        source: alloy_sol_types::Error,
    },
    /// Sending `op` failed; see [`TxError`] for the stage (estimate, broadcast, revert,
    /// timeout). After a timeout a version may still be mined: re-read chain state.
    #[error("escrow {op:?} failed")]
    Tx {
        /// Operation.
        op: Op,
        /// Cause.
        #[source]
        source: Box<TxError>,
    },
    /// The client has no receiver-authorizer key, or a row's channel names another
    /// `receiverAuthorizer` (a relayed batch is checked against row 0's only).
    #[error(
        "receiver authorizer mismatch: channel expects {expected}, this server signs as {ours:?}"
    )]
    AuthorizerMismatch {
        /// The channel's `receiverAuthorizer`.
        expected: Address,
        /// Our key's address, if any.
        ours: Option<Address>,
    },
    /// A claim with no rows.
    #[error("claim batch is empty")]
    EmptyBatch,
    /// A refund of zero.
    #[error("refund amount must be positive")]
    ZeroRefund,
    /// Signing a claim batch or a refund failed.
    #[error("signing failed")]
    Signing(#[from] SigningError),
    /// A mined deposit left the chain (reorg) and was not mined again in time, or was mined
    /// again and reverted. Nothing was credited.
    #[error("deposit {tx} was dropped by a reorg: {what}")]
    DepositReorged {
        /// The deposit transaction.
        tx: B256,
        /// What became of it.
        what: String,
    },
    /// A mined deposit did not reach its confirmations in time. Nothing was credited (it
    /// may still be confirmed later: the funds stay in the payer's channel).
    #[error("deposit {tx} had {have} of {want} confirmations after {waited:?}")]
    DepositUnconfirmed {
        /// The deposit transaction.
        tx: B256,
        /// Confirmations reached.
        have: u64,
        /// Confirmations required.
        want: u64,
        /// Time waited.
        waited: Duration,
    },
}

impl ChainError {
    /// The x402 reason code for this failure.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Read { .. } | Self::Decode { .. } => Reason::RpcReadFailed,
            Self::Tx { op, source } => match source.as_ref() {
                TxError::Estimate { .. } => op.simulation(),
                TxError::Timeout { .. } => Reason::WaitForReceiptFailed,
                TxError::Reverted { .. } | TxError::Rpc { .. } | TxError::Sign { .. } => {
                    op.transaction()
                }
            },
            Self::AuthorizerMismatch { .. } => Reason::ReceiverAuthorizerMismatch,
            Self::EmptyBatch => Reason::ClaimPayload,
            Self::ZeroRefund => Reason::RefundAmountInvalid,
            Self::Signing(_) => Reason::UnexpectedSettleError,
            Self::DepositReorged { .. } => Reason::DepositTransactionFailed,
            Self::DepositUnconfirmed { .. } => Reason::WaitForReceiptFailed,
        }
    }

    /// True when the node could not be reached at all (connection refused or dropped, no
    /// HTTP answer) and nothing was broadcast: retry later, the request itself is fine.
    pub fn unreachable(&self) -> bool {
        let transport = |e: &RpcError<TransportErrorKind>| matches!(e, RpcError::Transport(_));
        match self {
            Self::Read { source, .. } => transport(source),
            Self::Tx { source, .. } => match source.as_ref() {
                TxError::Estimate { source, .. } => transport(source),
                TxError::Rpc { source, call, .. } => {
                    *call != "eth_getTransactionReceipt" && transport(source)
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// True when the failure says nothing about the chain's state having changed (the
    /// transaction was never broadcast), so a retry cannot double anything.
    pub fn nothing_sent(&self) -> bool {
        match self {
            Self::Tx { source, .. } => matches!(
                source.as_ref(),
                TxError::Estimate { .. } | TxError::Sign { .. }
            ),
            Self::DepositReorged { .. } | Self::DepositUnconfirmed { .. } => false,
            _ => true,
        }
    }
}
