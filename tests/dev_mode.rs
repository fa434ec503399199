//! `nodelink server --dev`: the printed curl commands work as printed.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn dev_mode_prints_curl_commands_that_run_a_task_on_the_local_agent() {
    let mut child = Command::new(support::binary())
        .args([
            "server",
            "--dev",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("Ctrl-C stops")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!("dev mode printed no banner: {lines:?}");
            }
        }
    }
    let create = lines
        .iter()
        .find(|l| l.trim_start().starts_with("TASK="))
        .expect("create command")
        .trim()
        .to_string();
    let stream = lines
        .iter()
        .find(|l| l.trim_start().starts_with("curl -N"))
        .expect("stream command")
        .trim()
        .to_string();
    // Wait for the local agent, then run both commands exactly as printed.
    let token = lines
        .iter()
        .find_map(|l| l.strip_prefix("API token: "))
        .expect("token line")
        .trim()
        .to_string();
    let banner = lines
        .iter()
        .find(|l| l.contains("server on http://"))
        .expect("address line");
    let addr = banner
        .split("http://")
        .nth(1)
        .and_then(|s| s.split([',', ' ']).next())
        .expect("address")
        .to_string();
    let client = support::Client::new(&addr, Some(&token));
    support::wait_until("the local agent", Duration::from_secs(20), || {
        client.get("/agents").json()["agents"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["agent_id"] == "local"))
    });
    let script = format!("set -e; {create}; {stream}");
    let out = Command::new("timeout")
        .args(["30", "bash", "-c", &script])
        .output()
        .expect("bash runs");
    let _ = child.kill();
    let _ = child.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "commands failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("event: response"),
        "the stream shows the agent's responses:\n{text}"
    );
    assert!(
        text.contains("hello from nodelink"),
        "output arrives:\n{text}"
    );
    assert!(
        text.contains("\"exit_code\":0") && text.contains("\"status\":\"completed\""),
        "read back:\n{text}"
    );
}
