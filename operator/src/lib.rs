//! airssys-operator: verifies artifacts, decides trust, approves and places `WasmComponent`s.
//!
//! - [`artifact`]: resolve references to digests, fetch by digest, verify cosign signatures.
//! - [`source`]: the pure model of an accepted `TrustSource` (parsed, validated).
//! - [`trust`]: the pure trust decision (DESIGN §2).
//! - [`index`]: the in-memory `TrustSource` index the trust-source controller keeps.
//! - [`events`]: condition and Event reasons.
//! - [`controller`]: the `TrustSource` and `WasmComponent` controllers (reconcile, error policy,
//!   status by server-side apply, Events).
//! - [`approval`]: pure: whether a component may be placed now, and with what.
//! - [`placement`]: pure placement of approved components onto nodes with live agents.
//! - [`summary`]: pure: a component's Placements summed into its status.
//! - [`leader`]: leader election among operator replicas (one acts, the others stand by).
//! - [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoint.
//!
//! The `kubectl wasm` plugin is its own crate (`kubectl-wasm/`), depending on the CRDs only.

pub mod approval;
pub mod artifact;
pub mod controller;
pub mod events;
pub mod http;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod placement;
pub mod source;
pub mod summary;
pub mod trust;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

pub use artifact::{ArtifactError, ErrorClass, Resolver};
pub use events::{EventReason, Reason};
pub use index::{Applied, TrustIndex};
pub use source::{IndexedSource, SourceError};
pub use trust::{ComponentFacts, Policy, TrustDecision, decide};

/// Everything that can fail in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {}", kube_message(.0))]
    Kube(#[from] kube::Error),
    #[error("the trust index lock is poisoned (a thread panicked while updating it)")]
    IndexPoisoned,
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("leadership lost: {0}; stopping so nothing acts twice")]
    LeadershipLost(String),
    #[error("metrics server on {addr}: {source}")]
    Metrics {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// A Kubernetes client error on one line: an API status as its code, reason and message
/// (kube's own Display appends a debug dump of the whole status).
pub fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => {
            let reason = if s.reason.is_empty() {
                String::new()
            } else {
                format!(" {}", s.reason)
            };
            format!("the API server answered {}{reason}: {}", s.code, s.message)
        }
        other => other.to_string(),
    }
}

impl Error {
    /// Whether a write failed only because the object changed after the copy it was based on
    /// was cached: the finalizer patch's `test` of the finalizer list (422) or an update's
    /// resourceVersion (409). The change that made the copy stale is on its way to the cache
    /// and starts the next reconcile anyway, so this is no failure to back off from.
    pub fn is_stale_write(&self) -> bool {
        use kube::runtime::finalizer::Error as Finalizer;
        let stale =
            |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 422);
        match self {
            Self::Kube(e) => matches!(e, kube::Error::Api(s) if s.code == 409),
            Self::Finalizer(e) => match e.as_ref() {
                Finalizer::AddFinalizer(e) | Finalizer::RemoveFinalizer(e) => stale(e),
                Finalizer::ApplyFailed(inner) | Finalizer::CleanupFailed(inner) => {
                    inner.is_stale_write()
                }
                _ => false,
            },
            Self::IndexPoisoned | Self::LeadershipLost(_) | Self::Metrics { .. } => false,
        }
    }

    /// Whether a retry may succeed without anyone acting (network, API server hiccups).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Kube(_) => true,
            Self::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.is_transient(),
                kube::runtime::finalizer::Error::AddFinalizer(_)
                | kube::runtime::finalizer::Error::RemoveFinalizer(_) => true,
                _ => false,
            },
            Self::IndexPoisoned | Self::LeadershipLost(_) | Self::Metrics { .. } => false,
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
    /// Deny OCI artifacts from registries no `Trust` or `DevMode` source names
    /// (`--require-listed-registry`): the only wall against another DNS name of a denied
    /// registry, which no spelling rule can see.
    pub require_listed_registry: bool,
    /// The product's namespace (`--namespace`): where agents hold their Leases and the
    /// operators their leader election Lease.
    pub namespace: String,
    /// The ports HTTP components' agents listen on (`--http-port-range`), one per component.
    pub http_ports: std::ops::RangeInclusive<u16>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            dev_mode: false,
            insecure_registries: Vec::new(),
            recheck: std::time::Duration::from_secs(300),
            require_listed_registry: false,
            namespace: airssys_crds::agent::DEFAULT_NAMESPACE.to_owned(),
            http_ports: http::DEFAULT_PORTS,
        }
    }
}

