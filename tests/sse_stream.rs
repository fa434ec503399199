//! Server-Sent Events as a client reads them with a plain HTTP client, from a real server fed
//! by real agents: live delivery line by line, the status events, the end of a task's stream,
//! resumption with `Last-Event-ID`, late joins, slow readers, the global stream, its `gap`
//! events and the errors of `/stream`.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fake_agent::FakeAgent;
use support::http::Event;
use support::{create_shell, wait_final, Client, Server, ServerOpts, SseStream};

const LIMIT: Duration = Duration::from_secs(30);
const FINAL_STATUSES: [&str; 4] = ["completed", "failed", "timeout", "cancelled"];

fn open(c: &Client, path: &str, last_event_id: Option<&str>) -> SseStream {
    let s = c.sse(path, last_event_id);
    assert_eq!(s.status, 200, "GET {path}");
    let ct = s
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Content-Type"))
        .map(|(_, v)| v.as_str());
    assert_eq!(ct, Some("text/event-stream"), "GET {path}");
    s
}

fn task_stream(c: &Client, id: &str, last_event_id: Option<&str>) -> SseStream {
    open(c, &format!("/stream?ref={id}"), last_event_id)
}

fn is_final_status(e: &Event) -> bool {
    e.event == "status" && FINAL_STATUSES.contains(&e.json()["status"].as_str().unwrap_or(""))
}

fn statuses(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "status")
        .map(|e| e.json()["status"].as_str().unwrap_or("").to_string())
        .collect()
}

fn id_of(e: &Event) -> u64 {
    e.id.as_deref()
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("event without a numeric id: {e:?}"))
}

