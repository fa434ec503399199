//! The database schema and its forward migrations, applied at start-up.
//!
//! `PRAGMA user_version` is the schema version. Each entry of [`MIGRATIONS`] moves the
//! database one version forward inside one transaction, so a crash mid-migration leaves the
//! previous version intact. A database newer than [`MIGRATIONS`] knows is refused untouched.

use rusqlite::Connection;

/// Version `i + 1` is reached by running `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    // 1: tasks, their events (with output text), agent response numbers, the audit trail.
    "
    CREATE TABLE tasks (
        tid INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        agent_id TEXT NOT NULL,
        spec TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        finished_at INTEGER,
        timeout_ms INTEGER NOT NULL,
        exit_code INTEGER,
        error TEXT,
        stdout_truncated INTEGER NOT NULL DEFAULT 0,
        stderr_truncated INTEGER NOT NULL DEFAULT 0,
        created_by TEXT,
        created_from TEXT,
        cancelled_by TEXT
    );
    CREATE INDEX tasks_by_agent ON tasks (agent_id, tid);
    CREATE INDEX tasks_by_status ON tasks (status, tid);
    CREATE INDEX tasks_by_created ON tasks (created_at);
    CREATE INDEX tasks_unfinished ON tasks (finished_at) WHERE finished_at IS NULL;
    CREATE INDEX tasks_by_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
    CREATE TABLE events (
        gid INTEGER PRIMARY KEY,
        tid INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        at INTEGER NOT NULL,
        kind INTEGER NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        is_final INTEGER NOT NULL DEFAULT 0,
        cancelled INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER,
        stdout TEXT NOT NULL DEFAULT '',
        stderr TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX events_by_task ON events (tid, seq);
    CREATE TABLE agent_seqs (
        agent_id TEXT NOT NULL,
        instance TEXT NOT NULL,
        seq INTEGER NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (agent_id, instance)
    ) WITHOUT ROWID;
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        peer TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        outcome TEXT NOT NULL
    );
    CREATE INDEX audit_by_at ON audit (at);
    ",
];

/// The schema version this build writes.
pub(crate) const VERSION: i64 = MIGRATIONS.len() as i64;

/// What [`migrate`] found.
pub(crate) enum Found {
    /// The database is at [`VERSION`] (possibly after migrating).
    Current,
    /// The database is newer than this build.
    Newer(i64),
}

/// Brings the database forward to [`VERSION`].
pub(crate) fn migrate(conn: &mut Connection) -> rusqlite::Result<Found> {
    let mut version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > VERSION {
        return Ok(Found::Newer(version));
    }
    if version == 0 {
        // Only possible before the first table exists: lets deleted pages go back to the
        // file system in small steps (`PRAGMA incremental_vacuum`) instead of a full VACUUM.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    }
    while version < VERSION {
        let tx = conn.transaction()?;
        tx.execute_batch(MIGRATIONS[version as usize])?;
        version += 1;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        log::info!("Store: schema migrated to version {version}");
    }
    Ok(Found::Current)
}
