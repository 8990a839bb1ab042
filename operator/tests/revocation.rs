//! Reactions that must come from watches, not from the periodic re-resolution: the operator
//! here re-resolves references only once an hour, so everything these tests see within a
//! minute came from a Namespace, TrustSource or status change. Real operator binary, real
//! control plane (`tests/support`), real registry and `kubectl`.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

mod common;

use common::{assert_running, spawn_operator_rechecking};

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use airssys_crds::{TrustSource, WasmComponent};
use airssys_test_support::{ControlPlane, Registry, Supervised, push_wasm, run_tool, wait_for};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};

const TIMEOUT: Duration = Duration::from_secs(60);

static OPERATOR: tokio::sync::OnceCell<Mutex<Supervised>> = tokio::sync::OnceCell::const_new();

async fn setup() -> (&'static ControlPlane, &'static Mutex<Supervised>) {
    let cp = ControlPlane::shared().await.unwrap();
    let operator = OPERATOR
        .get_or_init(|| async { spawn_operator_rechecking(cp, 3600, &[], "operator.log") })
        .await;
    assert_running(operator);
    (cp, operator)
}

fn push(dir: &Path, reference: &str, payload: &str) -> String {
    let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
    bytes.extend_from_slice(payload.as_bytes());
    push_wasm(dir, reference, &bytes).unwrap_or_else(|e| panic!("{e}"))
}

