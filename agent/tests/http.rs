//! HTTP components (issue 13), end to end through the supervisor: real engine, pooled
//! instances, audit pipeline and a real HTTP client on loopback. Guests:
//! `tests/components/http-hello` (well-behaved) and `http-hostile` (endless response, slow
//! body, flood, ungranted fetch, busy loop). Each hostile case asserts the status the client
//! gets, the audit record, and that a neighbour still answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use airssys_agent::http_server::HttpSettings;
use airssys_agent::id::ComponentId;
use airssys_agent::supervisor::ComponentSpec;
use airssys_crds::http::HttpSpec;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::{Expect, Harness, caps, quotas, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn http_spec(name: &str, guest: &str, grant: &str, http: HttpSpec) -> ComponentSpec {
    let mut s = spec(name, guest, caps(grant), quotas());
    s.http = Some(HttpSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        limits: http.limits().unwrap(),
        spec: http,
    });
    s
}

async fn address(h: &Harness, name: &str) -> SocketAddr {
    h.supervisor
        .http_address(&ComponentId::new("test", name))
        .await
        .expect("served over HTTP")
}

/// What a client got: status (0: the connection closed before a response head), `Retry-After`,
/// and the body (or how many bytes arrived before the connection failed).
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Result<String, usize>,
}

