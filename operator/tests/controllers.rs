//! The controllers end to end: the real `airssys-operator run` binary against the real
//! control plane (`tests/support`), with components pushed by real `oras` into a real OCI
//! registry and signed by real `cosign`, and TrustSources applied with real `kubectl`.
//!
//! One operator process serves the whole test binary (it watches every namespace, as in a
//! cluster); each test owns a namespace, a registry, its repositories and uniquely named
//! TrustSources. The operator re-resolves references every 2 s so a re-pushed tag is seen.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

mod common;

use common::{
    add_signature, assert_running, remove_extra_signatures, replace_signature, spawn_operator,
};

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use airssys_crds::{TrustSource, WasmComponent};
use airssys_test_support::{
    ControlPlane, Registry, RegistryAuth, RegistryOptions, Supervised, push_wasm, run_tool,
    wait_for,
};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{DeleteParams, ListParams};

const TIMEOUT: Duration = Duration::from_secs(60);

static OPERATOR: tokio::sync::OnceCell<Mutex<Supervised>> = tokio::sync::OnceCell::const_new();

/// The control plane and the one operator process (started on first use; stopped by the
/// harness's watchdog when the test process exits).
async fn setup() -> (&'static ControlPlane, &'static Mutex<Supervised>) {
    let cp = ControlPlane::shared().await.unwrap();
    let operator = OPERATOR
        .get_or_init(|| async {
            // Only the DevMode test's source selects a namespace for dev mode.
            spawn_operator(cp, &["--dev-mode"], "operator.log")
        })
        .await;
    assert_running(operator);
    (cp, operator)
}

/// GETs `path` from the operator's metrics endpoint (its address is in the start-up log).
fn scrape(operator: &Mutex<Supervised>, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let log = std::fs::read_to_string(operator.lock().unwrap().log_path()).unwrap();
    let addr = log
        .split("\"bound\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no metrics address in the operator log:\n{log}"));
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: operator\r\n\r\n").unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    out
}

/// Runs a harness tool in `dir`; fails the test with its output if it fails.
fn run(dir: &Path, tool: &str, args: &[&str]) -> String {
    run_tool(dir, tool, args).unwrap_or_else(|e| panic!("{e}"))
}

/// Pushes `payload` as a single-layer wasm artifact with oras; returns the manifest digest.
fn push(dir: &Path, reference: &str, payload: &str) -> String {
    let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
    bytes.extend_from_slice(payload.as_bytes());
    push_wasm(dir, reference, &bytes).unwrap_or_else(|e| panic!("{e}"))
}

/// Signs `reference@digest` with the cosign key pair in `keydir`.
fn sign(keydir: &Path, pinned: &str) {
    run(
        keydir,
        "cosign",
        &[
            "sign",
            "--tlog-upload=false",
            "--allow-http-registry",
            "--allow-insecure-registry",
            "--yes",
            "--key",
            "cosign.key",
            pinned,
        ],
    );
}

/// `kubectl apply -f` of `yaml`, as a person or a GitOps tool does.
async fn apply(cp: &ControlPlane, dir: &Path, yaml: &str) {
    let file = dir.join("manifest.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = cp
        .kubectl(["apply", "-f", file.to_str().unwrap()])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl apply failed:\n{yaml}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn delete_source(cp: &ControlPlane, name: &str) {
    let api: Api<TrustSource> = Api::all(cp.client().await.unwrap());
    api.delete(name, &DeleteParams::default()).await.unwrap();
    wait_for_gone(&api, name).await;
}

async fn wait_for_gone(api: &Api<TrustSource>, name: &str) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while api.get_opt(name).await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "TrustSource {name} was not deleted (finalizer not removed?)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn component_yaml(ns: &str, name: &str, reference: &str, env: &[&str]) -> String {
    let env: Vec<String> = env.iter().map(|e| format!("{{ name: {e} }}")).collect();
    format!(
        "apiVersion: wasm.airssys.dev/v1alpha1\nkind: WasmComponent\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  artifact:\n    oci:\n      reference: {reference}\n      insecure: true\n  capabilities:\n    env: [{}]\n",
        env.join(", ")
    )
}

/// A `Trust` source for every repository under `{addr}/{path}/`.
fn registry_source_yaml(name: &str, addr: &str, path: &str) -> String {
    format!(
        "apiVersion: wasm.airssys.dev/v1alpha1\nkind: TrustSource\nmetadata:\n  name: {name}\nspec:\n  decision: Trust\n  registries:\n    - repository: '{addr}/{path}/**'\n  capabilityCeiling:\n    env: [{{ name: LOG_LEVEL }}]\n"
    )
}

fn approval_source_yaml(name: &str, digest: &str, ns: &str, component: &str) -> String {
    format!(
        "apiVersion: wasm.airssys.dev/v1alpha1\nkind: TrustSource\nmetadata:\n  name: {name}\nspec:\n  decision: Trust\n  digests:\n    - digest: {digest}\n      components: [{{ namespace: {ns}, name: {component} }}]\n      capabilities:\n        env: [{{ name: LOG_LEVEL }}]\n      approvedBy: alice@example.com\n      reason: reviewed in PR 42\n"
    )
}

fn condition(c: &WasmComponent, type_: &str) -> Option<(String, String, String)> {
    let v = serde_json::to_value(c).unwrap();
    let conds = v.pointer("/status/conditions")?.as_array()?.clone();
    conds.iter().find(|c| c["type"] == type_).map(|c| {
        (
            c["status"].as_str().unwrap_or_default().to_owned(),
            c["reason"].as_str().unwrap_or_default().to_owned(),
            c["message"].as_str().unwrap_or_default().to_owned(),
        )
    })
}

fn approved_is(c: &WasmComponent, status: &str, reason: &str) -> bool {
    condition(c, "Approved").is_some_and(|(s, r, _)| s == status && r == reason)
}

async fn wait_approved(
    api: &Api<WasmComponent>,
    name: &str,
    status: &str,
    reason: &str,
) -> WasmComponent {
    wait_for(api, name, |c| approved_is(c, status, reason), TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{name}: Approved={status}/{reason} never came: {e}"))
}

/// events.k8s.io/v1 Events about component `name`, as (type, reason), one entry per
/// occurrence: the recorder folds repeats into one Event with a series count.
async fn events_about(cp: &ControlPlane, ns: &str, name: &str) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(cp.client().await.unwrap(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.name.as_deref() == Some(name) && r.kind.as_deref() == Some("WasmComponent")
            })
        })
        .flat_map(|e| {
            let n = e.series.as_ref().map_or(1, |s| s.count).max(1);
            let item = (e.type_.unwrap_or_default(), e.reason.unwrap_or_default());
            std::iter::repeat_n(item, usize::try_from(n).unwrap())
        })
        .collect()
}

