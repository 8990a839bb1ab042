//! Network side of artifacts: OCI registries (through `oci-client`) and HTTPS URLs.
//!
//! Everything fetched is re-hashed here, whatever the server or the client library claims:
//! the manifest against the digest it is named by, the wasm layer against its descriptor, an
//! HTTPS body against the digest the spec requires.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use airssys_crds::Digest;
use futures::future::{BoxFuture, FutureExt, Shared};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest,
    WASM_LAYER_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

use super::cosign::{CERTIFICATE_ANNOTATION, CHAIN_ANNOTATION};
use super::cosign::{
    SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE, SignatureLayer, signature_tag,
};
use super::{
    ArtifactError, ErrorClass, RegistryCredentials, check_digest, digest_of, status_class,
};

/// Media types accepted as the component layer.
pub const WASM_MEDIA_TYPES: [&str; 2] = ["application/wasm", WASM_LAYER_MEDIA_TYPE];

/// Retries for transient failures: exponential backoff from `initial`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in total (at least 1).
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            initial: Duration::from_millis(250),
            max: Duration::from_secs(4),
        }
    }
}

impl RetryPolicy {
    /// The wait before try `n + 1` (after `n` failures, `n >= 1`).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.saturating_sub(1));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Runs `op` until it succeeds, fails non-transiently, or `policy.attempts` are used up.
pub async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    mut op: F,
) -> Result<T, ArtifactError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ArtifactError>>,
{
    let mut failures = 0;
    loop {
        match op().await {
            Err(err) if err.is_transient() && failures + 1 < policy.attempts.max(1) => {
                failures += 1;
                let wait = policy.delay(failures);
                warn!(%err, what, attempt = failures, ?wait, "transient artifact error, retrying");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// Size limits for what is fetched into memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    pub component_bytes: u64,
    pub signature_bytes: u64,
    pub signature_layers: usize,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            component_bytes: 64 << 20,
            signature_bytes: 1 << 20,
            signature_layers: 32,
        }
    }
}

/// An OCI reference resolved to a manifest digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedOci {
    /// `host[:port]`.
    pub registry: String,
    /// `host[:port]/path`, what `TrustSource` registry globs match.
    pub repository: String,
    /// The manifest digest: what signatures sign, approvals bind to and agents fetch by.
    pub digest: Digest,
    /// The component layer.
    pub layer_digest: Digest,
    pub layer_size: u64,
    /// Plain HTTP (loopback development registries only).
    pub insecure: bool,
}

impl ResolvedOci {
    /// `host/path@sha256:...`.
    pub fn pinned_reference(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }

    fn reference(&self, path: &str) -> Reference {
        Reference::with_digest(
            self.registry.clone(),
            path.to_owned(),
            self.digest.to_string(),
        )
    }

    fn path(&self) -> &str {
        self.repository
            .strip_prefix(&format!("{}/", self.registry))
            .unwrap_or(&self.repository)
    }
}

/// Which OCI client a request uses: plain HTTP or not, and whose credentials (user name and
/// a hash of the password).
type ClientKey = (bool, Option<(String, [u8; 32])>);

fn client_key(insecure: bool, credentials: Option<&RegistryCredentials>) -> ClientKey {
    (
        insecure,
        credentials.map(|c| {
            (
                c.username.clone(),
                Sha256::digest(c.password.as_bytes()).into(),
            )
        }),
    )
}

/// A layer check in flight: which client (protocol and credentials), repository and digest.
type LayerCheckKey = (ClientKey, String, String);

/// The shared result of one layer download; errors are shared through an `Arc` because the
/// error types inside are not `Clone`.
type LayerCheck = Shared<BoxFuture<'static, Result<u64, Arc<ArtifactError>>>>;

