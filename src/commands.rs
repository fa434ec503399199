//! What each subcommand does once its flags are parsed: build the configuration, start the
//! parts, wait for SIGTERM/SIGINT, and stop in order. Errors are printed once, as one line
//! that says what to do.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nodelink::agent::{self, AgentConfig, AgentHandle, ConnectConfig, ExecConfig};
use nodelink::cli::{AgentArgs, ServerArgs};
use nodelink::link::AgentTokens;
use nodelink::server::{RunningServer, ServerConfig};
use nodelink::store::{Store, StoreConfig};
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
        cache_finished: args.cache_finished,
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
        store: None,
    }
}

/// Opens the durable store the flags ask for: `None` with --in-memory; with --dev and no
/// --data-dir, a fresh temporary directory.
fn open_store(args: &ServerArgs, dev: bool) -> Result<Option<Arc<Store>>, String> {
    if args.in_memory {
        return Ok(None);
    }
    let dir = match (&args.data_dir, dev) {
        (Some(d), _) => d.clone(),
        (None, true) => {
            std::env::temp_dir().join(format!("nodelink-dev-{}", uuid::Uuid::new_v4().simple()))
        }
        (None, false) => PathBuf::from("nodelink-data"),
    };
    let mut cfg = StoreConfig::new(dir);
    cfg.retention = args.retention;
    cfg.retention_tasks = args.retention_tasks;
    cfg.max_data_bytes = args.max_data_bytes;
    cfg.max_output_bytes = args.max_output_bytes;
    Store::open(cfg).map(Some).map_err(|e| e.to_string())
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

/// Reads a token from `path` (what `--api-token-file` and `--token-file` name), so it never
/// appears on a command line, where every user sees it in `ps`. One trailing newline (as
/// `echo` writes) is dropped; an empty token is refused with a one-line error.
fn read_token_file(path: &Path, what: &str) -> Result<String, String> {
    warn_if_readable_by_others(path);
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the {what} file: {e}", path.display()))?;
    let token = text
        .strip_suffix('\n')
        .map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
    if token.is_empty() {
        return Err(format!("{}: the {what} file is empty", path.display()));
    }
    Ok(token.to_owned())
}

/// The token given as a value or read from a file, whichever of the two `flags` (value
/// flag, file flag) was set, on the command line or in the environment; both is an error.
fn token_from(
    value: Option<&str>,
    file: Option<&Path>,
    what: &str,
    flags: [&str; 2],
) -> Result<Option<String>, String> {
    match (value, file) {
        (Some(_), Some(_)) => Err(format!(
            "the {what} is given twice: pass {} or {} (or set one of their environment variables), not both",
            flags[1], flags[0]
        )),
        (None, Some(path)) => read_token_file(path, what).map(Some),
        (Some(v), None) => Ok(Some(v.to_owned()).filter(|t| !t.is_empty())),
        (None, None) => Ok(None),
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
    let api_token = match token_from(
        args.api_token.as_deref(),
        args.api_token_file.as_deref(),
        "API token",
        ["--api-token", "--api-token-file"],
    ) {
        Ok(Some(t)) => t,
        Ok(None) => {
            eprintln!("nodelink: no API token; pass --api-token-file FILE or set NODELINK_API_TOKEN_FILE, or try --dev");
            return 2;
        }
        Err(e) => {
            eprintln!("nodelink: {e}");
            return 2;
        }
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
    cfg.store = match open_store(&args, false) {
        Ok(s) => s,
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
    let store = match open_store(&args, true) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nodelink: {e}");
            return 2;
        }
    };
    // Without --data-dir, dev mode's history is scratch: removed when it stops.
    let scratch = store
        .as_ref()
        .filter(|_| args.data_dir.is_none())
        .and_then(|s| s.path().parent().map(Path::to_path_buf));
    let history = match (&store, &scratch) {
        (None, _) => "History is kept in memory only.".to_string(),
        (Some(s), Some(_)) => format!(
            "History is kept in {} until dev mode stops (pass --data-dir DIR to keep it).",
            s.path().display()
        ),
        (Some(s), None) => format!("History is kept in {}.", s.path().display()),
    };
    let api_token = uuid::Uuid::new_v4().simple().to_string();
    let agent_token = uuid::Uuid::new_v4().simple().to_string();
    let mut cfg = server_config(&args);
    cfg.store = store;
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
    let files = match DevFiles::write(&api_token) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("nodelink: cannot write the dev-mode token files: {e}");
            agent.stop();
            server.shutdown();
            return 1;
        }
    };
    let http = format!("{scheme}://{}", server.http_addr());
    let (token_file, header) = (files.token.display(), files.header.display());
    println!(
        "\nnodelink dev mode: server on {http}, gRPC on 127.0.0.1:{grpc}, local agent `local`.\n\
         {history}\n\
         API token: {api_token}\n\
         Kept, readable only by you, in {token_file} (for --api-token-file) and as a curl header in {header}.\n\n\
         Create a task (stores its id in $TASK):\n\n  \
         TASK=$(curl -s -X POST {http}/tasks/shell -H @{header} -H 'Content-Type: application/json' -d '{{\"agent_id\":\"local\",\"cmd\":\"echo hello from nodelink; uname -a\"}}' | sed -E 's/.*\"task_id\":\"([^\"]+)\".*/\\1/'); echo $TASK\n\n\
         Stream its events, then read it back:\n\n  \
         curl -N -H @{header} \"{http}/stream?ref=$TASK\"; curl -s -H @{header} {http}/tasks/$TASK\n\n\
         Ctrl-C stops.\n",
        grpc = server.grpc_port(),
    );
    wait_for_signal();
    agent.stop();
    server.shutdown();
    drop(files);
    if let Some(dir) = scratch {
        let _ = std::fs::remove_dir_all(dir);
    }
    0
}

/// Dev mode's API token in files only its user can read, so the printed commands keep it
/// off their command lines; removed when dev mode stops.
struct DevFiles {
    dir: PathBuf,
    /// The bare token, as `--api-token-file` reads it.
    token: PathBuf,
    /// `Authorization: Bearer TOKEN`, as `curl -H @FILE` reads it.
    header: PathBuf,
}

impl DevFiles {
    fn write(api_token: &str) -> std::io::Result<DevFiles> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir =
            std::env::temp_dir().join(format!("nodelink-dev-{}", uuid::Uuid::new_v4().simple()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let files = DevFiles {
            token: dir.join("api-token"),
            header: dir.join("auth-header"),
            dir,
        };
        let write = |path: &Path, text: String| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
        };
        write(&files.token, format!("{api_token}\n"))?;
        write(
            &files.header,
            format!("Authorization: Bearer {api_token}\n"),
        )?;
        Ok(files)
    }
}

impl Drop for DevFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
    let token = match token_from(
        args.token.as_deref(),
        args.token_file.as_deref(),
        "agent token",
        ["--token", "--token-file"],
    ) {
        Ok(Some(t)) => t,
        Ok(None) => {
            eprintln!(
                "nodelink: no agent token; pass --token-file FILE or set NODELINK_AGENT_TOKEN_FILE"
            );
            return 2;
        }
        Err(e) => {
            eprintln!("nodelink: {e}");
            return 2;
        }
    };
    let mut connect = ConnectConfig::new(args.server.clone(), args.id.clone(), token);
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
