//! The task registry: every known task by id, plus the orderings that make listing, eviction
//! and the sweep cheap, and the server-wide output budget. Owned by `TaskManager` behind one
//! `parking_lot::RwLock`; this module holds no lock itself and never blocks.
//!
//! The budget (`--max-output-total-bytes`) counts every task's retained output (bytes and
//! response index, [`OutputLog::retained_bytes`]). When it is exceeded the oldest output goes
//! first: finished tasks' output, the task that finished first first, then running tasks'
//! output, the oldest task first. Each loses its oldest bytes and events ([`OutputLog::shed`])
//! and is marked truncated. Agent responses are never refused and events are still published
//! live in full; only what is kept for later readers shrinks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::journal::{Origin, Page, Reloaded};
use super::model::{TaskFilter, TaskId, TaskSnapshot, TaskSpec, TaskStatus};
use super::output::OutputLog;
use crate::timer::TimerKey;

/// One task's mutable state. Only `TaskManager` changes it, through `transition::next`.
#[derive(Debug)]
pub struct Task {
    /// The task's id.
    pub id: TaskId,
    /// The agent that runs it.
    pub agent_id: Arc<str>,
    /// What it runs.
    pub spec: TaskSpec,
    /// Current status; written only by `TaskManager::set_status`.
    pub status: TaskStatus,
    /// Registration time.
    pub created_at: SystemTime,
    /// Last change.
    pub updated_at: SystemTime,
    /// When it became final.
    pub finished_at: Option<SystemTime>,
    /// Monotonic twin of `finished_at`, for the sweep.
    pub finished_instant: Option<Instant>,
    /// Deadline from creation.
    pub timeout: Duration,
    /// Exit code reported by the agent.
    pub exit_code: Option<i32>,
    /// Why it failed, timed out or was cancelled.
    pub error: Option<Arc<str>>,
    /// Output and event history.
    pub output: OutputLog,
    /// Pending timeout timer.
    pub timeout_timer: Option<TimerKey>,
    /// Who created it.
    pub created_by: Option<Origin>,
    /// The name of the token that cancelled it.
    pub cancelled_by: Option<Arc<str>>,
    /// Taken up from durable history after a restart, and not yet reconciled with its agent.
    pub reloaded: bool,
    order: u64,
    finish_order: Option<u64>,
}

impl Task {
    /// A new task in status `created`.
    pub fn new(
        id: TaskId,
        agent_id: Arc<str>,
        spec: TaskSpec,
        timeout: Duration,
        output_cap: usize,
    ) -> Self {
        let now = SystemTime::now();
        Task {
            id,
            agent_id,
            spec,
            status: TaskStatus::Created,
            created_at: now,
            updated_at: now,
            finished_at: None,
            finished_instant: None,
            timeout,
            exit_code: None,
            error: None,
            output: OutputLog::new(output_cap),
            timeout_timer: None,
            created_by: None,
            cancelled_by: None,
            reloaded: false,
            order: 0,
            finish_order: None,
        }
    }

    /// An unfinished task taken up again from durable history, its output and event
    /// numbering rebuilt from its stored events.
    pub fn restore(r: Reloaded, output_cap: usize) -> Self {
        let t = r.task;
        let mut output = OutputLog::new(output_cap);
        for e in r.events {
            output.resume_after(e.task_seq.saturating_sub(1));
            match e.kind {
                super::events::EventKind::Status { status, reason } => {
                    output.record_status(e.at, status, reason);
                }
                super::events::EventKind::Output {
                    status,
                    is_final,
                    cancelled,
                    stdout,
                    stderr,
                    exit_code,
                } => {
                    output.record_output(
                        e.at, status, is_final, cancelled, &stdout, &stderr, exit_code,
                    );
                }
            }
        }
        Task {
            id: t.id,
            agent_id: t.agent_id,
            spec: t.spec,
            status: t.status,
            created_at: t.created_at,
            updated_at: t.updated_at,
            finished_at: None,
            finished_instant: None,
            timeout: t.timeout,
            exit_code: t.exit_code,
            error: t.error.map(Arc::from),
            output,
            timeout_timer: None,
            created_by: t.created_by.map(|actor| Origin {
                actor: Arc::from(actor),
                peer: Arc::from(t.created_from.unwrap_or_default()),
            }),
            cancelled_by: t.cancelled_by.map(Arc::from),
            reloaded: true,
            order: 0,
            finish_order: None,
        }
    }

    /// An immutable copy for readers; output included only when asked for.
    pub fn snapshot(&self, with_output: bool) -> TaskSnapshot {
        TaskSnapshot {
            id: self.id,
            agent_id: self.agent_id.clone(),
            spec: self.spec.clone(),
            status: self.status,
            created_at: self.created_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
            timeout: self.timeout,
            exit_code: self.exit_code,
            error: self.error.as_ref().map(|e| e.to_string()),
            created_by: self.created_by.as_ref().map(|o| o.actor.to_string()),
            created_from: self.created_by.as_ref().map(|o| o.peer.to_string()),
            cancelled_by: self.cancelled_by.as_ref().map(|c| c.to_string()),
            output: with_output.then(|| self.output.snapshot()),
        }
    }
}