/// Waits until an Event of `type_`/`reason` about `name` exists.
async fn wait_event(cp: &ControlPlane, ns: &str, name: &str, type_: &str, reason: &str) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let events = events_about(cp, ns, name).await;
        if events.iter().any(|(t, r)| t == type_ && r == reason) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {type_} Event {reason} about {ns}/{name}; saw {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn status(c: &WasmComponent) -> airssys_crds::WasmComponentStatus {
    c.status.clone().unwrap_or_default()
}

#[tokio::test]
async fn trusted_registry_source_approves_within_its_ceiling_without_a_person() {
    let (cp, op) = setup().await;
    let ns = cp.create_namespace("ctl-trusted").await.unwrap();
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addr = registry.address();
    let reference = format!("{addr}/{ns}/echo:v1");
    let digest = push(dir.path(), &reference, "echo v1");

    let source = format!("{ns}-platform");
    apply(cp, dir.path(), &registry_source_yaml(&source, addr, &ns)).await;
    apply(
        cp,
        dir.path(),
        &component_yaml(&ns, "echo", &reference, &["LOG_LEVEL"]),
    )
    .await;

    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &ns);
    let c = wait_approved(&api, "echo", "True", "TrustSourceMatched").await;
    let s = status(&c);
    assert_eq!(
        s.trust_level.map(|t| t.to_string()).as_deref(),
        Some("Trusted")
    );
    assert_eq!(s.resolved_digest.as_deref(), Some(digest.as_str()));
    assert_eq!(s.approved_digest.as_deref(), Some(digest.as_str()));
    assert_eq!(s.matched_sources, std::slice::from_ref(&source));
    assert_eq!(s.observed_generation, c.metadata.generation);
    let (v, r, _) = condition(&c, "Verified").unwrap();
    assert_eq!((v.as_str(), r.as_str()), ("True", "ArtifactVerified"));
    assert!(
        c.metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f == "wasm.airssys.dev/cleanup")),
        "the component carries the operator's finalizer"
    );
    // The Event carries the condition's own reason.
    wait_event(cp, &ns, "echo", "Normal", "TrustSourceMatched").await;

    // The placement controller's condition (`Scheduled`: no agent runs in this cluster)
    // survives the component controller's status writes: each applies only the fields it owns.
    wait_for(
        &api,
        "echo",
        |c| condition(c, "Scheduled").is_some_and(|(_, r, _)| r == "Unschedulable"),
        TIMEOUT,
    )
    .await
    .unwrap();
    apply(
        cp,
        dir.path(),
        &component_yaml(&ns, "echo", &reference, &[]),
    )
    .await;
    let c = wait_for(
        &api,
        "echo",
        |c| c.metadata.generation == Some(2) && status(c).observed_generation == Some(2),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert!(approved_is(&c, "True", "TrustSourceMatched"), "{c:?}");
    assert_eq!(
        condition(&c, "Scheduled").map(|(s, r, _)| (s, r)),
        Some(("False".to_owned(), "Unschedulable".to_owned())),
        "{c:?}"
    );

    // The source reports that it is in use and how many components it decides for.
    let sources: Api<TrustSource> = Api::all(cp.client().await.unwrap());
    wait_for(
        &sources,
        &source,
        |s| {
            let st = s.status.clone().unwrap_or_default();
            airssys_test_support::condition_status(s, "Accepted").as_deref() == Some("True")
                && st.components == 1
                && st.observed_generation == s.metadata.generation
        },
        TIMEOUT,
    )
    .await
    .unwrap();

    // Asking for more than the ceiling: not approved automatically.
    apply(
        cp,
        dir.path(),
        &component_yaml(&ns, "greedy", &reference, &["LOG_LEVEL", "AWS_SECRET"]),
    )
    .await;
    let g = wait_approved(&api, "greedy", "False", "RequestExceedsCeiling").await;
    assert_eq!(status(&g).approved_digest, None);
    wait_event(cp, &ns, "greedy", "Warning", "RequestExceedsCeiling").await;

    // The decisions are counted on the metrics endpoint.
    let page = scrape(op, "/metrics");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    for reason in ["TrustSourceMatched", "RequestExceedsCeiling"] {
        assert!(
            page.contains(&format!(
                "airssys_operator_decisions_total{{reason=\"{reason}\"}}"
            )),
            "{page}"
        );
    }
    assert!(
        page.contains("airssys_operator_reconciles_total{controller=\"wasmcomponent\"}"),
        "{page}"
    );
    assert!(scrape(op, "/healthz").ends_with("ok\n"));

    delete_source(cp, &source).await;
    drop(registry);
}

