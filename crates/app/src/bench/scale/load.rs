//! Paid requests spread uniformly over all `N` channels of one server, at concurrency `C`.
//!
//! Virtual client `j` owns the channels `i ≡ j (mod C)`, visited in its own shuffled order,
//! again and again: every channel is hit equally often, no two clients ever share one (no
//! `channel_busy`), and the `k`-th visit of a channel signs `SEED_CHARGED + k·CHARGE + PRICE`.
//! With `N` = 1,000 a channel is revisited every few milliseconds; with `N` = 1,000,000 a
//! timed window touches each at most once or twice. Every header is rendered and signed
//! before the timed phase, so the load generator's work per request is the same at every
//! `N` (one header copied into one request).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Serialize;
use serde_json::Value;
use x402_upto::wire::PaymentRequirements;

use super::world;
use crate::bench::cpu::{CpuMark, CpuUse};
use crate::bench::presign::Template;
use crate::bench::timed::{self, ClientResult};

/// Which channel each virtual client visits next, kept across rounds.
pub(super) struct Plan {
    /// Per client: its channels, in visiting order.
    lists: Vec<Vec<u32>>,
    /// Per client: requests already served (the next request's index).
    served: Vec<u64>,
}

impl Plan {
    /// `n` channels over `c` clients (`n ≥ c`).
    pub(super) fn new(n: u64, c: usize) -> Self {
        let lists = (0..c)
            .map(|j| {
                let mut l: Vec<u32> = (j as u64..n).step_by(c).map(|i| i as u32).collect();
                let mut rng = rand::rngs::StdRng::seed_from_u64(n ^ ((j as u64) << 40));
                l.shuffle(&mut rng);
                l
            })
            .collect();
        Self {
            lists,
            served: vec![0; c],
        }
    }

    /// Channel index and pass of client `j`'s request `k`.
    fn request(&self, j: usize, k: u64) -> (u64, u64) {
        let l = &self.lists[j];
        let len = l.len() as u64;
        (u64::from(l[(k % len) as usize]), k / len)
    }
}

/// One client's headers for a round, in sending order.
pub(super) type Headers = Vec<HeaderValue>;

/// Signs and renders `per_client` requests for every client, continuing where the last
/// round stopped. Runs on every core (not timed).
pub(super) fn prepare(
    plan: &Plan,
    per_client: u64,
    offer: &PaymentRequirements,
    resource: &Value,
) -> Result<Vec<Headers>, String> {
    let domain = world::domain();
    let payer = world::payer();
    let mut out = Vec::with_capacity(plan.lists.len());
    for j in 0..plan.lists.len() {
        let first = plan.served[j];
        let reqs: Vec<(u64, u64)> = (first..first + per_client)
            .map(|k| plan.request(j, k))
            .collect();
        let configs: Vec<_> = reqs.iter().map(|&(i, _)| world::config(i)).collect();
        let vouchers: Vec<_> = configs
            .iter()
            .zip(&reqs)
            .map(|(c, &(_, pass))| (domain.channel_id(c), world::voucher_max(pass)))
            .collect();
        let sigs = world::sign_many(payer, &domain, &vouchers)?;
        let mut headers = Vec::with_capacity(reqs.len());
        for ((config, (id, max)), sig) in configs.iter().zip(&vouchers).zip(&sigs) {
            let t = Template::new(offer, resource, &world::wire(config), *id)
                .ok_or("header template")?;
            let h = HeaderValue::from_maybe_shared(Bytes::from(t.render(*max, sig)))
                .map_err(|e| format!("header: {e}"))?;
            headers.push(h);
        }
        out.push(headers);
    }
    Ok(out)
}

/// One timed window against one server.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    /// Channels on the server.
    pub channels: u64,
    /// Round (0-based).
    pub round: usize,
    /// Paid 200s.
    pub ok: u64,
    /// Failed requests (any is fatal for the run).
    pub errors: u64,
    /// First errors.
    pub error_samples: Vec<String>,
    /// Wall time, seconds.
    pub seconds: f64,
    /// `ok / seconds`.
    pub rps: f64,
    /// Latency percentiles, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// A client ran out of presigned headers (the window ended early).
    pub exhausted: bool,
    /// Distinct channels paid in this window.
    pub distinct_channels: u64,
    /// CPU over the window.
    pub cpu: Option<CpuUse>,
}

