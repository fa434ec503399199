//! `TaskManager`: the public face of the task manager and the only writer of task status.
//!
//! Locking: one `parking_lot::RwLock<Registry>`. Every status change happens in
//! [`Inner::set_status`] under the write lock, which also numbers and publishes the event
//! (a non-blocking `try_send`), so events follow the real order. Work that talks to agents
//! (`AgentGateway::dispatch`) happens after the lock is released.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{bounded, Sender};
use parking_lot::{Mutex, RwLock};
use uuid::Uuid;

use super::config::ManagerConfig;
use super::error::TaskError;
use super::events::{Coalesce, EventKind, Listener, ListenerSet, TaskEvent};
use super::gateway::{AgentGateway, GatewayError};
use super::model::{
    AgentCommand, AgentReport, TaskFilter, TaskId, TaskSnapshot, TaskSpec, TaskStatus,
};
use super::registry::{Registry, Task};
use super::response_thread::{self, ReportSink};
use super::stats::Stats;
use super::transition::{self, Refusal, Transition, Trigger};
use crate::timer::{TimerHandle, TimerThread};

/// What the timer thread hands back to the manager.
#[derive(Debug)]
enum Timer {
    TaskTimeout(TaskId),
    Sweep,
    AgentGrace { agent_id: Arc<str>, generation: u64 },
}

/// A task's history as a late-joining or resuming reader gets it.
#[derive(Debug)]
pub struct Replay {
    /// Retained events after the requested sequence number, in order.
    pub events: Vec<TaskEvent>,
    /// Whether the task was final when the history was read.
    pub finished: bool,
    /// The sequence number of the task's newest event at that moment.
    pub last_seq: u64,
}

/// Handle to a running task manager; cheap to clone, shared by every thread.
#[derive(Clone)]
pub struct TaskManager {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ManagerConfig,
    registry: RwLock<Registry>,
    gateway: Arc<dyn AgentGateway>,
    timers: TimerHandle<Timer>,
    listeners: ListenerSet,
    stats: Arc<Stats>,
    global_seq: AtomicU64,
    agent_generations: Mutex<HashMap<Arc<str>, u64>>,
    stopping: AtomicBool,
    sink: ReportSink,
    threads: Mutex<Threads>,
}

#[derive(Default)]
struct Threads {
    stop_responses: Option<Sender<()>>,
    responses: Option<JoinHandle<()>>,
    timer: Option<TimerThread>,
}

