//! nodelink patch: bounds on what a peer controls before a request reaches the caller
//! (request-line and header sizes, open connections, how long it may take to send a
//! request), and counters of each refusal so the embedding server can expose them.
//! Upstream had no such bounds.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Limits on what a client controls. The default is upstream's behaviour: no bound at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line (`GET /path HTTP/1.1`, without its CRLF); longer gets 414.
    pub max_request_line_bytes: usize,
    /// Largest header section (every header line with its CRLF); larger gets 431.
    pub max_header_bytes: usize,
    /// Most connections open at once; over it a connection gets a 503 (plain HTTP) or is
    /// closed (HTTPS), without a thread being started for it.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line_bytes: usize::MAX,
            max_header_bytes: usize::MAX,
            max_connections: usize::MAX,
        }
    }
}

/// How long a client may take to send a request, and how much of a body the request's
/// handler left unread is skipped to keep the connection open. Every read also waits at
/// most the socket's own read timeout. The default is upstream's behaviour: no deadline,
/// any unread body skipped whatever its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadlines {
    /// From the first byte of a request to the end of its head (and of a body of at most
    /// 1 KiB, which is read with it); past it the client gets `408` and the connection is
    /// closed.
    pub request_head: Option<Duration>,
    /// From the handler's first read of a larger body to its end; past it the read fails
    /// with `TimedOut`.
    pub request_body: Option<Duration>,
    /// Most bytes of an unread body the connection's thread reads and discards, after the
    /// response, to keep the connection open; a larger rest closes the connection.
    pub skip_bytes: usize,
    /// Longest time that skipping may take; past it the connection is closed.
    pub skip_time: Option<Duration>,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            request_head: None,
            request_body: None,
            skip_bytes: usize::MAX,
            skip_time: None,
        }
    }
}

/// What the limits refused so far, and the connections open now; shared with the caller,
/// who reads it whenever it likes (e.g. when metrics are scraped).
#[derive(Debug, Default)]
pub struct ServerCounters {
    request_lines_too_long: AtomicU64,
    headers_too_large: AtomicU64,
    connections_refused: AtomicU64,
    open_connections: AtomicUsize,
}

impl ServerCounters {
    /// Requests answered 414 because their request line was too long.
    pub fn request_lines_too_long(&self) -> u64 {
        self.request_lines_too_long.load(Ordering::Relaxed)
    }

    /// Requests answered 431 because their headers were too large.
    pub fn headers_too_large(&self) -> u64 {
        self.headers_too_large.load(Ordering::Relaxed)
    }

    /// Connections refused because `max_connections` were open.
    pub fn connections_refused(&self) -> u64 {
        self.connections_refused.load(Ordering::Relaxed)
    }

    /// Connections open now (accepted and not yet closed by either side's last user).
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::Relaxed)
    }

    pub(crate) fn count_request_line_too_long(&self) {
        self.request_lines_too_long.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_headers_too_large(&self) {
        self.headers_too_large.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// One admitted connection; the count goes down when the last half of the socket drops
/// (an SSE writer can outlive the thread that read the request).
pub(crate) struct ConnectionSlot {
    counters: Arc<ServerCounters>,
}

impl ConnectionSlot {
    /// A slot when fewer than `max` connections are open, else `None`.
    pub(crate) fn try_acquire(counters: &Arc<ServerCounters>, max: usize) -> Option<Self> {
        let open = &counters.open_connections;
        let mut current = open.load(Ordering::Relaxed);
        loop {
            if current >= max {
                return None;
            }
            match open.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(ConnectionSlot {
                        counters: counters.clone(),
                    })
                }
                Err(now) => current = now,
            }
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.counters
            .open_connections
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// The body of a refusal, JSON like the embedding API's own errors:
/// `{"error": "<what> exceeds the limit of N bytes", "details": {"limit_bytes": N}}`.
/// `what` is a fixed text of ours, never client input, so it needs no escaping.
pub(crate) fn error_body(what: &str, limit: usize) -> String {
    format!(
        "{{\"error\":\"{what} exceeds the limit of {limit} bytes\",\"details\":{{\"limit_bytes\":{limit}}}}}"
    )
}

/// The body of a `408` for a request that did not arrive within `limit` (zero: within the
/// socket's read timeout).
pub(crate) fn timeout_body(limit: Duration) -> String {
    let ms = limit.as_millis();
    format!(
        "{{\"error\":\"the request did not arrive in time\",\"details\":{{\"timeout_ms\":{ms}}}}}"
    )
}

/// The body of a connection refused over `max_connections`.
pub(crate) fn connections_body(limit: usize) -> String {
    format!(
        "{{\"error\":\"too many open connections (limit {limit}); retry later\",\"details\":{{\"limit\":{limit}}}}}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stop_at_the_maximum_and_come_back_when_dropped() {
        let counters = Arc::new(ServerCounters::default());
        let a = ConnectionSlot::try_acquire(&counters, 2).expect("first");
        let b = ConnectionSlot::try_acquire(&counters, 2).expect("second");
        assert!(ConnectionSlot::try_acquire(&counters, 2).is_none());
        assert_eq!(counters.open_connections(), 2);
        drop(a);
        assert!(ConnectionSlot::try_acquire(&counters, 2).is_some());
        drop(b);
        assert_eq!(counters.open_connections(), 0);
    }
}
