//! Placement end to end: the real `airssys-operator run` binary against the real control plane
//! (`tests/support`), components pushed by real `oras` into a real registry, trusted by a
//! `TrustSource`, scaled with real `kubectl`. The agents are played by the test as three agents
//! would act: a `Node` object each, a `coordination.k8s.io/v1` Lease per agent in the product's
//! namespace renewed every second (capacity in its annotations), and `Placement` statuses
//! written by server-side apply with the agents' field manager.
//!
//! Nodes are cluster-wide, so each test labels its own nodes with its namespace and its
//! components select them; the one operator process serves every test of this binary. The
//! leader-election test brings up its own control plane, because its two operators would act
//! on every component of a shared one; they run with the chart's RBAC.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

mod common;

use common::{assert_running, spawn_operator};

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airssys_crds::agent::{
    ADDRESS_ANNOTATION, AGENT_FIELD_MANAGER, AGENT_LEASE_LABEL, AgentCapacity, lease_name,
};
use airssys_crds::{Placement, TrustSource, WasmComponent};
use airssys_test_support::{
    ControlPlane, ControlPlaneOptions, Registry, Supervised, push_wasm, wait_for,
};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt as _};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The product's namespace in these clusters: agents' Leases and the leader Lease live here.
const PRODUCT_NS: &str = "airssys-system";
/// The label each test puts on its own nodes (value: the test's namespace).
const TEST_LABEL: &str = "airssys.dev/test-ns";

static OPERATOR: tokio::sync::OnceCell<Mutex<Supervised>> = tokio::sync::OnceCell::const_new();

async fn ensure_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

async fn setup() -> (&'static ControlPlane, &'static Mutex<Supervised>) {
    let cp = ControlPlane::shared().await.unwrap();
    let operator = OPERATOR
        .get_or_init(|| async {
            ensure_namespace(&cp.client().await.unwrap(), PRODUCT_NS).await;
            spawn_operator(cp, &["--namespace", PRODUCT_NS], "operator.log")
        })
        .await;
    assert_running(operator);
    (cp, operator)
}

/// An agent as the operator sees it: a Node and a Lease renewed every second until dropped
/// or [`FakeAgent::stop`]ped.
struct FakeAgent {
    node: String,
    renewing: tokio::task::JoinHandle<()>,
}

impl FakeAgent {
    /// Creates Node `node` with `labels` and starts renewing its agent Lease with a duration of
    /// `duration` seconds, announcing `instances` instance slots and 4 GiB.
    async fn start(
        client: &Client,
        node: &str,
        labels: &[(&str, &str)],
        duration: i32,
        instances: u32,
    ) -> Self {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let object = k8s_openapi::api::core::v1::Node {
            metadata: ObjectMeta {
                name: Some(node.to_owned()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            ..Default::default()
        };
        nodes.create(&PostParams::default(), &object).await.unwrap();
        let leases: Api<Lease> = Api::namespaced(client.clone(), PRODUCT_NS);
        let name = lease_name(node);
        let holder = node.to_owned();
        let address = fake_address(node);
        let renew = move || {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(BTreeMap::from([(
                        AGENT_LEASE_LABEL.to_owned(),
                        "true".to_owned(),
                    )])),
                    annotations: Some({
                        let mut a = AgentCapacity {
                            instances,
                            memory_bytes: 4 << 30,
                        }
                        .to_annotations();
                        a.insert(ADDRESS_ANNOTATION.to_owned(), address.clone());
                        a
                    }),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(holder.clone()),
                    lease_duration_seconds: Some(duration),
                    renew_time: Some(MicroTime(jiff::Timestamp::now())),
                    ..LeaseSpec::default()
                }),
            };
            let leases = leases.clone();
            let name = name.clone();
            async move {
                leases
                    .patch(
                        &name,
                        &PatchParams::apply("fake-agent").force(),
                        &Patch::Apply(&lease),
                    )
                    .await
            }
        };
        renew().await.unwrap();
        let renewing = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Err(e) = renew().await {
                    eprintln!("renewing a fake agent Lease failed: {e}");
                }
            }
        });
        Self {
            node: node.to_owned(),
            renewing,
        }
    }

    /// The agent dies: its Lease is no longer renewed.
    fn stop(&self) {
        self.renewing.abort();
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.renewing.abort();
    }
}

/// The address a fake agent announces: 10.66.0.<last byte of its node's name>.
fn fake_address(node: &str) -> String {
    format!("10.66.0.{}", node.bytes().last().unwrap_or(1))
}

