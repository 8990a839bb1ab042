//! Decision and revocation benchmark among many sources (a program, not a test): the real
//! control plane, the real operator binary, a real OCI registry with one artifact; SOURCES
//! key-only TrustSources that concern none of the components (each with its own key), one
//! registry source that approves them, then COMPONENTS WasmComponents created at once. It
//! measures the time until every one is Approved=True (decision latency), then deletes the
//! approving source and measures the time until every one is Approved=False (revocation
//! latency), and reports the longest condition message seen.
//!
//! ```text
//! cargo build --release -p airssys-operator --bins
//! cargo run --release -p airssys-operator --example bench_revoke -- [SOURCES] [COMPONENTS] [IN_FLIGHT]
//! ```
//!
//! Defaults: 1000 sources, 1000 components, 64 requests in flight. The operator binary is
//! `AIRSSYS_OPERATOR_BIN` if set, else the release build next to this program's target
//! directory, else the debug one.
#![allow(
    clippy::print_stdout,
    reason = "a benchmark program: its report is its output"
)]

#[path = "common/mod.rs"]
mod common;

use common::{is_approved, memory, operator_binary, push, start_operator, trust_bench_registry};

use std::time::{Duration, Instant};

use airssys_crds::{TrustSource, WasmComponent};
use airssys_test_support::{ControlPlane, ControlPlaneOptions, Registry, Supervised, run_tool};
use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};

const DEFAULT_SOURCES: usize = 1000;
const DEFAULT_COMPONENTS: usize = 1000;
const DEFAULT_IN_FLIGHT: usize = 64;
const GIVE_UP: Duration = Duration::from_secs(600);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut number = |default: usize, what: &str| -> anyhow::Result<usize> {
        args.next()
            .map_or(Ok(default), |a| a.parse())
            .with_context(|| format!("{what} must be a number"))
    };
    let source_count = number(DEFAULT_SOURCES, "SOURCES")?;
    let count = number(DEFAULT_COMPONENTS, "COMPONENTS")?;
    let in_flight = number(DEFAULT_IN_FLIGHT, "IN_FLIGHT")?.max(1);

    let operator_bin = operator_binary()?;
    println!("operator binary: {}", operator_bin.display());
    let cp = ControlPlane::start(ControlPlaneOptions {
        controller_manager: false,
        ..ControlPlaneOptions::default()
    })
    .await?;
    let registry = Registry::start().await?;
    let dir = tempfile::tempdir()?;
    let reference = format!("{}/bench/echo:v1", registry.address());
    let digest = push(dir.path(), &reference)?;
    println!("artifact: {reference} = {digest}");

    let client = cp.client().await?;
    let sources: Api<TrustSource> = Api::all(client.clone());
    // Unrelated key-only sources, each with a key of its own (cosign makes a few; they are
    // reused round-robin: what matters is the number of sources and keys the index holds).
    let keys: Vec<String> = (0..8)
        .map(|i| {
            let keydir = dir.path().join(format!("key-{i}"));
            std::fs::create_dir_all(&keydir)?;
            run_tool(&keydir, "cosign", &["generate-key-pair"])?;
            Ok(std::fs::read_to_string(keydir.join("cosign.pub"))?)
        })
        .collect::<anyhow::Result<_>>()?;
    println!("creating {source_count} unrelated key-only TrustSources");
    futures::stream::iter(0..source_count)
        .map(|i| {
            let api = sources.clone();
            let key = keys[i % keys.len()].clone();
            async move {
                let source: TrustSource = serde_json::from_value(serde_json::json!({
                    "apiVersion": "wasm.airssys.dev/v1alpha1",
                    "kind": "TrustSource",
                    "metadata": { "name": format!("team-{i:04}-release-keys") },
                    "spec": {
                        "decision": "Trust",
                        "keys": [{ "name": "release", "publicKey": key }],
                        "capabilityCeiling": { "env": [{ "name": "LOG_LEVEL" }] },
                    },
                }))?;
                api.create(&PostParams::default(), &source).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(in_flight)
        .try_collect::<Vec<()>>()
        .await?;
    trust_bench_registry(&sources, registry.address()).await?;
    let loaded = Instant::now();
    // Every reaction measured here must come from a watch, not from a re-resolution.
    let mut operator = start_operator(
        &operator_bin,
        &cp,
        &sources,
        &["--recheck-seconds", "3600"],
        Duration::from_secs(120),
    )
    .await?;
    println!(
        "operator up, {} sources accepted after {:.2} s",
        source_count + 1,
        loaded.elapsed().as_secs_f64()
    );

    let ns = cp.create_namespace("bench").await?;
    let components: Api<WasmComponent> = Api::namespaced(client.clone(), &ns);
    println!("creating {count} WasmComponents in {ns}, {in_flight} requests in flight");
    let start = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let api = components.clone();
            let reference = reference.clone();
            async move {
                let c: WasmComponent = serde_json::from_value(serde_json::json!({
                    "apiVersion": "wasm.airssys.dev/v1alpha1",
                    "kind": "WasmComponent",
                    "metadata": { "name": format!("echo-{i:04}") },
                    "spec": {
                        "artifact": { "oci": { "reference": reference, "insecure": true } },
                        "capabilities": { "env": [{ "name": "LOG_LEVEL" }] },
                    },
                }))?;
                api.create(&PostParams::default(), &c).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(in_flight)
        .try_collect::<Vec<()>>()
        .await?;
    let decided = wait_until(&components, &mut operator, count, start, is_approved).await?;
    println!(
        "decision: all {count} Approved=True after {:.2} s",
        decided.as_secs_f64()
    );

    let revoke = Instant::now();
    sources
        .delete("bench-registry", &DeleteParams::default())
        .await?;
    let revoked = wait_until(&components, &mut operator, count, revoke, |c| {
        approved_status(c) == Some("False")
    })
    .await?;
    println!(
        "revocation: all {count} Approved=False after {:.2} s",
        revoked.as_secs_f64()
    );
    let longest = components
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|c| c.status.as_ref())
        .flat_map(|s| s.conditions.iter().map(|c| c.message.len()))
        .max()
        .unwrap_or(0);
    println!("longest condition message: {longest} bytes (API server limit 32768)");
    let (hwm, rss) = memory(operator.pid())?;
    println!(
        "operator peak RSS (VmHWM): {:.1} MiB; current RSS {:.1} MiB",
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    operator.stop();
    drop(registry);
    cp.stop();
    Ok(())
}

/// Polls until `count` components satisfy `done`; returns the time since `start`.
async fn wait_until(
    components: &Api<WasmComponent>,
    operator: &mut Supervised,
    count: usize,
    start: Instant,
    done: impl Fn(&WasmComponent) -> bool,
) -> anyhow::Result<Duration> {
    loop {
        let list = components.list(&ListParams::default()).await?;
        let n = list.items.iter().filter(|c| done(c)).count();
        if n >= count {
            return Ok(start.elapsed());
        }
        operator.check_running()?;
        if start.elapsed() > GIVE_UP {
            bail!(
                "only {n}/{count} after {} s:\n{}",
                GIVE_UP.as_secs(),
                operator.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn approved_status(c: &WasmComponent) -> Option<&'static str> {
    let s = c.status.as_ref()?;
    airssys_crds::condition::find(&s.conditions, airssys_crds::ConditionType::Approved)
        .map(|c| c.status.as_str())
}
