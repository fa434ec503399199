//! JSON shapes of the REST API and of SSE event data: serde-derived types that turn the task
//! manager's snapshots and events into the wire contract's field names, and that generate
//! docs/openapi.yaml's response and event schemas (`api::schema`), so what the server writes
//! and what the document says come from one definition.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::fields::{seconds, DockerOperation};
#[cfg(feature = "grpc")]
use crate::link::AgentInfo;
use crate::tasks::{
    DockerOp, EventKind, ReportStatus, TaskEvent, TaskId, TaskSnapshot, TaskSpec, TaskStatus,
};

/// RFC 3339 with millisecond precision, UTC, as the contract's timestamps are.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// RFC 3339 with microseconds, for event times used to measure delivery lag.
pub fn rfc3339_micros(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// Turns a response type into the JSON the handlers send.
pub fn to_value<T: Serialize>(body: &T) -> Value {
    // Every type here has string keys and finite numbers: encoding cannot fail.
    serde_json::to_value(body).unwrap_or(Value::Null)
}

/// A task's status name (`TaskStatus::as_str`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Status(&'static str);

impl From<TaskStatus> for Status {
    fn from(s: TaskStatus) -> Self {
        Status(s.as_str())
    }
}

impl JsonSchema for Status {
    fn schema_name() -> Cow<'static, str> {
        "Status".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = TaskStatus::ALL.iter().map(|s| s.as_str()).collect();
        json_schema!({ "type": "string", "enum": names })
    }
}

/// The status an agent gave a response (`ReportStatus::as_str`, the protocol's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ReportStatusName(&'static str);

impl JsonSchema for ReportStatusName {
    fn schema_name() -> Cow<'static, str> {
        "ReportStatus".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = ReportStatus::ALL.iter().map(|s| s.as_str()).collect();
        json_schema!({ "type": "string", "enum": names })
    }
}

/// A point in time, RFC 3339 in UTC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Timestamp(String);

impl Timestamp {
    fn millis(t: SystemTime) -> Self {
        Timestamp(rfc3339(t))
    }
}

impl JsonSchema for Timestamp {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "date-time" })
    }
}

/// A task id, a UUID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TaskIdText(String);

impl From<TaskId> for TaskIdText {
    fn from(id: TaskId) -> Self {
        TaskIdText(id.to_string())
    }
}

impl JsonSchema for TaskIdText {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "TaskId".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "uuid" })
    }
}

/// A duration in seconds: an integer when whole, else a fraction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seconds(Duration);

impl Serialize for Seconds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        seconds(self.0).serialize(s)
    }
}

impl JsonSchema for Seconds {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Seconds".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "number", "description": "seconds" })
    }
}

/// What kind of task: `shell` or `docker` (`TaskSpec::kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TaskType(&'static str);

impl JsonSchema for TaskType {
    fn schema_name() -> Cow<'static, str> {
        "TaskType".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "enum": ["shell", "docker"] })
    }
}

impl From<&TaskSpec> for TaskType {
    fn from(spec: &TaskSpec) -> Self {
        TaskType(spec.kind())
    }
}

/// What a task runs, as its creation request stated it.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
#[schemars(rename = "TaskRequest")]
pub enum TaskRequest<'a> {
    /// A shell command.
    Shell {
        /// The command line.
        cmd: &'a str,
        /// Extra environment variables, when any were given.
        #[serde(skip_serializing_if = "Option::is_none")]
        env: Option<BTreeMap<&'a str, &'a str>>,
        /// The directory it starts in, when one was given.
        #[serde(skip_serializing_if = "Option::is_none")]
        working_dir: Option<&'a str>,
    },
    /// A Docker operation.
    Docker {
        /// The Docker CLI operation.
        #[schemars(with = "DockerOperation")]
        operation: &'static str,
        /// The image (`run`).
        #[serde(skip_serializing_if = "Option::is_none")]
        image: Option<&'a str>,
        /// The container (`start`, `stop`, `logs`).
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
}