/// Starts agents `{ns}-{name}` for `names`, each labelled with the test's namespace and
/// `pool=<pool>`.
async fn agents(
    client: &Client,
    ns: &str,
    nodes: &[(&str, &str)],
    duration: i32,
) -> Vec<FakeAgent> {
    let mut out = Vec::new();
    for (name, pool) in nodes {
        out.push(
            FakeAgent::start(
                client,
                &format!("{ns}-{name}"),
                &[(TEST_LABEL, ns), ("pool", pool)],
                duration,
                100,
            )
            .await,
        );
    }
    out
}

async fn kubectl(cp: &ControlPlane, args: &[&str]) -> String {
    let out = cp.kubectl(args).await.unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn apply(cp: &ControlPlane, dir: &Path, yaml: &str) {
    let file = dir.join("manifest.yaml");
    std::fs::write(&file, yaml).unwrap();
    kubectl(cp, &["apply", "-f", file.to_str().unwrap()]).await;
}

fn push(dir: &Path, reference: &str, payload: &str) -> String {
    let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
    bytes.extend_from_slice(payload.as_bytes());
    push_wasm(dir, reference, &bytes).unwrap_or_else(|e| panic!("{e}"))
}

/// A `Trust` source for every repository under `{addr}/{path}/`.
fn source_yaml(name: &str, addr: &str, path: &str) -> String {
    format!(
        "apiVersion: wasm.airssys.dev/v1alpha1\nkind: TrustSource\nmetadata:\n  name: {name}\nspec:\n  decision: Trust\n  registries:\n    - repository: '{addr}/{path}/**'\n  capabilityCeiling:\n    env: [{{ name: LOG_LEVEL }}, {{ name: OTHER }}]\n"
    )
}

/// A component requesting `LOG_LEVEL`, placed on the test's nodes of pool `wasm`.
fn component_yaml(ns: &str, name: &str, reference: &str, replicas: u32) -> String {
    format!(
        "apiVersion: wasm.airssys.dev/v1alpha1\nkind: WasmComponent\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  artifact:\n    oci:\n      reference: {reference}\n      insecure: true\n  capabilities:\n    env: [{{ name: LOG_LEVEL }}]\n  replicas: {replicas}\n  placement:\n    nodeSelector:\n      {TEST_LABEL}: {ns}\n      pool: wasm\n"
    )
}

/// A test's namespace, registry, pushed artifact and trusting source.
struct Fixture {
    ns: String,
    dir: tempfile::TempDir,
    _registry: Registry,
    reference: String,
    digest: String,
    source: String,
}

async fn fixture(cp: &ControlPlane, prefix: &str) -> Fixture {
    let ns = cp.create_namespace(prefix).await.unwrap();
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("{}/{ns}/echo:v1", registry.address());
    let digest = push(dir.path(), &reference, &format!("echo for {ns}"));
    let source = format!("{ns}-platform");
    apply(
        cp,
        dir.path(),
        &source_yaml(&source, registry.address(), &ns),
    )
    .await;
    Fixture {
        ns,
        dir,
        _registry: registry,
        reference,
        digest,
        source,
    }
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

fn has(c: &WasmComponent, type_: &str, status: &str, reason: &str) -> bool {
    condition(c, type_).is_some_and(|(s, r, _)| s == status && r == reason)
}

fn transition_time(c: &WasmComponent, type_: &str) -> Option<String> {
    c.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_.as_str() == type_)
            .map(|c| c.last_transition_time.clone())
    })
}

async fn wait_component(
    api: &Api<WasmComponent>,
    name: &str,
    what: &str,
    f: impl Fn(&WasmComponent) -> bool,
) -> WasmComponent {
    wait_for(api, name, f, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{name}: {what} never came: {e}"))
}

/// The component's Placements (not being deleted), by node.
async fn placements(api: &Api<Placement>, component: &str) -> BTreeMap<String, Placement> {
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.spec.component.name == component && p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.spec.node_name.clone(), p))
        .collect()
}