async fn kubectl(cp: &ControlPlane, args: &[&str]) {
    let out = cp.kubectl(args).await.unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn apply(cp: &ControlPlane, dir: &Path, yaml: &str) {
    let file = dir.join("manifest.yaml");
    std::fs::write(&file, yaml).unwrap();
    kubectl(cp, &["apply", "-f", file.to_str().unwrap()]).await;
}

fn component_yaml(ns: &str, name: &str, reference: &str) -> String {
    format!(
        "apiVersion: wasm.airssys.dev/v1alpha1\nkind: WasmComponent\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  artifact:\n    oci:\n      reference: {reference}\n      insecure: true\n  capabilities:\n    env: [{{ name: LOG_LEVEL }}]\n"
    )
}

fn approved(c: &WasmComponent) -> Option<(String, String, String)> {
    let v = serde_json::to_value(c).unwrap();
    let conds = v.pointer("/status/conditions")?.as_array()?.clone();
    conds.iter().find(|c| c["type"] == "Approved").map(|c| {
        (
            c["status"].as_str().unwrap_or_default().to_owned(),
            c["reason"].as_str().unwrap_or_default().to_owned(),
            c["message"].as_str().unwrap_or_default().to_owned(),
        )
    })
}

async fn wait_approved(
    api: &Api<WasmComponent>,
    name: &str,
    status: &str,
    reason: &str,
) -> WasmComponent {
    let is = |c: &WasmComponent| approved(c).is_some_and(|(s, r, _)| s == status && r == reason);
    wait_for(api, name, is, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{name}: Approved={status}/{reason} never came: {e}"))
}

async fn wait_event(cp: &ControlPlane, ns: &str, name: &str, reason: &str) {
    let api: Api<Event> = Api::namespaced(cp.client().await.unwrap(), ns);
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let events = api.list(&ListParams::default()).await.unwrap().items;
        if events.iter().any(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding
                    .as_ref()
                    .is_some_and(|r| r.name.as_deref() == Some(name))
        }) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no Event {reason} about {ns}/{name}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A `Trust` source for every repository under `{addr}/{path}/`, for namespaces labelled
/// `{label}=yes` when `label` is given.
fn registry_source_yaml(name: &str, addr: &str, path: &str, label: Option<&str>) -> String {
    let selector = label
        .map(|l| format!("  namespaceSelector:\n    matchLabels: {{ {l}: 'yes' }}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: wasm.airssys.dev/v1alpha1\nkind: TrustSource\nmetadata:\n  name: {name}\nspec:\n  decision: Trust\n  registries:\n    - repository: '{addr}/{path}/**'\n{selector}  capabilityCeiling:\n    env: [{{ name: LOG_LEVEL }}]\n"
    )
}

#[tokio::test]
async fn a_namespace_relabel_is_decided_again_within_seconds() {
    let (cp, op) = setup().await;
    let ns = cp.create_namespace("rv-relabel").await.unwrap();
    let label = format!("trust-{ns}");
    kubectl(cp, &["label", "namespace", &ns, &format!("{label}=yes")]).await;
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = registry.address().to_owned();
    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &ns);
    let source = format!("{ns}-team");
    apply(
        cp,
        d,
        &registry_source_yaml(&source, &addr, &ns, Some(&label)),
    )
    .await;
    let reference = format!("{addr}/{ns}/echo:v1");
    push(d, &reference, "echo v1");
    apply(cp, d, &component_yaml(&ns, "echo", &reference)).await;
    wait_approved(&api, "echo", "True", "TrustSourceMatched").await;

    // The label goes: the source no longer selects the namespace; revoked long before the
    // hourly recheck.
    kubectl(cp, &["label", "namespace", &ns, &format!("{label}-")]).await;
    let c = wait_approved(&api, "echo", "False", "PendingApproval").await;
    assert_eq!(c.status.unwrap().approved_digest, None);
    wait_event(cp, &ns, "echo", "ApprovalRevoked").await;

    // And back.
    kubectl(cp, &["label", "namespace", &ns, &format!("{label}=yes")]).await;
    wait_approved(&api, "echo", "True", "TrustSourceMatched").await;
    assert_running(op);
    let sources: Api<TrustSource> = Api::all(cp.client().await.unwrap());
    sources
        .delete(&source, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn many_sources_neither_block_status_writes_nor_revocations() {
    let (cp, op) = setup().await;
    let ns = cp.create_namespace("rv-many").await.unwrap();
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = registry.address().to_owned();
    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &ns);

    // 120 valid key-only sources with long names, none of which concerns the component: if
    // each added a note naming itself, the message would pass the API server's 32 KiB limit.
    run_tool(d, "cosign", &["generate-key-pair"]).unwrap_or_else(|e| panic!("{e}"));
    let key_block: String = std::fs::read_to_string(d.join("cosign.pub"))
        .unwrap()
        .lines()
        .map(|l| format!("        {l}\n"))
        .collect();
    let long = "k".repeat(200);
    let names: Vec<String> = (0..120).map(|i| format!("{ns}-{long}-{i}")).collect();
    let many: String = names
        .iter()
        .map(|name| {
            format!(
                "---\napiVersion: wasm.airssys.dev/v1alpha1\nkind: TrustSource\nmetadata:\n  name: {name}\nspec:\n  decision: Trust\n  keys:\n    - name: team-key\n      publicKey: |\n{key_block}  capabilityCeiling:\n    env: [{{ name: LOG_LEVEL }}]\n"
            )
        })
        .collect();
    apply(cp, d, &many).await;

    let approving = format!("{ns}-registry");
    apply(cp, d, &registry_source_yaml(&approving, &addr, &ns, None)).await;
    let reference = format!("{addr}/{ns}/echo:v1");
    push(d, &reference, "echo v1");
    apply(cp, d, &component_yaml(&ns, "echo", &reference)).await;
    wait_approved(&api, "echo", "True", "TrustSourceMatched").await;

    // Deleting the approving source revokes, whatever else is in the cluster.
    let sources: Api<TrustSource> = Api::all(cp.client().await.unwrap());
    sources
        .delete(&approving, &DeleteParams::default())
        .await
        .unwrap();
    let c = wait_approved(&api, "echo", "False", "PendingApproval").await;
    let (_, _, message) = approved(&c).unwrap();
    assert!(message.len() < 4096, "{} bytes", message.len());
    assert!(
        !message.contains(&long),
        "a source that does not concern the component is not named: {message}"
    );
    assert_eq!(c.status.unwrap().approved_digest, None);
    wait_event(cp, &ns, "echo", "ApprovalRevoked").await;

    // A new component gets a status too.
    apply(cp, d, &component_yaml(&ns, "newcomer", &reference)).await;
    wait_approved(&api, "newcomer", "False", "PendingApproval").await;

    assert_running(op);
    for name in &names {
        sources
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_operator_clears_status_fields_someone_else_wrote() {
    let (cp, op) = setup().await;
    let ns = cp.create_namespace("rv-owned").await.unwrap();
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = registry.address().to_owned();
    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &ns);
    let reference = format!("{addr}/{ns}/echo:v1");
    let digest = push(d, &reference, "echo v1");
    apply(cp, d, &component_yaml(&ns, "echo", &reference)).await;
    wait_approved(&api, "echo", "False", "PendingApproval").await;

    // Someone else (another field manager) claims an approval in the status.
    let forged = serde_json::json!({ "status": {
        "approvedDigest": digest,
        "matchedSources": ["forged"],
        "trustLevel": "Trusted",
    }});
    api.patch_status(
        "echo",
        &PatchParams::apply("intruder").force(),
        &Patch::Apply(serde_json::json!({
            "apiVersion": "wasm.airssys.dev/v1alpha1",
            "kind": "WasmComponent",
            "status": forged["status"],
        })),
    )
    .await
    .unwrap();
    let cleared = |c: &WasmComponent| {
        c.status.as_ref().is_some_and(|s| {
            s.approved_digest.is_none()
                && s.matched_sources.is_empty()
                && s.trust_level.map(|t| t.to_string()).as_deref() == Some("Unknown")
        })
    };
    wait_for(&api, "echo", cleared, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("the operator never took its status fields back: {e}"));

    // The same through a merge patch (an Update, as kubectl edit --subresource status does).
    api.patch_status("echo", &PatchParams::default(), &Patch::Merge(&forged))
        .await
        .unwrap();
    wait_for(&api, "echo", cleared, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("the operator never took its status fields back: {e}"));
    assert!(approved(&api.get("echo").await.unwrap()).is_some_and(|(s, _, _)| s == "False"));
    assert_running(op);
}

/// The ApprovalRevoked Events about component `name`, as (note, series count).
async fn revocations(cp: &ControlPlane, ns: &str, name: &str) -> Vec<(String, i32)> {
    let api: Api<Event> = Api::namespaced(cp.client().await.unwrap(), ns);
    let mut found: Vec<(String, i32)> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some("ApprovalRevoked")
                && e.regarding
                    .as_ref()
                    .is_some_and(|r| r.name.as_deref() == Some(name))
        })
        .map(|e| (e.note.unwrap_or_default(), e.series.map_or(1, |s| s.count)))
        .collect();
    found.sort();
    found
}

/// Waits until the ApprovalRevoked Events about `name` satisfy `done`; returns them.
async fn wait_revocations(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
    what: &str,
    done: impl Fn(&[(String, i32)]) -> bool,
) -> Vec<(String, i32)> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let events = revocations(cp, ns, name).await;
        if done(&events) {
            return events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never came; ApprovalRevoked Events about {ns}/{name}: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn deny_source_yaml(name: &str, addr: &str, path: &str) -> String {
    format!(
        "apiVersion: wasm.airssys.dev/v1alpha1\nkind: TrustSource\nmetadata:\n  name: {name}\nspec:\n  decision: Deny\n  registries:\n    - repository: '{addr}/{path}/**'\n"
    )
}

#[tokio::test]
async fn a_revocation_for_a_new_cause_is_a_new_event_and_a_repeat_is_counted() {
    let (cp, op) = setup().await;
    let ns = cp.create_namespace("rv-causes").await.unwrap();
    let label = format!("trust-{ns}");
    kubectl(cp, &["label", "namespace", &ns, &format!("{label}=yes")]).await;
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = registry.address().to_owned();
    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &ns);
    let sources: Api<TrustSource> = Api::all(cp.client().await.unwrap());
    let team = format!("{ns}-team");
    apply(
        cp,
        d,
        &registry_source_yaml(&team, &addr, &ns, Some(&label)),
    )
    .await;
    let reference = format!("{addr}/{ns}/echo:v1");
    push(d, &reference, "echo v1");
    apply(cp, d, &component_yaml(&ns, "echo", &reference)).await;
    wait_approved(&api, "echo", "True", "TrustSourceMatched").await;

    // Cause one: the namespace leaves the source's selector.
    kubectl(cp, &["label", "namespace", &ns, &format!("{label}-")]).await;
    wait_approved(&api, "echo", "False", "PendingApproval").await;
    wait_revocations(cp, &ns, "echo", "the first revocation", |e| e.len() == 1).await;
    kubectl(cp, &["label", "namespace", &ns, &format!("{label}=yes")]).await;
    wait_approved(&api, "echo", "True", "TrustSourceMatched").await;

    // Cause two: a Deny source. A new Event with its own note; the first keeps its own.
    let deny = format!("{ns}-block");
    apply(cp, d, &deny_source_yaml(&deny, &addr, &ns)).await;
    wait_approved(&api, "echo", "False", "Denied").await;
    let events = wait_revocations(cp, &ns, "echo", "the second revocation", |e| e.len() == 2).await;
    let by = |cause: &str| {
        events
            .iter()
            .find(|(note, _)| note.contains(&format!("({cause})")))
            .unwrap_or_else(|| panic!("no revocation for {cause}: {events:?}"))
            .clone()
    };
    let (pending_note, pending_count) = by("PendingApproval");
    let (denied_note, denied_count) = by("Denied");
    assert_eq!((pending_count, denied_count), (1, 1), "{events:?}");
    assert!(!pending_note.contains(&deny), "{pending_note}");
    assert!(
        denied_note.contains(&deny),
        "the new cause is named: {denied_note}"
    );

    // The same cause again: counted on its Event, no third one.
    sources
        .delete(&deny, &DeleteParams::default())
        .await
        .unwrap();
    wait_approved(&api, "echo", "True", "TrustSourceMatched").await;
    apply(cp, d, &deny_source_yaml(&deny, &addr, &ns)).await;
    wait_approved(&api, "echo", "False", "Denied").await;
    let events = wait_revocations(cp, &ns, "echo", "the repeat's count", |e| {
        e.iter()
            .any(|(note, count)| note == &denied_note && *count == 2)
    })
    .await;
    let mut want = vec![(denied_note, 2), (pending_note, 1)];
    want.sort();
    assert_eq!(events, want, "two Events, each with its own message");

    assert_running(op);
    for name in [&deny, &team] {
        sources
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_sources_component_count_follows_its_components_within_seconds() {
    // Well under the trust-source controller's periodic refresh: only the re-queue from the
    // component controller can make it.
    const QUICK: Duration = Duration::from_secs(10);
    let (cp, op) = setup().await;
    let ns = cp.create_namespace("rv-count").await.unwrap();
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = registry.address().to_owned();
    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &ns);
    let sources: Api<TrustSource> = Api::all(cp.client().await.unwrap());
    let source = format!("{ns}-team");
    apply(cp, d, &registry_source_yaml(&source, &addr, &ns, None)).await;
    wait_for(
        &sources,
        &source,
        |s| s.status.as_ref().is_some_and(|s| s.components == 0),
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("the source never reported its count: {e}"));

    let reference = format!("{addr}/{ns}/echo:v1");
    push(d, &reference, "echo v1");
    apply(cp, d, &component_yaml(&ns, "echo", &reference)).await;
    wait_approved(&api, "echo", "True", "TrustSourceMatched").await;
    let counted =
        |n: i32| move |s: &TrustSource| s.status.as_ref().is_some_and(|s| s.components == n);
    wait_for(&sources, &source, counted(1), QUICK)
        .await
        .unwrap_or_else(|e| panic!("status.components did not follow the approval: {e}"));

    api.delete("echo", &DeleteParams::default()).await.unwrap();
    wait_for(&sources, &source, counted(0), QUICK)
        .await
        .unwrap_or_else(|e| panic!("status.components did not follow the deletion: {e}"));

    assert_running(op);
    sources
        .delete(&source, &DeleteParams::default())
        .await
        .unwrap();
}
