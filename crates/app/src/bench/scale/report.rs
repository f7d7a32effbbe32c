//! The scale bench's markdown table and its SVG plot (written by hand: two polylines on
//! log-scaled channels, no plotting dependency).

use std::fmt::Write as _;

use super::ScaleReport;
use super::claims::ClaimRun;

/// Target: resident memory per idle channel, bytes.
pub const MEMORY_TARGET: f64 = 1024.0;
/// Target: seconds to restart with 1,000,000 channels.
pub const RESTART_TARGET: f64 = 10.0;
/// Target: req/s at 1,000,000 channels ÷ req/s at 1,000.
pub const RPS_TARGET: f64 = 0.8;

/// Median, min and max.
pub fn spread(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some((v[v.len() / 2], v[0], v[v.len() - 1]))
}

/// Claim cost of `n` channels: measured when a run of exactly `n` exists, else scaled from
/// the largest measured run (time and gas per transaction, transactions = ⌈n / batch⌉).
pub struct ClaimRow {
    /// Transactions (claims + the sweep).
    pub txs: u64,
    /// Gas of all of them.
    pub gas: u64,
    /// Seconds.
    pub seconds: f64,
    /// Measured (true) or extrapolated.
    pub measured: bool,
}

pub fn claim_row(runs: &[ClaimRun], n: u64) -> Option<ClaimRow> {
    if let Some(r) = runs.iter().find(|r| r.channels == n) {
        return Some(ClaimRow {
            txs: (r.claim_txs + r.sweep_txs) as u64,
            gas: r.claim_gas + r.sweep_gas,
            seconds: r.claim_seconds + r.sweep_seconds,
            measured: true,
        });
    }
    let base = runs.iter().max_by_key(|r| r.channels)?;
    if base.claim_txs == 0 {
        return None;
    }
    let txs = n.div_ceil(base.batch_size as u64);
    let per_tx_s = base.claim_seconds / base.claim_txs as f64;
    let per_tx_gas = base.claim_gas as f64 / base.claim_txs as f64;
    Some(ClaimRow {
        txs: txs + base.sweep_txs as u64,
        gas: (per_tx_gas * txs as f64) as u64 + base.sweep_gas,
        seconds: per_tx_s * txs as f64 + base.sweep_seconds,
        measured: false,
    })
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

/// RSS after restore added per channel between the size below `n` and `n`.
fn marginal(r: &ScaleReport, n: u64) -> Option<f64> {
    let below = r
        .sizes
        .iter()
        .filter(|z| z.channels < n)
        .max_by_key(|z| z.channels)?;
    let at = r.sizes.iter().find(|z| z.channels == n)?;
    Some((at.rss_after as f64 - below.rss_after as f64) / (at.channels - below.channels) as f64)
}

/// The table as `docs/benchmarks.md` shows it.
pub fn markdown(r: &ScaleReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Concurrency {} at every size · {} s per window · {} round(s), sizes alternating, median by req/s · charge 500 of price 1000 · durable `group` (fdatasync) · claims in batches of {}",
        r.concurrency, r.duration, r.rounds, r.claim_batch
    );
    if !r.note.is_empty() {
        let _ = writeln!(s, "\n{}", r.note);
    }
    let _ = writeln!(
        s,
        "\n| channels | store on disk | restart: wall (open + restore), CPU | RSS before → after restore | memory per idle channel (marginal) | paid req/s | ÷ at {} (per round) | p50 / p99 ms | server CPU µs/req | claim txs | claim gas | claim time |",
        r.sizes
            .first()
            .map_or("first".into(), |f| thousands(f.channels))
    );
    let _ = writeln!(
        s,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for z in &r.sizes {
        let med = z.windows.iter().min_by(|a, b| {
            (a.rps - z.median_rps)
                .abs()
                .total_cmp(&(b.rps - z.median_rps).abs())
        });
        let (p50, p99, cpu) = med.map_or((0.0, 0.0, None), |w| {
            (
                w.p50_ms,
                w.p99_ms,
                w.cpu.and_then(|c| c.server_us_per_request),
            )
        });
        let ratio = z.ratio.map_or("n/a".into(), |(m, lo, hi)| {
            format!("{m:.2} ({lo:.2}–{hi:.2})")
        });
        let claim = claim_row(&r.claims, z.channels);
        let (txs, gas, secs) = match &claim {
            Some(c) => {
                let tag = if c.measured { "" } else { " (extrapolated)" };
                (
                    format!("{}{tag}", thousands(c.txs)),
                    format!("{:.1} M{tag}", c.gas as f64 / 1e6),
                    format!("{:.1} s{tag}", c.seconds),
                )
            }
            None => ("n/a".into(), "n/a".into(), "n/a".into()),
        };
        let _ = writeln!(
            s,
            "| {} | {:.0} MiB | {:.2} s ({:.2} + {:.2}), CPU {:.2} s | {} → {} MiB | {:.0} B{} | {:.0}{} | {} | {:.2} / {:.2} | {} | {} | {} | {} |",
            thousands(z.channels),
            z.store_bytes as f64 / 1048576.0,
            z.restore_seconds,
            z.open_seconds,
            z.restore_seconds - z.open_seconds,
            z.restore_cpu_seconds,
            z.rss_before >> 20,
            z.rss_after >> 20,
            z.bytes_per_channel,
            marginal(r, z.channels).map_or(String::new(), |m| format!(" ({m:.0} B)")),
            z.median_rps,
            if z.windows.iter().any(|w| w.exhausted) {
                " (budget ran out)"
            } else {
                ""
            },
            ratio,
            p50,
            p99,
            cpu.map_or("n/a".into(), |c| format!("{c:.0}")),
            txs,
            gas,
            secs,
        );
    }
    if !r.claims.is_empty() {
        let _ = writeln!(
            s,
            "\nClaims measured on anvil (the real scheduler: journal, `claimWithSignature` batches, receipts; then one sweep):\n\n| channels | batch | claim txs | claim gas | gas per channel | claim time | per tx | sweep | on-chain totals checked |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for c in &r.claims {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.0} | {:.1} s | {:.0} ms | {} tx, {} gas, {:.2} s | {}/{} |",
                thousands(c.channels),
                c.batch_size,
                c.claim_txs,
                thousands(c.claim_gas),
                c.claim_gas as f64 / c.channels as f64,
                c.claim_seconds,
                c.claim_seconds / c.claim_txs.max(1) as f64 * 1000.0,
                c.sweep_txs,
                thousands(c.sweep_gas),
                c.sweep_seconds,
                c.verified.0,
                c.verified.1,
            );
        }
    }
    let _ = writeln!(s, "\nTargets:\n");
    // Judged where the fixed cost of a server (runtime, sled's buffers: a few MiB) is spread
    // thinnest, the largest size; the marginal cost between sizes is printed beside it.
    if let Some(big) = r.sizes.iter().max_by_key(|z| z.channels) {
        let _ = writeln!(
            s,
            "- memory per idle channel ≤ 1 KiB: {} ({:.0} B at {} channels{})",
            met(big.bytes_per_channel <= MEMORY_TARGET),
            big.bytes_per_channel,
            thousands(big.channels),
            marginal(r, big.channels).map_or(String::new(), |m| format!(
                "; {m:.0} B per channel added between the two largest sizes"
            ))
        );
    }
    if let Some(m) = r.sizes.iter().find(|z| z.channels == 1_000_000) {
        let _ = writeln!(
            s,
            "- restart with 1,000,000 channels ≤ 10 s: {} ({:.2} s wall, {:.2} s CPU)",
            met(m.restore_seconds <= RESTART_TARGET),
            m.restore_seconds,
            m.restore_cpu_seconds
        );
        if let Some((ratio, lo, hi)) = m.ratio {
            let _ = writeln!(
                s,
                "- paid req/s at 1,000,000 channels ≥ 0.8 × at {}: {} ({ratio:.2}, rounds {lo:.2}–{hi:.2})",
                r.sizes
                    .first()
                    .map_or(String::new(), |f| thousands(f.channels)),
                met(ratio >= RPS_TARGET)
            );
        }
    }
    for z in r.sizes.iter().filter(|z| !z.books_ok) {
        let _ = writeln!(
            s,
            "\n**FAILED at {} channels: {}**",
            thousands(z.channels),
            z.books
        );
    }
    s
}

