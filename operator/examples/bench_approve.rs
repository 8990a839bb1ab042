//! End-to-end approval benchmark (a program, not a test): the real control plane, the real
//! operator binary, a real OCI registry with one artifact pushed by `oras`, one trusted-registry
//! TrustSource, then N WasmComponents created at once; it measures the time until every one is
//! Approved=True and the operator's peak RSS (VmHWM).
//!
//! ```text
//! cargo build --release -p airssys-operator --bins
//! cargo run --release -p airssys-operator --example bench_approve -- [COMPONENTS] [IN_FLIGHT]
//! ```
//!
//! The operator binary is `AIRSSYS_OPERATOR_BIN` if set, else the release build next to this
//! program's target directory, else the debug one; the program prints which it ran.
#![allow(
    clippy::print_stdout,
    reason = "a benchmark program: its report is its output"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use airssys_crds::{TrustSource, WasmComponent};
use airssys_test_support::{ControlPlane, ControlPlaneOptions, Registry, Supervised, push_wasm};
use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use kube::Api;
use kube::api::{ListParams, PostParams};

const DEFAULT_COMPONENTS: usize = 1000;
const DEFAULT_IN_FLIGHT: usize = 64;
const GIVE_UP: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let count: usize = args
        .next()
        .map_or(Ok(DEFAULT_COMPONENTS), |a| a.parse())
        .context("COMPONENTS must be a number")?;
    let in_flight: usize = args
        .next()
        .map_or(Ok(DEFAULT_IN_FLIGHT), |a| a.parse())
        .context("IN_FLIGHT must be a number")?;

    let operator_bin = operator_binary()?;
    println!("operator binary: {}", operator_bin.display());

    // No controller manager: nothing here needs it, and it would compete for the CPU.
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
    let source: TrustSource = serde_json::from_value(serde_json::json!({
        "apiVersion": "wasm.airssys.dev/v1alpha1",
        "kind": "TrustSource",
        "metadata": { "name": "bench-registry" },
        "spec": {
            "decision": "Trust",
            "registries": [{ "repository": format!("{}/bench/**", registry.address()) }],
            "capabilityCeiling": { "env": [{ "name": "LOG_LEVEL" }] },
        },
    }))?;
    sources.create(&PostParams::default(), &source).await?;

    let mut cmd = Command::new(&operator_bin);
    cmd.args([
        "run",
        "--insecure-registry",
        "127.0.0.1",
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .env("KUBECONFIG", cp.kubeconfig_path())
    .env("RUST_LOG", "warn");
    let log = cp.dir().join("operator.log");
    let mut operator = Supervised::spawn("airssys-operator", cmd, &log)?;

    // The source must be in the operator's index before the burst, or the first decisions
    // would be about a cluster without it.
    let accepted = Instant::now();
    loop {
        let s = sources.get("bench-registry").await?;
        let v = serde_json::to_value(&s)?;
        let ok = v
            .pointer("/status/conditions")
            .and_then(|c| c.as_array())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Accepted" && c["status"] == "True")
            });
        if ok {
            break;
        }
        operator.check_running()?;
        if accepted.elapsed() > Duration::from_secs(60) {
            bail!(
                "the TrustSource was never accepted:\n{}",
                operator.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

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
    let created = start.elapsed();
    println!("all created after {:.2} s", created.as_secs_f64());

    let approved_after = loop {
        let list = components.list(&ListParams::default()).await?;
        let approved = list.items.iter().filter(|c| is_approved(c)).count();
        if approved >= count {
            break start.elapsed();
        }
        operator.check_running()?;
        if start.elapsed() > GIVE_UP {
            bail!(
                "only {approved}/{count} approved after {} s:\n{}",
                GIVE_UP.as_secs(),
                operator.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (hwm, rss) = memory(operator.pid())?;
    println!(
        "time to all Approved=True: {:.2} s (goal < 10 s)",
        approved_after.as_secs_f64()
    );
    println!(
        "operator peak RSS (VmHWM): {:.1} MiB (goal < 100 MiB); current RSS {:.1} MiB",
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    operator.stop();
    drop(registry);
    cp.stop();
    Ok(())
}

fn is_approved(c: &WasmComponent) -> bool {
    c.status.as_ref().is_some_and(|s| {
        airssys_crds::condition::is_true(&s.conditions, airssys_crds::ConditionType::Approved)
    })
}

/// `AIRSSYS_OPERATOR_BIN`, else `<target>/release/airssys-operator`, else the debug build.
fn operator_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("AIRSSYS_OPERATOR_BIN") {
        return Ok(PathBuf::from(bin));
    }
    // This program lives in <target>/<profile>/examples/.
    let exe = std::env::current_exe()?;
    let target = exe
        .ancestors()
        .nth(3)
        .context("cannot find the target directory")?;
    for profile in ["release", "debug"] {
        let bin = target.join(profile).join("airssys-operator");
        if bin.is_file() {
            return Ok(bin);
        }
    }
    bail!(
        "no airssys-operator under {}; run `cargo build --release -p airssys-operator --bins`",
        target.display()
    )
}

/// Pushes a small wasm artifact with oras; returns its manifest digest.
fn push(dir: &Path, reference: &str) -> anyhow::Result<String> {
    let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
    bytes.extend_from_slice(b"bench echo");
    Ok(push_wasm(dir, reference, &bytes)?)
}

/// (VmHWM, VmRSS) of `pid` in KiB.
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
