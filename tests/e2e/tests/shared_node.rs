//! The process-wide node (`Node::shared`) on the shared control plane, as a test binary that
//! installs something per node would use it: every caller gets the same Ready node, and a
//! DaemonSet (placed by kube-controller-manager's DaemonSet controller; there is no scheduler)
//! runs a Pod from the test registry on it. The node is never dropped; its exit script cleans up
//! when this process ends.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::time::Duration;

use airssys_test_support::{
    ControlPlane, Node, Registry, SHARED_NODE_NAME, condition_status, node_image, run_tool,
    wait_for,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node as NodeObject, Pod, ServiceAccount};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemonset_runs_on_the_shared_node() {
    let node = Node::shared().await.unwrap();
    let again = Node::shared().await.unwrap();
    assert!(
        std::ptr::eq(node, again),
        "a second shared node was started"
    );
    assert_eq!(node.name(), SHARED_NODE_NAME);

    let cp = ControlPlane::shared().await.unwrap();
    let client = cp.client().await.unwrap();
    let object = Api::<NodeObject>::all(client.clone())
        .get(SHARED_NODE_NAME)
        .await
        .unwrap();
    assert_eq!(condition_status(&object, "Ready").as_deref(), Some("True"));

    let registry = Registry::start().await.unwrap();
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

    let ns = cp.create_namespace("shared-node").await.unwrap();
    wait_for(
        &Api::<ServiceAccount>::namespaced(client.clone(), &ns),
        "default",
        |_| true,
        TIMEOUT,
    )
    .await
    .unwrap();
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": { "name": "echo" },
        "spec": {
            "selector": { "matchLabels": { "app": "echo" } },
            "template": {
                "metadata": { "labels": { "app": "echo" } },
                "spec": {
                    "nodeSelector": { "kubernetes.io/hostname": SHARED_NODE_NAME },
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "echo",
                        "image": image,
                        "readinessProbe": {
                            "httpGet": { "path": "/", "port": 8080 },
                            "periodSeconds": 1,
                        },
                    }],
                },
            },
        },
    }))
    .unwrap();
    daemonsets
        .create(&PostParams::default(), &ds)
        .await
        .unwrap();
    let ready = wait_for(
        &daemonsets,
        "echo",
        |ds| {
            ds.status
                .as_ref()
                .is_some_and(|s| s.desired_number_scheduled == 1 && s.number_ready == 1)
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n--- the Node:\n{}\n--- kubelet log:\n{}",
            serde_json::to_string_pretty(&object).unwrap(),
            node.log_tail("kubelet", 40)
        )
    });
    assert_eq!(ready.status.unwrap().number_available, Some(1));

    let pods = Api::<Pod>::namespaced(client, &ns)
        .list(&ListParams::default().labels("app=echo"))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 1);
    let spec = pods.items[0].spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(SHARED_NODE_NAME));
    drop(registry);
}