/// Fetches artifacts. Cheap to clone; holds connection pools.
///
/// `oci-client` keeps the credentials and bearer tokens it was given per registry (and
/// repository) inside the client, so one shared client would let a component pull with another
/// namespace's pull secret. Each distinct set of credentials therefore gets its own client.
#[derive(Clone)]
pub struct Resolver {
    clients: Arc<Mutex<HashMap<ClientKey, Client>>>,
    layer_checks: Arc<Mutex<HashMap<LayerCheckKey, LayerCheck>>>,
    extra_roots: Arc<Vec<Vec<u8>>>,
    http: reqwest::Client,
    pub retry: RetryPolicy,
    pub limits: FetchLimits,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("retry", &self.retry)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Makes ring the process's rustls provider (reqwest is built without one), once.
pub fn install_crypto_provider() {
    // An error means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How a [`Resolver`] behaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolverOptions {
    pub retry: RetryPolicy,
    pub limits: FetchLimits,
    /// Extra CA certificates (DER) trusted for registries and HTTPS URLs, on top of the
    /// system's: private registries, and tests.
    pub extra_roots: Vec<Vec<u8>>,
}

fn builder_error(source: reqwest::Error) -> ArtifactError {
    ArtifactError::Http {
        url: String::new(),
        source,
    }
}

impl Resolver {
    pub fn new(options: ResolverOptions) -> Result<Self, ArtifactError> {
        install_crypto_provider();
        let http_roots = options
            .extra_roots
            .iter()
            .map(|der| reqwest::Certificate::from_der(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(builder_error)?;
        let http = reqwest::Client::builder()
            .https_only(true)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .tls_certs_merge(http_roots)
            .build()
            .map_err(builder_error)?;
        let resolver = Self {
            clients: Arc::default(),
            layer_checks: Arc::default(),
            extra_roots: Arc::new(options.extra_roots),
            http,
            retry: options.retry,
            limits: options.limits,
        };
        // Build the anonymous clients now so a bad configuration fails at start-up.
        resolver.client(false, None)?;
        resolver.client(true, None)?;
        Ok(resolver)
    }

    /// The OCI client for this protocol and these credentials.
    fn client(
        &self,
        insecure: bool,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<Client, ArtifactError> {
        let key = client_key(insecure, credentials);
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let config = oci_client::client::ClientConfig {
            protocol: if insecure {
                oci_client::client::ClientProtocol::Http
            } else {
                oci_client::client::ClientProtocol::Https
            },
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            platform_resolver: None,
            extra_root_certificates: self
                .extra_roots
                .iter()
                .map(|der| oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Der,
                    data: der.clone(),
                })
                .collect(),
            ..Default::default()
        };
        // try_from, not new: new() silently falls back to a default configuration.
        let client = Client::try_from(config).map_err(|source| ArtifactError::Registry {
            registry: String::new(),
            class: ErrorClass::NeedsAction,
            source,
        })?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Resolves `reference` (tag or digest) to its manifest digest and wasm layer.
    pub async fn resolve_oci(
        &self,
        reference: &str,
        insecure: bool,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<ResolvedOci, ArtifactError> {
        let parsed: Reference = reference.parse().map_err(|e: oci_client::ParseError| {
            ArtifactError::InvalidReference {
                reference: reference.to_owned(),
                reason: e.to_string(),
            }
        })?;
        let pinned = parsed
            .digest()
            .map(|d| {
                Digest::parse(d).map_err(|e| ArtifactError::InvalidReference {
                    reference: reference.to_owned(),
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        let auth = auth(credentials);
        let client = self.client(insecure, credentials)?;
        let (bytes, _) = retry(&self.retry, reference, || async {
            client
                .pull_manifest_raw(
                    &parsed,
                    &auth,
                    &[OCI_IMAGE_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE],
                )
                .await
                .map_err(|e| registry_error(parsed.registry(), credentials, e))
        })
        .await?;
        // The digest of what we got, not what the registry says it is.
        let digest = digest_of(&bytes);
        if let Some(pinned) = pinned {
            check_digest(&format!("manifest of {reference}"), &bytes, &pinned)?;
        }
        let manifest: OciImageManifest =
            serde_json::from_slice(&bytes).map_err(|e| ArtifactError::Manifest {
                reference: reference.to_owned(),
                reason: format!("not an OCI image manifest: {e}"),
            })?;
        let layer = wasm_layer(reference, &manifest)?;
        let layer_digest = Digest::parse(&layer.digest).map_err(|e| ArtifactError::Manifest {
            reference: reference.to_owned(),
            reason: format!("layer digest: {e}"),
        })?;
        let layer_size = u64::try_from(layer.size).unwrap_or(0);
        if layer_size > self.limits.component_bytes {
            return Err(ArtifactError::TooLarge {
                what: format!("component layer of {reference}"),
                size: layer_size,
                limit: self.limits.component_bytes,
            });
        }
        debug!(reference, %digest, "resolved");
        Ok(ResolvedOci {
            registry: parsed.registry().to_owned(),
            repository: format!("{}/{}", parsed.registry(), parsed.repository()),
            digest,
            layer_digest,
            layer_size,
            insecure,
        })
    }

    /// Downloads the component layer and checks its digest.
    pub async fn fetch_oci(
        &self,
        resolved: &ResolvedOci,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<Vec<u8>, ArtifactError> {
        let image = resolved.reference(resolved.path());
        let layer_digest = resolved.layer_digest.to_string();
        let what = format!("component layer of {}", resolved.pinned_reference());
        let bytes = retry(&self.retry, &what, || async {
            self.pull_blob(
                resolved,
                &image,
                &layer_digest,
                credentials,
                self.limits.component_bytes,
                &what,
            )
            .await
        })
        .await?;
        check_digest(&what, &bytes, &resolved.layer_digest)?;
        Ok(bytes)
    }

    /// Fetches the cosign signature layers stored for `resolved.digest`; none when unsigned.
    pub async fn fetch_signatures(
        &self,
        resolved: &ResolvedOci,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<Vec<SignatureLayer>, ArtifactError> {
        let tag = Reference::with_tag(
            resolved.registry.clone(),
            resolved.path().to_owned(),
            signature_tag(&resolved.digest),
        );
        let auth = auth(credentials);
        let client = self.client(resolved.insecure, credentials)?;
        let what = format!("signatures of {}", resolved.pinned_reference());
        let found = retry(&self.retry, &what, || async {
            match client
                .pull_manifest_raw(
                    &tag,
                    &auth,
                    &[OCI_IMAGE_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE],
                )
                .await
            {
                Ok((bytes, _)) => Ok(Some(bytes)),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(registry_error(&resolved.registry, credentials, e)),
            }
        })
        .await?;
        let Some(bytes) = found else {
            return Ok(Vec::new());
        };
        let manifest: OciImageManifest =
            serde_json::from_slice(&bytes).map_err(|e| ArtifactError::Manifest {
                reference: what.clone(),
                reason: format!("not an OCI image manifest: {e}"),
            })?;
        let mut layers = Vec::new();
        for layer in manifest
            .layers
            .iter()
            .filter(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE)
        {
            if layers.len() == self.limits.signature_layers {
                warn!(
                    what,
                    limit = self.limits.signature_layers,
                    "too many signature layers; ignoring the rest"
                );
                break;
            }
            let annotations = layer.annotations.clone().unwrap_or_default();
            let Some(signature) = annotations.get(SIGNATURE_ANNOTATION) else {
                continue;
            };
            let digest = Digest::parse(&layer.digest).map_err(|e| ArtifactError::Manifest {
                reference: what.clone(),
                reason: format!("signature layer digest: {e}"),
            })?;
            let image = tag.clone();
            let fetched = retry(&self.retry, &what, || async {
                self.pull_blob(
                    resolved,
                    &image,
                    &layer.digest,
                    credentials,
                    self.limits.signature_bytes,
                    &what,
                )
                .await
            })
            .await;
            // A payload changed at rest makes this one signature unverifiable, not the
            // artifact: it is reported and ignored, as cosign ignores it.
            let changed = || {
                format!(
                    "its payload blob does not hash to {digest}: changed at rest or tampered with"
                )
            };
            let (payload, tampered) = match fetched {
                Ok(payload) => {
                    let tampered = check_digest("payload", &payload, &digest)
                        .err()
                        .map(|_| changed());
                    (payload, tampered)
                }
                Err(e) if e.class() == ErrorClass::Integrity => (Vec::new(), Some(changed())),
                Err(e) => return Err(e),
            };
            layers.push(SignatureLayer {
                payload,
                signature: signature.clone(),
                certificate: annotations.get(CERTIFICATE_ANNOTATION).cloned(),
                chain: annotations.get(CHAIN_ANNOTATION).cloned(),
                tampered,
            });
        }
        Ok(layers)
    }

    /// Streams the component layer through SHA-256 and checks it against the manifest's
    /// layer digest, so a blob changed at rest is caught before anything is approved. Returns
    /// the layer's size.
    ///
    /// Callers checking the same layer with the same credentials at the same time share one
    /// download: when a thousand components of one artifact arrive together, the registry
    /// serves the blob once, not a thousand times. Nothing is cached after the download ends,
    /// so a later check always reads the bytes the registry serves then.
    pub async fn verify_oci_layer(
        &self,
        resolved: &ResolvedOci,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<u64, ArtifactError> {
        let key: LayerCheckKey = (
            client_key(resolved.insecure, credentials),
            resolved.repository.clone(),
            resolved.layer_digest.to_string(),
        );
        let check = {
            let mut checks = self
                .layer_checks
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            checks
                .entry(key.clone())
                .or_insert_with(|| {
                    let this = self.clone();
                    let resolved = resolved.clone();
                    let credentials = credentials.cloned();
                    async move {
                        this.download_and_hash_layer(&resolved, credentials.as_ref())
                            .await
                            .map_err(Arc::new)
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        let result = check.clone().await;
        {
            // The first caller to finish retires the check (only this one: a newer check
            // under the same key may already have started).
            let mut checks = self
                .layer_checks
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if checks.get(&key).is_some_and(|c| c.ptr_eq(&check)) {
                checks.remove(&key);
            }
        }
        // The last holder gets the error itself; callers still sharing it see `Shared`.
        drop(check);
        result.map_err(|e| Arc::try_unwrap(e).unwrap_or_else(ArtifactError::Shared))
    }

    /// Streams the component layer through a hash without keeping it: proves the registry
    /// serves the bytes the manifest names, in constant memory. Returns the layer's size.
    async fn download_and_hash_layer(
        &self,
        resolved: &ResolvedOci,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<u64, ArtifactError> {
        let image = resolved.reference(resolved.path());
        let layer_digest = resolved.layer_digest.to_string();
        let what = format!("component layer of {}", resolved.pinned_reference());
        let (size, hash) = retry(&self.retry, &what, || async {
            let mut hasher = Sha256::new();
            let size = self
                .stream_blob(
                    resolved,
                    &image,
                    &layer_digest,
                    credentials,
                    self.limits.component_bytes,
                    &what,
                    |chunk| hasher.update(chunk),
                )
                .await?;
            Ok((size, <[u8; 32]>::from(hasher.finalize())))
        })
        .await?;
        let actual = Digest::from_sha256(&hash);
        if actual != resolved.layer_digest {
            return Err(ArtifactError::DigestMismatch {
                what,
                expected: resolved.layer_digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(size)
    }

    async fn pull_blob(
        &self,
        resolved: &ResolvedOci,
        image: &Reference,
        digest: &str,
        credentials: Option<&RegistryCredentials>,
        limit: u64,
        what: &str,
    ) -> Result<Vec<u8>, ArtifactError> {
        let mut out = Vec::new();
        self.stream_blob(resolved, image, digest, credentials, limit, what, |chunk| {
            out.extend_from_slice(chunk);
        })
        .await?;
        Ok(out)
    }

    /// Streams blob `digest` into `sink`, at most `limit` bytes; returns how many there were.
    #[allow(
        clippy::too_many_arguments,
        reason = "private plumbing shared by the two blob readers"
    )]
    async fn stream_blob(
        &self,
        resolved: &ResolvedOci,
        image: &Reference,
        digest: &str,
        credentials: Option<&RegistryCredentials>,
        limit: u64,
        what: &str,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<u64, ArtifactError> {
        use futures::TryStreamExt as _;
        let client = self.client(resolved.insecure, credentials)?;
        // Pulling a blob reuses the token from the manifest pull; authenticate if there was none.
        client
            .store_auth_if_needed(image.resolve_registry(), &auth(credentials))
            .await;
        let mut stream = client
            .pull_blob_stream(image, digest)
            .await
            .map_err(|e| registry_error(&resolved.registry, credentials, e))?;
        if let Some(len) = stream.content_length
            && len > limit
        {
            return Err(ArtifactError::TooLarge {
                what: what.to_owned(),
                size: len,
                limit,
            });
        }
        let mut size = 0u64;
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| stream_error(&resolved.registry, credentials, what, e))?
        {
            size += chunk.len() as u64;
            if size > limit {
                return Err(ArtifactError::TooLarge {
                    what: what.to_owned(),
                    size,
                    limit,
                });
            }
            sink(&chunk);
        }
        Ok(size)
    }

    /// Downloads `url` (HTTPS only) and checks the bytes against the required `expected` digest.
    pub async fn fetch_https(
        &self,
        url: &str,
        expected: &Digest,
    ) -> Result<Vec<u8>, ArtifactError> {
        check_https(url)?;
        let bytes = retry(&self.retry, url, || self.get_https(url)).await?;
        check_digest(url, &bytes, expected)?;
        Ok(bytes)
    }

    async fn get_https(&self, url: &str) -> Result<Vec<u8>, ArtifactError> {
        let http_err = |source| ArtifactError::Http {
            url: url.to_owned(),
            source,
        };
        let mut response = self.http.get(url).send().await.map_err(http_err)?;
        let status = response.status().as_u16();
        if !response.status().is_success() {
            return Err(ArtifactError::HttpStatus {
                url: url.to_owned(),
                status,
            });
        }
        let limit = self.limits.component_bytes;
        let too_large = |size| ArtifactError::TooLarge {
            what: url.to_owned(),
            size,
            limit,
        };
        if let Some(len) = response.content_length()
            && len > limit
        {
            return Err(too_large(len));
        }
        let mut out = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(http_err)? {
            out.extend_from_slice(&chunk);
            if out.len() as u64 > limit {
                return Err(too_large(out.len() as u64));
            }
        }
        Ok(out)
    }
}

/// Only `https://` URLs with a host.
pub fn check_https(url: &str) -> Result<(), ArtifactError> {
    let invalid = |reason| ArtifactError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| invalid("only https:// URLs are fetched"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains('@') {
        return Err(invalid("the URL needs a host and no user info"));
    }
    Ok(())
}

fn auth(credentials: Option<&RegistryCredentials>) -> RegistryAuth {
    match credentials {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    }
}

/// The one wasm layer of a component manifest.
fn wasm_layer<'m>(
    reference: &str,
    manifest: &'m OciImageManifest,
) -> Result<&'m OciDescriptor, ArtifactError> {
    let mut wasm = manifest
        .layers
        .iter()
        .filter(|l| WASM_MEDIA_TYPES.contains(&l.media_type.as_str()));
    match (wasm.next(), wasm.next()) {
        (Some(layer), None) => Ok(layer),
        (None, _) => Err(ArtifactError::NoWasmLayer {
            reference: reference.to_owned(),
        }),
        (Some(_), Some(_)) => Err(ArtifactError::Manifest {
            reference: reference.to_owned(),
            reason: "more than one wasm layer; a component artifact has exactly one".to_owned(),
        }),
    }
}

fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound
            )
        }),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        _ => false,
    }
}

/// Classifies an `oci-client` error: connection trouble and 5xx are transient, a digest that
/// does not match is an integrity failure, the rest needs someone to act.
pub(crate) fn classify(e: &OciDistributionError) -> ErrorClass {
    match e {
        OciDistributionError::RequestError(r) if r.is_builder() || super::is_tls_rejection(r) => {
            ErrorClass::NeedsAction
        }
        OciDistributionError::IoError(io) if digest_mismatch(io).is_some() => ErrorClass::Integrity,
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => {
            ErrorClass::Transient
        }
        OciDistributionError::ServerError { code, .. } => status_class(*code),
        OciDistributionError::RegistryError { envelope, .. } => {
            if envelope
                .errors
                .iter()
                .any(|e| e.code == OciErrorCode::Toomanyrequests)
            {
                ErrorClass::Transient
            } else {
                ErrorClass::NeedsAction
            }
        }
        OciDistributionError::DigestError(_) => ErrorClass::Integrity,
        _ => ErrorClass::NeedsAction,
    }
}

/// The digest mismatch oci-client found in a streamed blob, if that is what `e` is: it
/// re-hashes blobs as they stream and reports a mismatch as an I/O error at the end.
fn digest_mismatch(e: &std::io::Error) -> Option<(&str, &str)> {
    match e.get_ref()?.downcast_ref::<DigestError>()? {
        DigestError::VerificationError { expected, actual } => Some((expected, actual)),
        _ => None,
    }
}

/// An error while streaming a blob: bytes that do not match their digest are an integrity
/// failure, not a network one (retrying would fetch the same changed bytes).
fn stream_error(
    registry: &str,
    credentials: Option<&RegistryCredentials>,
    what: &str,
    e: std::io::Error,
) -> ArtifactError {
    if let Some((expected, actual)) = digest_mismatch(&e) {
        return ArtifactError::DigestMismatch {
            what: what.to_owned(),
            expected: expected.to_owned(),
            actual: actual.to_owned(),
        };
    }
    registry_error(registry, credentials, e.into())
}

/// Whether the registry refused the request for want of (valid) credentials: a failed token
/// exchange, a 401 or 403, or an `UNAUTHORIZED`/`DENIED` error envelope.
fn is_unauthorized(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => true,
        OciDistributionError::ServerError { code, .. } => matches!(code, 401 | 403),
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        _ => false,
    }
}

fn registry_error(
    registry: &str,
    credentials: Option<&RegistryCredentials>,
    source: OciDistributionError,
) -> ArtifactError {
    if is_unauthorized(&source) {
        return ArtifactError::Unauthorized {
            registry: registry.to_owned(),
            user: credentials.map(|c| c.username.clone()),
            source: Box::new(source),
        };
    }
    ArtifactError::Registry {
        registry: registry.to_owned(),
        class: classify(&source),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

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
                OciDistributionError::IoError(std::io::Error::other(
                    DigestError::VerificationError {
                        expected: "sha256:a".into(),
                        actual: "sha256:b".into(),
                    },
                )),
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
}
