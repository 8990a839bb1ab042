//! The artifact path against a real OCI registry (`tests/cluster/registry`: go-containerregistry's
//! registry with blobs on disk and optional Basic or token authentication), with components
//! pushed by real `oras` and signed by real `cosign`, as users do it.
//!
//! The tools come from `tests/cluster/build.sh` through `airssys-test-support` (built on first
//! use; `AIRSSYS_TOOLS_BIN` points at a prebuilt bin directory). A missing tool fails the test
//! with the harness's message; nothing is skipped.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airssys_crds::capability::CapabilitySet;
use airssys_crds::component::TrustLevel;
use airssys_crds::trust_source::TrustSourceSpec;
use airssys_operator::artifact::cosign::{signature_tag, verify};
use airssys_operator::artifact::credentials::credentials_for;
use airssys_operator::artifact::{
    ErrorClass, PublicKey, RegistryCredentials, Resolver, ResolverOptions, RetryPolicy, Signer,
    digest_of,
};
use airssys_operator::{Applied, ArtifactError, ComponentFacts, Policy, Reason, TrustIndex};
use airssys_test_support::{Registry, RegistryAuth, RegistryOptions, push_wasm, run_tool};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, SanType,
};

const ISSUER: &str = "https://token.actions.example.com";
const SUBJECT: &str = "https://git.example.com/platform/echo/.pipeline/release.yaml@refs/tags/v1";

/// Runs a harness tool in `dir`; fails the test with its output if it fails.
fn run(dir: &Path, tool: &str, args: &[&str]) -> String {
    run_tool(dir, tool, args).unwrap_or_else(|e| panic!("{e}"))
}

/// Pushes `bytes` as a single-layer wasm artifact with oras; returns oras's digest.
fn push(dir: &Path, reference: &str, bytes: &[u8]) -> String {
    push_wasm(dir, reference, bytes).unwrap_or_else(|e| panic!("{e}"))
}

fn resolver() -> Resolver {
    let retry = RetryPolicy {
        attempts: 2,
        initial: Duration::from_millis(10),
        max: Duration::from_millis(20),
    };
    Resolver::new(ResolverOptions {
        retry,
        ..Default::default()
    })
    .unwrap()
}

