//! Events: the fixed CamelCase vocabulary of the Events the operator publishes, and which
//! occurrences fold into one Event.
//!
//! Auditors filter on these strings (`kubectl get events --field-selector reason=...`), so they
//! are constants from one enum, never formatted ad hoc. An Event about a condition transition
//! carries the condition's own reason ([`Reason`], from crds): one word per transition, whether
//! read from the status or from the Events. Only what has no condition of its own
//! (a revocation, an ignored signature) has an Event-only reason.
//!
//! [`Series`] decides folding: only an exact repeat (same object, type, reason, action *and*
//! note) within [`SERIES_WINDOW`] becomes a count on the earlier Event; a new cause is always
//! a new Event, so the trail never shows an old message for a new cause. This module holds no
//! I/O; `Context::publish` writes what it decides.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use sha2::{Digest as _, Sha256};

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
            | Reason::StartFailed
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
                | Reason::StartFailed
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

/// How long an exact repeat still folds into the earlier Event: after this long without one,
/// the next occurrence is a new Event (the window of kube's and client-go's recorders).
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// The most Events [`Series`] remembers. Past it the least recently seen is forgotten: its
/// next repeat becomes a new Event, so the bound costs folding, never an occurrence.
pub const SERIES_LIMIT: usize = 2048;

/// The object an Event is about, as far as folding is concerned: a deleted and re-created
/// object of the same name (another uid) is another object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Regarding {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
}

impl From<&ObjectReference> for Regarding {
    fn from(r: &ObjectReference) -> Self {
        Self {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        }
    }
}

/// One thing that happened, as an auditor reads it: occurrences equal in every field are
/// repeats; any difference, the note included, is a different Event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Occurrence {
    regarding: Regarding,
    reason: EventReason,
    action: String,
    /// SHA-256 of the whole note, before it is shortened for the Event: notes that differ only
    /// past the cut are still different causes, and the cache holds 32 bytes, not the note.
    note: [u8; 32],
}

impl Occurrence {
    pub fn new(regarding: &ObjectReference, reason: EventReason, action: &str, note: &str) -> Self {
        Self {
            regarding: regarding.into(),
            reason,
            action: action.to_owned(),
            note: Sha256::digest(note.as_bytes()).into(),
        }
    }
}

/// What to write for an occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// A new Event.
    Create,
    /// A repeat: set the series of Event `name` to `count` occurrences.
    Repeat { name: String, count: i32 },
}

/// The Events published recently, for folding exact repeats; bounded by a limit and
/// [`SERIES_WINDOW`].
#[derive(Debug)]
pub struct Series {
    seen: HashMap<Occurrence, Seen>,
    limit: usize,
}

#[derive(Debug)]
struct Seen {
    /// The Event's object name.
    name: String,
    count: i32,
    last: Instant,
}

impl Default for Series {
    fn default() -> Self {
        Self::with_limit(SERIES_LIMIT)
    }
}

