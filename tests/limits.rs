//! Issue 7: every limit on what a peer controls, hit by a real client or agent against a real
//! server: the answer is a clear error, the server keeps serving everyone else, and the hit is
//! counted in `nodelink_limit_hits_total{limit=...}`.

mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use futures::executor::block_on;
use futures::{SinkExt, StreamExt};
use grpcio::WriteFlags;
use serde_json::json;
use support::fake_agent::FakeAgent;
use support::http::{connect, probe, read_response};
use support::{
    create_shell, limit_hits, metric, start_agent, wait_final, wait_until, Response, Server,
    ServerOpts,
};

fn server_with(extra: &[&str]) -> Server {
    Server::start_with(ServerOpts {
        extra: extra.iter().map(|s| s.to_string()).collect(),
        ..ServerOpts::default()
    })
}

/// Sends `bytes` on a fresh connection and reads one response.
fn raw(addr: &str, bytes: &[u8]) -> Response {
    let mut s = connect(addr);
    // The server may answer and stop reading before the end of an over-long request.
    let _ = s.write_all(bytes);
    read_response(&mut BufReader::new(s))
}

/// A GET of `/healthz?{query}` whose header section is exactly `Host`, `Connection` and
/// `X-Pad: {pad}`.
fn request(query_len: usize, pad_len: usize) -> Vec<u8> {
    format!(
        "GET /healthz?{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: {}\r\n\r\n",
        "q".repeat(query_len),
        "p".repeat(pad_len)
    )
    .into_bytes()
}

fn assert_limit_error(r: &Response, status: u16, limit: u64) {
    assert_eq!(r.status, status, "{}", r.body);
    let body = r.json();
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("limit")),
        "{body}"
    );
    assert_eq!(body["details"]["limit_bytes"], limit, "{body}");
    assert_eq!(r.header("Connection"), Some("close"));
}

#[test]
fn over_long_request_lines_and_header_sections_get_414_and_431_and_are_counted() {
    let server = server_with(&[
        "--max-request-line-bytes",
        "1024",
        "--max-header-bytes",
        "2048",
    ]);
    let c = server.client();

    // "GET /healthz?{q} HTTP/1.1" is 22 + q bytes; the headers are 37 + pad bytes with CRLFs.
    assert_eq!(
        raw(&server.http, &request(1002, 10)).status,
        200,
        "at the line limit"
    );
    assert_limit_error(&raw(&server.http, &request(1003, 10)), 414, 1024);
    assert_eq!(
        raw(&server.http, &request(0, 2011)).status,
        200,
        "at the header limit"
    );
    assert_limit_error(&raw(&server.http, &request(0, 2012)), 431, 2048);

    // The bound is on the whole section, not on each line.
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-Header-{i:03}: {}\r\n", "v".repeat(10)));
    }
    many.push_str("\r\n");
    assert_limit_error(&raw(&server.http, many.as_bytes()), 431, 2048);

    // Far over the limit: refused as soon as the limit is passed.
    let huge = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(200 << 10));
    assert_limit_error(&raw(&server.http, huge.as_bytes()), 414, 1024);

    assert_eq!(c.get("/healthz").status, 200, "others are still served");
    assert_eq!(limit_hits(&c, "request_line_bytes"), 2.0);
    assert_eq!(limit_hits(&c, "header_bytes"), 2.0);
}

#[test]
fn connections_over_the_cap_get_503_and_are_counted_and_freed_slots_serve_again() {
    let server = server_with(&["--max-connections", "4"]);
    // Four keep-alive connections, each proven open by one answered request.
    let held: Vec<BufReader<TcpStream>> = (0..4)
        .map(|_| {
            let mut s = connect(&server.http);
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("write");
            let mut r = BufReader::new(s);
            assert_eq!(read_response(&mut r).status, 200);
            r
        })
        .collect();

    // A fifth is answered at once, before it even sends a request.
    let refused = read_response(&mut BufReader::new(connect(&server.http)));
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.json()["details"]["limit"], 4);
    assert_eq!(refused.header("Connection"), Some("close"));
    assert_eq!(refused.header("Retry-After"), Some("1"));

    drop(held);
    wait_until("a freed slot serves again", Duration::from_secs(10), || {
        probe(&server.http) == Some(200)
    });
    let c = server.client();
    assert!(limit_hits(&c, "connections") >= 1.0);
    let open = metric(&c, "nodelink_http_connections");
    assert!((1.0..=4.0).contains(&open), "open connections: {open}");
}

