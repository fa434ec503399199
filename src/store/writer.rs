//! The writer thread: the only owner of the write connection.
//!
//! The manager appends [`Change`]s to a queue under its registry lock (never blocking); this
//! thread takes everything queued, writes it in one transaction (group commit), and after the
//! commit hands the group's events and agent acknowledgements to the manager's
//! [`AfterCommit`]. Producers that generate volume (the response thread, task creation) call
//! `throttle` before taking any lock and wait while the queue holds more than its byte
//! bound: backpressure, never dropping.
//!
//! A failed commit (disk full, read-only, I/O error) keeps the group queued, marks the store
//! degraded (new tasks are refused, `/readyz` says why) and retries every second; the events
//! are published at once meanwhile, so running tasks keep streaming, but agents are not
//! acknowledged until their responses are durable. Between groups, when idle, it deletes
//! what is past retention in small batches and returns free pages to the file system.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex, RwLock};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::codec::{micros, spec_json};
use super::error::StoreError;
use crate::tasks::{
    AfterCommit, AgentProcess, Change, Committed, EventKind, TaskEvent, TaskId, Ticket,
};

/// What the writer needs to know besides the connection.
#[derive(Clone, Debug)]
pub(crate) struct WriterConfig {
    /// Output bytes kept per stream per task (older chunk text is blanked).
    pub(crate) max_output_bytes: usize,
    /// Finished tasks older than this are deleted.
    pub(crate) retention: Duration,
    /// At most this many tasks are kept (finished ones beyond it are deleted, oldest first).
    pub(crate) retention_tasks: u64,
    /// How often retention runs.
    pub(crate) maintenance_every: Duration,
}

/// The queue between the manager and the writer, and what waiters wait on.
pub(crate) struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer.
    work: Condvar,
    /// Wakes producers waiting in `throttle`.
    room: Condvar,
    durable: Mutex<Durable>,
    durable_cv: Condvar,
    after: RwLock<Option<AfterCommit>>,
    stop: AtomicBool,
    /// Commits that failed (a metric).
    pub(crate) failures: AtomicU64,
    /// Groups committed (a metric).
    pub(crate) commits: AtomicU64,
    /// Changes committed (a metric).
    pub(crate) committed_changes: AtomicU64,
    /// Tasks deleted by retention (a metric).
    pub(crate) retained_out: AtomicU64,
    max_backlog: usize,
}

#[derive(Default)]
struct Queue {
    changes: VecDeque<Change>,
    /// Bytes of the changes still in `changes`.
    queued_bytes: usize,
    /// Bytes appended and not yet committed (queued or in the writer's group).
    uncommitted_bytes: usize,
    appended: Ticket,
}

#[derive(Default)]
struct Durable {
    upto: Ticket,
    /// Why the last commit failed; cleared by the next success.
    failure: Option<String>,
}

impl Shared {
    pub(crate) fn new(max_backlog: usize) -> Self {
        Shared {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            room: Condvar::new(),
            durable: Mutex::new(Durable::default()),
            durable_cv: Condvar::new(),
            after: RwLock::new(None),
            stop: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            committed_changes: AtomicU64::new(0),
            retained_out: AtomicU64::new(0),
            max_backlog: max_backlog.max(1),
        }
    }

    pub(crate) fn append(&self, changes: Vec<Change>) -> Ticket {
        let mut q = self.queue.lock();
        for c in changes {
            let w = weight(&c);
            q.queued_bytes += w;
            q.uncommitted_bytes += w;
            q.appended += 1;
            q.changes.push_back(c);
        }
        let ticket = q.appended;
        drop(q);
        self.work.notify_one();
        ticket
    }

    pub(crate) fn throttle(&self) {
        let mut q = self.queue.lock();
        while q.uncommitted_bytes > self.max_backlog && !self.stop.load(Ordering::SeqCst) {
            self.room.wait_for(&mut q, Duration::from_millis(200));
        }
    }

    pub(crate) fn wait_durable(&self, ticket: Ticket) -> Result<(), String> {
        let mut d = self.durable.lock();
        loop {
            if d.upto >= ticket {
                return Ok(());
            }
            if let Some(why) = &d.failure {
                return Err(why.clone());
            }
            if self.stop.load(Ordering::SeqCst) {
                return Err("shutting down".into());
            }
            self.durable_cv.wait_for(&mut d, Duration::from_millis(200));
        }
    }

