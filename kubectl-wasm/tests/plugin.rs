//! `kubectl wasm` end to end: the real plugin binary (run directly and through the real
//! `kubectl` plugin lookup on PATH) against the real control plane, with the real operator
//! controllers deciding (in this test process, on their own runtime: a binary of another
//! package cannot be built from a test), components pushed by real `oras` into a real OCI
//! registry, and the GitOps path taken by applying the plugin's `--dry-run -o yaml` with real
//! `kubectl apply`.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use airssys_crds::trust_source::Decision;
use airssys_crds::{TrustSource, WasmComponent};
use airssys_operator::artifact::ResolverOptions;
use airssys_operator::metrics::Metrics;
use airssys_operator::{Config, Resolver};
use airssys_test_support::{ControlPlane, Registry, client_from, push_wasm, tool_path, wait_for};
use kube::Api;

const TIMEOUT: Duration = Duration::from_secs(60);
const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-wasm");

/// Why the operator stopped, if it did (every wait would then time out).
static OPERATOR_STOPPED: OnceLock<String> = OnceLock::new();

/// Starts the operator's controllers once for this test binary, on a thread and runtime of
/// their own so they outlive each test's runtime. Configured as the operator tests run the
/// binary: plain HTTP to loopback registries, a 2 s recheck.
fn start_operator(cp: &'static ControlPlane) {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let kubeconfig = cp.kubeconfig_path().to_owned();
        std::thread::Builder::new()
            .name("operator".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let client = client_from(&kubeconfig).await.unwrap();
                    let resolver = Resolver::new(ResolverOptions::default()).unwrap();
                    let config = Config {
                        insecure_registries: vec!["127.0.0.1".to_owned()],
                        recheck: Duration::from_secs(2),
                        ..Config::default()
                    };
                    let metrics = Arc::new(Metrics::default());
                    let run = airssys_operator::controller::run(client, resolver, config, metrics);
                    let stopped = match run.await {
                        Ok(()) => "the operator's controllers stopped".to_owned(),
                        Err(e) => format!("the operator's controllers failed: {e}"),
                    };
                    let _ = OPERATOR_STOPPED.set(stopped);
                });
            })
            .unwrap();
    });
}

/// The control plane, with the operator deciding.
async fn setup() -> &'static ControlPlane {
    let cp = ControlPlane::shared().await.unwrap();
    start_operator(cp);
    cp
}

