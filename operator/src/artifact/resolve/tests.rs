use std::sync::atomic::{AtomicU32, Ordering};

use super::https::*;
use super::oci::*;
use super::retry::*;
use super::*;
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::manifest::{OciImageManifest, WASM_LAYER_MEDIA_TYPE};

use crate::artifact::{ErrorClass, RegistryCredentials};

#[test]
fn each_set_of_credentials_gets_its_own_client() {
    let resolver = Resolver::new(ResolverOptions::default()).unwrap();
    let creds = |u: &str, p: &str| RegistryCredentials {
        username: u.into(),
        password: p.into(),
    };
    let (a, a_other_password, b) = (creds("a", "1"), creds("a", "2"), creds("b", "1"));
    for c in [Some(&a), Some(&a), Some(&a_other_password), Some(&b), None] {
        resolver.client(false, c).unwrap();
    }
    let clients = resolver.clients.lock().unwrap();
    // anonymous https + anonymous http (made at start) + a + a with another password + b
    assert_eq!(clients.len(), 5, "no client is shared between credentials");
}

#[test]
fn backoff_doubles_and_caps() {
    let p = RetryPolicy {
        attempts: 10,
        initial: Duration::from_millis(100),
        max: Duration::from_millis(500),
    };
    let delays: Vec<u128> = (1..=5).map(|n| p.delay(n).as_millis()).collect();
    assert_eq!(delays, [100, 200, 400, 500, 500]);
}

fn transient() -> ArtifactError {
    ArtifactError::HttpStatus {
        url: "https://r".into(),
        status: 503,
    }
}

fn fast(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        initial: Duration::from_millis(1),
        max: Duration::from_millis(2),
    }
}

#[tokio::test]
async fn retry_spec() {
    // (rule, policy attempts, failures before success, permanent?, calls, ok?)
    let cases = [
        ("success needs one call", 4, 0, false, 1, true),
        (
            "transient errors are retried until success",
            4,
            2,
            false,
            3,
            true,
        ),
        ("retries stop at the attempt limit", 3, 10, false, 3, false),
        ("permanent errors are not retried", 4, 10, true, 1, false),
    ];
    for (rule, attempts, failures, permanent, calls, ok) in cases {
        let count = AtomicU32::new(0);
        let result = retry(&fast(attempts), "test", || async {
            let n = count.fetch_add(1, Ordering::SeqCst);
            if n < failures {
                Err(if permanent {
                    ArtifactError::DigestMismatch {
                        what: "x".into(),
                        expected: "a".into(),
                        actual: "b".into(),
                    }
                } else {
                    transient()
                })
            } else {
                Ok(n)
            }
        })
        .await;
        assert_eq!(count.load(Ordering::SeqCst), calls, "{rule}");
        assert_eq!(result.is_ok(), ok, "{rule}");
    }
}

#[test]
fn https_only() {
    assert!(check_https("https://downloads.partner.io/x.wasm").is_ok());
    for bad in [
        "http://x/y.wasm",
        "ftp://x",
        "https:///x",
        "https://user@host/x",
        "x",
    ] {
        assert!(check_https(bad).is_err(), "{bad}");
    }
}

