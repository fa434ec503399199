//! The store against a real database file in a temporary directory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::tasks::{
    Committed, EventKind, Origin, ReportStatus, TaskFilter, TaskSnapshot, TaskSpec, TaskStatus,
};

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "nodelink-store-test-{}-{n}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn task(n: u64) -> TaskSnapshot {
    TaskSnapshot {
        id: uuid::Uuid::new_v4(),
        agent_id: Arc::from(if n.is_multiple_of(2) { "a1" } else { "a2" }),
        spec: TaskSpec::Shell {
            cmd: format!("echo {n}"),
            env: vec![],
            working_dir: None,
        },
        status: TaskStatus::Created,
        created_at: SystemTime::now(),
        updated_at: SystemTime::now(),
        finished_at: None,
        timeout: Duration::from_secs(30),
        exit_code: None,
        error: None,
        created_by: None,
        created_from: None,
        cancelled_by: None,
        output: None,
    }
}

fn output_event(t: &TaskSnapshot, gid: u64, seq: u64, text: &str) -> Change {
    Change::Event(Arc::new(TaskEvent {
        global_seq: gid,
        task_seq: seq,
        task_id: t.id,
        agent_id: t.agent_id.clone(),
        at: SystemTime::now(),
        kind: EventKind::Output {
            status: ReportStatus::InProgress,
            is_final: false,
            cancelled: false,
            stdout: text.to_string(),
            stderr: String::new(),
            exit_code: None,
        },
    }))
}

fn finished(t: &TaskSnapshot) -> Change {
    Change::Updated(crate::tasks::TaskUpdate {
        id: t.id,
        status: TaskStatus::Completed,
        updated_at: SystemTime::now(),
        finished_at: Some(SystemTime::now()),
        exit_code: Some(0),
        error: None,
    })
}

fn created(t: &TaskSnapshot) -> Change {
    Change::Created {
        task: Box::new(t.clone()),
        origin: Origin {
            actor: Arc::from("ops"),
            peer: Arc::from("127.0.0.1:4000"),
        },
    }
}

fn open(dir: &TempDir) -> Arc<Store> {
    let mut cfg = StoreConfig::new(dir.0.clone());
    cfg.maintenance_every = Duration::from_secs(3600);
    Store::open(cfg).expect("opens")
}

#[test]
fn the_data_directory_is_private_and_held_by_one_server() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let store = open(&dir);
    let mode = std::fs::metadata(&dir.0).expect("dir").permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let second = Store::open(StoreConfig::new(dir.0.clone()));
    let err = second.expect_err("a second server is refused").to_string();
    assert!(err.contains("in use by another nodelink server"), "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    store.shutdown();
}

#[test]
fn tasks_events_and_output_survive_a_reopen() {
    let dir = TempDir::new();
    let t = task(1);
    let u = task(2);
    {
        let store = open(&dir);
        let ticket = store.append(vec![created(&t), created(&u)]);
        store.wait_durable(ticket).expect("durable");
        let ticket = store.append(vec![
            output_event(&t, 10, 2, "one\n"),
            output_event(&t, 11, 3, "two\n"),
            finished(&t),
            Change::AgentSeq {
                agent_id: Arc::from("a1"),
                instance: Arc::from("i1"),
                seq: 7,
            },
        ]);
        store.wait_durable(ticket).expect("durable");
        store.shutdown();
    }
    let store = open(&dir);
    let got = store.task(t.id).expect("reads").expect("found");
    assert_eq!(got.status, TaskStatus::Completed);
    assert_eq!(got.exit_code, Some(0));
    assert_eq!(got.created_by.as_deref(), Some("ops"));
    assert_eq!(got.output.expect("output").stdout, "one\ntwo\n");
    let (events, done) = store.events(t.id, 2).expect("reads").expect("found");
    assert!(done);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].global_seq, 11);
    assert_eq!(store.last_global_seq(), 11);
    assert_eq!(store.agent_seq("a1", "i1"), 7);
    assert_eq!(store.agent_seq("a1", "other"), 0);
    let open_tasks = store.unfinished().expect("reads");
    assert_eq!(open_tasks.len(), 1);
    assert_eq!(open_tasks[0].task.id, u.id);
    store.shutdown();
}

