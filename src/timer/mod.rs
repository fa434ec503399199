//! Timer thread: one named OS thread per service that owns a [`TimerWheel`]
//! and calls a callback for every timer that expires.
//!
//! Any thread may hold a [`TimerHandle`] (cheap to clone, `Send + Sync`) and
//! schedule or cancel timers through it; handles only queue commands and
//! return at once. The timer thread is the only thread that touches the wheel
//! and the only one that runs the `on_fire` callback. It waits for a wake-up
//! with a timeout up to the next tick that can fire something (without one
//! while no timer is pending), and applies the queued commands whenever it
//! wakes. A handle wakes it only when it must: for a deadline earlier than
//! the one it sleeps until, for shutdown, or when many commands have queued.
//! A cancel, or a later deadline (a task's timeout, typically), waits for the
//! next wake-up: it takes effect before anything fires, so waking the thread
//! for it would only cost a context switch per command. This exists so that the rest of
//! nodelink (a synchronous, thread-based server with no async runtime) gets
//! cheap timeouts without one sleeping thread per timeout.
//!
//! Lifecycle: the thread stops when any handle calls
//! [`TimerHandle::shutdown`], when its [`TimerThread`] guard is joined or
//! dropped, or when every handle has been dropped. Pending timers are then
//! dropped without firing.

pub mod wheel;

pub use wheel::{TimerKey, TimerWheel, DEFAULT_SLOTS, DEFAULT_TICK};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use std::any::Any;
use std::fmt;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Queued commands that wake the thread even when none is urgent, so the
/// queue stays short however far away the deadlines are.
const WAKE_AT_QUEUED: usize = 1024;

/// Delays beyond this (about a century) are clamped so `Instant` arithmetic cannot overflow.
const MAX_DELAY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A request from a handle to the timer thread.
enum Command<T> {
    Schedule {
        key: TimerKey,
        deadline: Instant,
        payload: T,
    },
    Cancel {
        key: TimerKey,
    },
    Shutdown,
}

/// Cloneable, `Send + Sync` handle that schedules and cancels timers on one timer thread.
///
/// A cancel is fire-and-forget and can race with the timer firing: the
/// callback may still run for a key after `cancel` returned (it was already
/// due, or is running right now). Callbacks must therefore treat a late fire
/// as a no-op, e.g. by checking a generation number or state in the payload's
/// target before acting.
pub struct TimerHandle<T> {
    queue: Arc<Mutex<Queue<T>>>,
    /// Wakes the timer thread; dropping every handle (every sender) stops it.
    wake: Sender<()>,
    next_key: Arc<AtomicU64>,
}

/// Commands on their way to the timer thread, and whether it must be woken for them.
struct Queue<T> {
    commands: Vec<Command<T>>,
    thread: ThreadState,
}

/// What the timer thread is doing, as far as a handle needs to know.
#[derive(Clone, Copy)]
enum ThreadState {
    /// Awake (or about to wake): it looks at the queue before sleeping again.
    Awake,
    /// Sleeping until this instant (forever if `None`) unless woken.
    Asleep(Option<Instant>),
    /// Stopped: commands are dropped.
    Stopped,
}

impl<T> Clone for TimerHandle<T> {
    fn clone(&self) -> Self {
        TimerHandle {
            queue: Arc::clone(&self.queue),
            wake: self.wake.clone(),
            next_key: Arc::clone(&self.next_key),
        }
    }
}

impl<T> fmt::Debug for TimerHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerHandle")
            .field("queued_commands", &self.queue.lock().commands.len())
            .finish()
    }
}

