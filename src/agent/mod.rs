//! `nodelink agent`: connects to the server, runs the shell and Docker tasks it is sent, and
//! streams their output back. Threads: the connection thread (this module's `run`, which
//! also writes the stream), a reader thread per stream, one executor thread per running task,
//! and a signal thread that turns SIGTERM/SIGINT into an orderly stop.

mod connection;
pub mod exec;
mod outbox;
mod runner;

use std::sync::Arc;
use std::time::Duration;

pub use connection::{backoff_delay, ConnectConfig};
pub use exec::ExecConfig;
pub use outbox::Outbox;
pub use runner::Runner;

/// Everything the agent needs; `nodelink agent` fills it from flags and env vars.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Connection and credentials.
    pub connect: ConnectConfig,
    /// How commands run.
    pub exec: ExecConfig,
    /// Most tasks running at once; more are refused with FAILURE `agent busy`.
    pub max_tasks: usize,
    /// Bytes of responses kept while the server is unreachable.
    pub outbox_bytes: usize,
}

/// A running agent: stop it with [`AgentHandle::stop`] (what SIGTERM does).
pub struct AgentHandle {
    stop: Option<crossbeam_channel::Sender<()>>,
    runner: Arc<Runner>,
    kill_grace: Duration,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AgentHandle {
    /// Starts the agent's connection thread.
    pub fn start(cfg: AgentConfig) -> std::io::Result<Self> {
        let outbox = Arc::new(Outbox::new(cfg.outbox_bytes));
        let runner = Runner::new(
            cfg.connect.agent_id.clone(),
            cfg.exec.clone(),
            cfg.max_tasks,
            outbox.clone(),
        );
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let conn_runner = runner.clone();
        let connect = cfg.connect.clone();
        let thread = std::thread::Builder::new()
            .name("nl-agent".into())
            .spawn(move || connection::run(&connect, conn_runner, outbox, stop_rx))?;
        Ok(AgentHandle {
            stop: Some(stop),
            runner,
            kill_grace: cfg.exec.kill_grace,
            thread: Some(thread),
        })
    }

    /// Stops taking tasks, cancels running ones, reports them, and disconnects.
    pub fn stop(mut self) {
        let left = self
            .runner
            .shutdown(self.kill_grace + Duration::from_secs(2));
        if left > 0 {
            log::warn!("{left} task(s) did not stop in time");
        }
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT; returns the process exit code.
pub fn run_until_signalled(cfg: AgentConfig) -> i32 {
    let signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot install signal handlers: {e}");
            return 1;
        }
    };
    let agent = match AgentHandle::start(cfg) {
        Ok(a) => a,
        Err(e) => {
            log::error!("cannot start the agent: {e}");
            return 1;
        }
    };
    let mut signals = signals;
    if let Some(sig) = signals.forever().next() {
        log::info!("Received signal {sig}; stopping");
    }
    agent.stop();
    0
}
