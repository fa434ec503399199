//! Command-line interface: flags, their env vars and defaults, turned into the typed
//! configurations of the server and the agent. clap gives `--help`, env fallbacks and precise
//! errors for free.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// nodelink: send shell and Docker tasks to remote agents and stream their results back.
#[derive(Debug, Parser)]
#[command(name = "nodelink", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: the REST/SSE API for clients and the gRPC endpoint for agents.
    Server(Box<ServerArgs>),
    /// Run an agent that connects to a server and executes its tasks.
    Agent(Box<AgentArgs>),
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 5s, 30m)"))
}

/// Flags of `nodelink server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address of the REST/SSE API.
    #[arg(long, env = "NODELINK_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Address agents connect to over gRPC.
    #[arg(long, env = "NODELINK_GRPC_ADDR", default_value = "127.0.0.1:9090")]
    pub grpc_addr: SocketAddr,
    /// JSON file mapping agent id to token, e.g. {"agent1": "secret_token1"}.
    #[arg(long, env = "NODELINK_AGENT_TOKENS")]
    pub agent_tokens: Option<PathBuf>,
    /// Bearer token REST clients must send (Authorization: Bearer TOKEN); visible to other
    /// users in `ps`, so prefer --api-token-file.
    #[arg(long, env = "NODELINK_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// File holding the bearer token REST clients must send (one trailing newline ignored);
    /// replaces --api-token.
    #[arg(long, env = "NODELINK_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Zero-configuration mode: generated credentials and a local agent named `local`.
    #[arg(long, env = "NODELINK_DEV")]
    pub dev: bool,
    /// Threads serving HTTP requests.
    #[arg(long, env = "NODELINK_HTTP_WORKERS", default_value_t = 8)]
    pub http_workers: usize,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "NODELINK_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Longest HTTP request line (method, path and query, version), in bytes.
    #[arg(long, env = "NODELINK_MAX_REQUEST_LINE_BYTES", default_value_t = 8 << 10)]
    pub max_request_line_bytes: usize,
    /// Largest HTTP header section (all header lines together), in bytes.
    #[arg(long, env = "NODELINK_MAX_HEADER_BYTES", default_value_t = 16 << 10)]
    pub max_header_bytes: usize,
    /// Most HTTP connections open at once (each holds a thread); keep it above --max-sse-clients.
    #[arg(long, env = "NODELINK_MAX_CONNECTIONS", default_value_t = 2048)]
    pub max_connections: usize,
    /// Certificate chain (PEM) for HTTPS on the REST/SSE side; needs --http-tls-key.
    #[arg(long, env = "NODELINK_HTTP_TLS_CERT", requires = "http_tls_key")]
    pub http_tls_cert: Option<PathBuf>,
    /// Private key (PEM) for HTTPS on the REST/SSE side; needs --http-tls-cert.
    #[arg(long, env = "NODELINK_HTTP_TLS_KEY", requires = "http_tls_cert")]
    pub http_tls_key: Option<PathBuf>,
    /// How long a client may take to send a request or accept a response.
    #[arg(long, env = "NODELINK_HTTP_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub http_timeout: Duration,
    /// Most concurrent Server-Sent Events clients.
    #[arg(long, env = "NODELINK_MAX_SSE_CLIENTS", default_value_t = 1024)]
    pub max_sse_clients: usize,
    /// Capacity of the channel between the agent link and the response thread.
    #[arg(long, env = "NODELINK_RESPONSE_CHANNEL", default_value_t = 100)]
    pub response_channel: usize,
    /// Most tasks held in the registry (oldest finished are evicted first).
    #[arg(long, env = "NODELINK_MAX_TASKS", default_value_t = 100_000)]
    pub max_tasks: usize,
    /// Bytes of stdout and of stderr kept per task.
    #[arg(long, env = "NODELINK_MAX_OUTPUT_BYTES", default_value_t = 1 << 20)]
    pub max_output_bytes: usize,
    /// Bytes of output kept by all tasks together; beyond it the oldest output goes first
    /// (finished tasks', then running tasks'), and those tasks are marked truncated.
    #[arg(long, env = "NODELINK_MAX_OUTPUT_TOTAL_BYTES", default_value_t = 256 << 20)]
    pub max_output_total_bytes: usize,
    /// Events queued for each event listener (the SSE hub) before it counts as behind and
    /// loses events (global streams are then told with a `gap` event).
    #[arg(long, env = "NODELINK_LISTENER_QUEUE", default_value_t = 65_536)]
    pub listener_queue: usize,
    /// Deprecated and ignored (accepted so existing command lines keep working): a finished
    /// task leaves its agent's routing at once.
    #[arg(long, env = "NODELINK_CLEANUP_DELAY", value_parser = duration)]
    pub cleanup_delay: Option<Duration>,
    /// How long finished tasks stay queryable.
    #[arg(long, env = "NODELINK_CLEANUP_AGE", default_value = "30m", value_parser = duration)]
    pub cleanup_age: Duration,
    /// How often old finished tasks are swept.
    #[arg(long, env = "NODELINK_CLEANUP_INTERVAL", default_value = "5m", value_parser = duration)]
    pub cleanup_interval: Duration,
    /// How long a disconnected agent may take to come back before its tasks fail.
    #[arg(long, env = "NODELINK_DISCONNECT_GRACE", default_value = "15s", value_parser = duration)]
    pub disconnect_grace: Duration,
    /// Largest gRPC message accepted from an agent, in bytes.
    #[arg(long, env = "NODELINK_MAX_GRPC_MESSAGE_BYTES", default_value_t = 4 << 20)]
    pub max_grpc_message_bytes: usize,
    /// Most agents connected at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "NODELINK_MAX_AGENTS", default_value_t = 10_000)]
    pub max_agents: usize,
    /// Certificate chain (PEM) for TLS on the agent link; needs --tls-key.
    #[arg(long, env = "NODELINK_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for TLS on the agent link; needs --tls-cert.
    #[arg(long, env = "NODELINK_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that must have signed agents' certificates: mutual TLS; needs --tls-cert.
    #[arg(long, env = "NODELINK_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Directory of the durable store (created with mode 0700; one server per directory).
    /// Default: ./nodelink-data, or a fresh temporary directory with --dev.
    #[arg(long, env = "NODELINK_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep history in memory only: nothing survives a restart.
    #[arg(long, env = "NODELINK_IN_MEMORY", conflicts_with = "data_dir")]
    pub in_memory: bool,
    /// Finished tasks older than this are deleted from the store (e.g. 30d, 12h).
    #[arg(long, env = "NODELINK_RETENTION", default_value = "30d", value_parser = duration)]
    pub retention: Duration,
    /// At most this many tasks are kept in the store; the oldest finished go first.
    #[arg(long, env = "NODELINK_RETENTION_TASKS", default_value_t = 1_000_000)]
    pub retention_tasks: u64,
    /// The database never grows past this many bytes; beyond it new tasks are refused (503)
    /// until retention frees room. Default: as the disk allows.
    #[arg(long, env = "NODELINK_MAX_DATA_BYTES")]
    pub max_data_bytes: Option<u64>,
    /// Finished tasks kept in memory with their output, besides the store.
    #[arg(long, env = "NODELINK_CACHE_FINISHED", default_value_t = 1000)]
    pub cache_finished: usize,
}

