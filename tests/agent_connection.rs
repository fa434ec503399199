//! The agent's connection to the server, as a user sees it: a cut link loses no
//! output (what cannot be sent waits in the agent's bounded outbox, pausing the task when it
//! is full), a silently dead link is noticed, a restarted server is found again without
//! help, and SIGTERM stops the agent cleanly after reporting its running tasks.

mod support;

use std::time::{Duration, Instant};

use support::proxy::Proxy;
use support::tasks::{first_line_pid, get_task, group_members, wait_stdout, StopOnDrop};
use support::{
    create_shell, free_addr, start_agent, wait_final, wait_until, Server, ServerOpts, TempDir,
};

const FINISH: Duration = Duration::from_secs(30);

/// Agent `a1` connected to `server` through a proxy the test can cut, reconnecting within
/// 2 s; `extra` are more agent flags. Returns once the server lists the agent.
fn agent_behind_proxy(server: &Server, extra: &[&str]) -> (Proxy, StopOnDrop) {
    let proxy = Proxy::start(&server.grpc);
    let args: Vec<&str> = ["--backoff-max", "2s"]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    let agent = StopOnDrop(start_agent(proxy.addr(), "a1", "t1", &args));
    server.wait_agent("a1", true);
    (proxy, agent)
}

#[test]
fn a_task_survives_a_cut_connection_and_loses_no_output() {
    let server = Server::start();
    let (proxy, agent) = agent_behind_proxy(&server, &[]);
    let c = server.client();
    let dir = TempDir::new("cut");
    let (go, printed) = (dir.join("go"), dir.join("printed"));
    // Two lines, then (once the test says so) four more and a marker file.
    let cmd = format!(
        "echo line1; echo line2; while [ ! -e {go} ]; do sleep 0.05; done; \
         for i in 3 4 5 6; do echo line$i; done; touch {printed}",
        go = go.display(),
        printed = printed.display()
    );
    let id = create_shell(&c, "a1", &cmd);
    wait_stdout(&c, &id, "line2\n", FINISH);

    proxy.set_accepting(false);
    proxy.cut();
    agent.0.wait_log("Lost the server", FINISH);
    // The task goes on to its end; what it prints waits in the agent until the link is back.
    std::fs::write(&go, "").expect("go file");
    wait_until("the task's last lines", FINISH, || printed.exists());
    let during = get_task(&c, &id);
    assert_eq!(during["status"], "in_progress", "{during}");
    assert_eq!(
        during["stdout"], "line1\nline2\n",
        "nothing crossed the cut link: {during}"
    );

    proxy.set_accepting(true);
    let t = wait_final(&c, &id, FINISH);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["stdout"], "line1\nline2\nline3\nline4\nline5\nline6\n");
    assert_eq!(t["exit_code"], 0);
    assert!(
        proxy.forwarded() >= 2,
        "the agent came back through the proxy"
    );
}

#[test]
fn output_beyond_the_outbox_pauses_the_task_instead_of_being_dropped() {
    let server = Server::start_with(ServerOpts {
        extra: vec!["--max-output-bytes".into(), "4000000".into()],
        ..ServerOpts::default()
    });
    let (proxy, agent) = agent_behind_proxy(&server, &["--outbox-bytes", "65536"]);
    let c = server.client();
    let id = create_shell(&c, "a1", "echo $$; sleep 2; seq 1 300000");
    let pgid = first_line_pid(&c, &id, FINISH);

    proxy.set_accepting(false);
    proxy.cut();
    agent.0.wait_log("Lost the server", FINISH);
    // 2 MB of output against a 64 KiB outbox: `seq` (a few ms of work) must be held back.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !group_members(pgid).is_empty(),
        "the task ran to its end while its output had nowhere to go"
    );

    proxy.set_accepting(true);
    let t = wait_final(&c, &id, Duration::from_secs(60));
    assert_eq!(t["status"], "completed", "{t}");
    let expected: String = (1..=300_000).map(|i| format!("{i}\n")).collect();
    let stdout = t["stdout"].as_str().unwrap_or_default();
    let seq_part = stdout
        .split_once('\n')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    assert!(
        seq_part == expected,
        "output differs: {} bytes instead of {}",
        seq_part.len(),
        expected.len()
    );
}

