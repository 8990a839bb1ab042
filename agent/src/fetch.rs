//! [`ArtifactClient`]: the production [`ArtifactSource`], the operator's artifact server.
//!
//! The agent holds no registry credentials: it asks the operator, which read the bytes with
//! the component's own pull secret when it approved them, for the blob of a digest
//! (`GET {server}/v1/blobs/sha256:<hex>`, bearer = this node's ServiceAccount token) over TLS
//! trusting the operator's CA only. Whatever comes back is hashed again here:
//!
//! - OCI artifact: the Placement's digest names the manifest. Its bytes must hash to it; its
//!   one layer of a wasm media type names the component, whose bytes must hash to that.
//! - HTTPS or ConfigMap artifact: the digest names the `.wasm` itself.
//!
//! Verified blobs are kept under `<cache dir>/blobs/sha256/<hex>` and hashed again when read
//! back; a file that no longer matches is deleted and fetched anew. Retrying a failed fetch is
//! the caller's job (node mode backs off); a 401 re-reads the token file once, since projected
//! tokens rotate.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use airssys_crds::agent::{ARTIFACT_CA_CONFIGMAP, ARTIFACT_CA_KEY, BLOB_PATH_PREFIX};
use airssys_crds::artifact::{Digest, component_layer};
use airssys_crds::placement::PlacementSpec;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tracing::{debug, warn};

use crate::Error;
use crate::artifact::{ArtifactSource, Fetched};
use crate::engine::sha256_digest;

/// Where a pod's ServiceAccount token is mounted.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The most bytes of an OCI manifest the agent reads (the distribution spec's limit).
pub const MANIFEST_LIMIT: usize = 4 << 20;

/// How an [`ArtifactClient`] reaches the server and where it caches.
#[derive(Debug, Clone)]
pub struct ArtifactClientConfig {
    /// `https://host[:port]`, e.g. `https://airssys-operator.airssys-system.svc:8443`.
    pub server: String,
    /// The name the server's certificate must carry. Default: the URL's host. Set it when the
    /// URL names the server by address (a Service's ClusterIP from the environment kubelet
    /// injects, in clusters without DNS) while the certificate names the Service.
    pub server_name: Option<String>,
    /// The ServiceAccount token, re-read when the server answers 401.
    pub token_file: PathBuf,
    /// The agent's cache directory; blobs go to `blobs/sha256/` under it.
    pub cache_dir: PathBuf,
    /// The largest `.wasm` accepted (the engine's compile limit).
    pub max_component_bytes: usize,
    /// Connecting, and the whole of one request.
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl ArtifactClientConfig {
    /// Defaults: the mounted token, 32 MiB components, 10 s to connect, 120 s per request.
    pub fn new(server: impl Into<String>, cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            server: server.into(),
            server_name: None,
            token_file: PathBuf::from(DEFAULT_TOKEN_FILE),
            cache_dir: cache_dir.into(),
            max_component_bytes: 32 << 20,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
        }
    }
}

/// Where the server is.
#[derive(Debug, Clone)]
struct Endpoint {
    host: String,
    port: u16,
    /// `host[:port]` as given, for the `Host` header.
    authority: String,
    /// A path prefix before `/v1/blobs/` (none normally).
    base_path: String,
}

