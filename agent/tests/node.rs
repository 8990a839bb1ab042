//! Node mode against the real control plane (`tests/support`: etcd, kube-apiserver with the
//! CRDs installed): the agent's node loop runs in-process with a real engine, supervisor,
//! database and audit pipeline and real guest components; the test writes Placements with
//! kube as the operator would and watches their status and the agent's Lease.
//!
//! The bytes come from [`MapSource`], a test `ArtifactSource` serving guests from a map and
//! verifying them like the production client (the operator's artifact server is tested on
//! its own). Each test owns its node name and namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use airssys_agent::artifact::{ArtifactSource, Fetched};
use airssys_agent::audit::{AuditConfig, Auditor, AuditorHandle};
use airssys_agent::engine::{AgentEngine, EngineConfig, sha256_digest};
use airssys_agent::id::ComponentId;
use airssys_agent::node::{self, NodeConfig};
use airssys_agent::storage::KvStore;
use airssys_agent::supervisor::Supervisor;
use airssys_crds::agent::{
    AGENT_LEASE_LABEL, AgentCapacity, CAPACITY_INSTANCES_ANNOTATION, CAPACITY_MEMORY_ANNOTATION,
    lease_name,
};
use airssys_crds::artifact::Digest;
use airssys_crds::placement::{Placement, PlacementSpec};
use airssys_test_support::{ControlPlane, condition_status, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Serves guests by digest, verifying like the production client: bytes that do not hash
/// to the Placement's digest are an error, never returned.
struct MapSource {
    blobs: HashMap<Digest, Arc<[u8]>>,
    fetches: AtomicUsize,
}

impl MapSource {
    fn new(blobs: impl IntoIterator<Item = (Digest, Arc<[u8]>)>) -> Arc<Self> {
        Arc::new(Self {
            blobs: blobs.into_iter().collect(),
            fetches: AtomicUsize::new(0),
        })
    }
}

impl ArtifactSource for MapSource {
    async fn fetch(&self, placement: &PlacementSpec) -> Result<Fetched, airssys_agent::Error> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let wasm = self.blobs.get(&placement.digest).cloned().ok_or_else(|| {
            airssys_agent::Error::Fetch {
                digest: placement.digest.to_string(),
                reason: "404 Not Found".into(),
            }
        })?;
        let actual = sha256_digest(&wasm);
        if actual != placement.digest {
            return Err(airssys_agent::Error::DigestMismatch {
                expected: placement.digest.clone(),
                actual,
            });
        }
        Ok(Fetched {
            wasm,
            wasm_digest: actual,
        })
    }
}

/// A guest and its digest.
fn guest(name: &str) -> (Digest, Arc<[u8]>) {
    let wasm = support::guest(name);
    (sha256_digest(&wasm), wasm)
}

/// One in-process agent in node mode.
struct Agent {
    node: String,
    supervisor: Arc<Supervisor>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), airssys_agent::Error>>>,
    _auditor: AuditorHandle,
    _dir: tempfile::TempDir,
}

impl Agent {
    async fn start(
        cp: &ControlPlane,
        system_ns: &str,
        node: &str,
        source: Arc<MapSource>,
    ) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let engine =
            AgentEngine::new(EngineConfig::new(support::shared_cache_dir()).with_capacity(64))
                .unwrap();
        let storage = Arc::new(KvStore::open(dir.path().join("kv.redb")).unwrap());
        let metrics = airssys_agent::metrics::Metrics::new();
        let (audit, auditor) = Auditor::start(AuditConfig::new(node, &metrics.audit)).unwrap();
        let supervisor = Arc::new(Supervisor::new(
            engine,
            storage,
            audit,
            dir.path().join("fs"),
            support::fast_policy(),
        ));
        let mut config = NodeConfig::new(
            node,
            system_ns,
            AgentCapacity {
                instances: 64,
                memory_bytes: 1 << 30,
            },
        );
        // Renew often so the test sees a renewal quickly.
        config.lease_renew = Duration::from_secs(1);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(node::run(
            cp.client().await.unwrap(),
            config,
            supervisor.clone(),
            source,
            async move {
                let _ = stopped.await;
            },
        ));
        Agent {
            node: node.to_owned(),
            supervisor,
            stop: Some(stop),
            task: Some(task),
            _auditor: auditor,
            _dir: dir,
        }
    }

    /// Graceful shutdown, as on SIGTERM.
    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(TIMEOUT, task)
                .await
                .expect("node mode stops within the timeout")
                .unwrap()
                .unwrap();
        }
    }

    fn check_running(&self) {
        let task = self.task.as_ref().unwrap();
        assert!(
            !task.is_finished(),
            "node mode of {} ended early",
            self.node
        );
    }
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{:x}", n & 0xff_ffff)
}

