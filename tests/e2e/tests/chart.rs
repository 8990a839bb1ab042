//! The Helm chart as a platform team meets it, with the real helm against the real API server:
//! strict lint, a values schema that refuses mistakes before anything is created, and the
//! whole life of a release installed from an OCI registry (`helm push` / `helm install
//! oci://`): the workloads with Pod Security `restricted` contexts (admitted by the API
//! server's PodSecurity admission), the roles and what they forbid, the TrustSource admission
//! policy, a CRD change applied by `helm upgrade`, and `helm uninstall` keeping the CRDs and
//! everyone's components.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::process::Output;
use std::time::{Duration, Instant};

use airssys_test_support::chart::{ImageBinaries, chart_dir, push_chart, push_images};
use airssys_test_support::dev;
use airssys_test_support::{ControlPlane, ControlPlaneOptions, Registry};
use serde_json::Value;

const RELEASE: &str = "airssys-wasm";
const NS: &str = "airssys-system";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn kubectl(cp: &ControlPlane, args: &[&str]) -> Output {
    cp.kubectl(args).await.unwrap()
}

async fn kubectl_ok(cp: &ControlPlane, args: &[&str]) -> String {
    let out = kubectl(cp, args).await;
    assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

async fn get_json(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&kubectl_ok(cp, &all).await).unwrap()
}

/// Runs `kubectl` as `user` (in `groups`) through impersonation by the admin.
async fn kubectl_as_user(cp: &ControlPlane, user: &str, groups: &[&str], args: &[&str]) -> Output {
    let mut all: Vec<String> = vec![format!("--as={user}")];
    all.extend(groups.iter().map(|g| format!("--as-group={g}")));
    all.extend(args.iter().map(|a| (*a).to_owned()));
    cp.kubectl(&all).await.unwrap()
}