impl Endpoint {
    fn parse(server: &str) -> Result<Self, String> {
        let uri: http::Uri = server
            .parse()
            .map_err(|e| format!("artifact server URL {server:?}: {e}"))?;
        if uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
            return Err(format!("artifact server URL {server:?} must be https://"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("artifact server URL {server:?} has no host"))?;
        Ok(Self {
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: authority.port_u16().unwrap_or(443),
            authority: authority.as_str().to_owned(),
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

/// The name to verify the server's certificate against: `name` when given, else the URL's
/// `host`; an IP address is checked against the certificate's IP SANs.
fn tls_server_name(host: &str, name: Option<&str>) -> Result<ServerName<'static>, String> {
    let name = name
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or(host);
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(ServerName::from(ip)),
        Err(_) => ServerName::try_from(name.to_owned())
            .map_err(|e| format!("TLS server name {name:?}: {e}")),
    }
}

/// Fetches Placement artifacts from the operator's artifact server; see the module docs.
pub struct ArtifactClient {
    endpoint: Endpoint,
    /// What the server's certificate must name.
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    token_file: PathBuf,
    token: Mutex<Option<String>>,
    blobs: PathBuf,
    max_component_bytes: usize,
    connect_timeout: Duration,
    request_timeout: Duration,
    temp_names: AtomicU64,
}

impl std::fmt::Debug for ArtifactClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactClient")
            .field("server", &self.endpoint.authority)
            .field("blobs", &self.blobs)
            .finish_non_exhaustive()
    }
}

fn fetch_error(what: impl std::fmt::Display, reason: impl Into<String>) -> Error {
    Error::Fetch {
        digest: what.to_string(),
        reason: reason.into(),
    }
}

impl ArtifactClient {
    /// A client trusting the CA certificate(s) in `ca_pem` (PEM) for the server, and nothing
    /// else. Creates the blob cache directory (0700).
    pub fn from_pem(config: ArtifactClientConfig, ca_pem: &[u8]) -> Result<Self, Error> {
        let endpoint = Endpoint::parse(&config.server)
            .map_err(|reason| fetch_error("the artifact server", reason))?;
        let server_name = tls_server_name(&endpoint.host, config.server_name.as_deref())
            .map_err(|reason| fetch_error("the artifact server", reason))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| {
                fetch_error(
                    "the artifact server's CA",
                    format!("not a PEM certificate: {e}"),
                )
            })?;
            roots.add(cert).map_err(|e| {
                fetch_error(
                    "the artifact server's CA",
                    format!("unusable certificate: {e}"),
                )
            })?;
        }
        if roots.is_empty() {
            return Err(fetch_error(
                "the artifact server's CA",
                "the PEM holds no certificate",
            ));
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS settings: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let blobs = config.cache_dir.join("blobs").join("sha256");
        create_private_dir(&blobs)?;
        Ok(Self {
            endpoint,
            server_name,
            tls: Arc::new(tls),
            token_file: config.token_file,
            token: Mutex::new(None),
            blobs,
            max_component_bytes: config.max_component_bytes,
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            temp_names: AtomicU64::new(0),
        })
    }

