//! Whether a component may be placed now, and with what (DESIGN §2 steps 2–3, issue #11), as
//! a pure function: (the component as stored, this operator's own last decision on it) →
//! [`Verdict`].
//!
//! Placement never trusts a status field it did not just decide: the `Approved` condition and
//! `approvedDigest` in the status are necessary, never sufficient. What is placed comes from
//! the component controller's own evaluation kept in memory (the trust index's facts for the
//! component), decided again under the current sources, so a deleted source revokes at once,
//! and a status written by someone else places nothing.
//!
//! Rules, in order:
//! 1. A component being deleted, or whose spec does not parse, runs nowhere: **Remove**.
//! 2. Without `Approved=True` in the status: **Remove** (pending, denied, revoked).
//! 3. `Approved=True` for an older generation: **Hold** — nothing new is placed and nothing is
//!    changed until the approval of the current generation is decided (a scale or an edit is
//!    not a revocation, so what runs keeps running meanwhile).
//! 4. No `approvedDigest`: **Remove**.
//! 5. No decision of this operator in memory (it just started): **Hold**.
//! 6. Its decision under the current sources does not approve: **Remove** (revocation reaches
//!    the nodes without waiting for the status round trip).
//! 7. The decision was on another digest or another request than the status and spec say (one
//!    of them is behind): **Hold**.
//! 8. Otherwise **Place** the approved digest with the decision's grant (request ∩ approval),
//!    in dev mode when the decision's level is `DevMode`.

use airssys_crds::capability::CapabilitySet;
use airssys_crds::component::{TrustLevel, WasmComponentStatus};
use airssys_crds::condition::{self, ConditionType};
use airssys_crds::{ConditionStatus, Digest};

use crate::trust::{ComponentFacts, TrustDecision};

/// What placement may do with a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Place its replicas with this content.
    Place {
        digest: Digest,
        grant: CapabilitySet,
        dev_mode: bool,
    },
    /// Change nothing: keep what runs, place nothing new. Says why.
    Hold(String),
    /// Run nowhere: delete every Placement. Says why.
    Remove(String),
}

/// What is known about one component.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    pub status: Option<&'a WasmComponentStatus>,
    /// The spec's capability request, parsed; `None` when the spec does not parse.
    pub request: Option<&'a CapabilitySet>,
    /// The facts of the component controller's last evaluation of it, from memory.
    pub facts: Option<&'a ComponentFacts>,
    /// The decision on those facts under the current sources and policy.
    pub decision: Option<&'a TrustDecision>,
}

/// Decides what placement may do; see the module documentation for the rules.
pub fn verdict(e: &Evidence<'_>) -> Verdict {
    if e.deleting {
        return Verdict::Remove("The component is being deleted.".to_owned());
    }
    let Some(request) = e.request else {
        return Verdict::Remove(
            "The spec does not parse; nothing runs until it is fixed.".to_owned(),
        );
    };
    let status = e.status.cloned().unwrap_or_default();
    let approved = condition::find(&status.conditions, ConditionType::Approved);
    let Some(approved) = approved.filter(|c| c.status == ConditionStatus::True) else {
        let why = approved.map_or_else(
            || "not decided yet".to_owned(),
            |c| format!("{} ({})", c.reason, c.status),
        );
        return Verdict::Remove(format!(
            "Not approved: {why}. Nothing runs until the component is approved (see the Approved condition)."
        ));
    };
    if approved.observed_generation != e.generation {
        return Verdict::Hold(format!(
            "The approval belongs to generation {}; waiting for the decision on generation {}.",
            generation(approved.observed_generation),
            generation(e.generation)
        ));
    }
    let Some(digest) = status
        .approved_digest
        .as_deref()
        .and_then(|d| Digest::parse(d).ok())
    else {
        return Verdict::Remove(
            "Approved, but no approved digest is recorded; nothing runs.".to_owned(),
        );
    };
    let (Some(facts), Some(decision)) = (e.facts, e.decision) else {
        return Verdict::Hold(
            "Waiting for the operator to evaluate the component since it started.".to_owned(),
        );
    };
    if !decision.approved {
        return Verdict::Remove(format!(
            "Not approved under the current TrustSources: {} ({}).",
            decision.message, decision.reason
        ));
    }
    if facts.digest.as_ref() != Some(&digest) {
        return Verdict::Hold(format!(
            "The status approves {digest}, but the last evaluation was of {}; waiting for the status to catch up.",
            facts.digest.as_ref().map_or("no digest", Digest::as_str)
        ));
    }
    if facts.request != *request {
        return Verdict::Hold(
            "The last evaluation was of another capability request; waiting for the decision on the current one."
                .to_owned(),
        );
    }
    Verdict::Place {
        digest,
        grant: decision.grant.clone(),
        dev_mode: decision.level == TrustLevel::DevMode,
    }
}

