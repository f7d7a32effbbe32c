//! The crawler scenario over HTTP: one task per payer, each a [`PayingClient`] fetching pages
//! one after another (a payer's requests on one channel are sequential by protocol: each
//! voucher builds on the previous cumulative). Every page is priced "up to" the route's price
//! and charged by its size. The first request of each payer opens its channel with a gasless
//! deposit; the client tops up by itself when a voucher would exceed the deposit.
//!
//! Every 4th page the task also fetches the same page from the free route of the same server,
//! so the summary can show what paying adds to a request's latency, measured in one run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use super::{Latencies, bar};
use x402_upto::client::PayingClient;

/// What the crawler measured.
#[derive(Clone, Debug, Default)]
pub struct CrawlStats {
    /// Paid requests served (each one's voucher durable before its response).
    pub requests: usize,
    /// Wall time of the scenario.
    pub elapsed: Duration,
    /// Client-observed latency of paid requests that carried a voucher only (signing and one
    /// round trip: the client pays ahead after its first 402; deposits excluded).
    pub paid: Latencies,
    /// Latency of the same pages from the free route, sampled in the same run.
    pub free: Latencies,
    /// Requests that carried a deposit (an on-chain transaction submitted by the server).
    pub deposits: Vec<alloy_primitives::B256>,
    /// Sum of actual charges (from the verified `PAYMENT-RESPONSE`s).
    pub charged: u128,
    /// Sum of the signed maxima (what a fixed-price scheme would have charged).
    pub signed: u128,
    /// Per payer: what its client says it was charged in total.
    pub charged_by_payer: Vec<u128>,
}

impl CrawlStats {
    /// Paid requests per second over the whole scenario.
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs the crawler; fails on the first refused or unverifiable payment (none is expected).
pub async fn run(
    origin: &str,
    clients: &[Arc<PayingClient>],
    requests: usize,
    price: u128,
    quiet: bool,
) -> Result<CrawlStats, String> {
    let progress = bar(
        quiet,
        (clients.len() * requests) as u64,
        "crawler  {bar:40} {pos}/{len} paid pages  {rate}",
    )?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in clients {
        let client = Arc::clone(client);
        let origin = origin.to_string();
        let progress = progress.clone();
        tasks.push(tokio::spawn(crawl_one(
            client, origin, requests, price, progress,
        )));
    }
    let results = futures_util::future::join_all(tasks).await;
    progress.finish_and_clear();
    let mut stats = CrawlStats {
        elapsed: started.elapsed(),
        ..CrawlStats::default()
    };
    for r in results {
        let one = r.map_err(|e| format!("crawler task failed: {e}"))??;
        stats.requests += one.requests;
        stats.paid.extend(one.paid);
        stats.free.extend(one.free);
        stats.deposits.extend(one.deposits);
        stats.charged += one.charged;
        stats.signed += one.signed;
        stats.charged_by_payer.push(one.charged);
    }
    stats.paid.sort();
    stats.free.sort();
    Ok(stats)
}

async fn crawl_one(
    client: Arc<PayingClient>,
    origin: String,
    requests: usize,
    price: u128,
    progress: ProgressBar,
) -> Result<CrawlStats, String> {
    let plain = reqwest::Client::new();
    let mut s = CrawlStats::default();
    for n in 0..requests {
        let t0 = Instant::now();
        let answer = client
            .get(&format!("{origin}/crawl?n={n}"))
            .await
            .map_err(|e| format!("page {n}: {e}"))?;
        let took = t0.elapsed();
        if answer.status != reqwest::StatusCode::OK {
            return Err(format!("page {n}: HTTP {}", answer.status));
        }
        let settle = answer
            .settle
            .as_ref()
            .ok_or_else(|| format!("page {n}: served without a PAYMENT-RESPONSE"))?;
        let charged = answer
            .charged()
            .ok_or_else(|| format!("page {n}: PAYMENT-RESPONSE without chargedAmount"))?;
        if settle.transaction.is_empty() {
            s.paid.push(took);
        } else {
            let hash = settle
                .transaction
                .parse()
                .map_err(|e| format!("page {n}: deposit tx hash: {e}"))?;
            s.deposits.push(hash);
        }
        s.requests += 1;
        s.charged += charged;
        s.signed += price;
        progress.inc(1);
        if n % 4 == 3 {
            let t0 = Instant::now();
            let free = plain
                .get(format!("{origin}/free?n={n}"))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| format!("free page {n}: {e}"))?;
            free.bytes()
                .await
                .map_err(|e| format!("free page {n}: {e}"))?;
            s.free.push(t0.elapsed());
        }
    }
    // The client's own view must agree with the sum of the responses it verified.
    let client_total: u128 = client.channels().iter().map(|c| c.charged).sum();
    if client_total != s.charged {
        return Err(format!(
            "client state says {client_total} charged, responses say {}",
            s.charged
        ));
    }
    Ok(s)
}
