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
use super::journal::{
    AgentProcess, AuditEntry, Change, Committed, Journal, Origin, Page, TaskUpdate,
};
use super::model::{
    AgentCommand, AgentReport, TaskFilter, TaskId, TaskSnapshot, TaskSpec, TaskStatus,
};
use super::registry::{Full, Registry, Task};
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
    foreign_log: LogLimit,
    unknown_log: LogLimit,
    stopping: AtomicBool,
    sink: ReportSink,
    threads: Mutex<Threads>,
    /// Durable history; `None` keeps everything in memory only.
    journal: Option<Arc<dyn Journal>>,
    /// The highest response number applied per agent process (agent id, instance); touched
    /// by the response thread, and read when an agent connects.
    applied: Mutex<HashMap<AgentProcess, u64>>,
}

#[derive(Default)]
struct Threads {
    stop_responses: Option<Sender<()>>,
    responses: Option<JoinHandle<()>>,
    timer: Option<TimerThread>,
}

impl TaskManager {
    /// Starts the response and timer threads, with history in memory only; agents are
    /// reached through `gateway`.
    pub fn start(cfg: ManagerConfig, gateway: Arc<dyn AgentGateway>) -> std::io::Result<Self> {
        Self::start_with(cfg, gateway, None)
    }

    /// Like [`TaskManager::start`], recording every change in `journal` and taking up the
    /// unfinished tasks it holds from before a restart.
    pub fn start_durable(
        cfg: ManagerConfig,
        gateway: Arc<dyn AgentGateway>,
        journal: Arc<dyn Journal>,
    ) -> std::io::Result<Self> {
        Self::start_with(cfg, gateway, Some(journal))
    }