#[test]
fn a_silently_dead_link_is_noticed_even_after_a_long_quiet_time() {
    let server = Server::start();
    let (proxy, agent) = agent_behind_proxy(&server, &[]);
    // Quiet for longer than a few of the agent's keepalive pings (every 10 s); then the link
    // dies without a word: no FIN, no RST, just nothing.
    std::thread::sleep(Duration::from_secs(25));
    proxy.blackhole();
    let dead_at = Instant::now();
    // A keepalive ping within 10 s, unanswered for 10 s; plus slack for a loaded machine.
    let log = agent.0.wait_log("Lost the server", Duration::from_secs(35));
    let why = log
        .lines()
        .find(|l| l.contains("Lost the server"))
        .unwrap_or_default();
    eprintln!(
        "the agent noticed the dead link after {:?}: {why}",
        dead_at.elapsed()
    );

    wait_until("the agent's new stream", FINISH, || {
        server.proc.log().matches("Agent a1 connected").count() >= 2
    });
    let c = server.client();
    let id = create_shell(&c, "a1", "echo still-here");
    let t = wait_final(&c, &id, FINISH);
    assert_eq!(t["stdout"], "still-here\n", "{t}");
}

#[test]
fn the_agent_finds_a_restarted_server_by_itself() {
    let opts = {
        let grpc_addr = free_addr();
        move || ServerOpts {
            grpc_addr: grpc_addr.clone(),
            ..ServerOpts::default()
        }
    };
    let first = Server::start_with(opts());
    let agent = StopOnDrop(first.agent_with("a1", "t1", &["--backoff-max", "2s"]));
    first.proc.signal(libc::SIGKILL);
    drop(first);
    agent.0.wait_log("Lost the server", FINISH);
    agent.0.wait_log("Cannot reach the server", FINISH);

    let second = Server::start_with(opts());
    let logged_before_up = agent.0.log().len();
    second.wait_agent("a1", true);
    // The agent retries on its own schedule: every pause within backoff-max (2 s) plus its
    // 20 % jitter, and once the server is up at most one attempt (already under way) fails.
    let log = agent.0.log();
    for line in log.lines().filter(|l| l.contains("Reconnecting in ")) {
        let secs: f64 = line
            .split("Reconnecting in ")
            .nth(1)
            .and_then(|rest| rest.split('s').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unreadable retry line: {line}"));
        assert!(secs <= 2.4 + 0.05, "paused {secs}s: {line}");
    }
    let failed_after_up = log
        .get(logged_before_up..)
        .unwrap_or_default()
        .matches("Cannot reach the server")
        .count();
    assert!(
        failed_after_up <= 1,
        "{failed_after_up} attempts failed after the server was up:\n{log}"
    );
    let c = second.client();
    let id = create_shell(&c, "a1", "echo back");
    let t = wait_final(&c, &id, FINISH);
    assert_eq!(
        (t["status"].as_str(), t["stdout"].as_str()),
        (Some("completed"), Some("back\n")),
        "{t}"
    );
}

#[test]
fn sigterm_cancels_running_tasks_reports_them_and_exits_zero() {
    let server = Server::start();
    let mut agent = server.agent_with("a1", "t1", &["--kill-grace", "1s"]);
    let c = server.client();
    let id = create_shell(&c, "a1", "echo $$; sleep 1000");
    let pgid = first_line_pid(&c, &id, FINISH);

    agent.signal(libc::SIGTERM);
    let code = agent.wait_exit(Duration::from_secs(1 + 5));
    assert_eq!(code, Some(0), "agent log:\n{}", agent.log());
    // Reported by the agent before it left (were it lost, the task would fail after the
    // server's 15 s disconnect grace).
    let t = wait_final(&c, &id, Duration::from_secs(10));
    assert_eq!(t["status"], "cancelled", "{t}");
    assert!(
        t["error"]
            .as_str()
            .unwrap_or_default()
            .contains("shutting down"),
        "{t}"
    );
    assert!(
        group_members(pgid).is_empty(),
        "the task's processes are gone"
    );
}
