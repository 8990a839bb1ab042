//! Condition reasons and Event reasons: the fixed CamelCase vocabulary the operator writes.
//!
//! Auditors filter on these strings (`kubectl get events --field-selector reason=...`), so they
//! are constants from one enum each, never formatted ad hoc. Publishing comes with the
//! controllers; this module holds no I/O.

use std::fmt;

/// Reasons on status conditions (`Verified`, `Approved` of a `WasmComponent`; `Accepted` of a
/// `TrustSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    // Approved
    /// A `Trust` source matched and the request fits its ceiling.
    TrustSourceMatched,
    /// A digest entry naming this component approves its digest and request.
    ManuallyApproved,
    /// Nothing vouches for the artifact (or an approval no longer covers it); waiting for a person.
    PendingApproval,
    /// A `Deny` source matched.
    Denied,
    /// Runs only because dev mode is on for its namespace.
    DevModeBypass,
    /// A source vouches for the artifact but the request is wider than its ceiling.
    RequestExceedsCeiling,
    /// The artifact failed an integrity check (digest mismatch, forged signature payload).
    VerificationFailed,
    // Verified
    /// Resolved to a digest and signatures checked.
    ArtifactVerified,
    /// The registry or URL could not be reached; retrying with backoff.
    ArtifactUnreachable,
    /// The artifact cannot be fetched until someone acts (not found, unauthorized, bad secret).
    ArtifactUnavailable,
    /// The spec does not parse (capabilities, limits, digests).
    InvalidSpec,
    // Accepted (TrustSource)
    /// The source parsed and is in use.
    SourceAccepted,
    /// The source is ignored: a pattern, key, certificate or capability did not parse.
    InvalidSource,
}

impl Reason {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TrustSourceMatched => "TrustSourceMatched",
            Self::ManuallyApproved => "ManuallyApproved",
            Self::PendingApproval => "PendingApproval",
            Self::Denied => "Denied",
            Self::DevModeBypass => "DevModeBypass",
            Self::RequestExceedsCeiling => "RequestExceedsCeiling",
            Self::VerificationFailed => "VerificationFailed",
            Self::ArtifactVerified => "ArtifactVerified",
            Self::ArtifactUnreachable => "ArtifactUnreachable",
            Self::ArtifactUnavailable => "ArtifactUnavailable",
            Self::InvalidSpec => "InvalidSpec",
            Self::SourceAccepted => "SourceAccepted",
            Self::InvalidSource => "InvalidSource",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    /// The component was approved (source, person or dev mode).
    Approved,
    /// The component waits for a person.
    PendingApproval,
    /// A `Deny` source matched.
    Denied,
    /// The request is wider than the matching source's ceiling.
    RequestExceedsCeiling,
    /// A component starts under dev mode; emitted on every start.
    DevModeBypass,
    /// An approval stopped holding (source changed or deleted, digest or request changed).
    ApprovalRevoked,
    /// An integrity check failed.
    VerificationFailed,
    /// The artifact could not be fetched (retrying).
    ArtifactUnreachable,
    /// A `TrustSource` did not validate and is ignored.
    InvalidSource,
    /// A `WasmComponent` spec does not parse.
    InvalidSpec,
}

impl EventReason {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "Approved",
            Self::PendingApproval => "PendingApproval",
            Self::Denied => "Denied",
            Self::RequestExceedsCeiling => "RequestExceedsCeiling",
            Self::DevModeBypass => "DevModeBypass",
            Self::ApprovalRevoked => "ApprovalRevoked",
            Self::VerificationFailed => "VerificationFailed",
            Self::ArtifactUnreachable => "ArtifactUnreachable",
            Self::InvalidSource => "InvalidSource",
            Self::InvalidSpec => "InvalidSpec",
        }
    }

    /// The Event type auditors should expect for this reason.
    pub fn event_type(self) -> EventType {
        match self {
            Self::Approved | Self::PendingApproval => EventType::Normal,
            Self::Denied
            | Self::RequestExceedsCeiling
            | Self::DevModeBypass
            | Self::ApprovalRevoked
            | Self::VerificationFailed
            | Self::ArtifactUnreachable
            | Self::InvalidSource
            | Self::InvalidSpec => EventType::Warning,
        }
    }
}

impl fmt::Display for EventReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Reason {
    /// The Event to publish when a condition takes this reason; `None` for routine states that
    /// need no Event of their own.
    pub fn event(self) -> Option<EventReason> {
        match self {
            Self::TrustSourceMatched | Self::ManuallyApproved => Some(EventReason::Approved),
            Self::PendingApproval => Some(EventReason::PendingApproval),
            Self::Denied => Some(EventReason::Denied),
            Self::DevModeBypass => Some(EventReason::DevModeBypass),
            Self::RequestExceedsCeiling => Some(EventReason::RequestExceedsCeiling),
            Self::VerificationFailed => Some(EventReason::VerificationFailed),
            Self::ArtifactUnreachable | Self::ArtifactUnavailable => {
                Some(EventReason::ArtifactUnreachable)
            }
            Self::InvalidSpec => Some(EventReason::InvalidSpec),
            Self::InvalidSource => Some(EventReason::InvalidSource),
            Self::ArtifactVerified | Self::SourceAccepted => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Reason; 13] = [
        Reason::TrustSourceMatched,
        Reason::ManuallyApproved,
        Reason::PendingApproval,
        Reason::Denied,
        Reason::DevModeBypass,
        Reason::RequestExceedsCeiling,
        Reason::VerificationFailed,
        Reason::ArtifactVerified,
        Reason::ArtifactUnreachable,
        Reason::ArtifactUnavailable,
        Reason::InvalidSpec,
        Reason::SourceAccepted,
        Reason::InvalidSource,
    ];

    #[test]
    fn reasons_are_camel_case_and_match_their_names() {
        for reason in ALL {
            let s = reason.to_string();
            assert_eq!(s, format!("{reason:?}"), "wire string is the variant name");
            assert!(
                s.chars().next().is_some_and(|c| c.is_ascii_uppercase()),
                "{s}"
            );
            assert!(s.chars().all(|c| c.is_ascii_alphanumeric()), "{s}");
        }
    }

    #[test]
    fn the_approved_reasons_of_issue_4_exist() {
        let wanted = [
            "TrustSourceMatched",
            "ManuallyApproved",
            "PendingApproval",
            "Denied",
            "DevModeBypass",
            "RequestExceedsCeiling",
            "VerificationFailed",
        ];
        for w in wanted {
            assert!(ALL.iter().any(|r| r.as_str() == w), "{w}");
        }
    }

    #[test]
    fn dev_mode_and_denials_are_warnings() {
        let event_type = |r: Reason| r.event().map(EventReason::event_type);
        assert_eq!(event_type(Reason::DevModeBypass), Some(EventType::Warning));
        assert_eq!(event_type(Reason::Denied), Some(EventType::Warning));
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
        assert_eq!(EventReason::ApprovalRevoked.to_string(), "ApprovalRevoked");
    }
}
