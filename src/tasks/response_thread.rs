//! The response pipeline: a bounded crossbeam channel from the agent link to one dedicated
//! thread that applies responses in arrival order.
//!
//! Nothing is ever dropped: a producer that finds the channel full waits for room. A stream's
//! reader future waits without blocking its thread ([`ReportSink::send_async`]): it parks its
//! waker in the [`Room`] queue and yields, so its completion-queue thread goes on serving the
//! other agents, while the stream itself, no longer read, pushes back on its agent through
//! HTTP/2 flow control. The response thread hands each slot it frees to the longest-waiting
//! stream. Threads (tests, tools) may use the blocking [`ReportSink::send`]. How often and how
//! long producers waited is counted in [`Stats`].

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{fence, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, select, Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use super::error::TaskError;
use super::model::AgentReport;
use super::stats::Stats;

/// The producer side of the response channel, handed to the agent link.
#[derive(Clone)]
pub struct ReportSink {
    tx: Sender<AgentReport>,
    room: Arc<Room>,
    stats: Arc<Stats>,
}

/// The consumer side, owned by the response thread.
pub(super) struct ReportSource {
    rx: Receiver<AgentReport>,
    room: Arc<Room>,
}

/// A response channel of `capacity` whose waits are counted in `stats`.
pub(super) fn channel(capacity: usize, stats: Arc<Stats>) -> (ReportSink, ReportSource) {
    let (tx, rx) = bounded(capacity.max(1));
    let room = Arc::new(Room::default());
    (
        ReportSink {
            tx,
            room: room.clone(),
            stats,
        },
        ReportSource { rx, room },
    )
}

impl ReportSink {
    /// Queues a response, blocking the calling thread while the channel is full; fails only
    /// when stopping. For threads only: a future must use [`ReportSink::send_async`].
    pub fn send(&self, report: AgentReport) -> Result<(), TaskError> {
        match self.tx.try_send(report) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Err(TaskError::ShuttingDown),
            Err(TrySendError::Full(report)) => {
                let started = Instant::now();
                let sent = self.tx.send(report);
                self.count_wait(started);
                sent.map_err(|_| TaskError::ShuttingDown)
            }
        }
    }

    /// Queues a response; while the channel is full the returned future waits for room
    /// without blocking its thread. Fails only when stopping.
    pub fn send_async(&self, report: AgentReport) -> SendReport<'_> {
        SendReport {
            sink: self,
            report: Some(report),
            place: None,
            since: None,
        }
    }

    /// Responses waiting in the channel now.
    pub fn depth(&self) -> usize {
        self.tx.len()
    }

    /// The channel's capacity.
    pub fn capacity(&self) -> usize {
        self.tx.capacity().unwrap_or(usize::MAX)
    }

    /// Streams waiting for room in the channel now.
    pub fn waiting(&self) -> usize {
        self.room.len.load(Ordering::Relaxed)
    }

    fn count_wait(&self, started: Instant) {
        let waited = started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.stats
            .backpressure_waits
            .fetch_add(1, Ordering::Relaxed);
        self.stats
            .backpressure_wait_ns
            .fetch_add(waited, Ordering::Relaxed);
    }
}

/// Futures waiting for room in the response channel, first come first served.
#[derive(Default)]
struct Room {
    queue: Mutex<VecDeque<Arc<Place>>>,
    /// `queue.len()`, readable without the lock (see [`Room::freed`]).
    len: AtomicUsize,
}

/// One waiting future's place in the queue.
struct Place {
    state: AtomicU8,
    waker: Mutex<Waker>,
}

/// The future is in the queue.
const WAITING: u8 = 0;
/// The response thread took it out of the queue and woke it: a slot was freed for it.
const CALLED: u8 = 1;
/// The future left (sent, or dropped) while still in the queue; the thread skips it.
const LEFT: u8 = 2;

impl Room {
    /// A slot was freed: wakes the longest-waiting future, if any.
    fn freed(&self) {
        // Pairs with the fence in `SendReport::poll`: either that future's retry sees the
        // slot this thread just freed, or this load sees the future counted in `len`.
        fence(Ordering::SeqCst);
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let called = {
            let mut queue = self.queue.lock();
            let mut called = None;
            while let Some(place) = queue.pop_front() {
                if place
                    .state
                    .compare_exchange(WAITING, CALLED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    called = Some(place);
                    break;
                }
            }
            self.len.store(queue.len(), Ordering::Relaxed);
            called
        };
        if let Some(place) = called {
            place.waker.lock().wake_by_ref();
        }
    }

