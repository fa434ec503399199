//! Server-Sent Events written straight onto the connection. tiny_http buffers a
//! streamed `Response` body, so a stream takes the connection's writer with
//! `Request::into_writer()`, writes its own HTTP/1.1 head, and then writes every
//! event as one chunk (`{len:x}\r\n{event}\r\n`) followed by a flush, so each event
//! leaves the process the moment it is sent; `finish` writes the `0\r\n\r\n`
//! terminator. The `SseWriter` is owned by the one thread streaming to that client
//! (normally the worker that accepted the request, or a thread it hands the writer
//! to); it is `Send` but not shared. Write errors (client gone, or the socket send
//! timeout expired because the client stopped reading) come back as `io::Error` so
//! the caller can unsubscribe the client. The formatting functions are pure so they
//! can be unit-tested and benchmarked without a socket.
//!
//! Connection semantics: for HTTP/1.1 the body is chunked, so its end is explicit and
//! the connection may stay alive (tiny_http keeps parsing the next request on it and
//! orders that response after this writer is dropped); if the client sent
//! `Connection: close` we echo it. HTTP/1.0 has no chunking: events are written raw
//! with `Connection: close`, and the end of the stream is the connection closing,
//! which tiny_http does once this writer is dropped.

use std::io::{self, Write};

use tiny_http::Request;

use super::request::header;
use super::respond::valid_header;

/// The chunked-encoding terminator that ends a stream.
pub const CHUNK_TERMINATOR: &[u8] = b"0\r\n\r\n";

fn push_without(buf: &mut Vec<u8>, s: &str, banned: &[u8]) {
    buf.extend(s.bytes().filter(|b| !banned.contains(b)));
}

fn for_each_line(text: &str, mut f: impl FnMut(&str)) {
    // The SSE spec accepts CRLF, lone CR and lone LF as line ends.
    let mut rest = text;
    loop {
        match rest.find(['\r', '\n']) {
            Some(i) => {
                f(&rest[..i]);
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[i + skip..];
            }
            None => {
                f(rest);
                return;
            }
        }
    }
}

/// Appends one event to `buf`: optional `id:`, optional `event:` (omitted when empty,
/// meaning "message"), one `data:` line per line of `data`, and the blank line.
/// Line breaks (and NUL in ids) are stripped from `id`/`event` so they cannot inject
/// fields.
pub fn format_event_into(buf: &mut Vec<u8>, id: Option<&str>, event: &str, data: &str) {
    if let Some(id) = id {
        buf.extend_from_slice(b"id: ");
        push_without(buf, id, b"\r\n\0");
        buf.push(b'\n');
    }
    if !event.is_empty() {
        buf.extend_from_slice(b"event: ");
        push_without(buf, event, b"\r\n");
        buf.push(b'\n');
    }
    for_each_line(data, |line| {
        buf.extend_from_slice(b"data: ");
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
    });
    buf.push(b'\n');
}

/// One event as bytes (see `format_event_into`).
pub fn format_event(id: Option<&str>, event: &str, data: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(data.len() + 32);
    format_event_into(&mut buf, id, event, data);
    buf
}

/// Appends a comment (`: text` per line, then a blank line): ignored by clients, used
/// as a keep-alive that also detects departed clients.
pub fn format_comment_into(buf: &mut Vec<u8>, text: &str) {
    for_each_line(text, |line| {
        buf.push(b':');
        if !line.is_empty() {
            buf.push(b' ');
            buf.extend_from_slice(line.as_bytes());
        }
        buf.push(b'\n');
    });
    buf.push(b'\n');
}

/// A comment as bytes (see `format_comment_into`).
pub fn format_comment(text: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(text.len() + 4);
    format_comment_into(&mut buf, text);
    buf
}

