//! Criterion benchmarks of the server's hot paths, through public APIs only: the task
//! registry (create, look up, apply agent reports) via `TaskManager` with a gateway that does
//! nothing, the lifecycle table `transition::next`, the SSE event JSON (`api::json::event_data`)
//! and SSE framing (`http::sse::format_event`).
//!
//! Run with `cargo bench --bench hot_paths`; ten samples of about a second each, so the whole
//! file runs in well under a minute. Reports go through the real response channel and thread,
//! so the report benchmarks measure steady-state throughput of the pipeline (the bounded
//! channel makes the producer wait for the response thread), not just a channel push.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nodelink::api::json::event_data;
use nodelink::http::sse::format_event;
use nodelink::tasks::transition::{next, Trigger};
use nodelink::tasks::{
    AgentCommand, AgentGateway, AgentReport, EventKind, GatewayError, ManagerConfig, ReportStatus,
    TaskEvent, TaskId, TaskManager, TaskSpec, TaskStatus,
};

/// A gateway that accepts every command and does nothing with it.
struct Noop;

impl AgentGateway for Noop {
    fn dispatch(&self, _agent: &str, _command: AgentCommand) -> Result<(), GatewayError> {
        Ok(())
    }

    fn generation(&self, _agent: &str) -> u64 {
        0
    }
}

fn manager(max_tasks: usize) -> TaskManager {
    let cfg = ManagerConfig {
        max_tasks,
        ..ManagerConfig::default()
    };
    match TaskManager::start(cfg, Arc::new(Noop)) {
        Ok(m) => m,
        Err(e) => panic!("cannot start the task manager: {e}"),
    }
}

fn shell() -> TaskSpec {
    TaskSpec::Shell {
        cmd: "true".into(),
        env: Vec::new(),
        working_dir: None,
    }
}

fn create(m: &TaskManager, agent: &str) -> TaskId {
    match m.send_task(agent, shell(), Some(Duration::from_secs(600))) {
        Ok(t) => t.id,
        Err(e) => panic!("send_task: {e}"),
    }
}

fn report(agent: &Arc<str>, id: TaskId, status: ReportStatus, is_final: bool) -> AgentReport {
    let mut r = AgentReport::new(agent.clone(), id.to_string(), status);
    r.is_final = is_final;
    if is_final {
        r.exit_code = Some(0);
    }
    r
}

/// Waits (at most 10 s) until `id` is final: the response thread has caught up.
fn settle(m: &TaskManager, id: TaskId) {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if m.get_task(id).is_some_and(|t| t.status.is_final()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn registry(c: &mut Criterion) {
    let mut g = c.benchmark_group("registry");
    g.throughput(Throughput::Elements(1));
    let agent: Arc<str> = Arc::from("a1");

    // Insert: register a task, schedule its timeout, mark it sent. The registry is kept at its
    // bound by completing every task, so the steady state includes evicting the oldest.
    let m = manager(20_000);
    let sink = m.report_sink();
    let mut last = None;
    g.bench_function("send_task_then_complete", |b| {
        b.iter(|| {
            let id = create(&m, "a1");
            let _ = sink.send(report(&agent, id, ReportStatus::Completed, true));
            last = Some(id);
        })
    });
    if let Some(id) = last {
        settle(&m, id);
    }

    // Lookup: a full snapshot (with output) of one of 10 000 finished tasks.
    let ids: Vec<TaskId> = (0..10_000).map(|_| create(&m, "a1")).collect();
    for id in &ids {
        let _ = sink.send(report(&agent, *id, ReportStatus::Completed, true));
    }
    if let Some(id) = ids.last() {
        settle(&m, *id);
    }
    let mut i = 0;
    g.bench_function("get_task", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            black_box(m.get_task(ids[i]))
        })
    });
    m.shutdown();

    // Update: IN_PROGRESS reports with a 64-byte stdout chunk, spread over 64 open tasks,
    // applied by the response thread (output ring, event index, event publication).
    let m = manager(20_000);
    let sink = m.report_sink();
    let open: Vec<TaskId> = (0..64).map(|_| create(&m, "a1")).collect();
    let chunk = "x".repeat(63) + "\n";
    let mut i = 0;
    g.bench_function("apply_output_report_64B", |b| {
        b.iter(|| {
            i = (i + 1) % open.len();
            let mut r = report(&agent, open[i], ReportStatus::InProgress, false);
            r.stdout.push_str(&chunk);
            let _ = sink.send(r);
        })
    });
    m.shutdown();
    g.finish();
}

fn transitions(c: &mut Criterion) {
    let triggers = [
        Trigger::Sent,
        Trigger::Report {
            status: ReportStatus::InProgress,
            is_final: false,
            cancelled: false,
        },
        Trigger::Report {
            status: ReportStatus::Completed,
            is_final: true,
            cancelled: false,
        },
        Trigger::Report {
            status: ReportStatus::Failure,
            is_final: true,
            cancelled: false,
        },
        Trigger::Timeout,
        Trigger::Cancel,
        Trigger::SendFailed,
        Trigger::AgentLost,
    ];
    let pairs: Vec<(TaskStatus, Trigger)> = TaskStatus::ALL
        .iter()
        .flat_map(|s| triggers.iter().map(move |t| (*s, *t)))
        .collect();
    let mut g = c.benchmark_group("transition");
    g.throughput(Throughput::Elements(pairs.len() as u64));
    g.bench_function("next_all_pairs", |b| {
        b.iter(|| {
            for (s, t) in &pairs {
                let _ = black_box(next(black_box(*s), black_box(*t)));
            }
        })
    });
    g.finish();
}

fn event(kind: EventKind) -> TaskEvent {
    TaskEvent {
        global_seq: 123_456,
        task_seq: 3,
        task_id: TaskId::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        agent_id: Arc::from("web-01"),
        at: SystemTime::now(),
        kind,
    }
}

fn encoding(c: &mut Criterion) {
    let status = event(EventKind::Status {
        status: TaskStatus::Completed,
        reason: None,
    });
    let output = event(EventKind::Output {
        status: ReportStatus::InProgress,
        is_final: false,
        cancelled: false,
        stdout: "x".repeat(63) + "\n",
        stderr: String::new(),
        exit_code: None,
    });
    let mut g = c.benchmark_group("event");
    g.throughput(Throughput::Elements(1));
    g.bench_function("json_status", |b| b.iter(|| black_box(event_data(&status))));
    g.bench_function("json_output_64B", |b| {
        b.iter(|| black_box(event_data(&output)))
    });
    let data = event_data(&output);
    g.bench_function("sse_format_output_64B", |b| {
        b.iter(|| black_box(format_event(Some("123456"), "response", black_box(&data))))
    });
    g.bench_function("json_then_sse_status", |b| {
        b.iter(|| {
            let d = event_data(&status);
            black_box(format_event(Some("123456"), "status", &d))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = registry, transitions, encoding
}
criterion_main!(benches);
