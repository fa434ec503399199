//! Issue 2: a real server and real agents, end to end over REST and gRPC.

mod support;

use std::time::Duration;

use futures::executor::block_on;
use futures::StreamExt;
use grpcio::RpcStatusCode;
use nodelink::proto::task_request;
use support::fake_agent::{self, FakeAgent};
use support::{create_shell, wait_final, wait_until, Server};

#[test]
fn echo_and_exit_code_travel_from_rest_to_a_real_agent_and_back() {
    let server = Server::start();
    let _agent = server.agent("a1", "t1");
    let c = server.client();

    let id = create_shell(&c, "a1", "echo hi");
    let t = wait_final(&c, &id, Duration::from_secs(20));
    assert_eq!(t["status"], "completed");
    assert_eq!(t["stdout"], "hi\n");
    assert_eq!(t["exit_code"], 0);

    let id = create_shell(&c, "a1", "exit 3");
    let t = wait_final(&c, &id, Duration::from_secs(20));
    assert_eq!(t["status"], "completed", "a non-zero exit still completes");
    assert_eq!(t["exit_code"], 3);
    let log = server.proc.log();
    assert!(
        log.contains("Agent a1 connected"),
        "one line per connection:\n{log}"
    );
    assert!(
        log.contains(&format!("Created task {id} for agent a1")),
        "one line per task:\n{log}"
    );
}

#[test]
fn a_wrong_or_missing_token_is_refused_with_unauthenticated() {
    let server = Server::start();
    let client = fake_agent::client(&server.grpc);
    for token in [Some("wrong"), None] {
        let (_sink, mut rx) = client
            .stream_tasks_opt(fake_agent::credentials("a1", token))
            .expect("call starts");
        match block_on(rx.next()) {
            Some(Err(grpcio::Error::RpcFailure(status))) => {
                assert_eq!(
                    status.code(),
                    RpcStatusCode::UNAUTHENTICATED,
                    "token {token:?}"
                );
            }
            other => panic!("expected UNAUTHENTICATED, got {other:?}"),
        }
    }
    let agents = server.client().get("/agents").json();
    assert_eq!(
        agents["agents"],
        serde_json::json!([]),
        "refused agents are not registered"
    );
    assert!(server.proc.log().contains("Refused agent stream"));
}

/// An agent that speaks only the original protocol: the wire contract's fields, one
/// IN_PROGRESS response per output line, a final COMPLETED with the exit code.
#[test]
fn an_agent_speaking_the_original_protocol_works_unchanged() {
    let server = Server::start();
    let mut agent = FakeAgent::connect(&server.grpc, "a2", "t2");
    server.wait_agent("a2", true);
    let agent = std::thread::spawn(move || {
        let req = agent.next_request();
        let cmd = match req.task {
            Some(task_request::Task::ShellExecute(s)) => s.cmd,
            other => panic!("expected shell_execute, got {other:?}"),
        };
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&cmd)
            .output()
            .expect("runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        for line in text.split_inclusive('\n') {
            let resp = agent.output(&req.task_id, line);
            agent.send(resp, false);
        }
        let fin = agent.exit(&req.task_id, out.status.code().unwrap_or(-1));
        agent.send(fin, false);
        // Keep the stream open until the test has read the result.
        std::thread::sleep(Duration::from_millis(500));
    });
    let c = server.client();
    let id = create_shell(&c, "a2", "echo one; echo two; exit 4");
    let t = wait_final(&c, &id, Duration::from_secs(20));
    assert_eq!(t["stdout"], "one\ntwo\n");
    assert_eq!(t["exit_code"], 4);
    assert_eq!(t["status"], "completed");
    agent.join().expect("agent thread");
}

#[test]
fn a_second_connection_with_the_same_id_replaces_the_first() {
    let server = Server::start();
    let first = server.agent("a1", "t1");
    let _second = support::start_agent(&server.grpc, "a1", "t1", &[]);
    server
        .proc
        .wait_log("replacing its previous stream", Duration::from_secs(20));
    let c = server.client();
    let id = create_shell(&c, "a1", "echo via-second");
    let t = wait_final(&c, &id, Duration::from_secs(20));
    assert_eq!(t["stdout"], "via-second\n");
    wait_until("one a1 listed", Duration::from_secs(5), || {
        c.get("/agents").json()["agents"]
            .as_array()
            .map(|a| a.len())
            == Some(1)
    });
    drop(first);
}

#[test]
fn the_server_refuses_to_start_without_credentials() {
    let out = std::process::Command::new(support::binary())
        .args([
            "server",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .env_remove("NODELINK_API_TOKEN")
        .env_remove("NODELINK_AGENT_TOKENS")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--agent-tokens") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn a_real_agent_with_a_wrong_token_says_why_and_is_never_registered() {
    let server = Server::start();
    let agent = support::start_agent(&server.grpc, "a1", "wrong-token", &["--backoff-max", "1s"]);
    agent.wait_log("refused agent a1's credentials", Duration::from_secs(20));
    server.wait_agent("a1", false);
    assert!(
        !agent.log().contains("wrong-token"),
        "tokens never appear in logs"
    );
}

#[test]
fn a_token_file_readable_by_others_draws_a_warning_and_tokens_stay_out_of_logs() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    let dir = support::TempDir::new("perms");
    let file = dir.join("agents.json");
    std::fs::write(&file, r#"{"a1": "very-secret-agent-token"}"#).expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut child = std::process::Command::new(support::binary())
        .args([
            "server",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .args(["--api-token", "very-secret-api-token", "--in-memory"])
        .arg("--agent-tokens")
        .arg(&file)
        .env("RUST_LOG", "debug")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut log = String::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        log.push_str(&line);
        log.push('\n');
        if line.contains("nodelink listening") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        log.contains("readable by other users") && log.contains("chmod 600"),
        "{log}"
    );
    assert!(
        !log.contains("very-secret"),
        "no token in any log line:\n{log}"
    );
}
