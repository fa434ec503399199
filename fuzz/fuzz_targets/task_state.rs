//! The real task manager (`TaskManager`, its response thread, timer wheel and listener) driven
//! by an arbitrary sequence of operations: create tasks, agent responses of every kind for
//! known, foreign, unknown and malformed ids, user cancels, short timeouts, agent
//! disconnects and returns, sweeps. Responses go through the real `ReportSink`; after each one
//! a response for a sentinel task acts as a barrier, so every response's effect can be
//! attributed to it (the response thread applies responses in order).
//!
//! Invariants, checked over every event the listener received and the registry at the end:
//! - event numbers: `global_seq` strictly increases, by one; each task's `task_seq` counts
//!   1, 2, 3…; no event is dropped;
//! - each status event is a change the lifecycle table (`transition::next`) allows, and once
//!   a task is final it has no further event of any kind;
//! - a response from the task's own agent with a known status is applied (one `response`
//!   event with exactly its content) unless the task was already final: nothing is lost;
//!   responses for unknown ids or from another agent are never applied;
//! - the retained output is the in-order concatenation of the applied chunks, or its newest
//!   suffix when truncated; the exit code is the last one applied; the status is the last
//!   status event's;
//! - a task's replayed history (`TaskManager::replay`) is a subsequence of what was
//!   delivered, with every status event and each output's newest bytes.

#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use crossbeam_channel::{unbounded, Receiver};
use libfuzzer_sys::fuzz_target;
use nodelink::tasks::transition::{self, Transition, Trigger};
use nodelink::tasks::{
    AgentCommand, AgentGateway, AgentReport, Delivery, EventKind, GatewayError, ManagerConfig,
    ReportSink, ReportStatus, TaskError, TaskEvent, TaskId, TaskManager, TaskSpec, TaskStatus,
};
use parking_lot::Mutex;

/// Output bytes retained per stream: small, so truncation happens.
const MAX_OUTPUT: usize = 64;
const AGENTS: [&str; 3] = ["a0", "a1", "a2"];
const SENTINEL_AGENT: &str = "sentinel";
const MAX_OPS: usize = 48;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Status {
    Unknown,
    InProgress,
    Completed,
    Failure,
}

impl Status {
    fn report(self) -> ReportStatus {
        match self {
            Status::Unknown => ReportStatus::Unknown,
            Status::InProgress => ReportStatus::InProgress,
            Status::Completed => ReportStatus::Completed,
            Status::Failure => ReportStatus::Failure,
        }
    }
}

/// Which task a response claims to be about, and who sends it.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Target {
    /// The task's own agent.
    Own(u8),
    /// Another agent, about someone else's task.
    Foreign(u8),
    /// A well-formed id the manager never issued.
    UnknownId,
    /// Not a UUID at all.
    Garbage,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Create {
        agent: u8,
        short_timeout: bool,
    },
    Report {
        target: Target,
        status: Status,
        is_final: bool,
        cancelled: bool,
        stdout: String,
        stderr: String,
        exit_code: Option<i32>,
    },
    Cancel(u8),
    /// The agent's stream ends: its tasks fail after a 1 ms grace unless it comes back.
    Disconnect(u8),
    Reconnect(u8),
    /// The gateway stops (or starts again) reaching the agent: creations fail to send.
    Unplug(u8),
    Plug(u8),
    /// Lets timers fire (timeouts, grace periods).
    Wait,
    /// Removes every finished task.
    Sweep,
}

/// Reaches the connected agents instantly and owns their liveness generations, as the
/// agent directory does; records nothing else.
#[derive(Default)]
struct Gateway {
    unplugged: Mutex<HashSet<String>>,
    generations: Mutex<HashMap<String, u64>>,
}

impl Gateway {
    /// A connect or disconnect of `agent`: its new generation.
    fn bump(&self, agent: &str) -> u64 {
        let mut gens = self.generations.lock();
        let g = gens.entry(agent.to_string()).or_insert(0);
        *g += 1;
        *g
    }
}

impl AgentGateway for Gateway {
    fn dispatch(&self, agent_id: &str, _command: AgentCommand) -> Result<(), GatewayError> {
        if self.unplugged.lock().contains(agent_id) {
            Err(GatewayError::NotConnected)
        } else {
            Ok(())
        }
    }

    fn generation(&self, agent_id: &str) -> u64 {
        self.generations.lock().get(agent_id).copied().unwrap_or(0)
    }
}

/// A response the fuzzer sent, and what it must have done.
struct Sent {
    task: Option<TaskId>,
    /// Whether the manager must treat it as about `task` (own agent, known status).
    applicable: bool,
    /// Whether the manager must ignore it (foreign, unknown, garbage id).
    foreign: bool,
    report: AgentReport,
    /// The sentinel events before and after it: its effects lie between these.
    window: (u64, u64),
}

