//! Event reasons: the fixed CamelCase vocabulary of the Events the operator publishes.
//!
//! Auditors filter on these strings (`kubectl get events --field-selector reason=...`), so they
//! are constants from one enum, never formatted ad hoc. An Event about a condition transition
//! carries the condition's own reason ([`Reason`], from crds): one word per transition, whether
//! read from the status or from the Events. Only what has no condition of its own
//! (a revocation, an ignored signature) has an Event-only reason. This module holds no I/O.

use std::fmt;

pub use airssys_crds::reason::Reason;

/// Whether an Event is routine or needs a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// Reasons on Kubernetes Events about components and sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventReason {
    /// A condition took this reason (same word as the condition's).
    Condition(Reason),
    /// An approval stopped holding (source changed or deleted, digest or request changed).
    ApprovalRevoked,
    /// Signatures stored for the artifact do not verify (garbage, tampered, for another
    /// artifact); they are ignored, as cosign ignores them.
    SignatureUnverifiable,
}

impl EventReason {
    /// The Event for a condition taking `reason`; `None` for routine states that need no
    /// Event of their own.
    pub fn for_condition(reason: Reason) -> Option<Self> {
        match reason {
            // Routine, or reported per node by the agents' own Events (Started, CrashLoop).
            Reason::ArtifactVerified
            | Reason::SourceAccepted
            | Reason::InstancesReady
            | Reason::InstancesStarting
            | Reason::Healthy
            | Reason::FetchFailed
            | Reason::CompileFailed
            | Reason::CrashLoop => None,
            Reason::TrustSourceMatched
            | Reason::ManuallyApproved
            | Reason::PendingApproval
            | Reason::Denied
            | Reason::RegistryNotListed
            | Reason::DevModeBypass
            | Reason::RequestExceedsCeiling
            | Reason::VerificationFailed
            | Reason::ArtifactUnreachable
            | Reason::ArtifactUnavailable
            | Reason::InvalidSpec
            | Reason::InvalidSource
            | Reason::Placed
            | Reason::Unschedulable
            | Reason::NotApproved
            | Reason::ScaledToZero => Some(Self::Condition(reason)),
        }
    }

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Condition(reason) => reason.as_str(),
            Self::ApprovalRevoked => "ApprovalRevoked",
            Self::SignatureUnverifiable => "SignatureUnverifiable",
        }
    }

    /// The Event type auditors should expect for this reason.
    pub fn event_type(self) -> EventType {
        match self {
            Self::Condition(
                Reason::TrustSourceMatched
                | Reason::ManuallyApproved
                | Reason::PendingApproval
                | Reason::ArtifactVerified
                | Reason::SourceAccepted
                | Reason::Placed
                | Reason::NotApproved
                | Reason::ScaledToZero
                | Reason::InstancesReady
                | Reason::InstancesStarting
                | Reason::Healthy,
            ) => EventType::Normal,
            Self::Condition(
                Reason::Denied
                | Reason::RegistryNotListed
                | Reason::DevModeBypass
                | Reason::RequestExceedsCeiling
                | Reason::VerificationFailed
                | Reason::ArtifactUnreachable
                | Reason::ArtifactUnavailable
                | Reason::InvalidSpec
                | Reason::InvalidSource
                | Reason::Unschedulable
                | Reason::FetchFailed
                | Reason::CompileFailed
                | Reason::CrashLoop,
            )
            | Self::ApprovalRevoked
            | Self::SignatureUnverifiable => EventType::Warning,
        }
    }
}

impl fmt::Display for EventReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_about_a_condition_carries_the_condition_reason() {
        for reason in Reason::ALL {
            if let Some(event) = EventReason::for_condition(reason) {
                assert_eq!(event.as_str(), reason.as_str(), "one word per transition");
            }
        }
        // Both ways an artifact can be out of reach have an Event, each under its own word.
        for reason in [Reason::ArtifactUnreachable, Reason::ArtifactUnavailable] {
            assert_eq!(
                EventReason::for_condition(reason).map(EventReason::as_str),
                Some(reason.as_str())
            );
        }
    }

    #[test]
    fn event_only_reasons_are_camel_case_and_not_condition_reasons() {
        for event in [
            EventReason::ApprovalRevoked,
            EventReason::SignatureUnverifiable,
        ] {
            let s = event.as_str();
            assert!(s.chars().all(|c| c.is_ascii_alphanumeric()), "{s}");
            assert!(s.parse::<Reason>().is_err(), "{s} is Event-only");
            assert_eq!(event.event_type(), EventType::Warning);
        }
    }

    #[test]
    fn dev_mode_and_denials_are_warnings() {
        let event_type = |r: Reason| EventReason::for_condition(r).map(EventReason::event_type);
        assert_eq!(event_type(Reason::DevModeBypass), Some(EventType::Warning));
        assert_eq!(event_type(Reason::Denied), Some(EventType::Warning));
        assert_eq!(
            event_type(Reason::RegistryNotListed),
            Some(EventType::Warning)
        );
        assert_eq!(
            event_type(Reason::RequestExceedsCeiling),
            Some(EventType::Warning)
        );
        assert_eq!(
            event_type(Reason::TrustSourceMatched),
            Some(EventType::Normal)
        );
        assert_eq!(
            event_type(Reason::ArtifactVerified),
            None,
            "routine, no Event"
        );
    }
}
