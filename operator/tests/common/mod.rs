//! What the operator's integration tests share: the real operator binary, run against the
//! shared control plane and loopback registries.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use airssys_crds::Digest;
use airssys_operator::artifact::cosign::signature_tag;
use airssys_test_support::{ControlPlane, Supervised, run_tool};

/// Starts `airssys-operator run` with the admin kubeconfig, plain HTTP allowed to loopback
/// registries, a 2 s recheck and a metrics endpoint on a free port, plus `extra` flags.
/// The harness's watchdog stops it when the test process exits.
pub fn spawn_operator(cp: &ControlPlane, extra: &[&str], log_name: &str) -> Mutex<Supervised> {
    spawn_operator_rechecking(cp, 2, extra, log_name)
}

/// [`spawn_operator`] with a recheck of `recheck_seconds`: a long one shows that a reaction
/// comes from a watch, not from the periodic re-resolution.
pub fn spawn_operator_rechecking(
    cp: &ControlPlane,
    recheck_seconds: u64,
    extra: &[&str],
    log_name: &str,
) -> Mutex<Supervised> {
    let recheck = recheck_seconds.to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_airssys-operator"));
    cmd.args([
        "run",
        "--insecure-registry",
        "127.0.0.1",
        "--recheck-seconds",
        &recheck,
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .args(extra)
    .env("KUBECONFIG", cp.kubeconfig_path())
    .env("RUST_LOG", "info,airssys_operator=debug");
    let log = cp.dir().join(log_name);
    Mutex::new(Supervised::spawn("airssys-operator", cmd, &log).unwrap())
}

/// Fails the test with the operator's log tail if it has exited.
pub fn assert_running(operator: &Mutex<Supervised>) {
    if let Err(e) = operator.lock().unwrap().check_running() {
        panic!("the operator is not running: {e}");
    }
}

/// Replaces the signature annotation of the first layer in the cosign signature manifest of
/// `repository@digest` and re-pushes the manifest under the same tag with oras (run in `dir`),
/// as someone with push access or corrupted storage could. Returns the signature that was there.
pub fn replace_signature(dir: &Path, repository: &str, digest: &Digest, signature: &str) -> String {
    let oras = |args: &[&str]| run_tool(dir, "oras", args).unwrap_or_else(|e| panic!("{e}"));
    let tag = format!("{repository}:{}", signature_tag(digest));
    let fetched = oras(&["manifest", "fetch", "--plain-http", &tag]);
    let mut manifest: serde_json::Value = serde_json::from_str(&fetched).unwrap();
    let annotation =
        &mut manifest["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"];
    let old = annotation
        .as_str()
        .unwrap_or_else(|| panic!("no cosign signature in {fetched}"))
        .to_owned();
    *annotation = serde_json::Value::String(signature.to_owned());
    std::fs::write(dir.join("sig-manifest.json"), manifest.to_string()).unwrap();
    oras(&[
        "manifest",
        "push",
        "--plain-http",
        &tag,
        "sig-manifest.json",
    ]);
    old
}

/// Fetches the cosign signature manifest of `repository@digest`, lets `edit` change it, and
/// re-pushes it under the same tag with oras (run in `dir`).
fn edit_signature_manifest(
    dir: &Path,
    repository: &str,
    digest: &Digest,
    edit: impl FnOnce(&mut serde_json::Value),
) {
    let oras = |args: &[&str]| run_tool(dir, "oras", args).unwrap_or_else(|e| panic!("{e}"));
    let tag = format!("{repository}:{}", signature_tag(digest));
    let fetched = oras(&["manifest", "fetch", "--plain-http", &tag]);
    let mut manifest: serde_json::Value = serde_json::from_str(&fetched).unwrap();
    edit(&mut manifest);
    std::fs::write(dir.join("sig-manifest.json"), manifest.to_string()).unwrap();
    oras(&[
        "manifest",
        "push",
        "--plain-http",
        &tag,
        "sig-manifest.json",
    ]);
}

/// Adds a second signature layer (the first layer's payload, `signature` as its signature
/// annotation) to the cosign signature manifest of `repository@digest`.
pub fn add_signature(dir: &Path, repository: &str, digest: &Digest, signature: &str) {
    edit_signature_manifest(dir, repository, digest, |manifest| {
        let layers = manifest["layers"].as_array_mut().unwrap();
        let mut extra = layers[0].clone();
        extra["annotations"]["dev.cosignproject.cosign/signature"] =
            serde_json::Value::String(signature.to_owned());
        layers.push(extra);
    });
}

/// Keeps only the first signature layer of the signature manifest of `repository@digest`.
pub fn remove_extra_signatures(dir: &Path, repository: &str, digest: &Digest) {
    edit_signature_manifest(dir, repository, digest, |manifest| {
        manifest["layers"].as_array_mut().unwrap().truncate(1);
    });
}
