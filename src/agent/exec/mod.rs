//! The agent's process executor: runs one task (a shell command or a docker
//! CLI operation) as a real process in its own process group and turns its
//! output into ordered, valid-UTF-8 chunks followed by an exit status. It is
//! independent of gRPC: the service layer maps requests to [`ExecSpec`], calls
//! [`spawn`], and forwards [`ExecEvent`]s.
//!
//! Files: `spec` (task and config types), `command` (argv/env/stdio),
//! `utf8` (stream decoding), `coalesce` (chunking), `exit` (exit status),
//! `error` (spawn errors), `sys` (libc wrappers), `pump` (the per-task thread),
//! `task` (spawn and the task handle).

mod coalesce;
mod command;
mod error;
mod exit;
mod pump;
mod spec;
mod sys;
mod task;
mod utf8;

#[cfg(test)]
mod tests;

pub use coalesce::{Chunk, Coalescer, Stream};
pub use command::{build_command, command_line};
pub use error::SpawnError;
pub use exit::{signal_name, ExitInfo};
pub use pump::{DRAIN_IDLE, DRAIN_MAX, EXIT_POLL};
pub use spec::{default_shell, DockerOp, ExecConfig, ExecSpec};
pub use task::{spawn, ExecEvent, RunningTask};
pub use utf8::Utf8Decoder;
