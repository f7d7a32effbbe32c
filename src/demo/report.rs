//! Balances before and after, the summary table, and the reconciliation that must hold to the
//! last atomic unit.

use std::fmt;
use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::SolStruct;

use super::crawler::CrawlStats;
use crate::chain::bindings::MockUSDC;
use crate::devnet::{Devnet, DevnetError};
use crate::typed_data::sign_digest;

alloy::sol! {
    /// EIP-3009 `TransferWithAuthorization`: what x402 `exact` signs per request.
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// Token balances of every party.
#[derive(Clone, Debug)]
pub struct Balances {
    /// Each payer.
    pub payers: Vec<u128>,
    /// The receiver (`payTo`).
    pub receiver: u128,
    /// The escrow contract.
    pub escrow: u128,
}

impl Balances {
    /// Reads every balance from chain.
    pub async fn read(
        net: &Devnet,
        payers: &[PrivateKeySigner],
        receiver: Address,
    ) -> Result<Self, DevnetError> {
        let mut p = Vec::with_capacity(payers.len());
        for payer in payers {
            p.push(net.balance_of(payer.address()).await?);
        }
        Ok(Self {
            payers: p,
            receiver: net.balance_of(receiver).await?,
            escrow: net.balance_of(net.escrow).await?,
        })
    }

    fn payers_total(&self) -> u128 {
        self.payers.iter().sum()
    }
}

/// Gas of one x402 `exact` payment on this chain: a `transferWithAuthorization` of MockUSDC.
pub async fn exact_transfer_gas(net: &Devnet, payer: &PrivateKeySigner) -> Result<u64, String> {
    let to = net.key(1).ok_or("no key 1")?.address();
    let auth = TransferWithAuthorization {
        from: payer.address(),
        to,
        value: U256::from(1u64),
        validAfter: U256::ZERO,
        validBefore: U256::from(u64::MAX),
        nonce: B256::repeat_byte(0xe7),
    };
    let digest = auth.eip712_signing_hash(&net.token_domain());
    let sig = sign_digest(payer, &digest).map_err(|e| e.to_string())?;
    let usdc = MockUSDC::new(net.token, net.provider.clone());
    let receipt = usdc
        .transferWithAuthorization_0(
            auth.from,
            auth.to,
            auth.value,
            auth.validAfter,
            auth.validBefore,
            auth.nonce,
            sig.as_bytes().into(),
        )
        .send()
        .await
        .map_err(|e| e.to_string())?
        .get_receipt()
        .await
        .map_err(|e| e.to_string())?;
    if !receipt.status() {
        return Err("transferWithAuthorization reverted".into());
    }
    Ok(receipt.gas_used)
}

/// What the demo did and what it cost.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Channels opened.
    pub channels: usize,
    /// Crawler measurements.
    pub crawl: CrawlStats,
    /// Claim transactions.
    pub claim_txs: usize,
    /// Gas of all claim transactions.
    pub claim_gas: u64,
    /// Gas of the sweep.
    pub settle_gas: u64,
    /// Claims + sweep wall time.
    pub claim_elapsed: Duration,
    /// Gas x402 `exact` spends per paid request (one transferWithAuthorization).
    pub exact_gas_per_request: u64,
    /// Balances after the channels were opened, before any request.
    pub before: Balances,
    /// Balances after claims and the sweep.
    pub after: Balances,
    /// The ledger's charged total per channel.
    pub charged_by_channel: Vec<u128>,
    /// Whole demo wall time.
    pub total_elapsed: Duration,
}

impl Summary {
    /// Gas spent on settlement per paid request (claims + sweep; deposits excluded).
    pub fn gas_per_request(&self) -> f64 {
        (self.claim_gas + self.settle_gas) as f64 / self.crawl.requests.max(1) as f64
    }

    /// Checks that money is conserved and every charge reached the receiver exactly.
    pub fn reconcile(&self) -> Result<(), String> {
        let charged: u128 = self.charged_by_channel.iter().sum();
        if charged != self.crawl.charged {
            return Err(format!(
                "ledger charged {charged} != requests charged {}",
                self.crawl.charged
            ));
        }
        let received = self
            .after
            .receiver
            .checked_sub(self.before.receiver)
            .ok_or("receiver balance went down")?;
        if received != charged {
            return Err(format!("receiver got {received}, ledger charged {charged}"));
        }
        let left_escrow = self
            .before
            .escrow
            .checked_sub(self.after.escrow)
            .ok_or("escrow balance went up")?;
        if left_escrow != charged {
            return Err(format!(
                "escrow released {left_escrow}, ledger charged {charged}"
            ));
        }
        if self.before.payers_total() != self.after.payers_total() {
            return Err("payer balances moved outside their channels".into());
        }
        let total = |b: &Balances| b.payers_total() + b.receiver + b.escrow;
        if total(&self.before) != total(&self.after) {
            return Err("token supply across parties changed".into());
        }
        Ok(())
    }
}

fn usdc(atomic: u128) -> String {
    format!("{}.{:06}", atomic / 1_000_000, atomic % 1_000_000)
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.crawl;
        writeln!(
            f,
            "x402-upto demo — batch-settlement on a local chain ({:.1} s)",
            self.total_elapsed.as_secs_f64()
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "  paid requests          {} over {} channels",
            c.requests, self.channels
        )?;
        writeln!(
            f,
            "  vouchers/s             {:.0} (verify + reserve + commit + durable, sled group mode)",
            c.per_second()
        )?;
        writeln!(
            f,
            "  payment overhead       p50 {} µs, p99 {} µs",
            c.percentile(50),
            c.percentile(99)
        )?;
        writeln!(
            f,
            "  charged (upto)         {} USDC of {} USDC signed ({:.0}%)",
            usdc(c.charged),
            usdc(c.signed),
            100.0 * c.charged as f64 / c.signed.max(1) as f64
        )?;
        writeln!(
            f,
            "  on-chain transactions  {} claim + 1 settle (claims+sweep {:.2} s)",
            self.claim_txs,
            self.claim_elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "  gas per paid request   {:.0} (x402 exact: {} → {:.0}× less)",
            self.gas_per_request(),
            self.exact_gas_per_request,
            self.exact_gas_per_request as f64 / self.gas_per_request().max(1e-9)
        )?;
        writeln!(f)?;
        writeln!(f, "  balances (USDC)        before           after")?;
        writeln!(
            f,
            "    payers (sum)         {:>14}   {:>14}",
            usdc(self.before.payers_total()),
            usdc(self.after.payers_total())
        )?;
        writeln!(
            f,
            "    escrow               {:>14}   {:>14}",
            usdc(self.before.escrow),
            usdc(self.after.escrow)
        )?;
        writeln!(
            f,
            "    receiver             {:>14}   {:>14}",
            usdc(self.before.receiver),
            usdc(self.after.receiver)
        )?;
        match self.reconcile() {
            Ok(()) => write!(
                f,
                "  reconciled: receiver +{} = Σ charges = escrow −{}",
                usdc(c.charged),
                usdc(c.charged)
            ),
            Err(e) => write!(f, "  RECONCILIATION FAILED: {e}"),
        }
    }
}
