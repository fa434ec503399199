//! How a task ended, in the shape the wire protocol wants: one exit code
//! (shell convention 128 + signal for a signal death) plus the signal number,
//! with a name lookup for messages such as "killed by SIGKILL".

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// A task's final status, so callers get a shell-style exit code and still know about signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code, or 128 + signal number when the process was killed by a signal (-1 if unknown).
    pub exit_code: i32,
    /// The signal that killed the process, if any.
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// Converts a reaped process status into the protocol's exit code convention.
    pub fn from_status(status: ExitStatus) -> Self {
        if let Some(signal) = status.signal() {
            ExitInfo {
                exit_code: 128 + signal,
                signal: Some(signal),
            }
        } else {
            ExitInfo {
                exit_code: status.code().unwrap_or(-1),
                signal: None,
            }
        }
    }

    /// Status for a process whose real status could not be collected (e.g. reaped by someone else).
    pub fn unknown() -> Self {
        ExitInfo {
            exit_code: -1,
            signal: None,
        }
    }

    /// Whether the task succeeded (exit code 0, no signal).
    pub fn success(&self) -> bool {
        self.exit_code == 0 && self.signal.is_none()
    }

    /// The killing signal's name (e.g. "SIGKILL"), for human-readable reports.
    pub fn signal_name(&self) -> Option<&'static str> {
        self.signal.and_then(signal_name)
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.signal, self.signal_name()) {
            (Some(_), Some(name)) => write!(f, "exit code {} (killed by {name})", self.exit_code),
            (Some(sig), None) => write!(f, "exit code {} (killed by signal {sig})", self.exit_code),
            (None, _) => write!(f, "exit code {}", self.exit_code),
        }
    }
}

const SIGNAL_NAMES: &[(i32, &str)] = &[
    (libc::SIGHUP, "SIGHUP"),
    (libc::SIGINT, "SIGINT"),
    (libc::SIGQUIT, "SIGQUIT"),
    (libc::SIGILL, "SIGILL"),
    (libc::SIGTRAP, "SIGTRAP"),
    (libc::SIGABRT, "SIGABRT"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGFPE, "SIGFPE"),
    (libc::SIGKILL, "SIGKILL"),
    (libc::SIGUSR1, "SIGUSR1"),
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGUSR2, "SIGUSR2"),
    (libc::SIGPIPE, "SIGPIPE"),
    (libc::SIGALRM, "SIGALRM"),
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGCHLD, "SIGCHLD"),
    (libc::SIGCONT, "SIGCONT"),
    (libc::SIGSTOP, "SIGSTOP"),
    (libc::SIGTSTP, "SIGTSTP"),
    (libc::SIGTTIN, "SIGTTIN"),
    (libc::SIGTTOU, "SIGTTOU"),
    (libc::SIGURG, "SIGURG"),
    (libc::SIGXCPU, "SIGXCPU"),
    (libc::SIGXFSZ, "SIGXFSZ"),
    (libc::SIGVTALRM, "SIGVTALRM"),
    (libc::SIGPROF, "SIGPROF"),
    (libc::SIGWINCH, "SIGWINCH"),
    (libc::SIGIO, "SIGIO"),
    (libc::SIGSYS, "SIGSYS"),
];

/// Name of a signal number on this platform (e.g. 9 -> "SIGKILL"), for reports.
pub fn signal_name(signal: i32) -> Option<&'static str> {
    SIGNAL_NAMES
        .iter()
        .find(|(number, _)| *number == signal)
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_signals_follow_the_shell_convention() {
        let exited = ExitInfo::from_status(ExitStatus::from_raw(3 << 8));
        assert_eq!(
            exited,
            ExitInfo {
                exit_code: 3,
                signal: None
            }
        );
        assert!(!exited.success());
        let killed = ExitInfo::from_status(ExitStatus::from_raw(libc::SIGKILL));
        assert_eq!(killed.exit_code, 137);
        assert_eq!(killed.signal_name(), Some("SIGKILL"));
        assert_eq!(killed.to_string(), "exit code 137 (killed by SIGKILL)");
        assert!(ExitInfo::from_status(ExitStatus::from_raw(0)).success());
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(libc::SIGTERM), Some("SIGTERM"));
        assert_eq!(signal_name(0), None);
    }
}
