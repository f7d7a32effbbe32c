//! `x402-upto bench`: the side-by-side load generator (issue #6 item 4).
//!
//! It measures paid requests per second and latency percentiles of three targets, on the same
//! machine, in one run, at the same concurrency:
//!
//! | target | what it is |
//! |---|---|
//! | `ours` | `internal bench-server`: [`x402_upto::server::PaymentLayer`] over a trivial handler, durable `group` sled store |
//! | `stock` | `interop/stock-server.mjs`: the official `@x402/express` batch-settlement server (in memory) |
//! | `ceiling` | `internal bench-ceiling`: decode the same header, one secp256k1 recovery, nothing else |
//!
//! How one measurement works (warm-up through the x402 flow, presigned vouchers, keep-alive
//! connections, error and accounting rules) is in [`run`]. `scripts/bench.sh` starts anvil,
//! installs the contracts at the canonical addresses, starts the three servers and calls this
//! command; `docs/benchmarks.md` ("Side-by-side") holds the measured table.

mod cpu;
mod presign;
pub mod run;
pub mod scale;
pub mod servers;
mod timed;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::Address;
use serde::Serialize;

use run::{Measurement, Settings, Target};
use x402_upto::client::{CANONICAL_COLLECTOR, CANONICAL_ESCROW};

/// anvil's default account 3: the payer of every virtual client (one salt, one channel each).
pub const ANVIL_KEY_3: &str = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6";

/// Arguments of `x402-upto bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Paid URL of our server (`internal bench-server`).
    #[arg(long)]
    pub ours: Option<String>,
    /// Paid URL of a second instance of our server with `--durability none` (diagnostic row:
    /// how much of the gap to the ceiling is the durable write).
    #[arg(long)]
    pub ours_none: Option<String>,
    /// Paid URL of our server on the PostgreSQL store (`bench-server --postgres`).
    #[arg(long)]
    pub ours_pg: Option<String>,
    /// Paid URLs, comma-separated, of two (or more) instances of our server on one
    /// PostgreSQL store; virtual client i pays instance i mod n.
    #[arg(long)]
    pub ours_pg2: Option<String>,
    /// Paid URL of the stock `@x402/express` server (`?charge=<charge>` is appended).
    #[arg(long)]
    pub stock: Option<String>,
    /// Paid URL of the recovery ceiling (`internal bench-ceiling`).
    #[arg(long)]
    pub ceiling: Option<String>,
    /// Concurrency levels (virtual clients = channels = requests in flight), e.g. `8,32`.
    #[arg(long, value_delimiter = ',', default_values_t = [8usize, 32])]
    pub concurrency: Vec<usize>,
    /// Seconds of the timed phase, per target and concurrency.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Repetitions of the whole sequence; the table shows the median run by req/s.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// What every server charges per request (the price is 1000: an "upto" charge below it).
    #[arg(long, default_value_t = 500)]
    pub charge: u128,
    /// Payer key of every virtual client (default: anvil account 3).
    #[arg(long, env = "X402_BENCH_PAYER_KEY", hide_env_values = true, default_value = ANVIL_KEY_3)]
    pub payer_key: String,
    /// Escrow (default: the canonical x402 address).
    #[arg(long, default_value_t = CANONICAL_ESCROW)]
    pub escrow: Address,
    /// ERC-3009 deposit collector (default: the canonical x402 address).
    #[arg(long, default_value_t = CANONICAL_COLLECTOR)]
    pub collector: Address,
    /// Presign budget of `ours` and `ceiling`, requests per second (a client that runs out
    /// ends the window early; the table says so).
    #[arg(long, default_value_t = 50_000)]
    pub budget_fast: u64,
    /// Presign budget of `stock`, requests per second.
    #[arg(long, default_value_t = 2_000)]
    pub budget_stock: u64,
    /// Tokio worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Server process ids for CPU accounting, `name=pid` or `name=pid+pid` (names: ours,
    /// stock, ceiling, ours-none, ours-pg, ours-pg2; `db`: PostgreSQL's postmaster).
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<String>,
    /// Also write every measurement as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A line about the machine and placement (printed under the table).
    #[arg(long, default_value = "")]
    pub note: String,
}

