//! The task manager's own vocabulary: what a task asks for, the statuses it moves through, and
//! what an agent reports back. Nothing here knows about protobuf, gRPC or HTTP: the agent link
//! and the REST layer translate at their edges, so the manager can be tested on its own.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use uuid::Uuid;

/// Tasks are named by random UUIDs so ids never collide across restarts or servers.
pub type TaskId = Uuid;

/// What a task asks an agent to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskSpec {
    /// A command line run by the agent's shell.
    Shell {
        /// The command line, passed to `sh -c`.
        cmd: String,
        /// Extra environment variables (extension; old agents ignore them).
        env: Vec<(String, String)>,
        /// Working directory (extension; old agents ignore it).
        working_dir: Option<String>,
    },
    /// One Docker CLI operation.
    Docker(DockerOp),
}

impl TaskSpec {
    /// The kind label used in metrics and listings: `shell` or `docker`.
    pub fn kind(&self) -> &'static str {
        match self {
            TaskSpec::Shell { .. } => "shell",
            TaskSpec::Docker(_) => "docker",
        }
    }
}

/// A Docker operation; the agent passes the argument as one argv entry, never through a shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DockerOp {
    /// `docker run IMAGE`.
    Run {
        /// Image to run.
        image: String,
    },
    /// `docker start ID`.
    Start {
        /// Container id or name.
        id: String,
    },
    /// `docker stop ID`.
    Stop {
        /// Container id or name.
        id: String,
    },
    /// `docker logs ID`.
    Logs {
        /// Container id or name.
        id: String,
    },
}

impl DockerOp {
    /// The REST name of the operation (`run`, `start`, `stop`, `logs`).
    pub fn name(&self) -> &'static str {
        match self {
            DockerOp::Run { .. } => "run",
            DockerOp::Start { .. } => "start",
            DockerOp::Stop { .. } => "stop",
            DockerOp::Logs { .. } => "logs",
        }
    }

    /// The image (for run) or container id (for the others).
    pub fn argument(&self) -> &str {
        match self {
            DockerOp::Run { image } => image,
            DockerOp::Start { id } | DockerOp::Stop { id } | DockerOp::Logs { id } => id,
        }
    }
}

/// Where a task is in its life; the strings are the wire contract's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    /// Registered, not yet handed to the agent link.
    Created,
    /// Handed to the agent's stream.
    Sent,
    /// The agent has reported progress.
    InProgress,
    /// The agent reported the command's end (any exit code).
    Completed,
    /// The command could not run, or the agent was lost.
    Failed,
    /// The deadline passed before the agent finished.
    Timeout,
    /// A user (or the agent, on request) cancelled it.
    Cancelled,
}

impl TaskStatus {
    /// Every status, for tables and tests.
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Created,
        TaskStatus::Sent,
        TaskStatus::InProgress,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Timeout,
        TaskStatus::Cancelled,
    ];

    /// The wire-contract string.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Created => "created",
            TaskStatus::Sent => "sent",
            TaskStatus::InProgress => "in_progress",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Timeout => "timeout",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a wire-contract string (for list filters).
    pub fn parse(s: &str) -> Option<TaskStatus> {
        TaskStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Final states never change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed
                | TaskStatus::Failed
                | TaskStatus::Timeout
                | TaskStatus::Cancelled
        )
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status an agent puts on a response (the protocol's `TaskResponse.Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportStatus {
    /// Status 0: an agent bug; the response is ignored as malformed.
    Unknown,
    /// The command ended (final) or a step finished (non-final).
    Completed,
    /// The command could not run.
    Failure,
    /// Output while the command runs.
    InProgress,
}

impl ReportStatus {
    /// Every report status, for tables and tests.
    pub const ALL: [ReportStatus; 4] = [
        ReportStatus::Unknown,
        ReportStatus::Completed,
        ReportStatus::Failure,
        ReportStatus::InProgress,
    ];

    /// The protocol's enum name, as SSE `response` events show it.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportStatus::Unknown => "UNKNOWN",
            ReportStatus::Completed => "COMPLETED",
            ReportStatus::Failure => "FAILURE",
            ReportStatus::InProgress => "IN_PROGRESS",
        }
    }
}

