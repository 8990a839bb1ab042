//! A component's Placements summed into its status (DESIGN §2 step 4), as a pure function:
//! (what placement decided, what the agents report on the Placements) → [`Summary`]: the
//! fields of `WasmComponent.status` the placement controller owns.
//!
//! Rules:
//! - `replicas` (the `/scale` status) counts the replicas placed; `nodes[]` has one entry per
//!   node with replicas, in node order.
//! - A node's replicas count as ready when its agent reports instances running the approved
//!   digest; a node never counts more ready than it was given. The report may describe an
//!   older generation of the Placement (a scale or a new component generation rewrote it and
//!   the agent has not written back yet): instances of the approved digest keep serving
//!   through such a change, so counting them keeps `readyReplicas` from dipping at every
//!   `kubectl scale`. A new digest is never counted until the agent reports it.
//! - `Scheduled`: `NotApproved` when nothing may run; `ScaledToZero` for `replicas: 0`;
//!   `Unschedulable` with placement's explanation when replicas are left unplaced; `Placed`
//!   otherwise. While placement holds (waiting for the decision on a new generation) the
//!   condition stays as it was.
//! - `Ready`: `True` (`InstancesReady`) when as many replicas are ready as requested; else
//!   `False` with the first node's `FetchFailed`/`CompileFailed`/`StartFailed` when an agent reports one,
//!   else `InstancesStarting` with the counts.
//! - `Degraded`: `True` (`CrashLoop`) when any Placement reports `Degraded=True`, naming the
//!   nodes; `Healthy` otherwise.
//! - `lastTransitionTime` moves only when a condition's status changes.

use airssys_crds::component::NodeSummary;
use airssys_crds::condition::{self, Condition, ConditionType};
use airssys_crds::{ConditionStatus, Digest, PlacementStatus};

use crate::events::Reason;
use crate::placement::NodeShare;

/// The most bytes of a per-node message.
const NODE_MESSAGE_LIMIT: usize = 256;
/// How many nodes a condition message names before it counts the rest.
const NODES_NAMED: usize = 3;
/// A node's message while its agent has not reported on the Placement.
const WAITING_FOR_AGENT: &str = "Waiting for the agent's report.";

/// What placement decided for the component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduling<'a> {
    /// Nothing may run; why.
    NotApproved(&'a str),
    /// Nothing was changed while waiting; why.
    Held(&'a str),
    /// Placed as planned; the shortfall message when replicas are left unplaced.
    Planned { shortfall: Option<&'a str> },
}

/// One of the component's Placements as stored.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    pub node: &'a str,
    pub status: Option<&'a PlacementStatus>,
}

/// Everything the summary depends on.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The component's `metadata.generation`, for the conditions' `observedGeneration`.
    pub generation: Option<i64>,
    /// `spec.replicas`.
    pub requested: u32,
    pub scheduling: Scheduling<'a>,
    /// Replicas per node: what was just planned, what runs while held, nothing when removed.
    pub shares: &'a [NodeShare],
    /// The digest instances must run to count as ready.
    pub approved_digest: Option<&'a Digest>,
    pub reports: &'a [Report<'a>],
    /// The status's conditions now (for transition times, and `Scheduled` while held).
    pub previous: &'a [Condition],
}

/// The status fields the placement controller owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub replicas: i32,
    pub ready_replicas: i32,
    pub nodes: Vec<NodeSummary>,
    /// `Scheduled`, `Ready`, `Degraded`, in that order.
    pub conditions: Vec<Condition>,
    /// Placed, and no agent has reported on any of its Placements yet.
    pub awaits_first_report: bool,
}

impl Summary {
    /// Whether writing `self` over a status holding `replicas`, `ready_replicas`, `nodes` and
    /// `conditions` would change anything but timestamps.
    pub fn differs_from(
        &self,
        replicas: i32,
        ready_replicas: i32,
        nodes: &[NodeSummary],
        conditions: &[Condition],
    ) -> bool {
        let same_condition = |c: &Condition| {
            condition::find(conditions, c.type_).is_some_and(|old| {
                (
                    old.status,
                    &old.reason,
                    &old.message,
                    old.observed_generation,
                ) == (c.status, &c.reason, &c.message, c.observed_generation)
            })
        };
        self.replicas != replicas
            || self.ready_replicas != ready_replicas
            || self.nodes != nodes
            || !self.conditions.iter().all(same_condition)
    }
}

fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn reported_condition(report: &Report<'_>, type_: ConditionType) -> Option<Condition> {
    report
        .status
        .and_then(|s| condition::find(&s.conditions, type_))
        .cloned()
}

/// Names the first few of `nodes`, counting the rest.
fn name_nodes(nodes: &[&str]) -> String {
    let mut text = nodes
        .iter()
        .take(NODES_NAMED)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if nodes.len() > NODES_NAMED {
        text.push_str(&format!(" and {} more", nodes.len() - NODES_NAMED));
    }
    text
}

/// Sums the Placements into the status; see the module documentation for the rules.
pub fn summarize(input: &Input<'_>) -> Summary {
    let g = input.generation;
    let report_of = |node: &str| input.reports.iter().find(|r| r.node == node);

    let mut nodes = Vec::with_capacity(input.shares.len());
    let mut ready_total: u32 = 0;
    for share in input.shares {
        let report = report_of(&share.node);
        let ready = report
            .and_then(|r| r.status)
            .filter(|s| s.digest.is_some() && s.digest.as_ref() == input.approved_digest)
            .map_or(0, |s| u32::try_from(s.ready_instances).unwrap_or(0))
            .min(share.instances);
        ready_total = ready_total.saturating_add(ready);
        let degraded = report
            .and_then(|r| reported_condition(r, ConditionType::Degraded))
            .filter(Condition::is_true);
        let message = match (report, degraded) {
            // Just written and not in the watch yet: to the user, the same wait as below (and
            // one status write fewer when the watch catches up).
            (None, _) => Some(WAITING_FOR_AGENT.to_owned()),
            (Some(_), Some(d)) => Some(format!("{}: {}", d.reason, d.message)),
            (Some(r), None) => match r.status.and_then(|s| s.last_error.clone()) {
                Some(e) if ready < share.instances => Some(e),
                _ if r.status.is_none() => Some(WAITING_FOR_AGENT.to_owned()),
                _ => None,
            },
        };
        nodes.push(NodeSummary {
            node: share.node.clone(),
            replicas: int(share.instances),
            ready_replicas: int(ready),
            message: message.map(|m| condition::bounded(m, NODE_MESSAGE_LIMIT)),
        });
    }
    let placed: u32 = input.shares.iter().map(|s| s.instances).sum();
    let requested = input.requested;

    let scheduled = match input.scheduling {
        Scheduling::NotApproved(why) => Condition::new(
            ConditionType::Scheduled,
            ConditionStatus::False,
            Reason::NotApproved,
            why,
            g,
        ),
        Scheduling::Held(why) => condition::find(input.previous, ConditionType::Scheduled)
            .cloned()
            .unwrap_or_else(|| {
                Condition::new(
                    ConditionType::Scheduled,
                    ConditionStatus::False,
                    Reason::NotApproved,
                    why,
                    g,
                )
            }),
        Scheduling::Planned { .. } if requested == 0 => Condition::new(
            ConditionType::Scheduled,
            ConditionStatus::True,
            Reason::ScaledToZero,
            "replicas is 0: nothing is placed.",
            g,
        ),
        Scheduling::Planned {
            shortfall: Some(why),
        } => Condition::new(
            ConditionType::Scheduled,
            ConditionStatus::False,
            Reason::Unschedulable,
            why,
            g,
        ),
        Scheduling::Planned { shortfall: None } => Condition::new(
            ConditionType::Scheduled,
            ConditionStatus::True,
            Reason::Placed,
            format!(
                "{placed} replica(s) placed on {} node(s).",
                input.shares.len()
            ),
            g,
        ),
    };

    let ready = if let Scheduling::NotApproved(_) = input.scheduling {
        Condition::new(
            ConditionType::Ready,
            ConditionStatus::False,
            Reason::NotApproved,
            "Not approved: nothing runs.",
            g,
        )
    } else if ready_total >= requested {
        let message = if requested == 0 {
            "Scaled to zero: nothing to run.".to_owned()
        } else {
            format!("{ready_total} of {requested} replica(s) ready.")
        };
        Condition::new(
            ConditionType::Ready,
            ConditionStatus::True,
            Reason::InstancesReady,
            message,
            g,
        )
    } else {
        let mut counts = format!("{ready_total} of {requested} replica(s) ready");
        if placed < requested {
            counts.push_str(&format!("; {} unplaced", requested - placed));
        }
        // An agent that cannot fetch or compile says more than "starting".
        let failing = input.shares.iter().find_map(|share| {
            let c =
                report_of(&share.node).and_then(|r| reported_condition(r, ConditionType::Ready))?;
            let reason = c.reason()?;
            matches!(
                reason,
                Reason::FetchFailed | Reason::CompileFailed | Reason::StartFailed
            )
            .then(|| {
                (
                    reason,
                    format!("{counts}; node {}: {}", share.node, c.message),
                )
            })
        });
        let (reason, message) =
            failing.unwrap_or((Reason::InstancesStarting, format!("{counts}.")));
        Condition::new(
            ConditionType::Ready,
            ConditionStatus::False,
            reason,
            message,
            g,
        )
    };

    let crashing: Vec<&str> = input
        .shares
        .iter()
        .filter_map(|share| {
            let r = report_of(&share.node)?;
            reported_condition(r, ConditionType::Degraded)
                .filter(Condition::is_true)
                .map(|_| share.node.as_str())
        })
        .collect();
    let degraded = if crashing.is_empty() {
        Condition::new(
            ConditionType::Degraded,
            ConditionStatus::False,
            Reason::Healthy,
            "No instance is crash looping.",
            g,
        )
    } else {
        let first = report_of(crashing[0])
            .and_then(|r| reported_condition(r, ConditionType::Degraded))
            .map(|c| c.message)
            .unwrap_or_default();
        Condition::new(
            ConditionType::Degraded,
            ConditionStatus::True,
            Reason::CrashLoop,
            format!(
                "Instances crash loop on {} node(s): {}. {}: {first}",
                crashing.len(),
                name_nodes(&crashing),
                crashing[0]
            ),
            g,
        )
    };

    // Transition times carry over while a condition's status holds.
    let mut conditions: Vec<Condition> = [
        ConditionType::Scheduled,
        ConditionType::Ready,
        ConditionType::Degraded,
    ]
    .iter()
    .filter_map(|t| condition::find(input.previous, *t).cloned())
    .collect();
    for new in [scheduled, ready, degraded] {
        condition::set(&mut conditions, new);
    }
    let order = |c: &Condition| match c.type_ {
        ConditionType::Scheduled => 0,
        ConditionType::Ready => 1,
        _ => 2,
    };
    conditions.sort_by_key(order);

    let awaits_first_report = !input.shares.is_empty()
        && input
            .shares
            .iter()
            .all(|share| report_of(&share.node).and_then(|r| r.status).is_none());
    Summary {
        replicas: int(placed),
        ready_replicas: int(ready_total),
        nodes,
        conditions,
        awaits_first_report,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::from_sha256(&[n; 32])
    }

    fn share(node: &str, instances: u32) -> NodeShare {
        NodeShare {
            node: node.to_owned(),
            instances,
        }
    }

    /// An agent's report: ready instances, the digest they run, the Placement generation it
    /// describes, and its `Ready`/`Degraded` reasons when set.
    #[derive(Clone)]
    struct Agent {
        ready: i32,
        digest: u8,
        observed: i64,
        ready_reason: Option<(ConditionStatus, Reason, &'static str)>,
        degraded: Option<&'static str>,
        last_error: Option<&'static str>,
    }

    const OK: Agent = Agent {
        ready: 0,
        digest: 1,
        observed: 1,
        ready_reason: None,
        degraded: None,
        last_error: None,
    };

    fn status(a: &Agent) -> PlacementStatus {
        let mut conditions = Vec::new();
        if let Some((s, r, m)) = a.ready_reason {
            conditions.push(Condition::new(ConditionType::Ready, s, r, m, Some(1)));
        }
        if let Some(m) = a.degraded {
            conditions.push(Condition::new(
                ConditionType::Degraded,
                ConditionStatus::True,
                Reason::CrashLoop,
                m,
                Some(1),
            ));
        }
        PlacementStatus {
            observed_generation: Some(a.observed),
            digest: Some(digest(a.digest)),
            ready_instances: a.ready,
            restarts: 0,
            conditions,
            last_error: a.last_error.map(str::to_owned),
        }
    }

    struct Row {
        rule: &'static str,
        requested: u32,
        scheduling: Scheduling<'static>,
        shares: Vec<NodeShare>,
        /// Node and its report (`None`: the Placement has no status yet). Placements are at
        /// generation 1.
        reports: Vec<(&'static str, Option<Agent>)>,
        replicas: i32,
        ready_replicas: i32,
        /// (status, reason) of Scheduled, Ready, Degraded.
        scheduled: (ConditionStatus, Reason),
        ready: (ConditionStatus, Reason),
        degraded: (ConditionStatus, Reason),
        /// Substrings of the Scheduled, Ready and Degraded messages.
        messages: &'static [&'static str],
    }

    use ConditionStatus::{False, True};

    fn row() -> Row {
        Row {
            rule: "",
            requested: 3,
            scheduling: Scheduling::Planned { shortfall: None },
            shares: vec![share("a", 1), share("b", 1), share("c", 1)],
            reports: vec![
                ("a", Some(Agent { ready: 1, ..OK })),
                ("b", Some(Agent { ready: 1, ..OK })),
                ("c", Some(Agent { ready: 1, ..OK })),
            ],
            replicas: 3,
            ready_replicas: 3,
            scheduled: (True, Reason::Placed),
            ready: (True, Reason::InstancesReady),
            degraded: (False, Reason::Healthy),
            messages: &[],
        }
    }

    #[test]
    fn summary_spec() {
        let rows = [
            Row {
                rule: "every replica placed and ready: Placed, InstancesReady, Healthy",
                messages: &[
                    "3 replica(s) placed on 3 node(s)",
                    "3 of 3 replica(s) ready",
                ],
                ..row()
            },
            Row {
                rule: "no reports yet: placed, starting",
                reports: vec![("a", None), ("b", None), ("c", None)],
                ready_replicas: 0,
                ready: (False, Reason::InstancesStarting),
                messages: &["0 of 3 replica(s) ready."],
                ..row()
            },
            Row {
                rule: "a report about an older generation of the Placement counts its instances of the approved digest",
                reports: vec![
                    ("a", Some(Agent { ready: 1, ..OK })),
                    (
                        "b",
                        Some(Agent {
                            ready: 1,
                            observed: 0,
                            ..OK
                        }),
                    ),
                    ("c", Some(Agent { ready: 1, ..OK })),
                ],
                ready_replicas: 3,
                ready: (True, Reason::InstancesReady),
                messages: &["3 of 3 replica(s) ready"],
                ..row()
            },
            Row {
                rule: "instances of another digest than the approved one do not count",
                reports: vec![
                    ("a", Some(Agent { ready: 1, ..OK })),
                    (
                        "b",
                        Some(Agent {
                            ready: 1,
                            digest: 9,
                            ..OK
                        }),
                    ),
                    ("c", Some(Agent { ready: 1, ..OK })),
                ],
                ready_replicas: 2,
                ready: (False, Reason::InstancesStarting),
                ..row()
            },
            Row {
                rule: "a node never counts more ready than it was given",
                shares: vec![share("a", 2)],
                reports: vec![("a", Some(Agent { ready: 5, ..OK }))],
                requested: 2,
                replicas: 2,
                ready_replicas: 2,
                messages: &["2 replica(s) placed on 1 node(s)"],
                ..row()
            },
            Row {
                rule: "a report of a node without a share does not count",
                shares: vec![share("a", 1)],
                reports: vec![
                    ("a", Some(Agent { ready: 1, ..OK })),
                    ("z", Some(Agent { ready: 1, ..OK })),
                ],
                requested: 2,
                scheduling: Scheduling::Planned {
                    shortfall: Some("1 of 2 replicas unplaced: 2 nodes are full."),
                },
                replicas: 1,
                ready_replicas: 1,
                scheduled: (False, Reason::Unschedulable),
                ready: (False, Reason::InstancesStarting),
                messages: &["2 nodes are full", "1 of 2 replica(s) ready; 1 unplaced"],
                ..row()
            },
            Row {
                rule: "not approved: nothing scheduled, not ready, with why",
                scheduling: Scheduling::NotApproved("Not approved: PendingApproval (False)."),
                shares: Vec::new(),
                replicas: 0,
                ready_replicas: 0,
                scheduled: (False, Reason::NotApproved),
                ready: (False, Reason::NotApproved),
                messages: &["PendingApproval", "nothing runs"],
                ..row()
            },
            Row {
                rule: "replicas 0: ScaledToZero, ready",
                requested: 0,
                shares: Vec::new(),
                reports: Vec::new(),
                replicas: 0,
                ready_replicas: 0,
                scheduled: (True, Reason::ScaledToZero),
                ready: (True, Reason::InstancesReady),
                messages: &["replicas is 0", "Scaled to zero"],
                ..row()
            },
            Row {
                rule: "a crash loop on a node: Degraded=CrashLoop naming the node",
                reports: vec![
                    ("a", Some(Agent { ready: 1, ..OK })),
                    (
                        "b",
                        Some(Agent {
                            degraded: Some("trap: unreachable, 5 restarts"),
                            ..OK
                        }),
                    ),
                    ("c", Some(Agent { ready: 1, ..OK })),
                ],
                ready_replicas: 2,
                ready: (False, Reason::InstancesStarting),
                degraded: (True, Reason::CrashLoop),
                messages: &["on 1 node(s): b", "trap: unreachable"],
                ..row()
            },
            Row {
                rule: "an agent that cannot fetch says so in Ready",
                reports: vec![
                    ("a", Some(Agent { ready: 1, ..OK })),
                    (
                        "b",
                        Some(Agent {
                            ready_reason: Some((False, Reason::FetchFailed, "blob 404")),
                            ..OK
                        }),
                    ),
                    ("c", Some(Agent { ready: 1, ..OK })),
                ],
                ready_replicas: 2,
                ready: (False, Reason::FetchFailed),
                messages: &["node b: blob 404"],
                ..row()
            },
            Row {
                rule: "unplaced replicas: Unschedulable with placement's message",
                requested: 5,
                scheduling: Scheduling::Planned {
                    shortfall: Some("2 of 5 replicas unplaced: 3 nodes are full."),
                },
                scheduled: (False, Reason::Unschedulable),
                ready: (False, Reason::InstancesStarting),
                messages: &[
                    "2 of 5 replicas unplaced",
                    "3 of 5 replica(s) ready; 2 unplaced",
                ],
                ..row()
            },
            Row {
                rule: "held without an earlier Scheduled: NotApproved with why; counts what runs",
                scheduling: Scheduling::Held("waiting for the decision on generation 3"),
                requested: 5,
                scheduled: (False, Reason::NotApproved),
                ready: (False, Reason::InstancesStarting),
                messages: &["generation 3", "3 of 5 replica(s) ready"],
                ..row()
            },
        ];
        for r in rows {
            let statuses: Vec<(&str, Option<PlacementStatus>)> = r
                .reports
                .iter()
                .map(|(n, a)| (*n, a.as_ref().map(status)))
                .collect();
            let reports: Vec<Report<'_>> = statuses
                .iter()
                .map(|(node, s)| Report {
                    node,
                    status: s.as_ref(),
                })
                .collect();
            let approved = digest(1);
            let got = summarize(&Input {
                generation: Some(4),
                requested: r.requested,
                scheduling: r.scheduling,
                shares: &r.shares,
                approved_digest: Some(&approved),
                reports: &reports,
                previous: &[],
            });
            let rule = r.rule;
            assert_eq!(got.replicas, r.replicas, "{rule}: replicas");
            assert_eq!(got.ready_replicas, r.ready_replicas, "{rule}: ready");
            let got_conditions: Vec<(ConditionType, ConditionStatus, String)> = got
                .conditions
                .iter()
                .map(|c| (c.type_, c.status, c.reason.clone()))
                .collect();
            let want = [
                (ConditionType::Scheduled, r.scheduled),
                (ConditionType::Ready, r.ready),
                (ConditionType::Degraded, r.degraded),
            ]
            .map(|(t, (s, reason))| (t, s, reason.to_string()));
            assert_eq!(got_conditions, want, "{rule}");
            assert!(
                got.conditions
                    .iter()
                    .all(|c| c.observed_generation == Some(4)),
                "{rule}: conditions carry the component's generation"
            );
            let messages: String = got
                .conditions
                .iter()
                .map(|c| c.message.as_str())
                .collect::<Vec<_>>()
                .join(" | ");
            for m in r.messages {
                assert!(messages.contains(m), "{rule}: {m:?} not in {messages:?}");
            }
            let node_total: i32 = got.nodes.iter().map(|n| n.ready_replicas).sum();
            assert_eq!(node_total, got.ready_replicas, "{rule}: nodes sum up");
        }
    }

    #[test]
    fn a_summary_awaits_the_first_report_until_any_agent_reports() {
        let shares = [share("a", 1), share("b", 1)];
        let reported = status(&Agent { ready: 1, ..OK });
        let approved = digest(1);
        let awaits = |reports: &[Report<'_>]| {
            summarize(&Input {
                generation: Some(1),
                requested: 2,
                scheduling: Scheduling::Planned { shortfall: None },
                shares: &shares,
                approved_digest: Some(&approved),
                reports,
                previous: &[],
            })
            .awaits_first_report
        };
        let none = |node| Report { node, status: None };
        // (rule, reports, awaits)
        let cases: [(&str, Vec<Report<'_>>, bool); 4] = [
            ("the Placements are not in the watch yet", vec![], true),
            (
                "in the watch, no status yet",
                vec![none("a"), none("b")],
                true,
            ),
            (
                "one agent reported",
                vec![
                    none("a"),
                    Report {
                        node: "b",
                        status: Some(&reported),
                    },
                ],
                false,
            ),
            (
                "a Placement only in the watch, the other not yet",
                vec![none("a")],
                true,
            ),
        ];
        for (rule, reports, expected) in cases {
            assert_eq!(awaits(&reports), expected, "{rule}");
        }
        let nothing_placed = summarize(&Input {
            generation: Some(1),
            requested: 0,
            scheduling: Scheduling::Planned { shortfall: None },
            shares: &[],
            approved_digest: Some(&approved),
            reports: &[],
            previous: &[],
        });
        assert!(
            !nothing_placed.awaits_first_report,
            "no replicas: nothing to wait for"
        );
    }

    #[test]
    fn held_keeps_the_earlier_scheduled_condition_and_transition_times_hold() {
        let mut earlier = Condition::new(
            ConditionType::Scheduled,
            ConditionStatus::True,
            Reason::Placed,
            "3 replica(s) placed on 3 node(s).",
            Some(1),
        );
        earlier.last_transition_time = "t0".into();
        let mut ready = Condition::new(
            ConditionType::Ready,
            ConditionStatus::True,
            Reason::InstancesReady,
            "old",
            Some(1),
        );
        ready.last_transition_time = "t1".into();
        let previous = vec![earlier.clone(), ready];
        let shares = [share("a", 1)];
        let got = summarize(&Input {
            generation: Some(2),
            requested: 1,
            scheduling: Scheduling::Held("waiting"),
            shares: &shares,
            approved_digest: None,
            reports: &[],
            previous: &previous,
        });
        assert_eq!(got.conditions[0], earlier, "Scheduled is left as it was");
        assert_eq!(got.conditions[1].status, ConditionStatus::False);
        assert_ne!(
            got.conditions[1].last_transition_time, "t1",
            "Ready changed status: its time moves"
        );
        let again = summarize(&Input {
            previous: &got.conditions,
            ..Input {
                generation: Some(2),
                requested: 1,
                scheduling: Scheduling::Held("waiting"),
                shares: &shares,
                approved_digest: None,
                reports: &[],
                previous: &[],
            }
        });
        assert!(
            !again.differs_from(
                got.replicas,
                got.ready_replicas,
                &got.nodes,
                &got.conditions
            ),
            "the same inputs give the same status: no write, no flapping"
        );
        assert!(again.differs_from(0, 0, &got.nodes, &got.conditions));
    }
}
