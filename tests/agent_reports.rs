//! Responses an agent has no business sending, as an operator sees them: a report on another
//! agent's task is counted apart from unknown ids (a security signal), and agent-supplied
//! task ids reach the log only truncated and escaped.

mod support;

use std::time::Duration;

use support::fake_agent::FakeAgent;
use support::tasks::get_task;
use support::{create_shell, metric, wait_until, Server};

const FINISH: Duration = Duration::from_secs(30);

#[test]
fn a_report_on_another_agents_task_is_counted_as_foreign_and_ignored() {
    let server = Server::start();
    let mut owner = FakeAgent::connect(&server.grpc, "a1", "t1");
    let mut intruder = FakeAgent::connect(&server.grpc, "a2", "t2");
    server.wait_agent("a1", true);
    server.wait_agent("a2", true);
    let c = server.client();
    let id = create_shell(&c, "a1", "true");
    assert_eq!(owner.next_request().task_id, id);

    let forged = intruder.exit(&id, 0);
    intruder.send(forged, false);
    wait_until("the foreign report is counted", FINISH, || {
        metric(&c, "nodelink_foreign_reports_total") == 1.0
    });
    assert_eq!(
        metric(
            &c,
            "nodelink_agent_responses_ignored_total{reason=\"unknown\"}"
        ),
        0.0,
        "not an unknown task"
    );
    assert_eq!(get_task(&c, &id)["status"], "sent", "not applied");
    server.proc.wait_log(
        &format!("Agent a2 reported on task {id} of agent a1"),
        FINISH,
    );
}

#[test]
fn agent_supplied_task_ids_are_logged_truncated_and_escaped() {
    let server = Server::start();
    let mut agent = FakeAgent::connect(&server.grpc, "a1", "t1");
    server.wait_agent("a1", true);
    let c = server.client();
    // A long id with a line break that would forge a log line if written out as is.
    let forged_line = "INFO Task 1 completed";
    let id = format!("{}\n{forged_line}", "x".repeat(100_000));
    let resp = agent.output(&id, "hi");
    agent.send(resp, false);
    wait_until("the unknown report is counted", FINISH, || {
        metric(
            &c,
            "nodelink_agent_responses_ignored_total{reason=\"unknown\"}",
        ) == 1.0
    });
    let log = server
        .proc
        .wait_log("not found for response from agent a1", FINISH);
    let line = log
        .lines()
        .find(|l| l.contains("not found for response from agent a1"))
        .unwrap_or_default();
    assert!(line.len() < 300, "{} bytes logged: {line:.300}", line.len());
    assert!(
        line.contains(&format!("\"{}\"…", "x".repeat(64))),
        "a quoted 64-character prefix: {line:.300}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with(forged_line)),
        "the id forged a log line"
    );
}
