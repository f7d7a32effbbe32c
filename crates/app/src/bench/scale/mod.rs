//! `x402-upto bench-scale`: how the cost grows with the number of channels (issue 13,
//! item 4). `scripts/scale.sh` runs it; `docs/benchmarks.md` ("Scale") holds the result.
//!
//! For each size `N` (default 1,000 / 100,000 / 1,000,000) it
//!
//! 1. **seeds** a sled store with `N` idle channels (`internal scale-seed`, a child process;
//!    written through the `Store` trait, no chain: [`world::seeded_record`]);
//! 2. **starts** our server on a copy of that store (`internal scale-server`, a child
//!    process), which times its own start-up (open the store + [`Engine::restore`]) and
//!    reports its resident memory before and after, so the memory per idle channel is
//!    `(RSS after − RSS before) / N`; the servers start one after another, each alone;
//! 3. **loads** every server in turn, round after round, at the same concurrency, with
//!    presigned paid requests spread uniformly over all `N` channels ([`load`]), durable
//!    `group` mode; the ratio to the smallest size is taken within each round (the machine
//!    is shared and its speed drifts), then the median over rounds;
//! 4. checks each server's books (paid responses and charged sum against what was served);
//! 5. **claims** on anvil ([`claims`]): the real scheduler claims `n` channels in batches,
//!    for the sizes given to `--claims`; other sizes are extrapolated from the largest
//!    measured run's time and gas per transaction, and the table says which is which.
//!
//! It prints a markdown table, and writes the JSON and an SVG plot (req/s and memory per
//! channel against channels) when asked.
//!
//! [`Engine::restore`]: x402_upto::engine::Engine::restore

mod claims;
mod load;
mod report;
pub mod seed;
pub mod server;
mod world;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use x402_upto::wire::{BATCH_SETTLEMENT, PAYMENT_REQUIRED, PaymentRequired, decode_header};

use claims::ClaimRun;
use load::{Plan, Window};

/// Arguments of `x402-upto bench-scale`.
#[derive(Clone, Debug, clap::Args)]
pub struct ScaleArgs {
    /// Channel counts to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000u64, 100_000, 1_000_000])]
    pub channels: Vec<u64>,
    /// Requests in flight (virtual clients), the same at every size.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds of each timed window.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Windows per size; sizes alternate within a round.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Presign budget, requests per second (a client that runs out ends the window early;
    /// the table says so).
    #[arg(long, default_value_t = 20_000)]
    pub budget_rate: u64,
    /// Channel counts to claim on anvil (`--claims 0`: none).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000u64, 10_000])]
    pub claims: Vec<u64>,
    /// Rows per claim transaction.
    #[arg(long, default_value_t = 100)]
    pub claim_batch: usize,
    /// Keep seeded stores here and reuse them on the next run (each run serves a copy).
    #[arg(long)]
    pub seed_cache: Option<PathBuf>,
    /// Write every measurement as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the plot (SVG) here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// A line about the machine and its load (printed under the table).
    #[arg(long, default_value = "")]
    pub note: String,
}

