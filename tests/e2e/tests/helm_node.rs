//! `helm install` onto a real node, end to end: a control plane whose API server Pods reach
//! in-cluster, a real Node (containerd, runc, CNI, kubelet, kube-proxy, kube-scheduler), the
//! test registry exposed on the node's address, this build's operator and agent images and the
//! chart pushed there, and the chart installed from it into a Pod Security `restricted`
//! namespace. The operator Deployment's two Pods and the agent DaemonSet's Pod run and become
//! Ready on the node, and the placement scenario goes through the Pods, with exactly the
//! chart's RBAC and admission policies:
//!
//! - the example manifests (`examples/`, pushed and signed as the dev run does) reach their
//!   decisions; the trusted `echo` is `Ready`, its Placement on the real node, run by the agent
//!   Pod, which fetched the bytes from the operator Pods' artifact server through the Service;
//! - the HTTP example `hello-http` is served by the agent Pod on its Pod IP, which its
//!   EndpointSlice lists, and answers there and through its Service's ClusterIP;
//! - the pending `kv-counter`: a tenant (namespace `edit`) cannot approve it, an approver does
//!   with `kubectl wasm approve` (the plugin binary), and it runs;
//! - the dev-mode `scratch` (the `trespasser` guest) tries what it was not granted: the agent
//!   Pod reports `CapabilityDenied` Events;
//! - what the chart must forbid: the agent Pod's token (bound to the Pod, so to the node)
//!   reads no Secrets and cannot write another node's Placement status.
//!
//! Pods have no cluster DNS here, so the chart runs with `clusterDNS=false`: the agent reaches
//! the artifact server at the Service address kubelet puts in its environment.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use airssys_test_support::chart::{ImageBinaries, chart_dir, push_chart, push_images};
use airssys_test_support::dev::{self, EXAMPLE_COMPONENTS, Expected, SigningKey};
use airssys_test_support::{ControlPlane, ControlPlaneOptions, Node, Registry};
use serde_json::{Value, json};

const RELEASE: &str = "airssys-wasm";
const NS: &str = "airssys-system";
const NODE: &str = "helm-node";
/// Pods start within seconds once their images are pulled; components within seconds of
/// their Placement. Generous for a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(180);

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The scenario's cluster, and what the failure messages show.
struct Scenario {
    cp: ControlPlane,
    node: Node,
    /// `kubectl-wasm` is here; put ahead of PATH for `kubectl wasm`.
    bin_dir: PathBuf,
}