    /// Why the store is not accepting new work, if it is not.
    pub(crate) fn failure(&self) -> Option<String> {
        self.durable.lock().failure.clone()
    }

    /// Bytes queued for the writer now.
    pub(crate) fn backlog_bytes(&self) -> usize {
        self.queue.lock().uncommitted_bytes
    }

    pub(crate) fn set_after(&self, after: AfterCommit) {
        *self.after.write() = Some(after);
    }

    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.work.notify_all();
        self.room.notify_all();
        self.durable_cv.notify_all();
    }
}

/// Rough bytes a change holds in memory: what the backlog bound counts.
fn weight(c: &Change) -> usize {
    match c {
        Change::Event(e) => 96 + e.text_len(),
        _ => 256,
    }
}

/// The writer: its connection, the row ids it knows and the output bytes it has stored.
pub(crate) struct Writer {
    conn: Connection,
    cfg: WriterConfig,
    shared: Arc<Shared>,
    rows: Rows,
    /// The bounds of the retention pass under way: (finished before, row id at or below),
    /// found once per pass, since finding the count bound walks `--retention-tasks` rows.
    retention_pass: Option<(i64, i64)>,
}

/// What the writer remembers of rows it wrote: task row ids and output bytes stored per task.
#[derive(Default)]
struct Rows {
    tids: HashMap<TaskId, i64>,
    stored_bytes: HashMap<i64, (usize, usize)>,
}

/// A group taken from the queue, kept until it is committed.
#[derive(Default)]
struct Group {
    changes: Vec<Change>,
    bytes: usize,
    ticket: Ticket,
    /// How many of `changes` have had their events published already.
    published: usize,
}

impl Writer {
    pub(crate) fn new(conn: Connection, cfg: WriterConfig, shared: Arc<Shared>) -> Self {
        Writer {
            conn,
            cfg,
            shared,
            rows: Rows::default(),
            retention_pass: None,
        }
    }

    /// The thread's body: runs until stopped and everything queued is committed (or, with a
    /// failing disk, until stopped).
    pub(crate) fn run(mut self) {
        let mut group = Group::default();
        let mut next_maintenance = Instant::now();
        let mut retry_at: Option<Instant> = None;
        loop {
            let stopping = self.shared.stop.load(Ordering::SeqCst);
            {
                let mut q = self.shared.queue.lock();
                if q.changes.is_empty() && group.changes.is_empty() {
                    if stopping {
                        break;
                    }
                    let until = next_maintenance.max(Instant::now() + Duration::from_millis(1));
                    self.shared.work.wait_until(&mut q, until);
                } else if let Some(at) = retry_at.filter(|at| *at > Instant::now() && !stopping) {
                    self.shared.work.wait_until(&mut q, at);
                }
                group.bytes += std::mem::take(&mut q.queued_bytes);
                group.ticket = q.appended;
                group.changes.extend(q.changes.drain(..));
            }
            if group.changes.is_empty() {
                if Instant::now() >= next_maintenance && !stopping {
                    next_maintenance = match self.maintenance_step() {
                        Ok(true) => Instant::now(), // more to delete, after queued work
                        Ok(false) => Instant::now() + self.cfg.maintenance_every,
                        Err(e) => {
                            self.retention_pass = None;
                            log::warn!("Store: retention step failed: {e}");
                            Instant::now() + self.cfg.maintenance_every
                        }
                    };
                }
                continue;
            }
            if retry_at.is_some_and(|at| at > Instant::now()) && !stopping {
                self.publish_live(&mut group); // keep running tasks streaming meanwhile
                continue;
            }
            match self.commit(&group.changes) {
                Ok(acks) => {
                    retry_at = None;
                    self.after_commit(&mut group, acks);
                }
                Err(e) => {
                    self.shared.failures.fetch_add(1, Ordering::Relaxed);
                    // Running tasks keep streaming while the disk refuses writes.
                    self.publish_live(&mut group);
                    let why = e.to_string();
                    {
                        let mut d = self.shared.durable.lock();
                        if d.failure.is_none() {
                            log::error!(
                                "Store: commit failed ({why}); new tasks are refused until it succeeds"
                            );
                        }
                        d.failure = Some(why);
                    }
                    self.shared.durable_cv.notify_all();
                    if stopping {
                        log::error!(
                            "Store: stopping with {} change(s) not written",
                            group.changes.len()
                        );
                        break;
                    }
                    if matches!(e, StoreError::Full) {
                        // Retention may free the room the group needs.
                        if let Err(e) = self.maintenance_step() {
                            log::debug!("Store: retention while full failed: {e}");
                        }
                    }
                    retry_at = Some(Instant::now() + Duration::from_secs(1));
                }
            }
        }
        let _ = self.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
    }

