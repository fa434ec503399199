//! TLS and mutual TLS on the agent link, with throwaway certificates made by `openssl`.

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{create_shell, start_agent, wait_final, Server, ServerOpts, TempDir};

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all signed
/// by the CA, in `dir`.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=nodelink test CA",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        ]
        .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            ext,
        ]);
    }
}

fn tls_server(dir: &Path, mutual: bool) -> Server {
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let mut extra = vec![
        "--tls-cert".to_string(),
        p("server.pem"),
        "--tls-key".into(),
        p("server.key"),
    ];
    if mutual {
        extra.extend(["--tls-client-ca".to_string(), p("ca.pem")]);
    }
    Server::start_with(ServerOpts {
        extra,
        ..ServerOpts::default()
    })
}

fn runs_a_task(server: &Server, agent: &str) {
    let c = server.client();
    let id = create_shell(&c, agent, "echo over-tls");
    assert_eq!(
        wait_final(&c, &id, Duration::from_secs(20))["stdout"],
        "over-tls\n"
    );
}

#[test]
fn an_agent_trusting_the_ca_runs_tasks_and_a_plaintext_agent_is_refused() {
    let dir = TempDir::new("tls");
    make_certificates(&dir.0);
    let server = tls_server(&dir.0, false);
    assert!(server.proc.log().contains("gRPC (TLS)"));
    let ca = dir.join("ca.pem").to_string_lossy().into_owned();
    let _agent = server.agent_with("a1", "t1", &["--tls-ca", &ca]);
    runs_a_task(&server, "a1");

    let plaintext = start_agent(&server.grpc, "a2", "t2", &["--backoff-max", "1s"]);
    plaintext.wait_log("Reconnecting in", Duration::from_secs(20));
    let agents = server.client().get("/agents").json();
    assert!(
        !agents["agents"]
            .as_array()
            .expect("list")
            .iter()
            .any(|a| a["agent_id"] == "a2"),
        "a plaintext agent never registers on a TLS server"
    );
}

#[test]
fn mutual_tls_admits_only_agents_with_a_certificate_from_the_ca() {
    let dir = TempDir::new("mtls");
    make_certificates(&dir.0);
    let server = tls_server(&dir.0, true);
    assert!(server.proc.log().contains("gRPC (mutual TLS)"));
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let _agent = server.agent_with(
        "a1",
        "t1",
        &[
            "--tls-ca",
            &p("ca.pem"),
            "--tls-cert",
            &p("client.pem"),
            "--tls-key",
            &p("client.key"),
        ],
    );
    runs_a_task(&server, "a1");

    let anonymous = start_agent(
        &server.grpc,
        "a2",
        "t2",
        &["--tls-ca", &p("ca.pem"), "--backoff-max", "1s"],
    );
    anonymous.wait_log("Reconnecting in", Duration::from_secs(20));
    let agents = server.client().get("/agents").json();
    assert!(!agents["agents"]
        .as_array()
        .expect("list")
        .iter()
        .any(|a| a["agent_id"] == "a2"));
}

