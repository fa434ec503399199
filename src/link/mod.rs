//! The agent link: the gRPC server agents connect to. It authenticates agents, keeps the
//! directory of live sessions, translates protocol messages to and from the task manager's
//! types, and is the manager's [`AgentGateway`](crate::tasks::AgentGateway).

pub mod auth;
mod convert;
mod directory;
mod service;

pub use auth::{AgentTokens, TokenFileError};
pub use directory::{AgentDirectory, AgentInfo, TooManyAgents};
pub use service::AgentLink;
