//! The artifact tools from the harness against its local registry: oras pushes an artifact,
//! cosign signs it by digest and verifies it with the right key only.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic like the tests they serve"
)]

use std::path::Path;
use std::process::{Command, Output};

use airssys_test_support::{Registry, tool_path};

fn run(tool: &str, dir: &Path, args: &[&str]) -> Output {
    Command::new(tool_path(tool).unwrap())
        .args(args)
        .current_dir(dir)
        // Keys without a passphrase; tool state (TUF cache, docker config) inside the test dir.
        .env("COSIGN_PASSWORD", "")
        .env("HOME", dir)
        .env("TUF_ROOT", dir.join("tuf"))
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[tokio::test]
async fn oras_pushes_and_cosign_signs_and_verifies_against_the_local_registry() {
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    std::fs::write(work.join("component.wasm"), b"\0asm\x0d\0\x01\0").unwrap();
    let reference = format!("{}/components/hello:v1", registry.address());

    ok(&run(
        "oras",
        work,
        &[
            "push",
            "--plain-http",
            "--artifact-type",
            "application/vnd.airssys.component.v1+wasm",
            &reference,
            "component.wasm:application/wasm",
        ],
    ));
    let digest = ok(&run("oras", work, &["resolve", "--plain-http", &reference]))
        .trim()
        .to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");
    let manifest = ok(&run(
        "oras",
        work,
        &["manifest", "fetch", "--plain-http", &reference],
    ));
    assert!(manifest.contains("application/wasm"), "{manifest}");

    let by_digest = format!("{}/components/hello@{digest}", registry.address());
    ok(&run("cosign", work, &["generate-key-pair"]));
    ok(&run(
        "cosign",
        work,
        &[
            "sign",
            "--key",
            "cosign.key",
            "--tlog-upload=false",
            "--allow-insecure-registry",
            "--yes",
            &by_digest,
        ],
    ));
    let verified = ok(&run(
        "cosign",
        work,
        &[
            "verify",
            "--key",
            "cosign.pub",
            "--insecure-ignore-tlog=true",
            "--allow-insecure-registry",
            &by_digest,
        ],
    ));
    assert!(verified.contains(&digest), "{verified}");

    // A different key must not verify the same artifact.
    let other = work.join("other");
    std::fs::create_dir(&other).unwrap();
    ok(&run("cosign", &other, &["generate-key-pair"]));
    let rejected = run(
        "cosign",
        work,
        &[
            "verify",
            "--key",
            "other/cosign.pub",
            "--insecure-ignore-tlog=true",
            "--allow-insecure-registry",
            &by_digest,
        ],
    );
    assert!(!rejected.status.success(), "{}", text(&rejected.stdout));

    let address = registry.address().to_string();
    drop(registry);
    assert!(
        std::net::TcpStream::connect(&address).is_err(),
        "registry still listening on {address} after drop"
    );
}