impl<T: Send + 'static> TimerHandle<T> {
    /// Starts a timer thread called `name` with tick `tick` that runs `on_fire(payload)` for each expiry.
    ///
    /// `on_fire` runs on the timer thread, one call at a time; a panic in it
    /// is caught and logged and the thread carries on. It must not block for
    /// long: every other timer of this service waits meanwhile. Keep the
    /// returned [`TimerThread`]: dropping it stops the thread.
    ///
    /// # Errors
    /// `InvalidInput` if `tick` is zero; the OS error if the thread cannot be spawned.
    pub fn spawn<F>(
        tick: Duration,
        name: &str,
        on_fire: F,
    ) -> io::Result<(TimerHandle<T>, TimerThread)>
    where
        F: FnMut(T) + Send + 'static,
    {
        if tick.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "timer tick must be non-zero",
            ));
        }
        // Unbounded on purpose. Callers schedule and cancel while holding
        // their own locks (e.g. a connection table), and `on_fire` takes those
        // same locks. With a bounded queue, a caller blocked on a full queue
        // while holding a lock that `on_fire` is waiting for would deadlock
        // the timer thread and the caller. Memory stays bounded anyway: the
        // thread is woken once `WAKE_AT_QUEUED` commands wait, and each timer
        // stands for some caller-side object (a connection, a task, a request)
        // that lives in the callers' own bounded structures.
        let queue = Arc::new(Mutex::new(Queue {
            commands: Vec::new(),
            thread: ThreadState::Awake,
        }));
        // One pending wake-up is enough: the thread takes every queued command when it wakes.
        let (wake, wake_rx) = crossbeam_channel::bounded::<()>(1);
        // Never carries a message: dropping its sender (in `TimerThread`) is the stop signal.
        let (stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let wheel = TimerWheel::new(tick, DEFAULT_SLOTS, Instant::now());
        let thread_name = name.to_owned();
        let thread_queue = Arc::clone(&queue);
        let join = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                run(
                    wheel,
                    &thread_queue,
                    wake_rx,
                    stop_rx,
                    on_fire,
                    &thread_name,
                )
            })?;
        let handle = TimerHandle {
            queue,
            wake,
            next_key: Arc::new(AtomicU64::new(1)),
        };
        let thread = TimerThread {
            stop: Some(stop),
            join: Some(join),
        };
        Ok((handle, thread))
    }
}

impl<T> TimerHandle<T> {
    /// Schedules `payload` to fire at `deadline` (a past deadline fires at once); returns its key for cancel.
    ///
    /// Keys are unique per service and start at 1. If the thread has stopped,
    /// the payload is dropped and the key is still returned.
    pub fn schedule(&self, deadline: Instant, payload: T) -> TimerKey {
        let key = TimerKey(self.next_key.fetch_add(1, Ordering::Relaxed));
        self.send(Command::Schedule {
            key,
            deadline,
            payload,
        });
        key
    }

    /// Schedules `payload` to fire `delay` from now; returns its key for cancel.
    pub fn schedule_after(&self, delay: Duration, payload: T) -> TimerKey {
        self.schedule(deadline_after(delay), payload)
    }

    /// Moves (or re-creates, if it already fired) the timer `key` to `deadline` with a new payload.
    ///
    /// Meant for keys returned by [`schedule`](Self::schedule), e.g. to push
    /// an idle timeout back on activity without allocating a new key.
    pub fn reschedule(&self, key: TimerKey, deadline: Instant, payload: T) {
        self.send(Command::Schedule {
            key,
            deadline,
            payload,
        });
    }

    /// Asks the thread to drop timer `key`; fire-and-forget, so a fire already under way may still happen.
    pub fn cancel(&self, key: TimerKey) {
        self.send(Command::Cancel { key });
    }

    /// Stops the timer thread after the commands queued before this one; pending timers are dropped.
    pub fn shutdown(&self) {
        self.send(Command::Shutdown);
    }

    fn send(&self, command: Command<T>) {
        let wake = {
            let mut q = self.queue.lock();
            let asleep_until = match q.thread {
                ThreadState::Stopped => {
                    log::debug!("timer thread has stopped; timer command dropped");
                    return;
                }
                ThreadState::Awake => None,
                ThreadState::Asleep(until) => Some(until),
            };
            let urgent = match &command {
                Command::Schedule { deadline, .. } => {
                    asleep_until.is_some_and(|until| until.is_none_or(|t| *deadline < t))
                }
                Command::Cancel { .. } => false,
                Command::Shutdown => true,
            };
            q.commands.push(command);
            let wake = asleep_until.is_some() && (urgent || q.commands.len() >= WAKE_AT_QUEUED);
            if wake {
                // Further commands need not wake it again: it is on its way.
                q.thread = ThreadState::Awake;
            }
            wake
        };
        if wake {
            // Full means a wake-up is already pending; disconnected means it stopped.
            let _ = self.wake.try_send(());
        }
    }
}

