//! `fanout`: S clients (default 500) hold the global event stream `GET /stream` open while a
//! dispatch load runs at a fixed rate (default 1 000 tasks/s, open loop). Each client is a
//! thread reading its own connection; it counts events, checks that event ids (global
//! sequence numbers) have no gaps, and records the lag from the event's `ts` (set by the
//! server when the event was created) to the moment the client parsed it. A stream that ends
//! before the run does is a dropped client (the server drops clients that fall behind).
//! The lag includes the load generator's own scheduling on the shared machine.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use super::dispatch::{self, add_figures, rss_note, Completion, Counters};
use super::{wait_for_agents, Ctx};
use crate::agents::AgentPool;
use crate::http::{self, json_str, SseEvent, SseStream};
use crate::procfs::Tracker;
use crate::report::{Progress, Report};
use crate::stats::{Errors, Histogram};

/// Settings of the fanout scenario.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Event-stream clients.
    pub clients: usize,
    /// Offered task rate while they listen, tasks/s.
    pub rate: f64,
    /// Simulated agents answering the tasks.
    pub agents: usize,
    /// Threads creating tasks.
    pub creators: usize,
}

#[derive(Default)]
struct ClientOut {
    events: u64,
    missed: u64,
    lag: Histogram,
    dropped: bool,
}

struct Shared {
    stop: AtomicBool,
    opened: AtomicUsize,
    failed: Mutex<Errors>,
    events: AtomicU64,
    closers: Mutex<Vec<std::net::TcpStream>>,
}

fn listen(ctx: &Ctx, shared: &Shared) -> ClientOut {
    let mut out = ClientOut::default();
    let mut stream = match SseStream::open(&ctx.http, "/stream", None, Duration::from_secs(60)) {
        Ok(s) => s,
        Err(e) => {
            shared.failed.lock().add(e.kind());
            shared.opened.fetch_add(1, Ordering::Relaxed);
            return out;
        }
    };
    {
        // Under the lock, so `Halt` either closes this stream or is seen here.
        let mut closers = shared.closers.lock();
        shared.opened.fetch_add(1, Ordering::Relaxed);
        if shared.stop.load(Ordering::Relaxed) {
            return out;
        }
        if let Ok(c) = stream.closer() {
            closers.push(c);
        }
    }
    let mut ev = SseEvent::default();
    let mut last: u64 = 0;
    let mut unpublished = 0u64;
    loop {
        match stream.next_event(&mut ev) {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                out.dropped = !shared.stop.load(Ordering::Relaxed);
                break;
            }
        }
        let now = SystemTime::now();
        if ev.event == "shutdown" {
            continue;
        }
        if let Ok(id) = ev.id.parse::<u64>() {
            if last > 0 && id > last + 1 {
                out.missed += id - last - 1;
            }
            last = last.max(id);
        }
        if let Some(ts) = json_str(&ev.data, "ts").and_then(|t| humantime::parse_rfc3339(t).ok()) {
            out.lag.record(now.duration_since(ts).unwrap_or_default());
        }
        out.events += 1;
        unpublished += 1;
        if unpublished == 256 {
            shared.events.fetch_add(unpublished, Ordering::Relaxed);
            unpublished = 0;
        }
    }
    shared.events.fetch_add(unpublished, Ordering::Relaxed);
    out
}

/// Ends every client's stream when dropped, on every way out of a run (errors included), so
/// the scoped client threads can be joined.
struct Halt<'a>(&'a Shared);

impl Drop for Halt<'_> {
    fn drop(&mut self) {
        let closers = self.0.closers.lock();
        self.0.stop.store(true, Ordering::Relaxed);
        for c in closers.iter() {
            http::close(c);
        }
    }
}

