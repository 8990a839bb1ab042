//! The agent's `/metrics`, `/healthz` and `/readyz` over real HTTP: from the library with a
//! readiness handle, and from the `airssys-agent` binary in manifest mode.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airssys_agent::audit::{AuditConfig, AuditEvent, AuditKind, Auditor, InstanceIdentity};
use airssys_agent::metrics::Metrics;
use airssys_agent::serve::{Readiness, serve};

/// `GET path` over a fresh HTTP/1.1 connection: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {out:?}"));
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_answer_over_http() {
    let metrics = Arc::new(Metrics::new());
    let (audit, auditor) = Auditor::start(AuditConfig::new("node-1", &metrics.audit)).unwrap();
    let readiness = Readiness::default();
    let (addr, serving) = serve(
        "127.0.0.1:0".parse().unwrap(),
        metrics.clone(),
        readiness.clone(),
    )
    .await
    .unwrap();
    let task = tokio::spawn(serving);
    let get = |path: &'static str| tokio::task::spawn_blocking(move || get(addr, path));

    // The audit counters, as the hot path bumps them.
    let id = InstanceIdentity::new("team-a", "counter", 1, "sha256:abc");
    audit.record(AuditEvent::now(
        &id,
        AuditKind::Killed {
            reason: "timeout".into(),
        },
    ));
    auditor.flush();
    let (status, page) = get("/metrics").await.unwrap();
    assert_eq!(status, 200, "{page}");
    for line in [
        "airssys_instance_kills_total 1",
        "airssys_audit_events_total{reason=\"Killed\"} 1",
        "airssys_capability_denials_total",
        "airssys_events_dropped_total 0",
        "airssys_events_folded_total 0",
    ] {
        assert!(page.contains(line), "missing {line:?} in\n{page}");
    }
    assert!(page.ends_with("# EOF\n"), "{page}");
    assert_eq!(get("/healthz").await.unwrap(), (200, "ok\n".to_owned()));

    // /readyz follows the handle both ways.
    assert_eq!(get("/readyz").await.unwrap().0, 503);
    readiness.set(true);
    assert_eq!(get("/readyz").await.unwrap(), (200, "ok\n".to_owned()));
    readiness.set(false);
    assert_eq!(get("/readyz").await.unwrap().0, 503);
    assert_eq!(get("/nope").await.unwrap().0, 404);
    task.abort();
    auditor.shutdown();
}

/// Drops terminal colour codes from a log.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Stops the agent when the test ends, however it ends.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_agent_binary_serves_metrics_in_manifest_mode() {
    let dir = tempfile::tempdir().unwrap();
    for g in ["echo", "log_bomb"] {
        std::fs::copy(
            support::guest_dir().join(format!("{g}.wasm")),
            dir.path().join(format!("{g}.wasm")),
        )
        .unwrap();
    }
    // `crasher` fails its init on every start: kills the audit counts, no request needed.
    let manifest = dir.path().join("agent.yaml");
    std::fs::write(
        &manifest,
        r#"
components:
  - name: echo
    wasm: echo.wasm
  - name: crasher
    wasm: log_bomb.wasm
    capabilities:
      env: [{ name: MODE }]
    env: { MODE: fail-init }
"#,
    )
    .unwrap();
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_airssys-agent"))
        .args(["run", "--manifest"])
        .arg(&manifest)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("AIRSSYS_METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _agent = Agent(child);

    let deadline = Instant::now() + Duration::from_secs(120);
    let read_log = || plain(&std::fs::read_to_string(&log_path).unwrap_or_default());
    let addr: SocketAddr = loop {
        let log = read_log();
        if let Some(addr) = log
            .split("bound=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
        {
            break addr.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no bound address in:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(get(addr, "/healthz"), (200, "ok\n".to_owned()));
    while get(addr, "/readyz").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "never ready; log:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    loop {
        let (status, page) = get(addr, "/metrics");
        assert_eq!(status, 200);
        let kills = page
            .lines()
            .find_map(|l| l.strip_prefix("airssys_instance_kills_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if kills >= 1 && page.contains("airssys_audit_events_total{reason=\"Killed\"}") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the crashing component's kills never showed:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
