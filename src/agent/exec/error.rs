//! Why a task could not be started. Every failure before the process runs
//! becomes one typed [`SpawnError`] whose `Display` text tells a user what to
//! fix; the caller reports it as a FAILURE with that text in stderr.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A task that never started, typed so callers can report an actionable reason instead of a bare OS error.
#[derive(Debug)]
pub enum SpawnError {
    /// The requested working directory is missing, not a directory, or not accessible.
    WorkingDir {
        /// The directory the task asked for.
        path: PathBuf,
        /// Human-readable reason, e.g. "does not exist".
        reason: String,
    },
    /// The shell or docker binary does not exist (or is not on `PATH`).
    ProgramNotFound {
        /// Which configured program this is: "shell" or "docker".
        role: &'static str,
        /// The configured path or name.
        program: PathBuf,
    },
    /// A task argument was refused before anything ran (e.g. a docker image that looks like an option).
    InvalidArgument {
        /// What the argument is, e.g. "docker image".
        what: &'static str,
        /// The offending value.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The OS refused to start the program for another reason (permissions, NUL byte, limits...).
    Start {
        /// Which configured program this is: "shell" or "docker".
        role: &'static str,
        /// The configured path or name.
        program: PathBuf,
        /// The underlying OS error.
        source: io::Error,
    },
    /// The process started but the executor could not set up its pipes or thread; the process was killed.
    Setup {
        /// Which setup step failed.
        what: &'static str,
        /// The underlying OS error.
        source: io::Error,
    },
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::WorkingDir { path, reason } => {
                write!(f, "working directory {} {reason}", path.display())
            }
            SpawnError::ProgramNotFound { role, program } => write!(
                f,
                "{role} program {} was not found; install it or set its path in the agent configuration",
                program.display()
            ),
            SpawnError::InvalidArgument {
                what,
                value,
                reason,
            } => write!(f, "invalid {what} {value:?}: {reason}"),
            SpawnError::Start {
                role,
                program,
                source,
            } => write!(
                f,
                "cannot start {role} program {}: {source}",
                program.display()
            ),
            SpawnError::Setup { what, source } => {
                write!(f, "task process started but {what} failed: {source}")
            }
        }
    }
}

impl std::error::Error for SpawnError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpawnError::Start { source, .. } | SpawnError::Setup { source, .. } => Some(source),
            _ => None,
        }
    }
}
