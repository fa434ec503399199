//! `nodelink-bench`: the load generator of nodelink (as pgbench ships beside PostgreSQL).
//!
//! It speaks only the wire contract, REST and SSE on one side and `pb.AgentService` on the
//! other, so it can drive any compatible server, ours or another implementation, and compare
//! them. Scenarios: `dispatch`, `ingest`, `fanout`, `agents`; `summary` combines the JSON
//! reports of several runs into one table against the targets. docs/PERFORMANCE.md explains
//! every figure. Everything it does is bounded in count and time.

mod agents;
mod http;
mod procfs;
mod report;
mod scenarios;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use agents::Credentials;
use scenarios::dispatch::Completion;
use scenarios::Ctx;

/// Load generator for nodelink and wire-compatible servers.
#[derive(Debug, Parser)]
#[command(name = "nodelink-bench", version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 5s, 1m)"))?;
    if d > Duration::from_secs(3600) {
        return Err("at most 1h".into());
    }
    Ok(d)
}

fn credential(s: &str) -> Result<Credentials, String> {
    let (id, token) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ID=TOKEN"))?;
    if id.is_empty() {
        return Err("empty agent id".into());
    }
    Ok(Credentials {
        id: id.to_string(),
        token: token.to_string(),
    })
}

/// Flags every scenario takes.
#[derive(Debug, Args)]
struct Common {
    /// REST/SSE address of the server.
    #[arg(long, global = true, default_value = "127.0.0.1:8080")]
    http: String,
    /// gRPC address agents connect to.
    #[arg(long, global = true, default_value = "127.0.0.1:9090")]
    grpc: String,
    /// Bearer token for the REST API (none: send no Authorization header).
    #[arg(
        long,
        global = true,
        env = "NODELINK_API_TOKEN",
        hide_env_values = true
    )]
    api_token: Option<String>,
    /// A simulated agent's credentials, ID=TOKEN (repeatable); must be in the server's token file.
    #[arg(long = "agent", global = true, value_parser = credential)]
    agent: Vec<Credentials>,
    /// The server's token file (JSON {"id": "token"}): every agent in it, sorted by id.
    #[arg(long, global = true)]
    agent_tokens: Option<PathBuf>,
    /// The server's pid, for its memory, CPU and threads from /proc (same machine only).
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// How long the measured phase lasts.
    #[arg(long, global = true, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Print one JSON document instead of the table.
    #[arg(long, global = true)]
    json: bool,
    /// Name of this run in reports (default: the scenario's name).
    #[arg(long, global = true, default_value = "")]
    label: String,
    /// Timeout of each HTTP connect, read and write.
    #[arg(long, global = true, default_value = "10s", value_parser = duration)]
    http_timeout: Duration,
    /// Completion-queue threads for the simulated agents' gRPC.
    #[arg(long, global = true, default_value_t = 2)]
    grpc_threads: usize,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create shell tasks from C client threads over M agents; measure throughput and latency.
    Dispatch {
        /// Client threads creating tasks.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
        clients: u32,
        /// Simulated agents (tasks go round-robin).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=20000))]
        agents: u32,
        /// IN_PROGRESS output chunks each agent sends before the final response.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10000))]
        chunks: u32,
        /// Bytes per output chunk.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1048576))]
        chunk_bytes: u32,
        /// How completion is observed: the global event stream, or polling GET /tasks/{id}.
        #[arg(long, value_enum, default_value = "sse")]
        completion: Completion,
        /// Open loop at this many tasks/s (default: closed loop, one task in flight per client).
        #[arg(long)]
        rate: Option<f64>,
        /// Longest wait for one task's completion.
        #[arg(long, default_value = "10s", value_parser = duration)]
        wait: Duration,
    },
    /// Stream output chunks for N open tasks as fast as flow control allows; verify none is lost.
    Ingest {
        /// Open tasks.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100000))]
        tasks: u32,
        /// Simulated agents.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=20000))]
        agents: u32,
        /// Bytes per chunk (newline included).
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(20..=1048576))]
        chunk_bytes: u32,
        /// Most bytes sent per task: at most the server's --max-output-bytes, so nothing is truncated.
        #[arg(long, default_value_t = 1 << 20)]
        retained_bytes: usize,
    },
    /// Hold S global event streams open while tasks run at a fixed rate; measure delivery lag.
    Fanout {
        /// Event-stream clients.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=20000))]
        clients: u32,
        /// Offered task rate, tasks/s.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Simulated agents.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=20000))]
        agents: u32,
        /// Threads creating tasks.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
        creators: u32,
    },
    /// Connect A agents and hold them; report the server's memory and threads.
    Agents {
        /// Simulated agents.
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=20000))]
        agents: u32,
    },
    /// Combine JSON reports (from --json) into one table against the targets.
    Summary {
        /// Exit 1, naming each on stderr, if a measured target was missed (targets that no
        /// report measured do not count).
        #[arg(long)]
        check: bool,
        /// JSON report files.
        files: Vec<PathBuf>,
    },
}