fuzz_target!(|ops: Vec<Op>| {
    let ops = &ops[..ops.len().min(MAX_OPS)];
    run(ops);
});

fn run(ops: &[Op]) {
    let cfg = ManagerConfig {
        timer_tick: Duration::from_millis(1),
        min_timeout: Duration::from_millis(1),
        disconnect_grace: Duration::from_millis(1),
        max_output_bytes: MAX_OUTPUT,
        response_channel_capacity: 4,
        ..ManagerConfig::default()
    };
    let gateway = Arc::new(Gateway::default());
    let manager = TaskManager::start(cfg, gateway.clone()).expect("manager starts");
    let (tx, rx) = unbounded::<Delivery>();
    manager
        .add_listener("fuzz", Box::new(move |d| tx.send(d).unwrap()))
        .expect("listener starts");
    let sink = manager.report_sink();
    let sentinel = manager
        .send_task(SENTINEL_AGENT, shell("sentinel"), None)
        .expect("sentinel task")
        .id;

    let mut seen = Seen::default();
    let mut tasks: Vec<TaskId> = Vec::new();
    let mut owner: HashMap<TaskId, &'static str> = HashMap::new();
    let mut sent: Vec<Sent> = Vec::new();
    let mut barrier = seen.barrier(&sink, sentinel, &rx);

    for op in ops {
        match op {
            Op::Create {
                agent,
                short_timeout,
            } => {
                let agent = AGENTS[*agent as usize % AGENTS.len()];
                let timeout = short_timeout.then_some(Duration::from_millis(1));
                match manager.send_task(agent, shell("true"), timeout) {
                    Ok(t) => {
                        owner.insert(t.id, agent);
                        assert!(
                            matches!(
                                t.status,
                                TaskStatus::Sent | TaskStatus::Timeout | TaskStatus::Failed
                            ),
                            "a new task is {}",
                            t.status
                        );
                        tasks.push(t.id);
                    }
                    Err(TaskError::AgentNotConnected { task_id, .. }) => {
                        owner.insert(task_id, agent);
                        tasks.push(task_id);
                    }
                    Err(e) => panic!("create failed: {e}"),
                }
            }
            Op::Report {
                target,
                status,
                is_final,
                cancelled,
                stdout,
                stderr,
                exit_code,
            } => {
                let (task, agent, task_id, applicable, foreign) = match *target {
                    Target::Own(i) if !tasks.is_empty() => {
                        let id = tasks[i as usize % tasks.len()];
                        let agent: Arc<str> = Arc::from(owner[&id]);
                        let known = !matches!(status, Status::Unknown);
                        (Some(id), agent, id.to_string(), known, false)
                    }
                    Target::Foreign(i) if !tasks.is_empty() => {
                        let id = tasks[i as usize % tasks.len()];
                        let other = AGENTS.iter().find(|a| **a != owner[&id]).unwrap();
                        (Some(id), Arc::from(*other), id.to_string(), false, true)
                    }
                    Target::Garbage => {
                        (None, Arc::from(AGENTS[0]), "not-a-task".into(), false, true)
                    }
                    _ => (
                        None,
                        Arc::from(AGENTS[0]),
                        TaskId::new_v4().to_string(),
                        false,
                        true,
                    ),
                };
                let mut report = AgentReport::new(agent, task_id, status.report());
                report.is_final = *is_final;
                report.cancelled = *cancelled;
                report.stdout = stdout.clone();
                report.stderr = stderr.clone();
                report.exit_code = *exit_code;
                sink.send(report.clone())
                    .expect("the sink accepts responses");
                let after = seen.barrier(&sink, sentinel, &rx);
                sent.push(Sent {
                    task,
                    applicable,
                    foreign,
                    report,
                    window: (barrier, after),
                });
                barrier = after;
            }
            Op::Cancel(i) => {
                let Some(&id) = tasks.get(*i as usize % tasks.len().max(1)) else {
                    continue;
                };
                match manager.cancel_task(id) {
                    Ok(t) => assert_eq!(t.status, TaskStatus::Cancelled),
                    Err(TaskError::AlreadyFinished { status, .. }) => assert!(status.is_final()),
                    Err(TaskError::NotFound(_)) => {} // swept; checked at the end
                    Err(e) => panic!("cancel failed: {e}"),
                }
            }
            Op::Disconnect(a) => {
                let agent = AGENTS[*a as usize % AGENTS.len()];
                manager.agent_disconnected(agent, gateway.bump(agent));
            }
            Op::Reconnect(a) => {
                gateway.bump(AGENTS[*a as usize % AGENTS.len()]);
            }
            Op::Unplug(a) => {
                gateway
                    .unplugged
                    .lock()
                    .insert(AGENTS[*a as usize % AGENTS.len()].to_string());
            }
            Op::Plug(a) => {
                gateway
                    .unplugged
                    .lock()
                    .remove(AGENTS[*a as usize % AGENTS.len()]);
            }
            Op::Wait => std::thread::sleep(Duration::from_millis(2)),
            Op::Sweep => {
                manager.cleanup_completed_tasks(Duration::ZERO);
            }
        }
    }

    // Stops the threads after they drained everything; the listener has every event then.
    manager.shutdown();
    seen.drain(&rx);
    check(&manager, &seen, &tasks, &sent, sentinel);
}

