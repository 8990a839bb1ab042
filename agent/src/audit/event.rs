//! The audit event model: who (component revision and instance), what ([`AuditKind`]) and
//! when, small and heap-free so recording one costs no allocation.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use super::fold::FoldState;
use crate::grant::CapabilityKind;
use crate::id::ComponentId;
use crate::limits::Quota;

/// Bytes kept of a free-text detail (capability target, trap message, reason).
pub const TEXT_CAPACITY: usize = 96;

/// A short text stored inline (no heap), cut at a char boundary when longer than
/// [`TEXT_CAPACITY`]; [`Text::truncated`] says so.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Text {
    len: u8,
    truncated: bool,
    buf: [u8; TEXT_CAPACITY],
}

impl Text {
    /// Copies `s`, cut to at most [`TEXT_CAPACITY`] bytes on a char boundary.
    #[inline]
    pub fn new(s: &str) -> Self {
        let mut end = s.len().min(TEXT_CAPACITY);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut buf = [0u8; TEXT_CAPACITY];
        buf[..end].copy_from_slice(&s.as_bytes()[..end]);
        Self {
            // end <= TEXT_CAPACITY (96) fits in u8.
            len: end as u8,
            truncated: end < s.len(),
            buf,
        }
    }

    /// The kept text.
    pub fn as_str(&self) -> &str {
        // Always valid: built from a &str cut on a char boundary.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }

    /// Whether the original text was longer than what is kept.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())?;
        if self.truncated {
            f.write_str("…")?;
        }
        Ok(())
    }
}

/// The CamelCase reason of an audit event: the `kind` field of a log line and the `reason`
/// of the Kubernetes Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    CapabilityDenied,
    CapabilityGranted,
    QuotaExceeded,
    Killed,
    Trapped,
    Started,
    Restarted,
    CrashLoop,
    MessageRejected,
    /// A summary of records folded by the per-component fairness budget.
    Folded,
    /// A component's instances were stopped on this node (by the node mode).
    Stopped,
    /// A component's instances were stopped because the operator deleted its Placement
    /// (approval revoked, component deleted or moved).
    Revoked,
    /// A component runs in dev mode: its trust was not verified.
    DevModeBypass,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CapabilityDenied => "CapabilityDenied",
            Self::CapabilityGranted => "CapabilityGranted",
            Self::QuotaExceeded => "QuotaExceeded",
            Self::Killed => "Killed",
            Self::Trapped => "Trapped",
            Self::Started => "Started",
            Self::Restarted => "Restarted",
            Self::CrashLoop => "CrashLoop",
            Self::MessageRejected => "MessageRejected",
            Self::Folded => "Folded",
            Self::Stopped => "Stopped",
            Self::Revoked => "Revoked",
            Self::DevModeBypass => "DevModeBypass",
        }
    }

    /// Whether the Kubernetes Event is a `Warning` (else `Normal`).
    pub fn is_warning(self) -> bool {
        !matches!(
            self,
            Self::Started | Self::Restarted | Self::CapabilityGranted | Self::Stopped
        )
    }

    /// The reason of the Kubernetes Event this record counts in, `None` for records that
    /// are in the audit log only: a grant (counted, never an Event), a trap or a restart
    /// (the `Killed` and `Started` Events that always come with them say it), a rejected
    /// message. `Folded` summaries join the series of the reason they fold
    /// ([`AuditKind::event_reason`]).
    pub fn event_reason(self) -> Option<EventReason> {
        match self {
            Self::Started => Some(EventReason::Started),
            Self::Stopped => Some(EventReason::Stopped),
            Self::CapabilityDenied => Some(EventReason::CapabilityDenied),
            Self::QuotaExceeded => Some(EventReason::QuotaExceeded),
            Self::Killed => Some(EventReason::Killed),
            Self::CrashLoop => Some(EventReason::CrashLoop),
            Self::DevModeBypass => Some(EventReason::DevModeBypass),
            Self::Revoked => Some(EventReason::Revoked),
            Self::CapabilityGranted
            | Self::Trapped
            | Self::Restarted
            | Self::MessageRejected
            | Self::Folded => None,
        }
    }
}

/// The fixed reasons of the agent's Kubernetes Events (`events.k8s.io/v1`) about a
/// `WasmComponent`: what auditors filter on (`--field-selector reason=CapabilityDenied`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventReason {
    Started,
    Stopped,
    CapabilityDenied,
    QuotaExceeded,
    Killed,
    CrashLoop,
    DevModeBypass,
    Revoked,
}

