//! Network side of artifacts: OCI registries (through `oci-client`) and HTTPS URLs.
//!
//! Everything fetched is re-hashed here, whatever the server or the client library claims:
//! the manifest against the digest it is named by, the wasm layer against its descriptor, an
//! HTTPS body against the digest the spec requires.
//!
//! - [`oci`]: registries: resolving tags, manifests, signatures, the component layer (one
//!   client per set of credentials, shared layer downloads).
//! - [`https`]: components fetched from an HTTPS URL with a required digest.
//! - [`retry`]: the backoff policy every network call runs under.

mod https;
mod oci;
mod retry;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oci_client::Client;

pub use https::check_https;
use oci::{ClientKey, LayerCheck, LayerCheckKey};
pub use oci::{ResolvedOci, WASM_MEDIA_TYPES, component_layer};
pub use retry::{RetryPolicy, retry};

use super::ArtifactError;

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
}