/// Guard for a running timer thread: `join` (or drop) stops the thread and waits for it.
///
/// Do not join or drop it while holding a lock that `on_fire` takes: the
/// join waits for a callback in progress to finish.
#[must_use = "dropping the TimerThread stops the timer thread"]
pub struct TimerThread {
    stop: Option<Sender<()>>,
    join: Option<JoinHandle<()>>,
}

impl fmt::Debug for TimerThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.join.as_ref().and_then(|j| j.thread().name());
        f.debug_struct("TimerThread")
            .field("name", &name)
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl TimerThread {
    /// Stops the thread (dropping pending timers) and waits for it to exit.
    ///
    /// # Errors
    /// The thread's panic payload if it panicked outside a callback (callback panics are caught).
    pub fn join(mut self) -> thread::Result<()> {
        self.stop_and_join()
    }

    /// Whether the thread has already exited (all handles dropped or `shutdown` called).
    pub fn is_finished(&self) -> bool {
        self.join.as_ref().is_none_or(JoinHandle::is_finished)
    }

    fn stop_and_join(&mut self) -> thread::Result<()> {
        // Disconnects the stop channel, which the thread is always selecting on.
        self.stop.take();
        match self.join.take() {
            // Joining ourselves (dropped from inside `on_fire`) would deadlock; the thread exits right after.
            Some(join) if join.thread().id() != thread::current().id() => join.join(),
            _ => Ok(()),
        }
    }
}

impl Drop for TimerThread {
    fn drop(&mut self) {
        if self.stop_and_join().is_err() {
            log::error!("timer thread panicked");
        }
    }
}

/// A timer thread together with one handle, for owners that want to store a single value.
#[derive(Debug)]
pub struct TimerService<T> {
    handle: TimerHandle<T>,
    thread: TimerThread,
}

impl<T: Send + 'static> TimerService<T> {
    /// Starts the thread exactly like [`TimerHandle::spawn`].
    ///
    /// # Errors
    /// As [`TimerHandle::spawn`].
    pub fn spawn<F>(tick: Duration, name: &str, on_fire: F) -> io::Result<Self>
    where
        F: FnMut(T) + Send + 'static,
    {
        let (handle, thread) = TimerHandle::spawn(tick, name, on_fire)?;
        Ok(TimerService { handle, thread })
    }
}

impl<T> TimerService<T> {
    /// The service's handle; clone it to give other threads access.
    pub fn handle(&self) -> &TimerHandle<T> {
        &self.handle
    }

    /// Stops the thread and waits for it; same as dropping the service, but reports a thread panic.
    ///
    /// # Errors
    /// As [`TimerThread::join`].
    pub fn shutdown(self) -> thread::Result<()> {
        self.thread.join()
    }
}

/// `now + delay`, clamped so it cannot overflow.
fn deadline_after(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay.min(MAX_DELAY))
        .unwrap_or(now + Duration::from_secs(365 * 24 * 3600))
}

/// Why the timer thread woke up.
enum Wake {
    /// A handle woke it, or its deadline passed: look at the queue and the wheel.
    Look,
    /// Stop: the guard was dropped, or every handle is gone.
    Exit,
}

