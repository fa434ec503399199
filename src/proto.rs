//! The agent protocol of `proto/nodelink.proto`, generated at build time by `build.rs`.
//! Only the agent link (`link/`), the agent (`agent/`) and the load generator use these types;
//! the task manager speaks its own.

/// Messages of package `pb`.
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unused_results,
    unused_mut,
    trivial_casts
)]
pub mod nodelink {
    include!(concat!(env!("OUT_DIR"), "/nodelink.rs"));
}

/// grpcio glue of `pb.AgentService`: method descriptors, client, service trait.
#[allow(clippy::all)]
pub mod nodelink_grpc {
    include!(concat!(env!("OUT_DIR"), "/grpc_glue.rs"));
}

pub use nodelink::*;
pub use nodelink_grpc::*;