    /// Wakes every waiting future: when the channel ran empty, and when it closes.
    fn call_everyone(&self) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let places: Vec<Arc<Place>> = {
            let mut queue = self.queue.lock();
            self.len.store(0, Ordering::Relaxed);
            queue.drain(..).collect()
        };
        for place in places {
            if place
                .state
                .compare_exchange(WAITING, CALLED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                place.waker.lock().wake_by_ref();
            }
        }
    }
}

/// A response on its way into the channel; see [`ReportSink::send_async`].
pub struct SendReport<'a> {
    sink: &'a ReportSink,
    report: Option<AgentReport>,
    place: Option<Arc<Place>>,
    since: Option<Instant>,
}

impl SendReport<'_> {
    /// Tries the channel once; gives the report back when it is full.
    fn try_send(&mut self) -> Poll<Result<(), TaskError>> {
        let Some(report) = self.report.take() else {
            return Poll::Ready(Ok(()));
        };
        match self.sink.tx.try_send(report) {
            Ok(()) => {
                self.leave_queue();
                if let Some(since) = self.since.take() {
                    self.sink.count_wait(since);
                }
                Poll::Ready(Ok(()))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.leave_queue();
                Poll::Ready(Err(TaskError::ShuttingDown))
            }
            Err(TrySendError::Full(report)) => {
                self.report = Some(report);
                Poll::Pending
            }
        }
    }

    /// Marks its place as left, so the response thread skips it.
    fn leave_queue(&mut self) {
        if let Some(place) = self.place.take() {
            let _ = place.state.compare_exchange(
                WAITING,
                LEFT,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }
}

impl Future for SendReport<'_> {
    type Output = Result<(), TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(place) = &this.place {
            if place.state.load(Ordering::Acquire) == WAITING {
                // Still queued (a spurious poll): keep the place, with the current waker.
                let mut waker = place.waker.lock();
                if !waker.will_wake(cx.waker()) {
                    *waker = cx.waker().clone();
                }
                return Poll::Pending;
            }
        }
        if let Poll::Ready(done) = this.try_send() {
            return Poll::Ready(done);
        }
        this.since.get_or_insert_with(Instant::now);
        // Full: queue up. A future that was called but lost its slot to another sender
        // keeps its turn at the front.
        let called_before = this.place.is_some();
        let place = Arc::new(Place {
            state: AtomicU8::new(WAITING),
            waker: Mutex::new(cx.waker().clone()),
        });
        {
            let room = &this.sink.room;
            let mut queue = room.queue.lock();
            if called_before {
                queue.push_front(place.clone());
            } else {
                queue.push_back(place.clone());
            }
            room.len.store(queue.len(), Ordering::Relaxed);
        }
        this.place = Some(place);
        // Pairs with the fence in `Room::freed`: a slot freed before this future was counted
        // is seen by this retry.
        fence(Ordering::SeqCst);
        this.try_send()
    }
}

impl Drop for SendReport<'_> {
    fn drop(&mut self) {
        // A future dropped after being called (its stream ended) passes the freed slot on.
        if let Some(place) = self.place.take() {
            if place
                .state
                .compare_exchange(WAITING, LEFT, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
                && self.report.is_some()
            {
                self.sink.room.freed();
            }
        }
    }
}

/// Responses applied after a wake-up before the stop signal is looked at again.
const DRAIN_BATCH: usize = 256;

/// Starts the response thread: applies each report with `apply` until `stop` fires, then
/// drains what is queued and returns.
pub(super) fn spawn(
    source: ReportSource,
    stop: Receiver<()>,
    mut apply: impl FnMut(AgentReport) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let ReportSource { rx, room } = source;
    std::thread::Builder::new()
        .name("nl-responses".into())
        .spawn(move || {
            loop {
                select! {
                    recv(rx) -> report => match report {
                        Ok(report) => {
                            room.freed();
                            apply(report);
                            // Apply what queued meanwhile before sleeping again: under load the
                            // thread stays awake and producers need not wake it per response.
                            for report in rx.try_iter().take(DRAIN_BATCH) {
                                room.freed();
                                apply(report);
                            }
                            if rx.is_empty() {
                                // Whatever a woken stream did with its slot, nobody waits
                                // on an empty channel.
                                room.call_everyone();
                            }
                        }
                        Err(_) => break,
                    },
                    recv(stop) -> _ => {
                        while let Ok(report) = rx.try_recv() {
                            apply(report);
                        }
                        break;
                    }
                }
            }
            // Closed: waiting streams wake up to find the channel gone.
            drop(rx);
            room.call_everyone();
        })
}
