//! Prometheus metrics of the controllers, and the operator's HTTP endpoint: `/metrics` for the
//! scraper, `/healthz` (the process answers) and `/readyz` (the controllers run, or with
//! leader election this replica serves and stands by) for the kubelet's probes: `airssys-probe`,
//! the endpoint the agent serves too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Error;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

type HistogramFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

/// Every metric the operator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    failures: Family<ControllerLabels, Counter>,
    duration: HistogramFamily,
    decisions: Family<ReasonLabels, Counter>,
    events: Family<ReasonLabels, Counter>,
    event_errors: Counter,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("airssys_operator");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<ControllerLabels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let decisions = Family::<ReasonLabels, Counter>::default();
        let events = Family::<ReasonLabels, Counter>::default();
        let event_errors = Counter::default();
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciliations that returned an error",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            duration.clone(),
        );
        registry.register(
            "decisions",
            "Trust decisions written, by Approved reason",
            decisions.clone(),
        );
        registry.register(
            "events",
            "Kubernetes Events published, by reason",
            events.clone(),
        );
        registry.register(
            "event_publish_failures",
            "Kubernetes Events the API server did not accept",
            event_errors.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            decisions,
            events,
            event_errors,
        }
    }
}

/// Measures one reconciliation; records its duration when dropped.
#[derive(Debug)]
pub struct ReconcileTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    fn labels(controller: &str) -> ControllerLabels {
        ControllerLabels {
            controller: controller.to_owned(),
        }
    }

    /// Counts a reconciliation and times it until the returned guard drops.
    pub fn reconcile(&self, controller: &str) -> ReconcileTimer {
        let labels = Self::labels(controller);
        self.reconciles.get_or_create(&labels).inc();
        ReconcileTimer {
            histogram: self.duration.get_or_create(&labels).clone(),
            start: Instant::now(),
        }
    }

    pub fn failure(&self, controller: &str) {
        self.failures.get_or_create(&Self::labels(controller)).inc();
    }

    pub fn decision(&self, reason: &str) {
        self.decisions
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn event(&self, reason: &str, published: bool) {
        self.events
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
        if !published {
            self.event_errors.inc();
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Whether the operator is ready: set while its controllers run (with leader election, also
/// while a standby waits), cleared when they stop (so a shutting-down operator leaves the
/// Service's endpoints before it exits).
pub use airssys_probe::Readiness;

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` until the task is dropped.
/// Returns the bound address (useful with port 0) and the serving future.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Readiness,
) -> Result<(SocketAddr, impl Future<Output = ()>), Error> {
    let probe = airssys_probe::Probe::new(
        move || metrics.render(),
        readiness,
        "the controllers are not running",
    );
    airssys_probe::serve(addr, probe)
        .await
        .map_err(|source| Error::Metrics {
            addr: addr.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_in_the_exposition() {
        let m = Metrics::default();
        drop(m.reconcile("component"));
        m.decision("PendingApproval");
        m.event("Denied", false);
        let text = m.render();
        assert!(
            text.contains("airssys_operator_reconciles_total{controller=\"component\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("airssys_operator_decisions_total{reason=\"PendingApproval\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("airssys_operator_event_publish_failures_total 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "airssys_operator_reconcile_duration_seconds_count{controller=\"component\"} 1"
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_operator_serves_its_metrics_and_readiness_over_http() {
        let metrics = Arc::new(Metrics::default());
        metrics.decision("Denied");
        let readiness = Readiness::default();
        let (addr, serving) = serve("127.0.0.1:0".parse().unwrap(), metrics, readiness.clone())
            .await
            .unwrap();
        let task = tokio::spawn(serving);
        let endpoint = addr.to_string();
        let get = |path| airssys_test_support::http_get(&endpoint, "localhost", path);

        let page = get("/metrics").await.unwrap();
        assert!(page.starts_with("200 "), "{page}");
        assert!(page.contains("reason=\"Denied\"} 1"), "{page}");
        assert!(page.ends_with("# EOF"), "{page}");
        // Not ready until the controllers run, and not ready again once they stop.
        assert_eq!(
            get("/readyz").await.unwrap(),
            "503 the controllers are not running"
        );
        readiness.set(true);
        assert_eq!(get("/readyz").await.unwrap(), "200 ok");
        readiness.set(false);
        assert!(get("/readyz").await.unwrap().starts_with("503 "));
        task.abort();
    }
}
