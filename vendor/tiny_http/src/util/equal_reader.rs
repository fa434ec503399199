use std::io::Read;
use std::io::Result as IoResult;
use std::sync::mpsc::channel;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use crate::util::ReadClock;

/// A `Reader` that reads exactly the number of bytes from a sub-reader.
///
/// If the limit is reached, it returns EOF. If the limit is not reached
/// when the destructor is called, the remaining bytes will be read and
/// thrown away.
///
/// nodelink patch: with a `ReadClock`, the destructor reads nothing: it records how many
/// bytes are left and the connection's own thread skips them, within its bounds, before
/// the next request (see `ClientConnection::skip_unread_body`). Upstream read them here,
/// on the thread that dropped the request, for as long as the client kept sending.
pub struct EqualReader<R>
where
    R: Read,
{
    reader: R,
    size: usize,
    last_read_signal: Sender<IoResult<()>>,
    clock: Option<Arc<ReadClock>>,
}

impl<R> EqualReader<R>
where
    R: Read,
{
    pub fn new(reader: R, size: usize) -> (EqualReader<R>, Receiver<IoResult<()>>) {
        let (tx, rx) = channel();

        let r = EqualReader {
            reader,
            size,
            last_read_signal: tx,
            clock: None,
        };

        (r, rx)
    }

    /// nodelink patch: like `new`; the bytes left unread on drop are reported to `clock`.
    pub(crate) fn with_clock(reader: R, size: usize, clock: Arc<ReadClock>) -> EqualReader<R> {
        let (mut r, _) = Self::new(reader, size);
        r.clock = Some(clock);
        r
    }
}

impl<R> Read for EqualReader<R>
where
    R: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if self.size == 0 {
            return Ok(0);
        }

        let buf = if buf.len() < self.size {
            buf
        } else {
            &mut buf[..self.size]
        };

        match self.reader.read(buf) {
            Ok(len) => {
                self.size -= len;
                Ok(len)
            }
            err @ Err(_) => err,
        }
    }
}

impl<R> Drop for EqualReader<R>
where
    R: Read,
{
    fn drop(&mut self) {
        if let Some(clock) = &self.clock {
            clock.leave_unread(self.size);
            return;
        }
        let mut remaining_to_read = self.size;

        // nodelink patch: drain through a fixed buffer. Upstream allocates the whole declared
        // remainder at once, so a request that declares a huge Content-Length and is answered
        // without reading its body (413, 401, 404) aborted the process on allocation failure.
        let mut buf = vec![0; remaining_to_read.min(8 * 1024)];
        while remaining_to_read > 0 {
            let want = remaining_to_read.min(buf.len());
            let buf = &mut buf[..want];

            match self.reader.read(buf) {
                Err(e) => {
                    self.last_read_signal.send(Err(e)).ok();
                    break;
                }
                Ok(0) => {
                    self.last_read_signal.send(Ok(())).ok();
                    break;
                }
                Ok(other) => {
                    remaining_to_read -= other;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EqualReader;
    use std::io::Read;

    #[test]
    fn test_limit() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let (mut equal_reader, _) = EqualReader::new(org_reader.by_ref(), 5);

            let mut string = String::new();
            equal_reader.read_to_string(&mut string).unwrap();
            assert_eq!(string, "hello");
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }

    #[test]
    fn with_a_clock_the_rest_is_reported_not_read() {
        use std::io::Cursor;
        use std::sync::Arc;

        let clock = Arc::new(crate::util::ReadClock::default());
        let mut org_reader = Cursor::new(b"hello world".to_vec());
        {
            let mut equal_reader =
                EqualReader::with_clock(org_reader.by_ref(), 8, clock.clone());
            let mut two = [0; 2];
            equal_reader.read_exact(&mut two).unwrap();
        }
        assert_eq!(clock.take_unread(), 6);
        assert_eq!(clock.take_unread(), 0);
        assert_eq!(org_reader.position(), 2);
    }

    #[test]
    fn test_not_enough() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let (mut equal_reader, _) = EqualReader::new(org_reader.by_ref(), 5);

            let mut vec = [0];
            equal_reader.read_exact(&mut vec).unwrap();
            assert_eq!(vec[0], b'h');
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }
}
