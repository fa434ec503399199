use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{HTTPVersion, Method};
use crate::limits::{self, Deadlines, Limits, ServerCounters};
use crate::util::read_clock::UNKNOWN_LENGTH;
use crate::util::{ReadClock, RefinedTcpStream};
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // nodelink patch: bounds on the request line and header section, and their counters
    limits: Limits,
    counters: Arc<ServerCounters>,
    // nodelink patch: how long a request may take to arrive, and the clock that enforces it
    deadlines: Deadlines,
    clock: Option<Arc<ReadClock>>,
}

/// nodelink patch: after refusing an over-long request, read and discard at most this much
/// of what the client is still sending, for at most `LINGER_TIME`, before closing. Closing
/// with unread data makes the kernel send a reset, which can destroy the refusal before
/// the client reads it (the reason servers "linger" on close).
const LINGER_BYTES: usize = 256 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// nodelink patch: the request line is longer than `max_request_line_bytes`
    RequestLineTooLong,
    /// nodelink patch: the header section is larger than `max_header_bytes`
    HeadersTooLarge,
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    /// nodelink patch: the previous request left a body unread that could not be skipped
    /// within the bounds; where this request starts is unknown
    BodyLeftUnread,
    ReadIoError(IoError),
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(write_socket: RefinedTcpStream, read_socket: RefinedTcpStream) -> ClientConnection {
        Self::with_limits(
            write_socket,
            read_socket,
            Limits::default(),
            Deadlines::default(),
            Arc::new(ServerCounters::default()),
        )
    }

    /// nodelink patch: like `new`, refusing request lines and headers over `limits` and
    /// requests that take longer than `deadlines` to arrive.
    pub(crate) fn with_limits(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        limits: Limits,
        deadlines: Deadlines,
        counters: Arc<ServerCounters>,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();
        let clock = read_socket.clock();

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            limits,
            counters,
            deadlines,
            clock,
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    ///
    /// nodelink patch: `Ok(None)` once the line is longer than `max` bytes (without its
    /// CRLF); reading stops there. Upstream kept reading a line of any length into memory.
    /// With `starts_request`, the request-head deadline starts at the line's first byte.
    fn read_next_line(
        &mut self,
        max: usize,
        starts_request: bool,
    ) -> IoResult<Option<AsciiString>> {
        let mut buf = Vec::new();
        let mut prev_byte_was_cr = false;

        loop {
            let byte = self.next_header_source.by_ref().bytes().next();

            let byte = match byte {
                Some(b) => b?,
                None => return Err(IoError::new(ErrorKind::ConnectionAborted, "Unexpected EOF")),
            };
            if starts_request && buf.is_empty() && !prev_byte_was_cr {
                if let Some(clock) = &self.clock {
                    clock.set_deadline(self.deadlines.request_head);
                }
            }

            if byte == b'\n' && prev_byte_was_cr {
                buf.pop(); // removing the '\r'
                if buf.len() > max {
                    return Ok(None);
                }
                return AsciiString::from_ascii(buf)
                    .map(Some)
                    .map_err(|_| IoError::new(ErrorKind::InvalidInput, "Header is not in ASCII"));
            }

            prev_byte_was_cr = byte == b'\r';

            buf.push(byte);
            // One more byte than `max` may be the CR of a line of exactly `max` bytes.
            if buf.len() > max.saturating_add(1) {
                return Ok(None);
            }
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        // nodelink patch: first what the previous request left of its body.
        if !self.skip_unread_body() {
            return Err(ReadError::BodyLeftUnread);
        }
        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                let line = self
                    .read_next_line(self.limits.max_request_line_bytes, true)
                    .map_err(ReadError::ReadIoError)?
                    .ok_or(ReadError::RequestLineTooLong)?;

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                // Every header line counts with its CRLF; the blank line that ends them doesn't.
                let mut budget = self.limits.max_header_bytes;
                loop {
                    let line = self
                        .read_next_line(budget.saturating_sub(2), false)
                        .map_err(ReadError::ReadIoError)?
                        .ok_or(ReadError::HeadersTooLarge)?;

                    if line.is_empty() {
                        break;
                    };
                    budget = budget.saturating_sub(line.len() + 2);
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            *self.remote_addr.as_ref().unwrap(),
            data_source,
            writer,
            self.clock.clone(),
            self.deadlines.request_body,
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
            }
        })?;
        // nodelink patch: the head (and a small body) are in; the body's own deadline, if
        // any, starts at its first read.
        if let Some(clock) = &self.clock {
            clock.set_deadline(None);
        }

        // return the request
        Ok(request)
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        loop {
            let rq = match self.read() {
                Err(ReadError::WrongRequestLine) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::RequestLineTooLong) => {
                    self.counters.count_request_line_too_long();
                    let max = self.limits.max_request_line_bytes;
                    self.refuse(414, "request line", max);
                    return None;
                }

                Err(ReadError::HeadersTooLarge) => {
                    self.counters.count_headers_too_large();
                    let max = self.limits.max_header_bytes;
                    self.refuse(431, "request header section", max);
                    return None;
                }

                Err(ReadError::WrongHeader(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response.raw_print(writer, ver, &[], false, None).ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::ReadIoError(ref err)) if err.kind() == ErrorKind::TimedOut => {
                    // nodelink patch: a JSON 408 that says how long the client had, then a
                    // linger so the answer is not lost to a reset; upstream sent an empty 408.
                    let body = match self.deadlines.request_head {
                        Some(limit) => limits::timeout_body(limit),
                        None => limits::timeout_body(Duration::ZERO),
                    };
                    self.answer_and_close(408, &body);
                    return None; // closing the connection
                }

                Err(ReadError::BodyLeftUnread) => return None,

                Err(ReadError::ExpectationFailed(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(417));
                    response.raw_print(writer, ver, &[], true, None).ok();
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                Err(ReadError::ReadIoError(_)) => return None,

                Ok(rq) => rq,
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                let writer = self.sink.next().unwrap();
                let response = Response::from_string(
                    "This server only supports HTTP versions 1.0 and 1.1".to_owned(),
                )
                .with_status_code(StatusCode(505));
                response
                    .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                    .ok();
                continue;
            }

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // returning the request
            return Some(rq);
        }
    }
}

