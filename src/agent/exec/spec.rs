//! What to run and how to run it: the executor's own task and configuration
//! types. They are deliberately independent of the protobuf messages so the
//! executor can be built and tested without gRPC; the agent's service layer
//! converts wire requests into an [`ExecSpec`] and an [`ExecConfig`].

use std::env;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One task for the executor, so callers describe work without building processes themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecSpec {
    /// Run `cmd` with the configured shell as `<shell> -c <cmd>`.
    Shell {
        /// The shell command line, passed to the shell as a single argument.
        cmd: String,
        /// Extra variables added on top of the agent's inherited environment.
        env: Vec<(String, String)>,
        /// Directory to start in; `None` keeps the agent's current directory.
        working_dir: Option<PathBuf>,
    },
    /// Run one Docker CLI operation, always as an argv vector and never via a shell.
    Docker(DockerOp),
}

/// The Docker CLI operations an agent can perform, each mapped to one `docker` subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerOp {
    /// `docker run <image>`: start a new container in the foreground and stream its output.
    Run {
        /// Image reference, passed to docker as exactly one argument.
        image: String,
    },
    /// `docker start <id>`: start an existing, stopped container.
    Start {
        /// Container id or name, passed to docker as exactly one argument.
        id: String,
    },
    /// `docker stop <id>`: stop a running container.
    Stop {
        /// Container id or name, passed to docker as exactly one argument.
        id: String,
    },
    /// `docker logs <id>`: print a container's logs.
    Logs {
        /// Container id or name, passed to docker as exactly one argument.
        id: String,
    },
}

/// Agent-wide executor settings, so paths and timing can be configured and tests can shrink them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecConfig {
    /// Shell used for [`ExecSpec::Shell`] tasks (`<shell> -c <cmd>`).
    pub shell: PathBuf,
    /// Docker CLI binary; a bare name is looked up on `PATH` when the task starts.
    pub docker_bin: PathBuf,
    /// How long a cancelled task gets between SIGTERM and SIGKILL of its process group.
    pub kill_grace: Duration,
    /// Size at which buffered output is sent as a chunk (a chunk may exceed it by at most 3 bytes).
    pub chunk_bytes: usize,
    /// Longest time output may wait in the buffer before it is sent.
    pub flush_after: Duration,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            shell: default_shell(),
            docker_bin: PathBuf::from("docker"),
            kill_grace: Duration::from_secs(5),
            chunk_bytes: 32 * 1024,
            flush_after: Duration::from_millis(20),
        }
    }
}

/// Picks bash (from `PATH`, then `/bin/bash`, then `/usr/bin/bash`) or falls back to `/bin/sh`, because tasks are written for bash but must run anywhere.
pub fn default_shell() -> PathBuf {
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let candidate = dir.join("bash");
            if dir.is_absolute() && is_executable_file(&candidate) {
                return candidate;
            }
        }
    }
    for candidate in ["/bin/bash", "/usr/bin/bash"] {
        if is_executable_file(Path::new(candidate)) {
            return PathBuf::from(candidate);
        }
    }
    PathBuf::from("/bin/sh")
}

fn is_executable_file(path: &Path) -> bool {
    match path.metadata() {
        Ok(meta) => meta.is_file() && meta.permissions().mode() & 0o111 != 0,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let cfg = ExecConfig::default();
        assert_eq!(cfg.docker_bin, PathBuf::from("docker"));
        assert_eq!(cfg.kill_grace, Duration::from_secs(5));
        assert_eq!(cfg.chunk_bytes, 32 * 1024);
        assert_eq!(cfg.flush_after, Duration::from_millis(20));
        assert!(cfg.shell.is_absolute(), "{:?}", cfg.shell);
        assert!(is_executable_file(&cfg.shell), "{:?}", cfg.shell);
    }

    #[test]
    fn default_shell_prefers_bash_when_present() {
        let shell = default_shell();
        let bash_exists = ["/bin/bash", "/usr/bin/bash"]
            .iter()
            .any(|p| is_executable_file(Path::new(p)));
        if bash_exists {
            assert_eq!(shell.file_name().and_then(|n| n.to_str()), Some("bash"));
        } else {
            assert_eq!(shell, PathBuf::from("/bin/sh"));
        }
    }
}
