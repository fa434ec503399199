//! End-to-end tests of the executor with real processes: exit statuses,
//! errors, streaming, UTF-8 handling, large output, cancellation of whole
//! process groups (checked through /proc) and docker argv safety via a fake
//! docker script. Every wait is bounded so a regression fails instead of
//! hanging, and no assertion depends on tight timings.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError};

use super::*;

/// Upper bound for any single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

fn shell(cmd: &str) -> ExecSpec {
    ExecSpec::Shell {
        cmd: cmd.to_string(),
        env: vec![],
        working_dir: None,
    }
}

/// A started task plus everything received from it so far.
struct Run {
    task: RunningTask,
    rx: Receiver<(Instant, ExecEvent)>,
    chunks: Vec<(Instant, Chunk)>,
}

/// What a finished task produced.
struct Outcome {
    chunks: Vec<(Instant, Chunk)>,
    exit: ExitInfo,
    exited_at: Instant,
}

impl Outcome {
    fn stdout(&self) -> String {
        self.chunks.iter().map(|(_, c)| c.stdout.as_str()).collect()
    }
    fn stderr(&self) -> String {
        self.chunks.iter().map(|(_, c)| c.stderr.as_str()).collect()
    }
}

fn try_start(spec: &ExecSpec, cfg: &ExecConfig) -> Result<Run, SpawnError> {
    let (tx, rx) = unbounded();
    let task = spawn(spec, cfg, move |event| {
        let _ = tx.send((Instant::now(), event));
    })?;
    Ok(Run {
        task,
        rx,
        chunks: Vec::new(),
    })
}

fn start(spec: &ExecSpec, cfg: &ExecConfig) -> Run {
    match try_start(spec, cfg) {
        Ok(run) => run,
        Err(e) => panic!("spawn failed: {e}"),
    }
}

impl Run {
    fn next(&mut self) -> (Instant, ExecEvent) {
        match self.rx.recv_timeout(WAIT) {
            Ok(event) => event,
            Err(e) => panic!("no event within {WAIT:?}: {e:?}"),
        }
    }

    /// Collects output until stdout contains `needle`.
    fn wait_for_stdout(&mut self, needle: &str) {
        loop {
            let stdout: String = self.chunks.iter().map(|(_, c)| c.stdout.as_str()).collect();
            if stdout.contains(needle) {
                return;
            }
            match self.next() {
                (at, ExecEvent::Output(chunk)) => self.chunks.push((at, chunk)),
                (_, ExecEvent::Exited(info)) => {
                    panic!("exited ({info}) before printing {needle:?}")
                }
            }
        }
    }

    /// Collects everything up to `Exited` and checks that nothing follows it.
    fn finish(mut self) -> Outcome {
        loop {
            match self.next() {
                (at, ExecEvent::Output(chunk)) => {
                    assert!(
                        !(chunk.stdout.is_empty() && chunk.stderr.is_empty()),
                        "empty chunk"
                    );
                    self.chunks.push((at, chunk));
                }
                (at, ExecEvent::Exited(exit)) => {
                    // The thread drops the callback (and our sender) when it ends.
                    match self.rx.recv_timeout(WAIT) {
                        Err(RecvTimeoutError::Disconnected) => {}
                        other => panic!("expected end of events after Exited, got {other:?}"),
                    }
                    assert!(self.task.is_finished());
                    assert!(!is_our_zombie(self.task.pid()), "leader not reaped");
                    self.task.join();
                    return Outcome {
                        chunks: self.chunks,
                        exit,
                        exited_at: at,
                    };
                }
            }
        }
    }
}

fn run(cmd: &str) -> Outcome {
    start(&shell(cmd), &ExecConfig::default()).finish()
}

/// Non-zombie processes whose process group is `pgid`, read from /proc/*/stat.
fn live_group_members(pgid: u32) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ..."; comm may contain spaces and parens.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" && fields[0] != "X"
        {
            found.push(format!("{pid} {}", &stat[..=close]));
        }
    }
    found
}

/// Whether `pid` is an unreaped child of this test process.
fn is_our_zombie(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    fields.len() > 1 && fields[0] == "Z" && fields[1] == std::process::id().to_string()
}