/// Pushes `payload` as a single-layer wasm artifact with oras; returns the manifest digest.
fn push(dir: &Path, reference: &str, payload: &str) -> String {
    let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
    bytes.extend_from_slice(payload.as_bytes());
    push_wasm(dir, reference, &bytes).unwrap_or_else(|e| panic!("{e}"))
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

fn component_yaml(ns: &str, name: &str, reference: &str) -> String {
    format!(
        "apiVersion: wasm.airssys.dev/v1alpha1\nkind: WasmComponent\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  artifact:\n    oci:\n      reference: {reference}\n      insecure: true\n  capabilities:\n    env: [{{ name: LOG_LEVEL }}]\n    storage: [{{ bucket: counters, access: [read, write] }}]\n"
    )
}

fn approved(c: &WasmComponent) -> Option<(String, String)> {
    let v = serde_json::to_value(c).unwrap();
    let conds = v.pointer("/status/conditions")?.as_array()?.clone();
    conds.iter().find(|c| c["type"] == "Approved").map(|c| {
        (
            c["status"].as_str().unwrap_or_default().to_owned(),
            c["reason"].as_str().unwrap_or_default().to_owned(),
        )
    })
}

async fn wait_approved(api: &Api<WasmComponent>, name: &str, status: &str, reason: &str) {
    wait_for(
        api,
        name,
        |c| approved(c).is_some_and(|(s, r)| s == status && r == reason),
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| {
        let operator = OPERATOR_STOPPED.get().map_or("running", String::as_str);
        panic!("{name}: Approved={status}/{reason} never came: {e} (operator: {operator})")
    });
}

fn check(what: &str, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs the plugin binary as a user does, with the cluster's kubeconfig.
fn plugin(cp: &ControlPlane, args: &[&str]) -> Output {
    Command::new(PLUGIN)
        .args(args)
        .env("KUBECONFIG", cp.kubeconfig_path())
        .output()
        .unwrap()
}

/// Runs `kubectl wasm ...` with the plugin's directory first on PATH, as users install it.
fn kubectl_wasm(cp: &ControlPlane, args: &[&str]) -> Output {
    let bin_dir = Path::new(PLUGIN).parent().unwrap();
    let mut path = OsString::from(bin_dir);
    if let Some(rest) = std::env::var_os("PATH") {
        path.push(":");
        path.push(rest);
    }
    Command::new(tool_path("kubectl").unwrap())
        .arg("wasm")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", cp.kubeconfig_path())
        .env("KUBECACHEDIR", cp.dir().join("kubectl-cache"))
        .output()
        .unwrap()
}

async fn source_opt(cp: &ControlPlane, name: &str) -> Option<TrustSource> {
    let api: Api<TrustSource> = Api::all(cp.client().await.unwrap());
    api.get_opt(name).await.unwrap()
}

#[tokio::test]
async fn pending_explain_approve_and_gitops_approval() {
    let cp = setup().await;
    let ns = cp.create_namespace("plugin-approve").await.unwrap();
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kv_ref = format!("{}/{ns}/kv:v1", registry.address());
    let kv_digest = push(dir.path(), &kv_ref, "kv v1");
    let report_ref = format!("{}/{ns}/report:v1", registry.address());
    let report_digest = push(dir.path(), &report_ref, "report v1");
    apply(cp, dir.path(), &component_yaml(&ns, "kv", &kv_ref)).await;
    apply(cp, dir.path(), &component_yaml(&ns, "report", &report_ref)).await;
    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &ns);
    wait_approved(&api, "kv", "False", "PendingApproval").await;
    wait_approved(&api, "report", "False", "PendingApproval").await;

    // pending: both, with the short digest and the request in the grammar's words.
    let table = check("pending", &plugin(cp, &["pending", "-n", &ns]));
    let kv_line = table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("kv"))
        .unwrap_or_else(|| panic!("kv missing from:\n{table}"));
    assert!(kv_line.starts_with(&ns), "{table}");
    assert!(
        kv_line.contains(&kv_digest["sha256:".len()..][..12]),
        "{table}"
    );
    assert!(kv_line.contains("PendingApproval"), "{table}");
    assert!(
        kv_line.contains("LOG_LEVEL") && kv_line.contains("counters"),
        "{table}"
    );
    assert!(
        table.lines().next().unwrap().starts_with("NAMESPACE"),
        "{table}"
    );
    // -A lists them too (among other tests' components).
    let all = check("pending -A", &plugin(cp, &["pending", "-A"]));
    assert!(all.contains(&ns), "{all}");

    // The same through kubectl's plugin lookup on PATH.
    let via_kubectl = check(
        "kubectl wasm pending",
        &kubectl_wasm(cp, &["pending", "-n", &ns]),
    );
    assert!(via_kubectl.contains("report"), "{via_kubectl}");

    // explain: the reason and the exact line to run.
    let text = check("explain", &plugin(cp, &["explain", &format!("{ns}/kv")]));
    assert!(text.contains("PendingApproval"), "{text}");
    assert!(
        text.contains(&format!("kubectl wasm approve {ns}/kv")),
        "{text}"
    );
    assert!(text.contains(&kv_digest), "{text}");

    // approve --dry-run -o yaml: a TrustSource bound to the digest and request; nothing changes.
    let source_name = format!("approvals-{ns}");
    let yaml = check(
        "approve --dry-run",
        &plugin(
            cp,
            &[
                "approve",
                &format!("{ns}/kv"),
                "--dry-run",
                "-o",
                "yaml",
                "--approved-by",
                "alice@example.com",
                "--reason",
                "SEC-1 reviewed",
            ],
        ),
    );
    let planned: TrustSource = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(planned.metadata.name.as_deref(), Some(source_name.as_str()));
    assert_eq!(planned.spec.decision, Decision::Trust);
    assert_eq!(planned.spec.digests.len(), 1, "{yaml}");
    let entry = &planned.spec.digests[0];
    assert_eq!(entry.digest, kv_digest);
    assert_eq!(entry.components.len(), 1);
    assert_eq!(
        (
            entry.components[0].namespace.as_str(),
            entry.components[0].name.as_str()
        ),
        (ns.as_str(), "kv")
    );
    let kv = api.get("kv").await.unwrap();
    assert_eq!(entry.capabilities.as_ref(), Some(&kv.spec.capabilities));
    assert_eq!(entry.approved_by.as_deref(), Some("alice@example.com"));
    assert!(
        source_opt(cp, &source_name).await.is_none(),
        "dry run wrote"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        approved(&api.get("kv").await.unwrap()),
        Some(("False".to_owned(), "PendingApproval".to_owned()))
    );

    // approve: the operator approves it manually; approvedBy defaults to the API user.
    let said = check(
        "approve",
        &plugin(cp, &["approve", &format!("{ns}/kv"), "--reason", "SEC-1"]),
    );
    assert!(said.contains(&source_name), "{said}");
    wait_approved(&api, "kv", "True", "ManuallyApproved").await;
    let written = source_opt(cp, &source_name).await.unwrap();
    assert_eq!(written.spec.digests.len(), 1);
    assert!(
        written.spec.digests[0]
            .approved_by
            .as_deref()
            .is_some_and(|who| !who.is_empty()),
        "{written:?}"
    );
    let kv = api.get("kv").await.unwrap();
    assert_eq!(
        kv.status.unwrap().approved_digest.as_deref(),
        Some(kv_digest.as_str())
    );

    // GitOps: the dry run for `report` merges into the live source; kubectl apply of it
    // approves `report` and keeps `kv` approved.
    let yaml = check(
        "approve report --dry-run",
        &kubectl_wasm(
            cp,
            &[
                "approve",
                &format!("{ns}/report"),
                "--dry-run",
                "-o",
                "yaml",
                "--approved-by",
                "bob@example.com",
            ],
        ),
    );
    let planned: TrustSource = serde_yaml::from_str(&yaml).unwrap();
    let digests: Vec<&str> = planned
        .spec
        .digests
        .iter()
        .map(|d| d.digest.as_str())
        .collect();
    assert_eq!(
        digests,
        [kv_digest.as_str(), report_digest.as_str()],
        "{yaml}"
    );
    assert_eq!(
        approved(&api.get("report").await.unwrap()),
        Some(("False".to_owned(), "PendingApproval".to_owned()))
    );
    apply(cp, dir.path(), &yaml).await;
    wait_approved(&api, "report", "True", "ManuallyApproved").await;
    wait_approved(&api, "kv", "True", "ManuallyApproved").await;

    let table = check("pending after", &plugin(cp, &["pending", "-n", &ns]));
    assert!(
        !table.contains("kv") && !table.contains("report"),
        "{table}"
    );
    drop(registry);
}

