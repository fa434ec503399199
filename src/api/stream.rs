//! `GET /stream`: Server-Sent Events. With `?ref={task_id}`, one task's events: first its
//! retained history after `Last-Event-ID` (ids are per-task sequence numbers), then live
//! events until the final status. Without `ref`, every task's events for dashboards: live,
//! with resumption from a bounded window (ids are global sequence numbers), and a `gap` event
//! wherever events are missing (see `sse::SseHub`).
//!
//! Each stream gets its own small writer thread that owns the connection, so HTTP workers
//! are never held by a stream. The writer waits on its bounded queue of frames from the hub
//! (events formatted once for every client, see `sse::Frame`), and writes everything queued
//! as one chunk, so under load a client costs one write per batch, not per event; when idle
//! for 15 s it writes a comment so proxies keep the connection, and so a client that went
//! away is noticed and its resources (writer thread, hub slot) released: within two such
//! intervals, as the first write after the client closed still succeeds.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;
use serde_json::json;
use tiny_http::{Method, Request, Response};

use super::json::{event_data, event_name};
use super::ApiState;
use crate::http::request::{last_event_id, Query};
use crate::http::{respond, ApiError, SseWriter};
use crate::sse::{Backlog, Frame, Subscription};
use crate::tasks::{TaskEvent, TaskId};

/// How long a stream may be silent before a keep-alive comment.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Most queued frames written as one chunk.
const FRAMES_PER_WRITE: usize = 64;
/// Bytes after which no further frame joins a write: bounds what one write holds up.
const BYTES_PER_WRITE: usize = 256 * 1024;
const WRITER_STACK: usize = 256 * 1024;

type Writer = SseWriter<Box<dyn std::io::Write + Send>>;

/// Answers `GET /stream`: starts a writer thread, or answers the error; returns the status.
pub fn serve(state: &ApiState, req: Request, query: &Query) -> u16 {
    let last = match last_event_id(&req).map(str::parse::<u64>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            let e = ApiError::bad_request(
                "Last-Event-ID must be an event id this server sent (a number)",
            );
            respond::error(req, &e);
            return e.status();
        }
    };
    let started = match query.get("ref") {
        Some(raw) => start_task_stream(state, raw, last),
        None => start_global_stream(state, last),
    };
    let (sub, backlog, mode) = match started {
        Ok(s) => s,
        Err(e) => {
            respond::error(req, &e);
            return e.status();
        }
    };
    if *req.method() == Method::Head {
        // HEAD (the router accepts it for every GET route) gets the stream's head and no
        // body: streaming events after it would be read as the connection's next response.
        drop(sub);
        respond::send(req, stream_head());
        return 200;
    }
    let hub = state.hub.clone();
    let spawned = std::thread::Builder::new()
        .name("nl-sse".into())
        .stack_size(WRITER_STACK)
        .spawn(move || {
            let writer = match SseWriter::start(req) {
                Ok(w) => w,
                Err(e) => {
                    log::debug!("event-stream client left before the stream began: {e}");
                    return;
                }
            };
            if let Err(e) = run(writer, sub, backlog, mode, &hub) {
                log::debug!("event-stream client left: {e}");
            }
        });
    match spawned {
        Ok(_) => 200,
        Err(e) => {
            // The request went down with the closure; tiny_http answers it with a 500.
            log::error!("cannot start an event-stream writer thread: {e}");
            500
        }
    }
}

/// The answer to `HEAD /stream`: the head a `GET` would get (chunked, no length), no body.
fn stream_head() -> Response<std::io::Empty> {
    let headers = [
        ("Content-Type", "text/event-stream"),
        ("Cache-Control", "no-cache"),
        ("X-Accel-Buffering", "no"),
    ];
    let headers = headers
        .iter()
        .filter_map(|(n, v)| respond::make_header(n, v))
        .collect();
    Response::new(
        tiny_http::StatusCode(200),
        headers,
        std::io::empty(),
        None,
        None,
    )
}

/// Which ids a stream shows, and whether it ends.
#[derive(Clone, Copy)]
enum Mode {
    /// One task: ids are per-task sequence numbers; ends after the final status (or at once
    /// when the task was already final when the history was read).
    Task { last_seq: u64, done: bool },
    /// Every task: ids are global sequence numbers; never ends by itself.
    Global { last_seq: u64 },
}

/// What a stream sends before live events.
enum History {
    /// A task's retained events after `Last-Event-ID`.
    Task(Vec<TaskEvent>),
    /// What a resuming global-stream client missed, gaps included.
    Global(Backlog),
}

type Started = (Subscription, History, Mode);

