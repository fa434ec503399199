//! Simulated agents: grpcio clients of `pb.AgentService/StreamTasks` that speak only the wire
//! contract (`nodelink::proto`, whose generated messages are the contract) and answer like
//! real agents: IN_PROGRESS output chunks with `is_final=false`, then one `COMPLETED`,
//! `is_final=true` response with exit code 0; a `task_cancel` gets `COMPLETED, is_final,
//! cancelled` with a `task_cancel` acknowledgement.
//!
//! Each agent has its own channel and so its own TCP connection (a local subchannel pool;
//! gRPC would otherwise multiplex every agent over one connection), like real agents on
//! separate hosts. No thread per agent: each agent's work is a future spawned on grpcio's
//! completion-queue threads (`grpcio::Client::spawn`), which the load generator shares.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use futures::executor::block_on;
use futures::future::{select, Either};
use futures::{SinkExt, StreamExt};
use grpcio::{
    CallOption, ChannelBuilder, Client, ClientDuplexReceiver, ClientDuplexSender, EnvBuilder,
    Environment, MetadataBuilder, WriteFlags,
};
use nodelink::proto::{
    task_request, task_response, ShellExecuteResponse, TaskCancelResponse, TaskRequest,
    TaskResponse, METHOD_AGENT_SERVICE_STREAM_TASKS,
};
use parking_lot::Mutex;

/// An agent id and its token, as in the server's token file.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// Agent id (`agent_id` metadata).
    pub id: String,
    /// Token (`agent_token` metadata).
    pub token: String,
}

/// Counters shared by every agent of a pool.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Task requests received (run and cancel).
    pub requests: AtomicU64,
    /// Responses written to the server.
    pub responses: AtomicU64,
    /// Output chunks written (IN_PROGRESS responses).
    pub chunks: AtomicU64,
    /// Streams that ended with an error (refused credentials, server gone).
    pub stream_errors: AtomicU64,
    /// Streams whose future is still running.
    pub live: AtomicUsize,
    /// The last stream error, for the report.
    pub last_error: Mutex<Option<String>>,
}

impl AgentStats {
    fn fail(&self, why: String) {
        self.stream_errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(why);
    }
}

struct Agent {
    id: Arc<str>,
    client: Client,
    sink: Option<ClientDuplexSender<TaskResponse>>,
    receiver: Option<ClientDuplexReceiver<TaskRequest>>,
    /// Dropping it ends the agent's reading future, which cancels the call.
    stop: Option<oneshot::Sender<()>>,
    stopped: Option<oneshot::Receiver<()>>,
}

/// A set of connected simulated agents; dropping it cancels their streams.
pub struct AgentPool {
    agents: Vec<Agent>,
    /// Counters of every agent.
    pub stats: Arc<AgentStats>,
    /// Sinks of agents that finished streaming, kept open until the pool is dropped.
    parked: Arc<Mutex<Vec<ClientDuplexSender<TaskResponse>>>>,
    _env: Arc<Environment>,
}

impl Drop for AgentPool {
    fn drop(&mut self) {
        for a in &mut self.agents {
            a.stop.take();
        }
        self.parked.lock().clear();
    }
}

type Request = Option<grpcio::Result<TaskRequest>>;

/// The next request, or `None` when the stream ended or the pool is being dropped.
async fn next_request(
    receiver: &mut ClientDuplexReceiver<TaskRequest>,
    stopped: &mut oneshot::Receiver<()>,
) -> Request {
    match select(receiver.next(), stopped).await {
        Either::Left((item, _)) => item,
        Either::Right(_) => None,
    }
}

/// How long one agent may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn connect_one(env: &Arc<Environment>, grpc: &str, c: &Credentials) -> Result<Agent, String> {
    let channel = ChannelBuilder::new(env.clone())
        .use_local_subchannel_pool(true)
        .max_receive_message_len(16 << 20)
        .connect(grpc);
    if !block_on(channel.wait_for_connected(CONNECT_TIMEOUT)) {
        return Err(format!("agent {}: cannot connect to {grpc}", c.id));
    }
    let mut meta = MetadataBuilder::new();
    meta.add_str("agent_id", &c.id)
        .and_then(|m| m.add_str("agent_token", &c.token))
        .map_err(|e| format!("agent {}: metadata: {e}", c.id))?;
    let client = Client::new(channel);
    let (sink, receiver) = client
        .duplex_streaming(
            &METHOD_AGENT_SERVICE_STREAM_TASKS,
            CallOption::default().headers(meta.build()),
        )
        .map_err(|e| format!("agent {}: StreamTasks: {e}", c.id))?;
    let (stop, stopped) = oneshot::channel();
    Ok(Agent {
        id: Arc::from(c.id.as_str()),
        client,
        sink: Some(sink),
        receiver: Some(receiver),
        stop: Some(stop),
        stopped: Some(stopped),
    })
}

