//! OCI registries through `oci-client`: tags to digests, manifests, cosign signature
//! manifests, and the component layer streamed through SHA-256.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use airssys_crds::Digest;
use airssys_crds::artifact::LayerError;
use futures::future::{BoxFuture, FutureExt, Shared};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::{IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

use super::{Resolver, retry};
use crate::artifact::cosign::{CERTIFICATE_ANNOTATION, CHAIN_ANNOTATION};
use crate::artifact::cosign::{
    SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE, SignatureLayer, signature_tag,
};
use crate::artifact::{
    ArtifactError, ErrorClass, RegistryCredentials, check_digest, digest_of, status_class,
};

/// Media types accepted as the component layer (one list, shared with the agent).
pub use airssys_crds::artifact::WASM_MEDIA_TYPES;

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
pub(super) type ClientKey = (bool, Option<(String, [u8; 32])>);

pub(super) fn client_key(insecure: bool, credentials: Option<&RegistryCredentials>) -> ClientKey {
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
pub(super) type LayerCheckKey = (ClientKey, String, String);

/// The shared result of one layer download; errors are shared through an `Arc` because the
/// error types inside are not `Clone`.
pub(super) type LayerCheck = Shared<BoxFuture<'static, Result<u64, Arc<ArtifactError>>>>;

impl Resolver {
    /// The OCI client for this protocol and these credentials.
    pub(super) fn client(
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
        self.resolve_oci_manifest(reference, insecure, credentials)
            .await
            .map(|(resolved, _)| resolved)
    }

    /// [`resolve_oci`](Self::resolve_oci), also returning the manifest's bytes: exactly the
    /// bytes that hash to `resolved.digest` (checked against the reference's digest when it
    /// has one), which the artifact server hands to agents so they can check the manifest →
    /// layer link themselves.
    pub async fn resolve_oci_manifest(
        &self,
        reference: &str,
        insecure: bool,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<(ResolvedOci, Vec<u8>), ArtifactError> {
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
        let (layer_digest, layer_size) = component_layer(reference, &bytes)?;
        if layer_size > self.limits.component_bytes {
            return Err(ArtifactError::TooLarge {
                what: format!("component layer of {reference}"),
                size: layer_size,
                limit: self.limits.component_bytes,
            });
        }
        debug!(reference, %digest, "resolved");
        let resolved = ResolvedOci {
            registry: parsed.registry().to_owned(),
            repository: format!("{}/{}", parsed.registry(), parsed.repository()),
            digest,
            layer_digest,
            layer_size,
            insecure,
        };
        Ok((resolved, bytes.to_vec()))
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
}

pub(super) fn auth(credentials: Option<&RegistryCredentials>) -> RegistryAuth {
    match credentials {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    }
}

/// The component layer (digest and size) that manifest `bytes` of `reference` names: its one
/// layer of a wasm media type (the rule is `airssys_crds::artifact::component_layer`).
pub fn component_layer(reference: &str, bytes: &[u8]) -> Result<(Digest, u64), ArtifactError> {
    airssys_crds::artifact::component_layer(bytes).map_err(|e| match e {
        LayerError::NoWasmLayer => ArtifactError::NoWasmLayer {
            reference: reference.to_owned(),
        },
        other => ArtifactError::Manifest {
            reference: reference.to_owned(),
            reason: format!("it {other}"),
        },
    })
}

pub(super) fn is_not_found(e: &OciDistributionError) -> bool {
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
pub(super) fn classify(e: &OciDistributionError) -> ErrorClass {
    match e {
        OciDistributionError::RequestError(r)
            if r.is_builder() || crate::artifact::is_tls_rejection(r) =>
        {
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
pub(super) fn digest_mismatch(e: &std::io::Error) -> Option<(&str, &str)> {
    match e.get_ref()?.downcast_ref::<DigestError>()? {
        DigestError::VerificationError { expected, actual } => Some((expected, actual)),
        _ => None,
    }
}

/// An error while streaming a blob: bytes that do not match their digest are an integrity
/// failure, not a network one (retrying would fetch the same changed bytes).
pub(super) fn stream_error(
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
pub(super) fn is_unauthorized(e: &OciDistributionError) -> bool {
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

pub(super) fn registry_error(
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
