//! The audit pipeline: a bounded, non-blocking queue from host functions to one writer thread
//! that feeds (a) a JSON-lines audit log on the node, (b) Prometheus counters and (c) an
//! [`EventSink`] (the Kubernetes Event publisher) through an [`EventAggregator`] that folds
//! repeats into rate-limited series per (component, reason).
//!
//! Hot path ([`AuditSink::record`]): bump one pre-resolved counter, `try_send` a small
//! record into a bounded `std::sync::mpsc::sync_channel`. The writer polls the queue (backing
//! off to 20 ms when idle) instead of parking in it, so a sender never pays for a wake-up. No locks of ours, no allocation
//! (the component is an `Arc` made once per instance; texts are fixed inline buffers). A full
//! queue never blocks the guest: the event is counted in `airssys_audit_dropped_total` and the
//! writer thread logs the drops periodically through `tracing`. Counters are bumped before the
//! queue, so metrics stay exact even when the log loses events.
//!
//! Granted checks are counted ([`AuditSink::count_grant`]), not logged one by one.
//!
//! The log file is rotated by size on the writer thread ([`Rotation`]): `audit.jsonl` becomes
//! `audit.jsonl.1`, older files shift up to `.N-1` and the oldest is deleted. Rotation happens
//! between whole lines, so a record is never split across files, and it never touches the
//! hot path.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;

use crate::grant::CapabilityKind;
use crate::metrics::{AuditMetrics, KindLabels, QuotaLabels, ReasonLabels};

/// Bytes kept of a free-text detail (capability target, trap message, reason).
pub const TEXT_CAPACITY: usize = 96;

/// A short text stored inline (no heap), cut at a char boundary when longer than
/// [`TEXT_CAPACITY`]; [`Text::truncated`] says so.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Text {
    len: u8,
    truncated: bool,
    buf: [u8; TEXT_CAPACITY],
}

impl Text {
    /// Copies `s`, cut to at most [`TEXT_CAPACITY`] bytes on a char boundary.
    #[inline]
    pub fn new(s: &str) -> Self {
        let mut end = s.len().min(TEXT_CAPACITY);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut buf = [0u8; TEXT_CAPACITY];
        buf[..end].copy_from_slice(&s.as_bytes()[..end]);
        Self {
            // end <= TEXT_CAPACITY (96) fits in u8.
            len: end as u8,
            truncated: end < s.len(),
            buf,
        }
    }

    /// The kept text.
    pub fn as_str(&self) -> &str {
        // Always valid: built from a &str cut on a char boundary.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }

    /// Whether the original text was longer than what is kept.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())?;
        if self.truncated {
            f.write_str("…")?;
        }
        Ok(())
    }
}

/// Which limit an instance hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaKind {
    Memory,
    Fuel,
    CpuTime,
    Timeout,
    Storage,
    MessageRate,
    MessageSize,
    Mailbox,
    Concurrency,
}

impl QuotaKind {
    /// Every quota, in counter-array order (`quota as usize`).
    pub const ALL: [QuotaKind; 9] = [
        Self::Memory,
        Self::Fuel,
        Self::CpuTime,
        Self::Timeout,
        Self::Storage,
        Self::MessageRate,
        Self::MessageSize,
        Self::Mailbox,
        Self::Concurrency,
    ];

    /// Stable name used in the audit log and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Fuel => "fuel",
            Self::CpuTime => "cpu-time",
            Self::Timeout => "timeout",
            Self::Storage => "storage",
            Self::MessageRate => "message-rate",
            Self::MessageSize => "message-size",
            Self::Mailbox => "mailbox",
            Self::Concurrency => "concurrency",
        }
    }
}

/// The CamelCase reason of an audit event: the `kind` field of a log line and the `reason`
/// of the Kubernetes Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    CapabilityDenied,
    CapabilityGranted,
    QuotaExceeded,
    Killed,
    Trapped,
    Started,
    Restarted,
    CrashLoop,
    MessageRejected,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CapabilityDenied => "CapabilityDenied",
            Self::CapabilityGranted => "CapabilityGranted",
            Self::QuotaExceeded => "QuotaExceeded",
            Self::Killed => "Killed",
            Self::Trapped => "Trapped",
            Self::Started => "Started",
            Self::Restarted => "Restarted",
            Self::CrashLoop => "CrashLoop",
            Self::MessageRejected => "MessageRejected",
        }
    }

    /// Whether the Kubernetes Event is a `Warning` (else `Normal`).
    pub fn is_warning(self) -> bool {
        !matches!(
            self,
            Self::Started | Self::Restarted | Self::CapabilityGranted
        )
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    /// A capability check failed; `target` is what the guest asked for (path, `host:port`,
    /// bucket, topic, component, env key).
    CapabilityDenied {
        kind: CapabilityKind,
        target: Text,
    },
    /// A capability check passed. Only counted; [`AuditSink::count_grant`] is cheaper.
    CapabilityGranted {
        kind: CapabilityKind,
    },
    QuotaExceeded {
        quota: QuotaKind,
    },
    Killed {
        reason: Text,
    },
    Trapped {
        message: Text,
    },
    Started,
    Restarted,
    CrashLoop,
    MessageRejected {
        reason: Text,
    },
}

