//! nodelink: an orchestrator that sends shell and Docker tasks to remote agents over gRPC
//! and streams their results back to REST and Server-Sent Events clients.
//!
//! Start with `ARCHITECTURE.md` at the repository root: it maps the threads, the channels
//! between them and the module that owns each behaviour.

#![warn(missing_docs)]

pub mod agent;
pub mod api;
pub mod cli;
pub mod http;
pub mod limits;
pub mod link;
pub mod metrics;
pub mod proto;
pub mod secrets;
pub mod server;
pub mod sse;
pub mod tasks;
pub mod timer;
pub mod tls;
