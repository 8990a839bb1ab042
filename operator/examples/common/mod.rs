//! What the operator's end-to-end benchmark programs share: finding the operator binary,
//! pushing the small test artifact, reading a process's memory, the Approved test.

use std::path::{Path, PathBuf};

use airssys_crds::WasmComponent;
use airssys_test_support::push_wasm;
use anyhow::{Context as _, bail};

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