/// The ratios the goals are about, at one concurrency. Each is taken within one round (the
/// targets ran back to back, minutes apart at most), then the median over rounds is reported
/// with the spread: the machine's load changes too much between rounds to divide medians.
#[derive(Clone, Debug, Serialize)]
pub struct Ratios {
    /// Concurrency.
    pub concurrency: usize,
    /// ours req/s ÷ stock req/s (goal ≥ 50).
    pub ours_over_stock: Option<Spread>,
    /// stock p99 ÷ ours p99 (goal ≥ 10).
    pub stock_p99_over_ours: Option<Spread>,
    /// ours req/s ÷ ceiling req/s (goal ≥ 0.9).
    pub ours_over_ceiling: Option<Spread>,
    /// ours on PostgreSQL (1 instance) req/s ÷ ours on sled req/s (goal ≥ 0.5).
    pub pg_over_ours: Option<Spread>,
    /// ours on PostgreSQL (2 instances) req/s ÷ ours on sled req/s.
    pub pg2_over_ours: Option<Spread>,
}

/// Median and range of per-round ratios.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    /// Median over rounds.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

fn spread(mut v: Vec<f64>) -> Option<Spread> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(Spread {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    })
}

#[derive(Serialize)]
struct Report<'a> {
    settings: ReportSettings<'a>,
    /// Every round's measurements.
    runs: &'a [Measurement],
    /// The median round per target and concurrency.
    table: &'a [Measurement],
    ratios: &'a [Ratios],
    clean: bool,
}

#[derive(Serialize)]
struct ReportSettings<'a> {
    concurrency: &'a [usize],
    duration_s: f64,
    rounds: usize,
    charge: String,
    client_threads: usize,
    note: &'a str,
}

/// Runs the benchmark and prints the markdown table on stdout.
pub fn run_blocking(args: &BenchArgs) -> crate::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
        .map_err(crate::Error::Runtime)?;
    rt.block_on(bench(args))
}

fn targets(args: &BenchArgs) -> Vec<Target> {
    let origin_stats = |url: &str| -> Option<String> {
        let u: http::Uri = url.parse().ok()?;
        Some(format!("http://{}/admin/stats", u.authority()?))
    };
    let pids = |name: &str| -> Vec<u32> {
        args.pids
            .iter()
            .filter_map(|p| p.split_once('='))
            .filter(|(n, _)| *n == name)
            .flat_map(|(_, v)| v.split('+').filter_map(|x| x.parse().ok()))
            .collect()
    };
    let db = pids("db").first().copied();
    let ours = |name: &str, url: &str, db_pid: Option<u32>| {
        let stats: Vec<String> = url.split(',').filter_map(origin_stats).collect();
        Target {
            name: name.into(),
            url: url.to_owned(),
            stats: (!stats.is_empty()).then(|| stats.join(",")),
            deposit: true,
            budget_rate: args.budget_fast,
            cycle: false,
            pids: pids(name),
            db_pid,
        }
    };
    let mut t = Vec::new();
    if let Some(u) = &args.ceiling {
        t.push(Target {
            name: "ceiling".into(),
            url: u.clone(),
            stats: None,
            deposit: false,
            budget_rate: args.budget_fast,
            cycle: true,
            pids: pids("ceiling"),
            db_pid: None,
        });
    }
    if let Some(u) = &args.ours {
        t.push(ours("ours", u, None));
    }
    if let Some(u) = &args.ours_pg {
        t.push(ours("ours-pg", u, db));
    }
    if let Some(u) = &args.ours_pg2 {
        t.push(ours("ours-pg2", u, db));
    }
    if let Some(u) = &args.ours_none {
        t.push(ours("ours-none", u, None));
    }
    if let Some(u) = &args.stock {
        let sep = if u.contains('?') { '&' } else { '?' };
        t.push(Target {
            name: "stock".into(),
            url: format!("{u}{sep}charge={}", args.charge),
            stats: origin_stats(u),
            deposit: true,
            budget_rate: args.budget_stock,
            cycle: false,
            pids: pids("stock"),
            db_pid: None,
        });
    }
    t
}

