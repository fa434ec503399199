//! Translation between the task manager's types and database values: timestamps as Unix
//! microseconds, specs as a small JSON document, statuses as their wire strings.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::tasks::{DockerOp, ReportStatus, TaskSpec, TaskStatus};

/// A timestamp as stored.
pub(crate) fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// A stored timestamp.
pub(crate) fn time(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

/// A spec as stored.
pub(crate) fn spec_json(spec: &TaskSpec) -> String {
    let v = match spec {
        TaskSpec::Shell {
            cmd,
            env,
            working_dir,
        } => {
            let env: Map<String, Value> = env
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            json!({"type": "shell", "cmd": cmd, "env": env, "working_dir": working_dir})
        }
        TaskSpec::Docker(op) => {
            let arg = match op {
                DockerOp::Run { .. } => "image",
                _ => "id",
            };
            json!({"type": "docker", "operation": op.name(), arg: op.argument()})
        }
    };
    v.to_string()
}

/// A stored spec; `None` if the row was damaged.
pub(crate) fn spec_from_json(text: &str) -> Option<TaskSpec> {
    let v: Value = serde_json::from_str(text).ok()?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    match v.get("type")?.as_str()? {
        "shell" => Some(TaskSpec::Shell {
            cmd: s("cmd")?,
            env: v
                .get("env")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
            working_dir: s("working_dir"),
        }),
        "docker" => {
            let op = match v.get("operation")?.as_str()? {
                "run" => DockerOp::Run { image: s("image")? },
                "start" => DockerOp::Start { id: s("id")? },
                "stop" => DockerOp::Stop { id: s("id")? },
                "logs" => DockerOp::Logs { id: s("id")? },
                _ => return None,
            };
            Some(TaskSpec::Docker(op))
        }
        _ => None,
    }
}

/// A stored task status; a damaged value reads as failed rather than as running forever.
pub(crate) fn status(text: &str) -> TaskStatus {
    TaskStatus::parse(text).unwrap_or(TaskStatus::Failed)
}

/// A stored report status.
pub(crate) fn report_status(text: &str) -> ReportStatus {
    ReportStatus::ALL
        .into_iter()
        .find(|s| s.as_str() == text)
        .unwrap_or(ReportStatus::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_survive_the_round_trip() {
        let specs = [
            TaskSpec::Shell {
                cmd: "echo 'a b' \"c\"".into(),
                env: vec![("K".into(), "v=1".into())],
                working_dir: Some("/tmp".into()),
            },
            TaskSpec::Shell {
                cmd: "true".into(),
                env: vec![],
                working_dir: None,
            },
            TaskSpec::Docker(DockerOp::Run {
                image: "alpine".into(),
            }),
            TaskSpec::Docker(DockerOp::Logs { id: "c1".into() }),
        ];
        for spec in specs {
            assert_eq!(spec_from_json(&spec_json(&spec)).as_ref(), Some(&spec));
        }
        assert_eq!(spec_from_json("{not json"), None);
    }

    #[test]
    fn timestamps_keep_microseconds() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(time(micros(t)), t);
    }
}
