//! [`EscrowClient`]: every read and write the server makes against the escrow.
//!
//! Reads go straight through the provider; every write goes through the shared
//! [`TxSender`] of the relaying key (one nonce sequence per key). Claims and refunds are
//! authorised by the receiver-authorizer key held here: the client signs the `ClaimBatch`
//! or `Refund` EIP-712 message and anyone (our relayer) submits it.
//!
//! The three channel reads (`channels`, `pendingWithdrawals`, `refundNonce`) are bundled in
//! one `eth_call` of the escrow's own `multicall`, so the mirror is read at a single block.

use std::sync::Arc;
use std::time::Duration;

use alloy::network::TransactionBuilder;
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::transports::{RpcError, TransportErrorKind};
use alloy_primitives::{Address, B256, Bytes, U256};
use alloy_sol_types::{SolCall, SolEvent};

use crate::chain::bindings::{IUptoEscrow, UptoEscrow};
use crate::chain::tx::{TxError, TxSender};
use crate::ledger::{Claimable, OnchainState};
use crate::reason::Reason;
use crate::typed_data::{
    ChannelConfig, ChannelId, ClaimEntry, EscrowDomain, SigningError, erc3009_collector_data,
    sign_claim_batch, sign_refund,
};
use crate::verify::{Erc1271Checker, Erc1271Error};

alloy::sol! {
    /// ERC-1271 (`isValidSignature` returns `0x1626ba7e` for a valid signature).
    interface IErc1271 {
        function isValidSignature(bytes32 hash, bytes signature) external view returns (bytes4);
    }
}

/// The ERC-1271 magic value.
const ERC1271_MAGIC: [u8; 4] = [0x16, 0x26, 0xba, 0x7e];

/// The ERC-3009 part of a deposit payload: the payer's `receiveWithAuthorization` to the
/// collector, whose nonce the collector derives from `(channelId, salt)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Erc3009Deposit {
    /// `validAfter` (unix seconds).
    pub valid_after: U256,
    /// `validBefore` (unix seconds).
    pub valid_before: U256,
    /// Salt of the ERC-3009 nonce `keccak256(abi.encode(channelId, salt))`.
    pub salt: B256,
    /// The payer's 65-byte signature under the token's EIP-712 domain.
    pub signature: Bytes,
}

/// How long a relayed deposit waits before it is credited: `blocks` confirmations on top
/// of the deposit's block (the watcher's convention, `WatcherConfig::confirmations`), within
/// `timeout`. A deposit dropped by a reorg meanwhile, and not mined again before the
/// timeout, is refused (`deposit_transaction_failed`); one still short of its confirmations
/// at the timeout is refused with `wait_for_receipt_failed`. Either way nothing is credited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DepositConfirmations {
    /// Blocks on top of the deposit's block (0: credited as soon as it is mined).
    pub blocks: u64,
    /// Longest wait for them (the paying request waits this long at most).
    pub timeout: Duration,
    /// How often the head and the receipt are polled meanwhile.
    pub poll: Duration,
}

impl Default for DepositConfirmations {
    /// No wait: the library's default (anvil tests mine only on transactions). `serve`
    /// reads its own default from `[deposits]`.
    fn default() -> Self {
        Self {
            blocks: 0,
            timeout: Duration::from_secs(20),
            poll: Duration::from_millis(500),
        }
    }
}

/// A mined deposit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepositOutcome {
    /// Mined transaction.
    pub tx_hash: B256,
    /// Channel state read right after it was mined.
    pub state: OnchainState,
}

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

/// Client of one escrow deployment.
#[derive(Clone, Debug)]
pub struct EscrowClient {
    provider: DynProvider,
    escrow: Address,
    collector: Address,
    sender: Arc<TxSender>,
    receiver_authorizer: Option<PrivateKeySigner>,
    domain: EscrowDomain,
    deposit_confirmations: DepositConfirmations,
}

impl EscrowClient {
    /// A client for `escrow` (deposits through `collector`), sending with `sender` and
    /// signing claims and refunds with `receiver_authorizer` (if this server holds it).
    pub fn new(
        provider: DynProvider,
        escrow: Address,
        collector: Address,
        sender: Arc<TxSender>,
        receiver_authorizer: Option<PrivateKeySigner>,
        domain: EscrowDomain,
    ) -> Self {
        Self {
            provider,
            escrow,
            collector,
            sender,
            receiver_authorizer,
            domain,
            deposit_confirmations: DepositConfirmations::default(),
        }
    }

