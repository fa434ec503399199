//! Generic HTTP plumbing for nodelink's REST API and Server-Sent Events, built on
//! tiny_http's blocking server: error-to-status mapping (`error`), a data-only route
//! table (`router`), request-reading helpers (`request`), JSON responses (`respond`),
//! hand-framed SSE streams (`sse`) and the worker-pool wrapper with socket timeouts
//! (`server`). Nothing here knows about tasks; the callers own the route table and
//! handlers. Everything is synchronous: worker threads call handlers directly.

/// Failures as HTTP statuses with a JSON body; the only place statuses are chosen.
pub mod error;
/// Reading and validating what the client sent (body, JSON, query, auth, headers).
pub mod request;
/// Sending JSON and error responses without caring whether the client is still there.
pub mod respond;
/// The enumerable route table and path matching (404 / 405 + `Allow`).
pub mod router;
/// The tiny_http wrapper: worker pool, panic isolation, socket timeouts, shutdown.
pub mod server;
/// Server-Sent Events written chunk by chunk on the raw connection.
pub mod sse;

#[cfg(test)]
mod tests;

pub use error::ApiError;
pub use router::{Params, RouteMatch, RouteSpec, Router};
pub use server::{Handler, HttpConfig, HttpServer};
pub use sse::SseWriter;
