//! The per-task executor thread: one loop that multiplexes the task's stdout
//! and stderr pipes (non-blocking, `poll`), decodes and coalesces output,
//! watches the main process for exit, and drives cancellation (SIGTERM, then
//! SIGKILL after the grace period, both to the whole process group). Doing all
//! of this on one thread keeps the events of a task strictly ordered and needs
//! no sleeping helper threads: every deadline is just a `poll` timeout.
//!
//! Lifecycle of the loop:
//! 1. While the main process lives, `poll` wakes at least every
//!    [`EXIT_POLL`] to check for its exit (`waitid` with `WNOWAIT`, so the
//!    zombie keeps the pgid reserved until we reap it at the very end).
//! 2. After it exits, the pipes are drained until EOF, but a background
//!    grandchild may keep them open forever (`sleep 1000 & echo hi`), so
//!    draining also stops after [`DRAIN_IDLE`] without new data, or
//!    [`DRAIN_MAX`] after the exit in any case. Such leftover processes are
//!    left running unless the task was cancelled; on a cancel the whole group
//!    is SIGKILLed as soon as the main process is gone.
//! 3. Decoders are finished, the last chunk is flushed, the main process is
//!    reaped and `Exited` is emitted as the final event.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::io::AsRawFd;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::coalesce::{Coalescer, Stream};
use super::error::SpawnError;
use super::exit::ExitInfo;
use super::spec::ExecConfig;
use super::sys;
use super::task::{ExecEvent, Shared};
use super::utf8::Utf8Decoder;

/// Longest `poll` wait while the main process is alive, i.e. the exit-detection latency.
pub const EXIT_POLL: Duration = Duration::from_millis(50);
/// After the main process exits, stop reading once the pipes have been quiet this long.
pub const DRAIN_IDLE: Duration = Duration::from_millis(100);
/// After the main process exits, stop reading after this long even if data keeps coming.
pub const DRAIN_MAX: Duration = Duration::from_secs(2);
/// Size of one `read` from a pipe.
const READ_BUF: usize = 64 * 1024;
/// Reads per pipe per wake-up, so one busy stream cannot starve the other or the timers.
const MAX_READS_PER_WAKE: usize = 16;

/// One output pipe and its decoder.
struct Pipe {
    file: File,
    stream: Stream,
    decoder: Utf8Decoder,
}

impl Pipe {
    fn new(fd: OwnedFd, stream: Stream) -> Result<Self, SpawnError> {
        let file = File::from(fd);
        sys::set_nonblocking(&file).map_err(|source| SpawnError::Setup {
            what: "making the output pipes non-blocking",
            source,
        })?;
        Ok(Pipe {
            file,
            stream,
            decoder: Utf8Decoder::new(),
        })
    }
}

/// Where cancellation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cancel {
    Idle,
    Terminating { kill_at: Instant },
    Killed,
}

/// Everything the executor thread owns for one task.
///
/// Dropping it before `run` has reaped the child (a setup failure, or a
/// panicking event callback) SIGKILLs the group and reaps the child, so no
/// path leaks a process or a zombie.
pub(crate) struct Pump<F> {
    child: Child,
    pid: u32,
    /// Set once the child has been waited for; no signal is sent after that.
    reaped: Option<ExitInfo>,
    pipes: [Option<Pipe>; 2],
    shared: Arc<Shared>,
    kill_grace: Duration,
    coalescer: Coalescer,
    text: String,
    events: F,
}

impl<F: FnMut(ExecEvent)> Pump<F> {
    /// Takes over a freshly spawned child and its pipes.
    pub(crate) fn new(
        mut child: Child,
        cfg: &ExecConfig,
        shared: Arc<Shared>,
        events: F,
    ) -> Result<Self, SpawnError> {
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let mut pump = Pump {
            pid: child.id(),
            child,
            reaped: None,
            pipes: [None, None],
            shared,
            kill_grace: cfg.kill_grace,
            coalescer: Coalescer::new(cfg.chunk_bytes, cfg.flush_after),
            text: String::new(),
            events,
        };
        let not_piped = |name: &str| SpawnError::Setup {
            what: "taking the output pipes",
            source: io::Error::other(format!("{name} was not piped")),
        };
        let stdout = stdout.ok_or_else(|| not_piped("stdout"))?;
        let stderr = stderr.ok_or_else(|| not_piped("stderr"))?;
        pump.pipes[0] = Some(Pipe::new(OwnedFd::from(stdout), Stream::Stdout)?);
        pump.pipes[1] = Some(Pipe::new(OwnedFd::from(stderr), Stream::Stderr)?);
        Ok(pump)
    }

