//! Turning audit occurrences into rate-limited Kubernetes Event publications. Pure: time is
//! passed in, publishing is the [`EventSink`]'s job.
//!
//! An Event's `note` cannot change once it is created (`events.k8s.io/v1` updates may only
//! move its `series`), so a **series** is one (component, reason, note): the first
//! occurrence creates the Event, repeats raise its `series.count`. Every publication (create
//! or series update) takes a token from the (component, reason) **bucket**: `burst` tokens,
//! one more every `refill`. Without a token:
//!
//! - a repeat waits in its series' count; [`EventAggregator::due`] publishes the count when
//!   a token comes back (the occurrences are *folded* into the count);
//! - a new note gets no Event of its own; the bucket counts it, and the next token publishes
//!   a *summary* Event whose note says how many occurrences were not published one by one
//!   (naming the last) and whose count is that number (the occurrences are *folded* into
//!   it). While a summary is owed, new notes join it rather than jump the queue.
//!
//! Records the audit fairness budget folded (`super::fold`) arrive as bare counts, their notes
//! unknown: they join the summary too, never a series whose note they might not share.
//!
//! So a denial flood costs the API server at most `burst` writes plus one per `refill` per
//! (component, reason), and every occurrence is still counted by exactly one Event (its own,
//! a series count or a summary's count) or, when too many series are open or the publisher
//! refused at shutdown, by [`EventStats::dropped`]. The JSON audit log keeps every record.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use super::event::{EventReason, ObjectRefs};

/// How occurrences become Kubernetes Event publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPolicy {
    /// Publications a (component, reason) may make at once.
    pub burst: u32,
    /// One more publication per this long (zero: no rate limit).
    pub refill: Duration,
    /// A series with no occurrence for this long is closed; the next occurrence creates a
    /// new Event instead of updating the old one.
    pub idle_close: Duration,
    /// Most series (and most (component, reason) buckets) open at once; occurrences beyond
    /// are dropped and counted instead of growing memory without bound.
    pub max_series: usize,
}

impl Default for EventPolicy {
    /// Burst 10, then one publication per 10 s per (component, reason).
    fn default() -> Self {
        Self {
            burst: 10,
            refill: Duration::from_secs(10),
            idle_close: Duration::from_secs(600),
            max_series: 4096,
        }
    }
}

/// A Kubernetes Event to create (`first`) or whose series to update, about the
/// `WasmComponent` `namespace/name` ([`ObjectRefs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregatedEvent {
    /// Names the series across its publications (unique per aggregator).
    pub series: u64,
    pub namespace: String,
    pub name: String,
    pub refs: ObjectRefs,
    pub reason: EventReason,
    /// The Event's note (fixed at creation).
    pub note: String,
    /// Occurrences this Event stands for so far (its `series.count` when above 1).
    pub count: u64,
    /// Occurrences since this series' previous publication (all of `count` for a create).
    pub new: u64,
    /// Whether this creates the Event (else it updates its series).
    pub first: bool,
    /// Whether this Event stands for occurrences not published one by one (`count` of them,
    /// of various notes).
    pub summary: bool,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
}

impl AggregatedEvent {
    /// `Warning` when true, else `Normal`.
    pub fn warning(&self) -> bool {
        self.reason.is_warning()
    }
}

/// Where aggregated events go (the agent's [`super::EventPublisher`] queue). Called on the
/// audit writer thread: hand the event off, never block. `Err` gives the event back when it
/// cannot be taken now (a full queue): its occurrences are kept and offered again later.
pub trait EventSink: Send + 'static {
    fn publish(&mut self, event: AggregatedEvent) -> Result<(), Box<AggregatedEvent>>;
}

impl EventSink for mpsc::Sender<AggregatedEvent> {
    fn publish(&mut self, event: AggregatedEvent) -> Result<(), Box<AggregatedEvent>> {
        // The receiver going away just means nobody publishes Events any more.
        let _ = self.send(event);
        Ok(())
    }
}