/// Asserts the ids increase strictly and that each task stream id is the event's `seq`.
fn assert_ordered(events: &[Event], per_task: bool) {
    for pair in events.windows(2) {
        assert!(
            id_of(&pair[0]) < id_of(&pair[1]),
            "ids increase: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    if per_task {
        for e in events {
            assert_eq!(e.json()["seq"], id_of(e), "{e:?}");
        }
    }
}

/// Reads a task stream to its end, checking it ends right after the final status.
fn read_to_end(s: &mut SseStream) -> Vec<Event> {
    let events = s.collect_until_end(LIMIT);
    assert!(s.ended, "the stream ended");
    if let Some(pos) = events.iter().position(is_final_status) {
        assert_eq!(
            pos,
            events.len() - 1,
            "nothing follows the final status: {events:?}"
        );
    }
    events
}

// ---------------------------------------------------------------------------------------

#[test]
fn each_output_line_arrives_as_its_own_event_while_the_task_runs() {
    let server = Server::start();
    let _a1 = server.agent("a1", "t1");
    let c = server.client();
    let id = create_shell(&c, "a1", "for i in 1 2 3; do echo $i; sleep 1; done");
    let mut s = task_stream(&c, &id, None);

    let mut events = Vec::new();
    let mut first_response: Option<Instant> = None;
    let mut final_at = None;
    while let Some(e) = s.next_event(LIMIT) {
        if e.event == "response" && first_response.is_none() {
            first_response = Some(Instant::now());
            let status = c.get(&format!("/tasks/{id}")).json()["status"].clone();
            assert!(
                !FINAL_STATUSES.contains(&status.as_str().unwrap_or("")),
                "still running at the first line: {status}"
            );
        }
        if is_final_status(&e) {
            final_at = Some(Instant::now());
        }
        events.push(e);
    }
    let (first_response, final_at) = (
        first_response.expect("a response event"),
        final_at.expect("a final status"),
    );
    assert!(
        final_at - first_response >= Duration::from_millis(1500),
        "the first line came as printed, not with the end ({:?} before it)",
        final_at - first_response
    );
    assert!(
        is_final_status(events.last().expect("events")),
        "the stream ends after the final status"
    );
    assert_ordered(&events, true);

    assert_eq!(
        statuses(&events),
        ["created", "sent", "in_progress", "completed"]
    );
    let responses: Vec<Value> = events
        .iter()
        .filter(|e| e.event == "response")
        .map(Event::json)
        .collect();
    let lines: Vec<&str> = responses
        .iter()
        .filter_map(|r| r["stdout"].as_str())
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(lines, ["1\n", "2\n", "3\n"], "one event per line");
    for r in &responses[..responses.len() - 1] {
        assert_eq!(
            (r["status"].as_str(), r["is_final"].as_bool()),
            (Some("IN_PROGRESS"), Some(false)),
            "{r}"
        );
    }
    let last = responses.last().expect("a final response");
    assert_eq!(last["status"], "COMPLETED");
    assert_eq!(last["is_final"], true);
    assert_eq!(last["cancelled"], false);
    assert_eq!(last["exit_code"], 0);
    for e in &events {
        let d = e.json();
        assert_eq!(
            (d["task_id"].as_str(), d["agent_id"].as_str()),
            (Some(id.as_str()), Some("a1")),
            "{d}"
        );
        assert!(
            d["ts"]
                .as_str()
                .is_some_and(|t| humantime::parse_rfc3339(t).is_ok()),
            "{d}"
        );
    }
}

#[test]
fn a_late_join_replays_exactly_what_a_live_reader_saw_then_ends() {
    let server = Server::start();
    let _a1 = server.agent("a1", "t1");
    let c = server.client();
    let id = create_shell(
        &c,
        "a1",
        "echo out; sleep 0.2; echo err >&2; sleep 0.2; echo last; exit 3",
    );
    let live = read_to_end(&mut task_stream(&c, &id, None));
    let t = wait_final(&c, &id, LIMIT);
    assert_eq!(
        (t["exit_code"].as_i64(), t["stdout"].as_str()),
        (Some(3), Some("out\nlast\n"))
    );

    let late = read_to_end(&mut task_stream(&c, &id, None));
    assert_eq!(
        late, live,
        "a late join replays the same events: ids, names and data"
    );
    assert_eq!(
        statuses(&late),
        ["created", "sent", "in_progress", "completed"]
    );
    let stderr: String = late
        .iter()
        .filter(|e| e.event == "response")
        .filter_map(|e| e.json()["stderr"].as_str().map(str::to_string))
        .collect();
    assert_eq!(stderr, "err\n");
}

#[test]
fn last_event_id_resumes_with_exactly_the_events_after_it() {
    let server = Server::start();
    let _a1 = server.agent("a1", "t1");
    let c = server.client();
    let id = create_shell(&c, "a1", "echo a; sleep 0.2; echo b; sleep 0.2; echo c");
    wait_final(&c, &id, LIMIT);
    let full = read_to_end(&mut task_stream(&c, &id, None));
    assert!(full.len() >= 7, "{full:?}");

    for (i, e) in full.iter().enumerate() {
        let resumed = read_to_end(&mut task_stream(&c, &id, e.id.as_deref()));
        assert_eq!(resumed, full[i + 1..], "resuming after id {:?}", e.id);
    }
    assert_eq!(
        read_to_end(&mut task_stream(&c, &id, Some("0"))),
        full,
        "0 is before everything"
    );
    assert_eq!(
        read_to_end(&mut task_stream(&c, &id, Some("999999"))),
        [],
        "nothing after the end"
    );

    // Resuming a live stream: read part of it, reconnect, and the rest arrives exactly once.
    let id = create_shell(&c, "a1", "for i in 1 2 3 4; do echo $i; sleep 0.3; done");
    let mut first = task_stream(&c, &id, None);
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &Event| e.event == "response") {
        seen.push(first.next_event(LIMIT).expect("an event"));
    }
    drop(first);
    let last = seen.last().and_then(|e| e.id.clone());
    seen.extend(read_to_end(&mut task_stream(&c, &id, last.as_deref())));
    assert_ordered(&seen, true);
    assert!(is_final_status(seen.last().expect("events")));
    let stdout: String = seen
        .iter()
        .filter(|e| e.event == "response")
        .filter_map(|e| e.json()["stdout"].as_str().map(str::to_string))
        .collect();
    assert_eq!(stdout, "1\n2\n3\n4\n", "no line lost or repeated");
}

