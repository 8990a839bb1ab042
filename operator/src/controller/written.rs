//! What this operator last wrote to each component's status, ahead of its own watch.
//!
//! A reconcile reads the reflector's copy of the component, which under load lags the
//! operator's own last write by up to a second. Comparing against that copy, a controller
//! would send the same status again and publish its transition Events again: at 500
//! components that doubled the status writes and Events the API server had to take.
//!
//! So each status write records the fields it sent and the `resourceVersion` the API server
//! answered with. A reconcile whose copy is *older* than that write takes those fields from
//! the record instead ([`Written::overlay`]): it compares with, and reports transitions from,
//! what the server already holds. Resource versions are compared as Kubernetes defines them for
//! objects of one resource (positive decimal integers, KEP-5504, stable in 1.35). Anything that
//! does not compare (an unparsable or missing version, a copy as new as the write or newer)
//! leaves the copy as it is: a status someone else changed after our write is seen in a newer
//! copy and repaired as before.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use airssys_crds::component::WasmComponentStatus;
use airssys_crds::condition::ConditionType;
use serde::Serialize;

/// Which writer's fields a record holds: each status writer owns different fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Writer {
    /// The component controller: `observedGeneration`, the digests, trust level, matched
    /// sources, `Verified`, `Approved`.
    Decision,
    /// The placement controller: replicas, nodes, `Scheduled`, `Ready`, `Degraded`.
    Placement,
}

impl Writer {
    fn owns(self, condition: ConditionType) -> bool {
        match self {
            Writer::Decision => {
                matches!(condition, ConditionType::Verified | ConditionType::Approved)
            }
            Writer::Placement => matches!(
                condition,
                ConditionType::Scheduled | ConditionType::Ready | ConditionType::Degraded
            ),
        }
    }

    /// `out` with this writer's fields replaced by `sent`'s.
    fn overlay(
        self,
        mut out: WasmComponentStatus,
        sent: &WasmComponentStatus,
    ) -> WasmComponentStatus {
        out.conditions.retain(|c| !self.owns(c.type_));
        out.conditions.extend(
            sent.conditions
                .iter()
                .filter(|c| self.owns(c.type_))
                .cloned(),
        );
        match self {
            Writer::Decision => {
                out.observed_generation = sent.observed_generation;
                out.resolved_digest.clone_from(&sent.resolved_digest);
                out.approved_digest.clone_from(&sent.approved_digest);
                out.trust_level = sent.trust_level;
                out.matched_sources.clone_from(&sent.matched_sources);
            }
            Writer::Placement => {
                out.replicas = sent.replicas;
                out.ready_replicas = sent.ready_replicas;
                out.nodes.clone_from(&sent.nodes);
            }
        }
        out
    }
}

#[derive(Debug)]
struct Sent {
    status: WasmComponentStatus,
    resource_version: String,
}

/// The last status write per (component uid, writer).
#[derive(Debug, Default)]
pub struct Written {
    sent: Mutex<HashMap<(String, Writer), Sent>>,
}

impl Written {
    /// The status to compare with: `copy` (the reflector's, at `cached_version`), with
    /// `writer`'s fields taken from its last write when the copy predates that write.
    pub fn overlay(
        &self,
        uid: &str,
        writer: Writer,
        copy: WasmComponentStatus,
        cached_version: Option<&str>,
    ) -> WasmComponentStatus {
        let sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        let last = sent.get(&(uid.to_owned(), writer)).filter(|last| {
            cached_version.and_then(|c| compare_versions(c, &last.resource_version))
                == Some(Ordering::Less)
        });
        match last {
            Some(last) => writer.overlay(copy, &last.status),
            None => copy,
        }
    }

    /// Records a successful write of `status` (the status object as sent) and the version the
    /// API server answered with.
    pub fn record<S: Serialize>(
        &self,
        uid: &str,
        writer: Writer,
        status: &S,
        resource_version: Option<String>,
    ) {
        // Kept as a status, so reading it back cannot fail; a patch that is not one records
        // nothing.
        let status = serde_json::to_value(status)
            .and_then(serde_json::from_value::<WasmComponentStatus>)
            .ok();
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (uid.to_owned(), writer);
        match (status, resource_version) {
            (Some(status), Some(resource_version)) => {
                sent.insert(
                    key,
                    Sent {
                        status,
                        resource_version,
                    },
                );
            }
            _ => {
                sent.remove(&key);
            }
        }
    }

    /// Keeps only the components `live` says still exist.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(uid, _), _| live(uid));
    }
}

/// Compares two resource versions of objects of one resource: positive decimal integers
/// without leading zeros, the longer one the larger. `None` when either is not of that form.
pub fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    let valid =
        |v: &str| !v.is_empty() && !v.starts_with('0') && v.bytes().all(|c| c.is_ascii_digit());
    (valid(a) && valid(b)).then(|| a.len().cmp(&b.len()).then_with(|| a.cmp(b)))
}