fn load_tokens(path: &PathBuf) -> Result<Vec<Credentials>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{}: expected a JSON object", path.display()))?;
    let mut creds: Vec<Credentials> = obj
        .iter()
        .filter_map(|(id, t)| {
            Some(Credentials {
                id: id.clone(),
                token: t.as_str()?.to_string(),
            })
        })
        .collect();
    creds.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(creds)
}

fn summary(files: &[PathBuf], check: bool) -> Result<ExitCode, String> {
    let mut reports = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        reports.push(v);
    }
    let (table, missed) = report::summary(&reports);
    print!("{table}");
    if check && !missed.is_empty() {
        for m in &missed {
            eprintln!("nodelink-bench: missed target: {m}");
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let c = cli.common;
    let mut agents = c.agent;
    if let Some(path) = &c.agent_tokens {
        agents.extend(load_tokens(path)?);
    }
    let ctx = Ctx {
        http: http::Target {
            addr: c.http,
            token: c.api_token.filter(|t| !t.is_empty()),
            timeout: c.http_timeout,
        },
        grpc: c.grpc,
        agents,
        server_pid: c.server_pid,
        duration: c.duration,
        label: c.label,
        grpc_threads: c.grpc_threads.clamp(1, 16),
    };
    let report = match cli.command {
        Command::Dispatch {
            clients,
            agents,
            chunks,
            chunk_bytes,
            completion,
            rate,
            wait,
        } => {
            if let Some(r) = rate {
                if !(r > 0.0 && r <= 1e6) {
                    return Err("--rate must be in (0, 1000000]".into());
                }
            }
            scenarios::dispatch::run(
                &ctx,
                &scenarios::dispatch::Opts {
                    clients: clients as usize,
                    agents: agents as usize,
                    chunks,
                    chunk_bytes: chunk_bytes as usize,
                    completion,
                    rate,
                    wait,
                    task_timeout_s: 300,
                },
            )?
        }
        Command::Ingest {
            tasks,
            agents,
            chunk_bytes,
            retained_bytes,
        } => scenarios::ingest::run(
            &ctx,
            &scenarios::ingest::Opts {
                tasks: tasks as usize,
                agents: agents as usize,
                chunk_bytes: chunk_bytes as usize,
                retained_bytes,
            },
        )?,
        Command::Fanout {
            clients,
            rate,
            agents,
            creators,
        } => {
            if !(rate > 0.0 && rate <= 1e6) {
                return Err("--rate must be in (0, 1000000]".into());
            }
            scenarios::fanout::run(
                &ctx,
                &scenarios::fanout::Opts {
                    clients: clients as usize,
                    rate,
                    agents: agents as usize,
                    creators: creators as usize,
                },
            )?
        }
        Command::Agents { agents } => scenarios::agents::run(&ctx, agents as usize)?,
        Command::Summary { files, check } => return summary(&files, check),
    };
    if c.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nodelink-bench: {e}");
            ExitCode::from(1)
        }
    }
}
