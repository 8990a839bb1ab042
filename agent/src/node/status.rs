//! Pure decisions about a Placement's status: what it says ([`placement_status`],
//! [`ignored_status`], [`stopped_status`]), whether an actor counts as ready ([`is_ready`]),
//! and when to write it ([`when_to_write`]). The node loop samples the actors and writes.

use std::time::{Duration, Instant};

use airssys_crds::artifact::Digest;
use airssys_crds::condition::{self, Condition, ConditionType};
use airssys_crds::placement::PlacementStatus;
use airssys_crds::reason::Reason;

use crate::actor::ActorState;

/// Most bytes of `lastError` (the CRD's bound).
pub const LAST_ERROR_LIMIT: usize = 4096;

/// What the actor of a Placement does, sampled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// The Placement digest it runs.
    pub digest: Digest,
    /// Replicas it runs.
    pub instances: i32,
    /// It runs exactly the wanted spec (digest, grant, limits, replicas, config).
    pub current: bool,
    /// See [`is_ready`].
    pub ready: bool,
    pub crash_looping: bool,
    pub restarts: u64,
}

/// Why the wanted revision does not run: `InvalidSpec`, `FetchFailed`, `CompileFailed` or
/// `StartFailed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
}

/// Everything a Placement's status is computed from.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The Placement's `metadata.generation`.
    pub generation: Option<i64>,
    /// The digest the Placement wants.
    pub wanted: &'a Digest,
    pub running: Option<&'a Running>,
    pub failure: Option<&'a Failure>,
    /// Config the component does not get (see `placements::prepare`).
    pub notes: &'a [String],
}

/// Whether an actor serves: it has run (an instance started, or a message was handled), is
/// not stopped, and is not crash-looping. A single crash or an in-place update (the mailbox
/// stays, the next message goes to the new revision) does not make it unready; the shared
/// `Starting` state is also set whenever an extra instance starts on demand, so it cannot
/// mean "not ready" once the component has run.
pub fn is_ready(state: ActorState, has_run: bool, crash_looping: bool) -> bool {
    has_run && state != ActorState::Stopped && !crash_looping
}

/// The status of a Placement this node runs (or tries to). `previous` keeps each condition's
/// `lastTransitionTime` while its status holds.
pub fn placement_status(obs: Observed<'_>, previous: Option<&PlacementStatus>) -> PlacementStatus {
    let serving = obs.running.filter(|r| r.ready);
    let ready_instances = serving.map_or(0, |r| r.instances.max(0));
    let (ready, reason, message) = match (obs.failure, obs.running) {
        (Some(f), Some(r)) if r.ready => (
            false,
            f.reason,
            format!(
                "{}; the previous revision ({}) keeps running meanwhile",
                f.message, r.digest
            ),
        ),
        (Some(f), _) => (false, f.reason, f.message.clone()),
        (None, Some(r)) if r.ready && r.current => (
            true,
            Reason::InstancesReady,
            format!("{} instance(s) run {}", r.instances, r.digest),
        ),
        (None, Some(r)) if r.crash_looping => (
            false,
            Reason::InstancesStarting,
            "instances crash and restart with backoff; see Degraded and lastError".to_owned(),
        ),
        (None, Some(r)) if r.ready => (
            false,
            Reason::InstancesStarting,
            format!("updating from {} to {}", r.digest, obs.wanted),
        ),
        (None, _) => (
            false,
            Reason::InstancesStarting,
            format!("fetching, compiling and starting {}", obs.wanted),
        ),
    };
    let crash_looping = obs.running.is_some_and(|r| r.crash_looping);
    let degraded = if crash_looping {
        Condition::new(
            ConditionType::Degraded,
            true.into(),
            Reason::CrashLoop,
            "instances restart repeatedly; the agent backs off between restarts",
            obs.generation,
        )
    } else {
        Condition::new(
            ConditionType::Degraded,
            false.into(),
            Reason::Healthy,
            "",
            obs.generation,
        )
    };
    let mut errors: Vec<String> = Vec::new();
    if let Some(f) = obs.failure {
        errors.push(f.message.clone());
    }
    if crash_looping {
        errors.push(format!(
            "instances are crash-looping ({} restarts); the audit log and Killed Events say why",
            obs.running.map_or(0, |r| r.restarts)
        ));
    }
    errors.extend(obs.notes.iter().cloned());
    let mut status = PlacementStatus {
        observed_generation: obs.generation,
        digest: serving.map(|r| r.digest.clone()),
        ready_instances,
        restarts: obs
            .running
            .map_or(0, |r| i64::try_from(r.restarts).unwrap_or(i64::MAX)),
        conditions: previous.map(|p| p.conditions.clone()).unwrap_or_default(),
        last_error: (!errors.is_empty())
            .then(|| condition::bounded(errors.join("; "), LAST_ERROR_LIMIT)),
    };
    condition::set(
        &mut status.conditions,
        Condition::new(
            ConditionType::Ready,
            ready.into(),
            reason,
            message,
            obs.generation,
        ),
    );
    condition::set(&mut status.conditions, degraded);
    status
}

