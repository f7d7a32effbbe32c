//! One measurement: `C` virtual clients (one channel each) against one target.
//!
//! 1. **Warm-up**: each virtual client opens its channel through the normal x402 flow with a
//!    [`PayingClient`] (unpaid GET → 402 → gasless ERC-3009 deposit + first voucher), so the
//!    same code opens channels on our server and on the stock `@x402/express` server. The
//!    ceiling has no chain: its channels are synthetic and need no deposit.
//! 2. **Presign** (not timed): every voucher the timed phase may send is signed beforehand,
//!    with libsecp256k1 on all cores. The charge per request is fixed, so voucher `k` of a
//!    channel is `charged₀ + k·charge + price`, exactly what both servers require. This is the
//!    baseline's `presigned` mode: client CPU does not compete with the server for the 2 cores.
//!    Only the header text is assembled at send time (a JSON template with the amount and
//!    signature spliced in, then base64: about 2 µs).
//! 3. **Timed phase**: each virtual client holds one HTTP/1.1 keep-alive connection and sends
//!    its paid requests back to back. Latency is measured per request, from just before the
//!    request is written to the end of the response body. Any status other than 200 (or a 200
//!    without `PAYMENT-RESPONSE` from a paying server) is an error; that client stops (its
//!    next voucher would no longer match), and the run is reported as failed.
//! 4. **Accounting**: for the paying servers, their own counters (`/admin/stats`, read before
//!    and after) must show one paid response per 200 seen and `charge ×` that many charged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::Address;
use serde::Serialize;
use serde_json::Value;

use super::cpu::CpuMark;
pub use super::cpu::CpuUse;
use super::presign::{CYCLE_POOL, Prepared, Template, presign, salt};
use super::timed::{Rules, client_loop};
use x402_upto::client::{ClientConfig, PayingClient};
use x402_upto::typed_data::{ChannelConfig, ChannelId, EscrowDomain};
use x402_upto::wire::{
    BATCH_SETTLEMENT, ChannelConfigWire, PAYMENT_REQUIRED, PaymentRequired, decode_header,
};

/// What is measured and how.
#[derive(Clone, Debug)]
pub struct Target {
    /// Short name for the table (`ours`, `stock`, `ceiling`).
    pub name: String,
    /// The paid URL (with any query the target needs).
    pub url: String,
    /// `/admin/stats` of a paying server, for the accounting check.
    pub stats: Option<String>,
    /// Whether channels are opened with a deposit (false: synthetic channels, ceiling only).
    pub deposit: bool,
    /// Most requests per second this target could plausibly serve: the presign budget.
    pub budget_rate: u64,
    /// Stateless target (the ceiling): each virtual client cycles through a small pool of
    /// presigned vouchers instead of a fresh one per request. Every request still costs the
    /// server one full decode and recovery.
    pub cycle: bool,
    /// Process ids of the server (several: instances behind one target), to report their
    /// CPU time over the timed phase.
    pub pids: Vec<u32>,
    /// PostgreSQL's postmaster, when the target keeps its channels there: its CPU and its
    /// commits per second are reported too.
    pub db_pid: Option<u32>,
}

/// Settings shared by every target of a run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Virtual clients = channels = concurrent requests.
    pub concurrency: usize,
    /// Length of the timed phase.
    pub duration: Duration,
    /// What the server charges per request (our bench server's `--charge`, the stock server's
    /// `?charge=`).
    pub charge: u128,
    /// Owns the deposits and signs the vouchers of every virtual client (one salt each).
    pub payer: PrivateKeySigner,
    /// Escrow of the voucher domain.
    pub escrow: Address,
    /// ERC-3009 deposit collector.
    pub collector: Address,
    /// Distinguishes this run's channels from earlier runs' (part of each salt).
    pub label: String,
}

/// The server's own counters, read around a run.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ServerCounts {
    /// 200s with a `PAYMENT-RESPONSE` the server sent.
    pub paid_responses: u64,
    /// Sum of the charges it booked.
    pub charged: u128,
}

/// Whether the server booked exactly what the load generator was served.
#[derive(Clone, Debug, Serialize)]
pub struct Accounting {
    /// Paid 200s the load generator saw (warm-up + timed).
    pub served: u64,
    /// Δ paid responses by the server's counter.
    pub server_paid: u64,
    /// Δ charged by the server's books.
    pub server_charged: u128,
    /// `served × charge`.
    pub expected_charged: u128,
    /// All three agree.
    pub ok: bool,
}