impl TaskManager {
    /// Starts the response and timer threads; agents are reached through `gateway`.
    pub fn start(cfg: ManagerConfig, gateway: Arc<dyn AgentGateway>) -> std::io::Result<Self> {
        let (tx, rx) = bounded(cfg.response_channel_capacity.max(1));
        let (stop_tx, stop_rx) = bounded(1);
        let stats = Arc::new(Stats::default());
        // The timer thread calls back into the manager, which owns the timer handle: the
        // callback holds a weak reference filled in once the manager exists.
        let slot: Arc<OnceLock<Weak<Inner>>> = Arc::new(OnceLock::new());
        let callback_slot = slot.clone();
        let (timers, timer_thread) = TimerHandle::spawn(cfg.timer_tick, "nl-timer", move |t| {
            if let Some(inner) = callback_slot.get().and_then(Weak::upgrade) {
                inner.on_timer(t);
            }
        })?;
        let inner = Arc::new(Inner {
            listeners: ListenerSet::new(cfg.listener_queue),
            registry: RwLock::new(Registry::default()),
            gateway,
            timers,
            stats: stats.clone(),
            global_seq: AtomicU64::new(0),
            agent_generations: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            sink: ReportSink::new(tx, stats),
            threads: Mutex::new(Threads {
                timer: Some(timer_thread),
                ..Threads::default()
            }),
            cfg,
        });
        let _ = slot.set(Arc::downgrade(&inner));
        let applier = inner.clone();
        let responses = response_thread::spawn(rx, stop_rx, move |r| applier.apply_report(r))?;
        {
            let mut threads = inner.threads.lock();
            threads.responses = Some(responses);
            threads.stop_responses = Some(stop_tx);
        }
        inner
            .timers
            .schedule_after(inner.cfg.cleanup_interval, Timer::Sweep);
        Ok(TaskManager { inner })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ManagerConfig {
        &self.inner.cfg
    }

    /// Counters for operators.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Where the agent link puts responses.
    pub fn report_sink(&self) -> ReportSink {
        self.inner.sink.clone()
    }

    /// Registers an event listener on its own thread; it gets whatever is queued at once.
    pub fn add_listener(&self, name: &str, listener: Listener) -> std::io::Result<()> {
        self.inner
            .listeners
            .add(name, Box::new(|| Duration::ZERO), listener)
    }

    /// Registers a listener whose batches are at least `every()` apart: for a listener whose
    /// cost is per batch rather than per event (the SSE hub wakes every client per batch).
    pub fn add_coalescing_listener(
        &self,
        name: &str,
        every: Coalesce,
        listener: Listener,
    ) -> std::io::Result<()> {
        self.inner.listeners.add(name, every, listener)
    }

    /// Events dropped for listeners that fell behind.
    pub fn listener_drops(&self) -> u64 {
        self.inner.listeners.dropped()
    }

    /// Validates, registers, sends to the agent and schedules the timeout of a new task.
    pub fn send_task(
        &self,
        agent_id: &str,
        spec: TaskSpec,
        timeout: Option<Duration>,
    ) -> Result<TaskSnapshot, TaskError> {
        self.inner.send_task(agent_id, spec, timeout)
    }

    /// Cancels an unfinished task and tells its agent to stop it.
    pub fn cancel_task(&self, id: TaskId) -> Result<TaskSnapshot, TaskError> {
        self.inner.cancel_task(id)
    }

    /// A task with its retained output.
    pub fn get_task(&self, id: TaskId) -> Option<TaskSnapshot> {
        self.inner
            .registry
            .read()
            .get(&id)
            .map(|t| t.snapshot(true))
    }

    /// Tasks matching `filter`, newest first, without output; at most
    /// [`TaskFilter::MAX_LIMIT`] may be asked for.
    pub fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskSnapshot>, TaskError> {
        if filter.limit() > TaskFilter::MAX_LIMIT {
            return Err(invalid(
                "limit",
                format!("must be at most {}", TaskFilter::MAX_LIMIT),
            ));
        }
        Ok(self.inner.registry.read().list(filter))
    }

    /// Output retained by all tasks together, in bytes (see `ManagerConfig::max_output_total_bytes`).
    pub fn output_total_bytes(&self) -> usize {
        self.inner.registry.read().output_total()
    }

    /// Number of tasks held.
    pub fn task_count(&self) -> usize {
        self.inner.registry.read().len()
    }

    /// Unfinished tasks per agent.
    pub fn running_per_agent(&self) -> HashMap<Arc<str>, usize> {
        self.inner.registry.read().running_per_agent()
    }

    /// The task's retained events after `after` (0: all), whether it is final, and the
    /// sequence number the history ends at. An `after` beyond the task's newest event (a
    /// client's id from elsewhere) is treated as "up to now", so live events still follow.
    pub fn replay(&self, id: TaskId, after: u64) -> Result<Replay, TaskError> {
        let reg = self.inner.registry.read();
        let task = reg.get(&id).ok_or(TaskError::NotFound(id))?;
        let after = after.min(task.output.last_seq());
        Ok(Replay {
            events: task.output.replay(task.id, &task.agent_id, after),
            finished: task.status.is_final(),
            last_seq: task.output.last_seq(),
        })
    }

    /// Removes finished tasks older than `older_than`; returns how many.
    pub fn cleanup_completed_tasks(&self, older_than: Duration) -> usize {
        self.inner.cleanup(older_than)
    }

    /// The agent opened a stream: pending disconnect grace periods no longer apply.
    pub fn agent_connected(&self, agent_id: &str) {
        let mut gens = self.inner.agent_generations.lock();
        *gens.entry(Arc::from(agent_id)).or_insert(0) += 1;
    }

    /// The agent's stream ended: its unfinished tasks fail unless it returns within the grace.
    pub fn agent_disconnected(&self, agent_id: &str) {
        let agent_id: Arc<str> = Arc::from(agent_id);
        let generation = {
            let mut gens = self.inner.agent_generations.lock();
            let g = gens.entry(agent_id.clone()).or_insert(0);
            *g += 1;
            *g
        };
        self.inner.timers.schedule_after(
            self.inner.cfg.disconnect_grace,
            Timer::AgentGrace {
                agent_id,
                generation,
            },
        );
    }

    /// Stops the threads after draining queued responses; idempotent.
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        let (stop, responses, timer) = {
            let mut t = self.inner.threads.lock();
            (t.stop_responses.take(), t.responses.take(), t.timer.take())
        };
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        if let Some(h) = responses {
            let _ = h.join();
        }
        self.inner.timers.shutdown();
        if let Some(t) = timer {
            let _ = t.join();
        }
        self.inner.listeners.shutdown();
    }
}

