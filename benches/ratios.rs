//! Target ratios, measured so that a shared, noisy machine cannot fake or hide them.
//!
//! `cargo bench --bench ratios`. Each path is measured right after raw libsecp256k1 recovery
//! at the same thread count, both for `X402_RATIO_MS` ms (default 1000), and the ratio of the
//! pair is kept; this repeats for `X402_RATIO_ROUNDS` rounds (default 7) and the median is
//! reported. Load from other processes that lasts longer than a pair hits both sides of it,
//! so the median ratio is far steadier than two criterion numbers taken minutes apart.
//! `X402_RATIO_ONLY=<substring>` runs only matching paths. Absolute rates are printed too, but
//! `benches/core.rs` (criterion) is the place for those.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use x402_upto::{Durability, SledOptions};

/// Runs a path until the deadline; returns how many operations it did.
type Runner = Box<dyn FnMut(Instant) -> u64>;

struct Path {
    name: String,
    threads: usize,
    target: Option<f64>,
    run: Runner,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `f(thread, k)` on `threads` OS threads until `deadline`; returns total calls.
fn threads_until(threads: usize, deadline: Instant, f: &(dyn Fn(usize, u64) + Sync)) -> u64 {
    let total = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let total = &total;
            s.spawn(move || {
                let mut k = 0;
                while Instant::now() < deadline {
                    f(t, k);
                    k += 1;
                }
                total.fetch_add(k, Ordering::Relaxed);
            });
        }
    });
    total.into_inner()
}

fn raw(threads: usize) -> Runner {
    let (digest, sig) = raw_signature();
    Box::new(move |deadline| threads_until(threads, deadline, &|_, _| recover_raw(&digest, &sig)))
}

fn in_memory(channels: usize, threads: usize) -> Runner {
    let (ledger, vouchers) = (ledger(channels), vouchers(channels));
    Box::new(move |deadline| {
        // Thread t serves channels t, t+threads, … so threads never meet on a channel.
        threads_until(threads, deadline, &|t, k| {
            let idx = (t + threads * (k as usize % (channels / threads))) % channels;
            serve_in_memory(&ledger, &vouchers[idx]);
        })
    })
}

