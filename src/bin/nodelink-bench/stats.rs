//! Latency recording: a log-linear histogram of microseconds (HdrHistogram's layout, in a few
//! lines) and per-status-code error counts. Each worker thread owns its own histogram and
//! merges it into the scenario's at the end, so recording is a plain array increment with no
//! lock and no allocation; memory is fixed (about 18 KB) however long the run.

use std::collections::BTreeMap;
use std::time::Duration;

/// Sub-buckets per power of two: values are kept to within 1/128 (< 0.8 %).
const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
/// Octaves above the linear range: enough for 2^40 µs (12 days).
const OCTAVES: usize = 34;
/// Buckets: the linear range, then half a range per octave.
const LEN: usize = SUB + OCTAVES * (SUB / 2);

/// A fixed-size histogram of durations, recorded in whole microseconds.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; LEN],
            total: 0,
            max_us: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = msb - SUB_BITS + 1;
    let octave = shift as usize; // 1..
    let sub = (v >> shift) as usize - SUB / 2; // 0..SUB/2
    let i = SUB + (octave - 1) * (SUB / 2) + sub;
    i.min(LEN - 1)
}

/// The largest value that lands in bucket `i` (so percentiles never understate).
fn upper(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let octave = (i - SUB) / (SUB / 2) + 1;
    let sub = (i - SUB) % (SUB / 2) + SUB / 2;
    (((sub + 1) as u64) << octave) - 1
}

impl Histogram {
    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.counts[index(us)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0.0..=1.0), in milliseconds; 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(i).min(self.max_us) as f64 / 1000.0;
            }
        }
        self.max_us as f64 / 1000.0
    }

    /// The largest sample, in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.max_us as f64 / 1000.0
    }
}

/// Failures counted by kind: an HTTP status code (`"503"`), `"io"`, `"timeout"`, ...
#[derive(Clone, Debug, Default)]
pub struct Errors {
    /// Count per kind, sorted for stable output.
    pub by_kind: BTreeMap<String, u64>,
}

impl Errors {
    /// Counts one failure of `kind`.
    pub fn add(&mut self, kind: impl Into<String>) {
        *self.by_kind.entry(kind.into()).or_insert(0) += 1;
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Errors) {
        for (k, v) in &other.by_kind {
            *self.by_kind.entry(k.clone()).or_insert(0) += v;
        }
    }

    /// Total failures.
    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in [0u64, 1, 127, 128, 129, 255, 256, 1000, 65_535, 1 << 30] {
            let i = index(v);
            assert!(i >= last, "index not monotonic at {v}");
            last = i;
            assert!(upper(i) >= v, "bucket of {v} ends below it");
            assert!(upper(i) - v <= v / 64 + 1, "bucket of {v} too wide");
        }
    }

    #[test]
    fn percentiles() {
        let mut h = Histogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile_ms(0.5);
        assert!((0.495..=0.51).contains(&p50), "{p50}");
        let p99 = h.quantile_ms(0.99);
        assert!((0.985..=1.0).contains(&p99), "{p99}");
        assert_eq!(h.max_ms(), 1.0);
    }
}
