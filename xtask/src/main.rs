//! Developer tasks. `cargo run -p xtask -- dev` runs the whole system locally;
//! `cargo run -p xtask -- image --binary airssys-operator --push REGISTRY/REPO:TAG` builds and
//! pushes a binary's OCI image without a container engine.
//!
//! This crate is std-only so that `cargo run -p xtask` compiles in seconds. `dev` then runs one
//! `cargo build --locked --workspace --bins` (operator, agent, `kubectl-wasm` and the
//! `airssys-dev` driver from airssys-test-support, all in one build graph: every dependency is
//! compiled once, with one set of features) and hands over to `airssys-dev`, which starts the
//! control plane, the local OCI registry and the operator and applies the examples. While cargo
//! compiles, the Go tools of the control plane are built in the background, as `.ci/run` does.
//! `image` runs the same build and hands over to `airssys-image` (also airssys-test-support),
//! which packs the binary with the shared libraries `ldd` lists and the CA bundle, reproducibly.
use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

const USAGE: &str = "\
usage: cargo run -p xtask -- dev [--no-build] [AIRSSYS-DEV OPTIONS]
       cargo run -p xtask -- image --binary airssys-operator|airssys-agent
                                   [--push REGISTRY/REPO:TAG] [--plain-http] [--oci-layout DIR]
                                   [--no-build] [AIRSSYS-IMAGE OPTIONS]

  dev          build every binary of the workspace once, then run the local cluster
               (airssys-dev: control plane, OCI registry, operator, the examples applied)
  image        build every binary once, then the OCI image of one of them (airssys-image:
               the binary, the shared libraries ldd lists, the CA bundle, user 65532, reproducible
               digests) and push it and/or write it as an OCI layout
  --no-build   use the binaries already built (no cargo build)

Options after `dev` go to airssys-dev, after `image` to airssys-image; `--help` after either
lists them. `cargo run --release -p xtask -- image ...` packs the release build.";

