//! The boundary between the task manager and durable history.
//!
//! The manager describes every change it makes as a [`Change`] and hands it to its
//! [`Journal`] while it still holds the registry lock, so the journal sees changes in their
//! real order. A journal that persists (the SQLite store in `crate::store`) commits them in
//! groups on its own thread and only then publishes the events to listeners and acknowledges
//! agent responses, so what a client or agent was told is always durable. Without a journal
//! the manager publishes at once (`--in-memory`). This module holds no SQL: the store
//! translates at its edge, as the agent link does for protobuf.

use std::sync::Arc;
use std::time::SystemTime;

use super::events::TaskEvent;
use super::model::{TaskFilter, TaskId, TaskSnapshot, TaskStatus};

/// Who asked for a state change, as the audit trail and the task record show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The API token's name (`"unauthenticated"` when no token was checked).
    pub actor: Arc<str>,
    /// The client's address.
    pub peer: Arc<str>,
}

impl Origin {
    /// An origin for changes the server makes itself (timeouts, restarts, tests).
    pub fn system() -> Self {
        Origin {
            actor: Arc::from("system"),
            peer: Arc::from(""),
        }
    }
}

/// One audit record: a state-changing request and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// When it was decided.
    pub at: SystemTime,
    /// Who asked.
    pub origin: Origin,
    /// What was asked (`task.create`, `task.cancel`).
    pub action: &'static str,
    /// What it was about (a task id).
    pub target: String,
    /// `ok`, or why it was refused.
    pub outcome: String,
}

/// What a status change writes to a task's record: only what can change after creation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskUpdate {
    /// The task.
    pub id: TaskId,
    /// Its new status.
    pub status: TaskStatus,
    /// When it changed.
    pub updated_at: SystemTime,
    /// When it became final.
    pub finished_at: Option<SystemTime>,
    /// The exit code, if reported.
    pub exit_code: Option<i32>,
    /// Why it failed, timed out or was cancelled.
    pub error: Option<Arc<str>>,
}

/// Something the manager changed, in the order it changed it.
#[derive(Clone, Debug)]
pub enum Change {
    /// A new task, before it is sent to its agent.
    Created {
        /// The task as created (no output).
        task: Box<TaskSnapshot>,
        /// Who created it.
        origin: Origin,
    },
    /// A task's status, exit code, error or timestamps changed.
    Updated(TaskUpdate),
    /// The retained output of a task was cut at its bound.
    Truncated {
        /// The task.
        task_id: TaskId,
        /// Whether stdout (else stderr) lost bytes.
        stdout: bool,
    },
    /// An event to store and then publish.
    Event(Arc<TaskEvent>),
    /// An agent response numbered `seq` by agent process `instance` was applied.
    AgentSeq {
        /// The agent.
        agent_id: Arc<str>,
        /// The agent process that numbered it.
        instance: Arc<str>,
        /// Its number.
        seq: u64,
    },
    /// A task was cancelled by a user.
    CancelledBy {
        /// The task.
        task_id: TaskId,
        /// Who cancelled it.
        origin: Origin,
    },
    /// An audit record.
    Audit(AuditEntry),
}

/// A position in the journal: everything appended up to it is durable once it is.
pub type Ticket = u64;

/// Why durable history cannot take or give what was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "storage unavailable: {}", self.0)
    }
}

/// One page of task history, newest first.
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// The tasks, without output.
    pub tasks: Vec<TaskSnapshot>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// An unfinished task as the journal last recorded it, to be taken up again after a restart.
#[derive(Debug)]
pub struct Reloaded {
    /// The task as stored (no output).
    pub task: TaskSnapshot,
    /// Its stored events, oldest first, from which its output and history are rebuilt.
    pub events: Vec<TaskEvent>,
}

/// What the journal did with a group of changes once it was durable (or had to give up
/// waiting for that): the manager publishes the events and acknowledges agents.
pub type AfterCommit = Box<dyn Fn(Committed) + Send + Sync>;

/// An agent process: the agent's id and the instance name it announced.
pub type AgentProcess = (Arc<str>, Arc<str>);

/// A committed group, handed to [`AfterCommit`].
#[derive(Debug, Default)]
pub struct Committed {
    /// Events to publish, in order.
    pub events: Vec<Arc<TaskEvent>>,
    /// The highest durable response number per agent process.
    pub acks: Vec<(AgentProcess, u64)>,
}

/// Durable history: records changes in order and answers for what left memory.
pub trait Journal: Send + Sync {
    /// Appends changes in order. Never blocks: called under the registry lock.
    fn append(&self, changes: Vec<Change>) -> Ticket;
    /// Waits until everything up to `ticket` is durable.
    fn wait_durable(&self, ticket: Ticket) -> Result<(), Unavailable>;
    /// Waits while the journal is too far behind; called before taking any lock.
    fn throttle(&self);
    /// Whether new work is accepted now (the disk is writable).
    fn available(&self) -> Result<(), Unavailable>;
    /// A task with its retained output, from durable history.
    fn task(&self, id: TaskId) -> Result<Option<TaskSnapshot>, Unavailable>;
    /// A page of tasks, newest first.
    fn list(&self, filter: &TaskFilter) -> Result<Page, Unavailable>;
    /// A task's stored events after `after`, and whether it was final.
    fn events(&self, id: TaskId, after: u64)
        -> Result<Option<(Vec<TaskEvent>, bool)>, Unavailable>;
    /// Stored events of every task after event number `after`, in order, at most `limit`.
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<TaskEvent>, Unavailable>;
    /// The highest response number stored for an agent process (0: none).
    fn agent_seq(&self, agent_id: &str, instance: &str) -> u64;
    /// Unfinished tasks to take up after a restart.
    fn unfinished(&self) -> Result<Vec<Reloaded>, Unavailable>;
    /// The highest event number ever stored, so numbering continues after a restart.
    fn last_global_seq(&self) -> u64;
    /// Sets what runs after each commit; called once when the manager starts.
    fn on_commit(&self, after: AfterCommit);
    /// Commits what is queued and stops the writer.
    fn shutdown(&self);
}
