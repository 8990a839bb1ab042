//! The audit pipeline: a bounded, non-blocking queue from host functions to one writer thread
//! that feeds (a) a JSON-lines audit log on the node, (b) Prometheus counters and (c) an
//! [`EventSink`] through an [`EventAggregator`] that folds repeats into rate-limited Event
//! series per (component, reason), and (d) in node mode, the [`EventPublisher`] task that
//! writes those as `events.k8s.io/v1` Events on the `WasmComponent`.
//!
//! Hot path ([`AuditSink::record`]): bump one pre-resolved counter, `try_send` a small
//! record into a bounded `std::sync::mpsc::sync_channel`. The writer polls the queue (backing
//! off to 20 ms when idle) instead of parking in it, so a sender never pays for a wake-up. No locks of ours, no allocation
//! (the component is an `Arc` made once per instance; texts are fixed inline buffers). A full
//! queue never blocks the guest: the event is counted in `airssys_audit_dropped_total` and the
//! writer thread logs the drops periodically through `tracing`. Counters are bumped before the
//! queue, so metrics stay exact even when the log loses events.
//!
//! Granted checks are counted ([`AuditSink::count_grant`]), not logged one by one.
//!
//! The log file is rotated by size on the writer thread ([`Rotation`]): `audit.jsonl` becomes
//! `audit.jsonl.1`, older files shift up to `.N-1` and the oldest is deleted. Rotation happens
//! between whole lines, so a record is never split across files, and it never touches the
//! hot path.

mod aggregate;
mod event;
mod fold;
mod log;
mod metrics;
mod publish;
mod sink;
mod writer;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

pub use aggregate::{
    AggregatedEvent, EventAggregator, EventPolicy, EventSink, EventStats, EventSubject, Occurrence,
};
pub use event::{
    AuditEvent, AuditKind, ComponentIdentity, EventReason, InstanceIdentity, ObjectRefs, Reason,
    TEXT_CAPACITY, Text,
};
pub use fold::{FOLD_VERBATIM, FOLD_WINDOW, FOLDABLE, FoldState};
pub use log::{Rotation, rotated};
pub use metrics::{
    AuditMetrics, EventMetrics, EventReasonLabels, KindLabels, QuotaLabels, ReasonLabels,
};
pub use publish::{EventPublisher, EventQueue, PublisherConfig};
pub use sink::AuditSink;
pub use writer::{AuditConfig, AuditError, Auditor, AuditorHandle};
