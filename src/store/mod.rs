//! Durable history: an embedded SQLite database (bundled, WAL mode) in the data directory.
//!
//! [`Store`] implements the task manager's [`Journal`]: the manager appends its changes, the
//! writer thread (`nl-store`, [`writer`]) commits them in groups, and readers query with
//! connections of their own ([`read`]). All SQL lives in this module. What is durable when:
//! a task is committed before it is sent to its agent (its creator waits for that commit);
//! events and output are committed before they are published to SSE clients and before the
//! agent is told it may forget them. Commits use `synchronous=NORMAL`: they survive the
//! process being killed (SIGKILL), not the machine losing power mid-write.

mod codec;
mod error;
mod lock;
mod read;
mod schema;
mod writer;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};

pub use error::StoreError;

use crate::tasks::{
    AfterCommit, Change, Journal, Page, Reloaded, TaskEvent, TaskFilter, TaskId, TaskSnapshot,
    Ticket, Unavailable,
};
use lock::DirLock;
use writer::{Shared, Writer, WriterConfig};

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "nodelink.db";

/// How the store runs; `StoreConfig::new` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The data directory (created with mode 0700).
    pub dir: PathBuf,
    /// Finished tasks older than this are deleted.
    pub retention: Duration,
    /// At most this many tasks are kept.
    pub retention_tasks: u64,
    /// The database never grows past this many bytes; `None`: as the disk allows.
    pub max_data_bytes: Option<u64>,
    /// Output bytes kept per stream per task (the manager's bound).
    pub max_output_bytes: usize,
    /// Bytes waiting for the writer beyond which producers wait.
    pub max_backlog_bytes: usize,
    /// How often retention runs.
    pub maintenance_every: Duration,
}

impl StoreConfig {
    /// Defaults for a store in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        StoreConfig {
            dir,
            retention: Duration::from_secs(30 * 24 * 3600),
            retention_tasks: 1_000_000,
            max_data_bytes: None,
            max_output_bytes: 1 << 20,
            max_backlog_bytes: 8 << 20,
            maintenance_every: Duration::from_secs(60),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreStats {
    /// Commits that failed.
    pub failures: u64,
    /// Groups committed.
    pub commits: u64,
    /// Changes committed.
    pub changes: u64,
    /// Tasks deleted by retention.
    pub deleted: u64,
    /// Bytes appended and not yet committed.
    pub backlog_bytes: u64,
}

/// An open store: the lock on its directory, the writer thread and a pool of readers.
pub struct Store {
    db: PathBuf,
    cfg: StoreConfig,
    shared: Arc<Shared>,
    readers: Mutex<Vec<Connection>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    _lock: DirLock,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("db", &self.db).finish()
    }
}

fn open_error(path: &Path, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(
            rusqlite::ErrorCode::NotADatabase
            | rusqlite::ErrorCode::DatabaseCorrupt
            | rusqlite::ErrorCode::CannotOpen
            | rusqlite::ErrorCode::PermissionDenied
            | rusqlite::ErrorCode::ReadOnly
            | rusqlite::ErrorCode::SystemIoFailure,
        ) => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        _ => StoreError::Sqlite(e),
    }
}

