//! Locating (and on first use building) the Go tools the tests drive.
//!
//! `tests/cluster/build.sh` builds every binary once into
//! `$AIRSSYS_TOOLS_DIR/<hash>/bin` (default root `$HOME/.cache/airssys-wasm/tools`) and prints
//! that directory; while the pinned modules are unchanged it only prints it. The harness runs
//! the script once per process, so `cargo test --workspace` alone works on a fresh machine.
//! `AIRSSYS_TOOLS_BIN` skips the script and points straight at a bin directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::Error;

/// The build script, found relative to this crate so tests work from any directory.
pub fn build_script() -> PathBuf {
    crate::repo_root().join("tests/cluster/build.sh")
}

static BIN_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The directory holding kube-apiserver, kube-controller-manager, kubectl, etcd, helm,
/// registry, oras and cosign. Blocks while the first build runs (tens of minutes).
pub fn bin_dir() -> Result<&'static Path, Error> {
    let found = BIN_DIR.get_or_init(|| match std::env::var_os("AIRSSYS_TOOLS_BIN") {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => run_build_script().map_err(|e| e.to_string()),
    });
    match found {
        Ok(dir) => Ok(dir.as_path()),
        Err(reason) => Err(Error::ToolsBuild {
            script: build_script(),
            reason: reason.clone(),
        }),
    }
}

fn run_build_script() -> Result<PathBuf, Error> {
    let script = build_script();
    tracing::info!(script = %script.display(), "locating test tools");
    // stderr is inherited so a first, long build shows its progress.
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(Error::io(format!("running {}", script.display())))?;
    if !output.status.success() {
        return Err(Error::ToolsBuild {
            script,
            reason: format!("exited with {}", output.status),
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| Error::ToolsBuild {
            script: script.clone(),
            reason: "printed no bin directory".into(),
        })?;
    Ok(dir)
}

/// Absolute path of one harness tool, e.g. `tool_path("cosign")`.
pub fn tool_path(name: &str) -> Result<PathBuf, Error> {
    let dir = bin_dir()?;
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::ToolMissing {
            name: name.to_string(),
            dir: dir.to_path_buf(),
        })
    }
}

/// Runs harness tool `name` in `dir` and returns its trimmed stdout. `HOME` is `dir` (tools keep
/// no state between tests) and cosign runs non-interactively with empty key passwords. A
/// non-zero exit is an error carrying both outputs.
pub fn run_tool(dir: &Path, name: &str, args: &[&str]) -> Result<String, Error> {
    let bin = tool_path(name)?;
    let out = Command::new(&bin)
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("COSIGN_PASSWORD", "")
        .env("COSIGN_YES", "true")
        .output()
        .map_err(Error::io(format!("running {}", bin.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        return Err(Error::ToolFailed {
            name: name.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            status: out.status,
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(stdout)
}

/// Pushes `bytes` to `reference` (a loopback registry, plain HTTP) as a single-layer
/// `application/wasm` artifact with oras, working in `dir`; returns the manifest digest.
pub fn push_wasm(dir: &Path, reference: &str, bytes: &[u8]) -> Result<String, Error> {
    let file = dir.join("component.wasm");
    std::fs::write(&file, bytes).map_err(Error::io(format!("writing {}", file.display())))?;
    run_tool(
        dir,
        "oras",
        &[
            "push",
            "--plain-http",
            reference,
            "component.wasm:application/wasm",
        ],
    )?;
    run_tool(dir, "oras", &["resolve", "--plain-http", reference])
}