/// The cursor after the task of creation order `order` (in memory only; the store has its own).
fn cursor(order: u64) -> String {
    format!("m{order:x}")
}

/// The creation order a cursor of [`cursor`] names; `None` for anything else.
pub fn parse_cursor(c: &str) -> Option<u64> {
    let hex = c.strip_prefix('m').filter(|h| !h.is_empty())?;
    u64::from_str_radix(hex, 16).ok()
}

/// What inserting a task did to make room.
#[derive(Debug, Default)]
pub struct Inserted {
    /// Finished tasks evicted to make room.
    pub evicted: usize,
}

/// The registry holds its maximum of unfinished tasks.
#[derive(Debug)]
pub struct Full;

/// All tasks, with creation order, finish order, per-agent routing of unfinished tasks and
/// the holders of retained output.
#[derive(Debug, Default)]
pub struct Registry {
    tasks: HashMap<TaskId, Task>,
    by_creation: BTreeMap<u64, TaskId>,
    by_finish: BTreeMap<u64, TaskId>,
    routes: HashMap<Arc<str>, HashSet<TaskId>>,
    next_order: u64,
    /// Sum of every task's `OutputLog::retained_bytes`.
    output_total: usize,
    /// Finished tasks holding output, by finish order: the budget sheds them first.
    finished_holders: BTreeMap<u64, TaskId>,
    /// Unfinished tasks holding output, by creation order: shed once no finished one holds any.
    running_holders: BTreeMap<u64, TaskId>,
}

impl Registry {
    /// Number of tasks held.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Number of unfinished tasks held.
    pub fn unfinished_len(&self) -> usize {
        self.tasks.len() - self.by_finish.len()
    }

    /// Evicts the oldest finished tasks until at most `keep` remain, sparing `spare` (just
    /// finished: its final event may still be on its way to durable history); returns how
    /// many left.
    pub fn evict_finished_beyond(&mut self, keep: usize, spare: &TaskId) -> usize {
        let mut evicted = 0;
        while self.by_finish.len() > keep {
            let Some((_, oldest)) = self.by_finish.first_key_value() else {
                break;
            };
            let oldest = *oldest;
            if oldest == *spare {
                break;
            }
            self.remove(&oldest);
            evicted += 1;
        }
        evicted
    }

    /// Adds a task, evicting the oldest finished ones when `max` are held; refuses when
    /// every held task is unfinished.
    pub fn insert(&mut self, mut task: Task, max: usize) -> Result<Inserted, Full> {
        let mut evicted = 0;
        while self.tasks.len() >= max {
            let Some((_, oldest)) = self.by_finish.pop_first() else {
                return Err(Full);
            };
            self.remove(&oldest);
            evicted += 1;
        }
        self.next_order += 1;
        task.order = self.next_order;
        self.by_creation.insert(task.order, task.id);
        self.routes
            .entry(task.agent_id.clone())
            .or_default()
            .insert(task.id);
        self.tasks.insert(task.id, task);
        Ok(Inserted { evicted })
    }

    /// Looks a task up.
    pub fn get(&self, id: &TaskId) -> Option<&Task> {
        self.tasks.get(id)
    }

    /// Looks a task up for change.
    pub fn get_mut(&mut self, id: &TaskId) -> Option<&mut Task> {
        self.tasks.get_mut(id)
    }

    /// Records that a task just became final (its status is already set), and ends its
    /// routing to its agent: responses and cancels find a task by id, not by route, so a
    /// finished task's route serves nothing.
    pub fn mark_finished(&mut self, id: &TaskId) {
        self.next_order += 1;
        let order = self.next_order;
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        let now = SystemTime::now();
        task.finished_at = Some(now);
        task.updated_at = now;
        task.finished_instant = Some(Instant::now());
        task.finish_order = Some(order);
        self.by_finish.insert(order, *id);
        if self.running_holders.remove(&task.order).is_some() {
            self.finished_holders.insert(order, *id);
        }
        if let Some(set) = self.routes.get_mut(&task.agent_id) {
            set.remove(id);
            if set.is_empty() {
                self.routes.remove(&task.agent_id);
            }
        }
    }

    /// Output retained by every task together.
    pub fn output_total(&self) -> usize {
        self.output_total
    }

