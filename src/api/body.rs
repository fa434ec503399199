//! What clients send: the bodies of `POST /tasks/shell` and `POST /tasks/docker` as
//! serde-derived types, and the `limit` of task lists. The types are the contract: they parse
//! the JSON object (each field with a precise 400, see `api::fields`) and generate
//! docs/openapi.yaml's request schemas (`api::schema`). Pure functions with no manager and no
//! I/O, so the handlers and the fuzz target `fuzz/fuzz_targets/rest_body.rs` run the same
//! code. The manager still validates what only it knows (timeout bounds, variable names).
//!
//! Unknown members are accepted and ignored, as the original server did: clients written for
//! it may send more than nodelink reads. `null` in an optional member means "not given".

use std::borrow::Cow;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::fields::{type_name, DockerOperation, EnvVars, NonBlank, NonEmpty, Timeout};
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

/// Runs a shell command on an agent.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ShellTaskRequest {
    /// The agent that runs the command (its id in the server's token file).
    #[schemars(example = &"web1")]
    pub agent_id: NonEmpty,
    /// The command line, run by the agent's shell as `shell -c cmd`.
    #[schemars(example = &"uptime")]
    pub cmd: NonBlank,
    /// Seconds until the task is stopped and marked `timeout`.
    #[schemars(example = 30)]
    pub timeout: Option<Timeout>,
    /// Extra environment variables: names non-empty, without `=` or NUL (old agents ignore it).
    #[schemars(example = json!({"LANG": "C"}))]
    pub env: Option<EnvVars>,
    /// The directory the command starts in (ignored by agents older than nodelink).
    #[schemars(example = &"/tmp")]
    pub working_dir: Option<NonEmpty>,
}

/// Runs one Docker CLI operation on an agent: `run` takes `image`, the others take `id`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(transform = docker_argument_by_operation)]
pub struct DockerTaskRequest {
    /// The agent that runs the operation (its id in the server's token file).
    #[schemars(example = &"web1")]
    pub agent_id: NonEmpty,
    /// The Docker CLI operation.
    #[schemars(example = &"run")]
    pub operation: DockerOperation,
    /// The image to run; required by `run`.
    #[schemars(example = &"alpine")]
    pub image: Option<NonBlank>,
    /// The container; required by `start`, `stop` and `logs`.
    #[schemars(example = &"web-cache")]
    pub id: Option<NonBlank>,
    /// Seconds until the task is stopped and marked `timeout`.
    pub timeout: Option<Timeout>,
}

/// States in the schema what `docker_task` checks: the operation's argument is required and
/// not null.
fn docker_argument_by_operation(schema: &mut Schema) {
    let branch = |ops: &[DockerOperation]| {
        let field = ops[0].argument_field();
        let names: Vec<&str> = ops.iter().map(|o| o.as_str()).collect();
        json!({
            "required": [field],
            "properties": {
                "operation": { "enum": names },
                field: { "type": "string" },
            },
        })
    };
    schema.insert(
        "oneOf".into(),
        json!([
            branch(&[DockerOperation::Run]),
            branch(&[
                DockerOperation::Start,
                DockerOperation::Stop,
                DockerOperation::Logs
            ]),
        ]),
    );
}

/// Reads the body of `POST /tasks/shell`.
pub fn shell_task(body: &Map<String, Value>) -> Result<NewTask, ApiError> {
    let req: ShellTaskRequest = parse(body)?;
    Ok(NewTask {
        agent_id: req.agent_id.0,
        spec: TaskSpec::Shell {
            cmd: req.cmd.0,
            env: req.env.map(|e| e.0).unwrap_or_default(),
            working_dir: req.working_dir.map(|d| d.0),
        },
        timeout: req.timeout.map(|t| t.0),
    })
}

/// Reads the body of `POST /tasks/docker`.
pub fn docker_task(body: &Map<String, Value>) -> Result<NewTask, ApiError> {
    let req: DockerTaskRequest = parse(body)?;
    let op = req.operation;
    let argument = match op {
        DockerOperation::Run => req.image,
        DockerOperation::Start | DockerOperation::Stop | DockerOperation::Logs => req.id,
    };
    let Some(NonBlank(arg)) = argument else {
        let field = op.argument_field();
        let what = if body.get(field).is_some() {
            format!("field `{field}` must not be null")
        } else {
            format!("missing field `{field}`")
        };
        return Err(
            ApiError::bad_request(format!("{what}: operation `{}` needs it", op.as_str()))
                .with_details(json!({ "field": field })),
        );
    };
    let op = match op {
        DockerOperation::Run => DockerOp::Run { image: arg },
        DockerOperation::Start => DockerOp::Start { id: arg },
        DockerOperation::Stop => DockerOp::Stop { id: arg },
        DockerOperation::Logs => DockerOp::Logs { id: arg },
    };
    Ok(NewTask {
        agent_id: req.agent_id.0,
        spec: TaskSpec::Docker(op),
        timeout: req.timeout.map(|t| t.0),
    })
}

/// Deserializes a body, turning the first failure into a 400 that names the field: "missing
/// field `x`", or "field `x` <predicate from `api::fields`>" with the type that was found.
fn parse<'de, T: Deserialize<'de>>(body: &'de Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let message = e.inner().to_string();
        // Every field type consumes its whole value, so a failure's path is one member
        // name, or empty ("." ) for what serde checks on the object itself.
        let path = e.path().to_string();
        let field = path.split('.').next().filter(|f| !f.is_empty());
        match (field, body.get(field.unwrap_or_default())) {
            (Some(field), Some(found)) => {
                let mut details = json!({ "field": field, "found": type_name(found) });
                if let Some(expected) = message.strip_prefix("must be ") {
                    details["expected"] = json!(expected);
                }
                ApiError::bad_request(format!("field `{field}` {message}")).with_details(details)
            }
            _ => match message
                .strip_prefix("missing field `")
                .and_then(|m| m.strip_suffix('`'))
            {
                Some(field) => {
                    ApiError::bad_request(message.clone()).with_details(json!({ "field": field }))
                }
                None => ApiError::bad_request(message),
            },
        }
    })
}

