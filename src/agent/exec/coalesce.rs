//! Batches decoded output into [`Chunk`]s so a chatty process does not turn
//! into one message per `read`. Pending text is flushed when the chunk is full
//! (stdout + stderr together reach `chunk_bytes`) or when `flush_after` has
//! passed since the first unsent byte, whichever comes first. Order inside each
//! stream is kept; a chunk is cut only at character boundaries, so it may
//! exceed `chunk_bytes` by at most 3 bytes. The coalescer keeps no clock of its
//! own: the caller passes `now` and asks for [`Coalescer::deadline`] to size
//! its poll timeout.

use std::time::{Duration, Instant};

/// A batch of task output, valid UTF-8 per stream and never empty on both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunk {
    /// Text written to stdout since the previous chunk.
    pub stdout: String,
    /// Text written to stderr since the previous chunk.
    pub stderr: String,
}

/// Which output stream some text came from, so the coalescer keeps them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The process's standard output.
    Stdout,
    /// The process's standard error.
    Stderr,
}

/// Size- and time-based batching of one task's output, so chunks are few and still prompt.
#[derive(Debug)]
pub struct Coalescer {
    chunk_bytes: usize,
    flush_after: Duration,
    stdout: String,
    stderr: String,
    /// When the oldest unsent byte was buffered.
    first_unsent: Option<Instant>,
}

impl Coalescer {
    /// Creates an empty coalescer; a `chunk_bytes` of 0 is treated as 1.
    pub fn new(chunk_bytes: usize, flush_after: Duration) -> Self {
        Coalescer {
            chunk_bytes: chunk_bytes.max(1),
            flush_after,
            stdout: String::new(),
            stderr: String::new(),
            first_unsent: None,
        }
    }

    /// Buffers `text` for `stream`, emitting every chunk that fills up along the way.
    pub fn push(&mut self, stream: Stream, text: &str, now: Instant, emit: &mut impl FnMut(Chunk)) {
        let mut rest = text;
        while !rest.is_empty() {
            if self.first_unsent.is_none() {
                self.first_unsent = Some(now);
            }
            let space = self.chunk_bytes.saturating_sub(self.buffered());
            let take = if rest.len() <= space {
                rest.len()
            } else {
                // Round up to the next character boundary: overshoots by <= 3 bytes
                // and always makes progress.
                ceil_char_boundary(rest, space.max(1))
            };
            let (head, tail) = rest.split_at(take);
            match stream {
                Stream::Stdout => self.stdout.push_str(head),
                Stream::Stderr => self.stderr.push_str(head),
            }
            rest = tail;
            if self.buffered() >= self.chunk_bytes {
                self.flush(emit);
            }
        }
    }

    /// When the buffered output must be sent at the latest, or `None` if nothing is buffered.
    pub fn deadline(&self) -> Option<Instant> {
        self.first_unsent.map(|t| t + self.flush_after)
    }

    /// Flushes if the flush deadline has passed at `now`.
    pub fn flush_if_due(&mut self, now: Instant, emit: &mut impl FnMut(Chunk)) {
        if self.deadline().is_some_and(|d| now >= d) {
            self.flush(emit);
        }
    }

    /// Sends whatever is buffered as one chunk (nothing if both streams are empty).
    pub fn flush(&mut self, emit: &mut impl FnMut(Chunk)) {
        self.first_unsent = None;
        if self.stdout.is_empty() && self.stderr.is_empty() {
            return;
        }
        emit(Chunk {
            stdout: std::mem::take(&mut self.stdout),
            stderr: std::mem::take(&mut self.stderr),
        });
    }

    /// Bytes currently buffered across both streams.
    pub fn buffered(&self) -> usize {
        self.stdout.len() + self.stderr.len()
    }
}

/// Smallest character boundary of `s` that is `>= index` (`s.len()` at most).
fn ceil_char_boundary(s: &str, index: usize) -> usize {
    let mut i = index.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(c: &mut Coalescer, stream: Stream, text: &str, now: Instant) -> Vec<Chunk> {
        let mut out = Vec::new();
        c.push(stream, text, now, &mut |chunk| out.push(chunk));
        out
    }

    #[test]
    fn small_output_waits_for_the_deadline() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(100, Duration::from_millis(20));
        assert_eq!(c.deadline(), None);
        assert!(collect(&mut c, Stream::Stdout, "a", t0).is_empty());
        assert!(collect(&mut c, Stream::Stderr, "b", t0 + Duration::from_millis(5)).is_empty());
        assert_eq!(c.deadline(), Some(t0 + Duration::from_millis(20)));
        let mut out = Vec::new();
        c.flush_if_due(t0 + Duration::from_millis(19), &mut |ch| out.push(ch));
        assert!(out.is_empty());
        c.flush_if_due(t0 + Duration::from_millis(20), &mut |ch| out.push(ch));
        assert_eq!(
            out,
            [Chunk {
                stdout: "a".into(),
                stderr: "b".into()
            }]
        );
        assert_eq!(c.deadline(), None);
        c.flush(&mut |_| panic!("empty flush must not emit"));
    }

    #[test]
    fn full_chunks_are_sent_immediately_and_stay_within_bounds() {
        let now = Instant::now();
        for size in 1..=9 {
            for text in [
                "abcdefghijklmnopqrstuvwxyz",
                "€😀é€a😀bé€€😀",
                "😀😀😀😀😀😀",
            ] {
                let mut c = Coalescer::new(size, Duration::from_secs(1));
                let mut out = collect(&mut c, Stream::Stdout, text, now);
                c.flush(&mut |ch| out.push(ch));
                let joined: String = out.iter().map(|ch| ch.stdout.as_str()).collect();
                assert_eq!(joined, text);
                for ch in &out {
                    assert!(!ch.stdout.is_empty());
                    assert!(ch.stdout.len() <= size + 3, "size {size}: {ch:?}");
                }
                // every chunk but the last is full
                for ch in &out[..out.len() - 1] {
                    assert!(ch.stdout.len() >= size);
                }
            }
        }
    }

    #[test]
    fn streams_share_the_size_budget_and_keep_their_order() {
        let now = Instant::now();
        let mut c = Coalescer::new(8, Duration::from_secs(1));
        let mut out = Vec::new();
        c.push(Stream::Stdout, "12345", now, &mut |ch| out.push(ch));
        c.push(Stream::Stderr, "abcdef", now, &mut |ch| out.push(ch));
        c.push(Stream::Stdout, "6789", now, &mut |ch| out.push(ch));
        c.flush(&mut |ch| out.push(ch));
        assert_eq!(
            out[0],
            Chunk {
                stdout: "12345".into(),
                stderr: "abc".into()
            }
        );
        let stdout: String = out.iter().map(|ch| ch.stdout.as_str()).collect();
        let stderr: String = out.iter().map(|ch| ch.stderr.as_str()).collect();
        assert_eq!(stdout, "123456789");
        assert_eq!(stderr, "abcdef");
        assert!(out
            .iter()
            .all(|ch| !(ch.stdout.is_empty() && ch.stderr.is_empty())));
    }

    #[test]
    fn remainder_after_a_full_chunk_restarts_the_timer() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(50);
        let mut c = Coalescer::new(4, Duration::from_millis(20));
        assert!(collect(&mut c, Stream::Stdout, "ab", t0).is_empty());
        assert_eq!(collect(&mut c, Stream::Stdout, "cdef", t1).len(), 1);
        assert_eq!(c.deadline(), Some(t1 + Duration::from_millis(20)));
    }
}