#[tokio::test]
async fn unknown_source_waits_for_a_gitops_approval() {
    let (cp, _op) = setup().await;
    let ns = cp.create_namespace("ctl-pending").await.unwrap();
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("{}/{ns}/kv:v1", registry.address());
    let digest = push(dir.path(), &reference, "kv v1");
    apply(
        cp,
        dir.path(),
        &component_yaml(&ns, "kv", &reference, &["LOG_LEVEL"]),
    )
    .await;

    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &ns);
    let c = wait_approved(&api, "kv", "False", "PendingApproval").await;
    let s = status(&c);
    assert_eq!(
        s.trust_level.map(|t| t.to_string()).as_deref(),
        Some("Unknown")
    );
    assert_eq!(s.resolved_digest.as_deref(), Some(digest.as_str()));
    assert_eq!(s.approved_digest, None, "nothing approved without a person");
    let (_, _, msg) = condition(&c, "Approved").unwrap();
    assert!(msg.contains("kubectl wasm approve"), "{msg}");

    // The approver's reviewed commit lands: a digest entry naming the component.
    let source = format!("{ns}-approvals");
    apply(
        cp,
        dir.path(),
        &approval_source_yaml(&source, &digest, &ns, "kv"),
    )
    .await;
    let c = wait_approved(&api, "kv", "True", "ManuallyApproved").await;
    let s = status(&c);
    assert_eq!(s.approved_digest.as_deref(), Some(digest.as_str()));
    assert_eq!(
        s.trust_level.map(|t| t.to_string()).as_deref(),
        Some("Trusted")
    );
    assert_eq!(s.matched_sources, std::slice::from_ref(&source));
    wait_event(cp, &ns, "kv", "Normal", "ManuallyApproved").await;

    // Deleting the component passes the operator's finalizer (the index forgets it).
    api.delete("kv", &DeleteParams::default()).await.unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while api.get_opt("kv").await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "component kept by its finalizer"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    delete_source(cp, &source).await;
    drop(registry);
}

#[tokio::test]
async fn an_approval_binds_to_the_digest_and_the_capability_set() {
    let (cp, _op) = setup().await;
    let ns = cp.create_namespace("ctl-binding").await.unwrap();
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("{}/{ns}/report:v1", registry.address());
    let digest = push(dir.path(), &reference, "report v1");
    let source = format!("{ns}-approvals");
    apply(
        cp,
        dir.path(),
        &approval_source_yaml(&source, &digest, &ns, "report"),
    )
    .await;
    let component = |env: &[&str]| component_yaml(&ns, "report", &reference, env);
    apply(cp, dir.path(), &component(&["LOG_LEVEL"])).await;
    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &ns);
    wait_approved(&api, "report", "True", "ManuallyApproved").await;

    // Narrower: still approved.
    apply(cp, dir.path(), &component(&[])).await;
    let c = wait_for(
        &api,
        "report",
        |c| {
            status(c).observed_generation == c.metadata.generation
                && c.metadata.generation > Some(1)
        },
        TIMEOUT,
    )
    .await
    .unwrap();
    assert!(approved_is(&c, "True", "ManuallyApproved"), "{c:?}");

    // Wider: back to pending, approval revoked.
    apply(cp, dir.path(), &component(&["LOG_LEVEL", "HOME"])).await;
    let c = wait_approved(&api, "report", "False", "PendingApproval").await;
    assert_eq!(status(&c).approved_digest, None);
    wait_event(cp, &ns, "report", "Warning", "ApprovalRevoked").await;

    // Back within the approved set: approved again.
    apply(cp, dir.path(), &component(&["LOG_LEVEL"])).await;
    wait_approved(&api, "report", "True", "ManuallyApproved").await;

    // The tag moves to new bytes: a new digest the approval does not cover.
    let moved = push(dir.path(), &reference, "report v2");
    assert_ne!(moved, digest);
    let c = wait_approved(&api, "report", "False", "PendingApproval").await;
    let s = status(&c);
    assert_eq!(s.resolved_digest.as_deref(), Some(moved.as_str()));
    assert_eq!(s.approved_digest, None);

    delete_source(cp, &source).await;
    drop(registry);
}

#[tokio::test]
async fn deny_wins_and_deleting_a_source_revokes() {
    let (cp, _op) = setup().await;
    let ns = cp.create_namespace("ctl-revoke").await.unwrap();
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addr = registry.address();
    let reference = format!("{addr}/{ns}/echo:v1");
    let digest = push(dir.path(), &reference, "echo v1");
    let trust = format!("{ns}-platform");
    let deny = format!("{ns}-deny");
    apply(cp, dir.path(), &registry_source_yaml(&trust, addr, &ns)).await;
    apply(
        cp,
        dir.path(),
        &component_yaml(&ns, "echo", &reference, &["LOG_LEVEL"]),
    )
    .await;
    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &ns);
    wait_approved(&api, "echo", "True", "TrustSourceMatched").await;

    apply(
        cp,
        dir.path(),
        &format!(
            "apiVersion: wasm.airssys.dev/v1alpha1\nkind: TrustSource\nmetadata:\n  name: {deny}\nspec:\n  decision: Deny\n  digests:\n    - digest: {digest}\n      reason: CVE-2026-0001\n"
        ),
    )
    .await;
    let c = wait_approved(&api, "echo", "False", "Denied").await;
    let s = status(&c);
    assert_eq!(
        s.trust_level.map(|t| t.to_string()).as_deref(),
        Some("Denied")
    );
    assert_eq!(
        s.approved_digest, None,
        "approvedDigest cleared on revocation"
    );
    assert_eq!(s.matched_sources, std::slice::from_ref(&deny));
    wait_event(cp, &ns, "echo", "Warning", "Denied").await;
    wait_event(cp, &ns, "echo", "Warning", "ApprovalRevoked").await;

    // Lifting the denial restores the automatic approval.
    delete_source(cp, &deny).await;
    let c = wait_approved(&api, "echo", "True", "TrustSourceMatched").await;
    assert_eq!(status(&c).approved_digest.as_deref(), Some(digest.as_str()));

    // Deleting the only trusting source revokes.
    let revoked_before = events_about(cp, &ns, "echo")
        .await
        .iter()
        .filter(|(_, r)| r == "ApprovalRevoked")
        .count();
    delete_source(cp, &trust).await;
    let c = wait_approved(&api, "echo", "False", "PendingApproval").await;
    assert_eq!(status(&c).approved_digest, None);
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let revoked = events_about(cp, &ns, "echo")
            .await
            .iter()
            .filter(|(t, r)| t == "Warning" && r == "ApprovalRevoked")
            .count();
        if revoked > revoked_before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no second revocation Event"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(registry);
}

