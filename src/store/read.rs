//! Queries over durable history, each on a reader connection of its own so that reads
//! never wait for the writer (WAL mode lets readers and the writer work at once).

use std::sync::Arc;

use rusqlite::{params_from_iter, types::Value as SqlValue, Connection, OptionalExtension, Row};
use uuid::Uuid;

use super::codec::{micros, report_status, spec_from_json, status, time};
use crate::tasks::{
    EventKind, OutputSnapshot, Page, Reloaded, TaskEvent, TaskFilter, TaskId, TaskSnapshot,
};

const TASK_COLUMNS: &str = "tid, id, agent_id, spec, status, created_at, updated_at, finished_at, \
     timeout_ms, exit_code, error, stdout_truncated, stderr_truncated, created_by, created_from, cancelled_by";

/// A task row with its row id (the paging key).
pub(crate) struct TaskRow {
    pub(crate) tid: i64,
    pub(crate) task: TaskSnapshot,
}

fn task_row(row: &Row<'_>) -> rusqlite::Result<Option<TaskRow>> {
    let id: String = row.get(1)?;
    let spec: String = row.get(3)?;
    let (Ok(id), Some(spec)) = (Uuid::parse_str(&id), spec_from_json(&spec)) else {
        return Ok(None); // a damaged row is skipped, not fatal
    };
    let status_text: String = row.get(4)?;
    let finished_at: Option<i64> = row.get(7)?;
    let timeout_ms: i64 = row.get(8)?;
    let stdout_truncated: bool = row.get(11)?;
    let stderr_truncated: bool = row.get(12)?;
    let agent: String = row.get(2)?;
    Ok(Some(TaskRow {
        tid: row.get(0)?,
        task: TaskSnapshot {
            id,
            agent_id: Arc::from(agent.as_str()),
            spec,
            status: status(&status_text),
            created_at: time(row.get(5)?),
            updated_at: time(row.get(6)?),
            finished_at: finished_at.map(time),
            timeout: std::time::Duration::from_millis(timeout_ms.max(0) as u64),
            exit_code: row.get(9)?,
            error: row.get(10)?,
            created_by: row.get(13)?,
            created_from: row.get(14)?,
            cancelled_by: row.get(15)?,
            output: (stdout_truncated || stderr_truncated).then(|| OutputSnapshot {
                stdout_truncated,
                stderr_truncated,
                ..OutputSnapshot::default()
            }),
        },
    }))
}

/// One task by id, with its retained output (the newest `cap` bytes of each stream).
pub(crate) fn task(
    conn: &Connection,
    id: TaskId,
    cap: usize,
) -> rusqlite::Result<Option<TaskSnapshot>> {
    let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1");
    let Some(Some(mut row)) = conn
        .prepare_cached(&sql)?
        .query_row([id.to_string()], task_row)
        .optional()?
    else {
        return Ok(None);
    };
    let mut out = row.task.output.take().unwrap_or_default();
    let mut stmt = conn.prepare_cached(
        "SELECT stdout, stderr FROM events WHERE tid = ?1 AND kind = 1 ORDER BY seq",
    )?;
    let mut rows = stmt.query([row.tid])?;
    while let Some(r) = rows.next()? {
        out.stdout.push_str(r.get_ref(0)?.as_str()?);
        out.stderr.push_str(r.get_ref(1)?.as_str()?);
    }
    out.stdout_truncated |= keep_tail(&mut out.stdout, cap);
    out.stderr_truncated |= keep_tail(&mut out.stderr, cap);
    row.task.output = Some(out);
    Ok(Some(row.task))
}

/// Keeps the last `cap` bytes of `text` on a character boundary; true if it cut.
fn keep_tail(text: &mut String, cap: usize) -> bool {
    if text.len() <= cap {
        return false;
    }
    let mut cut = text.len() - cap;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    text.drain(..cut);
    true
}

/// The paging cursor: opaque to clients, the row id of the last task of a page.
fn encode_cursor(tid: i64) -> String {
    format!("t{tid:x}")
}

fn decode_cursor(cursor: &str) -> Option<i64> {
    i64::from_str_radix(cursor.strip_prefix('t')?, 16).ok()
}

/// Whether a cursor came from [`encode_cursor`].
pub(crate) fn valid_cursor(cursor: &str) -> bool {
    decode_cursor(cursor).is_some()
}

