//! Task events and the listeners that receive them.
//!
//! Every status change and every agent response becomes one immutable [`TaskEvent`], numbered
//! per task (`task_seq`) and globally (`global_seq`) while the registry lock is held, so the
//! numbers follow the real order. Listeners (the SSE hub, tests, metrics) each get their own
//! bounded queue and their own thread: publishing is a `try_send` that never blocks the
//! response thread, events of a task arrive in order, a listener that falls behind loses
//! events and is told which (`Delivery::Lagged`, once the events queued before the loss have
//! been handed over), and a panicking listener is logged and keeps running. A listener receives events in batches: whatever is queued when its thread
//! wakes, and, for a coalescing listener (the SSE hub), whatever arrives within its interval
//! since the previous batch, so a burst costs it one wake-up instead of one per event.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use parking_lot::Mutex;

use super::model::{ReportStatus, TaskId, TaskStatus};

/// One thing that happened to a task, as listeners and SSE clients see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskEvent {
    /// Position among all events of the server (0 for replayed history).
    pub global_seq: u64,
    /// Position among the events of this task, from 1.
    pub task_seq: u64,
    /// The task.
    pub task_id: TaskId,
    /// The agent that runs it.
    pub agent_id: Arc<str>,
    /// When the manager recorded it.
    pub at: SystemTime,
    /// What happened.
    pub kind: EventKind,
}

/// The two kinds of event: the SSE event names `status` and `response`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The task's status changed (including timeout and cancelled, which no agent reports).
    Status {
        /// The new status.
        status: TaskStatus,
        /// Why, for failed, timeout and cancelled.
        reason: Option<Arc<str>>,
    },
    /// The agent sent a response.
    Output {
        /// The response's status.
        status: ReportStatus,
        /// Whether it was the agent's last response.
        is_final: bool,
        /// Whether the agent said it was cancelled.
        cancelled: bool,
        /// Standard output chunk.
        stdout: String,
        /// Standard error chunk.
        stderr: String,
        /// Exit code on a final response.
        exit_code: Option<i32>,
    },
}

impl TaskEvent {
    /// True for the event after which a task produces nothing more: a final status.
    pub fn ends_task(&self) -> bool {
        matches!(self.kind, EventKind::Status { status, .. } if status.is_final())
    }

    /// Bytes of command output the event carries: what dominates the cost of passing it on.
    pub fn text_len(&self) -> usize {
        match &self.kind {
            EventKind::Output { stdout, stderr, .. } => stdout.len() + stderr.len(),
            EventKind::Status { .. } => 0,
        }
    }
}

/// What a listener is handed.
#[derive(Debug)]
pub enum Delivery {
    /// The next events, in order (never empty).
    Events(Vec<Arc<TaskEvent>>),
    /// Events were dropped because the listener's queue was full: `missed` of them since the
    /// previous `Lagged`, none newer than global sequence number `through`. It comes once every
    /// event queued before the loss has been handed over, so a listener that sees no event up
    /// to `through` knows the missing ones are lost, not late.
    Lagged {
        /// Events dropped since the previous `Lagged`.
        missed: u64,
        /// The newest dropped event's global sequence number.
        through: u64,
    },
}

/// A listener callback, run on its own thread.
pub type Listener = Box<dyn FnMut(Delivery) + Send>;

/// The least time between two batches for a listener, asked before each batch so that it can
/// follow the listener's load (the SSE hub's grows with its client count).
pub type Coalesce = Box<dyn Fn() -> Duration + Send>;

/// Most events handed to a listener at once, so one batch cannot grow without bound.
const MAX_BATCH: usize = 1024;
/// Output bytes after which a batch goes out without waiting for more: a listener that
/// encodes events (the SSE hub) then hands large output on in slices, not all at once.
const MAX_BATCH_TEXT: usize = 256 * 1024;

struct Slot {
    name: String,
    tx: Sender<Arc<TaskEvent>>,
    lost: Arc<Lost>,
}