/// The status of a Placement this node does not run (another Placement for the same
/// component runs instead).
pub fn ignored_status(
    generation: Option<i64>,
    why: &str,
    previous: Option<&PlacementStatus>,
) -> PlacementStatus {
    let mut status = PlacementStatus {
        observed_generation: generation,
        digest: None,
        ready_instances: 0,
        restarts: 0,
        conditions: previous.map(|p| p.conditions.clone()).unwrap_or_default(),
        last_error: Some(condition::bounded(why.to_owned(), LAST_ERROR_LIMIT)),
    };
    condition::set(
        &mut status.conditions,
        Condition::new(
            ConditionType::Ready,
            false.into(),
            Reason::InstancesStarting,
            why,
            generation,
        ),
    );
    condition::set(
        &mut status.conditions,
        Condition::new(
            ConditionType::Degraded,
            false.into(),
            Reason::Healthy,
            "",
            generation,
        ),
    );
    status
}

/// The last status of a Placement when its agent shuts down: nothing runs on the node any
/// more (its Lease is released too, so the operator can move the replicas at once).
pub fn stopped_status(
    node: &str,
    previous: &PlacementStatus,
    generation: Option<i64>,
) -> PlacementStatus {
    let mut status = PlacementStatus {
        observed_generation: generation,
        digest: None,
        ready_instances: 0,
        restarts: previous.restarts,
        conditions: previous.conditions.clone(),
        last_error: None,
    };
    condition::set(
        &mut status.conditions,
        Condition::new(
            ConditionType::Ready,
            false.into(),
            Reason::InstancesStarting,
            format!(
                "the agent on node {node} stopped; instances start again when it is back or \
                 when the operator places them elsewhere"
            ),
            generation,
        ),
    );
    status
}

/// How often status is written: at most `burst` writes at once, then `per_second`, and an
/// unchanged status again after `resync` (repairs a status someone else changed or lost).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WritePolicy {
    pub burst: f64,
    pub per_second: f64,
    pub resync: Duration,
    /// How long a new Placement's first status may wait while its instances are only
    /// starting: a start that is quick writes once ("ready"), not "starting" then "ready",
    /// which halves the writes (the agent's and the operator's summary) when many components
    /// arrive at once.
    pub first_report_after: Duration,
}

impl Default for WritePolicy {
    /// A burst of 3 lets "starting" then "ready" out without delay (apply → Ready latency);
    /// after it, one write a second per Placement.
    fn default() -> Self {
        Self {
            burst: 3.0,
            per_second: 1.0,
            resync: Duration::from_secs(30),
            first_report_after: Duration::from_secs(1),
        }
    }
}

/// One Placement's status-write bookkeeping: what was last written, when, and its token
/// bucket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteBook {
    pub written: Option<PlacementStatus>,
    pub written_at: Option<Instant>,
    /// When the agent first saw the Placement.
    pub seen_at: Option<Instant>,
    tokens: f64,
    refilled: Option<Instant>,
}

impl WriteBook {
    /// The book of a Placement first seen at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            seen_at: Some(now),
            ..Self::default()
        }
    }

    fn tokens(&self, now: Instant, policy: &WritePolicy) -> f64 {
        match self.refilled {
            None => policy.burst,
            Some(at) => (self.tokens
                + now.saturating_duration_since(at).as_secs_f64() * policy.per_second)
                .min(policy.burst),
        }
    }

    /// Records a write of `status` at `now`.
    pub fn wrote(&mut self, status: PlacementStatus, now: Instant, policy: &WritePolicy) {
        self.tokens = (self.tokens(now, policy) - 1.0).max(0.0);
        self.refilled = Some(now);
        self.written = Some(status);
        self.written_at = Some(now);
    }
}