/// A stall of the fast reader behind the slow one would last until the slow reader's socket
/// write timed out (`--http-timeout`); the fast reader's longest wait between two events must
/// stay well below it. Comparing the longest wait rather than the total time keeps the bound
/// independent of how fast a loaded machine moves 12 MB.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn a_slow_reader_does_not_stall_a_fast_reader_of_the_same_task() {
    let server = Server::start_with(ServerOpts {
        extra: vec!["--http-timeout".into(), "30s".into()],
        ..Default::default()
    });
    let _a1 = server.agent("a1", "t1");
    let c = server.client();
    // Far more than the socket buffers of a client that does not read can absorb.
    let bytes = 12_000_000;
    let id = create_shell(
        &c,
        "a1",
        &format!("sleep 0.5; head -c {bytes} /dev/zero | tr '\\0' x; echo; echo end"),
    );
    let mut slow = task_stream(&c, &id, None);
    let mut fast = task_stream(&c, &id, None);

    let started = Instant::now();
    let mut fast_events = Vec::new();
    let mut longest_wait = Duration::ZERO;
    let mut last_at: Option<Instant> = None;
    while let Some(e) = fast.next_event(LIMIT) {
        let now = Instant::now();
        // From the first output on, events follow each other as fast as the task prints.
        if let Some(prev) = last_at {
            longest_wait = longest_wait.max(now - prev);
        }
        if e.event == "response" {
            last_at = Some(now);
        }
        fast_events.push(e);
    }
    let fast_took = started.elapsed();
    assert!(
        is_final_status(fast_events.last().expect("events")),
        "the fast reader got to the end ({} events in {fast_took:?}); server log:\n{}",
        fast_events.len(),
        server.proc.log()
    );
    let stdout: usize = fast_events
        .iter()
        .filter_map(|e| e.json()["stdout"].as_str().map(str::len))
        .sum();
    assert_eq!(
        stdout,
        bytes + "\nend\n".len(),
        "the fast reader got every byte"
    );
    assert!(
        longest_wait < WRITE_TIMEOUT / 2,
        "the fast reader waited {longest_wait:?} between two events (in {fast_took:?} in all): \
         it was held up by the slow reader"
    );

    // The slow reader, which has not read a byte so far, still gets everything: from its
    // stream, or by resuming if the server cut it off for falling behind.
    let mut slow_events = slow.collect_until_end(LIMIT);
    let mut resumes = 0;
    while !slow_events.last().is_some_and(is_final_status) {
        resumes += 1;
        assert!(
            resumes < 5,
            "the slow reader cannot catch up: {} events",
            slow_events.len()
        );
        let last = slow_events.last().and_then(|e| e.id.clone());
        slow_events.extend(read_to_end(&mut task_stream(&c, &id, last.as_deref())));
    }
    assert_ordered(&slow_events, true);
    let names = |v: &[Event]| {
        v.iter()
            .map(|e| (e.id.clone(), e.event.clone()))
            .collect::<Vec<_>>()
    };
    if resumes == 0 {
        assert_eq!(
            slow_events, fast_events,
            "the slow reader got the same stream"
        );
    } else {
        assert_eq!(
            names(&slow_events),
            names(&fast_events),
            "the slow reader got the same events"
        );
    }
}