#[tokio::test]
async fn failures_have_their_own_condition_and_approve_nothing() {
    let (cp, op) = setup().await;
    let ns = cp.create_namespace("ctl-failures").await.unwrap();
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = registry.address().to_owned();
    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &ns);

    // A signature by a key no source trusts does not count.
    std::fs::create_dir(d.join("trusted")).unwrap();
    std::fs::create_dir(d.join("other")).unwrap();
    run(&d.join("trusted"), "cosign", &["generate-key-pair"]);
    run(&d.join("other"), "cosign", &["generate-key-pair"]);
    let trusted_pub = std::fs::read_to_string(d.join("trusted/cosign.pub")).unwrap();
    let reference = format!("{addr}/{ns}/signed:v1");
    let digest = push(d, &reference, "signed v1");
    let pinned = format!("{addr}/{ns}/signed@{digest}");
    sign(&d.join("other"), &pinned);
    let keyed = format!("{ns}-signers");
    let key_block: String = trusted_pub
        .lines()
        .map(|l| format!("        {l}\n"))
        .collect();
    apply(
        cp,
        d,
        &format!(
            "apiVersion: wasm.airssys.dev/v1alpha1\nkind: TrustSource\nmetadata:\n  name: {keyed}\nspec:\n  decision: Trust\n  keys:\n    - name: release\n      publicKey: |\n{key_block}  capabilityCeiling:\n    env: [{{ name: LOG_LEVEL }}]\n"
        ),
    )
    .await;
    apply(
        cp,
        d,
        &component_yaml(&ns, "signed", &reference, &["LOG_LEVEL"]),
    )
    .await;
    let c = wait_approved(&api, "signed", "False", "PendingApproval").await;
    let (v, r, msg) = condition(&c, "Verified").unwrap();
    assert_eq!((v.as_str(), r.as_str()), ("True", "ArtifactVerified"));
    assert!(msg.contains("0 verified signer(s)"), "{msg}");
    assert!(msg.contains("matches no key"), "{msg}");

    // Signed with the trusted key, it is approved on the next check.
    sign(&d.join("trusted"), &pinned);
    let c = wait_approved(&api, "signed", "True", "TrustSourceMatched").await;
    assert_eq!(status(&c).matched_sources, std::slice::from_ref(&keyed));

    // Bytes that do not match the pinned digest: VerificationFailed, nothing approved.
    let wrong = format!("sha256:{}", "0".repeat(64));
    apply(
        cp,
        d,
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: tampered\n  namespace: {ns}\nbinaryData:\n  component.wasm: AGFzbQ0AAQA=\n---\napiVersion: wasm.airssys.dev/v1alpha1\nkind: WasmComponent\nmetadata:\n  name: tampered\n  namespace: {ns}\nspec:\n  artifact:\n    configMap: {{ name: tampered, key: component.wasm, digest: '{wrong}' }}\n"
        ),
    )
    .await;
    let c = wait_approved(&api, "tampered", "False", "VerificationFailed").await;
    let (v, r, msg) = condition(&c, "Verified").unwrap();
    assert_eq!((v.as_str(), r.as_str()), ("False", "VerificationFailed"));
    assert!(msg.contains("tampered"), "{msg}");
    assert_eq!(status(&c).approved_digest, None);
    wait_event(cp, &ns, "tampered", "Warning", "VerificationFailed").await;

    // A registry nobody answers on: retrying, never a verdict.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    apply(
        cp,
        d,
        &component_yaml(
            &ns,
            "unreachable",
            &format!("127.0.0.1:{port}/{ns}/gone:v1"),
            &[],
        ),
    )
    .await;
    let c = wait_for(
        &api,
        "unreachable",
        |c| condition(c, "Verified").is_some_and(|(_, r, _)| r == "ArtifactUnreachable"),
        TIMEOUT,
    )
    .await
    .unwrap();
    let (v, _, msg) = condition(&c, "Verified").unwrap();
    assert_eq!(v, "Unknown");
    assert!(msg.contains("retrying"), "{msg}");
    // The root cause and what to do, not the client's "error sending request".
    assert!(
        msg.contains("connection refused") && msg.contains("check that the server runs"),
        "{msg}"
    );
    assert!(!msg.contains("error sending request"), "{msg}");
    let (a, _, _) = condition(&c, "Approved").unwrap();
    assert_ne!(a, "True", "nothing approved while unreachable");
    assert_eq!(status(&c).approved_digest, None);

    // The registry goes down under an approved component: the approval stays.
    drop(registry);
    let c = wait_for(
        &api,
        "signed",
        |c| condition(c, "Verified").is_some_and(|(_, r, _)| r == "ArtifactUnreachable"),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert!(approved_is(&c, "True", "TrustSourceMatched"), "{c:?}");
    assert_eq!(status(&c).approved_digest.as_deref(), Some(digest.as_str()));
    let (_, _, msg) = condition(&c, "Verified").unwrap();
    assert!(msg.contains("holds meanwhile"), "{msg}");
    wait_event(cp, &ns, "signed", "Warning", "ArtifactUnreachable").await;

    // A wider request while the registry is down: the (digest, capability set) binding
    // needs no registry, so the approval lapses at once, on the digest last resolved.
    apply(
        cp,
        d,
        &component_yaml(&ns, "signed", &reference, &["LOG_LEVEL", "SECRET"]),
    )
    .await;
    let c = wait_for(
        &api,
        "signed",
        |c| status(c).observed_generation == Some(2),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert!(approved_is(&c, "False", "RequestExceedsCeiling"), "{c:?}");
    assert_eq!(status(&c).approved_digest, None);
    let (v, r, _) = condition(&c, "Verified").unwrap();
    assert_eq!((v.as_str(), r.as_str()), ("Unknown", "ArtifactUnreachable"));
    wait_event(cp, &ns, "signed", "Warning", "ApprovalRevoked").await;

    // Narrowed again, still unreachable: approved again on the same digest.
    apply(
        cp,
        d,
        &component_yaml(&ns, "signed", &reference, &["LOG_LEVEL"]),
    )
    .await;
    let c = wait_approved(&api, "signed", "True", "TrustSourceMatched").await;
    assert_eq!(status(&c).approved_digest.as_deref(), Some(digest.as_str()));
    assert_eq!(status(&c).observed_generation, Some(3));

    assert_running(op);
    delete_source(cp, &keyed).await;
}

#[tokio::test]
async fn dev_mode_runs_only_in_selected_namespaces_with_a_warning() {
    let (cp, _op) = setup().await;
    let ns = cp.create_namespace("ctl-dev").await.unwrap();
    let other = cp.create_namespace("ctl-notdev").await.unwrap();
    let out = cp
        .kubectl([
            "label",
            "namespace",
            &ns,
            &format!("airssys.dev/dev-lane={ns}"),
        ])
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addr = registry.address();
    let reference = format!("{addr}/{ns}/scratch:latest");
    let digest = push(dir.path(), &reference, "scratch");
    let source = format!("{ns}-dev");
    apply(
        cp,
        dir.path(),
        &format!(
            "apiVersion: wasm.airssys.dev/v1alpha1\nkind: TrustSource\nmetadata:\n  name: {source}\nspec:\n  decision: DevMode\n  registries:\n    - repository: '{addr}/{ns}/**'\n  namespaceSelector:\n    matchLabels: {{ airssys.dev/dev-lane: {ns} }}\n  capabilityCeiling:\n    env: [{{ name: LOG_LEVEL }}]\n"
        ),
    )
    .await;
    apply(
        cp,
        dir.path(),
        &component_yaml(&ns, "scratch", &reference, &["LOG_LEVEL"]),
    )
    .await;
    apply(
        cp,
        dir.path(),
        &component_yaml(&other, "scratch", &reference, &["LOG_LEVEL"]),
    )
    .await;

    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &ns);
    let c = wait_approved(&api, "scratch", "True", "DevModeBypass").await;
    let s = status(&c);
    assert_eq!(
        s.trust_level.map(|t| t.to_string()).as_deref(),
        Some("DevMode")
    );
    assert_eq!(s.approved_digest.as_deref(), Some(digest.as_str()));
    wait_event(cp, &ns, "scratch", "Warning", "DevModeBypass").await;

    // The same artifact in a namespace the source does not select is not approved.
    let other_api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &other);
    let c = wait_approved(&other_api, "scratch", "False", "PendingApproval").await;
    assert_eq!(status(&c).approved_digest, None);

    delete_source(cp, &source).await;
    drop(registry);
}