impl AuditKind {
    pub fn reason(&self) -> Reason {
        match self {
            Self::CapabilityDenied { .. } => Reason::CapabilityDenied,
            Self::CapabilityGranted { .. } => Reason::CapabilityGranted,
            Self::QuotaExceeded { .. } => Reason::QuotaExceeded,
            Self::Killed { .. } => Reason::Killed,
            Self::Trapped { .. } => Reason::Trapped,
            Self::Started => Reason::Started,
            Self::Restarted => Reason::Restarted,
            Self::CrashLoop => Reason::CrashLoop,
            Self::MessageRejected { .. } => Reason::MessageRejected,
        }
    }

    /// The `detail` object of a log line.
    fn detail(&self) -> serde_json::Value {
        use serde_json::json;
        let text = |t: &Text| json!(t.as_str());
        match self {
            Self::CapabilityDenied { kind, target } => json!({
                "capability": kind.as_str(),
                "target": text(target),
                "truncated": target.truncated(),
            }),
            Self::CapabilityGranted { kind } => json!({ "capability": kind.as_str() }),
            Self::QuotaExceeded { quota } => json!({ "quota": quota.as_str() }),
            Self::Killed { reason } | Self::MessageRejected { reason } => {
                json!({ "reason": text(reason), "truncated": reason.truncated() })
            }
            Self::Trapped { message } => {
                json!({ "message": text(message), "truncated": message.truncated() })
            }
            Self::Started | Self::Restarted | Self::CrashLoop => json!({}),
        }
    }

    /// One human sentence for a Kubernetes Event note.
    fn note(&self) -> String {
        match self {
            Self::CapabilityDenied { kind, target } => {
                format!("denied {} access to {target}: not granted", kind.as_str())
            }
            Self::CapabilityGranted { kind } => format!("granted {} access", kind.as_str()),
            Self::QuotaExceeded { quota } => format!("exceeded its {} quota", quota.as_str()),
            Self::Killed { reason } => format!("instance killed: {reason}"),
            Self::Trapped { message } => format!("instance trapped: {message}"),
            Self::Started => "instance started".to_owned(),
            Self::Restarted => "instance restarted by its supervisor".to_owned(),
            Self::CrashLoop => "instance keeps crashing; restarts are backing off".to_owned(),
            Self::MessageRejected { reason } => format!("message rejected: {reason}"),
        }
    }
}

/// The component revision events are about; built once per revision and shared by all its
/// instances, so starting an instance allocates only its [`InstanceIdentity`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentIdentity {
    pub namespace: String,
    pub name: String,
    /// `namespace/name`, the storage and audit key of the component.
    pub key: String,
    /// Artifact digest (`sha256:…`).
    pub digest: String,
}

impl ComponentIdentity {
    pub fn new(namespace: &str, name: &str, digest: &str) -> Arc<Self> {
        Arc::new(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key: format!("{namespace}/{name}"),
            digest: digest.to_owned(),
        })
    }
}

/// Who an event is about; built once per instance and shared by its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceIdentity {
    pub component: Arc<ComponentIdentity>,
    /// Agent-local instance number.
    pub instance: u64,
}

impl InstanceIdentity {
    /// Instance `instance` of `component`.
    pub fn of(component: &Arc<ComponentIdentity>, instance: u64) -> Arc<Self> {
        Arc::new(Self {
            component: Arc::clone(component),
            instance,
        })
    }

    /// Instance `instance` of a revision named here (tests, benches, one-off events).
    pub fn new(namespace: &str, name: &str, instance: u64, digest: &str) -> Arc<Self> {
        Self::of(&ComponentIdentity::new(namespace, name, digest), instance)
    }
}

/// One audit record: small, no heap of its own.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub at: SystemTime,
    pub instance: Arc<InstanceIdentity>,
    pub kind: AuditKind,
}

impl AuditEvent {
    /// An event happening now.
    #[inline]
    pub fn now(instance: &Arc<InstanceIdentity>, kind: AuditKind) -> Self {
        Self {
            at: SystemTime::now(),
            instance: Arc::clone(instance),
            kind,
        }
    }
}

/// Messages to the writer thread.
enum Command {
    Event(AuditEvent),
    Flush(SyncSender<()>),
    Shutdown,
}

/// Counters the hot path bumps, resolved out of their families once at start.
#[derive(Debug)]
struct HotCounters {
    denials: [Counter; CapabilityKind::ALL.len()],
    grants: [Counter; CapabilityKind::ALL.len()],
    quota: [Counter; QuotaKind::ALL.len()],
    kills: Counter,
    dropped: Counter,
}