impl EventReason {
    pub const ALL: [Self; 8] = [
        Self::Started,
        Self::Stopped,
        Self::CapabilityDenied,
        Self::QuotaExceeded,
        Self::Killed,
        Self::CrashLoop,
        Self::DevModeBypass,
        Self::Revoked,
    ];

    /// The wire string (CamelCase).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "Started",
            Self::Stopped => "Stopped",
            Self::CapabilityDenied => "CapabilityDenied",
            Self::QuotaExceeded => "QuotaExceeded",
            Self::Killed => "Killed",
            Self::CrashLoop => "CrashLoop",
            Self::DevModeBypass => "DevModeBypass",
            Self::Revoked => "Revoked",
        }
    }

    /// `Warning` Events need a look; `Normal` ones are routine.
    pub fn is_warning(self) -> bool {
        !matches!(self, Self::Started | Self::Stopped)
    }

    /// The Event's `action`: what the agent did, one fixed verb per reason.
    pub fn action(self) -> &'static str {
        match self {
            Self::Started | Self::DevModeBypass => "Start",
            Self::Stopped | Self::Revoked => "Stop",
            Self::CapabilityDenied => "CheckCapability",
            Self::QuotaExceeded => "EnforceQuota",
            Self::Killed => "Kill",
            Self::CrashLoop => "Restart",
        }
    }
}

impl fmt::Display for EventReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    /// A capability check failed; `target` is what the guest asked for (path, `host:port`,
    /// bucket, topic, component, env key).
    CapabilityDenied {
        kind: CapabilityKind,
        target: Text,
    },
    /// A capability check passed. Only counted; [`AuditSink::count_grant`] is cheaper.
    CapabilityGranted {
        kind: CapabilityKind,
    },
    QuotaExceeded {
        quota: Quota,
    },
    Killed {
        reason: Text,
    },
    Trapped {
        message: Text,
    },
    Started,
    Restarted,
    CrashLoop,
    MessageRejected {
        reason: Text,
    },
    /// `count` more records of reason `of` from this component were folded (not written one
    /// by one) since the last summary; see [`super::fold`].
    Folded {
        of: Reason,
        count: u64,
    },
    /// The component's instances on this node were stopped.
    Stopped,
    /// The component's instances were stopped because the operator deleted its Placement.
    Revoked,
    /// The component runs in dev mode, without verified trust.
    DevModeBypass,
}

impl AuditKind {
    pub fn reason(&self) -> Reason {
        match self {
            Self::CapabilityDenied { .. } => Reason::CapabilityDenied,
            Self::CapabilityGranted { .. } => Reason::CapabilityGranted,
            Self::QuotaExceeded { .. } => Reason::QuotaExceeded,
            Self::Killed { .. } => Reason::Killed,
            Self::Trapped { .. } => Reason::Trapped,
            Self::Started => Reason::Started,
            Self::Restarted => Reason::Restarted,
            Self::CrashLoop => Reason::CrashLoop,
            Self::MessageRejected { .. } => Reason::MessageRejected,
            Self::Folded { .. } => Reason::Folded,
            Self::Stopped => Reason::Stopped,
            Self::Revoked => Reason::Revoked,
            Self::DevModeBypass => Reason::DevModeBypass,
        }
    }

    /// The Kubernetes Event reason this record counts in: a `Folded` summary counts in the
    /// series of the records it folds.
    pub fn event_reason(&self) -> Option<EventReason> {
        match self {
            Self::Folded { of, .. } => of.event_reason(),
            other => other.reason().event_reason(),
        }
    }

    /// The `detail` object of a log line.
    pub(super) fn detail(&self) -> serde_json::Value {
        use serde_json::json;
        let text = |t: &Text| json!(t.as_str());
        match self {
            Self::CapabilityDenied { kind, target } => json!({
                "capability": kind.as_str(),
                "target": text(target),
                "truncated": target.truncated(),
            }),
            Self::CapabilityGranted { kind } => json!({ "capability": kind.as_str() }),
            Self::QuotaExceeded { quota } => json!({ "quota": quota.as_str() }),
            Self::Killed { reason } | Self::MessageRejected { reason } => {
                json!({ "reason": text(reason), "truncated": reason.truncated() })
            }
            Self::Trapped { message } => {
                json!({ "message": text(message), "truncated": message.truncated() })
            }
            Self::Folded { of, count } => json!({
                "of": of.as_str(),
                "count": count,
                "windowSeconds": super::fold::FOLD_WINDOW.as_secs(),
            }),
            Self::Started
            | Self::Restarted
            | Self::CrashLoop
            | Self::Stopped
            | Self::Revoked
            | Self::DevModeBypass => json!({}),
        }
    }