#[test]
fn agents_over_the_cap_are_refused_with_a_reason_and_counted() {
    let server = server_with(&["--max-agents", "1"]);
    let _first = server.agent("a1", "t1");
    let second = start_agent(&server.grpc, "a2", "t2", &["--backoff-max", "1s"]);
    let log = second.wait_log("too many agents", Duration::from_secs(20));
    assert!(log.contains("RESOURCE_EXHAUSTED"), "{log}");
    server
        .proc
        .wait_log("Refused agent a2", Duration::from_secs(10));

    let c = server.client();
    let agents = c.get("/agents").json();
    let ids: Vec<&str> = agents["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .filter_map(|a| a["agent_id"].as_str())
        .collect();
    assert_eq!(ids, ["a1"]);
    let id = create_shell(&c, "a1", "echo still-served");
    assert_eq!(
        wait_final(&c, &id, Duration::from_secs(20))["stdout"],
        "still-served\n"
    );
    assert!(limit_hits(&c, "agents") >= 1.0);

    // A connected agent coming back replaces its stream: not one agent more.
    let _again = FakeAgent::connect(&server.grpc, "a1", "t1");
    server.proc.wait_log(
        "Agent a1 connected from ipv4:127.0.0.1",
        Duration::from_secs(10),
    );
    server
        .proc
        .wait_log("replacing its previous stream", Duration::from_secs(10));
}

/// gRPC's core enforces this one; grpcio gives the server no sign of it beyond the stream
/// ending, so it is not counted (see `nodelink::limits`).
#[test]
fn a_grpc_message_over_the_limit_fails_that_agents_call_with_resource_exhausted() {
    let server = server_with(&["--max-grpc-message-bytes", "2048"]);
    let mut agent = FakeAgent::connect(&server.grpc, "a1", "t1");
    server.wait_agent("a1", true);
    let c = server.client();
    create_shell(&c, "a1", "big output");
    let req = agent.next_request();
    let big = agent.output(&req.task_id, &"x".repeat(8192));
    // The refusal reaches the agent through whichever of its calls notices first.
    let status = match block_on(agent.sink.send((big, WriteFlags::default()))) {
        Err(grpcio::Error::RpcFinished(Some(status))) => status,
        Err(e) => panic!("expected RESOURCE_EXHAUSTED, got {e:?}"),
        Ok(()) => match block_on(agent.requests.next()) {
            Some(Err(grpcio::Error::RpcFailure(status))) => status,
            other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
        },
    };
    assert_eq!(status.code(), grpcio::RpcStatusCode::RESOURCE_EXHAUSTED);
    assert!(status.message().contains("larger than max"), "{status:?}");
    server.wait_agent("a1", false);
    let mut small = FakeAgent::connect(&server.grpc, "a2", "t2");
    server.wait_agent("a2", true);
    let id = create_shell(&c, "a2", "small output");
    let req = small.next_request();
    assert_eq!(req.task_id, id);
}

#[test]
fn body_registry_event_stream_and_output_limits_are_answered_and_counted() {
    let server = server_with(&[
        "--max-body-bytes",
        "200",
        "--max-tasks",
        "1",
        "--max-sse-clients",
        "1",
        "--max-output-bytes",
        "16",
    ]);
    let _agent = server.agent("a1", "t1");
    let c = server.client();

    let big = json!({"agent_id": "a1", "cmd": "x".repeat(300)}).to_string();
    let r = c.post("/tasks/shell", &big);
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["details"]["limit_bytes"], 200);

    let id = create_shell(&c, "a1", "printf '%064d' 0");
    let t = wait_final(&c, &id, Duration::from_secs(20));
    assert_eq!(t["stdout"], "0".repeat(16));
    assert_eq!(t["stdout_truncated"], true);

    // The finished task is evicted for this one, which then fills the registry.
    create_shell(&c, "a1", "sleep 30");
    let r = c.post(
        "/tasks/shell",
        &json!({"agent_id": "a1", "cmd": "true"}).to_string(),
    );
    assert_eq!(r.status, 429, "{}", r.body);

    let first = c.sse("/stream", None);
    assert_eq!(first.status, 200);
    let second = c.sse("/stream", None);
    assert_eq!(second.status, 503);

    for limit in ["body_bytes", "output_bytes", "tasks", "sse_clients"] {
        assert_eq!(limit_hits(&c, limit), 1.0, "{limit}");
    }
}
