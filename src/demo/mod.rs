//! `x402-upto demo`: the whole money path on a local chain, with no configuration.
//!
//! Starts anvil with the contracts, funds payers, opens one channel per payer with a gasless
//! ERC-3009 deposit, then runs the **crawler** scenario: many concurrent payers sending paid
//! requests priced "up to" a maximum, each charged a random actual amount, every voucher
//! verified in memory and made durable (sled, `group` mode) before it counts as served. Then it
//! claims every channel in batched `claimWithSignature` transactions, sweeps with `settle`,
//! and prints a summary whose balances must reconcile exactly.
//!
//! The request path here drives the engine's core (verification, ledger, durable store)
//! directly; the HTTP layer puts the same calls behind `PAYMENT-SIGNATURE`.

mod crawler;
mod report;

use std::time::Instant;

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::B256;

use crate::chain::bindings::{IUptoEscrow, UptoEscrow};
use crate::devnet::{Devnet, DevnetOptions};
use crate::ledger::{Ledger, OnchainState};
use crate::store::{Durability, SledOptions, SledStore};
use crate::typed_data::sign_claim_batch;

pub use report::Summary;

/// Options of `x402-upto demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Payers, one channel each.
    #[arg(long, default_value_t = 50)]
    pub channels: usize,
    /// Paid requests per channel.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Maximum price of one request ("upto"), atomic units (6 decimals: 1000 = $0.001).
    #[arg(long, default_value_t = 1_000)]
    pub price: u128,
    /// Deposit per channel, atomic units.
    #[arg(long, default_value_t = 1_000_000)]
    pub deposit: u128,
    /// Channels per claim transaction.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Hide progress bars (for logs and tests).
    #[arg(long)]
    pub quiet: bool,
}

/// Everything that went wrong in the demo, with the step it happened in.
#[derive(Debug, thiserror::Error)]
#[error("demo step `{step}` failed: {message}")]
pub struct DemoError {
    step: &'static str,
    message: String,
}

impl DemoError {
    pub(crate) fn timed_out() -> Self {
        Self {
            step: "run",
            message: format!("did not finish within {DEMO_TIMEOUT:?}"),
        }
    }
}

fn step<E: std::fmt::Display>(step: &'static str) -> impl FnOnce(E) -> DemoError {
    move |e| DemoError {
        step,
        message: e.to_string(),
    }
}

/// Key roles on the devnet (anvil accounts): 0 deploys and relays, 1 receives, 2 authorizes
/// claims, 3.. pay.
const RECEIVER: usize = 1;
const RECEIVER_AUTHORIZER: usize = 2;
const FIRST_PAYER: usize = 3;