    /// One human sentence for a Kubernetes Event note.
    pub fn note(&self) -> String {
        match self {
            Self::CapabilityDenied { kind, target } => {
                format!("denied {} access to {target}: not granted", kind.as_str())
            }
            Self::CapabilityGranted { kind } => format!("granted {} access", kind.as_str()),
            Self::QuotaExceeded { quota } => format!("exceeded its {} quota", quota.as_str()),
            Self::Killed { reason } => format!("instance killed: {reason}"),
            Self::Trapped { message } => format!("instance trapped: {message}"),
            Self::Started => "instance started".to_owned(),
            Self::Restarted => "instance restarted by its supervisor".to_owned(),
            Self::CrashLoop => "instance keeps crashing; restarts are backing off".to_owned(),
            Self::MessageRejected { reason } => format!("message rejected: {reason}"),
            Self::Folded { of, count } => {
                format!("{count} more {} records like the last one", of.as_str())
            }
            Self::Stopped => "instances stopped on this node".to_owned(),
            Self::Revoked => {
                "instances stopped: the operator deleted the Placement (approval revoked, component deleted or moved)"
                    .to_owned()
            }
            Self::DevModeBypass => {
                "running in dev mode: the artifact's trust was not verified".to_owned()
            }
        }
    }
}

/// The Kubernetes objects an Event about a component names: the `WasmComponent` it is
/// about (`regarding`; namespace and name are the component's id) and the `Placement` that put
/// it on this node (`related`, same namespace). Node mode fills them in; a component without
/// them (manifest mode) gets no Kubernetes Events, only the log and the counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectRefs {
    /// `metadata.uid` of the `WasmComponent`.
    pub component_uid: String,
    /// Name of the `Placement`.
    pub placement: String,
    /// `metadata.uid` of the `Placement`, when known.
    pub placement_uid: Option<String>,
}

/// The component revision events are about; built once per revision and shared by all its
/// instances, so starting an instance allocates only its [`InstanceIdentity`].
#[derive(Debug)]
pub struct ComponentIdentity {
    pub id: ComponentId,
    /// `namespace/name`, the storage and audit key of the component.
    pub key: String,
    /// Artifact digest (`sha256:…`).
    pub digest: String,
    /// The Kubernetes objects its Events name; `None`: no Events.
    pub k8s: Option<ObjectRefs>,
    /// The revision's share of the audit pipeline (not part of its identity).
    pub(crate) fold: FoldState,
}

impl PartialEq for ComponentIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.digest == other.digest
    }
}

impl Eq for ComponentIdentity {}

impl ComponentIdentity {
    pub fn new(namespace: &str, name: &str, digest: &str) -> Arc<Self> {
        Self::of(&ComponentId::new(namespace, name), digest)
    }

    /// The revision `digest` of the component `id`, without Kubernetes objects.
    pub fn of(id: &ComponentId, digest: &str) -> Arc<Self> {
        Self::with_refs(id, digest, None)
    }

    /// The revision `digest` of the component `id`, whose Events name `k8s`.
    pub fn with_refs(id: &ComponentId, digest: &str, k8s: Option<ObjectRefs>) -> Arc<Self> {
        Arc::new(Self {
            id: id.clone(),
            key: id.to_string(),
            digest: digest.to_owned(),
            k8s,
            fold: FoldState::default(),
        })
    }
}

/// Who an event is about; built once per instance and shared by its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceIdentity {
    pub component: Arc<ComponentIdentity>,
    /// Agent-local instance number.
    pub instance: u64,
}

impl InstanceIdentity {
    /// Instance `instance` of `component`.
    pub fn of(component: &Arc<ComponentIdentity>, instance: u64) -> Arc<Self> {
        Arc::new(Self {
            component: Arc::clone(component),
            instance,
        })
    }

    /// Instance `instance` of a revision named here (tests, benches, one-off events).
    pub fn new(namespace: &str, name: &str, instance: u64, digest: &str) -> Arc<Self> {
        Self::of(&ComponentIdentity::new(namespace, name, digest), instance)
    }
}

/// One audit record: small, no heap of its own.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub at: SystemTime,
    pub instance: Arc<InstanceIdentity>,
    pub kind: AuditKind,
}

impl AuditEvent {
    /// An event happening now.
    #[inline]
    pub fn now(instance: &Arc<InstanceIdentity>, kind: AuditKind) -> Self {
        Self {
            at: SystemTime::now(),
            instance: Arc::clone(instance),
            kind,
        }
    }
}
