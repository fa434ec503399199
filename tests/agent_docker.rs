//! Issue 5: Docker operations run the docker CLI (here a fake one given with `--docker-bin`)
//! with a plain argument vector: every image or container id is exactly one argument, nothing
//! goes through a shell, and docker's output and exit code come back as the task's.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use support::tasks::{create_task, StopOnDrop};
use support::{wait_final, Client, Server, TempDir};

const FINISH: Duration = Duration::from_secs(30);
const CALL_END: &str = "--end-of-call--";

/// A fake `docker`: records its arguments, one per line, then answers like docker would
/// (a container id for `run`, log lines for `logs`, the id for `start` and `stop`).
struct FakeDocker {
    dir: TempDir,
}

impl FakeDocker {
    /// A fake that exits with `exit_code` (and says so on stderr when it is not 0).
    fn new(exit_code: i32) -> FakeDocker {
        let dir = TempDir::new("docker");
        let record = dir.join("calls");
        let script = format!(
            "#!/bin/sh\n\
             for arg in \"$@\"; do printf '%s\\n' \"$arg\"; done >> '{record}'\n\
             echo '{CALL_END}' >> '{record}'\n\
             case \"$1\" in\n\
             run) echo 4f3c2b1a0e9d ;;\n\
             logs) echo 'container says hi'; echo 'container warns' >&2 ;;\n\
             *) printf '%s\\n' \"$2\" ;;\n\
             esac\n\
             [ {exit_code} -eq 0 ] || echo 'fake docker: failing with {exit_code}' >&2\n\
             exit {exit_code}\n",
            record = record.display()
        );
        let path = dir.join("docker");
        std::fs::write(&path, script).expect("write fake docker");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        FakeDocker { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("docker")
    }

    /// The arguments (program name excluded) of every call so far, in order.
    fn calls(&self) -> Vec<Vec<String>> {
        let recorded = std::fs::read_to_string(self.dir.join("calls")).unwrap_or_default();
        let mut calls = vec![];
        let mut current = vec![];
        for line in recorded.lines() {
            if line == CALL_END {
                calls.push(std::mem::take(&mut current));
            } else {
                current.push(line.to_string());
            }
        }
        calls
    }
}

/// A server with agent a1 using `docker_bin`.
fn server_and_agent(docker_bin: &str) -> (Server, StopOnDrop) {
    let server = Server::start();
    let agent = StopOnDrop(server.agent_with("a1", "t1", &["--docker-bin", docker_bin]));
    (server, agent)
}

/// Runs one docker operation (`key` is `image` for run, `id` otherwise) and waits for its end.
fn docker(c: &Client, operation: &str, key: &str, value: &str) -> Value {
    let id = create_task(
        c,
        "/tasks/docker",
        json!({"agent_id": "a1", "operation": operation, key: value}),
    );
    wait_final(c, &id, FINISH)
}

#[test]
fn each_operation_runs_docker_with_exactly_its_arguments_and_no_shell() {
    let fake = FakeDocker::new(0);
    let (server, _agent) = server_and_agent(fake.path().to_str().expect("utf-8 path"));
    let c = server.client();
    // Would a shell ever see these, it would create the canary file.
    let canary = fake.dir.join("canary");
    let image = format!("x; touch {}", canary.display());
    let start_id = format!("$(touch {})", canary.display());
    let stop_id = format!("c1`touch {}`", canary.display());

    let expected: [(&str, &str, &str, &str); 4] = [
        ("run", "image", &image, "4f3c2b1a0e9d\n"),
        ("start", "id", &start_id, &format!("{start_id}\n")),
        ("stop", "id", &stop_id, &format!("{stop_id}\n")),
        ("logs", "id", "c1", "container says hi\n"),
    ];
    for (operation, key, value, stdout) in expected {
        let t = docker(&c, operation, key, value);
        assert_eq!(t["status"], "completed", "{operation}: {t}");
        assert_eq!(t["exit_code"], 0, "{operation}: {t}");
        assert_eq!(t["stdout"], stdout, "{operation}: {t}");
    }
    let want: Vec<Vec<String>> = expected
        .iter()
        .map(|(operation, _, value, _)| vec![operation.to_string(), value.to_string()])
        .collect();
    assert_eq!(fake.calls(), want);
    assert!(!canary.exists(), "a shell interpreted a docker argument");
    assert_eq!(
        docker(&c, "logs", "id", "c1")["stderr"],
        "container warns\n"
    );
}

#[test]
fn dockers_exit_code_and_stderr_come_back_as_the_tasks() {
    let fake = FakeDocker::new(125);
    let (server, _agent) = server_and_agent(fake.path().to_str().expect("utf-8 path"));
    let t = docker(&server.client(), "run", "image", "no-such-image");
    assert_eq!(
        t["status"], "completed",
        "a non-zero exit still completes: {t}"
    );
    assert_eq!(t["exit_code"], 125, "{t}");
    assert_eq!(t["stderr"], "fake docker: failing with 125\n", "{t}");
    assert_eq!(fake.calls(), [["run", "no-such-image"]]);
}

#[test]
fn an_argument_that_looks_like_an_option_is_refused_without_running_docker() {
    let fake = FakeDocker::new(0);
    let (server, _agent) = server_and_agent(fake.path().to_str().expect("utf-8 path"));
    let t = docker(&server.client(), "run", "image", "--privileged");
    assert_eq!(t["status"], "failed", "{t}");
    assert!(
        t["error"]
            .as_str()
            .unwrap_or_default()
            .contains("must not start with '-'"),
        "{t}"
    );
    assert!(
        fake.calls().is_empty(),
        "docker must not run: {:?}",
        fake.calls()
    );
}

#[test]
fn a_missing_docker_binary_fails_the_task_with_a_clear_error() {
    let (server, _agent) = server_and_agent("/nonexistent/bin/docker");
    let t = docker(&server.client(), "logs", "id", "c1");
    assert_eq!(t["status"], "failed", "{t}");
    let error = t["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("/nonexistent/bin/docker") && error.contains("not found"),
        "{t}"
    );
}