impl AgentPool {
    /// Connects one agent per credential, `threads` at a time, on an environment with `cqs`
    /// completion-queue threads. Fails on the first agent that cannot connect.
    pub fn connect(
        grpc: &str,
        creds: &[Credentials],
        cqs: usize,
        threads: usize,
    ) -> Result<AgentPool, String> {
        let env = Arc::new(
            EnvBuilder::new()
                .cq_count(cqs.max(1))
                .name_prefix("bench-grpc")
                .build(),
        );
        let threads = threads.clamp(1, 64);
        let per = creds.len().div_ceil(threads).max(1);
        let results: Vec<Result<Vec<Agent>, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = creds
                .chunks(per)
                .map(|part| {
                    let env = &env;
                    s.spawn(move || part.iter().map(|c| connect_one(env, grpc, c)).collect())
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a connecting thread panicked".into()))
                })
                .collect()
        });
        let mut agents = Vec::with_capacity(creds.len());
        for r in results {
            agents.extend(r?);
        }
        Ok(AgentPool {
            agents,
            stats: Arc::new(AgentStats::default()),
            parked: Arc::new(Mutex::new(Vec::new())),
            _env: env,
        })
    }

    /// Number of agents.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// The agents' ids, in order.
    pub fn ids(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.id.to_string()).collect()
    }

    /// Every agent answers each task at once: `chunks` IN_PROGRESS responses of
    /// `chunk_bytes` bytes of stdout, then the final response.
    pub fn answer(&mut self, chunks: u32, chunk_bytes: usize) {
        let payload: Arc<str> = Arc::from(filler(chunk_bytes).as_str());
        for a in &mut self.agents {
            let (Some(mut sink), Some(mut receiver), Some(mut stopped)) =
                (a.sink.take(), a.receiver.take(), a.stopped.take())
            else {
                continue;
            };
            let stats = self.stats.clone();
            let id = a.id.clone();
            let payload = payload.clone();
            stats.live.fetch_add(1, Ordering::Relaxed);
            a.client.spawn(async move {
                let why = loop {
                    let req = match next_request(&mut receiver, &mut stopped).await {
                        Some(Ok(r)) => r,
                        Some(Err(e)) => break Some(e.to_string()),
                        None => break None,
                    };
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                    let answers = answers_to(&id, req, chunks, &payload);
                    let n = answers.len();
                    let mut failed = None;
                    for (i, resp) in answers.into_iter().enumerate() {
                        let last = i + 1 == n;
                        let flags = WriteFlags::default().buffer_hint(!last);
                        let r = if last {
                            sink.send((resp, flags)).await
                        } else {
                            sink.feed((resp, flags)).await
                        };
                        if let Err(e) = r {
                            failed = Some(e.to_string());
                            break;
                        }
                        stats.responses.fetch_add(1, Ordering::Relaxed);
                    }
                    if failed.is_some() {
                        break failed;
                    }
                    if n > 1 {
                        stats.chunks.fetch_add((n - 1) as u64, Ordering::Relaxed);
                    }
                };
                if let Some(why) = why {
                    stats.fail(why);
                }
                stats.live.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    /// Every agent keeps its stream open and reads (and ignores) what arrives.
    pub fn hold(&mut self) {
        self.read_requests(|| |_: TaskRequest| {});
    }

    /// Every agent records the ids of the shell tasks it receives (and nothing else), for
    /// [`AgentPool::stream`]. Returns the per-agent inboxes, in agent order.
    pub fn collect(&mut self) -> Vec<Arc<Mutex<Vec<String>>>> {
        let mut inboxes = Vec::with_capacity(self.agents.len());
        self.read_requests(|| {
            let inbox = Arc::new(Mutex::new(Vec::new()));
            inboxes.push(inbox.clone());
            move |req: TaskRequest| {
                if matches!(req.task, Some(task_request::Task::ShellExecute(_))) {
                    inbox.lock().push(req.task_id);
                }
            }
        });
        inboxes
    }

    /// Reads every agent's requests on the gRPC threads until its stream ends, counting
    /// them and handing each to the agent's own handler; `handler` makes one per agent, in
    /// agent order.
    fn read_requests<H>(&mut self, mut handler: impl FnMut() -> H)
    where
        H: FnMut(TaskRequest) + Send + 'static,
    {
        for a in &mut self.agents {
            let mut on_request = handler();
            let (Some(mut receiver), Some(mut stopped)) = (a.receiver.take(), a.stopped.take())
            else {
                continue;
            };
            let stats = self.stats.clone();
            stats.live.fetch_add(1, Ordering::Relaxed);
            a.client.spawn(async move {
                loop {
                    match next_request(&mut receiver, &mut stopped).await {
                        Some(Ok(req)) => {
                            stats.requests.fetch_add(1, Ordering::Relaxed);
                            on_request(req);
                        }
                        Some(Err(e)) => {
                            stats.fail(e.to_string());
                            break;
                        }
                        None => break,
                    }
                }
                stats.live.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    /// Streams output for each agent's `tasks[i]` as fast as flow control allows, round-robin
    /// over its tasks, until `stop` is set or every task has `budget` chunks; then sends each
    /// task's final response. `chunk(task, seq)` makes chunk `seq` of a task. Returns, per
    /// task id, the shared count of chunks sent; `done` counts agents that finished.
    pub fn stream(
        &mut self,
        tasks: Vec<Vec<(String, usize)>>,
        budget: u64,
        chunk: fn(usize, u64, usize) -> String,
        chunk_bytes: usize,
        stop: Arc<AtomicBool>,
        done: Arc<AtomicUsize>,
    ) -> HashMap<String, Arc<AtomicU64>> {
        let mut sent_by_task = HashMap::new();
        for (a, tasks) in self.agents.iter_mut().zip(tasks) {
            let Some(mut sink) = a.sink.take() else {
                done.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let tasks: Vec<(String, usize, Arc<AtomicU64>)> = tasks
                .into_iter()
                .map(|(id, index)| {
                    let c = Arc::new(AtomicU64::new(0));
                    sent_by_task.insert(id.clone(), c.clone());
                    (id, index, c)
                })
                .collect();
            let stats = self.stats.clone();
            let agent = a.id.clone();
            let stop = stop.clone();
            let done = done.clone();
            let parked = self.parked.clone();
            a.client.spawn(async move {
                let mut n: u64 = 0;
                let mut failed = None;
                'outer: loop {
                    let mut any = false;
                    for (task_id, index, sent) in &tasks {
                        if stop.load(Ordering::Relaxed) {
                            break 'outer;
                        }
                        let seq = sent.load(Ordering::Relaxed);
                        if seq >= budget {
                            continue;
                        }
                        any = true;
                        let text = chunk(*index, seq, chunk_bytes);
                        let resp = output(&agent, task_id, text);
                        // Flush every 32 messages; buffer the rest so gRPC can batch them.
                        n += 1;
                        let flags = WriteFlags::default().buffer_hint(!n.is_multiple_of(32));
                        if let Err(e) = sink.feed((resp, flags)).await {
                            failed = Some(e.to_string());
                            break 'outer;
                        }
                        sent.store(seq + 1, Ordering::Relaxed);
                        stats.chunks.fetch_add(1, Ordering::Relaxed);
                        stats.responses.fetch_add(1, Ordering::Relaxed);
                    }
                    if !any {
                        break;
                    }
                }
                if failed.is_none() {
                    for (task_id, _, _) in &tasks {
                        let resp = completed(&agent, task_id);
                        if let Err(e) = sink.send((resp, WriteFlags::default())).await {
                            failed = Some(e.to_string());
                            break;
                        }
                        stats.responses.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Some(why) = failed {
                    stats.fail(why);
                }
                done.fetch_add(1, Ordering::Relaxed);
                // Keep the stream open until the pool is dropped: closing it now would end
                // the agent's session while the report is still being verified.
                parked.lock().push(sink);
            });
        }
        sent_by_task
    }
}

/// `n` bytes of printable text ending in a newline (the output a simulated command prints).
pub fn filler(n: usize) -> String {
    let mut s: String = (0..n.saturating_sub(1))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    if n > 0 {
        s.push('\n');
    }
    s
}

fn output(agent: &str, task_id: &str, stdout: String) -> TaskResponse {
    let mut r = TaskResponse::new();
    r.agent_id = agent.to_string();
    r.task_id = task_id.to_string();
    r.status = task_response::Status::IN_PROGRESS.into();
    r.is_final = false;
    let mut out = ShellExecuteResponse::new();
    out.stdout = stdout;
    r.response = Some(task_response::Response::ShellExecute(out));
    r
}

fn completed(agent: &str, task_id: &str) -> TaskResponse {
    let mut r = TaskResponse::new();
    r.agent_id = agent.to_string();
    r.task_id = task_id.to_string();
    r.status = task_response::Status::COMPLETED.into();
    r.is_final = true;
    let mut out = ShellExecuteResponse::new();
    out.exit_code = 0;
    r.response = Some(task_response::Response::ShellExecute(out));
    r
}

/// What a real agent would answer to `req`, at once.
fn answers_to(agent: &str, req: TaskRequest, chunks: u32, payload: &str) -> Vec<TaskResponse> {
    match req.task {
        Some(task_request::Task::ShellExecute(_))
        | Some(task_request::Task::DockerOperation(_)) => {
            let mut v: Vec<TaskResponse> = (0..chunks)
                .map(|_| output(agent, &req.task_id, payload.to_string()))
                .collect();
            v.push(completed(agent, &req.task_id));
            v
        }
        Some(task_request::Task::TaskCancel(_)) => {
            let mut r = TaskResponse::new();
            r.agent_id = agent.to_string();
            r.task_id = req.task_id;
            r.status = task_response::Status::COMPLETED.into();
            r.is_final = true;
            r.cancelled = true;
            let mut ack = TaskCancelResponse::new();
            ack.message = "cancelled".into();
            r.response = Some(task_response::Response::TaskCancel(ack));
            vec![r]
        }
        // Log messages, and request kinds added to the protocol later, need no answer.
        _ => Vec::new(),
    }
}
