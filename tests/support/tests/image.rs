//! Images built without a container engine, checked with real tools: the `airssys-image` CLI
//! (what `cargo run -p xtask -- image` runs) packs a real dynamically linked Rust binary (its
//! own, linked like the operator and agent) twice to the same digests, pushes it to the local
//! registry, and `oras` reads back a config with the user, entrypoint and labels, and a layer
//! with only the binary and the libraries `ldd` lists. The layer is then run in a chroot: the
//! libraries it carries are all the binary needs.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::path::Path;
use std::process::Command;

use airssys_test_support::chart::{ImageBinaries, chart_dir, push_images};
use airssys_test_support::image::shared_libraries;
use airssys_test_support::{Registry, run_tool};
use serde_json::Value;

const IMAGE_CLI: &str = env!("CARGO_BIN_EXE_airssys-image");

/// Runs the CLI on its own binary; returns the digest it prints.
fn build(extra: &[&str]) -> String {
    let out = Command::new(IMAGE_CLI)
        .args(["--binary", IMAGE_CLI, "--name", "airssys-image"])
        .args(["--revision", "0123abc", "--created", "1700000000"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "airssys-image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn oras(dir: &Path, args: &[&str]) -> String {
    run_tool(dir, "oras", args).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_is_reproducible_minimal_and_runs_as_non_root() {
    let registry = Registry::start().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();

    // Built twice (once into an OCI layout): the same digest.
    let layout = dir.join("layout");
    let first = build(&["--oci-layout", layout.to_str().unwrap()]);
    let reference = format!("{}/airssys/image-test:v1", registry.address());
    let second = build(&["--push", &reference, "--plain-http"]);
    assert!(first.starts_with("sha256:"), "{first}");
    assert_eq!(first, second, "two builds of the same binary differ");
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], first.as_str());

    // The registry serves it under that digest.
    let resolved = oras(dir, &["resolve", "--plain-http", &reference]);
    assert_eq!(resolved, first);
    let manifest: Value = serde_json::from_str(&oras(
        dir,
        &["manifest", "fetch", "--plain-http", &reference],
    ))
    .unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let repo = format!("{}/airssys/image-test", registry.address());
    let blob = |digest: &str, out: &str| {
        let path = dir.join(out);
        oras(
            dir,
            &[
                "blob",
                "fetch",
                "--plain-http",
                "--output",
                path.to_str().unwrap(),
                &format!("{repo}@{digest}"),
            ],
        );
        path
    };

    let config_path = blob(
        manifest["config"]["digest"].as_str().unwrap(),
        "config.json",
    );
    let config: Value = serde_json::from_slice(&std::fs::read(config_path).unwrap()).unwrap();
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532");
    assert_eq!(c["Entrypoint"][0], "/usr/local/bin/airssys-image");
    assert_eq!(c["WorkingDir"], "/");
    let labels = &c["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], "airssys-image");
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(labels["org.opencontainers.image.revision"], "0123abc");
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    assert_eq!(
        labels["org.opencontainers.image.source"],
        "https://github.com/airsstack/airssys-wasm"
    );
    assert_eq!(
        labels["org.opencontainers.image.created"],
        "2023-11-14T22:13:20Z"
    );
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");

    // The layer: the binary, exactly ldd's libraries and the CA bundle, owned by root, nothing
    // else.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let layer = blob(layers[0]["digest"].as_str().unwrap(), "layer.tar.gz");
    let listing = Command::new("tar")
        .args(["--list", "--verbose", "--numeric-owner", "-z", "-f"])
        .arg(&layer)
        .output()
        .unwrap();
    assert!(listing.status.success());
    let listing = String::from_utf8(listing.stdout).unwrap();
    let files: Vec<String> = listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .map(|l| format!("/{}", l.split_whitespace().last().unwrap()))
        .collect();
    let mut expected: Vec<String> = shared_libraries(Path::new(IMAGE_CLI))
        .unwrap()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    expected.push("/usr/local/bin/airssys-image".to_owned());
    expected.push(airssys_test_support::image::CA_BUNDLE.to_owned());
    expected.sort();
    assert!(
        expected.iter().any(|f| f.contains("libc.so")),
        "{expected:?}"
    );
    assert_eq!(files, expected, "layer files:\n{listing}");
    for line in listing.lines() {
        assert!(line.contains(" 0/0 "), "not owned by root: {line}");
        assert!(
            line.starts_with('-') || line.starts_with('d'),
            "only files and directories: {line}"
        );
    }

    // Unpacked alone, it runs: the layer carries everything the binary loads.
    let root_dir = dir.join("rootfs");
    std::fs::create_dir(&root_dir).unwrap();
    let unpack = Command::new("tar")
        .args(["-x", "-z", "-f"])
        .arg(&layer)
        .arg("-C")
        .arg(&root_dir)
        .status()
        .unwrap();
    assert!(unpack.success());
    if rustix::process::geteuid().is_root() {
        let run = Command::new("chroot")
            .arg(&root_dir)
            .args(["/usr/local/bin/airssys-image", "--help"])
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "the binary does not run from its layer alone: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(String::from_utf8_lossy(&run.stdout).contains("Build the OCI image"));
    } else {
        eprintln!("not root: skipped running the layer in a chroot");
    }
}

/// The helper a node test uses to run its own build: both images pushed, and the chart's
/// values from it make the Deployment and DaemonSet pull exactly those digests. (Any real
/// binary shows the plumbing; this package can only name its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_images_become_the_charts_image_values() {
    let registry = Registry::start().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let binaries = ImageBinaries {
        operator: IMAGE_CLI.into(),
        agent: IMAGE_CLI.into(),
    };
    let pushed = push_images(&registry, &binaries, "e2e").await.unwrap();
    for image in [&pushed.operator, &pushed.agent] {
        let resolved = oras(
            work.path(),
            &[
                "resolve",
                "--plain-http",
                &format!("{}:{}", image.repository, image.tag),
            ],
        );
        assert_eq!(resolved, image.digest);
    }
    let mut args = vec![
        "template".to_owned(),
        "r".to_owned(),
        chart_dir().display().to_string(),
        "--kube-version".to_owned(),
        "1.34.0".to_owned(),
        "--show-only".to_owned(),
        "templates/operator.yaml".to_owned(),
        "--show-only".to_owned(),
        "templates/agent.yaml".to_owned(),
    ];
    for value in pushed.values() {
        args.extend(["--set".to_owned(), value]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let rendered = run_tool(work.path(), "helm", &args).unwrap();
    for image in [&pushed.operator, &pushed.agent] {
        let want = format!("image: \"{}@{}\"", image.repository, image.digest);
        assert!(rendered.contains(&want), "{want} not in:\n{rendered}");
    }
}