/// Most tasks one list answer holds; a larger `limit` is refused.
pub const MAX_LIST_LIMIT: usize = crate::tasks::TaskFilter::MAX_LIMIT;

/// The `limit` query parameter of task lists: an integer from 1 to `MAX_LIST_LIMIT`.
pub struct ListLimit;

impl ListLimit {
    /// Reads the raw query value; absent is `None`, anything outside the range is a 400.
    pub fn parse(raw: Option<&str>) -> Result<Option<usize>, ApiError> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::bad_request(format!(
                "query parameter `limit` must be an integer between 1 and {MAX_LIST_LIMIT}"
            ))
            .with_details(json!({
                "parameter": "limit",
                "value": raw,
                "minimum": 1,
                "maximum": MAX_LIST_LIMIT,
            }))),
        }
    }
}

impl JsonSchema for ListLimit {
    fn schema_name() -> Cow<'static, str> {
        "ListLimit".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_LIST_LIMIT,
            "description": "most tasks to answer, newest first",
        })
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
    fn null_optional_members_mean_not_given_and_unknown_members_are_ignored() {
        let t = shell(
            r#"{"agent_id":"a","cmd":"ls","timeout":null,"env":null,"working_dir":null,"x":[1]}"#,
        )
        .unwrap();
        assert_eq!(t.timeout, None);
        assert_eq!(
            t.spec,
            TaskSpec::Shell {
                cmd: "ls".into(),
                env: vec![],
                working_dir: None,
            }
        );
        let t = docker(r#"{"agent_id":"a","operation":"run","image":"alpine","id":null}"#).unwrap();
        assert_eq!(
            t.spec,
            TaskSpec::Docker(DockerOp::Run {
                image: "alpine".into()
            })
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

    /// The whole message of each refusal: which field, and what it must be.
    #[test]
    fn every_refusal_says_which_field_and_what_it_must_be() {
        let cases = [
            (shell(r#"{"cmd":"ls"}"#), "missing field `agent_id`"),
            (shell(r#"{"agent_id":"a"}"#), "missing field `cmd`"),
            (
                shell(r#"{"agent_id":"a","cmd":5}"#),
                "field `cmd` must be a string",
            ),
            (
                shell(r#"{"agent_id":"a","cmd":null}"#),
                "field `cmd` must not be null",
            ),
            (
                shell(r#"{"agent_id":"a","cmd":" \t"}"#),
                "field `cmd` must not be empty or only whitespace",
            ),
            (
                shell(r#"{"agent_id":"","cmd":"ls"}"#),
                "field `agent_id` must not be empty",
            ),
            (
                shell(r#"{"agent_id":"a","cmd":"ls","timeout":"soon"}"#),
                "field `timeout` must be a number",
            ),
            (
                shell(r#"{"agent_id":"a","cmd":"ls","timeout":[1]}"#),
                "field `timeout` must be a number",
            ),
            (
                shell(r#"{"agent_id":"a","cmd":"ls","timeout":-1}"#),
                "field `timeout` must be a positive number of seconds, between 1 and 86400",
            ),
            (
                shell(r#"{"agent_id":"a","cmd":"ls","env":"A=1"}"#),
                "field `env` must be an object of strings",
            ),
            (
                shell(r#"{"agent_id":"a","cmd":"ls","env":{"A":{}}}"#),
                "field `env` must be an object of strings, but variable `A` is an object",
            ),
            (
                shell(r#"{"agent_id":"a","cmd":"ls","working_dir":""}"#),
                "field `working_dir` must not be empty",
            ),
            (
                docker(r#"{"agent_id":"a","operation":"pull"}"#),
                "field `operation` must be run, start, stop or logs; unknown docker operation `pull`",
            ),
            (
                docker(r#"{"agent_id":"a","operation":"start"}"#),
                "missing field `id`: operation `start` needs it",
            ),
            (
                docker(r#"{"agent_id":"a","operation":"run","image":null}"#),
                "field `image` must not be null: operation `run` needs it",
            ),
            (
                docker(r#"{"agent_id":"a","operation":"stop","id":""}"#),
                "field `id` must not be empty or only whitespace",
            ),
        ];
        for (result, message) in cases {
            let e = result.expect_err(message);
            assert_eq!((e.status(), e.message()), (400, message));
        }
        let e = shell(r#"{"agent_id":"a","cmd":5}"#).unwrap_err();
        assert_eq!(
            e.details(),
            Some(&json!({"field": "cmd", "expected": "a string", "found": "number"}))
        );
    }

    #[test]
    fn list_limits_are_between_1_and_the_maximum() {
        assert_eq!(ListLimit::parse(None), Ok(None));
        assert_eq!(ListLimit::parse(Some("1")), Ok(Some(1)));
        assert_eq!(
            ListLimit::parse(Some(&MAX_LIST_LIMIT.to_string())),
            Ok(Some(MAX_LIST_LIMIT))
        );
        let over = (MAX_LIST_LIMIT + 1).to_string();
        for raw in ["0", "-1", "x", "", "1.5", &over, "18446744073709551616"] {
            let e = ListLimit::parse(Some(raw)).expect_err(raw);
            assert_eq!(
                (e.status(), e.message()),
                (
                    400,
                    "query parameter `limit` must be an integer between 1 and 1000"
                ),
                "{raw}"
            );
        }
    }
}