/// Waits until the component's Placements hold `instances` per node (nodes without an entry
/// hold none) and returns them.
async fn wait_placements(
    api: &Api<Placement>,
    ns: &str,
    component: &str,
    what: &str,
    f: impl Fn(&BTreeMap<String, i32>) -> bool,
) -> BTreeMap<String, Placement> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let all = api.list(&ListParams::default()).await.unwrap().items;
        let ours: Vec<&Placement> = all
            .iter()
            .filter(|p| p.spec.component.name == component)
            .collect();
        let live: BTreeMap<String, i32> = ours
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| (p.spec.node_name.clone(), p.spec.instances))
            .collect();
        // One Placement per (component, node), always.
        let mut per_node: HashMap<&str, usize> = HashMap::new();
        for p in &ours {
            *per_node.entry(p.spec.node_name.as_str()).or_default() += 1;
        }
        assert!(
            per_node.values().all(|&n| n == 1),
            "duplicate Placements on a node: {per_node:?}"
        );
        if f(&live) {
            return placements(api, component).await;
        }
        if Instant::now() >= deadline {
            let components: Api<WasmComponent> = Api::namespaced(api.clone().into_client(), ns);
            let c = components.get_opt(component).await.ok().flatten();
            panic!(
                "{component}: placements never became {what}; last: {live:?}; component: {}",
                serde_yaml::to_string(&c).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes a Placement's status as its agent would (server-side apply, the agents' manager).
async fn report(api: &Api<Placement>, p: &Placement, ready: i32, degraded: Option<&str>) {
    let now = "2026-01-01T00:00:00Z";
    let mut conditions = vec![serde_json::json!({
        "type": "Ready", "status": if ready >= p.spec.instances { "True" } else { "False" },
        "reason": if ready >= p.spec.instances { "InstancesReady" } else { "InstancesStarting" },
        "message": "", "lastTransitionTime": now,
    })];
    if let Some(message) = degraded {
        conditions.push(serde_json::json!({
            "type": "Degraded", "status": "True", "reason": "CrashLoop",
            "message": message, "lastTransitionTime": now,
        }));
    }
    let body = serde_json::json!({
        "apiVersion": "wasm.airssys.dev/v1alpha1",
        "kind": "Placement",
        "status": {
            "observedGeneration": p.metadata.generation,
            "digest": p.spec.digest.as_str(),
            "readyInstances": ready,
            "restarts": if degraded.is_some() { 7 } else { 0 },
            "conditions": conditions,
        },
    });
    api.patch_status(
        &p.name_any(),
        &PatchParams::apply(AGENT_FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn an_approved_component_is_placed_on_the_allowed_nodes_reports_ready_and_scales() {
    let (cp, op) = setup().await;
    let client = cp.client().await.unwrap();
    let f = fixture(cp, "pl-place").await;
    let ns = &f.ns;
    let _agents = agents(
        &client,
        ns,
        &[("a", "wasm"), ("b", "wasm"), ("c", "wasm"), ("d", "other")],
        40,
    )
    .await;
    apply(
        cp,
        f.dir.path(),
        &component_yaml(ns, "echo", &f.reference, 3),
    )
    .await;
    let components: Api<WasmComponent> = Api::namespaced(client.clone(), ns);
    let api: Api<Placement> = Api::namespaced(client.clone(), ns);

    // Three replicas, one per allowed node; the node outside the selector gets none.
    let placed = wait_placements(&api, ns, "echo", "one on each of a, b, c", |m| {
        m.len() == 3 && m.values().all(|&n| n == 1)
    })
    .await;
    let nodes: Vec<&str> = placed.keys().map(String::as_str).collect();
    assert_eq!(
        nodes,
        [format!("{ns}-a"), format!("{ns}-b"), format!("{ns}-c")]
    );
    let c = components.get("echo").await.unwrap();
    for p in placed.values() {
        assert_eq!(p.spec.digest.as_str(), f.digest, "the approved digest");
        let grant: Vec<&str> = p.spec.grant.env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(grant, ["LOG_LEVEL"], "the grant: request ∩ approval");
        assert_eq!(p.spec.component.uid, c.uid().unwrap());
        assert_eq!(Some(p.spec.component.generation), c.metadata.generation);
        let reference = &p.spec.artifact.oci.as_ref().unwrap().reference;
        assert!(
            reference.ends_with(&format!("@{}", f.digest)),
            "pinned: {reference}"
        );
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                owner.uid.as_str(),
                owner.controller,
                owner.block_owner_deletion
            ),
            (c.uid().unwrap().as_str(), Some(true), Some(true))
        );
    }
    let c = wait_component(&components, "echo", "Scheduled=Placed, 0 ready", |c| {
        has(c, "Scheduled", "True", "Placed")
            && has(c, "Ready", "False", "InstancesStarting")
            && c.status
                .as_ref()
                .is_some_and(|s| s.replicas == 3 && s.ready_replicas == 0)
    })
    .await;
    assert!(
        has(&c, "Approved", "True", "TrustSourceMatched"),
        "the component controller's condition stays"
    );
    assert!(has(&c, "Verified", "True", "ArtifactVerified"));

    // The agents report their instances ready: the component is Ready.
    for p in placed.values() {
        report(&api, p, 1, None).await;
    }
    let c = wait_component(&components, "echo", "Ready with 3 ready replicas", |c| {
        has(c, "Ready", "True", "InstancesReady")
            && has(c, "Degraded", "False", "Healthy")
            && c.status
                .as_ref()
                .is_some_and(|s| s.ready_replicas == 3 && s.nodes.len() == 3)
    })
    .await;
    let nodes = &c.status.as_ref().unwrap().nodes;
    assert!(
        nodes
            .iter()
            .all(|n| n.replicas == 1 && n.ready_replicas == 1),
        "{nodes:?}"
    );
    let table = kubectl(cp, &["get", "wasmcomponents", "-n", ns]).await;
    assert!(table.lines().next().unwrap().contains("READY"), "{table}");
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .any(|w| w == "3"),
        "kubectl shows 3 ready: {table}"
    );

    // One node's instances crash loop: Degraded names it.
    let b = &placed[&format!("{ns}-b")];
    report(&api, b, 0, Some("trap: unreachable; restarting in 8s")).await;
    let c = wait_component(&components, "echo", "Degraded=CrashLoop", |c| {
        has(c, "Degraded", "True", "CrashLoop") && has(c, "Ready", "False", "InstancesStarting")
    })
    .await;
    let (_, _, message) = condition(&c, "Degraded").unwrap();
    assert!(
        message.contains(&format!("{ns}-b")) && message.contains("trap"),
        "{message}"
    );
    report(&api, b, 1, None).await;
    wait_component(&components, "echo", "Healthy again", |c| {
        has(c, "Degraded", "False", "Healthy") && has(c, "Ready", "True", "InstancesReady")
    })
    .await;

    // kubectl scale to 5: the same three Placements grow; nothing moves; still not on d.
    let uids: Vec<String> = placed.values().map(|p| p.uid().unwrap()).collect();
    kubectl(
        cp,
        &["scale", "wasmcomponent/echo", "-n", ns, "--replicas=5"],
    )
    .await;
    let scaled = wait_placements(&api, ns, "echo", "5 on a, b, c", |m| {
        m.len() == 3 && m.values().sum::<i32>() == 5 && m.values().all(|&n| n >= 1)
    })
    .await;
    let after: Vec<String> = scaled.values().map(|p| p.uid().unwrap()).collect();
    assert_eq!(after, uids, "scaling up updates Placements in place");
    let c = wait_component(&components, "echo", "5 replicas placed", |c| {
        c.status.as_ref().is_some_and(|s| s.replicas == 5) && has(c, "Scheduled", "True", "Placed")
    })
    .await;
    assert_eq!(c.spec.replicas, 5);
    let scale = components.get_scale("echo").await.unwrap();
    assert_eq!(
        scale.status.map(|s| s.replicas),
        Some(5),
        "/scale reads status.replicas"
    );

    // Scale to 0 through the /scale subresource: every Placement goes.
    components
        .patch_scale(
            "echo",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({ "spec": { "replicas": 0 } })),
        )
        .await
        .unwrap();
    wait_placements(&api, ns, "echo", "none", BTreeMap::is_empty).await;
    wait_component(&components, "echo", "ScaledToZero", |c| {
        has(c, "Scheduled", "True", "ScaledToZero")
            && has(c, "Ready", "True", "InstancesReady")
            && c.status
                .as_ref()
                .is_some_and(|s| s.replicas == 0 && s.nodes.is_empty())
    })
    .await;
    assert_running(op);
}