/// Flags of `nodelink agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Server gRPC address, host:port.
    #[arg(long, env = "NODELINK_SERVER", default_value = "127.0.0.1:9090")]
    pub server: String,
    /// This agent's id (must be in the server's token file).
    #[arg(long, env = "NODELINK_AGENT_ID")]
    pub id: String,
    /// This agent's token; visible to other users in `ps`, so prefer --token-file.
    #[arg(long, env = "NODELINK_AGENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding this agent's token (one trailing newline ignored); replaces --token.
    #[arg(long, env = "NODELINK_AGENT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Shell that runs commands (default: bash where present, else /bin/sh).
    #[arg(long, env = "NODELINK_SHELL")]
    pub shell: Option<PathBuf>,
    /// Docker CLI to run Docker operations with.
    #[arg(long, env = "NODELINK_DOCKER_BIN", default_value = "docker")]
    pub docker_bin: PathBuf,
    /// Most tasks running at once; more are refused with `agent busy`.
    #[arg(long, env = "NODELINK_AGENT_MAX_TASKS", default_value_t = 64)]
    pub max_tasks: usize,
    /// Time between SIGTERM and SIGKILL when a task is cancelled.
    #[arg(long, env = "NODELINK_KILL_GRACE", default_value = "5s", value_parser = duration)]
    pub kill_grace: Duration,
    /// Bytes of responses kept while the server is unreachable.
    #[arg(long, env = "NODELINK_OUTBOX_BYTES", default_value_t = 4 << 20)]
    pub outbox_bytes: usize,
    /// Longest reconnect delay.
    #[arg(long, env = "NODELINK_BACKOFF_MAX", default_value = "60s", value_parser = duration)]
    pub backoff_max: Duration,
    /// CA (PEM) that signed the server's certificate: connect with TLS.
    #[arg(long, env = "NODELINK_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This agent's certificate (PEM), for servers that require mutual TLS; needs --tls-key.
    #[arg(long, env = "NODELINK_AGENT_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// This agent's private key (PEM); needs --tls-cert.
    #[arg(long, env = "NODELINK_AGENT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Name expected in the server's certificate, when it differs from the --server host.
    #[arg(long, env = "NODELINK_TLS_SERVER_NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}
