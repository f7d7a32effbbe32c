//! GPU per-minute billing: a streamed job charged per GPU-second, paid one GPU-minute at a
//! time with mid-stream voucher renewal (`docs/protocol.md` §10).
//!
//! The route's price is one GPU-minute: the first voucher authorizes it, and the client
//! renews with the next cumulative voucher when the server asks (at 75 % of the latest
//! minute). Each renewal is a durable checkpoint of what was delivered so far. The handler
//! charges one GPU-second before producing it and, when the authorized minutes are used up,
//! waits briefly for a renewal before it ends the stream. The demo's clock is accelerated:
//! one GPU-second takes [`TICK`].
//!
//! One job is started by a client whose own budget is smaller than the job: its stream stops
//! cleanly at that budget, charged exactly for what it received.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Body;
use axum::extract::Query;
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get};
use bytes::Bytes;
use indicatif::ProgressBar;
use serde::Deserialize;

use super::bar;
use x402_upto::client::{PayingClient, StreamEvent};
use x402_upto::engine::Engine;
use x402_upto::server::{Charge, PaymentLayer};
use x402_upto::store::SledStore;

/// Price of one GPU-second, atomic units ($0.0001).
pub const PER_SECOND: u128 = 100;
/// The route's price: one GPU-minute, the budget each voucher adds.
pub const MINUTE: u128 = 60 * PER_SECOND;
/// Wall time of one GPU-second in the demo.
pub const TICK: Duration = Duration::from_millis(5);
/// How long the handler waits for a renewal once the authorized minutes are used up.
const RENEWAL_GRACE: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
struct Job {
    /// GPU-seconds the job runs for.
    seconds: u32,
}

async fn job(Extension(charge): Extension<Charge>, Query(job): Query<Job>) -> impl IntoResponse {
    // A stream that delivers nothing charges nothing.
    charge.set(0);
    let ticks = futures_util::stream::unfold(0u32, move |second| {
        let charge = charge.clone();
        async move {
            if second >= job.seconds || !charge.add_wait(PER_SECOND, RENEWAL_GRACE).await {
                return None;
            }
            tokio::time::sleep(TICK).await;
            let event = format!(
                "event: progress\ndata: {{\"gpuSecond\":{}}}\n\n",
                second + 1
            );
            Some((Ok::<_, Infallible>(Bytes::from(event)), second + 1))
        }
    });
    (
        [(http::header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(ticks),
    )
}

/// The `/gpu` route: a metered stream at [`MINUTE`] per voucher increment.
pub fn route(engine: Engine<SledStore>) -> MethodRouter {
    get(job).layer(
        PaymentLayer::fixed(engine, MINUTE)
            .streaming()
            .with_description("x402-upto demo: GPU job, billed per second, paid per minute")
            .with_mime_type("text/event-stream"),
    )
}

/// What the GPU scenario measured.
#[derive(Clone, Debug, Default)]
pub struct GpuStats {
    /// Jobs streamed.
    pub jobs: usize,
    /// GPU-seconds delivered (progress events received).
    pub seconds: u64,
    /// Mid-stream renewals (each a durable checkpoint).
    pub renewals: usize,
    /// Jobs that ended before their length because the client declined to renew past its
    /// own budget (stopped cleanly, charged for what was delivered).
    pub capped: usize,
    /// Sum of the final `chargedAmount`s.
    pub charged: u128,
    /// Per payer, what its stream was charged.
    pub charged_by_payer: Vec<u128>,
    /// Deposits made when the streams started (on-chain transactions).
    pub deposits: Vec<alloy_primitives::B256>,
    /// Wall time of the scenario.
    pub elapsed: Duration,
}

/// Runs one job per client, concurrently; the last client's budget is two minutes, whatever
/// the job's length. Fails if any stream is not charged exactly for what it delivered.
pub async fn run(
    origin: &str,
    clients: &[Arc<PayingClient>],
    seconds: u32,
    quiet: bool,
) -> Result<GpuStats, String> {
    let progress = bar(
        quiet,
        clients.len() as u64 * u64::from(seconds),
        "gpu jobs {bar:40} {pos}/{len} GPU-seconds streamed  {msg}",
    )?;
    let started = Instant::now();
    let full = MINUTE * u128::from(seconds.div_ceil(60));
    let mut tasks = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let budget = if i + 1 == clients.len() && clients.len() > 1 {
            2 * MINUTE
        } else {
            full
        };
        let (client, progress) = (Arc::clone(client), progress.clone());
        let url = format!("{origin}/gpu?seconds={seconds}");
        tasks.push(tokio::spawn(async move {
            stream_one(&client, &url, seconds, budget, progress).await
        }));
    }
    let results = futures_util::future::join_all(tasks).await;
    progress.finish_and_clear();
    let mut stats = GpuStats {
        elapsed: started.elapsed(),
        ..GpuStats::default()
    };
    for r in results {
        let one = r.map_err(|e| format!("gpu task failed: {e}"))??;
        stats.jobs += 1;
        stats.seconds += one.seconds;
        stats.renewals += one.renewals;
        stats.capped += one.capped;
        stats.charged += one.charged;
        stats.charged_by_payer.push(one.charged);
        stats.deposits.extend(one.deposits);
    }
    Ok(stats)
}

async fn stream_one(
    client: &PayingClient,
    url: &str,
    seconds: u32,
    budget: u128,
    progress: ProgressBar,
) -> Result<GpuStats, String> {
    let mut s = GpuStats::default();
    let mut stream = client
        .stream(url, budget)
        .await
        .map_err(|e| format!("gpu job: {e}"))?;
    let mut settled = None;
    while let Some(event) = stream.next().await {
        match event.map_err(|e| format!("gpu job: {e}"))? {
            StreamEvent::Data { event, .. } if event == "progress" => {
                s.seconds += 1;
                progress.inc(1);
            }
            StreamEvent::Data { .. } => {}
            StreamEvent::Renewed(_) => {
                s.renewals += 1;
                progress.set_message(format!("renewed at {} GPU-s", s.seconds));
            }
            // Declined (our budget is reached) or refused: the stream ends at what it has.
            StreamEvent::RenewalSkipped { .. } => {}
            StreamEvent::Settled(response) => settled = Some(response),
        }
    }
    let response = settled.ok_or("gpu job: stream ended without its payment-response")?;
    s.capped = usize::from(s.seconds < u64::from(seconds));
    if !response.transaction.is_empty() {
        s.deposits.push(
            response
                .transaction
                .parse()
                .map_err(|e| format!("gpu job: deposit tx hash: {e}"))?,
        );
    }
    s.charged = response
        .extra
        .as_ref()
        .and_then(|e| e.charged_amount)
        .ok_or("gpu job: final payment-response without chargedAmount")?;
    // The point of metering: charged exactly for the seconds received, never for the budget.
    if s.charged != u128::from(s.seconds) * PER_SECOND {
        return Err(format!(
            "gpu job: charged {} for {} GPU-seconds at {PER_SECOND}",
            s.charged, s.seconds
        ));
    }
    if s.charged > budget {
        return Err(format!(
            "gpu job: charged {} above its budget {budget}",
            s.charged
        ));
    }
    Ok(s)
}
