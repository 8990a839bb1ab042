//! Publishing the audit pipeline's [`AggregatedEvent`]s as `events.k8s.io/v1` Events on the
//! `WasmComponent` (`regarding`), with the `Placement` as `related`, reported by
//! [`AGENT_REPORTING_CONTROLLER`] from this node (`reportingInstance`).
//!
//! The audit writer thread hands events to a bounded tokio channel ([`EventQueue`], a
//! `try_send`: it never waits; a full queue gives the event back to the aggregator, which
//! offers it again later). One tokio task drains the channel and makes the API calls one at
//! a time: a create per new series, a merge patch of `series` {count, lastObservedTime} per
//! update (an Event's note cannot change). A failed write is counted
//! (`airssys_events_publish_errors_total`), logged (at most every 30 s) and retried a few
//! times; a later publication of the same series supersedes it (counts are cumulative).
//! After the last attempt its occurrences count as dropped. Nothing here can stop the agent.
//!
//! The rate limit is upstream (the aggregator's per-(component, reason) token bucket); this
//! module decides only *how* to write: [`Tracker`] is the pure state machine (which Event
//! object a series lives in, what to retry, what to give up), tested without a server.
//!
//! Wiring it (node mode):
//!
//! ```text
//! let metrics = Arc::new(Metrics::new());
//! let (queue, publisher) = EventPublisher::start(client.clone(), &node, &metrics.audit);
//! let mut config = AuditConfig::new(&node, &metrics.audit);
//! config.events = Some(Box::new(queue));
//! let (audit, auditor) = Auditor::start(config)?;
//! // each Placement's spec: ComponentSpec { k8s: Some(ObjectRefs { component_uid, placement,
//! //     placement_uid }), .. }; `Started` is recorded by every instance start, the rest:
//! audit.component_event(&ComponentIdentity::with_refs(&id, digest, Some(refs)), AuditKind::Revoked);
//! // shutdown: auditor.shutdown(); then publisher.await (its last writes)
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use airssys_crds::agent::AGENT_REPORTING_CONTROLLER;
use airssys_crds::{Placement, WasmComponent};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::aggregate::{AggregatedEvent, EventSink};
use super::event::EventReason;
use super::metrics::{AuditMetrics, EventMetrics, EventReasonLabels};

/// Longest `note` the API server accepts (bytes).
const NOTE_LIMIT: usize = 1024;
/// Longest `reportingInstance` the API server accepts.
const INSTANCE_LIMIT: usize = 128;
/// Longest object name (DNS subdomain).
const NAME_LIMIT: usize = 253;

/// Settings of the publishing task.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// This node's name: the Events' `reportingInstance`.
    pub node: String,
    /// Publications queued between the audit writer and the task.
    pub capacity: usize,
    /// Attempts per write before its occurrences count as dropped.
    pub attempts: u32,
    /// Wait before retrying a failed write (doubled per attempt).
    pub retry_after: Duration,
    /// Most time one API call may take.
    pub call_timeout: Duration,
    /// A series not published for this long is forgotten (longer than the aggregator's
    /// idle close, so a live series always finds its Event).
    pub forget_after: Duration,
    /// Most series remembered (the least recently published go first).
    pub max_series: usize,
}

impl PublisherConfig {
    /// Queue 256, 3 attempts from 5 s apart, 10 s per call, series forgotten after 15 min.
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            capacity: 256,
            attempts: 3,
            retry_after: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
            forget_after: Duration::from_secs(900),
            max_series: 8192,
        }
    }
}

/// The audit writer's handle on the publishing task (an [`EventSink`]): a bounded queue
/// that never blocks.
#[derive(Debug, Clone)]
pub struct EventQueue {
    tx: mpsc::Sender<AggregatedEvent>,
}

impl EventSink for EventQueue {
    fn publish(&mut self, event: AggregatedEvent) -> Result<(), Box<AggregatedEvent>> {
        self.tx.try_send(event).map_err(|e| match e {
            mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e) => {
                Box::new(e)
            }
        })
    }
}

