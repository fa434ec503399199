//! Counters the manager keeps for operators (exposed by the REST layer and, later, metrics).
//! Plain atomics: any thread bumps them without a lock.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Responses for task ids the manager does not know (or another agent's).
    pub unknown_responses: AtomicU64,
    /// Responses with status UNKNOWN.
    pub malformed_responses: AtomicU64,
    /// Times a producer found the response channel full and waited.
    pub backpressure_waits: AtomicU64,
    /// Total nanoseconds producers waited on a full response channel.
    pub backpressure_wait_ns: AtomicU64,
    /// Periodic sweeps run.
    pub cleanup_runs: AtomicU64,
    /// Tasks removed by sweeps and eviction.
    pub cleanup_removed: AtomicU64,
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