fn component_bytes(tag: &str) -> Vec<u8> {
    // A wasm header then payload; the resolver hashes bytes, it does not parse them.
    let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
    bytes.extend_from_slice(tag.as_bytes());
    bytes
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn indent(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A CA and a signing certificate for the public key in `signer_pub` (PEM), with a Fulcio
/// issuer extension and a URI identity. Returns (CA PEM, leaf PEM).
fn issue_certificate(signer_pub: &str) -> (String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Example Signing CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();

    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![SanType::URI(SUBJECT.try_into().unwrap())];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    let mut issuer_der = vec![0x0c, u8::try_from(ISSUER.len()).unwrap()];
    issuer_der.extend_from_slice(ISSUER.as_bytes());
    leaf.custom_extensions = vec![CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 4, 1, 57264, 1, 8],
        issuer_der,
    )];
    let public = rcgen::SubjectPublicKeyInfo::from_pem(signer_pub).unwrap();
    let cert = leaf
        .signed_by(&public, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    (ca.pem(), cert.pem())
}

#[tokio::test]
async fn resolve_fetch_and_verify_cosign_signatures() {
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = registry.address();
    let reference = format!("{addr}/platform/echo:v1");
    let bytes = component_bytes("echo v1");
    let oras_digest = push(d, &reference, &bytes);

    // Tag → manifest digest, the same digest oras reports.
    let resolver = resolver();
    let resolved = resolver.resolve_oci(&reference, true, None).await.unwrap();
    assert_eq!(resolved.digest.as_str(), oras_digest);
    assert_eq!(resolved.repository, format!("{addr}/platform/echo"));
    assert_eq!(
        resolved.layer_digest,
        digest_of(&bytes),
        "the layer is the component"
    );

    // Fetch by digest and re-hash.
    assert_eq!(resolver.fetch_oci(&resolved, None).await.unwrap(), bytes);
    let pinned = resolver
        .resolve_oci(&resolved.pinned_reference(), true, None)
        .await
        .unwrap();
    assert_eq!(
        pinned.digest, resolved.digest,
        "a digest reference resolves to itself"
    );
    assert!(
        resolver
            .fetch_signatures(&resolved, None)
            .await
            .unwrap()
            .is_empty(),
        "unsigned before cosign runs"
    );

    // Two signatures with real cosign: a plain key signature, and one carrying a certificate
    // from our own CA (the offline keyless shape).
    std::fs::create_dir(d.join("a")).unwrap();
    std::fs::create_dir(d.join("b")).unwrap();
    run(&d.join("a"), "cosign", &["generate-key-pair"]);
    run(&d.join("b"), "cosign", &["generate-key-pair"]);
    let key_a = std::fs::read_to_string(d.join("a/cosign.pub")).unwrap();
    let key_b = std::fs::read_to_string(d.join("b/cosign.pub")).unwrap();
    let (ca_pem, leaf_pem) = issue_certificate(&key_b);
    std::fs::write(d.join("b/leaf.pem"), &leaf_pem).unwrap();
    std::fs::write(d.join("b/chain.pem"), &ca_pem).unwrap();
    let pinned_ref = resolved.pinned_reference();
    let sign = [
        "sign",
        "--tlog-upload=false",
        "--allow-http-registry",
        "--allow-insecure-registry",
        "--yes",
    ];
    run(
        &d.join("a"),
        "cosign",
        &[&sign[..], &["--key", "cosign.key", &pinned_ref]].concat(),
    );
    run(
        &d.join("b"),
        "cosign",
        &[
            &sign[..],
            &[
                "--key",
                "cosign.key",
                "--certificate",
                "leaf.pem",
                "--certificate-chain",
                "chain.pem",
                &pinned_ref,
            ],
        ]
        .concat(),
    );

    let layers = resolver.fetch_signatures(&resolved, None).await.unwrap();
    assert_eq!(layers.len(), 2, "both signatures fetched");
    assert_eq!(
        layers.iter().filter(|l| l.certificate.is_some()).count(),
        1,
        "one carries a certificate"
    );

    // A source that needs both: the key and the certificate identity.
    let yaml = format!(
        "decision: Trust\nminimumSignatures: 2\nregistries: [{{ repository: '{addr}/platform/**' }}]\nkeys:\n  - name: release-key\n    publicKey: |\n{}\nidentities:\n  - issuer: {ISSUER}\n    subjectPrefix: https://git.example.com/platform/\ntrustRoot:\n  certificateAuthorities:\n    - pem: |\n{}\ncapabilityCeiling:\n  env: [{{ name: LOG_LEVEL }}]",
        indent(&key_a, 6),
        indent(&ca_pem, 10)
    );
    let spec: TrustSourceSpec = serde_yaml::from_str(&yaml).unwrap();
    let mut index = TrustIndex::new();
    assert_eq!(
        index.apply_spec("release", Some(1), &spec),
        Applied::Accepted
    );

    let verification = index.with_material(|m| verify(&resolved.digest, &layers, m, now()));
    let key_fp = PublicKey::from_pem(&key_a)
        .unwrap()
        .fingerprint()
        .to_owned();
    assert!(
        verification.signers.contains(&Signer::Key {
            fingerprint: key_fp
        }),
        "{verification:?}"
    );
    assert!(
        verification
            .signers
            .iter()
            .any(|s| matches!(s, Signer::Certificate { issuer, subject, .. } if issuer == ISSUER && subject == SUBJECT)),
        "{verification:?}"
    );

    let request: CapabilitySet =
        CapabilitySet::parse(&serde_yaml::from_str("env: [{ name: LOG_LEVEL }]").unwrap()).unwrap();
    let facts = ComponentFacts {
        repository: Some(resolved.repository.clone()),
        signers: verification.signers.clone(),
        ..ComponentFacts::new(
            "wasm-demo",
            "echo",
            resolved.digest.clone(),
            request.clone(),
        )
    };
    let decision = index.decide(&facts, Policy::default());
    assert_eq!(
        (decision.level, decision.approved, decision.reason),
        (TrustLevel::Trusted, true, Reason::TrustSourceMatched),
        "{}",
        decision.message
    );
    assert_eq!(decision.matched_sources, ["release"]);

    // The signatures are bound to the digest: a new push under the tag is a new digest with
    // no signatures, and goes back to pending.
    let v2 = push(d, &reference, &component_bytes("echo v2"));
    let moved = resolver.resolve_oci(&reference, true, None).await.unwrap();
    assert_eq!(moved.digest.as_str(), v2);
    assert_ne!(moved.digest, resolved.digest, "the tag moved");
    let layers = resolver.fetch_signatures(&moved, None).await.unwrap();
    assert!(layers.is_empty());
    let decision = index.decide(
        &ComponentFacts {
            digest: Some(moved.digest.clone()),
            signers: Vec::new(),
            ..facts
        },
        Policy::default(),
    );
    assert_eq!(
        (decision.approved, decision.reason),
        (false, Reason::PendingApproval)
    );
    assert!(
        decision.message.contains("needs 2 signature(s)"),
        "{}",
        decision.message
    );
    drop(registry);
}

#[tokio::test]
async fn failures_are_classed_so_that_none_denies() {
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addr = registry.address();
    push(
        dir.path(),
        &format!("{addr}/team/kv:v1"),
        &component_bytes("kv"),
    );
    let resolver = resolver();

    let missing_tag = resolver
        .resolve_oci(&format!("{addr}/team/kv:nope"), true, None)
        .await
        .unwrap_err();
    assert_eq!(
        missing_tag.class(),
        ErrorClass::NeedsAction,
        "{missing_tag}"
    );

    let missing_digest = format!("{addr}/team/kv@sha256:{}", "0".repeat(64));
    let err = resolver
        .resolve_oci(&missing_digest, true, None)
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::NeedsAction, "{err}");

    // A port nothing listens on: transient, retried, never a verdict.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = resolver
        .resolve_oci(&format!("127.0.0.1:{port}/team/kv:v1"), true, None)
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");

    // An OCI manifest without a wasm layer is not a component.
    std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    run(
        dir.path(),
        "oras",
        &[
            "push",
            "--plain-http",
            &format!("{addr}/team/notes:v1"),
            "notes.txt:text/plain",
        ],
    );
    let err = resolver
        .resolve_oci(&format!("{addr}/team/notes:v1"), true, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no WebAssembly layer"), "{err}");
    assert_eq!(err.class(), ErrorClass::NeedsAction);
    drop(registry);
}

/// Signs `pinned` with the cosign key pair in `keydir` (tools there are logged in to the
/// registry when it needs credentials).
fn cosign_sign(keydir: &Path, pinned: &str) {
    run(
        keydir,
        "cosign",
        &[
            "sign",
            "--tlog-upload=false",
            "--allow-http-registry",
            "--allow-insecure-registry",
            "--yes",
            "--key",
            "cosign.key",
            pinned,
        ],
    );
}

#[tokio::test]
async fn pull_secrets_open_registries_that_demand_credentials() {
    for (mode, auth) in [
        (
            "token",
            RegistryAuth::Token {
                user: "robot".into(),
                password: "s3cret".into(),
            },
        ),
        (
            "basic",
            RegistryAuth::Basic {
                user: "robot".into(),
                password: "s3cret".into(),
            },
        ),
    ] {
        let registry = Registry::start_with(RegistryOptions { auth: Some(auth) })
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let addr = registry.address();
        let reference = format!("{addr}/private/echo:v1");

        // The tools need the login too: without it the registry refuses oras.
        let refused = push_wasm(d, &reference, &component_bytes(mode)).unwrap_err();
        let refused = refused.to_string();
        assert!(
            refused.contains("unauthorized") || refused.contains("credential"),
            "{mode}: {refused}"
        );
        registry.login(d).unwrap();
        let digest = push(d, &reference, &component_bytes(mode));
        run(d, "cosign", &["generate-key-pair"]);
        let pinned = format!("{addr}/private/echo@{digest}");
        cosign_sign(d, &pinned);

        // The credentials come from a pull secret's .dockerconfigjson, as the controller reads it.
        let good = registry.docker_config("robot", "s3cret");
        let creds = credentials_for(&[("pull", good.as_bytes())], addr)
            .unwrap()
            .unwrap();
        let resolver = resolver();

        let anonymous = resolver
            .resolve_oci(&reference, true, None)
            .await
            .unwrap_err();
        assert!(
            matches!(&anonymous, ArtifactError::Unauthorized { user: None, .. }),
            "{mode}: {anonymous:?}"
        );
        assert_eq!(anonymous.class(), ErrorClass::NeedsAction, "{mode}");
        let msg = anonymous.to_string();
        assert!(
            msg.contains("refused anonymous access") && msg.contains("pullSecrets"),
            "{mode}: {msg}"
        );

        let wrong = RegistryCredentials {
            username: "robot".into(),
            password: "guess".into(),
        };
        let err = resolver
            .resolve_oci(&reference, true, Some(&wrong))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ArtifactError::Unauthorized { user: Some(u), .. } if u == "robot"),
            "{mode}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("Fix the user name and password") && !msg.contains("guess"),
            "{mode}: {msg}"
        );

        // With the right credentials: tag, bytes and signatures, each over the authenticated
        // connection.
        let resolved = resolver
            .resolve_oci(&reference, true, Some(&creds))
            .await
            .unwrap();
        assert_eq!(resolved.digest.as_str(), digest, "{mode}");
        assert_eq!(
            resolver.fetch_oci(&resolved, Some(&creds)).await.unwrap(),
            component_bytes(mode)
        );
        let layers = resolver
            .fetch_signatures(&resolved, Some(&creds))
            .await
            .unwrap();
        assert_eq!(layers.len(), 1, "{mode}: cosign's signature");

        // A wrong password after a right one is still refused: no token or credential is shared
        // between sets of credentials.
        let err = resolver
            .resolve_oci(&reference, true, Some(&wrong))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ArtifactError::Unauthorized { .. }),
            "{mode}: {err:?}"
        );
        let err = resolver
            .resolve_oci(&reference, true, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ArtifactError::Unauthorized { .. }),
            "{mode}: {err:?}"
        );
    }
}

