//! HTTPS artifacts against a real TLS server on loopback (rustls, certificate from a test CA):
//! the digest is required and checked, server errors are retried, a bad certificate or a
//! missing file needs someone to act, and none of it is a verdict on the component.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use airssys_crds::Digest;
use airssys_operator::artifact::{
    ArtifactError, ErrorClass, FetchLimits, Resolver, ResolverOptions, RetryPolicy, digest_of,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const BODY: &[u8] = b"\0asm\x0d\0\x01\0report-fetcher";

/// A TLS server answering `/ok.wasm` (200), `/flaky.wasm` (503 once, then 200) and anything
/// else with 404. Returns its base URL, the CA (DER) that issued its certificate and a
/// request counter.
fn serve() -> (String, Vec<u8>, Arc<AtomicUsize>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(server_cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
    )
    .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let flaky_failed = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut reader = BufReader::new(&mut tls);
            let mut request_line = String::new();
            // A client that rejects the certificate ends the handshake here; go on serving.
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let (status, body): (&str, &[u8]) = match path.as_str() {
                "/ok.wasm" => ("200 OK", BODY),
                "/flaky.wasm" if flaky_failed.fetch_add(1, Ordering::SeqCst) == 0 => {
                    ("503 Service Unavailable", b"")
                }
                "/flaky.wasm" => ("200 OK", BODY),
                _ => ("404 Not Found", b"not here"),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = tls.write_all(head.as_bytes());
            let _ = tls.write_all(body);
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (url, ca.der().to_vec(), requests)
}

fn resolver(extra_roots: Vec<Vec<u8>>, limits: FetchLimits) -> Resolver {
    Resolver::new(ResolverOptions {
        retry: RetryPolicy {
            attempts: 3,
            initial: Duration::from_millis(10),
            max: Duration::from_millis(20),
        },
        limits,
        extra_roots,
    })
    .unwrap()
}

#[tokio::test]
async fn https_artifacts_spec() {
    let (url, ca, requests) = serve();
    let trusting = resolver(vec![ca.clone()], FetchLimits::default());
    let good = digest_of(BODY);
    let other = Digest::from_sha256(&[7; 32]);

    let bytes = trusting
        .fetch_https(&format!("{url}/ok.wasm"), &good)
        .await
        .unwrap();
    assert_eq!(bytes, BODY, "bytes with the required digest");

    let err = trusting
        .fetch_https(&format!("{url}/ok.wasm"), &other)
        .await
        .unwrap_err();
    assert!(matches!(err, ArtifactError::DigestMismatch { .. }), "{err}");
    assert_eq!(
        err.class(),
        ErrorClass::Integrity,
        "changed bytes fail verification"
    );

    let before = requests.load(Ordering::SeqCst);
    let bytes = trusting
        .fetch_https(&format!("{url}/flaky.wasm"), &good)
        .await
        .unwrap();
    assert_eq!(bytes, BODY);
    assert_eq!(
        requests.load(Ordering::SeqCst) - before,
        2,
        "a 503 is retried once, then succeeds"
    );

    let before = requests.load(Ordering::SeqCst);
    let err = trusting
        .fetch_https(&format!("{url}/missing.wasm"), &good)
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::NeedsAction, "{err}");
    assert_eq!(
        requests.load(Ordering::SeqCst) - before,
        1,
        "a 404 is not retried"
    );

    let err = resolver(Vec::new(), FetchLimits::default())
        .fetch_https(&format!("{url}/ok.wasm"), &good)
        .await
        .unwrap_err();
    assert_eq!(
        err.class(),
        ErrorClass::NeedsAction,
        "an untrusted certificate needs someone to act: {err}"
    );

    let limited = resolver(
        vec![ca.clone()],
        FetchLimits {
            component_bytes: 4,
            ..FetchLimits::default()
        },
    );
    let err = limited
        .fetch_https(&format!("{url}/ok.wasm"), &good)
        .await
        .unwrap_err();
    assert!(matches!(err, ArtifactError::TooLarge { .. }), "{err}");

    let err = trusting
        .fetch_https(&url.replace("https://", "http://"), &good)
        .await
        .unwrap_err();
    assert!(matches!(err, ArtifactError::InvalidUrl { .. }), "{err}");
}