/// What a listener lost, written by the publisher and read by the listener's thread.
#[derive(Default)]
struct Lost {
    /// Events dropped and not yet reported.
    count: AtomicU64,
    /// The newest dropped event's global sequence number.
    through: AtomicU64,
}

/// The registered listeners and their threads.
pub struct ListenerSet {
    slots: Mutex<Vec<Slot>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    queue: usize,
    dropped: AtomicU64,
}

impl ListenerSet {
    /// An empty set whose listeners each get a queue of `queue` events.
    pub fn new(queue: usize) -> Self {
        ListenerSet {
            slots: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            queue: queue.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    /// Starts a listener on its own thread. `coalesce` gives the least time between two of its
    /// batches: events arriving sooner wait (at most that long) to join the next batch. Zero
    /// hands over whatever is queued at once.
    pub fn add(&self, name: &str, coalesce: Coalesce, listener: Listener) -> std::io::Result<()> {
        let (tx, rx) = bounded::<Arc<TaskEvent>>(self.queue);
        let lost = Arc::new(Lost::default());
        let lag = lost.clone();
        let thread_name = format!("nl-listen-{name}");
        let label = name.to_string();
        let handle = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || run_listener(&label, &rx, &lag, coalesce, listener))?;
        self.slots.lock().push(Slot {
            name: name.to_string(),
            tx,
            lost,
        });
        self.threads.lock().push(handle);
        Ok(())
    }

    /// Hands an event to every listener without ever blocking.
    pub fn publish(&self, event: &Arc<TaskEvent>) {
        for slot in self.slots.lock().iter() {
            match slot.tx.try_send(event.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    slot.lost.count.fetch_add(1, Ordering::Relaxed);
                    slot.lost
                        .through
                        .fetch_max(event.global_seq, Ordering::SeqCst);
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    log::debug!("listener {} is behind; dropped an event", slot.name);
                }
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }

    /// Events dropped for listeners that fell behind, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Closes every queue and waits for the listener threads to finish what they hold.
    pub fn shutdown(&self) {
        self.slots.lock().clear();
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

/// A listener thread: waits for an event, gathers the batch around it, hands it over.
fn run_listener(
    name: &str,
    rx: &Receiver<Arc<TaskEvent>>,
    lost: &Lost,
    coalesce: Coalesce,
    mut listener: Listener,
) {
    let mut last_batch: Option<Instant> = None;
    let mut reported_through = 0;
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::with_capacity(16);
        let mut text = first.text_len();
        batch.push(first);
        // Events close behind the previous batch wait for the interval to pass; after a quiet
        // spell the deadline is already past and the batch goes out at once.
        let deadline = last_batch.map(|t| t + coalesce());
        let mut closed = false;
        while batch.len() < MAX_BATCH && text < MAX_BATCH_TEXT {
            let next = match deadline {
                Some(d) if Instant::now() < d => rx.recv_deadline(d).map_err(|e| match e {
                    RecvTimeoutError::Timeout => TryRecvError::Empty,
                    RecvTimeoutError::Disconnected => TryRecvError::Disconnected,
                }),
                _ => rx.try_recv(),
            };
            match next {
                Ok(e) => {
                    text += e.text_len();
                    batch.push(e);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        deliver(name, &mut listener, Delivery::Events(batch));
        last_batch = Some(Instant::now());
        // A loss is reported once the queue is empty: every event accepted before the newest
        // dropped one (read first) has then been handed over, so the listener can tell which
        // sequence numbers will never come. Under constant overload the queue never empties,
        // but then later events arrive, and their numbers show the holes.
        let through = lost.through.load(Ordering::SeqCst);
        if through > reported_through && rx.is_empty() {
            reported_through = through;
            let missed = lost.count.swap(0, Ordering::Relaxed);
            deliver(name, &mut listener, Delivery::Lagged { missed, through });
        }
        if closed {
            break;
        }
    }
}

fn deliver(name: &str, listener: &mut Listener, delivery: Delivery) {
    if catch_unwind(AssertUnwindSafe(|| listener(delivery))).is_err() {
        log::error!("listener {name} panicked; it keeps receiving events");
    }
}