impl ClientConnection {
    /// nodelink patch: answers a request over a limit with `code` and a JSON error, then
    /// lingers (see `LINGER_BYTES`) so the answer is not lost to a reset. The connection
    /// is closed afterwards: where the next request would start is unknown.
    fn refuse(&mut self, code: u16, message: &str, limit: usize) {
        self.answer_and_close(code, &limits::error_body(message, limit));
    }

    /// nodelink patch: answers `code` with a JSON `body` and `Connection: close`, then
    /// lingers (see `LINGER_BYTES`).
    fn answer_and_close(&mut self, code: u16, body: &str) {
        use crate::StatusCode;
        use std::io::Write;

        // Written by hand: `Response` drops a `Connection` header set by the caller.
        let answer = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{}",
            code,
            StatusCode(code).default_reason_phrase(),
            body.len(),
            body
        );
        let Some(mut writer) = self.sink.next() else {
            return;
        };
        if writer
            .write_all(answer.as_bytes())
            .and_then(|()| writer.flush())
            .is_err()
        {
            return;
        }
        drop(writer);
        self.linger();
    }

    /// nodelink patch: sends our FIN, then reads and discards what the client still sends,
    /// at most `LINGER_BYTES` for at most `LINGER_TIME`, so that closing with unread data
    /// (which makes the kernel send a reset) does not destroy an answer the client has not
    /// read yet.
    fn linger(&mut self) {
        // A client that reads the answer then closes, ending the drain.
        if let Some(reader) = self.next_header_source.current_mut() {
            let _ = reader.get_mut().shutdown_write();
        }
        self.discard(LINGER_BYTES, LINGER_TIME);
    }

    /// nodelink patch: reads and throws away up to `bytes` bytes for at most `time` (each
    /// read is bounded by the connection's clock, or, without one, by the socket's read
    /// timeout and a check between reads); returns how many were read before the end of
    /// the stream, an error or the deadline.
    fn discard(&mut self, bytes: usize, time: Duration) -> usize {
        if let Some(clock) = &self.clock {
            clock.set_deadline(Some(time));
        }
        let started = Instant::now();
        let mut done = 0;
        let mut buf = [0u8; 8192];
        while done < bytes && started.elapsed() < time {
            let want = (bytes - done).min(buf.len());
            match self.next_header_source.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => done += n,
            }
        }
        if let Some(clock) = &self.clock {
            clock.set_deadline(None);
        }
        done
    }

    /// nodelink patch: before reading a request, skips the rest of the previous request's
    /// body that its handler did not read (`EqualReader` reports it to the clock when the
    /// request is dropped). Upstream read that rest on the thread that dropped the request,
    /// for as long as the client kept sending, so a client trickling a huge refused body
    /// held a worker of the embedding server for good. Here the connection's own thread
    /// skips at most `skip_bytes` within `skip_time`; a larger, chunked or slower rest
    /// closes the connection (after a linger for the answer). Returns whether the
    /// connection can go on.
    fn skip_unread_body(&mut self) -> bool {
        let Some(clock) = self.clock.clone() else {
            return true;
        };
        // Wait until the previous request is dropped: only then is its unread rest known.
        if self.next_header_source.turn().is_none() {
            return false;
        }
        let unread = clock.take_unread();
        if unread == 0 {
            return true;
        }
        if unread != UNKNOWN_LENGTH && unread <= self.deadlines.skip_bytes {
            let time = self.deadlines.skip_time.unwrap_or(Duration::MAX);
            return self.discard(unread, time) == unread;
        }
        self.linger();
        false
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}