#[tokio::test]
async fn an_invalid_trust_source_is_reported_and_ignored() {
    let (cp, _op) = setup().await;
    let ns = cp.create_namespace("ctl-invalid").await.unwrap();
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addr = registry.address();
    let reference = format!("{addr}/{ns}/echo:v1");
    push(dir.path(), &reference, "echo v1");
    // Passes the schema (a PEM header) but is no key: the operator rejects the whole source.
    let source = format!("{ns}-broken");
    apply(
        cp,
        dir.path(),
        &format!(
            "apiVersion: wasm.airssys.dev/v1alpha1\nkind: TrustSource\nmetadata:\n  name: {source}\nspec:\n  decision: Trust\n  registries:\n    - repository: '{addr}/{ns}/**'\n  keys:\n    - name: release\n      publicKey: |\n        -----BEGIN PUBLIC KEY-----\n        bm90IGEga2V5\n        -----END PUBLIC KEY-----\n  capabilityCeiling:\n    env: [{{ name: LOG_LEVEL }}]\n"
        ),
    )
    .await;
    let sources: Api<TrustSource> = Api::all(cp.client().await.unwrap());
    let s = wait_for(
        &sources,
        &source,
        |s| airssys_test_support::condition_status(s, "Accepted").as_deref() == Some("False"),
        TIMEOUT,
    )
    .await
    .unwrap();
    let accepted = s
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == airssys_crds::ConditionType::Accepted)
        .unwrap();
    assert_eq!(accepted.reason, "InvalidSource");
    assert!(accepted.message.contains("ignored"), "{}", accepted.message);

    // Its registry pattern would match, but an ignored source approves nothing.
    apply(
        cp,
        dir.path(),
        &component_yaml(&ns, "echo", &reference, &["LOG_LEVEL"]),
    )
    .await;
    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &ns);
    let c = wait_approved(&api, "echo", "False", "PendingApproval").await;
    assert!(status(&c).matched_sources.is_empty());

    // The rejection is an Event on the source (cluster-scoped: in "default").
    let events: Api<Event> = Api::namespaced(cp.client().await.unwrap(), "default");
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let found = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("InvalidSource")
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(source.as_str())
            });
        if found {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no InvalidSource Event"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    delete_source(cp, &source).await;
    drop(registry);
}

