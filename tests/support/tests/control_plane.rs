//! The harness against itself: the control plane it starts is a real, secured Kubernetes API
//! (TLS, RBAC, admission, CEL), its controllers run, and its processes do not leak.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic like the tests they serve"
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airssys_test_support::{ControlPlane, ControlPlaneOptions, Supervised, wait_for};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Resource};

const TIMEOUT: Duration = Duration::from_secs(60);

/// This binary's shared control plane. Unlike `ControlPlane::shared()` it installs none of the
/// product's CRDs, so the harness is tested on its own.
static CLUSTER: tokio::sync::OnceCell<ControlPlane> = tokio::sync::OnceCell::const_new();

async fn cluster() -> &'static ControlPlane {
    CLUSTER
        .get_or_try_init(|| {
            ControlPlane::start(ControlPlaneOptions {
                crd_dir: None,
                ..ControlPlaneOptions::default()
            })
        })
        .await
        .unwrap()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn config_map(name: &str, owner: Option<&ConfigMap>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            owner_references: owner
                .and_then(|o| o.controller_owner_ref(&()))
                .map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reaches_the_pinned_api_server_over_tls_as_admin() {
    let cp = cluster().await;
    let out = cp.kubectl(["version", "-o", "json"]).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let version: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(version["serverVersion"]["gitVersion"], "v1.34.4");
    assert_eq!(version["clientVersion"]["gitVersion"], "v1.34.4");

    let out = cp.kubectl(["auth", "whoami", "-o", "json"]).await.unwrap();
    let whoami = text(&out.stdout);
    assert!(whoami.contains("airssys-admin"), "{whoami}");
    assert!(whoami.contains("system:masters"), "{whoami}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_kubeconfig_has_exactly_its_rbac() {
    let cp = cluster().await;
    let ns = cp.create_namespace("rbac").await.unwrap();
    let client = cp.client().await.unwrap();
    let pp = PostParams::default();
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("reader".into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create(&pp, &sa)
        .await
        .unwrap();
    let role = Role {
        metadata: ObjectMeta {
            name: Some("configmap-reader".into()),
            ..ObjectMeta::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            verbs: vec!["get".into(), "list".into()],
            ..PolicyRule::default()
        }]),
    };
    Api::<Role>::namespaced(client.clone(), &ns)
        .create(&pp, &role)
        .await
        .unwrap();
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("reader".into()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "configmap-reader".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "reader".into(),
            namespace: Some(ns.clone()),
            ..Subject::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(client, &ns)
        .create(&pp, &binding)
        .await
        .unwrap();

    let kubeconfig = cp.service_account_kubeconfig(&ns, "reader").await.unwrap();
    let allowed = cp
        .kubectl_as(&kubeconfig, ["get", "configmaps", "-n", ns.as_str()])
        .await
        .unwrap();
    assert!(allowed.status.success(), "{}", text(&allowed.stderr));

    let denied = cp
        .kubectl_as(&kubeconfig, ["create", "configmap", "x", "-n", ns.as_str()])
        .await
        .unwrap();
    assert!(!denied.status.success());
    let stderr = text(&denied.stderr);
    assert!(stderr.contains("forbidden"), "{stderr}");
    assert!(
        stderr.contains(&format!("system:serviceaccount:{ns}:reader")),
        "{stderr}"
    );

    let other = cp
        .kubectl_as(&kubeconfig, ["get", "secrets", "-n", ns.as_str()])
        .await
        .unwrap();
    assert!(!other.status.success());
    assert!(text(&other.stderr).contains("forbidden"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_garbage_collector_deletes_dependents_of_a_deleted_owner() {
    let cp = cluster().await;
    let ns = cp.create_namespace("gc").await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(cp.client().await.unwrap(), &ns);
    let owner = api
        .create(&PostParams::default(), &config_map("owner", None))
        .await
        .unwrap();
    api.create(
        &PostParams::default(),
        &config_map("dependent", Some(&owner)),
    )
    .await
    .unwrap();
    api.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    wait_for_absent(&api, "dependent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_completes() {
    let cp = cluster().await;
    let ns = cp.create_namespace("doomed").await.unwrap();
    let client = cp.client().await.unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &config_map("content", None))
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(client);
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
    // The namespace controller empties it and removes the finalizer.
    wait_for_absent(&namespaces, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_are_established_and_their_cel_rules_enforced() {
    let cp = cluster().await;
    let names = cp
        .install_crd_files(&[fixture("widget-crd.yaml")])
        .await
        .unwrap();
    assert_eq!(names, vec!["widgets.harness.airssys.dev".to_string()]);
    let ns = cp.create_namespace("crd").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    let bad = dir.path().join("bad.yaml");
    let widget = |size: u32| {
        format!(
            "apiVersion: harness.airssys.dev/v1\nkind: Widget\nmetadata:\n  name: w{size}\n  namespace: {ns}\nspec:\n  size: {size}\n"
        )
    };
    std::fs::write(&good, widget(3)).unwrap();
    std::fs::write(&bad, widget(9)).unwrap();

    let out = cp
        .kubectl(["apply", "-f", good.to_str().unwrap()])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cp
        .kubectl(["apply", "-f", bad.to_str().unwrap()])
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("size must be at most 5"),
        "{}",
        text(&out.stderr)
    );

    let out = cp
        .kubectl(["get", "widgets", "-n", ns.as_str()])
        .await
        .unwrap();
    let table = text(&out.stdout);
    assert!(
        table.lines().next().unwrap_or("").contains("SIZE"),
        "{table}"
    );
    assert!(table.contains("w3"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validating_admission_policies_are_enforced() {
    let cp = cluster().await;
    let ns = cp.create_namespace("vap").await.unwrap();
    let policy = format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: no-forbidden-{ns}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: [""]
        apiVersions: ["v1"]
        operations: ["CREATE"]
        resources: ["configmaps"]
  validations:
    - expression: "!has(object.data) || !('forbidden' in object.data)"
      message: configmaps may not carry a forbidden key
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: no-forbidden-{ns}
spec:
  policyName: no-forbidden-{ns}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels:
        kubernetes.io/metadata.name: {ns}
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy).unwrap();
    let out = cp
        .kubectl(["apply", "-f", file.to_str().unwrap()])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Policies take effect once the API server's policy informer has seen them.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let out = cp
            .kubectl([
                "create",
                "configmap",
                "probe",
                "-n",
                ns.as_str(),
                "--from-literal=forbidden=1",
            ])
            .await
            .unwrap();
        let stderr = text(&out.stderr);
        if !out.status.success() {
            assert!(
                stderr.contains("configmaps may not carry a forbidden key"),
                "{stderr}"
            );
            break;
        }
        cp.kubectl(["delete", "configmap", "probe", "-n", ns.as_str()])
            .await
            .unwrap();
        assert!(Instant::now() < deadline, "the policy was never enforced");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out = cp
        .kubectl([
            "create",
            "configmap",
            "fine",
            "-n",
            ns.as_str(),
            "--from-literal=ok=1",
        ])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_from_the_harness_talks_to_the_cluster() {
    let cp = cluster().await;
    let out = cp.helm(["version", "--short"]).await.unwrap();
    assert!(
        text(&out.stdout).starts_with("v3.22.0"),
        "{}",
        text(&out.stdout)
    );
    let out = cp
        .helm(["list", "--all-namespaces", "-o", "json"])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "[]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_control_plane_stops_all_its_processes_on_drop() {
    let cp = ControlPlane::start(ControlPlaneOptions {
        controller_manager: false,
        crd_dir: None,
        keep_dir: false,
        reachable_from_pods: false,
    })
    .await
    .unwrap();
    let dir = cp.dir().to_path_buf();
    let out = cp.kubectl(["get", "namespaces"]).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pids = pids_of_processes_using(&dir);
    assert!(
        pids.len() >= 2,
        "expected etcd and kube-apiserver, found {pids:?}"
    );
    drop(cp);
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived the drop");
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

/// One test, two roles: run normally it re-runs itself as a child ("owner") that starts a
/// supervised `sleep` and exits without running destructors, then checks the watchdog killed
/// the orphan.
#[test]
fn the_watchdog_kills_children_of_an_owner_that_exits_without_cleanup() {
    const ROLE: &str = "AIRSSYS_WATCHDOG_TEST_PID_FILE";
    if let Some(pid_file) = std::env::var_os(ROLE) {
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("300");
        let dir = tempfile::tempdir().unwrap();
        let sleeper = Supervised::spawn("sleep", cmd, &dir.path().join("sleep.log")).unwrap();
        std::fs::write(pid_file, sleeper.pid().to_string()).unwrap();
        // Like a panic = abort, a SIGKILL or statics at exit: no Drop runs.
        std::process::exit(0);
    }
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_watchdog_kills_children_of_an_owner_that_exits_without_cleanup",
        ])
        .env(ROLE, &pid_file)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!alive(pid), "orphaned child {pid} is still running");
}

/// A process counts as gone once it no longer exists or is a zombie nobody reaped yet.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

/// PIDs whose command line mentions `dir` (our etcd and kube-apiserver do, via flags).
fn pids_of_processes_using(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .filter(|pid| alive(*pid))
        .filter(|pid| {
            // Only the servers, not the directory watchdog (a bash) which is killed on drop too.
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() != "bash")
                .unwrap_or(false)
        })
        .collect()
}

async fn wait_for_absent<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    K::DynamicType: Default,
{
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match api.get_opt(name).await.unwrap() {
            None => return,
            Some(obj) => {
                assert!(
                    Instant::now() < deadline,
                    "{name} still exists after {TIMEOUT:?}:\n{}",
                    serde_yaml::to_string(&obj).unwrap_or_default()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_reports_the_object_when_it_times_out() {
    let cp = cluster().await;
    let ns = cp.create_namespace("wait").await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(cp.client().await.unwrap(), &ns);
    api.create(&PostParams::default(), &config_map("steady", None))
        .await
        .unwrap();
    let err = wait_for(
        &api,
        "steady",
        |cm| cm.data.is_some(),
        Duration::from_secs(1),
    )
    .await
    .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("ConfigMap steady"), "{message}");
    assert!(message.contains("name: steady"), "{message}");
}