#[test]
fn the_global_stream_carries_every_task_and_resumes_within_its_window() {
    let server = Server::start();
    let _a1 = server.agent("a1", "t1");
    let _a2 = server.agent("a2", "t2");
    let c = server.client();
    let mut global = open(&c, "/stream", None);

    let one = create_shell(&c, "a1", "echo one");
    let two = create_shell(&c, "a2", "echo two");
    let mut events = Vec::new();
    let mut done = HashSet::new();
    while done.len() < 2 {
        let e = global
            .next_event(LIMIT)
            .expect("the global stream stays open");
        if is_final_status(&e) {
            done.insert(e.json()["task_id"].as_str().unwrap_or("").to_string());
        }
        events.push(e);
    }
    assert_ordered(&events, false);
    for (id, agent, out) in [(&one, "a1", "one\n"), (&two, "a2", "two\n")] {
        let mine: Vec<Event> = events
            .iter()
            .filter(|e| e.json()["task_id"] == id.as_str())
            .cloned()
            .collect();
        assert!(
            mine.iter().all(|e| e.json()["agent_id"] == agent),
            "{mine:?}"
        );
        assert_eq!(
            statuses(&mine),
            ["created", "sent", "in_progress", "completed"],
            "task on {agent}"
        );
        let stdout: String = mine
            .iter()
            .filter_map(|e| e.json()["stdout"].as_str().map(str::to_string))
            .collect();
        assert_eq!(stdout, out);
    }

    // Resuming after any event replays exactly what followed it.
    for from in [0, events.len() / 2, events.len() - 2] {
        let mut resumed = open(&c, "/stream", events[from].id.as_deref());
        let rest: Vec<Event> = (from + 1..events.len())
            .map(|_| resumed.next_event(LIMIT).expect("replayed"))
            .collect();
        assert_eq!(
            rest,
            events[from + 1..],
            "resuming after id {:?}",
            events[from].id
        );
    }

    // Resuming after the newest event: nothing is replayed, new events follow.
    let newest = events.last().and_then(|e| e.id.clone());
    let mut resumed = open(&c, "/stream", newest.as_deref());
    let three = create_shell(&c, "a1", "true");
    let next = resumed.next_event(LIMIT).expect("a new event");
    assert_eq!(next.json()["task_id"], three.as_str());
    assert_eq!(next.json()["status"], "created");
    assert!(id_of(&next) > id_of(events.last().expect("events")));
    let also = global
        .next_event(LIMIT)
        .expect("the first stream sees it too");
    assert_eq!(also, next);
}

#[test]
fn streams_beyond_the_client_limit_are_503_until_one_ends() {
    let server = Server::start_with(ServerOpts {
        extra: vec!["--max-sse-clients".into(), "1".into()],
        ..Default::default()
    });
    let _a1 = server.agent("a1", "t1");
    let c = server.client();
    let id = create_shell(&c, "a1", "sleep 0.5; echo done");
    let mut first = task_stream(&c, &id, None);

    let r = c.get("/stream");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["details"]["limit"], 1);

    read_to_end(&mut first);
    drop(first);
    // The slot is released once the first stream has ended.
    let mut again = None;
    support::wait_until("a stream slot is free", LIMIT, || {
        let s = c.sse(&format!("/stream?ref={id}"), None);
        let ok = s.status == 200;
        again = ok.then_some(s);
        ok
    });
    let events = read_to_end(again.as_mut().expect("a stream"));
    assert!(is_final_status(events.last().expect("events")));
}

/// An EventSource reconnects to a restarted server with the last id the previous process
/// sent; the new process numbers its events from 1 again, and must not skip them as seen.
#[test]
fn a_global_stream_resumed_with_an_id_from_a_previous_server_gets_the_new_events() {
    let old = Server::start();
    let old_agent = old.agent("a1", "t1");
    let c = old.client();
    let mut global = open(&c, "/stream", None);
    create_shell(&c, "a1", "echo before");
    let mut last = None;
    while let Some(e) = global.next_event(LIMIT) {
        let done = is_final_status(&e);
        last = e.id;
        if done {
            break;
        }
    }
    drop((global, old_agent, old));

    let new = Server::start();
    let _a1 = new.agent("a1", "t1");
    let c = new.client();
    let mut resumed = open(&c, "/stream", last.as_deref());
    let id = create_shell(&c, "a1", "echo after");
    let first = resumed
        .next_event(LIMIT)
        .expect("the new server's events arrive");
    assert_eq!(first.json()["task_id"], id.as_str());
    assert_eq!(first.json()["status"], "created");
    assert_eq!(first.id.as_deref(), Some("1"));
}

