//! A real Kubernetes node beside the test control plane (tests/support's `Node`): kubelet
//! registers and becomes Ready on containerd + runc; a Pod whose image was pushed to the test
//! registry is pulled, started on the CNI bridge and passes an HTTP readiness probe; a
//! ClusterIP Service answers through kube-proxy's iptables rules; `kubectl logs` and
//! `kubectl exec` reach the Pod through the kubelet; stopping the node leaves no bridge, mount, rule or Node
//! object behind.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use airssys_test_support::{
    ControlPlane, Registry, condition_status, node_image, run_tool, wait_for,
};
use k8s_openapi::api::core::v1::{Node, Pod, Service, ServiceAccount};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(120);

/// `GET /` on `addr` over plain HTTP/1.0; the response body.
fn http_get(addr: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(
        &addr.parse().map_err(|e| format!("{addr}: {e}"))?,
        Duration::from_secs(3),
    )
    .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(format!("unexpected response from {addr}: {response:?}")),
    }
}

/// Retries `http_get` for a few seconds (a rule or a listener may be a moment behind).
async fn http_get_eventually(addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let addr_owned = addr.to_owned();
        match tokio::task::spawn_blocking(move || http_get(&addr_owned))
            .await
            .unwrap()
        {
            Ok(body) => return body,
            Err(e) if Instant::now() >= deadline => panic!("GET http://{addr}/: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_a_pod_from_the_test_registry_behind_a_service() {
    let cp = ControlPlane::shared().await.unwrap();
    let registry = Registry::start().await.unwrap();
    let node = cp.start_node("node-e2e").await.unwrap();
    let client = cp.client().await.unwrap();

    // Registered by the kubelet built from the pinned module, on the machine's containerd.
    let nodes: Api<Node> = Api::all(client.clone());
    let object = nodes.get(node.name()).await.unwrap();
    assert_eq!(condition_status(&object, "Ready").as_deref(), Some("True"));
    let info = object.status.unwrap().node_info.unwrap();
    assert_eq!(info.kubelet_version, "v1.34.4");
    assert!(
        info.container_runtime_version.starts_with("containerd://"),
        "{}",
        info.container_runtime_version
    );
    let spec = object.spec.unwrap();
    assert_eq!(spec.pod_cidr.as_deref(), Some(node.pod_cidr()));
    // Lifted as the node lifecycle controller would, so DaemonSets place Pods here.
    assert!(
        !spec
            .taints
            .unwrap_or_default()
            .iter()
            .any(|t| t.key == "node.kubernetes.io/not-ready"),
        "the not-ready taint is still on the Node"
    );

    // The echo image node.sh built, pushed to the test registry; the node pulls it from there.
    let work = tempfile::tempdir().unwrap();
    let image = format!("{}/airssys/echo:1", registry.address());
    let archive = node_image("echo").unwrap();
    run_tool(
        work.path(),
        "oras",
        &[
            "cp",
            "--from-oci-layout",
            &format!("{}:1", archive.display()),
            "--to-plain-http",
            &image,
        ],
    )
    .unwrap();
    node.allow_registry(registry.address()).unwrap();

    let ns = cp.create_namespace("node").await.unwrap();
    // The ServiceAccount admission plugin refuses Pods until the default account exists.
    wait_for(
        &Api::<ServiceAccount>::namespaced(client.clone(), &ns),
        "default",
        |_| true,
        TIMEOUT,
    )
    .await
    .unwrap();

    // No scheduler in the test control plane: the Pod names its node.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "echo", "labels": { "app": "echo" } },
        "spec": {
            "nodeName": node.name(),
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "echo",
                "image": image,
                "ports": [{ "containerPort": 8080 }],
                "readinessProbe": {
                    "httpGet": { "path": "/", "port": 8080 },
                    "periodSeconds": 1,
                },
            }],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let running = wait_for(
        &pods,
        "echo",
        |p| condition_status(p, "Ready").as_deref() == Some("True"),
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n--- kubelet log:\n{}\n--- containerd log:\n{}",
            node.log_tail("kubelet", 40),
            node.log_tail("containerd", 20)
        )
    });
    let status = running.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let pod_ip = status.pod_ip.unwrap();
    let [a, b, c, _]: [u8; 4] = pod_ip.parse::<std::net::Ipv4Addr>().unwrap().octets();
    assert!(
        node.pod_cidr().starts_with(&format!("{a}.{b}.{c}.")),
        "pod IP {pod_ip} outside {}",
        node.pod_cidr()
    );

    // Straight to the Pod over the bridge.
    assert_eq!(
        http_get_eventually(&format!("{pod_ip}:8080")).await,
        "hello from echo\n"
    );

    // Through a ClusterIP Service: kube-proxy's DNAT rule must be in place before anything is
    // sent to the service range, which is routed nowhere else on this machine.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let service: Service = serde_json::from_value(json!({
        "metadata": { "name": "echo" },
        "spec": {
            "selector": { "app": "echo" },
            "ports": [{ "port": 80, "targetPort": 8080 }],
        },
    }))
    .unwrap();
    let created = services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let cluster_ip = created.spec.unwrap().cluster_ip.unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !node.proxies(&cluster_ip).await.unwrap() {
        assert!(
            Instant::now() < deadline,
            "kube-proxy programmed no rule for {cluster_ip}:\n{}",
            node.log_tail("kube-proxy", 30)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        http_get_eventually(&format!("{cluster_ip}:80")).await,
        "hello from echo\n"
    );

    // kubectl logs: API server -> kubelet (client certificate, webhook authz) -> CRI log file.
    let out = cp
        .kubectl(["logs", "-n", ns.as_str(), "echo"])
        .await
        .unwrap();
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl logs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        logs.contains("echo: listening on port 8080 as echo"),
        "{logs}"
    );
    assert!(logs.contains("echo: request"), "{logs}");

    // kubectl exec: API server -> kubelet -> containerd's streaming server. A second echo in
    // the same network namespace cannot take the port the first one holds.
    let out = cp
        .kubectl(["exec", "-n", ns.as_str(), "echo", "--", "/echo"])
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "kubectl exec: {stderr}");
    assert!(
        stderr.contains("echo: listen: Address already in use"),
        "kubectl exec: {stderr}"
    );

    // Stopping leaves nothing behind on the machine or in the API.
    let (name, bridge, dir) = (
        node.name().to_owned(),
        node.bridge().to_owned(),
        node.dir().to_owned(),
    );
    let ip_program = airssys_test_support::tools::find_program("ip").unwrap();
    tokio::task::spawn_blocking(move || drop(node))
        .await
        .unwrap();
    let link = std::process::Command::new(ip_program)
        .args(["link", "show", &bridge])
        .output()
        .unwrap();
    assert!(!link.status.success(), "bridge {bridge} still exists");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(dir.to_str().unwrap()),
        "mounts left under {}",
        dir.display()
    );
    let kept = std::env::var_os("AIRSSYS_KEEP_TMP").is_some_and(|v| v != "0");
    assert!(kept || !dir.exists(), "{} still exists", dir.display());
    let rules = std::process::Command::new(
        airssys_test_support::tools::find_program("iptables-save").unwrap(),
    )
    .args(["-t", "nat"])
    .output()
    .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        !rules.contains(&format!("-d {cluster_ip}/32")),
        "kube-proxy's rule for {cluster_ip} is still there"
    );
    assert!(
        !rules.contains(&format!("--comment \"{ns}/echo")),
        "kube-proxy's rules for {ns}/echo are still there:\n{rules}"
    );
    assert!(nodes.get_opt(&name).await.unwrap().is_none());
    drop(registry);
}