/// The response head of an event stream; invalid extra headers are skipped.
pub fn response_head(chunked: bool, close: bool, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(if chunked {
        b"HTTP/1.1 200 OK\r\n".as_slice()
    } else {
        b"HTTP/1.0 200 OK\r\n".as_slice()
    });
    head.extend_from_slice(b"Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n");
    head.extend_from_slice(b"X-Accel-Buffering: no\r\n");
    if chunked {
        head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if close {
        head.extend_from_slice(b"Connection: close\r\n");
    }
    for (name, value) in extra {
        if valid_header(name, value) {
            let _ = write!(head, "{name}: {value}\r\n");
        } else {
            log::warn!("dropping invalid SSE header {name:?}");
        }
    }
    head.extend_from_slice(b"\r\n");
    head
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Finished,
    Failed,
}

/// An open event stream to one client; each call writes and flushes one event.
pub struct SseWriter<W: Write> {
    out: W,
    chunked: bool,
    state: State,
    payload: Vec<u8>,
}

impl SseWriter<Box<dyn Write + Send>> {
    /// Takes over the request's connection and sends the `200 text/event-stream` head.
    pub fn start(req: Request) -> io::Result<Self> {
        Self::start_with_headers(req, &[])
    }

    /// Like `start`, with extra response headers (e.g. CORS); unsafe ones are dropped.
    pub fn start_with_headers(req: Request, headers: &[(&str, &str)]) -> io::Result<Self> {
        let chunked = *req.http_version() >= (1, 1);
        let client_close =
            header(&req, "Connection").is_some_and(|v| v.to_ascii_lowercase().contains("close"));
        let head = response_head(chunked, !chunked || client_close, headers);
        let mut out = req.into_writer();
        out.write_all(&head)?;
        out.flush()?;
        Ok(SseWriter::new(out, chunked))
    }
}

impl<W: Write> SseWriter<W> {
    /// Wraps an already-started stream (head written); `chunked` selects the framing.
    /// Used by `start` and by tests/benchmarks writing into a `Vec<u8>`.
    pub fn new(out: W, chunked: bool) -> Self {
        SseWriter {
            out,
            chunked,
            state: State::Open,
            payload: Vec::with_capacity(256),
        }
    }

    /// Sends one event (data split into one `data:` line per line) and flushes it.
    pub fn send_event(&mut self, id: Option<&str>, event: &str, data: &str) -> io::Result<()> {
        self.payload.clear();
        format_event_into(&mut self.payload, id, event, data);
        self.write_payload()
    }

    /// Sends text already formatted as SSE events, in parts (e.g. slices of shared frames),
    /// as one chunk (`{len:x}\r\n{parts}\r\n`; nothing for empty text, as an empty chunk
    /// would end the body) and one flush, without copying the parts into a buffer of its own.
    pub fn send_text(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        self.check_open()?;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len == 0 {
            return Ok(());
        }
        let result = (|| {
            if self.chunked {
                write!(self.out, "{len:x}\r\n")?;
            }
            for part in parts {
                self.out.write_all(part)?;
            }
            if self.chunked {
                self.out.write_all(b"\r\n")?;
            }
            self.out.flush()
        })();
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    /// Sends a comment, e.g. `comment("keep-alive")`; a failure means the client left.
    pub fn comment(&mut self, text: &str) -> io::Result<()> {
        self.payload.clear();
        format_comment_into(&mut self.payload, text);
        self.write_payload()
    }

    /// Ends the stream cleanly (terminating chunk) and flushes.
    pub fn finish(mut self) -> io::Result<()> {
        self.end()
    }

    /// The writer this stream writes to (e.g. the `Vec<u8>` in a test).
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    fn check_open(&self) -> io::Result<()> {
        match self.state {
            State::Open => Ok(()),
            State::Finished => Err(io::Error::other("SSE stream finished")),
            State::Failed => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "SSE client gone (earlier write failed)",
            )),
        }
    }

    fn write_payload(&mut self) -> io::Result<()> {
        let payload = std::mem::take(&mut self.payload);
        let result = self.send_text(&[&payload]);
        self.payload = payload;
        result
    }

    fn end(&mut self) -> io::Result<()> {
        self.check_open()?;
        self.state = State::Finished;
        if self.chunked {
            self.out.write_all(CHUNK_TERMINATOR)?;
        }
        self.out.flush()
    }
}

