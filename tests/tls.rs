//! TLS and mutual TLS on the agent link, with throwaway certificates made by `openssl`.

mod support;

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

#[test]
fn a_bad_certificate_file_is_a_one_line_error_not_a_crash() {
    let dir = TempDir::new("badtls");
    std::fs::write(dir.join("bad.pem"), b"not a certificate\0").expect("write");
    let bad = dir.join("bad.pem").to_string_lossy().into_owned();
    let tokens = dir.join("agents.json");
    std::fs::write(&tokens, r#"{"a1":"t1"}"#).expect("write");
    let out = Command::new(support::binary())
        .args([
            "server",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--api-token",
            "x",
        ])
        .arg("--agent-tokens")
        .arg(&tokens)
        .args(["--tls-cert", &bad, "--tls-key", &bad])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate") && err.contains("NUL"), "{err}");
}
