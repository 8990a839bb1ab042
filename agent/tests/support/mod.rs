//! Shared test harness: builds the guest components once (via tests/components/build.sh),
//! and starts a supervisor with a real engine, database and audit pipeline in a temp dir.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use airssys_agent::audit::{AuditConfig, AuditSink, Auditor, AuditorHandle, EventSink};
pub use airssys_agent::engine::{AgentEngine, EngineConfig, sha256_digest};
use airssys_agent::id::ComponentId;
pub use airssys_agent::limits::Quotas;
use airssys_agent::metrics::Metrics;
use airssys_agent::restart::RestartPolicy;
use airssys_agent::storage::KvStore;
use airssys_agent::supervisor::{ComponentSpec, Supervisor};
use airssys_crds::capability::{Capabilities, CapabilitySet};

/// Directory with the built guest `.wasm` files.
pub fn guest_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = std::env::var_os("AIRSSYS_GUEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                    .join(".cache/airssys-wasm/guests")
            });
        // Always run the build: a no-op when nothing changed, and tests never see stale guests.
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/components/build.sh");
        let status = std::process::Command::new("bash")
            .arg(&script)
            .env("AIRSSYS_GUEST_DIR", &out)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run tests/components/build.sh");
        assert!(status.success(), "building the guest components failed");
        out
    })
    .clone()
}

/// The bytes of guest `name` (crate name with `-` → `_`).
pub fn guest(name: &str) -> Arc<[u8]> {
    let path = guest_dir().join(format!("{}.wasm", name.replace('-', "_")));
    Arc::from(std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

/// Capabilities from YAML (the `spec.capabilities` shape).
pub fn caps(yaml: &str) -> CapabilitySet {
    let caps: Capabilities = if yaml.trim().is_empty() {
        Capabilities::default()
    } else {
        serde_yaml::from_str(yaml).expect("capabilities yaml")
    };
    CapabilitySet::parse(&caps).expect("valid capabilities")
}

/// Quotas tuned for tests: short CPU budget and timeout.
pub fn quotas() -> Quotas {
    Quotas {
        memory_bytes: 32 << 20,
        cpu_time_per_message: Duration::from_millis(200),
        timeout: Duration::from_secs(3),
        ..Quotas::default()
    }
}

pub fn spec(name: &str, guest_name: &str, grant: CapabilitySet, quotas: Quotas) -> ComponentSpec {
    let wasm = guest(guest_name);
    ComponentSpec {
        id: ComponentId::new("test", name),
        digest: sha256_digest(&wasm),
        wasm,
        grant,
        quotas,
        env: Vec::new(),
        k8s: None,
        http: None,
    }
}

/// Compile cache shared by all tests (verified on load, so sharing is safe and saves CPU).
pub fn shared_cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("airssys-compile-cache")
}

/// A supervisor with everything real, in its own temp dir.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub metrics: Arc<Metrics>,
    pub supervisor: Supervisor,
    pub audit: AuditSink,
    pub auditor: AuditorHandle,
    pub audit_log: PathBuf,
}

pub fn fast_policy() -> RestartPolicy {
    RestartPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        window: Duration::from_secs(30),
        crash_loop_after: 4,
    }
}

impl Harness {
    pub fn new() -> Self {
        Self::with_engine(|c| c)
    }

    pub fn with_engine(tune: impl FnOnce(EngineConfig) -> EngineConfig) -> Self {
        Self::build(tune, Arc::new(Metrics::new()), None)
    }

    /// A harness whose audit pipeline publishes Kubernetes Events to `events` and counts in
    /// `metrics`.
    pub fn with_events(metrics: Arc<Metrics>, events: Box<dyn EventSink>) -> Self {
        Self::build(|c| c, metrics, Some(events))
    }

    fn build(
        tune: impl FnOnce(EngineConfig) -> EngineConfig,
        metrics: Arc<Metrics>,
        events: Option<Box<dyn EventSink>>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = tune(EngineConfig::new(shared_cache_dir()).with_capacity(64));
        let engine = AgentEngine::new(config).unwrap();
        let storage = Arc::new(KvStore::open(dir.path().join("kv.redb")).unwrap());
        let audit_log = dir.path().join("audit.jsonl");
        let mut config = AuditConfig::new("test-node", &metrics.audit);
        config.log_path = Some(audit_log.clone());
        config.events = events;
        let (audit, auditor) = Auditor::start(config).unwrap();
        let supervisor = Supervisor::new(
            engine,
            storage,
            audit.clone(),
            dir.path().join("fs"),
            fast_policy(),
        );
        Self {
            dir,
            metrics,
            supervisor,
            audit,
            auditor,
            audit_log,
        }
    }

    pub async fn add(&self, spec: ComponentSpec) {
        self.supervisor.add(spec).await.unwrap();
    }

    /// Request from the agent with a generous timeout; the reply as text.
    pub async fn ask(&self, name: &str, payload: &str) -> Result<String, String> {
        self.supervisor
            .request(
                &ComponentId::new("test", name),
                payload.as_bytes().to_vec(),
                Duration::from_secs(10),
            )
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(|e| format!("{e:?}"))
    }

    /// Audit events recorded so far, as JSON values (waits for the pipeline to flush).
    pub async fn audit_events(&self) -> Vec<serde_json::Value> {
        self.auditor.flush();
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit log lines are JSON"))
            .collect()
    }

    /// Waits (bounded) until an audit event satisfies `pred`; panics with all events if not.
    pub async fn wait_audit(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.audit_events().await;
            if let Some(e) = events.iter().find(|e| pred(e)) {
                return e.clone();
            }
            if tokio::time::Instant::now() > deadline {
                panic!("no audit event {what}; events: {events:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What an audit event should say.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// `CapabilityDenied` with this capability kind (`publish`, `storage`, `network`...).
    Denied(&'static str),
    /// `QuotaExceeded` with this quota (`cpu-time`, `memory`, `fuel`...).
    Quota(&'static str),
    Killed,
    Trap,
    CrashLoop,
    Started,
}

impl Expect {
    pub fn matches(self, component: &str, e: &serde_json::Value) -> bool {
        if e["component"] != format!("test/{component}") {
            return false;
        }
        match self {
            Expect::Denied(kind) => {
                e["kind"] == "CapabilityDenied" && e["detail"]["capability"] == kind
            }
            Expect::Quota(q) => e["kind"] == "QuotaExceeded" && e["detail"]["quota"] == q,
            Expect::Killed => e["kind"] == "Killed",
            Expect::Trap => e["kind"] == "Trapped",
            Expect::CrashLoop => e["kind"] == "CrashLoop",
            Expect::Started => e["kind"] == "Started",
        }
    }
}

/// Waits (bounded) for an audit event about `component` and returns it.
pub async fn wait_kind(h: &Harness, component: &str, expect: Expect) -> serde_json::Value {
    h.wait_audit(&format!("{expect:?} for {component}"), |e| {
        expect.matches(component, e)
    })
    .await
}

/// How many audit events about `component` match.
pub async fn count(h: &Harness, component: &str, expect: Expect) -> usize {
    h.audit_events()
        .await
        .iter()
        .filter(|e| expect.matches(component, e))
        .count()
}
