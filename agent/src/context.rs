//! The context a component revision runs in, and the scope of one instance of it: what every
//! host function reaches (grant, quotas, broker, storage, audit) and the one place an
//! instance records capability uses and quota breaches.

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use airssys_crds::artifact::Digest;

use crate::audit::{AuditEvent, AuditKind, AuditSink, ComponentIdentity, InstanceIdentity};
use crate::bindings::WitError;
use crate::broker::{Broker, Mailbox};
use crate::grant::{CapabilityKind, GrantTable};
use crate::id::ComponentId;
use crate::limits::{Quota, Quotas, RateLimiter};
use crate::storage::KvStore;

/// Everything an instance of one revision (digest + grant + quotas) of a component needs.
/// Shared by all its instances across restarts; replaced on update.
#[derive(Debug)]
pub struct ComponentContext {
    pub id: ComponentId,
    /// `namespace/name`, the component's key in storage and audit.
    pub component_key: String,
    pub digest: Digest,
    /// The same grant compiled: every capability check asks this table.
    pub grants: Arc<GrantTable>,
    pub quotas: Quotas,
    pub broker: Broker,
    pub storage: Arc<KvStore>,
    pub audit: AuditSink,
    /// This component's own mailbox (subscriptions deliver here).
    pub mailbox: Mailbox,
    /// Host directory holding the component's filesystem grants, one directory per grant
    /// named by its guest path (`host::filesystem::grant_dir_name`).
    pub fs_root: PathBuf,
    /// Environment variables the grant exposes.
    pub env: Vec<(String, String)>,
    /// Epoch tick of the engine (CPU budgets are counted in ticks).
    pub epoch_tick: Duration,
    /// The CPU budget per message in ticks (computed once, read before every call).
    pub cpu_ticks: u64,
    /// Instances of this revision started so far; the next start gets the next number.
    pub instance: AtomicU64,
    /// This revision's name in audit events (each instance adds its number).
    pub identity: Arc<ComponentIdentity>,
    /// Outgoing message rate, per component: shared by all its instances and kept across
    /// restarts (a crash does not refill the bucket).
    pub rate: StdMutex<RateLimiter>,
}

impl ComponentContext {
    /// Numbers a new instance (1 = first start) and names it for audit: called once per
    /// instance start, so the hot path only clones the identity's `Arc`.
    pub fn next_instance(self: &Arc<Self>) -> InstanceScope {
        let n = self.instance.fetch_add(1, Ordering::Relaxed) + 1;
        InstanceScope {
            identity: InstanceIdentity::of(&self.identity, n),
            ctx: self.clone(),
        }
    }
}

/// One instance of a component: the revision's shared context plus the instance's own audit
/// identity. Everything the instance records goes through it, so with several instances
/// each event names the instance it happened in.
#[derive(Debug, Clone)]
pub struct InstanceScope {
    pub ctx: Arc<ComponentContext>,
    pub identity: Arc<InstanceIdentity>,
}

impl Deref for InstanceScope {
    type Target = ComponentContext;

    fn deref(&self) -> &ComponentContext {
        &self.ctx
    }
}

impl InstanceScope {
    /// Agent-local number of this instance (1 = first start of its revision).
    pub fn number(&self) -> u64 {
        self.identity.instance
    }

    /// Records a capability denial (always audited, never blocks).
    pub fn denied(&self, kind: CapabilityKind, target: &str) {
        tracing::debug!(component = %self.ctx.id, instance = self.identity.instance, capability = kind.as_str(), target, "capability denied");
        self.ctx.audit.deny(&self.identity, kind, target);
    }

    /// Counts a granted capability use.
    pub fn granted(&self, kind: CapabilityKind) {
        self.ctx.audit.count_grant(kind);
    }

    /// The one message-size check, for payloads going out and coming in: refuses (and audits)
    /// a payload over the component's limit.
    pub fn check_message_size(&self, len: usize) -> Result<(), WitError> {
        let max = self.ctx.quotas.max_message_bytes as usize;
        if len > max {
            self.quota_exceeded(Quota::MessageSize);
            Err(WitError::InvalidInput(format!(
                "message of {len} bytes is over the {max}-byte limit"
            )))
        } else {
            Ok(())
        }
    }

    /// Records a quota breach.
    pub fn quota_exceeded(&self, quota: Quota) {
        self.record(AuditKind::QuotaExceeded { quota });
    }

    pub(crate) fn record(&self, kind: AuditKind) {
        self.ctx.audit.record(AuditEvent::now(&self.identity, kind));
    }
}
