//! End-to-end readiness benchmark (a program, not a test; issue #11, "Benchmark"). It starts
//! the dev run (`airssys_test_support::dev`: control plane, registry with the examples
//! pushed and signed, the operator binary, three node-mode agents with the chart's RBAC) and
//! measures, with the trusted `echo` artifact (`<registry>/platform/echo:1.2.0`, approved by
//! the `platform-registry` TrustSource; the same digest every time, cached on every agent by
//! a warm-up run first):
//!
//! - (a) apply → `Ready` latency of one component (1 replica): create the WasmComponent,
//!   wait for `Ready=True` with `readyReplicas == replicas` (seen by a watch, no polling
//!   delay), record the time, delete it and wait for its Placements to go; p50/p99 over
//!   `--runs`;
//! - (b) `--components` components (1 replica each) created at once across the 3 agents:
//!   wall time until every one is `Ready`, with progress;
//! - (c) operator and agent peak memory (`VmHWM` of `/proc/<pid>/status`), with each agent's
//!   instance count.
//!
//! ```text
//! cargo run -p airssys-e2e --example bench_ready -- --runs 50 --components 500
//! ```
//!
//! Other flags: `--in-flight N` (concurrent creates in (b), default 32), `--timeout SECS`
//! (give-up time of (b), default 180). The operator and agent are built first in this
//! program's profile and target directory; the program prints which. Measure the product as it
//! ships with `cargo run --release -p airssys-e2e --example bench_ready`.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark program: its report is its output"
)]

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use airssys_crds::condition::is_true;
use airssys_crds::{ConditionType, Placement, WasmComponent};
use airssys_test_support::dev::{self, DevCluster, DevOptions};
use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use tokio::sync::mpsc;

const NAMESPACE: &str = "wasm-demo";
/// The namespaces the dev run's examples are applied in; emptied before measuring.
const EXAMPLE_NAMESPACES: &[&str] = &["wasm-demo", "wasm-dev"];
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(50);

struct Args {
    runs: usize,
    components: usize,
    in_flight: usize,
    timeout: Duration,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        runs: 50,
        components: 500,
        in_flight: 32,
        timeout: Duration::from_secs(180),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let number: u64 = value
            .parse()
            .with_context(|| format!("{flag} {value}: not a number"))?;
        let n = usize::try_from(number)?;
        match flag.as_str() {
            "--runs" => args.runs = n,
            "--components" => args.components = n,
            "--in-flight" => args.in_flight = n.max(1),
            "--timeout" => args.timeout = Duration::from_secs(number),
            other => bail!(
                "unknown flag {other}; use --runs N --components N --in-flight N --timeout SECS"
            ),
        }
    }
    Ok(args)
}

/// A component seen `Ready`: its name, when the watch saw it, its approved digest.
struct ReadySeen {
    name: String,
    at: Instant,
    digest: Option<String>,
}

/// `Ready=True` and every wanted replica ready.
fn is_ready(c: &WasmComponent) -> bool {
    c.status.as_ref().is_some_and(|s| {
        is_true(&s.conditions, ConditionType::Ready)
            && s.ready_replicas == c.spec.replicas
            && c.spec.replicas > 0
    })
}

/// Watches the namespace's WasmComponents and reports each `Ready` one as the event arrives.
fn watch_ready(api: Api<WasmComponent>) -> mpsc::UnboundedReceiver<ReadySeen> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(c) if is_ready(&c) => {
                    let seen = ReadySeen {
                        name: c.name_any(),
                        at: Instant::now(),
                        digest: c.status.as_ref().and_then(|s| s.approved_digest.clone()),
                    };
                    if tx.send(seen).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => eprintln!("watch error (retrying): {e}"),
            }
        }
    });
    rx
}

/// The trusted echo component as examples/component-echo.yaml asks for it.
fn component(name: &str, reference: &str, replicas: i32) -> anyhow::Result<WasmComponent> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "wasm.airssys.dev/v1alpha1",
        "kind": "WasmComponent",
        "metadata": { "name": name, "namespace": NAMESPACE },
        "spec": {
            "artifact": { "oci": { "reference": reference, "insecure": true } },
            "capabilities": {
                "messaging": [{ "topic": "orders.*", "access": ["subscribe"] }],
                "env": [{ "name": "LOG_LEVEL" }],
            },
            "config": [{ "name": "LOG_LEVEL", "value": "info" }],
            "limits": { "memory": "16Mi", "timeout": "2s" },
            "replicas": replicas,
        },
    }))?)
}