impl Config {
    /// Whether plain HTTP to `registry` (`host[:port]`) is allowed: the registry, or its host
    /// with any port, is listed (both compared in canonical spelling).
    pub fn allows_insecure(&self, registry: &str) -> bool {
        use airssys_crds::trust_source::canonical_registry;
        let registry = canonical_registry(registry);
        let host = registry
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(registry.as_str(), |(host, _)| host);
        self.insecure_registries.iter().any(|allowed| {
            let allowed = canonical_registry(allowed);
            allowed == registry || allowed == host
        })
    }

    /// The switches the trust decision depends on.
    pub fn policy(&self) -> Policy {
        Policy {
            dev_mode: self.dev_mode,
            require_listed_registry: self.require_listed_registry,
        }
    }
}

/// What the controllers share: the client, the trust index, the resolver, the settings, the
/// Event publisher and metrics, the re-queue channels to the component and trust-source
/// controllers, the reflector stores, and the per-object failure counts for backoff.
#[derive(Clone)]
pub struct Context {
    pub client: kube::Client,
    pub index: Arc<RwLock<TrustIndex>>,
    pub resolver: Resolver,
    pub config: Config,
    pub events: Arc<controller::EventPublisher>,
    pub metrics: Arc<metrics::Metrics>,
    /// Components to evaluate again (a source they depend on changed).
    pub requeue: tokio::sync::mpsc::UnboundedSender<
        kube::runtime::reflector::ObjectRef<airssys_crds::WasmComponent>,
    >,
    /// Sources to count again (a component's decision changed which sources cover it).
    pub source_requeue: tokio::sync::mpsc::UnboundedSender<
        kube::runtime::reflector::ObjectRef<airssys_crds::TrustSource>,
    >,
    pub stores: controller::Stores,
    /// What the placement controller last planned per component, ahead of the watch.
    pub(crate) ledger: Arc<Mutex<controller::placement::Ledger>>,
    /// The last status each controller wrote per component, ahead of the watch.
    pub(crate) written: Arc<controller::written::Written>,
    /// Whether the Placement, Node and Lease stores have had their first list.
    pub(crate) view_ready: Arc<std::sync::atomic::AtomicBool>,
    /// Consecutive failures per object, for the backoff.
    failures: Arc<Mutex<HashMap<String, u32>>>,
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

#[cfg(test)]
mod tests {
    use kube::runtime::finalizer::Error as Finalizer;

    use super::Error;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..kube::core::Status::default()
        }))
    }

    #[test]
    fn stale_writes_are_told_apart_from_failures() {
        let finalizer = |e: Finalizer<Error>| Error::Finalizer(Box::new(e));
        let rows: Vec<(&str, Error, bool)> = vec![
            (
                "finalizer add whose test of the list failed",
                finalizer(Finalizer::AddFinalizer(api(422))),
                true,
            ),
            (
                "finalizer add refused for a conflict",
                finalizer(Finalizer::AddFinalizer(api(409))),
                true,
            ),
            (
                "finalizer add forbidden",
                finalizer(Finalizer::AddFinalizer(api(403))),
                false,
            ),
            ("an update's conflict", Error::Kube(api(409)), true),
            ("an invalid object", Error::Kube(api(422)), false),
            ("server error", Error::Kube(api(500)), false),
            (
                "a conflict inside the reconcile",
                finalizer(Finalizer::ApplyFailed(Error::Kube(api(409)))),
                true,
            ),
            ("poisoned index", Error::IndexPoisoned, false),
        ];
        for (rule, error, stale) in rows {
            assert_eq!(error.is_stale_write(), stale, "{rule}");
        }
    }
}