/// One size, measured.
#[derive(Clone, Debug, Serialize)]
pub struct SizeResult {
    /// Channels.
    pub channels: u64,
    /// Seconds the seeding took (0 when the seed came from the cache).
    pub seed_seconds: f64,
    /// Bytes of the store on disk.
    pub store_bytes: u64,
    /// Seconds to open the sled store.
    pub open_seconds: f64,
    /// Seconds from start to a restored ledger (open + `load_all` + `Ledger::restore`).
    pub restore_seconds: f64,
    /// CPU seconds the server process spent on that (all its threads).
    pub restore_cpu_seconds: f64,
    /// Server RSS before the store was opened, bytes.
    pub rss_before: u64,
    /// Server RSS once the store was open.
    pub rss_open: u64,
    /// Server RSS after the restore.
    pub rss_after: u64,
    /// Server RSS after every window.
    pub rss_after_load: u64,
    /// `(rss_after − rss_before) / channels`.
    pub bytes_per_channel: f64,
    /// Every timed window.
    pub windows: Vec<Window>,
    /// Median req/s over the windows.
    pub median_rps: f64,
    /// req/s ÷ the first size's, per round: median, min, max.
    pub ratio: Option<(f64, f64, f64)>,
    /// Server books matched what was served.
    pub books_ok: bool,
    /// What the books check saw.
    pub books: String,
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleReport {
    /// Per size.
    pub sizes: Vec<SizeResult>,
    /// Claims measured on anvil.
    pub claims: Vec<ClaimRun>,
    /// Concurrency.
    pub concurrency: usize,
    /// Seconds per window.
    pub duration: f64,
    /// Rounds.
    pub rounds: usize,
    /// Rows per claim transaction.
    pub claim_batch: usize,
    /// Machine note.
    pub note: String,
}

fn fail(what: &str, e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Command(format!("{what}: {e}"))
}

/// Runs the bench and prints the table.
pub fn run_blocking(args: &ScaleArgs) -> crate::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(crate::Error::Runtime)?;
    rt.block_on(run(args))
}

/// A child process of this binary, killed when dropped.
struct Child {
    child: tokio::process::Child,
    ready: Value,
}

impl Child {
    fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Starts `x402-upto <args>` and waits for the line starting with `marker`; returns the
/// JSON after it.
async fn start_child(args: &[&str], marker: &str) -> crate::Result<Child> {
    let exe = std::env::current_exe().map_err(|e| fail("current exe", e))?;
    let mut child = tokio::process::Command::new(exe)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail("spawn", e))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| fail("spawn", "no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await.map_err(|e| fail("child", e))? {
        if let Some(json) = line.strip_prefix(marker) {
            let ready = serde_json::from_str(json).map_err(|e| fail("child line", e))?;
            return Ok(Child { child, ready });
        }
    }
    let status = child.wait().await.map_err(|e| fail("child", e))?;
    Err(fail(
        &format!("x402-upto {}", args.join(" ")),
        format!("exited ({status}) before {marker}"),
    ))
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else if e.file_name() != "SEEDED" {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}

/// A seeded store for `n` channels under `cache` (seeded now unless already there), and
/// the seconds seeding took now.
async fn seeded(cache: &Path, n: u64) -> crate::Result<(PathBuf, f64)> {
    let dir = cache.join(format!("seed-{n}"));
    let marker = dir.join("SEEDED");
    if marker.exists() {
        return Ok((dir, 0.0));
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| fail("stale seed", e))?;
    }
    let d = dir.to_string_lossy().into_owned();
    let n_s = n.to_string();
    let mut child = start_child(
        &["internal", "scale-seed", "--dir", &d, "--channels", &n_s],
        "SEEDED ",
    )
    .await?;
    let status = child.child.wait().await.map_err(|e| fail("seed", e))?;
    if !status.success() {
        return Err(fail("seed", status));
    }
    let seconds = child.ready["seconds"].as_f64().unwrap_or(0.0);
    std::fs::write(&marker, child.ready.to_string()).map_err(|e| fail("seed marker", e))?;
    eprintln!("bench-scale: seeded {n} channels in {seconds:.1} s");
    Ok((dir, seconds))
}

async fn offer(http: &reqwest::Client, url: &str) -> crate::Result<PaymentRequired> {
    let res = http
        .get(url)
        .send()
        .await
        .map_err(|e| fail("unpaid GET", e))?;
    let raw = res
        .headers()
        .get(PAYMENT_REQUIRED)
        .ok_or_else(|| fail("unpaid GET", "no PAYMENT-REQUIRED"))?;
    decode_header(raw.as_bytes(), 64 * 1024).map_err(|e| fail("PAYMENT-REQUIRED", e))
}