/// Waits on the watch until `name` is `Ready`; returns what was seen.
async fn wait_ready(
    rx: &mut mpsc::UnboundedReceiver<ReadySeen>,
    cluster: &mut DevCluster,
    name: &str,
) -> anyhow::Result<ReadySeen> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(seen)) if seen.name == name => return Ok(seen),
            Ok(Some(_)) => {}
            Ok(None) => bail!("the WasmComponent watch ended"),
            Err(_) => {
                cluster.check_running()?;
                bail!(
                    "{name} not Ready after {} s\n--- operator:\n{}",
                    STEP_TIMEOUT.as_secs(),
                    cluster.operator_log_tail(30)
                );
            }
        }
    }
}

/// Waits until no Placement in `namespace` belongs to a component `owned` selects.
async fn wait_placements_gone(
    client: &Client,
    namespace: &str,
    owned: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let api: Api<Placement> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let left = api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|p| owned(&p.spec.component.name))
            .count();
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} Placements in {namespace} still there after deleting their components");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Nearest-rank percentile of sorted `values`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a rank among at most a few thousand samples"
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `(VmHWM, VmRSS)` in KiB.
fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

#[allow(clippy::cast_precision_loss, reason = "KiB to MiB for display")]
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Instances each node runs, from the Placements of the benchmark namespace.
async fn instances_per_node(client: &Client) -> anyhow::Result<BTreeMap<String, i64>> {
    let api: Api<Placement> = Api::namespaced(client.clone(), NAMESPACE);
    let mut per_node = BTreeMap::new();
    for p in api.list(&ListParams::default()).await?.items {
        *per_node.entry(p.spec.node_name.clone()).or_default() += i64::from(p.spec.instances);
    }
    Ok(per_node)
}

async fn print_memory(cluster: &DevCluster, client: &Client, when: &str) -> anyhow::Result<()> {
    let instances = instances_per_node(client).await?;
    println!("\n(c) peak memory {when}");
    println!(
        "  {:<12} {:>10} {:>10} {:>10}",
        "process", "VmHWM MiB", "VmRSS MiB", "instances"
    );
    let (hwm, rss) = memory(cluster.operator_pid())?;
    println!(
        "  {:<12} {:>10.1} {:>10.1} {:>10}",
        "operator",
        mib(hwm),
        mib(rss),
        "-"
    );
    for (node, pid) in cluster.agent_pids() {
        let (hwm, rss) = memory(pid)?;
        let n = instances.get(node).copied().unwrap_or(0);
        println!("  {node:<12} {:>10.1} {:>10.1} {n:>10}", mib(hwm), mib(rss));
    }
    Ok(())
}

