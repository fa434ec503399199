//! Server-Sent Events fan-out: the hub that routes task events to stream clients, as frames
//! formatted once per batch, and tells global-stream clients of the events it lost (`gap`).
//! The HTTP side of streams (framing, writer threads) lives in `api::stream` and `http::sse`.

mod frame;
mod hub;

pub use frame::{EncodeEvent, Frame, IdKind, Item};
pub use hub::{Backlog, Gap, HubError, SseHub, Subscription, GAP_EVENT};