#[tokio::test]
async fn sigterm_stops_the_operator_gracefully() {
    let (cp, _op) = setup().await;
    // A second operator that may only read, so it cannot disturb the shared one's work.
    let user = "airssys-readonly-operator";
    let dir = tempfile::tempdir().unwrap();
    apply(
        cp,
        dir.path(),
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {user}\nrules:\n  - apiGroups: [wasm.airssys.dev]\n    resources: [trustsources, wasmcomponents]\n    verbs: [get, list, watch]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {user}\nroleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {user} }}\nsubjects:\n  - {{ apiGroup: rbac.authorization.k8s.io, kind: User, name: {user} }}\n"
        ),
    )
    .await;
    let kubeconfig = cp.user_kubeconfig(user, None).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_airssys-operator"));
    cmd.arg("run").env("KUBECONFIG", &kubeconfig);
    let log = dir.path().join("operator.log");
    let mut op = Supervised::spawn("readonly-operator", cmd, &log).unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("trust index loaded")
    {
        op.check_running().unwrap();
        assert!(
            std::time::Instant::now() < deadline,
            "operator did not start:\n{}",
            op.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // stop() sends SIGTERM and only escalates to SIGKILL after its grace period.
    op.stop();
    let status = op.exited().expect("stopped");
    assert!(
        status.success(),
        "exit {status} after SIGTERM:\n{}",
        op.log_tail(40)
    );
    assert!(
        op.log_tail(5).contains("controllers stopped"),
        "{}",
        op.log_tail(20)
    );
}

/// A component pulled with the given pull secrets.
fn private_component_yaml(ns: &str, name: &str, reference: &str, secrets: &[&str]) -> String {
    let secrets: Vec<String> = secrets.iter().map(|s| format!("{{ name: {s} }}")).collect();
    format!(
        "apiVersion: wasm.airssys.dev/v1alpha1\nkind: WasmComponent\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  artifact:\n    oci:\n      reference: {reference}\n      insecure: true\n      pullSecrets: [{}]\n  capabilities:\n    env: [{{ name: LOG_LEVEL }}]\n",
        secrets.join(", ")
    )
}

/// A `kubernetes.io/dockerconfigjson` Secret, as `kubectl create secret docker-registry` makes.
fn pull_secret_yaml(ns: &str, name: &str, docker_config: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{docker_config}'\n"
    )
}

/// Waits for `Verified` to have `status`/`reason`; returns its message.
async fn wait_verified(api: &Api<WasmComponent>, name: &str, want: &str, reason: &str) -> String {
    let c = wait_for(
        api,
        name,
        |c| condition(c, "Verified").is_some_and(|(s, r, _)| s == want && r == reason),
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: Verified={want}/{reason} never came: {e}"));
    assert_ne!(
        condition(&c, "Approved").map(|(s, _, _)| s).as_deref(),
        Some("True"),
        "{name}: approved although {reason}"
    );
    assert_eq!(status(&c).approved_digest, None, "{name}");
    condition(&c, "Verified").unwrap().2
}

#[tokio::test]
async fn pull_secrets_open_private_registries_only_in_their_own_namespace() {
    let (cp, op) = setup().await;
    let ns = cp.create_namespace("ctl-private").await.unwrap();
    let other = cp.create_namespace("ctl-borrower").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let robot = |auth: fn(String, String) -> RegistryAuth| RegistryOptions {
        auth: Some(auth("robot".into(), "s3cret".into())),
    };
    // Token auth as Docker Hub, GHCR and Harbor do it.
    let registry = Registry::start_with(robot(|user, password| RegistryAuth::Token {
        user,
        password,
    }))
    .await
    .unwrap();
    let addr = registry.address().to_owned();
    registry.login(d).unwrap();
    let reference = format!("{addr}/{ns}/echo:v1");
    let digest = push(d, &reference, "private echo");
    let source = format!("{ns}-private");
    apply(cp, d, &registry_source_yaml(&source, &addr, &ns)).await;
    apply(
        cp,
        d,
        &format!(
            "{}---\n{}",
            pull_secret_yaml(&ns, "pull", &registry.docker_config("robot", "s3cret")),
            pull_secret_yaml(
                &ns,
                "stale",
                &registry.docker_config("robot", "old-password")
            ),
        ),
    )
    .await;
    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &ns);

    // With the Secret: resolved, verified and approved by the registry's source.
    apply(
        cp,
        d,
        &private_component_yaml(&ns, "echo", &reference, &["pull"]),
    )
    .await;
    let c = wait_approved(&api, "echo", "True", "TrustSourceMatched").await;
    assert_eq!(status(&c).approved_digest.as_deref(), Some(digest.as_str()));
    let (v, r, _) = condition(&c, "Verified").unwrap();
    assert_eq!((v.as_str(), r.as_str()), ("True", "ArtifactVerified"));

    // Without one: the registry refuses, and the message says what to do.
    apply(
        cp,
        d,
        &private_component_yaml(&ns, "anonymous", &reference, &[]),
    )
    .await;
    let msg = wait_verified(&api, "anonymous", "False", "ArtifactUnavailable").await;
    assert!(
        msg.contains("refused anonymous access") && msg.contains("pullSecrets"),
        "{msg}"
    );

    // A wrong password: refused too, and the message names the user, never the password.
    apply(
        cp,
        d,
        &private_component_yaml(&ns, "stale", &reference, &["stale"]),
    )
    .await;
    let msg = wait_verified(&api, "stale", "False", "ArtifactUnavailable").await;
    assert!(
        msg.contains("\"robot\"") && msg.contains("Fix the user name and password"),
        "{msg}"
    );
    assert!(!msg.contains("old-password"), "{msg}");

    // Another namespace cannot use this namespace's Secret, even by name...
    let borrowed: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &other);
    apply(
        cp,
        d,
        &private_component_yaml(&other, "borrower", &reference, &["pull"]),
    )
    .await;
    let msg = wait_verified(&borrowed, "borrower", "False", "ArtifactUnavailable").await;
    assert!(
        msg.contains("pull secret pull in namespace")
            && msg.contains(&other)
            && msg.contains("not found")
            && msg.contains("create it there"),
        "{msg}"
    );
    // One line, not the API status's debug dump.
    assert!(
        !msg.contains("Status {") && !msg.contains("Some(") && !msg.contains('\n'),
        "{msg}"
    );
    // ...and works once it has its own.
    apply(
        cp,
        d,
        &pull_secret_yaml(&other, "pull", &registry.docker_config("robot", "s3cret")),
    )
    .await;
    wait_approved(&borrowed, "borrower", "True", "TrustSourceMatched").await;

    // HTTP Basic on every request (distribution's htpasswd mode) works the same way.
    let basic = Registry::start_with(robot(|user, password| RegistryAuth::Basic {
        user,
        password,
    }))
    .await
    .unwrap();
    let basic_dir = tempfile::tempdir().unwrap();
    basic.login(basic_dir.path()).unwrap();
    let basic_ref = format!("{}/{ns}/basic:v1", basic.address());
    let basic_digest = push(basic_dir.path(), &basic_ref, "basic echo");
    let basic_source = format!("{ns}-basic");
    apply(
        cp,
        d,
        &format!(
            "{}---\n{}",
            registry_source_yaml(&basic_source, basic.address(), &ns),
            pull_secret_yaml(&ns, "basic", &basic.docker_config("robot", "s3cret")),
        ),
    )
    .await;
    apply(
        cp,
        d,
        &private_component_yaml(&ns, "basic", &basic_ref, &["basic"]),
    )
    .await;
    let c = wait_approved(&api, "basic", "True", "TrustSourceMatched").await;
    assert_eq!(
        status(&c).approved_digest.as_deref(),
        Some(basic_digest.as_str())
    );
    apply(
        cp,
        d,
        &private_component_yaml(&ns, "basic-anonymous", &basic_ref, &[]),
    )
    .await;
    let msg = wait_verified(&api, "basic-anonymous", "False", "ArtifactUnavailable").await;
    assert!(msg.contains("refused anonymous access"), "{msg}");

    assert_running(op);
    delete_source(cp, &source).await;
    delete_source(cp, &basic_source).await;
}