    /// Deposits wait for `c` before they are credited (default: none).
    #[must_use]
    pub fn with_deposit_confirmations(mut self, c: DepositConfirmations) -> Self {
        self.deposit_confirmations = c;
        self
    }

    /// The deposit confirmation policy.
    pub const fn deposit_confirmations(&self) -> DepositConfirmations {
        self.deposit_confirmations
    }

    /// The escrow address.
    pub const fn escrow(&self) -> Address {
        self.escrow
    }

    /// The deposit collector address.
    pub const fn collector(&self) -> Address {
        self.collector
    }

    /// The escrow's EIP-712 domain.
    pub const fn domain(&self) -> &EscrowDomain {
        &self.domain
    }

    /// The read provider.
    pub const fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// The address claims and refunds are authorised by, if this client can sign them.
    pub fn receiver_authorizer(&self) -> Option<Address> {
        self.receiver_authorizer.as_ref().map(|s| s.address())
    }

    /// `balance`, `totalClaimed`, `withdrawRequestedAt` and `refundNonce` of `id`, read in
    /// one `eth_call` (so from one block) at the latest block.
    pub async fn channel_state(&self, id: ChannelId) -> Result<OnchainState, ChainError> {
        self.channel_state_at(id, None).await
    }

    /// Like [`Self::channel_state`], at block `block` (`None`: latest).
    pub async fn channel_state_at(
        &self,
        id: ChannelId,
        block: Option<u64>,
    ) -> Result<OnchainState, ChainError> {
        let calls = vec![
            Bytes::from(UptoEscrow::channelsCall { channelId: id.0 }.abi_encode()),
            Bytes::from(UptoEscrow::pendingWithdrawalsCall { channelId: id.0 }.abi_encode()),
            Bytes::from(UptoEscrow::refundNonceCall { channelId: id.0 }.abi_encode()),
        ];
        let input = UptoEscrow::multicallCall { data: calls }.abi_encode();
        let tx = TransactionRequest::default()
            .with_to(self.escrow)
            .with_input(input);
        let call = self.provider.call(tx);
        let raw = match block {
            Some(n) => call.block(n.into()).await,
            None => call.await,
        }
        .map_err(|source| ChainError::Read {
            call: "channel_state",
            source,
        })?;
        let decode = |source| ChainError::Decode {
            call: "channel_state",
            source,
        };
        let parts = UptoEscrow::multicallCall::abi_decode_returns(&raw).map_err(decode)?;
        let [channels, pending, nonce] = parts.as_slice() else {
            return Err(decode(alloy_sol_types::Error::Other(
                "multicall returned the wrong number of results".into(),
            )));
        };
        let channels = UptoEscrow::channelsCall::abi_decode_returns(channels).map_err(decode)?;
        let pending =
            UptoEscrow::pendingWithdrawalsCall::abi_decode_returns(pending).map_err(decode)?;
        let nonce = UptoEscrow::refundNonceCall::abi_decode_returns(nonce).map_err(decode)?;
        Ok(OnchainState {
            balance: channels.balance,
            total_claimed: channels.totalClaimed,
            withdraw_requested_at: pending.initiatedAt.to::<u64>(),
            refund_nonce: nonce,
        })
    }