#[tokio::test]
async fn blobs_changed_at_rest_fail_their_digest_check() {
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = registry.address();
    let reference = format!("{addr}/team/kv:v1");
    let bytes = component_bytes("kv v1");
    push(d, &reference, &bytes);
    run(d, "cosign", &["generate-key-pair"]);
    let resolver = resolver();
    let resolved = resolver.resolve_oci(&reference, true, None).await.unwrap();
    cosign_sign(d, &resolved.pinned_reference());
    assert_eq!(resolver.fetch_oci(&resolved, None).await.unwrap(), bytes);
    let signatures = resolver.fetch_signatures(&resolved, None).await.unwrap();
    assert_eq!(signatures.len(), 1);

    // The component's bytes change on the registry's disk; it still serves them under the
    // old digest (same length, so no size check can catch it).
    assert_eq!(
        resolver.verify_oci_layer(&resolved, None).await.unwrap(),
        bytes.len() as u64
    );
    let mut evil = bytes.clone();
    let last = evil.len() - 1;
    evil[last] ^= 0x20;
    registry
        .tamper_blob(resolved.layer_digest.as_str(), &evil)
        .unwrap();
    let err = resolver
        .verify_oci_layer(&resolved, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ArtifactError::DigestMismatch { .. }),
        "streamed through the hash and refused: {err:?}"
    );
    assert_eq!(err.class(), ErrorClass::Integrity);
    let err = resolver.fetch_oci(&resolved, None).await.unwrap_err();
    assert!(
        matches!(&err, ArtifactError::DigestMismatch { actual, .. } if *actual == digest_of(&evil).to_string()),
        "the registry served the changed bytes and the resolver refused them: {err:?}"
    );
    assert_eq!(err.class(), ErrorClass::Integrity);
    assert!(err.to_string().contains("tampered"), "{err}");

    // The same for the signature payload cosign stored as a blob.
    let sig_manifest = run(
        d,
        "oras",
        &[
            "manifest",
            "fetch",
            "--plain-http",
            &format!("{addr}/team/kv:{}", signature_tag(&resolved.digest)),
        ],
    );
    let manifest: serde_json::Value = serde_json::from_str(&sig_manifest).unwrap();
    let payload_digest = manifest["layers"][0]["digest"].as_str().unwrap();
    let mut payload = signatures[0].payload.clone();
    payload[0] = b' ';
    registry.tamper_blob(payload_digest, &payload).unwrap();
    // One signature changed at rest is that signature's problem, not the artifact's: it is
    // marked, and verification reports it as broken (ignored, as cosign ignores it).
    let layers = resolver.fetch_signatures(&resolved, None).await.unwrap();
    let tampered = layers[0].tampered.as_deref().unwrap_or_default();
    assert!(
        tampered.contains("tampered") && tampered.contains(payload_digest),
        "{layers:?}"
    );
    let got = verify(
        &resolved.digest,
        &layers,
        airssys_operator::artifact::cosign::TrustMaterial::default(),
        now(),
    );
    assert!(got.signers.is_empty(), "{got:?}");
    assert!(
        got.broken.iter().any(|b| b.contains(payload_digest)),
        "{got:?}"
    );

    // The manifest itself is untouched and still resolves: the tag did not move.
    let again = resolver.resolve_oci(&reference, true, None).await.unwrap();
    assert_eq!(again.digest, resolved.digest);
    drop(registry);
}

