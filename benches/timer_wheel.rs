//! Criterion benchmarks for the hashed timing wheel (`nodelink::timer::TimerWheel`).
//!
//! Run with `cargo bench --bench timer_wheel`; sample sizes and measurement
//! times are kept small so the whole run stays around a minute on 2 cores.
//! The wheel is driven by a fake clock, so the numbers measure the data
//! structure, not the OS timer.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use nodelink::timer::{TimerKey, TimerWheel, DEFAULT_SLOTS, DEFAULT_TICK};
use std::hint::black_box;
use std::time::{Duration, Instant};

const N: u64 = 1_000_000;

/// Deadline of timer `i`: spread pseudo-randomly over the 10 s after `now` (about one revolution).
fn deadline(now: Instant, i: u64) -> Instant {
    now + Duration::from_micros(i.wrapping_mul(7_919) % 10_000_000)
}

fn schedule_cancel_1m(c: &mut Criterion) {
    let mut group = c.benchmark_group("wheel_1m");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(N));
    let start = Instant::now();
    // Reused across iterations: measures steady state (slab and key index already grown).
    let mut wheel = TimerWheel::new(DEFAULT_TICK, DEFAULT_SLOTS, start);
    group.bench_function("schedule_then_cancel", |b| {
        b.iter(|| {
            for i in 0..N {
                wheel.schedule(TimerKey(i), deadline(start, i), i);
            }
            for i in 0..N {
                black_box(wheel.cancel(TimerKey(i)));
            }
        });
    });

    let mut wheel = TimerWheel::new(DEFAULT_TICK, DEFAULT_SLOTS, start);
    let mut now = start;
    let mut fired = Vec::with_capacity(4096);
    group.bench_function("schedule_then_advance_tick_by_tick", |b| {
        b.iter(|| {
            for i in 0..N {
                wheel.schedule(TimerKey(i), deadline(now, i), i);
            }
            while !wheel.is_empty() {
                now += DEFAULT_TICK;
                fired.clear();
                wheel.advance(now, &mut fired);
                black_box(fired.len());
            }
        });
    });

    let mut wheel = TimerWheel::new(DEFAULT_TICK, DEFAULT_SLOTS, start);
    let mut now = start;
    let mut fired = Vec::with_capacity(N as usize);
    group.bench_function("schedule_then_advance_one_jump", |b| {
        b.iter(|| {
            for i in 0..N {
                wheel.schedule(TimerKey(i), deadline(now, i), i);
            }
            // 20 s in one call: the catch-up path (more than one revolution elapsed).
            now += Duration::from_secs(20);
            fired.clear();
            wheel.advance(now, &mut fired);
            black_box(fired.len());
        });
    });
    group.finish();
}

fn advance_empty(c: &mut Criterion) {
    let mut group = c.benchmark_group("wheel_empty");
    let start = Instant::now();
    let mut wheel: TimerWheel<u64> = TimerWheel::new(DEFAULT_TICK, DEFAULT_SLOTS, start);
    let mut now = start;
    let mut fired = Vec::new();
    group.bench_function("advance_one_tick", |b| {
        b.iter(|| {
            now += DEFAULT_TICK;
            wheel.advance(black_box(now), &mut fired);
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = schedule_cancel_1m, advance_empty
}
criterion_main!(benches);