fn shell(cmd: &str) -> TaskSpec {
    TaskSpec::Shell {
        cmd: cmd.into(),
        env: vec![],
        working_dir: None,
    }
}

/// Every event the listener got, in delivery order.
#[derive(Default)]
struct Seen {
    events: Vec<Arc<TaskEvent>>,
}

impl Seen {
    fn take(&mut self, d: Delivery) {
        match d {
            Delivery::Events(batch) => self.events.extend(batch),
            Delivery::Lagged { missed, .. } => panic!("the listener lost {missed} events"),
        }
    }

    /// Sends a response for the sentinel task and waits for its event: every response sent
    /// before it has then been applied. Returns that event's `global_seq`.
    fn barrier(&mut self, sink: &ReportSink, sentinel: TaskId, rx: &Receiver<Delivery>) -> u64 {
        let report = AgentReport::new(
            Arc::from(SENTINEL_AGENT),
            sentinel.to_string(),
            ReportStatus::InProgress,
        );
        sink.send(report).expect("sentinel response");
        loop {
            let d = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the sentinel response was applied within 10 s (a response was lost?)");
            let seen = self.events.len();
            self.take(d);
            let sentinel_output = self.events[seen..]
                .iter()
                .find(|e| e.task_id == sentinel && matches!(e.kind, EventKind::Output { .. }));
            if let Some(e) = sentinel_output {
                return e.global_seq;
            }
        }
    }

    fn drain(&mut self, rx: &Receiver<Delivery>) {
        while let Ok(d) = rx.try_recv() {
            self.take(d);
        }
    }
}

fn is_final_status(e: &TaskEvent) -> bool {
    matches!(e.kind, EventKind::Status { status, .. } if status.is_final())
}