#[tokio::test]
async fn replicas_move_off_a_node_whose_agent_lease_expires() {
    let (cp, op) = setup().await;
    let client = cp.client().await.unwrap();
    let f = fixture(cp, "pl-lease").await;
    let ns = &f.ns;
    // Short Leases: 3 s after its last renewal an agent is gone.
    let agents = agents(
        &client,
        ns,
        &[("a", "wasm"), ("b", "wasm"), ("c", "wasm")],
        3,
    )
    .await;
    apply(
        cp,
        f.dir.path(),
        &component_yaml(ns, "echo", &f.reference, 3),
    )
    .await;
    let api: Api<Placement> = Api::namespaced(client.clone(), ns);
    let before = wait_placements(&api, ns, "echo", "one per node", |m| m.len() == 3).await;

    let lost = format!("{ns}-b");
    let dead = agents.iter().find(|a| a.node == lost).unwrap();
    dead.stop();
    let stopped = Instant::now();
    let after = wait_placements(&api, ns, "echo", "off b, still 3 replicas", |m| {
        !m.contains_key(&lost) && m.values().sum::<i32>() == 3
    })
    .await;
    eprintln!(
        "replicas moved {:?} after the agent's last renewal (Lease duration 3 s)",
        stopped.elapsed()
    );
    for node in [format!("{ns}-a"), format!("{ns}-c")] {
        assert_eq!(
            before[&node].uid(),
            after[&node].uid(),
            "the live nodes keep their Placements"
        );
    }
    let components: Api<WasmComponent> = Api::namespaced(client.clone(), ns);
    wait_component(&components, "echo", "3 placed on 2 nodes", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.replicas == 3 && s.nodes.len() == 2)
            && has(c, "Scheduled", "True", "Placed")
    })
    .await;
    assert_running(op);
}

