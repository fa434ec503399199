//! Agents flooding the server with responses, as a user sees it: while the response channel
//! is full only the flooding streams are paused, so another agent still gets its tasks at
//! once, and not one flooded response is lost.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use futures::StreamExt;
use nodelink::proto::task_request;
use support::fake_agent::FakeAgent;
use support::tasks::get_task;
use support::{create_shell, metric, wait_final, wait_until, Client, Server, ServerOpts};

const FLOODERS: usize = 8;
/// Bytes per flooded response: large, so the response thread needs a while for each and the
/// channel stays full.
const CHUNK: usize = 1 << 20;
/// Most responses per flooding agent, so a flood cannot outlast a broken test.
const MAX_CHUNKS: usize = 2_000;
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
/// `stop` (or `MAX_CHUNKS`), then with its exit. Returns the task id, the chunks sent, and
/// the agent, whose stream must stay open until the server has read everything.
fn flood(
    server: &Server,
    c: &Client,
    agent: &str,
    token: &str,
    stop: Arc<AtomicBool>,
) -> JoinHandle<(String, usize, FakeAgent)> {
    let mut fake = FakeAgent::connect(&server.grpc, agent, token);
    server.wait_agent(agent, true);
    let id = create_shell(c, agent, "flood");
    std::thread::spawn(move || {
        let req = fake.next_request();
        assert_eq!(req.task_id, id);
        let mut sent = 0;
        while sent < MAX_CHUNKS && !stop.load(Ordering::Relaxed) {
            let resp = fake.output(&id, &chunk(sent));
            fake.send(resp, false);
            sent += 1;
        }
        let exit = fake.exit(&id, 0);
        fake.send(exit, false);
        (id, sent, fake)
    })
}

/// The other agent: takes every run request at once, notes when it arrived, and answers it.
fn victim(mut fake: FakeAgent) -> Receiver<(String, Instant)> {
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || loop {
        // The stream ends with the server at the end of the test.
        let Some(Ok(req)) = futures::executor::block_on(fake.requests.next()) else {
            return;
        };
        let arrived = Instant::now();
        if let Some(task_request::Task::ShellExecute(_)) = req.task {
            let exit = fake.exit(&req.task_id, 0);
            fake.send(exit, false);
            if tx.send((req.task_id, arrived)).is_err() {
                return;
            }
        }
    });
    rx
}

/// From `POST /tasks/shell` to the run request reaching the victim, for `VICTIM_TASKS` tasks
/// one after the other; the slowest.
fn slowest_dispatch(c: &Client, arrivals: &Receiver<(String, Instant)>) -> Duration {
    (0..VICTIM_TASKS)
        .map(|_| {
            let posted = Instant::now();
            let id = create_shell(c, "victim", "echo ok");
            let (got, arrived) = arrivals
                .recv_timeout(FINISH)
                .expect("the victim gets its task");
            assert_eq!(got, id);
            arrived.duration_since(posted)
        })
        .max()
        .unwrap_or_default()
}

#[test]
fn a_flooding_agent_does_not_hold_up_the_other_agents_and_loses_nothing() {
    let mut agents = vec![("victim".to_string(), "tv".to_string())];
    agents.extend((0..FLOODERS).map(|i| (format!("flood{i}"), format!("tf{i}"))));
    let server = Server::start_with(ServerOpts {
        agents,
        extra: vec![
            "--response-channel".into(),
            "1".into(),
            "--max-output-bytes".into(),
            CHUNK.to_string(),
            "--max-grpc-message-bytes".into(),
            (2 * CHUNK).to_string(),
        ],
        ..ServerOpts::default()
    });
    let c = server.client();
    let arrivals = victim(FakeAgent::connect(&server.grpc, "victim", "tv"));
    server.wait_agent("victim", true);
    let quiet = slowest_dispatch(&c, &arrivals);

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
        metric(&c, "nodelink_response_backpressure_waits_total") > 20.0
    });
    let flooded = slowest_dispatch(&c, &arrivals);
    stop.store(true, Ordering::Relaxed);
    let floods: Vec<(String, usize, FakeAgent)> = flooders
        .into_iter()
        .map(|f| f.join().expect("flooder"))
        .collect();
    eprintln!(
        "victim's slowest dispatch: {quiet:?} quiet, {flooded:?} under the flood \
         (chunks per flooder: {:?})",
        floods.iter().map(|f| f.1).collect::<Vec<_>>()
    );
    assert!(
        floods.iter().all(|(_, sent, _)| *sent < MAX_CHUNKS),
        "a flood ended before the victim's tasks did; the measurement saw no flood"
    );

    // Nothing flooded is lost: every response was applied, and each task ends with its
    // last chunk.
    for (id, sent, _) in &floods {
        let t = wait_final(&c, id, FINISH);
        assert_eq!(t["status"], "completed", "{id}");
        let t = get_task(&c, id);
        assert!(
            t["stdout"].as_str() == Some(chunk(sent - 1).as_str()),
            "task {id} does not end with chunk {}",
            sent - 1
        );
    }
    let flooded_responses: usize = floods.iter().map(|(_, sent, _)| sent + 1).sum();
    for id in c.get("/tasks?agent_id=victim").json()["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["task_id"].as_str())
    {
        wait_final(&c, id, FINISH);
    }
    assert_eq!(
        metric(&c, "nodelink_agent_responses_total"),
        (flooded_responses + 2 * VICTIM_TASKS) as f64,
        "every response was applied"
    );

    // The victim still gets its tasks promptly. A completion-queue thread that blocked on the
    // full channel would hold the victim's run requests behind flooded responses for as long
    // as the response thread is behind; the bound is generous for a loaded machine (parsing
    // the flood's megabytes costs the completion-queue threads time either way).
    let bound = (quiet * 10).max(Duration::from_secs(1));
    assert!(
        flooded <= bound,
        "the victim waited {flooded:?} for a task under the flood ({quiet:?} quiet; bound {bound:?})"
    );
}