impl<'a> From<&'a TaskSpec> for TaskRequest<'a> {
    fn from(spec: &'a TaskSpec) -> Self {
        match spec {
            TaskSpec::Shell {
                cmd,
                env,
                working_dir,
            } => TaskRequest::Shell {
                cmd,
                env: (!env.is_empty())
                    .then(|| env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()),
                working_dir: working_dir.as_deref(),
            },
            TaskSpec::Docker(op) => {
                let (image, id) = match op {
                    DockerOp::Run { image } => (Some(image.as_str()), None),
                    DockerOp::Start { id } | DockerOp::Stop { id } | DockerOp::Logs { id } => {
                        (None, Some(id.as_str()))
                    }
                };
                TaskRequest::Docker {
                    operation: op.name(),
                    image,
                    id,
                }
            }
        }
    }
}

/// The request part of a task: what it runs.
pub fn spec_json(spec: &TaskSpec) -> Value {
    to_value(&TaskRequest::from(spec))
}

/// The answer to a task creation.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Created<'a> {
    /// The new task's id.
    pub task_id: TaskIdText,
    /// The agent it was sent to.
    pub agent_id: &'a str,
    /// `sent`, or `failed` when the agent could not take it.
    pub status: Status,
    /// When it was registered.
    pub created_at: Timestamp,
}

impl<'a> From<&'a TaskSnapshot> for Created<'a> {
    fn from(t: &'a TaskSnapshot) -> Self {
        Created {
            task_id: t.id.into(),
            agent_id: &t.agent_id,
            status: t.status.into(),
            created_at: Timestamp::millis(t.created_at),
        }
    }
}

/// The answer to a task creation (the original's fields).
pub fn created_json(t: &TaskSnapshot) -> Value {
    to_value(&Created::from(t))
}

/// One entry of a task list: the original's fields plus what users need to triage.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskSummary<'a> {
    /// The task's id.
    pub task_id: TaskIdText,
    /// The agent that runs it.
    pub agent_id: &'a str,
    /// Where it is in its life.
    pub status: Status,
    /// When it was registered.
    pub created_at: Timestamp,
    /// When its status or output last changed.
    pub updated_at: Timestamp,
    /// When it reached a final status.
    pub finished_at: Option<Timestamp>,
    /// The command's exit code, when the agent reported one.
    pub exit_code: Option<i32>,
    /// What kind of task it is.
    #[serde(rename = "type")]
    pub task_type: TaskType,
}

impl<'a> From<&'a TaskSnapshot> for TaskSummary<'a> {
    fn from(t: &'a TaskSnapshot) -> Self {
        TaskSummary {
            task_id: t.id.into(),
            agent_id: &t.agent_id,
            status: t.status.into(),
            created_at: Timestamp::millis(t.created_at),
            updated_at: Timestamp::millis(t.updated_at),
            finished_at: t.finished_at.map(Timestamp::millis),
            exit_code: t.exit_code,
            task_type: (&t.spec).into(),
        }
    }
}

/// The answer to `GET /tasks`: newest first.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskList<'a> {
    /// The tasks that match, newest first.
    pub tasks: Vec<TaskSummary<'a>>,
    /// Pass as `cursor` for the next page; null on the last page. Opaque.
    pub next_cursor: Option<&'a str>,
}

/// The answer to `GET /agents/{id}/tasks`: newest first.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AgentTaskList<'a> {
    /// The agent.
    pub agent_id: &'a str,
    /// Its tasks that match, newest first.
    pub tasks: Vec<TaskSummary<'a>>,
    /// Pass as `cursor` for the next page; null on the last page. Opaque.
    pub next_cursor: Option<&'a str>,
}

