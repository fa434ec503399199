//! A small blocking HTTP/1.1 client over `std::net::TcpStream`, and a Server-Sent Events
//! reader. The load generator owns its client code so that what it measures is the server:
//! one keep-alive connection per client thread, `TCP_NODELAY`, each request written with one
//! `write` call, responses read with `Content-Length` or chunked framing, and no extra threads
//! or allocations per request beyond the body. It speaks only what the wire contract and
//! RFC 9112 say, so it can drive any compatible server.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

/// Largest response body accepted (retained task output can be several MiB).
const MAX_BODY: usize = 256 << 20;
/// Longest status or header line accepted.
const MAX_LINE: usize = 64 << 10;
/// Read buffers of an event stream (hundreds may be open at once).
const SSE_BUFFER: usize = 16 << 10;

/// Why a request failed.
#[derive(Debug)]
pub enum HttpError {
    /// Connecting, writing or reading failed (including timeouts).
    Io(io::Error),
    /// The server's answer was not valid HTTP/1.1 as we expect it.
    Protocol(String),
    /// An event stream was refused with this status code (and body).
    Status(u16, String),
}

impl HttpError {
    /// A short label for error tables: the status code, `io` or `protocol`.
    pub fn kind(&self) -> String {
        match self {
            HttpError::Io(e) if e.kind() == io::ErrorKind::WouldBlock => "timeout".into(),
            HttpError::Io(e) if e.kind() == io::ErrorKind::TimedOut => "timeout".into(),
            HttpError::Io(_) => "io".into(),
            HttpError::Protocol(_) => "protocol".into(),
            HttpError::Status(code, _) => code.to_string(),
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Io(e) => write!(f, "{e}"),
            HttpError::Protocol(m) => write!(f, "bad HTTP answer: {m}"),
            HttpError::Status(code, body) => write!(f, "status {code}: {body}"),
        }
    }
}

impl From<io::Error> for HttpError {
    fn from(e: io::Error) -> Self {
        HttpError::Io(e)
    }
}

fn protocol(m: impl Into<String>) -> HttpError {
    HttpError::Protocol(m.into())
}

/// A complete response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body bytes (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Where and how to connect: shared by every client of a run.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port` of the REST API.
    pub addr: String,
    /// Bearer token, if the server wants one.
    pub token: Option<String>,
    /// Connect, read and write timeout.
    pub timeout: Duration,
}

impl Target {
    fn connect(&self) -> Result<TcpStream, HttpError> {
        use std::net::ToSocketAddrs;
        let mut last = None;
        for a in self.addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, self.timeout) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(self.timeout))?;
                    s.set_write_timeout(Some(self.timeout))?;
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(HttpError::Io(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "address resolves to nothing")
        })))
    }

    fn write_head(&self, buf: &mut Vec<u8>, method: &str, path: &str, extra: &str) {
        buf.clear();
        let _ = write!(
            buf,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: nodelink-bench\r\n{extra}",
            self.addr
        );
        if let Some(t) = &self.token {
            let _ = write!(buf, "Authorization: Bearer {t}\r\n");
        }
    }
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// One keep-alive connection, reopened when the server closes it. Not shared: one per thread.
pub struct Client {
    target: Target,
    conn: Option<Conn>,
    out: Vec<u8>,
    line: String,
}

impl Client {
    /// A client that connects on first use.
    pub fn new(target: Target) -> Self {
        Client {
            target,
            conn: None,
            out: Vec::with_capacity(1024),
            line: String::with_capacity(256),
        }
    }

    /// `GET path`.
    pub fn get(&mut self, path: &str) -> Result<Response, HttpError> {
        self.request("GET", path, None)
    }

    /// `POST path` with a JSON body.
    pub fn post_json(&mut self, path: &str, body: &[u8]) -> Result<Response, HttpError> {
        self.request("POST", path, Some(body))
    }

