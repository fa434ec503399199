//! JSON shapes of the REST API and of SSE event data: the one place that turns the task
//! manager's snapshots and events into the wire contract's field names.

use std::io::Write;
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

/// The SSE event name and `data:` of an event: what the hub formats into frames.
pub fn event_sse(e: &TaskEvent) -> (&'static str, String) {
    (event_name(e), event_data(e))
}

/// The SSE `data:` of an event, as one line of JSON (keys in sorted order, as
/// `serde_json::Value` writes them). Written directly rather than through a `Value`: output
/// events carry up to a chunk of text each, and copying it into a map first doubled the cost
/// of the busiest path of a stream.
pub fn event_data(e: &TaskEvent) -> String {
    let mut out = Vec::with_capacity(e.text_len() + 192);
    out.extend_from_slice(b"{\"agent_id\":");
    push_json_str(&mut out, &e.agent_id);
    match &e.kind {
        EventKind::Status { status, reason } => {
            out.extend_from_slice(b",\"reason\":");
            match reason {
                Some(r) => push_json_str(&mut out, r),
                None => out.extend_from_slice(b"null"),
            }
            push_seq_status(&mut out, e.task_seq, status.as_str());
        }
        EventKind::Output {
            status,
            is_final,
            cancelled,
            stdout,
            stderr,
            exit_code,
        } => {
            let _ = write!(out, ",\"cancelled\":{cancelled},\"exit_code\":");
            match exit_code {
                Some(c) => {
                    let _ = write!(out, "{c}");
                }
                None => out.extend_from_slice(b"null"),
            }
            let _ = write!(out, ",\"is_final\":{is_final}");
            push_seq_status(&mut out, e.task_seq, status.as_str());
            out.extend_from_slice(b",\"stderr\":");
            push_json_str(&mut out, stderr);
            out.extend_from_slice(b",\"stdout\":");
            push_json_str(&mut out, stdout);
        }
    }
    let _ = write!(
        out,
        ",\"task_id\":\"{}\",\"ts\":\"{}\"}}",
        e.task_id,
        humantime::format_rfc3339_micros(e.at)
    );
    // Only JSON text and valid UTF-8 strings went in.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn push_seq_status(out: &mut Vec<u8>, seq: u64, status: &str) {
    let _ = write!(out, ",\"seq\":{seq},\"status\":");
    push_json_str(out, status);
}

/// Appends `s` as a JSON string literal, escaped as serde_json escapes it.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{ReportStatus, TaskStatus};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    /// The original encoding through `serde_json::Value`, kept as the reference.
    fn event_data_via_value(e: &TaskEvent) -> String {
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

    fn event(kind: EventKind) -> TaskEvent {
        TaskEvent {
            global_seq: 9,
            task_seq: 4,
            task_id: crate::tasks::TaskId::new_v4(),
            agent_id: Arc::from("agent \"q\" \u{1}"),
            at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            kind,
        }
    }

    #[test]
    fn event_json_is_what_a_value_would_write() {
        let events = [
            event(EventKind::Status {
                status: TaskStatus::Failed,
                reason: Some(Arc::from("agent disconnected\n\t\u{7f}é")),
            }),
            event(EventKind::Status {
                status: TaskStatus::Sent,
                reason: None,
            }),
            event(EventKind::Output {
                status: ReportStatus::InProgress,
                is_final: false,
                cancelled: false,
                stdout: "line \"1\"\r\n\\ \u{0} \u{1f600}\n".into(),
                stderr: String::new(),
                exit_code: None,
            }),
            event(EventKind::Output {
                status: ReportStatus::Completed,
                is_final: true,
                cancelled: true,
                stdout: String::new(),
                stderr: "oops".into(),
                exit_code: Some(-9),
            }),
        ];
        for e in &events {
            let direct = event_data(e);
            assert_eq!(direct, event_data_via_value(e));
            let parsed: Value = serde_json::from_str(&direct).expect("valid JSON");
            assert_eq!(parsed["seq"], 4);
        }
    }
}
