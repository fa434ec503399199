//! nodelink: an orchestrator that sends shell and Docker tasks to remote agents over gRPC
//! and streams their results back to REST and Server-Sent Events clients.
//!
//! Start with `ARCHITECTURE.md` at the repository root: it maps the threads, the channels
//! between them and the module that owns each behaviour.
//!
//! The `grpc` feature (on by default) brings the agent link and everything that needs it: the
//! server, the agent, metrics and the REST handlers. Without it the crate is the gRPC-free
//! core that the fuzz targets in `fuzz/` link: tasks, timer, HTTP plumbing (with HTTPS), SSE
//! hub, limits and the parsing of request bodies (`api::body`).

#![warn(missing_docs)]

#[cfg(feature = "grpc")]
pub mod agent;
pub mod api;
pub mod cli;
pub mod http;
pub mod limits;
#[cfg(feature = "grpc")]
pub mod link;
#[cfg(feature = "grpc")]
pub mod metrics;
#[cfg(feature = "grpc")]
pub mod proto;
pub mod secrets;
#[cfg(feature = "grpc")]
pub mod server;
pub mod sse;
#[cfg(feature = "grpc")]
pub mod store;
pub mod tasks;
pub mod timer;
pub mod tls;
