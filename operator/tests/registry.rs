//! The artifact path against a real OCI registry (go-containerregistry's `registry`), with
//! components pushed by real `oras` and signed by real `cosign`, as users do it.
//!
//! The tools come from `tests/cluster/build.sh` through `airssys-test-support` (built on first
//! use; `AIRSSYS_TOOLS_BIN` points at a prebuilt bin directory). A missing tool fails the test
//! with the harness's message; nothing is skipped.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airssys_crds::capability::CapabilitySet;
use airssys_crds::component::TrustLevel;
use airssys_crds::trust_source::TrustSourceSpec;
use airssys_operator::artifact::cosign::verify;
use airssys_operator::artifact::{
    ErrorClass, PublicKey, Resolver, ResolverOptions, RetryPolicy, Signer, digest_of,
};
use airssys_operator::{Applied, ComponentFacts, Reason, TrustIndex};
use airssys_test_support::{Registry, push_wasm, run_tool};
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
        namespace: "wasm-demo".into(),
        name: "echo".into(),
        namespace_labels: Default::default(),
        repository: Some(resolved.repository.clone()),
        digest: resolved.digest.clone(),
        signers: verification.signers.clone(),
        request: request.clone(),
    };
    let decision = index.decide(&facts, false);
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
            digest: moved.digest.clone(),
            signers: Vec::new(),
            ..facts
        },
        false,
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
