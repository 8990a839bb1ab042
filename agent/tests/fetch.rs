//! [`ArtifactClient`] against the real artifact server: the operator's controllers and server
//! run in this process (a binary of another package cannot be built from a test) against the
//! real control plane; a real guest component is pushed with real `oras` and approved by a
//! real TrustSource; the client authenticates with a real ServiceAccount token and trusts the
//! CA it reads from the published ConfigMap. The fetched bytes then compile in the real engine.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use airssys_agent::Error;
use airssys_agent::artifact::ArtifactSource as _;
use airssys_agent::engine::{AgentEngine, EngineConfig};
use airssys_agent::fetch::{ArtifactClient, ArtifactClientConfig};
use airssys_crds::{Digest, PlacementSpec, TrustSource, WasmComponent};
use airssys_operator::artifact::ResolverOptions;
use airssys_operator::artifact::serve::{ArtifactServerOptions, default_server_names};
use airssys_operator::metrics::Metrics;
use airssys_operator::{Config, Resolver};
use airssys_test_support::{ControlPlane, Registry, client_from, push_wasm, wait_for};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;

const TIMEOUT: Duration = Duration::from_secs(60);

/// The product namespace and the artifact server's address, once the in-process operator
/// serves.
struct Operator {
    product: String,
    addr: SocketAddr,
}

static OPERATOR: tokio::sync::OnceCell<Operator> = tokio::sync::OnceCell::const_new();

/// Starts the controllers and the artifact server once for this test binary, on a thread and
/// runtime of their own so they outlive each test's runtime.
async fn setup() -> (&'static ControlPlane, &'static Operator) {
    let cp = ControlPlane::shared().await.unwrap();
    let op = OPERATOR.get_or_init(|| start_operator(cp)).await;
    (cp, op)
}

async fn start_operator(cp: &'static ControlPlane) -> Operator {
    let product = cp.create_namespace("airssys").await.unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(cp.client().await.unwrap(), &product);
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "airssys-agent"}})).unwrap();
    accounts.create(&PostParams::default(), &sa).await.unwrap();

    let (tx, rx) = tokio::sync::oneshot::channel();
    let kubeconfig = cp.kubeconfig_path().to_owned();
    let blob_dir = cp.dir().join("operator-blobs");
    let options = ArtifactServerOptions {
        addr: "127.0.0.1:0".parse().unwrap(),
        namespace: product.clone(),
        server_names: default_server_names(&product),
        agent_user: format!("system:serviceaccount:{product}:airssys-agent"),
        blob_dir,
        blob_cache_bytes: 1 << 30,
    };
    std::thread::Builder::new()
        .name("operator".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let client = client_from(&kubeconfig).await.unwrap();
                let resolver = Resolver::new(ResolverOptions::default()).unwrap();
                let config = Config {
                    insecure_registries: vec!["127.0.0.1".to_owned()],
                    recheck: Duration::from_secs(2),
                    ..Config::default()
                };
                let started = airssys_operator::artifact::serve::start(
                    client.clone(),
                    resolver.clone(),
                    config.clone(),
                    options,
                )
                .await
                .unwrap();
                tx.send(started.bound).unwrap();
                tokio::spawn(started.serving);
                let metrics = Arc::new(Metrics::default());
                airssys_operator::controller::run(client, resolver, config, metrics)
                    .await
                    .unwrap();
            });
        })
        .unwrap();
    let addr = rx.await.unwrap();
    Operator { product, addr }
}

/// Writes a fresh token of the agent's ServiceAccount to `path`, as the kubelet projects it.
async fn write_token(cp: &ControlPlane, product: &str, path: &Path) {
    let api: Api<ServiceAccount> = Api::namespaced(cp.client().await.unwrap(), product);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        },
        ..TokenRequest::default()
    };
    let token = api
        .create_token_request("airssys-agent", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    std::fs::write(path, token).unwrap();
}

