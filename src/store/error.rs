//! The store's error type. Start-up errors are one line for the operator (`nodelink server`
//! exits 2 on them); run-time errors put the store in a degraded state that `/readyz`, new
//! tasks (503) and a metric report, until a later commit succeeds.

use std::fmt;
use std::path::PathBuf;

/// Why the store could not open, or a write or read failed.
#[derive(Debug)]
pub enum StoreError {
    /// The data directory could not be created or read.
    Dir {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Another server holds the data directory.
    Locked {
        /// The directory.
        path: PathBuf,
        /// What the lock file says about its holder.
        holder: String,
    },
    /// The database file is not a database, or is damaged.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// SQLite's words.
        detail: String,
    },
    /// The database was written by a newer nodelink.
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// The disk is full (or the database reached `--max-data-bytes`).
    Full,
    /// Any other SQLite failure.
    Sqlite(rusqlite::Error),
    /// The writer thread is gone (shutting down).
    Stopped,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Dir { path, source } => {
                write!(f, "data directory {}: {source}", path.display())
            }
            StoreError::Locked { path, holder } => write!(
                f,
                "data directory {} is in use by another nodelink server ({holder}); give each server its own --data-dir",
                path.display()
            ),
            StoreError::Corrupt { path, detail } => write!(
                f,
                "database {} is unreadable or damaged ({detail}); it was left untouched",
                path.display()
            ),
            StoreError::NewerSchema { path, found, known } => write!(
                f,
                "database {} has schema version {found}, newer than this nodelink knows ({known}); run a newer nodelink or another --data-dir",
                path.display()
            ),
            StoreError::Full => write!(f, "disk full"),
            StoreError::Sqlite(e) => write!(f, "{e}"),
            StoreError::Stopped => write!(f, "store stopped"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::Full,
            _ => StoreError::Sqlite(e),
        }
    }
}
