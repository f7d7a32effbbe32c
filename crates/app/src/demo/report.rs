//! Balances before and after, the summary table, and the reconciliation that must hold to the
//! last atomic unit.

use std::fmt;
use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::{Address, B256};

use alloy::providers::Provider;

use super::crawler::CrawlStats;
use super::gpu::{GpuStats, PER_SECOND};
use x402_upto_testkit::devnet::{Devnet, DevnetError};

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

    /// Sum over all payers.
    pub fn payers_total(&self) -> u128 {
        self.payers.iter().sum()
    }
}

/// Gas of one x402 `exact` payment on this chain: a `transferWithAuthorization` of MockUSDC.
pub async fn exact_transfer_gas(net: &Devnet, payer: &PrivateKeySigner) -> Result<u64, String> {
    let to = net.key(1).ok_or("no key 1")?.address();
    let receipt = net
        .exact_transfer(payer, to, 1, B256::repeat_byte(0xe7))
        .await
        .map_err(|e| e.to_string())?;
    Ok(receipt.gas_used)
}

/// Total gas of mined transactions, read from their receipts.
pub async fn gas_of(net: &Devnet, hashes: &[B256]) -> Result<u64, String> {
    let mut gas = 0u64;
    for hash in hashes {
        let receipt = net
            .provider
            .get_transaction_receipt(*hash)
            .await
            .map_err(|e| format!("receipt {hash}: {e}"))?
            .ok_or_else(|| format!("no receipt for {hash}"))?;
        gas = gas.saturating_add(receipt.gas_used);
    }
    Ok(gas)
}

/// Server-side payment overhead (`x402_payment_overhead_seconds`: verification + durable
/// commit, handler excluded), read from a Prometheus recorder installed for the demo. `None`
/// when another recorder was installed first (e.g. by an embedding program).
#[derive(Debug)]
pub struct OverheadProbe(Option<metrics_exporter_prometheus::PrometheusHandle>);

/// Server-side overhead percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServerOverhead {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
}

impl OverheadProbe {
    /// Installs the recorder (one summary window long enough for the whole demo).
    pub fn install() -> Self {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_bucket_duration(Duration::from_secs(3_600))
            .and_then(|b| b.install_recorder())
            .ok();
        if handle.is_some() {
            x402_upto::telemetry::describe();
        }
        Self(handle)
    }

    /// The quantiles recorded so far, if any.
    pub fn read(&self) -> Option<ServerOverhead> {
        let text = self.0.as_ref()?.render();
        let quantile = |q: &str| {
            let key = format!(
                "{}{{quantile=\"{q}\"}} ",
                x402_upto::telemetry::PAYMENT_OVERHEAD
            );
            text.lines()
                .find_map(|l| l.strip_prefix(key.as_str()))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|secs| secs * 1e6)
        };
        Some(ServerOverhead {
            p50_us: quantile("0.5")?,
            p99_us: quantile("0.99")?,
        })
    }
}

/// What the demo did and what it cost.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Channels opened (one per payer).
    pub channels: usize,
    /// Crawler measurements.
    pub crawl: CrawlStats,
    /// GPU-job measurements.
    pub gpu: GpuStats,
    /// Per payer (crawlers, then GPU jobs): the charges its client verified.
    pub charged_by_payer: Vec<u128>,
    /// Server-side payment overhead, when the demo could install its metrics recorder.
    pub server_overhead: Option<ServerOverhead>,
    /// Claim transactions.
    pub claim_txs: usize,
    /// Gas of all claim transactions.
    pub claim_gas: u64,
    /// Gas of the sweep.
    pub settle_gas: u64,
    /// Gas of the deposits the server submitted for the payers.
    pub deposit_gas: u64,
    /// Refund transactions (client-requested and idle).
    pub refund_txs: usize,
    /// Of those, asked for by the client over HTTP.
    pub refunds_over_http: usize,
    /// Gas of the refunds.
    pub refund_gas: u64,
    /// Blocks mined during the run (anvil mines one per transaction).
    pub blocks: u64,
    /// Claims + sweep + refunds wall time.
    pub settle_elapsed: Duration,
    /// Gas x402 `exact` spends per paid request (one transferWithAuthorization).
    pub exact_gas_per_request: u64,
    /// Balances after funding, before any request.
    pub before: Balances,
    /// Balances after claims, the sweep and the refunds.
    pub after: Balances,
    /// The server ledger's charged total per payer (read before the refunds).
    pub charged_by_channel: Vec<u128>,
    /// Whole demo wall time.
    pub total_elapsed: Duration,
}

impl Summary {
    /// Paid requests: crawled pages plus streamed jobs (renewals are not counted).
    pub fn paid_requests(&self) -> usize {
        self.crawl.requests + self.gpu.jobs
    }

    /// Everything charged, per the verified responses.
    pub fn charged(&self) -> u128 {
        self.crawl.charged + self.gpu.charged
    }