/// A page of tasks, newest first.
pub(crate) fn list(conn: &Connection, filter: &TaskFilter, limit: usize) -> rusqlite::Result<Page> {
    let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE 1 = 1");
    let mut args: Vec<SqlValue> = Vec::new();
    if let Some(s) = filter.status {
        sql.push_str(" AND status = ?");
        args.push(SqlValue::Text(s.as_str().into()));
    }
    if let Some(a) = &filter.agent_id {
        sql.push_str(" AND agent_id = ?");
        args.push(SqlValue::Text(a.clone()));
    }
    if let Some(since) = filter.since {
        // Row ids follow creation, so a time bound becomes a row-id bound found by index.
        sql.push_str(
            " AND tid >= (SELECT coalesce(min(tid), 1 << 62) FROM tasks WHERE created_at >= ?)",
        );
        args.push(SqlValue::Integer(micros(since)));
    }
    if let Some(until) = filter.until {
        sql.push_str(" AND created_at < ?");
        args.push(SqlValue::Integer(micros(until)));
    }
    if let Some(tid) = filter.cursor.as_deref().and_then(decode_cursor) {
        sql.push_str(" AND tid < ?");
        args.push(SqlValue::Integer(tid));
    }
    sql.push_str(" ORDER BY tid DESC LIMIT ?");
    args.push(SqlValue::Integer(limit as i64 + 1));
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut tasks = Vec::new();
    let mut last_tid = None;
    let mut more = false;
    while let Some(r) = rows.next()? {
        if tasks.len() == limit {
            more = true;
            break;
        }
        if let Some(row) = task_row(r)? {
            last_tid = Some(row.tid);
            let mut task = row.task;
            task.output = None;
            tasks.push(task);
        }
    }
    Ok(Page {
        tasks,
        next_cursor: if more {
            last_tid.map(encode_cursor)
        } else {
            None
        },
    })
}

fn event_row(task_id: TaskId, agent_id: &Arc<str>, r: &Row<'_>) -> rusqlite::Result<TaskEvent> {
    let kind: i64 = r.get(3)?;
    let status_text: String = r.get(4)?;
    let kind = if kind == 0 {
        let reason: Option<String> = r.get(5)?;
        EventKind::Status {
            status: status(&status_text),
            reason: reason.map(Arc::from),
        }
    } else {
        EventKind::Output {
            status: report_status(&status_text),
            is_final: r.get(6)?,
            cancelled: r.get(7)?,
            exit_code: r.get(8)?,
            stdout: r.get(9)?,
            stderr: r.get(10)?,
        }
    };
    Ok(TaskEvent {
        global_seq: r.get::<_, i64>(0)? as u64,
        task_seq: r.get::<_, i64>(1)? as u64,
        task_id,
        agent_id: agent_id.clone(),
        at: time(r.get(2)?),
        kind,
    })
}

const EVENT_COLUMNS: &str =
    "gid, seq, at, kind, status, reason, is_final, cancelled, exit_code, stdout, stderr";

/// A task's events after `after`, and whether the task is final.
pub(crate) fn events(
    conn: &Connection,
    id: TaskId,
    after: u64,
) -> rusqlite::Result<Option<(Vec<TaskEvent>, bool)>> {
    let Some((tid, agent, st)) = conn
        .prepare_cached("SELECT tid, agent_id, status FROM tasks WHERE id = ?1")?
        .query_row([id.to_string()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .optional()?
    else {
        return Ok(None);
    };
    let agent: Arc<str> = Arc::from(agent.as_str());
    let sql =
        format!("SELECT {EVENT_COLUMNS} FROM events WHERE tid = ?1 AND seq > ?2 ORDER BY seq");
    let mut stmt = conn.prepare_cached(&sql)?;
    let events = stmt
        .query_map(rusqlite::params![tid, after as i64], |r| {
            event_row(id, &agent, r)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some((events, status(&st).is_final())))
}

/// Events of every task after event number `after`, in order, at most `limit`.
pub(crate) fn events_after(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<TaskEvent>> {
    let sql = format!(
        "SELECT {}, t.id, t.agent_id FROM events e JOIN tasks t ON t.tid = e.tid \
         WHERE e.gid > ?1 ORDER BY e.gid LIMIT ?2",
        EVENT_COLUMNS
            .split(", ")
            .map(|c| format!("e.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params![after as i64, limit as i64])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let id: String = r.get(11)?;
        let agent: String = r.get(12)?;
        let Ok(id) = Uuid::parse_str(&id) else {
            continue;
        };
        out.push(event_row(id, &Arc::from(agent.as_str()), r)?);
    }
    Ok(out)
}

/// Every unfinished task with its events.
pub(crate) fn unfinished(conn: &Connection) -> rusqlite::Result<Vec<Reloaded>> {
    let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE finished_at IS NULL ORDER BY tid");
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt
        .query_map([], task_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE tid = ?1 ORDER BY seq");
    let mut ev = conn.prepare(&sql)?;
    let mut out = Vec::new();
    for row in rows.into_iter().flatten() {
        if row.task.status.is_final() {
            continue;
        }
        let id = row.task.id;
        let agent = row.task.agent_id.clone();
        let events = ev
            .query_map([row.tid], |r| event_row(id, &agent, r))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut task = row.task;
        task.output = None;
        out.push(Reloaded { task, events });
    }
    Ok(out)
}

/// The highest stored response number of an agent process.
pub(crate) fn agent_seq(
    conn: &Connection,
    agent_id: &str,
    instance: &str,
) -> rusqlite::Result<u64> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT seq FROM agent_seqs WHERE agent_id = ?1 AND instance = ?2")?
        .query_row([agent_id, instance], |r| r.get(0))
        .optional()?;
    Ok(seq.unwrap_or(0).max(0) as u64)
}

/// The highest stored event number.
pub(crate) fn last_gid(conn: &Connection) -> rusqlite::Result<u64> {
    let gid: Option<i64> = conn.query_row("SELECT max(gid) FROM events", [], |r| r.get(0))?;
    Ok(gid.unwrap_or(0).max(0) as u64)
}
