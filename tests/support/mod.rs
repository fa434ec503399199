//! The one harness every integration test uses: real `nodelink` server and agent processes
//! on ephemeral 127.0.0.1 ports, a tiny HTTP/1.1 client, and an SSE reader. Every wait is
//! bounded, and dropping a handle kills its process, so no test can hang or leak.
#![allow(dead_code, unused_imports)]

pub mod fake_agent;
pub mod http;
pub mod proxy;
pub mod tasks;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use http::{Client, Response, SseStream};

/// The API token test servers use.
pub const API_TOKEN: &str = "test-api-token";

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory under the system temp dir.
    pub fn new(tag: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("nodelink-{tag}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process whose stderr is collected; killed on drop.
pub struct Proc {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn nodelink");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().expect("log lock");
                l.push_str(&line);
                l.push('\n');
            }
        });
        Proc { child, log }
    }

    /// What the process has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let l = self.log();
            if l.contains(needle) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?} in log:\n{l}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit, up to `limit`; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of the built `nodelink` binary.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_nodelink")
}

/// A running server process and what it needs to be talked to.
pub struct Server {
    pub proc: Proc,
    pub http: String,
    pub grpc: String,
    pub dir: TempDir,
}

/// How to start a test server.
pub struct ServerOpts {
    pub agents: Vec<(String, String)>,
    pub extra: Vec<String>,
    pub http_addr: String,
    pub grpc_addr: String,
    /// Limit on the server's open file descriptors (RLIMIT_NOFILE), for fault tests.
    pub nofile: Option<u64>,
    /// Pass `API_TOKEN` in a file (`--api-token-file`) instead of on the command line.
    pub api_token_file: bool,
    /// The data directory; `None`: a fresh one inside the server's scratch directory
    /// (ignored when `extra` asks for `--in-memory`).
    pub data_dir: Option<PathBuf>,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            agents: vec![("a1".into(), "t1".into()), ("a2".into(), "t2".into())],
            extra: vec![],
            http_addr: "127.0.0.1:0".into(),
            grpc_addr: "127.0.0.1:0".into(),
            nofile: None,
            api_token_file: false,
            data_dir: None,
        }
    }
}

impl Server {
    /// A server with agents a1/t1 and a2/t2.
    pub fn start() -> Server {
        Server::start_with(ServerOpts::default())
    }

    /// A server with the given options; waits until both listeners are up.
    pub fn start_with(opts: ServerOpts) -> Server {
        let dir = TempDir::new("server");
        let tokens: serde_json::Map<String, Value> = opts
            .agents
            .iter()
            .map(|(a, t)| (a.clone(), Value::String(t.clone())))
            .collect();
        let file = dir.join("agents.json");
        std::fs::write(&file, Value::Object(tokens).to_string()).expect("token file");
        set_private(&file);
        let mut cmd = Command::new(binary());
        cmd.args([
            "server",
            "--http-addr",
            &opts.http_addr,
            "--grpc-addr",
            &opts.grpc_addr,
        ])
        .arg("--agent-tokens")
        .arg(&file);
        if opts.api_token_file {
            let token_file = dir.join("api-token");
            std::fs::write(&token_file, format!("{API_TOKEN}\n")).expect("API token file");
            set_private(&token_file);
            cmd.arg("--api-token-file").arg(&token_file);
        } else {
            cmd.args(["--api-token", API_TOKEN]);
        }
        if !opts.extra.iter().any(|a| a == "--in-memory") {
            let data = opts.data_dir.clone().unwrap_or_else(|| dir.join("data"));
            cmd.arg("--data-dir").arg(data);
        }
        cmd.args(&opts.extra).env("RUST_LOG", "info");
        if let Some(n) = opts.nofile {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let proc = Proc::spawn(cmd);
        let log = proc.wait_log("nodelink listening", Duration::from_secs(30));
        let line = log
            .lines()
            .find(|l| l.contains("nodelink listening"))
            .expect("listening line");
        // "HTTP on ADDR," or "HTTP (TLS) on ADDR,": the first " on " is the HTTP side's.
        let http = between(line, " on ", ",").to_string();
        let grpc = line
            .rsplit(" on ")
            .next()
            .expect("grpc addr")
            .trim()
            .to_string();
        Server {
            proc,
            http,
            grpc,
            dir,
        }
    }

    /// An HTTP client with the right token.
    pub fn client(&self) -> Client {
        Client::new(&self.http, Some(API_TOKEN))
    }

    /// Starts agent `id` with `token` and waits until the server lists it.
    pub fn agent(&self, id: &str, token: &str) -> Proc {
        self.agent_with(id, token, &[])
    }

    /// Like [`Server::agent`], with extra flags.
    pub fn agent_with(&self, id: &str, token: &str, extra: &[&str]) -> Proc {
        let p = start_agent(&self.grpc, id, token, extra);
        self.wait_agent(id, true);
        p
    }

    /// Waits until `GET /agents` does (or does not) list `id`.
    pub fn wait_agent(&self, id: &str, present: bool) {
        let c = self.client();
        wait_until(
            &format!("agent {id} present={present}"),
            Duration::from_secs(20),
            || {
                let r = c.get("/agents");
                let listed = r.json()["agents"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["agent_id"] == id));
                listed == present
            },
        );
    }
}