/// A whole task, with its request and retained output.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskDetail<'a> {
    /// The task's id.
    pub task_id: TaskIdText,
    /// The agent that runs it.
    pub agent_id: &'a str,
    /// Where it is in its life.
    pub status: Status,
    /// When it was registered.
    pub created_at: Timestamp,
    /// When its status or output last changed.
    pub updated_at: Timestamp,
    /// When it reached a final status.
    pub finished_at: Option<Timestamp>,
    /// Its deadline in seconds, counted from creation.
    pub timeout: Seconds,
    /// The command's exit code, when the agent reported one.
    pub exit_code: Option<i32>,
    /// Why it failed, timed out or was cancelled.
    pub error: Option<&'a str>,
    /// What it runs.
    pub request: TaskRequest<'a>,
    /// Standard output: the newest bytes, up to the retention bound.
    pub stdout: &'a str,
    /// Standard error: the newest bytes, up to the retention bound.
    pub stderr: &'a str,
    /// Whether older standard output was dropped.
    pub stdout_truncated: bool,
    /// Whether older standard error was dropped.
    pub stderr_truncated: bool,
    /// The name of the API token that created it (null for tasks the server made itself).
    pub created_by: Option<&'a str>,
    /// The name of the API token that cancelled it, if one did.
    pub cancelled_by: Option<&'a str>,
}

impl<'a> From<&'a TaskSnapshot> for TaskDetail<'a> {
    fn from(t: &'a TaskSnapshot) -> Self {
        let out = t.output.as_ref();
        TaskDetail {
            task_id: t.id.into(),
            agent_id: &t.agent_id,
            status: t.status.into(),
            created_at: Timestamp::millis(t.created_at),
            updated_at: Timestamp::millis(t.updated_at),
            finished_at: t.finished_at.map(Timestamp::millis),
            timeout: Seconds(t.timeout),
            exit_code: t.exit_code,
            error: t.error.as_deref(),
            request: (&t.spec).into(),
            stdout: out.map_or("", |o| &o.stdout),
            stderr: out.map_or("", |o| &o.stderr),
            stdout_truncated: out.is_some_and(|o| o.stdout_truncated),
            stderr_truncated: out.is_some_and(|o| o.stderr_truncated),
            created_by: t.created_by.as_deref(),
            cancelled_by: t.cancelled_by.as_deref(),
        }
    }
}

/// A whole task, with its request and retained output.
pub fn detail_json(t: &TaskSnapshot) -> Value {
    to_value(&TaskDetail::from(t))
}

/// The answer to `DELETE /tasks/{id}`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Cancelled {
    /// `Task cancelled successfully`.
    pub message: &'static str,
    /// The task.
    pub task_id: TaskIdText,
    /// Its status now: `cancelled`.
    pub status: Status,
}

impl From<&TaskSnapshot> for Cancelled {
    fn from(t: &TaskSnapshot) -> Self {
        Cancelled {
            message: "Task cancelled successfully",
            task_id: t.id.into(),
            status: t.status.into(),
        }
    }
}

/// A connected agent.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Agent<'a> {
    /// Its id.
    pub agent_id: &'a str,
    /// When its current stream opened.
    pub connected_since: Timestamp,
    /// Its address as gRPC reports it (e.g. `ipv4:127.0.0.1:50312`).
    pub peer: &'a str,
    /// Its unfinished tasks.
    pub running_tasks: usize,
}

#[cfg(feature = "grpc")]
impl<'a> Agent<'a> {
    /// An agent of the directory, with its count of unfinished tasks.
    pub fn from_info(a: &'a AgentInfo, running_tasks: usize) -> Self {
        Agent {
            agent_id: &a.agent_id,
            connected_since: Timestamp::millis(a.connected_at),
            peer: &a.peer,
            running_tasks,
        }
    }
}

/// The answer to `GET /agents`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AgentList<'a> {
    /// The agents with an open stream.
    pub agents: Vec<Agent<'a>>,
}

/// The answer to `GET /healthz`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Health {
    /// Always `ok`.
    #[schemars(extend("enum" = ["ok"]))]
    pub status: &'static str,
}

/// The answer to `GET /readyz` when ready.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Ready {
    /// Always `ready`.
    #[schemars(extend("enum" = ["ready"]))]
    pub status: &'static str,
}

/// The body of every error answer (written by `http::ApiError::to_json`).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Error")]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// Structured facts about it (the field, the limit, the allowed methods), or null.
    pub details: Option<Map<String, Value>>,
}

