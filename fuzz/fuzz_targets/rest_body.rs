//! Arbitrary bytes through the real path of a task-creation body: `read_limited` (the
//! socket-free core of `read_body`, with a declared Content-Length and a size limit), then
//! `parse_json_object`, then `api::body::shell_task` or `docker_task`, exactly as
//! `POST /tasks/shell` and `POST /tasks/docker` run them.
//!
//! Invariants: nothing panics; every refusal is a 400 or a 413 whose JSON body encodes; a body
//! within its limits is read unchanged; an accepted request, written back as JSON with
//! `api::json::spec_json` (the shape `GET /tasks/{id}` shows), parses to the same request.

#![no_main]

use std::io::Cursor;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nodelink::api::body::{docker_task, shell_task, NewTask};
use nodelink::api::json::spec_json;
use nodelink::http::request::{parse_json_object, read_limited};
use nodelink::http::ApiError;
use nodelink::tasks::TaskSpec;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let docker = mode & 1 == 1;
    // A limit around the body's size, so both sides of it are explored.
    let limit = match (mode >> 1) & 3 {
        0 => 1 << 20,
        1 => body.len(),
        2 => body.len().saturating_sub(1),
        _ => body.len() / 2,
    };
    let declared = match (mode >> 3) & 3 {
        0 => None,
        1 => Some(body.len()),
        2 => Some(body.len() + 1),
        _ => Some(body.len().saturating_sub(1)),
    };

    let bytes = match read_limited(&mut Cursor::new(body), declared, limit) {
        Ok(bytes) => bytes,
        Err(e) => return refusal(&e),
    };
    assert!(bytes.len() <= limit, "read past the limit");
    assert_eq!(bytes, body, "a body within its limits is read unchanged");

    let parsed = parse_json_object(&bytes).and_then(|obj| {
        if docker {
            docker_task(&obj)
        } else {
            shell_task(&obj)
        }
    });
    match parsed {
        Ok(task) => round_trip(&task, docker),
        Err(e) => refusal(&e),
    }
});

/// A refused body is a client error with an encodable answer.
fn refusal(e: &ApiError) {
    assert!(
        matches!(e.status(), 400 | 413),
        "unexpected status {} for a body: {}",
        e.status(),
        e.message()
    );
    serde_json::to_vec(&e.to_json()).expect("an error body encodes");
}

/// Writes the request back as JSON and parses it again.
fn round_trip(task: &NewTask, docker: bool) {
    assert_eq!(docker, matches!(task.spec, TaskSpec::Docker(_)));
    let mut v = spec_json(&task.spec);
    let obj = v.as_object_mut().expect("spec_json is an object");
    obj.insert("agent_id".into(), json!(task.agent_id));
    if let Some(t) = task.timeout {
        obj.insert("timeout".into(), json!(t.as_secs_f64()));
    }
    let bytes = serde_json::to_vec(&v).expect("a spec encodes");
    let obj = parse_json_object(&bytes).expect("an encoded spec is a JSON object");
    let again = if docker {
        docker_task(&obj)
    } else {
        shell_task(&obj)
    }
    .unwrap_or_else(|e| panic!("an accepted request must parse again: {}", e.message()));
    assert_eq!(again.agent_id, task.agent_id);
    assert_eq!(again.spec, task.spec);
    match (again.timeout, task.timeout) {
        (None, None) => {}
        (Some(a), Some(b)) => {
            // Seconds as an f64 lose nanoseconds above about 2^53 ns (104 days).
            let drift = a.abs_diff(b);
            assert!(
                drift <= Duration::from_micros(1),
                "timeout {b:?} came back as {a:?}"
            );
        }
        other => panic!("timeout changed: {other:?}"),
    }
}
