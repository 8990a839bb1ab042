//! Smoke tests with the real `kubectl` against the real API server: the committed CRDs are
//! accepted as structural and established, the examples apply, the printer columns show,
//! and every invalid example is rejected with the message it promises.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic like the tests they serve"
)]

use std::process::Output;

use airssys_e2e::{examples_dir, invalid_examples, yaml_files};
use airssys_test_support::{ControlPlane, condition_status, repo_root};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `kubectl apply -f examples/` once per test process (tests run concurrently and would
/// otherwise race on the same objects); every caller sees the same result.
async fn apply_examples() -> &'static Output {
    static APPLIED: tokio::sync::OnceCell<Output> = tokio::sync::OnceCell::const_new();
    APPLIED
        .get_or_init(|| async {
            let cp = ControlPlane::shared().await.unwrap();
            let dir = examples_dir();
            cp.kubectl(["apply", "-f", dir.to_str().unwrap()])
                .await
                .unwrap()
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_apply_cleanly() {
    assert!(
        !yaml_files(&examples_dir()).unwrap().is_empty(),
        "examples/ holds no manifests"
    );
    let out = apply_examples().await;
    assert!(
        out.status.success(),
        "kubectl apply -f examples/ failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("wasmcomponent.wasm.airssys.dev/"),
        "{stdout}"
    );
    assert!(stdout.contains("trustsource.wasm.airssys.dev/"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_wasmcomponents_shows_the_printer_columns() {
    let out = apply_examples().await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cp = ControlPlane::shared().await.unwrap();
    let out = cp
        .kubectl(["get", "wasmcomponents", "--all-namespaces"])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    for column in ["TRUST", "APPROVED", "READY", "AGE"] {
        assert!(header.contains(&column), "no {column} column in:\n{table}");
    }
    assert!(table.lines().count() > 1, "no components listed:\n{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_example_is_rejected_by_the_api_server_with_its_message() {
    // The invalid examples live in the namespaces the valid examples create.
    let out = apply_examples().await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cp = ControlPlane::shared().await.unwrap();
    let cases = invalid_examples().unwrap();
    assert!(!cases.is_empty(), "examples/invalid/ holds no manifests");
    let mut failures = Vec::new();
    for case in &cases {
        let out = cp
            .kubectl(["apply", "-f", case.path.to_str().unwrap()])
            .await
            .unwrap();
        let stderr = text(&out.stderr);
        let name = case.path.file_name().unwrap_or_default().to_string_lossy();
        if out.status.success() {
            failures.push(format!("{name}: accepted, expected `{}`", case.expected));
        } else if !stderr.contains(&case.expected) {
            failures.push(format!(
                "{name}: rejected without `{}`:\n{stderr}",
                case.expected
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid examples misbehaved:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crds_are_structural_and_established() {
    let cp = ControlPlane::shared().await.unwrap();
    let files = yaml_files(&repo_root().join("crds/yaml")).unwrap();
    assert!(!files.is_empty(), "crds/yaml/ holds no CRDs");
    let api: Api<CustomResourceDefinition> = Api::all(cp.client().await.unwrap());
    for name in [
        "wasmcomponents.wasm.airssys.dev",
        "trustsources.wasm.airssys.dev",
        "placements.wasm.airssys.dev",
    ] {
        let crd = api.get(name).await.unwrap();
        assert_eq!(
            condition_status(&crd, "Established").as_deref(),
            Some("True"),
            "{name} not established"
        );
        assert_eq!(
            condition_status(&crd, "NonStructuralSchema"),
            None,
            "{name} has a non-structural schema"
        );
    }
    // Only a structural schema is published as OpenAPI, which `kubectl explain` reads.
    let out = cp
        .kubectl(["explain", "wasmcomponents.spec"])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("FIELDS:"),
        "{}",
        text(&out.stdout)
    );
}
