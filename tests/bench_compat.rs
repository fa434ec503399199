//! `nodelink-bench dispatch --completion poll` drives a server that offers only the original
//! contract: no API token, no global event stream, no agent list (issue 6, acceptance 2).
//!
//! Such a server is played by a real nodelink behind a strict HTTP proxy: the proxy answers
//! 404 to anything outside the original REST endpoints, rejects any `Authorization` header
//! (the bench must send none when given no token), and adds nodelink's own token to what it
//! forwards. The bench's simulated agents talk to nodelink's gRPC port directly.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use support::{Server, ServerOpts, API_TOKEN};

/// Requests the proxy refused, as "METHOD path (why)".
type Violations = Arc<Mutex<Vec<String>>>;

/// Whether `method path` is one of the original contract's REST endpoints.
fn original_endpoint(method: &str, path: &str) -> bool {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("POST", ["tasks", "shell" | "docker"]) => true,
        ("GET", ["tasks"]) => true,
        ("GET" | "DELETE", ["tasks", _]) => true,
        ("GET", ["agents", _, "tasks"]) => true,
        // Only one task's stream; the global stream is an extension.
        ("GET", ["stream"]) => query.split('&').any(|kv| kv.starts_with("ref=")),
        _ => false,
    }
}

/// Reads one HTTP/1.1 message head (start line and headers); `None` at end of stream.
fn read_head(r: &mut impl BufRead) -> Option<(String, Vec<(String, String)>)> {
    let mut start = String::new();
    if r.read_line(&mut start).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Some((start.trim_end().to_string(), headers))
}

fn body_len(headers: &[(String, String)]) -> usize {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Serves one client connection: checks each request, forwards the allowed ones.
fn serve(client: TcpStream, upstream_addr: String, violations: Violations) {
    let mut reader = BufReader::new(client.try_clone().expect("clone client"));
    let mut writer = client;
    let upstream = TcpStream::connect(&upstream_addr).expect("connect upstream");
    let mut up_reader = BufReader::new(upstream.try_clone().expect("clone upstream"));
    let mut up_writer = upstream;
    while let Some((start, headers)) = read_head(&mut reader) {
        let mut body = vec![0; body_len(&headers)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut words = start.split(' ');
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let why = if headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            Some("sent an Authorization header")
        } else if !original_endpoint(method, path) {
            Some("not an original endpoint")
        } else {
            None
        };
        if let Some(why) = why {
            violations
                .lock()
                .expect("violations lock")
                .push(format!("{method} {path} ({why})"));
            let _ = writer.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        }
        let mut out = format!("{start}\r\nAuthorization: Bearer {API_TOKEN}\r\n");
        for (k, v) in &headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut request = out.into_bytes();
        request.extend_from_slice(&body);
        if up_writer.write_all(&request).is_err() {
            return;
        }
        let Some((status, up_headers)) = read_head(&mut up_reader) else {
            return;
        };
        assert!(
            !up_headers.iter().any(|(k, v)| {
                k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")
            }),
            "the proxy only relays sized bodies ({method} {path})"
        );
        let mut up_body = vec![0; body_len(&up_headers)];
        if up_reader.read_exact(&mut up_body).is_err() {
            return;
        }
        let mut response = format!("{status}\r\n");
        for (k, v) in &up_headers {
            response.push_str(&format!("{k}: {v}\r\n"));
        }
        response.push_str("\r\n");
        let mut response = response.into_bytes();
        response.extend_from_slice(&up_body);
        if writer.write_all(&response).is_err() {
            return;
        }
    }
}

/// Starts the strict proxy in front of `upstream`; returns its address.
fn start_proxy(upstream: &str, violations: Violations) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr").to_string();
    let upstream = upstream.to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let (upstream, violations) = (upstream.clone(), violations.clone());
            std::thread::spawn(move || serve(client, upstream, violations));
        }
    });
    addr
}

#[test]
fn poll_mode_needs_only_the_original_endpoints_and_no_token() {
    let agents = [("bench-a", "token-a"), ("bench-b", "token-b")];
    let server = Server::start_with(ServerOpts {
        agents: agents
            .iter()
            .map(|(id, t)| (id.to_string(), t.to_string()))
            .collect(),
        ..ServerOpts::default()
    });
    let violations = Violations::default();
    let proxy = start_proxy(&server.http, violations.clone());

    let mut bench = Command::new(env!("CARGO_BIN_EXE_nodelink-bench"));
    bench
        .args(["--http", &proxy, "--grpc", &server.grpc])
        .args(["--duration", "2s", "--json"])
        .env_remove("NODELINK_API_TOKEN");
    for (id, token) in agents {
        bench.args(["--agent", &format!("{id}={token}")]);
    }
    bench.args([
        "dispatch",
        "--completion",
        "poll",
        "--clients",
        "4",
        "--agents",
        "2",
    ]);
    let out = bench.output().expect("nodelink-bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nodelink-bench failed:\n{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("a JSON report ({e}):\n{stderr}"));
    let figures = &report["figures"];
    let completed = figures["completed"].as_f64().unwrap_or(0.0);
    assert!(completed > 0.0, "tasks completed: {report}");
    assert_eq!(figures["incomplete"].as_f64(), Some(0.0), "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    let refused = violations.lock().expect("violations lock").clone();
    // The bench may look for /agents once to wait for its agents, and falls back to a pause
    // when it is missing; nothing else outside the original contract is allowed.
    let unexpected: Vec<_> = refused
        .iter()
        .filter(|v| !v.starts_with("GET /agents (not an original endpoint)"))
        .collect();
    assert!(unexpected.is_empty(), "refused requests: {unexpected:?}");
    assert!(
        server.proc.log().contains("Created task"),
        "the tasks reached nodelink through the proxy"
    );
}
