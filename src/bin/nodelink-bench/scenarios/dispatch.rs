//! `dispatch`: C client threads create shell tasks round-robin over M simulated agents, which
//! answer at once (optionally K output chunks of B bytes first). Completion is observed on the
//! global event stream (`--completion sse`: a `status` event with a final status) or by
//! polling `GET /tasks/{id}` (`--completion poll`: only the original endpoints, for servers
//! without a global stream). Closed loop: each client keeps one task in flight (create, wait
//! for its completion, repeat). Open loop (`--rate R`): tasks start on a fixed schedule and
//! latency counts from the scheduled time. [`run_load`] is also the background load of
//! `fanout`.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use super::{create_task, is_final, task_status, wait_for_agents, Created, Ctx, Pacer};
use crate::agents::AgentPool;
use crate::http::{self, json_str, Client, SseEvent, SseStream};
use crate::procfs::Tracker;
use crate::report::{number, Progress, Report};
use crate::stats::{Errors, Histogram};

/// How completion is observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Completion {
    /// On the global event stream `GET /stream`.
    Sse,
    /// By polling `GET /tasks/{id}`.
    Poll,
}

/// Settings of a dispatch load.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Client threads.
    pub clients: usize,
    /// Simulated agents.
    pub agents: usize,
    /// Output chunks per task before the final response.
    pub chunks: u32,
    /// Bytes per output chunk.
    pub chunk_bytes: usize,
    /// How completion is observed.
    pub completion: Completion,
    /// Open-loop rate (tasks/s); `None` is a closed loop.
    pub rate: Option<f64>,
    /// Longest wait for one task's completion before it counts as `no_completion`.
    pub wait: Duration,
    /// The tasks' server-side timeout, seconds.
    pub task_timeout_s: u64,
}

/// Live counters, read by the progress line.
#[derive(Debug, Default)]
pub struct Counters {
    /// Tasks the server accepted.
    pub created: AtomicU64,
    /// Completions observed.
    pub completed: AtomicU64,
    /// Failed creations and tasks that did not complete.
    pub errors: AtomicU64,
}

/// What a dispatch load measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Tasks the server accepted.
    pub created: u64,
    /// Tasks observed completed (status `completed`).
    pub completed: u64,
    /// Create-to-completion latency.
    pub latency: Histogram,
    /// `POST /tasks/shell` answer time.
    pub create: Histogram,
    /// Failures by kind.
    pub errors: Errors,
    /// Length of the creation phase.
    pub create_elapsed: Duration,
    /// From the start until the last completion was observed (or the wait ran out).
    pub total_elapsed: Duration,
    /// Tasks created whose completion was never observed.
    pub incomplete: u64,
    /// Reconnections of the completion stream (it is dropped if it falls behind).
    pub stream_reconnects: u64,
}

enum Entry {
    Waiting {
        start: Instant,
        notify: Option<(Sender<u64>, u64)>,
    },
    Done {
        at: Instant,
        status: String,
    },
}

/// Matches task ids from creation answers with completions from the event stream, in
/// whichever order they arrive.
struct Book {
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    waiting: AtomicUsize,
}

impl Book {
    fn new() -> Self {
        Book {
            shards: (0..64).map(|_| Mutex::new(HashMap::new())).collect(),
            waiting: AtomicUsize::new(0),
        }
    }

    fn shard(&self, id: &str) -> &Mutex<HashMap<String, Entry>> {
        let mut h = DefaultHasher::new();
        id.hash(&mut h);
        &self.shards[(h.finish() % self.shards.len() as u64) as usize]
    }