fn profile(bin_dir: &Path) -> &'static str {
    match bin_dir.file_name().and_then(|n| n.to_str()) {
        Some("release") => "release profile",
        _ => "dev profile: workspace crates unoptimised, dependencies at opt-level 1",
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let bin_dir = tokio::task::spawn_blocking(dev::build_bins_for_benchmark).await??;
    println!("binaries: {} ({})", bin_dir.display(), profile(&bin_dir));

    let dir = tempfile::tempdir()?;
    let mut options = DevOptions::new()?;
    options.dir = dir.path().to_path_buf();
    options.bin_dir = bin_dir;
    options.nodes = 3;
    let mut cluster = DevCluster::start(options).await?;
    cluster.wait_for_decisions(STEP_TIMEOUT).await?;
    let echo = cluster
        .pushed()
        .iter()
        .find(|p| p.component.name == "echo")
        .context("the dev run pushed no echo artifact")?
        .clone();
    println!("artifact: {} = {}", echo.reference, echo.digest);

    let client = cluster.control_plane().client().await?;
    // Only the benchmark's components run while it measures.
    for ns in EXAMPLE_NAMESPACES {
        let api: Api<WasmComponent> = Api::namespaced(client.clone(), ns);
        api.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        wait_placements_gone(&client, ns, |_| true).await?;
    }
    let components: Api<WasmComponent> = Api::namespaced(client.clone(), NAMESPACE);
    let mut ready = watch_ready(components.clone());

    // Warm-up: one replica on each agent, so every agent has the artifact cached.
    components
        .create(
            &PostParams::default(),
            &component("warm-up", &echo.reference, 3)?,
        )
        .await?;
    wait_ready(&mut ready, &mut cluster, "warm-up").await?;
    components
        .delete("warm-up", &DeleteParams::default())
        .await?;
    wait_placements_gone(&client, NAMESPACE, |n| n == "warm-up").await?;

    // (a) apply -> Ready, one component at a time.
    let mut latencies = Vec::with_capacity(args.runs);
    let mut other_digests = 0;
    for i in 0..args.runs {
        let name = format!("lat-{i:03}");
        let start = Instant::now();
        components
            .create(
                &PostParams::default(),
                &component(&name, &echo.reference, 1)?,
            )
            .await?;
        let seen = wait_ready(&mut ready, &mut cluster, &name).await?;
        latencies.push(seen.at.duration_since(start));
        if seen.digest.as_deref() != Some(echo.digest.as_str()) {
            other_digests += 1;
        }
        components.delete(&name, &DeleteParams::default()).await?;
        wait_placements_gone(&client, NAMESPACE, |n| n == name).await?;
    }
    latencies.sort();
    println!("\n(a) apply -> Ready, 1 replica, {} runs", latencies.len());
    println!(
        "  {:>8} {:>8} {:>8} {:>8} {:>8}   (ms)",
        "min", "p50", "p90", "p99", "max"
    );
    println!(
        "  {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0}   goal p50 < 300, p99 < 1000",
        ms(percentile(&latencies, 0.0)),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(percentile(&latencies, 100.0)),
    );
    if other_digests > 0 {
        println!(
            "  WARNING: {other_digests} runs approved a digest other than {}",
            echo.digest
        );
    }
    print_memory(&cluster, &client, "after (a)").await?;

    // (b) many components at once until all are Ready.
    let count = args.components;
    println!(
        "\n(b) {count} components (1 replica each) over 3 agents, {} creates in flight",
        args.in_flight
    );
    let start = Instant::now();
    let create = {
        let components = components.clone();
        let reference = echo.reference.clone();
        futures::stream::iter(0..count)
            .map(move |i| {
                let api = components.clone();
                let reference = reference.clone();
                async move {
                    let c = component(&format!("many-{i:04}"), &reference, 1)?;
                    api.create(&PostParams::default(), &c).await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(args.in_flight)
            .try_collect::<Vec<()>>()
    };
    let create = tokio::spawn(create);
    let mut seen: HashSet<String> = HashSet::new();
    let marks = [10, 25, 50, 75, 90, 100];
    let mut next_mark = 0;
    let mut next_report = Duration::from_secs(5);
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut created_after = None;
    let mut create = Some(create);
    while seen.len() < count {
        if let Some(handle) = create.as_mut()
            && handle.is_finished()
        {
            create.take().context("create task")?.await??;
            created_after = Some(start.elapsed());
            println!(
                "  all {count} created after {:.2} s",
                start.elapsed().as_secs_f64()
            );
        }
        match tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + Duration::from_millis(200)),
            ready.recv(),
        )
        .await
        {
            Ok(Some(s)) if s.name.starts_with("many-") => {
                seen.insert(s.name);
                while next_mark < marks.len() && seen.len() * 100 >= marks[next_mark] * count {
                    println!(
                        "  {:>3}% Ready ({:>4}) at {:>7.2} s",
                        marks[next_mark],
                        seen.len(),
                        s.at.duration_since(start).as_secs_f64()
                    );
                    next_mark += 1;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => bail!("the WasmComponent watch ended"),
            Err(_) => {}
        }
        if start.elapsed() >= next_report && seen.len() < count {
            println!(
                "  ... {:>4}/{count} Ready at {:>5.1} s",
                seen.len(),
                start.elapsed().as_secs_f64()
            );
            next_report += Duration::from_secs(5);
        }
        if tokio::time::Instant::now() >= deadline {
            println!(
                "  gave up after {} s: {}/{count} Ready",
                args.timeout.as_secs(),
                seen.len()
            );
            break;
        }
        cluster.check_running()?;
    }
    if seen.len() == count {
        println!(
            "  all {count} Ready after {:.2} s (goal < 15 s); creates took {:.2} s",
            start.elapsed().as_secs_f64(),
            created_after.unwrap_or_default().as_secs_f64()
        );
    }
    print_memory(&cluster, &client, "after (b)").await?;
    // The logs go with the control plane's directory; BENCH_LOGS=DIR keeps a copy.
    if let Some(out) = std::env::var_os("BENCH_LOGS") {
        let out = std::path::PathBuf::from(out);
        std::fs::create_dir_all(&out)?;
        for log in std::iter::once(cluster.operator_log()).chain(cluster.agent_logs()) {
            if let Some(name) = log.file_name() {
                std::fs::copy(log, out.join(name))?;
            }
        }
        // The API server's own counters: which requests (verb, resource) it served, and how
        // long they took, to see where its time went.
        let request = http::Request::get("/metrics").body(Vec::new())?;
        let metrics = client.request_text(request).await?;
        std::fs::write(out.join("kube-apiserver.metrics"), metrics)?;
        println!("logs copied to {}", out.display());
    }
    Ok(())
}