/// When to write `new`: at once if it differs from what was written and the bucket has a
/// token, else when it will have one; an unchanged status at its resync time. Never "never":
/// the caller keeps the earliest time as a deadline.
pub fn when_to_write(
    book: &WriteBook,
    new: &PlacementStatus,
    now: Instant,
    policy: &WritePolicy,
) -> Instant {
    let due = match (&book.written, book.written_at) {
        (Some(old), Some(at)) if old == new => at + policy.resync,
        (None, _) if only_starting(new) => book
            .seen_at
            .map_or(now, |seen| seen + policy.first_report_after),
        _ => {
            let missing = 1.0 - book.tokens(now, policy);
            if missing <= 0.0 {
                now
            } else {
                now + Duration::from_secs_f64(missing / policy.per_second.max(f64::EPSILON))
            }
        }
    };
    due.max(now)
}

/// Instances starting, nothing failed and nothing ready yet.
fn only_starting(status: &PlacementStatus) -> bool {
    let starting = condition::find(&status.conditions, ConditionType::Ready)
        .is_some_and(|c| c.reason() == Some(Reason::InstancesStarting));
    let degraded = condition::is_true(&status.conditions, ConditionType::Degraded);
    starting && !degraded && status.last_error.is_none() && status.ready_instances == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

    use super::*;
    use airssys_crds::condition::ConditionStatus;

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn running(d: char, ready: bool, current: bool, crash_looping: bool) -> Running {
        Running {
            digest: digest(d),
            instances: 2,
            current,
            ready,
            crash_looping,
            restarts: 7,
        }
    }

    fn cond(s: &PlacementStatus, t: ConditionType) -> (ConditionStatus, String) {
        let c = condition::find(&s.conditions, t).unwrap();
        (c.status, c.reason.clone())
    }

    #[test]
    fn readiness_rules() {
        use ActorState::*;
        let rows = [
            ("never ran: not ready", Running, false, false, false),
            ("running: ready", Running, true, false, true),
            (
                "an extra instance starting (or an in-place swap): still ready",
                Starting,
                true,
                false,
                true,
            ),
            (
                "one crash backing off: still ready",
                BackingOff,
                true,
                false,
                true,
            ),
            ("crash-looping: not ready", BackingOff, true, true, false),
            ("stopped: not ready", Stopped, true, false, false),
        ];
        for (rule, state, has_run, looping, ready) in rows {
            assert_eq!(is_ready(state, has_run, looping), ready, "{rule}");
        }
    }

    #[test]
    fn status_rules() {
        use ConditionStatus::{False, True};
        let wanted = digest('b');
        let fetch_failed = Failure {
            reason: Reason::FetchFailed,
            message: "cannot fetch sha256:bbb: 503".to_owned(),
        };
        let invalid = Failure {
            reason: Reason::InvalidSpec,
            message: "grant: bad path".to_owned(),
        };
        let notes = vec!["config TOKEN comes from Secret … not supported".to_owned()];
        struct Row<'a> {
            rule: &'a str,
            running: Option<Running>,
            failure: Option<&'a Failure>,
            notes: &'a [String],
            ready: (ConditionStatus, &'a str),
            degraded: (ConditionStatus, &'a str),
            ready_instances: i32,
            digest: Option<char>,
            last_error: Option<&'a str>,
        }
        let rows = [
            Row {
                rule: "nothing runs yet: starting",
                running: None,
                failure: None,
                notes: &[],
                ready: (False, "InstancesStarting"),
                degraded: (False, "Healthy"),
                ready_instances: 0,
                digest: None,
                last_error: None,
            },
            Row {
                rule: "runs what is wanted: ready, with its replicas and digest",
                running: Some(running('b', true, true, false)),
                failure: None,
                notes: &[],
                ready: (True, "InstancesReady"),
                degraded: (False, "Healthy"),
                ready_instances: 2,
                digest: Some('b'),
                last_error: None,
            },
            Row {
                rule: "updating: the old digest's instances still count, Ready is False",
                running: Some(running('a', true, false, false)),
                failure: None,
                notes: &[],
                ready: (False, "InstancesStarting"),
                degraded: (False, "Healthy"),
                ready_instances: 2,
                digest: Some('a'),
                last_error: None,
            },
            Row {
                rule: "the new digest cannot be fetched: the old keeps running and says so",
                running: Some(running('a', true, false, false)),
                failure: Some(&fetch_failed),
                notes: &[],
                ready: (False, "FetchFailed"),
                degraded: (False, "Healthy"),
                ready_instances: 2,
                digest: Some('a'),
                last_error: Some("503"),
            },
            Row {
                rule: "nothing fetched: FetchFailed, nothing ready",
                running: None,
                failure: Some(&fetch_failed),
                notes: &[],
                ready: (False, "FetchFailed"),
                degraded: (False, "Healthy"),
                ready_instances: 0,
                digest: None,
                last_error: Some("503"),
            },
            Row {
                rule: "invalid spec: InvalidSpec",
                running: None,
                failure: Some(&invalid),
                notes: &[],
                ready: (False, "InvalidSpec"),
                degraded: (False, "Healthy"),
                ready_instances: 0,
                digest: None,
                last_error: Some("grant"),
            },
            Row {
                rule: "crash loop: not ready, Degraded CrashLoop, restarts in lastError",
                running: Some(running('b', false, true, true)),
                failure: None,
                notes: &[],
                ready: (False, "InstancesStarting"),
                degraded: (True, "CrashLoop"),
                ready_instances: 0,
                digest: None,
                last_error: Some("7 restarts"),
            },
            Row {
                rule: "config not passed: ready, and lastError says which",
                running: Some(running('b', true, true, false)),
                failure: None,
                notes: &notes,
                ready: (True, "InstancesReady"),
                degraded: (False, "Healthy"),
                ready_instances: 2,
                digest: Some('b'),
                last_error: Some("not supported"),
            },
        ];
        for row in rows {
            let s = placement_status(
                Observed {
                    generation: Some(4),
                    wanted: &wanted,
                    running: row.running.as_ref(),
                    failure: row.failure,
                    notes: row.notes,
                },
                None,
            );
            let r = row.rule;
            let ready = cond(&s, ConditionType::Ready);
            assert_eq!((ready.0, ready.1.as_str()), row.ready, "{r}");
            let degraded = cond(&s, ConditionType::Degraded);
            assert_eq!((degraded.0, degraded.1.as_str()), row.degraded, "{r}");
            assert_eq!(s.ready_instances, row.ready_instances, "{r}");
            assert_eq!(s.digest, row.digest.map(digest), "{r}");
            assert_eq!(s.observed_generation, Some(4), "{r}");
            match (row.last_error, &s.last_error) {
                (None, None) => {}
                (Some(part), Some(text)) => assert!(text.contains(part), "{r}: {text}"),
                (want, got) => panic!("{r}: lastError {got:?}, wanted {want:?}"),
            }
            for c in &s.conditions {
                assert_eq!(c.observed_generation, Some(4), "{r}");
            }
        }
    }

    #[test]
    fn transition_times_hold_while_status_holds_and_errors_are_bounded() {
        let d = digest('b');
        let ready = running('b', true, true, false);
        let obs = Observed {
            generation: Some(1),
            wanted: &d,
            running: Some(&ready),
            failure: None,
            notes: &[],
        };
        let mut first = placement_status(obs, None);
        for c in &mut first.conditions {
            c.last_transition_time = "2020-01-01T00:00:00Z".to_owned();
        }
        let again = placement_status(obs, Some(&first));
        assert_eq!(
            again, first,
            "same observation, same status: nothing to write"
        );

        let huge = Failure {
            reason: Reason::CompileFailed,
            message: "x".repeat(100_000),
        };
        let s = placement_status(
            Observed {
                failure: Some(&huge),
                running: None,
                ..obs
            },
            Some(&first),
        );
        assert!(s.last_error.as_ref().unwrap().len() <= LAST_ERROR_LIMIT);
        let ready = condition::find(&s.conditions, ConditionType::Ready).unwrap();
        assert_ne!(
            ready.last_transition_time, "2020-01-01T00:00:00Z",
            "status changed"
        );
        let degraded = condition::find(&s.conditions, ConditionType::Degraded).unwrap();
        assert_eq!(degraded.last_transition_time, "2020-01-01T00:00:00Z");
    }

    #[test]
    fn ignored_and_stopped_statuses() {
        let s = ignored_status(Some(2), "Placement p-new is newer", None);
        assert_eq!(s.ready_instances, 0);
        assert_eq!(
            cond(&s, ConditionType::Ready),
            (ConditionStatus::False, "InstancesStarting".to_owned())
        );
        assert!(s.last_error.unwrap().contains("newer"));

        let d = digest('b');
        let ready = running('b', true, true, false);
        let was = placement_status(
            Observed {
                generation: Some(1),
                wanted: &d,
                running: Some(&ready),
                failure: None,
                notes: &[],
            },
            None,
        );
        let s = stopped_status("node-a", &was, Some(1));
        assert_eq!((s.ready_instances, s.digest.clone()), (0, None));
        assert_eq!(s.restarts, 7);
        let c = condition::find(&s.conditions, ConditionType::Ready).unwrap();
        assert!(!c.is_true() && c.message.contains("node-a"), "{c:?}");
    }

    #[test]
    fn writes_are_paced() {
        let policy = WritePolicy::default();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let status = |n: i32| PlacementStatus {
            ready_instances: n,
            ..PlacementStatus::default()
        };
        let near =
            |a: Instant, b: Instant| a.max(b).duration_since(a.min(b)) < Duration::from_millis(5);
        // A burst of three changes goes out at once.
        let mut book = WriteBook::default();
        for (i, t) in [0, 10, 20].into_iter().enumerate() {
            let s = status(i32::try_from(i).unwrap() + 1);
            assert_eq!(
                when_to_write(&book, &s, ms(t), &policy),
                ms(t),
                "write {i} of the burst"
            );
            book.wrote(s, ms(t), &policy);
        }
        // The fourth waits for a token (one a second; the burst refilled a little meanwhile).
        let next = when_to_write(&book, &status(9), ms(30), &policy);
        assert!(near(next, ms(1000)), "{:?}", next - t0);
        // An unchanged status waits for the resync.
        let same = when_to_write(&book, &status(3), ms(500), &policy);
        assert!(near(same, ms(30_020)), "{:?}", same - t0);
        assert_eq!(
            when_to_write(&book, &status(3), ms(31_000), &policy),
            ms(31_000),
            "resync due"
        );
        // Flapping is bounded: after the burst, about one write a second.
        let mut writes = 0;
        let mut book = WriteBook::default();
        for t in (2000..12_000).step_by(50) {
            let s = status(i32::from(writes % 2 == 0));
            if when_to_write(&book, &s, ms(t), &policy) <= ms(t) {
                book.wrote(s, ms(t), &policy);
                writes += 1;
            }
        }
        assert!((11..=14).contains(&writes), "{writes} writes in 10 s");
    }

    #[test]
    fn a_new_placement_reports_once_when_it_starts_quickly() {
        let policy = WritePolicy::default();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let wanted = digest('a');
        let observed = |running: Option<&Running>, failure: Option<&Failure>| {
            placement_status(
                Observed {
                    generation: Some(1),
                    wanted: &wanted,
                    running,
                    failure,
                    notes: &[],
                },
                None,
            )
        };
        let starting = observed(None, None);
        let book = WriteBook::new(ms(0));
        // (rule, status, at, due)
        let failed = Failure {
            reason: Reason::FetchFailed,
            message: "the artifact server refused".into(),
        };
        let ready = running('a', true, true, false);
        let looping = running('a', false, true, true);
        let cases = [
            ("starting waits for the grace", starting.clone(), 100, 1000),
            (
                "still starting after it: written",
                starting.clone(),
                1500,
                1500,
            ),
            ("ready: at once", observed(Some(&ready), None), 200, 200),
            (
                "a failure: at once",
                observed(None, Some(&failed)),
                200,
                200,
            ),
            (
                "crash-looping: at once",
                observed(Some(&looping), None),
                200,
                200,
            ),
        ];
        for (rule, status, at, due) in cases {
            assert_eq!(
                when_to_write(&book, &status, ms(at), &policy),
                ms(due),
                "{rule}"
            );
        }
        // A Placement that already has a status (the agent restarted) is not held back.
        let mut known = WriteBook::new(ms(0));
        known.wrote(observed(Some(&ready), None), ms(0), &policy);
        assert_eq!(when_to_write(&known, &starting, ms(10), &policy), ms(10));
    }
}