/// One target at one concurrency.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    /// Target name.
    pub target: String,
    /// Round of the benchmark this belongs to (set by the caller; ratios pair by round).
    pub round: usize,
    /// Virtual clients.
    pub concurrency: usize,
    /// 200s in the timed phase.
    pub ok: u64,
    /// Non-200s (or transport failures) in the timed phase and the warm-up.
    pub errors: u64,
    /// The first few errors, for the report.
    pub error_samples: Vec<String>,
    /// Wall time of the timed phase, seconds.
    pub seconds: f64,
    /// `ok / seconds`.
    pub rps: f64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest request.
    pub max_ms: f64,
    /// A virtual client used up its presigned vouchers: the window ended early.
    pub exhausted: bool,
    /// Vouchers presigned, and how long that took (not timed).
    pub presigned: u64,
    /// Seconds spent presigning.
    pub presign_seconds: f64,
    /// The server's books against what was served (paying targets only).
    pub accounting: Option<Accounting>,
    /// CPU use over the timed phase, % of one core (Linux `/proc`; `None` elsewhere).
    pub cpu: Option<CpuUse>,
    /// Database commits per second over the timed phase (every client's), if any.
    pub db_commits_per_s: Option<f64>,
}

impl Measurement {
    /// No errors and, where checked, exact books.
    pub fn is_clean(&self) -> bool {
        self.errors == 0 && self.accounting.as_ref().is_none_or(|a| a.ok)
    }
}

/// A failure that stops the run (as opposed to request errors, which are counted).
#[derive(Debug, thiserror::Error)]
#[error("{target}: {what}")]
pub struct RunError {
    target: String,
    what: String,
}

fn run_error(target: &Target, what: impl std::fmt::Display) -> RunError {
    RunError {
        target: target.name.clone(),
        what: what.to_string(),
    }
}

/// The target's 402 for `url`.
async fn offer(http: &reqwest::Client, target: &Target) -> Result<PaymentRequired, RunError> {
    let first = target.url.split(',').next().unwrap_or_default();
    let res = http
        .get(first)
        .send()
        .await
        .map_err(|e| run_error(target, format!("unpaid GET: {e}")))?;
    if res.status() != reqwest::StatusCode::PAYMENT_REQUIRED {
        return Err(run_error(
            target,
            format!("unpaid GET answered {}, not 402", res.status()),
        ));
    }
    let raw = res
        .headers()
        .get(PAYMENT_REQUIRED)
        .ok_or_else(|| run_error(target, "402 without PAYMENT-REQUIRED"))?;
    decode_header(raw.as_bytes(), 64 * 1024)
        .map_err(|e| run_error(target, format!("PAYMENT-REQUIRED: {e}")))
}

async fn server_counts(
    http: &reqwest::Client,
    target: &Target,
) -> Result<Option<ServerCounts>, RunError> {
    let Some(urls) = &target.stats else {
        return Ok(None);
    };
    // Several instances behind one target: their counts add up.
    let mut sum = ServerCounts::default();
    for url in urls.split(',') {
        let c = instance_counts(http, target, url).await?;
        sum.paid_responses += c.paid_responses;
        sum.charged += c.charged;
    }
    Ok(Some(sum))
}

async fn instance_counts(
    http: &reqwest::Client,
    target: &Target,
    url: &str,
) -> Result<ServerCounts, RunError> {
    let v: Value = http
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| run_error(target, format!("stats: {e}")))?
        .json()
        .await
        .map_err(|e| run_error(target, format!("stats json: {e}")))?;
    let num = |v: &Value| -> Option<u128> {
        match v {
            Value::String(s) => s.parse().ok(),
            Value::Number(n) => n.as_u64().map(u128::from),
            _ => None,
        }
    };
    let paid = v["paidResponses"]
        .as_u64()
        .ok_or_else(|| run_error(target, "stats without paidResponses"))?;
    // Ours sums its ledger; the stock server lists what it charged per channel.
    let charged = match v.get("chargedTotal") {
        Some(t) => num(t).ok_or_else(|| run_error(target, "stats chargedTotal"))?,
        None => v["channels"]
            .as_object()
            .map(|m| m.values().filter_map(|c| num(&c["charged"])).sum())
            .unwrap_or(0),
    };
    Ok(ServerCounts {
        paid_responses: paid,
        charged,
    })
}

