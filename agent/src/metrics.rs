//! The agent's Prometheus metrics: one registry, encoded as OpenMetrics text for `/metrics`.
//!
//! Handles are public fields; every metric type here is a cheap clone of an atomic, so hand
//! clones to whoever updates them. The audit counters are the audit pipeline's own
//! ([`AuditMetrics`], defined with it); they are registered here with the rest.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::audit::AuditMetrics;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric the agent exports, under the `airssys_` prefix.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Instances currently running on this node.
    pub instances_running: Gauge,
    /// Instance restarts by the supervisor.
    pub restarts: Counter,
    /// Messages delivered to and handled by guests.
    pub messages_handled: Counter,
    /// Time from dequeue to the end of `handle-message`, in seconds.
    pub message_latency: Histogram,
    /// The audit pipeline's counters.
    pub audit: AuditMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("airssys");
        let instances_running = Gauge::default();
        let restarts = Counter::default();
        let messages_handled = Counter::default();
        // 100 µs .. ~3.3 s: a message handler outside that range is either trivial or killed.
        let message_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let audit = AuditMetrics::default();
        registry.register(
            "instances_running",
            "Component instances running on this node",
            instances_running.clone(),
        );
        registry.register("restarts", "Instance restarts", restarts.clone());
        registry.register(
            "messages_handled",
            "Messages handled by guests",
            messages_handled.clone(),
        );
        registry.register(
            "message_duration_seconds",
            "Time to handle one message",
            message_latency.clone(),
        );
        audit.register(&mut registry);
        Self {
            registry,
            instances_running,
            restarts,
            messages_handled,
            message_latency,
            audit,
        }
    }

    /// The registry, to register further metrics at startup.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// OpenMetrics text for a `/metrics` response (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Writing to a String cannot fail; a metric that cannot encode is a bug.
            tracing::error!(%error, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::audit::{KindLabels, QuotaLabels};
    use crate::grant::CapabilityKind;
    use crate::limits::Quota;

    #[test]
    fn encode_exposes_every_metric_with_labels_and_values() {
        let m = Metrics::new();
        m.instances_running.inc();
        m.instances_running.inc();
        m.restarts.inc();
        m.messages_handled.inc_by(5);
        m.message_latency.observe(0.002);
        m.audit
            .denials
            .get_or_create(&KindLabels {
                kind: CapabilityKind::Network,
            })
            .inc();
        m.audit
            .quota_breaches
            .get_or_create(&QuotaLabels {
                quota: Quota::Memory,
            })
            .inc();
        m.audit.dropped.inc_by(3);
        let text = m.encode();
        for line in [
            "airssys_instances_running 2",
            "airssys_restarts_total 1",
            "airssys_messages_handled_total 5",
            "airssys_message_duration_seconds_count 1",
            "airssys_capability_denials_total{kind=\"network\"} 1",
            "airssys_quota_breaches_total{quota=\"memory\"} 1",
            "airssys_audit_dropped_total 3",
            "airssys_instance_kills_total 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn audit_metrics_clones_share_series() {
        let m = Metrics::new();
        let clone = m.audit.clone();
        clone.kills.inc();
        assert_eq!(m.audit.kills.get(), 1);
        assert!(m.encode().contains("airssys_instance_kills_total 1"));
    }
}