async fn bench(args: &BenchArgs) -> crate::Result<()> {
    let payer: PrivateKeySigner = args
        .payer_key
        .trim()
        .parse()
        .map_err(|_| crate::Error::Command("--payer-key is not a 32-byte hex key".into()))?;
    let targets = targets(args);
    if targets.is_empty() {
        return Err(crate::Error::Command(
            "nothing to measure: give --ours, --stock and/or --ceiling".into(),
        ));
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| crate::Error::Command(format!("http client: {e}")))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut runs = Vec::new();
    for round in 0..args.rounds.max(1) {
        for &c in &args.concurrency {
            // The ceiling runs first; the servers cannot beat it by much, so 1.5× its rate
            // bounds the vouchers worth presigning (signing is the slow part of a run).
            let mut ceiling_rps: Option<f64> = None;
            for t in &targets {
                let mut t = t.clone();
                if !t.cycle
                    && t.budget_rate == args.budget_fast
                    && let Some(r) = ceiling_rps
                {
                    t.budget_rate = t.budget_rate.min((r * 1.5) as u64).max(2_000);
                }
                let t = &t;
                let settings = Settings {
                    concurrency: c,
                    duration: Duration::from_secs_f64(args.duration.max(0.1)),
                    charge: args.charge,
                    payer: payer.clone(),
                    escrow: args.escrow,
                    collector: args.collector,
                    // New channels per measurement: every run starts from a known state.
                    label: format!("{stamp}/{round}/{c}/{}", t.name),
                };
                let mut m = run::measure(&http, t, &settings)
                    .await
                    .map_err(|e| crate::Error::Command(e.to_string()))?;
                eprintln!(
                    "bench: round {} C={c} {:<7} {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms  ok {}  errors {}{}",
                    round + 1,
                    m.target,
                    m.rps,
                    m.p50_ms,
                    m.p99_ms,
                    m.ok,
                    m.errors,
                    if m.is_clean() { "" } else { "  FAILED" }
                );
                if t.cycle {
                    ceiling_rps = Some(m.rps);
                }
                m.round = round;
                runs.push(m);
            }
        }
    }
    let table = medians(&runs, &args.concurrency, &targets);
    let ratios: Vec<Ratios> = args
        .concurrency
        .iter()
        .map(|&c| ratios(&runs, c, args.rounds.max(1)))
        .collect();
    let clean = runs.iter().all(Measurement::is_clean);
    print!("{}", markdown(args, &table, &ratios, clean));
    if let Some(path) = &args.json {
        let report = Report {
            settings: ReportSettings {
                concurrency: &args.concurrency,
                duration_s: args.duration,
                rounds: args.rounds.max(1),
                charge: args.charge.to_string(),
                client_threads: args.client_threads,
                note: &args.note,
            },
            runs: &runs,
            table: &table,
            ratios: &ratios,
            clean,
        };
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| crate::Error::Command(format!("json: {e}")))?;
        std::fs::write(path, text)
            .map_err(|e| crate::Error::Command(format!("{}: {e}", path.display())))?;
    }
    if clean {
        Ok(())
    } else {
        let failed: Vec<String> = runs
            .iter()
            .filter(|m| !m.is_clean())
            .map(|m| {
                format!(
                    "{} C={}: {} errors {:?} books {:?}",
                    m.target, m.concurrency, m.errors, m.error_samples, m.accounting
                )
            })
            .collect();
        Err(crate::Error::Command(format!(
            "the run had errors or wrong books; not a valid measurement: {}",
            failed.join("; ")
        )))
    }
}

/// The median round (by req/s) of every target at every concurrency.
fn medians(runs: &[Measurement], cs: &[usize], targets: &[Target]) -> Vec<Measurement> {
    let mut out = Vec::new();
    for &c in cs {
        for t in targets {
            let mut these: Vec<&Measurement> = runs
                .iter()
                .filter(|m| m.concurrency == c && m.target == t.name)
                .collect();
            these.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            if let Some(m) = these.get(these.len() / 2) {
                out.push((*m).clone());
            }
        }
    }
    out
}

fn ratios(runs: &[Measurement], c: usize, rounds: usize) -> Ratios {
    let (mut a, mut b, mut d) = (Vec::new(), Vec::new(), Vec::new());
    let (mut pg, mut pg2) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let get = |name: &str| {
            runs.iter()
                .find(|m| m.round == round && m.concurrency == c && m.target == name)
        };
        let (ours, stock, ceiling) = (get("ours"), get("stock"), get("ceiling"));
        let div = |x: f64, y: f64| (y > 0.0).then(|| x / y);
        a.extend(ours.zip(stock).and_then(|(o, s)| div(o.rps, s.rps)));
        b.extend(ours.zip(stock).and_then(|(o, s)| div(s.p99_ms, o.p99_ms)));
        d.extend(ours.zip(ceiling).and_then(|(o, x)| div(o.rps, x.rps)));
        pg.extend(
            get("ours-pg")
                .zip(ours)
                .and_then(|(p, o)| div(p.rps, o.rps)),
        );
        pg2.extend(
            get("ours-pg2")
                .zip(ours)
                .and_then(|(p, o)| div(p.rps, o.rps)),
        );
    }
    Ratios {
        concurrency: c,
        ours_over_stock: spread(a),
        stock_p99_over_ours: spread(b),
        ours_over_ceiling: spread(d),
        pg_over_ours: spread(pg),
        pg2_over_ours: spread(pg2),
    }
}