#[test]
fn a_cancelled_or_timed_out_task_ends_its_stream_with_that_status() {
    let server = Server::start();
    let _a1 = server.agent("a1", "t1");
    let c = server.client();

    let id = create_shell(&c, "a1", "echo started; sleep 30");
    let mut s = task_stream(&c, &id, None);
    while s.next_event(LIMIT).is_some_and(|e| e.event != "response") {}
    assert_eq!(c.delete(&format!("/tasks/{id}")).status, 200);
    let rest = read_to_end(&mut s);
    let last = rest.last().expect("a final event").json();
    assert_eq!(
        (last["status"].as_str(), last["reason"].as_str()),
        (Some("cancelled"), Some("cancelled by user"))
    );

    let r = c.post(
        "/tasks/shell",
        &json!({"agent_id": "a1", "cmd": "sleep 30", "timeout": 1}).to_string(),
    );
    let id = r.json()["task_id"].as_str().expect("task_id").to_string();
    let events = read_to_end(&mut task_stream(&c, &id, None));
    let last = events.last().expect("a final event").json();
    assert_eq!(last["status"], "timeout");
    assert!(
        last["reason"]
            .as_str()
            .is_some_and(|r| r.contains("timed out")),
        "{last}"
    );
}

#[test]
fn stream_errors_are_404_unknown_task_401_no_token_400_bad_last_event_id() {
    let server = Server::start();
    let c = server.client();
    let check = |r: support::Response, status: u16, needle: &str| {
        assert_eq!(r.status, status, "{}", r.body);
        let v = r.json();
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(needle)),
            "{v}"
        );
    };
    for path in [
        "/stream?ref=6f1c1d2e-0000-4000-8000-000000000000",
        "/stream?ref=garbage",
        "/stream?ref=",
    ] {
        check(c.get(path), 404, "not found");
    }
    for token in [None, Some("wrong")] {
        for path in [
            "/stream",
            "/stream?ref=6f1c1d2e-0000-4000-8000-000000000000",
        ] {
            let r = Client::new(&server.http, token).get(path);
            assert_eq!(r.header("WWW-Authenticate"), Some("Bearer"));
            check(r, 401, "token");
        }
    }
    for bad in ["abc", "-1", "1.5", "12x"] {
        for path in [
            "/stream",
            "/stream?ref=6f1c1d2e-0000-4000-8000-000000000000",
        ] {
            check(
                c.request("GET", path, None, &[("Last-Event-ID", bad)]),
                400,
                "Last-Event-ID",
            );
        }
    }
    // The server still streams after all that.
    let mut s = open(&c, "/stream", None);
    let _a1 = server.agent("a1", "t1");
    let id = create_shell(&c, "a1", "true");
    assert_eq!(
        s.next_event(LIMIT).expect("an event").json()["task_id"],
        id.as_str()
    );
}

#[test]
fn a_last_event_id_beyond_a_running_task_still_gets_its_live_events_and_end() {
    let server = Server::start();
    let _a1 = server.agent("a1", "t1");
    let c = server.client();
    let id = create_shell(&c, "a1", "sleep 0.5; echo after");
    let events = read_to_end(&mut task_stream(&c, &id, Some("999999")));
    assert!(
        events
            .iter()
            .any(|e| e.event == "response" && e.json()["stdout"] == "after\n"),
        "live output still arrives: {events:?}"
    );
    assert!(
        is_final_status(events.last().expect("events")),
        "and the stream ends with the final status"
    );
}

/// Reads a global stream until every id up to `total` is accounted for: each one arrives as
/// an event, or is named by a `gap` event before anything after it.
fn account_for(mut next_event: impl FnMut() -> Option<Event>, total: u64) -> Vec<Event> {
    let mut next = 1;
    let mut out = Vec::new();
    while next <= total {
        let e = next_event().expect("the global stream stays open");
        if e.event == "gap" {
            let d = e.json();
            let to = d["to"].as_u64().expect("gap.to");
            assert_eq!(
                d["from"].as_u64(),
                Some(next),
                "the gap starts at the hole: {e:?}"
            );
            assert!(to >= next, "{e:?}");
            assert_eq!(d["missed"].as_u64(), Some(to - next + 1), "{e:?}");
            assert_eq!(id_of(&e), to, "a gap's id is its last missing id");
            next = to + 1;
        } else {
            assert_eq!(id_of(&e), next, "no id is skipped silently: {e:?}");
            next += 1;
        }
        out.push(e);
    }
    out
}

