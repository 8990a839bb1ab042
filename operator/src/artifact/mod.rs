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
//! - [`network`]: the root cause of a failed connection, in words, and what to do.
//!
//! Errors are classed so the controller can keep its promise: a network failure retries and
//! never changes an approval; only an integrity failure marks a component as failing
//! verification. Their messages end up in conditions and Events: one line each, the cause (not
//! the client library's "error sending request"), and what to do.

pub mod cosign;
pub mod credentials;
pub mod keys;
pub mod network;
pub mod resolve;
pub mod serve;
pub mod store;

use airssys_crds::Digest;
use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};
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
    #[error("registry {registry}: {}", explain_registry(.registry, .source))]
    Registry {
        registry: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
        class: ErrorClass,
    },
    /// The registry wants credentials, or refused the ones given (401/403).
    #[error(
        "registry {registry} refused {} ({}). {}",
        refused_whom(user.as_deref()),
        refusal(.source),
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
    #[error("fetching {url}: {}", network::explain(.source, &host_of(.url)))]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("fetching {url}: the server answered HTTP {status}{}", http_status_hint(*.status))]
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
    #[error(
        "oci reference {reference:?} is invalid: {reason}; fix spec.artifact.oci.reference (host/repository:tag or host/repository@sha256:...)"
    )]
    InvalidReference { reference: String, reason: String },
    #[error("url {url:?} is not allowed: {reason}; fix spec.artifact.https.url")]
    InvalidUrl { url: String, reason: &'static str },
    #[error(
        "manifest of {reference} is not usable: {reason}; push the component as an OCI artifact with one layer of media type application/wasm"
    )]
    Manifest { reference: String, reason: String },
    #[error(
        "{reference} has no WebAssembly layer (expected one layer of media type application/wasm); push the component as one, e.g. oras push {reference} component.wasm:application/wasm"
    )]
    NoWasmLayer { reference: String },
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialsError),
    #[error(
        "the ConfigMap key holds no bytes; put the component under that key, e.g. kubectl create configmap NAME --from-file=KEY=component.wasm"
    )]
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

/// `host[:port]` of a URL, for advice; the URL itself when it has no host.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() {
        url.to_owned()
    } else {
        host.to_owned()
    }
}

/// The most bytes of a server's own words quoted in a message.
const QUOTE_LIMIT: usize = 200;

/// A server's words on one line, bounded.
fn quote(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    airssys_crds::condition::bounded(line, QUOTE_LIMIT)
}

/// What to do after an HTTPS server answered `status` (empty when retrying is all).
fn http_status_hint(status: u16) -> &'static str {
    match status {
        404 | 410 => "; the URL names no file: fix spec.artifact.https.url",
        401 | 403 => {
            "; the server refuses access: HTTPS artifacts are fetched without credentials, so use a URL anyone may read, or an OCI registry with a pull secret"
        }
        _ => "",
    }
}

/// One line about a failed registry request: the cause and, where someone must act, what to
/// do (`oci-client`'s own messages are URL and envelope dumps, or a bare "error sending
/// request").
pub(crate) fn explain_registry(registry: &str, e: &OciDistributionError) -> String {
    match e {
        OciDistributionError::RequestError(r) => network::explain(r, registry),
        OciDistributionError::IoError(io) => network::explain(io, registry),
        OciDistributionError::ServerError { code, message, .. } => {
            server_answer(registry, *code, message)
        }
        OciDistributionError::RegistryError { envelope, .. } => envelope_answer(envelope),
        OciDistributionError::ImageManifestNotFoundError(what) => {
            format!("no such manifest ({}); {NOT_FOUND_HINT}", quote(what))
        }
        OciDistributionError::GenericError(Some(what)) => quote(what),
        OciDistributionError::GenericError(None) => {
            "the registry client failed without saying why".to_owned()
        }
        other => quote(&other.to_string()),
    }
}

const NOT_FOUND_HINT: &str =
    "push the component to that repository and tag, or fix spec.artifact.oci.reference";

fn server_answer(registry: &str, code: u16, message: &str) -> String {
    let said = if message.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", quote(message))
    };
    match code {
        404 => format!("not found (HTTP 404{said}); {NOT_FOUND_HINT}"),
        400 if message.contains("HTTP request to an HTTPS server") => format!(
            "{registry} speaks HTTPS, but the component asks for plain HTTP; remove insecure: true from spec.artifact.oci"
        ),
        429 => format!("rate-limited (HTTP 429{said})"),
        500..=599 => format!("server error (HTTP {code}{said})"),
        _ => format!("answered HTTP {code}{said}"),
    }
}

/// An OCI error envelope as `CODE (message)`, with what to do for the first code.
fn envelope_answer(envelope: &OciEnvelope) -> String {
    let errors: Vec<String> = envelope
        .errors
        .iter()
        .map(|e| {
            let code = serde_json::to_value(&e.code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "UNKNOWN".to_owned());
            if e.message.trim().is_empty() {
                code
            } else {
                format!("{code} ({})", quote(&e.message))
            }
        })
        .collect();
    let hint = match envelope.errors.first().map(|e| &e.code) {
        Some(
            OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound,
        ) => NOT_FOUND_HINT,
        Some(OciErrorCode::BlobUnknown | OciErrorCode::ManifestBlobUnknown) => {
            "the manifest names a blob the registry lacks: push the component again"
        }
        Some(OciErrorCode::NameInvalid | OciErrorCode::TagInvalid) => {
            "fix spec.artifact.oci.reference"
        }
        _ => "",
    };
    let answered = if errors.is_empty() {
        "answered with an empty error list".to_owned()
    } else {
        format!("answered {}", errors.join(", "))
    };
    if hint.is_empty() {
        answered
    } else {
        format!("{answered}; {hint}")
    }
}

