//! The artifact server: approved components' bytes, by digest, to the node agents.
//!
//! Agents must run private-registry components without holding any namespace's pull
//! credentials. The operator already reads each new digest with the component's own
//! credentials and re-hashes it, so it serves those bytes: `GET /v1/blobs/sha256:<hex>`
//! (`airssys_crds::agent::BLOB_PATH_PREFIX`) over HTTPS, with the agent's ServiceAccount token
//! as bearer token. The body is exactly the bytes of that digest; agents hash them again.
//!
//! - [`auth`]: who may fetch (TokenReview, the agent identity only).
//! - [`approved`]: what may be fetched (digests of approved components and their OCI layers),
//!   pure.
//! - [`source`]: where a missing blob is read from, with the component's own credentials.
//! - [`tls`]: the installation's CA (a Secret), its publication (a ConfigMap), the serving
//!   certificate.
//! - [`crate::artifact::store`]: the bytes on disk.
//!
//! The server runs on every replica, leader or not: it watches `WasmComponent`s itself and
//! reads approvals from their status (what the acting replica wrote), so a standby serves as
//! well as the leader. Answers: 401 without a valid token, 403 for a valid token of another
//! identity, 404 for any digest no approved component allows (whether or not it exists),
//! 502 when the source cannot be read now, 503 while starting.

pub mod approved;
pub mod auth;
pub mod source;
pub mod tls;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use airssys_crds::agent::BLOB_PATH_PREFIX;
use airssys_crds::{Digest, WasmComponent};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::{BoxFuture, FutureExt as _, Shared};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioIo, TokioTimer};
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use self::approved::{ApprovedArtifact, Role};
use self::auth::{Authenticator, Verdict};
use crate::Config;
use crate::artifact::store::{BlobStore, StoreError, VerifyingReader};
use crate::artifact::{ArtifactError, Resolver, component_layer};

/// The most bytes of an OCI manifest the server reads back from its store (the distribution
/// spec's recommended limit for manifests).
pub const MANIFEST_LIMIT: u64 = 4 << 20;
/// Chunk size when streaming a blob.
const CHUNK: usize = 64 << 10;
/// A request head slower than this is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS handshake slower than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often blobs no approved component uses are removed.
const EVICT_EVERY: Duration = Duration::from_secs(60);

/// Why the artifact server could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("artifact server on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("artifact server TLS: {0}")]
    Tls(String),
    #[error("artifact server: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// The source cannot supply the digest (it names something else, or nothing).
    #[error("{0}")]
    Source(String),
    /// The same failure, seen by every request that shared one download.
    #[error(transparent)]
    Shared(Arc<ServeError>),
}

/// The artifact server's flags (`airssys-operator run`).
#[derive(Debug, Clone, clap::Args)]
pub struct ArtifactServerArgs {
    /// Serve approved components' blobs to agents over HTTPS on this address, e.g.
    /// 0.0.0.0:8443. Off when not given.
    #[arg(long, env = "AIRSSYS_ARTIFACT_ADDR")]
    pub artifact_addr: Option<SocketAddr>,
    /// DNS names and IP addresses of the serving certificate; repeat or separate with commas.
    /// Default: airssys-operator.<namespace>.svc, ….svc.cluster.local, localhost, 127.0.0.1.
    #[arg(long, env = "AIRSSYS_ARTIFACT_SERVER_NAMES", value_delimiter = ',')]
    pub artifact_server_names: Vec<String>,
    /// The agents' ServiceAccount as `<namespace>:<name>`: the only identity served.
    /// Default: <namespace>:airssys-agent.
    #[arg(long, env = "AIRSSYS_AGENT_SERVICE_ACCOUNT")]
    pub agent_service_account: Option<String>,
    /// Where verified blobs are kept.
    #[arg(
        long,
        env = "AIRSSYS_BLOB_DIR",
        default_value = "/var/cache/airssys-operator/blobs"
    )]
    pub blob_dir: PathBuf,
    /// Most bytes of blobs kept on disk; the least recently served go first.
    #[arg(long, env = "AIRSSYS_BLOB_CACHE_BYTES", default_value_t = 2 << 30)]
    pub blob_cache_bytes: u64,
}

impl ArtifactServerArgs {
    /// The server's options for product namespace `namespace`; `None` when it is off.
    pub fn options(&self, namespace: &str) -> Result<Option<ArtifactServerOptions>, ServeError> {
        let Some(addr) = self.artifact_addr else {
            return Ok(None);
        };
        let server_names = if self.artifact_server_names.is_empty() {
            default_server_names(namespace)
        } else {
            self.artifact_server_names.clone()
        };
        let account = self
            .agent_service_account
            .clone()
            .unwrap_or_else(|| format!("{namespace}:airssys-agent"));
        let agent_user = auth::service_account_user(&account).ok_or_else(|| {
            ServeError::Config(format!(
                "--agent-service-account {account:?} is not <namespace>:<name>"
            ))
        })?;
        Ok(Some(ArtifactServerOptions {
            addr,
            namespace: namespace.to_owned(),
            server_names,
            agent_user,
            blob_dir: self.blob_dir.clone(),
            blob_cache_bytes: self.blob_cache_bytes,
        }))
    }
}