/// The hub loses events when its listener queue overflows (forced with a queue of one and a
/// burst of agent responses). A global-stream client is told of every missing id with a `gap`
/// event where the ids are missing, live and again when it resumes; a task stream resumes
/// from its task's complete history.
#[test]
fn a_global_stream_is_told_of_every_event_the_hub_lost() {
    let server = Server::start_with(ServerOpts {
        extra: vec!["--listener-queue".into(), "1".into()],
        ..Default::default()
    });
    let c = server.client();
    let mut agent = FakeAgent::connect(&server.grpc, "a1", "t1");
    server.wait_agent("a1", true);
    // Read the global stream as it comes, so that only the hub can fall behind.
    let mut global = open(&c, "/stream", None);
    let (tx, live) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        while let Some(e) = global.next_event(Duration::from_secs(300)) {
            if tx.send(e).is_err() {
                break;
            }
        }
    });
    let ids: Vec<String> = (0..4).map(|_| create_shell(&c, "a1", "x")).collect();
    let mut watched = task_stream(&c, &ids[0], None);
    for id in &ids {
        for i in 0..500 {
            let r = agent.output(id, &format!("{i}\n"));
            agent.send(r, true);
        }
        let r = agent.exit(id, 0);
        agent.send(r, false);
    }
    for id in &ids {
        wait_final(&c, id, LIMIT);
    }
    // These tasks' events are all the server has: their global ids run from 1 to their sum.
    let per_task: Vec<Vec<Event>> = ids
        .iter()
        .map(|id| read_to_end(&mut task_stream(&c, id, None)))
        .collect();
    let total: u64 = per_task.iter().map(|e| e.len() as u64).sum();

    let live = account_for(|| live.recv_timeout(LIMIT).ok(), total);
    let gaps = live.iter().filter(|e| e.event == "gap").count();
    assert!(gaps > 0, "the burst overflowed the hub's queue of one");
    let mut again = open(&c, "/stream", Some("0"));
    let resumed = account_for(|| again.next_event(LIMIT), total);
    assert_eq!(resumed, live, "a resuming client is told the same");

    // The task stream open during the burst was closed at the first hole and resumes from
    // the task's history: every event, none twice.
    let mut events = watched.collect_until_end(LIMIT);
    let mut resumes = 0;
    while !events.last().is_some_and(is_final_status) {
        resumes += 1;
        assert!(resumes < 10, "the task stream cannot catch up");
        let last = events.last().and_then(|e| e.id.clone());
        events.extend(read_to_end(&mut task_stream(&c, &ids[0], last.as_deref())));
    }
    assert_eq!(events, per_task[0], "the task stream is complete");
}

/// An agent repeating empty IN_PROGRESS responses adds nothing to its task's history.
#[test]
fn empty_responses_that_change_nothing_leave_no_event() {
    let server = Server::start();
    let c = server.client();
    let mut agent = FakeAgent::connect(&server.grpc, "a1", "t1");
    server.wait_agent("a1", true);
    let id = create_shell(&c, "a1", "x");
    for _ in 0..2000 {
        let r = agent.output(&id, "");
        agent.send(r, true);
    }
    let r = agent.output(&id, "out\n");
    agent.send(r, true);
    let r = agent.exit(&id, 0);
    agent.send(r, false);
    wait_final(&c, &id, LIMIT);
    let events = read_to_end(&mut task_stream(&c, &id, None));
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        ["status", "status", "response", "status", "response", "response", "status"],
        "created, sent, the first response and in_progress, the output, the final response, completed"
    );
}
