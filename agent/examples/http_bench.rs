//! HTTP component benchmark: requests/s and p50/p99 latency of a hello-world handler
//! (`tests/components/http-hello`) served by the agent (a real `airssys-agent run --manifest`
//! process, every HTTP limit set), beside the same component under `wasmtime serve` (from
//! wasmtime-cli 48.0.8, the wasmtime the agent embeds), in the same run, with the same load:
//! a hyper client on loopback with a fixed number of keep-alive connections, one request in
//! flight on each. Both servers make one instance per request. Then, in this process without
//! the network, the agent's per-request path (route, limits, fresh pooled instance, handler,
//! response) next to a bare-wasmtime `ProxyPre` per request: their difference is what
//! airssys adds per request. Goals: throughput >= 0.9x and p99 <= 1.2x `wasmtime serve`,
//! per-request overhead < 20 µs. `wasmtime serve` runs twice: with its defaults, and with the
//! agent's pool settings ([`AGENT_POOL_OPTIONS`]), so the comparison is like for like.
//!
//! Build and run (release numbers; a debug build runs too, but is not comparable with the
//! release `wasmtime` binary):
//!
//! ```text
//! cargo build --release -p airssys-agent --bin airssys-agent --example http_bench
//! target/release/examples/http_bench --concurrency 16 --seconds 10
//! ```
//!
//! `wasmtime` is found by `--wasmtime PATH`, then `$WASMTIME`, then
//! `~/.cache/airssys-wasm/wasmtime-cli/bin/wasmtime` (install it with
//! `cargo install wasmtime-cli --version 48.0.8 --locked --root ~/.cache/airssys-wasm/wasmtime-cli`);
//! without it, only the agent's figures are printed, and the program says so. Not run in CI.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    missing_debug_implementations
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airssys_agent::audit::{AuditConfig, Auditor};
use airssys_agent::engine::{AgentEngine, EngineConfig, sha256_digest};
use airssys_agent::http_server::HttpSettings;
use airssys_agent::id::ComponentId;
use airssys_agent::limits::Quotas;
use airssys_agent::metrics::Metrics;
use airssys_agent::restart::RestartPolicy;
use airssys_agent::storage::KvStore;
use airssys_agent::supervisor::{ComponentSpec, Supervisor};
use airssys_crds::capability::CapabilitySet;
use airssys_crds::http::HttpSpec;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use wasmtime::Store;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

#[derive(Debug, Parser)]
#[command(about = "HTTP components: the agent vs `wasmtime serve`, same component, same load")]
struct Args {
    /// Connections (one request in flight on each).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Measured seconds per server (after the warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Warm-up seconds per server (not measured).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// The `airssys-agent` binary (default: next to this program's directory).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// The `wasmtime` binary (wasmtime-cli 48.0.8).
    #[arg(long, env = "WASMTIME")]
    wasmtime: Option<PathBuf>,
    /// The component (default: http_hello.wasm in $AIRSSYS_GUEST_DIR or
    /// ~/.cache/airssys-wasm/guests, built by tests/components/build.sh).
    #[arg(long)]
    guest: Option<PathBuf>,
    /// In-process per-request iterations.
    #[arg(long, default_value_t = 20_000)]
    iterations: u32,
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn wait_listening(addr: SocketAddr, child: &mut tokio::process::Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one load run measured.
struct Load {
    requests: u64,
    errors: u64,
    seconds: f64,
    latencies_us: Vec<f64>,
}

impl Load {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i]
    }
}

/// `concurrency` keep-alive connections, each sending `GET /` back to back.
async fn load(addr: SocketAddr, concurrency: usize, warmup: Duration, measure: Duration) -> Load {
    let start = Instant::now() + warmup;
    let end = start + measure;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let request = http::Request::get("/")
                        .header("host", "bench.local")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let ok = match sender.send_request(request).await {
                        Ok(response) => {
                            let status = response.status();
                            response.into_body().collect().await.is_ok() && status == 200
                        }
                        Err(_) => false,
                    };
                    if sent >= start {
                        if ok {
                            latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                        } else {
                            errors += 1;
                        }
                    }
                    if !ok {
                        // A failed connection cannot be reused; count and stop this one.
                        break;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        latencies_us.extend(l);
        errors += e;
    }
    latencies_us.sort_by(f64::total_cmp);
    Load {
        requests: latencies_us.len() as u64,
        errors,
        seconds: measure.as_secs_f64(),
        latencies_us,
    }
}

fn report(name: &str, l: &Load) {
    println!(
        "{name:<16} {:>10.0} req/s   p50 {:>8.1} µs   p99 {:>8.1} µs   ({} requests, {} errors)",
        l.rps(),
        l.percentile(0.50),
        l.percentile(0.99),
        l.requests,
        l.errors
    );
}

