//! `x402-upto demo`: the whole money path on a local chain, over HTTP, with no configuration.
//!
//! Starts anvil with the contracts, funds payers, starts our server (axum + [`PaymentLayer`],
//! durable sled store in `group` mode) and runs the **crawler** scenario: many concurrent
//! [`PayingClient`]s fetching pages priced "up to" a maximum and charged by size; each opens
//! its channel with a gasless ERC-3009 deposit on its first 402. Then the server claims every
//! channel in batched `claimWithSignature` transactions, sweeps with `settle`, and returns
//! the unspent deposits: half of the payers ask for a refund over HTTP, the server refunds
//! the other, idle half by itself. The summary's balances must reconcile exactly.
//!
//! [`PaymentLayer`]: x402_upto::server::PaymentLayer
//! [`PayingClient`]: x402_upto::client::PayingClient

mod crawler;
mod gpu;
mod report;
mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::B256;
use indicatif::{ProgressBar, ProgressStyle};

use x402_upto::client::{ClientConfig, PayingClient};
use x402_upto::settlement::{RefundPolicy, refund_idle};
use x402_upto_testkit::devnet::{Devnet, DevnetOptions};

pub use crawler::CrawlStats;
pub use gpu::GpuStats;
pub use report::{Balances, Summary};
pub use server::DemoServer;

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
    /// Streamed GPU jobs (one payer each), billed per second, renewed per minute.
    #[arg(long, default_value_t = 4)]
    pub gpu_jobs: usize,
    /// GPU-seconds per job (the demo's clock runs one GPU-second per 5 ms).
    #[arg(long, default_value_t = 300)]
    pub gpu_seconds: u32,
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

/// Key roles on the devnet (anvil accounts): 0 deploys and mints, 1 receives, 2 authorizes
/// claims and refunds, 3 relays (pays gas for deposits, claims, sweeps, refunds), 4.. pay.
const RECEIVER: usize = 1;
const RECEIVER_AUTHORIZER: usize = 2;
const RELAYER: usize = 3;
const FIRST_PAYER: usize = 4;

/// Latency samples; sorted before percentiles are read.
#[derive(Clone, Debug, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    fn push(&mut self, d: Duration) {
        self.0.push(d);
    }
    fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }
    fn sort(&mut self) {
        self.0.sort_unstable();
    }
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Percentile `p` (0..=100, nearest rank) of the sorted samples; zero when empty.
    pub fn percentile(&self, p: usize) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = (self.0.len() * p.min(100)).div_ceil(100).max(1);
        self.0[rank - 1]
    }
}

/// A progress bar, hidden when `quiet`.
fn bar(quiet: bool, len: u64, template: &str) -> Result<ProgressBar, String> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len)
    };
    // indicatif's `{per_sec}` prints four decimals ("2,318.0315/s"); a whole rate reads better.
    let style = ProgressStyle::with_template(template)
        .map_err(|e| e.to_string())?
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}/s", whole_rate(state.per_sec()));
            },
        );
    bar.set_style(style);
    Ok(bar)
}