/// Waits (bounded) until no live process of group `pgid` remains.
fn assert_group_gone(pgid: u32) {
    let deadline = Instant::now() + WAIT;
    loop {
        let members = live_group_members(pgid);
        if members.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "group {pgid} still alive: {members:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "nodelink-exec-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

// ---- exit statuses and errors -------------------------------------------

#[test]
fn echo_hi() {
    let out = run("echo hi");
    assert_eq!(out.stdout(), "hi\n");
    assert_eq!(out.stderr(), "");
    assert_eq!(
        out.exit,
        ExitInfo {
            exit_code: 0,
            signal: None
        }
    );
}

#[test]
fn exit_code_is_reported() {
    assert_eq!(
        run("exit 3").exit,
        ExitInfo {
            exit_code: 3,
            signal: None
        }
    );
}

#[test]
fn signal_death_is_128_plus_signal() {
    let out = run("kill -9 $$");
    assert_eq!(out.exit.exit_code, 137);
    assert_eq!(out.exit.signal, Some(libc::SIGKILL));
    assert_eq!(out.exit.signal_name(), Some("SIGKILL"));
}

#[test]
fn stdout_and_stderr_are_kept_apart() {
    let out = run("echo out; echo err >&2; echo out2");
    assert_eq!(out.stdout(), "out\nout2\n");
    assert_eq!(out.stderr(), "err\n");
}

#[test]
fn missing_working_dir_is_a_spawn_error() {
    let spec = ExecSpec::Shell {
        cmd: "true".into(),
        env: vec![],
        working_dir: Some(PathBuf::from("/no/such/dir/for/nodelink")),
    };
    match try_start(&spec, &ExecConfig::default()) {
        Err(e @ SpawnError::WorkingDir { .. }) => {
            assert!(e.to_string().contains("/no/such/dir/for/nodelink"), "{e}");
        }
        Err(e) => panic!("wrong error: {e:?}"),
        Ok(_) => panic!("spawned with a missing working dir"),
    }
}

#[test]
fn missing_shell_and_docker_binaries_are_spawn_errors() {
    let cfg = ExecConfig {
        shell: PathBuf::from("/no/such/bash"),
        docker_bin: PathBuf::from("/no/such/docker"),
        ..ExecConfig::default()
    };
    match try_start(&shell("true"), &cfg) {
        Err(e @ SpawnError::ProgramNotFound { role: "shell", .. }) => {
            assert!(e.to_string().contains("/no/such/bash"), "{e}")
        }
        Err(e) => panic!("wrong error: {e:?}"),
        Ok(_) => panic!("spawned a missing shell"),
    }
    let docker = ExecSpec::Docker(DockerOp::Logs { id: "c1".into() });
    match try_start(&docker, &cfg) {
        Err(e @ SpawnError::ProgramNotFound { role: "docker", .. }) => {
            assert!(e.to_string().contains("/no/such/docker"), "{e}")
        }
        Err(e) => panic!("wrong error: {e:?}"),
        Ok(_) => panic!("spawned a missing docker"),
    }
}

#[test]
fn nul_byte_in_command_is_a_spawn_error() {
    match try_start(&shell("echo a\0b"), &ExecConfig::default()) {
        Err(e @ SpawnError::Start { .. }) => assert!(e.to_string().contains("shell"), "{e}"),
        Err(e) => panic!("wrong error: {e:?}"),
        Ok(_) => panic!("spawned a command with a NUL byte"),
    }
}

#[test]
fn env_and_working_dir_take_effect() {
    let dir = temp_dir("cwd");
    let canonical = fs::canonicalize(&dir).expect("canonicalize");
    let spec = ExecSpec::Shell {
        cmd: "echo $FOO; pwd -P".into(),
        env: vec![("FOO".into(), "bar baz".into())],
        working_dir: Some(dir.clone()),
    };
    let out = start(&spec, &ExecConfig::default()).finish();
    assert_eq!(out.stdout(), format!("bar baz\n{}\n", canonical.display()));
    assert!(out.exit.success());
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn task_that_closes_its_pipes_early_still_reports_its_exit() {
    let out = run("echo before; exec >&- 2>&-; sleep 0.3; exit 4");
    assert_eq!(out.stdout(), "before\n");
    assert_eq!(out.exit.exit_code, 4);
}

// ---- streaming and output handling --------------------------------------

#[test]
fn output_is_streamed_before_exit() {
    let out = run("echo first; sleep 2; echo second");
    assert_eq!(out.stdout(), "first\nsecond\n");
    let (first_at, first) = &out.chunks[0];
    assert_eq!(first.stdout, "first\n");
    let lead = out.exited_at.duration_since(*first_at);
    assert!(
        lead >= Duration::from_secs(1),
        "first chunk only {lead:?} before exit"
    );
}

#[test]
fn invalid_utf8_becomes_replacement_characters() {
    assert_eq!(run(r"printf '\xff\xfe'").stdout(), "\u{FFFD}\u{FFFD}");
    assert_eq!(run(r"printf 'ab\xe2\x82'").stdout(), "ab\u{FFFD}");
    assert_eq!(run(r"printf 'a\xe2\x82\xacb' >&2").stderr(), "a€b");
}

fn check_chunks(out: &Outcome, limit: usize) {
    for (_, chunk) in &out.chunks {
        assert!(
            chunk.stdout.len() <= limit + 3,
            "stdout chunk of {}",
            chunk.stdout.len()
        );
        assert!(
            chunk.stderr.len() <= limit + 3,
            "stderr chunk of {}",
            chunk.stderr.len()
        );
        assert!(chunk.stdout.len() + chunk.stderr.len() <= limit + 3);
    }
}

#[test]
fn multibyte_output_straddling_chunk_boundaries_is_exact() {
    // 1 + 3 * 30000 bytes: 32 KiB boundaries fall inside characters.
    let out = run("printf x; yes € | head -n 30000 | tr -d '\\n'");
    assert_eq!(out.stdout(), format!("x{}", "€".repeat(30000)));
    check_chunks(&out, 32 * 1024);
    assert!(out.chunks.len() >= 3);

    let out = run("printf xy; yes 😀 | head -n 20000 | tr -d '\\n'");
    assert_eq!(out.stdout(), format!("xy{}", "😀".repeat(20000)));
    check_chunks(&out, 32 * 1024);
}

#[test]
fn tiny_chunks_never_split_characters() {
    let cfg = ExecConfig {
        chunk_bytes: 5,
        ..ExecConfig::default()
    };
    let out = start(&shell("yes 'a€😀é' | head -n 2000 | tr -d '\\n'"), &cfg).finish();
    assert_eq!(out.stdout(), "a€😀é".repeat(2000));
    check_chunks(&out, 5);
}

#[test]
fn ten_megabytes_arrive_complete_and_in_order() {
    let out = run("seq 1 1400000");
    let expected: String = (1..=1_400_000).map(|n| format!("{n}\n")).collect();
    assert!(expected.len() > 10_000_000);
    let stdout = out.stdout();
    assert_eq!(stdout.len(), expected.len());
    assert!(stdout == expected, "10 MB output differs");
    check_chunks(&out, 32 * 1024);
    assert!(out.exit.success());
}

#[test]
fn both_streams_at_once_keep_their_own_order() {
    let out = run("seq 1 200000 & seq 1 200000 >&2; wait");
    let expected: String = (1..=200_000).map(|n| format!("{n}\n")).collect();
    assert!(out.stdout() == expected, "stdout differs");
    assert!(out.stderr() == expected, "stderr differs");
    check_chunks(&out, 32 * 1024);
}

#[test]
fn background_process_holding_the_pipe_does_not_block_exit() {
    let mut run = start(&shell("sleep 1000 & echo hi"), &ExecConfig::default());
    let pgid = run.task.pid();
    run.wait_for_stdout("hi");
    let out = run.finish();
    assert_eq!(out.stdout(), "hi\n");
    assert!(out.exit.success());
    // Without a cancel the background process is deliberately left running.
    assert!(!live_group_members(pgid).is_empty());
    // SAFETY: kill takes no pointers; the live sleep keeps this pgid ours.
    unsafe { libc::kill(-(pgid as libc::pid_t), libc::SIGKILL) };
    assert_group_gone(pgid);
}

#[test]
fn many_tasks_at_once() {
    let runs: Vec<Run> = (0..20)
        .map(|i| {
            start(
                &shell(&format!("echo task{i}; exit {}", i % 4)),
                &ExecConfig::default(),
            )
        })
        .collect();
    for (i, run) in runs.into_iter().enumerate() {
        let out = run.finish();
        assert_eq!(out.stdout(), format!("task{i}\n"));
        assert_eq!(out.exit.exit_code, (i % 4) as i32);
    }
}

// ---- cancellation ---------------------------------------------------------

#[test]
fn cancel_kills_the_whole_group() {
    let mut run = start(
        &shell("sleep 1000 & echo started; sleep 1000; wait"),
        &ExecConfig::default(),
    );
    let pgid = run.task.pid();
    run.wait_for_stdout("started");
    assert!(live_group_members(pgid).len() >= 2);
    run.task.cancel();
    run.task.cancel(); // idempotent
    let out = run.finish();
    assert!(out.exit.signal.is_some(), "{}", out.exit);
    assert_eq!(out.exit.exit_code, 128 + out.exit.signal.unwrap_or(0));
    assert_group_gone(pgid);
}

#[test]
fn cancel_escalates_to_sigkill_after_the_grace_period() {
    let cfg = ExecConfig {
        kill_grace: Duration::from_millis(300),
        ..ExecConfig::default()
    };
    let mut run = start(&shell("trap '' TERM; echo ready; sleep 1000"), &cfg);
    let pgid = run.task.pid();
    run.wait_for_stdout("ready");
    run.task.cancel();
    let out = run.finish();
    assert_eq!(out.exit.signal, Some(libc::SIGKILL), "{}", out.exit);
    assert_eq!(out.exit.exit_code, 137);
    assert_group_gone(pgid);
}

#[test]
fn cancel_kills_survivors_once_the_main_process_is_gone() {
    // The main shell dies of SIGTERM at once; the subshell ignores it.
    let mut run = start(
        &shell("(trap '' TERM; echo started; exec sleep 1000) & wait"),
        &ExecConfig::default(),
    );
    let pgid = run.task.pid();
    run.wait_for_stdout("started");
    run.task.cancel();
    let out = run.finish();
    assert_eq!(out.exit.signal, Some(libc::SIGTERM), "{}", out.exit);
    assert_group_gone(pgid);
}

#[test]
fn cancel_after_exit_is_a_no_op() {
    let mut run = start(&shell("echo done"), &ExecConfig::default());
    run.wait_for_stdout("done");
    let (tx, rx) = unbounded();
    let task = spawn(&shell("exit 5"), &ExecConfig::default(), move |e| {
        let _ = tx.send(e);
    })
    .expect("spawn");
    loop {
        match rx.recv_timeout(WAIT).expect("event") {
            ExecEvent::Exited(info) => {
                assert_eq!(info.exit_code, 5);
                break;
            }
            ExecEvent::Output(_) => {}
        }
    }
    let deadline = Instant::now() + WAIT;
    while !task.is_finished() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    task.cancel();
    task.cancel();
    assert!(run.finish().exit.success());
}

#[test]
fn dropping_a_running_task_cancels_and_reaps_it() {
    let mut run = start(&shell("echo started; sleep 1000"), &ExecConfig::default());
    let pgid = run.task.pid();
    run.wait_for_stdout("started");
    let Run { task, rx, .. } = run;
    drop(task);
    let mut exit = None;
    loop {
        match rx.recv_timeout(WAIT) {
            Ok((_, ExecEvent::Exited(info))) => exit = Some(info),
            Ok((_, ExecEvent::Output(_))) => {}
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("executor thread did not end"),
        }
    }
    assert_eq!(exit.and_then(|e| e.signal), Some(libc::SIGTERM));
    assert_group_gone(pgid);
    // Reaped: the leader is not even a zombie any more.
    assert!(!is_our_zombie(pgid));
}

#[test]
fn running_task_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RunningTask>();
}

// ---- docker ---------------------------------------------------------------

/// Writes a fake docker that records its argv (one per line) and prints canned output.
fn fake_docker() -> (PathBuf, PathBuf) {
    let dir = temp_dir("docker");
    let bin = dir.join("docker");
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > '{}/argv'\necho canned output\necho canned error >&2\nexit 0\n",
        dir.display()
    );
    fs::write(&bin, script).expect("write fake docker");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod");
    (dir, bin)
}

/// Starts a task, retrying while a just-written script is still "text file busy" (another test thread's fork may hold it open briefly).
fn start_retrying_etxtbsy(spec: &ExecSpec, cfg: &ExecConfig) -> Run {
    let deadline = Instant::now() + WAIT;
    loop {
        match try_start(spec, cfg) {
            Ok(run) => return run,
            Err(SpawnError::Start { source, .. })
                if source.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("spawn failed: {e}"),
        }
    }
}

#[test]
fn docker_ops_never_go_through_a_shell() {
    let (dir, bin) = fake_docker();
    let cfg = ExecConfig {
        docker_bin: bin,
        ..ExecConfig::default()
    };
    let cases = [
        (
            DockerOp::Run {
                image: "x; rm -rf /".into(),
            },
            ["run", "x; rm -rf /"],
        ),
        (
            DockerOp::Start {
                id: "a b $(id)".into(),
            },
            ["start", "a b $(id)"],
        ),
        (DockerOp::Stop { id: "c1".into() }, ["stop", "c1"]),
        (DockerOp::Logs { id: "c`x`".into() }, ["logs", "c`x`"]),
    ];
    for (op, expected) in cases {
        let out = start_retrying_etxtbsy(&ExecSpec::Docker(op), &cfg).finish();
        assert_eq!(out.stdout(), "canned output\n");
        assert_eq!(out.stderr(), "canned error\n");
        assert!(out.exit.success());
        let argv = fs::read_to_string(dir.join("argv")).expect("argv file");
        assert_eq!(argv.lines().collect::<Vec<_>>(), expected);
    }
    let _ = fs::remove_dir_all(dir);
}