/// Starts `nodelink agent` against `grpc`.
pub fn start_agent(grpc: &str, id: &str, token: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(binary());
    cmd.args(["agent", "--server", grpc, "--id", id, "--token", token])
        .args(extra)
        .env("RUST_LOG", "info");
    Proc::spawn(cmd)
}

/// Starts `nodelink agent` against `grpc`, reading its token from `token_file`.
pub fn start_agent_with_token_file(grpc: &str, id: &str, token_file: &Path) -> Proc {
    let mut cmd = Command::new(binary());
    cmd.args(["agent", "--server", grpc, "--id", id, "--token-file"])
        .arg(token_file)
        .env("RUST_LOG", "info");
    Proc::spawn(cmd)
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let from = s
        .find(start)
        .map(|i| i + start.len())
        .expect("start marker");
    let rest = &s[from..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}

/// Polls `cond` until true, failing the test after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Creates a shell task and returns its id.
pub fn create_shell(c: &Client, agent: &str, cmd: &str) -> String {
    let r = c.post(
        "/tasks/shell",
        &serde_json::json!({"agent_id": agent, "cmd": cmd}).to_string(),
    );
    assert_eq!(r.status, 200, "create failed: {}", r.body);
    r.json()["task_id"].as_str().expect("task_id").to_string()
}

/// Waits until the task is final and returns its JSON.
pub fn wait_final(c: &Client, id: &str, limit: Duration) -> Value {
    let mut last = Value::Null;
    let deadline = Instant::now() + limit;
    loop {
        let r = c.get(&format!("/tasks/{id}"));
        if r.status == 200 {
            last = r.json();
            if matches!(
                last["status"].as_str(),
                Some("completed" | "failed" | "timeout" | "cancelled")
            ) {
                return last;
            }
        }
        assert!(
            Instant::now() < deadline,
            "task {id} not final in time; last seen: {last}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A loopback address with a port that was free a moment ago (for restarting a server on
/// the same address).
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// The value of one series (`name{labels}`) in a `/metrics` scrape; 0 when absent.
pub fn metric(c: &Client, series: &str) -> f64 {
    let r = c.get("/metrics");
    assert_eq!(r.status, 200, "metrics: {}", r.body);
    r.body
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The `nodelink_limit_hits_total` series of one limit.
pub fn limit_hits(c: &Client, limit: &str) -> f64 {
    metric(
        c,
        &format!("nodelink_limit_hits_total{{limit=\"{limit}\"}}"),
    )
}
