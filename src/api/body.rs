//! The bodies of `POST /tasks/shell` and `POST /tasks/docker`: from the parsed JSON object to
//! the task manager's types, with every field checked. Pure functions with no manager and no
//! I/O, so the handlers and the fuzz target `fuzz/fuzz_targets/rest_body.rs` run the same code.
//! The manager still validates what only it knows (empty commands, timeout bounds).

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::http::request::{optional_f64, optional_object, optional_str, required_str};
use crate::http::ApiError;
use crate::tasks::{DockerOp, TaskSpec};

/// A task creation request as the body states it, ready for `TaskManager::send_task`.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTask {
    /// The agent that should run it.
    pub agent_id: String,
    /// What to run.
    pub spec: TaskSpec,
    /// The requested deadline; `None` takes the manager's default.
    pub timeout: Option<Duration>,
}

/// Reads the body of `POST /tasks/shell`.
pub fn shell_task(body: &Map<String, Value>) -> Result<NewTask, ApiError> {
    let agent_id = required_str(body, "agent_id")?.to_string();
    let cmd = required_str(body, "cmd")?.to_string();
    let timeout = timeout(body)?;
    let mut env = Vec::new();
    if let Some(vars) = optional_object(body, "env")? {
        for (k, v) in vars {
            let v = v.as_str().ok_or_else(|| {
                ApiError::bad_request(format!("env variable `{k}` must be a string"))
                    .with_details(json!({ "field": "env" }))
            })?;
            env.push((k.clone(), v.to_string()));
        }
    }
    let working_dir = optional_str(body, "working_dir")?.map(str::to_string);
    let spec = TaskSpec::Shell {
        cmd,
        env,
        working_dir,
    };
    Ok(NewTask {
        agent_id,
        spec,
        timeout,
    })
}

/// Reads the body of `POST /tasks/docker`.
pub fn docker_task(body: &Map<String, Value>) -> Result<NewTask, ApiError> {
    let agent_id = required_str(body, "agent_id")?.to_string();
    let operation = required_str(body, "operation")?;
    let timeout = timeout(body)?;
    let op = match operation {
        "run" => DockerOp::Run {
            image: required_str(body, "image")?.to_string(),
        },
        "start" => DockerOp::Start {
            id: required_str(body, "id")?.to_string(),
        },
        "stop" => DockerOp::Stop {
            id: required_str(body, "id")?.to_string(),
        },
        "logs" => DockerOp::Logs {
            id: required_str(body, "id")?.to_string(),
        },
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown docker operation `{other}`; expected run, start, stop or logs"
            ))
            .with_details(json!({ "field": "operation" })))
        }
    };
    Ok(NewTask {
        agent_id,
        spec: TaskSpec::Docker(op),
        timeout,
    })
}

fn timeout(body: &Map<String, Value>) -> Result<Option<Duration>, ApiError> {
    match optional_f64(body, "timeout")? {
        None => Ok(None),
        Some(secs) if secs.is_finite() && secs > 0.0 && secs <= 1e9 => {
            Ok(Some(Duration::from_secs_f64(secs)))
        }
        Some(_) => Err(ApiError::bad_request(
            "field `timeout` must be a positive number of seconds",
        )
        .with_details(json!({ "field": "timeout" }))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse_json_object;

    fn shell(body: &str) -> Result<NewTask, ApiError> {
        shell_task(&parse_json_object(body.as_bytes())?)
    }

    fn docker(body: &str) -> Result<NewTask, ApiError> {
        docker_task(&parse_json_object(body.as_bytes())?)
    }

    #[test]
    fn a_full_shell_body_becomes_a_task() {
        let t = shell(
            r#"{"agent_id":"web1","cmd":"ls","timeout":2.5,"env":{"A":"1"},"working_dir":"/tmp"}"#,
        )
        .unwrap();
        assert_eq!(t.agent_id, "web1");
        assert_eq!(t.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(
            t.spec,
            TaskSpec::Shell {
                cmd: "ls".into(),
                env: vec![("A".into(), "1".into())],
                working_dir: Some("/tmp".into()),
            }
        );
    }

    #[test]
    fn each_docker_operation_takes_its_argument() {
        let cases = [
            (
                r#""run","image":"alpine""#,
                DockerOp::Run {
                    image: "alpine".into(),
                },
            ),
            (r#""start","id":"c1""#, DockerOp::Start { id: "c1".into() }),
            (r#""stop","id":"c1""#, DockerOp::Stop { id: "c1".into() }),
            (r#""logs","id":"c1""#, DockerOp::Logs { id: "c1".into() }),
        ];
        for (fields, op) in cases {
            let t = docker(&format!(r#"{{"agent_id":"a","operation":{fields}}}"#)).unwrap();
            assert_eq!(t.spec, TaskSpec::Docker(op));
            assert_eq!(t.timeout, None);
        }
    }

    #[test]
    fn bad_fields_are_400_naming_the_field() {
        let cases = [
            (shell(r#"{"cmd":"ls"}"#), "agent_id"),
            (
                shell(r#"{"agent_id":"a","cmd":"ls","timeout":0}"#),
                "timeout",
            ),
            (
                shell(r#"{"agent_id":"a","cmd":"ls","timeout":1e10}"#),
                "timeout",
            ),
            (shell(r#"{"agent_id":"a","cmd":"ls","env":{"A":1}}"#), "env"),
            (
                docker(r#"{"agent_id":"a","operation":"pull"}"#),
                "operation",
            ),
            (docker(r#"{"agent_id":"a","operation":"run"}"#), "image"),
        ];
        for (result, field) in cases {
            let e = result.unwrap_err();
            assert_eq!(e.status(), 400, "{field}: {}", e.message());
            let details = e.details().map(ToString::to_string).unwrap_or_default();
            assert!(details.contains(field), "{field}: {details}");
        }
    }
}
