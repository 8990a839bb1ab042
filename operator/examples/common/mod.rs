//! What the operator's end-to-end benchmark programs share: finding the operator binary,
//! trusting the bench registry, starting the operator, pushing the small test artifact,
//! reading a process's memory, the Approved test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use airssys_crds::{TrustSource, WasmComponent};
use airssys_test_support::{ControlPlane, Supervised, push_wasm};
use anyhow::{Context as _, bail};
use kube::Api;
use kube::api::PostParams;

/// Creates the TrustSource `bench-registry` trusting `<registry>/bench/**`.
pub async fn trust_bench_registry(
    sources: &Api<TrustSource>,
    registry: &str,
) -> anyhow::Result<()> {
    let source: TrustSource = serde_json::from_value(serde_json::json!({
        "apiVersion": "wasm.airssys.dev/v1alpha1",
        "kind": "TrustSource",
        "metadata": { "name": "bench-registry" },
        "spec": {
            "decision": "Trust",
            "registries": [{ "repository": format!("{registry}/bench/**") }],
            "capabilityCeiling": { "env": [{ "name": "LOG_LEVEL" }] },
        },
    }))?;
    sources.create(&PostParams::default(), &source).await?;
    Ok(())
}

/// Starts the operator against `cp` (plain HTTP to loopback registries, `extra` flags), and
/// waits until it has accepted the TrustSource `bench-registry`: the source must be in its
/// index before anything is measured.
pub async fn start_operator(
    bin: &Path,
    cp: &ControlPlane,
    sources: &Api<TrustSource>,
    extra: &[&str],
    within: Duration,
) -> anyhow::Result<Supervised> {
    let mut cmd = Command::new(bin);
    cmd.args([
        "run",
        "--insecure-registry",
        "127.0.0.1",
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .args(extra)
    .env("KUBECONFIG", cp.kubeconfig_path())
    .env("RUST_LOG", "warn");
    let log = cp.dir().join("operator.log");
    let mut operator = Supervised::spawn("airssys-operator", cmd, &log)?;
    let started = Instant::now();
    loop {
        let s = sources.get("bench-registry").await?;
        let accepted = s.status.as_ref().is_some_and(|st| {
            airssys_crds::condition::is_true(&st.conditions, airssys_crds::ConditionType::Accepted)
        });
        if accepted {
            return Ok(operator);
        }
        operator.check_running()?;
        if started.elapsed() > within {
            bail!(
                "the TrustSource was never accepted:\n{}",
                operator.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn is_approved(c: &WasmComponent) -> bool {
    c.status.as_ref().is_some_and(|s| {
        airssys_crds::condition::is_true(&s.conditions, airssys_crds::ConditionType::Approved)
    })
}

/// `AIRSSYS_OPERATOR_BIN`, else `<target>/release/airssys-operator`, else the debug build.
pub fn operator_binary() -> anyhow::Result<PathBuf> {
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
pub fn push(dir: &Path, reference: &str) -> anyhow::Result<String> {
    let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
    bytes.extend_from_slice(b"bench echo");
    Ok(push_wasm(dir, reference, &bytes)?)
}

/// (VmHWM, VmRSS) of `pid` in KiB.
pub fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
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
