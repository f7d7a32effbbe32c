//! `x402-upto internal settle-load`: ledger + store + claim scheduler against a real RPC
//! and escrow, for the SIGKILL fault tests (`tests/fault_kill.rs`).
//!
//! Channel `i` is paid by [`settle_load_payer`]`(i)` with config [`settle_load_config`]; the
//! test deposits into those channels before starting the process. The process restores
//! its ledger from the store, loads unknown channels from chain, starts the scheduler, and
//! runs one committer per channel. After each durable commit it prints
//! `ack <channel> <charged>`: a line on stdout means "acknowledged". When every committer is
//! done it claims everything, sweeps, and prints `done <claimed>`. With `--finish` it serves
//! nothing: it reconciles the journal (printing `reconciled <batches>`), claims, sweeps,
//! prints `done` and exits: the restart after a kill.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::aliases::U40;
use alloy_primitives::{Address, B256, U256, keccak256};

use x402_upto::chain::escrow::EscrowClient;
use x402_upto::chain::tx::{TxPolicy, TxSender};
use x402_upto::error::{Error, Result};
use x402_upto::ledger::{Ledger, Reject};
use x402_upto::settlement::{
    ClaimJournal, LoadError, Settlement, SettlementConfig, load_channel, unix_now,
};
use x402_upto::store::{SledOptions, SledStore, Store, StoreError, persist};
use x402_upto::typed_data::{ChannelConfig, EscrowDomain};

/// Arguments of `internal settle-load`.
#[derive(Clone, Debug, clap::Args)]
pub struct SettleLoadArgs {
    /// Store directory (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// JSON-RPC endpoint.
    #[arg(long)]
    pub rpc: reqwest::Url,
    /// Chain id.
    #[arg(long, default_value_t = 31337)]
    pub chain_id: u64,
    /// Escrow address.
    #[arg(long)]
    pub escrow: Address,
    /// Deposit collector address.
    #[arg(long)]
    pub collector: Address,
    /// Token of every channel.
    #[arg(long)]
    pub token: Address,
    /// Receiver of every channel.
    #[arg(long)]
    pub receiver: Address,
    /// Receiver-authorizer private key (hex).
    #[arg(long)]
    pub authorizer_key: B256,
    /// Relayer private key (hex): sends the claims.
    #[arg(long)]
    pub relayer_key: B256,
    /// Number of channels.
    #[arg(long, default_value_t = 4)]
    pub channels: u32,
    /// Requests per channel (default: until killed).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Maximum price per request.
    #[arg(long, default_value_t = 10_000)]
    pub price: u128,
    /// Claim a channel once this much is unclaimed.
    #[arg(long, default_value_t = 50_000)]
    pub claim_threshold: u128,
    /// Only reconcile, claim everything, sweep, and exit.
    #[arg(long)]
    pub finish: bool,
}

/// The payer (and payer authorizer) of settle-load channel `index`.
pub fn settle_load_payer(index: u32) -> PrivateKeySigner {
    let mut seed = b"x402-upto settle-load payer ".to_vec();
    seed.extend_from_slice(&index.to_be_bytes());
    PrivateKeySigner::from_bytes(&keccak256(&seed))
        .or_else(|_| PrivateKeySigner::from_bytes(&B256::with_last_byte(1)))
        .unwrap_or_else(|_| PrivateKeySigner::random())
}

/// Config of settle-load channel `index` (900 s withdraw delay).
pub fn settle_load_config(
    index: u32,
    token: Address,
    receiver: Address,
    receiver_authorizer: Address,
) -> ChannelConfig {
    let payer = settle_load_payer(index).address();
    ChannelConfig {
        payer,
        payerAuthorizer: payer,
        receiver,
        receiverAuthorizer: receiver_authorizer,
        token,
        withdrawDelay: U40::from(900u64),
        salt: B256::from(U256::from(index)),
    }
}

/// The actual charge of request `k` (deterministic, `0..=price`).
pub fn settle_load_charge(k: u64, price: u128) -> u128 {
    (u128::from(k).wrapping_mul(7_919) + 13) % (price + 1)
}

