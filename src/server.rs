//! Assembles a running server from its parts: the task manager, the agent directory and gRPC
//! service, and the HTTP API; and takes it apart again in order on shutdown.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use grpcio::{ChannelBuilder, EnvBuilder, ServerBuilder, ServerCredentials};

use crate::limits::LimitHits;
use crate::link::{AgentDirectory, AgentLink, AgentTokens};
use crate::proto::create_agent_service;
use crate::store::Store;
use crate::tasks::{Journal, ManagerConfig, TaskManager};

/// Everything a server needs, with defaults in one place.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// REST/SSE listen address (port 0: any free port).
    pub http_addr: SocketAddr,
    /// gRPC listen address (port 0: any free port).
    pub grpc_addr: SocketAddr,
    /// The bearer token REST clients must present; `None` disables REST authentication.
    pub api_token: Option<String>,
    /// Agents allowed to connect.
    pub agent_tokens: AgentTokens,
    /// Task manager tuning.
    pub manager: ManagerConfig,
    /// HTTP worker threads.
    pub http_workers: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Longest HTTP request line (414 beyond).
    pub max_request_line_bytes: usize,
    /// Largest HTTP header section (431 beyond).
    pub max_header_bytes: usize,
    /// Most HTTP connections open at once (503 beyond).
    pub max_connections: usize,
    /// HTTPS on the REST/SSE side; `None` is plain HTTP.
    pub http_tls: Option<crate::tls::HttpTls>,
    /// Socket read/write timeout for HTTP clients.
    pub http_timeout: Duration,
    /// Most concurrent SSE clients.
    pub max_sse_clients: usize,
    /// Largest gRPC message from an agent.
    pub max_grpc_message_bytes: usize,
    /// Most agents connected at once.
    pub max_agents: usize,
    /// TLS (and optionally mutual TLS) on the agent link; `None` is plaintext.
    pub tls: Option<crate::tls::ServerTls>,
    /// Durable history, opened by the caller (its errors are start-up errors of their own);
    /// `None` keeps history in memory only.
    pub store: Option<Arc<Store>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
            api_token: None,
            agent_tokens: AgentTokens::default(),
            manager: ManagerConfig::default(),
            http_workers: 8,
            max_body_bytes: 1 << 20,
            max_request_line_bytes: 8 << 10,
            max_header_bytes: 16 << 10,
            max_connections: 2048,
            http_tls: None,
            http_timeout: Duration::from_secs(30),
            max_sse_clients: 1024,
            max_grpc_message_bytes: 4 << 20,
            max_agents: 10_000,
            tls: None,
            store: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug)]
pub enum ServerError {
    /// A thread could not be started.
    Thread(std::io::Error),
    /// The gRPC listener could not be set up.
    Grpc(String),
    /// The HTTP listener could not be set up.
    Http(String),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Thread(e) => write!(f, "cannot start a thread: {e}"),
            ServerError::Grpc(m) => write!(f, "cannot serve gRPC: {m}"),
            ServerError::Http(m) => write!(f, "cannot serve HTTP: {m}"),
        }
    }
}

impl std::error::Error for ServerError {}

/// A started server; [`RunningServer::shutdown`] stops it.
pub struct RunningServer {
    manager: TaskManager,
    directory: Arc<AgentDirectory>,
    grpc: grpcio::Server,
    grpc_port: u16,
    http: crate::api::ApiServer,
}

impl RunningServer {
    /// Starts every thread and both listeners.
    pub fn start(cfg: ServerConfig) -> Result<Self, ServerError> {
        let directory = Arc::new(AgentDirectory::new(cfg.max_agents));
        let hits = Arc::new(LimitHits::default());
        let manager = match &cfg.store {
            Some(store) => {
                let journal: Arc<dyn Journal> = store.clone();
                TaskManager::start_durable(cfg.manager.clone(), directory.clone(), journal)
            }
            None => TaskManager::start(cfg.manager.clone(), directory.clone()),
        }
        .map_err(ServerError::Thread)?;
        let env = Arc::new(EnvBuilder::new().cq_count(2).name_prefix("nl-grpc").build());
        let link = AgentLink::new(
            Arc::new(cfg.agent_tokens.clone()),
            directory.clone(),
            manager.clone(),
            hits.clone(),
        );
        let max_msg = cfg.max_grpc_message_bytes.min(i32::MAX as usize) as i32;
        let args = ChannelBuilder::new(env.clone())
            .max_receive_message_len(max_msg)
            // Agents ping every 10 s to notice a dead server; allow it even on idle streams.
            .http2_min_recv_ping_interval_without_data(Duration::from_secs(5))
            .keepalive_permit_without_calls(true)
            .keepalive_time(Duration::from_secs(20))
            .keepalive_timeout(Duration::from_secs(10))
            .build_args();
        let mut grpc = ServerBuilder::new(env)
            .channel_args(args)
            .register_service(create_agent_service(link))
            .build()
            .map_err(|e| ServerError::Grpc(e.to_string()))?;
        let creds = cfg
            .tls
            .as_ref()
            .map_or_else(ServerCredentials::insecure, |t| t.credentials());
        let grpc_port = grpc
            .add_listening_port(cfg.grpc_addr.to_string(), creds)
            .map_err(|e| ServerError::Grpc(format!("{e} ({})", cfg.grpc_addr)))?;
        grpc.start();
        let http = crate::api::ApiServer::start(&cfg, manager.clone(), directory.clone(), hits)
            .map_err(|e| ServerError::Http(e.to_string()))?;
        let security = match &cfg.tls {
            None => "plaintext",
            Some(t) if t.client_ca.is_some() => "mutual TLS",
            Some(_) => "TLS",
        };
        if cfg.max_connections <= cfg.max_sse_clients {
            log::warn!(
                "--max-connections ({}) is not above --max-sse-clients ({}): open event streams can take every connection",
                cfg.max_connections,
                cfg.max_sse_clients
            );
        }
        let http_scheme = if cfg.http_tls.is_some() {
            "HTTP (TLS)"
        } else {
            "HTTP"
        };
        log::info!(
            "nodelink listening: {http_scheme} on {}, gRPC ({security}) on {}:{}",
            http.addr(),
            cfg.grpc_addr.ip(),
            grpc_port
        );
        http.set_ready(true);
        Ok(RunningServer {
            manager,
            directory,
            grpc,
            grpc_port,
            http,
        })
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.addr()
    }

    /// The bound gRPC port.
    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    /// The task manager (for embedding and tests).
    pub fn manager(&self) -> &TaskManager {
        &self.manager
    }

    /// Stops accepting, ends streams, drains the response channel and joins every thread.
    pub fn shutdown(mut self) {
        self.http.stop();
        self.directory.close_all();
        let stopped = self.grpc.shutdown();
        // Agents' half of the streams may stay open; end them so shutdown never waits on a peer.
        self.grpc.cancel_all_calls();
        let _ = futures::executor::block_on(stopped);
        self.manager.shutdown();
        log::info!("nodelink stopped");
    }
}