    /// Gas spent on settlement per paid request (claims + sweep).
    pub fn gas_per_request(&self) -> f64 {
        (self.claim_gas + self.settle_gas) as f64 / self.paid_requests().max(1) as f64
    }

    /// Gas per paid request counting every transaction: deposits, claims, sweep, refunds.
    pub fn all_in_gas_per_request(&self) -> f64 {
        (self.deposit_gas + self.claim_gas + self.settle_gas + self.refund_gas) as f64
            / self.paid_requests().max(1) as f64
    }

    /// Checks that money is conserved and every charge reached the receiver exactly: each
    /// payer lost exactly what the server charged it (the rest was refunded), the receiver
    /// gained the sum, and the escrow holds nothing more than before.
    pub fn reconcile(&self) -> Result<(), String> {
        let charged: u128 = self.charged_by_channel.iter().sum();
        if charged != self.charged() {
            return Err(format!(
                "server ledger charged {charged} != sum of verified PAYMENT-RESPONSEs {}",
                self.charged()
            ));
        }
        if self.charged_by_payer != self.charged_by_channel {
            return Err("per-payer charges differ between clients and server".into());
        }
        for (i, ((b, a), c)) in self
            .before
            .payers
            .iter()
            .zip(&self.after.payers)
            .zip(&self.charged_by_channel)
            .enumerate()
        {
            if b.checked_sub(*a) != Some(*c) {
                return Err(format!(
                    "payer {i} paid {} but was charged {c}",
                    b.saturating_sub(*a)
                ));
            }
        }
        let received = self
            .after
            .receiver
            .checked_sub(self.before.receiver)
            .ok_or("receiver balance went down")?;
        if received != charged {
            return Err(format!("receiver got {received}, ledger charged {charged}"));
        }
        if self.after.escrow != self.before.escrow {
            return Err(format!(
                "escrow held {} before and {} after: deposits were not all claimed or refunded",
                self.before.escrow, self.after.escrow
            ));
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

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.crawl;
        writeln!(
            f,
            "x402-upto demo — x402 batch-settlement over HTTP on a local chain ({:.1} s)",
            self.total_elapsed.as_secs_f64()
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "  crawler                {} paid pages over {} channels in {:.1} s",
            c.requests,
            c.charged_by_payer.len(),
            c.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "  vouchers/s             {:.0} (each verified and durable before its response; sled group mode)",
            c.per_second()
        )?;
        if let Some(o) = self.server_overhead {
            writeln!(
                f,
                "  payment overhead       server p50 {:.0} µs, p99 {:.0} µs (verify + commit + durable)",
                o.p50_us, o.p99_us
            )?;
        }
        writeln!(
            f,
            "  paid request, client   p50 {}, p99 {} (sign + one round trip; free route p50 {}, p99 {})",
            ms(c.paid.percentile(50)),
            ms(c.paid.percentile(99)),
            ms(c.free.percentile(50)),
            ms(c.free.percentile(99)),
        )?;
        writeln!(
            f,
            "  charged (upto)         {} USDC of {} USDC signed ({:.0}%)",
            usdc(c.charged),
            usdc(c.signed),
            100.0 * c.charged as f64 / c.signed.max(1) as f64
        )?;
        let g = &self.gpu;
        if g.jobs > 0 {
            writeln!(
                f,
                "  gpu jobs               {} streamed jobs, {} GPU-seconds in {:.1} s, {} mid-stream renewals",
                g.jobs,
                g.seconds,
                g.elapsed.as_secs_f64(),
                g.renewals
            )?;
            writeln!(
                f,
                "                         charged {} USDC = {} GPU-s × {} exactly; {} job(s) stopped at the client's budget",
                usdc(g.charged),
                g.seconds,
                usdc(PER_SECOND),
                g.capped
            )?;
        }
        writeln!(
            f,
            "  on-chain transactions  {} deposits, {} claim batch(es) for {} channels, 1 sweep, {} refunds ({} asked over HTTP, {} idle)",
            c.deposits.len() + self.gpu.deposits.len(),
            self.claim_txs,
            self.channels,
            self.refund_txs,
            self.refunds_over_http,
            self.refund_txs.saturating_sub(self.refunds_over_http)
        )?;
        writeln!(
            f,
            "  gas per paid request   {:.0} for claims + sweep, {:.0} all-in (x402 exact: {} → {:.0}× / {:.0}× less)",
            self.gas_per_request(),
            self.all_in_gas_per_request(),
            self.exact_gas_per_request,
            self.exact_gas_per_request as f64 / self.gas_per_request().max(1e-9),
            self.exact_gas_per_request as f64 / self.all_in_gas_per_request().max(1e-9)
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
                "  reconciled: payers −{} = Σ charges = receiver +{}; every unspent deposit refunded",
                usdc(self.charged()),
                usdc(self.charged())
            ),
            Err(e) => write!(f, "  RECONCILIATION FAILED: {e}"),
        }
    }
}
