//! Tests of the task manager with a recording gateway: real threads, short durations.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use parking_lot::Mutex;

use super::*;
use crate::tasks::{
    AgentCommand, AgentGateway, AgentReport, Delivery, EventKind, GatewayError, ManagerConfig,
    ReportStatus, TaskError, TaskEvent, TaskFilter, TaskId, TaskSpec, TaskStatus,
};

/// A gateway that records what it is asked to send and knows which agents are "connected".
#[derive(Default)]
struct FakeGateway {
    connected: Mutex<HashSet<String>>,
    sent: Mutex<Vec<(String, AgentCommand)>>,
    generations: Mutex<HashMap<String, u64>>,
    /// While set, a run request waits in `dispatch` until this channel yields.
    hold_runs: Mutex<Option<Receiver<()>>>,
}

impl FakeGateway {
    fn with(agents: &[&str]) -> Arc<Self> {
        let g = FakeGateway::default();
        g.connected
            .lock()
            .extend(agents.iter().map(|a| a.to_string()));
        Arc::new(g)
    }

    fn cancels_for(&self, id: TaskId) -> Vec<String> {
        self.sent
            .lock()
            .iter()
            .filter_map(|(_, c)| match c {
                AgentCommand::Cancel { task_id, reason } if *task_id == id => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }

    /// The agent connects or disconnects: its new liveness generation.
    fn bump(&self, agent: &str) -> u64 {
        let mut gens = self.generations.lock();
        let g = gens.entry(agent.to_string()).or_insert(0);
        *g += 1;
        *g
    }
}

impl AgentGateway for FakeGateway {
    fn dispatch(&self, agent_id: &str, command: AgentCommand) -> Result<(), GatewayError> {
        if !self.connected.lock().contains(agent_id) {
            return Err(GatewayError::NotConnected);
        }
        if matches!(command, AgentCommand::Run { .. }) {
            let hold = self.hold_runs.lock().take();
            if let Some(release) = hold {
                let _ = release.recv_timeout(Duration::from_secs(10));
            }
        }
        self.sent.lock().push((agent_id.to_string(), command));
        Ok(())
    }

    fn generation(&self, agent_id: &str) -> u64 {
        self.generations.lock().get(agent_id).copied().unwrap_or(0)
    }
}

fn fast_config() -> ManagerConfig {
    ManagerConfig {
        timer_tick: Duration::from_millis(5),
        min_timeout: Duration::from_millis(1),
        ..ManagerConfig::default()
    }
}

fn shell(cmd: &str) -> TaskSpec {
    TaskSpec::Shell {
        cmd: cmd.into(),
        env: vec![],
        working_dir: None,
    }
}

fn report(
    agent: &str,
    id: TaskId,
    status: ReportStatus,
    is_final: bool,
    stdout: &str,
) -> AgentReport {
    let mut r = AgentReport::new(Arc::from(agent), id.to_string(), status);
    r.is_final = is_final;
    r.stdout = stdout.into();
    if is_final && status == ReportStatus::Completed {
        r.exit_code = Some(0);
    }
    r
}

/// Collects every event a listener receives.
fn recorder(m: &TaskManager) -> Receiver<Arc<TaskEvent>> {
    let (tx, rx) = unbounded();
    m.add_listener(
        "test",
        Box::new(move |d| {
            if let Delivery::Events(events) = d {
                for e in events {
                    let _ = tx.send(e);
                }
            }
        }),
    )
    .expect("listener starts");
    rx
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn status_of(m: &TaskManager, id: TaskId) -> TaskStatus {
    m.get_task(id).expect("task exists").status
}

#[test]
fn a_task_runs_from_created_to_completed_with_its_output() {
    let gw = FakeGateway::with(&["a1"]);
    let m = TaskManager::start(fast_config(), gw.clone()).expect("starts");
    let events = recorder(&m);
    let t = m.send_task("a1", shell("echo hi"), None).expect("sent");
    assert_eq!(t.status, TaskStatus::Sent);
    assert_eq!(t.timeout, Duration::from_secs(300), "default timeout");
    let sink = m.report_sink();
    sink.send(report("a1", t.id, ReportStatus::InProgress, false, "hi\n"))
        .expect("queued");
    sink.send(report("a1", t.id, ReportStatus::Completed, true, ""))
        .expect("queued");
    wait_for("completion", Duration::from_secs(5), || {
        status_of(&m, t.id).is_final()
    });
    let done = m.get_task(t.id).expect("exists");
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(done.output.expect("output").stdout, "hi\n");
    assert!(done.finished_at.is_some());
    m.shutdown();
    let got: Vec<Arc<TaskEvent>> = events.try_iter().collect();
    let statuses: Vec<TaskStatus> = got
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Status { status, .. } => Some(status),
            _ => None,
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            TaskStatus::Created,
            TaskStatus::Sent,
            TaskStatus::InProgress,
            TaskStatus::Completed
        ]
    );
    let seqs: Vec<u64> = got.iter().map(|e| e.task_seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "per-task numbering in order"
    );
}

#[test]
fn invalid_requests_are_refused_before_anything_is_recorded() {
    let m = TaskManager::start(fast_config(), FakeGateway::with(&["a1"])).expect("starts");
    let cases = [
        ("", shell("x"), None, "agent_id"),
        ("a1", shell("  "), None, "cmd"),
        ("a1", shell("x"), Some(Duration::ZERO), "timeout"),
        (
            "a1",
            shell("x"),
            Some(Duration::from_secs(24 * 3600 + 1)),
            "timeout",
        ),
    ];
    for (agent, spec, timeout, field) in cases {
        match m.send_task(agent, spec, timeout) {
            Err(TaskError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected invalid {field}, got {other:?}"),
        }
    }
    assert_eq!(m.task_count(), 0);
    m.shutdown();
}

#[test]
fn an_unconnected_agent_gets_a_failed_task_and_a_typed_error() {
    let m = TaskManager::start(fast_config(), FakeGateway::with(&[])).expect("starts");
    let err = m
        .send_task("ghost", shell("true"), None)
        .expect_err("not connected");
    let TaskError::AgentNotConnected { task_id, .. } = err else {
        panic!("{err:?}")
    };
    let t = m.get_task(task_id).expect("recorded");
    assert_eq!(t.status, TaskStatus::Failed);
    assert_eq!(t.error.as_deref(), Some("agent not connected"));
    m.shutdown();
}

#[test]
fn late_and_foreign_responses_never_resurrect_a_task() {
    let gw = FakeGateway::with(&["a1", "a2"]);
    let m = TaskManager::start(fast_config(), gw).expect("starts");
    let t = m.send_task("a1", shell("sleep 9"), None).expect("sent");
    m.cancel_task(t.id).expect("cancelled");
    let sink = m.report_sink();
    sink.send(report("a1", t.id, ReportStatus::Completed, true, "late"))
        .expect("queued");
    sink.send(report(
        "a2",
        t.id,
        ReportStatus::InProgress,
        false,
        "foreign",
    ))
    .expect("queued");
    let mut garbage = report("a1", t.id, ReportStatus::InProgress, false, "");
    garbage.task_id = "not-a-uuid".into();
    sink.send(garbage).expect("queued");
    wait_for("responses applied", Duration::from_secs(5), || {
        m.stats().responses.load(Ordering::Relaxed) == 3
    });
    let after = m.get_task(t.id).expect("exists");
    assert_eq!(after.status, TaskStatus::Cancelled);
    assert_eq!(after.output.expect("output").stdout, "");
    assert_eq!(m.stats().late_responses.load(Ordering::Relaxed), 1);
    assert_eq!(m.stats().unknown_responses.load(Ordering::Relaxed), 1);
    assert_eq!(
        m.stats().foreign_responses.load(Ordering::Relaxed),
        1,
        "another agent's report is a security signal of its own, not an unknown id"
    );
    assert!(matches!(
        m.cancel_task(t.id),
        Err(TaskError::AlreadyFinished { .. })
    ));
    assert!(matches!(
        m.cancel_task(TaskId::new_v4()),
        Err(TaskError::NotFound(_))
    ));
    m.shutdown();
}

#[test]
fn cancel_tells_the_agent_and_survives_a_gone_agent() {
    let gw = FakeGateway::with(&["a1"]);
    let m = TaskManager::start(fast_config(), gw.clone()).expect("starts");
    let t = m.send_task("a1", shell("sleep 9"), None).expect("sent");
    let c = m.cancel_task(t.id).expect("cancels");
    assert_eq!(c.status, TaskStatus::Cancelled);
    assert_eq!(gw.cancels_for(t.id), vec!["cancelled by user".to_string()]);
    let t2 = m.send_task("a1", shell("sleep 9"), None).expect("sent");
    gw.connected.lock().clear();
    assert_eq!(
        m.cancel_task(t2.id).expect("still cancels").status,
        TaskStatus::Cancelled
    );
    m.shutdown();
}

#[test]
fn timeouts_fire_within_two_ticks_and_stop_the_agent_side() {
    let gw = FakeGateway::with(&["a1"]);
    let cfg = fast_config();
    let tick = cfg.timer_tick;
    let m = TaskManager::start(cfg, gw.clone()).expect("starts");
    let events = recorder(&m);
    let timeout = Duration::from_millis(100);
    let t = m
        .send_task("a1", shell("sleep 9"), Some(timeout))
        .expect("sent");
    let deadline = t.created_at + timeout;
    let fired = loop {
        let e = events
            .recv_timeout(Duration::from_secs(5))
            .expect("an event");
        if let EventKind::Status {
            status: TaskStatus::Timeout,
            ..
        } = e.kind
        {
            break e.at;
        }
    };
    assert!(fired >= deadline, "never before the deadline");
    // Two ticks, plus generous scheduling slack for a loaded 2-core machine: this checks the
    // wheel fires the timeout itself, not a speed (benches/timer_wheel measures that).
    let late = fired.duration_since(deadline).unwrap_or_default();
    assert!(
        late <= 2 * tick + Duration::from_millis(500),
        "fired {late:?} after the deadline"
    );
    // The agent is told after the status is recorded (and published), so wait for it.
    wait_for("the agent-side cancel", Duration::from_secs(5), || {
        !gw.cancels_for(t.id).is_empty()
    });
    assert_eq!(gw.cancels_for(t.id), vec!["timeout".to_string()]);
    assert_eq!(
        m.get_task(t.id).expect("exists").error.as_deref(),
        Some("timed out after 100ms")
    );
    m.shutdown();
}

#[test]
fn cleanup_removes_old_finished_tasks_only() {
    let m = TaskManager::start(fast_config(), FakeGateway::with(&["a1"])).expect("starts");
    let done = m.send_task("a1", shell("true"), None).expect("sent");
    m.cancel_task(done.id).expect("finished");
    let running = m.send_task("a1", shell("sleep 9"), None).expect("sent");
    assert_eq!(
        m.cleanup_completed_tasks(Duration::from_secs(60)),
        0,
        "too young"
    );
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(m.cleanup_completed_tasks(Duration::from_millis(10)), 1);
    assert!(m.get_task(done.id).is_none());
    assert!(
        m.get_task(running.id).is_some(),
        "unfinished tasks are never swept"
    );
    m.shutdown();
}

#[test]
fn the_periodic_sweep_runs_on_the_timer() {
    let cfg = ManagerConfig {
        cleanup_interval: Duration::from_millis(30),
        cleanup_age: Duration::from_millis(10),
        ..fast_config()
    };
    let m = TaskManager::start(cfg, FakeGateway::with(&["a1"])).expect("starts");
    let t = m.send_task("a1", shell("true"), None).expect("sent");
    m.cancel_task(t.id).expect("finished");
    wait_for("sweep", Duration::from_secs(5), || {
        m.get_task(t.id).is_none()
    });
    assert!(m.stats().cleanup_runs.load(Ordering::Relaxed) >= 1);
    m.shutdown();
}

#[test]
fn a_full_registry_evicts_the_oldest_finished_then_refuses() {
    let cfg = ManagerConfig {
        max_tasks: 3,
        ..fast_config()
    };
    let m = TaskManager::start(cfg, FakeGateway::with(&["a1"])).expect("starts");
    let a = m.send_task("a1", shell("a"), None).expect("a");
    let b = m.send_task("a1", shell("b"), None).expect("b");
    let c = m.send_task("a1", shell("c"), None).expect("c");
    m.cancel_task(b.id).expect("b finishes first");
    m.cancel_task(a.id).expect("a finishes second");
    let d = m.send_task("a1", shell("d"), None).expect("evicts b");
    assert!(m.get_task(b.id).is_none(), "oldest finished goes first");
    assert!(m.get_task(a.id).is_some());
    let e = m.send_task("a1", shell("e"), None).expect("evicts a");
    assert!(m.get_task(a.id).is_none());
    assert!(matches!(
        m.send_task("a1", shell("f"), None),
        Err(TaskError::RegistryFull { max_tasks: 3 })
    ));
    for id in [c.id, d.id, e.id] {
        assert!(m.get_task(id).is_some());
    }
    m.shutdown();
}

#[test]
fn a_lost_agent_fails_its_tasks_after_the_grace_unless_it_returns() {
    let cfg = ManagerConfig {
        disconnect_grace: Duration::from_millis(80),
        ..fast_config()
    };
    let gw = FakeGateway::with(&["a1", "a2", "marker"]);
    let m = TaskManager::start(cfg, gw.clone()).expect("starts");
    let lost = m.send_task("a1", shell("sleep 9"), None).expect("sent");
    let kept = m.send_task("a2", shell("sleep 9"), None).expect("sent");
    let marker = m.send_task("marker", shell("sleep 9"), None).expect("sent");
    for agent in ["a1", "a2", "marker"] {
        gw.bump(agent); // connected
    }
    m.agent_disconnected("a1", gw.bump("a1"));
    m.agent_disconnected("a2", gw.bump("a2"));
    gw.bump("a2"); // back within the grace
    m.report_sink()
        .send(report(
            "a2",
            kept.id,
            ReportStatus::InProgress,
            false,
            "still here\n",
        ))
        .expect("queued");
    wait_for("grace expiry", Duration::from_secs(5), || {
        status_of(&m, lost.id) == TaskStatus::Failed
    });
    assert_eq!(
        m.get_task(lost.id).expect("exists").error.as_deref(),
        Some("agent disconnected")
    );
    // Grace periods fire in the order they were scheduled: once the marker agent's (scheduled
    // last) has failed its task, a2's has been decided too.
    m.agent_disconnected("marker", gw.bump("marker"));
    wait_for("the marker's grace expiry", Duration::from_secs(5), || {
        status_of(&m, marker.id) == TaskStatus::Failed
    });
    assert_eq!(
        status_of(&m, kept.id),
        TaskStatus::InProgress,
        "a returning agent keeps its tasks"
    );
    m.shutdown();
}

#[test]
fn lists_are_newest_first_and_filtered() {
    let m = TaskManager::start(fast_config(), FakeGateway::with(&["a1", "a2"])).expect("starts");
    let ids: Vec<TaskId> = (0..5)
        .map(|i| {
            m.send_task(if i % 2 == 0 { "a1" } else { "a2" }, shell("x"), None)
                .expect("sent")
                .id
        })
        .collect();
    m.cancel_task(ids[4]).expect("cancel");
    let all: Vec<TaskId> = m
        .list_tasks(&TaskFilter::default())
        .expect("lists")
        .tasks
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(all, ids.iter().rev().copied().collect::<Vec<_>>());
    let a2: Vec<TaskId> = m
        .list_tasks(&TaskFilter {
            agent_id: Some("a2".into()),
            ..TaskFilter::default()
        })
        .expect("lists")
        .tasks
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(a2, vec![ids[3], ids[1]]);
    let cancelled = m
        .list_tasks(&TaskFilter {
            status: Some(TaskStatus::Cancelled),
            ..TaskFilter::default()
        })
        .expect("lists");
    assert_eq!(cancelled.tasks.len(), 1);
    let first = m
        .list_tasks(&TaskFilter {
            limit: Some(2),
            ..TaskFilter::default()
        })
        .expect("lists");
    assert_eq!(first.tasks.len(), 2);
    // The cursor continues where the page ended, and the last page says so.
    let rest = m
        .list_tasks(&TaskFilter {
            limit: Some(10),
            cursor: first.next_cursor.clone(),
            ..TaskFilter::default()
        })
        .expect("lists");
    let paged: Vec<TaskId> = first
        .tasks
        .iter()
        .chain(&rest.tasks)
        .map(|t| t.id)
        .collect();
    assert_eq!(paged, ids.iter().rev().copied().collect::<Vec<_>>());
    assert!(rest.next_cursor.is_none());
    m.shutdown();
}

#[test]
fn a_listing_has_a_default_limit_and_a_maximum() {
    let m = TaskManager::start(fast_config(), FakeGateway::with(&["a1"])).expect("starts");
    for _ in 0..TaskFilter::DEFAULT_LIMIT + 5 {
        m.send_task("a1", shell("x"), None).expect("sent");
    }
    let listed = m.list_tasks(&TaskFilter::default()).expect("lists");
    assert_eq!(listed.tasks.len(), TaskFilter::DEFAULT_LIMIT);
    let at_max = TaskFilter {
        limit: Some(TaskFilter::MAX_LIMIT),
        ..TaskFilter::default()
    };
    assert_eq!(
        m.list_tasks(&at_max).expect("lists").tasks.len(),
        TaskFilter::DEFAULT_LIMIT + 5
    );
    let beyond = TaskFilter {
        limit: Some(TaskFilter::MAX_LIMIT + 1),
        ..TaskFilter::default()
    };
    assert!(matches!(
        m.list_tasks(&beyond),
        Err(TaskError::Invalid { field: "limit", .. })
    ));
    m.shutdown();
}

#[test]
fn empty_responses_that_change_nothing_are_not_recorded() {
    let m = TaskManager::start(fast_config(), FakeGateway::with(&["a1"])).expect("starts");
    let events = recorder(&m);
    let t = m.send_task("a1", shell("x"), None).expect("sent");
    let sink = m.report_sink();
    sink.send(report("a1", t.id, ReportStatus::InProgress, false, ""))
        .expect("queued");
    for _ in 0..1000 {
        sink.send(report("a1", t.id, ReportStatus::InProgress, false, ""))
            .expect("queued");
    }
    sink.send(report("a1", t.id, ReportStatus::Completed, true, "done\n"))
        .expect("queued");
    wait_for("completion", Duration::from_secs(5), || {
        status_of(&m, t.id).is_final()
    });
    assert_eq!(m.stats().empty_responses.load(Ordering::Relaxed), 1000);
    let replay = m.replay(t.id, 0).expect("replays");
    let kinds: Vec<&str> = replay
        .events
        .iter()
        .map(|e| match &e.kind {
            EventKind::Status { .. } => "status",
            EventKind::Output { .. } => "response",
        })
        .collect();
    // created, sent, the first (empty) response that moved it to in_progress, in_progress,
    // the final response, completed.
    assert_eq!(
        kinds,
        ["status", "status", "response", "status", "response", "status"]
    );
    m.shutdown();
    let published = events.try_iter().count();
    assert_eq!(published, 6, "nothing published for the empty responses");
}

#[test]
fn the_output_budget_sheds_finished_tasks_first_then_the_oldest_running() {
    let cfg = ManagerConfig {
        max_output_total_bytes: 64 << 10,
        ..fast_config()
    };
    let m = TaskManager::start(cfg, FakeGateway::with(&["a1"])).expect("starts");
    let sink = m.report_sink();
    let chunk = "x".repeat(20 << 10);
    let send = |id: TaskId, status: ReportStatus, is_final: bool| {
        sink.send(report("a1", id, status, is_final, &chunk))
            .expect("queued");
    };
    let out = |id| m.get_task(id).expect("task").output.expect("output");
    let done = m.send_task("a1", shell("a"), None).expect("sent").id;
    send(done, ReportStatus::Completed, true);
    wait_for("the first task to finish", Duration::from_secs(5), || {
        status_of(&m, done).is_final()
    });
    let old = m.send_task("a1", shell("b"), None).expect("sent").id;
    send(old, ReportStatus::InProgress, false);
    let young = m.send_task("a1", shell("c"), None).expect("sent").id;
    send(young, ReportStatus::InProgress, false);
    let young_holds = |n: usize| {
        wait_for("the young task's output", Duration::from_secs(5), || {
            out(young).stdout.len() == n * chunk.len()
        })
    };
    young_holds(1);
    assert_eq!(out(done).stdout.len(), chunk.len(), "still within budget");
    // A fourth chunk exceeds it: the finished task's output goes first.
    send(young, ReportStatus::InProgress, false);
    young_holds(2);
    assert!(out(done).stdout.len() < chunk.len());
    assert!(out(done).stdout_truncated);
    assert_eq!(
        out(old).stdout.len(),
        chunk.len(),
        "running tasks keep theirs"
    );
    // More: the finished one has nothing left, then the oldest running task loses its oldest.
    send(young, ReportStatus::InProgress, false);
    young_holds(3);
    assert_eq!(out(done).stdout.len(), 0);
    assert!(out(old).stdout.len() < chunk.len() && out(old).stdout_truncated);
    assert!(
        !out(young).stdout_truncated,
        "the youngest keeps everything"
    );
    assert!(m.output_total_bytes() <= 64 << 10);
    assert_eq!(m.stats().output_budget_shed.load(Ordering::Relaxed), 2);
    assert_eq!(m.stats().output_truncated.load(Ordering::Relaxed), 0);
    m.shutdown();
}

#[test]
fn a_panicking_listener_is_contained() {
    let m = TaskManager::start(fast_config(), FakeGateway::with(&["a1"])).expect("starts");
    m.add_listener("bad", Box::new(|_| panic!("listener bug")))
        .expect("adds");
    let events = recorder(&m);
    m.send_task("a1", shell("x"), None).expect("sent");
    m.send_task("a1", shell("y"), None).expect("sent");
    let n = (0..4)
        .filter(|_| events.recv_timeout(Duration::from_secs(5)).is_ok())
        .count();
    assert_eq!(
        n, 4,
        "created+sent for two tasks, despite the panicking listener"
    );
    m.shutdown();
}

/// Acceptance 3: a channel of size 1 and a slow listener; 100 000 responses from 8
/// producers all arrive.
#[test]
fn a_tiny_channel_and_a_slow_listener_lose_no_response() {
    let cfg = ManagerConfig {
        response_channel_capacity: 1,
        listener_queue: 16,
        ..fast_config()
    };
    let m = TaskManager::start(cfg, FakeGateway::with(&["a1"])).expect("starts");
    m.add_listener(
        "slow",
        Box::new(|_| std::thread::sleep(Duration::from_micros(200))),
    )
    .expect("adds");
    let tasks: Vec<TaskId> = (0..8)
        .map(|_| m.send_task("a1", shell("x"), None).expect("sent").id)
        .collect();
    const PER: usize = 12_500;
    let producers: Vec<_> = tasks
        .iter()
        .map(|&id| {
            let sink = m.report_sink();
            std::thread::spawn(move || {
                for i in 0..PER {
                    let line = format!("{i}\n");
                    sink.send(report("a1", id, ReportStatus::InProgress, false, &line))
                        .expect("queued");
                }
            })
        })
        .collect();
    for p in producers {
        p.join().expect("producer");
    }
    wait_for("all applied", Duration::from_secs(60), || {
        m.stats().responses.load(Ordering::Relaxed) == (8 * PER) as u64
    });
    for id in tasks {
        let out = m
            .get_task(id)
            .expect("exists")
            .output
            .expect("output")
            .stdout;
        let want: String = (0..PER).map(|i| format!("{i}\n")).collect();
        assert_eq!(out, want, "every chunk, in order");
    }
    assert!(
        m.stats().backpressure_waits.load(Ordering::Relaxed) > 0,
        "producers had to wait"
    );
    m.shutdown();
}

/// Acceptance 2: 8 threads create, answer, cancel and time out 80 000 tasks concurrently;
/// every task ends in exactly the state its history implies, with its output intact.
#[test]
fn stress_every_task_ends_in_the_state_its_history_implies() {
    let cfg = ManagerConfig {
        response_channel_capacity: 64,
        ..fast_config()
    };
    let m = TaskManager::start(cfg, FakeGateway::with(&["a1"])).expect("starts");
    let started = Instant::now();
    const THREADS: usize = 8;
    const PER: usize = 10_000;
    let expected: Arc<Mutex<HashMap<TaskId, (TaskStatus, String)>>> = Arc::default();
    let counter = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..THREADS)
        .map(|w| {
            let m = m.clone();
            let expected = expected.clone();
            let counter = counter.clone();
            std::thread::spawn(move || {
                let sink = m.report_sink();
                for i in 0..PER {
                    let kind = (w * PER + i) % 4;
                    let timeout = if kind == 3 {
                        Duration::from_millis(20)
                    } else {
                        Duration::from_secs(600)
                    };
                    let id = m
                        .send_task("a1", shell("x"), Some(timeout))
                        .expect("sent")
                        .id;
                    counter.fetch_add(1, Ordering::Relaxed);
                    let text = format!("{w}-{i}\n");
                    let outcome = match kind {
                        0 => {
                            sink.send(report("a1", id, ReportStatus::InProgress, false, &text))
                                .expect("q");
                            sink.send(report("a1", id, ReportStatus::Completed, true, ""))
                                .expect("q");
                            (TaskStatus::Completed, text)
                        }
                        1 => {
                            let mut r = report("a1", id, ReportStatus::Failure, true, "");
                            r.stderr = "cannot start".into();
                            sink.send(r).expect("q");
                            (TaskStatus::Failed, String::new())
                        }
                        2 => {
                            m.cancel_task(id).expect("cancel of a fresh task");
                            // The agent's answer after the cancel is late and ignored.
                            sink.send(report("a1", id, ReportStatus::Completed, true, "late"))
                                .expect("q");
                            (TaskStatus::Cancelled, String::new())
                        }
                        _ => (TaskStatus::Timeout, String::new()),
                    };
                    expected.lock().insert(id, outcome);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let total = (THREADS * PER) as u64;
    wait_for("every task final", Duration::from_secs(120), || {
        m.list_tasks(&TaskFilter {
            status: Some(TaskStatus::Created),
            ..TaskFilter::default()
        })
        .is_ok_and(|p| p.tasks.is_empty())
            && [TaskStatus::Sent, TaskStatus::InProgress]
                .into_iter()
                .all(|st| {
                    m.list_tasks(&TaskFilter {
                        status: Some(st),
                        ..TaskFilter::default()
                    })
                    .is_ok_and(|p| p.tasks.is_empty())
                })
    });
    assert_eq!(counter.load(Ordering::Relaxed), total);
    let expected = expected.lock();
    assert_eq!(expected.len() as u64, total);
    for (id, (status, out)) in expected.iter() {
        let t = m.get_task(*id).expect("kept");
        assert_eq!(t.status, *status, "task {id}");
        assert_eq!(&t.output.expect("output").stdout, out, "task {id}");
    }
    let s = m.stats();
    assert_eq!(
        s.finished_with(TaskStatus::Completed) as usize,
        PER * THREADS / 4
    );
    assert_eq!(
        s.finished_with(TaskStatus::Timeout) as usize,
        PER * THREADS / 4
    );
    assert_eq!(
        s.late_responses.load(Ordering::Relaxed) as usize,
        PER * THREADS / 4
    );
    assert!(started.elapsed() < Duration::from_secs(180), "no deadlock");
    m.shutdown();
}

/// Set in the child process that [`many_managers_start_and_stop_without_leaving_threads`]
/// runs itself in, alone, so no other test's threads are counted.
const THREAD_COUNT_CHILD: &str = "NODELINK_THREAD_COUNT_CHILD";

/// Threads of this process now, from /proc.
fn process_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .count()
}

#[test]
fn many_managers_start_and_stop_without_leaving_threads() {
    if std::env::var_os(THREAD_COUNT_CHILD).is_none() {
        // Tests run in parallel threads of one process: count in a process of our own.
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new(exe)
            .args([
                "tasks::manager::tests::many_managers_start_and_stop_without_leaving_threads",
                "--exact",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(THREAD_COUNT_CHILD, "1")
            .output()
            .expect("the test binary runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "child failed:\n{text}");
        assert!(
            text.contains("1 passed"),
            "the test ran in the child:\n{text}"
        );
        return;
    }
    let baseline = process_threads();
    for _ in 0..20 {
        let m = TaskManager::start(fast_config(), FakeGateway::with(&["a1"])).expect("starts");
        let _ = recorder(&m);
        m.send_task("a1", shell("x"), None).expect("sent");
        assert!(
            process_threads() >= baseline + 3,
            "response, timer and listener threads run"
        );
        m.shutdown();
    }
    wait_for(
        "threads back to the baseline",
        Duration::from_secs(10),
        || process_threads() <= baseline,
    );
}

#[test]
fn a_task_that_times_out_on_its_way_is_stopped_with_reason_timeout() {
    let gw = FakeGateway::with(&["a1"]);
    let (release, hold) = crossbeam_channel::bounded::<()>(1);
    *gw.hold_runs.lock() = Some(hold);
    let m = TaskManager::start(fast_config(), gw.clone()).expect("starts");
    let events = recorder(&m);
    let sender = {
        let m = m.clone();
        std::thread::spawn(move || {
            m.send_task("a1", shell("sleep 9"), Some(Duration::from_millis(20)))
                .expect("sent")
        })
    };
    // The run request is held in the gateway until the task has timed out.
    let id = loop {
        let e = events
            .recv_timeout(Duration::from_secs(5))
            .expect("an event");
        if let EventKind::Status {
            status: TaskStatus::Timeout,
            ..
        } = e.kind
        {
            break e.task_id;
        }
    };
    release.send(()).expect("released");
    let t = sender.join().expect("send_task returns");
    assert_eq!(t.status, TaskStatus::Timeout);
    wait_for("the cancel after the run", Duration::from_secs(5), || {
        gw.cancels_for(id).len() == 2
    });
    assert_eq!(
        gw.cancels_for(id),
        vec!["timeout".to_string(), "timeout".to_string()],
        "the timer's cancel and the one that follows the held run request"
    );
    m.shutdown();
}
