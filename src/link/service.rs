//! The gRPC side of the agent link: `pb.AgentService/StreamTasks`.
//!
//! Each call authenticates from its `agent_id`/`agent_token` metadata (UNAUTHENTICATED
//! otherwise), registers a session in the [`AgentDirectory`], and spawns two futures on the
//! grpcio completion-queue threads: a writer that drains the session's request queue into the
//! stream, and a reader that turns each response into an [`AgentReport`] for the response
//! channel. While that channel is full the reader awaits room (`ReportSink::send_async`)
//! without blocking its completion-queue thread: only its own stream stops being read, so a
//! flooding agent is held back by HTTP/2 flow control instead of losing data, and the other
//! agents on the same thread, their dispatches and cancels, go on.
//!
//! Limits: an agent beyond `--max-agents` is refused with RESOURCE_EXHAUSTED before any
//! session exists, and counted in [`LimitHits`]. A message larger than
//! `--max-grpc-message-bytes` is refused by gRPC's core (`max_receive_message_len`), which
//! fails the agent's call with RESOURCE_EXHAUSTED; the reader here only sees its stream end,
//! as when an agent closes it, so that hit cannot be counted (see `crate::limits`).

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use grpcio::{DuplexSink, RequestStream, RpcContext, RpcStatus, RpcStatusCode, WriteFlags};

use super::auth::AgentTokens;
use super::convert::{ack_request, report_from_response};
use super::directory::AgentDirectory;
use crate::limits::{Limit, LimitHits};
use crate::proto::{AgentService, TaskRequest, TaskResponse};
use crate::tasks::TaskManager;

/// The `AgentService` implementation, cloned by grpcio once per completion queue.
#[derive(Clone)]
pub struct AgentLink {
    tokens: Arc<AgentTokens>,
    directory: Arc<AgentDirectory>,
    manager: TaskManager,
    hits: Arc<LimitHits>,
}

impl AgentLink {
    /// A link that admits the agents in `tokens`, feeds `manager` and counts limit hits.
    pub fn new(
        tokens: Arc<AgentTokens>,
        directory: Arc<AgentDirectory>,
        manager: TaskManager,
        hits: Arc<LimitHits>,
    ) -> Self {
        AgentLink {
            tokens,
            directory,
            manager,
            hits,
        }
    }

    /// The agent process, if the agent announced acknowledgements (`agent_features: acks`
    /// and an `agent_instance`); an original agent sends neither.
    fn acking_instance(ctx: &RpcContext) -> Option<Arc<str>> {
        let mut acks = false;
        let mut instance = None;
        for (key, value) in ctx.request_headers().iter() {
            match key {
                "agent_features" => {
                    acks = std::str::from_utf8(value)
                        .is_ok_and(|v| v.split(',').any(|f| f.trim() == "acks"));
                }
                "agent_instance" => {
                    instance = std::str::from_utf8(value)
                        .ok()
                        .filter(|v| !v.is_empty() && v.len() <= 64)
                        .map(Arc::from);
                }
                _ => {}
            }
        }
        instance.filter(|_| acks)
    }

    /// The tasks an agent that takes acknowledgements says it still knows, if it sent the list.
    fn known_tasks(ctx: &RpcContext) -> Option<Vec<String>> {
        ctx.request_headers().iter().find_map(|(key, value)| {
            (key == "agent_tasks").then(|| {
                std::str::from_utf8(value)
                    .unwrap_or_default()
                    .split(',')
                    .filter(|id| !id.is_empty())
                    .take(1024)
                    .map(str::to_string)
                    .collect()
            })
        })
    }