    /// Runs the task to completion, emitting `Output` events and finally `Exited`.
    pub(crate) fn run(&mut self) {
        let mut buf = vec![0u8; READ_BUF];
        let mut cancel = Cancel::Idle;
        let mut leader_exit: Option<Instant> = None;
        let mut last_data = Instant::now();
        loop {
            let now = Instant::now();
            cancel = self.advance_cancel(cancel, leader_exit.is_some(), now);
            if leader_exit.is_none() && self.leader_has_exited() {
                leader_exit = Some(now);
                if cancel != Cancel::Idle {
                    // Cancelled and the main process is gone: nothing in the group may outlive it.
                    self.signal(libc::SIGKILL);
                    cancel = Cancel::Killed;
                }
            }
            let mut wake_at = match leader_exit {
                None => match cancel {
                    Cancel::Terminating { kill_at } => kill_at.min(now + EXIT_POLL),
                    _ => now + EXIT_POLL,
                },
                Some(exited) => {
                    if self.pipes.iter().all(Option::is_none) {
                        break;
                    }
                    let idle_end = exited.max(last_data) + DRAIN_IDLE;
                    let hard_end = exited + DRAIN_MAX;
                    if now >= idle_end || now >= hard_end {
                        log::debug!(
                            "task pid {}: stopped reading output held open by a background process",
                            self.pid
                        );
                        break;
                    }
                    idle_end.min(hard_end)
                }
            };
            if let Some(flush_at) = self.coalescer.deadline() {
                wake_at = wake_at.min(flush_at);
            }
            if self.wait_and_read(&mut buf, wake_at.saturating_duration_since(now)) {
                last_data = Instant::now();
            }
            let events = &mut self.events;
            self.coalescer
                .flush_if_due(Instant::now(), &mut |c| events(ExecEvent::Output(c)));
        }
        self.finish();
    }

    /// Applies a pending cancel request or an expired grace period.
    fn advance_cancel(&mut self, cancel: Cancel, leader_gone: bool, now: Instant) -> Cancel {
        match cancel {
            Cancel::Idle if self.shared.cancel_requested() => {
                if leader_gone {
                    self.signal(libc::SIGKILL);
                    Cancel::Killed
                } else {
                    self.signal(libc::SIGTERM);
                    Cancel::Terminating {
                        kill_at: now + self.kill_grace,
                    }
                }
            }
            Cancel::Terminating { kill_at } if now >= kill_at => {
                log::debug!("task pid {}: grace period over, sending SIGKILL", self.pid);
                self.signal(libc::SIGKILL);
                Cancel::Killed
            }
            other => other,
        }
    }

    /// Polls the pipes and the wake-up socket, then reads whatever is ready; true if data arrived.
    fn wait_and_read(&mut self, buf: &mut [u8], timeout: Duration) -> bool {
        let mut fds = [sys::poll_in(-1); 3];
        let mut owners = [usize::MAX; 3];
        let mut n = 0;
        for (index, pipe) in self.pipes.iter().enumerate() {
            if let Some(pipe) = pipe {
                fds[n] = sys::poll_in(pipe.file.as_raw_fd());
                owners[n] = index;
                n += 1;
            }
        }
        fds[n] = sys::poll_in(self.shared.wake_rx.as_raw_fd());
        let polled_ok = match sys::poll(&mut fds[..=n], timeout) {
            Ok(()) => true,
            Err(err) => {
                // Degraded mode: wait a bit and try the non-blocking reads anyway.
                log::warn!("task pid {}: poll failed: {err}", self.pid);
                std::thread::sleep(timeout.min(EXIT_POLL));
                false
            }
        };
        let mut got_data = false;
        for k in 0..n {
            if !polled_ok || fds[k].revents != 0 {
                got_data |= self.read_pipe(owners[k], buf);
            }
        }
        if !polled_ok || fds[n].revents != 0 {
            self.drain_wake_socket();
        }
        got_data
    }

