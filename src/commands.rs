//! What each subcommand does once its flags are parsed: build the configuration, start the
//! parts, wait for SIGTERM/SIGINT, and stop in order. Errors are printed once, as one line
//! that says what to do.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nodelink::agent::{self, AgentConfig, AgentHandle, ConnectConfig, ExecConfig};
use nodelink::cli::{AgentArgs, ServerArgs};
use nodelink::link::AgentTokens;
use nodelink::server::{RunningServer, ServerConfig};
use nodelink::tasks::ManagerConfig;
use nodelink::tls::{load_pem, AgentTls, HttpTls, ServerTls, TlsError};

fn server_config(args: &ServerArgs) -> ServerConfig {
    if args.cleanup_delay.is_some() {
        log::warn!("--cleanup-delay is deprecated and ignored: a finished task leaves its agent's routing at once");
    }
    let manager = ManagerConfig {
        response_channel_capacity: args.response_channel,
        cleanup_age: args.cleanup_age,
        cleanup_interval: args.cleanup_interval,
        disconnect_grace: args.disconnect_grace,
        max_tasks: args.max_tasks,
        max_output_bytes: args.max_output_bytes,
        max_output_total_bytes: args.max_output_total_bytes,
        listener_queue: args.listener_queue.max(1),
        ..ManagerConfig::default()
    };
    ServerConfig {
        http_addr: args.http_addr,
        grpc_addr: args.grpc_addr,
        api_token: args.api_token.clone(),
        agent_tokens: AgentTokens::default(),
        manager,
        http_workers: args.http_workers.max(1),
        max_body_bytes: args.max_body_bytes,
        max_request_line_bytes: args.max_request_line_bytes,
        max_header_bytes: args.max_header_bytes,
        max_connections: args.max_connections.max(1),
        http_tls: None,
        http_timeout: args.http_timeout,
        max_sse_clients: args.max_sse_clients,
        max_grpc_message_bytes: args.max_grpc_message_bytes,
        max_agents: args.max_agents,
        tls: None,
    }
}

/// Reads the agent link's TLS files named on the command line, if any.
fn server_tls(args: &ServerArgs) -> Result<Option<ServerTls>, TlsError> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    warn_if_readable_by_others(key);
    Ok(Some(ServerTls {
        cert: load_pem(cert, "certificate")?,
        key: load_pem(key, "private key")?,
        client_ca: args
            .tls_client_ca
            .as_deref()
            .map(|p| load_pem(p, "client CA"))
            .transpose()?,
    }))
}

/// Reads and checks the HTTPS files named on the command line, if any.
fn http_tls(args: &ServerArgs) -> Result<Option<HttpTls>, TlsError> {
    let (Some(cert), Some(key)) = (&args.http_tls_cert, &args.http_tls_key) else {
        return Ok(None);
    };
    warn_if_readable_by_others(key);
    HttpTls::load(cert, key).map(Some)
}

fn agent_tls(args: &AgentArgs) -> Result<Option<AgentTls>, TlsError> {
    let Some(ca) = &args.tls_ca else {
        return Ok(None);
    };
    let identity = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            warn_if_readable_by_others(key);
            Some((
                load_pem(cert, "certificate")?,
                load_pem(key, "private key")?,
            ))
        }
        _ => None,
    };
    Ok(Some(AgentTls {
        ca: load_pem(ca, "CA")?,
        identity,
        server_name: args.tls_server_name.clone(),
    }))
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "{} is readable by other users; run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
}

fn wait_for_signal() {
    match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(mut signals) => {
            if let Some(sig) = signals.forever().next() {
                log::info!("Received signal {sig}; shutting down");
            }
        }
        Err(e) => log::error!("cannot install signal handlers ({e}); stopping"),
    }
}

