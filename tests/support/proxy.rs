//! A tiny TCP proxy for breaking a connection while both ends stay up: it listens on an
//! ephemeral 127.0.0.1 port and forwards every connection to a target address, one thread per
//! direction. [`Proxy::cut`] closes every current connection, [`Proxy::blackhole`] silently
//! swallows everything on them from then on (a peer that died without a word), and
//! [`Proxy::set_accepting`] makes new connections be closed at once (a refused connection, as
//! far as a gRPC client can tell) or forwarded again.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A running proxy; dropping it stops it and closes every connection.
pub struct Proxy {
    addr: String,
    shared: Arc<Shared>,
}

struct Shared {
    target: String,
    accepting: AtomicBool,
    stopped: AtomicBool,
    /// Connections forwarded so far (refused ones not counted).
    forwarded: AtomicUsize,
    live: Mutex<Vec<Conn>>,
}

/// Both sockets of one forwarded connection, and whether its bytes are dropped.
struct Conn {
    sockets: [TcpStream; 2],
    swallow: Arc<AtomicBool>,
}

impl Proxy {
    /// Starts forwarding a fresh 127.0.0.1 port to `target`.
    pub fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let shared = Arc::new(Shared {
            target: target.to_string(),
            accepting: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            forwarded: AtomicUsize::new(0),
            live: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        std::thread::spawn(move || accept_loop(listener, s));
        Proxy { addr, shared }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether new connections are forwarded (true) or closed at once (false).
    pub fn set_accepting(&self, yes: bool) {
        self.shared.accepting.store(yes, Ordering::SeqCst);
    }

    /// Closes every current connection (both sides see the socket close).
    pub fn cut(&self) {
        for conn in self.shared.live.lock().expect("proxy lock").drain(..) {
            for s in &conn.sockets {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// From now on, every current connection stays open but loses all its bytes, both ways.
    pub fn blackhole(&self) {
        for conn in self.shared.live.lock().expect("proxy lock").iter() {
            conn.swallow.store(true, Ordering::SeqCst);
        }
    }

    /// How many connections have been forwarded since the start.
    pub fn forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        self.cut();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        if !shared.accepting.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(upstream) = TcpStream::connect(&shared.target) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let clones = (
            client.try_clone(),
            upstream.try_clone(),
            client.try_clone(),
            upstream.try_clone(),
        );
        let (Ok(c_read), Ok(u_write), Ok(c_keep), Ok(u_keep)) = clones else {
            continue;
        };
        let swallow = Arc::new(AtomicBool::new(false));
        shared.live.lock().expect("proxy lock").push(Conn {
            sockets: [c_keep, u_keep],
            swallow: swallow.clone(),
        });
        shared.forwarded.fetch_add(1, Ordering::SeqCst);
        let swallow_up = swallow.clone();
        std::thread::spawn(move || pipe(c_read, u_write, &swallow_up));
        std::thread::spawn(move || pipe(upstream, client, &swallow));
    }
}

/// Copies `from` to `to` (or drops the bytes while `swallow` is set) until either side ends,
/// then shuts both down so the other direction ends too.
fn pipe(mut from: TcpStream, mut to: TcpStream, swallow: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) if swallow.load(Ordering::SeqCst) => {}
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