    /// A created task; returns its completion if the stream saw it already.
    fn register(
        &self,
        id: String,
        start: Instant,
        notify: Option<(Sender<u64>, u64)>,
    ) -> Option<(Instant, String)> {
        let mut shard = self.shard(&id).lock();
        if let Some(Entry::Done { at, status }) = shard.remove(&id) {
            return Some((at, status));
        }
        shard.insert(id, Entry::Waiting { start, notify });
        self.waiting.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// A final status seen on the stream; returns when the task started, if it was waiting.
    fn complete(&self, id: &str, status: &str, at: Instant) -> Option<Instant> {
        let mut shard = self.shard(id).lock();
        match shard.remove(id) {
            Some(Entry::Waiting { start, notify }) => {
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                if let Some((tx, ticket)) = notify {
                    let _ = tx.try_send(ticket);
                }
                Some(start)
            }
            Some(done @ Entry::Done { .. }) => {
                shard.insert(id.to_string(), done);
                None
            }
            None => {
                shard.insert(
                    id.to_string(),
                    Entry::Done {
                        at,
                        status: status.to_string(),
                    },
                );
                None
            }
        }
    }

    /// Gives up on a task; returns its completion if it arrived meanwhile.
    fn abandon(&self, id: &str) -> Option<(Instant, String)> {
        match self.shard(id).lock().remove(id) {
            Some(Entry::Waiting { .. }) => {
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                None
            }
            Some(Entry::Done { at, status }) => Some((at, status)),
            None => None,
        }
    }
}

/// Counts one observed final status: latency for `completed`, an error otherwise.
fn settle(
    status: &str,
    start: Instant,
    at: Instant,
    hist: &mut Histogram,
    errors: &mut Errors,
    counters: &Counters,
) {
    if status == "completed" {
        hist.record(at.saturating_duration_since(start));
        counters.completed.fetch_add(1, Ordering::Relaxed);
    } else {
        errors.add(format!("task_{status}"));
        counters.errors.fetch_add(1, Ordering::Relaxed);
    }
}

struct StreamResult {
    latency: Histogram,
    errors: Errors,
    reconnects: u64,
}

/// Reads the global stream, settling every final status it sees, until `stop`; reconnects
/// with `Last-Event-ID` if the server drops it (at most 100 times).
fn follow(
    ctx: &Ctx,
    mut stream: SseStream,
    book: &Book,
    counters: &Counters,
    stop: &AtomicBool,
    closer: &Mutex<Option<TcpStream>>,
) -> StreamResult {
    let mut out = StreamResult {
        latency: Histogram::default(),
        errors: Errors::default(),
        reconnects: 0,
    };
    let mut ev = SseEvent::default();
    let mut last_id = String::new();
    for _ in 0..=100 {
        while let Ok(true) = stream.next_event(&mut ev) {
            if !ev.id.is_empty() {
                last_id.clear();
                last_id.push_str(&ev.id);
            }
            if ev.event != "status" {
                continue;
            }
            let Some(status) = json_str(&ev.data, "status") else {
                continue;
            };
            if !is_final(status) {
                continue;
            }
            let Some(id) = json_str(&ev.data, "task_id") else {
                continue;
            };
            let at = Instant::now();
            if let Some(start) = book.complete(id, status, at) {
                settle(
                    status,
                    start,
                    at,
                    &mut out.latency,
                    &mut out.errors,
                    counters,
                );
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        out.reconnects += 1;
        let resume = (!last_id.is_empty()).then_some(last_id.as_str());
        match SseStream::open(&ctx.http, "/stream", resume, Duration::from_secs(60)) {
            Ok(s) => {
                stream = s;
                // Under the lock, so a concurrent `Halt` either closes this stream or is seen.
                let mut slot = closer.lock();
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                *slot = stream.closer().ok();
            }
            Err(e) => {
                out.errors.add(format!("stream_{}", e.kind()));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    out
}

/// Ends the completion stream when dropped, on every way out of a run (errors included), so
/// the scoped threads can be joined.
struct Halt<'a> {
    stop: &'a AtomicBool,
    closer: &'a Mutex<Option<TcpStream>>,
}

impl Drop for Halt<'_> {
    fn drop(&mut self) {
        let slot = self.closer.lock();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(c) = slot.as_ref() {
            http::close(c);
        }
    }
}

struct ClientResult {
    latency: Histogram,
    create: Histogram,
    errors: Errors,
}

/// Polls a task until it is final; returns its status and when that was seen.
fn poll_until_final(
    client: &mut Client,
    id: &str,
    deadline: Instant,
) -> Result<(String, Instant), String> {
    let mut delay = Duration::ZERO;
    loop {
        let (status, _) = task_status(client, id)?;
        if is_final(&status) {
            return Ok((status, Instant::now()));
        }
        if Instant::now() >= deadline {
            return Err("no_completion".into());
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        delay = (delay * 2).clamp(Duration::from_micros(250), Duration::from_millis(5));
    }
}

#[allow(clippy::too_many_arguments)]
fn client_loop(
    ctx: &Ctx,
    opts: &Opts,
    ids: &[String],
    next_agent: &AtomicUsize,
    pacer: &Pacer,
    book: &Book,
    counters: &Counters,
) -> ClientResult {
    let mut out = ClientResult {
        latency: Histogram::default(),
        create: Histogram::default(),
        errors: Errors::default(),
    };
    let mut client = Client::new(ctx.http.clone());
    let (tx, rx): (Sender<u64>, Receiver<u64>) = bounded(16);
    let closed = opts.rate.is_none();
    let mut ticket = 0u64;
    while let Some(start) = pacer.next() {
        let agent = &ids[next_agent.fetch_add(1, Ordering::Relaxed) % ids.len()];
        let sent = Instant::now();
        let id = match create_task(&mut client, agent, "true", opts.task_timeout_s) {
            Created::Task(id) => id,
            Created::Failed(kind) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                if kind == "io" || kind == "timeout" {
                    std::thread::sleep(Duration::from_millis(10)); // no busy loop on a dead server
                }
                out.errors.add(kind);
                continue;
            }
        };
        out.create.record(sent.elapsed());
        counters.created.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + opts.wait;
        match opts.completion {
            Completion::Poll => match poll_until_final(&mut client, &id, deadline) {
                Ok((status, at)) => settle(
                    &status,
                    start,
                    at,
                    &mut out.latency,
                    &mut out.errors,
                    counters,
                ),
                Err(kind) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    out.errors.add(kind);
                }
            },
            Completion::Sse => {
                ticket += 1;
                let notify = closed.then(|| (tx.clone(), ticket));
                if let Some((at, status)) = book.register(id.clone(), start, notify) {
                    settle(
                        &status,
                        start,
                        at,
                        &mut out.latency,
                        &mut out.errors,
                        counters,
                    );
                    continue;
                }
                if !closed {
                    continue;
                }
                let done = loop {
                    match rx.recv_deadline(deadline) {
                        Ok(t) if t == ticket => break true,
                        Ok(_) => continue, // a late signal for an abandoned task
                        Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                            break false
                        }
                    }
                };
                if !done {
                    match book.abandon(&id) {
                        Some((at, status)) => settle(
                            &status,
                            start,
                            at,
                            &mut out.latency,
                            &mut out.errors,
                            counters,
                        ),
                        None => {
                            counters.errors.fetch_add(1, Ordering::Relaxed);
                            out.errors.add("no_completion");
                        }
                    }
                }
            }
        }
    }
    out
}

/// Runs a dispatch load against agents `ids` (already answering) for `ctx.duration`.
pub fn run_load(
    ctx: &Ctx,
    opts: &Opts,
    ids: &[String],
    counters: &Counters,
) -> Result<LoadResult, String> {
    if ids.is_empty() {
        return Err("no agents".into());
    }
    let book = Book::new();
    let stop = AtomicBool::new(false);
    let closer: Mutex<Option<TcpStream>> = Mutex::new(None);
    let first_stream = match opts.completion {
        Completion::Sse => {
            let s = SseStream::open(&ctx.http, "/stream", None, Duration::from_secs(60)).map_err(
                |e| {
                    format!(
                        "cannot open the global event stream GET /stream ({e}); \
                         use --completion poll for servers without one"
                    )
                },
            )?;
            *closer.lock() = s.closer().ok();
            Some(s)
        }
        Completion::Poll => None,
    };
    let next_agent = AtomicUsize::new(0);
    let mut result = LoadResult::default();
    let pacer = Pacer::new(opts.rate, ctx.duration);
    std::thread::scope(|s| -> Result<(), String> {
        let halt = Halt {
            stop: &stop,
            closer: &closer,
        };
        let follower = first_stream.map(|stream| {
            let (book, stop, closer) = (&book, &stop, &closer);
            std::thread::Builder::new()
                .name("bench-completions".into())
                .spawn_scoped(s, move || follow(ctx, stream, book, counters, stop, closer))
        });
        let follower = follower.transpose().map_err(|e| e.to_string())?;
        let mut clients = Vec::with_capacity(opts.clients);
        for i in 0..opts.clients {
            let (book, pacer, next_agent) = (&book, &pacer, &next_agent);
            let h = std::thread::Builder::new()
                .name(format!("bench-client-{i}"))
                .stack_size(256 << 10)
                .spawn_scoped(s, move || {
                    client_loop(ctx, opts, ids, next_agent, pacer, book, counters)
                })
                .map_err(|e| e.to_string())?;
            clients.push(h);
        }
        for h in clients {
            let r = h
                .join()
                .map_err(|_| "a client thread panicked".to_string())?;
            result.latency.merge(&r.latency);
            result.create.merge(&r.create);
            result.errors.merge(&r.errors);
        }
        result.create_elapsed = pacer.start().elapsed();
        // Open loop: completions still on their way get up to `wait` to arrive.
        let drain_until = Instant::now() + opts.wait;
        while book.waiting.load(Ordering::Relaxed) > 0 && Instant::now() < drain_until {
            std::thread::sleep(Duration::from_millis(5));
        }
        result.total_elapsed = pacer.start().elapsed();
        drop(halt);
        if let Some(f) = follower {
            let r = f
                .join()
                .map_err(|_| "the stream thread panicked".to_string())?;
            result.latency.merge(&r.latency);
            result.errors.merge(&r.errors);
            result.stream_reconnects = r.reconnects;
        }
        Ok(())
    })?;
    let waiting = book.waiting.load(Ordering::Relaxed) as u64;
    if waiting > 0 {
        *result
            .errors
            .by_kind
            .entry("no_completion".into())
            .or_insert(0) += waiting;
    }
    result.incomplete = result
        .errors
        .by_kind
        .get("no_completion")
        .copied()
        .unwrap_or(0);
    result.created = counters.created.load(Ordering::Relaxed);
    result.completed = result.latency.count();
    Ok(result)
}

/// Puts a load's figures in a report.
pub fn add_figures(r: &mut Report, l: &LoadResult) {
    let secs = l.create_elapsed.as_secs_f64().max(1e-9);
    let all = l.total_elapsed.as_secs_f64().max(1e-9);
    r.figure("created", "tasks created", l.created as f64, "");
    r.figure(
        "created_per_s",
        "created/s",
        l.created as f64 / secs,
        "tasks/s",
    );
    r.figure("completed", "completions observed", l.completed as f64, "");
    r.figure(
        "completed_per_s",
        "completed/s",
        l.completed as f64 / all,
        "tasks/s",
    );
    r.latency(
        [
            "latency_p50_ms",
            "latency_p90_ms",
            "latency_p99_ms",
            "latency_max_ms",
            "latency_samples",
        ],
        [
            "create→completion p50",
            "create→completion p90",
            "create→completion p99",
            "create→completion max",
            "latency samples",
        ],
        &l.latency,
    );
    r.figure(
        "create_p50_ms",
        "POST /tasks/shell answer p50",
        l.create.quantile_ms(0.5),
        "ms",
    );
    r.figure(
        "create_p99_ms",
        "POST /tasks/shell answer p99",
        l.create.quantile_ms(0.99),
        "ms",
    );
    r.figure(
        "incomplete",
        "created, completion not seen",
        l.incomplete as f64,
        "",
    );
    r.figure(
        "stream_reconnects",
        "completion-stream reconnects",
        l.stream_reconnects as f64,
        "",
    );
}

/// The `dispatch` scenario.
pub fn run(ctx: &Ctx, opts: &Opts) -> Result<Report, String> {
    let creds = ctx.credentials(opts.agents)?;
    let mut pool = AgentPool::connect(&ctx.grpc, creds, ctx.grpc_threads, 4)?;
    pool.answer(opts.chunks, opts.chunk_bytes);
    let ids = pool.ids();
    wait_for_agents(&ctx.http, &ids, Duration::from_secs(15))?;

    let server = Arc::new(Mutex::new(Tracker::new(ctx.server_pid)));
    let mut me = Tracker::new(Some(std::process::id()));
    let counters = Arc::new(Counters::default());
    let progress = {
        let (c, server) = (counters.clone(), server.clone());
        let mut last = (0u64, 0u64);
        Progress::start(move |t| {
            let created = c.created.load(Ordering::Relaxed);
            let completed = c.completed.load(Ordering::Relaxed);
            let line = format!(
                "[{:>4.0}s] dispatch: created {created} ({}/s), completed {completed} ({}/s), errors {}{}",
                t.as_secs_f64(),
                created - last.0,
                completed - last.1,
                c.errors.load(Ordering::Relaxed),
                rss_note(&mut server.lock()),
            );
            last = (created, completed);
            line
        })
    };
    let load = run_load(ctx, opts, &ids, &counters);
    progress.stop();
    let load = load?;
    let mut server = *server.lock();
    server.sample();
    me.sample();

    let mut r = ctx.report("dispatch");
    r.param("clients", opts.clients as u64);
    r.param("agents", opts.agents as u64);
    r.param("chunks", opts.chunks);
    r.param("chunk_bytes", opts.chunk_bytes as u64);
    r.param(
        "completion",
        match opts.completion {
            Completion::Sse => "sse",
            Completion::Poll => "poll",
        },
    );
    r.param("rate", opts.rate);
    add_figures(&mut r, &load);
    r.server(&server, load.total_elapsed);
    r.costs(
        &me,
        &server,
        load.total_elapsed,
        load.created as f64,
        "server_cpu_us_per_task",
        "server CPU per task",
    );
    r.errors = load.errors;
    if opts.completion == Completion::Poll {
        r.notes.push(
            "poll mode: latency includes the polling interval (250 µs doubling to 5 ms)".into(),
        );
    }
    r.agent_stream_errors(
        pool.stats.stream_errors.load(Ordering::Relaxed),
        pool.stats.last_error.lock().clone(),
    );
    Ok(r)
}

/// ", server RSS N MB" for progress lines, when the server is known.
pub fn rss_note(t: &mut Tracker) -> String {
    match t.sample() {
        Some(u) => format!(
            ", server RSS {} MB, {} threads",
            number(u.rss_kib as f64 * 1024.0 / 1e6),
            u.threads
        ),
        None => String::new(),
    }
}
