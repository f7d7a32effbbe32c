//! Sends transactions from one key the way a settlement engine must: one
//! nonce sequence per key, EIP-1559 fees under a hard cap, gas estimated with
//! a margin, receipts awaited with a timeout, and stuck transactions replaced
//! (same nonce, bumped fees) until they land or the deadline passes.
//!
//! Broadcasts from one key are serialized (nonce assignment, signing and
//! `eth_sendRawTransaction` under one lock, a millisecond or so); waiting for
//! receipts is not, so a slow claim never delays a deposit.

use std::time::Duration;

use alloy::eips::eip2718::Encodable2718;
use alloy::network::{EthereumWallet, NetworkTransactionBuilder, TransactionBuilder};
use alloy::primitives::{Address, B256};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::transports::{RpcError, TransportErrorKind};
use thiserror::Error;
use tokio::sync::Mutex;
use tokio::time::{Instant, sleep};

/// Fee and timing policy for one sender.
#[derive(Clone, Debug)]
pub struct TxPolicy {
    /// Never pay more than this `maxFeePerGas` (wei).
    pub max_fee_cap: u128,
    /// Never tip more than this `maxPriorityFeePerGas` (wei).
    pub priority_fee_cap: u128,
    /// Replacement bump in percent; nodes require at least 10.
    pub bump_percent: u32,
    /// Gas limit = estimate × (100 + margin) / 100.
    pub gas_margin_percent: u64,
    /// Wait this long for a receipt before replacing the transaction.
    pub attempt_timeout: Duration,
    /// Give up (the nonce stays consumed) after this long.
    pub total_timeout: Duration,
    /// Receipt polling interval.
    pub poll_interval: Duration,
}

