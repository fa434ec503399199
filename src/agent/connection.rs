//! The agent's connection to the server: connect, authenticate, serve one stream, and
//! reconnect forever with exponential backoff (1 s doubling to 60 s, ±20 % jitter).
//!
//! Per stream, a reader thread hands requests to the [`Runner`] and this thread writes the
//! outbox to the stream. Tasks keep running while disconnected; their responses wait in the
//! outbox and go out after the next connect. gRPC keepalive pings (10 s, 10 s timeout) make a
//! dead server noticed within about 20 s.
//!
//! The agent announces acknowledgements in its metadata; a server that takes them answers
//! first with a `ResponseAck`, and from then on a written response stays in the outbox until
//! acknowledged (sent again after a reconnect). Any other first message, or none within
//! `hello_wait`, means an original server: each response is written once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use futures::executor::block_on;
use futures::{SinkExt, StreamExt};
use grpcio::{CallOption, ChannelBuilder, Environment, MetadataBuilder, WriteFlags};

use super::outbox::Outbox;
use super::runner::Runner;
use crate::proto::{task_request, AgentServiceClient};

/// Metadata key in which an agent lists the protocol extensions it speaks.
pub const FEATURES_KEY: &str = "agent_features";
/// The extensions this agent speaks: `acks` (numbered responses, kept until acknowledged).
pub const FEATURES: &str = "acks";
/// Metadata key naming this agent process, so the server tells a restarted agent's numbers
/// from a reconnecting one's.
pub const INSTANCE_KEY: &str = "agent_instance";
/// Metadata key listing the tasks this agent still knows (running, or with responses not yet
/// acknowledged), so a restarted server can tell a task that never reached the agent.
pub const TASKS_KEY: &str = "agent_tasks";
/// Longest task list sent; beyond it none is sent (the server then reconciles nothing).
const MAX_TASKS_METADATA: usize = 6000;

/// The comma-separated ids of the tasks this agent knows, if the list fits in metadata.
fn known_tasks(runner: &Runner, outbox: &Outbox) -> Option<String> {
    let mut ids = runner.running_ids();
    ids.extend(outbox.task_ids());
    ids.sort_unstable();
    ids.dedup();
    let list = ids.join(",");
    let plain = list
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b',');
    (list.len() <= MAX_TASKS_METADATA && plain).then_some(list)
}

/// Where and how the agent connects.
#[derive(Clone, Debug)]
pub struct ConnectConfig {
    /// Server gRPC address, `host:port`.
    pub server: String,
    /// Agent id sent as `agent_id` metadata.
    pub agent_id: String,
    /// Token sent as `agent_token` metadata (never logged).
    pub token: String,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Keepalive ping interval.
    pub keepalive: Duration,
    /// Largest message accepted from the server.
    pub max_message_bytes: usize,
    /// TLS to the server; `None` is plaintext.
    pub tls: Option<crate::tls::AgentTls>,
    /// This agent process's name for the server (random per process).
    pub instance: String,
    /// How long to wait for the server's first message before treating it as an original
    /// server that does not acknowledge.
    pub hello_wait: Duration,
}

impl ConnectConfig {
    /// Defaults for everything but the address and credentials.
    pub fn new(server: String, agent_id: String, token: String) -> Self {
        ConnectConfig {
            server,
            agent_id,
            token,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            keepalive: Duration::from_secs(10),
            max_message_bytes: 4 << 20,
            tls: None,
            instance: uuid::Uuid::new_v4().to_string(),
            hello_wait: Duration::from_secs(3),
        }
    }
}

/// The delay before reconnect attempt number `attempt` (0-based), before jitter.
pub fn backoff_delay(cfg: &ConnectConfig, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
    cfg.backoff_initial
        .saturating_mul(factor)
        .min(cfg.backoff_max)
}

fn jitter(d: Duration) -> Duration {
    // ±20 %, from the randomness uuid already gives us.
    let r = (uuid::Uuid::new_v4().as_u128() % 4001) as f64 / 10_000.0; // 0.0..=0.4
    d.mul_f64(0.8 + r)
}

/// Serves streams until `stop`'s sender is dropped; returns after the outbox is flushed or the server is
/// unreachable at stop time.
pub fn run(cfg: &ConnectConfig, runner: Arc<Runner>, outbox: Arc<Outbox>, stop: Receiver<()>) {
    let env = Arc::new(
        grpcio::EnvBuilder::new()
            .cq_count(1)
            .name_prefix("nl-agent-grpc")
            .build(),
    );
    let mut attempt: u32 = 0;
    loop {
        if stop_requested(&stop) && outbox.is_empty() && runner.running() == 0 {
            return;
        }
        let started = Instant::now();
        match serve_stream(cfg, &env, &runner, &outbox, &stop) {
            Ok(StreamEnd::Stopped) => return,
            Ok(StreamEnd::Lost(why)) => {
                if why.contains("UNAUTHENTICATED") {
                    log::error!(
                        "The server at {} refused agent {}'s credentials: check --id and --token",
                        cfg.server,
                        cfg.agent_id
                    );
                } else {
                    log::warn!("Lost the server at {}: {why}", cfg.server);
                }
            }
            Err(why) => log::warn!("Cannot reach the server at {}: {why}", cfg.server),
        }
        // A stream that lived a while was a real connection: start the backoff afresh.
        if started.elapsed() > Duration::from_secs(10) {
            attempt = 0;
        }
        let delay = jitter(backoff_delay(cfg, attempt));
        attempt = attempt.saturating_add(1);
        log::info!(
            "Reconnecting in {:.1}s (attempt {attempt})",
            delay.as_secs_f64()
        );
        if stop.recv_timeout(delay) != Err(crossbeam_channel::RecvTimeoutError::Timeout) {
            // Stopping while disconnected: what is still queued cannot be delivered.
            if !outbox.is_empty() {
                log::warn!("Exiting with {} undelivered response(s)", outbox.len());
            }
            return;
        }
    }
}