/// How the registry refused, briefly (the status or error code; never the URL).
fn refusal(e: &OciDistributionError) -> String {
    match e {
        OciDistributionError::AuthenticationFailure(why) => {
            format!("token request failed: {}", quote(why))
        }
        OciDistributionError::UnauthorizedError { .. } => "HTTP 401".to_owned(),
        OciDistributionError::ServerError { code, .. } => format!("HTTP {code}"),
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .map(|e| {
                serde_json::to_value(&e.code)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "UNKNOWN".to_owned())
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => quote(&other.to_string()),
    }
}

fn refused_whom(user: Option<&str>) -> String {
    match user {
        None => "anonymous access".to_owned(),
        Some(user) => format!("the credentials of user {user:?} from the pull secret"),
    }
}

/// What to do about a refusal; the operator reads pull secrets only from the component's own
/// namespace, so that is where the Secret must be.
fn unauthorized_hint(registry: &str, user: Option<&str>) -> String {
    match user {
        None => format!(
            "No pull secret of the component holds credentials for it: create a kubernetes.io/dockerconfigjson Secret with an entry for {registry} in the component's namespace and list it in spec.artifact.oci.pullSecrets"
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

/// The bytes a ConfigMap holds under `key`: `binaryData` first, then `data` (empty when
/// neither has it; [`config_map_digest`] refuses empty bytes).
pub fn config_map_bytes(map: &k8s_openapi::api::core::v1::ConfigMap, key: &str) -> Vec<u8> {
    map.binary_data
        .as_ref()
        .and_then(|b| b.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            map.data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        })
        .unwrap_or_default()
}

/// Why the pull credentials of a component could not be read.
#[derive(Debug)]
pub enum PullSecretError {
    /// The named Secret could not be read from the component's namespace.
    Read { name: String, source: kube::Error },
    /// A Secret's content is not usable credentials.
    Invalid(ArtifactError),
}

/// The credentials for `registry` from the pull secrets `oci` names, read from `namespace`
/// only: a tenant never borrows another namespace's credentials. The component controller
/// (resolving) and the artifact server (fetching for agents) both read them this way.
pub async fn pull_credentials(
    client: &kube::Client,
    namespace: &str,
    oci: &airssys_crds::artifact::OciArtifact,
    registry: &str,
) -> Result<Option<RegistryCredentials>, PullSecretError> {
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), namespace);
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    for r in &oci.pull_secrets {
        let secret = api
            .get(&r.name)
            .await
            .map_err(|source| PullSecretError::Read {
                name: r.name.clone(),
                source,
            })?;
        if let Some(bytes) = secret
            .data
            .and_then(|mut d| d.remove(credentials::DOCKER_CONFIG_KEY))
        {
            secrets.push((r.name.clone(), bytes.0));
        }
    }
    let borrowed: Vec<(&str, &[u8])> = secrets
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    credentials::credentials_for(&borrowed, registry)
        .map_err(|e| PullSecretError::Invalid(ArtifactError::from(e)))
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

    #[test]
    fn messages_say_what_to_do() {
        let https = |status| {
            ArtifactError::HttpStatus {
                url: "https://downloads.example.com/x.wasm".into(),
                status,
            }
            .to_string()
        };
        // (rule, message, words it must hold)
        let cases = [
            (
                "a missing file names the field to fix",
                https(404),
                "fix spec.artifact.https.url",
            ),
            (
                "a refusal says no credentials are sent",
                https(403),
                "fetched without credentials",
            ),
            (
                "an invalid reference names the field and the form",
                ArtifactError::InvalidReference {
                    reference: "Bad Ref".into(),
                    reason: "invalid reference format".into(),
                }
                .to_string(),
                "fix spec.artifact.oci.reference",
            ),
            (
                "no wasm layer shows how to push one",
                ArtifactError::NoWasmLayer {
                    reference: "r.io/team/echo:v1".into(),
                }
                .to_string(),
                "oras push r.io/team/echo:v1 component.wasm:application/wasm",
            ),
            (
                "an empty ConfigMap key shows how to fill it",
                ArtifactError::Empty.to_string(),
                "kubectl create configmap",
            ),
            (
                "a broken pull secret names it and how to make one",
                ArtifactError::from(credentials::CredentialsError::Json {
                    secret: "pull".into(),
                    reason: "expected value at line 1 column 1".into(),
                })
                .to_string(),
                "pull secret pull is not a docker config (expected value at line 1 column 1); it must be a kubernetes.io/dockerconfigjson Secret",
            ),
        ];
        for (rule, msg, words) in cases {
            assert!(msg.contains(words), "{rule}: {msg}");
            assert!(!msg.contains('\n'), "{rule}: one line: {msg}");
        }
        assert_eq!(
            https(503),
            "fetching https://downloads.example.com/x.wasm: the server answered HTTP 503",
            "retrying is all there is to do (the controller says so)"
        );
        assert_eq!(host_of("https://h.io:8443/a?b"), "h.io:8443");
        assert_eq!(host_of(""), "");
    }
}