fn write(cp: &ControlPlane, name: &str, yaml: &str) -> String {
    let path = cp.dir().join(name);
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_chart_passes_helm_lint_strict_with_every_option() {
    let chart = chart_dir().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    for values in [
        "",
        "serviceMonitor.enabled=true,networkPolicy.enabled=true,devMode.enabled=true,\
         agent.persistence.hostPath=/var/lib/airssys-agent,operator.replicas=1,\
         operator.image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000,\
         clusterDNS=false",
        "rbac.create=false,rbac.userRoles=false,admissionPolicies.enabled=false,crds.install=false",
    ] {
        let mut args = vec!["lint", "--strict", chart.as_str()];
        if !values.is_empty() {
            args.extend(["--set", values]);
        }
        let out = airssys_test_support::run_tool(dir.path(), "helm", &args);
        assert!(out.is_ok(), "helm lint --strict --set {values}: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_the_schema_refuses_fail_the_install_and_create_nothing() {
    let cp = ControlPlane::shared().await.unwrap();
    let ns = cp.create_namespace("chart-schema").await.unwrap();
    let chart = chart_dir().display().to_string();
    // One row per kind of mistake: the value, and what helm must say about it.
    let cases = [
        (
            "operatr.replicas=2",
            "additional properties 'operatr' not allowed",
        ),
        ("operator.replicas=two", "/operator/replicas"),
        (
            "agent.image.pullPolicy=Sometimes",
            "/agent/image/pullPolicy",
        ),
        ("operator.image.digest=latest", "/operator/image/digest"),
        (
            "agent.tolerations[0].operator=Maybe",
            "/agent/tolerations/0/operator",
        ),
        ("networkPolicy.enabled=yes-please", "/networkPolicy/enabled"),
    ];
    for (value, expected) in cases {
        let out = cp
            .helm([
                "install",
                "schema-check",
                chart.as_str(),
                "--namespace",
                ns.as_str(),
                "--set",
                value,
            ])
            .await
            .unwrap();
        assert!(
            !out.status.success(),
            "{value} was accepted: {}",
            text(&out)
        );
        let said = text(&out);
        assert!(
            said.contains("values don't meet the specifications of the schema")
                && said.contains(expected),
            "{value}: helm said {said}"
        );
    }
    let releases = cp
        .helm(["list", "--namespace", ns.as_str(), "--all", "-q"])
        .await
        .unwrap();
    assert!(releases.status.success(), "{}", text(&releases));
    assert_eq!(
        String::from_utf8_lossy(&releases.stdout).trim(),
        "",
        "a release was recorded"
    );
    let objects = kubectl_ok(
        cp,
        &[
            "get",
            "deployments,daemonsets,services,serviceaccounts,roles,rolebindings,secrets,configmaps",
            "-n",
            &ns,
            "-l",
            "app.kubernetes.io/instance=schema-check",
            "-o",
            "name",
        ],
    )
    .await;
    assert_eq!(objects.trim(), "", "objects were created");
    let cluster_roles = kubectl(cp, &["get", "clusterrole", "schema-check-operator"]).await;
    assert!(!cluster_roles.status.success(), "a ClusterRole was created");
}

/// The restricted container context, as the chart must set it.
fn assert_restricted(what: &str, pod_spec: &Value) {
    let pod = &pod_spec["securityContext"];
    assert_eq!(pod["runAsNonRoot"], true, "{what}: pod runAsNonRoot");
    assert_eq!(
        pod["seccompProfile"]["type"], "RuntimeDefault",
        "{what}: pod seccomp"
    );
    for container in pod_spec["containers"].as_array().unwrap() {
        let sc = &container["securityContext"];
        assert_eq!(
            sc["allowPrivilegeEscalation"], false,
            "{what}: privilege escalation"
        );
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}: read-only root");
        assert_eq!(sc["runAsNonRoot"], true, "{what}: non-root");
        assert_eq!(sc["runAsUser"], 65532, "{what}: user");
        assert_eq!(
            strings(&sc["capabilities"]["drop"]),
            ["ALL"],
            "{what}: capabilities"
        );
        assert_eq!(
            sc["seccompProfile"]["type"], "RuntimeDefault",
            "{what}: seccomp"
        );
    }
}

/// Pods of `component` in the release namespace, once there are `count` (the controllers
/// create them; the PodSecurity admission of the `restricted` namespace lets them in or not).
async fn wait_for_pods(cp: &ControlPlane, component: &str, count: usize) -> Value {
    let selector = format!("app.kubernetes.io/component={component}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pods = get_json(cp, &["pods", "-n", NS, "-l", &selector]).await;
        if pods["items"].as_array().unwrap().len() >= count {
            return pods;
        }
        if Instant::now() > deadline {
            let events = kubectl_ok(cp, &["get", "events", "-n", NS]).await;
            panic!("no {count} {component} pods; events:\n{events}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_installed_from_an_oci_registry_upgrades_and_uninstalls_safely() {
    // A cluster of its own: the release owns the CRDs and cluster-wide roles.
    let cp = ControlPlane::start(ControlPlaneOptions {
        crd_dir: None,
        ..ControlPlaneOptions::default()
    })
    .await
    .unwrap();
    let registry = Registry::start().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    // The images of this build (the binaries as this test run built them: a no-op inside
    // `cargo test --workspace`, a build when this test runs alone) and the chart, pushed.
    let bin_dir = tokio::task::spawn_blocking(dev::build_workspace_bins_for_tests)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let binaries = ImageBinaries::in_dir(&bin_dir).unwrap();
    let pushed = push_images(&registry, &binaries, "test").await.unwrap();
    let reference = push_chart(&registry, &chart_dir(), work.path()).unwrap();

    // The product namespace enforces Pod Security `restricted`.
    kubectl_ok(&cp, &["create", "namespace", NS]).await;
    kubectl_ok(
        &cp,
        &[
            "label",
            "namespace",
            NS,
            "pod-security.kubernetes.io/enforce=restricted",
        ],
    )
    .await;
    cp.create_node("chart-node-1", &[]).await.unwrap();

    let images = pushed.values().join(",");
    let out = cp
        .helm([
            "install",
            RELEASE,
            reference.as_str(),
            "--version",
            "0.1.0",
            "--plain-http",
            "--namespace",
            NS,
            "--set",
            images.as_str(),
        ])
        .await
        .unwrap();
    assert!(out.status.success(), "helm install oci://: {}", text(&out));
    assert!(
        text(&out).contains("kubectl wasm approve"),
        "NOTES say what to do next: {}",
        text(&out)
    );

    // The CRDs are the release's, and kept by policy.
    for crd in [
        "wasmcomponents.wasm.airssys.dev",
        "trustsources.wasm.airssys.dev",
        "placements.wasm.airssys.dev",
    ] {
        kubectl_ok(
            &cp,
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd",
                crd,
            ],
        )
        .await;
        let crd = get_json(&cp, &["crd", crd]).await;
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{crd}"
        );
    }

    // The operator: two replicas electing a leader, probes, the artifact server behind a
    // Service whose name its certificate carries, the agents' account the only one served.
    let deployment = get_json(&cp, &["deployment", "-n", NS, "airssys-wasm-operator"]).await;
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod_spec = &deployment["spec"]["template"]["spec"];
    assert_restricted("operator", pod_spec);
    let container = &pod_spec["containers"][0];
    // The image this build pushed, pinned by digest.
    assert_eq!(
        container["image"],
        format!("{}@{}", pushed.operator.repository, pushed.operator.digest)
    );
    let args = strings(&container["args"]);
    for want in [
        "run",
        "--leader-elect",
        "--namespace=airssys-system",
        "--metrics-addr=0.0.0.0:8080",
        "--artifact-addr=0.0.0.0:8443",
        "--agent-service-account=airssys-system:airssys-wasm-agent",
        "--artifact-server-names=airssys-wasm-operator.airssys-system.svc,airssys-wasm-operator.airssys-system.svc.cluster.local",
    ] {
        assert!(
            args.iter().any(|a| a == want),
            "operator args {args:?} lack {want}"
        );
    }
    assert!(
        !args.iter().any(|a| a == "--dev-mode"),
        "dev mode is off by default"
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let service = get_json(&cp, &["service", "-n", NS, "airssys-wasm-operator"]).await;
    let ports: Vec<(String, u64)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(ports.contains(&("artifacts".to_owned(), 8443)), "{ports:?}");
    assert!(ports.contains(&("metrics".to_owned(), 8080)), "{ports:?}");

    // The agent: one per node, its node from the downward API, its state on a volume.
    let daemonset = get_json(&cp, &["daemonset", "-n", NS, "airssys-wasm-agent"]).await;
    let pod_spec = &daemonset["spec"]["template"]["spec"];
    assert_restricted("agent", pod_spec);
    assert_eq!(pod_spec["serviceAccountName"], "airssys-wasm-agent");
    let container = &pod_spec["containers"][0];
    assert_eq!(
        container["image"],
        format!("{}@{}", pushed.agent.repository, pushed.agent.digest)
    );
    let env = container["env"].as_array().unwrap();
    let node_name = env
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    // HTTP components are served on the Pod IP, which the agent announces for EndpointSlices.
    let pod_ip = env.iter().find(|e| e["name"] == "POD_IP").expect("POD_IP");
    assert_eq!(pod_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    let args = strings(&container["args"]);
    for want in [
        "run",
        "--artifact-server=https://airssys-wasm-operator.airssys-system.svc:8443",
        "--data-dir=/var/lib/airssys-agent",
        "--namespace=airssys-system",
        "--memory-capacity=4Gi",
    ] {
        assert!(
            args.iter().any(|a| a == want),
            "agent args {args:?} lack {want}"
        );
    }
    let mounts = container["volumeMounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == "/var/lib/airssys-agent"),
        "{mounts:?}"
    );

    // The restricted namespace admits the Pods the controllers make (no kubelet runs them).
    let pods = wait_for_pods(&cp, "operator", 2).await;
    assert_eq!(pods["items"].as_array().unwrap().len(), 2);
    let pods = wait_for_pods(&cp, "agent", 1).await;
    assert_eq!(
        pods["items"][0]["spec"]["nodeName"],
        Value::Null,
        "not scheduled here"
    );

    for role in [
        "clusterrole/airssys-wasm-operator",
        "clusterrole/airssys-wasm-agent",
        "clusterrole/airssys-wasm:tenant",
        "clusterrole/airssys-wasm:approver",
        "clusterrole/airssys-wasm:viewer",
    ] {
        kubectl_ok(&cp, &["get", role]).await;
    }
    kubectl_ok(
        &cp,
        &[
            "get",
            "role,rolebinding",
            "-n",
            NS,
            "airssys-wasm-operator",
            "airssys-wasm-agent",
        ],
    )
    .await;

    // A tenant: a namespace editor (aggregation makes them a tenant), runs a component.
    kubectl_ok(&cp, &["create", "namespace", "team-a"]).await;
    kubectl_ok(
        &cp,
        &[
            "create",
            "rolebinding",
            "editors",
            "-n",
            "team-a",
            "--clusterrole=edit",
            "--user=dev@team-a",
        ],
    )
    .await;
    let component = write(
        &cp,
        "component.yaml",
        "apiVersion: wasm.airssys.dev/v1alpha1\nkind: WasmComponent\nmetadata:\n  name: echo\n  namespace: team-a\n\
         spec:\n  artifact:\n    oci: { reference: registry.example.com/team-a/echo:1.0 }\n",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = kubectl_as_user(&cp, "dev@team-a", &[], &["apply", "-f", &component]).await;
        if out.status.success() {
            break;
        }
        // The aggregation controller folds the tenant rules into `edit` asynchronously.
        assert!(
            Instant::now() < deadline,
            "the editor never could apply: {}",
            text(&out)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // ... and cannot approve: neither a TrustSource (what GitOps and `kubectl wasm approve`
    // write) nor the component's Approved condition.
    let approval = write(
        &cp,
        "approval.yaml",
        "apiVersion: wasm.airssys.dev/v1alpha1\nkind: TrustSource\nmetadata:\n  name: approvals-team-a\n\
         spec:\n  decision: Trust\n  digests:\n    - digest: sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n\
         \x20     components: [{ namespace: team-a, name: echo }]\n      capabilities: {}\n",
    );
    let out = kubectl_as_user(&cp, "dev@team-a", &[], &["apply", "-f", &approval]).await;
    assert!(
        !out.status.success(),
        "a tenant wrote an approval: {}",
        text(&out)
    );
    assert!(text(&out).contains("forbidden"), "{}", text(&out));
    let out = kubectl_as_user(
        &cp,
        "dev@team-a",
        &[],
        &[
            "patch", "wasmcomponent", "echo", "-n", "team-a", "--subresource=status", "--type=merge",
            "-p", r#"{"status":{"approvedDigest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}"#,
        ],
    )
    .await;
    assert!(
        !out.status.success(),
        "a tenant wrote its component's status: {}",
        text(&out)
    );
    assert!(text(&out).contains("forbidden"), "{}", text(&out));

    // The agent's account reads no Secrets, in its namespace or anywhere.
    let agent = "system:serviceaccount:airssys-system:airssys-wasm-agent";
    for args in [
        vec!["get", "secrets", "-n", NS],
        vec!["get", "secrets", "-A"],
    ] {
        let out = kubectl_as_user(&cp, agent, &["system:serviceaccounts"], &args).await;
        assert!(
            !out.status.success(),
            "the agent read Secrets: {}",
            text(&out)
        );
        assert!(text(&out).contains("forbidden"), "{}", text(&out));
    }

    // A CI account that RBAC lets write TrustSources, but that no one made an approver: the
    // admission policy refuses it. (A policy is enforced a moment after it is created.)
    let ci_role = write(
        &cp,
        "ci-role.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: ci-writer\nrules:\n\
         \x20 - apiGroups: [wasm.airssys.dev]\n    resources: ['*']\n    verbs: [get, list, create, update, patch, delete]\n",
    );
    kubectl_ok(&cp, &["apply", "-f", &ci_role]).await;
    kubectl_ok(
        &cp,
        &[
            "create",
            "clusterrolebinding",
            "ci-writer",
            "--clusterrole=ci-writer",
            "--user=ci-bot",
        ],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let out = kubectl_as_user(&cp, "ci-bot", &[], &["create", "-f", &approval]).await;
        if !out.status.success() {
            break out;
        }
        kubectl_ok(&cp, &["delete", "trustsource", "approvals-team-a"]).await;
        assert!(
            Instant::now() < deadline,
            "the TrustSource policy was never enforced"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        text(&refused).contains("only approvers may change TrustSources"),
        "{}",
        text(&refused)
    );
    // An approver may.
    kubectl_ok(
        &cp,
        &[
            "create",
            "clusterrolebinding",
            "approvers",
            "--clusterrole=airssys-wasm:approver",
            "--group=platform-approvers",
        ],
    )
    .await;
    let out = kubectl_as_user(
        &cp,
        "alice",
        &["platform-approvers"],
        &["create", "-f", &approval],
    )
    .await;
    assert!(
        out.status.success(),
        "the approver was refused: {}",
        text(&out)
    );
    // ... and the CI account cannot change or delete what the approver wrote.
    let out = kubectl_as_user(
        &cp,
        "ci-bot",
        &[],
        &["delete", "trustsource", "approvals-team-a"],
    )
    .await;
    assert!(
        !out.status.success(),
        "ci-bot deleted an approval: {}",
        text(&out)
    );

    // `helm upgrade` applies a CRD change (Helm never upgrades a crds/ directory).
    let upgraded = work.path().join("chart-upgraded");
    let out = std::process::Command::new("cp")
        .args(["-r"])
        .arg(chart_dir())
        .arg(&upgraded)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let crd_file = upgraded.join("files/crds/wasmcomponents.yaml");
    let crd_text = std::fs::read_to_string(&crd_file).unwrap();
    let changed = crd_text.replacen(
        "categories:\n    - airssys\n",
        "categories:\n    - airssys\n    - upgraded\n",
        1,
    );
    assert_ne!(changed, crd_text, "the test's CRD edit applies");
    std::fs::write(&crd_file, changed).unwrap();
    let out = cp
        .helm([
            "upgrade",
            RELEASE,
            upgraded.to_str().unwrap(),
            "--namespace",
            NS,
            "--reuse-values",
        ])
        .await
        .unwrap();
    assert!(out.status.success(), "helm upgrade: {}", text(&out));
    let crd = get_json(&cp, &["crd", "wasmcomponents.wasm.airssys.dev"]).await;
    assert!(
        strings(&crd["spec"]["names"]["categories"]).contains(&"upgraded".to_owned()),
        "the upgrade did not reach the CRD: {}",
        crd["spec"]["names"]
    );

    // `helm uninstall` removes the product but keeps the CRDs and users' objects.
    let out = cp
        .helm(["uninstall", RELEASE, "--namespace", NS])
        .await
        .unwrap();
    assert!(out.status.success(), "helm uninstall: {}", text(&out));
    assert!(
        !kubectl(
            &cp,
            &["get", "deployment", "-n", NS, "airssys-wasm-operator"]
        )
        .await
        .status
        .success()
    );
    assert!(
        !kubectl(&cp, &["get", "clusterrole", "airssys-wasm:tenant"])
            .await
            .status
            .success()
    );
    for crd in [
        "wasmcomponents.wasm.airssys.dev",
        "trustsources.wasm.airssys.dev",
        "placements.wasm.airssys.dev",
    ] {
        kubectl_ok(&cp, &["get", "crd", crd]).await;
    }
    kubectl_ok(&cp, &["get", "wasmcomponent", "echo", "-n", "team-a"]).await;
    kubectl_ok(&cp, &["get", "trustsource", "approvals-team-a"]).await;

    // Installing again adopts the kept CRDs.
    let out = cp
        .helm([
            "install",
            RELEASE,
            reference.as_str(),
            "--version",
            "0.1.0",
            "--plain-http",
            "--namespace",
            NS,
            "--set",
            images.as_str(),
        ])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "helm install after uninstall: {}",
        text(&out)
    );
    kubectl_ok(&cp, &["get", "wasmcomponent", "echo", "-n", "team-a"]).await;
}
