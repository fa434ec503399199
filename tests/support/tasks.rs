//! Helpers for tests of the agent: creating tasks with any body, waiting for output, looking
//! at a task's process group through /proc, and stopping an agent politely so the processes
//! of its tasks never outlive a test.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Client, Proc};

/// POSTs `body` to `path` (`/tasks/shell` or `/tasks/docker`) and returns the new task's id.
pub fn create_task(c: &Client, path: &str, body: Value) -> String {
    let r = c.post(path, &body.to_string());
    assert_eq!(r.status, 200, "create failed: {}", r.body);
    r.json()["task_id"].as_str().expect("task_id").to_string()
}

/// Creates a shell task with extra request fields (`env`, `working_dir`, `timeout`).
pub fn create_shell_with(c: &Client, agent: &str, cmd: &str, extra: Value) -> String {
    let mut body = json!({"agent_id": agent, "cmd": cmd});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    create_task(c, "/tasks/shell", body)
}

/// `GET /tasks/{id}`.
pub fn get_task(c: &Client, id: &str) -> Value {
    let r = c.get(&format!("/tasks/{id}"));
    assert_eq!(r.status, 200, "get task {id}: {}", r.body);
    r.json()
}

/// Waits until the task's retained stdout contains `needle`; returns the task.
pub fn wait_stdout(c: &Client, id: &str, needle: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let t = get_task(c, id);
        if t["stdout"].as_str().is_some_and(|s| s.contains(needle)) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "task {id}: no {needle:?} in stdout in time; last seen: {t}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits for the first line of a task's stdout and reads it as a pid: tasks that start with
/// `echo $$` print their shell's pid, which is also the process group of all they start.
pub fn first_line_pid(c: &Client, id: &str, limit: Duration) -> i32 {
    let t = wait_stdout(c, id, "\n", limit);
    let line = t["stdout"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default();
    line.trim()
        .parse()
        .unwrap_or_else(|_| panic!("first line is not a pid: {line:?}"))
}

/// Pids of the live (not zombie) processes whose process group is `pgid`, from /proc.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // A process may vanish between readdir and read: skip it.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may contain anything, so split after its ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let (Some(state), Some(pgrp)) = (fields.first(), fields.get(2)) else {
            continue;
        };
        if pgrp.parse() == Ok(pgid) && !matches!(*state, "Z" | "X") {
            pids.push(pid);
        }
    }
    pids
}

/// An agent process that is stopped with SIGTERM on drop (the agent then cancels its tasks,
/// killing their process groups), and only then killed.
pub struct StopOnDrop(pub Proc);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.signal(libc::SIGTERM);
        let _ = self.0.wait_exit(Duration::from_secs(10));
    }
}