/// The names a serving certificate has by default: the in-cluster Service and loopback.
pub fn default_server_names(namespace: &str) -> Vec<String> {
    vec![
        format!("airssys-operator.{namespace}.svc"),
        format!("airssys-operator.{namespace}.svc.cluster.local"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ]
}

/// How the artifact server runs.
#[derive(Debug, Clone)]
pub struct ArtifactServerOptions {
    pub addr: SocketAddr,
    /// The product namespace: the CA Secret and ConfigMap live there.
    pub namespace: String,
    pub server_names: Vec<String>,
    /// The one user name served (`system:serviceaccount:<ns>:<name>`).
    pub agent_user: String,
    pub blob_dir: PathBuf,
    pub blob_cache_bytes: u64,
}

/// A started server.
pub struct Started {
    /// The bound address (useful with port 0).
    pub bound: SocketAddr,
    /// The CA certificate (PEM) agents trust, as published.
    pub ca_pem: String,
    /// Serves until dropped.
    pub serving: BoxFuture<'static, ()>,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

/// Opens the blob store, sets up TLS (the CA Secret and ConfigMap in the product namespace),
/// starts watching components and binds the address. The returned future serves.
pub async fn start(
    client: kube::Client,
    resolver: Resolver,
    config: Config,
    options: ArtifactServerOptions,
) -> Result<Started, ServeError> {
    crate::artifact::resolve::install_crypto_provider();
    let store = Arc::new(BlobStore::open(
        &options.blob_dir,
        options.blob_cache_bytes,
    )?);
    let ca = tls::ensure_ca(&client, &options.namespace).await?;
    tls::publish_ca(&client, &options.namespace, &ca.cert).await?;
    let cert = Arc::new(tls::ServingCert::new(tls::issue_serving(
        &ca,
        &options.server_names,
    )?));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(cert.clone())?);

    let (components, writer) = reflector::store();
    let ready = Arc::new(AtomicBool::new(false));
    let watch_ready = ready.clone();
    let watch = reflector::reflector(
        writer,
        watcher(
            Api::<WasmComponent>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .for_each(move |event| {
        if let Ok(watcher::Event::InitDone) = event {
            watch_ready.store(true, Ordering::Relaxed);
        }
        futures::future::ready(())
    });

    let listener = TcpListener::bind(options.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: options.addr,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: options.addr,
        source,
    })?;
    let server = Arc::new(Server {
        auth: Authenticator::new(client.clone(), options.agent_user.clone()),
        client,
        resolver,
        config,
        store,
        components,
        ready,
        layers: Mutex::default(),
        fills: Mutex::default(),
    });
    info!(artifact_addr = %bound, names = ?options.server_names, agent = %options.agent_user, "artifact server listening");
    let serving = futures::future::join4(
        accept_loop(listener, acceptor, server.clone()),
        watch,
        server.evict_loop(),
        tls::renew(cert, ca.clone(), options.server_names),
    )
    .map(|_| ())
    .boxed();
    Ok(Started {
        bound,
        ca_pem: ca.cert,
        serving,
    })
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    server: Arc<Server>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors, usually: wait instead of spinning.
                warn!(error = %e, "artifact server: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, server) = (acceptor.clone(), server.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "artifact server: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "artifact server: TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |request| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(request).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, error = %e, "artifact server: connection failed");
            }
        });
    }
}

/// A response body: a short text, or a blob streamed from disk.
type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// One download from a source into the store, shared by the requests that need it.
type Fill = Shared<BoxFuture<'static, Result<(), Arc<ServeError>>>>;