/// Starts the task that writes Kubernetes Events.
#[derive(Debug)]
pub struct EventPublisher;

impl EventPublisher {
    /// Spawns the publishing task on the current tokio runtime. Put the queue in
    /// [`super::AuditConfig::events`]; the task ends once the audit pipeline has shut down
    /// (the queue's last clone dropped) and its last writes are done.
    pub fn start(
        client: Client,
        node: impl Into<String>,
        metrics: &AuditMetrics,
    ) -> (EventQueue, JoinHandle<()>) {
        Self::start_with(client, PublisherConfig::new(node), metrics)
    }

    /// [`Self::start`] with explicit settings.
    pub fn start_with(
        client: Client,
        config: PublisherConfig,
        metrics: &AuditMetrics,
    ) -> (EventQueue, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let task = Task {
            client,
            tracker: Tracker::new(&config),
            config,
            metrics: metrics.events.clone(),
            errors_logged_at: None,
            errors_unlogged: 0,
        };
        (EventQueue { tx }, tokio::spawn(task.run(rx)))
    }
}

/// What to do for one publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Write {
    /// Create a new Event object (a new series, or one whose Event is gone or never made).
    Create,
    /// Update the `series` of the Event named so.
    Patch(String),
}

#[derive(Debug)]
struct Known {
    name: String,
    /// The count the API server has.
    confirmed: u64,
    touched: Instant,
}

#[derive(Debug)]
struct Pending {
    event: AggregatedEvent,
    attempts: u32,
    not_before: Instant,
}

/// Which Event object each series lives in and which writes wait for a retry. Pure.
#[derive(Debug)]
pub(crate) struct Tracker {
    known: HashMap<u64, Known>,
    pending: HashMap<u64, Pending>,
    attempts: u32,
    retry_after: Duration,
    forget_after: Duration,
    max_series: usize,
}

impl Tracker {
    pub(crate) fn new(config: &PublisherConfig) -> Self {
        Self {
            known: HashMap::new(),
            pending: HashMap::new(),
            attempts: config.attempts.max(1),
            retry_after: config.retry_after,
            forget_after: config.forget_after,
            max_series: config.max_series.max(1),
        }
    }

    /// A new publication: supersedes a retry of the same series (the count is cumulative,
    /// and a series whose create failed is created by whichever write comes next).
    pub(crate) fn admit(&mut self, event: AggregatedEvent) -> AggregatedEvent {
        self.pending.remove(&event.series);
        event
    }

    /// How to write `event`.
    pub(crate) fn write(&self, event: &AggregatedEvent) -> Write {
        match self.known.get(&event.series) {
            Some(k) if !event.first => Write::Patch(k.name.clone()),
            _ => Write::Create,
        }
    }

    /// The API server has `event` as the Event `name`.
    pub(crate) fn succeeded(&mut self, event: &AggregatedEvent, name: String, now: Instant) {
        if self
            .pending
            .get(&event.series)
            .is_some_and(|p| p.event.count <= event.count)
        {
            self.pending.remove(&event.series);
        }
        self.known.insert(
            event.series,
            Known {
                name,
                confirmed: event.count,
                touched: now,
            },
        );
        if self.known.len() > self.max_series
            && let Some(oldest) = self
                .known
                .iter()
                .min_by_key(|(_, k)| k.touched)
                .map(|(id, _)| *id)
        {
            self.known.remove(&oldest);
        }
    }

    /// The Event a patch addressed is gone (expired or deleted): the next write creates.
    pub(crate) fn gone(&mut self, series: u64) {
        self.known.remove(&series);
    }

    /// `event`'s write failed on attempt `attempt` (1 = first). Returns the occurrences
    /// now given up on (0 while a retry is planned).
    pub(crate) fn failed(&mut self, event: AggregatedEvent, attempt: u32, now: Instant) -> u64 {
        if attempt >= self.attempts {
            let confirmed = self.known.get(&event.series).map_or(0, |k| k.confirmed);
            return event.count.saturating_sub(confirmed);
        }
        let wait = self.retry_after * 2u32.saturating_pow(attempt - 1);
        self.pending.insert(
            event.series,
            Pending {
                event,
                attempts: attempt,
                not_before: now + wait,
            },
        );
        0
    }