#[tokio::test]
async fn revoking_trust_deletes_every_placement_within_seconds() {
    let (cp, op) = setup().await;
    let client = cp.client().await.unwrap();
    let f = fixture(cp, "pl-revoke").await;
    let ns = &f.ns;
    let _agents = agents(&client, ns, &[("a", "wasm"), ("b", "wasm")], 40).await;
    apply(
        cp,
        f.dir.path(),
        &component_yaml(ns, "echo", &f.reference, 4),
    )
    .await;
    let api: Api<Placement> = Api::namespaced(client.clone(), ns);
    wait_placements(&api, ns, "echo", "2 on each node", |m| {
        m.len() == 2 && m.values().all(|&n| n == 2)
    })
    .await;

    let sources: Api<TrustSource> = Api::all(client.clone());
    let revoked = Instant::now();
    sources
        .delete(&f.source, &DeleteParams::default())
        .await
        .unwrap();
    wait_placements(&api, ns, "echo", "none", BTreeMap::is_empty).await;
    let took = revoked.elapsed();
    eprintln!("every Placement deleted {took:?} after the TrustSource was deleted");
    assert!(took < Duration::from_secs(10), "revocation took {took:?}");
    let components: Api<WasmComponent> = Api::namespaced(client.clone(), ns);
    wait_component(&components, "echo", "Scheduled=NotApproved", |c| {
        has(c, "Scheduled", "False", "NotApproved")
            && has(c, "Ready", "False", "NotApproved")
            && c.status
                .as_ref()
                .is_some_and(|s| s.replicas == 0 && s.ready_replicas == 0)
    })
    .await;
    assert_running(op);
}

/// (generation, digest) of every Placement version seen.
type Seen = Arc<Mutex<Vec<(i64, String)>>>;

