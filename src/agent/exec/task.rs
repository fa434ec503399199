//! The public face of a running task: [`spawn`] starts the process and its
//! executor thread, and [`RunningTask`] is the handle used to cancel it or ask
//! whether it is done. Output and the final status are delivered as
//! [`ExecEvent`]s to a caller-supplied callback (rather than a fixed channel
//! type), so the caller can forward them to a crossbeam channel, a gRPC stream
//! or a test vector without an extra hop. The callback runs on the task's
//! executor thread, events for one task arrive in order, and
//! [`ExecEvent::Exited`] is always the last one.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::coalesce::Chunk;
use super::command::{build_command, spawn_error};
use super::error::SpawnError;
use super::exit::ExitInfo;
use super::pump::Pump;
use super::spec::{ExecConfig, ExecSpec};

/// Something that happened to a running task, delivered in order to the spawn callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// A batch of output; never empty on both streams.
    Output(Chunk),
    /// The task's main process ended and all output was delivered; always the last event.
    Exited(ExitInfo),
}

/// State shared between a [`RunningTask`] handle and its executor thread.
#[derive(Debug)]
pub(crate) struct Shared {
    cancel: AtomicBool,
    finished: AtomicBool,
    /// Written by `cancel()` to wake the executor thread's `poll` at once.
    wake_tx: UnixStream,
    /// Polled and drained by the executor thread.
    pub(crate) wake_rx: UnixStream,
}

impl Shared {
    fn new() -> std::io::Result<Self> {
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        Ok(Shared {
            cancel: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            wake_tx,
            wake_rx,
        })
    }

    fn request_cancel(&self) {
        if !self.cancel.swap(true, Ordering::SeqCst) {
            // A full socket buffer already means "wake up"; nothing else can fail
            // because both ends live as long as `self`.
            let _ = (&self.wake_tx).write(&[1]);
        }
    }

    pub(crate) fn cancel_requested(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    pub(crate) fn mark_finished(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }
}

/// Handle to a started task, used to cancel it and to check whether it is done.
///
/// Dropping an unfinished handle cancels the task (SIGTERM, then SIGKILL after
/// `kill_grace`) without blocking; the executor thread still delivers the final
/// events, reaps the process and ends on its own. Use [`RunningTask::join`] to
/// block until that has happened.
#[derive(Debug)]
pub struct RunningTask {
    pid: u32,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl RunningTask {
    /// Pid of the task's main process, which is also its process-group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Stops the task: SIGTERM to its process group now, SIGKILL after `kill_grace`; safe to call repeatedly and from any thread.
    pub fn cancel(&self) {
        if !self.is_finished() {
            log::debug!("cancel requested for task pid {}", self.pid);
            self.shared.request_cancel();
        }
    }

    /// Whether the task has ended and its `Exited` event has been delivered.
    pub fn is_finished(&self) -> bool {
        self.shared.finished.load(Ordering::SeqCst)
    }

    /// Blocks until the executor thread has delivered `Exited` and ended (does not cancel).
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("executor thread for pid {} panicked", self.pid);
            }
        }
    }
}

impl Drop for RunningTask {
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if thread.is_finished() {
            if thread.join().is_err() {
                log::error!("executor thread for pid {} panicked", self.pid);
            }
        } else {
            // Detach: the thread kills the group, reaps the child and exits by itself.
            self.cancel();
        }
    }
}

/// Starts `spec` as a process and streams its output to `events` from a dedicated thread; fails with an actionable [`SpawnError`] if it cannot start.
pub fn spawn<F>(spec: &ExecSpec, cfg: &ExecConfig, events: F) -> Result<RunningTask, SpawnError>
where
    F: FnMut(ExecEvent) + Send + 'static,
{
    let mut command = build_command(spec, cfg)?;
    let shared = Arc::new(Shared::new().map_err(|source| SpawnError::Setup {
        what: "creating the wake-up socket",
        source,
    })?);
    let child = command.spawn().map_err(|err| spawn_error(spec, cfg, err))?;
    let pid = child.id();
    log::debug!("started task pid {pid}: {command:?}");
    // From here on, dropping `pump` (on any error) kills the group and reaps the child.
    let pump = Pump::new(child, cfg, Arc::clone(&shared), events)?;
    let thread = std::thread::Builder::new()
        .name(format!("exec-{pid}"))
        .spawn(move || {
            let mut pump = pump;
            pump.run();
        })
        .map_err(|source| SpawnError::Setup {
            what: "starting the executor thread",
            source,
        })?;
    Ok(RunningTask {
        pid,
        shared,
        thread: Some(thread),
    })
}
