//! Incremental, lossy UTF-8 decoding of one output stream. Pipes deliver
//! arbitrary byte runs, so a multi-byte character can be split across reads;
//! this decoder carries an incomplete trailing sequence (at most 3 bytes) to
//! the next read and replaces invalid bytes with U+FFFD exactly like
//! `String::from_utf8_lossy` would on the whole stream. Feeding a stream in any
//! split therefore yields the same text as decoding it in one piece.

use std::char::REPLACEMENT_CHARACTER;

/// Per-stream decoder, so output chunks are always valid UTF-8 and never split a character.
#[derive(Debug, Default)]
pub struct Utf8Decoder {
    /// Start of a character whose remaining bytes have not arrived yet (0..=3 bytes).
    pending: Vec<u8>,
    /// Reused buffer for joining `pending` with the next input.
    scratch: Vec<u8>,
}

impl Utf8Decoder {
    /// Creates a decoder with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes `bytes` and appends the complete characters to `out`, keeping an incomplete tail for the next call.
    pub fn decode(&mut self, bytes: &[u8], out: &mut String) {
        if self.pending.is_empty() {
            decode_lossy(bytes, out, &mut self.pending);
        } else {
            let mut joined = std::mem::take(&mut self.scratch);
            joined.clear();
            joined.append(&mut self.pending);
            joined.extend_from_slice(bytes);
            decode_lossy(&joined, out, &mut self.pending);
            self.scratch = joined;
        }
        debug_assert!(self.pending.len() <= 3);
    }

    /// Convenience form of [`decode`](Self::decode) returning a new `String`.
    pub fn decode_to_string(&mut self, bytes: &[u8]) -> String {
        let mut out = String::new();
        self.decode(bytes, &mut out);
        out
    }

    /// Ends the stream: an incomplete tail becomes one U+FFFD, as `from_utf8_lossy` would render it.
    pub fn finish(&mut self, out: &mut String) {
        if !self.pending.is_empty() {
            self.pending.clear();
            out.push(REPLACEMENT_CHARACTER);
        }
    }

    /// Number of bytes held back waiting for the rest of a character (0..=3).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// Lossy-decodes `input` into `out`, except that an incomplete sequence at the very end is moved to `tail`.
fn decode_lossy(mut input: &[u8], out: &mut String, tail: &mut Vec<u8>) {
    loop {
        match std::str::from_utf8(input) {
            Ok(text) => {
                out.push_str(text);
                return;
            }
            Err(err) => {
                let (valid, rest) = input.split_at(err.valid_up_to());
                if let Ok(text) = std::str::from_utf8(valid) {
                    out.push_str(text);
                }
                match err.error_len() {
                    Some(bad) => {
                        out.push(REPLACEMENT_CHARACTER);
                        input = &rest[bad..];
                    }
                    None => {
                        tail.extend_from_slice(rest);
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Vec<u8>> {
        let mut samples: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"plain ascii\n".to_vec(),
            "é2 ü€3 😀4 mixed ascii".as_bytes().to_vec(),
            "€😀é€😀é".as_bytes().to_vec(),
            b"\xff\xfe".to_vec(),
            b"a\x80b\xbfc".to_vec(),
            // truncated sequences in the middle and at the end
            b"x\xe2\x82y\xf0\x9f\x98z\xc3".to_vec(),
            b"\xe2\x82".to_vec(),
            b"\xf0\x9f\x98".to_vec(),
            // overlong, surrogate, out-of-range
            b"\xc0\xaf\xe0\x80\xaf\xed\xa0\x80\xf4\x90\x80\x80ok".to_vec(),
            // continuation runs and bad leads mixed with valid chars
            b"\x80\x80\x80\xe2\x82\xac\xf8\x88\x80\x80\x80\xc3\xa9".to_vec(),
            b"\xf0\x9f\x98\xe2\x82\xac\xf0".to_vec(),
        ];
        let mut every_byte: Vec<u8> = (0u8..=255).collect();
        every_byte.extend_from_slice("ok😀".as_bytes());
        samples.push(every_byte);
        samples
    }

    /// Feeds `pieces` through one decoder and returns the chunks produced.
    fn run(pieces: &[&[u8]]) -> Vec<String> {
        let mut decoder = Utf8Decoder::new();
        let mut chunks = Vec::new();
        for piece in pieces {
            chunks.push(decoder.decode_to_string(piece));
            assert!(decoder.pending_len() <= 3);
        }
        let mut last = String::new();
        decoder.finish(&mut last);
        chunks.push(last);
        assert_eq!(decoder.pending_len(), 0);
        chunks
    }

    fn check(whole: &[u8], chunks: &[String]) {
        let expected = String::from_utf8_lossy(whole);
        assert_eq!(
            chunks.concat(),
            expected,
            "input {whole:x?}, chunks {chunks:?}"
        );
        for chunk in chunks {
            // Strings are valid by construction; re-validate the bytes anyway.
            assert!(std::str::from_utf8(chunk.as_bytes()).is_ok());
        }
    }

    #[test]
    fn one_split_at_every_boundary() {
        for whole in samples() {
            for i in 0..=whole.len() {
                let (a, b) = whole.split_at(i);
                check(&whole, &run(&[a, b]));
            }
        }
    }

    #[test]
    fn two_splits_at_every_pair_of_boundaries() {
        for whole in samples() {
            for i in 0..=whole.len() {
                for j in i..=whole.len() {
                    check(&whole, &run(&[&whole[..i], &whole[i..j], &whole[j..]]));
                }
            }
        }
    }

    #[test]
    fn byte_at_a_time() {
        for whole in samples() {
            let pieces: Vec<&[u8]> = whole.chunks(1).collect();
            check(&whole, &run(&pieces));
        }
    }

    #[test]
    fn complete_characters_are_never_held_back() {
        let mut decoder = Utf8Decoder::new();
        assert_eq!(decoder.decode_to_string("a€".as_bytes()), "a€");
        assert_eq!(decoder.decode_to_string(&[0xe2, 0x82]), "");
        assert_eq!(decoder.pending_len(), 2);
        assert_eq!(decoder.decode_to_string(&[0xac, b'!']), "€!");
        assert_eq!(decoder.decode_to_string(&[0xe2]), "");
        assert_eq!(decoder.decode_to_string(b"x"), "\u{FFFD}x");
    }

    #[test]
    fn truncated_tail_becomes_one_replacement_at_eof() {
        let mut decoder = Utf8Decoder::new();
        assert_eq!(decoder.decode_to_string(b"ab\xf0\x9f\x98"), "ab");
        let mut out = String::new();
        decoder.finish(&mut out);
        assert_eq!(out, "\u{FFFD}");
    }
}
