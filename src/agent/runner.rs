//! The agent's table of running tasks: turns TaskRequests into processes (through `exec`)
//! and process events into TaskResponses in the outbox.
//!
//! Touched by the session's reader thread (start, cancel), by each task's executor thread
//! (its events) and by the signal thread (shutdown). Responses follow the wire contract:
//! IN_PROGRESS chunks, then one final COMPLETED with the exit code (FAILURE when the command
//! could not start), or, after a cancel, COMPLETED + cancelled=true with a task_cancel answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::exec::{self, DockerOp, ExecConfig, ExecEvent, ExecSpec, RunningTask};
use super::outbox::Outbox;
use crate::proto::{
    docker_operation, task_request, task_response, ShellExecuteResponse, TaskCancelResponse,
    TaskRequest, TaskResponse,
};

struct Entry {
    task: RunningTask,
    cancel_reason: Option<String>,
}

/// Running tasks by id.
pub struct Runner {
    agent_id: String,
    cfg: ExecConfig,
    max_tasks: usize,
    outbox: Arc<Outbox>,
    running: Mutex<HashMap<String, Entry>>,
    emptied: Condvar,
    accepting: AtomicBool,
}

impl Runner {
    /// A runner for `agent_id` that runs at most `max_tasks` tasks at once.
    pub fn new(
        agent_id: String,
        cfg: ExecConfig,
        max_tasks: usize,
        outbox: Arc<Outbox>,
    ) -> Arc<Self> {
        Arc::new(Runner {
            agent_id,
            cfg,
            max_tasks,
            outbox,
            running: Mutex::new(HashMap::new()),
            emptied: Condvar::new(),
            accepting: AtomicBool::new(true),
        })
    }

    /// Ids of the tasks running now.
    pub fn running_ids(&self) -> Vec<String> {
        self.running.lock().keys().cloned().collect()
    }

    /// Number of tasks running now.
    pub fn running(&self) -> usize {
        self.running.lock().len()
    }

    /// Acts on one request from the server.
    pub fn handle(self: &Arc<Self>, req: TaskRequest) {
        let task_id = req.task_id;
        match req.task {
            Some(task_request::Task::ShellExecute(shell)) => {
                let mut env: Vec<(String, String)> = shell.env.into_iter().collect();
                env.sort();
                let working_dir = (!shell.working_dir.is_empty()).then(|| shell.working_dir.into());
                self.start(
                    task_id,
                    ExecSpec::Shell {
                        cmd: shell.cmd,
                        env,
                        working_dir,
                    },
                );
            }
            Some(task_request::Task::DockerOperation(op)) => {
                let op = match op.operation {
                    Some(docker_operation::Operation::DockerRun(m)) => {
                        DockerOp::Run { image: m.img }
                    }
                    Some(docker_operation::Operation::DockerStart(m)) => {
                        DockerOp::Start { id: m.id }
                    }
                    Some(docker_operation::Operation::DockerStop(m)) => DockerOp::Stop { id: m.id },
                    Some(docker_operation::Operation::DockerLogs(m)) => DockerOp::Logs { id: m.id },
                    None => {
                        self.fail(&task_id, "docker operation is empty");
                        return;
                    }
                };
                self.start(task_id, ExecSpec::Docker(op));
            }
            Some(task_request::Task::TaskCancel(cancel)) => self.cancel(&task_id, cancel.reason),
            Some(task_request::Task::LogMessage(m)) => log::info!("Server says: {}", m.msg),
            // Acknowledgements are the connection's business; one that gets here is stray.
            Some(task_request::Task::ResponseAck(_)) => {}
            None => log::warn!("Ignored an empty request for task {task_id}"),
        }
    }

    fn start(self: &Arc<Self>, task_id: String, spec: ExecSpec) {
        let mut running = self.running.lock();
        if running.contains_key(&task_id) {
            log::warn!("Task {task_id} is already running; duplicate request ignored");
            return;
        }
        if !self.accepting.load(Ordering::SeqCst) {
            drop(running);
            self.fail(&task_id, "agent shutting down");
            return;
        }
        if running.len() >= self.max_tasks {
            drop(running);
            log::warn!(
                "Refused task {task_id}: {} tasks already running",
                self.max_tasks
            );
            self.fail(&task_id, "agent busy");
            return;
        }
        let me = self.clone();
        let id = task_id.clone();
        // The running-table lock is held across spawn, so the task's exit (which takes the
        // lock) always finds its entry.
        match exec::spawn(&spec, &self.cfg, move |event| me.on_event(&id, event)) {
            Ok(task) => {
                log::info!("Started task {task_id} (pid {})", task.pid());
                running.insert(
                    task_id,
                    Entry {
                        task,
                        cancel_reason: None,
                    },
                );
            }
            Err(e) => {
                drop(running);
                log::warn!("Task {task_id} could not start: {e}");
                self.fail(&task_id, &e.to_string());
            }
        }
    }