impl Scenario {
    async fn kubectl_with(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        let mut path = OsString::from(self.bin_dir.as_os_str());
        if let Some(rest) = std::env::var_os("PATH") {
            path.push(":");
            path.push(rest);
        }
        tokio::process::Command::new(self.cp.tool_path("kubectl").unwrap())
            .args(args)
            .env("PATH", path)
            .env("KUBECONFIG", kubeconfig)
            .env("KUBECACHEDIR", self.cp.dir().join("kubectl-cache"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .unwrap()
    }

    async fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(self.cp.kubeconfig_path(), args).await
    }

    async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    async fn get_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&all).await).unwrap()
    }

    /// Everything that explains a failure: the product's Pods and Events, the Pods' logs, the
    /// kubelet's and containerd's log tails.
    async fn diagnostics(&self) -> String {
        let mut out = String::new();
        for args in [
            vec!["get", "pods", "-A", "-o", "wide"],
            vec!["get", "events", "-n", NS, "--sort-by=.lastTimestamp"],
            vec!["get", "wasmcomponents,placements", "-A"],
            vec![
                "logs",
                "-n",
                NS,
                "-l",
                "app.kubernetes.io/component=operator",
                "--tail=40",
                "--prefix",
            ],
            vec![
                "logs",
                "-n",
                NS,
                "-l",
                "app.kubernetes.io/component=agent",
                "--tail=60",
                "--prefix",
            ],
        ] {
            let result = self.kubectl(&args).await;
            out.push_str(&format!(
                "--- kubectl {}:\n{}\n",
                args.join(" "),
                text(&result)
            ));
        }
        out.push_str(&format!(
            "--- kubelet:\n{}\n--- containerd:\n{}\n",
            self.node.log_tail("kubelet", 30),
            self.node.log_tail("containerd", 20)
        ));
        out
    }

    /// Polls `check` (`Ok` ends the wait, `Err` says what was seen) until `timeout`, then
    /// fails with the last observation and the diagnostics.
    async fn wait_until<T, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match check().await {
                Ok(value) => return value,
                Err(last) => last,
            };
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; last seen: {last}\n{}",
                    self.diagnostics().await
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The Pods of the chart's `component`, once `count` are Running and Ready on the node.
    async fn wait_for_pods(&self, component: &str, count: usize) -> Vec<Value> {
        let selector = format!("app.kubernetes.io/component={component}");
        self.wait_until(
            &format!("{count} {component} Pods Running and Ready"),
            TIMEOUT,
            || async {
                let pods = self.get_json(&["pods", "-n", NS, "-l", &selector]).await;
                let items = pods["items"].as_array().cloned().unwrap_or_default();
                let ready: Vec<Value> = items
                    .iter()
                    .filter(|p| {
                        p["status"]["phase"] == "Running"
                            && p["status"]["conditions"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                    .cloned()
                    .collect();
                if ready.len() == count {
                    Ok(ready)
                } else {
                    Err(items
                        .iter()
                        .map(|p| {
                            format!(
                                "{} {} {}",
                                p["metadata"]["name"], p["status"]["phase"], p["status"]
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n"))
                }
            },
        )
        .await
    }

    /// The component's Placements: `(node, spec.instances, status.readyInstances)`.
    async fn placements(&self, ns: &str, name: &str) -> Vec<(String, i64, i64)> {
        let list = self.get_json(&["placements", "-n", ns]).await;
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["spec"]["component"]["name"] == name)
            .map(|p| {
                (
                    p["spec"]["nodeName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    p["spec"]["instances"].as_i64().unwrap_or(0),
                    p["status"]["readyInstances"].as_i64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Waits until `ns/name` is `Ready` with `replicas`, all in one Placement on the node.
    async fn wait_ready(&self, ns: &str, name: &str, replicas: i64) -> Value {
        self.wait_until(
            &format!("{ns}/{name} Ready with {replicas} replicas on {NODE}"),
            TIMEOUT,
            || async {
                let c = self.get_json(&["wasmcomponent", name, "-n", ns]).await;
                let ready = c["status"]["readyReplicas"].as_i64().unwrap_or(0);
                let condition = c["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                let placed = self.placements(ns, name).await;
                if ready == replicas
                    && condition
                    && placed == [(NODE.to_owned(), replicas, replicas)]
                {
                    Ok(c)
                } else {
                    Err(format!("{placed:?}, {}", c["status"]))
                }
            },
        )
        .await
    }

    /// `events.k8s.io` Events in `ns` about `name` with `reason`.
    async fn events(&self, ns: &str, name: &str, reason: &str) -> Vec<Value> {
        let events = self.get_json(&["events.events.k8s.io", "-n", ns]).await;
        events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["reason"] == reason && e["regarding"]["name"] == name)
            .cloned()
            .collect()
    }
}

/// A kubeconfig authenticating with `token` (nothing else: no client certificate).
fn token_kubeconfig(cp: &ControlPlane, name: &str, token: &str) -> PathBuf {
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "test", "cluster": {
            "server": cp.server(),
            "certificate-authority": cp.ca_cert_path(),
        }}],
        "users": [{ "name": name, "user": { "token": token } }],
        "contexts": [{ "name": name, "context": { "cluster": "test", "user": name } }],
        "current-context": name,
    });
    let path = cp.dir().join(format!("{name}.kubeconfig"));
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_runs_the_placement_scenario_on_a_real_node() {
    let started = Instant::now();
    let mut timings = Vec::new();
    let mark = |what: &str, timings: &mut Vec<String>| {
        timings.push(format!("{what}: {:.1?}", started.elapsed()));
    };
    // This build's binaries (a no-op inside `cargo test --workspace`) and the guests.
    let bin_dir = tokio::task::spawn_blocking(dev::build_workspace_bins_for_tests)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let guests = tokio::task::spawn_blocking(dev::build_guests)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    mark("binaries and guests", &mut timings);

    // A cluster of its own: the release owns the CRDs, and its API server must be reachable
    // from Pods (the shared one stays on loopback).
    let cp = ControlPlane::start(ControlPlaneOptions {
        crd_dir: None,
        reachable_from_pods: true,
        ..ControlPlaneOptions::default()
    })
    .await
    .unwrap();
    let node = cp.start_node(NODE).await.unwrap();
    mark("control plane and node", &mut timings);

    // The registry on the node's address: kubelet pulls the images from it, the operator Pods
    // resolve and verify components there. Everyone uses that one address.
    let mut registry = Registry::start().await.unwrap();
    registry.expose(IpAddr::V4(node.address())).unwrap();
    node.allow_registry(registry.address()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let binaries = ImageBinaries::in_dir(&bin_dir).unwrap();
    let pushed_images = push_images(&registry, &binaries, "test").await.unwrap();
    let chart = push_chart(&registry, &chart_dir(), work.path()).unwrap();
    let key = SigningKey::ensure(&work.path().join("key")).unwrap();
    let pushed = {
        let (address, guests, key, dir) = (
            registry.address().to_owned(),
            guests.clone(),
            key.clone(),
            work.path().join("push"),
        );
        tokio::task::spawn_blocking(move || dev::push_examples(&address, &guests, &key, &dir))
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(pushed.len(), EXAMPLE_COMPONENTS.len());
    mark("images, chart and examples pushed", &mut timings);

    let s = Scenario { cp, node, bin_dir };

    // The product namespace enforces Pod Security `restricted`.
    s.kubectl_ok(&["create", "namespace", NS]).await;
    s.kubectl_ok(&[
        "label",
        "namespace",
        NS,
        "pod-security.kubernetes.io/enforce=restricted",
    ])
    .await;
    let mut values = pushed_images.values();
    values.extend([
        // No cluster DNS in this cluster (see the module docs).
        "clusterDNS=false".to_owned(),
        // The examples' scratch component runs under a DevMode TrustSource.
        "devMode.enabled=true".to_owned(),
        format!("operator.insecureRegistries={{{}}}", registry.address()),
    ]);
    let values = values.join(",");
    let out =
        s.cp.helm([
            "install",
            RELEASE,
            chart.as_str(),
            "--version",
            "0.1.0",
            "--plain-http",
            "--namespace",
            NS,
            "--set",
            values.as_str(),
        ])
        .await
        .unwrap();
    assert!(out.status.success(), "helm install: {}", text(&out));

    // The operator's 2 replicas and the node's agent run and are Ready, on the real node.
    let operators = s.wait_for_pods("operator", 2).await;
    let agents = s.wait_for_pods("agent", 1).await;
    for pod in operators.iter().chain(&agents) {
        assert_eq!(pod["spec"]["nodeName"], NODE, "{}", pod["metadata"]["name"]);
    }
    let agent_pod = agents[0]["metadata"]["name"].as_str().unwrap().to_owned();
    let agent_uid = agents[0]["metadata"]["uid"].as_str().unwrap().to_owned();
    mark("operator and agent Pods Ready", &mut timings);
    // One operator leads (its Pod holds the leader Lease).
    let lease = s
        .get_json(&["lease", "-n", NS, "airssys-operator-leader"])
        .await;
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default();
    assert!(
        operators
            .iter()
            .any(|p| holder.starts_with(p["metadata"]["name"].as_str().unwrap())),
        "leader {holder:?} is not an operator Pod"
    );

    // The examples, as the dev run applies them.
    let rendered = work.path().join("examples");
    dev::render_examples(
        &dev::DevOptions::new().unwrap().examples,
        &rendered,
        registry.address(),
        &key.public_key,
    )
    .unwrap();
    s.kubectl_ok(&["apply", "-f", rendered.to_str().unwrap()])
        .await;
    let client = s.cp.client().await.unwrap();
    let decisions = s
        .wait_until("the examples' decisions", TIMEOUT, || async {
            let mut observed = Vec::new();
            for component in EXAMPLE_COMPONENTS {
                observed.push(dev::observe(&client, component).await.unwrap());
            }
            if observed.iter().all(dev::Observed::as_expected) {
                Ok(observed)
            } else {
                Err(dev::decision_table(&observed))
            }
        })
        .await;
    mark("decisions", &mut timings);

    // The trusted echo runs: 2 replicas in one Placement on the node, run by the agent Pod.
    s.wait_ready("wasm-demo", "echo", 2).await;
    mark("echo Ready", &mut timings);
    let logs = s
        .kubectl_ok(&["logs", "-n", NS, &agent_pod, "--tail=-1"])
        .await;
    assert!(
        logs.contains("echo"),
        "the agent Pod's log does not mention echo:\n{logs}"
    );

    // The HTTP example: served by the agent Pod on its own address (the EndpointSlice lists
    // the Pod IP), reached directly and through the component's Service (kube-proxy).
    s.wait_ready("wasm-demo", "hello-http", 2).await;
    let agent_ip = agents[0]["status"]["podIP"].as_str().unwrap().to_owned();
    let endpoints = s
        .wait_until("hello-http's endpoint", TIMEOUT, || async {
            let slices = s
                .get_json(&[
                    "endpointslices",
                    "-n",
                    "wasm-demo",
                    "-l",
                    "kubernetes.io/service-name=hello-http",
                ])
                .await;
            let mut found = Vec::new();
            for slice in slices["items"].as_array().into_iter().flatten() {
                let port = slice["ports"][0]["port"].as_i64().unwrap_or_default();
                for e in slice["endpoints"].as_array().into_iter().flatten() {
                    if e["conditions"]["ready"] == true {
                        for a in e["addresses"].as_array().into_iter().flatten() {
                            found.push(format!("{}:{port}", a.as_str().unwrap_or_default()));
                        }
                    }
                }
            }
            if found.is_empty() {
                Err(slices.to_string())
            } else {
                Ok(found)
            }
        })
        .await;
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    assert!(
        endpoints[0].starts_with(&format!("{agent_ip}:")),
        "{endpoints:?} is not the agent Pod ({agent_ip})"
    );
    let service = s
        .get_json(&["service", "-n", "wasm-demo", "hello-http"])
        .await;
    let cluster_ip = format!(
        "{}:{}",
        service["spec"]["clusterIP"].as_str().unwrap(),
        service["spec"]["ports"][0]["port"]
    );
    for endpoint in [&endpoints[0], &cluster_ip] {
        let answer = s
            .wait_until(&format!("an answer from {endpoint}"), TIMEOUT, || async {
                airssys_test_support::http_get(endpoint, "hello.example.com", "/hello/world")
                    .await
                    .and_then(|a| if a.starts_with("200 ") { Ok(a) } else { Err(a) })
            })
            .await;
        assert_eq!(answer, "200 hello from /hello/world", "{endpoint}");
    }
    mark("hello-http answers", &mut timings);

    // The pending component: a tenant cannot approve it, an approver can, and then it runs.
    let pending = decisions
        .iter()
        .find(|o| o.component.expected == Expected::PendingApproval)
        .unwrap()
        .component;
    s.kubectl_ok(&[
        "create",
        "rolebinding",
        "editors",
        "-n",
        pending.namespace,
        "--clusterrole=edit",
        "--user=dev@team-a",
    ])
    .await;
    let tenant = s.cp.user_kubeconfig("dev@team-a", None).unwrap();
    let approve = dev::approve_args(&pending);
    let approve: Vec<&str> = approve.iter().map(String::as_str).collect();
    let out = s.kubectl_with(&tenant, &approve).await;
    assert!(
        !out.status.success(),
        "a tenant approved {}: {}",
        pending.id(),
        text(&out)
    );
    assert!(text(&out).contains("forbidden"), "{}", text(&out));
    let out = s.kubectl(&approve).await;
    assert!(out.status.success(), "kubectl wasm approve: {}", text(&out));
    s.wait_ready(pending.namespace, pending.name, 1).await;
    mark("pending approved and Ready", &mut timings);

    // The dev-mode trespasser tries what it was not granted: denials, as Events from the agent
    // on the node.
    let scratch = EXAMPLE_COMPONENTS
        .iter()
        .find(|c| c.expected == Expected::DevMode)
        .unwrap();
    let denials = s
        .wait_until("CapabilityDenied Events", TIMEOUT, || async {
            let found = s
                .events(scratch.namespace, scratch.name, "CapabilityDenied")
                .await;
            if found.is_empty() {
                Err("none".to_owned())
            } else {
                Ok(found)
            }
        })
        .await;
    for event in &denials {
        assert_eq!(event["reportingInstance"], NODE, "{event}");
    }
    mark("CapabilityDenied", &mut timings);

    // What the chart's agent role forbids, with the agent Pod's own kind of token: bound to
    // the Pod (so the API server adds the node's name, which the admission policy checks).
    let out = s
        .kubectl_ok(&[
            "create",
            "token",
            "airssys-wasm-agent",
            "-n",
            NS,
            "--bound-object-kind=Pod",
            &format!("--bound-object-name={agent_pod}"),
            &format!("--bound-object-uid={agent_uid}"),
        ])
        .await;
    let agent = token_kubeconfig(&s.cp, "agent-pod", out.trim());
    let whoami = s
        .kubectl_with(&agent, &["auth", "whoami", "-o", "json"])
        .await;
    assert!(whoami.status.success(), "{}", text(&whoami));
    let whoami: Value = serde_json::from_slice(&whoami.stdout).unwrap();
    assert_eq!(
        whoami["status"]["userInfo"]["extra"]["authentication.kubernetes.io/node-name"],
        json!([NODE]),
        "{whoami}"
    );
    for args in [
        vec!["get", "secrets", "-n", NS],
        vec!["get", "secrets", "-n", "wasm-demo"],
        vec!["get", "secrets", "-A"],
    ] {
        let out = s.kubectl_with(&agent, &args).await;
        assert!(
            !out.status.success(),
            "the agent read Secrets: {}",
            text(&out)
        );
        assert!(text(&out).contains("forbidden"), "{}", text(&out));
    }
    // Another node's Placement (a hand-made Node; nothing runs there).
    s.cp.create_node("helm-other-node", &[]).await.unwrap();
    let other = work.path().join("other-placement.yaml");
    std::fs::write(
        &other,
        format!(
            "apiVersion: wasm.airssys.dev/v1alpha1\nkind: Placement\nmetadata:\n  name: elsewhere\n  namespace: wasm-demo\n\
             spec:\n  nodeName: helm-other-node\n  component: {{ name: elsewhere, uid: 0b0e0c2a-0000-4000-8000-000000000009, generation: 1 }}\n\
             \x20 digest: sha256:{hex}\n  artifact:\n    oci: {{ reference: registry.example.com/team/echo:1.0 }}\n  instances: 1\n",
            hex = "ab".repeat(32)
        ),
    )
    .unwrap();
    s.kubectl_ok(&["apply", "-f", other.to_str().unwrap()])
        .await;
    let patch = |name: &'static str| {
        let agent = agent.clone();
        let s = &s;
        async move {
            s.kubectl_with(
                &agent,
                &[
                    "patch",
                    "placement",
                    name,
                    "-n",
                    "wasm-demo",
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    r#"{"status":{"readyInstances":1}}"#,
                ],
            )
            .await
        }
    };
    let out = patch("elsewhere").await;
    assert!(
        !out.status.success(),
        "the agent wrote another node's Placement status: {}",
        text(&out)
    );
    // The agent Pod kept running through all of it.
    let agents_now = s.wait_for_pods("agent", 1).await;
    assert_eq!(agents_now[0]["metadata"]["uid"], agent_uid.as_str());
    assert_eq!(
        agents_now[0]["status"]["containerStatuses"][0]["restartCount"],
        0,
        "the agent restarted:\n{}",
        s.diagnostics().await
    );
    mark("RBAC negatives", &mut timings);
    eprintln!(
        "helm_node timings (since start):\n  {}",
        timings.join("\n  ")
    );
    drop(registry);
}
