//! `ingest`: N tasks stay open while their simulated agents stream output chunks of B bytes
//! for them as fast as gRPC flow control allows, round-robin over each agent's tasks, for the
//! run's duration; then each task gets its final response. The rate counts a chunk once the
//! server has applied it: the clock stops when `GET /tasks` shows every task final, and an
//! agent's final response is applied after all its chunks (one stream, applied in order).
//!
//! Verification reads each task back with `GET /tasks/{id}` and checks its retained stdout:
//! every chunk carries its task index and sequence number, so the check counts chunks lost,
//! out of order or corrupted. We verify from retained output rather than from an event stream
//! because it needs only the original endpoints and no reader that could itself fall behind;
//! the price is that the server must retain everything sent: no task is sent more than
//! `--retained-bytes` (default 1 MiB, the server's default `--max-output-bytes`), and a task
//! the server reports truncated is counted separately.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::dispatch::rss_note;
use super::{create_task, is_final, wait_for_agents, Created, Ctx};
use crate::agents::AgentPool;
use crate::http::Client;
use crate::procfs::Tracker;
use crate::report::{Progress, Report};

/// Settings of the ingest scenario.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Open tasks.
    pub tasks: usize,
    /// Simulated agents (tasks are spread round-robin).
    pub agents: usize,
    /// Bytes per chunk, newline included (at least 20).
    pub chunk_bytes: usize,
    /// Most bytes sent per task; must not exceed what the server retains.
    pub retained_bytes: usize,
}

/// Chunk `seq` of task `index`: `IIIIII:SSSSSSSSSS:` padded with `x` to `bytes`, ending in `\n`.
fn chunk(index: usize, seq: u64, bytes: usize) -> String {
    let mut s = format!("{index:06}:{seq:010}:");
    while s.len() + 1 < bytes {
        s.push('x');
    }
    s.push('\n');
    s
}

/// What the retained stdout of one task shows.
#[derive(Debug, Default, PartialEq, Eq)]
struct Check {
    lost: u64,
    reordered: u64,
    corrupt: u64,
}

fn verify(stdout: &str, index: usize, sent: u64, bytes: usize) -> Check {
    let mut c = Check::default();
    let mut seen = vec![false; sent as usize];
    let mut expected = 0u64;
    for line in stdout.split_terminator('\n') {
        let mut parts = line.splitn(3, ':');
        let (Some(i), Some(s), Some(pad)) = (parts.next(), parts.next(), parts.next()) else {
            c.corrupt += 1;
            continue;
        };
        let (Ok(i), Ok(s)) = (i.parse::<usize>(), s.parse::<u64>()) else {
            c.corrupt += 1;
            continue;
        };
        if i != index || s >= sent || line.len() + 1 != bytes || pad.bytes().any(|b| b != b'x') {
            c.corrupt += 1;
            continue;
        }
        if s != expected || seen[s as usize] {
            c.reordered += 1;
        }
        seen[s as usize] = true;
        expected = s + 1;
    }
    c.lost = seen.iter().filter(|x| !**x).count() as u64;
    c
}

