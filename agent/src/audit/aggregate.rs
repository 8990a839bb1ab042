//! Folding audit occurrences into rate-limited Kubernetes Event series per (component,
//! reason). Pure: time is passed in, publishing is the [`EventSink`]'s job.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use super::event::Reason;

/// How repeated occurrences become Kubernetes Events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPolicy {
    /// At most one publication per (component, reason) per window; repeats in between are
    /// folded into the next publication's count.
    pub window: Duration,
    /// A series with no occurrence for this long is closed; the next occurrence starts a new
    /// one (a new Event instead of a series update).
    pub idle_close: Duration,
    /// Most (component, reason) series open at once; occurrences beyond are counted as
    /// suppressed instead of growing memory without bound.
    pub max_series: usize,
}

impl Default for EventPolicy {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            idle_close: Duration::from_secs(600),
            max_series: 4096,
        }
    }
}

/// A Kubernetes Event to create (when `first`) or to update as a series (`count`,
/// `last_seen`) on the `WasmComponent` `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregatedEvent {
    pub namespace: String,
    pub name: String,
    pub reason: Reason,
    /// `Warning` when true, else `Normal`.
    pub warning: bool,
    /// The latest occurrence, in words.
    pub note: String,
    /// Occurrences in this series so far (1 for a new series).
    pub count: u64,
    /// Whether this starts a series (create the Event) or continues one (update it).
    pub first: bool,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
}

/// Where aggregated events go; the agent's node code implements it with kube. Called on the
/// audit writer thread: hand the event off (e.g. `try_send` to a task), do not block.
pub trait EventSink: Send + 'static {
    fn publish(&mut self, event: AggregatedEvent);
}

impl EventSink for mpsc::Sender<AggregatedEvent> {
    fn publish(&mut self, event: AggregatedEvent) {
        // The receiver going away just means nobody publishes Events any more.
        let _ = self.send(event);
    }
}

/// One occurrence, as the aggregator sees it.
#[derive(Debug, Clone)]
pub struct Occurrence<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub reason: Reason,
    pub note: String,
    pub at: SystemTime,
}

#[derive(Debug)]
struct Series {
    reason: Reason,
    namespace: String,
    name: String,
    note: String,
    count: u64,
    published: u64,
    first_seen: SystemTime,
    last_seen: SystemTime,
    last_publish: Instant,
    last_occurrence: Instant,
}

impl Series {
    fn event(&mut self, now: Instant) -> AggregatedEvent {
        let first = self.published == 0;
        self.published = self.count;
        self.last_publish = now;
        AggregatedEvent {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            reason: self.reason,
            warning: self.reason.is_warning(),
            note: self.note.clone(),
            count: self.count,
            first,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
        }
    }
}

/// Folds occurrences into rate-limited series per (component, reason). Pure: time is passed
/// in, nothing is published here.
#[derive(Debug)]
pub struct EventAggregator {
    policy: EventPolicy,
    /// Keyed by `namespace/name`, then a handful of reasons.
    series: HashMap<String, Vec<Series>>,
    open: usize,
    suppressed: u64,
}

impl EventAggregator {
    pub fn new(policy: EventPolicy) -> Self {
        Self {
            policy,
            series: HashMap::new(),
            open: 0,
            suppressed: 0,
        }
    }

    /// Occurrences dropped because `max_series` series were open.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// Notes one occurrence; returns the event to publish now: the first occurrence of a
    /// series at once, later ones only when `window` has passed since the last publication.
    pub fn observe(&mut self, o: Occurrence<'_>, now: Instant) -> Option<AggregatedEvent> {
        self.observe_n(o, 1, now)
    }

    /// Notes `count` occurrences the audit pipeline folded (see `super::fold`) for the
    /// component `namespace/name`: they join its series of `reason`, so the Event's count
    /// stays the true number of occurrences.
    pub fn observe_folded(
        &mut self,
        namespace: &str,
        name: &str,
        reason: Reason,
        count: u64,
        now: Instant,
    ) -> Option<AggregatedEvent> {
        let o = Occurrence {
            namespace,
            name,
            reason,
            note: format!("{count} more like the last one (folded by the audit fairness budget)"),
            at: SystemTime::now(),
        };
        self.observe_n(o, count, now)
    }

    fn observe_n(&mut self, o: Occurrence<'_>, n: u64, now: Instant) -> Option<AggregatedEvent> {
        let key = format!("{}/{}", o.namespace, o.name);
        if let Some(s) = self
            .series
            .get_mut(&key)
            .and_then(|v| v.iter_mut().find(|s| s.reason == o.reason))
        {
            s.count += n;
            s.note = o.note;
            s.last_seen = o.at;
            s.last_occurrence = now;
            return (now.duration_since(s.last_publish) >= self.policy.window)
                .then(|| s.event(now));
        }
        if self.open >= self.policy.max_series {
            self.close_idle(now);
            if self.open >= self.policy.max_series {
                self.suppressed += n;
                return None;
            }
        }
        let mut s = Series {
            reason: o.reason,
            namespace: o.namespace.to_owned(),
            name: o.name.to_owned(),
            note: o.note,
            count: n,
            published: 0,
            first_seen: o.at,
            last_seen: o.at,
            last_publish: now,
            last_occurrence: now,
        };
        let event = s.event(now);
        self.series.entry(key).or_default().push(s);
        self.open += 1;
        Some(event)
    }

    /// Series updates whose window has passed with unpublished occurrences; closes series
    /// idle for `idle_close`. Call periodically.
    pub fn due(&mut self, now: Instant) -> Vec<AggregatedEvent> {
        let window = self.policy.window;
        let mut out = Vec::new();
        for s in self.series.values_mut().flatten() {
            if s.count > s.published && now.duration_since(s.last_publish) >= window {
                out.push(s.event(now));
            }
        }
        self.close_idle(now);
        out
    }

    /// Every unpublished occurrence, regardless of the window (at shutdown).
    pub fn drain(&mut self, now: Instant) -> Vec<AggregatedEvent> {
        let out = self
            .series
            .values_mut()
            .flatten()
            .filter(|s| s.count > s.published)
            .map(|s| s.event(now))
            .collect();
        self.series.clear();
        self.open = 0;
        out
    }

    fn close_idle(&mut self, now: Instant) {
        let idle = self.policy.idle_close;
        let mut open = 0;
        self.series.retain(|_, v| {
            // A series with unpublished occurrences stays until `due` publishes them.
            v.retain(|s| s.count > s.published || now.duration_since(s.last_occurrence) < idle);
            open += v.len();
            !v.is_empty()
        });
        self.open = open;
    }
}