/// Runs on a fresh multi-thread runtime.
pub fn run_blocking(args: &SettleLoadArgs) -> crate::Result<()> {
    crate::telemetry::init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(crate::Error::Runtime)?;
    Ok(rt.block_on(run(args))?)
}

fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|source| {
            Error::Store(StoreError::Io {
                path: "<stdout>".into(),
                source,
            })
        })
}

async fn run(args: &SettleLoadArgs) -> Result<()> {
    let store = Arc::new(SledStore::open(&args.dir, SledOptions::default())?);
    let domain = EscrowDomain::new(args.chain_id, args.escrow);
    let ledger = Ledger::new(domain.clone());
    ledger.restore(store.load_all().await?);

    let provider = ProviderBuilder::new().connect_http(args.rpc.clone());
    provider
        .client()
        .set_poll_interval(Duration::from_millis(20));
    let provider = provider.erased();
    let key = |k: &B256| {
        PrivateKeySigner::from_bytes(k)
            .map_err(|e| Error::Signing(x402_upto::typed_data::SigningError::other(e)))
    };
    let authorizer = key(&args.authorizer_key)?;
    let policy = TxPolicy {
        attempt_timeout: Duration::from_secs(10),
        total_timeout: Duration::from_secs(60),
        poll_interval: Duration::from_millis(20),
        ..TxPolicy::default()
    };
    let sender = TxSender::new(
        provider.clone(),
        key(&args.relayer_key)?,
        args.chain_id,
        policy,
    );
    let client = Arc::new(EscrowClient::new(
        provider,
        args.escrow,
        args.collector,
        Arc::new(sender),
        Some(authorizer.clone()),
        domain.clone(),
    ));
    for index in 0..args.channels {
        let config = settle_load_config(index, args.token, args.receiver, authorizer.address());
        let id = domain.channel_id(&config);
        if ledger.snapshot(&id).is_none() {
            load_channel(&ledger, &client, config)
                .await
                .map_err(|e| match e {
                    LoadError::NotFound => {
                        Error::Rejected(Reject::new(x402_upto::Reason::MissingChannel, Some(id)))
                    }
                    LoadError::Chain(c) => Error::Chain(c),
                })?;
        }
    }
    let settlement = Settlement::new(
        ledger.clone(),
        Arc::clone(&client),
        ClaimJournal::open(&store)?,
        SettlementConfig {
            claim_threshold: args.claim_threshold,
            claim_interval: Duration::from_secs(3_600),
            settle_interval: Duration::from_secs(3_600),
            tick: Duration::from_millis(100),
            ..SettlementConfig::default()
        },
    );

    if args.finish {
        let report = settlement.claim_round(true).await;
        say(&format!("reconciled {}", report.reconciled))?;
        return finish(&settlement, report.claimed).await;
    }

    let handle = settlement.spawn();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..args.channels {
        let config = settle_load_config(index, args.token, args.receiver, authorizer.address());
        let id = domain.channel_id(&config);
        let (ledger, store, domain) = (ledger.clone(), Arc::clone(&store), domain.clone());
        let (requests, price) = (args.requests, args.price);
        tasks.spawn(async move {
            let payer = settle_load_payer(index);
            let mut k = 0u64;
            while requests.is_none_or(|n| k < n) {
                let (reservation, _) = super::reserve_next(&ledger, &domain, &payer, id, price)?;
                let staged = reservation
                    .commit(settle_load_charge(k, price), unix_now())
                    .map_err(|r| r.reject)?;
                let receipt = persist(store.as_ref(), staged).await?;
                say(&format!("ack {index} {}", receipt.snapshot.charged))?;
                k += 1;
            }
            Ok::<(), Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| {
            Error::Store(StoreError::Io {
                path: "<task>".into(),
                source: std::io::Error::other(e),
            })
        })??;
    }
    let settlement = Arc::clone(handle.settlement());
    handle.shutdown().await;
    let report = settlement.claim_round(true).await;
    finish(&settlement, report.claimed).await
}

async fn finish(settlement: &Settlement, claimed: u128) -> Result<()> {
    settlement.settle_round().await?;
    say(&format!("done {claimed}"))
}
