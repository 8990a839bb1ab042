//! A component cannot turn the agent's own log into its output channel: a 2 MB `init` error
//! on every restart, or a message that logs or prints 40 MB, leave the agent's log small. What
//! a guest prints does reach the log, with its name. The whole
//! test binary's `tracing` output is captured (one global subscriber), so it holds one test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use airssys_agent::limits::Quotas;
use support::{Expect, Harness, caps, quotas, spec};

/// Counts the bytes the agent logs, and keeps the first MiB of them.
#[derive(Clone, Default)]
struct Counted(Arc<AtomicUsize>, Arc<Mutex<Vec<u8>>>);

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.fetch_add(buf.len(), Ordering::Relaxed);
        let mut kept = self.1.lock().unwrap();
        if kept.len() < 1 << 20 {
            kept.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_cannot_amplify_its_output_into_the_agents_log() {
    let logged = Counted::default();
    let writer = logged.clone();
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(move || writer.clone())
        .init();
    let h = Harness::new();

    // init fails with a 2 MB error; the supervisor restarts it several times.
    let mut failing = spec(
        "init-bomb",
        "log-bomb",
        caps("env: [{name: MODE}]"),
        quotas(),
    );
    failing.env = vec![("MODE".into(), "fail-init".into())];
    h.add(failing).await;
    h.wait_audit("crash loop of init-bomb", |e| {
        Expect::CrashLoop.matches("init-bomb", e)
    })
    .await;
    let kills = h
        .audit_events()
        .await
        .iter()
        .filter(|e| Expect::Killed.matches("init-bomb", e))
        .count();
    assert!(kills >= 4, "{kills} restarts");
    let after_init = logged.0.load(Ordering::Relaxed);
    assert!(
        after_init < 64 << 10,
        "{kills} failed inits made the agent log {after_init} bytes"
    );

    // One message logs 10,000 lines of 4,000 bytes (40 MB). Generous CPU and time, so the
    // log budget (not the CPU quota) is what is tested, however loaded the machine is.
    let patient = Quotas {
        cpu_time_per_message: Duration::from_secs(20),
        timeout: Duration::from_secs(60),
        ..quotas()
    };
    h.add(spec("chatty", "log-bomb", caps(""), patient.clone()))
        .await;
    assert_eq!(h.ask("chatty", "go").await.unwrap(), "logged");
    let chatty = logged.0.load(Ordering::Relaxed) - after_init;
    assert!(
        chatty < 2 << 20,
        "40 MB of guest log lines made the agent log {chatty} bytes"
    );

    // Printing is logging: stdout and stderr reach the agent's log under the component's
    // name, within the same budget (a fresh component, so a fresh budget).
    for stream in ["stdout", "stderr"] {
        let name = format!("printer-{stream}");
        h.add(spec(&name, "log-bomb", caps(""), patient.clone()))
            .await;
        logged.1.lock().unwrap().clear();
        let before = logged.0.load(Ordering::Relaxed);
        assert_eq!(h.ask(&name, stream).await.unwrap(), "printed");
        let printed = logged.0.load(Ordering::Relaxed) - before;
        assert!(
            printed > 100_000,
            "{stream}: 40 MB printed left only {printed} bytes in the agent log"
        );
        assert!(
            printed < 2 << 20,
            "{stream}: 40 MB printed made the agent log {printed} bytes"
        );
        let text = String::from_utf8_lossy(&logged.1.lock().unwrap()).into_owned();
        assert!(
            text.contains(&format!("test/{name}")) && text.contains("line 0 yyy"),
            "{stream}: the guest's first line, with its name, is in the log"
        );
    }
}