struct Server {
    client: kube::Client,
    resolver: Resolver,
    config: Config,
    store: Arc<BlobStore>,
    auth: Authenticator,
    components: Store<WasmComponent>,
    /// The first list of components is in the store.
    ready: Arc<AtomicBool>,
    /// Approved OCI manifest digest → the component layer it names, as learned.
    layers: Mutex<HashMap<Digest, Digest>>,
    fills: Mutex<HashMap<Digest, Fill>>,
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body.into()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl Server {
    fn approved(&self) -> Vec<ApprovedArtifact> {
        self.components
            .state()
            .iter()
            .filter_map(|c| ApprovedArtifact::of(c))
            .collect()
    }

    fn layers(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Digest>> {
        self.layers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn handle<B>(self: Arc<Self>, request: Request<B>) -> Response<Body> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match self.auth.check(authorization).await {
            Ok(Verdict::Agent) => {}
            Ok(Verdict::Unauthenticated) => {
                let mut response = text(
                    StatusCode::UNAUTHORIZED,
                    "send the agent's ServiceAccount token as a bearer token\n",
                );
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                return response;
            }
            Ok(Verdict::Forbidden(user)) => {
                warn!(%user, path = request.uri().path(), "artifact server: refused a request of another identity");
                return text(
                    StatusCode::FORBIDDEN,
                    "only the node agents may fetch blobs\n",
                );
            }
            Err(e) => {
                warn!(error = %e, "artifact server: cannot review a token");
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot check the token now; retry\n",
                );
            }
        }
        if !self.ready.load(Ordering::Relaxed) {
            return text(StatusCode::SERVICE_UNAVAILABLE, "starting; retry\n");
        }
        let Some(digest) = request
            .uri()
            .path()
            .strip_prefix(BLOB_PATH_PREFIX)
            .and_then(|d| Digest::parse(d).ok())
        else {
            return text(StatusCode::NOT_FOUND, "not found\n");
        };
        let head = request.method() == Method::HEAD;
        self.serve(digest, head).await
    }

    async fn serve(self: Arc<Self>, digest: Digest, head: bool) -> Response<Body> {
        let sources = self.sources(&digest).await;
        if sources.is_empty() {
            debug!(%digest, "artifact server: no approved component allows this digest");
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        // A blob can be evicted between the fill and the open (a tiny cap): try twice.
        for _ in 0..2 {
            match self.store.open_blob(&digest).await {
                Ok(Some((file, size))) => return self.blob_response(digest, file, size, head),
                Ok(None) => {}
                Err(e) => {
                    warn!(%digest, error = %e, "artifact server: cannot read a stored blob");
                    return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the blob\n");
                }
            }
            if let Err(e) = self.clone().fill(&digest, sources.clone()).await {
                warn!(%digest, error = %e, "artifact server: cannot fetch a blob from its source");
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("cannot read {digest} from its source now; retry later\n"),
                );
            }
        }
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the blob store is full; retry\n",
        )
    }

    /// The approved components that allow `digest`. When none does, the component layers of
    /// approved manifests not read yet are learned first (an agent may ask this replica for
    /// a layer whose manifest another replica served).
    async fn sources(self: &Arc<Self>, digest: &Digest) -> Vec<(ApprovedArtifact, Role)> {
        let approved = self.approved();
        let found = approved::sources_for(digest, &approved, &self.layers());
        if !found.is_empty() {
            return found;
        }
        let unknown = approved::unknown_manifests(&approved, &self.layers());
        for manifest in unknown {
            if let Err(e) = self.clone().learn_layer(&manifest, true).await {
                debug!(manifest = %manifest.digest, error = %e, "cannot read an approved manifest");
            }
        }
        approved::sources_for(digest, &approved, &self.layers())
    }

    /// Learns the component layer of approved manifest `a.digest` from the store, or (with
    /// `fetch`) from its registry.
    async fn learn_layer(
        self: Arc<Self>,
        a: &ApprovedArtifact,
        fetch: bool,
    ) -> Result<(), ServeError> {
        if !self.store.contains(&a.digest) {
            if !fetch {
                return Ok(());
            }
            // Filling a manifest records its layer.
            return self
                .fill(&a.digest, vec![(a.clone(), Role::Manifest)])
                .await;
        }
        if let Some(bytes) = self.store.read_verified(&a.digest, MANIFEST_LIMIT).await? {
            self.record_layer(&a.digest, &bytes)?;
        }
        Ok(())
    }

    fn record_layer(&self, manifest: &Digest, bytes: &[u8]) -> Result<(), ServeError> {
        let (layer, _) = component_layer(manifest.as_str(), bytes)?;
        self.layers().insert(manifest.clone(), layer);
        Ok(())
    }

    /// Brings `digest` into the store from the first source that supplies it. Requests for
    /// the same digest at the same time share one download.
    async fn fill(
        self: Arc<Self>,
        digest: &Digest,
        sources: Vec<(ApprovedArtifact, Role)>,
    ) -> Result<(), ServeError> {
        let fill = {
            let mut fills = self.fills.lock().unwrap_or_else(PoisonError::into_inner);
            fills
                .entry(digest.clone())
                .or_insert_with(|| {
                    let this = self.clone();
                    let digest = digest.clone();
                    async move { this.download(&digest, sources).await.map_err(Arc::new) }
                        .boxed()
                        .shared()
                })
                .clone()
        };
        let result = fill.clone().await;
        {
            let mut fills = self.fills.lock().unwrap_or_else(PoisonError::into_inner);
            if fills.get(digest).is_some_and(|f| f.ptr_eq(&fill)) {
                fills.remove(digest);
            }
        }
        drop(fill);
        result.map_err(|e| Arc::try_unwrap(e).unwrap_or_else(ServeError::Shared))
    }