impl HotCounters {
    fn resolve(m: &AuditMetrics) -> Self {
        let kind = |family: &prometheus_client::metrics::family::Family<KindLabels, Counter>| {
            CapabilityKind::ALL.map(|kind| family.get_or_create_owned(&KindLabels { kind }))
        };
        Self {
            denials: kind(&m.denials),
            grants: kind(&m.grants),
            quota: QuotaKind::ALL
                .map(|quota| m.quota_breaches.get_or_create_owned(&QuotaLabels { quota })),
            kills: m.kills.clone(),
            dropped: m.dropped.clone(),
        }
    }
}

/// The host functions' handle on the pipeline. Cheap to clone; never blocks.
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: SyncSender<Command>,
    counters: Arc<HotCounters>,
}

impl AuditSink {
    /// Records an event: counts it, then queues it for the log and Events unless the queue is
    /// full (then it is counted as dropped). Never blocks, never allocates.
    #[inline]
    pub fn record(&self, event: AuditEvent) {
        let c = &*self.counters;
        match event.kind {
            AuditKind::CapabilityGranted { kind } => {
                c.grants[kind as usize].inc();
                return;
            }
            AuditKind::CapabilityDenied { kind, .. } => {
                c.denials[kind as usize].inc();
            }
            AuditKind::QuotaExceeded { quota } => {
                c.quota[quota as usize].inc();
            }
            AuditKind::Killed { .. } => {
                c.kills.inc();
            }
            _ => {}
        }
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Command::Event(event))
        {
            c.dropped.inc();
        }
    }

    /// Counts a granted check (not logged per call).
    #[inline]
    pub fn count_grant(&self, kind: CapabilityKind) {
        self.counters.grants[kind as usize].inc();
    }

    /// Records a denied check of `kind` on `target` for `instance`.
    #[inline]
    pub fn deny(&self, instance: &Arc<InstanceIdentity>, kind: CapabilityKind, target: &str) {
        self.record(AuditEvent::now(
            instance,
            AuditKind::CapabilityDenied {
                kind,
                target: Text::new(target),
            },
        ));
    }

    /// Counts or records the outcome of a check and passes it through:
    /// `if sink.check(&id, CapabilityKind::Storage, bucket, table.check_bucket(bucket, a)) {..}`.
    #[inline]
    pub fn check(
        &self,
        instance: &Arc<InstanceIdentity>,
        kind: CapabilityKind,
        target: &str,
        allowed: bool,
    ) -> bool {
        if allowed {
            self.count_grant(kind);
        } else {
            self.deny(instance, kind, target);
        }
        allowed
    }
}

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
        let key = format!("{}/{}", o.namespace, o.name);
        if let Some(s) = self
            .series
            .get_mut(&key)
            .and_then(|v| v.iter_mut().find(|s| s.reason == o.reason))
        {
            s.count += 1;
            s.note = o.note;
            s.last_seen = o.at;
            s.last_occurrence = now;
            return (now.duration_since(s.last_publish) >= self.policy.window)
                .then(|| s.event(now));
        }
        if self.open >= self.policy.max_series {
            self.close_idle(now);
            if self.open >= self.policy.max_series {
                self.suppressed += 1;
                return None;
            }
        }
        let mut s = Series {
            reason: o.reason,
            namespace: o.namespace.to_owned(),
            name: o.name.to_owned(),
            note: o.note,
            count: 1,
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

/// What can go wrong starting the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open the audit log {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the audit writer thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Size-based rotation of the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// A file is rotated before a line would take it past this many bytes (a single line
    /// longer than this gets a file of its own).
    pub max_bytes: u64,
    /// Files kept, the live one included (at least 1): `audit.jsonl` plus
    /// `audit.jsonl.1` … `audit.jsonl.{max_files - 1}`. The oldest is deleted on rotation.
    pub max_files: usize,
}

impl Default for Rotation {
    /// 64 MiB × 5 files.
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_files: 5,
        }
    }
}

/// Pipeline settings.
pub struct AuditConfig {
    /// This node's name, written on every line.
    pub node: String,
    /// JSON-lines file, appended to; `None` writes no file (counters and Events only).
    pub log_path: Option<PathBuf>,
    /// Size-based rotation of `log_path`; `None` lets the file grow without bound.
    pub rotation: Option<Rotation>,
    /// Queue bound; beyond it events are dropped and counted.
    pub capacity: usize,
    pub metrics: AuditMetrics,
    pub events: Option<Box<dyn EventSink>>,
    pub policy: EventPolicy,
    /// How often the writer logs drops and publishes due series.
    pub tick: Duration,
}

impl fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditConfig")
            .field("node", &self.node)
            .field("log_path", &self.log_path)
            .field("rotation", &self.rotation)
            .field("capacity", &self.capacity)
            .field("events", &self.events.is_some())
            .field("policy", &self.policy)
            .field("tick", &self.tick)
            .finish_non_exhaustive()
    }
}

impl AuditConfig {
    /// Defaults: 8192 queued events, 1 s tick, default [`EventPolicy`], no file (rotated at
    /// 64 MiB × 5 files once a `log_path` is set), no Events.
    pub fn new(node: impl Into<String>, metrics: &AuditMetrics) -> Self {
        Self {
            node: node.into(),
            log_path: None,
            rotation: Some(Rotation::default()),
            capacity: 8192,
            metrics: metrics.clone(),
            events: None,
            policy: EventPolicy::default(),
            tick: Duration::from_secs(1),
        }
    }
}

