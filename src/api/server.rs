//! The running HTTP side of the server: the state every handler shares and the worker pool
//! that serves it. Needs the agent link (`link`), so it exists only with the `grpc` feature.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::http::{HttpConfig, HttpServer, Router};
use crate::limits::LimitHits;
use crate::link::{AgentDirectory, AgentTokens};
use crate::metrics::Metrics;
use crate::server::ServerConfig;
use crate::sse::SseHub;
use crate::tasks::TaskManager;

use super::{handlers, json, Route, ROUTES};

/// What every handler needs, shared read-only by the workers.
pub struct ApiState {
    /// The task manager.
    pub manager: TaskManager,
    /// Connected agents.
    pub directory: Arc<AgentDirectory>,
    /// Agents allowed to connect (to tell an unknown agent from an offline one).
    pub agent_tokens: Arc<AgentTokens>,
    /// Event fan-out to SSE clients.
    pub hub: Arc<SseHub>,
    /// The bearer token clients must present; `None` leaves the API open.
    pub api_token: Option<String>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Route table.
    pub router: Router<Route>,
    /// Request counts and latencies, and the exposition of everything else.
    pub metrics: Arc<Metrics>,
    /// Whether both listeners are up and the server is not stopping.
    pub ready: AtomicBool,
    /// Limit hits the handlers count (body size, registry, SSE clients).
    pub hits: Arc<LimitHits>,
    /// Durable history, whose health `/readyz` reports.
    pub store: Option<Arc<crate::store::Store>>,
}

impl ApiState {
    /// What `GET /readyz` reports.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// The running HTTP side.
pub struct ApiServer {
    http: HttpServer,
    hub: Arc<SseHub>,
    state: Arc<ApiState>,
}

/// Frames (event batches) buffered per SSE client before it counts as too slow: with many
/// clients, about five seconds of events (see `SseHub::batch_interval`).
const SSE_CLIENT_QUEUE: usize = 1024;
/// Recent events kept for clients of the global stream that resume.
const GLOBAL_WINDOW: usize = 10_000;

impl ApiServer {
    /// Binds the HTTP address and starts the workers and the SSE hub listener; limit hits
    /// are counted in `hits` (and tiny_http's own counters, which `/metrics` also reads).
    pub fn start(
        cfg: &ServerConfig,
        manager: TaskManager,
        directory: Arc<AgentDirectory>,
        hits: Arc<LimitHits>,
    ) -> std::io::Result<Self> {
        let hub = SseHub::new(
            cfg.max_sse_clients,
            SSE_CLIENT_QUEUE,
            GLOBAL_WINDOW,
            json::event_sse,
        );
        let (listener_hub, interval_hub) = (hub.clone(), hub.clone());
        manager.add_coalescing_listener(
            "sse",
            Box::new(move || interval_hub.batch_interval()),
            Box::new(move |d| listener_hub.deliver(d)),
        )?;
        let router = Router::new(ROUTES).map_err(std::io::Error::other)?;
        let edge = Arc::new(tiny_http::ServerCounters::default());
        let metrics = Metrics::new(
            manager.clone(),
            directory.clone(),
            hub.clone(),
            hits.clone(),
            edge.clone(),
            cfg.store.clone(),
        );
        let state = Arc::new(ApiState {
            manager,
            directory,
            metrics,
            ready: AtomicBool::new(false),
            agent_tokens: Arc::new(cfg.agent_tokens.clone()),
            hub: hub.clone(),
            api_token: cfg.api_token.clone(),
            max_body_bytes: cfg.max_body_bytes,
            router,
            hits,
            store: cfg.store.clone(),
        });
        let http_cfg = HttpConfig {
            addr: cfg.http_addr.to_string(),
            workers: cfg.http_workers,
            thread_name: "nl-http".into(),
            read_timeout: Some(cfg.http_timeout),
            write_timeout: Some(cfg.http_timeout),
            limits: tiny_http::Limits {
                max_request_line_bytes: cfg.max_request_line_bytes,
                max_header_bytes: cfg.max_header_bytes,
                max_connections: cfg.max_connections,
            },
            tls: cfg.http_tls.clone(),
        };
        let worker_state = state.clone();
        let http = HttpServer::start(
            &http_cfg,
            Arc::new(move |req| handlers::handle(&worker_state, req)),
            edge,
        )?;
        Ok(ApiServer { http, hub, state })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// Says whether `GET /readyz` answers ready.
    pub fn set_ready(&self, ready: bool) {
        self.state.ready.store(ready, Ordering::SeqCst);
    }

    /// Stops accepting requests and ends every event stream with a `shutdown` event.
    pub fn stop(&mut self) {
        self.set_ready(false);
        self.hub.shutdown();
        self.http.stop();
    }
}
