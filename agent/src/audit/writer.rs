//! Starting the pipeline and the one writer thread that drains the queue into the log, the
//! counters and the Event aggregator.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::aggregate::{
    AggregatedEvent, EventAggregator, EventPolicy, EventSink, EventStats, EventSubject, Occurrence,
};
use super::event::{AuditEvent, AuditKind, ComponentIdentity, InstanceIdentity};
use super::fold::FOLDABLE;
use super::log::{LogFile, Rotation, log_line};
use super::metrics::{AuditMetrics, ReasonLabels};
use super::sink::{AuditSink, Command, HotCounters};

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
    /// Where Kubernetes Events go (node mode: [`super::EventPublisher`]); `None` publishes
    /// none. Only components whose identity carries Kubernetes objects get Events.
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
            reported_events: EventStats::default(),
            reported_write_errors: 0,
            folding: Vec::new(),
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

/// The writer thread's state.
struct Writer {
    node: String,
    file: Option<LogFile>,
    metrics: AuditMetrics,
    events: Option<Box<dyn EventSink>>,
    aggregator: EventAggregator,
    reported_drops: u64,
    reported_events: EventStats,
    reported_write_errors: u64,
    /// Component revisions with folded records not yet summarized.
    folding: Vec<Arc<ComponentIdentity>>,
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
            match cmd {
                Command::Event(e) => self.write(&e),
                Command::Folding(c) => self.folding.push(c),
                Command::Flush(_) | Command::Shutdown => {}
            }
        }
        self.summarize_folds();
        self.flush_file();
        let now = Instant::now();
        for event in self.aggregator.drain(now) {
            self.publish(event, true);
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
            Command::Folding(component) => {
                if !self.folding.iter().any(|c| Arc::ptr_eq(c, &component)) {
                    self.folding.push(component);
                }
                false
            }
            Command::Flush(ack) => {
                self.summarize_folds();
                self.flush_file();
                let _ = ack.send(());
                false
            }
            Command::Shutdown => true,
        }
    }

    fn write(&mut self, e: &AuditEvent) {
        self.write_line(e);
        let component = &e.instance.component;
        // Catches a fold whose `Folding` notice was lost to a full queue.
        if component.fold.pending() && !self.folding.iter().any(|c| Arc::ptr_eq(c, component)) {
            self.folding.push(Arc::clone(component));
        }
        if self.events.is_none() {
            return;
        }
        let (Some(refs), Some(reason)) = (&component.k8s, e.kind.event_reason()) else {
            return;
        };
        let occurrence = Occurrence {
            subject: EventSubject {
                namespace: &component.id.namespace,
                name: &component.id.name,
                refs,
            },
            reason,
            note: e.kind.note(),
            at: e.at,
        };
        if let Some(event) = self.aggregator.observe(occurrence, Instant::now()) {
            self.publish(event, false);
        }
    }

    /// The log line and its counter.
    fn write_line(&mut self, e: &AuditEvent) {
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
    }

    /// Hands `event` to the sink; a refusal (full queue) puts its occurrences back in the
    /// aggregator, or drops them at shutdown (`last`).
    fn publish(&mut self, event: AggregatedEvent, last: bool) {
        if let Some(sink) = &mut self.events
            && let Err(event) = sink.publish(event)
        {
            self.aggregator.refused(&event, last);
        }
    }

    fn flush_file(&mut self) {
        if let Some(file) = &mut self.file
            && file.flush().is_err()
        {
            self.metrics.write_errors.inc();
        }
    }

    /// Writes one `Folded` line per (component, reason) with records folded since the last
    /// summary, and adds them to the component's Event series; forgets components whose
    /// folds are all reported.
    fn summarize_folds(&mut self) {
        let folding = std::mem::take(&mut self.folding);
        for component in &folding {
            for (i, count) in component.fold.take().into_iter().enumerate() {
                if count == 0 {
                    continue;
                }
                let of = FOLDABLE[i];
                let summary = AuditEvent {
                    at: SystemTime::now(),
                    // Instance 0: the summary is about the revision, not one instance.
                    instance: InstanceIdentity::of(component, 0),
                    kind: AuditKind::Folded { of, count },
                };
                self.write_line(&summary);
                let (Some(refs), Some(reason), true) =
                    (&component.k8s, of.event_reason(), self.events.is_some())
                else {
                    continue;
                };
                let id = &component.id;
                let subject = EventSubject {
                    namespace: &id.namespace,
                    name: &id.name,
                    refs,
                };
                let folded = self.aggregator.observe_folded(
                    subject,
                    reason,
                    count,
                    summary.at,
                    Instant::now(),
                );
                if let Some(event) = folded {
                    self.publish(event, false);
                }
            }
        }
        // A component stays registered only while the fold may still grow: it re-registers
        // itself with its next first fold.
    }

    fn on_tick(&mut self, now: Instant) {
        self.summarize_folds();
        for event in self.aggregator.due(now) {
            self.publish(event, false);
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
        let stats = self.aggregator.stats();
        let folded = stats.folded.saturating_sub(self.reported_events.folded);
        let dropped = stats.dropped.saturating_sub(self.reported_events.dropped);
        self.metrics.events.folded.inc_by(folded);
        self.metrics.events.dropped.inc_by(dropped);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "occurrences not published as Kubernetes Events (too many open series, or the \
                 publisher queue full at shutdown); counted in airssys_events_dropped_total, \
                 the audit log has each"
            );
        }
        // A refused publication takes its folds back until it is offered again: never
        // count them twice.
        self.reported_events = EventStats {
            folded: stats.folded.max(self.reported_events.folded),
            dropped: stats.dropped.max(self.reported_events.dropped),
        };
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
