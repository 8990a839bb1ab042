//! Components run on node agents, end to end: the dev run's control plane, registry and
//! operator binary, with three real agent processes in node mode (stand-in nodes
//! `dev-node-1..3`, each holding a token of the chart's agent ServiceAccount bound to its own
//! Node, so they run with exactly the chart's RBAC and admission policy). Driven with real
//! kubectl:
//!
//! - a trusted component with 2 replicas becomes `Ready`, one Placement per node, the digest
//!   the operator approved; `kubectl scale` to 5, to 0 and back;
//! - a dev-mode component that tries what it was not granted runs, and its denials are
//!   `CapabilityDenied` Events from the agent;
//! - a pending component approved with `kubectl wasm approve` runs;
//! - a new digest of the trusted component rolls out with a ready instance on every Placement
//!   throughout;
//! - an agent killed: its Lease expires and its replicas move, back to `Ready`;
//! - readyReplicas does not dip while scaling up; a scale-in is `Stopped`, not `Revoked`;
//! - trust revoked: every Placement of the component goes within seconds, with `Revoked`
//!   Events from each node that ran it.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use airssys_test_support::dev::{self, DevCluster, DevOptions, EXAMPLE_COMPONENTS, Expected};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(120);
/// The agent Lease lasts 40 s; a move takes that plus a re-plan.
const LEASE_TIMEOUT: Duration = Duration::from_secs(120);

async fn kubectl(cluster: &DevCluster, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = cluster.kubectl(&args).await.unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn get_json(cluster: &DevCluster, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&kubectl(cluster, &all).await).unwrap()
}