    /// Publishes the group's events not published yet, without waiting for durability.
    fn publish_live(&self, group: &mut Group) {
        let events = events_of(&group.changes[group.published..]);
        group.published = group.changes.len();
        if events.is_empty() {
            return;
        }
        if let Some(after) = self.shared.after.read().as_ref() {
            after(Committed {
                events,
                acks: Vec::new(),
            });
        }
    }

    fn after_commit(&mut self, group: &mut Group, acks: Vec<(AgentProcess, u64)>) {
        let events = events_of(&group.changes[group.published..]);
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        self.shared
            .committed_changes
            .fetch_add(group.changes.len() as u64, Ordering::Relaxed);
        {
            let mut d = self.shared.durable.lock();
            if d.failure.take().is_some() {
                log::warn!("Store: writing again; new tasks are accepted");
            }
            d.upto = group.ticket;
        }
        self.shared.durable_cv.notify_all();
        if let Some(after) = self.shared.after.read().as_ref() {
            after(Committed { events, acks });
        }
        {
            let mut q = self.shared.queue.lock();
            q.uncommitted_bytes = q.uncommitted_bytes.saturating_sub(group.bytes);
        }
        *group = Group::default();
        self.shared.room.notify_all();
    }

    /// Writes one group in one transaction; returns the agent acknowledgements it makes due.
    fn commit(&mut self, changes: &[Change]) -> Result<Vec<(AgentProcess, u64)>, StoreError> {
        let cap = self.cfg.max_output_bytes;
        let rows = &mut self.rows;
        let tx = self.conn.transaction()?;
        let mut seqs: HashMap<AgentProcess, u64> = HashMap::new();
        let mut new_tids = Vec::new();
        let mut finished = Vec::new();
        let mut grown = Vec::new();
        // Only the last status change of a task in a group needs writing: a fast task goes
        // from sent to completed within one group.
        let mut last_update: HashMap<TaskId, usize> = HashMap::new();
        for (i, change) in changes.iter().enumerate() {
            if let Change::Updated(u) = change {
                last_update.insert(u.id, i);
            }
        }
        for (i, change) in changes.iter().enumerate() {
            match change {
                Change::Created { task, origin } => {
                    tx.prepare_cached(
                        "INSERT INTO tasks (id, agent_id, spec, status, created_at, updated_at, \
                         timeout_ms, created_by, created_from) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )?
                    .execute(params![
                        task.id.to_string(),
                        &*task.agent_id,
                        spec_json(&task.spec),
                        task.status.as_str(),
                        micros(task.created_at),
                        micros(task.updated_at),
                        task.timeout.as_millis() as i64,
                        &*origin.actor,
                        &*origin.peer,
                    ])?;
                    let tid = tx.last_insert_rowid();
                    new_tids.push((task.id, tid));
                    rows.tids.insert(task.id, tid);
                    // A new task has stored no output: no need to ask the table later.
                    rows.stored_bytes.insert(tid, (0, 0));
                }
                Change::Updated(task) if last_update.get(&task.id) != Some(&i) => {}
                Change::Updated(task) => {
                    let Some(tid) = rows.tid(&tx, task.id)? else {
                        continue;
                    };
                    tx.prepare_cached(
                        "UPDATE tasks SET status = ?2, updated_at = ?3, finished_at = ?4, \
                         exit_code = ?5, error = ?6 WHERE tid = ?1",
                    )?
                    .execute(params![
                        tid,
                        task.status.as_str(),
                        micros(task.updated_at),
                        task.finished_at.map(micros),
                        task.exit_code,
                        task.error.as_deref(),
                    ])?;
                    if task.status.is_final() {
                        finished.push((task.id, tid));
                    }
                }
                Change::Truncated { task_id, stdout } => {
                    let Some(tid) = rows.tid(&tx, *task_id)? else {
                        continue;
                    };
                    let sql = if *stdout {
                        "UPDATE tasks SET stdout_truncated = 1 WHERE tid = ?1"
                    } else {
                        "UPDATE tasks SET stderr_truncated = 1 WHERE tid = ?1"
                    };
                    tx.prepare_cached(sql)?.execute([tid])?;
                }
                Change::Event(e) => {
                    let Some(tid) = rows.tid(&tx, e.task_id)? else {
                        continue;
                    };
                    insert_event(&tx, tid, e)?;
                    if let EventKind::Output { stdout, stderr, .. } = &e.kind {
                        if !stdout.is_empty() || !stderr.is_empty() {
                            let b = rows.stored(&tx, tid)?;
                            b.0 += stdout.len();
                            b.1 += stderr.len();
                            if b.0 > 2 * cap || b.1 > 2 * cap {
                                grown.push(tid);
                            }
                        }
                    }
                }
                Change::AgentSeq {
                    agent_id,
                    instance,
                    seq,
                } => {
                    let e = seqs
                        .entry((agent_id.clone(), instance.clone()))
                        .or_insert(0);
                    *e = (*e).max(*seq);
                }
                Change::CancelledBy { task_id, origin } => {
                    let Some(tid) = rows.tid(&tx, *task_id)? else {
                        continue;
                    };
                    tx.prepare_cached("UPDATE tasks SET cancelled_by = ?2 WHERE tid = ?1")?
                        .execute(params![tid, &*origin.actor])?;
                }
                Change::Audit(a) => {
                    tx.prepare_cached(
                        "INSERT INTO audit (at, actor, peer, action, target, outcome) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        micros(a.at),
                        &*a.origin.actor,
                        &*a.origin.peer,
                        a.action,
                        a.target,
                        a.outcome
                    ])?;
                }
            }
        }
        grown.sort_unstable();
        grown.dedup();
        for tid in grown {
            rows.trim_output(&tx, tid, cap)?;
        }
        let now = micros(SystemTime::now());
        for ((agent, instance), seq) in &seqs {
            tx.prepare_cached(
                "INSERT INTO agent_seqs (agent_id, instance, seq, at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (agent_id, instance) DO UPDATE SET seq = max(seq, excluded.seq), at = excluded.at",
            )?
            .execute(params![&**agent, &**instance, *seq as i64, now])?;
        }
        if let Err(e) = tx.commit() {
            // The rows of this group are gone: forget the row ids it assigned.
            for (id, tid) in new_tids {
                rows.tids.remove(&id);
                rows.stored_bytes.remove(&tid);
            }
            return Err(e.into());
        }
        for (id, tid) in finished {
            rows.tids.remove(&id);
            rows.stored_bytes.remove(&tid);
        }
        Ok(seqs.into_iter().collect())
    }