/// The Kubernetes objects an occurrence is about.
#[derive(Debug, Clone, Copy)]
pub struct EventSubject<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub refs: &'a ObjectRefs,
}

/// One occurrence, as the aggregator sees it.
#[derive(Debug, Clone)]
pub struct Occurrence<'a> {
    pub subject: EventSubject<'a>,
    pub reason: EventReason,
    pub note: String,
    pub at: SystemTime,
}

/// What the aggregator did not publish one by one, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Occurrences published only as part of a count: a series update covering several, or
    /// a summary (`airssys_events_folded_total`).
    pub folded: u64,
    /// Occurrences no Event counts (too many open series; refused at shutdown)
    /// (`airssys_events_dropped_total`).
    pub dropped: u64,
}

/// A token bucket: `burst` tokens, one back per `refill`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tokens {
    left: u32,
    refilled_at: Instant,
}

impl Tokens {
    fn full(policy: &EventPolicy, now: Instant) -> Self {
        Self {
            left: policy.burst,
            refilled_at: now,
        }
    }

    fn refill(&mut self, policy: &EventPolicy, now: Instant) {
        if self.left >= policy.burst || policy.refill.is_zero() {
            self.left = policy.burst;
            self.refilled_at = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.refilled_at);
        let earned = elapsed.as_nanos() / policy.refill.as_nanos();
        if earned == 0 {
            return;
        }
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        self.left = self.left.saturating_add(earned).min(policy.burst);
        self.refilled_at = if self.left >= policy.burst {
            now
        } else {
            self.refilled_at + policy.refill * earned
        };
    }

    fn take(&mut self, policy: &EventPolicy, now: Instant) -> bool {
        self.refill(policy, now);
        if policy.refill.is_zero() {
            return true;
        }
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        true
    }

    fn give_back(&mut self, policy: &EventPolicy) {
        self.left = (self.left + 1).min(policy.burst);
    }
}

#[derive(Debug)]
struct Series {
    id: u64,
    note: String,
    count: u64,
    /// How much of `count` has been handed to the sink; 0 = the Event is not created yet.
    published: u64,
    first_seen: SystemTime,
    last_seen: SystemTime,
    last_occurrence: Instant,
}

/// One (component, reason): its token bucket and its series.
#[derive(Debug)]
struct Bucket {
    namespace: String,
    name: String,
    refs: ObjectRefs,
    reason: EventReason,
    tokens: Tokens,
    series: Vec<Series>,
    /// Occurrences with no series of their own, owed a summary.
    others: u64,
    others_since: SystemTime,
    /// The note of the bucket's last occurrence (a summary names it).
    last_note: String,
    last_occurrence: Instant,
}

impl Bucket {
    fn publication(&self, s: &mut Series) -> AggregatedEvent {
        let first = s.published == 0;
        let new = s.count - s.published;
        s.published = s.count;
        AggregatedEvent {
            series: s.id,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            refs: self.refs.clone(),
            reason: self.reason,
            note: s.note.clone(),
            count: s.count,
            new,
            first,
            summary: false,
            first_seen: s.first_seen,
            last_seen: s.last_seen,
        }
    }

    /// Owes a summary `count` more occurrences.
    fn fold_other(&mut self, count: u64, at: SystemTime) {
        if self.others == 0 {
            self.others_since = at;
        }
        self.others += count;
    }

    /// The summary Event for the occurrences without a series of their own.
    fn summary(&mut self, id: u64, now: SystemTime) -> AggregatedEvent {
        let n = std::mem::take(&mut self.others);
        AggregatedEvent {
            series: id,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            refs: self.refs.clone(),
            reason: self.reason,
            note: summary_note(self.reason, n, &self.last_note),
            count: n,
            new: n,
            first: true,
            summary: true,
            first_seen: self.others_since,
            last_seen: now,
        }
    }
}