/// The `ingest` scenario.
pub fn run(ctx: &Ctx, opts: &Opts) -> Result<Report, String> {
    if opts.chunk_bytes < 20 {
        return Err("--chunk-bytes must be at least 20 (each chunk carries its numbers)".into());
    }
    let budget = (opts.retained_bytes / opts.chunk_bytes) as u64;
    if budget == 0 {
        return Err("--retained-bytes must hold at least one chunk".into());
    }
    let creds = ctx.credentials(opts.agents)?;
    let mut pool = AgentPool::connect(&ctx.grpc, creds, ctx.grpc_threads, 4)?;
    let inboxes = pool.collect();
    let ids = pool.ids();
    wait_for_agents(&ctx.http, &ids, Duration::from_secs(15))?;

    // Open the tasks; they must outlive the run.
    let mut client = Client::new(ctx.http.clone());
    let timeout_s = ctx.duration.as_secs() + 300;
    let mut index_of: HashMap<String, usize> = HashMap::with_capacity(opts.tasks);
    let mut order: Vec<String> = Vec::with_capacity(opts.tasks);
    for i in 0..opts.tasks {
        match create_task(&mut client, &ids[i % ids.len()], "bench-ingest", timeout_s) {
            Created::Task(id) => {
                index_of.insert(id.clone(), i);
                order.push(id);
            }
            Created::Failed(kind) => return Err(format!("creating task {i} failed: {kind}")),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while inboxes.iter().map(|b| b.lock().len()).sum::<usize>() < opts.tasks {
        if Instant::now() >= deadline {
            return Err("the simulated agents did not receive every task within 15 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let per_agent: Vec<Vec<(String, usize)>> = inboxes
        .iter()
        .map(|b| {
            b.lock()
                .iter()
                .filter_map(|id| index_of.get(id).map(|&i| (id.clone(), i)))
                .collect()
        })
        .collect();

    let server = Arc::new(Mutex::new(Tracker::new(ctx.server_pid)));
    let mut me = Tracker::new(Some(std::process::id()));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let progress = {
        let (stats, server) = (pool.stats.clone(), server.clone());
        let mut last = 0u64;
        Progress::start(move |t| {
            let chunks = stats.chunks.load(Ordering::Relaxed);
            let line = format!(
                "[{:>4.0}s] ingest: chunks sent {chunks} ({}/s){}",
                t.as_secs_f64(),
                chunks - last,
                rss_note(&mut server.lock()),
            );
            last = chunks;
            line
        })
    };
    let t0 = Instant::now();
    let sent = pool.stream(
        per_agent,
        budget,
        chunk,
        opts.chunk_bytes,
        stop.clone(),
        done.clone(),
    );
    let n_agents = pool.len();
    let end = t0 + ctx.duration;
    while done.load(Ordering::Relaxed) < n_agents && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let limit = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::Relaxed) < n_agents && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(2));
    }
    let sent_elapsed = t0.elapsed();

    // Applied: every task final in the listing (no output in it, so polling is cheap).
    let mut pending: HashSet<&str> = order.iter().map(String::as_str).collect();
    let limit = Instant::now() + Duration::from_secs(60);
    let path = format!("/tasks?limit={}", opts.tasks);
    let mut list_errors = 0u64;
    while !pending.is_empty() && Instant::now() < limit {
        match client.get(&path) {
            Ok(r) if r.status == 200 => {
                if let Some(tasks) = r.json().and_then(|v| v.get("tasks")?.as_array().cloned()) {
                    for t in &tasks {
                        let status = t.get("status").and_then(|s| s.as_str()).unwrap_or("");
                        if let Some(id) = t.get("task_id").and_then(|s| s.as_str()) {
                            if is_final(status) {
                                pending.remove(id);
                            }
                        }
                    }
                }
            }
            _ => list_errors += 1,
        }
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let applied_elapsed = t0.elapsed();
    progress.stop();
    let not_final = pending.len();
    let mut server = *server.lock();
    server.sample();
    me.sample();

    // Verify every task's retained output.
    let mut total = Check::default();
    let mut truncated = 0u64;
    let mut not_completed = 0u64;
    let mut chunks_sent = 0u64;
    let mut r = ctx.report("ingest");
    for (i, id) in order.iter().enumerate() {
        let n = sent.get(id).map_or(0, |c| c.load(Ordering::Relaxed));
        chunks_sent += n;
        let v = match client.get(&format!("/tasks/{id}")) {
            Ok(resp) if resp.status == 200 => resp.json(),
            Ok(resp) => {
                r.errors.add(format!("verify_{}", resp.status));
                None
            }
            Err(e) => {
                r.errors.add(format!("verify_{}", e.kind()));
                None
            }
        };
        let Some(v) = v else {
            total.lost += n;
            continue;
        };
        if v.get("status").and_then(|s| s.as_str()) != Some("completed") {
            not_completed += 1;
        }
        if v.get("stdout_truncated").and_then(|t| t.as_bool()) == Some(true) {
            truncated += 1;
        }
        let stdout = v.get("stdout").and_then(|s| s.as_str()).unwrap_or("");
        let c = verify(stdout, i, n, opts.chunk_bytes);
        total.lost += c.lost;
        total.reordered += c.reordered;
        total.corrupt += c.corrupt;
    }

    let bytes = chunks_sent * opts.chunk_bytes as u64;
    let secs = applied_elapsed.as_secs_f64().max(1e-9);
    r.param("tasks", opts.tasks as u64);
    r.param("agents", opts.agents as u64);
    r.param("chunk_bytes", opts.chunk_bytes as u64);
    r.param("retained_bytes", opts.retained_bytes as u64);
    r.figure("chunks", "chunks sent", chunks_sent as f64, "");
    r.figure(
        "chunks_per_s",
        "chunks applied/s",
        chunks_sent as f64 / secs,
        "chunks/s",
    );
    r.figure(
        "mb_per_s",
        "output applied/s",
        bytes as f64 / secs / 1e6,
        "MB/s",
    );
    r.figure(
        "sent_per_s",
        "chunks written by agents/s",
        chunks_sent as f64 / sent_elapsed.as_secs_f64().max(1e-9),
        "chunks/s",
    );
    r.figure(
        "apply_lag_ms",
        "last write to all applied",
        applied_elapsed.saturating_sub(sent_elapsed).as_secs_f64() * 1000.0,
        "ms",
    );
    r.figure("lost", "chunks lost", total.lost as f64, "");
    r.figure(
        "reordered",
        "chunks out of order",
        total.reordered as f64,
        "",
    );
    r.figure("corrupt", "chunks corrupted", total.corrupt as f64, "");
    r.figure(
        "truncated_tasks",
        "tasks truncated by the server",
        truncated as f64,
        "",
    );
    r.figure(
        "not_completed",
        "tasks not completed",
        not_completed as f64,
        "",
    );
    r.server(&server, applied_elapsed);
    r.costs(
        &me,
        &server,
        applied_elapsed,
        chunks_sent as f64,
        "server_cpu_us_per_chunk",
        "server CPU per chunk",
    );
    if not_final > 0 {
        r.errors
            .by_kind
            .insert("not_final_after_60s".into(), not_final as u64);
    }
    if list_errors > 0 {
        r.errors.by_kind.insert("list_tasks".into(), list_errors);
    }
    if truncated > 0 {
        r.notes.push(
            "the server retained less than --retained-bytes: raise its --max-output-bytes".into(),
        );
    }
    if chunks_sent >= budget * opts.tasks as u64 {
        r.notes.push(format!(
            "every task reached its budget of {budget} chunks before the duration ended; \
             use more --tasks for a longer run"
        ));
    }
    r.agent_stream_errors(
        pool.stats.stream_errors.load(Ordering::Relaxed),
        pool.stats.last_error.lock().clone(),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_verify() {
        let all: String = (0..5).map(|s| chunk(3, s, 64)).collect();
        assert_eq!(chunk(3, 0, 64).len(), 64);
        assert_eq!(verify(&all, 3, 5, 64), Check::default());
        let gap: String = [0, 1, 3, 4].iter().map(|&s| chunk(3, s, 64)).collect();
        assert_eq!(verify(&gap, 3, 5, 64).lost, 1);
        let swapped: String = [0, 2, 1, 3, 4].iter().map(|&s| chunk(3, s, 64)).collect();
        let c = verify(&swapped, 3, 5, 64);
        assert_eq!((c.lost, c.reordered > 0), (0, true));
        assert_eq!(verify(&chunk(4, 0, 64), 3, 1, 64).corrupt, 1);
    }
}