    /// Deletes one batch of tasks past retention (with their events); true if more remain.
    fn maintenance_step(&mut self) -> Result<bool, StoreError> {
        const BATCH: i64 = 256;
        let (cutoff, count_cut) = match self.retention_pass {
            Some(bounds) => bounds,
            None => {
                let cutoff = micros(SystemTime::now())
                    - self.cfg.retention.as_micros().min(i64::MAX as u128) as i64;
                let count_cut: i64 = self
                    .conn
                    .prepare_cached("SELECT tid FROM tasks ORDER BY tid DESC LIMIT 1 OFFSET ?1")?
                    .query_row(
                        [self.cfg.retention_tasks.min(i64::MAX as u64) as i64],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or(0);
                self.retention_pass = Some((cutoff, count_cut));
                (cutoff, count_cut)
            }
        };
        let tx = self.conn.transaction()?;
        let doomed: Vec<i64> = tx
            .prepare_cached(
                "SELECT tid FROM tasks WHERE finished_at IS NOT NULL \
                 AND (finished_at < ?1 OR tid <= ?2) ORDER BY tid LIMIT ?3",
            )?
            .query_map(params![cutoff, count_cut, BATCH], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for tid in &doomed {
            tx.prepare_cached("DELETE FROM events WHERE tid = ?1")?
                .execute([tid])?;
            tx.prepare_cached("DELETE FROM tasks WHERE tid = ?1")?
                .execute([tid])?;
        }
        tx.prepare_cached("DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < ?1 ORDER BY id LIMIT ?2)")?
            .execute(params![cutoff, BATCH * 4])?;
        tx.commit()?;
        for tid in &doomed {
            self.rows.stored_bytes.remove(tid);
        }
        self.rows.tids.retain(|_, t| !doomed.contains(t));
        if !doomed.is_empty() {
            self.shared
                .retained_out
                .fetch_add(doomed.len() as u64, Ordering::Relaxed);
            log::info!("Store: retention deleted {} task(s)", doomed.len());
        }
        let more = doomed.len() as i64 == BATCH;
        if !more {
            self.retention_pass = None; // the next pass measures afresh
                                        // Give freed pages back in small steps; each step is its own short write.
            let mut stmt = self
                .conn
                .prepare_cached("PRAGMA incremental_vacuum(2048)")?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
        }
        Ok(more)
    }
}

impl Rows {
    fn tid(&mut self, tx: &Transaction<'_>, id: TaskId) -> Result<Option<i64>, StoreError> {
        if let Some(tid) = self.tids.get(&id) {
            return Ok(Some(*tid));
        }
        let tid: Option<i64> = tx
            .prepare_cached("SELECT tid FROM tasks WHERE id = ?1")?
            .query_row([id.to_string()], |r| r.get(0))
            .optional()?;
        match tid {
            Some(tid) => {
                self.tids.insert(id, tid);
                Ok(Some(tid))
            }
            None => {
                log::warn!("Store: change for unknown task {id} skipped");
                Ok(None)
            }
        }
    }

    /// Output bytes stored for a task, read from the table the first time.
    fn stored(
        &mut self,
        tx: &Transaction<'_>,
        tid: i64,
    ) -> Result<&mut (usize, usize), StoreError> {
        match self.stored_bytes.entry(tid) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let (o, e): (i64, i64) = tx
                    .prepare_cached(
                        "SELECT coalesce(sum(length(CAST(stdout AS BLOB))), 0), \
                         coalesce(sum(length(CAST(stderr AS BLOB))), 0) FROM events WHERE tid = ?1",
                    )?
                    .query_row([tid], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok(slot.insert((o as usize, e as usize)))
            }
        }
    }

    /// Blanks the text of a task's oldest chunks so that each stream keeps about
    /// `max_output_bytes` (whole chunks; readers cut the exact bound).
    fn trim_output(
        &mut self,
        tx: &Transaction<'_>,
        tid: i64,
        cap: usize,
    ) -> Result<(), StoreError> {
        let mut kept = (0usize, 0usize);
        for (column, flag, slot) in [
            ("stdout", "stdout_truncated", 0usize),
            ("stderr", "stderr_truncated", 1usize),
        ] {
            let sql = format!(
                "SELECT seq, length(CAST({column} AS BLOB)) FROM events \
                 WHERE tid = ?1 AND kind = 1 AND {column} != '' ORDER BY seq DESC"
            );
            let mut total = 0usize;
            let mut cut: Option<i64> = None;
            {
                let mut stmt = tx.prepare_cached(&sql)?;
                let mut rows = stmt.query([tid])?;
                while let Some(r) = rows.next()? {
                    let (seq, len): (i64, i64) = (r.get(0)?, r.get(1)?);
                    if total >= cap {
                        cut = Some(seq);
                        break;
                    }
                    total += len as usize;
                }
            }
            if let Some(seq) = cut {
                tx.prepare_cached(&format!(
                    "UPDATE events SET {column} = '' WHERE tid = ?1 AND seq <= ?2 AND {column} != ''"
                ))?
                .execute(params![tid, seq])?;
                tx.prepare_cached(&format!("UPDATE tasks SET {flag} = 1 WHERE tid = ?1"))?
                    .execute([tid])?;
            }
            if slot == 0 {
                kept.0 = total;
            } else {
                kept.1 = total;
            }
        }
        self.stored_bytes.insert(tid, kept);
        Ok(())
    }
}

fn insert_event(tx: &Transaction<'_>, tid: i64, e: &TaskEvent) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO events (gid, tid, seq, at, kind, status, reason, is_final, cancelled, \
         exit_code, stdout, stderr) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    match &e.kind {
        EventKind::Status { status, reason } => stmt.execute(params![
            e.global_seq as i64,
            tid,
            e.task_seq as i64,
            micros(e.at),
            0,
            status.as_str(),
            reason.as_deref(),
            false,
            false,
            Option::<i32>::None,
            "",
            ""
        ])?,
        EventKind::Output {
            status,
            is_final,
            cancelled,
            stdout,
            stderr,
            exit_code,
        } => stmt.execute(params![
            e.global_seq as i64,
            tid,
            e.task_seq as i64,
            micros(e.at),
            1,
            status.as_str(),
            Option::<&str>::None,
            is_final,
            cancelled,
            exit_code,
            stdout,
            stderr
        ])?,
    };
    Ok(())
}

fn events_of(changes: &[Change]) -> Vec<Arc<TaskEvent>> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}