struct Server {
    n: u64,
    child: Child,
    plan: Plan,
    url: String,
    seed_seconds: f64,
    store_bytes: u64,
}

async fn run(args: &ScaleArgs) -> crate::Result<()> {
    let c = args.concurrency.max(1);
    if let Some(&n) = args.channels.iter().find(|&&n| n < c as u64) {
        return Err(fail(
            "--channels",
            format!("{n} is below the concurrency {c}"),
        ));
    }
    let temp = tempfile::tempdir().map_err(|e| fail("temp dir", e))?;
    let cache = args
        .seed_cache
        .clone()
        .unwrap_or_else(|| temp.path().join("seeds"));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| fail("http client", e))?;

    // 1-2. Seed, then start the servers one after another (each restore runs alone).
    let mut servers = Vec::new();
    for &n in &args.channels {
        let (seed, seed_seconds) = seeded(&cache, n).await?;
        let run_dir = temp.path().join(format!("run-{n}"));
        copy_dir(&seed, &run_dir).map_err(|e| fail("copy seed", e))?;
        let store_bytes = world::dir_bytes(&run_dir);
        let d = run_dir.to_string_lossy().into_owned();
        let child = start_child(&["internal", "scale-server", "--dir", &d], "READY ").await?;
        let url = child.ready["paid"]
            .as_str()
            .ok_or_else(|| fail("scale-server", "READY without paid"))?
            .to_owned();
        eprintln!(
            "bench-scale: {n} channels restored in {:.2} s, RSS {} → {} MiB",
            child.ready["restoreSeconds"].as_f64().unwrap_or(0.0),
            child.ready["rssBefore"].as_u64().unwrap_or(0) >> 20,
            child.ready["rssAfter"].as_u64().unwrap_or(0) >> 20,
        );
        servers.push(Server {
            n,
            child,
            plan: Plan::new(n, c),
            url,
            seed_seconds,
            store_bytes,
        });
    }

    // 3. Windows: every size once per round.
    let duration = Duration::from_secs_f64(args.duration.max(0.1));
    let per_client =
        (args.budget_rate as f64 * duration.as_secs_f64() / c as f64).ceil() as u64 + 16;
    let mut windows: Vec<Vec<Window>> = vec![Vec::new(); servers.len()];
    for round in 0..args.rounds.max(1) {
        for (s, w) in servers.iter_mut().zip(windows.iter_mut()) {
            let required = offer(&http, &s.url).await?;
            let accepted = required
                .accepts
                .iter()
                .find(|o| o.scheme == BATCH_SETTLEMENT)
                .ok_or_else(|| fail("offer", "no batch-settlement entry"))?;
            let resource = serde_json::to_value(&required.resource).unwrap_or(Value::Null);
            let headers = tokio::task::block_in_place(|| {
                load::prepare(&s.plan, per_client, accepted, &resource)
            })
            .map_err(|e| fail("prepare", e))?;
            let win = load::window(&mut s.plan, headers, &s.url, duration, s.child.pid(), round)
                .await
                .map_err(|e| fail("window", e))?;
            eprintln!(
                "bench-scale: round {} N={:<8} {:>7.0} req/s  p50 {:.2} ms  p99 {:.2} ms  ok {}  errors {}  channels paid {}{}",
                round + 1,
                s.n,
                win.rps,
                win.p50_ms,
                win.p99_ms,
                win.ok,
                win.errors,
                win.distinct_channels,
                if win.exhausted {
                    "  (budget ran out)"
                } else {
                    ""
                }
            );
            w.push(win);
        }
    }

    // 4. Books, memory after load, then stop the servers.
    let mut sizes = Vec::new();
    let first: Vec<f64> = windows
        .first()
        .map(|w| w.iter().map(|x| x.rps).collect())
        .unwrap_or_default();
    for (s, w) in servers.into_iter().zip(windows) {
        let rss_after_load = s
            .child
            .pid()
            .and_then(|p| world::rss_bytes(&p.to_string()))
            .unwrap_or(0);
        let stats_url = s.child.ready["stats"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let stats: Value = http
            .get(&stats_url)
            .send()
            .await
            .map_err(|e| fail("stats", e))?
            .json()
            .await
            .map_err(|e| fail("stats", e))?;
        let served: u64 = w.iter().map(|x| x.ok).sum();
        let expected = u128::from(s.n) * world::SEED_CHARGED + u128::from(served) * world::CHARGE;
        let paid = stats["paidResponses"].as_u64().unwrap_or(0);
        let charged: u128 = stats["chargedTotal"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let books_ok = paid == served && charged == expected && w.iter().all(|x| x.errors == 0);
        let books =
            format!("served {served}, server paid {paid}, charged {charged} (expected {expected})");
        let r = &s.child.ready;
        let rss_before = r["rssBefore"].as_u64().unwrap_or(0);
        let rss_after = r["rssAfter"].as_u64().unwrap_or(0);
        let mut rps: Vec<f64> = w.iter().map(|x| x.rps).collect();
        let ratios: Vec<f64> = rps
            .iter()
            .zip(&first)
            .filter(|(_, f)| **f > 0.0)
            .map(|(a, f)| a / f)
            .collect();
        rps.sort_by(f64::total_cmp);
        sizes.push(SizeResult {
            channels: s.n,
            seed_seconds: s.seed_seconds,
            store_bytes: s.store_bytes,
            open_seconds: r["openSeconds"].as_f64().unwrap_or(0.0),
            restore_seconds: r["restoreSeconds"].as_f64().unwrap_or(0.0),
            restore_cpu_seconds: r["restoreCpuSeconds"].as_f64().unwrap_or(0.0),
            rss_before,
            rss_open: r["rssOpen"].as_u64().unwrap_or(0),
            rss_after,
            rss_after_load,
            bytes_per_channel: rss_after.saturating_sub(rss_before) as f64 / s.n as f64,
            median_rps: rps.get(rps.len() / 2).copied().unwrap_or(0.0),
            ratio: report::spread(ratios),
            windows: w,
            books_ok,
            books,
        });
        drop(s.child);
    }

    // 5. Claims on anvil.
    let mut claim_runs = Vec::new();
    let claim_sizes: Vec<u64> = args.claims.iter().copied().filter(|&n| n > 0).collect();
    if !claim_sizes.is_empty() {
        let mut chain = claims::Chain::start().await.map_err(|e| fail("anvil", e))?;
        for n in claim_sizes {
            let run = chain
                .claim(n, args.claim_batch.max(1))
                .await
                .map_err(|e| fail("claims", e))?;
            eprintln!(
                "bench-scale: claimed {n} channels in {} txs, {:.1} s, {} gas (setup {:.1} s)",
                run.claim_txs, run.claim_seconds, run.claim_gas, run.setup_seconds
            );
            claim_runs.push(run);
        }
    }

    let report = ScaleReport {
        sizes,
        claims: claim_runs,
        concurrency: c,
        duration: duration.as_secs_f64(),
        rounds: args.rounds.max(1),
        claim_batch: args.claim_batch.max(1),
        note: args.note.clone(),
    };
    print!("{}", report::markdown(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| fail("json", e))?;
        std::fs::write(path, text).map_err(|e| fail(&path.display().to_string(), e))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report::svg(&report))
            .map_err(|e| fail(&path.display().to_string(), e))?;
    }
    let clean = report.sizes.iter().all(|s| s.books_ok)
        && report
            .claims
            .iter()
            .all(|c| c.failed_rows == 0 && c.verified.0 == c.verified.1);
    if clean {
        Ok(())
    } else {
        Err(fail(
            "bench-scale",
            "errors, wrong books or failed claims: not a valid run",
        ))
    }
}