fn start_task_stream(state: &ApiState, raw: &str, last: Option<u64>) -> Result<Started, ApiError> {
    let id = TaskId::parse_str(raw).map_err(|_| {
        ApiError::not_found("task not found").with_details(json!({ "task_id": raw }))
    })?;
    // Subscribe before reading history: an event published in between arrives twice (the
    // writer skips it by sequence number) instead of never.
    let sub = state.hub.subscribe_task(id)?;
    let replay = state.manager.replay(id, last.unwrap_or(0))?;
    let last_seq = replay
        .events
        .last()
        .map_or(last.unwrap_or(0).min(replay.last_seq), |e| e.task_seq);
    Ok((
        sub,
        History::Task(replay.events),
        Mode::Task {
            last_seq,
            done: replay.finished,
        },
    ))
}

/// Most stored events a resuming global-stream client is given from durable history.
const HISTORY_BACKLOG: usize = 10_000;

fn start_global_stream(state: &ApiState, last: Option<u64>) -> Result<Started, ApiError> {
    let (sub, mut backlog, after) = state.hub.subscribe_all(last)?;
    // What the hub's window no longer (or, after a restart, never) held comes from durable
    // history; events that also arrive live are skipped by number.
    if let Some(last) = last {
        let first = backlog.first_event_id().unwrap_or(u64::MAX);
        if last.saturating_add(1) < first {
            let older: Vec<TaskEvent> = state
                .manager
                .history_after(last, HISTORY_BACKLOG)
                .into_iter()
                .filter(|e| e.global_seq < first)
                .collect();
            backlog.prepend_history(older);
        }
    }
    Ok((
        sub,
        History::Global(backlog),
        Mode::Global { last_seq: after },
    ))
}

fn write_event(w: &mut Writer, id: u64, e: &TaskEvent) -> std::io::Result<()> {
    w.send_event(Some(&id.to_string()), event_name(e), &event_data(e))
}

/// Whether a task stream ends with this frame (it holds the task's final status).
fn ends_stream(mode: Mode, frame: &Frame) -> bool {
    matches!(mode, Mode::Task { .. }) && frame.ends_task()
}

fn run(
    mut w: Writer,
    sub: Subscription,
    history: History,
    mode: Mode,
    hub: &crate::sse::SseHub,
) -> std::io::Result<()> {
    let mut last_seq = match mode {
        Mode::Task { last_seq, .. } | Mode::Global { last_seq } => last_seq,
    };
    match history {
        History::Task(events) => {
            for e in &events {
                write_event(&mut w, e.task_seq, e)?;
            }
        }
        History::Global(backlog) => {
            if let Some(frame) = backlog.into_frame() {
                if let Some((text, newest)) = frame.after(last_seq) {
                    w.send_text(&[text])?;
                    last_seq = newest;
                }
            }
        }
    }
    if let Mode::Task { done: true, .. } = mode {
        return w.finish();
    }
    // Frames to write now, each with the bytes at its start the client already has.
    let mut batch: Vec<(Arc<Frame>, usize)> = Vec::with_capacity(FRAMES_PER_WRITE);
    loop {
        match sub.events.recv_timeout(KEEPALIVE) {
            Ok(first) => {
                // Everything queued goes out as one chunk, written straight from the shared
                // frames; events the client already got from history are skipped.
                let mut ends = false;
                let mut bytes = 0;
                let mut next = Some(first);
                while let Some(frame) = next.take() {
                    ends = ends_stream(mode, &frame);
                    if let Some((text, newest)) = frame.after(last_seq) {
                        last_seq = newest;
                        bytes += text.len();
                        let skip = frame.len_bytes() - text.len();
                        batch.push((frame, skip));
                    }
                    if !ends && batch.len() < FRAMES_PER_WRITE && bytes < BYTES_PER_WRITE {
                        next = sub.events.try_recv().ok();
                    }
                }
                let parts: Vec<&[u8]> = batch.iter().map(|(f, skip)| f.bytes_from(*skip)).collect();
                let sent = w.send_text(&parts);
                drop(parts);
                batch.clear();
                sent?;
                if ends {
                    return w.finish();
                }
            }
            Err(RecvTimeoutError::Timeout) => w.comment("keep-alive")?,
            Err(RecvTimeoutError::Disconnected) => {
                if hub.is_shutting_down() {
                    w.send_event(None, "shutdown", r#"{"reason":"server shutting down"}"#)?;
                }
                // Otherwise the hub dropped this client for falling behind: ending the stream
                // makes the client reconnect with Last-Event-ID and catch up from history.
                return w.finish();
            }
        }
    }
}