/// The plot: paid req/s (left axis) and memory per idle channel (right axis) against
/// channels (log scale), with both targets as dashed lines.
pub fn svg(r: &ScaleReport) -> String {
    let (w, h) = (720.0, 420.0);
    let (left, right, top, bottom) = (80.0, 640.0, 50.0, 350.0);
    let sizes: Vec<_> = r.sizes.iter().filter(|z| z.channels > 0).collect();
    let lx: Vec<f64> = sizes.iter().map(|z| (z.channels as f64).log10()).collect();
    let (x0, x1) = (
        lx.iter().copied().fold(f64::INFINITY, f64::min).floor(),
        lx.iter().copied().fold(f64::NEG_INFINITY, f64::max).ceil(),
    );
    let x = |v: f64| left + (v - x0) / (x1 - x0).max(1e-9) * (right - left);
    let top_of = |m: f64| {
        // A round axis top above the largest value.
        let m = m.max(1.0) * 1.15;
        let mag = 10f64.powf(m.log10().floor());
        (m / mag).ceil() * mag
    };
    let rps_max = top_of(sizes.iter().map(|z| z.median_rps).fold(0.0, f64::max));
    let mem_max = top_of(
        sizes
            .iter()
            .map(|z| z.bytes_per_channel)
            .fold(MEMORY_TARGET, f64::max),
    );
    let y_rps = |v: f64| bottom - v / rps_max * (bottom - top);
    let y_mem = |v: f64| bottom - v / mem_max * (bottom - top);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">x402-upto: paid req/s and memory per idle channel against channels</text>"#,
        w / 2.0
    );
    // Axes and grid.
    let _ = writeln!(
        s,
        r#"<path d="M{left} {top}V{bottom}H{right}V{top}" fill="none" stroke="black"/>"#
    );
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let y = bottom - f * (bottom - top);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y}" x2="{right}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end" fill="#1f5fbf">{:.0}</text><text x="{}" y="{}" fill="#c0561a">{:.0}</text>"##,
            left - 6.0,
            y + 4.0,
            f * rps_max,
            right + 6.0,
            y + 4.0,
            f * mem_max
        );
    }
    let mut d = x0;
    while d <= x1 + 1e-9 {
        let xx = x(d);
        let _ = writeln!(
            s,
            r#"<line x1="{xx}" y1="{bottom}" x2="{xx}" y2="{}" stroke="black"/><text x="{xx}" y="{}" text-anchor="middle">10^{d:.0}</text>"#,
            bottom + 5.0,
            bottom + 20.0
        );
        d += 1.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">channels (log scale)</text>"#,
        (left + right) / 2.0,
        bottom + 40.0
    );
    let _ = writeln!(
        s,
        r##"<text transform="translate(22 {}) rotate(-90)" text-anchor="middle" fill="#1f5fbf">paid req/s (durable group, C = {})</text>"##,
        (top + bottom) / 2.0,
        r.concurrency
    );
    let _ = writeln!(
        s,
        r##"<text transform="translate({} {}) rotate(90)" text-anchor="middle" fill="#c0561a">resident bytes per idle channel</text>"##,
        w - 20.0,
        (top + bottom) / 2.0
    );
    // Targets.
    if let Some(first) = sizes.first() {
        let yt = y_rps(first.median_rps * RPS_TARGET);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yt}" x2="{right}" y2="{yt}" stroke="#1f5fbf" stroke-dasharray="6 4" opacity="0.6"/><text x="{}" y="{}" fill="#1f5fbf">0.8 × req/s at {} (target)</text>"##,
            left + 6.0,
            yt - 5.0,
            first.channels
        );
    }
    let ym = y_mem(MEMORY_TARGET);
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{ym}" x2="{right}" y2="{ym}" stroke="#c0561a" stroke-dasharray="6 4" opacity="0.6"/><text x="{}" y="{}" text-anchor="end" fill="#c0561a">1 KiB per channel (target)</text>"##,
        right - 6.0,
        ym - 5.0
    );
    // Series.
    let series = |vals: Vec<(f64, f64)>, color: &str, label_of: &dyn Fn(f64) -> String| {
        let mut out = String::new();
        let pts: Vec<String> = vals.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2.5"/>"#,
            pts.join(" ")
        );
        for (a, b) in &vals {
            let _ = writeln!(
                out,
                r#"<circle cx="{a:.1}" cy="{b:.1}" r="4" fill="{color}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="{color}">{}</text>"#,
                a,
                b - 9.0,
                label_of(*b)
            );
        }
        out
    };
    let rps_pts: Vec<(f64, f64)> = sizes
        .iter()
        .zip(&lx)
        .map(|(z, l)| (x(*l), y_rps(z.median_rps)))
        .collect();
    let mem_pts: Vec<(f64, f64)> = sizes
        .iter()
        .zip(&lx)
        .map(|(z, l)| (x(*l), y_mem(z.bytes_per_channel)))
        .collect();
    let rps_label = |yy: f64| format!("{:.0}/s", (bottom - yy) / (bottom - top) * rps_max);
    let mem_label = |yy: f64| format!("{:.0} B", (bottom - yy) / (bottom - top) * mem_max);
    s.push_str(&series(rps_pts, "#1f5fbf", &rps_label));
    s.push_str(&series(mem_pts, "#c0561a", &mem_label));
    let _ = writeln!(s, "</svg>");
    s
}