#[test]
fn paging_returns_each_task_exactly_once_newest_first() {
    let dir = TempDir::new();
    let store = open(&dir);
    let tasks: Vec<TaskSnapshot> = (0..1000).map(task).collect();
    let ticket = store.append(tasks.iter().map(created).collect());
    store.wait_durable(ticket).expect("durable");
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = store
            .list(&TaskFilter {
                limit: Some(64),
                cursor: cursor.clone(),
                ..TaskFilter::default()
            })
            .expect("lists");
        pages += 1;
        seen.extend(page.tasks.iter().map(|t| t.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(pages < 100, "paging does not end");
    }
    let want: Vec<_> = tasks.iter().rev().map(|t| t.id).collect();
    assert_eq!(seen, want);
    let only_a2 = store
        .list(&TaskFilter {
            agent_id: Some("a2".into()),
            limit: Some(1000),
            ..TaskFilter::default()
        })
        .expect("lists");
    assert_eq!(only_a2.tasks.len(), 500);
    assert!(only_a2.next_cursor.is_none());
    store.shutdown();
}

#[test]
fn events_are_published_only_after_they_are_durable() {
    let dir = TempDir::new();
    let store = open(&dir);
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let durable_when_seen = Arc::new(AtomicU64::new(0));
    {
        let seen = seen.clone();
        let path = store.path().to_path_buf();
        let flag = durable_when_seen.clone();
        store.on_commit(Box::new(move |c: Committed| {
            // Another connection sees the event's row by the time it is published.
            let conn = Connection::open(&path).expect("opens");
            for e in &c.events {
                let n: i64 = conn
                    .query_row(
                        "SELECT count(*) FROM events WHERE gid = ?1",
                        [e.global_seq as i64],
                        |r| r.get(0),
                    )
                    .expect("query");
                if n == 1 {
                    flag.fetch_add(1, Ordering::Relaxed);
                }
                seen.lock().push(e.global_seq);
            }
        }));
    }
    let t = task(1);
    let ticket = store.append(vec![
        created(&t),
        output_event(&t, 1, 1, "a"),
        output_event(&t, 2, 2, "b"),
    ]);
    store.wait_durable(ticket).expect("durable");
    store.shutdown();
    assert_eq!(*seen.lock(), vec![1, 2]);
    assert_eq!(durable_when_seen.load(Ordering::Relaxed), 2);
}

#[test]
fn a_file_that_is_not_a_database_is_refused_untouched() {
    let dir = TempDir::new();
    std::fs::create_dir_all(&dir.0).expect("dir");
    let db = dir.0.join(DB_FILE);
    let junk = b"this is not a database, and it must stay exactly as it is".repeat(100);
    std::fs::write(&db, &junk).expect("write");
    let err = Store::open(StoreConfig::new(dir.0.clone()))
        .expect_err("refused")
        .to_string();
    assert!(err.contains("unreadable or damaged"), "{err}");
    assert_eq!(std::fs::read(&db).expect("read"), junk);
}

#[test]
fn a_newer_schema_is_refused_untouched() {
    let dir = TempDir::new();
    open(&dir).shutdown();
    let db = dir.0.join(DB_FILE);
    {
        let conn = Connection::open(&db).expect("opens");
        conn.pragma_update(None, "user_version", 99).expect("set");
    }
    let before = std::fs::read(&db).expect("read");
    let err = Store::open(StoreConfig::new(dir.0.clone()))
        .expect_err("refused")
        .to_string();
    assert!(err.contains("schema version 99"), "{err}");
    assert_eq!(std::fs::read(&db).expect("read"), before);
}

#[test]
fn retention_deletes_the_oldest_finished_tasks_and_the_file_shrinks() {
    let dir = TempDir::new();
    let mut cfg = StoreConfig::new(dir.0.clone());
    cfg.maintenance_every = Duration::from_secs(3600);
    let store = Store::open(cfg.clone()).expect("opens");
    let text = "x".repeat(4000);
    let tasks: Vec<TaskSnapshot> = (0..600).map(task).collect();
    let mut changes = Vec::new();
    for (i, t) in tasks.iter().enumerate() {
        changes.push(created(t));
        changes.push(output_event(t, i as u64 + 1, 2, &text));
        changes.push(finished(t));
    }
    let ticket = store.append(changes);
    store.wait_durable(ticket).expect("durable");
    store.shutdown();
    drop(store);
    let mode: i64 = Connection::open(dir.0.join(DB_FILE))
        .expect("opens")
        .pragma_query_value(None, "auto_vacuum", |r| r.get(0))
        .expect("pragma");
    assert_eq!(mode, 2, "incremental auto-vacuum");
    let size = |d: &TempDir| std::fs::metadata(d.0.join(DB_FILE)).expect("db").len();
    let before = size(&dir);
    cfg.retention_tasks = 100;
    let store = Store::open(cfg).expect("reopens"); // retention runs at start
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.stats().deleted < 500 {
        assert!(
            std::time::Instant::now() < deadline,
            "retention did not run"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let page = store
        .list(&TaskFilter {
            limit: Some(1000),
            ..TaskFilter::default()
        })
        .expect("lists");
    assert_eq!(page.tasks.len(), 100);
    assert_eq!(page.tasks[0].id, tasks[599].id, "the newest are kept");
    assert!(store.task(tasks[0].id).expect("reads").is_none());
    store.shutdown();
    drop(store);
    let after = size(&dir);
    assert!(
        after < before / 2,
        "file did not shrink: {before} -> {after}"
    );
}

#[test]
fn a_full_disk_degrades_then_recovers_when_room_returns() {
    let dir = TempDir::new();
    let mut cfg = StoreConfig::new(dir.0.clone());
    cfg.max_data_bytes = Some(400 << 10);
    cfg.retention_tasks = 10;
    cfg.maintenance_every = Duration::from_secs(3600);
    let store = Store::open(cfg).expect("opens");
    let live = Arc::new(AtomicU64::new(0));
    {
        let live = live.clone();
        store.on_commit(Box::new(move |c: Committed| {
            live.fetch_add(c.events.len() as u64, Ordering::Relaxed);
        }));
    }
    let text = "y".repeat(8000);
    let mut gid = 0;
    let mut failed_at = None;
    for i in 0..200u64 {
        let t = task(i);
        gid += 1;
        let ticket = store.append(vec![
            created(&t),
            output_event(&t, gid, 2, &text),
            finished(&t),
        ]);
        if let Err(e) = store.wait_durable(ticket) {
            assert!(e.0.contains("full"), "{e}");
            failed_at = Some(i);
            break;
        }
    }
    let failed_at = failed_at.expect("the cap was reached");
    assert!(store.available().is_err());
    assert!(store.stats().failures > 0);
    // Events are still published while the disk is full, so running tasks keep streaming.
    assert_eq!(live.load(Ordering::Relaxed), failed_at + 1);
    // Retention (10 tasks) frees pages; the pending group is then written by itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.available().is_err() {
        assert!(std::time::Instant::now() < deadline, "did not recover");
        std::thread::sleep(Duration::from_millis(50));
    }
    store.shutdown();
}
