//! `/metrics`, `/healthz` and `/readyz` as an operator's scraper and probes see them.

mod support;

use std::time::Duration;

use support::{create_shell, wait_final, Client, Server};

/// The value of one sample line (`name{labels} value`), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn scrape(c: &Client) -> String {
    let r = c.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("Content-Type")
        .is_some_and(|t| t.starts_with("application/openmetrics-text")));
    r.body
}

#[test]
fn metrics_expose_every_listed_series_and_the_counters_move() {
    let server = Server::start();
    let _agent = server.agent("a1", "t1");
    let c = server.client();
    let before = scrape(&c);
    for series in [
        "nodelink_tasks_created_total{type=\"shell\"}",
        "nodelink_tasks_created_total{type=\"docker\"}",
        "nodelink_tasks_finished_total{status=\"completed\"}",
        "nodelink_tasks_finished_total{status=\"cancelled\"}",
        "nodelink_task_duration_seconds_count",
        "nodelink_response_channel_depth",
        "nodelink_response_channel_capacity",
        "nodelink_response_backpressure_waits_total",
        "nodelink_response_backpressure_wait_seconds_total",
        "nodelink_cleanup_runs_total",
        "nodelink_cleanup_removed_tasks_total",
        "nodelink_agents_connected",
        "nodelink_sse_clients",
        "nodelink_agent_responses_total",
        "nodelink_agent_responses_ignored_total{reason=\"late\"}",
        "nodelink_agent_responses_ignored_total{reason=\"unknown\"}",
        "nodelink_http_connections",
        "nodelink_limit_hits_total{limit=\"body_bytes\"}",
        "nodelink_limit_hits_total{limit=\"header_bytes\"}",
        "nodelink_limit_hits_total{limit=\"request_line_bytes\"}",
        "nodelink_limit_hits_total{limit=\"connections\"}",
        "nodelink_limit_hits_total{limit=\"sse_clients\"}",
        "nodelink_limit_hits_total{limit=\"agents\"}",
        "nodelink_limit_hits_total{limit=\"tasks\"}",
        "nodelink_limit_hits_total{limit=\"output_bytes\"}",
    ] {
        assert!(
            before.lines().any(|l| l.starts_with(series)),
            "{series} missing from:\n{before}"
        );
    }
    assert_eq!(sample(&before, "nodelink_response_channel_capacity"), 100.0);
    assert_eq!(sample(&before, "nodelink_agents_connected"), 1.0);

    let done = create_shell(&c, "a1", "echo hi");
    wait_final(&c, &done, Duration::from_secs(20));
    let cancelled = create_shell(&c, "a1", "sleep 30");
    assert_eq!(c.delete(&format!("/tasks/{cancelled}")).status, 200);
    assert_eq!(
        c.get("/tasks/00000000-0000-0000-0000-000000000000").status,
        404
    );
    let stream = c.sse("/stream", None);
    assert_eq!(stream.status, 200);
    // The cancelled task's agent still answers after the cancel: a late response.
    support::wait_until(
        "the late cancel acknowledgement",
        Duration::from_secs(20),
        || {
            sample(
                &scrape(&c),
                "nodelink_agent_responses_ignored_total{reason=\"late\"}",
            ) >= 1.0
        },
    );

    let after = scrape(&c);
    let moved = |series: &str, by: f64| {
        let (a, b) = (sample(&before, series), sample(&after, series));
        assert!(b - a >= by, "{series}: {a} -> {b}");
    };
    moved("nodelink_tasks_created_total{type=\"shell\"}", 2.0);
    moved("nodelink_tasks_finished_total{status=\"completed\"}", 1.0);
    moved("nodelink_tasks_finished_total{status=\"cancelled\"}", 1.0);
    moved("nodelink_task_duration_seconds_count", 2.0);
    moved("nodelink_agent_responses_total", 2.0);
    moved(
        "nodelink_http_requests_total{route=\"/tasks/shell\",code=\"200\"}",
        2.0,
    );
    moved(
        "nodelink_http_requests_total{route=\"/tasks/{id}\",code=\"404\"}",
        1.0,
    );
    moved(
        "nodelink_http_request_duration_seconds_count{route=\"/tasks/shell\"}",
        2.0,
    );
    assert_eq!(sample(&after, "nodelink_sse_clients"), 1.0);
    assert_eq!(sample(&after, "nodelink_tasks"), 2.0);
}

#[test]
fn probes_need_no_token_and_metrics_do() {
    let server = Server::start();
    let anonymous = Client::new(&server.http, None);
    assert_eq!(anonymous.get("/healthz").status, 200);
    let ready = anonymous.get("/readyz");
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");
    assert_eq!(anonymous.get("/metrics").status, 401);
}