fn concurrent(options: SledOptions, workers: usize, committers: usize) -> Runner {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");
    let (dir, store) = open_store_with(options);
    let (ledger, vouchers) = (ledger(MANY), vouchers(MANY));
    Box::new(move |deadline| {
        let _keep = &dir;
        committers_until(committers, &rt, &ledger, &store, &vouchers, deadline)
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// p50 / p99 of `fdatasync` after a 200-byte overwrite: the disk's sync latency right now,
/// which bounds group commit (at most one batch per sync).
fn fdatasync_latency() -> String {
    use std::io::{Seek, SeekFrom, Write};
    let Ok(dir) = tempfile::tempdir() else {
        return "n/a".into();
    };
    let Ok(mut f) = std::fs::File::create(dir.path().join("probe")) else {
        return "n/a".into();
    };
    let mut lat = Vec::new();
    for i in 0..100u64 {
        let ok = f
            .seek(SeekFrom::Start((i % 8) * 512))
            .and_then(|_| f.write_all(&[7u8; 200]));
        let start = Instant::now();
        if ok.and_then(|()| f.sync_data()).is_err() {
            return "n/a".into();
        }
        lat.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let p50 = median(&mut lat);
    format!("p50 {p50:.0} µs, p99 {:.0} µs", lat[98])
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not, and then every path
    // runs once, briefly, as a smoke test (the ratios of such a run mean nothing).
    let measuring = std::env::args().any(|a| a == "--bench");
    let (rounds, slice) = if measuring {
        (
            env_or("X402_RATIO_ROUNDS", 7) as usize,
            Duration::from_millis(env_or("X402_RATIO_MS", 1000)),
        )
    } else {
        (1, Duration::from_millis(20))
    };
    let mut baselines = [raw(1), raw(2)];
    let only = std::env::var("X402_RATIO_ONLY").ok();
    let mut paths = Vec::new();
    // Fixtures are built only for the selected paths.
    let mut add = |name: String, threads: usize, target: Option<f64>, make: &dyn Fn() -> Runner| {
        if only.as_ref().is_none_or(|o| name.contains(o.as_str())) {
            paths.push(Path {
                name,
                threads,
                target,
                run: make(),
            });
        }
    };
    add("ledger_mem/1ch/1t".into(), 1, Some(0.9), &|| {
        in_memory(1, 1)
    });
    add("ledger_mem/10k/1t".into(), 1, Some(0.9), &|| {
        in_memory(MANY, 1)
    });
    add("ledger_mem/2ch/2t".into(), 2, Some(0.9), &|| {
        in_memory(2, 2)
    });
    add("ledger_mem/10k/2t".into(), 2, Some(0.9), &|| {
        in_memory(MANY, 2)
    });
    let with = |durability, fdatasync| SledOptions {
        durability,
        fdatasync,
        ..SledOptions::default()
    };
    for workers in [1, 2] {
        for (mode, sync, target) in [
            (Durability::Group, true, Some(0.8)),
            (Durability::Group, false, Some(0.8)),
            (Durability::None, false, None),
        ] {
            let name = format!(
                "store_conc/{}/10k/{COMMITTERS}c/{workers}t",
                label(mode, sync)
            );
            add(name, workers, target, &|| {
                concurrent(with(mode, sync), workers, COMMITTERS)
            });
        }
        // What the default linger buys: the same path flushing back to back.
        let name = format!("store_conc/group+fdatasync,linger=0/10k/{COMMITTERS}c/{workers}t");
        let no_linger = SledOptions {
            group_linger: Duration::ZERO,
            ..with(Durability::Group, true)
        };
        add(name, workers, None, &|| {
            concurrent(no_linger.clone(), workers, COMMITTERS)
        });
        // What the write-ahead log buys: the same path with sled flushed and synced per batch.
        let name = format!("store_conc/group+fdatasync,sled-flush/10k/{COMMITTERS}c/{workers}t");
        let sled_flush = SledOptions {
            write_ahead_log: false,
            ..with(Durability::Group, true)
        };
        add(name, workers, None, &|| {
            concurrent(sled_flush.clone(), workers, COMMITTERS)
        });
        // Group commit batches what is in flight: more concurrent requests, bigger batches.
        let name = format!("store_conc/group+fdatasync/10k/256c/{workers}t");
        add(name, workers, None, &|| {
            concurrent(with(Durability::Group, true), workers, 256)
        });
    }

    println!(
        "ratios: {rounds} rounds of {} ms pairs; loadavg before: {}; fdatasync {}",
        slice.as_millis(),
        loadavg(),
        fdatasync_latency()
    );
    // Warm-up round: fills the stores with every channel and the caches.
    for p in paths.iter_mut() {
        (p.run)(Instant::now() + slice);
    }
    let mut ratios = vec![Vec::new(); paths.len()];
    let mut rates = vec![Vec::new(); paths.len()];
    let mut raw_rates = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, p) in paths.iter_mut().enumerate() {
            let start = Instant::now();
            let n = baselines[p.threads - 1](start + slice) as f64;
            let raw_rate = n / start.elapsed().as_secs_f64();
            let start = Instant::now();
            let n = (p.run)(start + slice) as f64;
            let rate = n / start.elapsed().as_secs_f64();
            raw_rates[p.threads - 1].push(raw_rate);
            rates[i].push(rate);
            ratios[i].push(rate / raw_rate);
        }
    }
    println!(
        "loadavg after: {}; fdatasync {}\n",
        loadavg(),
        fdatasync_latency()
    );
    println!("| raw libsecp256k1 recovery | median ops/s |");
    println!("|---|---:|");
    for (t, r) in raw_rates
        .iter_mut()
        .enumerate()
        .filter(|(_, r)| !r.is_empty())
    {
        println!("| {} thread(s) | {:.0} |", t + 1, median(r));
    }
    println!(
        "\n| path | threads | median ops/s | ratio to raw recovery, median (min–max) | target | met |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    for (i, p) in paths.iter().enumerate() {
        let (lo, hi) = ratios[i]
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        let med = median(&mut ratios[i]);
        let (target, met) = match p.target {
            Some(t) => (format!("≥ {t}"), if med >= t { "yes" } else { "**no**" }),
            None => ("—".into(), "—"),
        };
        let rate = median(&mut rates[i]);
        println!(
            "| `{}` | {} | {rate:.0} | {med:.2} ({lo:.2}–{hi:.2}) | {target} | {met} |",
            p.name, p.threads
        );
    }
}
