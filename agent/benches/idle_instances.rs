//! End-to-end bench program: start N idle echo actors (default 10,000) and report the
//! agent's resident memory (goal: under 600 MiB for 10,000), plus start rate. Every actor is
//! a real instance with its own Store, mailbox and task; a sample of them is asked to answer
//! afterwards so the figure is for live, working instances.
//!
//! Run: `cargo bench -p airssys-agent --bench idle_instances` (N via AIRSSYS_IDLE_INSTANCES).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airssys_agent::engine::{AgentEngine, EngineConfig, sha256_digest};
use airssys_agent::id::ComponentId;
use airssys_agent::limits::Quotas;
use airssys_agent::restart::RestartPolicy;
use airssys_agent::storage::KvStore;
use airssys_agent::supervisor::{ComponentSpec, Supervisor};
use airssys_crds::capability::CapabilitySet;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    kib * 1024
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse. Warnings (kills, restarts) go to stderr.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let n: u32 = std::env::var("AIRSSYS_IDLE_INSTANCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let guests = std::env::var_os("AIRSSYS_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/airssys-wasm/guests")
        });
    if !guests.join("echo.wasm").exists() {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/components/build.sh");
        assert!(
            std::process::Command::new("bash")
                .arg(script)
                .status()
                .unwrap()
                .success()
        );
    }
    let wasm: Arc<[u8]> = Arc::from(std::fs::read(guests.join("echo.wasm")).unwrap());
    let digest = sha256_digest(&wasm);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EngineConfig::new(dir.path().join("cache")).with_capacity(n + 16);
        config.max_memory_bytes = 64 << 20;
        let engine = AgentEngine::new(config).unwrap();
        let storage = Arc::new(KvStore::open(dir.path().join("kv.redb")).unwrap());
        let metrics = airssys_agent::metrics::Metrics::new();
        let (audit, _auditor) = airssys_agent::audit::Auditor::start(
            airssys_agent::audit::AuditConfig::new("bench", &metrics.audit),
        )
        .unwrap();
        let supervisor = Supervisor::new(
            engine,
            storage,
            audit,
            dir.path().join("fs"),
            RestartPolicy::default(),
        );
        let quotas = Quotas {
            memory_bytes: 16 << 20,
            mailbox_capacity: 4,
            ..Quotas::default()
        };
        // Compile once before measuring.
        supervisor
            .add(ComponentSpec {
                id: ComponentId::new("idle", "warmup"),
                digest: digest.clone(),
                wasm: wasm.clone(),
                grant: CapabilitySet::default(),
                quotas: quotas.clone(),
                env: Vec::new(),
                k8s: None,
                http: None,
            })
            .await
            .unwrap();
        let base = rss_bytes();
        let started = Instant::now();
        for i in 0..n {
            supervisor
                .add(ComponentSpec {
                    id: ComponentId::new("idle", format!("echo-{i}")),
                    digest: digest.clone(),
                    wasm: wasm.clone(),
                    grant: CapabilitySet::default(),
                    quotas: quotas.clone(),
                    env: Vec::new(),
                    k8s: None,
                    http: None,
                })
                .await
                .unwrap();
        }
        // Every actor starts its instance asynchronously; ask a sample (and the last one).
        for i in (0..n).step_by((n as usize / 100).max(1)).chain([n - 1]) {
            let id = ComponentId::new("idle", format!("echo-{i}"));
            let reply = supervisor
                .request(&id, &b"hi"[..], Duration::from_secs(60))
                .await
                .unwrap();
            assert_eq!(reply, b"hi");
        }
        let elapsed = started.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = rss_bytes();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        println!("idle_instances: {n} live echo actors");
        println!(
            "  rss before: {:.1} MiB, after: {:.1} MiB",
            mib(base),
            mib(rss)
        );
        println!(
            "  added: {:.1} MiB total, {:.1} KiB per instance (goal: 10,000 under 600 MiB)",
            mib(rss.saturating_sub(base)),
            rss.saturating_sub(base) as f64 / 1024.0 / f64::from(n)
        );
        println!(
            "  started and answered in {:.2?} ({:.0} instances/s)",
            elapsed,
            f64::from(n) / elapsed.as_secs_f64()
        );
        supervisor.shutdown().await;
    });
}