    /// [`from_pem`](Self::from_pem) with the CA the operator publishes in the
    /// `airssys-artifact-ca` ConfigMap of the product `namespace`.
    pub async fn from_config_map(
        config: ArtifactClientConfig,
        client: kube::Client,
        namespace: &str,
    ) -> Result<Self, Error> {
        use k8s_openapi::api::core::v1::ConfigMap;
        let what = format!("ConfigMap {namespace}/{ARTIFACT_CA_CONFIGMAP}");
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, namespace);
        let map = api
            .get(ARTIFACT_CA_CONFIGMAP)
            .await
            .map_err(|e| fetch_error(&what, e.to_string()))?;
        let pem = map
            .data
            .and_then(|mut d| d.remove(ARTIFACT_CA_KEY))
            .ok_or_else(|| {
                fetch_error(
                    &what,
                    format!("no {ARTIFACT_CA_KEY}; is the operator's artifact server running?"),
                )
            })?;
        Self::from_pem(config, pem.as_bytes())
    }

    /// Where the verified blob of `digest` is cached.
    pub fn cache_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// The bytes of `digest` (at most `limit`), from the cache or the server, verified.
    pub async fn blob(&self, digest: &Digest, limit: usize) -> Result<Vec<u8>, Error> {
        if let Some(bytes) = self.cached(digest, limit).await {
            debug!(%digest, "artifact served from the node's cache");
            return Ok(bytes);
        }
        let bytes = self.download(digest, limit).await?;
        self.keep(digest, &bytes).await;
        Ok(bytes)
    }

    /// The cached bytes of `digest` if they still hash to it; a file that does not is deleted.
    async fn cached(&self, digest: &Digest, limit: usize) -> Option<Vec<u8>> {
        let path = self.cache_path(digest);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read a cached blob; fetching it again");
                return None;
            }
        };
        let actual = sha256_digest(&bytes);
        if &actual == digest && bytes.len() <= limit {
            return Some(bytes);
        }
        warn!(%digest, %actual, path = %path.display(), "a cached blob no longer matches its digest; deleting it");
        if let Err(e) = tokio::fs::remove_file(&path).await {
            warn!(path = %path.display(), error = %e, "cannot delete a corrupt cached blob");
        }
        None
    }

    /// Caches verified `bytes` (temp file + rename). A failure only costs a later download.
    async fn keep(&self, digest: &Digest, bytes: &[u8]) {
        let n = self.temp_names.fetch_add(1, Ordering::Relaxed);
        let temp = self
            .blobs
            .join(format!(".{}.{}.{n}.tmp", digest.hex(), std::process::id()));
        let path = self.cache_path(digest);
        let bytes = bytes.to_vec();
        let written = tokio::task::spawn_blocking(move || write_file(&temp, &path, &bytes)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(%digest, error = %e, "cannot cache a blob"),
            Err(e) => warn!(%digest, error = %e, "cannot cache a blob"),
        }
    }

    async fn token(&self, reread: bool) -> Result<String, Error> {
        if !reread
            && let Some(token) = self
                .token
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        {
            return Ok(token);
        }
        let read = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|e| Error::Io {
                what: format!("read the token file {}", self.token_file.display()),
                source: e,
            })?;
        let token = read.trim().to_owned();
        if token.is_empty() {
            return Err(fetch_error(
                "the artifact server",
                format!("the token file {} is empty", self.token_file.display()),
            ));
        }
        *self.token.lock().unwrap_or_else(PoisonError::into_inner) = Some(token.clone());
        Ok(token)
    }

    /// GETs `digest` from the server and checks the bytes; a 401 re-reads the token once.
    async fn download(&self, digest: &Digest, limit: usize) -> Result<Vec<u8>, Error> {
        let mut reread = false;
        loop {
            let token = self.token(reread).await?;
            let answer =
                tokio::time::timeout(self.request_timeout, self.get(digest, &token, limit))
                    .await
                    .map_err(|_| {
                        fetch_error(
                            digest,
                            format!("no answer within {:?}", self.request_timeout),
                        )
                    })??;
            match answer {
                Answer::Body(bytes) => {
                    let actual = sha256_digest(&bytes);
                    if &actual != digest {
                        return Err(Error::DigestMismatch {
                            expected: digest.clone(),
                            actual,
                        });
                    }
                    return Ok(bytes);
                }
                Answer::Unauthorized if !reread => {
                    debug!("artifact server answered 401; re-reading the token");
                    reread = true;
                }
                Answer::Unauthorized => {
                    return Err(fetch_error(
                        digest,
                        "the artifact server does not accept this node's ServiceAccount token (401)",
                    ));
                }
            }
        }
    }

    /// One request over a new TLS connection.
    async fn get(&self, digest: &Digest, token: &str, limit: usize) -> Result<Answer, Error> {
        let fail = |reason: String| fetch_error(digest, reason);
        let Endpoint {
            host,
            port,
            authority,
            base_path,
        } = &self.endpoint;
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect((host.as_str(), *port)),
        )
        .await
        .map_err(|_| fail(format!("connecting to {authority} timed out")))?
        .map_err(|e| fail(format!("connecting to {authority}: {e}")))?;
        let name = self.server_name.clone();
        let tls = tokio::time::timeout(
            self.connect_timeout,
            tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp),
        )
        .await
        .map_err(|_| fail(format!("TLS handshake with {authority} timed out")))?
        .map_err(|e| fail(format!("TLS handshake with {authority}: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail(format!("HTTP with {authority}: {e}")))?;
        // Drives the connection; ends when the response is read and `sender` is dropped.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "artifact server connection ended");
            }
        });
        let request = http::Request::get(format!("{base_path}{BLOB_PATH_PREFIX}{digest}"))
            .header(http::header::HOST, authority.as_str())
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| Error::Internal(format!("building a request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| fail(format!("request to {authority}: {e}")))?;
        let status = response.status();
        if status == http::StatusCode::UNAUTHORIZED {
            return Ok(Answer::Unauthorized);
        }
        if !status.is_success() {
            let body = read_body(response.into_body(), 512)
                .await
                .unwrap_or_default();
            return Err(fail(format!(
                "the artifact server answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            )));
        }
        if let Some(length) = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            && length > limit
        {
            return Err(Error::TooLarge {
                size: length,
                limit,
            });
        }
        match read_body(response.into_body(), limit).await {
            Ok(bytes) => Ok(Answer::Body(bytes)),
            Err(BodyError::TooLarge(size)) => Err(Error::TooLarge { size, limit }),
            Err(BodyError::Failed(e)) => Err(fail(format!(
                "the artifact server's answer broke off (a blob that failed its check there ends early): {e}"
            ))),
        }
    }
}

enum Answer {
    Body(Vec<u8>),
    Unauthorized,
}

enum BodyError {
    TooLarge(usize),
    Failed(hyper::Error),
}

/// Reads at most `limit` bytes of `body`.
async fn read_body(mut body: hyper::body::Incoming, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Failed)?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > limit {
                return Err(BodyError::TooLarge(out.len() + data.len()));
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out)
}

impl ArtifactSource for ArtifactClient {
    async fn fetch(&self, placement: &PlacementSpec) -> Result<Fetched, Error> {
        let digest = &placement.digest;
        if placement.artifact.oci.is_none() {
            let wasm = self.blob(digest, self.max_component_bytes).await?;
            return Ok(Fetched {
                wasm: Arc::from(wasm),
                wasm_digest: digest.clone(),
            });
        }
        let manifest = self.blob(digest, MANIFEST_LIMIT).await?;
        let (layer, size) = component_layer(&manifest)
            .map_err(|reason| fetch_error(digest, format!("its manifest {reason}")))?;
        if size > self.max_component_bytes as u64 {
            return Err(Error::TooLarge {
                size: usize::try_from(size).unwrap_or(usize::MAX),
                limit: self.max_component_bytes,
            });
        }
        let wasm = self.blob(&layer, self.max_component_bytes).await?;
        Ok(Fetched {
            wasm: Arc::from(wasm),
            wasm_digest: layer,
        })
    }
}

fn create_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| Error::Io {
            what: format!("create the blob cache {}", dir.display()),
            source: e,
        })
}