const MANIFEST: &str = r#"components:
  - name: hello
    wasm: WASM
    limits:
      memory: 32Mi
      cpuTimePerMessage: 100ms
    http:
      port: PORT
      maxConcurrentRequests: MAX
      requestTimeout: 10s
      maxRequestBodyBytes: 1Mi
      maxResponseBodyBytes: 1Mi
"#;

async fn run_agent(args: &Args, guest: &Path) -> Load {
    let agent = args.agent.clone().unwrap_or_else(|| {
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/examples/http_bench -> target/<profile>/airssys-agent
        exe.parent()
            .and_then(Path::parent)
            .unwrap()
            .join("airssys-agent")
    });
    assert!(
        agent.exists(),
        "{} not found: build it (cargo build -p airssys-agent --bin airssys-agent) or pass --agent",
        agent.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Room for every connection's request plus the one that arrives before the previous
    // instance is gone: the limit is on, never hit.
    let max = (args.concurrency * 2).clamp(1, 1000);
    let manifest = MANIFEST
        .replace("WASM", &guest.display().to_string())
        .replace("PORT", &port.to_string())
        .replace("MAX", &max.to_string());
    let path = dir.path().join("manifest.yaml");
    std::fs::write(&path, manifest).unwrap();
    let mut child = tokio::process::Command::new(&agent)
        .args(["run", "--manifest"])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--advertise-address", "127.0.0.1"])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_listening(addr, &mut child, "airssys-agent").await;
    let result = load(
        addr,
        args.concurrency,
        Duration::from_secs(args.warmup),
        Duration::from_secs(args.seconds),
    )
    .await;
    let _ = child.kill().await;
    result
}

fn find_wasmtime(args: &Args) -> Option<PathBuf> {
    args.wasmtime
        .clone()
        .or_else(|| Some(home().join(".cache/airssys-wasm/wasmtime-cli/bin/wasmtime")))
        .filter(|p| p.exists())
}

/// `wasmtime serve` options that give it the agent's pool settings (`engine::wasmtime_config`):
/// keep up to 1 MiB of each freed memory slot resident and reset it with `PAGEMAP_SCAN`
/// instead of `madvise`, as the agent does. Without them, `wasmtime serve` decommits every
/// slot after each request.
const AGENT_POOL_OPTIONS: &[&str] = &[
    "-Opooling-allocator=y",
    "-Opooling-memory-keep-resident=1048576",
    "-Opooling-table-keep-resident=65536",
    "-Opooling-pagemap-scan=auto",
    "-Opooling-decommit-batch-size=64",
    "-Omemory-reservation=268435456",
    "-Opooling-max-memory-size=268435456",
    "-Omemory-guard-size=65536",
];

async fn run_wasmtime(args: &Args, wasmtime: &Path, guest: &Path, options: &[&str]) -> Load {
    let version = std::process::Command::new(wasmtime)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if !version.contains("48.0.8") {
        println!("warning: {} is {version:?}, not 48.0.8", wasmtime.display());
    }
    let port = free_port();
    let mut child = tokio::process::Command::new(wasmtime)
        .arg("serve")
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(options)
        // The component links WASI CLI (Rust's std); the agent links it too.
        .arg("-Scli")
        .arg(guest)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_listening(addr, &mut child, "wasmtime serve").await;
    let result = load(
        addr,
        args.concurrency,
        Duration::from_secs(args.warmup),
        Duration::from_secs(args.seconds),
    )
    .await;
    let _ = child.kill().await;
    result
}

// ---- in process: the agent's request path vs a bare ProxyPre per request ----

struct Bare {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Bare {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

async fn bare_request(pre: &wasmtime_wasi_http::p2::bindings::ProxyPre<Bare>) {
    let mut store = Store::new(
        pre.engine(),
        Bare {
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
        },
    );
    store.set_epoch_deadline(u64::MAX / 2);
    let request = http::Request::get("http://bench.local/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let req = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)
        .unwrap();
    let out = store.data_mut().http().new_response_outparam(tx).unwrap();
    let proxy = pre.instantiate_async(&mut store).await.unwrap();
    proxy
        .wasi_http_incoming_handler()
        .call_handle(&mut store, req, out)
        .await
        .unwrap();
    let response = rx.await.unwrap().unwrap();
    response.into_body().collect().await.unwrap();
}

async fn in_process(args: &Args, wasm: Arc<[u8]>) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let engine =
        AgentEngine::new(EngineConfig::new(dir.path().join("cache")).with_capacity(64)).unwrap();
    let metrics = Metrics::new();
    let mut audit_config = AuditConfig::new("bench", &metrics.audit);
    audit_config.log_path = Some(dir.path().join("audit.jsonl"));
    let (audit, _auditor) = Auditor::start(audit_config).unwrap();
    let storage = Arc::new(KvStore::open(dir.path().join("kv.redb")).unwrap());
    let supervisor = Supervisor::new(
        engine.clone(),
        storage,
        audit,
        dir.path().join("fs"),
        RestartPolicy::default(),
    );
    let http = HttpSpec {
        max_concurrent_requests: Some(64),
        request_timeout: Some("10s".into()),
        max_request_body_bytes: Some("1Mi".into()),
        max_response_body_bytes: Some("1Mi".into()),
        ..HttpSpec::default()
    };
    let id = ComponentId::new("bench", "hello");
    let digest = sha256_digest(&wasm);
    supervisor
        .add(ComponentSpec {
            id: id.clone(),
            digest: digest.clone(),
            wasm: wasm.clone(),
            grant: CapabilitySet::default(),
            quotas: Quotas {
                memory_bytes: 32 << 20,
                fuel_per_message: None,
                ..Quotas::default()
            },
            env: Vec::new(),
            k8s: None,
            http: Some(HttpSettings {
                listen: "127.0.0.1:0".parse().unwrap(),
                limits: http.limits().unwrap(),
                spec: http,
            }),
        })
        .await
        .unwrap();
    let handle = supervisor.http_handle(&id).await.unwrap();
    let agent_request = || async {
        let request = http::Request::get("http://bench.local/")
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| -> wasmtime_wasi_http::Error { match never {} }),
            )
            .unwrap();
        let response = handle.handle(request).await;
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
    };

    // The bare baseline: the same engine settings, a plain WASI + wasi:http linker.
    let mut linker = Linker::<Bare>::new(engine.engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).unwrap();
    let component = wasmtime::component::Component::new(engine.engine(), &wasm).unwrap();
    let bare_pre = wasmtime_wasi_http::p2::bindings::ProxyPre::new(
        linker.instantiate_pre(&component).unwrap(),
    )
    .unwrap();

    for _ in 0..1000 {
        agent_request().await;
        bare_request(&bare_pre).await;
    }
    // Alternating batches; the median batch of each resists the noise of a shared machine.
    const BATCHES: u32 = 10;
    let per_batch = (args.iterations / BATCHES).max(1);
    let (mut agent, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..BATCHES {
        let t = Instant::now();
        for _ in 0..per_batch {
            agent_request().await;
        }
        agent.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(per_batch));
        let t = Instant::now();
        for _ in 0..per_batch {
            bare_request(&bare_pre).await;
        }
        bare.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(per_batch));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (agent_us, bare_us) = (median(&mut agent), median(&mut bare));
    supervisor.shutdown().await;
    (agent_us, bare_us)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let guest = args.guest.clone().unwrap_or_else(|| {
        std::env::var_os("AIRSSYS_GUEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| home().join(".cache/airssys-wasm/guests"))
            .join("http_hello.wasm")
    });
    assert!(
        guest.exists(),
        "{} not found: run tests/components/build.sh",
        guest.display()
    );
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "HTTP hello-world, {} connections, {} s measured after {} s warm-up, {profile} build of the agent, {} cores",
        args.concurrency,
        args.seconds,
        args.warmup,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let wasmtime = find_wasmtime(&args);
    let agent = run_agent(&args, &guest).await;
    report("airssys-agent", &agent);
    match &wasmtime {
        Some(wasmtime) => {
            let plain = run_wasmtime(&args, wasmtime, &guest, &[]).await;
            report("wasmtime serve", &plain);
            let tuned = run_wasmtime(&args, wasmtime, &guest, AGENT_POOL_OPTIONS).await;
            report("  + agent's pool", &tuned);
            for (name, bare) in [("wasmtime serve", &plain), ("+ agent's pool", &tuned)] {
                println!(
                    "agent / {name:<15} throughput {:.2}x (goal >= 0.90x)   p99 {:.2}x (goal <= 1.20x)",
                    agent.rps() / bare.rps(),
                    agent.percentile(0.99) / bare.percentile(0.99)
                );
            }
        }
        None => println!(
            "wasmtime serve   NOT RUN: no wasmtime-cli found (--wasmtime, $WASMTIME, or \
             ~/.cache/airssys-wasm/wasmtime-cli/bin/wasmtime); install it with `cargo install \
             wasmtime-cli --version 48.0.8 --locked --root ~/.cache/airssys-wasm/wasmtime-cli`"
        ),
    }
    let wasm: Arc<[u8]> = Arc::from(std::fs::read(&guest).unwrap());
    // One thread for both paths: the agent's guest task runs where the request waits, as the
    // bare call does, so no cross-thread wake-up is counted against either.
    let (agent_us, bare_us) = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(in_process(&args, wasm))
            })
            .join()
            .unwrap()
    });
    println!(
        "per request, in process, one thread (instance + handler + response, no network; median of 10 batches): agent {agent_us:.1} µs, bare wasmtime {bare_us:.1} µs, overhead {:.1} µs (goal < 20 µs)",
        agent_us - bare_us
    );
}