impl Default for TxPolicy {
    fn default() -> Self {
        Self {
            max_fee_cap: 200_000_000_000, // 200 gwei
            priority_fee_cap: 5_000_000_000,
            bump_percent: 20,
            gas_margin_percent: 25,
            attempt_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// A transaction that was mined.
#[derive(Clone, Debug)]
pub struct Sent {
    /// Hash of the version that was mined.
    pub hash: B256,
    /// Its receipt (status is success).
    pub receipt: TransactionReceipt,
    /// The nonce it used.
    pub nonce: u64,
    /// How many versions were broadcast (1 = no replacement).
    pub broadcasts: u32,
}

/// Why a transaction did not succeed.
#[derive(Debug, Error)]
pub enum TxError {
    /// `eth_estimateGas` failed: usually the call would revert.
    #[error("{label}: gas estimation failed (the call would likely revert): {source}")]
    Estimate {
        /// What was being sent.
        label: String,
        /// The RPC error, with revert data when the node gave it.
        #[source]
        source: RpcError<TransportErrorKind>,
    },
    /// Another RPC call failed.
    #[error("{label}: rpc {call} failed: {source}")]
    Rpc {
        /// What was being sent.
        label: String,
        /// Which call.
        call: &'static str,
        /// The error.
        #[source]
        source: RpcError<TransportErrorKind>,
    },
    /// Signing failed.
    #[error("{label}: could not build or sign the transaction: {message}")]
    Sign {
        /// What was being sent.
        label: String,
        /// Why.
        message: String,
    },
    /// The transaction was mined and reverted.
    #[error("{label}: transaction {hash} reverted (gas used {gas_used})")]
    Reverted {
        /// What was being sent.
        label: String,
        /// Mined hash.
        hash: B256,
        /// Gas burnt.
        gas_used: u64,
    },
    /// No version was mined before the deadline. The nonce stays consumed:
    /// a version may still land, so callers reconcile with chain state.
    #[error("{label}: no receipt for nonce {nonce} after {waited:?} ({broadcasts} broadcasts)")]
    Timeout {
        /// What was being sent.
        label: String,
        /// Nonce used.
        nonce: u64,
        /// Every hash broadcast for it.
        hashes: Vec<B256>,
        /// Broadcast count.
        broadcasts: u32,
        /// Time waited.
        waited: Duration,
    },
}

/// Sends transactions from one key. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct TxSender {
    provider: DynProvider,
    wallet: EthereumWallet,
    from: Address,
    chain_id: u64,
    policy: TxPolicy,
    /// Next nonce to use; `None` until first use or after an error that may
    /// have desynchronised it, then re-read from the node's pending count.
    next_nonce: Mutex<Option<u64>>,
}

struct Fees {
    max_fee: u128,
    priority: u128,
}

impl TxSender {
    /// A sender for `signer` on the chain behind `provider`.
    pub fn new(
        provider: DynProvider,
        signer: PrivateKeySigner,
        chain_id: u64,
        policy: TxPolicy,
    ) -> Self {
        let from = signer.address();
        Self {
            provider,
            wallet: EthereumWallet::from(signer),
            from,
            chain_id,
            policy,
            next_nonce: Mutex::new(None),
        }
    }

    /// The sending address.
    pub const fn address(&self) -> Address {
        self.from
    }

    /// The provider this sender uses.
    pub const fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// Forgets the cached nonce: the next send reads the node's pending count. Call it when
    /// one of our mined transactions was dropped by a reorg (the cache is then ahead).
    pub async fn forget_nonce(&self) {
        *self.next_nonce.lock().await = None;
    }

    /// Estimates, signs, broadcasts and waits for `tx` (its `to`, `input` and
    /// `value` are used; everything else is filled in here). Replaces the
    /// transaction with bumped fees while it is not mined.
    pub async fn send(&self, tx: TransactionRequest, label: &str) -> Result<Sent, TxError> {
        let mut tx = tx.with_from(self.from).with_chain_id(self.chain_id);
        let gas = self
            .provider
            .estimate_gas(tx.clone())
            .await
            .map_err(|source| TxError::Estimate {
                label: label.to_owned(),
                source,
            })?;
        tx.set_gas_limit(gas.saturating_mul(100 + self.policy.gas_margin_percent) / 100);
        let mut fees = self.initial_fees(label).await?;

        let start = Instant::now();
        let (nonce, first) = self.broadcast_new(&tx, &fees, label).await?;
        let mut hashes = vec![first];
        let mut attempt_started = Instant::now();
        loop {
            for hash in hashes.iter().rev() {
                let receipt =
                    self.provider
                        .get_transaction_receipt(*hash)
                        .await
                        .map_err(|source| TxError::Rpc {
                            label: label.to_owned(),
                            call: "eth_getTransactionReceipt",
                            source,
                        })?;
                if let Some(receipt) = receipt {
                    let broadcasts = u32::try_from(hashes.len()).unwrap_or(u32::MAX);
                    if !receipt.status() {
                        return Err(TxError::Reverted {
                            label: label.to_owned(),
                            hash: *hash,
                            gas_used: receipt.gas_used,
                        });
                    }
                    return Ok(Sent {
                        hash: *hash,
                        receipt,
                        nonce,
                        broadcasts,
                    });
                }
            }
            if start.elapsed() >= self.policy.total_timeout {
                // The cached nonce may be ahead of the chain (a reorg dropped an earlier
                // transaction of ours): the next send re-reads it from the node.
                *self.next_nonce.lock().await = None;
                return Err(TxError::Timeout {
                    label: label.to_owned(),
                    nonce,
                    broadcasts: u32::try_from(hashes.len()).unwrap_or(u32::MAX),
                    hashes,
                    waited: start.elapsed(),
                });
            }
            if attempt_started.elapsed() >= self.policy.attempt_timeout {
                attempt_started = Instant::now();
                if let Some(bumped) = self.bump(&fees) {
                    fees = bumped;
                    match self.broadcast(&tx, nonce, &fees, label).await {
                        Ok(hash) => hashes.push(hash),
                        // An earlier version was mined meanwhile ("nonce too
                        // low") or the node still prefers it; keep polling.
                        Err(e) => {
                            tracing::warn!(label, nonce, error = %e, "replacement not accepted")
                        }
                    }
                }
            }
            sleep(self.policy.poll_interval).await;
        }
    }

    async fn initial_fees(&self, label: &str) -> Result<Fees, TxError> {
        let est = self
            .provider
            .estimate_eip1559_fees()
            .await
            .map_err(|source| TxError::Rpc {
                label: label.to_owned(),
                call: "eip1559 fee estimate",
                source,
            })?;
        let priority = est
            .max_priority_fee_per_gas
            .min(self.policy.priority_fee_cap);
        let max_fee = est
            .max_fee_per_gas
            .min(self.policy.max_fee_cap)
            .max(priority);
        Ok(Fees { max_fee, priority })
    }

    /// Bumped fees, or `None` when both are already at their caps (then the
    /// replacement would be rejected as underpriced anyway).
    fn bump(&self, f: &Fees) -> Option<Fees> {
        let up = |v: u128, cap: u128| {
            (v.saturating_mul(100 + u128::from(self.policy.bump_percent)) / 100 + 1).min(cap)
        };
        let priority = up(f.priority, self.policy.priority_fee_cap);
        let max_fee = up(f.max_fee, self.policy.max_fee_cap).max(priority);
        (priority > f.priority || max_fee > f.max_fee).then_some(Fees { max_fee, priority })
    }

    /// Takes the next nonce and broadcasts under the nonce lock, so nonces
    /// reach the node in order. If the broadcast fails and the node's pending
    /// count disagrees with our cached nonce (another process used the key,
    /// or a transaction was dropped), retries once with the node's value.
    async fn broadcast_new(
        &self,
        tx: &TransactionRequest,
        fees: &Fees,
        label: &str,
    ) -> Result<(u64, B256), TxError> {
        let mut next = self.next_nonce.lock().await;
        let nonce = match *next {
            Some(n) => n,
            None => self.pending_nonce(label).await?,
        };
        let err = match self.broadcast(tx, nonce, fees, label).await {
            Ok(hash) => {
                *next = Some(nonce + 1);
                return Ok((nonce, hash));
            }
            Err(e) => e,
        };
        *next = None;
        let fresh = self.pending_nonce(label).await?;
        if fresh == nonce {
            return Err(err);
        }
        tracing::warn!(label, cached = nonce, node = fresh, error = %err, "nonce out of sync; retrying with the node's");
        let hash = self.broadcast(tx, fresh, fees, label).await?;
        *next = Some(fresh + 1);
        Ok((fresh, hash))
    }

    async fn pending_nonce(&self, label: &str) -> Result<u64, TxError> {
        self.provider
            .get_transaction_count(self.from)
            .pending()
            .await
            .map_err(|source| TxError::Rpc {
                label: label.to_owned(),
                call: "eth_getTransactionCount",
                source,
            })
    }

    async fn broadcast(
        &self,
        tx: &TransactionRequest,
        nonce: u64,
        fees: &Fees,
        label: &str,
    ) -> Result<B256, TxError> {
        let tx = tx
            .clone()
            .with_nonce(nonce)
            .with_max_fee_per_gas(fees.max_fee)
            .with_max_priority_fee_per_gas(fees.priority);
        let envelope = tx.build(&self.wallet).await.map_err(|e| TxError::Sign {
            label: label.to_owned(),
            message: e.to_string(),
        })?;
        let raw = envelope.encoded_2718();
        let pending = self
            .provider
            .send_raw_transaction(&raw)
            .await
            .map_err(|source| TxError::Rpc {
                label: label.to_owned(),
                call: "eth_sendRawTransaction",
                source,
            })?;
        Ok(*pending.tx_hash())
    }
}