#[tokio::test]
async fn approve_of_an_unknown_component_says_so() {
    let cp = setup().await;
    let ns = cp.create_namespace("plugin-missing").await.unwrap();
    let out = plugin(
        cp,
        &["approve", &format!("{ns}/ghost"), "--approved-by", "a"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{ns}/ghost not found")), "{err}");
    let out = plugin(cp, &["explain", "no-slash"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NAMESPACE/NAME"),
        "{out:?}"
    );
}

#[tokio::test]
async fn deny_makes_a_pending_component_denied() {
    let cp = setup().await;
    let ns = cp.create_namespace("plugin-deny").await.unwrap();
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("{}/{ns}/shady:v1", registry.address());
    let digest = push(dir.path(), &reference, &format!("shady {ns}"));
    apply(cp, dir.path(), &component_yaml(&ns, "shady", &reference)).await;
    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &ns);
    wait_approved(&api, "shady", "False", "PendingApproval").await;

    let yaml = check(
        "deny --dry-run",
        &plugin(
            cp,
            &["deny", &format!("{ns}/shady"), "--dry-run", "-o", "yaml"],
        ),
    );
    let planned: TrustSource = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(planned.spec.decision, Decision::Deny);
    assert_eq!(planned.spec.digests[0].digest, digest);
    let source_name = format!("denied-{ns}");
    assert!(
        source_opt(cp, &source_name).await.is_none(),
        "dry run wrote"
    );

    check(
        "deny",
        &plugin(
            cp,
            &["deny", &format!("{ns}/shady"), "--reason", "exfiltrates"],
        ),
    );
    wait_approved(&api, "shady", "False", "Denied").await;
    let written = source_opt(cp, &source_name).await.unwrap();
    assert_eq!(written.spec.decision, Decision::Deny);
    assert_eq!(
        written.spec.digests[0].reason.as_deref(),
        Some("exfiltrates")
    );
    assert_eq!(
        written.spec.digests[0].approved_by, None,
        "a denial must not be recorded as an approval"
    );
    let text = check("explain", &plugin(cp, &["explain", &format!("{ns}/shady")]));
    assert!(
        text.contains("Denied") && text.contains(&source_name),
        "{text}"
    );
    assert!(!text.contains("kubectl wasm approve"), "{text}");
    drop(registry);
}

/// Runs the plugin with `kubeconfig` and returns its one-line error.
fn failure(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new(PLUGIN)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "one line, got: {err}");
    for dump in ["Status {", "ErrorResponse", "Some(", "Error {"] {
        assert!(!err.contains(dump), "a Rust debug dump in: {err}");
    }
    err
}

#[tokio::test]
async fn failures_say_the_cause_and_what_to_do_in_one_line() {
    let cp = ControlPlane::shared().await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("no-such-kubeconfig");
    let err = failure(&missing, &["pending"]);
    assert!(
        err.contains(&format!("cannot read the kubeconfig {}", missing.display()))
            && err.contains("KUBECONFIG"),
        "{err}"
    );

    // The admin kubeconfig pointed at a port nothing listens on.
    let admin = std::fs::read_to_string(cp.kubeconfig_path()).unwrap();
    let dead = admin.replace(cp.server(), "https://127.0.0.1:1");
    assert_ne!(admin, dead, "the kubeconfig names {}", cp.server());
    let dead_path = dir.path().join("dead-kubeconfig");
    std::fs::write(&dead_path, dead).unwrap();
    let err = failure(&dead_path, &["pending", "-n", "default"]);
    assert!(
        err.contains("cannot reach the API server at https://127.0.0.1:1")
            && err.contains("refused")
            && err.contains("kubectl cluster-info"),
        "{err}"
    );

    // A user without RBAC on WasmComponents.
    let nobody = cp.user_kubeconfig("plugin-nobody", None).unwrap();
    let err = failure(&nobody, &["explain", "default/kv"]);
    assert!(
        err.contains("reading WasmComponent default/kv")
            && err.contains("403")
            && err.contains("plugin-nobody")
            && err.contains("RBAC"),
        "{err}"
    );
}
