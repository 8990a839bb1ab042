//! The audit pipeline's Prometheus counters and their label sets. The agent's registry
//! (`crate::metrics::Metrics`) registers them; the pipeline takes a clone.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::event::{EventReason, Reason};
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

/// Label set `{reason="CapabilityDenied"}` of a Kubernetes Event.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventReasonLabels {
    pub reason: EventReason,
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

impl EncodeLabelValue for EventReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Counters of Kubernetes Event publishing. Clones share the same series.
#[derive(Debug, Clone, Default)]
pub struct EventMetrics {
    /// Event writes (creates and series updates) the API server accepted, by reason
    /// (`airssys_events_published_total`).
    pub published: Family<EventReasonLabels, Counter>,
    /// Occurrences published only as part of a count (a series update covering several, a
    /// note's "N more") because of the per-(component, reason) rate limit
    /// (`airssys_events_folded_total`).
    pub folded: Counter,
    /// Occurrences no Event counts: too many open series, the publisher queue full at
    /// shutdown, or the API server refusing the write after retries
    /// (`airssys_events_dropped_total`).
    pub dropped: Counter,
    /// Event writes that failed (`airssys_events_publish_errors_total`); retried.
    pub errors: Counter,
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
    /// Kubernetes Event publishing.
    pub events: EventMetrics,
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
            "events_published",
            "Kubernetes Event writes (creates and series updates) accepted, by reason",
            self.events.published.clone(),
        );
        registry.register(
            "events_folded",
            "Occurrences published only as part of an Event count (rate limit)",
            self.events.folded.clone(),
        );
        registry.register(
            "events_dropped",
            "Occurrences no Kubernetes Event counts (too many series, queue full at shutdown, API errors)",
            self.events.dropped.clone(),
        );
        registry.register(
            "events_publish_errors",
            "Kubernetes Event writes that failed",
            self.events.errors.clone(),
        );
    }
}
