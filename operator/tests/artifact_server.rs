//! The artifact server end to end: the real `airssys-operator run` binary serving blobs over
//! TLS (trusting only the CA it published in its ConfigMap) to clients holding real
//! ServiceAccount tokens minted by the real API server (TokenRequest) and checked by it
//! (TokenReview), for components pushed with real `oras` into real registries (anonymous, and
//! demanding credentials the client never sees) and approved by the real controllers.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airssys_crds::agent::{ARTIFACT_CA_CONFIGMAP, ARTIFACT_CA_KEY, BLOB_PATH_PREFIX};
use airssys_crds::{Digest, TrustSource, WasmComponent};
use airssys_operator::artifact::{component_layer, digest_of};
use airssys_test_support::{
    ControlPlane, Registry, RegistryAuth, RegistryOptions, Supervised, push_wasm, wait_for,
};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, PostParams};

const TIMEOUT: Duration = Duration::from_secs(60);

/// The operator of this test binary and what the tests need to reach its artifact server.
struct Served {
    operator: Mutex<Supervised>,
    addr: SocketAddr,
    ca_pem: String,
    blob_dir: PathBuf,
    /// Product namespace: the agent ServiceAccount `airssys-agent` and `intruder` live there.
    product: String,
}

static SERVED: tokio::sync::OnceCell<Served> = tokio::sync::OnceCell::const_new();

async fn setup() -> (&'static ControlPlane, &'static Served) {
    let cp = ControlPlane::shared().await.unwrap();
    let served = SERVED
        .get_or_init(|| async {
            let product = cp.create_namespace("airssys").await.unwrap();
            let accounts: Api<ServiceAccount> =
                Api::namespaced(cp.client().await.unwrap(), &product);
            for name in ["airssys-agent", "intruder"] {
                let sa: ServiceAccount =
                    serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
                        .unwrap();
                accounts.create(&PostParams::default(), &sa).await.unwrap();
            }
            let blob_dir = cp.dir().join("operator-blobs");
            let operator = common::spawn_operator(
                cp,
                &[
                    "--namespace",
                    &product,
                    "--artifact-addr",
                    "127.0.0.1:0",
                    "--blob-dir",
                    blob_dir.to_str().unwrap(),
                ],
                "operator-artifacts.log",
            );
            let addr = artifact_addr(&operator).await;
            let maps: Api<ConfigMap> = Api::namespaced(cp.client().await.unwrap(), &product);
            let ca_pem = maps.get(ARTIFACT_CA_CONFIGMAP).await.unwrap().data.unwrap()
                [ARTIFACT_CA_KEY]
                .clone();
            Served {
                operator,
                addr,
                ca_pem,
                blob_dir,
                product,
            }
        })
        .await;
    common::assert_running(&served.operator);
    (cp, served)
}