    async fn download(
        &self,
        digest: &Digest,
        sources: Vec<(ApprovedArtifact, Role)>,
    ) -> Result<(), ServeError> {
        let mut last = None;
        for (a, role) in sources {
            match source::fetch(
                &self.client,
                &self.resolver,
                &self.config,
                &a,
                &role,
                digest,
            )
            .await
            {
                Ok(bytes) => {
                    if role == Role::Manifest {
                        self.record_layer(digest, &bytes)?;
                    }
                    let size = bytes.len();
                    self.store.put(digest, bytes).await?;
                    info!(%digest, size, namespace = %a.namespace, component = %a.name, "artifact server: stored a blob from its source");
                    if self.store.total_bytes() > self.store.cap() {
                        self.evict();
                    }
                    return Ok(());
                }
                Err(e) => {
                    debug!(%digest, namespace = %a.namespace, component = %a.name, error = %e, "a source could not supply the blob");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ServeError::Source(format!("no source for {digest}"))))
    }

    /// Removes blobs no approved component uses, then the least recently served over the cap;
    /// forgets the layers of manifests no longer approved.
    fn evict(&self) {
        if !self.ready.load(Ordering::Relaxed) {
            // Before the first list every blob looks unused.
            return;
        }
        let approved = self.approved();
        let in_use = {
            let mut layers = self.layers();
            layers.retain(|manifest, _| approved.iter().any(|a| &a.digest == manifest));
            approved::in_use(&approved, &layers)
        };
        self.store.evict(&in_use);
    }

    async fn evict_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(EVICT_EVERY);
        loop {
            tick.tick().await;
            // Layers of manifests on disk are known before anything is judged unused.
            let unknown = approved::unknown_manifests(&self.approved(), &self.layers());
            for manifest in unknown {
                if let Err(e) = self.clone().learn_layer(&manifest, false).await {
                    debug!(manifest = %manifest.digest, error = %e, "cannot read a stored manifest");
                }
            }
            self.evict();
        }
    }

    /// 200 with the blob, streamed from `file` through SHA-256. The chunk that completes it
    /// is sent only when the whole hashes to `digest`: a blob changed on disk ends the
    /// response early (the agent sees a short body, never wrong bytes) and is removed.
    fn blob_response(
        &self,
        digest: Digest,
        file: tokio::fs::File,
        size: u64,
        head: bool,
    ) -> Response<Body> {
        let body = if head {
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed_unsync()
        } else {
            verified_stream(file, size, digest, self.store.clone())
        };
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(size));
        response
    }
}

/// What streaming one blob needs between chunks.
struct Streaming {
    file: tokio::io::Take<tokio::fs::File>,
    check: Option<VerifyingReader>,
    size: u64,
    digest: Digest,
    store: Arc<BlobStore>,
}

type Chunk = Result<Frame<Bytes>, std::io::Error>;

fn verified_stream(
    file: tokio::fs::File,
    size: u64,
    digest: Digest,
    store: Arc<BlobStore>,
) -> Body {
    let state = Streaming {
        file: file.take(size),
        check: Some(VerifyingReader::new(digest.clone())),
        size,
        digest,
        store,
    };
    let stream = futures::stream::unfold(state, |mut s| {
        Box::pin(async move {
            let check = s.check.as_mut()?;
            let mut chunk = Vec::new();
            if check.read() < s.size {
                chunk = vec![0u8; CHUNK];
                match s.file.read(&mut chunk).await {
                    Ok(0) => {
                        s.check = None;
                        let e = std::io::Error::other(format!("blob {} shrank on disk", s.digest));
                        s.store.remove(&s.digest);
                        return Some((Err(e), s));
                    }
                    Ok(n) => chunk.truncate(n),
                    Err(e) => {
                        s.check = None;
                        return Some((Err(e), s));
                    }
                }
                check.update(&chunk);
            }
            if check.read() < s.size {
                return Some((Ok(Frame::data(Bytes::from(chunk))), s));
            }
            // The last chunk: only if the whole blob is what its name says.
            let check = s.check.take()?;
            match check.finish() {
                Ok(()) => Some((Ok(Frame::data(Bytes::from(chunk))), s)),
                Err(actual) => {
                    warn!(digest = %s.digest, %actual, "a stored blob changed at rest; removing it");
                    s.store.remove(&s.digest);
                    let e = std::io::Error::other(format!("blob {} changed at rest", s.digest));
                    Some((Err(e), s))
                }
            }
        }) as Pin<Box<dyn Future<Output = Option<(Chunk, Streaming)>> + Send>>
    });
    StreamBody::new(stream).boxed_unsync()
}
