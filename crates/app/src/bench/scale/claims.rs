//! Claiming `n` channels on anvil with the real claim scheduler ([`Settlement::claim_round`]:
//! journal, `claimWithSignature` batches signed by the receiver authorizer, receipts).
//!
//! The channels are put on chain without a deposit transaction each: one real ERC-3009
//! deposit finds the storage slot of the escrow's channel mapping, then every other
//! channel's balance is written into that mapping with `anvil_setStorageAt` (JSON-RPC
//! batches), and the escrow is minted the tokens those balances stand for. What is then
//! claimed is exactly what a deposit would have left: the contract checks the config hash,
//! each payer's voucher signature (one `ecrecover` per row), the balance, and the
//! authorizer's batch signature. Each channel carries a real voucher for `CLAIM_MAX`,
//! charged `CLAIM_CHARGED`.

use std::sync::Arc;
use std::time::Instant;

use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use serde::Serialize;
use serde_json::json;
use x402_upto::clock::unix_now;
use x402_upto::ledger::{ChannelRecord, Ledger, OnchainState};
use x402_upto::settlement::{ClaimJournal, Settlement, SettlementConfig};
use x402_upto::store::{SledOptions, SledStore};
use x402_upto::typed_data::ChannelConfig;
use x402_upto_testkit::devnet::Devnet;

use super::world;

/// Balance written into each channel.
const CLAIM_BALANCE: u128 = 10_000;
/// Voucher ceiling of each channel.
const CLAIM_MAX: u128 = 1_000;
/// Charged on each channel: what its claim raises `totalClaimed` to.
const CLAIM_CHARGED: u128 = 500;
/// `anvil_setStorageAt` calls per JSON-RPC batch.
const RPC_BATCH: usize = 1_000;

/// Claiming `channels` channels, measured.
#[derive(Clone, Debug, Serialize)]
pub struct ClaimRun {
    /// Channels claimed.
    pub channels: u64,
    /// Rows per `claimWithSignature`.
    pub batch_size: usize,
    /// Claim transactions mined.
    pub claim_txs: usize,
    /// Sweep transactions (`settle`) afterwards.
    pub sweep_txs: usize,
    /// Gas of the claim transactions (receipts: intrinsic + calldata + execution).
    pub claim_gas: u64,
    /// Gas of the sweep.
    pub sweep_gas: u64,
    /// Wall time of the claim round (journal, sign, send, mine, apply), seconds.
    pub claim_seconds: f64,
    /// Wall time of the sweep, seconds.
    pub sweep_seconds: f64,
    /// Seconds to put the channels on chain and in the ledger (not part of the claim).
    pub setup_seconds: f64,
    /// Rows the round could not claim (must be 0).
    pub failed_rows: usize,
    /// Sampled channels whose on-chain `totalClaimed` is `CLAIM_CHARGED` afterwards, of sampled.
    pub verified: (usize, usize),
}

/// A running anvil with the contracts and the mapping slot found.
pub(super) struct Chain {
    devnet: Devnet,
    relayer: PrivateKeySigner,
    authorizer: PrivateKeySigner,
    receiver: Address,
    channels_slot: U256,
    next_salt: u64,
    http: reqwest::Client,
}

