//! Hostile guests are contained: denied or killed, audited, counted, while a well-behaved
//! neighbour keeps answering. Every guest here is a real wasm32-wasip2 component.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airssys_agent::actor::ActorState;
use airssys_agent::host::http as outgoing;
use airssys_agent::id::ComponentId;
use support::{Harness, caps, quotas, spec};
use wasmtime_wasi_http::Error as HttpError;

fn id(name: &str) -> ComponentId {
    ComponentId::new("test", name)
}

/// Adds an echo neighbour and checks it answers.
async fn neighbour(h: &Harness) {
    h.add(spec("neighbour", "echo", caps(""), quotas())).await;
    assert_eq!(h.ask("neighbour", "hello").await.unwrap(), "hello");
}

async fn neighbour_still_answers(h: &Harness) {
    let started = Instant::now();
    assert_eq!(
        h.ask("neighbour", "still there?").await.unwrap(),
        "still there?",
        "the neighbour must keep answering"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// The neighbour answers *while* `busy` is being handled elsewhere.
async fn neighbour_answers_during(h: &Harness, busy: impl Future<Output = ()>) {
    let probe = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        neighbour_still_answers(h).await;
    };
    tokio::join!(busy, probe);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_is_stopped_by_its_cpu_budget_and_restarted() {
    let h = Harness::new();
    neighbour(&h).await;
    let q = support::Quotas {
        cpu_time_per_message: std::time::Duration::from_millis(100),
        timeout: Duration::from_secs(10),
        ..quotas()
    };
    h.add(spec("spinner", "infinite-loop", caps(""), q)).await;
    assert_eq!(h.ask("spinner", "ping").await.unwrap(), "pong");

    neighbour_answers_during(&h, async {
        let started = Instant::now();
        let err = h.ask("spinner", "spin").await.unwrap_err();
        assert!(err.contains("cpu-time quota exceeded"), "{err}");
        // Deadline 100 ms plus tick granularity; far below the 10 s wall-clock timeout.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    })
    .await;

    support::wait_kind(&h, "spinner", support::Expect::Quota("cpu-time")).await;
    support::wait_kind(&h, "spinner", support::Expect::Killed).await;
    // A fresh instance answers again.
    assert_eq!(h.ask("spinner", "ping").await.unwrap(), "pong");
    let status = h.supervisor.status(&id("spinner")).await.unwrap();
    assert_eq!(status.kills.load(Ordering::Relaxed), 1);
    assert!(status.restarts.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_timeout_kills_a_message_even_with_cpu_budget_left() {
    let h = Harness::new();
    let q = support::Quotas {
        cpu_time_per_message: Duration::from_secs(60),
        timeout: Duration::from_millis(300),
        ..quotas()
    };
    h.add(spec("slow", "infinite-loop", caps(""), q)).await;
    let started = Instant::now();
    let err = h.ask("slow", "spin").await.unwrap_err();
    assert!(err.contains("Timeout"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    support::wait_kind(&h, "slow", support::Expect::Quota("timeout")).await;
    assert_eq!(h.ask("slow", "ping").await.unwrap(), "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_limit_stops_a_loop_when_the_engine_counts_fuel() {
    let h = Harness::with_engine(|mut c| {
        c.consume_fuel = true;
        c
    });
    let q = support::Quotas {
        fuel_per_message: Some(5_000_000),
        cpu_time_per_message: Duration::from_secs(60),
        timeout: Duration::from_secs(30),
        ..quotas()
    };
    h.add(spec("fueled", "infinite-loop", caps(""), q)).await;
    assert_eq!(h.ask("fueled", "ping").await.unwrap(), "pong");
    let err = h.ask("fueled", "spin").await.unwrap_err();
    assert!(err.contains("fuel quota exceeded"), "{err}");
    support::wait_kind(&h, "fueled", support::Expect::Quota("fuel")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_hits_the_memory_quota_and_only_it_dies() {
    let h = Harness::new();
    neighbour(&h).await;
    h.add(spec("bomb", "memory-bomb", caps(""), quotas())).await;
    let err = h.ask("bomb", "boom").await.unwrap_err();
    assert!(err.contains("memory quota exceeded"), "{err}");
    support::wait_kind(&h, "bomb", support::Expect::Quota("memory")).await;
    support::wait_kind(&h, "bomb", support::Expect::Killed).await;
    neighbour_still_answers(&h).await;
    assert_eq!(h.ask("bomb", "ping").await.unwrap(), "pong", "restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_recursion_traps_on_the_stack_limit() {
    let h = Harness::new();
    neighbour(&h).await;
    h.add(spec("diver", "deep-recursion", caps(""), quotas()))
        .await;
    let err = h.ask("diver", "dive").await.unwrap_err();
    assert!(err.contains("killed"), "{err}");
    // Rust keeps its stack in linear memory: overflowing it runs off the bottom of memory
    // (out of bounds) unless wasmtime's own stack limit (max_wasm_stack) is hit first.
    let trap = support::wait_kind(&h, "diver", support::Expect::Trap).await;
    let message = trap["detail"]["message"].as_str().unwrap();
    assert!(
        message.contains("stack overflow") || message.contains("out of bounds"),
        "{trap}"
    );
    support::wait_kind(&h, "diver", support::Expect::Killed).await;
    neighbour_still_answers(&h).await;
    assert_eq!(h.ask("diver", "ping").await.unwrap(), "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_never_leaves_the_preopened_directory() {
    let h = Harness::new();
    neighbour(&h).await;
    let grant = caps("filesystem: [{ path: /data, access: [read] }]");
    let s = spec("traverser", "path-traversal", grant, quotas());
    // A secret next to the component's directory, and symlinks pointing at it.
    let data = h.supervisor.host_dir(&s.id, "/data");
    std::fs::create_dir_all(&data).unwrap();
    let outside = data.parent().unwrap().join("outside.txt");
    std::fs::write(&outside, "SECRET").unwrap();
    std::os::unix::fs::symlink(data.parent().unwrap(), data.join("escape")).unwrap();
    std::os::unix::fs::symlink(&outside, data.join("escape-abs")).unwrap();
    h.add(s).await;

    let report = h.ask("traverser", "attack").await.unwrap();
    assert!(!report.contains("SECRET"), "{report}");
    assert!(!report.contains("READ"), "{report}");
    assert_eq!(report.lines().count(), 6, "{report}");
    // The host saw and refused the `..` and symlink attempts: audited.
    support::wait_kind(&h, "traverser", support::Expect::Denied("filesystem")).await;
    let denials = support::count(&h, "traverser", support::Expect::Denied("filesystem")).await;
    assert!(
        denials >= 3,
        "expected the .. and both symlink escapes audited, got {denials}"
    );
    // A path outside every preopen (`/etc/passwd`, or `../outside.txt` from the root
    // working directory) never reaches the host: wasi-libc resolves it against the preopen
    // list inside the guest and fails there with ENOENT (see host::filesystem's module doc). The
    // read fails and, with no host call, nothing is audited; the four attempts that do reach
    // the host through the `/data` preopen are each audited once.
    for outside in ["/etc/passwd", "../outside.txt"] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(&format!("{outside}=>error:No such file"))),
            "{report}"
        );
    }
    let mut targets: Vec<String> = h
        .audit_events()
        .await
        .iter()
        .filter(|e| support::Expect::Denied("filesystem").matches("traverser", e))
        .map(|e| e["detail"]["target"].as_str().unwrap().to_owned())
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            "open ../../../../etc/passwd: leaves the grant",
            "open ../outside.txt: leaves the grant",
            "open escape-abs: refused by the host (not-permitted)",
            "open escape/outside.txt: refused by the host (not-permitted)"
        ]
    );
    neighbour_still_answers(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_reader_reads_and_writes_only_where_granted() {
    let h = Harness::new();
    let grant = caps(
        "filesystem: [{ path: /data, access: [read, write] }, { path: /config, access: [read] }]",
    );
    let s = spec("reader", "file-reader", grant, quotas());
    let config = h.supervisor.host_dir(&s.id, "/config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("app.toml"), "mode = 1").unwrap();
    h.add(s).await;
    assert_eq!(
        h.ask("reader", "read:/config/app.toml").await.unwrap(),
        "mode = 1"
    );
    assert_eq!(
        h.ask("reader", "write:/data/out.txt:hi").await.unwrap(),
        "written"
    );
    assert_eq!(
        std::fs::read_to_string(
            h.supervisor
                .host_dir(&id("reader"), "/data")
                .join("out.txt")
        )
        .unwrap(),
        "hi"
    );
    let denied = h.ask("reader", "write:/config/new.txt:x").await.unwrap();
    assert!(
        denied.starts_with("error:"),
        "read-only grant must refuse writes: {denied}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_http_is_checked_on_host_port_and_resolved_address() {
    let h = Harness::new();
    neighbour(&h).await;
    // A real HTTP server on loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                break;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
                    )
                    .await;
            });
        }
    });

    // Granted: exactly this loopback address and port.
    let grant = caps(&format!("network: [{{ host: 127.0.0.1, port: {port} }}]"));
    h.add(spec("fetcher", "http-fetch", grant, quotas())).await;
    let ok = h
        .ask("fetcher", &format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    assert_eq!(ok, "200|hello");

    // Same host, other port: denied.
    let other = h
        .ask(
            "fetcher",
            &format!("http://127.0.0.1:{}/", port.wrapping_add(1)),
        )
        .await
        .unwrap();
    assert_eq!(other, "error:ErrorCode::HttpRequestDenied");
    // An undeclared host: denied before any DNS query.
    let undeclared = h
        .ask("fetcher", "http://exfiltrate.example.com/")
        .await
        .unwrap();
    assert_eq!(undeclared, "error:ErrorCode::HttpRequestDenied");
    // A private address nobody granted.
    let private = h.ask("fetcher", "http://10.1.2.3/").await.unwrap();
    assert_eq!(private, "error:ErrorCode::HttpRequestDenied");

    // A public-host grant does not open loopback: `localhost` resolves to 127.0.0.1,
    // which needs an explicit address grant.
    let wide = caps(&format!("network: [{{ host: localhost, port: {port} }}]"));
    h.add(spec("sneaky", "http-fetch", wide, quotas())).await;
    let sneaky = h
        .ask("sneaky", &format!("http://localhost:{port}/"))
        .await
        .unwrap();
    assert_eq!(sneaky, "error:ErrorCode::HttpRequestDenied");

    let denials = support::count(&h, "fetcher", support::Expect::Denied("network")).await;
    assert_eq!(denials, 3, "each refused request is audited");
    support::wait_kind(&h, "sneaky", support::Expect::Denied("network")).await;
    neighbour_still_answers(&h).await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capability_escalation_gets_access_denied_values_and_audits() {
    let h = Harness::new();
    neighbour(&h).await;
    let grant = caps("messaging: [{ topic: events.public, access: [publish] }]");
    h.add(spec("escalator", "escalation", grant, quotas()))
        .await;
    for (attempt, capability) in [
        ("publish", "publish"),
        ("subscribe", "subscribe"),
        ("send", "send"),
        ("storage", "storage"),
    ] {
        let answer = h.ask("escalator", attempt).await.unwrap();
        assert!(answer.starts_with("access-denied:"), "{attempt}: {answer}");
        support::wait_kind(&h, "escalator", support::Expect::Denied(capability)).await;
    }
    // Denials are values, not traps: the instance never died.
    let status = h.supervisor.status(&id("escalator")).await.unwrap();
    assert_eq!(status.kills.load(Ordering::Relaxed), 0);
    assert_eq!(h.ask("escalator", "ping").await.unwrap(), "pong");
    neighbour_still_answers(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_flood_is_pushed_back_by_rate_and_mailbox_limits() {
    let h = Harness::new();
    neighbour(&h).await;
    let grant = caps("messaging: [{ component: neighbour, access: [send] }]");
    // Rate limit below the neighbour's mailbox (64): the rate limit answers first.
    let q = support::Quotas {
        messages_per_second: 40,
        ..quotas()
    };
    h.add(spec("flooder", "message-flood", grant.clone(), q))
        .await;
    let answer = h.ask("flooder", "neighbour").await.unwrap();
    let (sent, error) = answer.split_once('|').unwrap();
    let sent: u64 = sent.parse().unwrap();
    assert!(
        sent <= 41,
        "at most one second's burst gets through: {answer}"
    );
    assert!(error.contains("QuotaExceeded"), "{answer}");
    support::wait_kind(&h, "flooder", support::Expect::Quota("message-rate")).await;
    neighbour_still_answers(&h).await;
    // The neighbour's mailbox stayed bounded (64 by default): the flood hit back-pressure or
    // the rate limit, never an unbounded queue.
    let status = h.supervisor.status(&id("neighbour")).await.unwrap();
    assert!(status.handled.load(Ordering::Relaxed) <= sent + 2);

    // A rate limit above the mailbox: the full mailbox pushes back (no unbounded queue).
    let q = support::Quotas {
        messages_per_second: 1_000_000,
        ..quotas()
    };
    h.add(spec("flooder2", "message-flood", grant, q)).await;
    let answer = h.ask("flooder2", "neighbour").await.unwrap();
    let (sent, error) = answer.split_once('|').unwrap();
    let sent: u64 = sent.parse().unwrap();
    assert!(
        error.contains("mailbox") && error.contains("full"),
        "{answer}"
    );
    assert!(sent < 1_000_000, "{answer}");
    support::wait_kind(&h, "flooder2", support::Expect::Quota("mailbox")).await;
    neighbour_still_answers(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_storm_marks_the_component_crash_looping() {
    let h = Harness::new();
    neighbour(&h).await;
    h.add(spec("storm", "trap-storm", caps(""), quotas())).await;
    for _ in 0..5 {
        let err = h.ask("storm", "x").await.unwrap_err();
        assert!(err.contains("killed"), "{err}");
    }
    let status = h.supervisor.status(&id("storm")).await.unwrap();
    // The reply goes out before the supervisor books the kill; wait for the books.
    let deadline = Instant::now() + Duration::from_secs(5);
    while status.kills.load(Ordering::Relaxed) < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status.kills.load(Ordering::Relaxed), 5);
    assert!(status.is_crash_looping(), "{status:?}");
    support::wait_kind(&h, "storm", support::Expect::CrashLoop).await;
    support::wait_kind(&h, "storm", support::Expect::Trap).await;
    neighbour_still_answers(&h).await;
    assert_ne!(
        status.state(),
        ActorState::Stopped,
        "crash-looping components keep retrying"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_messages_are_refused_at_both_ends() {
    let h = Harness::new();
    neighbour(&h).await;
    let grant = caps(
        "messaging: [{ component: neighbour, access: [send] }, { topic: events.huge, access: [publish] }]",
    );
    h.add(spec("whale", "huge-message", grant, quotas())).await;
    let answer = h.ask("whale", "neighbour").await.unwrap();
    assert!(answer.contains("send=Err(Error::InvalidInput"), "{answer}");
    assert!(
        answer.contains("publish=Err(Error::InvalidInput"),
        "{answer}"
    );
    support::wait_kind(&h, "whale", support::Expect::Quota("message-size")).await;
    // From the agent side too: the receiver refuses a payload over its limit.
    let err = h.ask("neighbour", &"x".repeat(2 << 20)).await.unwrap_err();
    assert!(err.contains("InvalidInput"), "{err}");
    neighbour_still_answers(&h).await;
}

/// The SNI of every TLS connection a test server saw, in order.
type SeenNames = Arc<Mutex<Vec<Option<String>>>>;

/// A TLS server on 127.0.0.1 with a certificate for `names` from a fresh test CA. Answers
/// `200 secure:<path>`; records the SNI of every TLS connection, finished or not. Returns
/// the port, the CA certificate (DER) and the SNIs seen.
fn tls_server(names: &[&str]) -> (u16, Vec<u8>, SeenNames) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::io::{BufRead, BufReader, Write};

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&server_key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
    )
    .unwrap();
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut request_line = String::new();
            let ok = {
                let mut reader = BufReader::new(&mut tls);
                let ok = reader.read_line(&mut request_line).is_ok_and(|n| n > 0);
                let mut line = String::new();
                while ok && reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                ok
            };
            record
                .lock()
                .unwrap()
                .push(tls.conn.server_name().map(str::to_owned));
            if !ok {
                // The client refused the certificate; keep serving.
                continue;
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_owned();
            let body = format!("secure:{path}");
            let _ = write!(
                tls,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (port, ca.der().to_vec(), seen)
}

/// The SNIs `seen` once at least `n` TLS connections were recorded (the server records a
/// refused handshake only after the client has gone).
async fn wait_seen(seen: &Mutex<Vec<Option<String>>>, n: usize) -> Vec<Option<String>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = seen.lock().unwrap().clone();
        if now.len() >= n || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn empty_body() -> http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, HttpError> {
    use http_body_util::BodyExt;
    http_body_util::Empty::<bytes::Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn get(
    url: &str,
) -> http::Request<http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, HttpError>> {
    let uri: http::Uri = url.parse().unwrap();
    let host = uri.authority().unwrap().to_string();
    http::Request::get(uri)
        .header(http::header::HOST, host)
        .body(empty_body())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_connects_to_the_checked_address_and_verifies_the_original_name() {
    use http_body_util::BodyExt;
    let (port, ca, seen) = tls_server(&["rebind.test"]);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca))
        .unwrap();
    let trusted = outgoing::tls_config(roots).unwrap();
    let checked = SocketAddr::from(([127, 0, 0, 1], port));

    // `rebind.test` resolves nowhere: the request can only succeed by going to the checked
    // address, with the name used for SNI and verification.
    let (response, io) = outgoing::send_to(
        get(&format!("https://rebind.test:{port}/hello")),
        checked,
        &trusted,
        None,
    )
    .await
    .unwrap();
    tokio::spawn(Box::into_pin(io));
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"secure:/hello");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [Some("rebind.test".to_owned())]
    );

    // The certificate is checked against the name in the URI, not the address.
    let wrong = outgoing::send_to(
        get(&format!("https://other.test:{port}/")),
        checked,
        &trusted,
        None,
    )
    .await;
    assert!(matches!(wrong, Err(HttpError::Tls(_))), "{:?}", wrong.err());

    // Guests get the web PKI roots: a private CA is not trusted.
    let untrusted = outgoing::send_to(
        get(&format!("https://rebind.test:{port}/")),
        checked,
        &outgoing::web_pki_tls().unwrap(),
        None,
    )
    .await;
    assert!(
        matches!(untrusted, Err(HttpError::Tls(_))),
        "{:?}",
        untrusted.err()
    );
    assert_eq!(
        wait_seen(&seen, 3).await,
        [
            Some("rebind.test".to_owned()),
            Some("other.test".to_owned()),
            Some("rebind.test".to_owned())
        ],
        "every attempt reached the checked address, named as in the URI"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_https_request_goes_to_the_checked_loopback_address_only_with_a_grant() {
    let h = Harness::new();
    let (port, _ca, seen) = tls_server(&["localhost"]);

    // The name and an address grant for exactly 127.0.0.1:port (a name is resolved only
    // through a name grant; loopback needs the address grant too). `localhost` may resolve
    // to ::1 first; the hook picks the address the grant allows and the TLS handshake goes
    // there, with `localhost` as the server name. The test CA is not a web PKI root, so the
    // guest gets a TLS error, after the server saw the handshake.
    let grant = caps(&format!(
        "network: [{{ host: localhost, port: {port} }}, {{ host: 127.0.0.1, port: {port} }}]"
    ));
    h.add(spec("tls-fetcher", "http-fetch", grant, quotas()))
        .await;
    let answer = h
        .ask("tls-fetcher", &format!("https://localhost:{port}/"))
        .await
        .unwrap();
    assert!(answer.starts_with("error:"), "{answer}");
    assert_ne!(answer, "error:ErrorCode::HttpRequestDenied");
    assert_eq!(wait_seen(&seen, 1).await, [Some("localhost".to_owned())]);

    // A host-name grant does not open loopback: refused after resolution, audited, and the
    // server never sees a connection.
    let by_name = caps(&format!("network: [{{ host: localhost, port: {port} }}]"));
    h.add(spec("tls-sneaky", "http-fetch", by_name, quotas()))
        .await;
    let sneaky = h
        .ask("tls-sneaky", &format!("https://localhost:{port}/"))
        .await
        .unwrap();
    assert_eq!(sneaky, "error:ErrorCode::HttpRequestDenied");
    let denial = support::wait_kind(&h, "tls-sneaky", support::Expect::Denied("network")).await;
    let target = denial["detail"]["target"].as_str().unwrap();
    assert!(
        target.contains("resolved: ") && target.contains("127.0.0.1"),
        "{target}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_only_directory_takes_writes_and_refuses_every_read() {
    let h = Harness::new();
    let grant = caps(
        "filesystem: [{ path: /drop, access: [write] }, { path: /data, access: [read, write] }, \
         { path: /data/inbox, access: [write] }]",
    );
    let s = spec("dropbox", "file-reader", grant, quotas());
    let drop_dir = h.supervisor.host_dir(&s.id, "/drop");
    std::fs::create_dir_all(&drop_dir).unwrap();
    std::fs::write(drop_dir.join("existing.txt"), "SECRET").unwrap();
    h.add(s).await;

    // Writing works: create, append, directories.
    let ask = |cmd: String| {
        let h = &h;
        async move { h.ask("dropbox", &cmd).await.unwrap() }
    };
    assert_eq!(ask("write:/drop/out.txt:hi".into()).await, "written");
    assert_eq!(ask("append:/drop/out.txt:+more".into()).await, "appended");
    assert_eq!(ask("mkdir:/drop/sub".into()).await, "created");
    assert_eq!(ask("write:/drop/sub/x.txt:y".into()).await, "written");
    assert_eq!(
        std::fs::read_to_string(drop_dir.join("out.txt")).unwrap(),
        "hi+more"
    );
    assert_eq!(
        std::fs::read_to_string(drop_dir.join("sub/x.txt")).unwrap(),
        "y"
    );

    // Reading does not: contents, listing, metadata; each is a WASI error, audited.
    // Moving a file into a readable directory would be a read by other means.
    for cmd in [
        "read:/drop/existing.txt",
        "read:/drop/out.txt",
        "list:/drop",
        "list:/drop/sub",
        "stat:/drop/existing.txt",
        "peek:/drop/existing.txt",
        "move:/drop/existing.txt:/data/stolen.txt",
    ] {
        let answer = ask(cmd.into()).await;
        assert!(
            answer.starts_with("error:Operation not permitted"),
            "{cmd}: {answer}"
        );
        assert!(
            !answer.contains("SECRET") && !answer.contains("hi+more"),
            "{cmd}: {answer}"
        );
    }
    let events = h.audit_events().await;
    let refused: Vec<&str> = events
        .iter()
        .filter(|e| support::Expect::Denied("filesystem").matches("dropbox", e))
        .map(|e| e["detail"]["target"].as_str().unwrap())
        .collect();
    // Eight: `peek` is refused twice, at the size-hint `stat` of `read_to_end` and at the
    // read itself.
    assert!(
        refused.len() == 8
            && refused
                .iter()
                .all(|t| t.contains("write-only") || t.contains("more access")),
        "{refused:?}"
    );
    for expected in [
        "read: the grant is write-only",
        "rename existing.txt: into a directory with more access",
        "open .: the grant is write-only",
    ] {
        assert!(refused.contains(&expected), "{expected}: {refused:?}");
    }
    assert!(
        !h.supervisor
            .host_dir(&id("dropbox"), "/data")
            .join("stolen.txt")
            .exists()
    );
    // The read-write neighbour directory still reads and writes normally.
    assert_eq!(ask("write:/data/own.txt:mine".into()).await, "written");
    assert_eq!(ask("read:/data/own.txt".into()).await, "mine");
    // A write-only grant nested in a readable one is readable: the `/data` grant covers it,
    // even though wasi-libc opens through the longer `/data/inbox` preopen.
    assert_eq!(ask("write:/data/inbox/m.txt:z".into()).await, "written");
    assert_eq!(ask("read:/data/inbox/m.txt".into()).await, "z");
    // Refusals are values, not traps: the instance lives on and still writes.
    let status = h.supervisor.status(&id("dropbox")).await.unwrap();
    assert_eq!(status.kills.load(Ordering::Relaxed), 0);
    assert_eq!(ask("write:/drop/late.txt:ok".into()).await, "written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_connections_left_in_flight_are_bounded_and_audited() {
    let h = Harness::new();
    neighbour(&h).await;
    // A server that accepts and never answers: every request stays in flight, each holding
    // a connection (a host descriptor) until the instance ends.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let accepted = held.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            accepted.lock().unwrap().push(sock);
        }
    });
    let grant = caps(&format!("network: [{{ host: 127.0.0.1, port: {port} }}]"));
    // Room in the resource table (64 MiB of quota: 4096 entries) for every request handle,
    // so the descriptor bound, not the table, is what stops the flood.
    let patient = airssys_agent::limits::Quotas {
        timeout: Duration::from_secs(20),
        cpu_time_per_message: Duration::from_secs(10),
        memory_bytes: 64 << 20,
        ..quotas()
    };
    const FLOOD: usize = 800;
    h.add(spec("hoarder", "http-fetch", grant, patient)).await;
    let reply = h
        .ask(
            "hoarder",
            &format!("flood {FLOOD} http://127.0.0.1:{port}/"),
        )
        .await
        .unwrap();
    let count = |key: &str| -> usize {
        reply
            .split(' ')
            .find_map(|kv| kv.strip_prefix(key))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {reply:?}"))
    };
    let (refused, waiting) = (count("refused:"), count("waiting:"));
    assert!(
        waiting <= airssys_agent::host::resources::MAX_OPEN_FILES,
        "{waiting} connections in flight at once: {reply}"
    );
    assert!(
        refused >= FLOOD - airssys_agent::host::resources::MAX_OPEN_FILES,
        "{reply}"
    );
    assert!(
        held.lock().unwrap().len() <= airssys_agent::host::resources::MAX_OPEN_FILES,
        "the server saw {} connections",
        held.lock().unwrap().len()
    );
    h.wait_audit("the refusals audited as a handles quota", |e| {
        support::Expect::Quota("handles").matches("hoarder", e)
    })
    .await;
    neighbour_still_answers(&h).await;
}