    fn cancel(&self, task_id: &str, reason: String) {
        let mut running = self.running.lock();
        match running.get_mut(task_id) {
            Some(entry) => {
                log::info!("Cancelling task {task_id} ({reason})");
                entry.cancel_reason.get_or_insert(reason);
                entry.task.cancel();
            }
            None => {
                drop(running);
                // Unknown or finished: acknowledge, so the server is never left waiting.
                self.outbox
                    .push(self.cancel_ack(task_id, "task is not running"));
            }
        }
    }

    fn on_event(&self, task_id: &str, event: ExecEvent) {
        match event {
            ExecEvent::Output(chunk) => {
                let mut resp = self.response(task_id, task_response::Status::IN_PROGRESS, false);
                let mut out = ShellExecuteResponse::new();
                out.stdout = chunk.stdout;
                out.stderr = chunk.stderr;
                resp.response = Some(task_response::Response::ShellExecute(out));
                self.outbox.push(resp);
            }
            ExecEvent::Exited(exit) => {
                let entry = self.running.lock().remove(task_id);
                let cancel_reason = entry.and_then(|e| e.cancel_reason);
                let resp = match cancel_reason {
                    Some(reason) => {
                        log::info!(
                            "Task {task_id} cancelled ({reason}); process ended with {exit}"
                        );
                        self.cancel_ack(
                            task_id,
                            &format!("cancelled ({reason}); process ended with {exit}"),
                        )
                    }
                    None => {
                        log::info!("Task {task_id} finished with {exit}");
                        let mut resp =
                            self.response(task_id, task_response::Status::COMPLETED, true);
                        let mut out = ShellExecuteResponse::new();
                        out.exit_code = exit.exit_code;
                        if exit.signal.is_some() {
                            out.stderr = format!("nodelink-agent: {exit}\n");
                        }
                        resp.response = Some(task_response::Response::ShellExecute(out));
                        resp
                    }
                };
                self.outbox.push(resp);
                if self.running.lock().is_empty() {
                    self.emptied.notify_all();
                }
            }
        }
    }

    fn fail(&self, task_id: &str, reason: &str) {
        let mut resp = self.response(task_id, task_response::Status::FAILURE, true);
        let mut out = ShellExecuteResponse::new();
        out.stderr = format!("{reason}\n");
        out.exit_code = -1;
        resp.response = Some(task_response::Response::ShellExecute(out));
        self.outbox.push(resp);
    }

    fn cancel_ack(&self, task_id: &str, message: &str) -> TaskResponse {
        let mut resp = self.response(task_id, task_response::Status::COMPLETED, true);
        resp.cancelled = true;
        let mut ack = TaskCancelResponse::new();
        ack.message = message.to_string();
        resp.response = Some(task_response::Response::TaskCancel(ack));
        resp
    }

    fn response(
        &self,
        task_id: &str,
        status: task_response::Status,
        is_final: bool,
    ) -> TaskResponse {
        let mut resp = TaskResponse::new();
        resp.agent_id = self.agent_id.clone();
        resp.task_id = task_id.to_string();
        resp.status = status.into();
        resp.is_final = is_final;
        resp
    }

    /// Stops taking tasks, cancels the running ones and waits (up to `wait`) for them to end.
    pub fn shutdown(&self, wait: Duration) -> usize {
        self.accepting.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + wait;
        let mut running = self.running.lock();
        for (id, entry) in running.iter_mut() {
            log::info!("Cancelling task {id}: agent shutting down");
            entry
                .cancel_reason
                .get_or_insert_with(|| "agent shutting down".into());
            entry.task.cancel();
        }
        while !running.is_empty() {
            if self.emptied.wait_until(&mut running, deadline).timed_out() {
                break;
            }
        }
        running.len()
    }
}