/// The `fanout` scenario.
pub fn run(ctx: &Ctx, opts: &Opts) -> Result<Report, String> {
    let creds = ctx.credentials(opts.agents)?;
    let mut pool = AgentPool::connect(&ctx.grpc, creds, ctx.grpc_threads, 4)?;
    pool.answer(0, 0);
    let ids = pool.ids();
    wait_for_agents(&ctx.http, &ids, Duration::from_secs(15))?;

    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        opened: AtomicUsize::new(0),
        failed: Mutex::new(Errors::default()),
        events: AtomicU64::new(0),
        closers: Mutex::new(Vec::new()),
    });
    let server = Arc::new(Mutex::new(Tracker::new(ctx.server_pid)));
    let mut me = Tracker::new(Some(std::process::id()));
    let counters = Arc::new(Counters::default());
    let mut outs: Vec<ClientOut> = Vec::with_capacity(opts.clients);
    let mut load = None;
    let mut window = Duration::ZERO;
    std::thread::scope(|s| -> Result<(), String> {
        let halt = Halt(&shared);
        let mut handles = Vec::with_capacity(opts.clients);
        for i in 0..opts.clients {
            let shared = &*shared;
            let h = std::thread::Builder::new()
                .name(format!("bench-sse-{i}"))
                .stack_size(128 << 10)
                .spawn_scoped(s, move || listen(ctx, shared))
                .map_err(|e| format!("cannot start client thread {i}: {e}"))?;
            handles.push(h);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while shared.opened.load(Ordering::Relaxed) < opts.clients && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "fanout: {} of {} event streams open ({} refused)",
            shared.closers.lock().len(),
            opts.clients,
            shared.failed.lock().total()
        );

        let progress = {
            let (c, server, shared) = (counters.clone(), server.clone(), shared.clone());
            let mut last = (0u64, 0u64);
            Progress::start(move |t| {
                let created = c.created.load(Ordering::Relaxed);
                let ev = shared.events.load(Ordering::Relaxed);
                let line = format!(
                    "[{:>4.0}s] fanout: created {created} ({}/s), events delivered {ev} ({}/s){}",
                    t.as_secs_f64(),
                    created - last.0,
                    ev - last.1,
                    rss_note(&mut server.lock()),
                );
                last = (created, ev);
                line
            })
        };
        let started = Instant::now();
        let dopts = dispatch::Opts {
            clients: opts.creators,
            agents: opts.agents,
            chunks: 0,
            chunk_bytes: 0,
            completion: Completion::Sse,
            rate: Some(opts.rate),
            wait: Duration::from_secs(10),
            task_timeout_s: 300,
        };
        let result = dispatch::run_load(ctx, &dopts, &ids, &counters);
        // Let events already on their way arrive before the clients stop counting.
        std::thread::sleep(Duration::from_millis(500));
        window = started.elapsed();
        progress.stop();
        drop(halt);
        for h in handles {
            outs.push(
                h.join()
                    .map_err(|_| "a client thread panicked".to_string())?,
            );
        }
        load = Some(result?);
        Ok(())
    })?;
    let Some(load) = load else {
        return Err("the dispatch load did not run".into());
    };
    let mut server = *server.lock();
    server.sample();
    me.sample();

    let mut lag = Histogram::default();
    let (mut events, mut missed, mut dropped) = (0u64, 0u64, 0u64);
    for o in &outs {
        lag.merge(&o.lag);
        events += o.events;
        missed += o.missed;
        dropped += o.dropped as u64;
    }
    let connected = shared.closers.lock().len();
    let mut r = ctx.report("fanout");
    r.param("clients", opts.clients as u64);
    r.param("rate", opts.rate);
    r.param("agents", opts.agents as u64);
    r.figure(
        "clients_connected",
        "event-stream clients connected",
        connected as f64,
        "",
    );
    r.figure(
        "events",
        "events delivered (all clients)",
        events as f64,
        "",
    );
    r.figure(
        "events_per_s",
        "events delivered/s (all clients)",
        events as f64 / window.as_secs_f64().max(1e-9),
        "events/s",
    );
    r.latency(
        [
            "lag_p50_ms",
            "lag_p90_ms",
            "lag_p99_ms",
            "lag_max_ms",
            "lag_samples",
        ],
        [
            "event lag p50",
            "event lag p90",
            "event lag p99",
            "event lag max",
            "lag samples",
        ],
        &lag,
    );
    r.figure(
        "dropped_clients",
        "clients dropped before the end",
        dropped as f64,
        "",
    );
    r.figure(
        "missed_events",
        "events missed (id gaps)",
        missed as f64,
        "",
    );
    add_figures(&mut r, &load);
    r.server(&server, window);
    r.costs(
        &me,
        &server,
        window,
        events as f64,
        "server_cpu_us_per_event",
        "server CPU per event delivered",
    );
    r.errors = load.errors.clone();
    for (k, v) in &shared.failed.lock().by_kind {
        *r.errors
            .by_kind
            .entry(format!("stream_open_{k}"))
            .or_insert(0) += v;
    }
    drop(pool);
    Ok(r)
}