    /// Sends one request and reads its response. On any error the connection is dropped, so
    /// the next request starts on a fresh one.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, HttpError> {
        let r = self.try_request(method, path, body);
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, HttpError> {
        if self.conn.is_none() {
            let s = self.target.connect()?;
            self.conn = Some(Conn {
                reader: BufReader::with_capacity(64 << 10, s.try_clone()?),
                writer: s,
            });
        }
        let extra = match body {
            Some(b) => format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ),
            None => String::new(),
        };
        self.target.write_head(&mut self.out, method, path, &extra);
        self.out.extend_from_slice(b"\r\n");
        if let Some(b) = body {
            self.out.extend_from_slice(b);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(protocol("no connection"));
        };
        conn.writer.write_all(&self.out)?;
        let head = read_head(&mut conn.reader, &mut self.line)?;
        let body = if method == "HEAD" || head.status == 204 || head.status == 304 {
            Vec::new()
        } else if head.chunked {
            let mut body = Vec::new();
            ChunkedReader::new(&mut conn.reader)
                .take(MAX_BODY as u64 + 1)
                .read_to_end(&mut body)?;
            body
        } else if let Some(n) = head.content_length {
            if n > MAX_BODY {
                return Err(protocol(format!("body of {n} bytes is too large")));
            }
            let mut body = vec![0; n];
            conn.reader.read_exact(&mut body)?;
            body
        } else {
            // Neither length nor chunking: the body ends when the server closes.
            let mut body = Vec::new();
            (&mut conn.reader)
                .take(MAX_BODY as u64 + 1)
                .read_to_end(&mut body)?;
            self.conn = None;
            body
        };
        if body.len() > MAX_BODY {
            return Err(protocol("body too large"));
        }
        if head.close {
            self.conn = None;
        }
        Ok(Response {
            status: head.status,
            body,
        })
    }
}

struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

fn read_line_bounded(r: &mut impl BufRead, line: &mut String) -> Result<(), HttpError> {
    line.clear();
    let n = r.take(MAX_LINE as u64).read_line(line)?;
    if n == 0 {
        return Err(HttpError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed by the server",
        )));
    }
    if !line.ends_with('\n') {
        return Err(protocol("line too long or cut short"));
    }
    Ok(())
}

fn read_head(r: &mut impl BufRead, line: &mut String) -> Result<Head, HttpError> {
    read_line_bounded(r, line)?;
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(protocol(format!("status line {:?}", line.trim_end())));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| protocol(format!("status line {:?}", line.trim_end())))?;
    let mut head = Head {
        status,
        content_length: None,
        chunked: false,
        close: version == "HTTP/1.0",
    };
    loop {
        read_line_bounded(r, line)?;
        let l = line.trim_end();
        if l.is_empty() {
            return Ok(head);
        }
        let Some((name, value)) = l.split_once(':') else {
            return Err(protocol(format!("header line {l:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(
                value
                    .parse()
                    .map_err(|_| protocol(format!("Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                head.close = true;
            } else if v.contains("keep-alive") {
                head.close = false;
            }
        }
    }
}

/// Decodes a chunked body from `inner`, stopping at the terminating zero-size chunk.
struct ChunkedReader<R> {
    inner: R,
    left: usize,
    done: bool,
    line: String,
}

impl<R: BufRead> ChunkedReader<R> {
    fn new(inner: R) -> Self {
        ChunkedReader {
            inner,
            left: 0,
            done: false,
            line: String::new(),
        }
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
        read_line_bounded(&mut self.inner, &mut self.line).map_err(into_io)?;
        let size = self.line.trim_end().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size.trim(), 16).map_err(|_| bad("chunk size"))?;
        if size == 0 {
            // Trailer section: lines up to an empty one.
            loop {
                read_line_bounded(&mut self.inner, &mut self.line).map_err(into_io)?;
                if self.line.trim_end().is_empty() {
                    break;
                }
            }
            self.done = true;
        }
        self.left = size;
        Ok(())
    }
}

fn into_io(e: HttpError) -> io::Error {
    match e {
        HttpError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

impl<R: BufRead> Read for ChunkedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            self.next_chunk()?;
            if self.done {
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stream ended inside a chunk",
            ));
        }
        self.left -= n;
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.inner.read_exact(&mut crlf)?;
            if &crlf != b"\r\n" {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "chunk not followed by CRLF",
                ));
            }
        }
        Ok(n)
    }
}

enum Body {
    Chunked(ChunkedReader<BufReader<TcpStream>>),
    Raw(BufReader<TcpStream>),
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Body::Chunked(c) => c.read(buf),
            Body::Raw(r) => r.read(buf),
        }
    }
}

