//! `HttpServer`: binds the listening socket, hands it to the vendored tiny_http with its
//! limits and deadlines, and runs a pool of named worker threads that take requests from
//! tiny_http's queue and call the handler, each call inside `catch_unwind` so a panicking
//! handler costs one 500 answer, never a worker. `stop()` unblocks and joins the workers.
//!
//! tiny_http's threads (one accept thread, one per open connection) read request heads,
//! small bodies, and the unread rest of refused bodies; the workers run handlers, read
//! larger bodies and write responses. Every socket read waits at most the read timeout T,
//! set on the listening socket so accepted sockets inherit it (`set_socket_timeout`), and
//! a whole request head, or a whole body, must arrive within T (`deadlines`): a client
//! sending a byte at a time holds a thread for T at most, never a worker for longer.
//! What slow clients can hold, and for how long, is tabled in ARCHITECTURE.md (Limits).

use std::any::Any;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tiny_http::{Deadlines, Limits, Request, ServerCounters};

use crate::tls::HttpTls;

/// The request handler every worker calls; it owns the request and must answer it
/// (tiny_http answers 500 for a request dropped unanswered).
pub type Handler = Arc<dyn Fn(Request) + Send + Sync + 'static>;

/// How to bind and run the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Address to bind, e.g. `"0.0.0.0:8080"`; port 0 picks a free port.
    pub addr: String,
    /// Number of worker threads running handlers (at least 1 is used).
    pub workers: usize,
    /// Thread-name prefix: workers are `{name}-{i}`.
    pub thread_name: String,
    /// Max time any single socket read may wait, a whole request head may take from its
    /// first byte, and a whole body from its first read: bounds slow or silent clients and
    /// is also the keep-alive idle timeout. `None` disables it (not recommended).
    pub read_timeout: Option<Duration>,
    /// Max time any single socket write may block, e.g. to an SSE client that stopped
    /// reading; `None` disables it.
    pub write_timeout: Option<Duration>,
    /// Bounds on request lines, headers and open connections (default: none).
    pub limits: Limits,
    /// HTTPS certificate and key; `None` serves plain HTTP.
    pub tls: Option<HttpTls>,
}

impl Default for HttpConfig {
    /// Loopback-only with 4 workers and 30 s timeouts; set `addr` for production.
    fn default() -> Self {
        HttpConfig {
            addr: "127.0.0.1:0".to_owned(),
            workers: 4,
            thread_name: "http".to_owned(),
            read_timeout: Some(Duration::from_secs(30)),
            write_timeout: Some(Duration::from_secs(30)),
            limits: Limits::default(),
            tls: None,
        }
    }
}

struct Shared {
    stopping: AtomicBool,
    accepting: AtomicBool,
}

impl Shared {
    fn accept_died(&self, why: &str) {
        if self.accepting.swap(false, Ordering::AcqRel) {
            log::error!("HTTP server no longer accepts connections: {why}");
        }
    }
}

/// A running server: tiny_http plus our worker pool; stops on `stop()` or drop.
pub struct HttpServer {
    server: Option<Arc<tiny_http::Server>>,
    local_addr: SocketAddr,
    workers: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl HttpServer {
    /// Binds `config.addr`, applies the socket timeouts and limits and starts the workers;
    /// tiny_http counts what the limits refuse in `counters`.
    pub fn start(
        config: &HttpConfig,
        handler: Handler,
        counters: Arc<ServerCounters>,
    ) -> io::Result<HttpServer> {
        let listener = TcpListener::bind(config.addr.as_str())?;
        let local_addr = listener.local_addr()?;
        if let Some(t) = config.read_timeout {
            set_socket_timeout(&listener, SocketTimeout::Read, t)?;
        }
        if let Some(t) = config.write_timeout {
            set_socket_timeout(&listener, SocketTimeout::Write, t)?;
        }
        let ssl = config.tls.as_ref().map(HttpTls::ssl_config);
        let server = tiny_http::Server::from_listener_with_bounds(
            listener,
            ssl,
            config.limits.clone(),
            deadlines(config.read_timeout),
            counters,
        )
        .map_err(|e| io::Error::other(e.to_string()))?;
        let server = Arc::new(server);
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            accepting: AtomicBool::new(true),
        });