    /// On-chain `totalClaimed` of every channel in `ids`, in order, read in one `eth_call`
    /// (the escrow's `multicall`) at the latest block. The claim scheduler reads it right
    /// before sending a batch, so a row that would raise nothing costs no gas.
    pub async fn totals_claimed(&self, ids: &[ChannelId]) -> Result<Vec<u128>, ChainError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let calls = ids
            .iter()
            .map(|id| Bytes::from(UptoEscrow::channelsCall { channelId: id.0 }.abi_encode()))
            .collect();
        let raw = self
            .provider
            .call(
                TransactionRequest::default()
                    .with_to(self.escrow)
                    .with_input(UptoEscrow::multicallCall { data: calls }.abi_encode()),
            )
            .await
            .map_err(|source| ChainError::Read {
                call: "totals_claimed",
                source,
            })?;
        let decode = |source| ChainError::Decode {
            call: "totals_claimed",
            source,
        };
        let parts = UptoEscrow::multicallCall::abi_decode_returns(&raw).map_err(decode)?;
        if parts.len() != ids.len() {
            return Err(decode(alloy_sol_types::Error::Other(
                "multicall returned the wrong number of results".into(),
            )));
        }
        parts
            .iter()
            .map(|p| {
                UptoEscrow::channelsCall::abi_decode_returns(p)
                    .map(|c| c.totalClaimed)
                    .map_err(decode)
            })
            .collect()
    }

    /// Opens or tops up `config`'s channel with `amount`, pulled from the payer by the
    /// ERC-3009 collector with the payer's signed authorization.
    pub async fn deposit_erc3009(
        &self,
        config: &ChannelConfig,
        amount: u128,
        auth: &Erc3009Deposit,
    ) -> Result<DepositOutcome, ChainError> {
        let data = erc3009_collector_data(
            auth.valid_after,
            auth.valid_before,
            auth.salt,
            &auth.signature,
        );
        let call = UptoEscrow::depositCall {
            config: config.into(),
            amount,
            collector: self.collector,
            collectorData: data,
        };
        let id = self.domain.channel_id(config);
        let (tx_hash, receipt) = self.send(Op::Deposit, call.abi_encode(), "deposit").await?;
        tracing::info!(channel = %id, amount, tx = %tx_hash, "deposit mined");
        let state = if self.deposit_confirmations.blocks == 0 {
            self.channel_state(id).await?
        } else {
            self.confirm_deposit(id, tx_hash, &receipt).await?
        };
        Ok(DepositOutcome { tx_hash, state })
    }

    /// Waits until the deposit `tx` has [`DepositConfirmations::blocks`] blocks on top of
    /// the block it is in *now* (a reorg may move it), then reads the channel: at the
    /// confirmed block, and at the head for what only lowers our exposure (a pending
    /// withdrawal, a refund, a claim). A deposit credited this way is confirmed as deep as
    /// configured; anything shallower is never credited.
    async fn confirm_deposit(
        &self,
        id: ChannelId,
        tx: B256,
        mined: &TransactionReceipt,
    ) -> Result<OnchainState, ChainError> {
        let c = self.deposit_confirmations;
        let start = tokio::time::Instant::now();
        let rpc = |call: &'static str| {
            move |source| {
                metrics::counter!(crate::telemetry::RPC_ERRORS, "call" => call).increment(1);
                ChainError::Read { call, source }
            }
        };
        let mut block = mined.block_number.unwrap_or_default();
        let mut have;
        let mut dropped = false;
        loop {
            let head = self
                .provider
                .get_block_number()
                .await
                .map_err(rpc("eth_blockNumber"))?;
            match self
                .provider
                .get_transaction_receipt(tx)
                .await
                .map_err(rpc("eth_getTransactionReceipt"))?
            {
                None => {
                    if !dropped {
                        tracing::warn!(channel = %id, %tx, "deposit dropped by a reorg; not credited");
                        // Our relayer's cached nonce is now ahead of the chain.
                        self.sender.forget_nonce().await;
                    }
                    dropped = true;
                    have = 0;
                }
                Some(r) if !r.status() => {
                    return Err(ChainError::DepositReorged {
                        tx,
                        what: "mined again after a reorg, and reverted".into(),
                    });
                }
                Some(r) => {
                    dropped = false;
                    block = r.block_number.unwrap_or(block);
                    have = head.saturating_sub(block);
                    if have >= c.blocks {
                        let safe = head - c.blocks;
                        let confirmed = self.channel_state_at(id, Some(safe)).await?;
                        let latest = self.channel_state(id).await?;
                        tracing::info!(channel = %id, %tx, block, confirmations = have, "deposit confirmed");
                        return Ok(conservative(confirmed, latest));
                    }
                }
            }
            let waited = start.elapsed();
            if waited >= c.timeout {
                return Err(if dropped {
                    ChainError::DepositReorged {
                        tx,
                        what: format!("not mined again within {waited:?}"),
                    }
                } else {
                    ChainError::DepositUnconfirmed {
                        tx,
                        have,
                        want: c.blocks,
                        waited,
                    }
                });
            }
            tokio::time::sleep(c.poll.min(c.timeout.saturating_sub(waited))).await;
        }
    }

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
        let amount = receipt
            .inner
            .logs()
            .iter()
            .filter(|log| log.address() == self.escrow)
            .filter_map(|log| UptoEscrow::Settled::decode_log_data(log.data()).ok())
            .map(|e| e.amount)
            .sum();
        tracing::info!(%receiver, %token, amount, tx = %tx_hash, "settle mined");
        Ok(SettleOutcome {
            tx_hash: Some(tx_hash),
            amount,
            gas_used: receipt.gas_used,
        })
    }

    /// Claimed but not yet swept for `(receiver, token)`.
    pub async fn unsettled(&self, receiver: Address, token: Address) -> Result<u128, ChainError> {
        let totals = self
            .read(UptoEscrow::receiversCall { receiver, token }, "receivers")
            .await?;
        Ok(totals.totalClaimed.saturating_sub(totals.totalSettled))
    }

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
        let refunded = receipt
            .inner
            .logs()
            .iter()
            .filter(|log| log.address() == self.escrow)
            .filter_map(|log| UptoEscrow::Refunded::decode_log_data(log.data()).ok())
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

    fn signer_for(&self, expected: Address) -> Result<&PrivateKeySigner, ChainError> {
        match &self.receiver_authorizer {
            Some(s) if s.address() == expected => Ok(s),
            other => Err(ChainError::AuthorizerMismatch {
                expected,
                ours: other.as_ref().map(|s| s.address()),
            }),
        }
    }

    /// Claim rows plus our `ClaimBatch` signature. Every row must name our key as
    /// `receiverAuthorizer`: the contract checks the batch signature against row 0's only.
    fn sign_claim(
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

    async fn send(
        &self,
        op: Op,
        input: Vec<u8>,
        label: &str,
    ) -> Result<(B256, TransactionReceipt), ChainError> {
        let tx = TransactionRequest::default()
            .with_to(self.escrow)
            .with_input(input);
        match self.sender.send(tx, label).await {
            Ok(sent) => Ok((sent.hash, sent.receipt)),
            Err(source) => {
                metrics::counter!(crate::telemetry::RPC_ERRORS, "call" => label.to_owned())
                    .increment(1);
                Err(ChainError::Tx {
                    op,
                    source: Box::new(source),
                })
            }
        }
    }

    async fn read<C: SolCall>(&self, call: C, name: &'static str) -> Result<C::Return, ChainError> {
        let tx = TransactionRequest::default()
            .with_to(self.escrow)
            .with_input(call.abi_encode());
        let raw = self.provider.call(tx).await.map_err(|source| {
            metrics::counter!(crate::telemetry::RPC_ERRORS, "call" => name).increment(1);
            ChainError::Read { call: name, source }
        })?;
        C::abi_decode_returns(&raw).map_err(|source| ChainError::Decode { call: name, source })
    }
}

