//! Deposits: the gasless ERC-3009 deposit through the collector, and the wait for its
//! confirmations before anything is credited.

use std::time::Duration;

use alloy::providers::Provider;
use alloy::rpc::types::TransactionReceipt;
use alloy_primitives::{B256, Bytes, U256};
use alloy_sol_types::SolCall;

use super::{ChainError, EscrowClient, Op};
use crate::chain::bindings::UptoEscrow;
use crate::ledger::OnchainState;
use crate::typed_data::{ChannelConfig, ChannelId, erc3009_collector_data};

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

impl EscrowClient {
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