        let mut this = HttpServer {
            server: Some(server.clone()),
            local_addr,
            workers: Vec::new(),
            shared: shared.clone(),
        };
        // From here on, an early return drops `this`, which stops what was started.
        for i in 0..config.workers.max(1) {
            let (server, handler, shared) = (server.clone(), handler.clone(), shared.clone());
            let handle = thread::Builder::new()
                .name(format!("{}-{i}", config.thread_name))
                .spawn(move || worker_loop(&server, &handler, &shared))?;
            this.workers.push(handle);
        }
        log::info!(
            "{} server on {local_addr} with {} workers (read timeout {:?}, write timeout {:?})",
            if config.tls.is_some() {
                "HTTPS"
            } else {
                "HTTP"
            },
            this.workers.len(),
            config.read_timeout,
            config.write_timeout
        );
        Ok(this)
    }

    /// The address actually bound (the real port when `addr` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// False once tiny_http's accept thread has died (no new connections will be
    /// served); a supervisor should then restart the process.
    pub fn is_accepting(&self) -> bool {
        self.shared.accepting.load(Ordering::Acquire) && self.server.is_some()
    }

    /// Stops accepting work, wakes and joins every worker (waiting for handlers in
    /// progress, so long-lived streams must watch their own shutdown signal), then
    /// closes the listener. Idempotent.
    pub fn stop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::Release);
        // Each unblock() wakes exactly one `recv()`; a worker exits after one wake-up.
        for _ in &self.workers {
            server.unblock();
        }
        for handle in self.workers.drain(..) {
            if handle.join().is_err() {
                log::error!("HTTP worker thread panicked outside a handler");
            }
        }
        // Last reference: tiny_http's Drop stops its accept thread and closes the socket.
        drop(server);
        log::info!("HTTP server on {} stopped", self.local_addr);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Most bytes of a refused request's unread body that are skipped, after the answer, to
/// keep its connection open; a larger rest closes the connection.
const SKIP_BYTES: usize = 64 * 1024;
/// Longest time that skipping may take.
const SKIP_TIME: Duration = Duration::from_secs(2);

/// tiny_http's deadlines for a read timeout `t`: the head and the body each get `t` in
/// all, and an unread body is skipped on the connection's thread, never on a worker.
fn deadlines(t: Option<Duration>) -> Deadlines {
    Deadlines {
        request_head: t,
        request_body: t,
        skip_bytes: SKIP_BYTES,
        skip_time: Some(t.map_or(SKIP_TIME, |t| t.min(SKIP_TIME))),
    }
}

fn worker_loop(server: &tiny_http::Server, handler: &Handler, shared: &Shared) {
    while !shared.stopping.load(Ordering::Acquire) {
        match server.recv() {
            Ok(req) => handle_one(handler, req),
            // `unblock()` during stop() also surfaces as an error.
            Err(_) if shared.stopping.load(Ordering::Acquire) => break,
            // tiny_http pushes an accept error once and ends its accept thread; keep
            // serving the connections that are already open.
            Err(e) => shared.accept_died(&format!("accept failed: {e}")),
        }
    }
}

fn handle_one(handler: &Handler, req: Request) {
    let method = req.method().clone();
    let url = req.url().to_owned();
    // The request moves into the handler; if it panics, unwinding drops the request
    // and tiny_http's Drop answers 500 when the response was not sent yet.
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| handler(req))) {
        log::error!(
            "handler panicked on {method} {url}: {}; answered 500 if still possible",
            panic_message(&*panic)
        );
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<non-string panic payload>")
}

#[derive(Debug, Clone, Copy)]
enum SocketTimeout {
    Read,
    Write,
}

/// Sets SO_RCVTIMEO / SO_SNDTIMEO on the listening socket; accepted sockets inherit it.
#[cfg(unix)]
fn set_socket_timeout(listener: &TcpListener, which: SocketTimeout, t: Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if t.is_zero() {
        // Zero means "block forever" to the kernel; refuse it like std's set_read_timeout.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket timeout must be non-zero",
        ));
    }
    let tv_sec = libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX);
    // Below 1_000_000, so it fits suseconds_t on every platform (i32 or i64).
    let mut tv_usec = t.subsec_micros() as libc::suseconds_t;
    if tv_sec == 0 && tv_usec == 0 {
        tv_usec = 1;
    }
    let tv = libc::timeval { tv_sec, tv_usec };
    let opt = match which {
        SocketTimeout::Read => libc::SO_RCVTIMEO,
        SocketTimeout::Write => libc::SO_SNDTIMEO,
    };
    // SAFETY: the fd is a live socket owned by `listener`; `tv` is a properly
    // initialized timeval and the length passed matches its size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&tv as *const libc::timeval).cast::<libc::c_void>(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn set_socket_timeout(_: &TcpListener, which: SocketTimeout, _: Duration) -> io::Result<()> {
    log::warn!(
        "{which:?} socket timeout not supported on this platform; slow clients are unbounded"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages() {
        let p = catch_unwind(|| panic!("boom {}", 1)).expect_err("panicked");
        assert_eq!(panic_message(&*p), "boom 1");
        let p = catch_unwind(|| panic!("static")).expect_err("panicked");
        assert_eq!(panic_message(&*p), "static");
    }

    #[test]
    fn zero_timeout_is_rejected() {
        let cfg = HttpConfig {
            read_timeout: Some(Duration::ZERO),
            ..HttpConfig::default()
        };
        let handler: Handler = Arc::new(|_req| {});
        let err = HttpServer::start(&cfg, handler, Arc::default())
            .err()
            .expect("rejected");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