enum StreamEnd {
    Stopped,
    Lost(String),
}

/// Stop is signalled by dropping the sender: the state is permanent, so every check sees it.
fn stop_requested(stop: &Receiver<()>) -> bool {
    matches!(
        stop.try_recv(),
        Err(crossbeam_channel::TryRecvError::Disconnected)
    )
}

fn serve_stream(
    cfg: &ConnectConfig,
    env: &Arc<Environment>,
    runner: &Arc<Runner>,
    outbox: &Arc<Outbox>,
    stop: &Receiver<()>,
) -> Result<StreamEnd, String> {
    let mut builder = ChannelBuilder::new(env.clone())
        .keepalive_time(cfg.keepalive)
        .keepalive_timeout(cfg.keepalive)
        .keepalive_permit_without_calls(true)
        // gRPC stops pinging after 2 pings without data unless told otherwise; an idle
        // stream must keep probing so a dead server is noticed.
        .http2_max_pings_without_data(0)
        .max_receive_message_len(cfg.max_message_bytes.min(i32::MAX as usize) as i32);
    if let Some(tls) = &cfg.tls {
        if let Some(name) = &tls.server_name {
            builder = builder.override_ssl_target(name.clone());
        }
        builder = builder.set_credentials(tls.credentials());
    }
    let channel = builder.connect(&cfg.server);
    if !block_on(channel.wait_for_connected(Duration::from_secs(5))) {
        return Err("connection timed out".into());
    }
    let mut meta = MetadataBuilder::new();
    meta.add_str("agent_id", &cfg.agent_id)
        .map_err(|e| e.to_string())?;
    meta.add_str("agent_token", &cfg.token)
        .map_err(|e| e.to_string())?;
    // Compatible extensions: an original server ignores metadata it does not know.
    meta.add_str(FEATURES_KEY, FEATURES)
        .map_err(|e| e.to_string())?;
    meta.add_str(INSTANCE_KEY, &cfg.instance)
        .map_err(|e| e.to_string())?;
    if let Some(tasks) = known_tasks(runner, outbox) {
        if let Err(e) = meta.add_str(TASKS_KEY, &tasks) {
            log::debug!("Task list not sent: {e}");
        }
    }
    let client = AgentServiceClient::new(channel);
    let (mut sink, mut receiver) = client
        .stream_tasks_opt(CallOption::default().headers(meta.build()))
        .map_err(|e| e.to_string())?;
    // The server answers a bad token by ending the stream, so "connected" here means the
    // stream is open; a refusal follows as a lost stream.
    log::info!(
        "Connected to {} as agent {} (stream open)",
        cfg.server,
        cfg.agent_id
    );

    // The reader is detached: when the stream breaks it ends by itself, and a request that
    // still arrives on a dying stream is handled like any other.
    let alive = Arc::new(AtomicBool::new(true));
    let (why_tx, why_rx) = crossbeam_channel::bounded::<String>(1);
    // The server's first message says whether it acknowledges: a `ResponseAck` does; anything
    // else (or silence) means an original server.
    let (mode_tx, mode_rx) = crossbeam_channel::bounded::<bool>(1);
    {
        let alive = alive.clone();
        let runner = runner.clone();
        let outbox = outbox.clone();
        std::thread::Builder::new()
            .name("nl-agent-reader".into())
            .spawn(move || {
                let mut first = true;
                let why = loop {
                    match block_on(receiver.next()) {
                        Some(Ok(mut req)) => {
                            let ack = match req.task.take() {
                                Some(task_request::Task::ResponseAck(a)) => Some(a.upto),
                                other => {
                                    req.task = other;
                                    None
                                }
                            };
                            if first {
                                first = false;
                                let _ = mode_tx.try_send(ack.is_some());
                            }
                            match ack {
                                Some(upto) => outbox.ack(upto),
                                None => runner.handle(req),
                            }
                        }
                        Some(Err(e)) => break e.to_string(),
                        None => break "server closed the stream".to_string(),
                    }
                };
                alive.store(false, Ordering::SeqCst);
                let _ = why_tx.send(why);
            })
            .map_err(|e| e.to_string())?;
    }
    let acking = mode_rx.recv_timeout(cfg.hello_wait).unwrap_or_default();
    let resent = outbox.resend_unacked();
    if acking {
        log::info!(
            "The server acknowledges responses; {resent} unacknowledged response(s) sent again"
        );
    } else {
        log::info!("The server does not acknowledge responses; each is sent once");
    }

    let mut stopping = false;
    let end = loop {
        if !stopping && stop_requested(stop) {
            stopping = true;
        }
        if stopping && outbox.is_empty() && runner.running() == 0 {
            let _ = block_on(sink.close());
            break StreamEnd::Stopped;
        }
        if !alive.load(Ordering::SeqCst) {
            break StreamEnd::Lost(why_rx.try_recv().unwrap_or_else(|_| "stream ended".into()));
        }
        let Some((resp, more)) = outbox.pop(Duration::from_millis(100)) else {
            continue;
        };
        let flags = WriteFlags::default().buffer_hint(more);
        if let Err(e) = block_on(sink.send((resp.clone(), flags))) {
            outbox.push_front(resp);
            break StreamEnd::Lost(e.to_string());
        }
        if acking {
            outbox.hold(resp);
        }
    };
    Ok(end)
}
