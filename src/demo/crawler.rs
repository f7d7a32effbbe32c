//! The crawler scenario: one concurrent task per payer, each sending paid requests one after
//! another (a payer's requests on one channel are sequential by protocol: each voucher builds
//! on the previous cumulative). Each request is priced "up to" `price` and costs a random
//! actual amount; the server side verifies, reserves, commits and waits for durability.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;

use super::DemoArgs;
use crate::ledger::Ledger;
use crate::store::{SledStore, persist};
use crate::typed_data::{ChannelConfig, sign_voucher};
use crate::verify::SignedVoucher;

/// What the crawler measured.
#[derive(Clone, Debug)]
pub struct CrawlStats {
    /// Paid requests served (committed durably).
    pub requests: usize,
    /// Wall time of the scenario.
    pub elapsed: Duration,
    /// Server-side payment overhead per request (verify → durable), sorted ascending.
    pub overhead_us: Vec<u32>,
    /// Sum of actual charges.
    pub charged: u128,
    /// Sum of the signed maxima (what a fixed-price scheme would have charged).
    pub signed: u128,
}

impl CrawlStats {
    /// Overhead percentile `p` (0..=100) in microseconds.
    pub fn percentile(&self, p: usize) -> u32 {
        if self.overhead_us.is_empty() {
            return 0;
        }
        let i = (self.overhead_us.len() - 1) * p.min(100) / 100;
        self.overhead_us[i]
    }

    /// Paid requests per second over the whole scenario.
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs the crawler; fails on the first refused voucher (none is expected).
pub async fn run(
    ledger: &Ledger,
    store: Arc<SledStore>,
    payers: &[PrivateKeySigner],
    configs: &[ChannelConfig],
    args: &DemoArgs,
) -> Result<CrawlStats, String> {
    let total = payers.len() * args.requests;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("crawler  {bar:40} {pos}/{len} paid requests  {per_sec}")
            .map_err(|e| e.to_string())?,
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (payer, config) in payers.iter().zip(configs) {
        let ledger = ledger.clone();
        let store = Arc::clone(&store);
        let bar = bar.clone();
        let payer = payer.clone();
        let id = ledger.domain().channel_id(config);
        let (requests, price) = (args.requests, args.price);
        tasks.push(tokio::spawn(async move {
            let mut overhead = Vec::with_capacity(requests);
            let (mut charged, mut signed) = (0u128, 0u128);
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
            for _ in 0..requests {
                let base = ledger.snapshot(&id).ok_or("channel vanished")?.charged;
                let max = base + price;
                // Client side: sign the next cumulative voucher.
                let sig =
                    sign_voucher(&payer, ledger.domain(), id, max).map_err(|e| e.to_string())?;
                let voucher = SignedVoucher {
                    channel_id: id,
                    max_claimable: max,
                    signature: Bytes::from(sig.as_bytes()),
                };
                // Server side: verify + reserve, "run the handler", commit the actual cost, make it durable.
                let t0 = Instant::now();
                let reservation = ledger
                    .verify_and_reserve(voucher, price)
                    .map_err(|r| r.to_string())?;
                let actual = rng.random_range(0..=price);
                let staged = reservation
                    .commit(actual, super::now())
                    .map_err(|r| r.reject.to_string())?;
                persist(store.as_ref(), staged)
                    .await
                    .map_err(|e| e.to_string())?;
                overhead.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                charged += actual;
                signed += price;
                bar.inc(1);
            }
            Ok::<_, String>((overhead, charged, signed))
        }));
    }
    let results = futures_util::future::join_all(tasks).await;
    bar.finish_and_clear();
    let mut stats = CrawlStats {
        requests: 0,
        elapsed: started.elapsed(),
        overhead_us: Vec::with_capacity(total),
        charged: 0,
        signed: 0,
    };
    for r in results {
        let (overhead, charged, signed) = r.map_err(|e| format!("crawler task failed: {e}"))??;
        stats.requests += overhead.len();
        stats.overhead_us.extend(overhead);
        stats.charged += charged;
        stats.signed += signed;
    }
    stats.overhead_us.sort_unstable();
    Ok(stats)
}
