//! The REST API and Server-Sent Events endpoints of the wire contract, served by tiny_http
//! worker threads (`http::HttpServer`). `routes` is the table (also checked against
//! docs/openapi.yaml), `body` turns request bodies into task requests, `handlers` answers REST
//! calls, `stream` runs event streams on their own writer threads, `json` holds the JSON shapes,
//! `errors` maps errors to statuses and `server` runs it all. The types of `fields`, `body` and
//! `json` are the contract: `schema` generates docs/openapi.yaml's schemas from them.
//!
//! `routes`, `fields`, `body`, `json`, `schema` and `errors` need no gRPC and are built without
//! the `grpc` feature, so the fuzz target `rest_body` runs the very parsing code the handlers
//! run.

pub mod body;
mod errors;
pub mod fields;
#[cfg(feature = "grpc")]
mod handlers;
pub mod json;
mod routes;
pub mod schema;
#[cfg(feature = "grpc")]
mod server;
#[cfg(feature = "grpc")]
mod stream;

pub use routes::{Route, ROUTES};
#[cfg(feature = "grpc")]
pub use server::{ApiServer, ApiState};
