//! Artifacts: resolve a reference to a digest, fetch the bytes by digest, check cosign
//! signatures.
//!
//! - [`resolve`]: OCI (tag or digest, through `oci-client`), HTTPS (digest required) and
//!   ConfigMap bytes; retries with backoff for network errors. The only module here with I/O.
//! - [`cosign`]: cosign's signature format (simple-signing payloads stored at
//!   `sha256-<hex>.sig`) and their verification, pure.
//! - [`keys`]: cosign public keys and trust-root CAs, parsed once when a `TrustSource` is
//!   indexed.
//! - [`credentials`]: registry credentials from `kubernetes.io/dockerconfigjson` Secrets, pure.
//! - [`store`]: verified blobs on the operator's disk, by digest, bounded.
//! - [`serve`]: the artifact server: approved components' blobs, by digest, to authenticated
//!   agents over TLS, so no agent needs another namespace's pull credentials.
//!
//! Errors are classed so the controller can keep its promise: a network failure retries and
//! never changes an approval; only an integrity failure marks a component as failing
//! verification.

pub mod cosign;
pub mod credentials;
pub mod keys;
pub mod resolve;
pub mod serve;
pub mod store;

use airssys_crds::Digest;
use sha2::{Digest as _, Sha256};

pub use cosign::{SignatureLayer, Signer, Verification};
pub use credentials::RegistryCredentials;
pub use keys::{CaCertificate, KeyError, PublicKey};
pub use resolve::{
    FetchLimits, ResolvedOci, Resolver, ResolverOptions, RetryPolicy, component_layer,
};

/// How the controller should treat an [`ArtifactError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Network trouble or a server error: retry with backoff, keep the current decision.
    Transient,
    /// Someone must act (reference not found, unauthorized, bad pull secret, not a wasm
    /// artifact): report it and re-check slowly; not a verdict on the artifact.
    NeedsAction,
    /// The bytes or signatures are not what they claim (digest mismatch, malformed signature):
    /// `Verified=False, reason=VerificationFailed`.
    Integrity,
}

/// Why an artifact could not be resolved, fetched or verified.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("registry {registry}: {source}")]
    Registry {
        registry: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
        class: ErrorClass,
    },
    /// The registry wants credentials, or refused the ones given (401/403).
    #[error(
        "registry {registry} refused {}: {source}. {}",
        refused_whom(user.as_deref()),
        unauthorized_hint(registry, user.as_deref())
    )]
    Unauthorized {
        registry: String,
        /// The user name the request authenticated as; `None` when it pulled anonymously.
        user: Option<String>,
        /// Boxed: keeps the error (and every `Result` carrying it) small.
        #[source]
        source: Box<oci_client::errors::OciDistributionError>,
    },
    #[error("fetching {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("fetching {url}: server answered {status}")]
    HttpStatus { url: String, status: u16 },
    #[error(
        "{what} has digest {actual}, expected {expected}: the bytes changed or were tampered with"
    )]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what} is {size} bytes, more than the {limit} byte limit")]
    TooLarge { what: String, size: u64, limit: u64 },
    #[error("oci reference {reference:?} is invalid: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("url {url:?} is not allowed: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    #[error("manifest of {reference} is not usable: {reason}")]
    Manifest { reference: String, reason: String },
    #[error(
        "{reference} has no WebAssembly layer (expected one layer of media type application/wasm)"
    )]
    NoWasmLayer { reference: String },
    #[error("pull secret: {0}")]
    Credentials(#[from] credentials::CredentialsError),
    #[error("configMap key holds no bytes")]
    Empty,
    /// The same failure, seen by every caller that shared one download.
    #[error(transparent)]
    Shared(std::sync::Arc<ArtifactError>),
}

impl ArtifactError {
    /// How the caller should react.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Registry { class, .. } => *class,
            Self::Http { source, .. } => {
                if source.is_builder() || source.is_redirect() || is_tls_rejection(source) {
                    ErrorClass::NeedsAction
                } else {
                    ErrorClass::Transient
                }
            }
            Self::HttpStatus { status, .. } => status_class(*status),
            Self::DigestMismatch { .. } => ErrorClass::Integrity,
            Self::Shared(inner) => inner.class(),
            Self::Unauthorized { .. }
            | Self::TooLarge { .. }
            | Self::InvalidReference { .. }
            | Self::InvalidUrl { .. }
            | Self::Manifest { .. }
            | Self::NoWasmLayer { .. }
            | Self::Credentials(_)
            | Self::Empty => ErrorClass::NeedsAction,
        }
    }

    /// Whether retrying later may succeed without anyone acting.
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }
}

