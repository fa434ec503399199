//! The task manager: the registry of tasks, their lifecycle, the response thread, timeouts,
//! cancellation, clean-up and events (`../shared/spec/task-manager.md`).
//!
//! It speaks only its own types (`model`): the agent link turns protobuf into
//! [`AgentReport`]s and implements [`AgentGateway`]; the REST layer calls [`TaskManager`]
//! methods. Threads: callers (HTTP workers) create and cancel tasks; one response thread
//! applies agent responses in arrival order; the timer thread fires timeouts, clean-ups and
//! disconnect grace periods; each listener has its own thread.

mod config;
mod error;
mod events;
mod gateway;
mod journal;
mod manager;
mod model;
mod output;
mod registry;
mod response_thread;
mod stats;
pub mod transition;

pub use config::ManagerConfig;
pub use error::TaskError;
pub use events::{Coalesce, Delivery, EventKind, Listener, TaskEvent};
pub use gateway::{AgentGateway, GatewayError};
pub use journal::{
    AfterCommit, AgentProcess, AuditEntry, Change, Committed, Journal, Origin, Page, Reloaded,
    TaskUpdate, Ticket, Unavailable,
};
pub use manager::{Replay, TaskManager};
pub use model::{
    AgentCommand, AgentReport, DockerOp, OutputSnapshot, ReportStatus, TaskFilter, TaskId,
    TaskSnapshot, TaskSpec, TaskStatus,
};
pub use registry::parse_cursor as parse_memory_cursor;
pub use response_thread::ReportSink;
pub use stats::{DurationHistogram, Stats, DURATION_BUCKETS};