/// The channel as credited after a confirmed deposit: the confirmed balance (or less, if
/// the head already shows a refund or withdrawal), and the head's claims, withdrawal and
/// refund nonce when they are ahead, so the server never serves on more than is confirmed.
fn conservative(confirmed: OnchainState, latest: OnchainState) -> OnchainState {
    OnchainState {
        balance: confirmed.balance.min(latest.balance),
        total_claimed: confirmed.total_claimed.max(latest.total_claimed),
        withdraw_requested_at: if latest.withdraw_requested_at != 0 {
            latest.withdraw_requested_at
        } else {
            confirmed.withdraw_requested_at
        },
        refund_nonce: confirmed.refund_nonce.max(latest.refund_nonce),
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

/// ERC-1271 check through `eth_call`. A revert or a non-magic answer (including a wallet
/// with no code) is "not signed"; only a transport failure is an error.
impl Erc1271Checker for EscrowClient {
    async fn is_valid_signature(
        &self,
        wallet: Address,
        digest: B256,
        signature: &[u8],
    ) -> Result<bool, Erc1271Error> {
        let call = IErc1271::isValidSignatureCall {
            hash: digest,
            signature: Bytes::copy_from_slice(signature),
        };
        let tx = TransactionRequest::default()
            .with_to(wallet)
            .with_input(call.abi_encode());
        match self.provider.call(tx).await {
            Ok(raw) => Ok(raw.len() >= 4 && raw[..4] == ERC1271_MAGIC),
            Err(RpcError::ErrorResp(resp)) if resp.as_revert_data().is_some() || resp.code == 3 => {
                Ok(false)
            }
            Err(e) => {
                metrics::counter!(crate::telemetry::RPC_ERRORS, "call" => "isValidSignature")
                    .increment(1);
                Err(Erc1271Error {
                    wallet,
                    source: Box::new(e),
                })
            }
        }
    }
}