/// How many times the registry has served the blob `digest` (GETs in its request log).
fn blob_downloads(registry: &Registry, digest: &str) -> usize {
    let needle = format!("/blobs/{digest}");
    registry
        .log_tail(100_000)
        .lines()
        .filter(|line| line.contains("GET ") && line.contains(&needle))
        .count()
}

#[tokio::test]
async fn concurrent_layer_checks_share_one_download_and_its_verdict() {
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("{}/team/shared:v1", registry.address());
    let bytes = component_bytes("shared v1");
    push(dir.path(), &reference, &bytes);
    let resolver = resolver();
    let resolved = resolver.resolve_oci(&reference, true, None).await.unwrap();
    let layer = resolved.layer_digest.to_string();
    let before = blob_downloads(&registry, &layer);

    // Sixteen components of one artifact checked at once: one download between them.
    let results =
        futures::future::join_all((0..16).map(|_| resolver.verify_oci_layer(&resolved, None)))
            .await;
    for r in &results {
        assert_eq!(r.as_ref().unwrap(), &(bytes.len() as u64));
    }
    assert_eq!(
        blob_downloads(&registry, &layer),
        before + 1,
        "{}",
        registry.log_tail(40)
    );

    // Nothing is cached afterwards: the next check reads the bytes again.
    resolver.verify_oci_layer(&resolved, None).await.unwrap();
    assert_eq!(blob_downloads(&registry, &layer), before + 2);

    // A shared failure reaches every caller with its class intact.
    let mut evil = bytes.clone();
    evil[0] ^= 0x01;
    registry.tamper_blob(&layer, &evil).unwrap();
    let results =
        futures::future::join_all((0..4).map(|_| resolver.verify_oci_layer(&resolved, None))).await;
    for r in results {
        let err = r.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Integrity, "{err:?}");
        assert!(err.to_string().contains("tampered"), "{err}");
    }
    assert_eq!(blob_downloads(&registry, &layer), before + 3);
}

