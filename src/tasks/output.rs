//! Per-task output and event history, bounded in bytes. Owned by the registry entry of its
//! task and touched only under the registry lock.
//!
//! Each stream keeps its newest bytes in a ring (default 1 MiB each) with a `truncated` flag,
//! so users can read the whole output after the fact. Beside the bytes sits a compact index of
//! the task's events (sequence number, byte offsets, flags: no text), so a Server-Sent Events
//! client that joins late or resumes with `Last-Event-ID` gets the exact events it missed,
//! rebuilt from the rings, for as long as their bytes are retained.
//!
//! The index is bounded too: at most [`MAX_INDEXED_OUTPUTS`] response events per task. Beyond
//! it the oldest response event is folded into the next one (its text is replayed as part of
//! that event, under that event's id): no byte is lost, but a reader that resumes from between
//! the two gets the older text again. Status events need no bound: the lifecycle allows at
//! most five per task. The registry's server-wide budget sheds a task's oldest bytes and events
//! through [`OutputLog::shed`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use super::events::{EventKind, TaskEvent};
use super::model::{OutputSnapshot, ReportStatus, TaskId, TaskStatus};

/// The newest bytes of one stream, addressed by absolute offsets since the task began.
#[derive(Debug, Default)]
struct ByteRing {
    bytes: VecDeque<u8>,
    /// Absolute offset of `bytes[0]`.
    start: u64,
    cap: usize,
}

impl ByteRing {
    fn new(cap: usize) -> Self {
        ByteRing {
            bytes: VecDeque::new(),
            start: 0,
            cap,
        }
    }

    fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    fn truncated(&self) -> bool {
        self.start > 0
    }

    /// Appends `text`, dropping the oldest bytes beyond the cap; returns whether any went.
    fn push(&mut self, text: &str) -> bool {
        let data = text.as_bytes();
        if data.len() >= self.cap {
            // Only the tail survives; skip the rest without copying it in.
            let skip = data.len() - self.cap;
            let dropped = self.bytes.len() + skip;
            self.start += dropped as u64;
            self.bytes.clear();
            self.bytes.extend(&data[skip..]);
            return dropped > 0;
        }
        let overflow = (self.bytes.len() + data.len()).saturating_sub(self.cap);
        self.bytes.drain(..overflow);
        self.start += overflow as u64;
        self.bytes.extend(data);
        overflow > 0
    }

    /// Drops the retained bytes before absolute offset `to`; returns how many.
    fn cut_to(&mut self, to: u64) -> usize {
        let n = to.saturating_sub(self.start).min(self.bytes.len() as u64) as usize;
        self.bytes.drain(..n);
        self.start += n as u64;
        n
    }

    /// Retained bytes before absolute offset `to`.
    fn len_to(&self, to: u64) -> usize {
        to.saturating_sub(self.start).min(self.bytes.len() as u64) as usize
    }