/// Runs the demo and returns its summary (already printed unless `quiet`).
pub async fn run(args: &DemoArgs) -> Result<Summary, DemoError> {
    let started = Instant::now();
    let accounts = u32::try_from(FIRST_PAYER + args.channels).map_err(step("accounts"))?;
    let net = Devnet::start_with(DevnetOptions {
        accounts,
        block_time: None,
    })
    .await
    .map_err(step("start anvil and deploy"))?;
    let receiver = net
        .key(RECEIVER)
        .ok_or_else(|| step("keys")("no receiver key"))?;
    let authorizer = net
        .key(RECEIVER_AUTHORIZER)
        .ok_or_else(|| step("keys")("no authorizer key"))?;
    let payers: Vec<PrivateKeySigner> = (0..args.channels)
        .filter_map(|i| net.key(FIRST_PAYER + i))
        .collect();

    // Fund payers and open one channel each (gasless for them: the relay pays gas).
    let mut configs = Vec::with_capacity(payers.len());
    for (i, payer) in payers.iter().enumerate() {
        net.mint(payer.address(), args.deposit * 2)
            .await
            .map_err(step("fund payers"))?;
        let salt = B256::from(alloy_primitives::U256::from(i));
        let config = net.channel_config(
            payer.address(),
            payer.address(),
            receiver.address(),
            authorizer.address(),
            salt,
        );
        net.deposit(payer, &config, args.deposit, salt)
            .await
            .map_err(step("open channels"))?;
        configs.push(config);
    }
    let before = report::Balances::read(&net, &payers, receiver.address())
        .await
        .map_err(step("read balances"))?;

    // The engine's core: ledger + durable store in a temporary directory.
    let dir = tempfile::tempdir().map_err(step("temp dir"))?;
    let store = SledStore::open(dir.path(), SledOptions::with_durability(Durability::Group))
        .map_err(step("open store"))?;
    let store = std::sync::Arc::new(store);
    let ledger = Ledger::new(net.domain());
    let escrow = UptoEscrow::new(net.escrow, net.provider.clone());
    for config in &configs {
        let id = net.domain().channel_id(config);
        let state = escrow
            .channels(id.0)
            .call()
            .await
            .map_err(step("read channel"))?;
        let onchain = OnchainState {
            balance: state.balance,
            total_claimed: state.totalClaimed,
            ..Default::default()
        };
        ledger.upsert_from_chain(config.clone(), onchain, now());
    }

    let crawl = crawler::run(&ledger, store.clone(), &payers, &configs, args)
        .await
        .map_err(step("crawler"))?;

    // Claim everything charged, in batches, then sweep once.
    let claim_started = Instant::now();
    let (claim_txs, claim_gas) = claim_all(&net, &ledger, &authorizer, args.batch).await?;
    let settle = escrow
        .settle(receiver.address(), net.token)
        .send()
        .await
        .map_err(step("settle"))?;
    let settle_receipt = settle.get_receipt().await.map_err(step("settle receipt"))?;
    let claim_elapsed = claim_started.elapsed();
    let after = report::Balances::read(&net, &payers, receiver.address())
        .await
        .map_err(step("read balances"))?;

    let exact_gas = report::exact_transfer_gas(&net, &payers[0])
        .await
        .map_err(step("measure exact"))?;
    let summary = Summary {
        channels: configs.len(),
        crawl,
        claim_txs,
        claim_gas,
        settle_gas: settle_receipt.gas_used,
        claim_elapsed,
        exact_gas_per_request: exact_gas,
        before,
        after,
        charged_by_channel: configs
            .iter()
            .map(|c| {
                ledger
                    .snapshot(&net.domain().channel_id(c))
                    .map_or(0, |s| s.charged)
            })
            .collect(),
        total_elapsed: started.elapsed(),
    };
    if !args.quiet {
        println!("{summary}");
    }
    summary.reconcile().map_err(step("reconcile"))?;
    Ok(summary)
}

/// Claims every claimable channel with `claimWithSignature`, `batch` channels per transaction.
async fn claim_all(
    net: &Devnet,
    ledger: &Ledger,
    authorizer: &PrivateKeySigner,
    batch: usize,
) -> Result<(usize, u64), DemoError> {
    let escrow = UptoEscrow::new(net.escrow, net.provider.clone());
    let claimable = ledger.claimable();
    let (mut txs, mut gas) = (0, 0);
    for rows in claimable.chunks(batch.max(1)) {
        let entries: Vec<_> = rows.iter().map(|c| c.entry()).collect();
        let signature = sign_claim_batch(authorizer, ledger.domain(), &entries)
            .map_err(step("sign claim batch"))?;
        let claims: Vec<IUptoEscrow::VoucherClaim> = rows.iter().map(Into::into).collect();
        let pending = escrow
            .claimWithSignature(claims, signature.as_bytes().into())
            .send()
            .await
            .map_err(step("claimWithSignature"))?;
        let receipt = pending.get_receipt().await.map_err(step("claim receipt"))?;
        if !receipt.status() {
            return Err(step("claimWithSignature")("reverted"));
        }
        txs += 1;
        gas += receipt.gas_used;
        for row in rows {
            ledger
                .apply_claim(&row.channel_id, row.claim_total, now())
                .map_err(step("apply claim"))?;
        }
    }
    Ok((txs, gas))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Rough budget so the demo never hangs: anvil answers in milliseconds.
pub const DEMO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
