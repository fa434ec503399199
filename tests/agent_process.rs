//! Issue 5: a real agent running real processes, as a user sees it through the REST API and
//! the event stream: streaming, exit codes, output encoding, large and concurrent output,
//! environment and working directory, stdin, cancellation and timeouts of whole process
//! groups, and the concurrency limit.

mod support;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::tasks::{
    create_shell_with, first_line_pid, get_task, group_members, wait_stdout, StopOnDrop,
};
use support::{create_shell, wait_final, wait_until, Server, ServerOpts, TempDir};

/// How long any task of these tests may take to finish (generous: a loaded 2-core VM).
const FINISH: Duration = Duration::from_secs(30);

/// A server with agent a1 connected, started with `agent_flags`.
fn server_and_agent(agent_flags: &[&str]) -> (Server, StopOnDrop) {
    let server = Server::start();
    let agent = StopOnDrop(server.agent_with("a1", "t1", agent_flags));
    (server, agent)
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// The agent's log line about the end of cancelled task `id`.
fn cancel_log_line(agent: &StopOnDrop, id: &str) -> String {
    let needle = format!("Task {id} cancelled");
    let log = agent.0.wait_log(&needle, FINISH);
    log.lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn output_streams_over_sse_while_the_task_is_still_running() {
    let (server, _agent) = server_and_agent(&[]);
    let c = server.client();
    let id = create_shell(&c, "a1", "echo first; sleep 2; echo second");
    let mut stream = c.sse(&format!("/stream?ref={id}"), None);
    assert_eq!(stream.status, 200);
    let mut events = Vec::new();
    while let Some(e) = stream.next_event(FINISH) {
        events.push((Instant::now(), e));
    }

    let ids: Vec<u64> = events
        .iter()
        .map(|(_, e)| {
            e.id.as_deref()
                .unwrap_or_else(|| panic!("event without id: {e:?}"))
                .parse()
                .expect("numeric id")
        })
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids must increase: {ids:?}"
    );
    let first_at = events
        .iter()
        .find(|(_, e)| e.event == "response" && text(&e.json()["stdout"]).contains("first"))
        .map(|(at, _)| *at)
        .unwrap_or_else(|| panic!("no response event with `first`: {events:?}"));
    let (end_at, last) = events.last().expect("some events");
    assert_eq!(
        (last.event.as_str(), last.json()["status"].clone()),
        ("status", json!("completed")),
        "{events:?}"
    );
    assert!(
        end_at.duration_since(first_at) >= Duration::from_secs(1),
        "`first` arrived only {:?} before the end: output is not streamed",
        end_at.duration_since(first_at)
    );
    let stdout: String = events
        .iter()
        .filter(|(_, e)| e.event == "response")
        .map(|(_, e)| text(&e.json()["stdout"]).to_string())
        .collect();
    assert_eq!(stdout, "first\nsecond\n");
}

#[test]
fn exit_codes_signal_deaths_and_start_failures_are_reported() {
    let (server, _agent) = server_and_agent(&[]);
    let c = server.client();
    let zero = create_shell(&c, "a1", "exit 0");
    let three = create_shell(&c, "a1", "echo before; exit 3");
    let killed = create_shell(&c, "a1", "kill -9 $$");
    let missing = "/nonexistent/nodelink-test-dir";
    let no_dir = create_shell_with(&c, "a1", "echo never", json!({"working_dir": missing}));

    let t = wait_final(&c, &zero, FINISH);
    assert_eq!(
        (t["status"].clone(), t["exit_code"].clone()),
        (json!("completed"), json!(0)),
        "{t}"
    );

    let t = wait_final(&c, &three, FINISH);
    assert_eq!(
        (t["status"].clone(), t["exit_code"].clone()),
        (json!("completed"), json!(3)),
        "{t}"
    );
    assert_eq!(t["stdout"], "before\n");

    let t = wait_final(&c, &killed, FINISH);
    assert_eq!(
        (t["status"].clone(), t["exit_code"].clone()),
        (json!("completed"), json!(137)),
        "{t}"
    );
    assert!(
        text(&t["stderr"]).contains("SIGKILL"),
        "a signal death is named: {t}"
    );

    let t = wait_final(&c, &no_dir, FINISH);
    assert_eq!(t["status"], "failed", "{t}");
    let error = text(&t["error"]);
    assert!(
        error.contains(missing) && error.contains("does not exist"),
        "the error names the directory: {t}"
    );
    assert!(!text(&t["stdout"]).contains("never"), "{t}");
}

#[test]
fn invalid_utf8_becomes_replacement_characters() {
    let (server, _agent) = server_and_agent(&[]);
    let c = server.client();
    // Octal escapes work in every printf; \342\202 is a euro sign cut short by the end of output.
    let id = create_shell(
        &c,
        "a1",
        r"printf 'a\377b\n'; printf '\377' >&2; printf 'ok\342\202'",
    );
    let t = wait_final(&c, &id, FINISH);
    assert_eq!(t["stdout"], "a\u{FFFD}b\nok\u{FFFD}", "{t}");
    assert_eq!(t["stderr"], "\u{FFFD}", "{t}");
}

#[test]
fn multibyte_characters_survive_chunk_boundaries_intact() {
    let (server, _agent) = server_and_agent(&[]);
    let c = server.client();
    // 9- and 6-byte patterns, written 20 000 times each: chunk and read boundaries fall
    // inside characters at every possible offset.
    let id = create_shell(
        &c,
        "a1",
        "for i in $(seq 1 20000); do printf 'é€😀é€😀'; printf '😀é' >&2; done",
    );
    let t = wait_final(&c, &id, Duration::from_secs(60));
    assert_eq!(t["status"], "completed", "{}", t["error"]);
    let (stdout, stderr) = (text(&t["stdout"]), text(&t["stderr"]));
    assert!(
        stdout == "é€😀".repeat(40_000),
        "stdout differs ({} bytes, {} U+FFFD)",
        stdout.len(),
        stdout.matches('\u{FFFD}').count()
    );
    assert!(
        stderr == "😀é".repeat(20_000),
        "stderr differs ({} bytes, {} U+FFFD)",
        stderr.len(),
        stderr.matches('\u{FFFD}').count()
    );
}

#[test]
fn ten_megabytes_of_output_arrive_complete_and_in_order() {
    let server = Server::start_with(ServerOpts {
        extra: vec!["--max-output-bytes".into(), "16000000".into()],
        ..ServerOpts::default()
    });
    let _agent = StopOnDrop(server.agent("a1", "t1"));
    let c = server.client();
    let id = create_shell(&c, "a1", "seq 1 1500000");
    let t = wait_final(&c, &id, Duration::from_secs(180));
    assert_eq!(
        (t["status"].clone(), t["exit_code"].clone()),
        (json!("completed"), json!(0)),
        "{}",
        t["error"]
    );
    assert_eq!(t["stdout_truncated"], false);

    let mut expected = String::with_capacity(11_000_000);
    for i in 1..=1_500_000 {
        writeln!(expected, "{i}").expect("write to a String");
    }
    let got = text(&t["stdout"]);
    assert_eq!(got.len(), expected.len(), "byte count");
    let first_diff = got.bytes().zip(expected.bytes()).position(|(a, b)| a != b);
    assert_eq!(
        first_diff, None,
        "content differs from byte {first_diff:?} on"
    );
}

#[test]
fn env_and_working_dir_take_effect() {
    let (server, _agent) = server_and_agent(&[]);
    let c = server.client();
    let dir = TempDir::new("workdir");
    let real_dir = dir.0.canonicalize().expect("canonical temp dir");
    let id = create_shell_with(
        &c,
        "a1",
        r#"echo "$GREETING"; pwd; test -n "$PATH" && echo inherited-env-kept"#,
        json!({"env": {"GREETING": "hello world"}, "working_dir": real_dir}),
    );
    let t = wait_final(&c, &id, FINISH);
    assert_eq!(
        t["stdout"],
        format!("hello world\n{}\ninherited-env-kept\n", real_dir.display()),
        "{t}"
    );
    assert_eq!(t["exit_code"], 0);
}

#[test]
fn cancel_kills_the_whole_process_group() {
    let (server, agent) = server_and_agent(&[]);
    let c = server.client();
    let id = create_shell(&c, "a1", "echo $$; sleep 1000 & sleep 1000; wait");
    let pgid = first_line_pid(&c, &id, FINISH);
    wait_until("the shell and both sleeps", FINISH, || {
        group_members(pgid).len() >= 3
    });

    let r = c.delete(&format!("/tasks/{id}"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(get_task(&c, &id)["status"], "cancelled");
    wait_until(
        "every process of the task's group to be gone",
        Duration::from_secs(10),
        || group_members(pgid).is_empty(),
    );
    cancel_log_line(&agent, &id);
}

#[test]
fn a_task_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let (server, agent) = server_and_agent(&["--kill-grace", "300ms"]);
    let c = server.client();
    let id = create_shell(&c, "a1", "trap '' TERM; echo $$; sleep 1000");
    let pgid = first_line_pid(&c, &id, FINISH);
    wait_until("the task's processes", FINISH, || {
        !group_members(pgid).is_empty()
    });

    let cancelled_at = Instant::now();
    assert_eq!(c.delete(&format!("/tasks/{id}")).status, 200);
    wait_until(
        "every process of the task's group to be gone",
        Duration::from_secs(10),
        || group_members(pgid).is_empty(),
    );
    // The default grace is 5 s: a kill well before that shows --kill-grace took effect.
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(4),
        "killed only after {:?}",
        cancelled_at.elapsed()
    );
    let line = cancel_log_line(&agent, &id);
    assert!(line.contains("killed by SIGKILL"), "{line}");
}

#[test]
fn a_task_beyond_max_tasks_fails_at_once_with_agent_busy() {
    let (server, agent) = server_and_agent(&["--max-tasks", "2"]);
    let c = server.client();
    let running: Vec<String> = (0..2)
        .map(|_| create_shell(&c, "a1", "echo started; sleep 1000"))
        .collect();
    for id in &running {
        wait_stdout(&c, id, "started", FINISH);
    }

    let asked_at = Instant::now();
    let third = create_shell(&c, "a1", "echo never");
    let t = wait_final(&c, &third, FINISH);
    assert_eq!(t["status"], "failed", "{t}");
    assert!(text(&t["error"]).contains("agent busy"), "{t}");
    assert!(
        asked_at.elapsed() < Duration::from_secs(10),
        "refused only after {:?}",
        asked_at.elapsed()
    );
    for id in &running {
        assert_eq!(
            get_task(&c, id)["status"],
            "in_progress",
            "the running tasks are untouched"
        );
    }

    // The limit counts running tasks: once one ends, a new task runs again.
    assert_eq!(c.delete(&format!("/tasks/{}", running[0])).status, 200);
    cancel_log_line(&agent, &running[0]);
    let fourth = create_shell(&c, "a1", "echo runs");
    let t = wait_final(&c, &fourth, FINISH);
    assert_eq!(
        (t["status"].clone(), t["stdout"].clone()),
        (json!("completed"), json!("runs\n")),
        "{t}"
    );
}

#[test]
fn a_timed_out_task_has_its_processes_killed_on_the_agent() {
    let (server, agent) = server_and_agent(&[]);
    let c = server.client();
    let id = create_shell_with(&c, "a1", "echo $$; sleep 1000", json!({"timeout": 1}));
    let pgid = first_line_pid(&c, &id, FINISH);
    let t = wait_final(&c, &id, FINISH);
    assert_eq!(t["status"], "timeout", "{t}");
    wait_until(
        "every process of the timed-out task to be gone",
        Duration::from_secs(10),
        || group_members(pgid).is_empty(),
    );
    let line = cancel_log_line(&agent, &id);
    assert!(line.contains("timeout"), "{line}");
}

#[test]
fn a_task_reading_stdin_sees_end_of_input_at_once() {
    let (server, _agent) = server_and_agent(&[]);
    let c = server.client();
    let id = create_shell(&c, "a1", "cat; read -r line; echo \"read exit $?\"");
    let t = wait_final(&c, &id, FINISH);
    assert_eq!(t["stdout"], "read exit 1\n", "{t}");
}

#[test]
fn a_background_process_holding_the_output_open_does_not_hold_the_task() {
    let (server, _agent) = server_and_agent(&[]);
    let c = server.client();
    let started = Instant::now();
    let id = create_shell(&c, "a1", "(sleep 8; echo late) & echo main-done");
    let t = wait_final(&c, &id, FINISH);
    assert_eq!(
        (t["status"].clone(), t["stdout"].clone()),
        (json!("completed"), json!("main-done\n")),
        "{t}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the task ended only after {:?}",
        started.elapsed()
    );
}

#[test]
fn concurrent_tasks_each_get_exactly_their_own_output() {
    let (server, _agent) = server_and_agent(&[]);
    let c = server.client();
    let ids: Vec<(usize, String)> = (0..16)
        .map(|n| {
            let extra = json!({"env": {"TAG": format!("task{n}")}});
            (
                n,
                create_shell_with(
                    &c,
                    "a1",
                    "for i in $(seq 1 2000); do echo \"$TAG-$i\"; done",
                    extra,
                ),
            )
        })
        .collect();
    for (n, id) in &ids {
        let t = wait_final(&c, id, Duration::from_secs(60));
        let expected: String = (1..=2000).map(|i| format!("task{n}-{i}\n")).collect();
        assert!(
            t["stdout"] == expected.as_str(),
            "task {n}: status {}, {} bytes of output",
            t["status"],
            text(&t["stdout"]).len()
        );
    }
}

#[test]
fn a_task_flooding_its_output_can_still_be_cancelled() {
    let (server, agent) = server_and_agent(&[]);
    let c = server.client();
    // The server keeps only the last 1 MiB of output, so the pid goes to a file.
    let dir = TempDir::new("flood");
    let pid_file = dir.join("pid");
    let cmd = format!("echo $$ > '{}'; yes flood", pid_file.display());
    let id = create_shell(&c, "a1", &cmd);
    wait_stdout(&c, &id, "flood\nflood\n", FINISH);
    let pid = std::fs::read_to_string(&pid_file).expect("pid file");
    let pgid: i32 = pid.trim().parse().expect("a pid");

    assert_eq!(c.delete(&format!("/tasks/{id}")).status, 200);
    wait_until(
        "every process of the flooding task to be gone",
        FINISH,
        || group_members(pgid).is_empty(),
    );
    cancel_log_line(&agent, &id);
}