    /// Accounts for a change of task `id`'s retained output (it held `before`), then sheds
    /// the oldest output while the total exceeds `budget`. Returns how many tasks lost output
    /// to the budget for the first time.
    pub fn output_changed(&mut self, id: &TaskId, before: usize, budget: usize) -> usize {
        let Some(task) = self.tasks.get(id) else {
            return 0;
        };
        let now = task.output.retained_bytes();
        self.output_total = self.output_total - before.min(self.output_total) + now;
        self.track_holder(id);
        let mut newly_shed = 0;
        while self.output_total > budget {
            let excess = self.output_total - budget;
            let victim = self
                .finished_holders
                .values()
                .next()
                .or_else(|| self.running_holders.values().next())
                .copied();
            let Some(victim) = victim else { break };
            let Some(task) = self.tasks.get_mut(&victim) else {
                break;
            };
            let was_shed = task.output.was_shed();
            let freed = task.output.shed(excess);
            newly_shed += usize::from(!was_shed && task.output.was_shed());
            self.output_total -= freed.min(self.output_total);
            if freed < excess || task.output.retained_bytes() == 0 {
                // It holds nothing more it can give.
                self.untrack_holder(&victim);
            }
        }
        newly_shed
    }

    /// Puts a task in the holder order that matches its state and output.
    fn track_holder(&mut self, id: &TaskId) {
        let Some(task) = self.tasks.get(id) else {
            return;
        };
        let (holds, finished, order) = (
            task.output.retained_bytes() > 0,
            task.finish_order,
            task.order,
        );
        match finished {
            Some(f) if holds => {
                self.finished_holders.insert(f, *id);
            }
            None if holds => {
                self.running_holders.insert(order, *id);
            }
            _ => self.untrack_holder(id),
        }
    }

    fn untrack_holder(&mut self, id: &TaskId) {
        if let Some(task) = self.tasks.get(id) {
            self.running_holders.remove(&task.order);
            if let Some(f) = task.finish_order {
                self.finished_holders.remove(&f);
            }
        }
    }

    /// Unfinished tasks routed to `agent_id`.
    pub fn unfinished_of(&self, agent_id: &str) -> Vec<TaskId> {
        self.routes
            .get(agent_id)
            .map(|set| {
                set.iter()
                    .filter(|id| self.tasks.get(id).is_some_and(|t| !t.status.is_final()))
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Number of unfinished tasks routed to each agent.
    pub fn running_per_agent(&self) -> HashMap<Arc<str>, usize> {
        self.routes
            .iter()
            .map(|(agent, set)| {
                let n = set
                    .iter()
                    .filter(|id| self.tasks.get(id).is_some_and(|t| !t.status.is_final()))
                    .count();
                (agent.clone(), n)
            })
            .collect()
    }

    /// A page of snapshots matching `filter`, newest first; the cursor is the creation order
    /// of the page's last task. Only the tasks returned are copied.
    pub fn list(&self, filter: &TaskFilter) -> Page {
        let limit = filter.limit().min(TaskFilter::MAX_LIMIT);
        let below = filter
            .cursor
            .as_deref()
            .and_then(parse_cursor)
            .unwrap_or(u64::MAX);
        let mut page = Page::default();
        let mut matching = self
            .by_creation
            .range(..below)
            .rev()
            .filter_map(|(order, id)| Some((*order, self.tasks.get(id)?)))
            .filter(|(_, t)| filter.status.is_none_or(|s| t.status == s))
            .filter(|(_, t)| filter.agent_id.as_deref().is_none_or(|a| &*t.agent_id == a))
            .filter(|(_, t)| filter.since.is_none_or(|s| t.created_at >= s))
            .filter(|(_, t)| filter.until.is_none_or(|u| t.created_at < u));
        for (order, t) in matching.by_ref().take(limit) {
            page.tasks.push(t.snapshot(false));
            page.next_cursor = Some(cursor(order));
        }
        if matching.next().is_none() {
            page.next_cursor = None;
        }
        page
    }

    /// Removes finished tasks that finished before `cutoff`; returns how many.
    pub fn remove_finished_before(&mut self, cutoff: Instant) -> usize {
        let mut doomed = Vec::new();
        for id in self.by_finish.values() {
            match self.tasks.get(id).and_then(|t| t.finished_instant) {
                Some(at) if at < cutoff => doomed.push(*id),
                _ => break,
            }
        }
        for id in &doomed {
            self.remove(id);
        }
        doomed.len()
    }

    fn remove(&mut self, id: &TaskId) -> Option<Task> {
        self.untrack_holder(id);
        let task = self.tasks.remove(id)?;
        self.output_total -= task.output.retained_bytes().min(self.output_total);
        self.by_creation.remove(&task.order);
        if let Some(f) = task.finish_order {
            self.by_finish.remove(&f);
        }
        if let Some(set) = self.routes.get_mut(&task.agent_id) {
            set.remove(id);
            if set.is_empty() {
                self.routes.remove(&task.agent_id);
            }
        }
        Some(task)
    }
}
