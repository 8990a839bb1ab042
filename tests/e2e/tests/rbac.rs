//! Who may approve, with real RBAC: the chart's people-facing roles, rendered by the real
//! `helm` and enforced by the real API server. Tenants run components but can never write a
//! `TrustSource`; approvers can; namespace editors become tenants through aggregation. An
//! agent's own credentials (a token bound to its node) write only its node's Placement status
//! and Lease, and read no Secrets.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use airssys_test_support::{ControlPlane, repo_root};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Renders the chart's user roles with the real helm and applies them as cluster admin.
async fn install_user_roles(cp: &ControlPlane) {
    let chart = repo_root().join("charts/airssys-wasm");
    let out = cp
        .helm([
            "template",
            "airssys-wasm",
            chart.to_str().unwrap(),
            "--kube-version",
            "1.34.0",
            "--set",
            "rbac.create=false,operator.enabled=false,agent.enabled=false",
        ])
        .await
        .unwrap();
    assert!(out.status.success(), "helm template: {}", text(&out));
    let rendered = cp.dir().join("user-roles.yaml");
    std::fs::write(&rendered, &out.stdout).unwrap();
    let out = cp
        .kubectl(["apply", "--server-side", "-f", rendered.to_str().unwrap()])
        .await
        .unwrap();
    assert!(out.status.success(), "apply roles: {}", text(&out));
}

/// Writes `yaml` to a file in the control plane's directory and returns its path.
fn manifest(cp: &ControlPlane, name: &str, yaml: &str) -> std::path::PathBuf {
    let path = cp.dir().join(name);
    std::fs::write(&path, yaml).unwrap();
    path
}

fn component(namespace: &str) -> String {
    format!(
        "apiVersion: wasm.airssys.dev/v1alpha1\nkind: WasmComponent\nmetadata:\n  name: tenant-echo\n  namespace: {namespace}\nspec:\n  artifact:\n    oci: {{ reference: registry.example.com/team/echo:1.0 }}\n"
    )
}

fn trust_source(name: &str) -> String {
    format!(
        "apiVersion: wasm.airssys.dev/v1alpha1\nkind: TrustSource\nmetadata:\n  name: {name}\nspec:\n  decision: Trust\n  registries:\n    - repository: registry.example.com/team/**\n"
    )
}

async fn apply_as(cp: &ControlPlane, kubeconfig: &Path, file: &Path) -> Output {
    cp.kubectl_as(kubeconfig, ["apply", "-f", file.to_str().unwrap()])
        .await
        .unwrap()
}