    fn authenticate(&self, ctx: &RpcContext) -> Result<Arc<str>, &'static str> {
        let mut agent_id = None;
        let mut token = None;
        for (key, value) in ctx.request_headers().iter() {
            match key {
                "agent_id" => agent_id = std::str::from_utf8(value).ok(),
                "agent_token" => token = std::str::from_utf8(value).ok(),
                _ => {}
            }
        }
        let (Some(agent_id), Some(token)) = (agent_id, token) else {
            return Err("missing agent_id or agent_token metadata");
        };
        if agent_id.is_empty() || !self.tokens.check(agent_id, token) {
            return Err("invalid agent credentials");
        }
        Ok(Arc::from(agent_id))
    }
}

impl AgentService for AgentLink {
    fn stream_tasks(
        &mut self,
        ctx: RpcContext,
        stream: RequestStream<TaskResponse>,
        mut sink: DuplexSink<TaskRequest>,
    ) {
        let peer = ctx.peer();
        let agent_id = match self.authenticate(&ctx) {
            Ok(id) => id,
            Err(why) => {
                log::warn!("Refused agent stream from {peer}: {why}");
                let status =
                    RpcStatus::with_message(RpcStatusCode::UNAUTHENTICATED, why.to_string());
                ctx.spawn(async move {
                    let _ = sink.fail(status).await;
                });
                return;
            }
        };
        let acking = Self::acking_instance(&ctx);
        let reg =
            match self
                .directory
                .register_acking(agent_id.clone(), peer.clone(), acking.clone())
            {
                Ok(reg) => reg,
                Err(full) => {
                    self.hits.hit(Limit::Agents);
                    log::warn!("Refused agent {agent_id} from {peer}: {full}");
                    let status = RpcStatus::with_message(
                        RpcStatusCode::RESOURCE_EXHAUSTED,
                        full.to_string(),
                    );
                    ctx.spawn(async move {
                        let _ = sink.fail(status).await;
                    });
                    return;
                }
            };
        if acking.is_some() {
            if let Some(known) = Self::known_tasks(&ctx) {
                let known: Vec<&str> = known.iter().map(String::as_str).collect();
                self.manager.reconcile_reloaded(&agent_id, &known);
            }
        }
        if reg.replaced {
            log::info!("Agent {agent_id} connected from {peer}, replacing its previous stream");
        } else {
            log::info!("Agent {agent_id} connected from {peer}");
        }

        // An agent that takes acknowledgements first learns which of its responses are
        // durable already; it sends the others again.
        let hello = acking.as_ref().map(|instance| {
            let upto = self.manager.acknowledged_seq(&agent_id, instance);
            (ack_request(&agent_id, upto), WriteFlags::default())
        });
        let mut requests = futures::stream::iter(hello.map(Ok))
            .chain(reg.requests.map(|r| Ok((r, WriteFlags::default()))));
        let writer_agent = agent_id.clone();
        // Requests queued together leave in one write; `send_all` flushes whenever the queue
        // runs dry, so a lone request is never held back.
        sink.enhance_batch(true);
        ctx.spawn(async move {
            if let Err(e) = sink.send_all(&mut requests).await {
                log::debug!("Agent {writer_agent}: stream write ended: {e}");
                return;
            }
            let _ = sink.close().await;
        });

        let reports = self.manager.report_sink();
        let directory = self.directory.clone();
        let manager = self.manager.clone();
        let session_id = reg.session_id;
        ctx.spawn(async move {
            let mut stream = stream;
            let ending = loop {
                match stream.next().await {
                    Some(Ok(resp)) => {
                        let report = report_from_response(&agent_id, acking.as_ref(), resp);
                        if reports.send_async(report).await.is_err() {
                            break "server shutting down".to_string();
                        }
                    }
                    Some(Err(e)) => break format!("stream error: {e}"),
                    None => break "stream closed".to_string(),
                }
            };
            if let Some(generation) = directory.unregister(&agent_id, session_id) {
                log::info!("Agent {agent_id} disconnected ({ending})");
                manager.agent_disconnected(&agent_id, generation);
            } else {
                log::debug!("Agent {agent_id}: replaced session {session_id} ended ({ending})");
            }
        });
    }
}