/// Starts a server with valid credentials plus `flags` (TLS files), expects it to refuse to
/// start with exit code 2, and returns what it printed.
fn refused_start(dir: &TempDir, flags: &[(&str, &Path)]) -> String {
    let tokens = dir.join("agents.json");
    std::fs::write(&tokens, r#"{"a1":"t1"}"#).expect("write");
    let mut cmd = Command::new(support::binary());
    cmd.args(["server", "--http-addr", "127.0.0.1:0"])
        .args(["--grpc-addr", "127.0.0.1:0", "--api-token", "x"])
        .arg("--agent-tokens")
        .arg(&tokens);
    for (flag, file) in flags {
        cmd.arg(flag).arg(file);
    }
    let out = cmd.output().expect("runs");
    assert_eq!(out.status.code(), Some(2), "refused to start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_certificate_file_is_a_one_line_error_not_a_crash() {
    let dir = TempDir::new("badtls");
    std::fs::write(dir.join("bad.pem"), b"not a certificate\0").expect("write");
    let bad = dir.join("bad.pem");
    let err = refused_start(&dir, &[("--tls-cert", &bad), ("--tls-key", &bad)]);
    assert!(err.contains("certificate") && err.contains("NUL"), "{err}");
}

// ---------------------------------------------------------------------------------------
// HTTPS on the REST/SSE side

fn https_server(dir: &Path) -> Server {
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    Server::start_with(ServerOpts {
        extra: vec![
            "--http-tls-cert".into(),
            p("server.pem"),
            "--http-tls-key".into(),
            p("server.key"),
        ],
        ..ServerOpts::default()
    })
}

/// `curl` trusting only the throwaway CA; returns its exit code and what it printed.
fn curl(ca: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(ca)
        .args([
            "-H",
            &format!("Authorization: Bearer {}", support::API_TOKEN),
        ])
        .args(args)
        .output()
        .expect("curl runs (the HTTPS tests need curl)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn https_serves_rest_and_event_streams_to_a_client_trusting_the_ca() {
    let dir = TempDir::new("https");
    make_certificates(&dir.0);
    let server = https_server(&dir.0);
    assert!(server.proc.log().contains("HTTP (TLS) on"));
    // The harness's plain-HTTP helpers cannot ask an HTTPS server; its log says when.
    let _agent = start_agent(&server.grpc, "a1", "t1", &[]);
    server
        .proc
        .wait_log("Agent a1 connected", Duration::from_secs(20));
    let ca = dir.join("ca.pem");
    let base = format!("https://{}", server.http);

    let (code, created) = curl(
        &ca,
        &[
            "-d",
            r#"{"agent_id":"a1","cmd":"echo one; sleep 1; echo two"}"#,
            &format!("{base}/tasks/shell"),
        ],
    );
    assert_eq!(code, Some(0), "{created}");
    let created: serde_json::Value = serde_json::from_str(&created).expect("JSON");
    let id = created["task_id"].as_str().expect("task_id");

    // The stream replays and then follows the task live; it ends after the final status.
    let (code, events) = curl(&ca, &["-N", &format!("{base}/stream?ref={id}")]);
    assert_eq!(code, Some(0), "{events}");
    assert!(events.contains("\"stdout\":\"one\\n\""), "{events}");
    assert!(events.contains("\"stdout\":\"two\\n\""), "{events}");
    assert!(events.contains("\"status\":\"completed\""), "{events}");

    let (code, task) = curl(&ca, &[&format!("{base}/tasks/{id}")]);
    assert_eq!(code, Some(0), "{task}");
    let task: serde_json::Value = serde_json::from_str(&task).expect("JSON");
    assert_eq!(task["stdout"], "one\ntwo\n");
}

#[test]
fn plaintext_and_silent_clients_on_the_https_port_hold_up_nobody() {
    let dir = TempDir::new("https-plain");
    make_certificates(&dir.0);
    let mut server = https_server(&dir.0);
    let ca = dir.join("ca.pem");
    let healthz = format!("https://{}/healthz", server.http);

    // Plain HTTP on the TLS port: the handshake fails and that connection is closed.
    let mut plain = support::http::connect(&server.http);
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "no plaintext answer");

    // A client that connects and never starts its handshake does not block the others
    // (the handshake runs on the connection's thread, not the accept thread).
    let _silent = std::net::TcpStream::connect(&server.http).expect("connect");
    let (code, body) = curl(&ca, &["--max-time", "10", &healthz]);
    assert_eq!(code, Some(0), "{body}");
    assert!(body.contains("\"ok\""), "{body}");
    assert!(
        server.proc.child.try_wait().expect("status").is_none(),
        "still running"
    );
}

#[test]
fn an_https_key_that_does_not_match_its_certificate_is_a_one_line_error() {
    let dir = TempDir::new("https-bad");
    make_certificates(&dir.0);
    let err = refused_start(
        &dir,
        &[
            ("--http-tls-cert", &dir.join("server.pem")),
            ("--http-tls-key", &dir.join("client.key")),
        ],
    );
    assert!(err.contains("does not belong to the certificate"), "{err}");
    assert_eq!(
        err.trim()
            .lines()
            .filter(|l| l.starts_with("nodelink:"))
            .count(),
        1
    );
}