async fn can_i(cp: &ControlPlane, kubeconfig: &Path, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let out = cp.kubectl_as(kubeconfig, all).await.unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_runs_components_but_cannot_write_trust_sources() {
    let cp = ControlPlane::shared().await.unwrap();
    install_user_roles(cp).await;
    let ns = cp.create_namespace("rbac-tenant").await.unwrap();
    let other_ns = cp.create_namespace("rbac-other").await.unwrap();

    let sa = manifest(
        cp,
        &format!("{ns}-tenant.yaml"),
        &format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: tenant\n  namespace: {ns}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: tenant\n  namespace: {ns}\n\
             roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: airssys-wasm:tenant\n\
             subjects:\n  - kind: ServiceAccount\n    name: tenant\n    namespace: {ns}\n"
        ),
    );
    let out = cp
        .kubectl(["apply", "-f", sa.to_str().unwrap()])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let tenant = cp.service_account_kubeconfig(&ns, "tenant").await.unwrap();

    // A TrustSource the tenant will try to edit.
    let existing = manifest(cp, "rbac-existing-ts.yaml", &trust_source("rbac-existing"));
    let out = cp
        .kubectl(["apply", "-f", existing.to_str().unwrap()])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let mine = manifest(cp, &format!("{ns}-component.yaml"), &component(&ns));
    let out = apply_as(cp, &tenant, &mine).await;
    assert!(
        out.status.success(),
        "tenant creates a WasmComponent in its namespace: {}",
        text(&out)
    );

    let theirs = manifest(
        cp,
        &format!("{other_ns}-component.yaml"),
        &component(&other_ns),
    );
    let out = apply_as(cp, &tenant, &theirs).await;
    assert!(
        !out.status.success(),
        "tenant wrote into another namespace: {}",
        text(&out)
    );
    assert!(text(&out).contains("forbidden"), "{}", text(&out));

    let own_source = manifest(
        cp,
        &format!("{ns}-ts.yaml"),
        &trust_source(&format!("{ns}-self-trust")),
    );
    let out = apply_as(cp, &tenant, &own_source).await;
    assert!(
        !out.status.success(),
        "tenant created a TrustSource: {}",
        text(&out)
    );
    assert!(text(&out).contains("forbidden"), "{}", text(&out));

    let out = cp
        .kubectl_as(
            &tenant,
            [
                "patch",
                "trustsource",
                "rbac-existing",
                "--type=merge",
                "-p",
                r#"{"spec":{"registries":[{"repository":"evil.io/**"}]}}"#,
            ],
        )
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "tenant edited a TrustSource: {}",
        text(&out)
    );
    assert!(text(&out).contains("forbidden"), "{}", text(&out));

    let out = cp
        .kubectl_as(&tenant, ["delete", "trustsource", "rbac-existing"])
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "tenant deleted a TrustSource: {}",
        text(&out)
    );

    // Status is the operator's to write, even on the tenant's own component.
    assert!(
        !can_i(
            cp,
            &tenant,
            &["patch", "wasmcomponents", "--subresource=status", "-n", &ns]
        )
        .await,
        "tenant may not write status"
    );
    assert!(
        can_i(
            cp,
            &tenant,
            &["patch", "wasmcomponents", "--subresource=scale", "-n", &ns]
        )
        .await,
        "tenant may scale"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_writes_trust_sources() {
    let cp = ControlPlane::shared().await.unwrap();
    install_user_roles(cp).await;
    let binding = manifest(
        cp,
        "rbac-approver-binding.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: e2e-approvers\n\
         roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: airssys-wasm:approver\n\
         subjects:\n  - apiGroup: rbac.authorization.k8s.io\n    kind: Group\n    name: e2e:approvers\n",
    );
    let out = cp
        .kubectl(["apply", "-f", binding.to_str().unwrap()])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let approver = cp
        .user_kubeconfig("alice@example.com", Some("e2e:approvers"))
        .unwrap();
    let nobody = cp.user_kubeconfig("mallory@example.com", None).unwrap();

    let source = manifest(cp, "rbac-approved-ts.yaml", &trust_source("rbac-approved"));
    let out = apply_as(cp, &approver, &source).await;
    assert!(
        out.status.success(),
        "approver creates a TrustSource: {}",
        text(&out)
    );
    assert!(
        can_i(
            cp,
            &approver,
            &["list", "wasmcomponents", "--all-namespaces"]
        )
        .await
    );
    assert!(
        !can_i(
            cp,
            &approver,
            &["create", "wasmcomponents", "-n", "default"]
        )
        .await
    );

    let out = apply_as(cp, &nobody, &source).await;
    assert!(
        !out.status.success(),
        "an unbound user wrote a TrustSource: {}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_editors_become_tenants_through_aggregation() {
    let cp = ControlPlane::shared().await.unwrap();
    install_user_roles(cp).await;
    let ns = cp.create_namespace("rbac-edit").await.unwrap();
    let binding = manifest(
        cp,
        &format!("{ns}-edit.yaml"),
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: editors\n  namespace: {ns}\n\
             roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: edit\n\
             subjects:\n  - apiGroup: rbac.authorization.k8s.io\n    kind: User\n    name: bob@example.com\n"
        ),
    );
    let out = cp
        .kubectl(["apply", "-f", binding.to_str().unwrap()])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let editor = cp.user_kubeconfig("bob@example.com", None).unwrap();

    // The clusterrole-aggregation controller folds our rules into `edit` asynchronously.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !can_i(cp, &editor, &["create", "wasmcomponents", "-n", &ns]).await {
        assert!(
            Instant::now() < deadline,
            "edit never gained wasmcomponents: aggregation failed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        !can_i(cp, &editor, &["create", "trustsources"]).await,
        "edit must not reach TrustSources"
    );
}

fn placement(namespace: &str, name: &str, node: &str) -> String {
    format!(
        "apiVersion: wasm.airssys.dev/v1alpha1\nkind: Placement\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         spec:\n  nodeName: {node}\n  component: {{ name: echo, uid: 0b0e0c2a-0000-4000-8000-000000000001, generation: 1 }}\n\
         \x20 digest: sha256:{hex}\n  artifact:\n    oci: {{ reference: registry.example.com/team/echo:1.0 }}\n  instances: 1\n",
        hex = "ab".repeat(32)
    )
}

fn lease(name: &str, holder: &str) -> String {
    format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: {name}\n  namespace: airssys-system\n\
         spec:\n  holderIdentity: {holder}\n  leaseDurationSeconds: 40\n"
    )
}

