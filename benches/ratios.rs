//! Target ratios, measured so that a shared, noisy machine cannot fake or hide them.
//!
//! `cargo bench --bench ratios`. Each path is measured right after raw libsecp256k1 recovery
//! at the same thread count, both for `X402_RATIO_MS` ms (default 1000), and the ratio of the
//! pair is kept; this repeats for `X402_RATIO_ROUNDS` rounds (default 7). Load from other
//! processes that lasts longer than a pair hits both sides of it, so the median ratio is far
//! steadier than two criterion numbers taken minutes apart. A second ratio uses operations per
//! CPU-second of this process (from `/proc/self/task/*/schedstat`), which time stolen by other
//! processes does not distort (the kernel updates a running thread's figure about once a
//! tick, hence the long slices). Absolute rates are printed too, but `benches/core.rs`
//! (criterion) is the place for those.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use x402_upto::Durability;

/// A path under test: runs until the deadline and returns how many operations it did.
struct Path {
    name: String,
    threads: usize,
    target: Option<f64>,
    run: Box<dyn FnMut(Instant) -> u64>,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time of threads that exited since start (they vanish from `/proc/self/task`).
static EXITED_CPU_NS: AtomicU64 = AtomicU64::new(0);

/// On-CPU nanoseconds of one thread (`schedstat`'s first field), 0 if unavailable.
fn schedstat_ns(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// On-CPU nanoseconds of the whole process: live threads plus those that already exited.
/// Time other processes take from us does not count, which is the point.
fn process_cpu_ns() -> u64 {
    let live: u64 = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .map(|task| schedstat_ns(&task.path().join("schedstat")))
        .sum();
    live + EXITED_CPU_NS.load(Ordering::Relaxed)
}

/// `f(thread, k)` on `threads` OS threads until `deadline`; returns total calls.
fn threads_until(threads: usize, deadline: Instant, f: &(dyn Fn(usize, u64) + Sync)) -> u64 {
    let total = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let total = &total;
            s.spawn(move || {
                let me = std::path::Path::new("/proc/thread-self/schedstat");
                let cpu0 = schedstat_ns(me);
                let mut k = 0;
                while Instant::now() < deadline {
                    f(t, k);
                    k += 1;
                }
                total.fetch_add(k, Ordering::Relaxed);
                EXITED_CPU_NS.fetch_add(schedstat_ns(me).saturating_sub(cpu0), Ordering::Relaxed);
            });
        }
    });
    total.into_inner()
}

/// Runs `f` for one slice; returns (ops per wall second, ops per CPU second).
fn measure(f: &mut dyn FnMut(Instant) -> u64, slice: Duration) -> (f64, f64) {
    let cpu0 = process_cpu_ns();
    let start = Instant::now();
    let n = f(start + slice) as f64;
    let wall = start.elapsed().as_secs_f64();
    let cpu1 = process_cpu_ns();
    if std::env::var_os("X402_RATIO_DEBUG").is_some() {
        eprintln!(
            "slice: ops {n} wall {wall:.3}s cpu {:.3}s",
            (cpu1 as f64 - cpu0 as f64) / 1e9
        );
    }
    let cpu = cpu1.saturating_sub(cpu0).max(1) as f64 / 1e9;
    (n / wall, n / cpu)
}

fn raw(threads: usize) -> Box<dyn FnMut(Instant) -> u64> {
    let (digest, sig) = raw_signature();
    Box::new(move |deadline| threads_until(threads, deadline, &|_, _| recover_raw(&digest, &sig)))
}

fn in_memory(channels: usize, threads: usize) -> Box<dyn FnMut(Instant) -> u64> {
    let (ledger, vouchers) = (ledger(channels), vouchers(channels));
    Box::new(move |deadline| {
        // Thread t serves channels t, t+threads, … so threads never meet on a channel.
        threads_until(threads, deadline, &|t, k| {
            let idx = (t + threads * (k as usize % (channels / threads))) % channels;
            serve_in_memory(&ledger, &vouchers[idx]);
        })
    })
}