fn fail(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

fn channel_config(chain: &Chain, salt: u64) -> ChannelConfig {
    chain.devnet.channel_config(
        world::payer().address(),
        world::payer().address(),
        chain.receiver,
        chain.authorizer.address(),
        B256::from(U256::from(salt)),
    )
}

impl Chain {
    /// Starts anvil, deploys, and finds the channel mapping's slot with one real deposit.
    pub(super) async fn start() -> Result<Self, String> {
        let devnet = Devnet::start().await.map_err(|e| fail("anvil", e))?;
        let key = |i| devnet.key(i).ok_or_else(|| format!("anvil key {i}"));
        let (relayer, authorizer, receiver) = (key(1)?, key(2)?, key(3)?.address());
        let mut chain = Self {
            devnet,
            relayer,
            authorizer,
            receiver,
            channels_slot: U256::ZERO,
            next_salt: 1 << 40,
            http: reqwest::Client::new(),
        };
        let payer = world::payer();
        let amount = 1_000_000u128;
        chain
            .devnet
            .mint(payer.address(), amount)
            .await
            .map_err(|e| fail("mint", e))?;
        let salt = B256::from(U256::from(chain.next_salt));
        let config = channel_config(&chain, chain.next_salt);
        chain.next_salt += 1;
        let id = chain
            .devnet
            .deposit(payer, &config, amount, salt)
            .await
            .map_err(|e| fail("deposit", e))?;
        for p in 0u64..64 {
            let slot = mapping_slot(id.0, U256::from(p));
            let word = chain
                .devnet
                .provider
                .get_storage_at(chain.devnet.escrow, slot)
                .await
                .map_err(|e| fail("eth_getStorageAt", e))?;
            if word & U256::from(u128::MAX) == U256::from(amount) {
                chain.channels_slot = U256::from(p);
                return Ok(chain);
            }
        }
        Err("the escrow's channel mapping was not found in slots 0..64".into())
    }

    /// Puts `n` fresh channels on chain and in a ledger, then claims them all in batches
    /// of `batch_size` and sweeps.
    pub(super) async fn claim(&mut self, n: u64, batch_size: usize) -> Result<ClaimRun, String> {
        let t_setup = Instant::now();
        let first = self.next_salt;
        self.next_salt += n;
        let domain = self.devnet.domain();
        let configs: Vec<ChannelConfig> = (first..first + n)
            .map(|s| channel_config(self, s))
            .collect();
        let ids: Vec<_> = configs.iter().map(|c| domain.channel_id(c)).collect();
        let vouchers: Vec<_> = ids.iter().map(|id| (*id, CLAIM_MAX)).collect();
        let sigs =
            tokio::task::block_in_place(|| world::sign_many(world::payer(), &domain, &vouchers))?;
        // On chain: each channel's balance word, then the tokens behind them.
        let word = B256::from(U256::from(CLAIM_BALANCE));
        for chunk in ids.chunks(RPC_BATCH) {
            let calls: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(k, id)| {
                    json!({"jsonrpc": "2.0", "id": k, "method": "anvil_setStorageAt",
                           "params": [self.devnet.escrow, B256::from(mapping_slot(id.0, self.channels_slot)), word]})
                })
                .collect();
            let answers: Vec<serde_json::Value> = self
                .http
                .post(self.devnet.endpoint_url())
                .json(&calls)
                .send()
                .await
                .map_err(|e| fail("anvil_setStorageAt", e))?
                .json()
                .await
                .map_err(|e| fail("anvil_setStorageAt answer", e))?;
            if let Some(bad) = answers.iter().find(|a| a.get("error").is_some()) {
                return Err(fail("anvil_setStorageAt", bad));
            }
        }
        self.devnet
            .mint(self.devnet.escrow, u128::from(n) * CLAIM_BALANCE)
            .await
            .map_err(|e| fail("mint", e))?;
        let now = unix_now();
        let ledger = Ledger::new(domain.clone());
        ledger.restore(
            configs
                .into_iter()
                .zip(&ids)
                .zip(&sigs)
                .map(|((config, id), sig)| ChannelRecord {
                    channel_id: *id,
                    config,
                    charged: CLAIM_CHARGED,
                    signed_max_claimable: CLAIM_MAX,
                    signature: Bytes::copy_from_slice(sig),
                    onchain: OnchainState {
                        balance: CLAIM_BALANCE,
                        ..Default::default()
                    },
                    onchain_synced_at: now,
                    last_request_at: now,
                    version: 1,
                    refunds: Default::default(),
                }),
        );
        let dir = tempfile::tempdir().map_err(|e| fail("temp dir", e))?;
        let store = Arc::new(
            SledStore::open(dir.path(), SledOptions::default()).map_err(|e| fail("store", e))?,
        );
        let journal = ClaimJournal::open(&store).map_err(|e| fail("journal", e))?;
        let client = Arc::new(
            self.devnet
                .escrow_client(self.relayer.clone(), Some(self.authorizer.clone())),
        );
        let settlement = Settlement::new(
            ledger,
            Arc::clone(&client),
            journal,
            SettlementConfig {
                batch_size,
                confirmations: 0,
                ..SettlementConfig::default()
            },
        );
        let setup_seconds = t_setup.elapsed().as_secs_f64();

        let t = Instant::now();
        let report = settlement.claim_round(true).await;
        let claim_seconds = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let swept = client
            .settle(self.receiver, self.devnet.token)
            .await
            .map_err(|e| fail("settle", e))?;
        let sweep_seconds = t.elapsed().as_secs_f64();

        // Read back a spread of channels: each must show exactly its charge claimed.
        let step = (ids.len() / 100).max(1);
        let sample: Vec<_> = ids.iter().step_by(step).copied().collect();
        let totals = client
            .totals_claimed(&sample)
            .await
            .map_err(|e| fail("totalClaimed", e))?;
        let good = totals.iter().filter(|&&t| t == CLAIM_CHARGED).count();
        Ok(ClaimRun {
            channels: n,
            batch_size,
            claim_txs: report.batches,
            sweep_txs: usize::from(swept.tx_hash.is_some()),
            claim_gas: report.gas_used,
            sweep_gas: swept.gas_used,
            claim_seconds,
            sweep_seconds,
            setup_seconds,
            failed_rows: report.failed_rows + (n as usize).saturating_sub(report.rows),
            verified: (good, sample.len()),
        })
    }
}

/// Slot of `mapping(bytes32 => …)` entry `key` for a mapping declared at slot `p`.
fn mapping_slot(key: B256, p: U256) -> U256 {
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(key.as_slice());
    buf[32..].copy_from_slice(&p.to_be_bytes::<32>());
    U256::from_be_bytes(keccak256(buf).0)
}