    /// The retained text in `[from, to)`, clipped to what is kept. A cut that lands inside a
    /// multi-byte character (only possible at the truncated front) skips the partial bytes.
    fn text(&self, from: u64, to: u64) -> String {
        let from = from.max(self.start);
        let to = to.min(self.end());
        if from >= to {
            return String::new();
        }
        let (a, b) = ((from - self.start) as usize, (to - self.start) as usize);
        let mut out: Vec<u8> = self.bytes.range(a..b).copied().collect();
        let lead = out.iter().take_while(|&&c| (c & 0xC0) == 0x80).count();
        out.drain(..lead);
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

/// Index entry of one `response` event: where its text sits in the rings.
#[derive(Clone, Copy, Debug)]
struct OutputMark {
    seq: u64,
    at: SystemTime,
    stdout_end: u64,
    stderr_end: u64,
    exit_code: Option<i32>,
    status: ReportStatus,
    is_final: bool,
    cancelled: bool,
}

/// Index entry of one `status` event.
#[derive(Clone, Debug)]
struct StatusMark {
    seq: u64,
    at: SystemTime,
    status: TaskStatus,
    reason: Option<Arc<str>>,
}

/// Most response events one task's index holds; older ones are folded into the next.
pub const MAX_INDEXED_OUTPUTS: usize = 4096;

/// What one index entry costs, counted with the output bytes against the server-wide budget.
const MARK_BYTES: usize = size_of::<OutputMark>();

/// A task's retained output and event history.
#[derive(Debug)]
pub struct OutputLog {
    stdout: ByteRing,
    stderr: ByteRing,
    marks: VecDeque<OutputMark>,
    statuses: Vec<StatusMark>,
    next_seq: u64,
    /// Bytes were dropped because a stream exceeded its per-task cap.
    cap_hit: bool,
    /// Bytes or events were dropped for the server-wide budget.
    shed: bool,
}

impl OutputLog {
    /// An empty log keeping at most `cap` bytes of each stream.
    pub fn new(cap: usize) -> Self {
        OutputLog {
            stdout: ByteRing::new(cap),
            stderr: ByteRing::new(cap),
            marks: VecDeque::new(),
            statuses: Vec::new(),
            next_seq: 1,
            cap_hit: false,
            shed: false,
        }
    }

    /// Memory the output holds that the server-wide budget counts: the bytes of both
    /// streams and the response index.
    pub fn retained_bytes(&self) -> usize {
        self.stdout.bytes.len() + self.stderr.bytes.len() + self.marks.len() * MARK_BYTES
    }

    /// The sequence number of the newest event (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Records a status change and returns its sequence number.
    pub fn record_status(
        &mut self,
        at: SystemTime,
        status: TaskStatus,
        reason: Option<Arc<str>>,
    ) -> u64 {
        let seq = self.take_seq();
        self.statuses.push(StatusMark {
            seq,
            at,
            status,
            reason,
        });
        seq
    }

    /// Records an agent response and returns its sequence number.
    #[allow(clippy::too_many_arguments)]
    pub fn record_output(
        &mut self,
        at: SystemTime,
        status: ReportStatus,
        is_final: bool,
        cancelled: bool,
        stdout: &str,
        stderr: &str,
        exit_code: Option<i32>,
    ) -> u64 {
        let seq = self.take_seq();
        let out_dropped = self.stdout.push(stdout);
        let err_dropped = self.stderr.push(stderr);
        self.cap_hit |= out_dropped || err_dropped;
        self.marks.push_back(OutputMark {
            seq,
            at,
            stdout_end: self.stdout.end(),
            stderr_end: self.stderr.end(),
            exit_code,
            status,
            is_final,
            cancelled,
        });
        self.forget_gone();
        if self.marks.len() > MAX_INDEXED_OUTPUTS {
            // Replay starts the first event's text at the rings' start, so dropping the oldest
            // entry folds its text into the next event.
            self.marks.pop_front();
        }
        seq
    }

    /// Forgets events whose text is gone from both rings (their replay would be empty).
    fn forget_gone(&mut self) {
        let something_dropped = self.stdout.truncated() || self.stderr.truncated();
        while let Some(front) = self.marks.front() {
            let gone =
                front.stdout_end <= self.stdout.start && front.stderr_end <= self.stderr.start;
            if !(gone && something_dropped) {
                break;
            }
            self.marks.pop_front();
        }
    }

    /// Frees at least `want` bytes of [`OutputLog::retained_bytes`] if it holds them, oldest
    /// first: whole response events (their text and index entry) in order, then the front of
    /// the next event's text (stdout before stderr). Returns what was freed.
    pub fn shed(&mut self, want: usize) -> usize {
        let before = self.retained_bytes();
        loop {
            let freed = before - self.retained_bytes();
            if freed >= want {
                break;
            }
            let need = want - freed;
            let (out_to, err_to, whole) = match self.marks.front() {
                Some(m) => (m.stdout_end, m.stderr_end, true),
                None => (self.stdout.end(), self.stderr.end(), false),
            };
            let (a, b) = (self.stdout.len_to(out_to), self.stderr.len_to(err_to));
            if whole && a + b <= need {
                self.stdout.cut_to(out_to);
                self.stderr.cut_to(err_to);
                self.marks.pop_front();
                continue;
            }
            let x = need.min(a);
            self.stdout.cut_to(self.stdout.start + x as u64);
            self.stderr
                .cut_to(self.stderr.start + need.saturating_sub(x).min(b) as u64);
            break;
        }
        self.forget_gone();
        let freed = before - self.retained_bytes();
        self.shed |= freed > 0;
        freed
    }

    /// Continues numbering after `seq` (a task taken up again after a restart).
    pub fn resume_after(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq + 1);
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Whether stdout has dropped bytes.
    pub fn stdout_truncated(&self) -> bool {
        self.stdout.truncated()
    }

    /// Whether stderr has dropped bytes.
    pub fn stderr_truncated(&self) -> bool {
        self.stderr.truncated()
    }

    /// Whether a stream dropped bytes for the per-task cap (the `output_bytes` limit).
    pub fn cap_hit(&self) -> bool {
        self.cap_hit
    }

    /// Whether anything was dropped for the server-wide budget (`output_total_bytes`).
    pub fn was_shed(&self) -> bool {
        self.shed
    }

    /// The retained output for readers.
    pub fn snapshot(&self) -> OutputSnapshot {
        OutputSnapshot {
            stdout: self.stdout.text(0, u64::MAX),
            stderr: self.stderr.text(0, u64::MAX),
            stdout_truncated: self.stdout.truncated(),
            stderr_truncated: self.stderr.truncated(),
        }
    }

    /// Rebuilds every retained event with a sequence number above `after`, in order.
    pub fn replay(&self, task_id: TaskId, agent_id: &Arc<str>, after: u64) -> Vec<TaskEvent> {
        let mut out = Vec::new();
        let mut statuses = self.statuses.iter().filter(|m| m.seq > after).peekable();
        // Start offsets of the first mark are the ends of the one before it (or 0).
        let mut prev_out = 0;
        let mut prev_err = 0;
        for mark in &self.marks {
            while let Some(s) = statuses.peek() {
                if s.seq > mark.seq {
                    break;
                }
                out.push(status_event(task_id, agent_id, s));
                statuses.next();
            }
            if mark.seq > after {
                out.push(TaskEvent {
                    global_seq: 0,
                    task_seq: mark.seq,
                    task_id,
                    agent_id: agent_id.clone(),
                    at: mark.at,
                    kind: EventKind::Output {
                        status: mark.status,
                        is_final: mark.is_final,
                        cancelled: mark.cancelled,
                        stdout: self.stdout.text(prev_out, mark.stdout_end),
                        stderr: self.stderr.text(prev_err, mark.stderr_end),
                        exit_code: mark.exit_code,
                    },
                });
            }
            prev_out = mark.stdout_end;
            prev_err = mark.stderr_end;
        }
        out.extend(statuses.map(|s| status_event(task_id, agent_id, s)));
        out
    }
}

fn status_event(task_id: TaskId, agent_id: &Arc<str>, mark: &StatusMark) -> TaskEvent {
    TaskEvent {
        global_seq: 0,
        task_seq: mark.seq,
        task_id,
        agent_id: agent_id.clone(),
        at: mark.at,
        kind: EventKind::Status {
            status: mark.status,
            reason: mark.reason.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(events: &[TaskEvent]) -> Vec<(u64, String)> {
        events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Output { stdout, .. } => Some((e.task_seq, stdout.clone())),
                _ => None,
            })
            .collect()
    }

    fn push(log: &mut OutputLog, text: &str) -> u64 {
        log.record_output(
            SystemTime::now(),
            ReportStatus::InProgress,
            false,
            false,
            text,
            "",
            None,
        )
    }

    #[test]
    fn keeps_the_newest_bytes_and_flags_truncation() {
        let mut log = OutputLog::new(8);
        push(&mut log, "abcd");
        push(&mut log, "efgh");
        assert_eq!(log.snapshot().stdout, "abcdefgh");
        assert!(!log.snapshot().stdout_truncated);
        push(&mut log, "ij");
        let snap = log.snapshot();
        assert_eq!(snap.stdout, "cdefghij");
        assert!(snap.stdout_truncated);
        assert!(!snap.stderr_truncated);
        push(&mut log, "0123456789");
        assert_eq!(log.snapshot().stdout, "23456789");
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        let mut log = OutputLog::new(5);
        push(&mut log, "ééé"); // 6 bytes: the ring keeps the last 5, starting mid-character
        assert_eq!(log.snapshot().stdout, "éé");
    }

    #[test]
    fn replay_rebuilds_exact_events_after_a_sequence_number() {
        let mut log = OutputLog::new(1024);
        let id = TaskId::nil();
        let agent: Arc<str> = Arc::from("a");
        let s1 = log.record_status(SystemTime::now(), TaskStatus::Created, None);
        let o1 = push(&mut log, "one\n");
        let o2 = push(&mut log, "two\n");
        let s2 = log.record_status(SystemTime::now(), TaskStatus::Completed, None);
        let all = log.replay(id, &agent, 0);
        let seqs: Vec<u64> = all.iter().map(|e| e.task_seq).collect();
        assert_eq!(seqs, vec![s1, o1, o2, s2]);
        assert_eq!(
            outputs(&all),
            vec![(o1, "one\n".into()), (o2, "two\n".into())]
        );
        let after = log.replay(id, &agent, o1);
        assert_eq!(outputs(&after), vec![(o2, "two\n".into())]);
        assert_eq!(after.last().map(|e| e.task_seq), Some(s2));
        assert!(log.replay(id, &agent, s2).is_empty());
    }

    #[test]
    fn replay_after_truncation_keeps_only_retained_text() {
        let mut log = OutputLog::new(6);
        let agent: Arc<str> = Arc::from("a");
        push(&mut log, "aaaa");
        push(&mut log, "bbbb");
        push(&mut log, "cccc");
        let all = log.replay(TaskId::nil(), &agent, 0);
        let joined: String = outputs(&all).into_iter().map(|(_, t)| t).collect();
        assert_eq!(joined, "bbcccc");
        // The index forgets events whose bytes are gone.
        assert!(log.marks.len() <= 2);
        assert!(log.cap_hit());
    }

    #[test]
    fn the_index_is_bounded_and_folds_the_oldest_events_into_the_next() {
        let mut log = OutputLog::new(1 << 20);
        let agent: Arc<str> = Arc::from("a");
        for i in 0..MAX_INDEXED_OUTPUTS + 10 {
            push(&mut log, &format!("{i}\n"));
        }
        assert_eq!(log.marks.len(), MAX_INDEXED_OUTPUTS);
        let all = outputs(&log.replay(TaskId::nil(), &agent, 0));
        assert_eq!(all.len(), MAX_INDEXED_OUTPUTS);
        let joined: String = all.iter().map(|(_, t)| t.as_str()).collect();
        let expected: String = (0..MAX_INDEXED_OUTPUTS + 10)
            .map(|i| format!("{i}\n"))
            .collect();
        assert_eq!(joined, expected, "no byte is lost from replay");
        assert_eq!(
            all[0].0, 11,
            "the folded text travels under the next event's id"
        );
        assert!(!log.cap_hit() && !log.was_shed());
    }

    #[test]
    fn shedding_drops_the_oldest_events_then_the_front_of_the_next() {
        let mut log = OutputLog::new(1024);
        let agent: Arc<str> = Arc::from("a");
        push(&mut log, "aaaa");
        push(&mut log, "bbbb");
        let o3 = push(&mut log, "cccc");
        let before = log.retained_bytes();
        assert_eq!(before, 12 + 3 * MARK_BYTES);
        let freed = log.shed(4 + MARK_BYTES + 4 + MARK_BYTES + 2);
        assert!(freed >= 4 + MARK_BYTES + 4 + MARK_BYTES + 2, "{freed}");
        assert_eq!(log.retained_bytes(), before - freed);
        let snap = log.snapshot();
        assert_eq!(snap.stdout, "cc");
        assert!(snap.stdout_truncated && log.was_shed() && !log.cap_hit());
        assert_eq!(
            outputs(&log.replay(TaskId::nil(), &agent, 0)),
            vec![(o3, "cc".into())]
        );
        assert_eq!(log.shed(usize::MAX), 2 + MARK_BYTES, "everything can go");
        assert_eq!(log.retained_bytes(), 0);
    }
}
