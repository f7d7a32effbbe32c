//! Load generator behind `x402-upto internal store-load` (used by `tests/crash.rs`).
//!
//! It opens a store, restores the ledger from it, puts `channels` channels with a huge
//! balance on it, and runs one committer task per channel: sign a voucher for
//! `charged + price`, reserve, commit half the price, persist, and only then print
//! `ack <channel> <version> <charged> <signed_max>` on stdout. A line on stdout therefore
//! means "acknowledged as durable". Keys and configs are deterministic so that a test can
//! check what it finds on disk after killing this process.

use std::io::Write;
use std::path::PathBuf;

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::{Address, B256, keccak256};

use x402_upto::error::{Error, Result};
use x402_upto::ledger::{Ledger, OnchainState};
use x402_upto::store::{Durability, SledOptions, SledStore, Store, StoreError, persist};
use x402_upto::typed_data::{ChannelConfig, EscrowDomain};

/// Arguments of `internal store-load`.
#[derive(Clone, Debug, clap::Args)]
pub struct StoreLoadArgs {
    /// Store directory (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// `none`, `group` or `every`.
    #[arg(long, default_value = "group", value_parser = durability)]
    pub durability: Durability,
    /// Number of channels, one concurrent committer each.
    #[arg(long, default_value_t = 8)]
    pub channels: u32,
    /// Stop after this many commits per channel (default: run until killed).
    #[arg(long)]
    pub commits: Option<u64>,
    /// Skip the `fdatasync` after flushes.
    #[arg(long)]
    pub no_fdatasync: bool,
    /// Group mode: flush sled per batch instead of writing the write-ahead log (the path
    /// before the log, for paired measurements).
    #[arg(long)]
    pub no_write_ahead_log: bool,
}

/// `--durability`: the store's own names (`none`, `group`, `every`).
fn durability(s: &str) -> std::result::Result<Durability, String> {
    s.parse()
        .map_err(|e: x402_upto::store::DurabilityParseError| e.to_string())
}

/// The escrow domain the load runs against.
pub fn load_domain() -> EscrowDomain {
    x402_upto_testkit::offchain::domain()
}

/// The payer (and payer authorizer) of every load channel.
pub fn load_payer() -> PrivateKeySigner {
    // keccak of a fixed label is a valid scalar unless astronomically unlucky; fall back to 1.
    let secret = keccak256(b"x402-upto store-load payer");
    PrivateKeySigner::from_bytes(&secret)
        .or_else(|_| PrivateKeySigner::from_bytes(&B256::with_last_byte(1)))
        .unwrap_or_else(|_| PrivateKeySigner::random())
}

/// Config of load channel `index`.
pub fn load_config(index: u32, payer: Address) -> ChannelConfig {
    x402_upto_testkit::offchain::channel_config(payer, u64::from(index))
}

/// Runs the load on a fresh multi-thread runtime.
pub fn run_blocking(args: &StoreLoadArgs) -> crate::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| StoreError::Io {
            path: args.dir.clone(),
            source,
        })?;
    Ok(rt.block_on(run(args))?)
}

async fn run(args: &StoreLoadArgs) -> Result<()> {
    let options = SledOptions {
        durability: args.durability,
        fdatasync: !args.no_fdatasync,
        write_ahead_log: !args.no_write_ahead_log,
        ..SledOptions::default()
    };
    let store = std::sync::Arc::new(SledStore::open(&args.dir, options)?);
    let domain = load_domain();
    let ledger = Ledger::new(domain.clone());
    ledger.restore(store.load_all().await?);
    let payer = load_payer();
    let onchain = OnchainState {
        balance: u128::MAX / 2,
        ..Default::default()
    };
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..args.channels {
        let (id, _) = ledger.upsert_from_chain(load_config(index, payer.address()), onchain, 0);
        let (ledger, store, payer, domain) =
            (ledger.clone(), store.clone(), payer.clone(), domain.clone());
        let commits = args.commits;
        tasks.spawn(async move {
            let mut k = 0u64;
            while commits.is_none_or(|n| k < n) {
                let price = 2 + u128::from(k % 50) * 2;
                let (reservation, max) = super::reserve_next(&ledger, &domain, &payer, id, price)?;
                let staged = reservation.commit(price / 2, k).map_err(|r| r.reject)?;
                let receipt = persist(store.as_ref(), staged).await?;
                let line = format!(
                    "ack {index} {} {} {max}\n",
                    receipt.version, receipt.snapshot.charged
                );
                std::io::stdout()
                    .lock()
                    .write_all(line.as_bytes())
                    .map_err(|source| StoreError::Io {
                        path: "<stdout>".into(),
                        source,
                    })?;
                k += 1;
            }
            Ok::<(), Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| StoreError::Io {
            path: "<task>".into(),
            source: std::io::Error::other(e),
        })??;
    }
    store.flush_now()?;
    Ok(())
}