    /// Reads one pipe until it would block (bounded), decoding and coalescing; closes it on EOF.
    fn read_pipe(&mut self, index: usize, buf: &mut [u8]) -> bool {
        let Some(pipe) = self.pipes[index].as_mut() else {
            return false;
        };
        self.text.clear();
        let mut got_data = false;
        let mut closed = false;
        let mut reads = 0;
        while reads < MAX_READS_PER_WAKE {
            match pipe.file.read(buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(len) => {
                    reads += 1;
                    got_data = true;
                    pipe.decoder.decode(&buf[..len], &mut self.text);
                    if len < buf.len() {
                        break;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    log::warn!(
                        "task pid {}: reading {:?} failed: {err}",
                        self.pid,
                        pipe.stream
                    );
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            pipe.decoder.finish(&mut self.text);
        }
        let stream = pipe.stream;
        let events = &mut self.events;
        self.coalescer
            .push(stream, &self.text, Instant::now(), &mut |c| {
                events(ExecEvent::Output(c))
            });
        if closed {
            self.pipes[index] = None;
        }
        got_data
    }

    /// Empties the wake-up socket written by `RunningTask::cancel`.
    fn drain_wake_socket(&mut self) {
        let mut sink = [0u8; 64];
        loop {
            match (&self.shared.wake_rx).read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Checks whether the main process has exited, without reaping it.
    fn leader_has_exited(&mut self) -> bool {
        if self.reaped.is_some() {
            return true;
        }
        match sys::has_exited(self.pid) {
            Ok(exited) => exited,
            Err(err) => {
                // E.g. ECHILD if the host process set SIGCHLD to SIG_IGN. Fall back to
                // a reaping check; from then on no group signal is sent.
                log::warn!("task pid {}: waitid failed: {err}", self.pid);
                match self.child.try_wait() {
                    Ok(None) => false,
                    Ok(Some(status)) => {
                        self.reaped = Some(ExitInfo::from_status(status));
                        true
                    }
                    Err(err) => {
                        log::warn!("task pid {}: exit status lost: {err}", self.pid);
                        self.reaped = Some(ExitInfo::unknown());
                        true
                    }
                }
            }
        }
    }

    /// Signals the task's process group, as long as the leader (and so the pgid) is not yet reaped.
    fn signal(&self, signal: libc::c_int) {
        if self.reaped.is_some() {
            return;
        }
        match sys::signal_group(self.pid, signal) {
            Ok(_) => log::debug!("task pid {}: sent signal {signal} to the group", self.pid),
            Err(err) => log::warn!("task pid {}: signal {signal} failed: {err}", self.pid),
        }
    }

    /// Finishes the decoders, flushes the last chunk, reaps the child and emits `Exited`.
    fn finish(&mut self) {
        for index in 0..self.pipes.len() {
            if let Some(mut pipe) = self.pipes[index].take() {
                self.text.clear();
                pipe.decoder.finish(&mut self.text);
                let events = &mut self.events;
                self.coalescer
                    .push(pipe.stream, &self.text, Instant::now(), &mut |c| {
                        events(ExecEvent::Output(c))
                    });
            }
        }
        let events = &mut self.events;
        self.coalescer.flush(&mut |c| events(ExecEvent::Output(c)));
        let info = self.reap();
        log::debug!("task pid {}: {info}", self.pid);
        (self.events)(ExecEvent::Exited(info));
        self.shared.mark_finished();
    }

    /// Waits for the (already exited) main process and converts its status.
    fn reap(&mut self) -> ExitInfo {
        if let Some(info) = self.reaped {
            return info;
        }
        let info = match self.child.wait() {
            Ok(status) => ExitInfo::from_status(status),
            Err(err) => {
                log::warn!("task pid {}: exit status lost: {err}", self.pid);
                ExitInfo::unknown()
            }
        };
        self.reaped = Some(info);
        info
    }
}

impl<F> Drop for Pump<F> {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            // Only reached when `run` did not complete: never leave a process or zombie behind.
            if let Err(err) = sys::signal_group(self.pid, libc::SIGKILL) {
                log::warn!("task pid {}: cleanup kill failed: {err}", self.pid);
            }
            if let Err(err) = self.child.wait() {
                log::warn!("task pid {}: cleanup wait failed: {err}", self.pid);
            }
            self.reaped = Some(ExitInfo::unknown());
        }
        self.shared.mark_finished();
    }
}
