//! Responses on their way to the server, kept across reconnections and, with a server that
//! acknowledges, until the server says they are durable.
//!
//! Task threads push, the connection's writer pops. Every response gets this agent process's
//! next number (`TaskResponse.seq`). On a stream whose server acknowledges (`ResponseAck`),
//! a written response moves to the unacknowledged list and is forgotten only when an
//! acknowledgement covers its number; a new stream sends the unacknowledged ones again
//! first, and the server applies each number once, so a server crash loses nothing. With an
//! original server (no acknowledgements) a written response is forgotten at once.
//!
//! Both lists together are bounded in bytes (default 4 MiB): when full, a pushing task thread
//! waits, which stops it reading its pipes and so pauses the command itself, rather than
//! dropping output. A response that could not be written goes back to the front.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use protobuf::Message;

use crate::proto::TaskResponse;

/// A byte-bounded FIFO of responses plus those awaiting acknowledgement.
pub struct Outbox {
    state: Mutex<State>,
    not_empty: Condvar,
    not_full: Condvar,
    cap_bytes: usize,
}

struct State {
    queue: VecDeque<(TaskResponse, usize)>,
    unacked: VecDeque<(TaskResponse, usize)>,
    bytes: usize,
    next_seq: u64,
    acked: u64,
}

impl Outbox {
    /// An outbox holding at most about `cap_bytes` of encoded responses.
    pub fn new(cap_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                unacked: VecDeque::new(),
                bytes: 0,
                next_seq: 1,
                acked: 0,
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            cap_bytes: cap_bytes.max(1),
        }
    }

    /// Numbers and queues a response, waiting while the outbox is full (one always fits).
    pub fn push(&self, mut resp: TaskResponse) {
        let mut st = self.state.lock();
        let size = resp.compute_size() as usize + 10;
        while (!st.queue.is_empty() || !st.unacked.is_empty()) && st.bytes + size > self.cap_bytes {
            self.not_full.wait(&mut st);
        }
        resp.seq = st.next_seq;
        st.next_seq += 1;
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

    /// Keeps a written response until an acknowledgement covers it.
    pub fn hold(&self, resp: TaskResponse) {
        let mut st = self.state.lock();
        if resp.seq <= st.acked {
            return; // acknowledged before the writer got here
        }
        let size = resp.compute_size() as usize;
        st.bytes += size;
        st.unacked.push_back((resp, size));
    }

    /// The server holds every response numbered up to `upto`: forget them.
    pub fn ack(&self, upto: u64) {
        let mut st = self.state.lock();
        st.acked = st.acked.max(upto);
        let mut freed = 0;
        while st.unacked.front().is_some_and(|(r, _)| r.seq <= upto) {
            if let Some((_, size)) = st.unacked.pop_front() {
                freed += size;
            }
        }
        // A response acknowledged while it waited to be rewritten is not sent again.
        let before = st.queue.len();
        st.queue.retain(|(r, size)| {
            let keep = r.seq == 0 || r.seq > upto;
            if !keep {
                freed += size;
            }
            keep
        });
        if st.queue.len() != before || freed > 0 {
            st.bytes -= freed;
            self.not_full.notify_all();
        }
    }

    /// A new stream: the unacknowledged responses go out again first, in order.
    pub fn resend_unacked(&self) -> usize {
        let mut st = self.state.lock();
        let n = st.unacked.len();
        while let Some(entry) = st.unacked.pop_back() {
            st.queue.push_front(entry);
        }
        if n > 0 {
            self.not_empty.notify_one();
        }
        n
    }

    /// Ids of the tasks with responses queued or awaiting acknowledgement.
    pub fn task_ids(&self) -> Vec<String> {
        let st = self.state.lock();
        let mut ids: Vec<String> = st
            .queue
            .iter()
            .chain(st.unacked.iter())
            .map(|(r, _)| r.task_id.clone())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Responses queued or awaiting acknowledgement now.
    pub fn len(&self) -> usize {
        let st = self.state.lock();
        st.queue.len() + st.unacked.len()
    }

    /// True when nothing is queued or awaiting acknowledgement.
    pub fn is_empty(&self) -> bool {
        let st = self.state.lock();
        st.queue.is_empty() && st.unacked.is_empty()
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

    fn drain(ob: &Outbox) -> Vec<(String, u64)> {
        std::iter::from_fn(|| ob.pop(Duration::ZERO).map(|(r, _)| (r.task_id, r.seq))).collect()
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
        let order: Vec<String> = drain(&ob).into_iter().map(|(t, _)| t).collect();
        assert_eq!(order, vec!["a", "b"]);
    }

    #[test]
    fn responses_are_numbered_from_one_in_push_order() {
        let ob = Outbox::new(1 << 20);
        for t in ["a", "b", "c"] {
            ob.push(resp(t));
        }
        assert_eq!(
            drain(&ob),
            vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)]
        );
    }

    #[test]
    fn unacknowledged_responses_are_sent_again_first_and_acknowledged_ones_never() {
        let ob = Outbox::new(1 << 20);
        for t in ["a", "b", "c", "d"] {
            ob.push(resp(t));
        }
        // Written a, b, c on a stream that acknowledges; only a was acknowledged.
        for _ in 0..3 {
            let (r, _) = ob.pop(Duration::ZERO).expect("queued");
            ob.hold(r);
        }
        ob.ack(1);
        assert_eq!(ob.len(), 3);
        assert_eq!(ob.resend_unacked(), 2);
        assert_eq!(
            drain(&ob),
            vec![("b".into(), 2), ("c".into(), 3), ("d".into(), 4)]
        );
        // An acknowledgement that arrives before the writer holds the response wins.
        ob.ack(4);
        ob.hold(resp_with_seq("d", 4));
        assert!(ob.is_empty());
    }

    fn resp_with_seq(task: &str, seq: u64) -> TaskResponse {
        let mut r = resp(task);
        r.seq = seq;
        r
    }

    #[test]
    fn an_acknowledgement_frees_room_for_waiting_producers() {
        let ob = Arc::new(Outbox::new(64));
        ob.push(resp("first-padding-padding-padding"));
        let (r, _) = ob.pop(Duration::ZERO).expect("queued");
        ob.hold(r);
        let producer = {
            let ob = ob.clone();
            std::thread::spawn(move || ob.push(resp("second-padding-padding-padding-padding")))
        };
        // The producer waits: the unacknowledged response still counts against the bound.
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !producer.is_finished(),
            "the bound ignored unacknowledged bytes"
        );
        ob.ack(1);
        producer.join().expect("producer");
        assert_eq!(
            drain(&ob),
            vec![("second-padding-padding-padding-padding".into(), 2)]
        );
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
