//! Durable history across restarts: a server killed with SIGKILL while agents run tasks comes
//! back on the same data directory, takes the tasks up again, and every task ends in its true
//! final state with every line of output exactly once, in order.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::fake_agent::FakeAgent;
use support::{create_shell, free_addr, wait_final, wait_until, Server, ServerOpts, TempDir};

const LINES: usize = 60;

fn opts(data: &TempDir, http: &str, grpc: &str) -> ServerOpts {
    ServerOpts {
        http_addr: http.to_string(),
        grpc_addr: grpc.to_string(),
        data_dir: Some(data.join("data")),
        ..ServerOpts::default()
    }
}

/// Runs `nodelink server --dev` on data directory `dir` until it exits (it is expected to
/// refuse to start).
fn dev_server_on(dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(support::binary())
        .args(["server", "--dev", "--http-addr", "127.0.0.1:0"])
        .args(["--grpc-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .output()
        .expect("runs")
}

fn expected_output() -> String {
    (1..=LINES).map(|i| format!("line{i}\n")).collect()
}

#[test]
fn tasks_running_through_a_sigkill_end_completed_with_every_line_once() {
    let data = TempDir::new("restart");
    let (http, grpc) = (free_addr(), free_addr());
    let mut server = Server::start_with(opts(&data, &http, &grpc));
    let _a1 = server.agent("a1", "t1");
    let _a2 = server.agent("a2", "t2");
    let c = server.client();
    let cmd = format!("for i in $(seq 1 {LINES}); do echo line$i; sleep 0.05; done");
    let ids: Vec<String> = (0..50)
        .map(|i| create_shell(&c, if i % 2 == 0 { "a1" } else { "a2" }, &cmd))
        .collect();
    // One SSE client per some tasks, reading until the server dies.
    let watched: Vec<String> = ids.iter().take(3).cloned().collect();
    let mut streams: Vec<_> = watched
        .iter()
        .map(|id| c.sse(&format!("/stream?ref={id}"), None))
        .collect();
    let mut seen: Vec<Vec<support::http::Event>> = vec![Vec::new(); watched.len()];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        for (s, got) in streams.iter_mut().zip(seen.iter_mut()) {
            if let Some(e) = s.next_event(Duration::from_secs(5)) {
                got.push(e);
            }
        }
    }
    server.proc.signal(libc::SIGKILL);
    server
        .proc
        .child
        .wait()
        .expect("the killed server is reaped");
    for (s, got) in streams.iter_mut().zip(seen.iter_mut()) {
        // Whatever was in flight before the kill.
        while let Some(e) = s.next_event(Duration::from_secs(5)) {
            got.push(e);
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let server = Server::start_with(opts(&data, &http, &grpc));
    let c = server.client();
    for id in &ids {
        let t = wait_final(&c, id, Duration::from_secs(60));
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(t["exit_code"], 0, "{t}");
        assert_eq!(t["stdout"], expected_output(), "task {id}: {t}");
    }
    // Resuming each stream with its last event id gives exactly the events not seen yet.
    for (id, got) in watched.iter().zip(seen.iter()) {
        let last = got.iter().rev().find_map(|e| e.id.clone());
        let mut rest = c.sse(&format!("/stream?ref={id}"), last.as_deref());
        let more = rest.collect_until_end(Duration::from_secs(30));
        let all: Vec<&support::http::Event> = got.iter().chain(more.iter()).collect();
        let mut ids_seen = HashSet::new();
        for e in &all {
            if let Some(i) = &e.id {
                assert!(ids_seen.insert(i.clone()), "event id {i} delivered twice");
            }
        }
        let text: String = all
            .iter()
            .filter(|e| e.event == "response")
            .map(|e| e.json()["stdout"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(text, expected_output(), "task {id} as its stream told it");
        let final_status = all
            .iter()
            .rev()
            .find(|e| e.event == "status")
            .map(|e| e.json()["status"].clone());
        assert_eq!(final_status, Some(Value::from("completed")));
    }
}

#[test]
fn history_survives_a_clean_restart_and_pages_exactly_once() {
    let data = TempDir::new("history");
    let (http, grpc) = (free_addr(), free_addr());
    let ids: Vec<String> = {
        let server = Server::start_with(opts(&data, &http, &grpc));
        let _a1 = server.agent("a1", "t1");
        let c = server.client();
        let ids: Vec<String> = (0..30)
            .map(|i| create_shell(&c, "a1", &format!("echo out{i}; echo err{i} >&2")))
            .collect();
        for id in &ids {
            wait_final(&c, id, Duration::from_secs(30));
        }
        let mut server = server;
        server.proc.signal(libc::SIGTERM);
        assert_eq!(server.proc.wait_exit(Duration::from_secs(20)), Some(0));
        ids
    };
    let server = Server::start_with(opts(&data, &http, &grpc));
    let c = server.client();
    for (i, id) in ids.iter().enumerate() {
        let t = c.get(&format!("/tasks/{id}")).json();
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(t["stdout"], format!("out{i}\n"), "{t}");
        assert_eq!(t["stderr"], format!("err{i}\n"), "{t}");
        let events = c
            .sse(&format!("/stream?ref={id}"), None)
            .collect_until_end(Duration::from_secs(10));
        assert!(events.iter().any(|e| e.event == "response"), "{events:?}");
    }
    let mut listed = Vec::new();
    let mut path = "/tasks?limit=7".to_string();
    for _ in 0..20 {
        let page = c.get(&path).json();
        for t in page["tasks"].as_array().expect("tasks") {
            listed.push(t["task_id"].as_str().expect("id").to_string());
        }
        match page["next_cursor"].as_str() {
            Some(cur) => path = format!("/tasks?limit=7&cursor={cur}"),
            None => break,
        }
    }
    let want: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(listed, want);
}

#[test]
fn an_original_agent_runs_tasks_and_never_sees_an_acknowledgement() {
    let data = TempDir::new("original");
    let server = Server::start_with(opts(&data, &free_addr(), &free_addr()));
    let mut agent = FakeAgent::connect(&server.grpc, "a1", "t1");
    server.wait_agent("a1", true);
    let c = server.client();
    let id = create_shell(&c, "a1", "echo hi");
    let req = agent.next_request();
    assert_eq!(
        req.task_id, id,
        "the first request is the task, not an acknowledgement"
    );
    let out = agent.output(&id, "hi\n");
    agent.send(out, false);
    let exit = agent.exit(&id, 0);
    agent.send(exit, false);
    let t = wait_final(&c, &id, Duration::from_secs(10));
    assert_eq!(t["status"], "completed");
    assert_eq!(t["stdout"], "hi\n");
}

#[test]
fn tasks_of_an_agent_that_never_returns_fail_after_the_grace() {
    let data = TempDir::new("noreturn");
    let (http, grpc) = (free_addr(), free_addr());
    let mut o = opts(&data, &http, &grpc);
    o.extra = vec!["--disconnect-grace".into(), "1s".into()];
    let mut server = Server::start_with(o);
    let agent = server.agent("a1", "t1");
    let c = server.client();
    let id = create_shell(&c, "a1", "sleep 30");
    wait_until("task running", Duration::from_secs(10), || {
        c.get(&format!("/tasks/{id}")).json()["status"] == "sent"
            || c.get(&format!("/tasks/{id}")).json()["status"] == "in_progress"
    });
    drop(agent);
    server.proc.signal(libc::SIGKILL);
    server
        .proc
        .child
        .wait()
        .expect("the killed server is reaped");
    let mut o = opts(&data, &http, &grpc);
    o.extra = vec!["--disconnect-grace".into(), "1s".into()];
    let server = Server::start_with(o);
    let c = server.client();
    let t = wait_final(&c, &id, Duration::from_secs(20));
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(
        t["error"], "agent did not return after server restart",
        "{t}"
    );
}

#[test]
fn a_second_server_on_the_same_data_dir_refuses_to_start() {
    let data = TempDir::new("locked");
    let _first = Server::start_with(opts(&data, &free_addr(), &free_addr()));
    let out = dev_server_on(&data.join("data"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another nodelink server"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn a_full_disk_refuses_new_tasks_keeps_running_ones_streaming_and_recovers() {
    let data = TempDir::new("full");
    let mut o = opts(&data, &free_addr(), &free_addr());
    // A tiny database cap stands in for a full disk; count retention frees room again.
    o.extra = vec![
        "--max-data-bytes".into(),
        "400000".into(),
        "--retention-tasks".into(),
        "5".into(),
    ];
    let server = Server::start_with(o);
    let _agent = server.agent("a1", "t1");
    let c = server.client();
    // A task that keeps printing through the outage.
    let long = create_shell(
        &c,
        "a1",
        "for i in $(seq 1 40); do echo tick$i; sleep 0.1; done",
    );
    let big = "head -c 60000 /dev/zero | tr '\\0' x";
    let mut refused = None;
    for _ in 0..200 {
        let r = c.post(
            "/tasks/shell",
            &serde_json::json!({"agent_id": "a1", "cmd": big}).to_string(),
        );
        if r.status == 503 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.body);
        let id = r.json()["task_id"].as_str().expect("id").to_string();
        wait_final(&c, &id, Duration::from_secs(20));
    }
    let refused = refused.expect("the cap was reached");
    assert!(
        refused.body.contains("storage unavailable"),
        "{}",
        refused.body
    );
    let ready = c.get("/readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("storage unavailable"), "{}", ready.body);
    assert!(support::metric(&c, "nodelink_store_failures_total") >= 1.0);
    // The running task keeps streaming, and once retention has freed room the server is
    // ready again by itself and the task's whole output is there.
    wait_until("ready again", Duration::from_secs(60), || {
        c.get("/readyz").status == 200
    });
    let t = wait_final(&c, &long, Duration::from_secs(60));
    assert_eq!(t["status"], "completed", "{t}");
    let want: String = (1..=40).map(|i| format!("tick{i}\n")).collect();
    assert_eq!(t["stdout"], want);
    let id = create_shell(&c, "a1", "echo after");
    assert_eq!(
        wait_final(&c, &id, Duration::from_secs(20))["stdout"],
        "after\n"
    );
}

#[test]
fn a_damaged_database_is_a_one_line_error_and_stays_untouched() {
    let data = TempDir::new("damaged");
    let dir = data.join("data");
    std::fs::create_dir_all(&dir).expect("dir");
    let db = dir.join("nodelink.db");
    let junk = b"not a database at all".repeat(512);
    std::fs::write(&db, &junk).expect("write");
    let out = dev_server_on(&dir);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unreadable or damaged"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_eq!(std::fs::read(&db).expect("read"), junk);
}

#[test]
fn after_a_restart_a_task_the_agent_never_got_is_sent_again_and_one_it_lost_fails() {
    use nodelink::proto::task_request::Task;
    let data = TempDir::new("reconcile");
    let (http, grpc) = (free_addr(), free_addr());
    let mut server = Server::start_with(opts(&data, &http, &grpc));
    let c = server.client();
    let mut agent = FakeAgent::connect_acking(&server.grpc, "a1", "t1", "proc-1", "");
    let hello = agent.next_request();
    assert!(
        matches!(hello.task, Some(Task::ResponseAck(_))),
        "{hello:?}"
    );
    server.wait_agent("a1", true);
    // One task the agent will say it never got, one it started and then lost.
    let never = create_shell(&c, "a1", "echo never");
    let started = create_shell(&c, "a1", "echo started");
    for _ in 0..2 {
        let req = agent.next_request();
        assert!(matches!(req.task, Some(Task::ShellExecute(_))), "{req:?}");
    }
    let mut out = agent.output(&started, "half\n");
    out.seq = 1;
    agent.send(out, false);
    // The server acknowledges the response once it is durable (not merely applied).
    let ack = agent.next_request();
    match ack.task {
        Some(Task::ResponseAck(a)) => assert_eq!(a.upto, 1, "the acknowledgement"),
        other => panic!("expected the acknowledgement of response 1, got {other:?}"),
    }
    server.proc.signal(libc::SIGKILL);
    server.proc.child.wait().expect("reaped");
    drop(agent);

    let server = Server::start_with(opts(&data, &http, &grpc));
    let c = server.client();
    // The same process comes back knowing neither task.
    let mut agent = FakeAgent::connect_acking(&server.grpc, "a1", "t1", "proc-1", "");
    let hello = agent.next_request();
    match hello.task {
        Some(Task::ResponseAck(a)) => assert_eq!(a.upto, 1, "what is durable"),
        other => panic!("expected an acknowledgement first, got {other:?}"),
    }
    let again = agent.next_request();
    assert_eq!(
        again.task_id, never,
        "the task that never arrived is sent again"
    );
    assert!(matches!(again.task, Some(Task::ShellExecute(_))));
    let lost = wait_final(&c, &started, Duration::from_secs(10));
    assert_eq!(lost["status"], "failed", "{lost}");
    assert_eq!(
        lost["error"],
        "the agent no longer knew this task after the server restart"
    );
    let mut out = agent.output(&never, "never\n");
    out.seq = 2;
    agent.send(out, false);
    let mut exit = agent.exit(&never, 0);
    exit.seq = 3;
    agent.send(exit, false);
    let t = wait_final(&c, &never, Duration::from_secs(10));
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["stdout"], "never\n");
}

#[test]
fn a_global_stream_resumes_across_a_sigkill_with_every_event_once() {
    let data = TempDir::new("global");
    let (http, grpc) = (free_addr(), free_addr());
    let mut server = Server::start_with(opts(&data, &http, &grpc));
    let _agent = server.agent("a1", "t1");
    let c = server.client();
    let mut stream = c.sse("/stream", None);
    let cmd = "for i in $(seq 1 30); do echo line$i; sleep 0.05; done";
    let ids: Vec<String> = (0..4).map(|_| create_shell(&c, "a1", cmd)).collect();
    let mut seen = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(300) {
        if let Some(e) = stream.next_event(Duration::from_secs(5)) {
            seen.push(e);
        }
    }
    // The client goes away while the tasks go on: what it missed before the crash is only in
    // the store when it comes back.
    drop(stream);
    std::thread::sleep(Duration::from_millis(700));
    server.proc.signal(libc::SIGKILL);
    server.proc.child.wait().expect("reaped");
    let server = Server::start_with(opts(&data, &http, &grpc));
    let c = server.client();
    for id in &ids {
        wait_final(&c, id, Duration::from_secs(60));
    }
    let last = seen.iter().rev().find_map(|e| e.id.clone());
    let mut rest = c.sse("/stream", last.as_deref());
    let mut finals = 0;
    while finals < ids.len() {
        let e = rest
            .next_event(Duration::from_secs(20))
            .expect("the resumed stream goes on");
        if e.event == "status"
            && matches!(e.json()["status"].as_str(), Some("completed" | "failed"))
        {
            finals += 1;
        }
        seen.push(e);
    }
    let mut numbers = HashSet::new();
    for e in &seen {
        if let Some(i) = &e.id {
            assert!(numbers.insert(i.clone()), "event {i} delivered twice");
        }
    }
    for id in &ids {
        let text: String = seen
            .iter()
            .filter(|e| e.event == "response" && e.json()["task_id"] == id.as_str())
            .map(|e| e.json()["stdout"].as_str().unwrap_or_default().to_string())
            .collect();
        let want: String = (1..=30).map(|i| format!("line{i}\n")).collect();
        assert_eq!(text, want, "task {id} as the global stream told it");
    }
}