/// The artifact server's address, from the operator's start-up log.
async fn artifact_addr(operator: &Mutex<Supervised>) -> SocketAddr {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        common::assert_running(operator);
        let log = std::fs::read_to_string(operator.lock().unwrap().log_path()).unwrap_or_default();
        if let Some(addr) = log
            .split("\"artifact_addr\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
        {
            return addr.parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the artifact server never started:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A token of ServiceAccount `ns/name`, as a pod's projected token would be.
async fn token(cp: &ControlPlane, ns: &str, name: &str) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(cp.client().await.unwrap(), ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        },
        ..TokenRequest::default()
    };
    api.create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
}

/// What one request got: the status and the body (`Err` when the body broke off).
type Answer = (StatusCode, Result<Vec<u8>, String>);

/// `method` of `path` over TLS, trusting only the published CA and checking the certificate
/// for 127.0.0.1.
async fn request(served: &Served, method: &str, path: &str, token: Option<&str>) -> Answer {
    try_request(served, method, path, token).await.unwrap()
}

/// [`request`], with a connection closed before the answer's head as an `Err`.
async fn try_request(
    served: &Served,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<Answer, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(served.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::from(served.addr.ip());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, served.addr.to_string());
    if let Some(token) = token {
        builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = sender
        .send_request(builder.body(Empty::<Bytes>::new()).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .map_err(|e| e.to_string());
    Ok((status, body))
}

async fn get(served: &Served, digest: &str, token: Option<&str>) -> Answer {
    request(served, "GET", &format!("{BLOB_PATH_PREFIX}{digest}"), token).await
}

/// GETs `digest` as the agent and checks the answer is exactly its bytes.
async fn fetch_verified(served: &Served, digest: &str, agent: &str) -> Vec<u8> {
    let (status, body) = get(served, digest, Some(agent)).await;
    let body = body.unwrap_or_else(|e| panic!("{digest}: body broke off: {e}"));
    assert_eq!(
        status,
        StatusCode::OK,
        "{digest}: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        digest_of(&body).as_str(),
        digest,
        "the body is the digest's bytes"
    );
    body
}

fn component_bytes(payload: &str) -> Vec<u8> {
    let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
    bytes.extend_from_slice(payload.as_bytes());
    bytes
}

/// A `Trust` source for every repository under `{addr}/{path}/`.
async fn trust_registry(cp: &ControlPlane, name: &str, addr: &str, path: &str) {
    let source: TrustSource = serde_json::from_value(serde_json::json!({
        "apiVersion": "wasm.airssys.dev/v1alpha1",
        "kind": "TrustSource",
        "metadata": {"name": name},
        "spec": {"decision": "Trust", "registries": [{"repository": format!("{addr}/{path}/**")}]},
    }))
    .unwrap();
    let api: Api<TrustSource> = Api::all(cp.client().await.unwrap());
    api.create(&PostParams::default(), &source).await.unwrap();
}

async fn create_component(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
    reference: &str,
    secrets: &[&str],
) {
    let secrets: Vec<serde_json::Value> = secrets
        .iter()
        .map(|s| serde_json::json!({"name": s}))
        .collect();
    let component: WasmComponent = serde_json::from_value(serde_json::json!({
        "apiVersion": "wasm.airssys.dev/v1alpha1",
        "kind": "WasmComponent",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"artifact": {"oci": {"reference": reference, "insecure": true, "pullSecrets": secrets}}},
    }))
    .unwrap();
    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), ns);
    api.create(&PostParams::default(), &component)
        .await
        .unwrap();
}

fn approved(c: &WasmComponent) -> Option<String> {
    let status = c.status.as_ref()?;
    airssys_crds::condition::is_true(&status.conditions, airssys_crds::ConditionType::Approved)
        .then(|| status.approved_digest.clone())
        .flatten()
}

async fn wait_approved(cp: &ControlPlane, ns: &str, name: &str) -> String {
    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), ns);
    let c = wait_for(&api, name, |c| approved(c).is_some(), TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{ns}/{name} was never approved: {e}"));
    approved(&c).unwrap()
}

/// How many times the registry has served blob `digest`.
fn blob_downloads(registry: &Registry, digest: &str) -> usize {
    let needle = format!("/blobs/{digest}");
    registry
        .log_tail(100_000)
        .lines()
        .filter(|line| line.contains("GET ") && line.contains(&needle))
        .count()
}

/// Fetches `manifest` and the layer it names as an agent does; returns the layer's bytes.
async fn fetch_component(served: &Served, manifest: &str, agent: &str) -> (Digest, Vec<u8>) {
    let manifest_bytes = fetch_verified(served, manifest, agent).await;
    let (layer, _) = component_layer(manifest, &manifest_bytes).unwrap();
    let wasm = fetch_verified(served, layer.as_str(), agent).await;
    (layer, wasm)
}