#[tokio::test]
async fn unverifiable_signatures_are_ignored_reported_and_count_for_nothing() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (cp, op) = setup().await;
    let ns = cp.create_namespace("ctl-tamper").await.unwrap();
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = registry.address().to_owned();
    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &ns);

    // A source that trusts only what its key signed; signed, so approved.
    run(d, "cosign", &["generate-key-pair"]);
    let key_block: String = std::fs::read_to_string(d.join("cosign.pub"))
        .unwrap()
        .lines()
        .map(|l| format!("        {l}\n"))
        .collect();
    let keyed = format!("{ns}-signers");
    apply(
        cp,
        d,
        &format!(
            "apiVersion: wasm.airssys.dev/v1alpha1\nkind: TrustSource\nmetadata:\n  name: {keyed}\nspec:\n  decision: Trust\n  keys:\n    - name: release\n      publicKey: |\n{key_block}  capabilityCeiling:\n    env: [{{ name: LOG_LEVEL }}]\n"
        ),
    )
    .await;
    let repository = format!("{addr}/{ns}/sealed");
    let reference = format!("{repository}:v1");
    let digest = push(d, &reference, "sealed v1");
    let parsed = airssys_crds::Digest::parse(&digest).unwrap();
    sign(d, &format!("{repository}@{digest}"));
    apply(
        cp,
        d,
        &component_yaml(&ns, "sealed", &reference, &["LOG_LEVEL"]),
    )
    .await;
    wait_approved(&api, "sealed", "True", "TrustSourceMatched").await;

    // A garbage signature next to the good one: ignored (cosign's rule), still approved,
    // reported in the condition and by a Warning Event.
    add_signature(d, &repository, &parsed, &b64.encode([0x5a_u8; 70]));
    let c = wait_for(
        &api,
        "sealed",
        |c| condition(c, "Verified").is_some_and(|(_, _, m)| m.contains("Ignored 1 signature")),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert!(approved_is(&c, "True", "TrustSourceMatched"), "{c:?}");
    let (v, _, msg) = condition(&c, "Verified").unwrap();
    assert_eq!(v, "True");
    assert!(msg.contains("signature does not verify"), "{msg}");
    wait_event(cp, &ns, "sealed", "Warning", "SignatureUnverifiable").await;

    // Garbage where cosign's signature was: nothing verifies, so nothing counts; the source
    // needs a signature and the approval is revoked. Not an integrity failure of the bytes.
    remove_extra_signatures(d, &repository, &parsed);
    let original = replace_signature(d, &repository, &parsed, &b64.encode([0x5a_u8; 70]));
    let c = wait_approved(&api, "sealed", "False", "PendingApproval").await;
    let (v, r, msg) = condition(&c, "Verified").unwrap();
    assert_eq!((v.as_str(), r.as_str()), ("True", "ArtifactVerified"));
    assert!(
        msg.contains("signature does not verify") && msg.contains(&digest),
        "{msg}"
    );
    assert_eq!(status(&c).approved_digest, None);
    assert_eq!(
        status(&c).resolved_digest.as_deref(),
        Some(digest.as_str()),
        "the artifact itself resolved"
    );
    wait_event(cp, &ns, "sealed", "Warning", "ApprovalRevoked").await;

    // The real signature back: approved again.
    replace_signature(d, &repository, &parsed, &original);
    wait_approved(&api, "sealed", "True", "TrustSourceMatched").await;

    // One flipped bit: a well-formed signature no key verifies, indistinguishable from a
    // stranger's, so it just does not count and the source (which needs a signature) waits.
    let mut flipped = b64.decode(&original).unwrap();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    replace_signature(d, &repository, &parsed, &b64.encode(&flipped));
    let c = wait_approved(&api, "sealed", "False", "PendingApproval").await;
    let (v, _, msg) = condition(&c, "Verified").unwrap();
    assert_eq!(v, "True");
    assert!(msg.contains("matches no key"), "{msg}");
    assert_eq!(status(&c).approved_digest, None);

    replace_signature(d, &repository, &parsed, &original);
    wait_approved(&api, "sealed", "True", "TrustSourceMatched").await;

    // The signature payload changes at rest on the registry's disk, which keeps serving it
    // under its old digest: the operator re-fetches signatures on every check, finds that one
    // signature unverifiable and ignores it; with no other signature the approval lapses.
    let tag = format!("{repository}:sha256-{}.sig", parsed.hex());
    let sig_manifest: serde_json::Value = serde_json::from_str(&run(
        d,
        "oras",
        &["manifest", "fetch", "--plain-http", &tag],
    ))
    .unwrap();
    let payload_digest = sig_manifest["layers"][0]["digest"].as_str().unwrap();
    let payload = std::fs::read(registry.blob_path(payload_digest).unwrap()).unwrap();
    let forged = String::from_utf8(payload).unwrap().replace(
        "cosign container image signature",
        "cosign container image signaturE",
    );
    registry
        .tamper_blob(payload_digest, forged.as_bytes())
        .unwrap();
    let c = wait_approved(&api, "sealed", "False", "PendingApproval").await;
    let (v, _, msg) = condition(&c, "Verified").unwrap();
    assert_eq!(v, "True");
    assert!(
        msg.contains("tampered") && msg.contains(payload_digest),
        "{msg}"
    );
    assert_eq!(status(&c).approved_digest, None);

    // A new generation re-resolves too, with the same verdict; the operator keeps running.
    apply(cp, d, &component_yaml(&ns, "sealed", &reference, &[])).await;
    let c = wait_for(
        &api,
        "sealed",
        |c| c.metadata.generation == Some(2) && status(c).observed_generation == Some(2),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert!(approved_is(&c, "False", "PendingApproval"), "{c:?}");
    assert_running(op);
    delete_source(cp, &keyed).await;
    drop(registry);
}

#[tokio::test]
async fn a_component_layer_changed_at_rest_is_refused_on_the_next_evaluation() {
    let (cp, op) = setup().await;
    let ns = cp.create_namespace("ctl-at-rest").await.unwrap();
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = registry.address().to_owned();
    let reference = format!("{addr}/{ns}/store:v1");
    let digest = push(d, &reference, "store v1");
    let source = format!("{ns}-platform");
    apply(cp, d, &registry_source_yaml(&source, &addr, &ns)).await;
    apply(
        cp,
        d,
        &component_yaml(&ns, "store", &reference, &["LOG_LEVEL"]),
    )
    .await;
    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &ns);
    wait_approved(&api, "store", "True", "TrustSourceMatched").await;

    // The wasm layer's bytes change on the registry's disk (same length); the registry keeps
    // serving them under the digest the manifest names.
    let manifest: serde_json::Value = serde_json::from_str(&run(
        d,
        "oras",
        &["manifest", "fetch", "--plain-http", &reference],
    ))
    .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let original = std::fs::read(registry.blob_path(&layer).unwrap()).unwrap();
    let mut evil = original.clone();
    let last = evil.len() - 1;
    evil[last] ^= 0x01;
    registry.tamper_blob(&layer, &evil).unwrap();

    // A new generation is evaluated afresh, bytes included: verification fails, revoked.
    apply(cp, d, &component_yaml(&ns, "store", &reference, &[])).await;
    let c = wait_approved(&api, "store", "False", "VerificationFailed").await;
    let (v, r, msg) = condition(&c, "Verified").unwrap();
    assert_eq!((v.as_str(), r.as_str()), ("False", "VerificationFailed"));
    assert!(
        msg.contains("component layer") && msg.contains(&layer) && msg.contains("tampered"),
        "{msg}"
    );
    assert_eq!(status(&c).approved_digest, None);
    wait_event(cp, &ns, "store", "Warning", "ApprovalRevoked").await;

    // A new component of the same artifact is not approved either.
    apply(
        cp,
        d,
        &component_yaml(&ns, "newcomer", &reference, &["LOG_LEVEL"]),
    )
    .await;
    let c = wait_approved(&api, "newcomer", "False", "VerificationFailed").await;
    assert_eq!(status(&c).approved_digest, None);

    // The right bytes back: both verify and are approved again on the next check.
    registry.tamper_blob(&layer, &original).unwrap();
    let c = wait_approved(&api, "store", "True", "TrustSourceMatched").await;
    assert_eq!(status(&c).approved_digest.as_deref(), Some(digest.as_str()));
    wait_approved(&api, "newcomer", "True", "TrustSourceMatched").await;

    assert_running(op);
    delete_source(cp, &source).await;
    drop(registry);
}
