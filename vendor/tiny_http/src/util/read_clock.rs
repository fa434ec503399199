//! nodelink patch: one connection's read deadline and the body bytes its last request left
//! unread. Shared by the socket's read half (which bounds every read by the deadline), the
//! connection thread (which sets the deadline for a request head and skips unread bodies)
//! and a request's body reader (which sets it for the body and reports what it left).
//! Reads of one connection are sequential, so only one of them uses the clock at a time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The body left unread was not framed by a `Content-Length` (chunked): its end is unknown.
pub(crate) const UNKNOWN_LENGTH: usize = usize::MAX;

#[derive(Debug, Default)]
pub(crate) struct ReadClock {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    deadline: Option<Instant>,
    unread: usize,
}

impl ReadClock {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two plain values; a panic elsewhere cannot leave them torn.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every read from now on fails with `TimedOut` once `limit` has passed; `None` lifts
    /// the deadline (reads then wait at most the socket's own timeout).
    pub(crate) fn set_deadline(&self, limit: Option<Duration>) {
        // A limit too far away to represent is no deadline.
        self.state().deadline = limit.and_then(|l| Instant::now().checked_add(l));
    }

    /// The deadline in force, if any.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.state().deadline
    }

    /// Records that the request being dropped left `bytes` of its body unread.
    pub(crate) fn leave_unread(&self, bytes: usize) {
        let mut state = self.state();
        state.unread = state.unread.saturating_add(bytes);
    }

    /// The unread body bytes recorded since the last call.
    pub(crate) fn take_unread(&self) -> usize {
        std::mem::take(&mut self.state().unread)
    }
}
