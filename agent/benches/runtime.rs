//! Runtime hot paths, each next to a bare-wasmtime baseline in the same run so every figure
//! is also a ratio. The baseline is the honest minimum: the agent's own engine settings
//! (`engine::wasmtime_config`), a `Store` with an empty WASI context, host functions that do
//! nothing; what airssys adds is its per-instance work (grant, limits, audit, budgets).
//!
//! - `instance_start`: a fresh instance (new Store, instantiate, `init`) from a cached
//!   component. Goal ≤ 10 µs p50, ≤ 50 µs p99 (printed after the group).
//! - `message_3_host_calls`: a warm `handle-message` making three host calls (two log lines
//!   and a `list-keys`, which reads the node's database). Goal ≤ 2 µs p50 and ≤ 1.5× bare;
//!   `bare_wasmtime_same_db_read` does the same database read so the ratio is our overhead.
//! - `round_trip`: agent → relay → echo → relay → agent on one node. Goal ≤ 10 µs p50.
//!   `*_in_runtime` issues the requests from a task on the agent's runtime (the node's own
//!   round trip); the others from the benchmark thread (adds two cross-thread wake-ups).
//! - `broker_throughput`: messages/s from a publisher component to a subscriber component
//!   (a Wasm handler on each end). Goal ≥ 200,000/s.
//! - `infinite_loop_stop`: time from sending to a spinning guest to its kill, with a 10 ms
//!   CPU budget. Goal ≤ deadline + one tick (20 ms).
//!
//! Run: `cargo bench -p airssys-agent --bench runtime -- --warm-up-time 1 --measurement-time 3`
//! (guests are built by `tests/components/build.sh`; set AIRSSYS_GUEST_DIR to use others).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    missing_debug_implementations
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use airssys_agent::audit::AuditSink;
use airssys_agent::bindings;
use airssys_agent::bindings::airssys::component::{logging, messaging, storage, types};
use airssys_agent::broker::{Envelope, Origin};
use airssys_agent::engine::{AgentEngine, EngineConfig, sha256_digest};
use airssys_agent::id::ComponentId;
use airssys_agent::instance::LiveInstance;
use airssys_agent::limits::Quotas;
use airssys_agent::restart::RestartPolicy;
use airssys_agent::storage::KvStore;
use airssys_agent::supervisor::{ComponentSpec, Supervisor};
use airssys_crds::capability::{Capabilities, CapabilitySet};
use criterion::{Criterion, criterion_group, criterion_main};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

fn guest(name: &str) -> Arc<[u8]> {
    let dir = std::env::var_os("AIRSSYS_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/airssys-wasm/guests")
        });
    if !dir.join(format!("{name}.wasm")).exists() {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/components/build.sh");
        let ok = std::process::Command::new("bash")
            .arg(script)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    Arc::from(std::fs::read(dir.join(format!("{name}.wasm"))).unwrap())
}

fn caps(yaml: &str) -> CapabilitySet {
    let caps: Capabilities = if yaml.is_empty() {
        Capabilities::default()
    } else {
        serde_yaml::from_str(yaml).unwrap()
    };
    CapabilitySet::parse(&caps).unwrap()
}

fn spec(name: &str, wasm: &str, grant: CapabilitySet, quotas: Quotas) -> ComponentSpec {
    let wasm = guest(wasm);
    ComponentSpec {
        id: ComponentId::new("bench", name),
        digest: sha256_digest(&wasm),
        wasm,
        grant,
        quotas,
        env: Vec::new(),
        k8s: None,
        http: None,
    }
}

fn bench_quotas() -> Quotas {
    Quotas {
        messages_per_second: 10_000_000,
        mailbox_capacity: 4096,
        ..Quotas::default()
    }
}

struct World {
    _dir: tempfile::TempDir,
    supervisor: Supervisor,
}

