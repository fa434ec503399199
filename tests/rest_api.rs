//! Issue 4: the REST API as a user sees it, over real HTTP, against a real `nodelink server`
//! with real `nodelink agent`s: every endpoint, every error code, and the HTTP behaviours a
//! client relies on (keep-alive, HEAD, huge or stalled bodies).

mod support;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nodelink::api::ROUTES;
use serde_json::{json, Value};
use support::http::{connect, read_head, read_response};
use support::{
    create_shell, limit_hits, wait_final, wait_until, Client, Response, Server, ServerOpts,
    API_TOKEN,
};

const FINAL: Duration = Duration::from_secs(30);
const UNKNOWN_TASK: &str = "6f1c1d2e-0000-4000-8000-000000000000";

// ---------------------------------------------------------------------------------------
// helpers

fn post(c: &Client, path: &str, body: Value) -> Response {
    c.post(path, &body.to_string())
}

fn is_rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| humantime::parse_rfc3339(s).is_ok())
}

/// Asserts an error answer: its status, the JSON `{"error", "details"}` shape, and that the
/// message contains `needle`.
fn assert_error(r: &Response, status: u16, needle: &str) -> Value {
    assert_eq!(
        r.status, status,
        "expected {status}, got {}: {}",
        r.status, r.body
    );
    assert_eq!(r.header("Content-Type"), Some("application/json"), "{r:?}");
    let v = r.json();
    let msg = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no `error` string: {v}"));
    assert!(
        msg.contains(needle),
        "error {msg:?} should mention {needle:?}"
    );
    assert!(
        v.as_object().is_some_and(|o| o.contains_key("details")),
        "no `details`: {v}"
    );
    v
}

/// Writes `bytes` on a fresh connection and reads one whole response.
fn raw(addr: &str, bytes: &[u8]) -> Response {
    let mut s = connect(addr);
    s.write_all(bytes).expect("write request");
    read_response(&mut BufReader::new(s))
}

fn auth() -> String {
    format!("Authorization: Bearer {API_TOKEN}\r\n")
}

fn task_count(c: &Client) -> usize {
    c.get("/tasks").json()["tasks"]
        .as_array()
        .map_or(0, Vec::len)
}

fn ids(list: &Value) -> Vec<String> {
    list["tasks"]
        .as_array()
        .expect("tasks array")
        .iter()
        .map(|t| t["task_id"].as_str().expect("task_id").to_string())
        .collect()
}

fn cancel_quietly(c: &Client, id: &str) {
    let _ = c.delete(&format!("/tasks/{id}"));
}