#[tokio::test]
async fn a_corrupted_cosign_signature_is_reported_as_broken() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let registry = Registry::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = registry.address();
    let reference = format!("{addr}/team/signed:v1");
    push(d, &reference, &component_bytes("signed"));
    run(d, "cosign", &["generate-key-pair"]);
    let key = PublicKey::from_pem(&std::fs::read_to_string(d.join("cosign.pub")).unwrap()).unwrap();
    let resolver = resolver();
    let resolved = resolver.resolve_oci(&reference, true, None).await.unwrap();
    cosign_sign(d, &resolved.pinned_reference());

    let keys = [&key];
    let check = |layers: &[airssys_operator::artifact::SignatureLayer]| {
        verify(
            &resolved.digest,
            layers,
            airssys_operator::artifact::cosign::TrustMaterial {
                keys: &keys,
                roots: &[],
            },
            now(),
        )
    };
    let layers = resolver.fetch_signatures(&resolved, None).await.unwrap();
    let good = check(&layers);
    assert_eq!(good.signers.len(), 1, "{good:?}");

    // Garbage in place of cosign's signature: broken, and says so.
    let repo = format!("{addr}/team/signed");
    let original =
        common::replace_signature(d, &repo, &resolved.digest, &b64.encode([0x5a_u8; 70]));
    let layers = resolver.fetch_signatures(&resolved, None).await.unwrap();
    let got = check(&layers);
    assert!(got.signers.is_empty(), "{got:?}");
    assert!(
        got.broken.iter().any(|b| b.contains("does not verify")),
        "{got:?}"
    );

    // One flipped bit inside the well-formed signature: it no longer verifies with the key,
    // which cannot be told apart from another signer's signature, so it only does not count.
    let mut flipped = b64.decode(&original).unwrap();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    common::replace_signature(d, &repo, &resolved.digest, &b64.encode(&flipped));
    let layers = resolver.fetch_signatures(&resolved, None).await.unwrap();
    let got = check(&layers);
    assert!(got.signers.is_empty() && got.broken.is_empty(), "{got:?}");
    assert!(
        got.problems.iter().any(|p| p.contains("matches no key")),
        "{got:?}"
    );
    drop(registry);
}
