//! The agent's Prometheus metrics: one registry, encoded as OpenMetrics text for `/metrics`
//! (served by [`crate::serve`]).
//!
//! Handles are public fields; every metric type here is a cheap clone of an atomic, so hand
//! clones to whoever updates them. The audit counters (capability denials and grants, quota
//! breaches, kills, the audit log's and the Kubernetes Events' own counters) are the audit
//! pipeline's ([`AuditMetrics`], defined with it); they are registered here. Only metrics
//! something updates are registered: a series that always reads 0 would mislead.

use prometheus_client::registry::Registry;

use crate::audit::AuditMetrics;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric the agent exports, under the `airssys_` prefix.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
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
        let audit = AuditMetrics::default();
        audit.register(&mut registry);
        Self { registry, audit }
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
    use crate::audit::{EventReason, EventReasonLabels, KindLabels, QuotaLabels};
    use crate::grant::CapabilityKind;
    use crate::limits::Quota;

    #[test]
    fn encode_exposes_every_metric_with_labels_and_values() {
        let m = Metrics::new();
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
        m.audit.events.dropped.inc_by(4);
        m.audit.events.folded.inc_by(5);
        m.audit.events.errors.inc();
        m.audit
            .events
            .published
            .get_or_create(&EventReasonLabels {
                reason: EventReason::CapabilityDenied,
            })
            .inc();
        let text = m.encode();
        for line in [
            "airssys_capability_denials_total{kind=\"network\"} 1",
            "airssys_events_dropped_total 4",
            "airssys_events_folded_total 5",
            "airssys_events_publish_errors_total 1",
            "airssys_events_published_total{reason=\"CapabilityDenied\"} 1",
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