/// A server with `extra` flags.
fn server_with(extra: &[&str]) -> Server {
    Server::start_with(ServerOpts {
        extra: extra.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------------------
// success shapes

#[test]
fn creating_a_shell_task_answers_its_id_agent_status_and_creation_time() {
    let server = Server::start();
    let _a1 = server.agent("a1", "t1");
    let c = server.client();

    let r = post(
        &c,
        "/tasks/shell",
        json!({"agent_id": "a1", "cmd": "echo hi", "timeout": 7}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let v = r.json();
    let id = v["task_id"].as_str().expect("task_id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "task_id is a UUID: {id}");
    assert_eq!(v["agent_id"], "a1");
    assert!(
        ["created", "sent"].contains(&v["status"].as_str().unwrap_or("")),
        "{v}"
    );
    assert!(is_rfc3339(&v["created_at"]), "{v}");

    let t = wait_final(&c, id, FINAL);
    for field in [
        "task_id",
        "agent_id",
        "status",
        "created_at",
        "updated_at",
        "finished_at",
        "timeout",
        "exit_code",
        "error",
        "request",
        "stdout",
        "stderr",
        "stdout_truncated",
        "stderr_truncated",
    ] {
        assert!(
            t.get(field).is_some(),
            "GET /tasks/{{id}} lacks `{field}`: {t}"
        );
    }
    assert_eq!(t["task_id"], id);
    assert_eq!(t["agent_id"], "a1");
    assert_eq!(t["status"], "completed");
    assert_eq!(t["created_at"], v["created_at"]);
    for field in ["created_at", "updated_at", "finished_at"] {
        assert!(is_rfc3339(&t[field]), "{field}: {t}");
    }
    assert_eq!(t["timeout"], 7);
    assert_eq!(t["exit_code"], 0);
    assert_eq!(t["error"], Value::Null);
    assert_eq!(t["request"], json!({"type": "shell", "cmd": "echo hi"}));
    assert_eq!(t["stdout"], "hi\n");
    assert_eq!(t["stderr"], "");
    assert_eq!(t["stdout_truncated"], false);
    assert_eq!(t["stderr_truncated"], false);

    // Without a timeout the default (300 s) applies.
    let id = create_shell(&c, "a1", "true");
    assert_eq!(wait_final(&c, &id, FINAL)["timeout"], 300);
}

#[test]
fn creating_docker_tasks_answers_the_same_shape_for_every_operation() {
    let server = Server::start();
    let _a1 = server.agent("a1", "t1");
    let c = server.client();
    let cases = [
        (
            json!({"agent_id": "a1", "operation": "run", "image": "alpine:3"}),
            json!({"type": "docker", "operation": "run", "image": "alpine:3"}),
        ),
        (
            json!({"agent_id": "a1", "operation": "start", "id": "c1"}),
            json!({"type": "docker", "operation": "start", "id": "c1"}),
        ),
        (
            json!({"agent_id": "a1", "operation": "stop", "id": "c1"}),
            json!({"type": "docker", "operation": "stop", "id": "c1"}),
        ),
        (
            json!({"agent_id": "a1", "operation": "logs", "id": "c1", "timeout": 5}),
            json!({"type": "docker", "operation": "logs", "id": "c1"}),
        ),
    ];
    for (body, request) in cases {
        let r = post(&c, "/tasks/docker", body.clone());
        assert_eq!(r.status, 200, "{body}: {}", r.body);
        let v = r.json();
        assert!(
            uuid::Uuid::parse_str(v["task_id"].as_str().unwrap_or("")).is_ok(),
            "{v}"
        );
        assert_eq!(v["agent_id"], "a1");
        assert!(
            v["status"].is_string() && is_rfc3339(&v["created_at"]),
            "{v}"
        );
        let t = c
            .get(&format!("/tasks/{}", v["task_id"].as_str().expect("id")))
            .json();
        assert_eq!(t["request"], request, "{body}");
        // Whether docker exists here or not, the task ends.
        wait_final(&c, v["task_id"].as_str().expect("id"), FINAL);
    }
}

#[test]
fn cancelling_answers_a_message_then_409_and_unknown_tasks_are_404() {
    let server = Server::start();
    let _a1 = server.agent("a1", "t1");
    let c = server.client();

    let id = create_shell(&c, "a1", "sleep 30");
    let r = c.delete(&format!("/tasks/{id}"));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["message"], "Task cancelled successfully");
    assert_eq!(v["task_id"], id.as_str());
    assert_eq!(v["status"], "cancelled");
    let t = c.get(&format!("/tasks/{id}")).json();
    assert_eq!(t["status"], "cancelled");
    assert!(
        t["error"].as_str().is_some_and(|e| e.contains("cancelled")),
        "{t}"
    );

    let again = c.delete(&format!("/tasks/{id}"));
    let e = assert_error(&again, 409, "already finished");
    assert_eq!(e["details"]["status"], "cancelled");

    // A finished task cannot be cancelled either.
    let done = create_shell(&c, "a1", "true");
    wait_final(&c, &done, FINAL);
    assert_error(
        &c.delete(&format!("/tasks/{done}")),
        409,
        "already finished",
    );

    for path in [
        format!("/tasks/{UNKNOWN_TASK}"),
        "/tasks/not-a-task-id".to_string(),
        "/tasks/%20".to_string(),
    ] {
        assert_error(&c.get(&path), 404, "not found");
        assert_error(&c.delete(&path), 404, "not found");
    }
}

#[test]
fn listing_tasks_is_newest_first_and_filters_by_status_agent_and_limit() {
    let server = Server::start();
    let _a1 = server.agent("a1", "t1");
    let _a2 = server.agent("a2", "t2");
    let c = server.client();

    let first = create_shell(&c, "a1", "true");
    let second = create_shell(&c, "a2", "true");
    let third = create_shell(&c, "a1", "true");
    for id in [&first, &second, &third] {
        wait_final(&c, id, FINAL);
    }
    let running = create_shell(&c, "a1", "sleep 30");
    wait_until("the long task is sent", FINAL, || {
        c.get(&format!("/tasks/{running}")).json()["status"] == "sent"
    });

    let all = c.get("/tasks");
    assert_eq!(all.status, 200);
    let all = all.json();
    assert_eq!(
        ids(&all),
        vec![
            running.clone(),
            third.clone(),
            second.clone(),
            first.clone()
        ]
    );
    let summary = &all["tasks"][1];
    for field in ["task_id", "agent_id", "status", "created_at", "updated_at"] {
        assert!(
            summary.get(field).is_some(),
            "summary lacks {field}: {summary}"
        );
    }
    assert!(is_rfc3339(&summary["created_at"]) && is_rfc3339(&summary["updated_at"]));
    assert!(
        summary.get("stdout").is_none(),
        "a list carries no output: {summary}"
    );

    let cases: &[(&str, Vec<&String>)] = &[
        ("status=completed", vec![&third, &second, &first]),
        ("status=sent", vec![&running]),
        ("status=failed", vec![]),
        ("agent_id=a2", vec![&second]),
        ("agent_id=a1&status=completed", vec![&third, &first]),
        ("limit=2", vec![&running, &third]),
        ("status=completed&limit=1", vec![&third]),
        ("agent_id=nobody", vec![]),
    ];
    for (query, expected) in cases {
        let r = c.get(&format!("/tasks?{query}"));
        assert_eq!(r.status, 200, "{query}: {}", r.body);
        let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        assert_eq!(ids(&r.json()), expected, "GET /tasks?{query}");
    }
    for (query, needle) in [
        ("status=bogus", "unknown status"),
        ("limit=0", "between 1 and 1000"),
        ("limit=x", "between 1 and 1000"),
        ("limit=-1", "between 1 and 1000"),
        ("limit=1001", "between 1 and 1000"),
        ("limit=18446744073709551616", "between 1 and 1000"),
    ] {
        assert_error(&c.get(&format!("/tasks?{query}")), 400, needle);
    }
    cancel_quietly(&c, &running);
}

#[test]
fn agents_are_listed_with_their_connection_and_running_tasks() {
    let server = Server::start();
    let _a1 = server.agent("a1", "t1");
    let c = server.client();

    let r = c.get("/agents");
    assert_eq!(r.status, 200);
    let agents = r.json()["agents"].clone();
    assert_eq!(
        agents.as_array().map(Vec::len),
        Some(1),
        "only a1 is connected: {agents}"
    );
    let a1 = &agents[0];
    assert_eq!(a1["agent_id"], "a1");
    assert!(is_rfc3339(&a1["connected_since"]), "{a1}");
    assert!(
        a1["peer"].as_str().is_some_and(|p| p.contains("127.0.0.1")),
        "{a1}"
    );
    assert_eq!(a1["running_tasks"], 0);

    let long = create_shell(&c, "a1", "sleep 30");
    wait_until("a1 runs one task", FINAL, || {
        c.get("/agents").json()["agents"][0]["running_tasks"] == 1
    });

    let done = create_shell(&c, "a1", "true");
    wait_final(&c, &done, FINAL);
    let r = c.get("/agents/a1/tasks");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["agent_id"], "a1");
    assert_eq!(ids(&v), vec![done.clone(), long.clone()]);
    assert_eq!(
        ids(&c.get("/agents/a1/tasks?status=completed").json()),
        vec![done.clone()]
    );
    assert_eq!(ids(&c.get("/agents/a1/tasks?limit=1").json()), vec![done]);
    assert_error(
        &c.get("/agents/a1/tasks?status=nope"),
        400,
        "unknown status",
    );

    // Configured but never connected: known, no tasks.
    let v = c.get("/agents/a2/tasks");
    assert_eq!(v.status, 200, "{}", v.body);
    assert_eq!(
        v.json(),
        json!({"agent_id": "a2", "tasks": [], "next_cursor": null})
    );
    // Neither configured nor ever seen.
    let e = assert_error(&c.get("/agents/nobody/tasks"), 404, "not known");
    assert_eq!(e["details"]["agent_id"], "nobody");

    cancel_quietly(&c, &long);
    wait_until("a1 runs nothing", FINAL, || {
        c.get("/agents").json()["agents"][0]["running_tasks"] == 0
    });
}

#[test]
fn health_needs_no_token_and_head_requests_get_headers_only() {
    let server = Server::start();
    let anonymous = Client::new(&server.http, None);
    let r = anonymous.get("/healthz");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"status": "ok"}));

    // HEAD answers the GET's head without a body, so the next answer on the same connection
    // is read correctly. A finished task is used for /stream, which would otherwise stream.
    let _a1 = server.agent("a1", "t1");
    let c = server.client();
    let id = create_shell(&c, "a1", "echo streamed");
    wait_final(&c, &id, FINAL);
    for path in [
        "/healthz".to_string(),
        "/tasks".to_string(),
        format!("/stream?ref={id}"),
    ] {
        let mut s = connect(&server.http);
        let req = format!("HEAD {path} HTTP/1.1\r\nHost: t\r\n{}\r\nGET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", auth());
        s.write_all(req.as_bytes()).expect("write");
        let mut r = BufReader::new(s);
        let (status, _) = read_head(&mut r);
        assert_eq!(status, 200, "HEAD {path}");
        let next = read_response(&mut r);
        assert_eq!(
            (next.status, next.body.as_str()),
            (200, r#"{"status":"ok"}"#),
            "the answer after HEAD {path}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// error codes

#[test]
fn every_route_but_the_probes_refuses_a_missing_or_wrong_token_with_401() {
    let server = Server::start();
    let _a1 = server.agent("a1", "t1");
    let body =
        json!({"agent_id": "a1", "cmd": "true", "operation": "run", "image": "x"}).to_string();
    // (what, the Authorization header sent)
    let credentials = [
        ("no token", None),
        ("wrong token", Some("Bearer wrong-token".to_string())),
        (
            "token prefix",
            Some(format!("Bearer {}", &API_TOKEN[..API_TOKEN.len() - 1])),
        ),
        (
            "other scheme",
            Some("Basic dGVzdC1hcGktdG9rZW4=".to_string()),
        ),
        ("empty bearer", Some("Bearer ".to_string())),
    ];
    let anonymous = Client::new(&server.http, None);
    let mut checked = 0;
    // The liveness and readiness probes are the only open routes.
    for route in ROUTES
        .iter()
        .filter(|r| !["/healthz", "/readyz"].contains(&r.pattern))
    {
        let path = route.pattern.replace("{id}", UNKNOWN_TASK);
        let body = (route.method == "POST").then_some(body.as_bytes());
        for (what, authorization) in &credentials {
            let headers: Vec<(&str, &str)> = authorization
                .iter()
                .map(|v| ("Authorization", v.as_str()))
                .collect();
            let r = anonymous.request(route.method, &path, body, &headers);
            assert_error(&r, 401, "token");
            assert_eq!(
                r.header("WWW-Authenticate"),
                Some("Bearer"),
                "{} {path} with {what}",
                route.method
            );
            checked += 1;
        }
    }
    assert!(checked >= 8 * credentials.len(), "every route was tried");
    assert_eq!(
        task_count(&server.client()),
        0,
        "refused requests create nothing"
    );
    assert_eq!(
        Client::new(&server.http, Some("wrong"))
            .get("/healthz")
            .status,
        200
    );
}

#[test]
fn malformed_or_invalid_bodies_are_400_with_the_reason_and_create_nothing() {
    let server = Server::start();
    let _a1 = server.agent("a1", "t1");
    let c = server.client();
    // (path, body, words the message contains, details.field if any)
    let cases: &[(&str, &str, &str, Option<&str>)] = &[
        (
            "/tasks/shell",
            r#"{agent_id: "a1"}"#,
            "not valid JSON",
            None,
        ),
        (
            "/tasks/shell",
            r#"{"agent_id": "a1", "cmd": "ec"#,
            "truncated JSON",
            None,
        ),
        (
            "/tasks/shell",
            r#"{"agent_id": "a1", "cmd": "true"} trailing"#,
            "not valid JSON",
            None,
        ),
        ("/tasks/shell", "", "empty", None),
        ("/tasks/shell", "[1, 2]", "must be a JSON object", None),
        (
            "/tasks/shell",
            r#"{"cmd": "true"}"#,
            "missing field `agent_id`",
            Some("agent_id"),
        ),
        (
            "/tasks/shell",
            r#"{"agent_id": "a1"}"#,
            "missing field `cmd`",
            Some("cmd"),
        ),
        (
            "/tasks/shell",
            r#"{"agent_id": "a1", "cmd": 5}"#,
            "field `cmd` must be a string",
            Some("cmd"),
        ),
        (
            "/tasks/shell",
            r#"{"agent_id": 1, "cmd": "true"}"#,
            "field `agent_id` must be a string",
            Some("agent_id"),
        ),
        (
            "/tasks/shell",
            r#"{"agent_id": "a1", "cmd": null}"#,
            "must not be null",
            Some("cmd"),
        ),
        (
            "/tasks/shell",
            r#"{"agent_id": "a1", "cmd": "  "}"#,
            "cmd",
            Some("cmd"),
        ),
        (
            "/tasks/shell",
            r#"{"agent_id": "", "cmd": "true"}"#,
            "agent_id",
            Some("agent_id"),
        ),
        (
            "/tasks/shell",
            r#"{"agent_id": "a1", "cmd": "true", "timeout": 0}"#,
            "timeout",
            Some("timeout"),
        ),
        (
            "/tasks/shell",
            r#"{"agent_id": "a1", "cmd": "true", "timeout": -1}"#,
            "timeout",
            Some("timeout"),
        ),
        (
            "/tasks/shell",
            r#"{"agent_id": "a1", "cmd": "true", "timeout": 1e12}"#,
            "timeout",
            Some("timeout"),
        ),
        (
            "/tasks/shell",
            r#"{"agent_id": "a1", "cmd": "true", "timeout": "x"}"#,
            "field `timeout` must be a number",
            Some("timeout"),
        ),
        (
            "/tasks/shell",
            r#"{"agent_id": "a1", "cmd": "true", "timeout": 0.5}"#,
            "between 1 and 86400",
            Some("timeout"),
        ),
        (
            "/tasks/shell",
            r#"{"agent_id": "a1", "cmd": "true", "timeout": 86401}"#,
            "between 1 and 86400",
            Some("timeout"),
        ),
        (
            "/tasks/shell",
            r#"{"agent_id": "a1", "cmd": "true", "env": {"A": 1}}"#,
            "env",
            Some("env"),
        ),
        (
            "/tasks/docker",
            r#"{"agent_id": "a1", "operation": "explode"}"#,
            "unknown docker operation",
            Some("operation"),
        ),
        (
            "/tasks/docker",
            r#"{"agent_id": "a1", "operation": "run"}"#,
            "missing field `image`",
            Some("image"),
        ),
        (
            "/tasks/docker",
            r#"{"agent_id": "a1", "operation": "start"}"#,
            "missing field `id`",
            Some("id"),
        ),
        (
            "/tasks/docker",
            r#"{"agent_id": "a1", "operation": "run", "image": 3}"#,
            "must be a string",
            Some("image"),
        ),
        (
            "/tasks/docker",
            r#"{"agent_id": "a1", "image": "alpine"}"#,
            "missing field `operation`",
            Some("operation"),
        ),
        (
            "/tasks/docker",
            r#"{"agent_id": "a1", "operation": "run", "image": "x", "timeout": 0}"#,
            "timeout",
            Some("timeout"),
        ),
    ];
    for (path, body, needle, field) in cases {
        let r = c.post(path, body);
        let e = assert_error(&r, 400, needle);
        if let Some(field) = field {
            assert_eq!(e["details"]["field"], *field, "POST {path} {body}: {e}");
        }
    }
    assert_eq!(task_count(&c), 0, "no refused request created a task");
}

#[test]
fn a_body_that_ends_before_its_content_length_is_400() {
    let server = Server::start();
    // Larger than what tiny_http buffers itself, so our body reader sees the early end.
    let mut s = connect(&server.http);
    let head = format!(
        "POST /tasks/shell HTTP/1.1\r\nHost: t\r\n{}Content-Type: application/json\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n",
        auth()
    );
    s.write_all(head.as_bytes()).expect("write");
    s.write_all(br#"{"agent_id": "a1", "cmd": "#)
        .expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("half-close");
    let r = read_response(&mut BufReader::new(s));
    let e = assert_error(&r, 400, "shorter than its Content-Length");
    assert_eq!(e["details"]["declared_bytes"], 5000);
}

#[test]
fn bodies_over_the_limit_are_413_even_when_never_sent() {
    let server = Server::start();
    let _a1 = server.agent("a1", "t1");
    let c = server.client();

    let mut big = json!({"agent_id": "a1", "cmd": "true"}).to_string();
    big.insert_str(1, &format!("\"pad\": \"{}\", ", "x".repeat(2 << 20)));
    for path in ["/tasks/shell", "/tasks/docker"] {
        let e = assert_error(&c.post(path, &big), 413, "exceeds the limit");
        assert_eq!(e["details"]["limit_bytes"], 1 << 20);
    }

    // A declared length of 100 GB, and no body at all: answered at once, and the server lives.
    let huge =
        "Content-Length: 100000000000\r\nContent-Type: application/json\r\nConnection: close\r\n";
    let cases = [
        (
            format!(
                "POST /tasks/shell HTTP/1.1\r\nHost: t\r\n{}{huge}\r\n",
                auth()
            ),
            413,
        ),
        (
            format!("POST /tasks/shell HTTP/1.1\r\nHost: t\r\n{huge}\r\n"),
            401,
        ),
        (
            format!("GET /tasks HTTP/1.1\r\nHost: t\r\n{}{huge}\r\n", auth()),
            200,
        ),
        (
            format!("POST /nowhere HTTP/1.1\r\nHost: t\r\n{huge}\r\n"),
            404,
        ),
    ];
    for (request, status) in cases {
        let r = raw(&server.http, request.as_bytes());
        assert_eq!(r.status, status, "{request}: {}", r.body);
        assert_eq!(
            c.get("/healthz").status,
            200,
            "still serving after {request}"
        );
    }
    let mut server = server;
    assert_eq!(
        server.proc.child.try_wait().expect("wait"),
        None,
        "the server is alive"
    );
    let id = create_shell(&c, "a1", "echo alive");
    assert_eq!(wait_final(&c, &id, FINAL)["stdout"], "alive\n");
}

#[test]
fn unknown_routes_are_404_and_wrong_methods_are_405_with_allow() {
    let server = Server::start();
    let c = server.client();
    for path in [
        "/",
        "/nope",
        "/tasks/shell/extra",
        &format!("/tasks/{UNKNOWN_TASK}/more"),
        "/agents/a1",
        "/tasks//x",
    ] {
        let e = assert_error(&c.get(path), 404, "no route");
        assert!(e["details"]["path"].is_string(), "{e}");
    }
    let task = format!("/tasks/{UNKNOWN_TASK}");
    let cases: &[(&str, &str, &str)] = &[
        ("PUT", "/tasks", "GET, HEAD"),
        ("POST", "/tasks", "GET, HEAD"),
        ("GET", "/tasks/shell", "POST"),
        ("DELETE", "/tasks/docker", "POST"),
        ("POST", &task, "GET, DELETE, HEAD"),
        ("PATCH", "/agents", "GET, HEAD"),
        ("DELETE", "/agents/a1/tasks", "GET, HEAD"),
        ("POST", "/stream", "GET, HEAD"),
        ("POST", "/healthz", "GET, HEAD"),
    ];
    for (method, path, allow) in cases {
        let r = c.request(method, path, None, &[]);
        let e = assert_error(&r, 405, "method not allowed");
        assert_eq!(r.header("Allow"), Some(*allow), "{method} {path}");
        let listed: Vec<&str> = allow.split(", ").collect();
        assert_eq!(e["details"]["allowed"], json!(listed), "{method} {path}");
    }
}

#[test]
fn a_task_for_an_agent_that_is_not_connected_is_503_and_recorded_as_failed() {
    let server = Server::start();
    let c = server.client();
    for agent in ["a2", "ghost"] {
        let r = post(
            &c,
            "/tasks/shell",
            json!({"agent_id": agent, "cmd": "true"}),
        );
        let e = assert_error(&r, 503, "not connected");
        assert_eq!(e["details"]["agent_id"], agent);
        assert_eq!(e["details"]["status"], "failed");
        let id = e["details"]["task_id"].as_str().expect("details.task_id");
        let t = c.get(&format!("/tasks/{id}"));
        assert_eq!(t.status, 200, "the failed task is queryable: {}", t.body);
        let t = t.json();
        assert_eq!(t["status"], "failed");
        assert_eq!(t["error"], "agent not connected");
        assert_eq!(t["agent_id"], agent);
        assert!(is_rfc3339(&t["finished_at"]), "{t}");
    }
    let r = post(
        &c,
        "/tasks/docker",
        json!({"agent_id": "a2", "operation": "logs", "id": "c"}),
    );
    assert_error(&r, 503, "not connected");
    assert_eq!(ids(&c.get("/tasks?status=failed").json()).len(), 3);
}

#[test]
fn a_full_registry_is_429_until_a_task_finishes() {
    let server = server_with(&["--max-tasks", "2"]);
    let _a1 = server.agent("a1", "t1");
    let c = server.client();
    let first = create_shell(&c, "a1", "sleep 30");
    let second = create_shell(&c, "a1", "sleep 30");

    for (path, body) in [
        ("/tasks/shell", json!({"agent_id": "a1", "cmd": "true"})),
        (
            "/tasks/docker",
            json!({"agent_id": "a1", "operation": "run", "image": "x"}),
        ),
    ] {
        let e = assert_error(&post(&c, path, body), 429, "full");
        assert_eq!(e["details"]["max_tasks"], 2);
    }
    assert_eq!(task_count(&c), 2);

    // A cancelled task is final, so it can make room.
    assert_eq!(c.delete(&format!("/tasks/{first}")).status, 200);
    let third = create_shell(&c, "a1", "echo room");
    assert_eq!(wait_final(&c, &third, FINAL)["stdout"], "room\n");
    cancel_quietly(&c, &second);
}

// ---------------------------------------------------------------------------------------
// HTTP behaviour

#[test]
fn two_requests_on_one_keep_alive_connection_are_both_answered() {
    let server = Server::start();
    let _a1 = server.agent("a1", "t1");
    let mut s = connect(&server.http);
    let body = json!({"agent_id": "a1", "cmd": "echo kept"}).to_string();
    let first = format!(
        "POST /tasks/shell HTTP/1.1\r\nHost: t\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        auth(),
        body.len()
    );
    s.write_all(first.as_bytes()).expect("write first");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let created = read_response(&mut reader);
    assert_eq!(created.status, 200, "{}", created.body);
    assert_ne!(created.header("Connection"), Some("close"), "{created:?}");
    let id = created.json()["task_id"]
        .as_str()
        .expect("task_id")
        .to_string();

    let second = format!("GET /tasks/{id} HTTP/1.1\r\nHost: t\r\n{}\r\n", auth());
    s.write_all(second.as_bytes()).expect("write second");
    let task = read_response(&mut reader);
    assert_eq!(task.status, 200, "{}", task.body);
    assert_eq!(task.json()["task_id"], id.as_str());

    // Pipelined: both requests written before either answer is read.
    let both = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /tasks HTTP/1.1\r\nHost: t\r\n{}\r\n",
        auth()
    );
    s.write_all(both.as_bytes()).expect("write pipelined");
    assert_eq!(read_response(&mut reader).status, 200);
    assert_eq!(ids(&read_response(&mut reader).json()), vec![id]);
}

#[test]
fn a_client_that_stalls_mid_request_does_not_stop_others_from_being_served() {
    let server = server_with(&["--http-timeout", "1s"]);
    let _a1 = server.agent("a1", "t1");
    let c = server.client();

    // Headers, a few bytes of the body, then silence: one small body (buffered by tiny_http's
    // connection thread) and a few large ones (read by our workers).
    let stall = |len: usize| -> TcpStream {
        let mut s = connect(&server.http);
        let head = format!(
            "POST /tasks/shell HTTP/1.1\r\nHost: t\r\n{}Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n{{\"agen",
            auth()
        );
        s.write_all(head.as_bytes()).expect("write");
        s
    };
    let small = stall(100);
    let large: Vec<TcpStream> = (0..3).map(|_| stall(5000)).collect();

    // Meanwhile, everyone else is served, including a task end to end.
    for _ in 0..3 {
        assert_eq!(c.get("/healthz").status, 200);
        assert_eq!(c.get("/tasks").status, 200);
    }
    let id = create_shell(&c, "a1", "echo served");
    assert_eq!(wait_final(&c, &id, FINAL)["stdout"], "served\n");

    // The stalled ones are cut off by the read timeout: 408 when a worker was reading the
    // body, a closed connection when tiny_http was.
    for s in large {
        let r = read_response(&mut BufReader::new(s));
        assert_error(&r, 408, "timed out");
    }
    let mut rest = Vec::new();
    let mut small = small;
    small
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let n = small.read_to_end(&mut rest).expect("closed, not timed out");
    assert!(
        n == 0 || String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 4"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(c.get("/healthz").status, 200, "still serving");
}

#[test]
fn a_task_timeout_ends_the_task_and_stops_its_process_on_the_agent() {
    let server = Server::start();
    let agent = server.agent("a1", "t1");
    let c = server.client();
    // An unusual duration marks this test's process in /proc.
    let marker = "29.4173";
    let r = post(
        &c,
        "/tasks/shell",
        json!({"agent_id": "a1", "cmd": format!("sleep {marker}"), "timeout": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.json()["task_id"].as_str().expect("task_id").to_string();
    agent.wait_log(&format!("Started task {id}"), FINAL);
    assert!(running_with(marker), "the command runs");

    let started = Instant::now();
    let t = wait_final(&c, &id, FINAL);
    assert_eq!(t["status"], "timeout", "{t}");
    assert_eq!(t["timeout"], 1);
    assert!(
        t["error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out after 1s")),
        "{t}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "ended well before the command would"
    );

    agent.wait_log(&format!("Cancelling task {id} (timeout)"), FINAL);
    agent.wait_log(&format!("Task {id} cancelled (timeout)"), FINAL);
    wait_until("the command's process is gone", FINAL, || {
        !running_with(marker)
    });
    // A late answer from the agent does not change the final status.
    assert_eq!(c.get(&format!("/tasks/{id}")).json()["status"], "timeout");
}

/// Whether a process whose command line contains `needle` exists.
fn running_with(needle: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(Result::ok).any(|e| {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            return false;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // A zombie is not running (its parent has not reaped it yet).
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'));
        !zombie && String::from_utf8_lossy(&cmdline).contains(needle)
    })
}

#[test]
fn a_listing_returns_100_tasks_by_default_and_refuses_a_limit_above_1000() {
    let server = Server::start();
    let c = server.client();
    // Tasks for an agent that is not connected are recorded (as failed) at once.
    for _ in 0..105 {
        let r = post(
            &c,
            "/tasks/shell",
            json!({"agent_id": "ghost", "cmd": "true"}),
        );
        assert_eq!(r.status, 503, "{}", r.body);
    }
    assert_eq!(task_count(&c), 100, "the default limit");
    let r = c.get("/tasks?limit=1000");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(ids(&r.json()).len(), 105);
    let e = assert_error(&c.get("/tasks?limit=1001"), 400, "between 1 and 1000");
    assert_eq!(e["details"]["parameter"], "limit");
    assert_error(
        &c.get("/agents/ghost/tasks?limit=5000"),
        400,
        "between 1 and 1000",
    );
}

/// Beyond `--max-output-total-bytes` the oldest retained output goes first (finished tasks',
/// then running tasks'); the tasks are marked truncated and the hit is counted.
#[test]
fn the_server_wide_output_budget_sheds_the_oldest_output_first() {
    let server = server_with(&[
        "--max-output-total-bytes",
        "300000",
        "--cleanup-delay",
        "5s",
    ]);
    // The deprecated flag is accepted, and said to be ignored.
    server
        .proc
        .wait_log("--cleanup-delay is deprecated and ignored", FINAL);
    let _a1 = server.agent("a1", "t1");
    let c = server.client();
    let first = create_shell(&c, "a1", "head -c 200000 /dev/zero | tr '\\0' a");
    let t = wait_final(&c, &first, FINAL);
    assert_eq!(t["stdout"].as_str().map(str::len), Some(200_000));
    assert_eq!(t["stdout_truncated"], false);
    assert_eq!(limit_hits(&c, "output_total_bytes"), 0.0);
    let second = create_shell(&c, "a1", "head -c 200000 /dev/zero | tr '\\0' b");
    let t = wait_final(&c, &second, FINAL);
    assert_eq!(
        t["stdout"].as_str().map(str::len),
        Some(200_000),
        "the newest task keeps its output"
    );
    let old = c.get(&format!("/tasks/{first}")).json();
    let kept = old["stdout"].as_str().map_or(0, str::len);
    assert!(
        kept < 100_000,
        "the finished task's output went first: {kept} bytes left"
    );
    assert_eq!(old["stdout_truncated"], true);
    assert_eq!(limit_hits(&c, "output_total_bytes"), 1.0);
}