/// One observation: `Ok` ends the wait, `Err` says what was seen instead.
type Check<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// Polls `check` until it returns `Some`, or fails with `what`, the last observation and the
/// processes' log tails.
async fn wait_until<T, F>(
    cluster: &mut DevCluster,
    what: &str,
    timeout: Duration,
    mut check: F,
) -> T
where
    F: for<'a> FnMut(&'a DevCluster) -> Check<'a, T>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check(cluster).await {
            Ok(value) => return value,
            Err(last) => last,
        };
        if let Err(e) = cluster.check_running() {
            panic!("{what}: a process exited: {e}");
        }
        if Instant::now() > deadline {
            let agents: Vec<String> = cluster
                .agent_nodes()
                .iter()
                .map(|n| format!("--- agent {n}:\n{}", cluster.agent_log_tail(n, 30)))
                .collect();
            panic!(
                "timed out waiting for {what}; last seen: {last}\n--- operator:\n{}\n{}",
                cluster.operator_log_tail(40),
                agents.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `(readyReplicas, Ready condition status)` of a component.
async fn readiness(cluster: &DevCluster, ns: &str, name: &str) -> (i64, String, Value) {
    let c = get_json(cluster, &["wasmcomponent", name, "-n", ns]).await;
    let ready = c["status"]["readyReplicas"].as_i64().unwrap_or(0);
    let condition = c["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map(|c| c["status"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    (ready, condition, c)
}

/// The component's Placements: `(node, spec.instances, status.readyInstances, spec.digest)`.
async fn placements(cluster: &DevCluster, ns: &str, name: &str) -> Vec<(String, i64, i64, String)> {
    let list = get_json(cluster, &["placements", "-n", ns]).await;
    let mut out: Vec<_> = list["items"]
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
                p["spec"]["digest"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn wait_ready(cluster: &mut DevCluster, ns: &str, name: &str, replicas: i64) -> Value {
    let what = format!("{ns}/{name} Ready with {replicas} replicas");
    wait_until(cluster, &what, TIMEOUT, |c| {
        let (ns, name) = (ns.to_owned(), name.to_owned());
        Box::pin(async move {
            let (ns, name) = (ns.as_str(), name.as_str());
            let (ready, condition, obj) = readiness(c, ns, name).await;
            let placed: i64 = placements(c, ns, name).await.iter().map(|p| p.2).sum();
            if ready == replicas && condition == "True" && placed == replicas {
                Ok(obj)
            } else {
                Err(format!(
                    "readyReplicas {ready}, Ready={condition}, placed ready {placed}: {}",
                    obj["status"]
                ))
            }
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_components_run_on_the_node_agents() {
    let bin_dir = tokio::task::spawn_blocking(dev::build_workspace_bins_for_tests)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let mut options = DevOptions::new().unwrap();
    options.dir = dir.path().to_path_buf();
    options.bin_dir = bin_dir;
    options.nodes = 3;
    // A moved tag is noticed within seconds (the rolling update below).
    options.operator_args = vec!["--recheck-seconds".into(), "3".into()];
    let mut cluster = DevCluster::start(options)
        .await
        .unwrap_or_else(|e| panic!("starting the dev cluster: {e}"));

    // A trusted component with 2 replicas runs, one instance on each of two nodes, with the
    // digest the operator approved.
    let echo = wait_ready(&mut cluster, "wasm-demo", "echo", 2).await;
    let approved = echo["status"]["approvedDigest"]
        .as_str()
        .unwrap()
        .to_owned();
    let placed = placements(&cluster, "wasm-demo", "echo").await;
    assert_eq!(placed.len(), 2, "{placed:?}");
    assert_ne!(placed[0].0, placed[1].0, "spread over nodes: {placed:?}");
    assert!(
        placed.iter().all(|p| p.1 == 1 && p.3 == approved),
        "{placed:?}"
    );

    // The HTTP example is served by both agents, behind its Service's EndpointSlice.
    wait_ready(&mut cluster, "wasm-demo", "hello-http", 2).await;
    let endpoints = wait_until(&mut cluster, "hello-http's 2 endpoints", TIMEOUT, |c| {
        Box::pin(async move {
            let found = http_endpoints(c, "wasm-demo", "hello-http").await;
            if found.len() == 2 {
                Ok(found)
            } else {
                Err(format!("{found:?}"))
            }
        })
    })
    .await;
    for endpoint in &endpoints {
        let answer =
            airssys_test_support::http_get(endpoint, "hello.example.com", "/hello/world").await;
        assert_eq!(
            answer.as_deref(),
            Ok("200 hello from /hello/world"),
            "{endpoint}"
        );
        let other_host =
            airssys_test_support::http_get(endpoint, "elsewhere.example.com", "/hello").await;
        assert!(
            other_host.as_deref().is_ok_and(|a| a.starts_with("404")),
            "{other_host:?}"
        );
    }

    // kubectl scale works through /scale: up, to zero, and back.
    kubectl(
        &cluster,
        &[
            "scale",
            "wasmcomponent/echo",
            "-n",
            "wasm-demo",
            "--replicas=5",
        ],
    )
    .await;
    // The two replicas that run keep serving while the others start: readyReplicas never
    // drops below them on the way to 5.
    let mut seen = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (ready, condition, _) = readiness(&cluster, "wasm-demo", "echo").await;
        seen.push(ready);
        if ready == 5 && condition == "True" {
            break;
        }
        assert!(Instant::now() < deadline, "never 5 ready: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen.iter().all(|&r| r >= 2),
        "readyReplicas dipped while scaling up: {seen:?}"
    );
    wait_ready(&mut cluster, "wasm-demo", "echo", 5).await;
    let placed = placements(&cluster, "wasm-demo", "echo").await;
    let mut shares: Vec<i64> = placed.iter().map(|p| p.1).collect();
    shares.sort_unstable();
    assert_eq!(
        shares,
        vec![1, 2, 2],
        "five replicas spread over three nodes"
    );
    kubectl(
        &cluster,
        &[
            "scale",
            "wasmcomponent/echo",
            "-n",
            "wasm-demo",
            "--replicas=0",
        ],
    )
    .await;
    wait_until(&mut cluster, "echo scaled to zero", TIMEOUT, |c| {
        Box::pin(async move {
            let placed = placements(c, "wasm-demo", "echo").await;
            if placed.is_empty() {
                Ok(())
            } else {
                Err(format!("{placed:?}"))
            }
        })
    })
    .await;
    // Scaled in, not revoked: the agents say `Stopped`.
    wait_until(&mut cluster, "Stopped Events for echo", TIMEOUT, |c| {
        Box::pin(async move {
            let stopped = agent_events(c, "wasm-demo", "echo", "Stopped").await;
            if stopped.is_empty() {
                Err("none yet".to_owned())
            } else {
                Ok(())
            }
        })
    })
    .await;
    let revoked = agent_events(&cluster, "wasm-demo", "echo", "Revoked").await;
    assert!(
        revoked.is_empty(),
        "a scale-in is not a revocation: {revoked:?}"
    );
    kubectl(
        &cluster,
        &[
            "scale",
            "wasmcomponent/echo",
            "-n",
            "wasm-demo",
            "--replicas=3",
        ],
    )
    .await;
    wait_ready(&mut cluster, "wasm-demo", "echo", 3).await;

    // Dev mode skips the review, not the sandbox: the scratch component runs, and what it
    // tries without a grant is refused and reported by its agent as Events on it.
    wait_ready(&mut cluster, "wasm-dev", "scratch", 1).await;
    let denials = wait_until(&mut cluster, "CapabilityDenied Events", TIMEOUT, |c| {
        Box::pin(async move {
            let events = get_json(c, &["events.events.k8s.io", "-n", "wasm-dev"]).await;
            let denials: Vec<Value> = events["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| {
                    e["reason"] == "CapabilityDenied" && e["regarding"]["name"] == "scratch"
                })
                .cloned()
                .collect();
            if denials.is_empty() {
                Err(format!("{} events, no denial", events["items"]))
            } else {
                Ok(denials)
            }
        })
    })
    .await;
    for e in &denials {
        assert_eq!(e["reportingController"], "wasm.airssys.dev/agent", "{e}");
        assert_eq!(e["regarding"]["kind"], "WasmComponent", "{e}");
        assert!(
            e["reportingInstance"]
                .as_str()
                .is_some_and(|n| n.starts_with("dev-node-")),
            "{e}"
        );
    }

    // The pending example runs once approved with the plugin.
    let pending = EXAMPLE_COMPONENTS
        .iter()
        .find(|c| c.expected == Expected::PendingApproval)
        .unwrap();
    let out = cluster.kubectl(&dev::approve_args(pending)).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_ready(&mut cluster, pending.namespace, pending.name, 1).await;

    // A new digest behind the same tag: pushed under another tag and signed first (a tag
    // that moves to an unsigned digest is no longer trusted, and a component whose approval
    // goes stops), then the tag the component names is moved to it. Every Placement moves to
    // it, and none is without a ready instance meanwhile.
    let registry = cluster.registry().address().to_owned();
    let guests = dev::build_guests().unwrap();
    let bytes = std::fs::read(guests.join("echo.wasm")).unwrap();
    let work = dir.path().join("repush");
    std::fs::create_dir_all(&work).unwrap();
    // oras writes the push time into the manifest: a second push is a new manifest digest.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let staged = format!("{registry}/platform/echo:1.2.1");
    let new_digest = airssys_test_support::push_wasm(&work, &staged, &bytes).unwrap();
    assert_ne!(new_digest, approved);
    cluster
        .signing_key()
        .sign(&work, &format!("{registry}/platform/echo@{new_digest}"))
        .unwrap();
    airssys_test_support::run_tool(&work, "oras", &["tag", "--plain-http", &staged, "1.2.0"])
        .unwrap();
    let mut gaps = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let placed = placements(&cluster, "wasm-demo", "echo").await;
        if placed.iter().any(|p| p.2 == 0) {
            gaps.push(format!("{placed:?}"));
        }
        let statuses = get_json(&cluster, &["placements", "-n", "wasm-demo"]).await;
        let moved = statuses["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["spec"]["component"]["name"] == "echo")
            .all(|p| p["status"]["digest"] == new_digest.as_str());
        if moved && placed.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "echo never moved to {new_digest}: {placed:?}\n{}",
            cluster.operator_log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gaps.is_empty(),
        "a Placement had no ready instance: {gaps:?}"
    );
    wait_ready(&mut cluster, "wasm-demo", "echo", 3).await;

    // A node dies: its Lease expires and its replicas move to the others.
    let victim = placements(&cluster, "wasm-demo", "echo").await[0].0.clone();
    assert!(cluster.kill_agent(&victim));
    wait_until(
        &mut cluster,
        "echo's replicas off the dead node and Ready",
        LEASE_TIMEOUT,
        |c| {
            let victim = victim.clone();
            Box::pin(async move {
                let placed = placements(c, "wasm-demo", "echo").await;
                let (ready, condition, _) = readiness(c, "wasm-demo", "echo").await;
                if placed.iter().all(|p| p.0 != victim) && ready == 3 && condition == "True" {
                    Ok(())
                } else {
                    Err(format!("{placed:?}, readyReplicas {ready}"))
                }
            })
        },
    )
    .await;

    // Trust revoked: the approving source goes, and so does every Placement, within seconds.
    kubectl(&cluster, &["delete", "trustsource", "platform-registry"]).await;
    wait_until(
        &mut cluster,
        "echo's Placements removed after revocation",
        Duration::from_secs(20),
        |c| {
            Box::pin(async move {
                let placed = placements(c, "wasm-demo", "echo").await;
                if placed.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{placed:?}"))
                }
            })
        },
    )
    .await;
    let (ready, condition, _) = readiness(&cluster, "wasm-demo", "echo").await;
    assert_ne!(condition, "True", "a revoked component is not Ready");
    assert_eq!(ready, 0);
    // Every node that ran it says so.
    let nodes = wait_until(
        &mut cluster,
        "Revoked Events from the 2 nodes left",
        TIMEOUT,
        |c| {
            Box::pin(async move {
                let mut nodes: Vec<String> = agent_events(c, "wasm-demo", "echo", "Revoked")
                    .await
                    .iter()
                    .filter_map(|e| e["reportingInstance"].as_str().map(str::to_owned))
                    .collect();
                nodes.sort();
                nodes.dedup();
                if nodes.len() == 2 {
                    Ok(nodes)
                } else {
                    Err(format!("Revoked from {nodes:?}"))
                }
            })
        },
    )
    .await;
    assert!(!nodes.contains(&victim), "{nodes:?}");

    // The HTTP component was trusted by the same source: its endpoints go, and no agent
    // answers for it any more.
    wait_until(
        &mut cluster,
        "hello-http's EndpointSlice gone",
        TIMEOUT,
        |c| {
            Box::pin(async move {
                let found = http_endpoints(c, "wasm-demo", "hello-http").await;
                if found.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{found:?}"))
                }
            })
        },
    )
    .await;
    for endpoint in &endpoints {
        let answer =
            airssys_test_support::http_get(endpoint, "hello.example.com", "/hello/world").await;
        assert!(answer.is_err(), "{endpoint} still answers: {answer:?}");
    }
}

/// `address:port` of each ready endpoint of the EndpointSlices of Service `ns/name`.
async fn http_endpoints(cluster: &DevCluster, ns: &str, name: &str) -> Vec<String> {
    let slices = get_json(
        cluster,
        &[
            "endpointslices",
            "-n",
            ns,
            "-l",
            &format!("kubernetes.io/service-name={name}"),
        ],
    )
    .await;
    let mut out = Vec::new();
    for slice in slices["items"].as_array().into_iter().flatten() {
        let Some(port) = slice["ports"][0]["port"].as_i64() else {
            continue;
        };
        for e in slice["endpoints"].as_array().into_iter().flatten() {
            if e["conditions"]["ready"] == true {
                for a in e["addresses"].as_array().into_iter().flatten() {
                    out.push(format!("{}:{port}", a.as_str().unwrap_or_default()));
                }
            }
        }
    }
    out.sort();
    out
}

/// The agents' Events of `reason` about component `ns/name`.
async fn agent_events(cluster: &DevCluster, ns: &str, name: &str, reason: &str) -> Vec<Value> {
    let events = get_json(cluster, &["events.events.k8s.io", "-n", ns]).await;
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["reason"] == reason
                && e["reportingController"] == "wasm.airssys.dev/agent"
                && e["regarding"]["name"] == name
        })
        .cloned()
        .collect()
}