    fn start_with(
        cfg: ManagerConfig,
        gateway: Arc<dyn AgentGateway>,
        journal: Option<Arc<dyn Journal>>,
    ) -> std::io::Result<Self> {
        let (stop_tx, stop_rx) = bounded(1);
        let stats = Arc::new(Stats::default());
        let (sink, source) = response_thread::channel(cfg.response_channel_capacity, stats.clone());
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
            global_seq: AtomicU64::new(journal.as_ref().map_or(0, |j| j.last_global_seq())),
            foreign_log: LogLimit::default(),
            unknown_log: LogLimit::default(),
            stopping: AtomicBool::new(false),
            sink,
            threads: Mutex::new(Threads {
                timer: Some(timer_thread),
                ..Threads::default()
            }),
            journal,
            applied: Mutex::new(HashMap::new()),
            cfg,
        });
        let _ = slot.set(Arc::downgrade(&inner));
        if let Some(journal) = &inner.journal {
            let weak = Arc::downgrade(&inner);
            journal.on_commit(Box::new(move |c: Committed| {
                if let Some(inner) = weak.upgrade() {
                    inner.committed(c);
                }
            }));
            inner.reload(journal.as_ref());
        }
        let applier = inner.clone();
        let responses = response_thread::spawn(source, stop_rx, move |r| applier.apply_report(r))?;
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
        self.send_task_as(agent_id, spec, timeout, Origin::system())
    }

    /// Like [`TaskManager::send_task`], recording who asked in the task and the audit trail.
    pub fn send_task_as(
        &self,
        agent_id: &str,
        spec: TaskSpec,
        timeout: Option<Duration>,
        origin: Origin,
    ) -> Result<TaskSnapshot, TaskError> {
        let result = self.inner.send_task(agent_id, spec, timeout, &origin);
        let target = match &result {
            Ok(t) => t.id.to_string(),
            Err(TaskError::AgentNotConnected { task_id, .. })
            | Err(TaskError::StorageUnavailable {
                task_id: Some(task_id),
                ..
            }) => task_id.to_string(),
            Err(_) => format!("agent:{}", agent_id.trim()),
        };
        self.inner.audit(origin, "task.create", target, &result);
        result
    }

    /// Cancels an unfinished task and tells its agent to stop it.
    pub fn cancel_task(&self, id: TaskId) -> Result<TaskSnapshot, TaskError> {
        self.cancel_task_as(id, Origin::system())
    }

    /// Like [`TaskManager::cancel_task`], recording who asked in the task and the audit trail.
    pub fn cancel_task_as(&self, id: TaskId, origin: Origin) -> Result<TaskSnapshot, TaskError> {
        let result = self.inner.cancel_task(id, &origin);
        self.inner
            .audit(origin, "task.cancel", id.to_string(), &result);
        result
    }

    /// A task with its retained output, from memory or from durable history (`None` also
    /// when history cannot be read now: see [`TaskManager::lookup_task`]).
    pub fn get_task(&self, id: TaskId) -> Option<TaskSnapshot> {
        self.lookup_task(id).ok().flatten()
    }

    /// A task with its retained output, telling a task that does not exist from history that
    /// cannot be read now.
    pub fn lookup_task(&self, id: TaskId) -> Result<Option<TaskSnapshot>, TaskError> {
        if let Some(t) = self
            .inner
            .registry
            .read()
            .get(&id)
            .map(|t| t.snapshot(true))
        {
            return Ok(Some(t));
        }
        match &self.inner.journal {
            Some(j) => j.task(id).map_err(TaskError::from),
            None => Ok(None),
        }
    }

    /// A page of tasks matching `filter`, newest first, without output; at most
    /// [`TaskFilter::MAX_LIMIT`] may be asked for.
    pub fn list_tasks(&self, filter: &TaskFilter) -> Result<Page, TaskError> {
        if filter.limit() > TaskFilter::MAX_LIMIT {
            return Err(invalid(
                "limit",
                format!("must be at most {}", TaskFilter::MAX_LIMIT),
            ));
        }
        match &self.inner.journal {
            Some(j) => j.list(filter).map_err(TaskError::from),
            None => Ok(self.inner.registry.read().list(filter)),
        }
    }

    /// Output retained by all tasks together, in bytes (see `ManagerConfig::max_output_total_bytes`).
    pub fn output_total_bytes(&self) -> usize {
        self.inner.registry.read().output_total()
    }

    /// The highest response number of agent process `instance` that the agent may forget:
    /// durable (or, in memory only, applied). Sent to an agent that acknowledges when its
    /// stream opens.
    pub fn acknowledged_seq(&self, agent_id: &str, instance: &str) -> u64 {
        match &self.inner.journal {
            Some(j) => j.agent_seq(agent_id, instance),
            None => self
                .inner
                .applied
                .lock()
                .get(&(Arc::from(agent_id), Arc::from(instance)))
                .copied()
                .unwrap_or(0),
        }
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
        {
            let reg = self.inner.registry.read();
            if let Some(task) = reg.get(&id) {
                let after = after.min(task.output.last_seq());
                return Ok(Replay {
                    events: task.output.replay(task.id, &task.agent_id, after),
                    finished: task.status.is_final(),
                    last_seq: task.output.last_seq(),
                });
            }
        }
        let journal = self.inner.journal.as_ref().ok_or(TaskError::NotFound(id))?;
        let (events, finished) = journal.events(id, after)?.ok_or(TaskError::NotFound(id))?;
        let last_seq = events.last().map_or(after, |e| e.task_seq);
        Ok(Replay {
            events,
            finished,
            last_seq,
        })
    }

    /// Durable events of every task after event number `after` (for a global-stream client
    /// resuming from before a restart), at most `limit`; none without durable history.
    pub fn history_after(&self, after: u64, limit: usize) -> Vec<TaskEvent> {
        match &self.inner.journal {
            Some(j) => j.events_after(after, limit).unwrap_or_else(|e| {
                log::warn!("Global stream history unavailable: {e}");
                Vec::new()
            }),
            None => Vec::new(),
        }
    }

    /// Removes finished tasks older than `older_than`; returns how many.
    pub fn cleanup_completed_tasks(&self, older_than: Duration) -> usize {
        self.inner.cleanup(older_than)
    }

    /// The agent's stream ended, leaving it at liveness `generation` (the gateway's count):
    /// its unfinished tasks fail unless the gateway reports another generation when the grace
    /// period is over (it came back, or went again and a newer grace period decides).
    pub fn agent_disconnected(&self, agent_id: &str, generation: u64) {
        self.inner.timers.schedule_after(
            self.inner.cfg.disconnect_grace,
            Timer::AgentGrace {
                agent_id: Arc::from(agent_id),
                generation,
            },
        );
    }

    /// An agent that connected listed the tasks it still knows (running, or with responses
    /// not yet acknowledged). A task reloaded after a restart that it does not know never
    /// reached it, and is sent again; one it had started and no longer knows is failed.
    pub fn reconcile_reloaded(&self, agent_id: &str, known: &[&str]) {
        self.inner.reconcile_reloaded(agent_id, known);
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
        // What is committed last is still published: the journal stops before the listeners.
        if let Some(j) = &self.inner.journal {
            j.shutdown();
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
        origin: &Origin,
    ) -> Result<TaskSnapshot, TaskError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(TaskError::ShuttingDown);
        }
        if let Some(j) = &self.journal {
            j.available().map_err(TaskError::from)?;
            j.throttle();
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
        let ticket = {
            let mut reg = self.registry.write();
            let mut task = Task::new(
                id,
                agent.clone(),
                spec.clone(),
                timeout,
                self.cfg.max_output_bytes,
            );
            task.created_by = Some(origin.clone());
            let deadline = Instant::now() + timeout;
            let inserted = match &self.journal {
                // Only unfinished tasks count against the bound; finished ones are in the store.
                Some(_) if reg.unfinished_len() >= self.cfg.max_tasks => Err(Full),
                Some(_) => reg.insert(task, self.cfg.max_tasks + self.cfg.cache_finished),
                None => reg.insert(task, self.cfg.max_tasks),
            };
            match inserted {
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
            let mut ticket = 0;
            if let Some(task) = reg.get_mut(&id) {
                task.timeout_timer = Some(key);
                let seq = task
                    .output
                    .record_status(task.created_at, TaskStatus::Created, None);
                let event = self.event(
                    task,
                    seq,
                    EventKind::Status {
                        status: TaskStatus::Created,
                        reason: None,
                    },
                );
                ticket = self.emit(
                    || {
                        vec![Change::Created {
                            task: Box::new(task.snapshot(false)),
                            origin: origin.clone(),
                        }]
                    },
                    event,
                );
            }
            ticket
        };
        // A task acknowledged to its creator survives a crash: it is durable before it runs.
        if let Some(j) = &self.journal {
            if let Err(e) = j.wait_durable(ticket) {
                let mut reg = self.registry.write();
                self.apply(&mut reg, id, Trigger::SendFailed, Some(e.to_string()));
                return Err(TaskError::StorageUnavailable {
                    reason: e.0,
                    task_id: Some(id),
                });
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
                if let Some(reason) = stop_reason(snapshot.status) {
                    // Cancelled or timed out while the request was on its way: stop it there too.
                    self.tell_agent_to_stop(agent_id, id, reason);
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

    fn cancel_task(&self, id: TaskId, origin: &Origin) -> Result<TaskSnapshot, TaskError> {
        if let Some(j) = &self.journal {
            j.throttle();
        }
        let (agent, snapshot) = {
            let mut reg = self.registry.write();
            let Some(task) = reg.get_mut(&id) else {
                drop(reg);
                // A task that left memory is finished (or unknown): say which.
                return match self.journal.as_ref().map(|j| j.task(id)).transpose()? {
                    Some(Some(t)) => Err(TaskError::AlreadyFinished {
                        task_id: id,
                        status: t.status,
                    }),
                    _ => Err(TaskError::NotFound(id)),
                };
            };
            if !task.status.is_final() {
                task.cancelled_by = Some(origin.actor.clone());
                if self.journal.is_some() {
                    self.append(vec![Change::CancelledBy {
                        task_id: id,
                        origin: origin.clone(),
                    }]);
                }
            }
            let task = &*task;
            if task.status.is_final() {
                return Err(TaskError::AlreadyFinished {
                    task_id: id,
                    status: task.status,
                });
            }
            let agent = task.agent_id.clone();
            self.apply(&mut reg, id, Trigger::Cancel, Some(STOP_CANCELLED.into()));
            (
                agent,
                reg.get(&id)
                    .map(|t| t.snapshot(false))
                    .ok_or(TaskError::NotFound(id))?,
            )
        };
        log::info!("Cancelled task {id} on agent {agent}");
        self.tell_agent_to_stop(&agent, id, STOP_CANCELLED);
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

    fn reconcile_reloaded(&self, agent_id: &str, known: &[&str]) {
        let mut resend = Vec::new();
        {
            let mut reg = self.registry.write();
            let mut lost = Vec::new();
            for id in reg.unfinished_of(agent_id) {
                let Some(task) = reg.get_mut(&id) else {
                    continue;
                };
                if !std::mem::take(&mut task.reloaded) {
                    continue;
                }
                if known.iter().any(|k| *k == id.to_string()) {
                    continue;
                }
                match task.status {
                    TaskStatus::Created | TaskStatus::Sent => resend.push((id, task.spec.clone())),
                    _ => lost.push(id),
                }
            }
            for id in lost {
                self.apply(
                    &mut reg,
                    id,
                    Trigger::AgentLost,
                    Some("the agent no longer knew this task after the server restart".into()),
                );
            }
        }
        for (task_id, spec) in resend {
            log::warn!(
                "Task {task_id} never reached agent {agent_id} before the restart; sending it now"
            );
            let sent = self
                .gateway
                .dispatch(agent_id, AgentCommand::Run { task_id, spec });
            if sent.is_ok() {
                let mut reg = self.registry.write();
                self.apply(&mut reg, task_id, Trigger::Sent, None);
            }
        }
    }

    /// Whether a numbered response was applied already (an agent sends unacknowledged
    /// responses again after a reconnect or a server restart); records it as applied if not.
    fn already_applied(&self, rep: &AgentReport) -> bool {
        let Some(instance) = rep.instance.as_ref().filter(|_| rep.seq > 0) else {
            return false;
        };
        let mut applied = self.applied.lock();
        let key = (rep.agent_id.clone(), instance.clone());
        let last = match applied.get(&key) {
            Some(last) => *last,
            None => {
                // Forget older processes of this agent: only a live one resends.
                applied.retain(|(agent, _), _| *agent != rep.agent_id);
                self.journal
                    .as_ref()
                    .map_or(0, |j| j.agent_seq(&rep.agent_id, instance))
            }
        };
        if rep.seq <= last {
            applied.insert(key, last);
            return true;
        }
        applied.insert(key, rep.seq);
        false
    }

    /// Applies one agent response: the response thread's only job.
    fn apply_report(&self, rep: AgentReport) {
        self.stats.responses.fetch_add(1, Ordering::Relaxed);
        if self.already_applied(&rep) {
            self.stats
                .duplicate_responses
                .fetch_add(1, Ordering::Relaxed);
            log::debug!(
                "Response {} of agent {} applied before; ignored",
                rep.seq,
                rep.agent_id
            );
            return;
        }
        if let Some(j) = &self.journal {
            j.throttle();
        }
        let numbered = rep
            .instance
            .clone()
            .filter(|_| rep.seq > 0)
            .map(|instance| (rep.agent_id.clone(), instance, rep.seq));
        self.apply_report_once(rep);
        if let Some((agent_id, instance, seq)) = numbered {
            match &self.journal {
                Some(_) => self.append(vec![Change::AgentSeq {
                    agent_id,
                    instance,
                    seq,
                }]),
                // In memory only, applied is as durable as it gets.
                None => self.gateway.acknowledge(&agent_id, &instance, seq),
            }
        }
    }

    fn apply_report_once(&self, rep: AgentReport) {
        let Ok(id) = Uuid::parse_str(&rep.task_id) else {
            return self.ignore_unknown(&rep);
        };
        let mut reg = self.registry.write();
        let Some(task) = reg.get_mut(&id) else {
            drop(reg);
            return self.ignore_unknown(&rep);
        };
        if task.agent_id != rep.agent_id {
            let owner = task.agent_id.clone();
            drop(reg);
            return self.ignore_foreign(&rep, id, &owner);
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
        let was_truncated = (
            task.output.stdout_truncated(),
            task.output.stderr_truncated(),
        );
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
        let now_truncated = (
            task.output.stdout_truncated(),
            task.output.stderr_truncated(),
        );
        if !was_cut && task.output.cap_hit() {
            self.stats.output_truncated.fetch_add(1, Ordering::Relaxed);
        }
        if self.journal.is_some() {
            for (stdout, before, after) in [
                (true, was_truncated.0, now_truncated.0),
                (false, was_truncated.1, now_truncated.1),
            ] {
                if after && !before {
                    self.append(vec![Change::Truncated {
                        task_id: id,
                        stdout,
                    }]);
                }
            }
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
        let event = self.event(
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
        self.emit(Vec::new, event);
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

    /// Counts and logs a response for a task id the manager does not know.
    fn ignore_unknown(&self, rep: &AgentReport) {
        self.stats.unknown_responses.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.unknown_log.admit() {
            log::warn!(
                "Task {} not found for response from agent {}; ignored{}",
                loggable_id(&rep.task_id),
                rep.agent_id,
                suppressed_note(suppressed)
            );
        }
    }

    /// Counts and logs a response about another agent's task: a misbehaving or compromised
    /// agent, so it is a counter of its own for operators to alert on.
    fn ignore_foreign(&self, rep: &AgentReport, id: TaskId, owner: &str) {
        self.stats.foreign_responses.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.foreign_log.admit() {
            log::warn!(
                "Agent {} reported on task {id} of agent {owner}; ignored{}",
                rep.agent_id,
                suppressed_note(suppressed)
            );
        }
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
        if new.is_final() {
            task.finished_at = Some(now);
        }
        let event = self.event(
            task,
            seq,
            EventKind::Status {
                status: new,
                reason,
            },
        );
        self.emit(
            || {
                vec![Change::Updated(TaskUpdate {
                    id: task.id,
                    status: task.status,
                    updated_at: task.updated_at,
                    finished_at: task.finished_at,
                    exit_code: task.exit_code,
                    error: task.error.clone(),
                })]
            },
            event,
        );
        if new.is_final() {
            if let Some(key) = timer {
                self.timers.cancel(key);
            }
            reg.mark_finished(&id);
            if self.journal.is_some() {
                // Finished tasks beyond the cache are read back from the store.
                let evicted = reg.evict_finished_beyond(self.cfg.cache_finished, &id);
                if evicted > 0 {
                    self.stats
                        .cleanup_removed
                        .fetch_add(evicted as u64, Ordering::Relaxed);
                }
            }
            self.stats.count_finished(new);
            if let Some(task) = reg.get(&id) {
                self.stats
                    .duration
                    .observe(now.duration_since(task.created_at).unwrap_or_default());
            }
        }
    }

    /// Numbers a new event of `task`; called under the registry write lock, so numbers follow
    /// the real order.
    fn event(&self, task: &Task, task_seq: u64, kind: EventKind) -> Arc<TaskEvent> {
        Arc::new(TaskEvent {
            global_seq: self.global_seq.fetch_add(1, Ordering::Relaxed) + 1,
            task_seq,
            task_id: task.id,
            agent_id: task.agent_id.clone(),
            at: task.updated_at,
            kind,
        })
    }

    /// Records `changes` (built only when there is a journal) followed by `event`: with a
    /// journal they are appended and the event is published once durable; without, the event
    /// is published at once. Called under the registry write lock.
    fn emit(&self, changes: impl FnOnce() -> Vec<Change>, event: Arc<TaskEvent>) -> u64 {
        match &self.journal {
            Some(j) => {
                let mut all = changes();
                all.push(Change::Event(event));
                j.append(all)
            }
            None => {
                self.listeners.publish(&event);
                0
            }
        }
    }

    /// Appends changes that carry no event (journal only).
    fn append(&self, changes: Vec<Change>) {
        if let Some(j) = &self.journal {
            j.append(changes);
        }
    }

    /// What the journal made durable: publish its events, let agents forget its responses.
    fn committed(&self, c: Committed) {
        for event in &c.events {
            self.listeners.publish(event);
        }
        for ((agent, instance), seq) in c.acks {
            self.gateway.acknowledge(&agent, &instance, seq);
        }
    }

    /// Records a state-changing request and its outcome in the audit trail (journal only).
    fn audit(
        &self,
        origin: Origin,
        action: &'static str,
        target: String,
        result: &Result<TaskSnapshot, TaskError>,
    ) {
        if self.journal.is_none() {
            return;
        }
        let outcome = match result {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        self.append(vec![Change::Audit(AuditEntry {
            at: SystemTime::now(),
            origin,
            action,
            target,
            outcome,
        })]);
    }

    /// Takes up the unfinished tasks of durable history after a restart: they wait for their
    /// agents to come back, at most the disconnect grace.
    fn reload(&self, journal: &dyn Journal) {
        let tasks = match journal.unfinished() {
            Ok(t) => t,
            Err(e) => {
                log::error!("Could not reload unfinished tasks: {e}");
                return;
            }
        };
        if tasks.is_empty() {
            return;
        }
        let now = Instant::now();
        let grace = now + self.cfg.disconnect_grace;
        let mut agents: Vec<Arc<str>> = Vec::new();
        let mut reg = self.registry.write();
        let count = tasks.len();
        for r in tasks {
            let mut task = Task::restore(r, self.cfg.max_output_bytes);
            let elapsed = task.created_at.elapsed().unwrap_or_default();
            // The agent may have finished it meanwhile: give it the grace to say so.
            let deadline = (now + task.timeout.saturating_sub(elapsed)).max(grace);
            task.timeout_timer = Some(self.timers.schedule(deadline, Timer::TaskTimeout(task.id)));
            if !agents.contains(&task.agent_id) {
                agents.push(task.agent_id.clone());
            }
            // Reloaded tasks are few (the unfinished ones); none is refused for room.
            let _ = reg.insert(task, usize::MAX);
        }
        drop(reg);
        log::warn!(
            "Reloaded {count} unfinished task(s) of {} agent(s); they have {} to come back",
            agents.len(),
            humantime::format_duration(self.cfg.disconnect_grace)
        );
        for agent in agents {
            // Generation 0: the agent has not connected since this server started.
            let grace_timer = Timer::AgentGrace {
                agent_id: agent,
                generation: 0,
            };
            self.timers.schedule(grace, grace_timer);
        }
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
                self.tell_agent_to_stop(&agent, id, STOP_TIMEOUT);
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
                let mut reg = self.registry.write();
                // Checked under the registry lock: a task created after the agent came back
                // is inserted either before this (and the agent's generation has moved on)
                // or after (and it is not in the list below).
                if self.gateway.generation(&agent_id) != generation {
                    return; // it came back (or went again: a newer timer decides)
                }
                // Generation 0: the agent has not connected since this server started, and
                // its tasks were taken up from durable history.
                let reason = if generation == 0 {
                    "agent did not return after server restart"
                } else {
                    "agent disconnected"
                };
                let lost = reg.unfinished_of(&agent_id);
                for id in &lost {
                    self.apply(&mut reg, *id, Trigger::AgentLost, Some(reason.into()));
                }
                if !lost.is_empty() {
                    log::warn!(
                        "Agent {agent_id} did not come back ({reason}); {} task(s) failed",
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

/// The cancel reason an agent is told when a user cancels a task.
const STOP_CANCELLED: &str = "cancelled by user";
/// The cancel reason an agent is told when a task's timeout fires.
const STOP_TIMEOUT: &str = "timeout";

/// What to tell the agent about a task that became `status` while its run request was on
/// its way; `None` when there is nothing to stop.
fn stop_reason(status: TaskStatus) -> Option<&'static str> {
    match status {
        TaskStatus::Cancelled => Some(STOP_CANCELLED),
        TaskStatus::Timeout => Some(STOP_TIMEOUT),
        _ => None,
    }
}

/// Characters of an agent-supplied task id that reach the log.
const LOGGED_ID_CHARS: usize = 64;

/// An agent-supplied task id fit for a log line: its first [`LOGGED_ID_CHARS`] characters,
/// quoted and escaped, so a peer can neither flood nor forge log lines with it.
fn loggable_id(id: &str) -> String {
    let mut chars = id.chars();
    let head: String = chars.by_ref().take(LOGGED_ID_CHARS).collect();
    if chars.next().is_some() {
        format!("{head:?}… ({} bytes)", id.len())
    } else {
        format!("{head:?}")
    }
}

fn suppressed_note(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(" ({suppressed} more like it since the last such line)")
    }
}

/// Lets a warning that a peer can trigger at will through at most once per
/// [`LogLimit::EVERY`], counting what it held back.
#[derive(Default)]
struct LogLimit {
    /// Milliseconds since `LogLimit::epoch` of the last line let through, plus one (0: none).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimit {
    const EVERY: Duration = Duration::from_secs(10);

    /// `Some(lines held back since the last one)` when this line may be logged.
    fn admit(&self) -> Option<u64> {
        let now = Self::epoch().elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        let every = Self::EVERY.as_millis() as u64;
        if last != 0 && now.saturating_sub(last) < every
            || self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }

    fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
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
