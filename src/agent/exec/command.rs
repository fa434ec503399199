//! Turns an [`ExecSpec`] into a ready-to-spawn [`Command`]. This is the only
//! place that decides argv, environment, working directory and stdio, so the
//! "never through a shell" rule for docker and the process-group/stdin/pipe
//! rules for every task are enforced in one spot. It also maps spawn failures
//! to [`SpawnError`]s a user can act on.
//!
//! `docker run` is invoked as plain `docker run <image>`, like the original
//! agent: no `--rm` (the container stays so `logs`/`start` can still address
//! it), no `-i` (stdin is /dev/null) and no `-t` (a TTY would merge stdout and
//! stderr and add control characters). Image and container ids are single argv
//! elements, so shell metacharacters are inert; values starting with `-` are
//! refused because docker would parse them as options.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::error::SpawnError;
use super::spec::{DockerOp, ExecConfig, ExecSpec};

/// Full argv (program first) for a task, exposed so callers and tests can see exactly what will run.
pub fn command_line(spec: &ExecSpec, cfg: &ExecConfig) -> Result<Vec<OsString>, SpawnError> {
    match spec {
        ExecSpec::Shell { cmd, .. } => Ok(vec![
            cfg.shell.clone().into_os_string(),
            OsString::from("-c"),
            OsString::from(cmd),
        ]),
        ExecSpec::Docker(op) => {
            let (sub, what, value) = match op {
                DockerOp::Run { image } => ("run", "docker image", image),
                DockerOp::Start { id } => ("start", "container id", id),
                DockerOp::Stop { id } => ("stop", "container id", id),
                DockerOp::Logs { id } => ("logs", "container id", id),
            };
            check_docker_arg(what, value)?;
            Ok(vec![
                cfg.docker_bin.clone().into_os_string(),
                OsString::from(sub),
                OsString::from(value),
            ])
        }
    }
}

/// Builds the process for a task (own process group, stdin /dev/null, stdout and stderr piped), so spawning is uniform for every task kind.
pub fn build_command(spec: &ExecSpec, cfg: &ExecConfig) -> Result<Command, SpawnError> {
    let argv = command_line(spec, cfg)?;
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    if let ExecSpec::Shell {
        env, working_dir, ..
    } = spec
    {
        command.envs(env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = working_dir {
            check_working_dir(dir)?;
            command.current_dir(dir);
        }
    }
    command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(command)
}

/// Translates an error from `Command::spawn` into a [`SpawnError`] naming the real culprit.
pub(crate) fn spawn_error(spec: &ExecSpec, cfg: &ExecConfig, err: io::Error) -> SpawnError {
    let (role, program) = program_of(spec, cfg);
    if err.kind() == io::ErrorKind::NotFound {
        // ENOENT from chdir and from exec look the same; re-check the directory
        // (it may have vanished after the pre-check) before blaming the program.
        if let ExecSpec::Shell {
            working_dir: Some(dir),
            ..
        } = spec
        {
            if let Err(e) = check_working_dir(dir) {
                return e;
            }
        }
        return SpawnError::ProgramNotFound { role, program };
    }
    SpawnError::Start {
        role,
        program,
        source: err,
    }
}

/// Which configured program a task runs, for error messages.
pub(crate) fn program_of(spec: &ExecSpec, cfg: &ExecConfig) -> (&'static str, PathBuf) {
    match spec {
        ExecSpec::Shell { .. } => ("shell", cfg.shell.clone()),
        ExecSpec::Docker(_) => ("docker", cfg.docker_bin.clone()),
    }
}

fn check_working_dir(dir: &Path) -> Result<(), SpawnError> {
    let reason = match dir.metadata() {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => "is not a directory".to_string(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => "does not exist".to_string(),
        Err(e) => format!("is not accessible: {e}"),
    };
    Err(SpawnError::WorkingDir {
        path: dir.to_path_buf(),
        reason,
    })
}

fn check_docker_arg(what: &'static str, value: &str) -> Result<(), SpawnError> {
    let reason = if value.is_empty() {
        "must not be empty"
    } else if value.starts_with('-') {
        "must not start with '-' (docker would read it as an option)"
    } else {
        return Ok(());
    };
    Err(SpawnError::InvalidArgument {
        what,
        value: value.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ExecConfig {
        ExecConfig {
            shell: PathBuf::from("/bin/bash"),
            docker_bin: PathBuf::from("/opt/docker"),
            ..ExecConfig::default()
        }
    }

    fn strings(argv: Vec<OsString>) -> Vec<String> {
        argv.into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn shell_is_shell_dash_c_cmd() {
        let spec = ExecSpec::Shell {
            cmd: "echo hi; exit 3".into(),
            env: vec![],
            working_dir: None,
        };
        let argv = strings(command_line(&spec, &cfg()).expect("argv"));
        assert_eq!(argv, ["/bin/bash", "-c", "echo hi; exit 3"]);
    }

    #[test]
    fn docker_ops_are_plain_argv() {
        let cases = [
            (
                DockerOp::Run {
                    image: "x; rm -rf /".into(),
                },
                "run",
                "x; rm -rf /",
            ),
            (
                DockerOp::Start {
                    id: "abc $(id)".into(),
                },
                "start",
                "abc $(id)",
            ),
            (DockerOp::Stop { id: "c1".into() }, "stop", "c1"),
            (DockerOp::Logs { id: "c`2`".into() }, "logs", "c`2`"),
        ];
        for (op, sub, arg) in cases {
            let argv = strings(command_line(&ExecSpec::Docker(op), &cfg()).expect("argv"));
            assert_eq!(argv, ["/opt/docker", sub, arg]);
        }
    }

    #[test]
    fn docker_args_that_look_like_options_are_refused() {
        for bad in ["", "-v=/:/host", "--privileged"] {
            let spec = ExecSpec::Docker(DockerOp::Run { image: bad.into() });
            match command_line(&spec, &cfg()) {
                Err(SpawnError::InvalidArgument { value, .. }) => assert_eq!(value, bad),
                other => panic!("expected InvalidArgument for {bad:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn missing_working_dir_is_reported_before_spawn() {
        let spec = ExecSpec::Shell {
            cmd: "true".into(),
            env: vec![],
            working_dir: Some(PathBuf::from("/definitely/not/here")),
        };
        match build_command(&spec, &cfg()) {
            Err(e @ SpawnError::WorkingDir { .. }) => {
                assert!(e.to_string().contains("/definitely/not/here"), "{e}");
                assert!(e.to_string().contains("does not exist"), "{e}");
            }
            other => panic!("expected WorkingDir, got {other:?}"),
        }
    }

    #[test]
    fn spawn_not_found_blames_the_program() {
        let spec = ExecSpec::Docker(DockerOp::Logs { id: "c".into() });
        let err = spawn_error(&spec, &cfg(), io::Error::from(io::ErrorKind::NotFound));
        assert!(matches!(
            err,
            SpawnError::ProgramNotFound { role: "docker", .. }
        ));
        assert!(err.to_string().contains("/opt/docker"), "{err}");
    }
}