/// The note of a summary of `n` occurrences of `reason`, the last of which said `last`.
fn summary_note(reason: EventReason, n: u64, last: &str) -> String {
    let last = if last.is_empty() {
        String::new()
    } else {
        format!("; the last: {last}")
    };
    format!(
        "{n} {reason} occurrences not published one by one (rate limit){last}; see the node's audit log"
    )
}

type BucketKey = (String, EventReason);

/// Folds occurrences into rate-limited series per (component, reason, note). Pure: time is
/// passed in, nothing is published here.
#[derive(Debug)]
pub struct EventAggregator {
    policy: EventPolicy,
    /// Keyed by the component's uid (a recreated component is a new object) and reason.
    buckets: HashMap<BucketKey, Bucket>,
    open: usize,
    next_id: u64,
    stats: EventStats,
}

impl EventAggregator {
    pub fn new(policy: EventPolicy) -> Self {
        Self {
            policy,
            buckets: HashMap::new(),
            open: 0,
            next_id: 1,
            stats: EventStats::default(),
        }
    }

    /// What was folded or dropped so far.
    pub fn stats(&self) -> EventStats {
        self.stats
    }

    /// Notes one occurrence; returns the publication to make now, if any.
    pub fn observe(&mut self, o: Occurrence<'_>, now: Instant) -> Option<AggregatedEvent> {
        let policy = self.policy;
        let Some(key) = self.bucket(o.subject, o.reason, now) else {
            self.stats.dropped += 1;
            return None;
        };
        let bucket = self.buckets.get_mut(&key)?;
        bucket.last_occurrence = now;
        // Reuses the buffer: no allocation once it is long enough.
        bucket.last_note.clone_from(&o.note);
        if let Some(i) = bucket.series.iter().position(|s| s.note == o.note) {
            let s = &mut bucket.series[i];
            s.count += 1;
            s.last_seen = o.at;
            s.last_occurrence = now;
            if !bucket.tokens.take(&policy, now) {
                // Waits in the count until `due` has a token.
                return None;
            }
            let mut s = bucket.series.swap_remove(i);
            let event = bucket.publication(&mut s);
            bucket.series.push(s);
            self.stats.folded += event.new - 1;
            return Some(event);
        }
        if bucket.others > 0 || self.open >= policy.max_series {
            // A summary is owed (or there is no room): this joins it, and a token pays it.
            bucket.fold_other(1, o.at);
            if !bucket.tokens.take(&policy, now) {
                return None;
            }
            let event = bucket.summary(self.next_id, o.at);
            self.next_id += 1;
            self.stats.folded += event.count;
            return Some(event);
        }
        if !bucket.tokens.take(&policy, now) {
            bucket.fold_other(1, o.at);
            return None;
        }
        let mut s = Series {
            id: self.next_id,
            note: o.note,
            count: 1,
            published: 0,
            first_seen: o.at,
            last_seen: o.at,
            last_occurrence: now,
        };
        self.next_id += 1;
        self.open += 1;
        let event = bucket.publication(&mut s);
        bucket.series.push(s);
        Some(event)
    }

    /// Notes `count` occurrences the audit fairness budget folded (see `super::fold`) for
    /// `subject`. Their notes are unknown, so they are owed a summary (published now if a
    /// token is left).
    pub fn observe_folded(
        &mut self,
        subject: EventSubject<'_>,
        reason: EventReason,
        count: u64,
        at: SystemTime,
        now: Instant,
    ) -> Option<AggregatedEvent> {
        if count == 0 {
            return None;
        }
        let policy = self.policy;
        let Some(key) = self.bucket(subject, reason, now) else {
            self.stats.dropped += count;
            return None;
        };
        let bucket = self.buckets.get_mut(&key)?;
        bucket.last_occurrence = now;
        bucket.fold_other(count, at);
        if !bucket.tokens.take(&policy, now) {
            return None;
        }
        let event = bucket.summary(self.next_id, at);
        self.next_id += 1;
        self.stats.folded += event.count;
        Some(event)
    }