/// A rate as a whole number with thousands separators: `2318.03` → `2,318`.
fn whole_rate(per_sec: f64) -> String {
    let n = if per_sec.is_finite() && per_sec > 0.0 {
        per_sec.round() as u64
    } else {
        0
    };
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Runs the demo and returns its summary (already printed unless `quiet`).
pub async fn run(args: &DemoArgs) -> Result<Summary, DemoError> {
    let started = Instant::now();
    if args.channels == 0 || args.requests == 0 || args.price == 0 {
        return Err(step("arguments")(
            "channels, requests and price must be positive",
        ));
    }
    if args.deposit < args.price {
        return Err(step("arguments")(
            "the deposit must cover at least one request",
        ));
    }
    ensure_anvil(args.quiet).await?;
    let accounts =
        u32::try_from(FIRST_PAYER + args.channels + args.gpu_jobs).map_err(step("accounts"))?;
    let net = Devnet::start_with(DevnetOptions {
        accounts,
        block_time: None,
    })
    .await
    .map_err(step("start anvil and deploy"))?;
    let key = |i: usize, what: &'static str| net.key(i).ok_or_else(|| step("keys")(what));
    let receiver = key(RECEIVER, "no receiver key")?;
    let authorizer = key(RECEIVER_AUTHORIZER, "no authorizer key")?;
    let relayer = key(RELAYER, "no relayer key")?;
    let payers: Vec<PrivateKeySigner> = (0..args.channels + args.gpu_jobs)
        .filter_map(|i| net.key(FIRST_PAYER + i))
        .collect();
    let gpu_budget = gpu::MINUTE * u128::from(args.gpu_seconds.div_ceil(60));
    for (i, payer) in payers.iter().enumerate() {
        let funds = if i < args.channels {
            args.deposit * 2
        } else {
            gpu_budget * 2
        };
        net.mint(payer.address(), funds)
            .await
            .map_err(step("fund payers"))?;
    }
    let before = Balances::read(&net, &payers, receiver.address())
        .await
        .map_err(step("read balances"))?;
    let start_block = net
        .provider
        .get_block_number()
        .await
        .map_err(step("block number"))?;

    let server = DemoServer::start(
        &net,
        relayer,
        authorizer,
        receiver.address(),
        args.price,
        args.batch,
    )
    .await?;
    let overhead = report::OverheadProbe::install();

    let clients: Vec<Arc<PayingClient>> = payers
        .iter()
        .enumerate()
        .map(|(i, payer)| {
            let base = ClientConfig::new(payer.clone()).with_contracts(net.escrow, net.collector);
            Arc::new(PayingClient::new(if i < args.channels {
                ClientConfig {
                    // Open with the whole budget; a client still tops up if it runs out.
                    deposit_multiplier: (args.deposit / args.price).max(1),
                    spend_limit: args.deposit.saturating_mul(2),
                    ..base
                }
            } else {
                // A GPU client deposits its job's budget when the stream starts.
                ClientConfig {
                    deposit_multiplier: 1,
                    spend_limit: gpu_budget.saturating_mul(2),
                    ..base
                }
            }))
        })
        .collect();
    let (crawlers, gpu_clients) = clients.split_at(args.channels.min(clients.len()));
    let crawl = crawler::run(
        &server.origin,
        crawlers,
        args.requests,
        args.price,
        args.quiet,
    )
    .await
    .map_err(step("crawler"))?;
    let gpu = gpu::run(&server.origin, gpu_clients, args.gpu_seconds, args.quiet)
        .await
        .map_err(step("gpu jobs"))?;
    let server_overhead = overhead.read();
    let charged_by_channel = server_charged(&server, &payers);

    // Settlement: one claim round over every channel, in batches, then one sweep.
    let settle_started = Instant::now();
    let round = server.settlement.claim_round(true).await;
    if round.failed_rows > 0 || round.rows != payers.len() {
        return Err(step("claim")(format!(
            "{} of {} channels claimed, {} failed",
            round.rows,
            payers.len(),
            round.failed_rows
        )));
    }
    let sweep = server
        .escrow
        .settle(receiver.address(), net.token)
        .await
        .map_err(step("settle"))?;

    // Refunds: the first half of the payers ask over HTTP (x402 `refund` payload); the
    // server refunds the rest as idle channels on its own.
    let mut refund_txs = Vec::new();
    let asking = payers.len() / 2;
    for client in clients.iter().take(asking) {
        let answer = client
            .refund(&format!("{}/crawl", server.origin), None)
            .await
            .map_err(step("client refund"))?;
        refund_txs.push(
            answer
                .transaction
                .parse::<B256>()
                .map_err(step("client refund tx hash"))?,
        );
    }
    let idle = RefundPolicy {
        idle_after: Duration::ZERO,
        only_when_claimed: true,
    };
    let ledger = server.engine.ledger().clone();
    for refunded in refund_idle(&ledger, &server.store, &server.escrow, &idle).await {
        refund_txs.push(
            refunded
                .map_err(|(id, e)| step("idle refund")(format!("{id}: {e}")))?
                .tx_hash,
        );
    }
    let settle_elapsed = settle_started.elapsed();

    let after = Balances::read(&net, &payers, receiver.address())
        .await
        .map_err(step("read balances"))?;
    let deposits: Vec<B256> = crawl
        .deposits
        .iter()
        .chain(&gpu.deposits)
        .copied()
        .collect();
    let deposit_gas = report::gas_of(&net, &deposits)
        .await
        .map_err(step("deposit receipts"))?;
    let refund_gas = report::gas_of(&net, &refund_txs)
        .await
        .map_err(step("refund receipts"))?;
    let exact_gas = report::exact_transfer_gas(&net, &payers[0])
        .await
        .map_err(step("measure exact"))?;
    let end_block = net
        .provider
        .get_block_number()
        .await
        .map_err(step("block number"))?;
    server.shutdown().await;

    let summary = Summary {
        channels: payers.len(),
        charged_by_payer: crawl
            .charged_by_payer
            .iter()
            .chain(&gpu.charged_by_payer)
            .copied()
            .collect(),
        crawl,
        gpu,
        server_overhead,
        claim_txs: round.batches,
        claim_gas: round.gas_used,
        settle_gas: sweep.gas_used,
        deposit_gas,
        refund_txs: refund_txs.len(),
        refunds_over_http: asking,
        refund_gas,
        blocks: end_block.saturating_sub(start_block),
        settle_elapsed,
        exact_gas_per_request: exact_gas,
        before,
        after,
        charged_by_channel,
        total_elapsed: started.elapsed(),
    };
    if !args.quiet {
        println!("{summary}");
    }
    summary.reconcile().map_err(step("reconcile"))?;
    Ok(summary)
}

/// Installs the project's pinned toolchain (`scripts/tools.sh`, into `.tools/`) when no anvil
/// can be found, so `x402-upto demo` works from a fresh checkout with only cargo, node and npm.
async fn ensure_anvil(quiet: bool) -> Result<(), DemoError> {
    if Devnet::anvil_path().is_ok() {
        return Ok(());
    }
    let script = x402_upto_testkit::workspace_root().join("scripts/tools.sh");
    if !script.is_file() {
        return Devnet::anvil_path().map(|_| ()).map_err(step("find anvil"));
    }
    if !quiet {
        eprintln!(
            "anvil not found: installing the pinned toolchain with {}",
            script.display()
        );
    }
    let status = tokio::process::Command::new("bash")
        .arg(&script)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .map_err(step("install toolchain"))?;
    if !status.success() {
        return Err(step("install toolchain")(format!(
            "{} exited with {status}",
            script.display()
        )));
    }
    Devnet::anvil_path().map(|_| ()).map_err(step("find anvil"))
}

/// What the server's ledger charged each payer's channel (before refunds remove them).
fn server_charged(server: &DemoServer, payers: &[PrivateKeySigner]) -> Vec<u128> {
    let ledger = server.engine.ledger();
    let by_payer: std::collections::HashMap<_, _> = ledger
        .records()
        .into_iter()
        .map(|r| (r.config.payer, r.charged))
        .collect();
    payers
        .iter()
        .map(|p| by_payer.get(&p.address()).copied().unwrap_or(0))
        .collect()
}

/// Rough budget so the demo never hangs: anvil answers in milliseconds.
pub const DEMO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

#[cfg(test)]
mod rate_tests {
    use super::whole_rate;

    #[test]
    fn rates_print_as_whole_numbers_with_separators() {
        assert_eq!(whole_rate(2318.0315), "2,318");
        assert_eq!(whole_rate(999.6), "1,000");
        assert_eq!(whole_rate(12.4), "12");
        assert_eq!(whole_rate(1_234_567.0), "1,234,567");
        assert_eq!(whole_rate(f64::NAN), "0");
    }
}
