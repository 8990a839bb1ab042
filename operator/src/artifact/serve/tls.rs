//! The artifact server's TLS: one CA per installation, a serving certificate per process.
//!
//! The CA's key lives in a Secret in the product namespace that only the operator reads, so
//! every replica and every restart signs with the same CA and agents trust one certificate:
//! the CA's, published in the `airssys-artifact-ca` ConfigMap. The first replica to start
//! creates the Secret; a replica that loses that race reads the winner's. Each process issues
//! its own short-lived serving certificate (names from `--artifact-server-names`) and renews it
//! while it runs; its key never leaves the process.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use airssys_crds::agent::{ARTIFACT_CA_CONFIGMAP, ARTIFACT_CA_KEY};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

use super::ServeError;

/// The Secret holding the CA certificate and key (product namespace, operator only).
pub const TLS_SECRET: &str = "airssys-artifact-tls";
/// Key of the CA certificate (PEM) in [`TLS_SECRET`].
pub const SECRET_CERT_KEY: &str = "ca.crt";
/// Key of the CA private key (PKCS#8 PEM) in [`TLS_SECRET`].
pub const SECRET_KEY_KEY: &str = "ca.key";
/// Field manager of the CA ConfigMap.
const FIELD_MANAGER: &str = "airssys-operator";

/// Days a new CA is valid (ten years).
const CA_DAYS: i32 = 3650;
/// Days a serving certificate is valid; it is re-issued every [`RENEW_EVERY`].
const SERVING_DAYS: i32 = 30;
/// How often a running server re-issues its serving certificate.
pub const RENEW_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The CA, as PEM.
#[derive(Clone)]
pub struct CaPem {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for CaPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log the key.
        f.debug_struct("CaPem").finish_non_exhaustive()
    }
}

fn tls_error(what: &str) -> impl FnOnce(rcgen::Error) -> ServeError + '_ {
    move |e| ServeError::Tls(format!("{what}: {e}"))
}

fn kube_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Kube { what, source }
}

/// Makes `params` valid from yesterday until `days` from today (whole days, UTC).
fn valid_for(params: &mut CertificateParams, days: i32) -> Result<(), ServeError> {
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let ymd = |offset: i32| -> Result<(i32, u8, u8), ServeError> {
        let date = today
            .checked_add(jiff::Span::new().days(offset))
            .map_err(|e| ServeError::Tls(format!("certificate dates: {e}")))?;
        Ok((
            i32::from(date.year()),
            u8::try_from(date.month()).unwrap_or(1),
            u8::try_from(date.day()).unwrap_or(1),
        ))
    };
    let (y, m, d) = ymd(-1)?;
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd(days)?;
    params.not_after = rcgen::date_time_ymd(y, m, d);
    Ok(())
}

