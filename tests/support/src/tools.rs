//! Locating (and on first use building) the Go tools the tests drive.
//!
//! `tests/cluster/build.sh` builds every binary once into
//! `$AIRSSYS_TOOLS_DIR/<hash>/bin` (default root `$HOME/.cache/airssys-wasm/tools`) and prints
//! that directory; while the pinned modules are unchanged it only prints it. The harness runs
//! the script once per process, so `cargo test --workspace` alone works on a fresh machine.
//! `AIRSSYS_TOOLS_BIN` skips the script and points straight at a bin directory.
//!
//! A test Node's pieces (kubelet, kube-proxy, the pause and echo images) come the same way
//! from `tests/cluster/node.sh` ([`node_bin_dir`], override `AIRSSYS_NODE_BIN`); containerd,
//! runc, the CNI plugins and iptables are the machine's ([`find_program`], [`cni_bin_dir`]),
//! which that script installs with apt-get when they are missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::Error;

/// The build script, found relative to this crate so tests work from any directory.
pub fn build_script() -> PathBuf {
    crate::repo_root().join("tests/cluster/build.sh")
}

/// The script that builds and installs a test Node's pieces.
pub fn node_script() -> PathBuf {
    crate::repo_root().join("tests/cluster/node.sh")
}

static BIN_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
static NODE_BIN_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The directory holding kube-apiserver, kube-controller-manager, kubectl, etcd, helm,
/// registry, oras and cosign. Blocks while the first build runs (tens of minutes).
pub fn bin_dir() -> Result<&'static Path, Error> {
    cached_dir(&BIN_DIR, "AIRSSYS_TOOLS_BIN", build_script())
}

/// The directory holding kubelet, kube-proxy, kube-scheduler, pause, echo and `images/` (OCI archives and
/// layouts of the pause and echo images). Blocks while the first build runs (minutes).
pub fn node_bin_dir() -> Result<&'static Path, Error> {
    cached_dir(&NODE_BIN_DIR, "AIRSSYS_NODE_BIN", node_script())
}

/// The OCI archive (`images/<name>.tar`) of an image `node.sh` builds: `pause` or `echo`.
pub fn node_image(name: &str) -> Result<PathBuf, Error> {
    let path = node_bin_dir()?.join("images").join(format!("{name}.tar"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::ToolMissing {
            name: format!("images/{name}.tar"),
            dir: node_bin_dir()?.to_path_buf(),
        })
    }
}

fn cached_dir(
    cell: &'static OnceLock<Result<PathBuf, String>>,
    env: &str,
    script: PathBuf,
) -> Result<&'static Path, Error> {
    let found = cell.get_or_init(|| match std::env::var_os(env) {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => run_build_script(script.clone()).map_err(|e| e.to_string()),
    });
    match found {
        Ok(dir) => Ok(dir.as_path()),
        Err(reason) => Err(Error::ToolsBuild {
            script,
            reason: reason.clone(),
        }),
    }
}

/// A program of the machine's (containerd, runc, iptables, ...): on `PATH` or in the sbin
/// directories a non-login `PATH` may lack.
pub fn find_program(name: &str) -> Result<PathBuf, Error> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::ToolMissing {
            name: name.to_owned(),
            dir: PathBuf::from(format!(
                "PATH and {} (run tests/cluster/node.sh)",
                SBIN_DIRS.join(", ")
            )),
        })
}

/// Where Debian's and upstream's CNI plugins live.
const CNI_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];
const SBIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// The directory holding the CNI plugins a Node uses (bridge, host-local, loopback, portmap).
pub fn cni_bin_dir() -> Result<PathBuf, Error> {
    CNI_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|dir| {
            ["bridge", "host-local", "loopback", "portmap"]
                .iter()
                .all(|p| dir.join(p).is_file())
        })
        .ok_or_else(|| Error::ToolMissing {
            name: "CNI plugins bridge, host-local, loopback, portmap".into(),
            dir: PathBuf::from(format!(
                "{} (run tests/cluster/node.sh)",
                CNI_DIRS.join(", ")
            )),
        })
}

/// `PATH` with the sbin directories appended, for the node's daemons (kubelet runs mount,
/// kube-proxy runs iptables, containerd runs its shims).
pub(crate) fn path_with_sbin() -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .collect();
    std::env::join_paths(dirs).unwrap_or(path)
}

fn run_build_script(script: PathBuf) -> Result<PathBuf, Error> {
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