/// One response from an agent, translated by the agent link. `agent_id` is the authenticated
/// identity of the stream it came on, never a claim from the message itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentReport {
    /// The authenticated agent that sent it.
    pub agent_id: Arc<str>,
    /// The task id as the agent sent it (may be garbage; checked by the manager).
    pub task_id: String,
    /// The agent's status for this response.
    pub status: ReportStatus,
    /// Whether this is the last response of the task.
    pub is_final: bool,
    /// Whether the agent says the task was cancelled.
    pub cancelled: bool,
    /// A chunk of standard output.
    pub stdout: String,
    /// A chunk of standard error.
    pub stderr: String,
    /// The exit code, present on a final shell response.
    pub exit_code: Option<i32>,
    /// The agent's acknowledgement text for a cancel.
    pub cancel_message: Option<String>,
    /// The agent process that numbered it (agents that announce acknowledgements).
    pub instance: Option<Arc<str>>,
    /// Its number within that process, from 1; 0 when unnumbered (original agents).
    pub seq: u64,
}

impl AgentReport {
    /// An empty report, for building in tests and translations.
    pub fn new(agent_id: Arc<str>, task_id: String, status: ReportStatus) -> Self {
        AgentReport {
            agent_id,
            task_id,
            status,
            is_final: false,
            cancelled: false,
            stdout: String::new(),
            stderr: String::new(),
            exit_code: None,
            cancel_message: None,
            instance: None,
            seq: 0,
        }
    }
}

/// What goes down to an agent: the manager's side of the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentCommand {
    /// Run a task.
    Run {
        /// The task.
        task_id: TaskId,
        /// What to run.
        spec: TaskSpec,
    },
    /// Stop a task (user cancel or timeout).
    Cancel {
        /// The task.
        task_id: TaskId,
        /// Why (`cancelled by user`, `timeout`).
        reason: String,
    },
}

/// Immutable view of a task for readers (REST, tests); never shares mutable state.
#[derive(Clone, Debug)]
pub struct TaskSnapshot {
    /// The task's id.
    pub id: TaskId,
    /// The agent that runs it.
    pub agent_id: Arc<str>,
    /// What it runs.
    pub spec: TaskSpec,
    /// Its status at the time of the snapshot.
    pub status: TaskStatus,
    /// When it was registered.
    pub created_at: SystemTime,
    /// When its status or output last changed.
    pub updated_at: SystemTime,
    /// When it reached a final state.
    pub finished_at: Option<SystemTime>,
    /// Its deadline, counted from creation.
    pub timeout: Duration,
    /// The command's exit code, when the agent reported one.
    pub exit_code: Option<i32>,
    /// Why it failed, timed out or was cancelled.
    pub error: Option<String>,
    /// The name of the API token that created it.
    pub created_by: Option<String>,
    /// The address it was created from.
    pub created_from: Option<String>,
    /// The name of the API token that cancelled it.
    pub cancelled_by: Option<String>,
    /// Retained output; `None` in list snapshots.
    pub output: Option<OutputSnapshot>,
}

/// Retained output of a task: the newest bytes of each stream up to the configured bound.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputSnapshot {
    /// Standard output (newest bytes).
    pub stdout: String,
    /// Standard error (newest bytes).
    pub stderr: String,
    /// Whether older stdout bytes were dropped.
    pub stdout_truncated: bool,
    /// Whether older stderr bytes were dropped.
    pub stderr_truncated: bool,
}

/// Filters for listing tasks; all optional.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// Only tasks of this agent.
    pub agent_id: Option<String>,
    /// At most this many, newest first: [`TaskFilter::DEFAULT_LIMIT`] when not given, and
    /// refused above [`TaskFilter::MAX_LIMIT`].
    pub limit: Option<usize>,
    /// Only tasks created at or after this time.
    pub since: Option<SystemTime>,
    /// Only tasks created before this time.
    pub until: Option<SystemTime>,
    /// Where a page starts: the `next_cursor` of the page before.
    pub cursor: Option<String>,
}

impl TaskFilter {
    /// Tasks one listing returns when no limit is given.
    pub const DEFAULT_LIMIT: usize = 100;
    /// Most tasks one listing may return: a listing is built under the registry's read lock.
    pub const MAX_LIMIT: usize = 1000;

    /// The limit in effect.
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(Self::DEFAULT_LIMIT)
    }
}
