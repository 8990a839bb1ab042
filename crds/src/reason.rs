//! Condition reasons: the fixed CamelCase vocabulary of `status.conditions[].reason`.
//!
//! Auditors and the `kubectl wasm` plugin filter on these strings, and the operator publishes
//! an Event with the same reason when a condition takes one, so they are constants of one enum,
//! converted here and nowhere else (no string matches in the binaries).

use std::fmt;
use std::str::FromStr;

/// Reasons on status conditions (`Verified`, `Approved`, `Scheduled`, `Ready`, `Degraded` of a
/// `WasmComponent`; `Ready`, `Degraded` of a `Placement`; `Accepted` of a `TrustSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
    /// The operator requires every registry to be named by a source, and none names this one.
    RegistryNotListed,
    /// Runs only because dev mode is on for its namespace.
    DevModeBypass,
    /// A source vouches for the artifact but the request is wider than its ceiling.
    RequestExceedsCeiling,
    /// The component's bytes failed an integrity check (digest mismatch).
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
    // Scheduled (WasmComponent)
    /// Every replica has a node.
    Placed,
    /// Some replicas have no node: no live agent matches, or the matching ones are full.
    Unschedulable,
    /// Not approved (or approved for an older generation): nothing is placed.
    NotApproved,
    /// `replicas: 0`.
    ScaledToZero,
    // Ready (WasmComponent and Placement)
    /// Every requested instance runs and is ready.
    InstancesReady,
    /// Instances are being fetched, compiled or started.
    InstancesStarting,
    /// The artifact could not be fetched from the operator, or its bytes did not hash to the
    /// Placement's digest.
    FetchFailed,
    /// The fetched component does not compile or link on this node.
    CompileFailed,
    /// An update's new revision compiled but its first instance did not start (`init`
    /// failed, trapped or ran out of a quota); the previous revision keeps running.
    StartFailed,
    // Degraded
    /// Instances restart repeatedly (crash loop backoff).
    CrashLoop,
    /// Nothing runs worse than asked.
    Healthy,
}

impl Reason {
    /// Every reason, for tests and lookups.
    pub const ALL: [Self; 25] = [
        Self::TrustSourceMatched,
        Self::ManuallyApproved,
        Self::PendingApproval,
        Self::Denied,
        Self::RegistryNotListed,
        Self::DevModeBypass,
        Self::RequestExceedsCeiling,
        Self::VerificationFailed,
        Self::ArtifactVerified,
        Self::ArtifactUnreachable,
        Self::ArtifactUnavailable,
        Self::InvalidSpec,
        Self::SourceAccepted,
        Self::InvalidSource,
        Self::Placed,
        Self::Unschedulable,
        Self::NotApproved,
        Self::ScaledToZero,
        Self::InstancesReady,
        Self::InstancesStarting,
        Self::FetchFailed,
        Self::CompileFailed,
        Self::StartFailed,
        Self::CrashLoop,
        Self::Healthy,
    ];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TrustSourceMatched => "TrustSourceMatched",
            Self::ManuallyApproved => "ManuallyApproved",
            Self::PendingApproval => "PendingApproval",
            Self::Denied => "Denied",
            Self::RegistryNotListed => "RegistryNotListed",
            Self::DevModeBypass => "DevModeBypass",
            Self::RequestExceedsCeiling => "RequestExceedsCeiling",
            Self::VerificationFailed => "VerificationFailed",
            Self::ArtifactVerified => "ArtifactVerified",
            Self::ArtifactUnreachable => "ArtifactUnreachable",
            Self::ArtifactUnavailable => "ArtifactUnavailable",
            Self::InvalidSpec => "InvalidSpec",
            Self::SourceAccepted => "SourceAccepted",
            Self::InvalidSource => "InvalidSource",
            Self::Placed => "Placed",
            Self::Unschedulable => "Unschedulable",
            Self::NotApproved => "NotApproved",
            Self::ScaledToZero => "ScaledToZero",
            Self::InstancesReady => "InstancesReady",
            Self::InstancesStarting => "InstancesStarting",
            Self::FetchFailed => "FetchFailed",
            Self::CompileFailed => "CompileFailed",
            Self::StartFailed => "StartFailed",
            Self::CrashLoop => "CrashLoop",
            Self::Healthy => "Healthy",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason string outside the vocabulary (written by someone else, or by a newer operator).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a condition reason of wasm.airssys.dev")]
pub struct UnknownReason(pub String);

impl FromStr for Reason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_camel_case_round_trip_and_match_their_names() {
        for reason in Reason::ALL {
            let s = reason.to_string();
            assert_eq!(s, format!("{reason:?}"), "wire string is the variant name");
            assert!(
                s.chars().next().is_some_and(|c| c.is_ascii_uppercase()),
                "{s}"
            );
            assert!(s.chars().all(|c| c.is_ascii_alphanumeric()), "{s}");
            assert_eq!(s.parse::<Reason>(), Ok(reason), "round trip");
        }
        assert!("Nope".parse::<Reason>().is_err());
    }
}
