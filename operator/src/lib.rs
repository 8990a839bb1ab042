//! airssys-operator: verifies artifacts, decides trust, approves and places `WasmComponent`s.
//!
//! - [`artifact`]: resolve references to digests, fetch by digest, verify cosign signatures.
//! - [`trust`]: the pure trust decision (DESIGN §2).
//! - [`index`]: the in-memory `TrustSource` index the trust-source controller keeps.
//! - [`events`]: condition and Event reasons.
//! - [`controller`]: the `TrustSource` and `WasmComponent` controllers (reconcile, error policy,
//!   status by server-side apply, Events).
//! - [`placement`]: pure placement of approved components onto nodes with live agents.
//! - [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoint.
//!
//! The `kubectl wasm` plugin is its own crate (`kubectl-wasm/`), depending on the CRDs only.

pub mod artifact;
pub mod controller;
pub mod events;
pub mod index;
pub mod metrics;
pub mod placement;
pub mod trust;

use std::sync::{Arc, RwLock};

pub use artifact::{ArtifactError, ErrorClass, Resolver};
pub use events::{EventReason, Reason};
pub use index::{Applied, IndexedSource, SourceError, TrustIndex};
pub use trust::{ComponentFacts, TrustDecision, decide};

/// Everything that can fail in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("artifact of {component}: {source}")]
    Artifact {
        component: String,
        #[source]
        source: ArtifactError,
    },
    #[error("WasmComponent {component}: {source}")]
    Spec {
        component: String,
        #[source]
        source: airssys_crds::component::SpecError,
    },
    #[error("TrustSource {name}: {source}")]
    Source {
        name: String,
        #[source]
        source: SourceError,
    },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the trust index lock is poisoned (a thread panicked while updating it)")]
    IndexPoisoned,
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("metrics server on {addr}: {source}")]
    Metrics {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether a retry may succeed without anyone acting (network, API server hiccups).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Artifact { source, .. } => source.is_transient(),
            Self::Kube(_) => true,
            Self::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.is_transient(),
                kube::runtime::finalizer::Error::AddFinalizer(_)
                | kube::runtime::finalizer::Error::RemoveFinalizer(_) => true,
                _ => false,
            },
            Self::Spec { .. }
            | Self::Source { .. }
            | Self::IndexPoisoned
            | Self::Metrics { .. } => false,
        }
    }
}

/// Operator-wide settings from flags and the chart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Whether `DevMode` sources may approve anything (Helm value `devMode.enabled`).
    pub dev_mode: bool,
    /// Registries (`host` or `host:port`) that may be reached over plain HTTP when a component
    /// asks for `insecure: true`; for loopback registries in development and tests.
    pub insecure_registries: Vec<String>,
    /// How often an approved or pending component's reference is resolved again (a tag can
    /// move to new bytes).
    pub recheck: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            dev_mode: false,
            insecure_registries: Vec::new(),
            recheck: std::time::Duration::from_secs(300),
        }
    }
}

impl Config {
    /// Whether plain HTTP to `registry` (`host[:port]`) is allowed.
    pub fn allows_insecure(&self, registry: &str) -> bool {
        let host = registry
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(registry, |(host, _)| host);
        self.insecure_registries.iter().any(|allowed| {
            allowed.eq_ignore_ascii_case(registry) || allowed.eq_ignore_ascii_case(host)
        })
    }
}

/// Shared state of the controllers.
#[derive(Clone)]
pub struct Context {
    pub client: kube::Client,
    pub index: Arc<RwLock<TrustIndex>>,
    pub resolver: Resolver,
    pub config: Config,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // kube::Client has no Debug; the rest is what matters when logging a context.
        f.debug_struct("Context")
            .field("resolver", &self.resolver)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