#[tokio::test]
async fn approved_blobs_reach_the_agent_identity_only() {
    let (cp, served) = setup().await;
    let ns = cp.create_namespace("art-public").await.unwrap();
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addr = registry.address();
    let bytes = component_bytes("served echo");
    let digest = push_wasm(dir.path(), &format!("{addr}/{ns}/echo:v1"), &bytes).unwrap();
    let source = format!("{ns}-registry");
    trust_registry(cp, &source, addr, &ns).await;
    create_component(cp, &ns, "echo", &format!("{addr}/{ns}/echo:v1"), &[]).await;
    assert_eq!(wait_approved(cp, &ns, "echo").await, digest);

    let agent = token(cp, &served.product, "airssys-agent").await;
    let (layer, wasm) = fetch_component(served, &digest, &agent).await;
    assert_eq!(wasm, bytes, "the component layer is the pushed component");
    assert!(
        served.blob_dir.join("sha256").join(layer.hex()).is_file(),
        "kept on the operator's disk"
    );

    // Who: no token and a token the API server never issued are 401; a real token of another
    // identity is 403; a HEAD answers as a GET without the body.
    let (status, _) = get(served, &digest, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = get(served, &digest, Some("not-a-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let intruder = token(cp, &served.product, "intruder").await;
    let (status, _) = get(served, &digest, Some(&intruder)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = request(
        served,
        "HEAD",
        &format!("{BLOB_PATH_PREFIX}{digest}"),
        Some(&agent),
    )
    .await;
    assert_eq!((status, body.unwrap().len()), (StatusCode::OK, 0));

    // What: a digest nobody approved is not found, even when the registry holds it.
    let pending_bytes = component_bytes("pending echo");
    let pending = push_wasm(
        dir.path(),
        &format!("{addr}/elsewhere/echo:v1"),
        &pending_bytes,
    )
    .unwrap();
    create_component(
        cp,
        &ns,
        "pending",
        &format!("{addr}/elsewhere/echo:v1"),
        &[],
    )
    .await;
    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), &ns);
    wait_for(
        &api,
        "pending",
        |c| airssys_test_support::condition_status(c, "Approved").as_deref() == Some("False"),
        TIMEOUT,
    )
    .await
    .unwrap();
    for digest in [
        pending.clone(),
        digest_of(&pending_bytes).to_string(),
        digest_of(b"nothing").to_string(),
    ] {
        let (status, _) = get(served, &digest, Some(&agent)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{digest}");
    }
    let (status, _) = request(served, "GET", "/v1/blobs/../../etc/passwd", Some(&agent)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Many agents asking at once for a blob the server does not hold: one download.
    let bytes2 = component_bytes("served echo v2");
    let digest2 = push_wasm(dir.path(), &format!("{addr}/{ns}/echo2:v1"), &bytes2).unwrap();
    create_component(cp, &ns, "echo2", &format!("{addr}/{ns}/echo2:v1"), &[]).await;
    wait_approved(cp, &ns, "echo2").await;
    let manifest2 = fetch_verified(served, &digest2, &agent).await;
    let (layer2, _) = component_layer(&digest2, &manifest2).unwrap();
    let before = blob_downloads(&registry, layer2.as_str());
    let answers =
        futures::future::join_all((0..8).map(|_| get(served, layer2.as_str(), Some(&agent)))).await;
    for (status, body) in answers {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.unwrap(), bytes2);
    }
    assert_eq!(
        blob_downloads(&registry, layer2.as_str()),
        before + 1,
        "one download shared"
    );
    fetch_verified(served, layer2.as_str(), &agent).await;
    assert_eq!(
        blob_downloads(&registry, layer2.as_str()),
        before + 1,
        "then served from disk"
    );

    // Bytes changed on the operator's disk never go out whole: the answer breaks off, the
    // blob is dropped, and the next request reads it from the registry again.
    let stored = served.blob_dir.join("sha256").join(layer2.hex());
    let mut evil = bytes2.clone();
    evil[0] ^= 1;
    std::fs::write(&stored, &evil).unwrap();
    let path = format!("{BLOB_PATH_PREFIX}{layer2}");
    // The answer ends before its last chunk: after its head, or (one chunk) before it.
    // (An `Err` is a connection closed with no answer at all.)
    if let Ok((status, body)) = try_request(served, "GET", &path, Some(&agent)).await {
        assert!(
            status != StatusCode::OK || body.is_err(),
            "tampered bytes were served whole"
        );
    }
    assert!(!stored.exists(), "the changed blob is dropped");
    fetch_verified(served, layer2.as_str(), &agent).await;
    assert_eq!(blob_downloads(&registry, layer2.as_str()), before + 2);

    // Revoked: the source goes, the approval goes, and so do the bytes.
    let sources: Api<TrustSource> = Api::all(cp.client().await.unwrap());
    sources
        .delete(&source, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(&api, "echo", |c| approved(c).is_none(), TIMEOUT)
        .await
        .unwrap();
    // The server sees the status through its own watch, a moment later.
    let deadline = Instant::now() + TIMEOUT;
    while get(served, &digest, Some(&agent)).await.0 != StatusCode::NOT_FOUND {
        assert!(
            Instant::now() < deadline,
            "a revoked component's manifest is still served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = get(served, layer.as_str(), Some(&agent)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a revoked component's layer");
    common::assert_running(&served.operator);
}

#[tokio::test]
async fn private_registry_blobs_reach_the_agent_without_its_credentials() {
    let (cp, served) = setup().await;
    let ns = cp.create_namespace("art-private").await.unwrap();
    let agent = token(cp, &served.product, "airssys-agent").await;
    let auths: [fn(String, String) -> RegistryAuth; 2] = [
        |user, password| RegistryAuth::Token { user, password },
        |user, password| RegistryAuth::Basic { user, password },
    ];
    for (i, auth) in auths.into_iter().enumerate() {
        let registry = Registry::start_with(RegistryOptions {
            auth: Some(auth("robot".into(), "s3cret".into())),
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        registry.login(dir.path()).unwrap();
        let addr = registry.address().to_owned();
        let reference = format!("{addr}/{ns}/private:v1");
        let bytes = component_bytes(&format!("private echo {i}"));
        let digest = push_wasm(dir.path(), &reference, &bytes).unwrap();
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("pull-{i}"), "namespace": ns},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": registry.docker_config("robot", "s3cret")},
        }))
        .unwrap();
        let secrets: Api<Secret> = Api::namespaced(cp.client().await.unwrap(), &ns);
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        trust_registry(cp, &format!("{ns}-private-{i}"), &addr, &ns).await;
        let name = format!("private-{i}");
        create_component(cp, &ns, &name, &reference, &[&format!("pull-{i}")]).await;
        assert_eq!(wait_approved(cp, &ns, &name).await, digest);

        // The registry refuses anyone without the robot's password; the agent has only its
        // own token, and gets the bytes.
        let (_, wasm) = fetch_component(served, &digest, &agent).await;
        assert_eq!(wasm, bytes, "{:?}", registry.auth());
    }
    common::assert_running(&served.operator);
}

#[tokio::test]
async fn replicas_starting_together_share_one_ca() {
    use airssys_operator::artifact::serve::tls::{TLS_SECRET, ensure_ca, publish_ca};
    let cp = ControlPlane::shared().await.unwrap();
    let ns = cp.create_namespace("art-ca").await.unwrap();
    let client = cp.client().await.unwrap();
    // Two replicas find no Secret and both try to create it: one wins, the other reads it.
    let (a, b) = futures::future::join(ensure_ca(&client, &ns), ensure_ca(&client, &ns)).await;
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.cert, b.cert, "one CA for both");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let stored = secrets.get(TLS_SECRET).await.unwrap().data.unwrap();
    assert_eq!(
        stored["ca.crt"].0,
        a.cert.as_bytes(),
        "the one in the Secret"
    );
    // A restart reuses it, and both publish the same certificate without a conflict.
    assert_eq!(ensure_ca(&client, &ns).await.unwrap().cert, a.cert);
    publish_ca(&client, &ns, &a.cert).await.unwrap();
    publish_ca(&client, &ns, &b.cert).await.unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(client, &ns);
    let published = maps.get(ARTIFACT_CA_CONFIGMAP).await.unwrap().data.unwrap();
    assert_eq!(published[ARTIFACT_CA_KEY], a.cert);
}
