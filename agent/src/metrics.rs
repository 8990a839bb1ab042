//! The agent's Prometheus metrics: one registry, encoded as OpenMetrics text for `/metrics`.
//!
//! Handles are public fields; every metric type here is a cheap clone of an atomic, so hand
//! clones to whoever updates them. The audit counters live in [`AuditMetrics`], which the
//! audit pipeline (`audit::AuditConfig`) takes a clone of.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::audit::{QuotaKind, Reason};
use crate::grant::CapabilityKind;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label set `{kind="network"}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: CapabilityKind,
}

/// Label set `{quota="memory"}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    pub quota: QuotaKind,
}

/// Label set `{reason="Killed"}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: Reason,
}

impl EncodeLabelValue for CapabilityKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for QuotaKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Reason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Counters of the audit pipeline. Clones share the same series.
#[derive(Debug, Clone, Default)]
pub struct AuditMetrics {
    /// Denied capability checks, by kind (`airssys_capability_denials_total`).
    pub denials: Family<KindLabels, Counter>,
    /// Granted capability checks, by kind (`airssys_capability_grants_total`).
    pub grants: Family<KindLabels, Counter>,
    /// Quota breaches, by quota (`airssys_quota_breaches_total`).
    pub quota_breaches: Family<QuotaLabels, Counter>,
    /// Instances killed (`airssys_instance_kills_total`).
    pub kills: Counter,
    /// Audit events lost because the queue was full or closed (`airssys_audit_dropped_total`).
    pub dropped: Counter,
    /// Audit events written to the log, by reason (`airssys_audit_events_total`).
    pub written: Family<ReasonLabels, Counter>,
    /// Audit log write failures (`airssys_audit_write_errors_total`).
    pub write_errors: Counter,
    /// Occurrences not turned into Kubernetes Events because too many (component, reason)
    /// series were open at once (`airssys_audit_events_suppressed_total`).
    pub events_suppressed: Counter,
}

impl AuditMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "capability_denials",
            "Capability checks denied, by capability kind",
            self.denials.clone(),
        );
        registry.register(
            "capability_grants",
            "Capability checks granted, by capability kind",
            self.grants.clone(),
        );
        registry.register(
            "quota_breaches",
            "Instances that hit a quota, by quota",
            self.quota_breaches.clone(),
        );
        registry.register(
            "instance_kills",
            "Instances killed by the agent",
            self.kills.clone(),
        );
        registry.register(
            "audit_dropped",
            "Audit events dropped because the audit queue was full",
            self.dropped.clone(),
        );
        registry.register(
            "audit_events",
            "Audit events written to the audit log, by reason",
            self.written.clone(),
        );
        registry.register(
            "audit_write_errors",
            "Failed writes to the audit log",
            self.write_errors.clone(),
        );
        registry.register(
            "audit_events_suppressed",
            "Audit occurrences not published as Kubernetes Events (too many open series)",
            self.events_suppressed.clone(),
        );
    }
}

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
                quota: QuotaKind::Memory,
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
