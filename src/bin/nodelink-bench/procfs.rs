//! What the server process costs, read from `/proc/PID` when the load generator knows the
//! server's pid (`--server-pid`): resident memory now (VmRSS) and at its peak (VmHWM), CPU
//! seconds (user + system) and thread count. Linux only; on any read error the figures are
//! simply absent, because a benchmark of another machine's server cannot see them.

use std::fs;

/// One reading of the server's resource use.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// Resident set size now, in KiB.
    pub rss_kib: u64,
    /// Peak resident set size since the process started, in KiB.
    pub hwm_kib: u64,
    /// Anonymous part of the resident set (heap, stacks), in KiB.
    pub anon_kib: u64,
    /// File-backed part of the resident set (code of the binary and libraries), in KiB.
    pub file_kib: u64,
    /// Threads now.
    pub threads: u64,
    /// User plus system CPU time since the process started, in seconds.
    pub cpu_secs: f64,
}

/// Reads `/proc/PID/status` and `/proc/PID/stat`; `None` if the process is not readable.
pub fn read(pid: u32) -> Option<Usage> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut usage = Usage::default();
    for line in status.lines() {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let value = value.parse::<u64>().unwrap_or(0);
        match key {
            "VmRSS:" => usage.rss_kib = value,
            "VmHWM:" => usage.hwm_kib = value,
            "RssAnon:" => usage.anon_kib = value,
            "RssFile:" => usage.file_kib = value,
            "Threads:" => usage.threads = value,
            _ => {}
        }
    }
    usage.cpu_secs = cpu_secs(pid).unwrap_or(0.0);
    Some(usage)
}

/// utime + stime (fields 14 and 15 of `/proc/PID/stat`) in seconds.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: skip past it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so field N is at index N - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions and only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((utime + stime) as f64 / ticks)
}

/// Tracks the server across a run: the reading at the start, the most threads seen, and
/// the reading at the end.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tracker {
    pid: Option<u32>,
    /// The reading when the run began.
    pub start: Option<Usage>,
    /// The latest reading.
    pub last: Option<Usage>,
    /// Most threads seen in any reading.
    pub max_threads: u64,
    /// Highest VmRSS seen in any reading, in KiB.
    pub max_rss_kib: u64,
}

impl Tracker {
    /// Starts tracking `pid` (or nothing).
    pub fn new(pid: Option<u32>) -> Self {
        let mut t = Tracker {
            pid,
            ..Tracker::default()
        };
        t.start = t.sample();
        t
    }

    /// Takes a reading and folds it into the maxima.
    pub fn sample(&mut self) -> Option<Usage> {
        let u = read(self.pid?)?;
        self.max_threads = self.max_threads.max(u.threads);
        self.max_rss_kib = self.max_rss_kib.max(u.rss_kib);
        self.last = Some(u);
        Some(u)
    }

    /// CPU seconds the server used since tracking began.
    pub fn cpu_used(&self) -> Option<f64> {
        Some(self.last?.cpu_secs - self.start?.cpu_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let u = read(std::process::id()).expect("own /proc entry");
        assert!(u.rss_kib > 0 && u.hwm_kib >= u.rss_kib && u.threads >= 1);
    }
}