fn label(target: &str) -> &str {
    match target {
        "ours" => "ours (durable `group`)",
        "stock" => "official @x402/express (in memory)",
        "ceiling" => "ceiling (1 recovery)",
        "ours-none" => "ours, durability `none` (diagnostic)",
        "ours-pg" => "ours on PostgreSQL, 1 instance",
        "ours-pg2" => "ours on PostgreSQL, 2 instances",
        other => other,
    }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.decimals$}"))
}

fn verdict(v: Option<Spread>, goal: f64, unit: &str) -> String {
    match v {
        Some(v) => format!(
            "**{:.2}{unit}** ({:.2}–{:.2}) {}",
            v.median,
            v.min,
            v.max,
            if v.median >= goal { "met" } else { "not met" }
        ),
        None => "n/a".into(),
    }
}

/// The table as `docs/benchmarks.md` shows it.
fn markdown(args: &BenchArgs, table: &[Measurement], ratios: &[Ratios], clean: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Concurrency {} · {} s timed per target · {} round(s), median by req/s · charge {} of price 1000 · presigned vouchers · load generator: {} tokio thread(s)",
        args.concurrency
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        args.duration,
        args.rounds.max(1),
        args.charge,
        args.client_threads,
    );
    if !args.note.is_empty() {
        let _ = writeln!(s, "\n{}", args.note);
    }
    let _ = writeln!(
        s,
        "\n| C | target | paid req/s | p50 ms | p90 ms | p99 ms | max ms | 200s | errors | server books | server CPU % | server CPU µs/req | load gen CPU % | machine CPU % | db CPU % | db commits/s |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"
    );
    for m in table {
        let books = match &m.accounting {
            Some(a) if a.ok => format!(
                "exact ({} paid, {} charged)",
                a.server_paid, a.server_charged
            ),
            Some(a) => format!(
                "**MISMATCH**: served {}, server paid {}, charged {} (expected {})",
                a.served, a.server_paid, a.server_charged, a.expected_charged
            ),
            None => "n/a (no ledger)".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.0}{} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.concurrency,
            label(&m.target),
            m.rps,
            if m.exhausted { " (budget ran out)" } else { "" },
            m.p50_ms,
            m.p90_ms,
            m.p99_ms,
            m.max_ms,
            m.ok,
            m.errors,
            books,
            opt(m.cpu.and_then(|c| c.server), 0),
            opt(m.cpu.and_then(|c| c.server_us_per_request), 0),
            opt(m.cpu.map(|c| c.loadgen), 0),
            opt(m.cpu.map(|c| c.machine), 0),
            opt(m.cpu.and_then(|c| c.db), 0),
            opt(m.db_commits_per_s, 0),
        );
    }
    let _ = writeln!(
        s,
        "\nRatios within each round, median (min–max) over the rounds:\n\n| C | ours ÷ official, req/s (goal ≥ 50×) | official p99 ÷ ours p99 (goal ≥ 10×) | ours ÷ ceiling, req/s (goal ≥ 0.9) |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    for r in ratios {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            r.concurrency,
            verdict(r.ours_over_stock, 50.0, "×"),
            verdict(r.stock_p99_over_ours, 10.0, "×"),
            verdict(r.ours_over_ceiling, 0.9, ""),
        );
    }
    if ratios
        .iter()
        .any(|r| r.pg_over_ours.is_some() || r.pg2_over_ours.is_some())
    {
        let _ = writeln!(
            s,
            "\nThe PostgreSQL store against sled, within each round (the database on the same cores):\n\n| C | PostgreSQL 1 instance ÷ sled, req/s (goal ≥ 0.5) | PostgreSQL 2 instances ÷ sled, req/s |\n|---|---|---|"
        );
        for r in ratios {
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                r.concurrency,
                verdict(r.pg_over_ours, 0.5, ""),
                opt(r.pg2_over_ours.map(|v| v.median), 2),
            );
        }
    }
    if !clean {
        let _ = writeln!(
            s,
            "\n**FAILED: this run had errors or wrong books; it is not a valid measurement.**"
        );
    }
    s
}