impl<W: Write> Drop for SseWriter<W> {
    /// A stream dropped without `finish` (early return, panic) is still terminated so
    /// a keep-alive client does not wait for a chunk that never comes; best effort.
    fn drop(&mut self) {
        if self.state == State::Open {
            if let Err(e) = self.end() {
                log::debug!("could not terminate SSE stream: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: &[u8]) -> &str {
        std::str::from_utf8(b).expect("utf8")
    }

    #[test]
    fn text_in_parts_is_one_chunk() {
        let mut w = SseWriter::new(Vec::new(), true);
        w.send_text(&[b"data: a\n\n", b"data: bc\n\n"])
            .expect("write");
        w.send_text(&[b"", b""]).expect("nothing to write");
        assert_eq!(text(w.get_ref()), "13\r\ndata: a\n\ndata: bc\n\n\r\n");
        let mut raw = SseWriter::new(Vec::new(), false);
        raw.send_text(&[b"data: a\n\n"]).expect("write");
        assert_eq!(text(raw.get_ref()), "data: a\n\n");
    }

    #[test]
    fn single_line_event() {
        assert_eq!(
            text(&format_event(Some("7"), "status", "running")),
            "id: 7\nevent: status\ndata: running\n\n"
        );
        assert_eq!(text(&format_event(None, "", "x")), "data: x\n\n");
    }

    #[test]
    fn multi_line_data_becomes_several_data_lines() {
        assert_eq!(
            text(&format_event(None, "output", "a\nb\r\nc\rd")),
            "event: output\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        // A trailing newline is preserved as an empty last data line.
        assert_eq!(text(&format_event(None, "", "a\n")), "data: a\ndata: \n\n");
        // Empty data still yields one data line, so the event is dispatched.
        assert_eq!(
            text(&format_event(None, "ping", "")),
            "event: ping\ndata: \n\n"
        );
        // Leading spaces survive: only the single space after `data:` is stripped.
        assert_eq!(text(&format_event(None, "", "  x")), "data:   x\n\n");
    }

    #[test]
    fn id_and_event_cannot_inject_fields() {
        assert_eq!(
            text(&format_event(Some("1\ndata: evil\0"), "a\r\nb", "ok")),
            "id: 1data: evil\nevent: ab\ndata: ok\n\n"
        );
    }

    #[test]
    fn comments() {
        assert_eq!(text(&format_comment("keep-alive")), ": keep-alive\n\n");
        assert_eq!(text(&format_comment("a\nb")), ": a\n: b\n\n");
        assert_eq!(text(&format_comment("")), ":\n\n");
    }

    #[test]
    fn chunk_framing() {
        let chunk = |payload: &[u8]| {
            let mut w = SseWriter::new(Vec::new(), true);
            w.send_text(&[payload]).expect("write");
            w.get_ref().clone()
        };
        assert_eq!(chunk(b"hello"), b"5\r\nhello\r\n");
        assert_eq!(chunk(&[b'x'; 26])[..4], *b"1a\r\n");
        assert!(chunk(b"").is_empty());
    }

    #[test]
    fn head() {
        let h = String::from_utf8(response_head(
            true,
            false,
            &[("X-Id", "1"), ("Bad", "a\nb")],
        ))
        .expect("utf8");
        assert!(h.starts_with("HTTP/1.1 200 OK\r\n"));
        for line in [
            "Content-Type: text/event-stream\r\n",
            "Cache-Control: no-cache\r\n",
            "Transfer-Encoding: chunked\r\n",
            "X-Accel-Buffering: no\r\n",
            "X-Id: 1\r\n",
        ] {
            assert!(h.contains(line), "{line:?} in {h:?}");
        }
        assert!(!h.contains("Connection"));
        assert!(!h.contains("Bad"));
        assert!(h.ends_with("\r\n\r\n"));
        let h10 = String::from_utf8(response_head(false, true, &[])).expect("utf8");
        assert!(h10.contains("Connection: close\r\n") && !h10.contains("chunked"));
    }

    #[test]
    fn writer_frames_each_event_as_one_chunk() {
        let mut w = SseWriter::new(Vec::new(), true);
        w.send_event(Some("1"), "e", "a\nb").expect("write");
        w.comment("keep-alive").expect("write");
        let first = b"id: 1\nevent: e\ndata: a\ndata: b\n\n";
        let mut expected = b"20\r\n".to_vec();
        expected.extend_from_slice(first);
        expected.extend_from_slice(b"\r\ne\r\n: keep-alive\n\n\r\n");
        assert_eq!(w.get_ref(), &expected);
        expected.extend_from_slice(CHUNK_TERMINATOR);
        let mut sink = Vec::new();
        {
            let mut w = SseWriter::new(&mut sink, true);
            w.send_event(Some("1"), "e", "a\nb").expect("write");
            w.comment("keep-alive").expect("write");
            w.finish().expect("finish");
        }
        assert_eq!(sink, expected);
    }

    #[test]
    fn unchunked_mode_and_drop_terminates() {
        let mut sink = Vec::new();
        {
            let mut w = SseWriter::new(&mut sink, false);
            w.send_event(None, "", "x").expect("write");
        }
        assert_eq!(sink, b"data: x\n\n");
        let mut sink = Vec::new();
        drop(SseWriter::new(&mut sink, true));
        assert_eq!(sink, CHUNK_TERMINATOR);
    }

    #[test]
    fn write_errors_surface_and_stick() {
        struct Gone;
        impl Write for Gone {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = SseWriter::new(Gone, true);
        assert!(w.send_event(None, "", "x").is_err());
        let again = w.comment("keep-alive").expect_err("still failed");
        assert_eq!(again.kind(), io::ErrorKind::BrokenPipe);
        assert!(w.finish().is_err());
    }
}