    /// Writes whose retry time has come, with the attempt number each is on; all of them
    /// with `all` (at shutdown).
    pub(crate) fn retries(&mut self, now: Instant, all: bool) -> Vec<(AggregatedEvent, u32)> {
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| all || p.not_before <= now)
            .map(|(id, _)| *id)
            .collect();
        due.into_iter()
            .filter_map(|id| self.pending.remove(&id))
            .map(|p| (p.event, p.attempts + 1))
            .collect()
    }

    /// Forgets series not published for `forget_after`.
    pub(crate) fn expire(&mut self, now: Instant) {
        let forget = self.forget_after;
        self.known
            .retain(|_, k| now.saturating_duration_since(k.touched) < forget);
    }

    /// Writes waiting for a retry.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// The publishing task.
struct Task {
    client: Client,
    config: PublisherConfig,
    tracker: Tracker,
    metrics: EventMetrics,
    errors_logged_at: Option<Instant>,
    errors_unlogged: u64,
}

/// Why a write failed.
enum Failure {
    /// The Event to patch does not exist (any more).
    Gone,
    Other(String),
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<AggregatedEvent>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                received = rx.recv() => match received {
                    Some(event) => {
                        let event = self.tracker.admit(event);
                        self.attempt(event, 1).await;
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    for (event, attempt) in self.tracker.retries(now, false) {
                        self.attempt(event, attempt).await;
                    }
                    self.tracker.expire(now);
                }
            }
        }
        // The audit pipeline is gone: one last try for what waits, then give up on it.
        let last = self.config.attempts.max(1);
        for (event, _) in self.tracker.retries(Instant::now(), true) {
            self.attempt(event, last).await;
        }
        if self.errors_unlogged > 0 {
            tracing::warn!(
                failed = self.errors_unlogged,
                "Kubernetes Event writes failed before shutdown"
            );
        }
    }

    async fn attempt(&mut self, event: AggregatedEvent, attempt: u32) {
        let result = match self.tracker.write(&event) {
            Write::Patch(name) => match self.patch(&event, &name).await {
                Ok(()) => Ok(name),
                Err(Failure::Gone) => {
                    self.tracker.gone(event.series);
                    self.create(&event).await
                }
                Err(e) => Err(e),
            },
            Write::Create => self.create(&event).await,
        };
        match result {
            Ok(name) => {
                self.metrics
                    .published
                    .get_or_create(&EventReasonLabels {
                        reason: event.reason,
                    })
                    .inc();
                tracing::debug!(
                    component = %format_args!("{}/{}", event.namespace, event.name),
                    reason = %event.reason,
                    count = event.count,
                    event = %name,
                    "published a Kubernetes Event"
                );
                self.tracker.succeeded(&event, name, Instant::now());
            }
            Err(failure) => {
                self.metrics.errors.inc();
                let reason = match failure {
                    Failure::Gone => "the Event is gone".to_owned(),
                    Failure::Other(reason) => reason,
                };
                self.note_error(&event, &reason);
                let lost = self.tracker.failed(event, attempt, Instant::now());
                self.metrics.dropped.inc_by(lost);
            }
        }
    }

    async fn create(&self, event: &AggregatedEvent) -> Result<String, Failure> {
        let name = event_name(&event.name, nanos_now(), event.series);
        let body = build_event(event, &self.config.node, name.clone());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &event.namespace);
        let params = PostParams::default();
        let call = api.create(&params, &body);
        match tokio::time::timeout(self.config.call_timeout, call).await {
            Ok(Ok(_)) => Ok(name),
            Ok(Err(e)) => Err(Failure::Other(e.to_string())),
            Err(_) => Err(Failure::Other("timed out".to_owned())),
        }
    }

    async fn patch(&self, event: &AggregatedEvent, name: &str) -> Result<(), Failure> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &event.namespace);
        let body = series_patch(event);
        let (params, patch) = (PatchParams::default(), Patch::Merge(&body));
        let call = api.patch(name, &params, &patch);
        match tokio::time::timeout(self.config.call_timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => Err(Failure::Gone),
            Ok(Err(e)) => Err(Failure::Other(e.to_string())),
            Err(_) => Err(Failure::Other("timed out".to_owned())),
        }
    }

    /// Logs a failed write, at most once every 30 s (the counter has them all).
    fn note_error(&mut self, event: &AggregatedEvent, reason: &str) {
        self.errors_unlogged += 1;
        let now = Instant::now();
        if self
            .errors_logged_at
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(30))
        {
            tracing::warn!(
                component = %format_args!("{}/{}", event.namespace, event.name),
                reason = %event.reason,
                failed = self.errors_unlogged,
                error = reason,
                "cannot publish Kubernetes Events (counted in airssys_events_publish_errors_total; retried)"
            );
            self.errors_logged_at = Some(now);
            self.errors_unlogged = 0;
        }
    }
}