/// Pushes `wasm` to a fresh repository, trusts it, applies a component and waits for its
/// approval; returns the Placement an operator would write for it.
async fn approved_placement(
    cp: &ControlPlane,
    registry: &Registry,
    ns: &str,
    wasm: &[u8],
) -> PlacementSpec {
    let dir = tempfile::tempdir().unwrap();
    let addr = registry.address();
    let reference = format!("{addr}/{ns}/echo:v1");
    push_wasm(dir.path(), &reference, wasm).unwrap();
    let source: TrustSource = serde_json::from_value(serde_json::json!({
        "apiVersion": "wasm.airssys.dev/v1alpha1",
        "kind": "TrustSource",
        "metadata": {"name": format!("{ns}-registry")},
        "spec": {"decision": "Trust", "registries": [{"repository": format!("{addr}/{ns}/**")}]},
    }))
    .unwrap();
    Api::<TrustSource>::all(cp.client().await.unwrap())
        .create(&PostParams::default(), &source)
        .await
        .unwrap();
    let component: WasmComponent = serde_json::from_value(serde_json::json!({
        "apiVersion": "wasm.airssys.dev/v1alpha1",
        "kind": "WasmComponent",
        "metadata": {"name": "echo", "namespace": ns},
        "spec": {"artifact": {"oci": {"reference": reference, "insecure": true}}},
    }))
    .unwrap();
    let api: Api<WasmComponent> = Api::namespaced(cp.client().await.unwrap(), ns);
    api.create(&PostParams::default(), &component)
        .await
        .unwrap();
    let approved = |c: &WasmComponent| {
        c.status.as_ref().and_then(|s| {
            airssys_crds::condition::is_true(&s.conditions, airssys_crds::ConditionType::Approved)
                .then(|| s.approved_digest.clone())
                .flatten()
        })
    };
    let c = wait_for(&api, "echo", |c| approved(c).is_some(), TIMEOUT)
        .await
        .unwrap();
    let digest = approved(&c).unwrap();
    serde_json::from_value(serde_json::json!({
        "nodeName": "node-a",
        "component": {"name": "echo", "uid": c.metadata.uid.unwrap(), "generation": 1},
        "digest": digest,
        "artifact": {"oci": {"reference": format!("{addr}/{ns}/echo@{digest}"), "insecure": true}},
        "instances": 1,
    }))
    .unwrap()
}

fn digest_of(bytes: &[u8]) -> Digest {
    airssys_agent::engine::sha256_digest(bytes)
}

#[tokio::test]
async fn fetches_verifies_caches_and_refetches_a_corrupt_cache() {
    let (cp, op) = setup().await;
    let ns = cp.create_namespace("fetch").await.unwrap();
    let registry = Registry::start().await.unwrap();
    let guest = support::guest("echo");
    let placement = approved_placement(cp, &registry, &ns, &guest).await;

    let node = tempfile::tempdir().unwrap();
    let token_file = node.path().join("token");
    write_token(cp, &op.product, &token_file).await;
    let mut config =
        ArtifactClientConfig::new(format!("https://{}", op.addr), node.path().join("cache"));
    config.token_file = token_file.clone();
    let client =
        ArtifactClient::from_config_map(config.clone(), cp.client().await.unwrap(), &op.product)
            .await
            .unwrap();

    // The component of the approved manifest, verified, and usable by the engine.
    let fetched = client.fetch(&placement).await.unwrap();
    assert_eq!(&fetched.wasm[..], &guest[..]);
    assert_eq!(
        fetched.wasm_digest,
        digest_of(&guest),
        "the layer's digest, not the manifest's"
    );
    let engine =
        AgentEngine::new(EngineConfig::new(node.path().join("compiled")).with_capacity(4)).unwrap();
    engine
        .prepare(&fetched.wasm_digest, &fetched.wasm)
        .await
        .unwrap();

    // Cached on disk: a client whose server is gone still gets the bytes.
    let layer_file = client.cache_path(&fetched.wasm_digest);
    assert_eq!(std::fs::read(&layer_file).unwrap(), &guest[..]);
    assert!(
        client.cache_path(&placement.digest).is_file(),
        "the manifest too"
    );
    let mut offline = config.clone();
    offline.server = "https://127.0.0.1:1".to_owned();
    let ca = cp.client().await.unwrap();
    let offline = ArtifactClient::from_config_map(offline, ca, &op.product)
        .await
        .unwrap();
    let again = offline.fetch(&placement).await.unwrap();
    assert_eq!(&again.wasm[..], &guest[..], "served from the node's disk");

    // A cached file that changed is never used: deleted, and fetched again where possible.
    let mut evil = guest.to_vec();
    let last = evil.len() - 1;
    evil[last] ^= 1;
    std::fs::write(&layer_file, &evil).unwrap();
    let err = offline.fetch(&placement).await.unwrap_err();
    assert!(matches!(err, Error::Fetch { .. }), "{err}");
    assert!(!layer_file.exists(), "the corrupt file is gone");
    std::fs::write(&layer_file, &evil).unwrap();
    let refetched = client.fetch(&placement).await.unwrap();
    assert_eq!(&refetched.wasm[..], &guest[..]);
    assert_eq!(
        std::fs::read(&layer_file).unwrap(),
        &guest[..],
        "the cache is repaired"
    );

    // A rotated token: the client re-reads the file after a 401 (once per request).
    let rotating = node.path().join("rotating-token");
    std::fs::write(&rotating, "expired").unwrap();
    let mut rotated = config.clone();
    rotated.token_file = rotating.clone();
    rotated.cache_dir = node.path().join("cache-2");
    let rotated = ArtifactClient::from_config_map(rotated, cp.client().await.unwrap(), &op.product)
        .await
        .unwrap();
    let err = rotated.fetch(&placement).await.unwrap_err();
    assert!(
        matches!(&err, Error::Fetch { reason, .. } if reason.contains("401")),
        "{err}"
    );
    write_token(cp, &op.product, &rotating).await;
    let fetched = rotated.fetch(&placement).await.unwrap();
    assert_eq!(
        &fetched.wasm[..],
        &guest[..],
        "the new token, read after a 401"
    );

    // A digest nobody approved: the server says not found, and the client says so.
    let mut unknown = placement.clone();
    unknown.digest = digest_of(b"never approved");
    let err = client.fetch(&unknown).await.unwrap_err();
    assert!(
        matches!(&err, Error::Fetch { reason, .. } if reason.contains("404")),
        "{err}"
    );
}

