//! Agents flooding the server with responses, as a user sees it: while the response channel
//! is full only the flooding streams are paused, so another agent's tasks keep their latency,
//! and not one flooded response is lost.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use support::fake_agent::FakeAgent;
use support::tasks::get_task;
use support::{create_shell, metric, wait_final, wait_until, Client, Server, ServerOpts};

const FLOODERS: usize = 4;
/// Bytes per flooded response, newline included.
const CHUNK: usize = 512;
/// Most responses per flooding agent: everything it sends stays within `--max-output-bytes`.
const MAX_CHUNKS: usize = 16_000;
const RETAINED: usize = CHUNK * MAX_CHUNKS;
const VICTIM_TASKS: usize = 5;
const FINISH: Duration = Duration::from_secs(60);

/// Chunk `seq`: its number, padded to `CHUNK` bytes.
fn chunk(seq: usize) -> String {
    let mut s = format!("{seq:010}:");
    s.push_str(&"x".repeat(CHUNK - s.len() - 1));
    s.push('\n');
    s
}

/// A flooding agent: answers its one task with chunks as fast as flow control lets it until
/// `stop` (or `MAX_CHUNKS`), then with its exit. Returns the task id and the chunks sent.
fn flood(
    server: &Server,
    c: &Client,
    agent: &str,
    token: &str,
    stop: Arc<AtomicBool>,
) -> JoinHandle<(String, usize)> {
    let mut fake = FakeAgent::connect(&server.grpc, agent, token);
    server.wait_agent(agent, true);
    let id = create_shell(c, agent, "flood");
    std::thread::spawn(move || {
        let req = fake.next_request();
        assert_eq!(req.task_id, id);
        let mut sent = 0;
        while sent < MAX_CHUNKS && !stop.load(Ordering::Relaxed) {
            let resp = fake.output(&id, &chunk(sent));
            fake.send(resp, true);
            sent += 1;
        }
        let exit = fake.exit(&id, 0);
        fake.send(exit, false);
        (id, sent)
    })
}

fn time_of(t: &Value, field: &str) -> SystemTime {
    humantime::parse_rfc3339(t[field].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{field} of {t}: {e}"))
}

/// Creation to completion of `VICTIM_TASKS` tasks of `agent`, one after the other, as the
/// server recorded them; the slowest.
fn slowest_task(c: &Client, agent: &str) -> Duration {
    (0..VICTIM_TASKS)
        .map(|_| {
            let id = create_shell(c, agent, "echo ok");
            let t = wait_final(c, &id, FINISH);
            assert_eq!(
                (t["status"].as_str(), t["stdout"].as_str()),
                (Some("completed"), Some("ok\n")),
                "{t}"
            );
            time_of(&t, "finished_at")
                .duration_since(time_of(&t, "created_at"))
                .unwrap_or_default()
        })
        .max()
        .unwrap_or_default()
}

#[test]
fn a_flooding_agent_does_not_slow_the_other_agents_and_loses_nothing() {
    let mut agents = vec![("victim".to_string(), "tv".to_string())];
    agents.extend((0..FLOODERS).map(|i| (format!("flood{i}"), format!("tf{i}"))));
    let server = Server::start_with(ServerOpts {
        agents,
        extra: vec![
            "--response-channel".into(),
            "1".into(),
            "--max-output-bytes".into(),
            RETAINED.to_string(),
        ],
        ..ServerOpts::default()
    });
    let _victim = support::tasks::StopOnDrop(server.agent("victim", "tv"));
    let c = server.client();
    let quiet = slowest_task(&c, "victim");

    let stop = Arc::new(AtomicBool::new(false));
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|i| {
            flood(
                &server,
                &c,
                &format!("flood{i}"),
                &format!("tf{i}"),
                stop.clone(),
            )
        })
        .collect();
    wait_until("the flood fills the response channel", FINISH, || {
        metric(&c, "nodelink_response_backpressure_waits_total") > 100.0
    });
    let started = Instant::now();
    let flooded = slowest_task(&c, "victim");
    let waits_during = metric(&c, "nodelink_response_backpressure_waits_total");
    stop.store(true, Ordering::Relaxed);
    let floods: Vec<(String, usize)> = flooders
        .into_iter()
        .map(|f| f.join().expect("flooder"))
        .collect();
    eprintln!(
        "victim's slowest task: {quiet:?} quiet, {flooded:?} under the flood \
         (measured over {:?}, {waits_during} backpressure waits; chunks per flooder: {:?})",
        started.elapsed(),
        floods.iter().map(|f| f.1).collect::<Vec<_>>()
    );
    assert!(
        floods.iter().all(|(_, sent)| *sent < MAX_CHUNKS),
        "a flood ended before the victim's tasks did; the measurement saw no flood"
    );

    // Nothing flooded is lost: every chunk is retained, in order.
    for (id, sent) in &floods {
        let t = wait_final(&c, id, FINISH);
        assert_eq!(t["status"], "completed", "{id}");
        let t = get_task(&c, id);
        let stdout = t["stdout"].as_str().unwrap_or_default();
        let want: String = (0..*sent).map(chunk).collect();
        assert!(
            stdout == want,
            "task {id}: {} bytes retained, {} sent",
            stdout.len(),
            want.len()
        );
    }

    // The victim keeps its latency: the server-side time of a trivial task, which on a
    // quiet server is milliseconds. A stalled completion-queue thread holds the victim's
    // requests and responses behind every flooded response on its thread.
    let bound = (quiet * 10).max(Duration::from_millis(500));
    assert!(
        flooded <= bound,
        "the victim's slowest task took {flooded:?} under the flood ({quiet:?} quiet; bound {bound:?})"
    );
}