fn check(manager: &TaskManager, seen: &Seen, tasks: &[TaskId], sent: &[Sent], sentinel: TaskId) {
    // Global numbering: one event after another, none missing.
    for (i, e) in seen.events.iter().enumerate() {
        assert_eq!(
            e.global_seq,
            i as u64 + 1,
            "global_seq out of order or missing"
        );
    }

    let mut per_task: HashMap<TaskId, Vec<&TaskEvent>> = HashMap::new();
    for e in &seen.events {
        per_task.entry(e.task_id).or_default().push(e);
    }
    for (id, events) in &per_task {
        let mut status: Option<TaskStatus> = None;
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.task_seq, i as u64 + 1, "task {id}: task_seq out of order");
            if let Some(s) = status {
                assert!(
                    !s.is_final(),
                    "task {id} had an event after its final status {s}"
                );
            }
            if let EventKind::Status { status: new, .. } = e.kind {
                match status {
                    None => assert_eq!(new, TaskStatus::Created, "task {id} began as {new}"),
                    Some(old) => assert!(
                        allowed(old, new),
                        "task {id}: {old} → {new} is not in the lifecycle table"
                    ),
                }
                status = Some(new);
            } else {
                assert!(status.is_some(), "task {id}: output before creation");
            }
        }
    }

    // Every response's fate, from the events between its two barriers.
    for s in sent {
        let (lo, hi) = s.window;
        let applied: Vec<&TaskEvent> = seen.events[lo as usize..(hi - 1) as usize]
            .iter()
            .map(|e| &**e)
            .filter(|e| e.task_id != sentinel && matches!(e.kind, EventKind::Output { .. }))
            .collect();
        assert!(
            applied.len() <= 1,
            "one response made {} output events",
            applied.len()
        );
        if s.foreign {
            assert!(
                applied.is_empty(),
                "a foreign or unknown response was applied"
            );
            continue;
        }
        let task = s.task.expect("own responses name a task");
        match applied.first() {
            Some(e) => {
                assert!(s.applicable, "a response with status UNKNOWN was applied");
                assert_eq!(e.task_id, task, "a response was applied to another task");
                let r = &s.report;
                let want = EventKind::Output {
                    status: r.status,
                    is_final: r.is_final,
                    cancelled: r.cancelled,
                    stdout: r.stdout.clone(),
                    stderr: r.stderr.clone(),
                    exit_code: r.exit_code,
                };
                assert_eq!(
                    e.kind, want,
                    "the applied response differs from the one sent"
                );
            }
            None if s.applicable => {
                let final_before = per_task
                    .get(&task)
                    .is_some_and(|evs| evs.iter().any(|e| is_final_status(e) && e.global_seq < hi));
                assert!(
                    final_before,
                    "a response for unfinished task {task} was lost"
                );
            }
            None => {}
        }
    }

    for id in tasks.iter().chain([&sentinel]) {
        let events = per_task.get(id).expect("every task has events");
        let Some(snap) = manager.get_task(*id) else {
            assert!(
                events.iter().any(|e| is_final_status(e)),
                "unfinished task {id} was removed"
            );
            continue;
        };
        let last_status = events
            .iter()
            .rev()
            .find_map(|e| match e.kind {
                EventKind::Status { status, .. } => Some(status),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            snap.status, last_status,
            "task {id}: status differs from its events"
        );
        let (mut out, mut err, mut exit) = (String::new(), String::new(), None);
        for e in events {
            if let EventKind::Output {
                stdout,
                stderr,
                exit_code,
                ..
            } = &e.kind
            {
                out.push_str(stdout);
                err.push_str(stderr);
                if exit_code.is_some() {
                    exit = *exit_code;
                }
            }
        }
        assert_eq!(
            snap.exit_code, exit,
            "task {id}: exit code is not the last applied"
        );
        let o = snap.output.expect("get_task carries output");
        retained(id, "stdout", &out, &o.stdout, o.stdout_truncated);
        retained(id, "stderr", &err, &o.stderr, o.stderr_truncated);

        let replay = manager.replay(*id, 0).expect("a held task replays");
        assert!(replay.finished == snap.status.is_final());
        assert_eq!(replay.last_seq, events.len() as u64);
        let by_seq: HashMap<u64, &TaskEvent> = events.iter().map(|e| (e.task_seq, *e)).collect();
        let mut prev = 0;
        let mut statuses = 0;
        for r in &replay.events {
            assert!(r.task_seq > prev, "task {id}: replay out of order");
            prev = r.task_seq;
            let orig = by_seq
                .get(&r.task_seq)
                .expect("replayed event was delivered");
            match (&r.kind, &orig.kind) {
                (EventKind::Status { .. }, EventKind::Status { .. }) => {
                    statuses += 1;
                    assert_eq!(r.kind, orig.kind, "task {id}: replayed status differs");
                }
                (
                    EventKind::Output {
                        status: s1,
                        is_final: f1,
                        cancelled: c1,
                        stdout: o1,
                        stderr: e1,
                        exit_code: x1,
                    },
                    EventKind::Output {
                        status: s2,
                        is_final: f2,
                        cancelled: c2,
                        stdout: o2,
                        stderr: e2,
                        exit_code: x2,
                    },
                ) => {
                    assert_eq!((s1, f1, c1, x1), (s2, f2, c2, x2));
                    assert!(
                        o2.ends_with(o1.as_str()),
                        "task {id}: replayed stdout is not a suffix"
                    );
                    assert!(
                        e2.ends_with(e1.as_str()),
                        "task {id}: replayed stderr is not a suffix"
                    );
                }
                _ => panic!("task {id}: replayed event changed kind"),
            }
        }
        let delivered_statuses = events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Status { .. }))
            .count();
        assert_eq!(
            statuses, delivered_statuses,
            "task {id}: a status event is missing from replay"
        );
    }
}

/// The retained text of a stream is the whole concatenation, or its newest bytes when
/// truncated (minus a character cut in half at the front).
fn retained(id: &TaskId, stream: &str, all: &str, kept: &str, truncated: bool) {
    assert_eq!(
        truncated,
        all.len() > MAX_OUTPUT,
        "task {id}: {stream} truncated flag is wrong ({} bytes sent)",
        all.len()
    );
    if truncated {
        assert!(
            all.ends_with(kept),
            "task {id}: {stream} is not the newest bytes"
        );
        assert!(
            kept.len() <= MAX_OUTPUT && kept.len() + 3 >= MAX_OUTPUT,
            "task {id}: {stream} kept {} bytes",
            kept.len()
        );
    } else {
        assert_eq!(
            kept, all,
            "task {id}: {stream} differs from the applied chunks in order"
        );
    }
}

/// Whether some trigger of the lifecycle table takes `old` to `new`.
fn allowed(old: TaskStatus, new: TaskStatus) -> bool {
    let mut triggers = vec![
        Trigger::Sent,
        Trigger::Timeout,
        Trigger::Cancel,
        Trigger::SendFailed,
        Trigger::AgentLost,
    ];
    for status in ReportStatus::ALL {
        for is_final in [false, true] {
            for cancelled in [false, true] {
                triggers.push(Trigger::Report {
                    status,
                    is_final,
                    cancelled,
                });
            }
        }
    }
    triggers
        .into_iter()
        .any(|t| transition::next(old, t) == Ok(Transition::To(new)))
}