fn placement(
    name: &str,
    node: &str,
    component: &str,
    digest: &Digest,
    instances: i32,
) -> Placement {
    let spec: PlacementSpec = serde_json::from_value(serde_json::json!({
        "nodeName": node,
        "component": {"name": component, "uid": format!("uid-{component}"), "generation": 1},
        "digest": digest.as_str(),
        "artifact": {"https": {"url": "https://artifacts.example.com/c.wasm", "digest": digest.as_str()}},
        "instances": instances,
    }))
    .unwrap();
    Placement::new(name, spec)
}

async fn create(api: &Api<Placement>, p: &Placement) {
    api.create(&PostParams::default(), p).await.unwrap();
}

/// Points a Placement at another digest, as the operator does when a new one is approved.
async fn set_digest(api: &Api<Placement>, name: &str, digest: &Digest) {
    let patch = serde_json::json!({"spec": {
        "digest": digest.as_str(),
        "artifact": {"https": {"url": "https://artifacts.example.com/c.wasm", "digest": digest.as_str()}},
    }});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

fn ready_reason(p: &Placement) -> Option<String> {
    let status = p.status.as_ref()?;
    airssys_crds::condition::find(&status.conditions, airssys_crds::ConditionType::Ready)
        .map(|c| c.reason.clone())
}

fn is_ready(p: &Placement, digest: &Digest, instances: i32) -> bool {
    let Some(s) = &p.status else { return false };
    condition_status(p, "Ready").as_deref() == Some("True")
        && s.ready_instances == instances
        && s.digest.as_ref() == Some(digest)
        && s.observed_generation == p.metadata.generation
}

/// Asks a component through the supervisor until it answers `expected` (or the timeout).
async fn wait_for_answer(supervisor: &Supervisor, id: &ComponentId, payload: &str, expected: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let answer = supervisor
            .request(id, payload.as_bytes().to_vec(), Duration::from_secs(5))
            .await
            .map(|r| String::from_utf8_lossy(&r).into_owned());
        match answer {
            Ok(a) if a == expected => return,
            other => assert!(
                Instant::now() < deadline,
                "{id} never answered {expected:?}; last: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_announces_capacity_is_renewed_and_released_on_shutdown() {
    let cp = ControlPlane::shared().await.unwrap();
    let system = cp.create_namespace("agent-sys").await.unwrap();
    let node = unique("lease-node");
    let mut agent = Agent::start(cp, &system, &node, MapSource::new([])).await;
    let leases: Api<Lease> = Api::namespaced(cp.client().await.unwrap(), &system);
    let name = lease_name(&node);

    let lease = wait_for(&leases, &name, |_| true, TIMEOUT).await.unwrap();
    let labels = lease.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(AGENT_LEASE_LABEL).map(String::as_str),
        Some("true")
    );
    let annotations = lease.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations[CAPACITY_INSTANCES_ANNOTATION], "64");
    assert_eq!(
        annotations[CAPACITY_MEMORY_ANNOTATION],
        (1u64 << 30).to_string()
    );
    assert_eq!(
        AgentCapacity::from_annotations(Some(&annotations)),
        AgentCapacity {
            instances: 64,
            memory_bytes: 1 << 30
        }
    );
    let spec = lease.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(node.as_str()));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let first = spec.renew_time.unwrap().0;

    // Renewed (every second in this test): renewTime moves, acquireTime does not.
    let renewed = wait_for(
        &leases,
        &name,
        |l| {
            l.spec
                .as_ref()
                .and_then(|s| s.renew_time.as_ref())
                .is_some_and(|t| t.0 > first)
        },
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(
        renewed.spec.unwrap().acquire_time,
        lease.spec.unwrap().acquire_time,
        "the same holder keeps its acquire time"
    );

    // A deleted Lease (say, by a person) comes back at the next renewal.
    leases
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(&leases, &name, |_| true, TIMEOUT).await.unwrap();
    agent.check_running();

    // A graceful shutdown releases it, so the operator can move replicas at once.
    agent.shutdown().await;
    assert!(
        leases.get_opt(&name).await.unwrap().is_none(),
        "the Lease is deleted on shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placement_runs_scales_updates_without_a_gap_and_stops() {
    let cp = ControlPlane::shared().await.unwrap();
    let system = cp.create_namespace("agent-sys").await.unwrap();
    let ns = cp.create_namespace("node-run").await.unwrap();
    let node = unique("run-node");
    let (echo, echo_wasm) = guest("echo");
    let (worker, worker_wasm) = guest("worker");
    let source = MapSource::new([(echo.clone(), echo_wasm), (worker.clone(), worker_wasm)]);
    let mut agent = Agent::start(cp, &system, &node, source.clone()).await;
    let api: Api<Placement> = Api::namespaced(cp.client().await.unwrap(), &ns);
    let id = ComponentId::new(&ns, "svc");

    // instances: 2, and a config value from a Secret, which the agent cannot read yet.
    let mut p = placement("svc-node", &node, "svc", &echo, 2);
    p.spec.grant = serde_json::from_value(serde_json::json!({"env": [{"name": "TOKEN"}]})).unwrap();
    p.spec.config = serde_json::from_value(serde_json::json!([
        {"name": "TOKEN", "secretKeyRef": {"name": "creds", "key": "token"}}
    ]))
    .unwrap();
    create(&api, &p).await;
    let ready = wait_for(&api, "svc-node", |p| is_ready(p, &echo, 2), TIMEOUT)
        .await
        .unwrap();
    let status = ready.status.clone().unwrap();
    assert_eq!(status.restarts, 0);
    let last_error = status.last_error.unwrap_or_default();
    assert!(
        last_error.contains("Secret") && last_error.contains("not supported"),
        "a Secret reference is reported, not dropped silently: {last_error:?}"
    );
    assert_eq!(
        condition_status(&ready, "Degraded").as_deref(),
        Some("False")
    );
    wait_for_answer(&agent.supervisor, &id, "hello", "hello").await;
    assert_eq!(agent.supervisor.digest(&id).await, Some(echo.clone()));

    // Scale on the node: 3 replicas, same digest, no fetch.
    let fetches = source.fetches.load(Ordering::Relaxed);
    api.patch(
        "svc-node",
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({"spec": {"instances": 3}})),
    )
    .await
    .unwrap();
    wait_for(&api, "svc-node", |p| is_ready(p, &echo, 3), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        source.fetches.load(Ordering::Relaxed),
        fetches,
        "scaling fetches nothing"
    );

    // Update to another digest while requests keep coming (back to back, from two tasks, so
    // even a millisecond without the component would fail some): none fails, and the status
    // never shows zero ready instances on the way.
    let pingers: Vec<_> = (0..2)
        .map(|_| {
            let supervisor = agent.supervisor.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                let deadline = Instant::now() + Duration::from_secs(4);
                while Instant::now() < deadline {
                    match supervisor
                        .request(&id, b"ping".to_vec(), Duration::from_secs(5))
                        .await
                    {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e.to_string()),
                    }
                    tokio::task::yield_now().await;
                }
                (ok, failed)
            })
        })
        .collect();
    set_digest(&api, "svc-node", &worker).await;
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = Vec::new();
    loop {
        let p = api.get("svc-node").await.unwrap();
        let s = p.status.clone().unwrap_or_default();
        assert!(
            s.ready_instances > 0,
            "readyInstances dropped to 0 during the update: {s:?}\nbefore: {seen:?}"
        );
        seen.push((s.ready_instances, s.digest.clone(), ready_reason(&p)));
        if is_ready(&p, &worker, 3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "update never became ready: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_answer(&agent.supervisor, &id, "hello", "v1:hello").await;
    for pinger in pingers {
        let (ok, failed) = pinger.await.unwrap();
        assert!(
            failed.is_empty(),
            "{} requests failed during the update (of {}): {:?}",
            failed.len(),
            ok as usize + failed.len(),
            &failed[..failed.len().min(3)]
        );
        assert!(ok > 10, "only {ok} requests answered");
    }
    assert_eq!(agent.supervisor.digest(&id).await, Some(worker.clone()));

    // Delete: the actor stops and nothing is left on the node.
    let actor = agent.supervisor.status(&id).await.unwrap();
    api.delete("svc-node", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !agent.supervisor.components().await.is_empty()
        || actor.state() != airssys_agent::actor::ActorState::Stopped
    {
        assert!(Instant::now() < deadline, "the actor did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(api.get_opt("svc-node").await.unwrap().is_none());
    agent.check_running();
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_nodes_and_duplicate_placements_are_not_run() {
    let cp = ControlPlane::shared().await.unwrap();
    let system = cp.create_namespace("agent-sys").await.unwrap();
    let ns = cp.create_namespace("node-sel").await.unwrap();
    let node = unique("sel-node");
    let (echo, echo_wasm) = guest("echo");
    let source = MapSource::new([(echo.clone(), echo_wasm)]);
    let mut agent = Agent::start(cp, &system, &node, source).await;
    let api: Api<Placement> = Api::namespaced(cp.client().await.unwrap(), &ns);

    // Another node's Placement first, then two for one component of this node (the operator
    // writes one; the newer, or on a tie the later name, runs).
    create(
        &api,
        &placement("elsewhere", "some-other-node", "far", &echo, 1),
    )
    .await;
    create(&api, &placement("dup-a", &node, "near", &echo, 1)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    create(&api, &placement("dup-b", &node, "near", &echo, 1)).await;

    wait_for(&api, "dup-b", |p| is_ready(p, &echo, 1), TIMEOUT)
        .await
        .unwrap();
    let loser = wait_for(
        &api,
        "dup-a",
        |p| {
            p.status
                .as_ref()
                .and_then(|s| s.last_error.as_deref())
                .is_some_and(|e| e.contains("dup-b") && e.contains("newer"))
        },
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(condition_status(&loser, "Ready").as_deref(), Some("False"));
    assert_eq!(loser.status.unwrap().ready_instances, 0);

    assert_eq!(
        agent.supervisor.components().await,
        vec![ComponentId::new(&ns, "near")],
        "only this node's component runs"
    );
    let far = api.get("elsewhere").await.unwrap();
    assert!(
        far.status.is_none(),
        "another node's Placement is not touched: {far:?}"
    );

    // Once the newer one is deleted, the remaining Placement runs.
    api.delete("dup-b", &DeleteParams::default()).await.unwrap();
    wait_for(&api, "dup-a", |p| is_ready(p, &echo, 1), TIMEOUT)
        .await
        .unwrap();
    agent.check_running();

    // A graceful shutdown stops the component and says so on its Placement.
    agent.shutdown().await;
    assert!(agent.supervisor.components().await.is_empty());
    let stopped = api.get("dup-a").await.unwrap();
    assert_eq!(
        condition_status(&stopped, "Ready").as_deref(),
        Some("False")
    );
    let status = stopped.status.unwrap();
    assert_eq!((status.ready_instances, status.digest), (0, None));
    let ready =
        airssys_crds::condition::find(&status.conditions, airssys_crds::ConditionType::Ready)
            .unwrap();
    assert!(ready.message.contains(&agent.node), "{}", ready.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_do_not_match_the_digest_never_run() {
    let cp = ControlPlane::shared().await.unwrap();
    let system = cp.create_namespace("agent-sys").await.unwrap();
    let ns = cp.create_namespace("node-bad").await.unwrap();
    let node = unique("bad-node");
    let (echo, _) = guest("echo");
    let (_, worker_wasm) = guest("worker");
    // The source has other bytes under the echo digest (a tampered blob).
    let source = MapSource::new([(echo.clone(), worker_wasm)]);
    let mut agent = Agent::start(cp, &system, &node, source.clone()).await;
    let api: Api<Placement> = Api::namespaced(cp.client().await.unwrap(), &ns);

    create(&api, &placement("tampered", &node, "tampered", &echo, 1)).await;
    let failed = wait_for(
        &api,
        "tampered",
        |p| ready_reason(p).as_deref() == Some("FetchFailed"),
        TIMEOUT,
    )
    .await
    .unwrap();
    let status = failed.status.clone().unwrap();
    assert_eq!(condition_status(&failed, "Ready").as_deref(), Some("False"));
    assert_eq!(status.ready_instances, 0);
    assert_eq!(status.digest, None);
    let last_error = status.last_error.unwrap_or_default();
    assert!(last_error.contains("mismatch"), "{last_error}");
    assert!(
        agent.supervisor.components().await.is_empty(),
        "nothing runs"
    );

    // Retried with backoff (1 s, then 2 s), still refusing.
    let deadline = Instant::now() + TIMEOUT;
    while source.fetches.load(Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "the fetch was not retried");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        agent.supervisor.components().await.is_empty(),
        "nothing runs"
    );
    agent.check_running();
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_component_is_degraded_and_not_ready() {
    let cp = ControlPlane::shared().await.unwrap();
    let system = cp.create_namespace("agent-sys").await.unwrap();
    let ns = cp.create_namespace("node-crash").await.unwrap();
    let node = unique("crash-node");
    let (storm, storm_wasm) = guest("trap-storm");
    let source = MapSource::new([(storm.clone(), storm_wasm)]);
    let mut agent = Agent::start(cp, &system, &node, source).await;
    let api: Api<Placement> = Api::namespaced(cp.client().await.unwrap(), &ns);
    let id = ComponentId::new(&ns, "storm");

    create(&api, &placement("storm", &node, "storm", &storm, 1)).await;
    wait_for(&api, "storm", |p| is_ready(p, &storm, 1), TIMEOUT)
        .await
        .unwrap();
    // Every message traps; a few in a row are a crash loop.
    for _ in 0..8 {
        let _ = agent.supervisor.send(&id, b"boom".to_vec()).await;
    }
    let degraded = wait_for(
        &api,
        "storm",
        |p| condition_status(p, "Degraded").as_deref() == Some("True"),
        TIMEOUT,
    )
    .await
    .unwrap();
    let status = degraded.status.clone().unwrap();
    let reason =
        airssys_crds::condition::find(&status.conditions, airssys_crds::ConditionType::Degraded)
            .unwrap()
            .reason
            .clone();
    assert_eq!(reason, "CrashLoop");
    assert_eq!(
        condition_status(&degraded, "Ready").as_deref(),
        Some("False")
    );
    assert_eq!(status.ready_instances, 0);
    assert!(status.restarts > 0, "{status:?}");
    assert!(status.last_error.unwrap_or_default().contains("crash"));
    agent.check_running();
    agent.shutdown().await;
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on `127.0.0.1:port`: the status and body, or `None` if nothing listens.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let request = http::Request::get(path)
        .header("host", "app.example.com")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.ok()?;
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .ok()?
        .to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn with_http(mut p: Placement, target_port: u16, path_prefix: &str) -> Placement {
    p.spec.http = Some(
        serde_json::from_value(serde_json::json!({
            "targetPort": target_port,
            "spec": {"pathPrefix": path_prefix, "maxConcurrentRequests": 8},
        }))
        .unwrap(),
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_placement_is_served_on_the_advertised_address_at_its_target_port() {
    let cp = ControlPlane::shared().await.unwrap();
    let system = cp.create_namespace("agent-sys").await.unwrap();
    let ns = cp.create_namespace("node-http").await.unwrap();
    let node = unique("http-node");
    let (hello, hello_wasm) = guest("http-hello");
    let (echo, echo_wasm) = guest("echo");
    let source = MapSource::new([(hello.clone(), hello_wasm), (echo.clone(), echo_wasm)]);
    let mut agent = Agent::start(cp, &system, &node, source).await;
    let client = cp.client().await.unwrap();
    let api: Api<Placement> = Api::namespaced(client.clone(), &ns);

    // The Lease says where HTTP components are served.
    let leases: Api<Lease> = Api::namespaced(client, &system);
    let lease = wait_for(&leases, &lease_name(&node), |_| true, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        lease.metadata.annotations.unwrap_or_default()[airssys_crds::agent::ADDRESS_ANNOTATION],
        "127.0.0.1"
    );

    // Ready means listening: once Ready, the component answers on its target port.
    let port = free_port();
    create(
        &api,
        &with_http(placement("web-node", &node, "web", &hello, 1), port, "/app"),
    )
    .await;
    wait_for(&api, "web-node", |p| is_ready(p, &hello, 1), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        http_get(port, "/app/x").await,
        Some((200, "hello from /app/x\n".into()))
    );
    assert_eq!(http_get(port, "/other").await.map(|a| a.0), Some(404));

    // A new target port: served there; the old one drains and closes.
    let moved = free_port();
    let patch = serde_json::json!({"spec": {"http": {"targetPort": moved, "spec": {"pathPrefix": "/app"}}}});
    api.patch("web-node", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while http_get(moved, "/app/y").await.is_none() {
        assert!(Instant::now() < deadline, "never served on the new port");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        http_get(moved, "/app/y").await,
        Some((200, "hello from /app/y\n".into()))
    );
    let deadline = Instant::now() + TIMEOUT;
    while http_get(port, "/app/x").await.is_some() {
        assert!(Instant::now() < deadline, "the old port stays open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // spec.http on a component that is no HTTP handler: not Ready, and the status says
    // which world is missing.
    create(
        &api,
        &with_http(
            placement("echo-node", &node, "echo", &echo, 1),
            free_port(),
            "/",
        ),
    )
    .await;
    let failed = wait_for(
        &api,
        "echo-node",
        |p| {
            p.status
                .as_ref()
                .and_then(|s| s.last_error.as_deref())
                .is_some_and(|e| e.contains("wasi:http/incoming-handler"))
        },
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_ne!(condition_status(&failed, "Ready").as_deref(), Some("True"));
    assert_eq!(ready_reason(&failed).as_deref(), Some("InvalidSpec"));

    // Deleting the Placement stops serving.
    api.delete("web-node", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while http_get(moved, "/app/z").await.is_some() {
        assert!(
            Instant::now() < deadline,
            "still served after the Placement went"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.shutdown().await;
}
