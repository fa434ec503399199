//! Counters the manager keeps for operators (exposed by the REST layer and, later, metrics).
//! Plain atomics: any thread bumps them without a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::model::TaskStatus;

/// Monotonic counters since start.
#[derive(Debug, Default)]
pub struct Stats {
    /// Shell tasks created.
    pub created_shell: AtomicU64,
    /// Docker tasks created.
    pub created_docker: AtomicU64,
    /// Tasks that reached each final status, indexed by `final_index`.
    pub finished: [AtomicU64; 4],
    /// Agent responses applied or examined by the response thread.
    pub responses: AtomicU64,
    /// Responses for tasks already final (late or duplicated).
    pub late_responses: AtomicU64,
    /// Responses for task ids the manager does not know.
    pub unknown_responses: AtomicU64,
    /// Responses about another agent's task (a misbehaving or compromised agent).
    pub foreign_responses: AtomicU64,
    /// Responses with status UNKNOWN.
    pub malformed_responses: AtomicU64,
    /// Numbered responses an agent sent again that were applied before (after a reconnect).
    pub duplicate_responses: AtomicU64,
    /// Responses that carried nothing and changed nothing: neither recorded nor published.
    pub empty_responses: AtomicU64,
    /// Times a producer found the response channel full and waited.
    pub backpressure_waits: AtomicU64,
    /// Total nanoseconds producers waited on a full response channel.
    pub backpressure_wait_ns: AtomicU64,
    /// Periodic sweeps run.
    pub cleanup_runs: AtomicU64,
    /// Tasks removed by sweeps and eviction.
    pub cleanup_removed: AtomicU64,
    /// Tasks whose retained output first exceeded `max_output_bytes` (once per task).
    pub output_truncated: AtomicU64,
    /// Tasks that first lost output to `max_output_total_bytes` (once per task).
    pub output_budget_shed: AtomicU64,
    /// Time from creation to a final status.
    pub duration: DurationHistogram,
}

/// Upper bounds (seconds) of the task-duration buckets: sub-second commands up to the
/// 24 h timeout limit.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 86400.0,
];

/// A lock-free histogram with fixed buckets, read by the metrics exposition.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    counts: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl DurationHistogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Sum in seconds, count, and cumulative counts per bucket bound (last bound +Inf).
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            buckets.push((
                DURATION_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY),
                cumulative,
            ));
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, cumulative, buckets)
    }
}

impl Stats {
    /// Counts a task reaching a final status.
    pub fn count_finished(&self, status: TaskStatus) {
        if let Some(i) = final_index(status) {
            self.finished[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many tasks finished with `status`.
    pub fn finished_with(&self, status: TaskStatus) -> u64 {
        final_index(status).map_or(0, |i| self.finished[i].load(Ordering::Relaxed))
    }
}

fn final_index(status: TaskStatus) -> Option<usize> {
    match status {
        TaskStatus::Completed => Some(0),
        TaskStatus::Failed => Some(1),
        TaskStatus::Timeout => Some(2),
        TaskStatus::Cancelled => Some(3),
        _ => None,
    }
}