fn nanos_now() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The Event object's name: the component's name (cut to fit, still a DNS subdomain), a dot,
/// and a hex suffix from the time and the series, as kube's recorder names Events.
pub(crate) fn event_name(component: &str, nanos: u128, series: u64) -> String {
    // Nanoseconds since 1970 fit in 64 bits until 2554.
    let suffix = format!("{:x}{:04x}", nanos as u64, series & 0xffff);
    let room = NAME_LIMIT - 1 - suffix.len();
    let mut base: String = component
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(room)
        .collect();
    while base.ends_with(['-', '.']) {
        base.pop();
    }
    while base.starts_with(['-', '.']) {
        base.remove(0);
    }
    if base.is_empty() {
        base.push_str("component");
    }
    format!("{base}.{suffix}")
}

/// A note the API server takes and a terminal shows as is: control characters (a guest's
/// text may carry them) become spaces; cut to 1 KiB on a char boundary.
pub(crate) fn clean_note(note: &str) -> String {
    let mut out: String = note
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > NOTE_LIMIT {
        let mut end = NOTE_LIMIT - '…'.len_utf8();
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

fn micro_time(t: SystemTime) -> MicroTime {
    MicroTime(Timestamp::try_from(t).unwrap_or_else(|_| Timestamp::now()))
}

fn series(event: &AggregatedEvent) -> Option<EventSeries> {
    // A series needs a count of at least 2 (API validation); one occurrence has none.
    (event.count >= 2).then(|| EventSeries {
        count: i32::try_from(event.count).unwrap_or(i32::MAX),
        last_observed_time: micro_time(event.last_seen),
    })
}

/// The Event object that starts a series.
pub(crate) fn build_event(event: &AggregatedEvent, node: &str, name: String) -> Event {
    let mut instance = node.to_owned();
    if instance.len() > INSTANCE_LIMIT {
        let mut end = INSTANCE_LIMIT;
        while !instance.is_char_boundary(end) {
            end -= 1;
        }
        instance.truncate(end);
    }
    Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(event.namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: Some(micro_time(event.first_seen)),
        series: series(event),
        reporting_controller: Some(AGENT_REPORTING_CONTROLLER.to_owned()),
        reporting_instance: Some(instance),
        action: Some(event.reason.action().to_owned()),
        reason: Some(event.reason.as_str().to_owned()),
        regarding: Some(ObjectReference {
            api_version: Some(WasmComponent::api_version(&()).into_owned()),
            kind: Some(WasmComponent::kind(&()).into_owned()),
            namespace: Some(event.namespace.clone()),
            name: Some(event.name.clone()),
            uid: Some(event.refs.component_uid.clone()),
            ..ObjectReference::default()
        }),
        related: Some(ObjectReference {
            api_version: Some(Placement::api_version(&()).into_owned()),
            kind: Some(Placement::kind(&()).into_owned()),
            namespace: Some(event.namespace.clone()),
            name: Some(event.refs.placement.clone()),
            uid: event.refs.placement_uid.clone(),
            ..ObjectReference::default()
        }),
        note: Some(clean_note(&event.note)),
        type_: Some(event_type(event.reason).to_owned()),
        ..Event::default()
    }
}

fn event_type(reason: EventReason) -> &'static str {
    if reason.is_warning() {
        "Warning"
    } else {
        "Normal"
    }
}

/// The merge patch that moves a created Event's series to `event`'s count.
pub(crate) fn series_patch(event: &AggregatedEvent) -> serde_json::Value {
    let count = i32::try_from(event.count.max(2)).unwrap_or(i32::MAX);
    serde_json::json!({
        "series": {
            "count": count,
            "lastObservedTime": micro_time(event.last_seen),
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::audit::ObjectRefs;

    fn event(series: u64, count: u64, first: bool) -> AggregatedEvent {
        AggregatedEvent {
            series,
            namespace: "team-a".into(),
            name: "counter".into(),
            refs: ObjectRefs {
                component_uid: "uid-1".into(),
                placement: "counter-node-1".into(),
                placement_uid: Some("uid-p".into()),
            },
            reason: EventReason::CapabilityDenied,
            note: "denied network access to x:1: not granted".into(),
            count,
            new: 1,
            first,
            summary: false,
            first_seen: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            last_seen: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_060),
        }
    }

    #[test]
    fn the_event_names_the_component_the_placement_and_the_node() {
        let e = build_event(&event(1, 1, true), "node-1", "counter.abc".into());
        let regarding = e.regarding.unwrap();
        assert_eq!(
            regarding.api_version.as_deref(),
            Some("wasm.airssys.dev/v1alpha1")
        );
        assert_eq!(regarding.kind.as_deref(), Some("WasmComponent"));
        assert_eq!(regarding.namespace.as_deref(), Some("team-a"));
        assert_eq!(regarding.name.as_deref(), Some("counter"));
        assert_eq!(regarding.uid.as_deref(), Some("uid-1"));
        let related = e.related.unwrap();
        assert_eq!(related.kind.as_deref(), Some("Placement"));
        assert_eq!(related.name.as_deref(), Some("counter-node-1"));
        assert_eq!(related.uid.as_deref(), Some("uid-p"));
        assert_eq!(
            e.reporting_controller.as_deref(),
            Some(AGENT_REPORTING_CONTROLLER)
        );
        assert_eq!(e.reporting_instance.as_deref(), Some("node-1"));
        assert_eq!(e.reason.as_deref(), Some("CapabilityDenied"));
        assert_eq!(e.action.as_deref(), Some("CheckCapability"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("team-a"));
        assert!(e.series.is_none(), "one occurrence has no series");
        let e = build_event(&event(1, 7, true), "node-1", "n".into());
        assert_eq!(e.series.unwrap().count, 7);
    }

    #[test]
    fn every_reason_has_a_fixed_action_and_type() {
        // reason, action, type
        let table = [
            (EventReason::Started, "Start", "Normal"),
            (EventReason::Stopped, "Stop", "Normal"),
            (EventReason::CapabilityDenied, "CheckCapability", "Warning"),
            (EventReason::QuotaExceeded, "EnforceQuota", "Warning"),
            (EventReason::Killed, "Kill", "Warning"),
            (EventReason::CrashLoop, "Restart", "Warning"),
            (EventReason::DevModeBypass, "Start", "Warning"),
            (EventReason::Revoked, "Stop", "Warning"),
        ];
        assert_eq!(table.len(), EventReason::ALL.len());
        for (reason, action, type_) in table {
            assert_eq!(reason.action(), action, "{reason}");
            assert_eq!(event_type(reason), type_, "{reason}");
        }
    }

    #[test]
    fn names_are_dns_subdomains_that_fit() {
        let cases = [
            ("short name", "counter".to_owned()),
            ("longest component name", "a".repeat(253)),
            ("cut before a dash", format!("{}-b", "a".repeat(233))),
            ("uppercase is lowered", "Counter".to_owned()),
        ];
        for (rule, component) in cases {
            let name = event_name(&component, 1_700_000_000_123_456_789, 42);
            assert!(name.len() <= NAME_LIMIT, "{rule}: {}", name.len());
            assert!(
                name.split('.').all(|label| !label.is_empty()
                    && label.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && label.ends_with(|c: char| c.is_ascii_alphanumeric())),
                "{rule}: {name}"
            );
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'),
                "{rule}: {name}"
            );
        }
        assert_ne!(
            event_name("c", 1, 1),
            event_name("c", 1, 2),
            "two series created at once get two names"
        );
    }

    #[test]
    fn notes_lose_control_characters_and_fit_the_limit() {
        assert_eq!(clean_note("denied a\nb\u{1b}[31m"), "denied a b [31m");
        let long = clean_note(&"é".repeat(1000));
        assert!(
            long.len() <= NOTE_LIMIT && long.ends_with('…'),
            "{}",
            long.len()
        );
    }

    #[test]
    fn series_patch_moves_only_the_series() {
        let patch = series_patch(&event(1, 12, false));
        assert_eq!(patch["series"]["count"], 12);
        assert!(
            patch["series"]["lastObservedTime"]
                .as_str()
                .unwrap()
                .starts_with("2023-11-14T22:14:20")
        );
        assert_eq!(
            patch.as_object().unwrap().len(),
            1,
            "the note cannot change"
        );
    }

    fn tracker() -> Tracker {
        let mut config = PublisherConfig::new("node-1");
        config.attempts = 3;
        config.retry_after = Duration::from_secs(5);
        config.forget_after = Duration::from_secs(900);
        config.max_series = 2;
        Tracker::new(&config)
    }

    #[test]
    fn tracker_spec() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut t = tracker();

        // a new series is created; its updates patch the Event it lives in
        let e1 = t.admit(event(1, 1, true));
        assert_eq!(t.write(&e1), Write::Create);
        t.succeeded(&e1, "counter.a".into(), at(0));
        assert_eq!(
            t.write(&event(1, 5, false)),
            Write::Patch("counter.a".into())
        );

        // an update for a series whose Event was never made creates it
        assert_eq!(t.write(&event(2, 3, false)), Write::Create);

        // a gone Event is created again
        t.gone(1);
        assert_eq!(t.write(&event(1, 6, false)), Write::Create);
        t.succeeded(&event(1, 6, false), "counter.b".into(), at(1));

        // a failed write is retried after a backoff, then given up with its occurrences
        assert_eq!(t.failed(event(1, 9, false), 1, at(2)), 0);
        assert!(t.retries(at(6), false).is_empty(), "not before 5 s");
        let retry = t.retries(at(7), false);
        assert_eq!(retry.len(), 1);
        assert_eq!((retry[0].0.count, retry[0].1), (9, 2));
        assert_eq!(t.failed(retry[0].0.clone(), 2, at(7)), 0);
        assert!(t.retries(at(16), false).is_empty(), "backoff doubles");
        let retry = t.retries(at(17), false);
        assert_eq!(
            t.failed(retry[0].0.clone(), 3, at(17)),
            3,
            "the 3 occurrences the server never got are dropped"
        );
        assert_eq!(t.pending(), 0);

        // a new publication supersedes a waiting retry, and creates the Event a failed
        // create did not
        t.failed(event(3, 1, true), 1, at(20));
        let update = t.admit(event(3, 2, false));
        assert_eq!(t.pending(), 0);
        assert_eq!(t.write(&update), Write::Create);
        assert_eq!(
            t.failed(update, 3, at(21)),
            2,
            "a create given up loses its whole count"
        );

        // at shutdown every waiting write is tried once more, whatever its backoff
        t.failed(event(4, 2, false), 1, at(30));
        assert_eq!(t.retries(at(30), true).len(), 1);

        // memory stays bounded: oldest series forgotten beyond max_series, idle ones expire
        t.succeeded(&event(5, 1, true), "e5".into(), at(40));
        t.succeeded(&event(6, 1, true), "e6".into(), at(41));
        assert_eq!(t.known.len(), 2);
        t.expire(at(41 + 900));
        assert_eq!(t.known.len(), 0);
    }
}
