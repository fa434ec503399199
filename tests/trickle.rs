//! Clients that send a byte at a time: a refused request's body or a request head trickled
//! just under the socket timeout must hold neither a worker nor a connection thread past a
//! bounded deadline, so the REST API keeps answering and SIGTERM still stops the server.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use support::{wait_until, Server, ServerOpts, API_TOKEN};

/// The server's `--http-timeout`: every single read may wait this long.
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);
/// A trickler sends its next byte this often, well inside `HTTP_TIMEOUT`.
const PACE: Duration = Duration::from_millis(200);
/// How long a trickler keeps going if the server never cuts it off.
const TRICKLE_FOR: Duration = Duration::from_secs(20);

fn server() -> Server {
    Server::start_with(ServerOpts {
        extra: vec![
            "--http-timeout".into(),
            format!("{}s", HTTP_TIMEOUT.as_secs()),
            "--http-workers".into(),
            "8".into(),
        ],
        ..ServerOpts::default()
    })
}

/// What became of one trickling connection.
#[derive(Debug)]
struct Outcome {
    /// The status of the answer the server sent, if any.
    status: Option<u16>,
    /// When the server ended the connection, counted from the first byte sent.
    closed_after: Option<Duration>,
}

/// A client that sends `bytes` one at a time every `PACE`, reading whatever the server
/// answers in between, until the server closes the connection, `stop` is set or
/// `TRICKLE_FOR` has passed.
struct Trickler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Outcome>,
}

impl Trickler {
    fn start(
        addr: &str,
        head: &[u8],
        bytes: impl Iterator<Item = u8> + Send + 'static,
        answered: Arc<AtomicUsize>,
    ) -> Trickler {
        let stop = Arc::new(AtomicBool::new(false));
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(PACE)).expect("timeout");
        s.set_write_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(head).expect("write head");
        let flag = stop.clone();
        let handle = thread::spawn(move || trickle(s, bytes, &flag, &answered));
        Trickler { stop, handle }
    }

    fn finish(self) -> Outcome {
        self.stop.store(true, Ordering::Release);
        self.handle.join().expect("trickler thread")
    }
}

fn trickle(
    mut s: TcpStream,
    bytes: impl Iterator<Item = u8>,
    stop: &AtomicBool,
    answered: &AtomicUsize,
) -> Outcome {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut status = None;
    let mut buf = [0u8; 4096];
    for byte in bytes {
        if stop.load(Ordering::Acquire) || started.elapsed() > TRICKLE_FOR {
            break;
        }
        let closed = s.write_all(&[byte]).is_err()
            // Waiting for the next byte's turn is a read, so an answer or a close is seen.
            || match s.read(&mut buf) {
                Ok(0) => true,
                Ok(n) => {
                    received.extend_from_slice(&buf[..n]);
                    false
                }
                Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            };
        if status.is_none() {
            status = parse_status(&received);
            if status.is_some() {
                answered.fetch_add(1, Ordering::AcqRel);
            }
        }
        if closed {
            return Outcome {
                status,
                closed_after: Some(started.elapsed()),
            };
        }
    }
    Outcome {
        status,
        closed_after: None,
    }
}

fn parse_status(received: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(received).ok()?;
    let line = text
        .split("\r\n")
        .next()
        .filter(|_| text.contains("\r\n"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A POST declaring a body far over `--max-body-bytes`, refused before it is read: 401
/// without the token, 413 with it.
fn refused_post(with_token: bool) -> Vec<u8> {
    let auth = if with_token {
        format!("Authorization: Bearer {API_TOKEN}\r\n")
    } else {
        String::new()
    };
    format!(
        "POST /tasks/shell HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: 1000000000\r\n\r\n"
    )
    .into_bytes()
}

/// A request head that never ends: a request line, then one header growing by a byte
/// each step (well under the header size limit for the length of the test).
fn endless_head() -> impl Iterator<Item = u8> + Send + 'static {
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "
        .to_vec()
        .into_iter()
        .chain(std::iter::repeat(b'a'))
}

/// The status of `GET path` if the whole answer arrives within `limit`.
fn answer_within(addr: &str, path: &str, token: Option<&str>, limit: Duration) -> Option<u16> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(limit)).ok()?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let status = parse_status(&out)?;
    (started.elapsed() <= limit).then_some(status)
}

#[test]
fn trickling_clients_hold_neither_the_rest_api_nor_shutdown() {
    let mut server = server();
    let answered = Arc::new(AtomicUsize::new(0));
    // Ten refused bodies: more than the eight workers, each of which used to drain one.
    let mut tricklers: Vec<Trickler> = (0..10)
        .map(|i| {
            Trickler::start(
                &server.http,
                &refused_post(i % 2 == 0),
                std::iter::repeat(b'x'),
                answered.clone(),
            )
        })
        .collect();
    // Six request heads sent a byte at a time.
    tricklers.extend(
        (0..6).map(|_| Trickler::start(&server.http, b"", endless_head(), answered.clone())),
    );

    // Every refusal has been sent, so every worker has handled one refused request (or,
    // with eight workers pinned, eight have).
    wait_until("refusals answered", Duration::from_secs(10), || {
        answered.load(Ordering::Acquire) >= 8
    });
    let second = Duration::from_secs(1);
    assert_eq!(
        answer_within(&server.http, "/healthz", None, second),
        Some(200),
        "/healthz must answer within a second while clients trickle"
    );
    assert_eq!(
        answer_within(&server.http, "/tasks", Some(API_TOKEN), second),
        Some(200),
        "an authenticated GET must answer within a second while clients trickle"
    );

    // Shutdown with the tricklers still connected.
    server.proc.signal(libc::SIGTERM);
    let code = server.proc.wait_exit(Duration::from_secs(5));
    assert_eq!(
        code,
        Some(0),
        "SIGTERM must end the server within its grace; log:\n{}",
        server.proc.log()
    );
    for t in tricklers {
        t.finish();
    }
}

#[test]
fn a_trickled_head_or_refused_body_is_cut_off_at_a_deadline() {
    let server = server();
    let answered = Arc::new(AtomicUsize::new(0));
    let head = Trickler::start(&server.http, b"", endless_head(), answered.clone());
    let unauthorized = Trickler::start(
        &server.http,
        &refused_post(false),
        std::iter::repeat(b'x'),
        answered.clone(),
    );
    let too_large = Trickler::start(
        &server.http,
        &refused_post(true),
        std::iter::repeat(b'x'),
        answered.clone(),
    );

    // Each trickler runs until the server closes its connection (or TRICKLE_FOR passes).
    let head = head.handle.join().expect("head trickler");
    let unauthorized = unauthorized.handle.join().expect("body trickler");
    let too_large = too_large.handle.join().expect("body trickler");

    // The head gets the whole request timeout, not one timeout per byte.
    let bound = HTTP_TIMEOUT * 2;
    assert_eq!(head.status, Some(408), "{head:?}");
    assert!(head.closed_after.is_some_and(|t| t < bound), "{head:?}");
    // A refused body is skipped for a bounded time, then the connection is closed.
    assert_eq!(unauthorized.status, Some(401), "{unauthorized:?}");
    assert!(
        unauthorized.closed_after.is_some_and(|t| t < bound),
        "{unauthorized:?}"
    );
    assert_eq!(too_large.status, Some(413), "{too_large:?}");
    assert!(
        too_large.closed_after.is_some_and(|t| t < bound),
        "{too_large:?}"
    );
    // And the server still serves.
    assert_eq!(server.client().get("/healthz").status, 200);
}
