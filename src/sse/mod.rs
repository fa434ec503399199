//! Server-Sent Events fan-out: the hub that routes task events to stream clients. The HTTP
//! side of streams (framing, writer threads) lives in `api::stream` and `http::sse`.

mod hub;

pub use hub::{HubError, SseHub, Subscription};
