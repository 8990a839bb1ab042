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
    let layer = |types: &[&str]| {
        let bytes = serde_json::to_vec(&manifest(types)).unwrap();
        component_layer("r", &bytes)
    };
    assert!(layer(&["application/wasm"]).is_ok());
    assert!(layer(&["text/plain", WASM_LAYER_MEDIA_TYPE]).is_ok());
    assert!(matches!(
        layer(&["text/plain"]),
        Err(ArtifactError::NoWasmLayer { .. })
    ));
    assert!(matches!(
        layer(&["application/wasm", "application/wasm"]),
        Err(ArtifactError::Manifest { .. })
    ));
}

/// A resolver that tries once: these tests read the first failure's message.
fn once() -> Resolver {
    Resolver::new(ResolverOptions {
        retry: fast(1),
        ..ResolverOptions::default()
    })
    .unwrap()
}

/// Words a person should never meet in a condition or Event.
fn assert_readable(rule: &str, msg: &str) {
    for dump in [
        "Some(",
        "None",
        "Status {",
        "OciEnvelope",
        "OCI API error",
        "error sending request",
        "Generic error",
        "url http",
        "envelope:",
        "\n",
    ] {
        assert!(!msg.contains(dump), "{rule}: {dump:?} in {msg}");
    }
}

/// A TLS server on loopback with a self-signed certificate for 127.0.0.1 (no CA the resolver
/// trusts); it completes no handshake the client refuses. Returns its port.
fn untrusted_tls_server() -> u16 {
    use rcgen::{CertificateParams, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    let config = std::sync::Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            let mut conn = rustls::ServerConnection::new(config.clone()).unwrap();
            // Handshake until the client gives up on the certificate.
            let _ = conn.complete_io(&mut tcp);
        }
    });
    port
}

/// A plain-HTTP server on loopback answering every request with 400. Returns its port.
fn plain_http_server() -> u16 {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf);
            let _ = tcp.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    port
}

#[tokio::test]
async fn registry_failures_name_their_root_cause_and_what_to_do() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let tls = untrusted_tls_server();
    let plain = plain_http_server();
    // (rule, reference, plain HTTP?, words the message must hold, class)
    let cases = [
        (
            "nothing listens: refused, check host and port",
            format!("127.0.0.1:{closed}/team/echo:v1"),
            true,
            vec![
                "registry 127.0.0.1:",
                "connection refused",
                "check that the server runs",
            ],
            ErrorClass::Transient,
        ),
        (
            "a name that does not resolve: DNS, check the spelling",
            "registry.does-not-exist.invalid/team/echo:v1".to_owned(),
            false,
            vec![
                "the host name does not resolve",
                "check the spelling of registry.does-not-exist.invalid",
            ],
            ErrorClass::Transient,
        ),
        (
            "an untrusted certificate: TLS, which CA to add",
            format!("127.0.0.1:{tls}/team/echo:v1"),
            false,
            vec![
                "the TLS certificate is refused",
                "not issued by a certificate authority the operator trusts",
                "SSL_CERT_FILE",
            ],
            ErrorClass::NeedsAction,
        ),
        (
            "a plain-HTTP registry asked for HTTPS: not TLS, the flag to use",
            format!("127.0.0.1:{plain}/team/echo:v1"),
            false,
            vec![
                "answers plain HTTP, not TLS",
                "insecure: true",
                "--insecure-registry 127.0.0.1:",
            ],
            ErrorClass::NeedsAction,
        ),
    ];
    let resolver = once();
    for (rule, reference, insecure, words, class) in cases {
        let err = resolver
            .resolve_oci(&reference, insecure, None)
            .await
            .unwrap_err();
        let msg = err.to_string();
        for word in words {
            assert!(msg.contains(word), "{rule}: {word:?} missing from {msg}");
        }
        assert_readable(rule, &msg);
        assert_eq!(err.class(), class, "{rule}: {msg}");
    }
}