/// One received Server-Sent Event; buffers are reused between events.
#[derive(Debug, Default)]
pub struct SseEvent {
    /// The `id:` field (empty if none).
    pub id: String,
    /// The `event:` field (empty means `message`).
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// An open event stream.
pub struct SseStream {
    reader: BufReader<Body>,
    socket: TcpStream,
    line: String,
}

impl SseStream {
    /// Opens `GET path` as an event stream; a non-200 answer is `HttpError::Status`.
    /// `read_timeout` bounds each wait for data (the server sends a keep-alive comment every
    /// 15 s, so use more than that to tell a silent server from an idle stream).
    pub fn open(
        target: &Target,
        path: &str,
        last_event_id: Option<&str>,
        read_timeout: Duration,
    ) -> Result<SseStream, HttpError> {
        let socket = target.connect()?;
        let mut out = Vec::with_capacity(256);
        let extra = match last_event_id {
            Some(id) => format!("Accept: text/event-stream\r\nLast-Event-ID: {id}\r\n"),
            None => "Accept: text/event-stream\r\n".to_string(),
        };
        target.write_head(&mut out, "GET", path, &extra);
        out.extend_from_slice(b"\r\n");
        (&socket).write_all(&out)?;
        let mut reader = BufReader::with_capacity(SSE_BUFFER, socket.try_clone()?);
        let mut line = String::new();
        let head = read_head(&mut reader, &mut line)?;
        if head.status != 200 {
            let mut body = Vec::new();
            if let Some(n) = head.content_length.filter(|&n| n <= MAX_LINE) {
                body.resize(n, 0);
                let _ = reader.read_exact(&mut body);
            }
            return Err(HttpError::Status(
                head.status,
                String::from_utf8_lossy(&body).into_owned(),
            ));
        }
        socket.set_read_timeout(Some(read_timeout))?;
        let body = if head.chunked {
            Body::Chunked(ChunkedReader::new(reader))
        } else {
            Body::Raw(reader)
        };
        Ok(SseStream {
            reader: BufReader::with_capacity(SSE_BUFFER, body),
            socket,
            line,
        })
    }

    /// A handle that can end the stream from another thread (`shutdown`), waking a reader
    /// blocked in [`SseStream::next_event`].
    pub fn closer(&self) -> io::Result<TcpStream> {
        self.socket.try_clone()
    }

    /// Reads the next event into `ev`; `Ok(false)` when the stream ended cleanly.
    pub fn next_event(&mut self, ev: &mut SseEvent) -> io::Result<bool> {
        ev.id.clear();
        ev.event.clear();
        ev.data.clear();
        let mut has_data = false;
        loop {
            self.line.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE as u64)
                .read_line(&mut self.line)?;
            if n == 0 {
                return Ok(false);
            }
            let l = self.line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if has_data || !ev.event.is_empty() {
                    return Ok(true);
                }
                continue;
            }
            if l.starts_with(':') {
                continue; // comment (keep-alive)
            }
            let (field, value) = match l.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (l, ""),
            };
            match field {
                "id" => {
                    ev.id.clear();
                    ev.id.push_str(value);
                }
                "event" => {
                    ev.event.clear();
                    ev.event.push_str(value);
                }
                "data" => {
                    if has_data {
                        ev.data.push('\n');
                    }
                    ev.data.push_str(value);
                    has_data = true;
                }
                _ => {}
            }
        }
    }
}

/// Ends a stream opened elsewhere (see [`SseStream::closer`]).
pub fn close(socket: &TcpStream) {
    let _ = socket.shutdown(Shutdown::Both);
}

/// The string value of `"key"` in a flat JSON object, without unescaping: enough for ids,
/// statuses and timestamps, and far cheaper than parsing every event of a busy stream.
pub fn json_str<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    // Walks the quotes rather than searching for `key` as a substring: a substring search
    // per event was a quarter of the load generator's time in `fanout`.
    let bytes = json.as_bytes();
    let key = key.as_bytes();
    let mut from = 0;
    while let Some(q) = bytes[from..].iter().position(|&b| b == b'"') {
        let start = from + q + 1;
        from = start;
        let after = start + key.len();
        if !(bytes[start..].starts_with(key) && bytes.get(after) == Some(&b'"')) {
            continue;
        }
        let rest = json[after + 1..].trim_start();
        let Some(rest) = rest.strip_prefix(':') else {
            from = after + 1; // a string value equal to the key, not the key
            continue;
        };
        let rest = rest.trim_start().strip_prefix('"')?;
        let end = rest.find('"')?;
        return Some(&rest[..end]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_string_fields() {
        let j = r#"{"task_id":"abc","agent_id":"a1","status": "completed","ts":"2024-01-01T00:00:00.000001Z"}"#;
        assert_eq!(json_str(j, "task_id"), Some("abc"));
        assert_eq!(json_str(j, "status"), Some("completed"));
        assert_eq!(json_str(j, "ts"), Some("2024-01-01T00:00:00.000001Z"));
        assert_eq!(json_str(j, "id"), None);
        let tricky = r#"{"a":"ts","b" : "status","ts" : "x"}"#;
        assert_eq!(
            json_str(tricky, "ts"),
            Some("x"),
            "a value equal to the key is skipped"
        );
        assert_eq!(json_str(tricky, "status"), None);
        assert_eq!(json_str(tricky, "b"), Some("status"));
    }

    #[test]
    fn decodes_chunks() {
        let raw = b"5\r\nhello\r\n1;x=y\r\n!\r\n0\r\n\r\nNEXT";
        let mut r = ChunkedReader::new(&raw[..]);
        let mut out = String::new();
        r.read_to_string(&mut out).expect("decode");
        assert_eq!(out, "hello!");
    }
}