/// An artifact server that answers every request with `body`: a compromised or confused
/// server. Returns its address and CA.
async fn lying_server(body: Vec<u8>) -> (SocketAddr, String) {
    server_named(&["127.0.0.1"], body).await
}

/// A server answering every request with `body`, its certificate naming `names` only.
async fn server_named(names: &[&str], body: Vec<u8>) -> (SocketAddr, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let leaf = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&leaf_key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            // A client that refuses the certificate ends the handshake; serve the next one.
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if tls.read(&mut byte).await.unwrap() == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            let response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            tls.write_all(response.as_bytes()).await.unwrap();
            tls.write_all(&body).await.unwrap();
            tls.shutdown().await.unwrap();
        }
    });
    (addr, ca.pem())
}

#[tokio::test]
async fn bytes_that_do_not_hash_to_the_digest_are_refused_and_not_cached() {
    let (addr, ca) = lying_server(b"\0asm not what was approved".to_vec()).await;
    let node = tempfile::tempdir().unwrap();
    let token_file = node.path().join("token");
    std::fs::write(&token_file, "token").unwrap();
    let mut config =
        ArtifactClientConfig::new(format!("https://{addr}"), node.path().join("cache"));
    config.token_file = token_file;
    let client = ArtifactClient::from_pem(config, ca.as_bytes()).unwrap();
    let digest = digest_of(b"\0asm the approved component");
    let placement: PlacementSpec = serde_json::from_value(serde_json::json!({
        "nodeName": "node-a",
        "component": {"name": "echo", "uid": "u", "generation": 1},
        "digest": digest.as_str(),
        "artifact": {"https": {"url": "https://example.com/echo.wasm", "digest": digest.as_str()}},
        "instances": 1,
    }))
    .unwrap();
    let err = client.fetch(&placement).await.unwrap_err();
    match err {
        Error::DigestMismatch { expected, actual } => {
            assert_eq!(expected, digest);
            assert_eq!(actual, digest_of(b"\0asm not what was approved"));
        }
        other => panic!("expected DigestMismatch, got {other}"),
    }
    assert!(!client.cache_path(&digest).exists(), "nothing cached");

    // More bytes than the engine compiles are refused before they are all read.
    let mut small = ArtifactClientConfig::new(format!("https://{addr}"), node.path().join("cache"));
    small.token_file = node.path().join("token");
    small.max_component_bytes = 8;
    let client = ArtifactClient::from_pem(small, ca.as_bytes()).unwrap();
    let err = client.fetch(&placement).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { limit: 8, .. }), "{err}");
}

/// A server reached by address whose certificate names only its Service (pods without
/// cluster DNS reach the artifact server by ClusterIP): the agent verifies the name given by
/// `--artifact-server-name`, and without it refuses the certificate.
#[tokio::test]
async fn a_server_reached_by_address_is_verified_against_the_given_name() {
    let bytes = b"\0asm the approved component".to_vec();
    let service = "airssys-wasm-operator.airssys-system.svc";
    let (addr, ca) = server_named(&[service], bytes.clone()).await;
    let node = tempfile::tempdir().unwrap();
    let token_file = node.path().join("token");
    std::fs::write(&token_file, "token").unwrap();
    let digest = digest_of(&bytes);
    let placement: PlacementSpec = serde_json::from_value(serde_json::json!({
        "nodeName": "node-a",
        "component": {"name": "echo", "uid": "u", "generation": 1},
        "digest": digest.as_str(),
        "artifact": {"https": {"url": "https://example.com/echo.wasm", "digest": digest.as_str()}},
        "instances": 1,
    }))
    .unwrap();
    let config = |name: Option<&str>, cache: &str| {
        let mut c = ArtifactClientConfig::new(format!("https://{addr}"), node.path().join(cache));
        c.token_file = token_file.clone();
        c.server_name = name.map(str::to_owned);
        c
    };

    let by_address = ArtifactClient::from_pem(config(None, "a"), ca.as_bytes()).unwrap();
    let err = by_address.fetch(&placement).await.unwrap_err();
    assert!(
        err.to_string().contains("TLS handshake"),
        "the certificate does not name {addr}: {err}"
    );
    let wrong =
        ArtifactClient::from_pem(config(Some("elsewhere.svc"), "b"), ca.as_bytes()).unwrap();
    let err = wrong.fetch(&placement).await.unwrap_err();
    assert!(err.to_string().contains("TLS handshake"), "{err}");

    let named = ArtifactClient::from_pem(config(Some(service), "c"), ca.as_bytes()).unwrap();
    named.fetch(&placement).await.unwrap();
    assert!(named.cache_path(&digest).exists(), "fetched and cached");
}