impl Series {
    /// A cache remembering at most `limit` Events.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            seen: HashMap::new(),
            limit: limit.max(1),
        }
    }

    /// What to write for `occurrence` at `now`. A repeat is counted here, so a count whose
    /// write failed is still in the next one.
    pub fn observe(&mut self, occurrence: &Occurrence, now: Instant) -> Publish {
        match self.seen.get_mut(occurrence) {
            Some(seen) if now.saturating_duration_since(seen.last) < SERIES_WINDOW => {
                seen.count = seen.count.saturating_add(1);
                seen.last = now;
                Publish::Repeat {
                    name: seen.name.clone(),
                    count: seen.count,
                }
            }
            _ => Publish::Create,
        }
    }

    /// Remembers that Event `name` was created for `occurrence` at `now` (replacing an
    /// earlier Event for it that expired or went away).
    pub fn created(&mut self, occurrence: Occurrence, name: String, now: Instant) {
        if !self.seen.contains_key(&occurrence) && self.seen.len() >= self.limit {
            self.seen
                .retain(|_, s| now.saturating_duration_since(s.last) < SERIES_WINDOW);
            if self.seen.len() >= self.limit
                && let Some(oldest) = self
                    .seen
                    .iter()
                    .min_by_key(|(_, s)| s.last)
                    .map(|(o, _)| o.clone())
            {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(
            occurrence,
            Seen {
                name,
                count: 1,
                last: now,
            },
        );
    }

    /// How many Events are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// The longest object name the API server accepts (a DNS subdomain).
const NAME_LIMIT: usize = 253;

/// The name of a new Event about object `regarding` created at `nanos` (since the epoch):
/// `<object>.<hex nanos>`, as client-go names them, with the object's part shortened so the
/// whole stays a valid name however long the object's name is.
pub fn event_name(regarding: &str, nanos: u128) -> String {
    let suffix = format!(".{nanos:x}");
    let room = NAME_LIMIT - suffix.len();
    // Object names are ASCII (DNS labels or subdomains); a label may not end in '-' or '.'.
    let prefix = regarding
        .get(..room.min(regarding.len()))
        .unwrap_or("event")
        .trim_end_matches(['-', '.']);
    let prefix = if prefix.is_empty() { "event" } else { prefix };
    format!("{prefix}{suffix}")
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

    fn occurrence(uid: &str, reason: EventReason, note: &str) -> Occurrence {
        let regarding = ObjectReference {
            api_version: Some("wasm.airssys.dev/v1alpha1".into()),
            kind: Some("WasmComponent".into()),
            namespace: Some("team".into()),
            name: Some("echo".into()),
            uid: Some(uid.into()),
            ..ObjectReference::default()
        };
        Occurrence::new(&regarding, reason, "Revoke", note)
    }

    #[test]
    fn folding_spec() {
        let revoked = |note| occurrence("u1", EventReason::ApprovalRevoked, note);
        let by_source = "Approval of sha256:a revoked (PendingApproval): no source matches";
        let by_deny = "Approval of sha256:a revoked (Denied): denied by TrustSource block";
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // (rule, occurrence, seconds after the start, expected)
        let repeat = |count| Publish::Repeat {
            name: "ev-1".into(),
            count,
        };
        let rows: Vec<(&str, Occurrence, u64, Publish)> = vec![
            (
                "a first occurrence is a new Event",
                revoked(by_source),
                0,
                Publish::Create,
            ),
            (
                "an exact repeat is counted on it",
                revoked(by_source),
                10,
                repeat(2),
            ),
            ("and again", revoked(by_source), 20, repeat(3)),
            (
                "a new cause (another note) is a new Event, never folded",
                revoked(by_deny),
                30,
                Publish::Create,
            ),
            (
                "notes that differ only past the Event's length limit are different causes",
                revoked(&format!("{} and then {by_source}", "x".repeat(2000))),
                35,
                Publish::Create,
            ),
            (
                "another reason with the same note is a new Event",
                occurrence("u1", EventReason::SignatureUnverifiable, by_source),
                40,
                Publish::Create,
            ),
            (
                "another object of the same name (new uid) is a new Event",
                occurrence("u2", EventReason::ApprovalRevoked, by_source),
                50,
                Publish::Create,
            ),
            (
                "the window restarts with every repeat",
                revoked(by_source),
                20 + SERIES_WINDOW.as_secs() - 1,
                repeat(4),
            ),
            (
                "a repeat after the window is a new Event",
                revoked(by_source),
                20 + 2 * SERIES_WINDOW.as_secs(),
                Publish::Create,
            ),
        ];
        let mut series = Series::default();
        let mut names = 0;
        for (rule, occ, secs, want) in rows {
            let got = series.observe(&occ, at(secs));
            assert_eq!(got, want, "{rule}");
            if got == Publish::Create {
                names += 1;
                series.created(occ, format!("ev-{names}"), at(secs));
            }
        }
    }

    #[test]
    fn an_event_created_again_replaces_the_expired_one() {
        let occ = occurrence("u1", EventReason::ApprovalRevoked, "n");
        let t0 = Instant::now();
        let mut series = Series::default();
        series.created(occ.clone(), "old".into(), t0);
        let later = t0 + SERIES_WINDOW;
        assert_eq!(series.observe(&occ, later), Publish::Create);
        series.created(occ.clone(), "new".into(), later);
        assert_eq!(
            series.observe(&occ, later + Duration::from_secs(1)),
            Publish::Repeat {
                name: "new".into(),
                count: 2
            }
        );
        assert_eq!(series.len(), 1);
    }

    #[test]
    fn the_cache_is_bounded_and_forgets_the_least_recently_seen() {
        let t0 = Instant::now();
        let mut series = Series::with_limit(3);
        let occ = |i: u64| occurrence("u1", EventReason::ApprovalRevoked, &format!("cause {i}"));
        for i in 0..3 {
            series.created(occ(i), format!("ev-{i}"), t0 + Duration::from_secs(i));
        }
        // Cause 0 repeats, so cause 1 is now the least recently seen.
        assert!(matches!(
            series.observe(&occ(0), t0 + Duration::from_secs(5)),
            Publish::Repeat { .. }
        ));
        series.created(occ(3), "ev-3".into(), t0 + Duration::from_secs(6));
        assert_eq!(series.len(), 3, "never more than the limit");
        let t = t0 + Duration::from_secs(7);
        assert_eq!(series.observe(&occ(1), t), Publish::Create, "forgotten");
        for i in [0, 2, 3] {
            assert!(
                matches!(series.observe(&occ(i), t), Publish::Repeat { .. }),
                "cause {i} kept"
            );
        }
        // Expired entries go first, before anything recent is forgotten.
        let late = t + SERIES_WINDOW + Duration::from_secs(1);
        series.created(occ(9), "ev-9".into(), late);
        assert_eq!(series.len(), 1, "the expired ones were dropped");
    }

    #[test]
    fn event_names_are_valid_object_names() {
        let cases = [
            ("echo", 0xabc_u128, "echo.abc"),
            ("a-", 1, "a.1"),
            ("", 1, "event.1"),
        ];
        for (object, nanos, want) in cases {
            assert_eq!(event_name(object, nanos), want, "{object:?}");
        }
        let nanos = 1_765_000_000_123_456_789_u128;
        let long = format!("{}-{}", "k".repeat(230), "x".repeat(22));
        let name = event_name(&long, nanos);
        assert!(name.len() <= 253, "{}", name.len());
        assert!(name.ends_with(&format!(".{nanos:x}")), "{name}");
        // Cut right after a '-': the label may not end with it.
        let room = 253 - format!(".{nanos:x}").len();
        let cut = format!("{}-{}", "k".repeat(room - 1), "y".repeat(20));
        let name = event_name(&cut, nanos);
        assert!(!name.contains("-."), "{name}");
        assert!(name.len() <= 253);
    }
}
