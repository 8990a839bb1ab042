//! Status conditions: a list-map keyed by `type`, as Kubernetes API conventions describe.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::reason::Reason;

/// The most bytes a condition message (and an Event note built from one) carries. The API
/// server refuses a whole status write when one message passes its 32 KiB limit, which would
/// block every later write too (revocations included); this stays far below it.
pub const MESSAGE_LIMIT: usize = 4096;

/// `True`, `False` or `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(value: bool) -> Self {
        if value { Self::True } else { Self::False }
    }
}

impl fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Condition types, one meaning each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ConditionType {
    /// The artifact was resolved to a digest and its signatures checked.
    Verified,
    /// The component may run (trusted, approved or dev mode).
    Approved,
    /// Replicas are placed on nodes.
    Scheduled,
    /// All requested replicas run.
    Ready,
    /// Something runs worse than asked (crash loops, partial placement).
    Degraded,
    /// A `TrustSource` parsed and is in use.
    Accepted,
}

impl ConditionType {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "Verified",
            Self::Approved => "Approved",
            Self::Scheduled => "Scheduled",
            Self::Ready => "Ready",
            Self::Degraded => "Degraded",
            Self::Accepted => "Accepted",
        }
    }
}

impl fmt::Display for ConditionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One condition. `reason` is CamelCase from a fixed set; `message` says what to do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's type; unique in the list.
    #[serde(rename = "type")]
    pub type_: ConditionType,
    pub status: ConditionStatus,
    /// The generation of the object this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed (RFC 3339).
    #[schemars(length(max = 64))]
    pub last_transition_time: String,
    /// CamelCase machine-readable reason.
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
    /// Human-readable explanation, saying what to do next where there is something to do.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub message: String,
}

impl Condition {
    /// A condition stamped with the current time; the message is cut to [`MESSAGE_LIMIT`].
    pub fn new(
        type_: ConditionType,
        status: ConditionStatus,
        reason: impl fmt::Display,
        message: impl Into<String>,
        observed_generation: Option<i64>,
    ) -> Self {
        Self {
            type_,
            status,
            observed_generation,
            last_transition_time: now_rfc3339(),
            reason: reason.to_string(),
            message: bounded(message.into(), MESSAGE_LIMIT),
        }
    }

    /// The reason, if it is one of the vocabulary's.
    pub fn reason(&self) -> Option<Reason> {
        self.reason.parse().ok()
    }

    /// Whether the status is `True`.
    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

/// Cuts `message` to at most `max` bytes on a character boundary, marking the cut with `…`.
pub fn bounded(mut message: String, max: usize) -> String {
    const MARK: &str = " …";
    if message.len() <= max {
        return message;
    }
    let mut end = max.saturating_sub(MARK.len());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(MARK);
    message
}

/// The current time as Kubernetes writes it (second precision, `Z`).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Finds a condition by type.
pub fn find(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` exists and is `True`.
pub fn is_true(conditions: &[Condition], type_: ConditionType) -> bool {
    find(conditions, type_).is_some_and(Condition::is_true)
}

/// Inserts or replaces the condition of the same type. `lastTransitionTime` moves only when the
/// status changes, so watchers can tell how long a state has held. Returns whether anything
/// other than the timestamp changed (callers skip a status write when it did not).
pub fn set(conditions: &mut Vec<Condition>, mut new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time
                    .clone_from(&old.last_transition_time);
            }
            let changed = *old != new;
            *old = new;
            changed
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(status: ConditionStatus, reason: &str, time: &str) -> Condition {
        Condition {
            type_: ConditionType::Approved,
            status,
            observed_generation: Some(1),
            last_transition_time: time.to_owned(),
            reason: reason.to_owned(),
            message: String::new(),
        }
    }

    #[test]
    fn set_inserts_replaces_and_keeps_transition_time() {
        let mut list = Vec::new();
        assert!(set(
            &mut list,
            cond(ConditionStatus::False, "PendingApproval", "t1")
        ));
        assert_eq!(list.len(), 1);
        assert!(
            !set(
                &mut list,
                cond(ConditionStatus::False, "PendingApproval", "t2")
            ),
            "same state is no change"
        );
        assert_eq!(
            list[0].last_transition_time, "t1",
            "time kept while status holds"
        );
        assert!(set(
            &mut list,
            cond(ConditionStatus::False, "RequestExceedsCeiling", "t3")
        ));
        assert_eq!(
            list[0].last_transition_time, "t1",
            "reason change alone keeps the time"
        );
        assert!(set(
            &mut list,
            cond(ConditionStatus::True, "ManuallyApproved", "t4")
        ));
        assert_eq!(
            list[0].last_transition_time, "t4",
            "status change moves the time"
        );
        assert!(is_true(&list, ConditionType::Approved));
        assert!(!is_true(&list, ConditionType::Ready), "missing is not true");
        assert_eq!(list.len(), 1, "one entry per type");
    }

    #[test]
    fn messages_are_bounded_on_char_boundaries() {
        assert_eq!(bounded("abc".into(), 10), "abc");
        let cut = bounded("é".repeat(100), 11);
        assert!(cut.len() <= 11 && cut.ends_with('…'), "{cut}");
        let huge = Condition::new(
            ConditionType::Approved,
            ConditionStatus::False,
            Reason::PendingApproval,
            "x".repeat(100_000),
            None,
        );
        assert!(huge.message.len() <= MESSAGE_LIMIT);
        assert_eq!(huge.reason(), Some(Reason::PendingApproval));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
    }
}
