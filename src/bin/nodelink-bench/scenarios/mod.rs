//! The four scenarios and what they share: the run's settings ([`Ctx`]), creating a shell task
//! through the REST API, waiting for simulated agents to be registered, and the pacing of
//! open-loop runs. Each scenario module runs one workload and returns a [`Report`].

pub mod agents;
pub mod dispatch;
pub mod fanout;
pub mod ingest;

use std::time::{Duration, Instant};

use serde_json::json;

use crate::agents::Credentials;
use crate::http::{Client, HttpError, Target};
use crate::report::Report;

/// Settings every scenario uses.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// The REST API.
    pub http: Target,
    /// The gRPC address agents connect to.
    pub grpc: String,
    /// Credentials of the agents the scenario may simulate, in order.
    pub agents: Vec<Credentials>,
    /// The server's pid, for /proc figures.
    pub server_pid: Option<u32>,
    /// How long the measured phase lasts.
    pub duration: Duration,
    /// The report's name.
    pub label: String,
    /// Completion-queue threads of the simulated agents' gRPC environment.
    pub grpc_threads: usize,
}

impl Ctx {
    /// The first `n` credentials, or an error naming how many are missing.
    pub fn credentials(&self, n: usize) -> Result<&[Credentials], String> {
        if self.agents.len() < n {
            return Err(format!(
                "this run needs {n} agent credentials but {} were given \
                 (--agent ID=TOKEN, repeated, or --agent-tokens FILE)",
                self.agents.len()
            ));
        }
        Ok(&self.agents[..n])
    }

    /// A new report named after this run.
    pub fn report(&self, scenario: &'static str) -> Report {
        let mut r = Report::new(scenario, &self.label);
        r.param("duration_s", self.duration.as_secs_f64());
        r
    }
}

/// Outcome of `POST /tasks/shell`.
pub enum Created {
    /// 2xx with a task id.
    Task(String),
    /// Any other answer: the error kind for the report (status code or `io`).
    Failed(String),
}

/// Creates a shell task running `cmd` on `agent` with a timeout in seconds.
pub fn create_task(client: &mut Client, agent: &str, cmd: &str, timeout_s: u64) -> Created {
    let body = json!({"agent_id": agent, "cmd": cmd, "timeout": timeout_s}).to_string();
    match client.post_json("/tasks/shell", body.as_bytes()) {
        Ok(r) if (200..300).contains(&r.status) => {
            match r
                .json()
                .and_then(|v| v.get("task_id")?.as_str().map(str::to_string))
            {
                Some(id) => Created::Task(id),
                None => Created::Failed("no task_id".into()),
            }
        }
        Ok(r) => Created::Failed(r.status.to_string()),
        Err(e) => Created::Failed(e.kind()),
    }
}

/// The status of a task read with `GET /tasks/{id}`, and the whole answer.
pub fn task_status(client: &mut Client, id: &str) -> Result<(String, serde_json::Value), String> {
    match client.get(&format!("/tasks/{id}")) {
        Ok(r) if r.status == 200 => {
            let v = r.json().ok_or("answer is not JSON")?;
            let status = v
                .get("status")
                .and_then(|s| s.as_str())
                .ok_or("answer has no status")?
                .to_string();
            Ok((status, v))
        }
        Ok(r) => Err(r.status.to_string()),
        Err(e) => Err(e.kind()),
    }
}

/// Final statuses of the wire contract.
pub fn is_final(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "timeout" | "cancelled")
}

/// Waits (at most `limit`) until `GET /agents` lists every id in `ids`. Servers without that
/// endpoint (it is not in the original contract) get a fixed one-second pause instead.
/// Returns how many were seen.
pub fn wait_for_agents(http: &Target, ids: &[String], limit: Duration) -> Result<usize, String> {
    let mut client = Client::new(http.clone());
    let deadline = Instant::now() + limit;
    let mut seen = 0;
    for _ in 0..10_000 {
        match client.get("/agents") {
            Ok(r) if r.status == 200 => {
                let listed: std::collections::HashSet<String> = r
                    .json()
                    .and_then(|v| {
                        v.get("agents")?.as_array().map(|a| {
                            a.iter()
                                .filter_map(|x| x.get("agent_id")?.as_str().map(str::to_string))
                                .collect()
                        })
                    })
                    .unwrap_or_default();
                seen = ids.iter().filter(|id| listed.contains(*id)).count();
                if seen == ids.len() {
                    return Ok(seen);
                }
            }
            Ok(r) if r.status == 401 => {
                return Err("the server refused the API token (401); pass --api-token".into())
            }
            Ok(_) | Err(HttpError::Status(..)) => {
                std::thread::sleep(Duration::from_secs(1));
                return Ok(ids.len());
            }
            Err(e) => return Err(format!("cannot reach {}: {e}", http.addr)),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "only {seen} of {} simulated agents were registered after {}s \
                 (are their ids in the server's token file?)",
                ids.len(),
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(seen)
}

/// Hands out the intended start times of an open-loop run (`rate` per second from `t0`), or
/// "now" for a closed loop; ends at `end`. Shared by every client thread, so a thread that
/// falls behind takes over a slot whose time has passed and the latency counts from the
/// slot's time: a stalled server cannot hide its stall (no coordinated omission).
pub struct Pacer {
    t0: Instant,
    end: Instant,
    rate: Option<f64>,
    next: std::sync::atomic::AtomicU64,
}

impl Pacer {
    /// A pacer from now for `duration`.
    pub fn new(rate: Option<f64>, duration: Duration) -> Self {
        let t0 = Instant::now();
        Pacer {
            t0,
            end: t0 + duration,
            rate: rate.filter(|r| *r > 0.0),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// When the run started.
    pub fn start(&self) -> Instant {
        self.t0
    }

    /// Waits for the next slot and returns its intended time, or `None` when the run is over.
    pub fn next(&self) -> Option<Instant> {
        let Some(rate) = self.rate else {
            let now = Instant::now();
            return (now < self.end).then_some(now);
        };
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let at = self.t0 + Duration::from_secs_f64(i as f64 / rate);
        if at >= self.end {
            return None;
        }
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        Some(at)
    }
}
