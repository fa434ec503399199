//! Every bound on what a peer controls, under the name `/metrics` reports its hits with
//! (`nodelink_limit_hits_total{limit=...}`), and the counters of the hits nodelink's edges
//! see themselves. The other hits are counted where they happen: tiny_http's
//! `ServerCounters` (request line, headers, connections, before a request reaches us) and
//! `tasks::Stats` (output truncated per task and by the server-wide budget). Plain atomics: any thread bumps them without a lock.
//!
//! Not here: `--max-grpc-message-bytes`. gRPC's core enforces it (`max_receive_message_len`)
//! and fails the agent's call with RESOURCE_EXHAUSTED, but grpcio shows the server only the
//! end of the request stream, the same as an agent that closed it, so a hit cannot be told
//! apart and is not counted rather than guessed.

use std::sync::atomic::{AtomicU64, Ordering};

/// One configurable limit; `as_str` is its metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `--max-body-bytes`: 413.
    BodyBytes,
    /// `--max-header-bytes`: 431 from tiny_http.
    HeaderBytes,
    /// `--max-request-line-bytes`: 414 from tiny_http.
    RequestLineBytes,
    /// `--max-connections`: 503 (HTTPS: closed) from tiny_http.
    Connections,
    /// `--max-sse-clients`: 503.
    SseClients,
    /// `--max-agents`: RESOURCE_EXHAUSTED.
    Agents,
    /// `--max-tasks`: 429 once no finished task is left to evict.
    Tasks,
    /// `--max-output-bytes`: a task's retained output was truncated (counted once per task).
    OutputBytes,
    /// `--max-output-total-bytes`: a task lost retained output to the server-wide budget
    /// (counted once per task).
    OutputTotalBytes,
}

impl Limit {
    /// Every limit, in the order `/metrics` lists them.
    pub const ALL: [Limit; 9] = [
        Limit::BodyBytes,
        Limit::HeaderBytes,
        Limit::RequestLineBytes,
        Limit::Connections,
        Limit::SseClients,
        Limit::Agents,
        Limit::Tasks,
        Limit::OutputBytes,
        Limit::OutputTotalBytes,
    ];

    /// The `limit` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::BodyBytes => "body_bytes",
            Limit::HeaderBytes => "header_bytes",
            Limit::RequestLineBytes => "request_line_bytes",
            Limit::Connections => "connections",
            Limit::SseClients => "sse_clients",
            Limit::Agents => "agents",
            Limit::Tasks => "tasks",
            Limit::OutputBytes => "output_bytes",
            Limit::OutputTotalBytes => "output_total_bytes",
        }
    }
}

/// Hits counted by nodelink's own edges (the REST handlers and the agent link), shared by
/// them and read by the metrics collector.
#[derive(Debug, Default)]
pub struct LimitHits {
    counts: [AtomicU64; Limit::ALL.len()],
}

impl LimitHits {
    /// Counts one hit of `limit`.
    pub fn hit(&self, limit: Limit) {
        self.counts[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Hits of `limit` counted here so far.
    pub fn get(&self, limit: Limit) -> u64 {
        self.counts[limit as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_has_its_own_counter_and_a_distinct_label() {
        let hits = LimitHits::default();
        hits.hit(Limit::Agents);
        hits.hit(Limit::Agents);
        hits.hit(Limit::BodyBytes);
        assert_eq!(hits.get(Limit::Agents), 2);
        assert_eq!(hits.get(Limit::BodyBytes), 1);
        assert_eq!(hits.get(Limit::Tasks), 0);
        let mut labels: Vec<_> = Limit::ALL.iter().map(|l| l.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Limit::ALL.len());
        for (i, l) in Limit::ALL.iter().enumerate() {
            assert_eq!(*l as usize, i, "ALL is in declaration order");
        }
    }
}