/// Writes `bytes` to `temp` (0600, flushed) and renames it onto `path`.
fn write_file(temp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(temp);
    }
    written
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        let e = Endpoint::parse("https://airssys-operator.airssys-system.svc:8443").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port),
            ("airssys-operator.airssys-system.svc", 8443)
        );
        assert_eq!(e.base_path, "");
        let e = Endpoint::parse("https://[::1]/prefix/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.base_path.as_str()),
            ("::1", 443, "/prefix")
        );
        assert!(Endpoint::parse("http://x:8443").is_err(), "TLS only");
        assert!(Endpoint::parse("x:8443").is_err());
    }

    #[test]
    fn tls_server_names() {
        let dns = |n: &str| ServerName::try_from(n.to_owned()).unwrap();
        let ip = |a: &str| ServerName::from(a.parse::<std::net::IpAddr>().unwrap());
        // (URL host, --artifact-server-name, the name verified; None: refused)
        let cases: &[(&str, Option<&str>, Option<ServerName<'static>>)] = &[
            ("op.ns.svc", None, Some(dns("op.ns.svc"))),
            ("10.96.0.12", None, Some(ip("10.96.0.12"))),
            ("::1", None, Some(ip("::1"))),
            // A ClusterIP from the environment, the certificate naming the Service.
            ("10.96.0.12", Some("op.ns.svc"), Some(dns("op.ns.svc"))),
            ("10.96.0.12", Some("10.96.0.13"), Some(ip("10.96.0.13"))),
            // Empty means unset (an unset chart value renders as an empty flag).
            ("op.ns.svc", Some(" "), Some(dns("op.ns.svc"))),
            ("10.96.0.12", Some("not a name!"), None),
        ];
        for (host, name, want) in cases {
            let got = tls_server_name(host, *name).ok();
            assert_eq!(&got, want, "host {host}, name {name:?}");
        }
    }
}
