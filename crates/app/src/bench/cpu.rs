//! CPU use of the target server, the load generator and the machine over the timed phase,
//! from Linux `/proc` tick counters.

use serde::Serialize;

/// Where the machine's CPU went during the timed phase, in % of one core.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CpuUse {
    /// The target server process (all its threads).
    pub server: Option<f64>,
    /// This load generator.
    pub loadgen: f64,
    /// Every process on the machine (the 2 cores are 200 %).
    pub machine: f64,
    /// Server CPU time per paid request, µs.
    pub server_us_per_request: Option<f64>,
    /// The database server (PostgreSQL's postmaster and its backends), when the target
    /// uses one.
    pub db: Option<f64>,
}

/// Clock ticks of a process (`utime + stime` from `/proc/<pid>/stat`).
pub(super) fn proc_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are fixed.
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks of process `root` and its direct children (PostgreSQL: the postmaster and
/// its backends), scanning `/proc`.
fn tree_ticks(root: u32) -> Option<u64> {
    let mut total = proc_ticks(&root.to_string())?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(root) {
            let ticks = f.get(11).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
            total += ticks;
        }
    }
    Some(total)
}

/// (busy, total) clock ticks of the whole machine, from `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

#[derive(Clone, Copy)]
pub(super) struct CpuMark {
    server: Option<u64>,
    db: Option<u64>,
    me: Option<u64>,
    machine: Option<(u64, u64)>,
}

impl CpuMark {
    /// Ticks now of the server processes `pids` (summed: several instances of one target)
    /// and of the database whose postmaster is `db`.
    pub(super) fn now(pids: &[u32], db: Option<u32>) -> Self {
        let server = (!pids.is_empty())
            .then(|| {
                pids.iter()
                    .map(|p| proc_ticks(&p.to_string()))
                    .sum::<Option<u64>>()
            })
            .flatten();
        Self {
            server,
            db: db.and_then(tree_ticks),
            me: proc_ticks("self"),
            machine: machine_ticks(),
        }
    }

    /// Use between `self` and `later` over `seconds`, for `requests` requests. Ticks are the
    /// kernel's USER_HZ, 100 per second on Linux.
    pub(super) fn since(self, later: Self, seconds: f64, requests: u64) -> Option<CpuUse> {
        const HZ: f64 = 100.0;
        let pct = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / HZ / seconds * 100.0;
        let (mb0, mt0) = self.machine?;
        let (mb1, mt1) = later.machine?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let machine = if mt1 > mt0 {
            (mb1 - mb0) as f64 / (mt1 - mt0) as f64 * cores * 100.0
        } else {
            0.0
        };
        let server = self.server.zip(later.server).map(|(a, b)| pct(a, b));
        Some(CpuUse {
            server,
            db: self.db.zip(later.db).map(|(a, b)| pct(a, b)),
            loadgen: pct(self.me?, later.me?),
            machine,
            server_us_per_request: self
                .server
                .zip(later.server)
                .filter(|_| requests > 0)
                .map(|(a, b)| (b.saturating_sub(a)) as f64 / HZ * 1e6 / requests as f64),
        })
    }
}
