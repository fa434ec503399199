//! `agents`: connects A simulated agents (default 2 000), each on its own TCP connection with
//! an open `StreamTasks` call, holds them for the run's duration and reports what the server
//! pays for them: resident memory before (idle, if the server was just started) and with the
//! agents connected, peak RSS, and threads. It also reports how long connecting took and
//! whether the server lists them all (`GET /agents`, where the server has it).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{wait_for_agents, Ctx};
use crate::agents::AgentPool;
use crate::procfs::{self, Tracker};
use crate::report::{number, Report};

/// The `agents` scenario with `count` agents.
pub fn run(ctx: &Ctx, count: usize) -> Result<Report, String> {
    let creds = ctx.credentials(count)?;
    let mut server = Tracker::new(ctx.server_pid);
    let idle = server.start;
    let t0 = Instant::now();
    let mut pool = AgentPool::connect(&ctx.grpc, creds, ctx.grpc_threads, 16)?;
    pool.hold();
    let ids = pool.ids();
    let registered = wait_for_agents(&ctx.http, &ids, Duration::from_secs(60))?;
    let connect_elapsed = t0.elapsed();
    eprintln!(
        "agents: {registered} of {count} agents connected in {:.1}s",
        connect_elapsed.as_secs_f64()
    );
    // Hold them, sampling the server.
    let held_from = Instant::now();
    let mut rss_with = 0u64;
    let mut anon_with = 0u64;
    let mut threads_with = 0u64;
    let mut next_line = Instant::now() + Duration::from_secs(1);
    while held_from.elapsed() < ctx.duration {
        if let Some(u) = server.sample() {
            rss_with = u.rss_kib;
            anon_with = u.anon_kib;
            threads_with = u.threads;
        }
        if Instant::now() >= next_line {
            next_line += Duration::from_secs(1);
            eprintln!(
                "[{:>4.0}s] agents: {} streams live{}",
                t0.elapsed().as_secs_f64(),
                pool.stats.live.load(Ordering::Relaxed),
                match server.last {
                    Some(u) => format!(
                        ", server RSS {} MB, {} threads",
                        number(u.rss_kib as f64 * 1024.0 / 1e6),
                        u.threads
                    ),
                    None => String::new(),
                }
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let live = pool.stats.live.load(Ordering::Relaxed);
    let stream_errors = pool.stats.stream_errors.load(Ordering::Relaxed);
    let last_error = pool.stats.last_error.lock().clone();
    drop(pool);
    // Let the server notice the disconnections, then read it once more.
    std::thread::sleep(Duration::from_millis(500));
    let after = ctx.server_pid.and_then(procfs::read);

    let mb = |kib: u64| kib as f64 * 1024.0 / 1e6;
    let mut r = ctx.report("agents");
    r.param("agents", count as u64);
    r.figure(
        "agents_registered",
        "agents the server lists",
        registered as f64,
        "",
    );
    r.figure("agents_live", "streams open at the end", live as f64, "");
    r.figure(
        "connect_s",
        "time to connect them all",
        connect_elapsed.as_secs_f64(),
        "s",
    );
    if let Some(u) = idle {
        r.figure(
            "rss_idle_mb",
            "server RSS before (idle)",
            mb(u.rss_kib),
            "MB",
        );
        r.figure(
            "rss_idle_anon_mb",
            "  of which anonymous (heap, stacks)",
            mb(u.anon_kib),
            "MB",
        );
        r.figure(
            "rss_idle_file_mb",
            "  of which file-backed (code)",
            mb(u.file_kib),
            "MB",
        );
        r.figure(
            "threads_idle",
            "server threads before",
            u.threads as f64,
            "",
        );
    }
    if server.last.is_some() {
        r.figure(
            "rss_agents_mb",
            "server RSS with the agents",
            mb(rss_with),
            "MB",
        );
        r.figure(
            "rss_agents_anon_mb",
            "  of which anonymous",
            mb(anon_with),
            "MB",
        );
        r.figure(
            "threads_agents",
            "server threads with the agents",
            threads_with as f64,
            "",
        );
        if let Some(u) = idle {
            r.figure(
                "rss_per_agent_kb",
                "server RSS per agent",
                rss_with.saturating_sub(u.rss_kib) as f64 * 1024.0 / 1e3 / count.max(1) as f64,
                "kB",
            );
        }
    }
    if let Some(u) = after {
        r.figure(
            "rss_after_mb",
            "server RSS after they left",
            mb(u.rss_kib),
            "MB",
        );
        r.figure(
            "server_hwm_mb",
            "server peak RSS (VmHWM)",
            mb(u.hwm_kib),
            "MB",
        );
    }
    if ctx.server_pid.is_none() {
        r.notes
            .push("server figures absent: pass --server-pid (same machine only)".into());
    }
    r.agent_stream_errors(stream_errors, last_error);
    if registered < count {
        r.errors
            .by_kind
            .insert("not_registered".into(), (count - registered) as u64);
    }
    Ok(r)
}