/// The timer thread's main loop.
fn run<T, F: FnMut(T)>(
    mut wheel: TimerWheel<T>,
    queue: &Mutex<Queue<T>>,
    wake: Receiver<()>,
    stop: Receiver<()>,
    mut on_fire: F,
    name: &str,
) {
    log::debug!("timer thread {name} started");
    let mut fired = Vec::new();
    let mut commands = Vec::new();
    'outer: loop {
        // Commands first, so a cancel queued before a deadline passed prevents the fire.
        std::mem::swap(&mut commands, &mut queue.lock().commands);
        for command in commands.drain(..) {
            if !apply(&mut wheel, command) {
                break 'outer;
            }
        }
        wheel.advance(Instant::now(), &mut fired);
        for (key, payload) in fired.drain(..) {
            fire(&mut on_fire, key, payload, name);
        }
        let until = wheel.next_expiry();
        {
            let mut q = queue.lock();
            if !q.commands.is_empty() {
                continue; // queued while firing: no sleep until applied
            }
            q.thread = ThreadState::Asleep(until);
        }
        match wait(&wake, &stop, until) {
            Wake::Look => {}
            Wake::Exit => break,
        }
    }
    let mut q = queue.lock();
    q.thread = ThreadState::Stopped;
    let dropped = q.commands.len();
    q.commands.clear();
    drop(q);
    log::debug!(
        "timer thread {name} stopped; {} pending timers and {dropped} queued commands dropped",
        wheel.len()
    );
}

/// Waits for a wake-up, the stop signal, or `until` (forever if `None`).
fn wait(wake: &Receiver<()>, stop: &Receiver<()>, until: Option<Instant>) -> Wake {
    match until {
        None => crossbeam_channel::select! {
            recv(wake) -> msg => msg.map_or(Wake::Exit, |()| Wake::Look),
            recv(stop) -> _ => Wake::Exit,
        },
        Some(at) => crossbeam_channel::select! {
            recv(wake) -> msg => msg.map_or(Wake::Exit, |()| Wake::Look),
            recv(stop) -> _ => Wake::Exit,
            default(at.saturating_duration_since(Instant::now())) => Wake::Look,
        },
    }
}

/// Applies one command to the wheel; `false` means shut down.
fn apply<T>(wheel: &mut TimerWheel<T>, command: Command<T>) -> bool {
    match command {
        Command::Schedule {
            key,
            deadline,
            payload,
        } => {
            wheel.schedule(key, deadline, payload);
        }
        Command::Cancel { key } => {
            wheel.cancel(key);
        }
        Command::Shutdown => return false,
    }
    true
}

