use std::io::Result as IoResult;
use std::io::{Error, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connection::Connection;
use crate::limits::ConnectionSlot;
use crate::util::ReadClock;
#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use crate::ssl::SslStream;

pub(crate) enum Stream {
    Http(Connection),
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    Https(SslStream),
}

impl Stream {
    // nodelink patch: cloning a socket needs a new descriptor, which fails when the process
    // is out of them; upstream unwrapped here and the panic killed the accept thread.
    fn try_clone(&self) -> IoResult<Self> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.try_clone().map(Stream::Http),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => Ok(Stream::Https(ssl_stream.clone())),
        }
    }
}

impl From<Connection> for Stream {
    fn from(tcp_stream: Connection) -> Self {
        Stream::Http(tcp_stream)
    }
}

impl Stream {
    fn secure(&self) -> bool {
        match self {
            Stream::Http(_) => false,
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => true,
        }
    }

    fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.peer_addr(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.peer_addr(),
        }
    }

    fn shutdown(&mut self, how: Shutdown) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.shutdown(how),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.shutdown(how),
        }
    }

    fn read_timeout(&self) -> IoResult<Option<Duration>> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.read_timeout(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.read_timeout(),
        }
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.set_read_timeout(timeout),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.set_read_timeout(timeout),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.read(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.write(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.write(buf),
        }
    }

    fn flush(&mut self) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.flush(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.flush(),
        }
    }
}

pub struct RefinedTcpStream {
    stream: Stream,
    close_read: bool,
    close_write: bool,
    // nodelink patch: both halves share the connection's slot under `max_connections`.
    _slot: Option<Arc<ConnectionSlot>>,
    // nodelink patch: the read half bounds each read by the connection's deadline.
    deadline: Option<DeadlineState>,
}

/// nodelink patch: what the read half needs to bound reads by a `ReadClock` deadline.
struct DeadlineState {
    clock: Arc<ReadClock>,
    /// The socket's own read timeout, in force whenever no deadline is.
    base: Option<Duration>,
    /// The read timeout last set on the socket.
    applied: Option<Duration>,
}

impl RefinedTcpStream {
    pub(crate) fn new<S>(stream: S) -> IoResult<(RefinedTcpStream, RefinedTcpStream)>
    where
        S: Into<Stream>,
    {
        Self::with_slot(stream, None)
    }

    /// nodelink patch: like `new`, holding `slot` until both halves are dropped.
    pub(crate) fn with_slot<S>(
        stream: S,
        slot: Option<ConnectionSlot>,
    ) -> IoResult<(RefinedTcpStream, RefinedTcpStream)>
    where
        S: Into<Stream>,
    {
        let stream: Stream = stream.into();
        let slot = slot.map(Arc::new);

        let (read, write) = (stream.try_clone()?, stream);
        let base = read.read_timeout()?;

        let read = RefinedTcpStream {
            stream: read,
            close_read: true,
            close_write: false,
            _slot: slot.clone(),
            deadline: Some(DeadlineState {
                clock: Arc::new(ReadClock::default()),
                base,
                applied: base,
            }),
        };

        let write = RefinedTcpStream {
            stream: write,
            close_read: false,
            close_write: true,
            _slot: slot,
            deadline: None,
        };

        Ok((read, write))
    }

    /// Returns true if this struct wraps around a secure connection.
    #[inline]
    pub(crate) fn secure(&self) -> bool {
        self.stream.secure()
    }

    pub(crate) fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        self.stream.peer_addr()
    }

    /// nodelink patch: ends the sending side of the whole connection (both halves share
    /// the socket), so the client sees the end of a refusal before we stop reading.
    pub(crate) fn shutdown_write(&mut self) -> IoResult<()> {
        self.stream.shutdown(Shutdown::Write)
    }

    /// nodelink patch: the clock whose deadline bounds this read half's reads.
    pub(crate) fn clock(&self) -> Option<Arc<ReadClock>> {
        self.deadline.as_ref().map(|d| d.clock.clone())
    }
}

impl DeadlineState {
    /// Sets the socket's read timeout to what is left until the deadline (at most the
    /// socket's own timeout), or back to its own timeout without a deadline. Returns
    /// whether a deadline is in force; fails with `TimedOut` once it has passed.
    fn apply(&mut self, stream: &Stream) -> IoResult<bool> {
        let (want, bounded) = match self.clock.deadline() {
            None => (self.base, false),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(deadline_passed());
                }
                (Some(self.base.map_or(left, |base| base.min(left))), true)
            }
        };
        if want != self.applied {
            stream.set_read_timeout(want)?;
            self.applied = want;
        }
        Ok(bounded)
    }
}

fn deadline_passed() -> Error {
    Error::new(ErrorKind::TimedOut, "the client took too long to send the request")
}

impl Drop for RefinedTcpStream {
    fn drop(&mut self) {
        if self.close_read {
            self.stream.shutdown(Shutdown::Read).ok();
        }

        if self.close_write {
            self.stream.shutdown(Shutdown::Write).ok();
        }
    }
}

impl Read for RefinedTcpStream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        // nodelink patch: a read under a deadline waits only for what is left of it, and
        // its timeout reads as `TimedOut` (Linux reports a socket timeout as `WouldBlock`).
        let Some(deadline) = self.deadline.as_mut() else {
            return self.stream.read(buf);
        };
        let bounded = deadline.apply(&self.stream)?;
        match self.stream.read(buf) {
            Err(e) if bounded && e.kind() == ErrorKind::WouldBlock => Err(deadline_passed()),
            other => other,
        }
    }
}

impl Write for RefinedTcpStream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        self.stream.flush()
    }
}