async fn send(addr: SocketAddr, method: &str, path: &str, body: Vec<u8>) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "app.example.com")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        // The connection closed before a response head arrived.
        Err(_) => {
            return Answer {
                status: 0,
                retry_after: None,
                body: Err(0),
            };
        }
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut body = response.into_body();
    let mut got = Vec::new();
    let body = loop {
        match body.frame().await {
            None => break Ok(String::from_utf8_lossy(&got).into_owned()),
            Some(Ok(frame)) => got.extend_from_slice(frame.data_ref().map_or(&[][..], |d| d)),
            Some(Err(_)) => break Err(got.len()),
        }
    };
    Answer {
        status,
        retry_after,
        body,
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    send(addr, "GET", path, Vec::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_answers_on_its_route_and_refuses_large_bodies() {
    let h = Harness::new();
    let route = HttpSpec {
        path_prefix: Some("/hello".into()),
        max_request_body_bytes: Some("1Ki".into()),
        ..HttpSpec::default()
    };
    h.add(http_spec("hello", "http-hello", "", route)).await;
    let addr = address(&h, "hello").await;

    let a = get(addr, "/hello/world").await;
    assert_eq!(
        (a.status, a.body.unwrap()),
        (200, "hello from /hello/world\n".into())
    );
    assert_eq!(get(addr, "/other").await.status, 404, "outside the prefix");
    assert_eq!(get(addr, "/hellox").await.status, 404, "prefix on segments");

    let a = send(addr, "POST", "/hello", vec![b'a'; 1000]).await;
    assert_eq!(a.body.unwrap(), "received 1000 bytes\n");
    let a = send(addr, "POST", "/hello", vec![b'a'; 4000]).await;
    assert_eq!(a.status, 413, "a declared body over the limit");
    support::wait_kind(&h, "hello", Expect::Quota("request-body")).await;

    // An undeclared (chunked) body is cut where it passes the limit: the handler's read
    // fails, and the breach is audited against the instance reading it.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let chunk = "a".repeat(1000);
    let mut raw = String::from(
        "POST /hello HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    );
    for _ in 0..4 {
        raw.push_str(&format!("3e8\r\n{chunk}\r\n"));
    }
    raw.push_str("0\r\n\r\n");
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.1 400") && response.contains("cannot read the body"),
        "the handler saw its read fail: {response}"
    );
    h.wait_audit("a streamed request-body breach", |e| {
        Expect::Quota("request-body").matches("hello", e) && e["instance"] != 0
    })
    .await;

    // Many sequential requests: one fresh instance each, none left behind.
    for i in 0..50 {
        assert_eq!(get(addr, &format!("/hello/{i}")).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_world_must_match_the_spec_and_the_error_names_what_is_missing() {
    let h = Harness::new();
    // An HTTP handler without spec.http.
    let err = h
        .supervisor
        .add(spec("plain", "http-hello", caps(""), quotas()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("set spec.http"), "{err}");
    assert!(err.contains("wasi:http/incoming-handler"), "{err}");
    // spec.http on an airssys component.
    let err = h
        .supervisor
        .add(http_spec("actor", "echo", "", HttpSpec::default()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not export `wasi:http/incoming-handler`"),
        "{err}"
    );
    // Neither world: a component that exports nothing the agent runs.
    let module_only = wasmtime_component_exporting_nothing();
    let mut s = spec("nothing", "echo", caps(""), quotas());
    s.digest = support::sha256_digest(&module_only);
    s.wasm = module_only.into();
    let err = h.supervisor.add(s).await.unwrap_err().to_string();
    assert!(
        err.contains("exports neither `airssys:component/lifecycle`")
            && err.contains("wasi:http/incoming-handler"),
        "{err}"
    );
}

/// The smallest valid component: no imports, no exports.
fn wasmtime_component_exporting_nothing() -> Vec<u8> {
    // `(component)` in the binary format: magic, version 0x0d with layer 1.
    vec![0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_over_the_limit_gets_503_with_retry_after_and_is_counted() {
    let h = Harness::new();
    let route = HttpSpec {
        max_concurrent_requests: Some(2),
        ..HttpSpec::default()
    };
    h.add(http_spec("flood", "http-hostile", "", route)).await;
    let addr = address(&h, "flood").await;

    let tasks: Vec<_> = (0..6)
        .map(|_| tokio::spawn(async move { get(addr, "/sleep/1500").await }))
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let a = t.await.unwrap();
        match a.status {
            200 => ok += 1,
            503 => {
                assert_eq!(
                    a.retry_after.as_deref(),
                    Some("1"),
                    "503 says when to retry"
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {a:?}"),
        }
    }
    assert_eq!((ok, refused), (2, 4), "exactly the limit is served");
    support::wait_kind(&h, "flood", Expect::Quota("concurrency")).await;
    let counted = h.metrics.encode();
    assert!(
        counted.contains("airssys_quota_breaches_total{quota=\"concurrency\"} 4"),
        "{counted}"
    );
    // Once the flood is over, requests are served again.
    assert_eq!(get(addr, "/").await.body.unwrap(), "hostile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_response_is_cut_at_the_limit() {
    let h = Harness::new();
    let route = HttpSpec {
        max_response_body_bytes: Some("64Ki".into()),
        ..HttpSpec::default()
    };
    h.add(http_spec("endless", "http-hostile", "", route)).await;
    let addr = address(&h, "endless").await;
    let started = Instant::now();
    let a = get(addr, "/endless").await;
    // Cut off: the head may or may not have left hyper's buffer, the body never ends.
    assert!(a.status == 200 || a.status == 0, "{a:?}");
    let got = a.body.expect_err("the body must not end cleanly");
    assert!(
        got <= 64 << 10,
        "no more than the limit reached the client: {got}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "cut at once, not at the timeout"
    );
    support::wait_kind(&h, "endless", Expect::Quota("response-body")).await;
    assert_eq!(
        get(addr, "/").await.body.unwrap(),
        "hostile",
        "still serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_body_times_out() {
    let h = Harness::new();
    let route = HttpSpec {
        request_timeout: Some("1s".into()),
        ..HttpSpec::default()
    };
    h.add(http_spec("slow", "http-hostile", "", route)).await;
    let addr = address(&h, "slow").await;

    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /slurp HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\n")
        .await
        .unwrap();
    // One byte every 200 ms: the whole body would take 20 s.
    let trickle = tokio::spawn(async move {
        let mut response = Vec::new();
        let mut buf = [0u8; 1024];
        for _ in 0..100 {
            let _ = stream.write_all(b"x").await;
            match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => response.extend_from_slice(&buf[..n]),
                Ok(Err(_)) => break,
                Err(_) => {}
            }
            if response.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        String::from_utf8_lossy(&response).into_owned()
    });
    let response = trickle.await.unwrap();
    assert!(response.starts_with("HTTP/1.1 504"), "{response:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered at the timeout: {:?}",
        started.elapsed()
    );
    support::wait_kind(&h, "slow", Expect::Quota("timeout")).await;
    support::wait_kind(&h, "slow", Expect::Killed).await;
    assert_eq!(get(addr, "/").await.body.unwrap(), "hostile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outgoing_request_to_an_ungranted_host_is_denied_and_audited() {
    let h = Harness::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(sock);
        }
    });
    h.add(http_spec("nosy", "http-hostile", "", HttpSpec::default()))
        .await;
    let addr = address(&h, "nosy").await;
    let a = get(addr, &format!("/fetch/127.0.0.1:{port}")).await;
    assert_eq!(a.body.unwrap(), "error:ErrorCode::HttpRequestDenied");
    let denial = support::wait_kind(&h, "nosy", Expect::Denied("network")).await;
    assert!(
        denial["detail"]["target"]
            .as_str()
            .unwrap()
            .contains(&port.to_string()),
        "{denial}"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 0, "no connection was made");

    // The same request with a grant reaches the host.
    let grant = format!("network: [{{ host: 127.0.0.1, port: {port} }}]");
    h.add(http_spec(
        "allowed",
        "http-hostile",
        &grant,
        HttpSpec::default(),
    ))
    .await;
    let addr = address(&h, "allowed").await;
    let a = get(addr, &format!("/fetch/127.0.0.1:{port}")).await;
    assert_ne!(a.body.unwrap(), "error:ErrorCode::HttpRequestDenied");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "the granted request connected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_loop_hits_the_cpu_deadline_and_the_agent_keeps_serving() {
    let h = Harness::new();
    h.add(http_spec(
        "spinner",
        "http-hostile",
        "",
        HttpSpec::default(),
    ))
    .await;
    h.add(http_spec("hello", "http-hello", "", HttpSpec::default()))
        .await;
    let spinner = address(&h, "spinner").await;
    let hello = address(&h, "hello").await;

    let spins: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { get(spinner, "/spin").await }))
        .collect();
    // While they spin, the neighbour and the spinner's other routes answer.
    assert_eq!(get(hello, "/x").await.status, 200);
    assert_eq!(get(spinner, "/").await.body.unwrap(), "hostile");
    for s in spins {
        let a = s.await.unwrap();
        assert_eq!(a.status, 500, "{a:?}");
    }
    support::wait_kind(&h, "spinner", Expect::Quota("cpu-time")).await;
    support::wait_kind(&h, "spinner", Expect::Killed).await;
    assert_eq!(get(hello, "/y").await.body.unwrap(), "hello from /y\n");
    let status = h
        .supervisor
        .status(&ComponentId::new("test", "spinner"))
        .await
        .unwrap();
    assert_eq!(status.kills.load(Ordering::Relaxed), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_and_stop_drain_requests_in_flight() {
    let h = Harness::new();
    let id = ComponentId::new("test", "web");
    h.add(http_spec("web", "http-hostile", "", HttpSpec::default()))
        .await;
    let addr = address(&h, "web").await;
    let at = |guest: &str| {
        let mut s = http_spec("web", guest, "", HttpSpec::default());
        if let Some(http) = s.http.as_mut() {
            http.listen = addr;
        }
        s
    };

    // Update while a request is in flight: it finishes on the old revision, new requests
    // get the new one, on the same address.
    let in_flight = tokio::spawn(async move { get(addr, "/sleep/1500").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.supervisor.update(at("http-hello")).await.unwrap();
    assert_eq!(get(addr, "/new").await.body.unwrap(), "hello from /new\n");
    let old = in_flight.await.unwrap();
    assert_eq!((old.status, old.body.unwrap()), (200, "slept".into()));

    // Stop while a request of an older revision is in flight: new connections are refused,
    // the request finishes, and the stop waits for it.
    h.supervisor.update(at("http-hostile")).await.unwrap();
    let in_flight = tokio::spawn(async move { get(addr, "/sleep/1000").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.supervisor.update(at("http-hello")).await.unwrap();
    let stopped = h.supervisor.begin_remove(&id).await.unwrap();
    let stopping = tokio::spawn(stopped);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections while draining"
    );
    assert!(
        !stopping.is_finished(),
        "the stop waits for the request in flight"
    );
    let last = in_flight.await.unwrap();
    assert_eq!((last.status, last.body.unwrap()), (200, "slept".into()));
    tokio::time::timeout(Duration::from_secs(3), stopping)
        .await
        .expect("drained once the request finished")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_instance_pool_gets_503_and_the_component_keeps_serving() {
    // Room for three instances on this "node", a component allowed ten requests at once.
    let h = Harness::with_engine(|c| c.with_capacity(3));
    let route = HttpSpec {
        max_concurrent_requests: Some(10),
        ..HttpSpec::default()
    };
    h.add(http_spec("crowd", "http-hostile", "", route)).await;
    let addr = address(&h, "crowd").await;
    let tasks: Vec<_> = (0..6)
        .map(|_| tokio::spawn(async move { get(addr, "/sleep/1500").await }))
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        let a = t.await.unwrap();
        if a.status == 503 {
            assert_eq!(a.retry_after.as_deref(), Some("1"));
        }
        statuses.push(a.status);
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 200, 503, 503, 503],
        "the pool's size is served"
    );
    support::wait_kind(&h, "crowd", Expect::Quota("concurrency")).await;
    assert_eq!(
        support::count(&h, "crowd", Expect::Killed).await,
        0,
        "a full pool kills nothing"
    );
    assert_eq!(get(addr, "/").await.body.unwrap(), "hostile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_capped_and_requests_still_get_through_once_one_closes() {
    let h = Harness::new();
    // One request slot: at most 64 connections.
    let route = HttpSpec {
        max_concurrent_requests: Some(1),
        ..HttpSpec::default()
    };
    h.add(http_spec("capped", "http-hello", "", route)).await;
    let addr = address(&h, "capped").await;
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // The 65th connects (the kernel's backlog) but is not served while all 64 stay open.
    let waiting = tokio::spawn(async move { get(addr, "/late").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "served beyond the connection cap");
    drop(idle.pop());
    let a = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert_eq!(a.body.unwrap(), "hello from /late\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_can_turn_an_actor_into_an_http_component_and_back() {
    let h = Harness::new();
    let id = ComponentId::new("test", "shape");
    h.add(spec("shape", "echo", caps(""), quotas())).await;
    assert_eq!(h.ask("shape", "hi").await.unwrap(), "hi");
    assert!(h.supervisor.http_address(&id).await.is_none());

    h.supervisor
        .update(http_spec("shape", "http-hello", "", HttpSpec::default()))
        .await
        .unwrap();
    let addr = address(&h, "shape").await;
    assert_eq!(get(addr, "/now").await.body.unwrap(), "hello from /now\n");
    assert!(h.ask("shape", "hi").await.is_err(), "no mailbox any more");

    h.supervisor
        .update(spec("shape", "echo", caps(""), quotas()))
        .await
        .unwrap();
    assert_eq!(h.ask("shape", "back").await.unwrap(), "back");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "the HTTP listener stays open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
