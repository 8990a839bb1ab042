//! The audit pipeline's Prometheus counters and their label sets. The agent's registry
//! (`crate::metrics::Metrics`) registers them; the pipeline takes a clone.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::event::Reason;
use crate::grant::CapabilityKind;
use crate::limits::Quota;

/// Label set `{kind="network"}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: CapabilityKind,
}

/// Label set `{quota="memory"}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    pub quota: Quota,
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

impl EncodeLabelValue for Quota {
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
    /// Audit records folded into per-component counts by the fairness budget instead of
    /// being queued one by one (`airssys_audit_folded_total`); the log's `Folded` lines
    /// carry the same counts per component.
    pub folded: Counter,
    /// Audit events written to the log, by reason (`airssys_audit_events_total`).
    pub written: Family<ReasonLabels, Counter>,
    /// Audit log write failures (`airssys_audit_write_errors_total`).
    pub write_errors: Counter,
    /// Occurrences not turned into Kubernetes Events because too many (component, reason)
    /// series were open at once (`airssys_audit_events_suppressed_total`).
    pub events_suppressed: Counter,
}

impl AuditMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
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
            "audit_folded",
            "Audit records folded into per-component counts (a component over its share)",
            self.folded.clone(),
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
