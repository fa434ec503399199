//! JSON shapes of the REST API and of SSE event data: the one place that turns the task
//! manager's snapshots and events into the wire contract's field names.

use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

#[cfg(feature = "grpc")]
use crate::link::AgentInfo;
use crate::tasks::{DockerOp, EventKind, TaskEvent, TaskSnapshot, TaskSpec};

/// RFC 3339 with millisecond precision, UTC, as the contract's timestamps are.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// RFC 3339 with microseconds, for event times used to measure delivery lag.
pub fn rfc3339_micros(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

fn secs(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        json!(d.as_secs())
    } else {
        json!(d.as_secs_f64())
    }
}

/// The request part of a task: what it runs.
pub fn spec_json(spec: &TaskSpec) -> Value {
    match spec {
        TaskSpec::Shell {
            cmd,
            env,
            working_dir,
        } => {
            let mut m = Map::new();
            m.insert("type".into(), json!("shell"));
            m.insert("cmd".into(), json!(cmd));
            if !env.is_empty() {
                let env: Map<String, Value> =
                    env.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                m.insert("env".into(), Value::Object(env));
            }
            if let Some(dir) = working_dir {
                m.insert("working_dir".into(), json!(dir));
            }
            Value::Object(m)
        }
        TaskSpec::Docker(op) => {
            let key = if matches!(op, DockerOp::Run { .. }) {
                "image"
            } else {
                "id"
            };
            json!({"type": "docker", "operation": op.name(), key: op.argument()})
        }
    }
}

/// The answer to a task creation (the original's fields).
pub fn created_json(t: &TaskSnapshot) -> Value {
    json!({
        "task_id": t.id.to_string(),
        "agent_id": &*t.agent_id,
        "status": t.status.as_str(),
        "created_at": rfc3339(t.created_at),
    })
}

/// One entry of a task list (the original's fields plus what users need to triage).
pub fn summary_json(t: &TaskSnapshot) -> Value {
    json!({
        "task_id": t.id.to_string(),
        "agent_id": &*t.agent_id,
        "status": t.status.as_str(),
        "created_at": rfc3339(t.created_at),
        "updated_at": rfc3339(t.updated_at),
        "finished_at": t.finished_at.map(rfc3339),
        "exit_code": t.exit_code,
        "type": t.spec.kind(),
    })
}

/// A whole task, with its request and retained output.
pub fn detail_json(t: &TaskSnapshot) -> Value {
    let mut v = json!({
        "task_id": t.id.to_string(),
        "agent_id": &*t.agent_id,
        "status": t.status.as_str(),
        "created_at": rfc3339(t.created_at),
        "updated_at": rfc3339(t.updated_at),
        "finished_at": t.finished_at.map(rfc3339),
        "timeout": secs(t.timeout),
        "exit_code": t.exit_code,
        "error": t.error,
        "request": spec_json(&t.spec),
    });
    if let (Some(out), Value::Object(m)) = (&t.output, &mut v) {
        m.insert("stdout".into(), json!(out.stdout));
        m.insert("stderr".into(), json!(out.stderr));
        m.insert("stdout_truncated".into(), json!(out.stdout_truncated));
        m.insert("stderr_truncated".into(), json!(out.stderr_truncated));
    }
    v
}

/// A connected agent.
#[cfg(feature = "grpc")]
pub fn agent_json(a: &AgentInfo, running: usize) -> Value {
    json!({
        "agent_id": &*a.agent_id,
        "connected_since": rfc3339(a.connected_at),
        "peer": a.peer,
        "running_tasks": running,
    })
}

/// The SSE event name of an event: `status` or `response`.
pub fn event_name(e: &TaskEvent) -> &'static str {
    match e.kind {
        EventKind::Status { .. } => "status",
        EventKind::Output { .. } => "response",
    }
}

/// The SSE `data:` of an event, as one line of JSON.
pub fn event_data(e: &TaskEvent) -> String {
    let v = match &e.kind {
        EventKind::Status { status, reason } => json!({
            "task_id": e.task_id.to_string(),
            "agent_id": &*e.agent_id,
            "seq": e.task_seq,
            "ts": rfc3339_micros(e.at),
            "status": status.as_str(),
            "reason": reason.as_deref(),
        }),
        EventKind::Output {
            status,
            is_final,
            cancelled,
            stdout,
            stderr,
            exit_code,
        } => json!({
            "task_id": e.task_id.to_string(),
            "agent_id": &*e.agent_id,
            "seq": e.task_seq,
            "ts": rfc3339_micros(e.at),
            "status": status.as_str(),
            "is_final": is_final,
            "cancelled": cancelled,
            "stdout": stdout,
            "stderr": stderr,
            "exit_code": exit_code,
        }),
    };
    v.to_string()
}