fn generation(g: Option<i64>) -> String {
    g.map_or_else(|| "unknown".to_owned(), |g| g.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use crate::events::Reason;
    use airssys_crds::capability::Capabilities;
    use airssys_crds::condition::Condition;

    fn digest(n: u8) -> Digest {
        Digest::from_sha256(&[n; 32])
    }

    fn caps(env: &[&str]) -> CapabilitySet {
        let caps: Capabilities = serde_json::from_value(serde_json::json!({
            "env": env.iter().map(|e| serde_json::json!({"name": e})).collect::<Vec<_>>(),
        }))
        .unwrap();
        CapabilitySet::parse(&caps).unwrap()
    }

    /// The status: `Approved` status and the generation it belongs to, and the approved digest.
    fn status(approved: Option<(ConditionStatus, i64)>, digest: Option<u8>) -> WasmComponentStatus {
        WasmComponentStatus {
            approved_digest: digest.map(|n| self::digest(n).to_string()),
            conditions: approved
                .map(|(s, g)| {
                    Condition::new(
                        ConditionType::Approved,
                        s,
                        Reason::TrustSourceMatched,
                        "m",
                        Some(g),
                    )
                })
                .into_iter()
                .collect(),
            ..WasmComponentStatus::default()
        }
    }

    fn decision(approved: bool, level: TrustLevel, grant: &[&str]) -> TrustDecision {
        TrustDecision {
            level,
            approved,
            reason: if approved {
                Reason::TrustSourceMatched
            } else {
                Reason::PendingApproval
            },
            matched_sources: Vec::new(),
            grant: caps(grant),
            message: "why".to_owned(),
        }
    }

    struct Row {
        rule: &'static str,
        generation: i64,
        deleting: bool,
        status: WasmComponentStatus,
        /// `None`: the spec does not parse.
        request: Option<CapabilitySet>,
        /// The facts' digest and request.
        facts: Option<(u8, CapabilitySet)>,
        decision: Option<TrustDecision>,
        /// "place", "hold" or "remove".
        want: &'static str,
    }

    fn row() -> Row {
        Row {
            rule: "",
            generation: 2,
            deleting: false,
            status: status(Some((ConditionStatus::True, 2)), Some(1)),
            request: Some(caps(&["A", "B"])),
            facts: Some((1, caps(&["A", "B"]))),
            decision: Some(decision(true, TrustLevel::Trusted, &["A"])),
            want: "place",
        }
    }

    #[test]
    fn verdict_spec() {
        let rows = [
            Row {
                rule: "approved for the current generation, and this operator agrees: place",
                ..row()
            },
            Row {
                rule: "a component being deleted runs nowhere",
                deleting: true,
                want: "remove",
                ..row()
            },
            Row {
                rule: "a spec that does not parse runs nowhere",
                request: None,
                want: "remove",
                ..row()
            },
            Row {
                rule: "no Approved condition: remove",
                status: status(None, Some(1)),
                want: "remove",
                ..row()
            },
            Row {
                rule: "Approved=False (pending, denied, revoked): remove",
                status: status(Some((ConditionStatus::False, 2)), None),
                want: "remove",
                ..row()
            },
            Row {
                rule: "Approved=Unknown (artifact unreachable before any verdict): remove",
                status: status(Some((ConditionStatus::Unknown, 2)), None),
                want: "remove",
                ..row()
            },
            Row {
                rule: "Approved=True of an older generation: hold, never place",
                status: status(Some((ConditionStatus::True, 1)), Some(1)),
                want: "hold",
                ..row()
            },
            Row {
                rule: "Approved=True without approvedDigest: remove",
                status: status(Some((ConditionStatus::True, 2)), None),
                want: "remove",
                ..row()
            },
            Row {
                rule: "no decision of this operator in memory yet: hold",
                facts: None,
                decision: None,
                want: "hold",
                ..row()
            },
            Row {
                rule: "a status approval this operator's decision does not share (forged): remove",
                decision: Some(decision(false, TrustLevel::Unknown, &[])),
                want: "remove",
                ..row()
            },
            Row {
                rule: "a source deleted since the status was written: remove at once",
                decision: Some(decision(false, TrustLevel::Unknown, &[])),
                status: status(Some((ConditionStatus::True, 2)), Some(1)),
                want: "remove",
                ..row()
            },
            Row {
                rule: "the status approves another digest than the one decided: hold",
                facts: Some((7, caps(&["A", "B"]))),
                want: "hold",
                ..row()
            },
            Row {
                rule: "the decision was on another request than the spec's: hold",
                facts: Some((1, caps(&["A"]))),
                want: "hold",
                ..row()
            },
        ];
        for r in rows {
            let facts = r
                .facts
                .map(|(d, req)| ComponentFacts::new("ns", "c", digest(d), req));
            let got = verdict(&Evidence {
                generation: Some(r.generation),
                deleting: r.deleting,
                status: Some(&r.status),
                request: r.request.as_ref(),
                facts: facts.as_ref(),
                decision: r.decision.as_ref(),
            });
            let kind = match &got {
                Verdict::Place { .. } => "place",
                Verdict::Hold(_) => "hold",
                Verdict::Remove(_) => "remove",
            };
            assert_eq!(kind, r.want, "{}: {got:?}", r.rule);
        }
    }

    #[test]
    fn a_placement_carries_the_decided_grant_not_the_request() {
        let got = verdict(&Evidence {
            generation: Some(2),
            deleting: false,
            status: Some(&status(Some((ConditionStatus::True, 2)), Some(1))),
            request: Some(&caps(&["A", "B"])),
            facts: Some(&ComponentFacts::new(
                "ns",
                "c",
                digest(1),
                caps(&["A", "B"]),
            )),
            decision: Some(&decision(true, TrustLevel::DevMode, &["A"])),
        });
        assert_eq!(
            got,
            Verdict::Place {
                digest: digest(1),
                grant: caps(&["A"]),
                dev_mode: true
            }
        );
    }
}
