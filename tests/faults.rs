//! Faults survived, each with real processes: a vanishing agent, a server stopped with
//! SIGTERM and started again, connection floods, slow and vanishing clients, descriptor
//! exhaustion, and a response burst against a tiny channel.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nodelink::proto::task_request;
use support::fake_agent::FakeAgent;
use support::http::probe;
use support::{create_shell, free_addr, start_agent, wait_final, Server, ServerOpts, API_TOKEN};

fn server_with(extra: &[&str]) -> Server {
    Server::start_with(ServerOpts {
        extra: extra.iter().map(|s| s.to_string()).collect(),
        ..ServerOpts::default()
    })
}

#[test]
fn an_agent_killed_mid_task_fails_only_its_own_tasks_after_the_grace() {
    let server = server_with(&["--disconnect-grace", "1s"]);
    let victim = server.agent("a1", "t1");
    let _bystander = server.agent("a2", "t2");
    let c = server.client();
    let lost = create_shell(&c, "a1", "sleep 8");
    let kept = create_shell(&c, "a2", "sleep 2; echo still-fine");
    support::wait_until("a1's task runs", Duration::from_secs(10), || {
        c.get(&format!("/tasks/{lost}")).json()["status"] == "sent"
            || c.get(&format!("/tasks/{lost}")).json()["status"] == "in_progress"
    });
    victim.signal(libc::SIGKILL);
    let t = wait_final(&c, &lost, Duration::from_secs(20));
    assert_eq!(t["status"], "failed");
    assert_eq!(t["error"], "agent disconnected");
    let k = wait_final(&c, &kept, Duration::from_secs(20));
    assert_eq!(k["status"], "completed");
    assert_eq!(k["stdout"], "still-fine\n");
}

#[test]
fn sigterm_ends_streams_with_a_goodbye_exits_zero_and_agents_come_back() {
    let (http, grpc) = (free_addr(), free_addr());
    let opts = || ServerOpts {
        http_addr: http.clone(),
        grpc_addr: grpc.clone(),
        ..ServerOpts::default()
    };
    let mut server = Server::start_with(opts());
    let _agent = start_agent(&server.grpc, "a1", "t1", &["--backoff-max", "1s"]);
    server.wait_agent("a1", true);
    let mut stream = server.client().sse("/stream", None);
    assert_eq!(stream.status, 200);
    let started = Instant::now();
    server.proc.signal(libc::SIGTERM);
    let goodbye = stream
        .next_event(Duration::from_secs(5))
        .expect("a final event before the stream ends");
    assert_eq!(goodbye.event, "shutdown");
    assert_eq!(
        server.proc.wait_exit(Duration::from_secs(5)),
        Some(0),
        "exits 0 within 5 s"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(server.proc.log().contains("nodelink stopped"));

    let again = Server::start_with(opts());
    again.wait_agent("a1", true); // reconnected by itself
    let c = again.client();
    let id = create_shell(&c, "a1", "echo back");
    assert_eq!(
        wait_final(&c, &id, Duration::from_secs(20))["stdout"],
        "back\n"
    );
}

#[test]
fn a_thousand_connections_at_once_do_not_stop_the_server() {
    raise_own_fd_limit();
    let server = Server::start();
    let open: Vec<TcpStream> = (0..1000)
        .filter_map(|_| TcpStream::connect(&server.http).ok())
        .collect();
    assert!(open.len() >= 900, "opened {} connections", open.len());
    let c = server.client();
    let r = c.get("/healthz");
    assert_eq!(r.status, 200, "served while 1000 connections are open");
    drop(open);
    assert_eq!(c.get("/tasks").status, 200);
}

#[test]
fn vanishing_and_trickling_clients_do_not_hold_up_others() {
    let server = server_with(&["--http-timeout", "1s", "--http-workers", "2"]);
    // Half a body, then gone.
    for _ in 0..4 {
        let mut s = TcpStream::connect(&server.http).expect("connect");
        let head = format!(
            "POST /tasks/shell HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\nContent-Length: 4000\r\n\r\n{{\"agent_id\":"
        );
        s.write_all(head.as_bytes()).expect("write");
    }
    // One byte a second, for longer than the timeout.
    let addr = server.http.clone();
    let trickler = std::thread::spawn(move || {
        let mut s = TcpStream::connect(&addr).expect("connect");
        let mut sent = 0;
        for b in b"GET /healthz HTTP/1.1\r\n" {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(400));
            if sent >= 8 {
                break;
            }
        }
        let mut buf = [0u8; 16];
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        // The server closes it (or answers an error), it never waits forever.
        let _ = s.read(&mut buf);
    });
    let c = server.client();
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(c.get("/healthz").status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "others were served meanwhile"
    );
    trickler.join().expect("trickler");
    assert_eq!(c.get("/tasks").status, 200);
}

#[test]
fn reaching_the_descriptor_limit_is_survived() {
    raise_own_fd_limit();
    let server = Server::start_with(ServerOpts {
        nofile: Some(128),
        ..ServerOpts::default()
    });
    let addr: std::net::SocketAddr = server.http.parse().expect("address");
    // More connections than the server has descriptors for; the rest wait in the backlog.
    let flood: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok())
        .collect();
    server
        .proc
        .wait_log("Cannot accept connections for now", Duration::from_secs(10));
    drop(flood);
    let c = server.client();
    support::wait_until("the server accepts again", Duration::from_secs(15), || {
        probe(&server.http).is_some_and(|status| status == 200)
    });
    assert_eq!(c.get("/healthz").status, 200);
}

#[test]
fn a_burst_of_100_000_responses_through_a_channel_of_100_loses_nothing() {
    let server = server_with(&["--response-channel", "100", "--max-output-bytes", "4000000"]);
    let mut agent = FakeAgent::connect(&server.grpc, "a1", "t1");
    server.wait_agent("a1", true);
    let c = server.client();
    let id = create_shell(&c, "a1", "flood");
    let req = agent.next_request();
    assert!(matches!(
        req.task,
        Some(task_request::Task::ShellExecute(_))
    ));
    const N: usize = 100_000;
    for i in 0..N {
        let resp = agent.output(&req.task_id, &format!("{i}\n"));
        agent.send(resp, i % 64 != 63);
    }
    let fin = agent.exit(&req.task_id, 0);
    agent.send(fin, false);
    let t = wait_final(&c, &id, Duration::from_secs(120));
    let want: String = (0..N).map(|i| format!("{i}\n")).collect();
    let got = t["stdout"].as_str().expect("stdout");
    assert_eq!(got.len(), want.len(), "every byte arrived");
    assert!(got == want, "in order");
    assert_eq!(t["stdout_truncated"], false);
}

fn raise_own_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < 4096 {
            lim.rlim_cur = lim.rlim_max.min(4096);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