#[cfg(test)]
mod tests {
    use airssys_crds::condition::{Condition, ConditionStatus};
    use airssys_crds::reason::Reason;

    use super::*;

    fn cond(type_: ConditionType, reason: Reason) -> Condition {
        Condition::new(type_, ConditionStatus::True, reason, "m", Some(1))
    }

    #[test]
    fn versions_compare_as_integers_of_any_length() {
        // (a, b, expected)
        let cases = [
            ("9", "10", Some(Ordering::Less)),
            ("10", "9", Some(Ordering::Greater)),
            ("123", "123", Some(Ordering::Equal)),
            (
                "99999999999999999999",
                "100000000000000000000",
                Some(Ordering::Less),
            ),
            ("", "1", None),
            ("0", "1", None),
            ("01", "2", None),
            ("12a", "13", None),
            ("-1", "2", None),
        ];
        for (a, b, expected) in cases {
            assert_eq!(compare_versions(a, b), expected, "{a} vs {b}");
        }
    }

    #[test]
    fn an_older_copy_takes_the_writers_fields_from_its_last_write() {
        // The copy: the decision is in, the placement controller's first write is not.
        let copy = WasmComponentStatus {
            observed_generation: Some(1),
            approved_digest: Some("sha256:old".into()),
            conditions: vec![
                cond(ConditionType::Approved, Reason::TrustSourceMatched),
                // No writer of a component's status owns it: it is nobody's to drop.
                cond(ConditionType::Accepted, Reason::TrustSourceMatched),
            ],
            ..WasmComponentStatus::default()
        };
        let sent = serde_json::json!({
            "replicas": 2, "readyReplicas": 1,
            "conditions": [{"type": "Scheduled", "status": "True", "reason": "Placed",
                            "message": "m", "lastTransitionTime": "t", "observedGeneration": 1}]
        });
        let w = Written::default();
        let same = w.overlay("u", Writer::Placement, copy.clone(), Some("5"));
        assert_eq!(same, copy, "nothing written yet");
        w.record("u", Writer::Placement, &sent, Some("10".into()));
        let seen = |version: Option<&str>| w.overlay("u", Writer::Placement, copy.clone(), version);

        let older = seen(Some("9"));
        assert_eq!(
            (older.replicas, older.ready_replicas),
            (2, 1),
            "our fields from the write"
        );
        assert_eq!(
            older.approved_digest.as_deref(),
            Some("sha256:old"),
            "others' fields kept"
        );
        let types: Vec<ConditionType> = older.conditions.iter().map(|c| c.type_).collect();
        assert_eq!(
            types,
            [
                ConditionType::Approved,
                ConditionType::Accepted,
                ConditionType::Scheduled
            ]
        );
        // (rule, copy's version): the copy stands.
        for (rule, version) in [
            ("the copy is our write", Some("10")),
            ("a newer copy: someone wrote after us", Some("11")),
            ("a copy without a version", None),
            ("a version that does not compare", Some("abc")),
        ] {
            assert_eq!(seen(version), copy, "{rule}");
        }
        assert_eq!(
            w.overlay("u", Writer::Decision, copy.clone(), Some("9")),
            copy,
            "another writer's record"
        );
        assert_eq!(
            w.overlay("v", Writer::Placement, copy.clone(), Some("9")),
            copy,
            "another uid"
        );

        w.record("u", Writer::Placement, &sent, None);
        assert_eq!(
            seen(Some("9")),
            copy,
            "a write answered without a version records nothing"
        );
        w.record("u", Writer::Placement, &sent, Some("10".into()));
        w.retain(|uid| uid != "u");
        assert_eq!(seen(Some("9")), copy, "gone components are forgotten");
    }

    #[test]
    fn the_decision_writer_replaces_only_its_own_fields() {
        let copy = WasmComponentStatus {
            replicas: 3,
            approved_digest: Some("sha256:stale".into()),
            conditions: vec![
                cond(ConditionType::Ready, Reason::InstancesReady),
                cond(ConditionType::Approved, Reason::ManuallyApproved),
            ],
            ..WasmComponentStatus::default()
        };
        // What the decision writer sent: no approved digest (cleared), Approved pending.
        let sent = serde_json::json!({
            "observedGeneration": 2,
            "conditions": [{"type": "Approved", "status": "False", "reason": "PendingApproval",
                            "message": "m", "lastTransitionTime": "t", "observedGeneration": 2}]
        });
        let w = Written::default();
        w.record("u", Writer::Decision, &sent, Some("7".into()));
        let got = w.overlay("u", Writer::Decision, copy.clone(), Some("6"));
        assert_eq!(
            got.approved_digest, None,
            "a field the write left out was cleared by it"
        );
        assert_eq!(got.observed_generation, Some(2));
        assert_eq!(got.replicas, 3, "placement's fields kept");
        let reasons: Vec<&str> = got.conditions.iter().map(|c| c.reason.as_str()).collect();
        assert_eq!(reasons, ["InstancesReady", "PendingApproval"]);
    }
}