/// `nodelink server`.
pub fn server(args: ServerArgs) -> u8 {
    let Some(tokens_path) = args.agent_tokens.clone() else {
        eprintln!("nodelink: no agent tokens; pass --agent-tokens FILE (JSON {{\"agent1\": \"secret\"}}) or set NODELINK_AGENT_TOKENS, or try --dev");
        return 2;
    };
    let Some(api_token) = args.api_token.clone().filter(|t| !t.is_empty()) else {
        eprintln!("nodelink: no API token; pass --api-token TOKEN or set NODELINK_API_TOKEN, or try --dev");
        return 2;
    };
    warn_if_readable_by_others(&tokens_path);
    let agent_tokens = match AgentTokens::load(&tokens_path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("nodelink: {}: {e}", tokens_path.display());
            return 2;
        }
    };
    let mut cfg = server_config(&args);
    cfg.agent_tokens = agent_tokens;
    cfg.api_token = Some(api_token);
    cfg.tls = match server_tls(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("nodelink: {e}");
            return 2;
        }
    };
    cfg.http_tls = match http_tls(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("nodelink: {e}");
            return 2;
        }
    };
    let server = match RunningServer::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nodelink: {e}");
            return 1;
        }
    };
    wait_for_signal();
    server.shutdown();
    0
}

/// `nodelink server --dev`: a server and a local agent with generated credentials.
pub fn dev(args: ServerArgs) -> u8 {
    let api_token = uuid::Uuid::new_v4().simple().to_string();
    let agent_token = uuid::Uuid::new_v4().simple().to_string();
    let mut cfg = server_config(&args);
    cfg.api_token = Some(api_token.clone());
    cfg.agent_tokens =
        AgentTokens::from_map(HashMap::from([("local".to_string(), agent_token.clone())]));
    cfg.http_tls = match http_tls(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("nodelink: {e}");
            return 2;
        }
    };
    let scheme = if cfg.http_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let server = match RunningServer::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nodelink: {e}");
            return 1;
        }
    };
    let connect = ConnectConfig::new(
        format!("127.0.0.1:{}", server.grpc_port()),
        "local".into(),
        agent_token,
    );
    let agent = match AgentHandle::start(AgentConfig {
        connect,
        exec: ExecConfig::default(),
        max_tasks: 64,
        outbox_bytes: 4 << 20,
    }) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("nodelink: cannot start the local agent: {e}");
            server.shutdown();
            return 1;
        }
    };
    let http = format!("{scheme}://{}", server.http_addr());
    println!(
        "\nnodelink dev mode: server on {http}, gRPC on 127.0.0.1:{grpc}, local agent `local`.\n\
         API token: {api_token}\n\n\
         Create a task (stores its id in $TASK):\n\n  \
         TASK=$(curl -s -X POST {http}/tasks/shell -H 'Authorization: Bearer {api_token}' -H 'Content-Type: application/json' -d '{{\"agent_id\":\"local\",\"cmd\":\"echo hello from nodelink; uname -a\"}}' | sed -E 's/.*\"task_id\":\"([^\"]+)\".*/\\1/'); echo $TASK\n\n\
         Stream its events, then read it back:\n\n  \
         curl -N -H 'Authorization: Bearer {api_token}' \"{http}/stream?ref=$TASK\"; curl -s -H 'Authorization: Bearer {api_token}' {http}/tasks/$TASK\n\n\
         Ctrl-C stops.\n",
        grpc = server.grpc_port(),
    );
    wait_for_signal();
    agent.stop();
    server.shutdown();
    0
}

/// `nodelink agent`.
pub fn agent(args: AgentArgs) -> u8 {
    let mut exec = ExecConfig {
        docker_bin: args.docker_bin.clone(),
        kill_grace: args.kill_grace,
        ..ExecConfig::default()
    };
    if let Some(shell) = &args.shell {
        exec.shell = shell.clone();
    }
    let mut connect = ConnectConfig::new(args.server.clone(), args.id.clone(), args.token.clone());
    connect.backoff_max = args.backoff_max;
    connect.tls = match agent_tls(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("nodelink: {e}");
            return 2;
        }
    };
    let cfg = AgentConfig {
        connect,
        exec,
        max_tasks: args.max_tasks.max(1),
        outbox_bytes: args.outbox_bytes,
    };
    agent::run_until_signalled(cfg) as u8
}