/// Waits until the admission policy is in force (a policy is enforced a moment after it is
/// created): tries to take a fresh Lease of another node under a new name each time (a
/// repeated apply of an unchanged object sends nothing), until one is refused; returns that
/// refusal. Probes that got through before are deleted.
async fn wait_until_enforced(cp: &ControlPlane, kubeconfig: &Path) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    for attempt in 0.. {
        let name = format!("airssys-agent-probe-{attempt}");
        let file = manifest(
            cp,
            &format!("rbac-{name}.yaml"),
            &lease(&name, "rbac-node-b"),
        );
        let out = apply_as(cp, kubeconfig, &file).await;
        if !out.status.success() || Instant::now() > deadline {
            return out;
        }
        let _ = cp
            .kubectl(["delete", "lease", &name, "-n", "airssys-system"])
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_writes_only_its_own_nodes_objects_and_reads_no_secrets() {
    let cp = ControlPlane::shared().await.unwrap();
    cp.install_chart("airssys-system", &[]).await.unwrap();
    let ns = cp.create_namespace("rbac-agent").await.unwrap();
    cp.create_node("rbac-node-a", &[]).await.unwrap();
    cp.create_node("rbac-node-b", &[]).await.unwrap();
    let placements = manifest(
        cp,
        &format!("{ns}-placements.yaml"),
        &format!(
            "{}---\n{}",
            placement(&ns, "echo-a", "rbac-node-a"),
            placement(&ns, "echo-b", "rbac-node-b")
        ),
    );
    let out = cp
        .kubectl(["apply", "-f", placements.to_str().unwrap()])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let agent_a = cp
        .node_bound_kubeconfig("airssys-system", "airssys-wasm-agent", "rbac-node-a")
        .await
        .unwrap();
    let status_patch = |name: &'static str| {
        let ns = ns.clone();
        let agent_a = agent_a.clone();
        async move {
            cp.kubectl_as(
                &agent_a,
                [
                    "patch",
                    "placement",
                    name,
                    "-n",
                    &ns,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    r#"{"status":{"readyInstances":1}}"#,
                ],
            )
            .await
            .unwrap()
        }
    };

    // The admission policy takes a moment to be enforced.
    let out = wait_until_enforced(cp, &agent_a).await;
    assert!(
        !out.status.success(),
        "node a's agent took a Lease held by node b: {}",
        text(&out)
    );
    assert!(text(&out).contains("own node's Lease"), "{}", text(&out));
    let lease_b = manifest(
        cp,
        "rbac-lease-b.yaml",
        &lease("airssys-agent-rbac-node-b", "rbac-node-b"),
    );
    let out = apply_as(cp, &agent_a, &lease_b).await;
    assert!(
        !out.status.success(),
        "node a's agent took node b's Lease: {}",
        text(&out)
    );

    let lease_a = manifest(
        cp,
        "rbac-lease-a.yaml",
        &lease("airssys-agent-rbac-node-a", "rbac-node-a"),
    );
    let out = apply_as(cp, &agent_a, &lease_a).await;
    assert!(out.status.success(), "own Lease: {}", text(&out));
    let posing = manifest(
        cp,
        "rbac-lease-posing.yaml",
        &lease("airssys-agent-rbac-node-a", "rbac-node-b"),
    );
    let out = apply_as(cp, &agent_a, &posing).await;
    assert!(
        !out.status.success(),
        "own Lease, other holder: {}",
        text(&out)
    );

    let out = status_patch("echo-a").await;
    assert!(out.status.success(), "own Placement status: {}", text(&out));
    let out = status_patch("echo-b").await;
    assert!(
        !out.status.success(),
        "node a's agent wrote node b's Placement status: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("own node's Placements"),
        "{}",
        text(&out)
    );

    // The spec is the operator's; Secrets and Nodes are nobody's business of an agent.
    let out = cp
        .kubectl_as(
            &agent_a,
            [
                "patch",
                "placement",
                "echo-a",
                "-n",
                &ns,
                "--type=merge",
                "-p",
                r#"{"spec":{"instances":5}}"#,
            ],
        )
        .await
        .unwrap();
    assert!(!out.status.success(), "agent edited a spec: {}", text(&out));
    for (verb, resource, namespace) in [
        ("get", "secrets", ns.as_str()),
        ("list", "secrets", "airssys-system"),
        ("get", "nodes", "default"),
        ("get", "configmaps", ns.as_str()),
        ("delete", "placements", ns.as_str()),
    ] {
        assert!(
            !can_i(cp, &agent_a, &[verb, resource, "-n", namespace]).await,
            "an agent may not {verb} {resource} in {namespace}"
        );
    }
    assert!(
        can_i(
            cp,
            &agent_a,
            &[
                "get",
                "configmaps/airssys-artifact-ca",
                "-n",
                "airssys-system"
            ]
        )
        .await,
        "the artifact server's CA is readable"
    );

    // A token that names no node writes nothing.
    let unbound = cp
        .service_account_kubeconfig("airssys-system", "airssys-wasm-agent")
        .await
        .unwrap();
    let out = cp
        .kubectl_as(
            &unbound,
            [
                "patch",
                "placement",
                "echo-a",
                "-n",
                &ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"readyInstances":0}}"#,
            ],
        )
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "an unbound agent token wrote status: {}",
        text(&out)
    );
    assert!(text(&out).contains("bound to a node"), "{}", text(&out));
}
