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

#[path = "common/mod.rs"]
mod common;

use common::{is_approved, memory, operator_binary, push, start_operator, trust_bench_registry};

use std::time::{Duration, Instant};

use airssys_crds::{TrustSource, WasmComponent};
use airssys_test_support::{ControlPlane, ControlPlaneOptions, Registry};
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
    trust_bench_registry(&sources, registry.address()).await?;
    let mut operator =
        start_operator(&operator_bin, &cp, &sources, &[], Duration::from_secs(60)).await?;

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
