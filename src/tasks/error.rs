//! The task manager's error type. The REST layer maps each variant to one HTTP status in
//! `http::errors`; nothing here knows about HTTP.

use std::fmt;

use super::model::{TaskId, TaskStatus};

/// Why a task operation was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskError {
    /// The request is not valid (which field and why).
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The agent has no open stream; the task was recorded as failed.
    AgentNotConnected {
        /// The agent that was asked for.
        agent_id: String,
        /// The failed task, queryable like any other.
        task_id: TaskId,
    },
    /// No task has this id (never existed, or cleaned up).
    NotFound(TaskId),
    /// The task is already in a final state.
    AlreadyFinished {
        /// The task.
        task_id: TaskId,
        /// Its final status.
        status: TaskStatus,
    },
    /// The registry holds `max_tasks` unfinished tasks; nothing can be evicted.
    RegistryFull {
        /// The configured bound.
        max_tasks: usize,
    },
    /// The manager is stopping.
    ShuttingDown,
    /// Durable history cannot be written (disk full, read-only, failing).
    StorageUnavailable {
        /// What the store said.
        reason: String,
        /// The task that was recorded as failed, if one was created.
        task_id: Option<TaskId>,
    },
}

impl From<super::journal::Unavailable> for TaskError {
    fn from(e: super::journal::Unavailable) -> Self {
        TaskError::StorageUnavailable {
            reason: e.0,
            task_id: None,
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Invalid { field, reason } => write!(f, "invalid `{field}`: {reason}"),
            TaskError::AgentNotConnected { agent_id, .. } => {
                write!(f, "agent `{agent_id}` is not connected")
            }
            TaskError::NotFound(id) => write!(f, "task {id} not found"),
            TaskError::AlreadyFinished { task_id, status } => {
                write!(f, "task {task_id} already finished ({status})")
            }
            TaskError::RegistryFull { max_tasks } => write!(
                f,
                "task registry is full ({max_tasks} unfinished tasks); retry when some finish"
            ),
            TaskError::ShuttingDown => write!(f, "the server is shutting down"),
            TaskError::StorageUnavailable { reason, .. } => {
                write!(f, "storage unavailable: {reason}")
            }
        }
    }
}

impl std::error::Error for TaskError {}