/// Runs one callback, logging (not propagating) a panic.
fn fire<T, F: FnMut(T)>(on_fire: &mut F, key: TimerKey, payload: T, name: &str) {
    // AssertUnwindSafe: after a panic the callback's captured state may be
    // half-updated. That is the callback's own business; the alternative,
    // letting the panic kill the thread, would silently stop every timeout
    // in the process.
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| on_fire(payload))) {
        log::error!(
            "timer thread {name}: callback for {key:?} panicked: {}",
            panic_message(panic.as_ref())
        );
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{bounded, unbounded, RecvTimeoutError};

    /// Generous bound for "eventually" on a loaded 2-core machine; only hit on failure.
    const PATIENCE: Duration = Duration::from_secs(30);
    const GATE_ENTERED: u32 = u32::MAX;

    enum Job {
        /// Blocks the timer thread until released (after announcing it with `GATE_ENTERED`).
        Gate(Receiver<()>),
        Record(u32),
        Panic,
    }

    fn spawn_recorder(name: &str) -> (TimerHandle<Job>, TimerThread, Receiver<u32>) {
        let (tx, rx) = unbounded();
        let (handle, thread) =
            TimerHandle::spawn(Duration::from_millis(1), name, move |job| match job {
                Job::Gate(release) => {
                    tx.send(GATE_ENTERED).expect("test receiver alive");
                    let _ = release.recv();
                }
                Job::Record(n) => tx.send(n).expect("test receiver alive"),
                Job::Panic => panic!("deliberate test panic"),
            })
            .expect("spawn timer thread");
        (handle, thread, rx)
    }

    /// Parks the timer thread inside a callback, so commands sent meanwhile are applied as one batch.
    fn close_gate(handle: &TimerHandle<Job>, fired: &Receiver<u32>) -> Sender<()> {
        let (release, gate) = bounded(0);
        handle.schedule(Instant::now(), Job::Gate(gate));
        assert_eq!(fired.recv_timeout(PATIENCE), Ok(GATE_ENTERED));
        release
    }

    #[test]
    fn handle_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone>() {}
        // Payload `Send` but not `Sync` is enough.
        check::<TimerHandle<Box<dyn FnOnce() + Send>>>();
    }

    #[test]
    fn fires_in_deadline_order() {
        let (handle, thread, fired) = spawn_recorder("timer-test-order");
        let release = close_gate(&handle, &fired);
        let base = Instant::now() + Duration::from_millis(20);
        for (n, offset_ms) in [(5u32, 50u64), (1, 10), (3, 30), (2, 20), (4, 40)] {
            handle.schedule(base + Duration::from_millis(offset_ms), Job::Record(n));
        }
        // Already in the past (before the wheel started, if the clock allows).
        let past = base.checked_sub(Duration::from_secs(1)).unwrap_or(base);
        handle.schedule(past.min(Instant::now()), Job::Record(0));
        drop(release);
        let order: Vec<u32> = (0..6)
            .map(|_| fired.recv_timeout(PATIENCE).expect("timer fired"))
            .collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4, 5]);
        thread.join().expect("timer thread exits cleanly");
    }

    #[test]
    fn lazy_commands_take_effect_and_the_queue_stays_short() {
        let (handle, thread, fired) = spawn_recorder("timer-test-lazy");
        // The thread sleeps until this anchor, ten minutes away.
        let anchor = handle.schedule(Instant::now() + Duration::from_secs(600), Job::Record(1));
        // Later deadlines and cancels do not wake it, but a full queue does: only that can
        // drain the queue here.
        let far = Instant::now() + Duration::from_secs(3600);
        let keys: Vec<_> = (0..5000)
            .map(|i| handle.schedule(far, Job::Record(100 + i)))
            .collect();
        for key in keys {
            handle.cancel(key);
        }
        let deadline = Instant::now() + PATIENCE;
        while handle.queue.lock().commands.len() >= WAKE_AT_QUEUED {
            assert!(Instant::now() < deadline, "the queue never drained");
            thread::sleep(Duration::from_millis(1));
        }
        // An earlier deadline wakes it; a cancel that woke nobody still stops a timer due.
        let soon = Instant::now() + Duration::from_millis(50);
        handle.schedule(soon, Job::Record(2));
        let doomed = handle.schedule(soon, Job::Record(3));
        handle.cancel(doomed);
        assert_eq!(fired.recv_timeout(PATIENCE), Ok(2));
        assert!(Instant::now() >= soon, "fired at its deadline");
        handle.cancel(anchor);
        handle.shutdown();
        thread.join().expect("timer thread exits cleanly");
        assert_eq!(fired.try_iter().collect::<Vec<_>>(), Vec::<u32>::new());
    }

    #[test]
    fn cancel_before_fire_prevents_firing() {
        let (handle, thread, fired) = spawn_recorder("timer-test-cancel");
        let release = close_gate(&handle, &fired);
        let now = Instant::now();
        let doomed = handle.schedule(now, Job::Record(1));
        handle.schedule(now + Duration::from_millis(5), Job::Record(2));
        handle.cancel(doomed);
        drop(release);
        assert_eq!(fired.recv_timeout(PATIENCE), Ok(2));
        handle.shutdown();
        thread.join().expect("timer thread exits cleanly");
        // The callback (and its sender) is gone: nothing else was ever sent.
        assert_eq!(fired.try_iter().collect::<Vec<_>>(), Vec::<u32>::new());
    }

    #[test]
    fn reschedule_replaces_payload_and_deadline() {
        let (handle, thread, fired) = spawn_recorder("timer-test-resched");
        let key = handle.schedule_after(Duration::from_secs(3600), Job::Record(1));
        handle.reschedule(key, Instant::now(), Job::Record(2));
        assert_eq!(fired.recv_timeout(PATIENCE), Ok(2));
        thread.join().expect("timer thread exits cleanly");
        assert_eq!(fired.try_iter().collect::<Vec<_>>(), Vec::<u32>::new());
    }

    #[test]
    fn panic_in_callback_is_survived() {
        let (handle, thread, fired) = spawn_recorder("timer-test-panic");
        handle.schedule_after(Duration::ZERO, Job::Panic);
        handle.schedule_after(Duration::from_millis(2), Job::Record(7));
        assert_eq!(fired.recv_timeout(PATIENCE), Ok(7));
        handle.schedule_after(Duration::ZERO, Job::Panic);
        handle.schedule_after(Duration::ZERO, Job::Record(8));
        assert_eq!(fired.recv_timeout(PATIENCE), Ok(8));
        thread.join().expect("timer thread exits cleanly");
    }

    #[test]
    fn shutdown_joins_and_drops_pending() {
        let (handle, thread, fired) = spawn_recorder("timer-test-shutdown");
        handle.schedule_after(Duration::from_secs(3600), Job::Record(1));
        handle.shutdown();
        thread.join().expect("timer thread exits cleanly");
        // Callback dropped with the thread; the pending timer never fired.
        assert_eq!(fired.recv(), Err(crossbeam_channel::RecvError));
        // Using a handle after shutdown is harmless.
        handle.schedule_after(Duration::ZERO, Job::Record(2));
        handle.cancel(TimerKey(1));
    }

    #[test]
    fn dropping_all_handles_ends_thread() {
        let (handle, thread, fired) = spawn_recorder("timer-test-drop");
        let clone = handle.clone();
        handle.schedule_after(Duration::from_secs(3600), Job::Record(1));
        drop(handle);
        drop(clone);
        // The thread drops the callback (and its sender) when it exits.
        assert_eq!(
            fired.recv_timeout(PATIENCE),
            Err(RecvTimeoutError::Disconnected)
        );
        thread.join().expect("timer thread exits cleanly");
    }

    #[test]
    fn dropping_guard_stops_thread_while_handles_live() {
        let (handle, thread, fired) = spawn_recorder("timer-test-guard");
        handle.schedule_after(Duration::from_millis(1), Job::Record(3));
        assert_eq!(fired.recv_timeout(PATIENCE), Ok(3));
        drop(thread);
        assert_eq!(fired.recv(), Err(crossbeam_channel::RecvError));
        handle.schedule_after(Duration::ZERO, Job::Record(4));
    }

    #[test]
    fn many_services_start_and_stop() {
        for i in 0..32u32 {
            let (fired_tx, fired) = unbounded();
            let service = TimerService::spawn(DEFAULT_TICK, &format!("timer-test-{i}"), {
                move |n: u32| fired_tx.send(n).expect("test receiver alive")
            })
            .expect("spawn timer thread");
            service.handle().schedule_after(Duration::ZERO, i);
            assert_eq!(fired.recv_timeout(PATIENCE), Ok(i));
            service.shutdown().expect("timer thread exits cleanly");
        }
    }

    #[test]
    fn zero_tick_is_rejected() {
        let err = TimerHandle::spawn(Duration::ZERO, "timer-test-zero", |_: u32| {})
            .expect_err("zero tick must be rejected");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn real_time_timers_fire_after_deadline_and_not_much_later() {
        let (fired_tx, fired) = unbounded();
        let (handle, thread) = TimerHandle::spawn(
            DEFAULT_TICK,
            "timer-test-realtime",
            move |(n, deadline): (usize, Instant)| {
                fired_tx
                    .send((n, deadline, Instant::now()))
                    .expect("test receiver alive");
            },
        )
        .expect("spawn timer thread");
        let base = Instant::now();
        for n in 0..200usize {
            let deadline = base + Duration::from_millis(20 + (n as u64 * 37) % 81);
            handle.schedule(deadline, (n, deadline));
        }
        let mut seen = [false; 200];
        for _ in 0..200 {
            let (n, deadline, at) = fired.recv_timeout(PATIENCE).expect("timer fired");
            assert!(!seen[n], "timer {n} fired twice");
            seen[n] = true;
            assert!(at >= deadline, "timer {n} fired before its deadline");
            // Loose: the machine may be busy; this only catches gross bugs.
            assert!(
                at - deadline < Duration::from_secs(1),
                "timer {n} fired {:?} late",
                at - deadline
            );
        }
        thread.join().expect("timer thread exits cleanly");
    }
}