/// Runs one timed window of `duration` with the prepared headers; advances `plan`.
pub(super) async fn window(
    plan: &mut Plan,
    headers: Vec<Headers>,
    url: &str,
    duration: Duration,
    server_pid: Option<u32>,
    round: usize,
) -> Result<Window, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("url: {e}"))?;
    let authority = uri
        .authority()
        .map(|a| a.to_string())
        .ok_or("url without host")?;
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.to_string());
    let stop = Arc::new(AtomicBool::new(false));
    let exhausted = Arc::new(AtomicBool::new(false));
    let start = Arc::new(tokio::sync::Barrier::new(headers.len() + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for (j, h) in headers.into_iter().enumerate() {
        let (stop, exhausted, start) = (stop.clone(), exhausted.clone(), start.clone());
        let (authority, path) = (authority.clone(), path.clone());
        tasks.spawn(async move {
            let out = client(h, &authority, &path, &stop, &exhausted, &start).await;
            (j, out)
        });
    }
    start.wait().await;
    let t0 = Instant::now();
    let cpu0 = CpuMark::now(server_pid.as_slice(), None);
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.store(true, Ordering::Relaxed);
        });
    }
    let mut ok = 0u64;
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    let mut results = Vec::new();
    while let Some(done) = tasks.join_next().await {
        results.push(done.map_err(|e| format!("client task: {e}"))?);
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu0.since(CpuMark::now(server_pid.as_slice(), None), seconds, 0);
    let mut distinct = 0u64;
    for (j, out) in results {
        let len = plan.lists[j].len() as u64;
        distinct += out.ok.min(len);
        plan.served[j] += out.ok;
        ok += out.ok;
        latencies.extend(out.latencies_us);
        errors.extend(out.error);
    }
    let cpu = cpu.map(|c| CpuUse {
        server_us_per_request: c
            .server
            .filter(|_| ok > 0)
            .map(|pct| pct / 100.0 * seconds * 1e6 / ok as f64),
        ..c
    });
    Ok(Window {
        channels: plan.lists.iter().map(|l| l.len() as u64).sum(),
        round,
        ok,
        errors: errors.len() as u64,
        error_samples: errors.into_iter().take(5).collect(),
        seconds,
        rps: ok as f64 / seconds,
        p50_ms: percentile_ms(&mut latencies, 0.5),
        p99_ms: percentile_ms(&mut latencies, 0.99),
        exhausted: exhausted.load(Ordering::Relaxed),
        distinct_channels: distinct,
        cpu,
    })
}

async fn client(
    headers: Headers,
    authority: &str,
    path: &str,
    stop: &AtomicBool,
    exhausted: &AtomicBool,
    start: &tokio::sync::Barrier,
) -> ClientResult {
    let mut out = ClientResult {
        ok: 0,
        latencies_us: Vec::with_capacity(headers.len()),
        error: None,
    };
    let connected = timed::connect(authority).await;
    // Everyone meets at the barrier, connected or not, so the run never hangs.
    start.wait().await;
    let mut sender = match connected {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    for header in headers {
        if stop.load(Ordering::Relaxed) {
            return out;
        }
        let t = Instant::now();
        let answer = match timed::send_voucher(&mut sender, authority, path, header).await {
            Ok(a) => a,
            Err(e) => {
                out.error = Some(e);
                return out;
            }
        };
        out.latencies_us
            .push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        if answer.status != http::StatusCode::OK || !answer.paid {
            // Not charged: this client's later vouchers no longer match; it stops and the
            // run is reported as failed.
            out.error = Some(answer.failure(out.ok));
            return out;
        }
        out.ok += 1;
    }
    // Out of headers: end the window for everyone, so the rate is measured with all C
    // clients active.
    exhausted.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    out
}

/// Latency percentile `p` (0..1) of `v` (sorted in place), ms.
pub(super) fn percentile_ms(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    f64::from(v[i.min(v.len() - 1)]) / 1000.0
}