#[test]
fn oci_error_classes() {
    let server = |code| OciDistributionError::ServerError {
        code,
        url: "u".into(),
        message: String::new(),
    };
    let envelope = |code: &str| OciDistributionError::RegistryError {
        envelope: serde_json::from_str(&format!(
            r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#
        ))
        .unwrap(),
        url: "u".into(),
    };
    let cases = [
        ("503 is transient", server(503), ErrorClass::Transient),
        ("404 needs action", server(404), ErrorClass::NeedsAction),
        (
            "rate limit is transient",
            envelope("TOOMANYREQUESTS"),
            ErrorClass::Transient,
        ),
        (
            "unknown manifest needs action",
            envelope("MANIFEST_UNKNOWN"),
            ErrorClass::NeedsAction,
        ),
        (
            "unauthorized needs action",
            OciDistributionError::UnauthorizedError { url: "u".into() },
            ErrorClass::NeedsAction,
        ),
        (
            "io error is transient",
            OciDistributionError::IoError(std::io::Error::other("reset")),
            ErrorClass::Transient,
        ),
        (
            "a streamed blob that fails its digest is an integrity failure",
            OciDistributionError::IoError(std::io::Error::other(DigestError::VerificationError {
                expected: "sha256:a".into(),
                actual: "sha256:b".into(),
            })),
            ErrorClass::Integrity,
        ),
    ];
    for (rule, err, want) in cases {
        assert_eq!(classify(&err), want, "{rule}");
    }
    assert!(is_not_found(&envelope("MANIFEST_UNKNOWN")));
    assert!(!is_not_found(&envelope("DENIED")));

    // Refusals name who was refused and say what to do.
    let refusals = [
        (
            "failed token exchange",
            OciDistributionError::AuthenticationFailure("no".into()),
        ),
        (
            "401",
            OciDistributionError::UnauthorizedError { url: "u".into() },
        ),
        ("403", server(403)),
        ("denied envelope", envelope("DENIED")),
        ("unauthorized envelope", envelope("UNAUTHORIZED")),
    ];
    let robot = RegistryCredentials {
        username: "robot".into(),
        password: "hunter2".into(),
    };
    for (rule, err) in refusals {
        let anonymous = registry_error("r.io", None, err);
        assert!(
            matches!(anonymous, ArtifactError::Unauthorized { user: None, .. }),
            "{rule}: {anonymous:?}"
        );
        assert_eq!(anonymous.class(), ErrorClass::NeedsAction, "{rule}");
        let msg = anonymous.to_string();
        assert!(
            msg.contains("refused anonymous access") && msg.contains("pullSecrets"),
            "{rule}: {msg}"
        );
    }
    let wrong = registry_error(
        "r.io",
        Some(&robot),
        OciDistributionError::UnauthorizedError { url: "u".into() },
    )
    .to_string();
    assert!(
        wrong.contains("\"robot\"") && wrong.contains("Fix the user name and password"),
        "{wrong}"
    );
    assert!(!wrong.contains("hunter2"), "{wrong}");
    assert!(matches!(
        registry_error("r.io", Some(&robot), server(404)),
        ArtifactError::Registry { .. }
    ));

    let mismatch = stream_error(
        "r.io",
        None,
        "component layer",
        std::io::Error::other(DigestError::VerificationError {
            expected: "sha256:a".into(),
            actual: "sha256:b".into(),
        }),
    );
    assert!(
        matches!(&mismatch, ArtifactError::DigestMismatch { expected, actual, .. } if expected == "sha256:a" && actual == "sha256:b"),
        "{mismatch:?}"
    );
    assert_eq!(
        stream_error("r.io", None, "x", std::io::Error::other("reset")).class(),
        ErrorClass::Transient
    );
}

fn manifest(layers: &[&str]) -> OciImageManifest {
    let layers: Vec<String> = layers
        .iter()
        .map(|mt| {
            format!(
                r#"{{"mediaType":"{mt}","digest":"sha256:{}","size":4}}"#,
                "a".repeat(64)
            )
        })
        .collect();
    serde_json::from_str(&format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:{}","size":2}},"layers":[{}]}}"#,
        "b".repeat(64),
        layers.join(",")
    ))
    .unwrap()
}

#[test]
fn wasm_layer_selection() {
    assert!(wasm_layer("r", &manifest(&["application/wasm"])).is_ok());
    assert!(wasm_layer("r", &manifest(&["text/plain", WASM_LAYER_MEDIA_TYPE])).is_ok());
    assert!(matches!(
        wasm_layer("r", &manifest(&["text/plain"])),
        Err(ArtifactError::NoWasmLayer { .. })
    ));
    assert!(matches!(
        wasm_layer("r", &manifest(&["application/wasm", "application/wasm"])),
        Err(ArtifactError::Manifest { .. })
    ));
}