fn refused_whom(user: Option<&str>) -> String {
    match user {
        None => "anonymous access (no pull secret holds credentials for it)".to_owned(),
        Some(user) => format!("the credentials of user {user:?} from the pull secret"),
    }
}

/// What to do about a refusal; the operator reads pull secrets only from the component's own
/// namespace, so that is where the Secret must be.
fn unauthorized_hint(registry: &str, user: Option<&str>) -> String {
    match user {
        None => format!(
            "Create a kubernetes.io/dockerconfigjson Secret with an entry for {registry} in the component's namespace and list it in spec.artifact.oci.pullSecrets"
        ),
        Some(_) => format!(
            "Fix the user name and password of the {registry} entry in the pull secret, or give that user pull access to the repository"
        ),
    }
}

/// Whether a TLS error (an untrusted or mismatched certificate) is behind `err`: retrying
/// will not help; someone must fix the certificate or the trusted roots.
pub(crate) fn is_tls_rejection(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        // rustls errors reach reqwest wrapped in io::Errors, whose source() skips the wrapped
        // error itself; descend through get_ref() instead.
        current = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

/// 5xx, 408 and 429 are worth retrying; other failures need someone to fix something.
pub(crate) fn status_class(status: u16) -> ErrorClass {
    match status {
        408 | 429 | 500..=599 => ErrorClass::Transient,
        _ => ErrorClass::NeedsAction,
    }
}

/// The `sha256:<hex>` digest of `bytes`.
pub fn digest_of(bytes: &[u8]) -> Digest {
    let hash: [u8; 32] = Sha256::digest(bytes).into();
    Digest::from_sha256(&hash)
}

/// Checks that `bytes` hash to `expected`.
pub fn check_digest(what: &str, bytes: &[u8], expected: &Digest) -> Result<(), ArtifactError> {
    let actual = digest_of(bytes);
    if &actual == expected {
        Ok(())
    } else {
        Err(ArtifactError::DigestMismatch {
            what: what.to_owned(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        })
    }
}

/// A component held in a ConfigMap key: its digest, checked against the optional expected
/// digest from the spec. The caller reads the ConfigMap; this only judges the bytes.
pub fn config_map_digest(bytes: &[u8], expected: Option<&Digest>) -> Result<Digest, ArtifactError> {
    if bytes.is_empty() {
        return Err(ArtifactError::Empty);
    }
    match expected {
        Some(expected) => check_digest("configMap key", bytes, expected).map(|()| expected.clone()),
        None => Ok(digest_of(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_known_bytes() {
        // sha256("abc") from FIPS 180-2.
        assert_eq!(
            digest_of(b"abc").as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn config_map_bytes() {
        let bytes = b"\0asm\x0d\0\x01\0";
        let digest = digest_of(bytes);
        assert_eq!(
            config_map_digest(bytes, None).unwrap(),
            digest,
            "digest of whatever is there"
        );
        assert_eq!(
            config_map_digest(bytes, Some(&digest)).unwrap(),
            digest,
            "matches the pin"
        );
        let other = digest_of(b"other");
        let err = config_map_digest(bytes, Some(&other)).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Integrity, "{err}");
        assert!(err.to_string().contains(other.as_str()), "{err}");
        assert_eq!(
            config_map_digest(b"", None).unwrap_err().class(),
            ErrorClass::NeedsAction
        );
    }

    #[test]
    fn status_classes() {
        for (status, class) in [
            (500, ErrorClass::Transient),
            (503, ErrorClass::Transient),
            (429, ErrorClass::Transient),
            (408, ErrorClass::Transient),
            (404, ErrorClass::NeedsAction),
            (401, ErrorClass::NeedsAction),
            (403, ErrorClass::NeedsAction),
        ] {
            let err = ArtifactError::HttpStatus {
                url: "https://x".into(),
                status,
            };
            assert_eq!(err.class(), class, "{status}");
        }
    }
}
