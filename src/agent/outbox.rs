//! Responses on their way to the server, kept across reconnections.
//!
//! Task threads push, the connection's writer pops. The queue is bounded in bytes (default
//! 4 MiB): when it is full a pushing task thread waits, which stops it reading its pipes and
//! so pauses the command itself, rather than dropping output. A response that could not be
//! written goes back to the front, so a short network blip loses nothing.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use protobuf::Message;

use crate::proto::TaskResponse;

/// A byte-bounded FIFO of responses.
pub struct Outbox {
    state: Mutex<State>,
    not_empty: Condvar,
    not_full: Condvar,
    cap_bytes: usize,
}

struct State {
    queue: VecDeque<(TaskResponse, usize)>,
    bytes: usize,
}

impl Outbox {
    /// An outbox holding at most about `cap_bytes` of encoded responses.
    pub fn new(cap_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                bytes: 0,
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            cap_bytes: cap_bytes.max(1),
        }
    }

    /// Queues a response, waiting while the outbox is full (one response always fits).
    pub fn push(&self, resp: TaskResponse) {
        let size = resp.compute_size() as usize;
        let mut st = self.state.lock();
        while !st.queue.is_empty() && st.bytes + size > self.cap_bytes {
            self.not_full.wait(&mut st);
        }
        st.bytes += size;
        st.queue.push_back((resp, size));
        self.not_empty.notify_one();
    }

    /// Puts back a response that could not be written, ahead of everything else.
    pub fn push_front(&self, resp: TaskResponse) {
        let size = resp.compute_size() as usize;
        let mut st = self.state.lock();
        st.bytes += size;
        st.queue.push_front((resp, size));
        self.not_empty.notify_one();
    }

    /// The oldest response, waiting up to `wait` for one; also says whether more are queued.
    pub fn pop(&self, wait: Duration) -> Option<(TaskResponse, bool)> {
        let mut st = self.state.lock();
        if st.queue.is_empty() {
            let _ = self.not_empty.wait_for(&mut st, wait);
        }
        let (resp, size) = st.queue.pop_front()?;
        st.bytes -= size;
        self.not_full.notify_all();
        Some((resp, !st.queue.is_empty()))
    }

    /// Responses queued now.
    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.state.lock().queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn resp(task: &str) -> TaskResponse {
        let mut r = TaskResponse::new();
        r.task_id = task.into();
        r
    }

    #[test]
    fn keeps_order_and_puts_failed_writes_back_in_front() {
        let ob = Outbox::new(1 << 20);
        ob.push(resp("a"));
        ob.push(resp("b"));
        let (first, more) = ob.pop(Duration::ZERO).expect("a");
        assert_eq!(first.task_id, "a");
        assert!(more);
        ob.push_front(first);
        let order: Vec<String> =
            std::iter::from_fn(|| ob.pop(Duration::ZERO).map(|(r, _)| r.task_id)).collect();
        assert_eq!(order, vec!["a", "b"]);
    }

    #[test]
    fn a_full_outbox_makes_producers_wait_instead_of_dropping() {
        let ob = Arc::new(Outbox::new(64));
        let producer = {
            let ob = ob.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    ob.push(resp(&format!("task-{i:03}-padding-padding")));
                }
            })
        };
        let mut got = Vec::new();
        while got.len() < 100 {
            if let Some((r, _)) = ob.pop(Duration::from_secs(10)) {
                got.push(r.task_id);
            } else {
                panic!("producer stalled");
            }
        }
        producer.join().expect("producer");
        let want: Vec<String> = (0..100)
            .map(|i| format!("task-{i:03}-padding-padding"))
            .collect();
        assert_eq!(got, want);
    }
}
