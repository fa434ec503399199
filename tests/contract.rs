//! The REST API keeps its document: schemathesis, an OpenAPI-driven fuzzer, sends generated
//! requests (valid and invalid) to a real server whose only agent echoes instead of running a
//! shell or Docker, and fails on any 5xx other than the documented 503s and on any answer the
//! document does not allow (status, content type, headers, body schema). Needs python3; it
//! installs schemathesis with pip when absent, and skips, loudly, only without python3.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Server, ServerOpts, TempDir, API_TOKEN};

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml");
/// The agent the document's examples name, so example requests reach a connected agent.
const AGENT: &str = "web1";
/// Generated cases per operation and phase: enough to find the corners, bounded in time
/// (about 20 s on an idle 2-core machine).
const EXAMPLES: &str = "200";
/// Every phase: documented examples, boundary values, random cases, and sequences that follow
/// the document's links (create a task, then read or cancel it).
const PHASES: &str = "examples,coverage,fuzzing,stateful";
/// schemathesis's configuration: a 503 is not a server error here, since the document
/// promises it (agent not connected, too many connections); the status-code check still fails
/// any status an operation does not document.
const CONFIG: &str = "[checks.not_a_server_error]\n\
    expected-statuses = [\"2xx\", \"3xx\", \"4xx\", \"503\"]\n";
/// The fuzzer is stopped, and the test fails, after this long.
const DEADLINE: Duration = Duration::from_secs(240);

#[test]
fn the_api_answers_what_its_document_says_under_an_openapi_fuzzer() {
    if !has_python() {
        eprintln!(
            "\n\n!!!!!!!! SKIPPED tests/contract.rs: python3 is missing, so the OpenAPI fuzzer \
             (schemathesis) cannot run. Install python3 to check the API against \
             docs/openapi.yaml. !!!!!!!!\n\n"
        );
        return;
    }
    ensure_schemathesis();
    let work = TempDir::new("contract");
    check_generated_schemas_read_back(&work);

    let server = Server::start_with(ServerOpts {
        agents: vec![(AGENT.into(), "contract-token".into())],
        ..ServerOpts::default()
    });
    // Never a real shell or Docker: the agent runs `/bin/echo -c CMD` and `/bin/echo OP ARG`.
    let _agent = server.agent_with(
        AGENT,
        "contract-token",
        &["--shell", "/bin/echo", "--docker-bin", "/bin/echo"],
    );

    let seed = std::env::var("NODELINK_CONTRACT_SEED").unwrap_or_else(|_| "20261201".into());
    let auth = format!("Authorization: Bearer {API_TOKEN}");
    let url = format!("http://{}", server.http);
    let config = work.join("schemathesis.toml");
    std::fs::write(&config, CONFIG).expect("write schemathesis.toml");
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "schemathesis.cli", "--config-file"])
        .arg(&config)
        .args(["run", DOC, "--url", &url, "-H", &auth])
        .args(["--checks", "all", "--phases", PHASES])
        // DELETE /tasks/{id} cancels: the task stays readable with status `cancelled`, as the
        // original API's clients expect, so "a deleted resource must be gone" does not apply.
        .args(["--exclude-checks", "use_after_free"])
        .args([
            "--max-examples",
            EXAMPLES,
            "--seed",
            &seed,
            "--workers",
            "2",
        ])
        .args(["--generation-database", "none", "--request-timeout", "10"])
        .args(["--no-color", "--output-truncate", "false"])
        // Without `ref` the stream never ends by design; tests/sse_stream.rs covers it.
        .args(["--exclude-path", "/stream"])
        .current_dir(&work.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let (code, output) = run_bounded(cmd, DEADLINE);
    eprintln!(
        "schemathesis (seed {seed}) finished in {:.0?} with {code:?}",
        started.elapsed()
    );
    assert_eq!(
        code,
        Some(0),
        "the API broke docs/openapi.yaml under schemathesis (seed {seed}; rerun with \
         NODELINK_CONTRACT_SEED={seed}):\n{output}\nserver log:\n{}",
        server.proc.log()
    );
    let log = server.proc.log();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

fn has_python() -> bool {
    Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn python_can_import(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs schemathesis with pip when it is absent, as scripts/test.sh does for
/// openapi-spec-validator.
fn ensure_schemathesis() {
    if python_can_import("schemathesis") {
        return;
    }
    eprintln!("installing schemathesis with pip for tests/contract.rs");
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("schemathesis")
        .status()
        .expect("run pip");
    assert!(status.success(), "pip could not install schemathesis");
}

/// The document's schemas, read by a YAML parser, are exactly what the types generate: the
/// Rust test tests/openapi.rs compares text, this compares meaning.
fn check_generated_schemas_read_back(work: &TempDir) {
    let generated = work.join("components.json");
    let components = serde_json::Value::Object(nodelink::api::schema::components());
    std::fs::write(&generated, components.to_string()).expect("write components");
    let script = "import json, sys, yaml\n\
        doc = yaml.safe_load(open(sys.argv[1]))['components']['schemas']\n\
        gen = json.load(open(sys.argv[2]))\n\
        bad = sorted(k for k in set(doc) | set(gen) if doc.get(k) != gen.get(k))\n\
        sys.exit('schemas that read back differently: %s' % bad if bad else 0)\n";
    let out = Command::new("python3")
        .args(["-c", script, DOC])
        .arg(&generated)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cmd` to its end or until `limit` (then kills it); returns its exit code and output.
fn run_bounded(mut cmd: Command, limit: Duration) -> (Option<i32>, String) {
    let mut child = cmd.spawn().expect("start schemathesis");
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    })
    .collect();
    let deadline = Instant::now() + limit;
    let code = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.code(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let output = readers
        .into_iter()
        .map(|r| r.join().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    if code.is_none() {
        return (None, format!("stopped after {limit:?}\n{output}"));
    }
    (code, output)
}