impl Store {
    /// Opens (creating or migrating) the store in `cfg.dir` and starts its writer thread.
    pub fn open(cfg: StoreConfig) -> Result<Arc<Store>, StoreError> {
        let dir = cfg.dir.clone();
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| StoreError::Dir {
                    path: dir.clone(),
                    source,
                })?;
        }
        let lock = DirLock::acquire(&dir)?;
        let db = dir.join(DB_FILE);
        let mut conn = Connection::open_with_flags(
            &db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )
        .map_err(|e| open_error(&db, e))?;
        let setup = |conn: &mut Connection| -> rusqlite::Result<schema::Found> {
            conn.busy_timeout(Duration::from_secs(5))?;
            // Reading the header first: a file that is not a database fails here, untouched.
            let _: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
            let found = schema::migrate(conn)?;
            if let schema::Found::Newer(_) = found {
                return Ok(found);
            }
            let _: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.pragma_update(None, "journal_size_limit", 64i64 << 20)?;
            Ok(found)
        };
        match setup(&mut conn).map_err(|e| open_error(&db, e))? {
            schema::Found::Newer(found) => {
                return Err(StoreError::NewerSchema {
                    path: db,
                    found,
                    known: schema::VERSION,
                })
            }
            schema::Found::Current => {}
        }
        if let Some(max) = cfg.max_data_bytes {
            let page: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
            let pages = (max / page.max(512) as u64).max(16) as i64;
            let _: i64 =
                conn.pragma_update_and_check(None, "max_page_count", pages, |r| r.get(0))?;
        }
        let shared = Arc::new(Shared::new(cfg.max_backlog_bytes));
        let writer = Writer::new(
            conn,
            WriterConfig {
                max_output_bytes: cfg.max_output_bytes,
                retention: cfg.retention,
                retention_tasks: cfg.retention_tasks,
                maintenance_every: cfg.maintenance_every,
            },
            shared.clone(),
        );
        let handle = std::thread::Builder::new()
            .name("nl-store".into())
            .spawn(move || writer.run())
            .map_err(|source| StoreError::Dir {
                path: dir.clone(),
                source,
            })?;
        log::info!("Store: {} (schema {})", db.display(), schema::VERSION);
        Ok(Arc::new(Store {
            db,
            cfg,
            shared,
            readers: Mutex::new(Vec::new()),
            writer: Mutex::new(Some(handle)),
            _lock: lock,
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.db
    }

    /// Why the store refuses new work now, if it does (`/readyz`).
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    /// Counters for `/metrics`.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            failures: self.shared.failures.load(Ordering::Relaxed),
            commits: self.shared.commits.load(Ordering::Relaxed),
            changes: self.shared.committed_changes.load(Ordering::Relaxed),
            deleted: self.shared.retained_out.load(Ordering::Relaxed),
            backlog_bytes: self.shared.backlog_bytes() as u64,
        }
    }

    /// Whether `cursor` is one this store hands out (a bad one is the client's error).
    pub fn valid_cursor(cursor: &str) -> bool {
        read::valid_cursor(cursor)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, Unavailable> {
        let conn = match self.readers.lock().pop() {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.db,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|e| Unavailable(e.to_string()))?;
                c.busy_timeout(Duration::from_secs(5))
                    .and_then(|_| c.pragma_update(None, "query_only", true))
                    .map_err(|e| Unavailable(e.to_string()))?;
                c
            }
        };
        let out = f(&conn).map_err(|e| {
            log::warn!("Store: read failed: {e}");
            Unavailable(e.to_string())
        });
        let mut pool = self.readers.lock();
        if pool.len() < 16 {
            pool.push(conn);
        }
        out
    }
}

impl Journal for Store {
    fn append(&self, changes: Vec<Change>) -> Ticket {
        self.shared.append(changes)
    }

    fn wait_durable(&self, ticket: Ticket) -> Result<(), Unavailable> {
        self.shared.wait_durable(ticket).map_err(Unavailable)
    }

    fn throttle(&self) {
        self.shared.throttle();
    }

    fn available(&self) -> Result<(), Unavailable> {
        match self.shared.failure() {
            Some(why) => Err(Unavailable(why)),
            None => Ok(()),
        }
    }

    fn task(&self, id: TaskId) -> Result<Option<TaskSnapshot>, Unavailable> {
        let cap = self.cfg.max_output_bytes;
        self.read(|c| read::task(c, id, cap))
    }

    fn list(&self, filter: &TaskFilter) -> Result<Page, Unavailable> {
        let limit = filter.limit().min(TaskFilter::MAX_LIMIT);
        self.read(|c| read::list(c, filter, limit))
    }

    fn events(
        &self,
        id: TaskId,
        after: u64,
    ) -> Result<Option<(Vec<TaskEvent>, bool)>, Unavailable> {
        self.read(|c| read::events(c, id, after))
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<TaskEvent>, Unavailable> {
        self.read(|c| read::events_after(c, after, limit))
    }

    fn agent_seq(&self, agent_id: &str, instance: &str) -> u64 {
        self.read(|c| read::agent_seq(c, agent_id, instance))
            .unwrap_or(0)
    }

    fn unfinished(&self) -> Result<Vec<Reloaded>, Unavailable> {
        self.read(read::unfinished)
    }

    fn last_global_seq(&self) -> u64 {
        self.read(read::last_gid).unwrap_or(0)
    }

    fn on_commit(&self, after: AfterCommit) {
        self.shared.set_after(after);
    }

    fn shutdown(&self) {
        self.shared.request_stop();
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests;