/// Runs one target at `settings.concurrency`.
pub async fn measure(
    http: &reqwest::Client,
    target: &Target,
    settings: &Settings,
) -> Result<Measurement, RunError> {
    let c = settings.concurrency.max(1);
    let required = offer(http, target).await?;
    let offer = required
        .accepts
        .iter()
        .find(|o| o.scheme == BATCH_SETTLEMENT)
        .cloned()
        .ok_or_else(|| run_error(target, "402 offers no batch-settlement entry"))?;
    let price = offer
        .amount_u128()
        .ok_or_else(|| run_error(target, "offer amount"))?;
    if settings.charge > price {
        return Err(run_error(
            target,
            format!("charge {} above the price {price}", settings.charge),
        ));
    }
    let chain_id = offer
        .eip155_network()
        .map(|n| n.chain_id())
        .ok_or_else(|| run_error(target, "offer network"))?;
    let extra = offer
        .batch_extra()
        .map_err(|e| run_error(target, format!("offer extra: {e}")))?;
    let resource = serde_json::to_value(&required.resource).unwrap_or(Value::Null);
    let domain = EscrowDomain::new(chain_id, settings.escrow);
    // Vouchers each virtual client may need: the budget rate over the whole window.
    let per_client = if target.cycle {
        CYCLE_POOL
    } else {
        (target.budget_rate as f64 * settings.duration.as_secs_f64() / c as f64).ceil() as u64 + 16
    };
    let step = settings.charge;
    let urls: Vec<&str> = target.url.split(',').collect();
    let before = server_counts(http, target).await?;

    // 1. Warm-up: open the channels (a few at a time: each deposit is a transaction).
    let mut errors = 0u64;
    let mut samples = Vec::new();
    let mut warm_ok = 0u64;
    // Each channel with the instance (index into `urls`) that opened it: it keeps paying
    // that one, so each instance's books cover exactly its own channels.
    let mut channels: Vec<(ChannelConfigWire, ChannelId, u128, usize)> = Vec::with_capacity(c);
    if target.deposit {
        use futures_util::StreamExt as _;
        // The deposit covers every presigned voucher: no top-up during the timed phase.
        let deposit = per_client as u128 * step + 2 * price;
        let opened: Vec<_> = futures_util::stream::iter(0..c)
            .map(|i| {
                let mut cfg = ClientConfig::new(settings.payer.clone())
                    .with_contracts(settings.escrow, settings.collector);
                cfg.salt = salt(&settings.label, i);
                cfg.deposit_multiplier = deposit.div_ceil(price);
                cfg.spend_limit = u128::MAX / 4;
                let client = PayingClient::with_http(http.clone(), cfg);
                // Several instances: virtual client i pays instance i mod n, every time.
                let place = i % urls.len();
                let url = urls[place].to_owned();
                async move {
                    let answer = client
                        .get(&url)
                        .await
                        .map_err(|e| format!("warm-up: {e}"))?;
                    if answer.status != reqwest::StatusCode::OK {
                        return Err(format!(
                            "warm-up: HTTP {}: {}",
                            answer.status,
                            String::from_utf8_lossy(&answer.body)
                                .chars()
                                .take(200)
                                .collect::<String>()
                        ));
                    }
                    let state = client
                        .channels()
                        .into_iter()
                        .next()
                        .ok_or("warm-up: no channel")?;
                    Ok::<_, String>((state, answer.charged(), place))
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        for r in opened {
            match r {
                Ok((state, charged, place)) if charged == Some(step) => {
                    warm_ok += 1;
                    channels.push((state.config, state.channel_id, state.charged, place));
                }
                Ok((_, charged, _)) => {
                    errors += 1;
                    samples.push(format!("warm-up charged {charged:?}, expected {step}"));
                }
                Err(e) => {
                    errors += 1;
                    samples.push(e);
                }
            }
        }
    } else {
        for i in 0..c {
            let config = ChannelConfig {
                payer: settings.payer.address(),
                payerAuthorizer: settings.payer.address(),
                receiver: offer
                    .pay_to
                    .parse()
                    .map_err(|_| run_error(target, "offer payTo"))?,
                receiverAuthorizer: extra.receiver_authorizer,
                token: offer
                    .asset
                    .parse()
                    .map_err(|_| run_error(target, "offer asset"))?,
                withdrawDelay: alloy_primitives::aliases::U40::saturating_from(
                    extra.withdraw_delay,
                ),
                salt: salt(&settings.label, i),
            };
            let id = domain.channel_id(&config);
            let wire = ChannelConfigWire {
                payer: config.payer,
                payer_authorizer: config.payerAuthorizer,
                receiver: config.receiver,
                receiver_authorizer: config.receiverAuthorizer,
                token: config.token,
                withdraw_delay: extra.withdraw_delay,
                salt: config.salt,
            };
            channels.push((wire, id, 0, i % urls.len()));
        }
    }

    // 2. Presign (not timed).
    let t_sign = Instant::now();
    let mut prepared = Vec::with_capacity(channels.len());
    for (config, id, charged, place) in &channels {
        let template = Template::new(&offer, &resource, config, *id)
            .ok_or_else(|| run_error(target, "header template"))?;
        let first_max = charged + price;
        let signatures = tokio::task::block_in_place(|| {
            presign(
                &settings.payer,
                &domain,
                *id,
                first_max,
                step,
                per_client as usize,
            )
        })
        .map_err(|e| run_error(target, e))?;
        prepared.push((
            Prepared {
                template,
                first_max,
                signatures,
            },
            *place,
        ));
    }
    let presign_seconds = t_sign.elapsed().as_secs_f64();
    let presigned = prepared
        .iter()
        .map(|(p, _)| p.signatures.len() as u64)
        .sum();

    // 3. Timed phase.
    let mut places = Vec::with_capacity(urls.len());
    for u in &urls {
        let url: http::Uri = u
            .parse()
            .map_err(|e| run_error(target, format!("url: {e}")))?;
        let authority = url
            .authority()
            .map(|a| a.to_string())
            .ok_or_else(|| run_error(target, "url without host"))?;
        let path = url
            .path_and_query()
            .map_or("/".to_owned(), |p| p.to_string());
        places.push((authority, path));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let exhausted = Arc::new(AtomicBool::new(false));
    let start = Arc::new(tokio::sync::Barrier::new(prepared.len() + 1));
    let mut tasks = tokio::task::JoinSet::new();
    let rules = Rules {
        step,
        must_be_paid: target.deposit,
        cycle: target.cycle,
    };
    for (p, place) in prepared {
        let (stop, exhausted, start) = (stop.clone(), exhausted.clone(), start.clone());
        let (authority, path) = places[place % places.len()].clone();
        tasks.spawn(async move {
            client_loop(p, &authority, &path, rules, &stop, &exhausted, &start).await
        });
    }
    start.wait().await;
    let t0 = Instant::now();
    let cpu0 = CpuMark::now(&target.pids, target.db_pid);
    let commits0 = db_commits(http, target).await;
    let timer = {
        let stop = stop.clone();
        let d = settings.duration;
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let mut latencies: Vec<u32> = Vec::new();
    let mut ok = 0u64;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(r) => {
                ok += r.ok;
                latencies.extend_from_slice(&r.latencies_us);
                if let Some(e) = r.error {
                    errors += 1;
                    if samples.len() < 5 {
                        samples.push(e);
                    }
                }
            }
            Err(e) => {
                errors += 1;
                samples.push(format!("client task: {e}"));
            }
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu0.since(CpuMark::now(&target.pids, target.db_pid), seconds, ok);
    let commits1 = db_commits(http, target).await;
    timer.abort();
    latencies.sort_unstable();
    let pct = |q: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        f64::from(latencies[i]) / 1000.0
    };

    // 4. Accounting: the server's counters moved by exactly what we were served.
    let accounting = match before {
        Some(before) => {
            // The stock server updates its counters when the response has been flushed.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let after = server_counts(http, target).await?.unwrap_or_default();
            let served = warm_ok + ok;
            let server_paid = after.paid_responses.saturating_sub(before.paid_responses);
            let server_charged = after.charged.saturating_sub(before.charged);
            let expected_charged = u128::from(served) * step;
            Some(Accounting {
                served,
                server_paid,
                server_charged,
                expected_charged,
                ok: server_paid == served && server_charged == expected_charged,
            })
        }
        None => None,
    };
    Ok(Measurement {
        target: target.name.clone(),
        round: 0,
        concurrency: c,
        ok,
        errors,
        error_samples: samples,
        seconds,
        rps: if seconds > 0.0 {
            ok as f64 / seconds
        } else {
            0.0
        },
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: latencies.last().map_or(0.0, |&m| f64::from(m) / 1000.0),
        exhausted: exhausted.load(Ordering::Relaxed),
        presigned,
        presign_seconds,
        accounting,
        cpu,
        db_commits_per_s: commits0
            .zip(commits1)
            .filter(|_| seconds > 0.0)
            .map(|(a, b)| b.saturating_sub(a) as f64 / seconds),
    })
}

/// The database's commit counter, from the target's first stats URL (`dbCommits`), if it
/// reports one.
async fn db_commits(http: &reqwest::Client, target: &Target) -> Option<u64> {
    target.db_pid?;
    let url = target.stats.as_deref()?.split(',').next()?;
    let v: Value = http.get(url).send().await.ok()?.json().await.ok()?;
    v["dbCommits"].as_u64()
}
