//! The few raw libc calls the executor needs (non-blocking fds, `poll`,
//! process-group signals, a non-reaping exit check), each wrapped in a small
//! safe function so `unsafe` stays in this one file.
//!
//! Exit detection uses `waitid(..., WNOWAIT)`: it reports that the group
//! leader has exited but leaves it a zombie. While the zombie exists its pid —
//! which is also the process-group id — cannot be reused, so every
//! `kill(-pgid, ...)` the executor sends before it finally reaps the leader is
//! guaranteed to reach this task's group and no one else's.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::time::Duration;

/// Puts a pipe end into non-blocking mode so one thread can multiplex it with `poll`.
pub(crate) fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on an fd we own; F_GETFL/F_SETFL take no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags == -1 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends `signal` to every process in group `pgid`; returns `Ok(false)` if the group is already empty.
pub(crate) fn signal_group(pgid: u32, signal: libc::c_int) -> io::Result<bool> {
    let pgid = libc::pid_t::try_from(pgid)
        .ok()
        .filter(|&p| p > 1)
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "refusing to signal pgid <= 1")
        })?;
    // SAFETY: kill takes no pointers; pgid > 1, so this never targets our own group or every process.
    if unsafe { libc::kill(-pgid, signal) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Whether child `pid` has exited, without reaping it (the zombie keeps the pgid reserved).
pub(crate) fn has_exited(pid: u32) -> io::Result<bool> {
    let id = libc::id_t::from(pid);
    // SAFETY: siginfo_t is plain data; all-zero is a valid value (si_pid == 0 means "no change").
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                id,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    // SAFETY: waitid filled `info` (or left it zeroed); reading si_pid is defined for SIGCHLD info.
    Ok(unsafe { info.si_pid() } != 0)
}

/// Waits up to `timeout` for readiness on `fds`; an interrupted wait counts as a timeout.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<()> {
    // Round up so a sub-millisecond remainder does not turn into a busy 0 ms poll.
    let millis = timeout.as_micros().div_ceil(1000);
    let millis = libc::c_int::try_from(millis).unwrap_or(libc::c_int::MAX);
    let nfds = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
    // SAFETY: the pointer and length describe a valid, writable slice of pollfd.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), nfds, millis) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

/// A `pollfd` asking for readability of `fd`.
pub(crate) fn poll_in(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}
