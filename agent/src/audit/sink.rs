//! The hot path: [`AuditSink`], the host functions' handle on the pipeline. Bumps one
//! pre-resolved counter and `try_send`s the event; never blocks, never allocates.

use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};

use prometheus_client::metrics::counter::Counter;

use super::event::{AuditEvent, AuditKind, ComponentIdentity, InstanceIdentity, Text};
use super::fold::{Admit, foldable};
use super::metrics::{AuditMetrics, KindLabels, QuotaLabels};
use crate::grant::CapabilityKind;
use crate::limits::Quota;

/// Messages to the writer thread.
pub(super) enum Command {
    Event(AuditEvent),
    /// This component revision started folding records: summarize its counts on ticks.
    Folding(Arc<ComponentIdentity>),
    Flush(SyncSender<()>),
    Shutdown,
}

/// Counters the hot path bumps, resolved out of their families once at start.
#[derive(Debug)]
pub(super) struct HotCounters {
    denials: [Counter; CapabilityKind::ALL.len()],
    grants: [Counter; CapabilityKind::ALL.len()],
    quota: [Counter; Quota::ALL.len()],
    kills: Counter,
    dropped: Counter,
    folded: Counter,
}

impl HotCounters {
    pub(super) fn resolve(m: &AuditMetrics) -> Self {
        let kind = |family: &prometheus_client::metrics::family::Family<KindLabels, Counter>| {
            CapabilityKind::ALL.map(|kind| family.get_or_create_owned(&KindLabels { kind }))
        };
        Self {
            denials: kind(&m.denials),
            grants: kind(&m.grants),
            quota: Quota::ALL
                .map(|quota| m.quota_breaches.get_or_create_owned(&QuotaLabels { quota })),
            kills: m.kills.clone(),
            dropped: m.dropped.clone(),
            folded: m.folded.clone(),
        }
    }
}

/// The host functions' handle on the pipeline. Cheap to clone; never blocks.
#[derive(Debug, Clone)]
pub struct AuditSink {
    pub(super) tx: SyncSender<Command>,
    pub(super) counters: Arc<HotCounters>,
}

impl AuditSink {
    /// Records an event: counts it, then queues it for the log and Events, unless its
    /// component has used its share of the pipeline (then it is folded into a count the
    /// writer summarizes, see [`super::fold`]) or the queue is full (then it is counted as
    /// dropped). Never blocks, never allocates.
    #[inline]
    pub fn record(&self, event: AuditEvent) {
        let c = &*self.counters;
        match event.kind {
            AuditKind::CapabilityGranted { kind } => {
                c.grants[kind as usize].inc();
                return;
            }
            AuditKind::CapabilityDenied { kind, .. } => {
                c.denials[kind as usize].inc();
            }
            AuditKind::QuotaExceeded { quota } => {
                c.quota[quota as usize].inc();
            }
            AuditKind::Killed { .. } => {
                c.kills.inc();
            }
            _ => {}
        }
        if let Some(reason) = foldable(event.kind.reason()) {
            let component = &event.instance.component;
            if let Admit::Folded { first } = component.fold.admit(reason, event.at) {
                c.folded.inc();
                if first {
                    // Tell the writer which component to summarize. If the queue is full the
                    // count waits in the fold until the component's next queued record.
                    let _ = self.tx.try_send(Command::Folding(Arc::clone(component)));
                }
                return;
            }
        }
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Command::Event(event))
        {
            c.dropped.inc();
        }
    }

    /// Records what happened to a component as a whole on this node (not to one instance):
    /// [`AuditKind::Stopped`], [`AuditKind::Revoked`], [`AuditKind::DevModeBypass`]. The
    /// record names instance 0. Node mode calls this; `Started` needs no call (every
    /// instance start records it).
    pub fn component_event(&self, component: &Arc<ComponentIdentity>, kind: AuditKind) {
        self.record(AuditEvent::now(&InstanceIdentity::of(component, 0), kind));
    }

    /// Counts a granted check (not logged per call).
    #[inline]
    pub fn count_grant(&self, kind: CapabilityKind) {
        self.counters.grants[kind as usize].inc();
    }

    /// Records a denied check of `kind` on `target` for `instance`. Host code records denials
    /// through `context::InstanceScope::denied`, the one path (it also logs the denial).
    #[inline]
    pub(crate) fn deny(
        &self,
        instance: &Arc<InstanceIdentity>,
        kind: CapabilityKind,
        target: &str,
    ) {
        self.record(AuditEvent::now(
            instance,
            AuditKind::CapabilityDenied {
                kind,
                target: Text::new(target),
            },
        ));
    }
}