#[tokio::test]
async fn https_failures_name_their_root_cause() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let tls = untrusted_tls_server();
    let digest = airssys_crds::Digest::from_sha256(&[0; 32]);
    let resolver = once();
    for (rule, url, word) in [
        (
            "refused",
            format!("https://127.0.0.1:{closed}/x.wasm"),
            "connection refused",
        ),
        (
            "untrusted certificate",
            format!("https://127.0.0.1:{tls}/x.wasm"),
            "the TLS certificate is refused",
        ),
    ] {
        let msg = resolver
            .fetch_https(&url, &digest)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(&format!("fetching {url}: ")),
            "{rule}: {msg}"
        );
        assert!(msg.contains(word), "{rule}: {msg}");
        assert_readable(rule, &msg);
    }
}

#[test]
fn registry_answers_read_as_one_line_with_what_to_do() {
    let server = |code, message: &str| OciDistributionError::ServerError {
        code,
        url: "http://r.io/v2/team/echo/manifests/v1".into(),
        message: message.into(),
    };
    let envelope = |json: &str| OciDistributionError::RegistryError {
        envelope: serde_json::from_str(json).unwrap(),
        url: "http://r.io/v2/team/echo/manifests/v1".into(),
    };
    let io = |kind| OciDistributionError::IoError(std::io::Error::from(kind));
    // (rule, error, words the message must hold)
    let cases: Vec<(&str, OciDistributionError, Vec<&str>)> = vec![
        (
            "unknown tag: the code, the registry's words, push or fix the reference",
            envelope(r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#),
            vec![
                "MANIFEST_UNKNOWN (manifest unknown)",
                "push the component",
                "spec.artifact.oci.reference",
            ],
        ),
        (
            "unknown repository",
            envelope(
                r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#,
            ),
            vec!["NAME_UNKNOWN", "spec.artifact.oci.reference"],
        ),
        (
            "missing blob: push again",
            envelope(
                r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#,
            ),
            vec!["BLOB_UNKNOWN", "push the component again"],
        ),
        (
            "404 without an envelope",
            server(404, ""),
            vec!["not found (HTTP 404)", "spec.artifact.oci.reference"],
        ),
        (
            "plain HTTP to an HTTPS registry",
            server(400, "Client sent an HTTP request to an HTTPS server.\n"),
            vec!["speaks HTTPS", "remove insecure: true"],
        ),
        (
            "server failure quotes the server on one line",
            server(503, "upstream\nunavailable"),
            vec!["server error (HTTP 503: upstream unavailable)"],
        ),
        (
            "a generic error without words is not Some/None",
            OciDistributionError::GenericError(None),
            vec!["failed without saying why"],
        ),
        (
            "a generic error's words, not its debug form",
            OciDistributionError::GenericError(Some("odd answer".into())),
            vec!["odd answer"],
        ),
        (
            "timeout",
            io(std::io::ErrorKind::TimedOut),
            vec!["timed out", "firewall"],
        ),
        (
            "reset",
            io(std::io::ErrorKind::ConnectionReset),
            vec!["connection was closed", "dropped the connection"],
        ),
        (
            "unreachable",
            io(std::io::ErrorKind::NetworkUnreachable),
            vec!["no route to the host", "network path"],
        ),
    ];
    for (rule, err, words) in cases {
        let msg = registry_error("r.io", None, err).to_string();
        assert!(msg.starts_with("registry r.io: "), "{rule}: {msg}");
        for word in words {
            assert!(msg.contains(word), "{rule}: {word:?} missing from {msg}");
        }
        assert_readable(rule, &msg);
    }

    // A refusal names its status or code, never the URL or the envelope.
    let refused = registry_error(
        "r.io",
        None,
        envelope(r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#),
    )
    .to_string();
    assert!(
        refused
            .starts_with("registry r.io refused anonymous access (UNAUTHORIZED). No pull secret"),
        "{refused}"
    );
    assert_readable("refusal", &refused);
}