/// Starts the pipeline.
#[derive(Debug)]
pub struct Auditor;

impl Auditor {
    /// Opens the log and spawns the writer thread. Keep the handle; dropping or
    /// [`AuditorHandle::shutdown`] drains the queue, flushes and stops the thread.
    pub fn start(config: AuditConfig) -> Result<(AuditSink, AuditorHandle), AuditError> {
        let file =
            match &config.log_path {
                Some(path) => Some(LogFile::open(path.clone(), config.rotation).map_err(
                    |source| AuditError::Open {
                        path: path.clone(),
                        source,
                    },
                )?),
                None => None,
            };
        let (tx, rx) = mpsc::sync_channel(config.capacity.max(1));
        let counters = Arc::new(HotCounters::resolve(&config.metrics));
        let writer = Writer {
            node: config.node,
            file,
            metrics: config.metrics,
            events: config.events,
            aggregator: EventAggregator::new(config.policy),
            reported_drops: 0,
            reported_suppressed: 0,
            reported_write_errors: 0,
            line: Vec::with_capacity(512),
        };
        let tick = config.tick;
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx, tick))
            .map_err(AuditError::Spawn)?;
        Ok((
            AuditSink {
                tx: tx.clone(),
                counters,
            },
            AuditorHandle {
                tx,
                thread: Some(thread),
            },
        ))
    }
}

/// Owns the writer thread.
#[derive(Debug)]
pub struct AuditorHandle {
    tx: SyncSender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl AuditorHandle {
    /// Waits until every event queued before this call is written and flushed.
    pub fn flush(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        if self.tx.send(Command::Flush(ack)).is_ok() {
            let _ = done.recv();
        }
    }

    /// Drains the queue, flushes the log, publishes pending Event series and stops.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // Blocking is fine here (not a guest): the writer is draining the queue.
            let _ = self.tx.send(Command::Shutdown);
            if thread.join().is_err() {
                tracing::error!("audit writer thread panicked");
            }
        }
    }
}

impl Drop for AuditorHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The audit log file and its rotation; owned by the writer thread.
struct LogFile {
    path: PathBuf,
    /// `None` after a failed reopen; retried on the next line.
    out: Option<BufWriter<File>>,
    /// Bytes in the live file, including what is still buffered.
    size: u64,
    rotation: Option<Rotation>,
}