    /// The key of the bucket of (`subject`, `reason`), made if there is room.
    fn bucket(
        &mut self,
        subject: EventSubject<'_>,
        reason: EventReason,
        now: Instant,
    ) -> Option<BucketKey> {
        let key = (subject.refs.component_uid.clone(), reason);
        if !self.buckets.contains_key(&key) {
            if self.buckets.len() >= self.policy.max_series {
                self.close_idle(now);
            }
            if self.buckets.len() >= self.policy.max_series {
                return None;
            }
            self.buckets.insert(
                key.clone(),
                Bucket {
                    namespace: subject.namespace.to_owned(),
                    name: subject.name.to_owned(),
                    refs: subject.refs.clone(),
                    reason,
                    tokens: Tokens::full(&self.policy, now),
                    series: Vec::new(),
                    others: 0,
                    others_since: SystemTime::UNIX_EPOCH,
                    last_note: String::new(),
                    last_occurrence: now,
                },
            );
        }
        Some(key)
    }

    /// Publications whose token has come back: series updates with unpublished repeats,
    /// summaries of occurrences without a series. Closes idle series. Call periodically.
    pub fn due(&mut self, now: Instant) -> Vec<AggregatedEvent> {
        self.collect(now, false)
    }

    /// Every unpublished occurrence, regardless of tokens (at shutdown); forgets everything.
    pub fn drain(&mut self, now: Instant) -> Vec<AggregatedEvent> {
        let out = self.collect(now, true);
        self.buckets.clear();
        self.open = 0;
        out
    }

    fn collect(&mut self, now: Instant, all: bool) -> Vec<AggregatedEvent> {
        let policy = self.policy;
        let wall = SystemTime::now();
        let mut out = Vec::new();
        for bucket in self.buckets.values_mut() {
            let mut series = std::mem::take(&mut bucket.series);
            for s in &mut series {
                if s.count > s.published && (all || bucket.tokens.take(&policy, now)) {
                    let event = bucket.publication(s);
                    self.stats.folded += event.new.saturating_sub(1);
                    out.push(event);
                }
            }
            bucket.series = series;
            if bucket.others > 0 && (all || bucket.tokens.take(&policy, now)) {
                let event = bucket.summary(self.next_id, wall);
                self.next_id += 1;
                self.stats.folded += event.count;
                out.push(event);
            }
        }
        self.close_idle(now);
        out
    }

    /// Takes back a publication the sink refused (its queue was full): its occurrences are
    /// pending again and its token is returned, so a later [`Self::due`] offers them anew.
    /// With `last` (at shutdown, nothing comes later) they are dropped instead.
    pub fn refused(&mut self, event: &AggregatedEvent, last: bool) {
        // Undo what the publication added to `folded`.
        let folded = if event.summary {
            event.count
        } else {
            event.new.saturating_sub(1)
        };
        self.stats.folded = self.stats.folded.saturating_sub(folded);
        let key = (event.refs.component_uid.clone(), event.reason);
        let bucket = match self.buckets.get_mut(&key) {
            Some(bucket) if !last => bucket,
            _ => {
                self.stats.dropped += event.new;
                return;
            }
        };
        bucket.tokens.give_back(&self.policy);
        let series = bucket.series.iter_mut().find(|s| s.id == event.series);
        match series {
            Some(s) if !event.summary => s.published = s.published.saturating_sub(event.new),
            // A summary, or a series closed meanwhile: owed a summary again.
            _ => bucket.fold_other(event.new, event.first_seen),
        }
    }

    fn close_idle(&mut self, now: Instant) {
        let idle = self.policy.idle_close;
        let mut open = 0;
        self.buckets.retain(|_, b| {
            // A series with unpublished occurrences stays until they are published.
            b.series
                .retain(|s| s.count > s.published || now.duration_since(s.last_occurrence) < idle);
            open += b.series.len();
            !b.series.is_empty() || b.others > 0 || now.duration_since(b.last_occurrence) < idle
        });
        self.open = open;
    }
}
