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
            let _ =
                place
                    .state
                    .compare_exchange(WAITING, LEFT, Ordering::AcqRel, Ordering::Acquire);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::ReportStatus;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;
    use std::time::Duration;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn report(n: usize) -> AgentReport {
        AgentReport::new(Arc::from("a1"), n.to_string(), ReportStatus::InProgress)
    }

    fn poll(f: &mut SendReport<'_>, waker: &Arc<Count>) -> Poll<Result<(), TaskError>> {
        let waker = Waker::from(waker.clone());
        Pin::new(f).poll(&mut Context::from_waker(&waker))
    }

    fn wait_woken(waker: &Arc<Count>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while waker.0.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "never woken");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The response thread, held before applying each report until `gate` yields.
    fn held_thread(source: ReportSource) -> (crossbeam_channel::Sender<()>, Receiver<String>) {
        let (gate_tx, gate) = bounded::<()>(0);
        let (applied_tx, applied) = crossbeam_channel::unbounded();
        let (_stop_tx, stop) = bounded::<()>(1);
        spawn(source, stop, move |r| {
            let _ = gate.recv();
            let _ = applied_tx.send(r.task_id);
        })
        .expect("thread starts");
        std::mem::forget(_stop_tx);
        (gate_tx, applied)
    }

    #[test]
    fn a_full_channel_makes_the_future_wait_without_blocking_its_thread_in_turn() {
        let stats = Arc::new(Stats::default());
        let (sink, source) = channel(1, stats.clone());
        let (gate, applied) = held_thread(source);
        // The thread takes report 0 and is held applying it; report 1 fills the channel.
        sink.send(report(0)).expect("queued");
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.depth() != 0 {
            assert!(Instant::now() < deadline, "the thread took report 0");
            std::thread::sleep(Duration::from_millis(1));
        }
        sink.send(report(1)).expect("queued");

        // Two streams find it full: their futures return at once, in line.
        let (w2, w3) = (Arc::new(Count::default()), Arc::new(Count::default()));
        let mut f2 = sink.send_async(report(2));
        let mut f3 = sink.send_async(report(3));
        assert!(poll(&mut f2, &w2).is_pending(), "waits, does not block");
        assert!(poll(&mut f3, &w3).is_pending());
        assert_eq!(sink.waiting(), 2);

        // One slot freed: the first in line is woken, and only it.
        gate.send(()).expect("applies 0");
        wait_woken(&w2);
        assert_eq!(w3.0.load(Ordering::SeqCst), 0, "the second waits its turn");
        assert!(poll(&mut f2, &w2).is_ready());
        gate.send(()).expect("applies 1");
        wait_woken(&w3);
        assert!(poll(&mut f3, &w3).is_ready());
        for _ in 0..2 {
            gate.send(()).expect("applies the rest");
        }
        let order: Vec<String> = (0..4)
            .map(|_| {
                applied
                    .recv_timeout(Duration::from_secs(10))
                    .expect("applied")
            })
            .collect();
        assert_eq!(order, ["0", "1", "2", "3"], "nothing dropped, in order");
        assert_eq!(stats.backpressure_waits.load(Ordering::Relaxed), 2);
        assert!(stats.backpressure_wait_ns.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn a_woken_future_that_is_dropped_passes_its_turn_on() {
        let (sink, source) = channel(1, Arc::new(Stats::default()));
        let (gate, applied) = held_thread(source);
        sink.send(report(0)).expect("queued");
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.depth() != 0 {
            assert!(Instant::now() < deadline, "the thread took report 0");
            std::thread::sleep(Duration::from_millis(1));
        }
        sink.send(report(1)).expect("queued");
        let (w2, w3) = (Arc::new(Count::default()), Arc::new(Count::default()));
        let mut f2 = sink.send_async(report(2));
        let mut f3 = sink.send_async(report(3));
        assert!(poll(&mut f2, &w2).is_pending());
        assert!(poll(&mut f3, &w3).is_pending());
        gate.send(()).expect("applies 0");
        wait_woken(&w2);
        drop(f2); // its stream ended before it used the slot
        wait_woken(&w3);
        assert!(poll(&mut f3, &w3).is_ready());
        for _ in 0..2 {
            gate.send(()).expect("applies the rest");
        }
        let order: Vec<String> = (0..3)
            .map(|_| {
                applied
                    .recv_timeout(Duration::from_secs(10))
                    .expect("applied")
            })
            .collect();
        assert_eq!(order, ["0", "1", "3"]);
    }
}