impl LogFile {
    fn open(path: PathBuf, rotation: Option<Rotation>) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            out: Some(BufWriter::new(file)),
            size,
            rotation,
        })
    }

    /// Writes one whole line (with its newline), rotating first if it would overflow the
    /// live file.
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let len = line.len() as u64;
        if let Some(r) = self.rotation
            && self.size > 0
            && self.size.saturating_add(len) > r.max_bytes
        {
            self.rotate(r)?;
        }
        if self.out.is_none() {
            *self = Self::open(std::mem::take(&mut self.path), self.rotation)?;
        }
        if let Some(out) = &mut self.out {
            out.write_all(line)?;
            self.size += len;
        }
        Ok(())
    }

    /// `path` → `path.1`, `path.i` → `path.i+1`, dropping what would pass `max_files - 1`.
    fn rotate(&mut self, r: Rotation) -> std::io::Result<()> {
        if let Some(mut out) = self.out.take() {
            out.flush()?;
        }
        let kept = r.max_files.max(1) - 1;
        if kept == 0 {
            // Only the live file is kept: start it over.
            std::fs::remove_file(&self.path).or_else(not_found_ok)?;
        } else {
            std::fs::remove_file(rotated(&self.path, kept)).or_else(not_found_ok)?;
            for i in (1..kept).rev() {
                std::fs::rename(rotated(&self.path, i), rotated(&self.path, i + 1))
                    .or_else(not_found_ok)?;
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        *self = Self::open(std::mem::take(&mut self.path), Some(r))?;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.out {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

/// The name of the `n`th rotated file: `audit.jsonl.n`.
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn not_found_ok(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// The writer thread's state.
struct Writer {
    node: String,
    file: Option<LogFile>,
    metrics: AuditMetrics,
    events: Option<Box<dyn EventSink>>,
    aggregator: EventAggregator,
    reported_drops: u64,
    reported_suppressed: u64,
    reported_write_errors: u64,
    /// Reused buffer for one serialized line.
    line: Vec<u8>,
}

/// Events handled between two flushes of the log file.
const BATCH: usize = 1024;
/// Writer poll interval after the first empty poll, doubling while idle up to [`MAX_POLL`]
/// (the longest an event waits in the queue when the node is quiet).
const MIN_POLL: Duration = Duration::from_millis(1);
const MAX_POLL: Duration = Duration::from_millis(20);

impl Writer {
    fn run(mut self, rx: Receiver<Command>, tick: Duration) {
        let mut next_tick = Instant::now() + tick;
        let mut idle = MIN_POLL;
        loop {
            // Poll rather than block in recv(): a reader parked in the channel makes every
            // sender pay a futex wake (microseconds), and the senders are guests.
            let mut stop = false;
            let mut n = 0;
            while !stop && n < BATCH {
                match rx.try_recv() {
                    Ok(cmd) => stop = self.handle(cmd),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => stop = true,
                }
                n += 1;
            }
            self.flush_file();
            let now = Instant::now();
            if now >= next_tick || stop {
                self.on_tick(now);
                next_tick = now + tick;
            }
            if stop {
                break;
            }
            if n == 0 {
                // Idle: back off up to MAX_POLL; a busy queue is drained without sleeping.
                std::thread::sleep(idle.min(next_tick.saturating_duration_since(now)));
                idle = (idle * 2).min(MAX_POLL);
            } else {
                idle = MIN_POLL;
            }
        }
        // Anything queued after Shutdown was sent.
        while let Ok(cmd) = rx.try_recv() {
            if let Command::Event(e) = cmd {
                self.write(&e);
            }
        }
        self.flush_file();
        let now = Instant::now();
        for event in self.aggregator.drain(now) {
            self.publish(event);
        }
        self.report();
    }

    /// Returns whether to stop.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Event(e) => {
                self.write(&e);
                false
            }
            Command::Flush(ack) => {
                self.flush_file();
                let _ = ack.send(());
                false
            }
            Command::Shutdown => true,
        }
    }

    fn write(&mut self, e: &AuditEvent) {
        let reason = e.kind.reason();
        self.metrics
            .written
            .get_or_create(&ReasonLabels { reason })
            .inc();
        if let Some(file) = &mut self.file {
            // Serialize first, then write the whole line: a rotation can only fall between
            // two lines.
            self.line.clear();
            let ok = serde_json::to_writer(&mut self.line, &log_line(&self.node, e)).is_ok() && {
                self.line.push(b'\n');
                file.write_line(&self.line).is_ok()
            };
            if !ok {
                self.metrics.write_errors.inc();
            }
        }
        if self.events.is_some() {
            let occurrence = Occurrence {
                namespace: &e.instance.component.namespace,
                name: &e.instance.component.name,
                reason,
                note: format!(
                    "{} (instance {} on node {})",
                    e.kind.note(),
                    e.instance.instance,
                    self.node
                ),
                at: e.at,
            };
            if let Some(event) = self.aggregator.observe(occurrence, Instant::now()) {
                self.publish(event);
            }
        }
    }

    fn publish(&mut self, event: AggregatedEvent) {
        if let Some(sink) = &mut self.events {
            sink.publish(event);
        }
    }

    fn flush_file(&mut self) {
        if let Some(file) = &mut self.file
            && file.flush().is_err()
        {
            self.metrics.write_errors.inc();
        }
    }

    fn on_tick(&mut self, now: Instant) {
        for event in self.aggregator.due(now) {
            self.publish(event);
        }
        self.report();
    }

    /// Logs what was lost since the last report, so nothing is lost silently.
    fn report(&mut self) {
        let drops = self.metrics.dropped.get();
        if drops > self.reported_drops {
            tracing::warn!(
                dropped = drops - self.reported_drops,
                total = drops,
                "audit queue full: audit events dropped (counted in airssys_audit_dropped_total)"
            );
            self.reported_drops = drops;
        }
        let suppressed = self.aggregator.suppressed();
        if suppressed > self.reported_suppressed {
            self.metrics
                .events_suppressed
                .inc_by(suppressed - self.reported_suppressed);
            tracing::warn!(
                suppressed = suppressed - self.reported_suppressed,
                "too many open Event series: occurrences not published as Kubernetes Events"
            );
            self.reported_suppressed = suppressed;
        }
        let errors = self.metrics.write_errors.get();
        if errors > self.reported_write_errors {
            tracing::error!(
                failed = errors - self.reported_write_errors,
                "writing the audit log failed"
            );
            self.reported_write_errors = errors;
        }
    }
}

/// One JSON line: timestamp, node, component, instance, digest, kind, detail.
fn log_line(node: &str, e: &AuditEvent) -> serde_json::Value {
    let timestamp = jiff::Timestamp::try_from(e.at)
        .map(|t| t.to_string())
        .unwrap_or_default();
    serde_json::json!({
        "timestamp": timestamp,
        "node": node,
        "component": e.instance.component.key,
        "instance": e.instance.instance,
        "digest": e.instance.component.digest,
        "kind": e.kind.reason().as_str(),
        "detail": e.kind.detail(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn id() -> Arc<InstanceIdentity> {
        InstanceIdentity::new("team-a", "counter", 7, "sha256:abc")
    }

    #[test]
    fn text_keeps_short_strings_and_cuts_long_ones_on_char_boundaries() {
        let t = Text::new("api.example.com:443");
        assert_eq!(t.as_str(), "api.example.com:443");
        assert!(!t.truncated());
        let long = "é".repeat(60); // 120 bytes, 2 per char
        let t = Text::new(&long);
        assert!(t.truncated());
        assert_eq!(t.as_str().len(), TEXT_CAPACITY);
        assert_eq!(t.as_str(), "é".repeat(48));
        let odd = format!("a{}", "é".repeat(60)); // boundary falls mid-char at 96
        let t = Text::new(&odd);
        assert_eq!(t.as_str().len(), TEXT_CAPACITY - 1);
        assert!(t.to_string().ends_with('…'));
    }

    #[test]
    fn audit_event_is_small_and_heap_free() {
        // An Arc pointer, a SystemTime and an inline text: fits in a few cache lines.
        assert!(
            std::mem::size_of::<AuditEvent>() <= 136,
            "{}",
            std::mem::size_of::<AuditEvent>()
        );
        fn is_copy<T: Copy>() {}
        is_copy::<AuditKind>();
    }

    fn start(
        dir: &tempfile::TempDir,
        metrics: &Metrics,
        capacity: usize,
        events: Option<Box<dyn EventSink>>,
    ) -> (AuditSink, AuditorHandle, PathBuf) {
        let path = dir.path().join("audit.jsonl");
        let mut config = AuditConfig::new("node-1", &metrics.audit);
        config.log_path = Some(path.clone());
        config.capacity = capacity;
        config.events = events;
        let (sink, handle) = Auditor::start(config).unwrap();
        (sink, handle, path)
    }

    fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn events_become_json_lines_with_identity_kind_and_detail() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let (sink, handle, path) = start(&dir, &metrics, 64, None);
        let id = id();
        sink.deny(&id, CapabilityKind::Network, "evil.example.com:443");
        sink.record(AuditEvent::now(
            &id,
            AuditKind::QuotaExceeded {
                quota: QuotaKind::Memory,
            },
        ));
        sink.record(AuditEvent::now(
            &id,
            AuditKind::Killed {
                reason: "timeout".into(),
            },
        ));
        sink.record(AuditEvent::now(&id, AuditKind::Started));
        handle.flush();
        let got = lines(&path);
        assert_eq!(got.len(), 4);
        let first = &got[0];
        assert_eq!(first["node"], "node-1");
        assert_eq!(first["component"], "team-a/counter");
        assert_eq!(first["instance"], 7);
        assert_eq!(first["digest"], "sha256:abc");
        assert_eq!(first["kind"], "CapabilityDenied");
        assert_eq!(first["detail"]["capability"], "network");
        assert_eq!(first["detail"]["target"], "evil.example.com:443");
        assert!(
            first["timestamp"]
                .as_str()
                .unwrap()
                .parse::<jiff::Timestamp>()
                .is_ok()
        );
        assert_eq!(got[1]["detail"]["quota"], "memory");
        assert_eq!(got[2]["detail"]["reason"], "timeout");
        assert_eq!(got[3]["kind"], "Started");
        handle.shutdown();
    }

    #[test]
    fn grants_are_counted_not_logged_and_denials_counted_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let (sink, handle, path) = start(&dir, &metrics, 64, None);
        let id = id();
        for _ in 0..5 {
            assert!(sink.check(&id, CapabilityKind::Storage, "counters", true));
        }
        sink.record(AuditEvent::now(
            &id,
            AuditKind::CapabilityGranted {
                kind: CapabilityKind::Storage,
            },
        ));
        assert!(!sink.check(&id, CapabilityKind::Publish, "orders.x", false));
        sink.record(AuditEvent::now(
            &id,
            AuditKind::Killed {
                reason: "fuel".into(),
            },
        ));
        handle.flush();
        assert_eq!(
            lines(&path).len(),
            2,
            "one denial and one kill; grants are not logged"
        );
        let text = metrics.encode();
        for line in [
            "airssys_capability_grants_total{kind=\"storage\"} 6",
            "airssys_capability_denials_total{kind=\"publish\"} 1",
            "airssys_instance_kills_total 1",
            "airssys_audit_events_total{reason=\"CapabilityDenied\"} 1",
            "airssys_audit_dropped_total 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    /// An event sink that blocks the writer until released, to fill the queue.
    struct Gate(mpsc::Receiver<()>, mpsc::Sender<AggregatedEvent>);
    impl EventSink for Gate {
        fn publish(&mut self, event: AggregatedEvent) {
            let _ = self.0.recv();
            let _ = self.1.send(event);
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let (release, gate) = mpsc::channel();
        let (out, published) = mpsc::channel();
        let (sink, handle, path) = start(&dir, &metrics, 4, Some(Box::new(Gate(gate, out))));
        let id = id();
        // The first event reaches the writer, which then waits in the gate; the next 4 fill
        // the queue; the remaining 5 must be dropped, and record() must return each time.
        sink.record(AuditEvent::now(&id, AuditKind::Started));
        while metrics
            .audit
            .written
            .get_or_create(&ReasonLabels {
                reason: Reason::Started,
            })
            .get()
            == 0
        {
            std::thread::yield_now();
        }
        for i in 0..9 {
            sink.deny(&id, CapabilityKind::Env, &format!("K{i}"));
        }
        assert_eq!(metrics.audit.dropped.get(), 5);
        assert_eq!(
            metrics
                .audit
                .denials
                .get_or_create(&KindLabels {
                    kind: CapabilityKind::Env
                })
                .get(),
            9,
            "denials are counted even when their log record is dropped"
        );
        for _ in 0..16 {
            release.send(()).unwrap();
        }
        handle.shutdown();
        assert_eq!(lines(&path).len(), 1 + 4);
        assert!(published.try_iter().count() >= 2);
        assert!(metrics.encode().contains("airssys_audit_dropped_total 5"));
    }

    #[test]
    fn records_after_shutdown_are_counted_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let (sink, handle, _path) = start(&dir, &metrics, 8, None);
        handle.shutdown();
        sink.record(AuditEvent::now(&id(), AuditKind::CrashLoop));
        assert_eq!(metrics.audit.dropped.get(), 1);
    }

    #[test]
    fn shutdown_writes_everything_queued_and_the_log_is_appended_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let (sink, handle, path) = start(&dir, &metrics, 1024, None);
        for _ in 0..500 {
            sink.record(AuditEvent::now(
                &id(),
                AuditKind::Trapped {
                    message: "unreachable".into(),
                },
            ));
        }
        drop(handle); // Drop shuts down too.
        assert_eq!(lines(&path).len(), 500);
        let (sink, handle, path) = start(&dir, &metrics, 16, None);
        sink.record(AuditEvent::now(&id(), AuditKind::Restarted));
        handle.shutdown();
        assert_eq!(lines(&path).len(), 501);
    }

    /// Starts a pipeline on `audit.jsonl` in `dir` with `rotation`.
    fn start_rotating(
        dir: &tempfile::TempDir,
        metrics: &Metrics,
        rotation: Rotation,
    ) -> (AuditSink, AuditorHandle, PathBuf) {
        let path = dir.path().join("audit.jsonl");
        let mut config = AuditConfig::new("node-1", &metrics.audit);
        config.log_path = Some(path.clone());
        config.capacity = 100_000;
        config.rotation = Some(rotation);
        let (sink, handle) = Auditor::start(config).unwrap();
        (sink, handle, path)
    }

    /// Every `target` in the live file and its rotated files, oldest first, and how many
    /// files there were. Every line must parse: none is split.
    fn rotated_targets(path: &std::path::Path) -> (Vec<String>, usize) {
        let mut files: Vec<PathBuf> = (1..100)
            .map(|n| rotated(path, n))
            .take_while(|p| p.exists())
            .collect();
        files.reverse();
        files.push(path.to_path_buf());
        let targets = files
            .iter()
            .flat_map(|f| lines(f))
            .map(|l| l["detail"]["target"].as_str().unwrap().to_owned())
            .collect();
        (targets, files.len())
    }

    #[test]
    fn rotation_keeps_every_record_exactly_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let rotation = Rotation {
            max_bytes: 1024,
            max_files: 100,
        };
        let (sink, handle, path) = start_rotating(&dir, &metrics, rotation);
        let id = id();
        for i in 0..200 {
            sink.deny(&id, CapabilityKind::Network, &format!("t-{i}"));
        }
        handle.shutdown();
        let (targets, files) = rotated_targets(&path);
        let want: Vec<String> = (0..200).map(|i| format!("t-{i}")).collect();
        assert_eq!(targets, want, "every record once, in order, none split");
        assert!(files > 10, "a 1 KiB limit must rotate: {files} files");
        for n in 1..files {
            let len = std::fs::metadata(rotated(&path, n)).unwrap().len();
            assert!(len <= 1024, "file .{n} is {len} bytes");
        }
        assert_eq!(metrics.audit.write_errors.get(), 0);
    }

    #[test]
    fn rotation_bounds_the_number_of_files_and_keeps_the_newest_records() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let rotation = Rotation {
            max_bytes: 1024,
            max_files: 3,
        };
        let (sink, handle, path) = start_rotating(&dir, &metrics, rotation);
        let id = id();
        for i in 0..500 {
            sink.deny(&id, CapabilityKind::Network, &format!("t-{i}"));
            if i % 100 == 0 {
                handle.flush();
            }
        }
        handle.shutdown();
        let (targets, files) = rotated_targets(&path);
        assert_eq!(files, 3, "live file plus two rotated ones");
        assert!(!rotated(&path, 3).exists());
        let entries = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(entries, 3, "nothing else left behind");
        // What survives is the newest records, contiguous: nothing lost in between,
        // nothing twice.
        let first: usize = targets[0].trim_start_matches("t-").parse().unwrap();
        let want: Vec<String> = (first..500).map(|i| format!("t-{i}")).collect();
        assert_eq!(targets, want);
        assert!(targets.len() > 10);
    }

    #[test]
    fn rotation_counts_what_an_appended_log_already_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        // A log left by a previous run, already at the limit.
        let old = serde_json::json!({"detail": {"target": "old"}}).to_string() + "\n";
        std::fs::write(&path, old.repeat(20)).unwrap();
        let metrics = Metrics::new();
        let rotation = Rotation {
            max_bytes: old.len() as u64 * 20,
            max_files: 2,
        };
        let (sink, handle, path) = start_rotating(&dir, &metrics, rotation);
        sink.deny(&id(), CapabilityKind::Network, "new");
        handle.shutdown();
        let (targets, files) = rotated_targets(&path);
        assert_eq!(files, 2);
        assert_eq!(targets.iter().filter(|t| *t == "old").count(), 20);
        assert_eq!(targets.last().map(String::as_str), Some("new"));
        assert_eq!(lines(&path).len(), 1, "the new record starts a fresh file");
    }

    #[test]
    fn events_reach_the_sink_aggregated() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let (tx, rx) = mpsc::channel();
        let (sink, handle, _path) = start(&dir, &metrics, 64, Some(Box::new(tx)));
        let id = id();
        for _ in 0..10 {
            sink.deny(&id, CapabilityKind::Filesystem, "/etc/passwd");
        }
        handle.shutdown();
        let events: Vec<AggregatedEvent> = rx.try_iter().collect();
        // The first occurrence at once; the other 9 folded into one update at shutdown.
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events[0].first && events[0].count == 1);
        assert!(!events[1].first && events[1].count == 10);
        assert_eq!(events[1].reason, Reason::CapabilityDenied);
        assert!(events[1].warning);
        assert_eq!(
            (events[1].namespace.as_str(), events[1].name.as_str()),
            ("team-a", "counter")
        );
        assert!(events[1].note.contains("/etc/passwd"), "{}", events[1].note);
    }

    fn occ(name: &str, reason: Reason) -> Occurrence<'_> {
        Occurrence {
            namespace: "ns",
            name,
            reason,
            note: format!("{name} {}", reason.as_str()),
            at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn aggregator_spec() {
        let policy = EventPolicy {
            window: Duration::from_secs(10),
            idle_close: Duration::from_secs(100),
            max_series: 2,
        };
        let mut agg = EventAggregator::new(policy);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);

        // first occurrence of a series is published at once
        let e = agg.observe(occ("a", Reason::Trapped), at(0)).unwrap();
        assert!(e.first && e.count == 1 && e.warning);
        // repeats within the window are folded
        assert!(agg.observe(occ("a", Reason::Trapped), at(1)).is_none());
        assert!(agg.observe(occ("a", Reason::Trapped), at(2)).is_none());
        // another reason of the same component is its own series
        assert!(agg.observe(occ("a", Reason::Started), at(2)).unwrap().first);
        // nothing due before the window ends
        assert!(agg.due(at(9)).is_empty());
        // at the window end the folded repeats go out as one series update
        let due = agg.due(at(10));
        assert_eq!(due.len(), 1);
        assert!(!due[0].first && due[0].count == 3 && due[0].reason == Reason::Trapped);
        // nothing pending: nothing due
        assert!(agg.due(at(30)).is_empty());
        // a repeat after the window is published immediately with the running count
        let e = agg.observe(occ("a", Reason::Trapped), at(31)).unwrap();
        assert!(!e.first && e.count == 4);
        // max_series: a third series is suppressed and counted
        assert!(agg.observe(occ("b", Reason::Killed), at(32)).is_none());
        assert_eq!(agg.suppressed(), 1);
        // idle series close; then a new series fits and starts over
        assert!(agg.due(at(200)).is_empty());
        let e = agg.observe(occ("b", Reason::Killed), at(201)).unwrap();
        assert!(e.first && e.count == 1);
        let e = agg.observe(occ("a", Reason::Trapped), at(202)).unwrap();
        assert!(
            e.first && e.count == 1,
            "a closed series starts a new Event"
        );
        // drain publishes whatever is pending regardless of the window
        assert!(agg.observe(occ("a", Reason::Trapped), at(203)).is_none());
        let drained = agg.drain(at(203));
        assert_eq!(drained.len(), 1);
        assert_eq!(drained[0].count, 2);
    }

    #[test]
    fn normal_and_warning_reasons() {
        assert!(!Reason::Started.is_warning());
        assert!(!Reason::Restarted.is_warning());
        for r in [
            Reason::CapabilityDenied,
            Reason::QuotaExceeded,
            Reason::Killed,
            Reason::Trapped,
            Reason::CrashLoop,
            Reason::MessageRejected,
        ] {
            assert!(r.is_warning(), "{r:?}");
        }
    }

    #[test]
    fn concurrent_recorders_lose_nothing_when_the_queue_is_large_enough() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let (sink, handle, path) = start(&dir, &metrics, 10_000, None);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    let id = id();
                    for _ in 0..1000 {
                        sink.deny(&id, CapabilityKind::Send, "billing");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        handle.shutdown();
        assert_eq!(lines(&path).len(), 4000);
        assert_eq!(metrics.audit.dropped.get(), 0);
    }
}