/// The data of a `status` event: a task changed status.
#[derive(Debug, Serialize, JsonSchema)]
pub struct StatusEvent<'a> {
    /// The agent that runs the task.
    pub agent_id: &'a str,
    /// Why it failed, timed out or was cancelled.
    pub reason: Option<&'a str>,
    /// The event's position among the task's events, from 1.
    pub seq: u64,
    /// The new status.
    pub status: Status,
    /// The task.
    pub task_id: TaskIdText,
    /// When the server recorded it (microseconds).
    pub ts: Timestamp,
}

/// The data of a `response` event: what an agent reported for a task.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ResponseEvent<'a> {
    /// The agent that runs the task.
    pub agent_id: &'a str,
    /// Whether the agent says the task was cancelled.
    pub cancelled: bool,
    /// The exit code, on a final response.
    pub exit_code: Option<i32>,
    /// Whether this is the agent's last response for the task.
    pub is_final: bool,
    /// The event's position among the task's events, from 1.
    pub seq: u64,
    /// The response's status, in the protocol's names.
    pub status: ReportStatusName,
    /// A chunk of standard error.
    pub stderr: &'a str,
    /// A chunk of standard output.
    pub stdout: &'a str,
    /// The task.
    pub task_id: TaskIdText,
    /// When the server recorded it (microseconds).
    pub ts: Timestamp,
}

/// The `data:` of a `gap` event on the global stream: event ids `from` to `to` (inclusive)
/// this stream will never deliver; the client should reload what it shows.
#[derive(Debug, Serialize, JsonSchema)]
pub struct GapEvent {
    /// The first missing event id.
    #[schemars(range(min = 1))]
    pub from: u64,
    /// The last missing event id (also the event's own `id:`).
    #[schemars(range(min = 1))]
    pub to: u64,
    /// How many ids are missing.
    #[schemars(range(min = 1))]
    pub missed: u64,
}

/// The data of the `shutdown` event that ends every stream when the server stops.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ShutdownEvent {
    /// `server shutting down`.
    pub reason: &'static str,
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
    use crate::http::ApiError;
    use std::sync::Arc;

    /// The derived event types: what the document describes.
    fn event_data_via_types(e: &TaskEvent) -> String {
        let task_id = TaskIdText::from(e.task_id);
        let ts = Timestamp(rfc3339_micros(e.at));
        match &e.kind {
            EventKind::Status { status, reason } => serde_json::to_string(&StatusEvent {
                agent_id: &e.agent_id,
                reason: reason.as_deref(),
                seq: e.task_seq,
                status: (*status).into(),
                task_id,
                ts,
            }),
            EventKind::Output {
                status,
                is_final,
                cancelled,
                stdout,
                stderr,
                exit_code,
            } => serde_json::to_string(&ResponseEvent {
                agent_id: &e.agent_id,
                cancelled: *cancelled,
                exit_code: *exit_code,
                is_final: *is_final,
                seq: e.task_seq,
                status: ReportStatusName(status.as_str()),
                stderr,
                stdout,
                task_id,
                ts,
            }),
        }
        .expect("an event encodes")
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
    fn event_json_is_what_the_event_types_write() {
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
            assert_eq!(direct, event_data_via_types(e));
            let parsed: Value = serde_json::from_str(&direct).expect("valid JSON");
            assert_eq!(parsed["seq"], 4);
        }
    }

    #[test]
    fn error_answers_have_the_documented_shape() {
        let errors = [
            ApiError::bad_request("x"),
            ApiError::method_not_allowed(&["GET"]),
            ApiError::payload_too_large(3),
        ];
        for e in errors {
            let body: ErrorBody = serde_json::from_value(e.to_json()).expect("ErrorBody");
            assert_eq!(body.error, e.message());
        }
    }

    #[test]
    fn durations_are_integers_when_whole() {
        assert_eq!(
            to_value(&Seconds(Duration::from_secs(300))),
            serde_json::json!(300)
        );
        assert_eq!(
            to_value(&Seconds(Duration::from_millis(2500))),
            serde_json::json!(2.5)
        );
    }
}