/// A new self-signed CA.
pub fn new_ca() -> Result<CaPem, ServeError> {
    let key = KeyPair::generate().map_err(tls_error("generating the CA key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_error("CA"))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "airssys-wasm artifact CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    valid_for(&mut params, CA_DAYS)?;
    let cert = params
        .self_signed(&key)
        .map_err(tls_error("signing the CA"))?;
    Ok(CaPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A serving certificate for `names` (DNS names or IP literals) signed by `ca`, as rustls
/// wants it (leaf, then the CA).
pub fn issue_serving(ca: &CaPem, names: &[String]) -> Result<Arc<CertifiedKey>, ServeError> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(tls_error("reading the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)
        .map_err(tls_error("reading the CA certificate"))?;
    let key = KeyPair::generate().map_err(tls_error("generating the serving key"))?;
    let mut params =
        CertificateParams::new(names.to_vec()).map_err(tls_error("serving certificate names"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "airssys-operator artifact server");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    valid_for(&mut params, SERVING_DAYS)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(tls_error("signing the serving certificate"))?;
    let ca_der = rustls::pki_types::pem::PemObject::from_pem_slice(ca.cert.as_bytes())
        .map_err(|e| ServeError::Tls(format!("CA certificate PEM: {e}")))?;
    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone(), ca_der];
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key_der, &provider)
        .map(Arc::new)
        .map_err(|e| ServeError::Tls(format!("serving key: {e}")))
}

/// The serving certificate of a running server, swapped on renewal.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServingCert {
    pub fn new(first: Arc<CertifiedKey>) -> Self {
        Self {
            current: RwLock::new(first),
        }
    }

    pub fn replace(&self, next: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// TLS 1.2/1.3 with ring, HTTP/1.1, serving `cert`.
pub fn server_config(cert: Arc<ServingCert>) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ServeError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The installation's CA: read from [`TLS_SECRET`] in `namespace`, or created there. Two
/// replicas starting together both try to create it; the loser reads the winner's.
pub async fn ensure_ca(client: &kube::Client, namespace: &str) -> Result<CaPem, ServeError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let what = format!("Secret {namespace}/{TLS_SECRET}");
    if let Some(secret) = api.get_opt(TLS_SECRET).await.map_err(kube_error(&what))? {
        return ca_of(&secret, &what);
    }
    let ca = new_ca()?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(TLS_SECRET.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/component".to_owned(),
                "artifact-server".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            (
                SECRET_CERT_KEY.to_owned(),
                ByteString(ca.cert.clone().into_bytes()),
            ),
            (
                SECRET_KEY_KEY.to_owned(),
                ByteString(ca.key.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(secret = %what, "created the artifact server's CA");
            Ok(ca)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            info!(secret = %what, "another replica created the CA first; using it");
            let secret = api.get(TLS_SECRET).await.map_err(kube_error(&what))?;
            ca_of(&secret, &what)
        }
        Err(e) => Err(kube_error(what)(e)),
    }
}

fn ca_of(secret: &Secret, what: &str) -> Result<CaPem, ServeError> {
    let field = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .ok_or_else(|| {
                ServeError::Tls(format!(
                    "{what} has no {key}; delete it and the operator creates a new CA (agents pick up the new one from the {ARTIFACT_CA_CONFIGMAP} ConfigMap)"
                ))
            })
    };
    let ca = CaPem {
        cert: field(SECRET_CERT_KEY)?,
        key: field(SECRET_KEY_KEY)?,
    };
    // Fail now, not on the first handshake.
    KeyPair::from_pem(&ca.key).map_err(tls_error("the CA key in the Secret"))?;
    Ok(ca)
}

/// Publishes the CA certificate for agents: [`ARTIFACT_CA_CONFIGMAP`]`/`[`ARTIFACT_CA_KEY`]
/// in `namespace` (server-side apply; every replica applies the same value).
pub async fn publish_ca(
    client: &kube::Client,
    namespace: &str,
    ca_cert: &str,
) -> Result<(), ServeError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": ARTIFACT_CA_CONFIGMAP, "namespace": namespace },
        "data": { ARTIFACT_CA_KEY: ca_cert },
    });
    api.patch(
        ARTIFACT_CA_CONFIGMAP,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(kube_error(format!(
        "ConfigMap {namespace}/{ARTIFACT_CA_CONFIGMAP}"
    )))?;
    Ok(())
}

/// Re-issues the serving certificate every [`RENEW_EVERY`] for as long as it runs.
pub async fn renew(cert: Arc<ServingCert>, ca: CaPem, names: Vec<String>) {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        match issue_serving(&ca, &names) {
            Ok(next) => {
                cert.replace(next);
                info!("renewed the artifact server's certificate");
            }
            // The current one is valid for weeks more; try again tomorrow.
            Err(e) => warn!(error = %e, "cannot renew the artifact server's certificate"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;

    #[test]
    fn the_serving_certificate_chains_to_the_ca_for_its_names() {
        let ca = new_ca().unwrap();
        let names = vec![
            "airssys-operator.airssys-system.svc".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        let served = issue_serving(&ca, &names).unwrap();
        assert_eq!(served.cert.len(), 2, "leaf and CA");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(served.cert[1].clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        for name in ["airssys-operator.airssys-system.svc", "127.0.0.1"] {
            let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&served.cert[0], &[], &server_name, &[], now)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = rustls::pki_types::ServerName::try_from("evil.example").unwrap();
        assert!(
            verifier
                .verify_server_cert(&served.cert[0], &[], &other, &[], now)
                .is_err(),
            "only the configured names"
        );
    }
}