fn world(rt: &tokio::runtime::Runtime) -> World {
    let dir = tempfile::tempdir().unwrap();
    let engine =
        AgentEngine::new(EngineConfig::new(dir.path().join("cache")).with_capacity(256)).unwrap();
    let storage = Arc::new(KvStore::open(dir.path().join("kv.redb")).unwrap());
    let audit = rt.block_on(async { bench_audit(dir.path()) });
    let supervisor = Supervisor::new(
        engine,
        storage,
        audit,
        dir.path().join("fs"),
        // The loop-stop bench kills an instance per iteration; keep restarts immediate.
        RestartPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            window: Duration::from_secs(1),
            crash_loop_after: u32::MAX,
        },
    );
    World {
        _dir: dir,
        supervisor,
    }
}

fn bench_audit(dir: &std::path::Path) -> AuditSink {
    support_audit::open(dir)
}

// ---- bare wasmtime baseline: same component, same WIT, host functions that do nothing ----

struct Bare {
    wasi: WasiCtx,
    table: ResourceTable,
    /// When set, `list-keys` does the same database read the agent does, so the ratio is
    /// the agent's own overhead rather than redb's.
    db: Option<Arc<KvStore>>,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for Bare {}

impl logging::Host for Bare {
    async fn log(&mut self, _level: logging::Level, _message: String) {}
}

impl storage::Host for Bare {
    async fn get(&mut self, _b: String, _k: String) -> Result<Option<Vec<u8>>, types::Error> {
        Ok(None)
    }
    async fn set(&mut self, _b: String, _k: String, _v: Vec<u8>) -> Result<(), types::Error> {
        Ok(())
    }
    async fn delete(&mut self, _b: String, _k: String) -> Result<(), types::Error> {
        Ok(())
    }
    async fn list_keys(&mut self, b: String) -> Result<Vec<String>, types::Error> {
        match &self.db {
            Some(db) => db
                .list("bench/echo", &b, None, 100)
                .map_err(|e| types::Error::Internal(e.to_string())),
            None => Ok(Vec::new()),
        }
    }
}

impl messaging::Host for Bare {
    async fn publish(&mut self, _t: String, _p: Vec<u8>) -> Result<(), types::Error> {
        Ok(())
    }
    async fn subscribe(&mut self, _p: String) -> Result<(), types::Error> {
        Ok(())
    }
    async fn send(&mut self, _c: String, _p: Vec<u8>) -> Result<(), types::Error> {
        Ok(())
    }
    async fn request(&mut self, _c: String, p: Vec<u8>, _t: u32) -> Result<Vec<u8>, types::Error> {
        Ok(p)
    }
}

/// The honest minimum: the agent's own engine settings (pooling with the same slot reuse,
/// epochs, async, `concurrency_support(false)`), a `Store` with an empty WASI context, the
/// same instantiate-and-`init`, host functions that do nothing. What airssys adds on top is
/// exactly its per-instance work: grant, limits, audit, CPU budget, timeouts.
fn bare_runtime(wasm: &[u8], engine_config: &EngineConfig) -> BareRuntime {
    let config = airssys_agent::engine::wasmtime_config(engine_config);
    let engine = Engine::new(&config).unwrap();
    let mut linker: Linker<Bare> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    bindings::Component::add_to_linker::<_, HasSelf<Bare>>(&mut linker, |s| s).unwrap();
    let component = wasmtime::component::Component::new(&engine, wasm).unwrap();
    let pre = bindings::ComponentPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
    BareRuntime {
        engine,
        pre,
        db: None,
    }
}

struct BareRuntime {
    engine: Engine,
    pre: bindings::ComponentPre<Bare>,
    db: Option<Arc<KvStore>>,
}

impl BareRuntime {
    async fn start(&self) -> (Store<Bare>, bindings::Component) {
        let mut store = Store::new(
            &self.engine,
            Bare {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
                db: self.db.clone(),
            },
        );
        store.set_epoch_deadline(1000);
        let b = self.pre.instantiate_async(&mut store).await.unwrap();
        b.airssys_component_lifecycle()
            .call_init(&mut store)
            .await
            .unwrap()
            .unwrap();
        (store, b)
    }
}

/// p50 and p99 of `n` runs of `f` (criterion reports means; the goals are percentiles).
fn percentiles(name: &str, n: usize, mut f: impl FnMut()) {
    for _ in 0..n / 10 {
        f();
    }
    let mut samples: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    samples.sort();
    let at = |q: f64| samples[((n as f64 * q) as usize).min(n - 1)];
    eprintln!(
        "{name}: p50 {:.2?}  p99 {:.2?}  ({n} runs)",
        at(0.50),
        at(0.99)
    );
}

fn envelope(payload: &[u8]) -> Envelope {
    Envelope {
        origin: Origin::Direct(None),
        payload: Arc::from(payload),
        reply: None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The agent's shape of runtime on a 2-core node: actors on two workers.
fn two_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn instance_start(c: &mut Criterion) {
    let rt = runtime();
    let w = world(&rt);
    let s = spec("echo", "echo", caps(""), bench_quotas());
    let (revision, _rx) = rt.block_on(w.supervisor.revision(&s)).unwrap();
    let engine = w.supervisor.engine().clone();
    let bare = bare_runtime(&s.wasm, engine.config());

    let mut g = c.benchmark_group("instance_start");
    g.bench_function("airssys", |b| {
        b.iter(|| {
            rt.block_on(async {
                let live = LiveInstance::start(&revision, &engine).await.unwrap();
                drop(live);
            })
        })
    });
    g.bench_function("bare_wasmtime", |b| {
        b.iter(|| {
            rt.block_on(async {
                let live = bare.start().await;
                drop(live);
            })
        })
    });
    g.finish();
    percentiles("instance_start/airssys", 5000, || {
        rt.block_on(async { drop(LiveInstance::start(&revision, &engine).await.unwrap()) })
    });
    percentiles("instance_start/bare_wasmtime", 5000, || {
        rt.block_on(async { drop(bare.start().await) })
    });
}

fn message_3_host_calls(c: &mut Criterion) {
    let rt = runtime();
    let w = world(&rt);
    let s = spec(
        "echo",
        "echo",
        caps(
            "storage: [{ bucket: bench, access: [read] }]\n\
             messaging: [{ topic: bench.light, access: [publish] }]",
        ),
        bench_quotas(),
    );
    let (revision, _rx) = rt.block_on(w.supervisor.revision(&s)).unwrap();
    let engine = w.supervisor.engine().clone();
    let mut live = rt
        .block_on(LiveInstance::start(&revision, &engine))
        .unwrap();
    let bare = bare_runtime(&s.wasm, engine.config());
    let (mut store, bare_instance) = rt.block_on(bare.start());
    let mut bare_db = bare_runtime(&s.wasm, engine.config());
    bare_db.db = Some(w.supervisor.storage().clone());
    let (mut store_db, bare_db_instance) = rt.block_on(bare_db.start());
    let message = bindings::airssys::component::types::Message {
        origin: types::Origin::Direct("agent".into()),
        payload: b"host3".to_vec(),
    };

    let mut g = c.benchmark_group("message_3_host_calls");
    g.bench_function("airssys", |b| {
        b.iter(|| rt.block_on(live.handle(envelope(b"host3"))).unwrap())
    });
    g.bench_function("bare_wasmtime", |b| {
        b.iter(|| rt.block_on(bare_handle(&mut store, &bare_instance, &message)))
    });
    // Same, but `list-keys` reads the database like the agent's does.
    g.bench_function("bare_wasmtime_same_db_read", |b| {
        b.iter(|| rt.block_on(bare_handle(&mut store_db, &bare_db_instance, &message)))
    });
    // Three calls that touch no database (log, publish to a granted topic nobody
    // subscribes to, log): the runtime's own cost per message and host call.
    let light = bindings::airssys::component::types::Message {
        origin: types::Origin::Direct("agent".into()),
        payload: b"host3-light".to_vec(),
    };
    g.bench_function("airssys_no_db", |b| {
        b.iter(|| rt.block_on(live.handle(envelope(b"host3-light"))).unwrap())
    });
    g.bench_function("bare_wasmtime_no_db", |b| {
        b.iter(|| rt.block_on(bare_handle(&mut store, &bare_instance, &light)))
    });
    g.finish();
    percentiles("message_3_host_calls/airssys", 20_000, || {
        rt.block_on(live.handle(envelope(b"host3"))).unwrap();
    });
    percentiles("message_3_host_calls/airssys_no_db", 20_000, || {
        rt.block_on(live.handle(envelope(b"host3-light"))).unwrap();
    });
    percentiles("message_3_host_calls/bare_wasmtime_no_db", 20_000, || {
        rt.block_on(bare_handle(&mut store, &bare_instance, &light));
    });
}

/// One warm `handle-message` on bare wasmtime, with the epoch deadline set as the agent sets it.
async fn bare_handle(
    store: &mut Store<Bare>,
    instance: &bindings::Component,
    message: &types::Message,
) -> Option<Vec<u8>> {
    store.set_epoch_deadline(1000);
    instance
        .airssys_component_lifecycle()
        .call_handle_message(store, message)
        .await
        .unwrap()
        .unwrap()
}

fn round_trip(c: &mut Criterion) {
    let rt = two_worker_runtime();
    let w = world(&rt);
    rt.block_on(async {
        w.supervisor
            .add(spec("echo", "echo", caps(""), bench_quotas()))
            .await
            .unwrap();
        w.supervisor
            .add(spec(
                "relay",
                "relay",
                caps("messaging: [{ component: echo, access: [send] }]"),
                bench_quotas(),
            ))
            .await
            .unwrap();
    });
    let relay = ComponentId::new("bench", "relay");
    let echo = ComponentId::new("bench", "echo");
    let mut g = c.benchmark_group("round_trip");
    g.bench_function("agent_relay_echo", |b| {
        b.iter(|| {
            rt.block_on(async {
                w.supervisor
                    .request(&relay, &b"echo|x"[..], Duration::from_secs(5))
                    .await
                    .unwrap()
            })
        })
    });
    // The same requests issued from a task on the agent's runtime (as a component or the
    // agent's own services issue them), timed inside the runtime: no hand-off to and from
    // the benchmark thread per iteration, so this is the node's own round trip.
    g.bench_function("agent_relay_echo_in_runtime", |b| {
        b.iter_custom(|iters| in_runtime(&rt, &w.supervisor, &relay, b"echo|x", iters))
    });
    g.bench_function("agent_echo_in_runtime", |b| {
        b.iter_custom(|iters| in_runtime(&rt, &w.supervisor, &echo, b"x", iters))
    });
    g.bench_function("agent_echo", |b| {
        b.iter(|| {
            rt.block_on(async {
                w.supervisor
                    .request(&echo, &b"x"[..], Duration::from_secs(5))
                    .await
                    .unwrap()
            })
        })
    });
    g.finish();
}

/// Runs `iters` sequential requests from a task on `rt`'s workers; returns their total time.
fn in_runtime(
    rt: &tokio::runtime::Runtime,
    supervisor: &Supervisor,
    target: &ComponentId,
    payload: &'static [u8],
    iters: u64,
) -> Duration {
    let broker = supervisor.broker().clone();
    let target = target.clone();
    rt.block_on(async move {
        rt_spawn(async move {
            let payload: Arc<[u8]> = Arc::from(payload);
            let start = Instant::now();
            for _ in 0..iters {
                broker
                    .request(
                        None,
                        &target.namespace,
                        &target.name,
                        payload.clone(),
                        Duration::from_secs(5),
                    )
                    .await
                    .unwrap();
            }
            start.elapsed()
        })
        .await
        .unwrap()
    })
}

fn rt_spawn<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(f)
}

fn broker_throughput(c: &mut Criterion) {
    let rt = two_worker_runtime();
    let w = world(&rt);
    rt.block_on(async {
        w.supervisor
            .add(spec(
                "subscriber",
                "subscriber",
                caps("messaging: [{ topic: \"events.>\", access: [subscribe] }]"),
                bench_quotas(),
            ))
            .await
            .unwrap();
        w.supervisor
            .add(spec(
                "publisher",
                "publisher",
                caps("messaging: [{ topic: \"events.*\", access: [publish] }]"),
                bench_quotas(),
            ))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let publisher = ComponentId::new("bench", "publisher");
    let subscriber = ComponentId::new("bench", "subscriber");
    let mut g = c.benchmark_group("broker_throughput");
    g.throughput(criterion::Throughput::Elements(1000));
    g.bench_function("publisher_to_subscriber_1000", |b| {
        b.iter_custom(|iters| {
            let sup = &w.supervisor;
            let publisher = publisher.clone();
            let subscriber = subscriber.clone();
            rt.block_on(async move {
                let before = count(sup, &subscriber).await;
                let rejected = || sup.broker().stats().rejected_full.load(Ordering::Relaxed);
                let rejected_before = rejected();
                let start = Instant::now();
                for _ in 0..iters * 1000 {
                    sup.send(&publisher, &b"events.a|x"[..]).await.unwrap();
                }
                // Wait until the subscriber has handled every message that reached its
                // mailbox. A publish to a full mailbox is refused, not queued (the publisher
                // never waits), so those are counted and reported instead of waited for.
                loop {
                    let dropped = rejected() - rejected_before;
                    if count(sup, &subscriber).await + dropped >= before + iters * 1000 {
                        DROPPED.fetch_add(dropped, Ordering::Relaxed);
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                let elapsed = start.elapsed();
                SENT.fetch_add(iters * 1000, Ordering::Relaxed);
                NANOS.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
                elapsed
            })
        })
    });
    g.finish();
    // The figure above counts refused publishes as sent; this one counts only deliveries.
    let sent = SENT.load(Ordering::Relaxed);
    let dropped = DROPPED.load(Ordering::Relaxed);
    let secs = NANOS.load(Ordering::Relaxed) as f64 / 1e9;
    eprintln!(
        "broker_throughput: {} of {sent} publishes refused with a full subscriber mailbox; \
         delivered and handled {:.0} messages/s",
        dropped,
        (sent - dropped) as f64 / secs
    );
}

/// Publishes sent, refused (full mailbox), and the time they took, over the whole bench.
static SENT: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static NANOS: AtomicU64 = AtomicU64::new(0);

async fn count(sup: &Supervisor, id: &ComponentId) -> u64 {
    let reply = sup
        .request(id, &b"count"[..], Duration::from_secs(30))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&reply);
    text.split('|').next().unwrap().parse().unwrap()
}

fn infinite_loop_stop(c: &mut Criterion) {
    let rt = two_worker_runtime();
    let w = world(&rt);
    let q = Quotas {
        cpu_time_per_message: Duration::from_millis(10),
        ..bench_quotas()
    };
    rt.block_on(async {
        w.supervisor
            .add(spec("spinner", "infinite_loop", caps(""), q))
            .await
            .unwrap();
    });
    let spinner = ComponentId::new("bench", "spinner");
    let mut g = c.benchmark_group("infinite_loop_stop");
    g.sample_size(10);
    g.bench_function("cpu_budget_10ms", |b| {
        b.iter(|| {
            rt.block_on(async {
                let err = w
                    .supervisor
                    .request(&spinner, &b"spin"[..], Duration::from_secs(5))
                    .await;
                assert!(err.is_err());
            })
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    instance_start,
    message_3_host_calls,
    round_trip,
    broker_throughput,
    infinite_loop_stop
);
criterion_main!(benches);

mod support_audit {
    use airssys_agent::audit::{AuditConfig, AuditSink, Auditor};

    /// The real pipeline without a log file (counters only); the handle is leaked so the
    /// writer thread lives as long as the bench.
    pub fn open(_dir: &std::path::Path) -> AuditSink {
        let metrics = airssys_agent::metrics::Metrics::new();
        let (sink, handle) = Auditor::start(AuditConfig::new("bench", &metrics.audit)).unwrap();
        std::mem::forget(handle);
        sink
    }
}
