//! Tokens read from files (`--api-token-file`, `--token-file`), so they never appear on a
//! command line where other users see them in `ps`.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use support::{
    binary, create_shell, start_agent_with_token_file, wait_final, Client, Server, ServerOpts,
    TempDir,
};

fn private_file(dir: &TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

#[test]
fn a_server_with_an_api_token_file_accepts_that_token_and_an_agent_with_a_token_file_connects() {
    let server = Server::start_with(ServerOpts {
        api_token_file: true,
        ..ServerOpts::default()
    });
    assert!(
        !server.proc.log().contains("readable by other users"),
        "{}",
        server.proc.log()
    );
    let c = server.client();
    // The file ends with a newline, as `echo` writes it: only the token before it counts.
    assert_eq!(c.get("/tasks").status, 200, "the token from the file");
    let other = Client::new(&server.http, Some("another-token"));
    assert_eq!(other.get("/tasks").status, 401);

    let dir = TempDir::new("agent-token");
    // A file written by `echo`, with its trailing newline.
    let token_file = private_file(&dir, "token", "t1\n");
    let _agent = start_agent_with_token_file(&server.grpc, "a1", &token_file);
    server.wait_agent("a1", true);
    let id = create_shell(&c, "a1", "echo from-a-token-file");
    let task = wait_final(&c, &id, Duration::from_secs(20));
    assert_eq!(task["status"], "completed", "{task}");
}

#[test]
fn an_empty_or_missing_token_file_is_refused_with_one_line() {
    let dir = TempDir::new("empty-token");
    let agents = private_file(&dir, "agents.json", r#"{"a1": "t1"}"#);
    let empty = private_file(&dir, "empty", "\n");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(binary())
            .args(args)
            .output()
            .expect("runs nodelink");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, err) = run(&[
        "server".as_ref(),
        "--http-addr".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--grpc-addr".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--agent-tokens".as_ref(),
        agents.as_os_str(),
        "--api-token-file".as_ref(),
        empty.as_os_str(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("API token file is empty"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let (code, err) = run(&[
        "agent".as_ref(),
        "--id".as_ref(),
        "a1".as_ref(),
        "--token-file".as_ref(),
        dir.join("missing").as_os_str(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot read the agent token file"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}