/// Records the generation and digest of every Placement of `component` the API server shows,
/// until the returned task is aborted.
fn record_placements(
    api: Api<Placement>,
    component: &'static str,
) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Ok(list) = api.list(&ListParams::default()).await {
                let mut seen = out.lock().unwrap();
                for p in list
                    .items
                    .iter()
                    .filter(|p| p.spec.component.name == component)
                {
                    seen.push((p.spec.component.generation, p.spec.digest.to_string()));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (seen, task)
}

#[tokio::test]
async fn an_approval_that_is_not_current_is_never_placed() {
    let (cp, op) = setup().await;
    let client = cp.client().await.unwrap();
    let f = fixture(cp, "pl-stale").await;
    let ns = &f.ns;
    let _agents = agents(&client, ns, &[("a", "wasm"), ("b", "wasm")], 40).await;
    let components: Api<WasmComponent> = Api::namespaced(client.clone(), ns);
    let api: Api<Placement> = Api::namespaced(client.clone(), ns);

    // 1. A forged approval in the status of a component nobody trusts: never placed, whether
    // it claims the current generation or an older one.
    let registry_addr = f.reference.split('/').next().unwrap().to_owned();
    let untrusted = format!("{registry_addr}/elsewhere-{ns}/echo:v1");
    let untrusted_digest = push(f.dir.path(), &untrusted, "nobody vouches for this");
    apply(
        cp,
        f.dir.path(),
        &component_yaml(ns, "pending", &untrusted, 2),
    )
    .await;
    let c = wait_component(&components, "pending", "PendingApproval", |c| {
        has(c, "Approved", "False", "PendingApproval")
            && has(c, "Scheduled", "False", "NotApproved")
    })
    .await;
    let (seen, recorder) = record_placements(api.clone(), "pending");
    let generation = c.metadata.generation.unwrap();
    for claimed in [generation, generation - 1] {
        let forged = serde_json::json!({
            "apiVersion": "wasm.airssys.dev/v1alpha1",
            "kind": "WasmComponent",
            "status": {
                "observedGeneration": claimed,
                "approvedDigest": untrusted_digest,
                "conditions": [{
                    "type": "Approved", "status": "True", "reason": "ManuallyApproved",
                    "message": "forged", "observedGeneration": claimed,
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }],
            },
        });
        components
            .patch_status(
                "pending",
                &PatchParams::apply("mallory").force(),
                &Patch::Apply(&forged),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    recorder.abort();
    assert!(
        seen.lock().unwrap().is_empty(),
        "a forged approval placed something: {:?}",
        seen.lock().unwrap()
    );
    wait_component(
        &components,
        "pending",
        "the operator's own decision back",
        |c| has(c, "Approved", "False", "PendingApproval"),
    )
    .await;

    // 2. An approved component whose spec moves to an artifact nobody trusts: while its
    // approval belongs to the older generation nothing new is placed, and once decided its
    // Placements go. No Placement ever carries the new generation.
    apply(
        cp,
        f.dir.path(),
        &component_yaml(ns, "echo", &f.reference, 2),
    )
    .await;
    wait_placements(&api, ns, "echo", "one per node", |m| m.len() == 2).await;
    let c = components.get("echo").await.unwrap();
    let first = c.metadata.generation.unwrap();
    let (seen, recorder) = record_placements(api.clone(), "echo");
    apply(cp, f.dir.path(), &component_yaml(ns, "echo", &untrusted, 2)).await;
    wait_placements(&api, ns, "echo", "none", BTreeMap::is_empty).await;
    wait_component(
        &components,
        "echo",
        "not approved at the new generation",
        |c| {
            has(c, "Approved", "False", "PendingApproval")
                && has(c, "Scheduled", "False", "NotApproved")
        },
    )
    .await;
    recorder.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the recorder saw the approved Placements");
    assert!(
        seen.iter().all(|(g, d)| *g == first && *d == f.digest),
        "only the approved generation and digest were ever placed: {seen:?}"
    );
    assert_running(op);
}

/// GETs `path` from the metrics endpoint an operator logged.
fn scrape(operator: &Mutex<Supervised>, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let log = std::fs::read_to_string(operator.lock().unwrap().log_path()).unwrap();
    let addr = log
        .split("\"bound\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no metrics address in the operator log:\n{log}"));
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    out
}

/// Placement reconciliations an operator has run, from its metrics.
fn placement_reconciles(operator: &Mutex<Supervised>) -> u64 {
    scrape(operator, "/metrics")
        .lines()
        .find(|l| l.starts_with("airssys_operator_reconciles_total{controller=\"placement\"}"))
        .and_then(|l| l.split_whitespace().last())
        .map_or(0, |n| n.parse().unwrap())
}

/// The HTTP status of `/readyz` on an operator's metrics endpoint (its address from its log).
fn readyz(operator: &Mutex<Supervised>) -> u16 {
    use std::io::{Read as _, Write as _};
    let log = std::fs::read_to_string(operator.lock().unwrap().log_path()).unwrap();
    let bound = log
        .lines()
        .filter(|l| l.contains("serving /metrics"))
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v["fields"]["bound"].as_str().map(str::to_owned)
        })
        .expect("the operator logs its metrics address");
    let mut stream = std::net::TcpStream::connect(&bound).unwrap();
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

fn leads(operator: &Mutex<Supervised>) -> bool {
    std::fs::read_to_string(operator.lock().unwrap().log_path())
        .unwrap()
        .contains("became the leader")
}

/// Renders the chart's operator RBAC with the real helm, applies it, and returns a kubeconfig
/// of the operator's ServiceAccount.
async fn operator_account(cp: &ControlPlane) -> std::path::PathBuf {
    let chart = airssys_test_support::repo_root().join("charts/airssys-wasm");
    let out = cp
        .helm([
            "template",
            "airssys-wasm",
            chart.to_str().unwrap(),
            "--namespace",
            PRODUCT_NS,
            "--kube-version",
            "1.34.0",
            "--set",
            "rbac.userRoles=false,operator.enabled=false,agent.enabled=false",
        ])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = cp.dir().join("operator-rbac.yaml");
    std::fs::write(&rendered, &out.stdout).unwrap();
    kubectl(
        cp,
        &["apply", "--server-side", "-f", rendered.to_str().unwrap()],
    )
    .await;
    cp.service_account_kubeconfig(PRODUCT_NS, "airssys-wasm-operator")
        .await
        .unwrap()
}

#[tokio::test]
async fn of_two_operators_one_acts_and_the_other_takes_over_without_duplicates_or_flapping() {
    // Its own cluster: these operators act on every component they see.
    let cp = ControlPlane::start(ControlPlaneOptions::default())
        .await
        .unwrap();
    let client = cp.client().await.unwrap();
    ensure_namespace(&client, PRODUCT_NS).await;
    let kubeconfig = operator_account(&cp).await;
    let spawn = |log: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_airssys-operator"));
        cmd.args([
            "run",
            "--leader-elect",
            "--namespace",
            PRODUCT_NS,
            "--insecure-registry",
            "127.0.0.1",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info,airssys_operator=debug");
        Mutex::new(Supervised::spawn("airssys-operator", cmd, &cp.dir().join(log)).unwrap())
    };
    let one = spawn("operator-1.log");
    let two = spawn("operator-2.log");

    let f = fixture(&cp, "pl-leader").await;
    let ns = &f.ns;
    let _agents = agents(
        &client,
        ns,
        &[("a", "wasm"), ("b", "wasm"), ("c", "wasm")],
        40,
    )
    .await;
    apply(
        &cp,
        f.dir.path(),
        &component_yaml(ns, "echo", &f.reference, 3),
    )
    .await;
    let api: Api<Placement> = Api::namespaced(client.clone(), ns);
    let components: Api<WasmComponent> = Api::namespaced(client.clone(), ns);
    let before = wait_placements(&api, ns, "echo", "one per node", |m| {
        m.len() == 3 && m.values().all(|&n| n == 1)
    })
    .await;
    for p in before.values() {
        report(&api, p, 1, None).await;
    }
    let c = wait_component(&components, "echo", "Ready", |c| {
        has(c, "Ready", "True", "InstancesReady") && has(c, "Scheduled", "True", "Placed")
    })
    .await;

    // Exactly one leads; the other has not reconciled anything.
    let (leader, standby) = match (leads(&one), leads(&two)) {
        (true, false) => (one, two),
        (false, true) => (two, one),
        other => panic!("expected exactly one leader, got {other:?}"),
    };
    assert!(placement_reconciles(&leader) > 0);
    assert_eq!(
        placement_reconciles(&standby),
        0,
        "the standby does not act"
    );
    // Both are ready: the standby serves artifacts and waits to take over, so the artifact
    // Service must reach it and a Deployment's rolling update must not wait on it forever.
    assert_eq!(readyz(&leader), 200, "the leader is ready");
    assert_eq!(readyz(&standby), 200, "the standby is ready");
    let times: Vec<Option<String>> = ["Scheduled", "Ready", "Degraded"]
        .iter()
        .map(|t| transition_time(&c, t))
        .collect();
    let uids: Vec<String> = before.values().map(|p| p.uid().unwrap()).collect();

    // The leader dies without a word (SIGKILL: no release of the Lease).
    let pid = leader.lock().unwrap().pid().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let died = Instant::now();
    let deadline = died + TIMEOUT;
    while placement_reconciles(&standby) == 0 {
        assert!(Instant::now() < deadline, "the standby never took over");
        assert_running(&standby);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "the standby took over {:?} after the leader died",
        died.elapsed()
    );
    assert!(leads(&standby));
    let leases: Api<Lease> = Api::namespaced(client.clone(), PRODUCT_NS);
    let holder = leases
        .get(airssys_operator::leader::LEASE_NAME)
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(
        holder.ends_with(&format!("-{}", standby.lock().unwrap().pid())),
        "{holder}"
    );

    // It acts: a scale reaches the nodes, through the same Placements.
    kubectl(
        &cp,
        &["scale", "wasmcomponent/echo", "-n", ns, "--replicas=4"],
    )
    .await;
    let after = wait_placements(&api, ns, "echo", "4 on the same nodes", |m| {
        m.len() == 3 && m.values().sum::<i32>() == 4
    })
    .await;
    let after_uids: Vec<String> = after.values().map(|p| p.uid().unwrap()).collect();
    assert_eq!(after_uids, uids, "no Placement was recreated");
    // Nothing flapped: the conditions kept their transition times through the takeover.
    let c = components.get("echo").await.unwrap();
    assert!(has(&c, "Scheduled", "True", "Placed"), "{c:?}");
    assert_eq!(
        transition_time(&c, "Scheduled"),
        times[0],
        "Scheduled did not flap"
    );
    assert_eq!(
        transition_time(&c, "Degraded"),
        times[2],
        "Degraded did not flap"
    );
    assert_running(&standby);
}

/// The addresses in an HTTP component's EndpointSlice, sorted (`None`: no slice).
async fn slice_addresses(client: &Client, ns: &str, component: &str) -> Option<Vec<String>> {
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(client.clone(), ns);
    let slice = slices
        .get_opt(&format!("{component}-airssys"))
        .await
        .unwrap()?;
    let mut addresses: Vec<String> = slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|e| e.addresses.clone())
        .collect();
    addresses.sort();
    Some(addresses)
}

async fn wait_slice(client: &Client, ns: &str, component: &str, want: Option<Vec<String>>) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let seen = slice_addresses(client, ns, component).await;
        if seen == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{component}: slice {seen:?}, never {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_http_component_gets_a_service_whose_endpoints_follow_readiness() {
    let (cp, op) = setup().await;
    let client = cp.client().await.unwrap();
    let f = fixture(cp, "pl-http").await;
    let ns = &f.ns;
    let _agents = agents(&client, ns, &[("a", "wasm"), ("b", "wasm")], 40).await;
    let http = |yaml: String, port: u16| yaml + &format!("  http:\n    port: {port}\n");
    apply(
        cp,
        f.dir.path(),
        &http(component_yaml(ns, "web", &f.reference, 2), 8080),
    )
    .await;
    let api: Api<Placement> = Api::namespaced(client.clone(), ns);
    let placed = wait_placements(&api, ns, "web", "one per node", |m| m.len() == 2).await;
    let ports: Vec<u16> = placed
        .values()
        .map(|p| p.spec.http.as_ref().expect("an HTTP Placement").target_port)
        .collect();
    assert_eq!(ports[0], ports[1], "one port per component: {ports:?}");
    let port = ports[0];
    assert!((20000..=29999).contains(&port), "{port}");

    // The Service: the component's name, no selector, its port forwarded to the agents'.
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + TIMEOUT;
    let service = loop {
        if let Some(s) = services.get_opt("web").await.unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no Service");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let spec = service.spec.unwrap();
    assert!(spec.selector.is_none());
    let service_port = &spec.ports.unwrap()[0];
    assert_eq!(service_port.port, 8080);
    assert_eq!(
        service_port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(port)))
    );
    let components: Api<WasmComponent> = Api::namespaced(client.clone(), ns);
    let c = components.get("web").await.unwrap();
    assert_eq!(
        service.metadata.owner_references.unwrap()[0].uid,
        c.uid().unwrap()
    );

    // Endpoints follow the agents' reports: none until ready, then each ready node.
    wait_slice(&client, ns, "web", Some(vec![])).await;
    let (a, b) = (&placed[&format!("{ns}-a")], &placed[&format!("{ns}-b")]);
    let (addr_a, addr_b) = (
        fake_address(&a.spec.node_name),
        fake_address(&b.spec.node_name),
    );
    report(&api, a, 1, None).await;
    wait_slice(&client, ns, "web", Some(vec![addr_a.clone()])).await;
    report(&api, b, 1, None).await;
    let mut both = vec![addr_a.clone(), addr_b.clone()];
    both.sort();
    wait_slice(&client, ns, "web", Some(both)).await;
    report(&api, a, 0, None).await;
    wait_slice(&client, ns, "web", Some(vec![addr_b.clone()])).await;

    // A second HTTP component gets a port of its own.
    apply(
        cp,
        f.dir.path(),
        &http(component_yaml(ns, "api", &f.reference, 1), 80),
    )
    .await;
    let other = wait_placements(&api, ns, "api", "one", |m| m.len() == 1).await;
    let other_port = other
        .values()
        .next()
        .unwrap()
        .spec
        .http
        .as_ref()
        .unwrap()
        .target_port;
    assert_ne!(other_port, port);

    // Revoked: the Service and its endpoints go with the Placements.
    let sources: Api<TrustSource> = Api::all(client.clone());
    sources
        .delete(&f.source, &DeleteParams::default())
        .await
        .unwrap();
    wait_placements(&api, ns, "web", "none", BTreeMap::is_empty).await;
    wait_slice(&client, ns, "web", None).await;
    let deadline = Instant::now() + TIMEOUT;
    while services.get_opt("web").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the Service stayed after revocation"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_running(op);
}