fn concurrent(
    mode: Durability,
    fdatasync: bool,
    workers: usize,
    committers: usize,
) -> Box<dyn FnMut(Instant) -> u64> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");
    let (dir, store) = open_store(mode, fdatasync);
    let (ledger, vouchers) = (ledger(MANY), vouchers(MANY));
    Box::new(move |deadline| {
        let _keep = &dir;
        committers_until(committers, &rt, &ledger, &store, &vouchers, deadline)
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
    // `cargo bench` passes `--bench`; this target takes no arguments of its own.
    let rounds = env_or("X402_RATIO_ROUNDS", 7) as usize;
    let slice = Duration::from_millis(env_or("X402_RATIO_MS", 1000));
    let mut baselines = [raw(1), raw(2)];
    let mut paths = vec![
        Path {
            name: "ledger_mem/1ch/1t".into(),
            threads: 1,
            target: Some(0.9),
            run: in_memory(1, 1),
        },
        Path {
            name: "ledger_mem/10k/1t".into(),
            threads: 1,
            target: Some(0.9),
            run: in_memory(MANY, 1),
        },
        Path {
            name: "ledger_mem/2ch/2t".into(),
            threads: 2,
            target: Some(0.9),
            run: in_memory(2, 2),
        },
        Path {
            name: "ledger_mem/10k/2t".into(),
            threads: 2,
            target: Some(0.9),
            run: in_memory(MANY, 2),
        },
    ];
    for workers in [1, 2] {
        for (mode, sync, target) in [
            (Durability::Group, true, Some(0.8)),
            (Durability::Group, false, Some(0.8)),
            (Durability::None, false, None),
        ] {
            paths.push(Path {
                name: format!(
                    "store_conc/{}/10k/{COMMITTERS}c/{workers}t",
                    label(mode, sync)
                ),
                threads: workers,
                target,
                run: concurrent(mode, sync, workers, COMMITTERS),
            });
        }
        // Group commit batches what is in flight: more concurrent requests, bigger batches.
        paths.push(Path {
            name: format!("store_conc/group+fdatasync/10k/256c/{workers}t"),
            threads: workers,
            target: None,
            run: concurrent(Durability::Group, true, workers, 256),
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
    let mut cpu_ratios = vec![Vec::new(); paths.len()];
    let mut rates = vec![Vec::new(); paths.len()];
    let mut raw_rates = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, p) in paths.iter_mut().enumerate() {
            let (raw_wall, raw_cpu) = measure(&mut baselines[p.threads - 1], slice);
            let (wall, cpu) = measure(&mut p.run, slice);
            raw_rates[p.threads - 1].push(raw_wall);
            rates[i].push(wall);
            ratios[i].push(wall / raw_wall);
            cpu_ratios[i].push(cpu / raw_cpu);
        }
    }
    println!(
        "loadavg after: {}; fdatasync {}\n",
        loadavg(),
        fdatasync_latency()
    );
    println!("| raw libsecp256k1 recovery | median ops/s |");
    println!("|---|---:|");
    for (t, r) in raw_rates.iter_mut().enumerate() {
        println!("| {} thread(s) | {:.0} |", t + 1, median(r));
    }
    println!();
    println!("Wall ratio: ops/s of the path over ops/s of raw recovery measured just before it.");
    println!(
        "CPU ratio: the same with ops per CPU-second of this process (immune to neighbours).\n"
    );
    println!(
        "| path | threads | median ops/s | wall ratio (min–max) | CPU ratio (min–max) | target | met (wall / CPU) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    for (i, p) in paths.iter().enumerate() {
        let wall = summary(&mut ratios[i]);
        let cpu = summary(&mut cpu_ratios[i]);
        let (target, met) = match p.target {
            Some(t) => {
                let yes = |r: f64| if r >= t { "yes" } else { "**no**" };
                (
                    format!("≥ {t}"),
                    format!("{} / {}", yes(wall.0), yes(cpu.0)),
                )
            }
            None => ("—".into(), "—".into()),
        };
        let rate = median(&mut rates[i]);
        println!(
            "| `{}` | {} | {rate:.0} | {:.2} ({:.2}–{:.2}) | {:.2} ({:.2}–{:.2}) | {target} | {met} |",
            p.name, p.threads, wall.0, wall.1, wall.2, cpu.0, cpu.1, cpu.2
        );
    }
}

/// (median, min, max).
fn summary(v: &mut [f64]) -> (f64, f64, f64) {
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    (median(v), lo, hi)
}
