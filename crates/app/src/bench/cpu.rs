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
}

/// Clock ticks of a process (`utime + stime` from `/proc/<pid>/stat`).
pub(super) fn proc_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are fixed.
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
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
    me: Option<u64>,
    machine: Option<(u64, u64)>,
}

impl CpuMark {
    pub(super) fn now(pid: Option<u32>) -> Self {
        Self {
            server: pid.and_then(|p| proc_ticks(&p.to_string())),
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