impl Inner {
    fn send_task(
        &self,
        agent_id: &str,
        spec: TaskSpec,
        timeout: Option<Duration>,
    ) -> Result<TaskSnapshot, TaskError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(TaskError::ShuttingDown);
        }
        let agent_id = agent_id.trim();
        if agent_id.is_empty() {
            return Err(invalid("agent_id", "must not be empty"));
        }
        validate_spec(&spec)?;
        let timeout = timeout.unwrap_or(self.cfg.default_timeout);
        if timeout < self.cfg.min_timeout || timeout > self.cfg.max_timeout {
            return Err(invalid(
                "timeout",
                format!(
                    "must be between {} and {} seconds",
                    self.cfg.min_timeout.as_secs(),
                    self.cfg.max_timeout.as_secs()
                ),
            ));
        }
        let id = Uuid::new_v4();
        let agent: Arc<str> = Arc::from(agent_id);
        let kind = spec.kind();
        {
            let mut reg = self.registry.write();
            let task = Task::new(
                id,
                agent.clone(),
                spec.clone(),
                timeout,
                self.cfg.max_output_bytes,
            );
            let deadline = Instant::now() + timeout;
            match reg.insert(task, self.cfg.max_tasks) {
                Ok(ins) if ins.evicted > 0 => {
                    self.stats
                        .cleanup_removed
                        .fetch_add(ins.evicted as u64, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(TaskError::RegistryFull {
                        max_tasks: self.cfg.max_tasks,
                    })
                }
            }
            let key = self.timers.schedule(deadline, Timer::TaskTimeout(id));
            if let Some(task) = reg.get_mut(&id) {
                task.timeout_timer = Some(key);
                let seq = task
                    .output
                    .record_status(task.created_at, TaskStatus::Created, None);
                self.publish(
                    task,
                    seq,
                    EventKind::Status {
                        status: TaskStatus::Created,
                        reason: None,
                    },
                );
            }
        }
        match kind {
            "shell" => self.stats.created_shell.fetch_add(1, Ordering::Relaxed),
            _ => self.stats.created_docker.fetch_add(1, Ordering::Relaxed),
        };
        log::info!("Created task {id} for agent {agent_id}");
        let sent = self
            .gateway
            .dispatch(agent_id, AgentCommand::Run { task_id: id, spec });
        let mut reg = self.registry.write();
        match sent {
            Ok(()) => {
                self.apply(&mut reg, id, Trigger::Sent, None);
                let snapshot = reg
                    .get(&id)
                    .map(|t| t.snapshot(false))
                    .ok_or(TaskError::NotFound(id))?;
                drop(reg);
                if matches!(snapshot.status, TaskStatus::Cancelled | TaskStatus::Timeout) {
                    // Cancelled or timed out while the request was on its way: stop it there too.
                    self.tell_agent_to_stop(agent_id, id, "cancelled by user");
                }
                Ok(snapshot)
            }
            Err(GatewayError::NotConnected) => {
                self.apply(
                    &mut reg,
                    id,
                    Trigger::SendFailed,
                    Some("agent not connected".into()),
                );
                log::warn!("Task {id}: agent {agent_id} is not connected");
                Err(TaskError::AgentNotConnected {
                    agent_id: agent_id.to_string(),
                    task_id: id,
                })
            }
        }
    }

    fn cancel_task(&self, id: TaskId) -> Result<TaskSnapshot, TaskError> {
        let (agent, snapshot) = {
            let mut reg = self.registry.write();
            let task = reg.get(&id).ok_or(TaskError::NotFound(id))?;
            if task.status.is_final() {
                return Err(TaskError::AlreadyFinished {
                    task_id: id,
                    status: task.status,
                });
            }
            let agent = task.agent_id.clone();
            self.apply(
                &mut reg,
                id,
                Trigger::Cancel,
                Some("cancelled by user".into()),
            );
            (
                agent,
                reg.get(&id)
                    .map(|t| t.snapshot(false))
                    .ok_or(TaskError::NotFound(id))?,
            )
        };
        log::info!("Cancelled task {id} on agent {agent}");
        self.tell_agent_to_stop(&agent, id, "cancelled by user");
        Ok(snapshot)
    }

    fn tell_agent_to_stop(&self, agent: &str, id: TaskId, reason: &str) {
        let cmd = AgentCommand::Cancel {
            task_id: id,
            reason: reason.to_string(),
        };
        if self.gateway.dispatch(agent, cmd).is_err() {
            log::info!("Task {id}: agent {agent} is gone; nothing to stop there");
        }
    }

    /// Applies one agent response: the response thread's only job.
    fn apply_report(&self, rep: AgentReport) {
        self.stats.responses.fetch_add(1, Ordering::Relaxed);
        let Ok(id) = Uuid::parse_str(&rep.task_id) else {
            let why = format!(
                "Task {:?} not found for response from agent {}",
                rep.task_id, rep.agent_id
            );
            return self.ignore_unknown(&why);
        };
        let mut reg = self.registry.write();
        let Some(task) = reg.get_mut(&id) else {
            return self.ignore_unknown(&format!(
                "Task {id} not found for response from agent {}",
                rep.agent_id
            ));
        };
        if task.agent_id != rep.agent_id {
            let why = format!(
                "Agent {} reported on task {id} of agent {}; ignored",
                rep.agent_id, task.agent_id
            );
            return self.ignore_unknown(&why);
        }
        let trigger = Trigger::Report {
            status: rep.status,
            is_final: rep.is_final,
            cancelled: rep.cancelled,
        };
        let step = match transition::next(task.status, trigger) {
            Ok(step) => step,
            Err(Refusal::AlreadyFinal(status)) => {
                self.stats.late_responses.fetch_add(1, Ordering::Relaxed);
                log::debug!("Task {id} is already {status}; late response ignored");
                return;
            }
            Err(Refusal::Malformed) => {
                self.stats
                    .malformed_responses
                    .fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "Task {id}: malformed response (status UNKNOWN) from agent {}",
                    rep.agent_id
                );
                return;
            }
        };
        let says_nothing = rep.stdout.is_empty()
            && rep.stderr.is_empty()
            && rep.exit_code.is_none()
            && !rep.is_final
            && !rep.cancelled;
        if says_nothing && matches!(step, Transition::Stay) {
            // Nothing changes, so nothing is recorded or published: an agent repeating empty
            // responses costs no memory.
            self.stats.empty_responses.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = SystemTime::now();
        task.updated_at = now;
        if rep.exit_code.is_some() {
            task.exit_code = rep.exit_code;
        }
        let was_cut = task.output.cap_hit();
        let held = task.output.retained_bytes();
        let seq = task.output.record_output(
            now,
            rep.status,
            rep.is_final,
            rep.cancelled,
            &rep.stdout,
            &rep.stderr,
            rep.exit_code,
        );
        if !was_cut && task.output.cap_hit() {
            self.stats.output_truncated.fetch_add(1, Ordering::Relaxed);
        }
        let reason = match step {
            Transition::To(TaskStatus::Failed) => Some(failure_reason(&rep)),
            Transition::To(TaskStatus::Cancelled) => Some(
                rep.cancel_message
                    .clone()
                    .unwrap_or_else(|| "cancelled by agent".into()),
            ),
            _ => None,
        };
        let AgentReport {
            status,
            is_final,
            cancelled,
            stdout,
            stderr,
            exit_code,
            ..
        } = rep;
        self.publish(
            task,
            seq,
            EventKind::Output {
                status,
                is_final,
                cancelled,
                stdout,
                stderr,
                exit_code,
            },
        );
        if let Transition::To(new) = step {
            self.set_status(&mut reg, id, new, reason);
        }
        let shed = reg.output_changed(&id, held, self.cfg.max_output_total_bytes);
        if shed > 0 {
            self.stats
                .output_budget_shed
                .fetch_add(shed as u64, Ordering::Relaxed);
        }
    }

    /// Counts and logs a response for a task this agent may not report on.
    fn ignore_unknown(&self, why: &str) {
        self.stats.unknown_responses.fetch_add(1, Ordering::Relaxed);
        log::warn!("{why}");
    }

    /// Runs `trigger` through the transition table and applies the result.
    fn apply(
        &self,
        reg: &mut Registry,
        id: TaskId,
        trigger: Trigger,
        reason: Option<String>,
    ) -> bool {
        let Some(task) = reg.get(&id) else {
            return false;
        };
        match transition::next(task.status, trigger) {
            Ok(Transition::To(new)) => {
                self.set_status(reg, id, new, reason);
                true
            }
            Ok(Transition::Stay) | Err(_) => false,
        }
    }

    /// The single place where a task's status is written.
    fn set_status(&self, reg: &mut Registry, id: TaskId, new: TaskStatus, reason: Option<String>) {
        let Some(task) = reg.get_mut(&id) else { return };
        let now = SystemTime::now();
        task.status = new;
        task.updated_at = now;
        let reason: Option<Arc<str>> = reason.map(Arc::from);
        if reason.is_some() {
            task.error = reason.clone();
        }
        let seq = task.output.record_status(now, new, reason.clone());
        let timer = task.timeout_timer.take_if(|_| new.is_final());
        self.publish(
            task,
            seq,
            EventKind::Status {
                status: new,
                reason,
            },
        );
        if new.is_final() {
            if let Some(key) = timer {
                self.timers.cancel(key);
            }
            reg.mark_finished(&id);
            self.stats.count_finished(new);
            if let Some(task) = reg.get(&id) {
                self.stats
                    .duration
                    .observe(now.duration_since(task.created_at).unwrap_or_default());
            }
        }
    }

    fn publish(&self, task: &Task, task_seq: u64, kind: EventKind) {
        let event = Arc::new(TaskEvent {
            global_seq: self.global_seq.fetch_add(1, Ordering::Relaxed) + 1,
            task_seq,
            task_id: task.id,
            agent_id: task.agent_id.clone(),
            at: task.updated_at,
            kind,
        });
        self.listeners.publish(&event);
    }

    fn on_timer(&self, timer: Timer) {
        match timer {
            Timer::TaskTimeout(id) => {
                let agent = {
                    let mut reg = self.registry.write();
                    let Some(task) = reg.get(&id) else { return };
                    let agent = task.agent_id.clone();
                    let reason = format!(
                        "timed out after {}",
                        humantime::format_duration(task.timeout)
                    );
                    if !self.apply(&mut reg, id, Trigger::Timeout, Some(reason)) {
                        return;
                    }
                    agent
                };
                log::info!("Task {id} timed out on agent {agent}");
                self.tell_agent_to_stop(&agent, id, "timeout");
            }
            Timer::Sweep => {
                self.cleanup(self.cfg.cleanup_age);
                if !self.stopping.load(Ordering::SeqCst) {
                    self.timers
                        .schedule_after(self.cfg.cleanup_interval, Timer::Sweep);
                }
            }
            Timer::AgentGrace {
                agent_id,
                generation,
            } => {
                if self.agent_generations.lock().get(&agent_id) != Some(&generation) {
                    return; // it came back (or went again: a newer timer decides)
                }
                let mut reg = self.registry.write();
                let lost = reg.unfinished_of(&agent_id);
                for id in &lost {
                    self.apply(
                        &mut reg,
                        *id,
                        Trigger::AgentLost,
                        Some("agent disconnected".into()),
                    );
                }
                if !lost.is_empty() {
                    log::warn!(
                        "Agent {agent_id} did not come back; {} task(s) failed",
                        lost.len()
                    );
                }
            }
        }
    }

    fn cleanup(&self, older_than: Duration) -> usize {
        let cutoff = Instant::now()
            .checked_sub(older_than)
            .unwrap_or_else(Instant::now);
        let removed = self.registry.write().remove_finished_before(cutoff);
        self.stats.cleanup_runs.fetch_add(1, Ordering::Relaxed);
        self.stats
            .cleanup_removed
            .fetch_add(removed as u64, Ordering::Relaxed);
        if removed > 0 {
            log::info!("Clean-up removed {removed} finished task(s)");
        }
        removed
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> TaskError {
    TaskError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn validate_spec(spec: &TaskSpec) -> Result<(), TaskError> {
    match spec {
        TaskSpec::Shell {
            cmd,
            working_dir,
            env,
        } => {
            if cmd.trim().is_empty() {
                return Err(invalid("cmd", "must not be empty"));
            }
            if working_dir.as_deref().is_some_and(|d| d.is_empty()) {
                return Err(invalid("working_dir", "must not be empty when given"));
            }
            if let Some((k, _)) = env
                .iter()
                .find(|(k, _)| k.is_empty() || k.contains('=') || k.contains('\0'))
            {
                return Err(invalid("env", format!("invalid variable name {k:?}")));
            }
            Ok(())
        }
        TaskSpec::Docker(op) => {
            let (field, value) = match op {
                super::model::DockerOp::Run { image } => ("image", image),
                super::model::DockerOp::Start { id }
                | super::model::DockerOp::Stop { id }
                | super::model::DockerOp::Logs { id } => ("id", id),
            };
            if value.trim().is_empty() {
                return Err(invalid(field, "must not be empty"));
            }
            Ok(())
        }
    }
}

fn failure_reason(rep: &AgentReport) -> String {
    let text = rep.stderr.trim();
    if text.is_empty() {
        "agent reported failure".to_string()
    } else {
        let mut s: String = text.chars().take(512).collect();
        if s.len() < text.len() {
            s.push('…');
        }
        s
    }
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