/// The binaries `image` packs.
const IMAGE_BINARIES: &[&str] = &["airssys-operator", "airssys-agent"];

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let task = match args.next().as_deref().and_then(|a| a.to_str()) {
        Some("dev") => Task::Dev,
        Some("image") => Task::Image,
        Some("-h" | "--help" | "help") => {
            eprintln!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let mut build = true;
    let mut forward: Vec<OsString> = Vec::new();
    for arg in args {
        if arg == "--no-build" {
            build = false;
        } else {
            forward.push(arg);
        }
    }
    // Each task only returns when something failed: on success it became its driver (exec).
    let (name, result) = match task {
        Task::Dev => ("dev", dev(build, &forward)),
        Task::Image => ("image", image(build, &forward)),
    };
    let message = match result {
        Ok(message) | Err(message) => message,
    };
    eprintln!("xtask {name}: {message}");
    ExitCode::FAILURE
}

#[derive(Debug, Clone, Copy)]
enum Task {
    Dev,
    Image,
}

/// Builds the workspace's binaries, then replaces this process with airssys-image, given the
/// path of the binary `--binary NAME` names; returns only with what went wrong.
fn image(build: bool, forward: &[OsString]) -> Result<String, String> {
    let bin_dir = bin_dir()?;
    let root = workspace_root()?;
    let mut args: Vec<OsString> = Vec::with_capacity(forward.len());
    let mut binary = None;
    let mut rest = forward.iter();
    while let Some(arg) = rest.next() {
        let value = if arg == "--binary" {
            rest.next().cloned()
        } else if let Some(v) = arg.to_str().and_then(|a| a.strip_prefix("--binary=")) {
            Some(v.into())
        } else {
            args.push(arg.clone());
            continue;
        };
        let name = value
            .as_deref()
            .and_then(|v| v.to_str())
            .filter(|v| IMAGE_BINARIES.contains(v))
            .ok_or_else(|| format!("--binary takes one of {IMAGE_BINARIES:?}"))?;
        binary = Some(name.to_owned());
    }
    let asks_help = args.iter().any(|a| a == "-h" || a == "--help");
    let Some(binary) = binary.or_else(|| asks_help.then(String::new)) else {
        return Err(format!(
            "give --binary, one of {IMAGE_BINARIES:?}\n\n{USAGE}"
        ));
    };
    if build && !asks_help {
        cargo_build(&root, &bin_dir)?;
    }
    let driver = bin_dir.join("airssys-image");
    if !driver.is_file() {
        return Err(format!(
            "{} is not built; run without --no-build",
            driver.display()
        ));
    }
    let mut cmd = Command::new(&driver);
    if !binary.is_empty() {
        cmd.arg("--binary").arg(bin_dir.join(&binary));
    }
    // The revision and commit time come from git in the workspace.
    let error = cmd.args(&args).current_dir(&root).exec();
    Ok(format!("starting {}: {error}", driver.display()))
}

/// Builds, then replaces this process with airssys-dev; returns only with what went wrong.
fn dev(build: bool, forward: &[OsString]) -> Result<String, String> {
    let bin_dir = bin_dir()?;
    let root = workspace_root()?;
    if build {
        // The Go tools download modules for much of their first build; overlap that with
        // cargo. The script takes a lock, so airssys-dev's own call later just waits for it.
        let tools = start_tools_build(&root, &bin_dir);
        cargo_build(&root, &bin_dir)?;
        if let Some((mut child, log)) = tools {
            eprintln!(
                "xtask dev: waiting for the control-plane tools (log: {})",
                log.display()
            );
            let status = child
                .wait()
                .map_err(|e| format!("waiting for tests/cluster/build.sh: {e}"))?;
            if !status.success() {
                return Err(format!(
                    "building the control-plane tools failed ({status}); see {}",
                    log.display()
                ));
            }
        }
    }
    let driver = bin_dir.join("airssys-dev");
    if !driver.is_file() {
        return Err(format!(
            "{} is not built; run without --no-build",
            driver.display()
        ));
    }
    // exec: airssys-dev gets Ctrl-C and SIGTERM directly and its exit status is ours.
    let error = Command::new(&driver).args(forward).exec();
    Ok(format!("starting {}: {error}", driver.display()))
}

/// The directory this binary was built into (`<target>/debug`): cargo builds the workspace's
/// binaries there too, whatever `CARGO_TARGET_DIR` or `--target-dir` said.
fn bin_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating xtask's binary: {e}"))?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("{} has no parent directory", exe.display()))
}

/// The workspace root: this crate's parent (compiled in, so any working directory works).
fn workspace_root() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize()
        .map_err(|e| format!("locating the workspace at {}: {e}", root.display()))
}

/// `cargo build --locked --workspace --bins` into the target directory xtask itself lives in,
/// in the same profile.
fn cargo_build(root: &Path, bin_dir: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let profile_dir = bin_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let target_dir = bin_dir
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", bin_dir.display()))?;
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--locked", "--workspace", "--bins", "--target-dir"])
        .arg(target_dir)
        .current_dir(root);
    // `cargo run` gave us xtask's CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...; build scripts
    // (ring's) rerun when those change, so passing them on would rebuild ring and everything
    // above it, here and again in the developer's next plain `cargo build`.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_package_env) {
            cmd.env_remove(&name);
        }
    }
    if profile_dir == "release" {
        cmd.arg("--release");
    }
    eprintln!("xtask dev: {cmd:?}");
    let status = cmd.status().map_err(|e| format!("running cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo build failed ({status})"))
    }
}

/// Variables cargo sets for the package it runs, never cargo configuration.
fn is_package_env(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "OUT_DIR"
        )
}

/// Starts `tests/cluster/build.sh` in the background with its output in a log file. `None`
/// (and a note) when it cannot start; airssys-dev then runs it itself.
fn start_tools_build(root: &Path, bin_dir: &Path) -> Option<(std::process::Child, PathBuf)> {
    let log = bin_dir.join("airssys-dev-tools-build.log");
    let out = std::fs::File::create(&log).ok()?;
    let err = out.try_clone().ok()?;
    match Command::new("bash")
        .arg(root.join("tests/cluster/build.sh"))
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
    {
        Ok(child) => Some((child, log)),
        Err(e) => {
            eprintln!("xtask dev: could not start tests/cluster/build.sh in the background: {e}");
            None
        }
    }
}
