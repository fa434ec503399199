//! Server-Sent Events fan-out: the hub that routes task events to stream clients, as frames
//! formatted once per batch. The HTTP
//! side of streams (framing, writer threads) lives in `api::stream` and `http::sse`.

mod frame;
mod hub;

pub use frame::{EncodeEvent, Frame, IdKind};
pub use hub::{HubError, SseHub, Subscription};
