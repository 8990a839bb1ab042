use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::grant::CapabilityKind;
use crate::id::ComponentId;
use crate::limits::Quota;
use crate::metrics::Metrics;

fn refs(uid: &str) -> ObjectRefs {
    ObjectRefs {
        component_uid: uid.into(),
        placement: "counter-node-1".into(),
        placement_uid: None,
    }
}

/// Instance 7 of `team-a/counter`, whose Events name the WasmComponent `uid-1`.
fn id() -> Arc<InstanceIdentity> {
    let component = ComponentIdentity::with_refs(
        &ComponentId::new("team-a", "counter"),
        "sha256:abc",
        Some(refs("uid-1")),
    );
    InstanceIdentity::of(&component, 7)
}

/// Instance 1 of a component of its own, `team-a/c-{n}`.
fn component(n: usize) -> Arc<InstanceIdentity> {
    InstanceIdentity::new("team-a", &format!("c-{n}"), 1, "sha256:abc")
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
            quota: Quota::Memory,
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
        sink.count_grant(CapabilityKind::Storage);
    }
    sink.record(AuditEvent::now(
        &id,
        AuditKind::CapabilityGranted {
            kind: CapabilityKind::Storage,
        },
    ));
    sink.deny(&id, CapabilityKind::Publish, "orders.x");
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
    fn publish(&mut self, event: AggregatedEvent) -> Result<(), Box<AggregatedEvent>> {
        let _ = self.0.recv();
        let _ = self.1.send(event);
        Ok(())
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
    // One component per record: this is about rotation, not the per-component share.
    for i in 0..200 {
        sink.deny(&component(i), CapabilityKind::Network, &format!("t-{i}"));
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
    for i in 0..500 {
        sink.deny(&component(i), CapabilityKind::Network, &format!("t-{i}"));
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
fn events_reach_the_sink_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let (tx, rx) = mpsc::channel();
    let (sink, handle, _path) = start(&dir, &metrics, 64, Some(Box::new(tx)));
    let id = id();
    for _ in 0..12 {
        sink.deny(&id, CapabilityKind::Filesystem, "/etc/passwd");
    }
    handle.shutdown();
    let events: Vec<AggregatedEvent> = rx.try_iter().collect();
    // The burst (10): a create and 9 series updates at once; the last 2 wait for a token
    // and go out as one update at shutdown.
    assert_eq!(events.len(), 11, "{events:?}");
    assert!(events[0].first && events[0].count == 1);
    assert!(
        events[1..]
            .iter()
            .all(|e| !e.first && e.series == events[0].series)
    );
    let last = &events[10];
    assert_eq!((last.count, last.new), (12, 2));
    assert_eq!(last.reason, EventReason::CapabilityDenied);
    assert!(last.warning());
    assert_eq!(
        (last.namespace.as_str(), last.name.as_str()),
        ("team-a", "counter")
    );
    assert_eq!(last.refs, refs("uid-1"));
    assert!(last.note.contains("/etc/passwd"), "{}", last.note);
    assert!(
        metrics.encode().contains("airssys_events_folded_total 1"),
        "one occurrence published only in a count"
    );
}

#[test]
fn components_without_kubernetes_objects_get_no_events() {
    // Manifest mode: the log and counters only.
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let (tx, rx) = mpsc::channel();
    let (sink, handle, path) = start(&dir, &metrics, 64, Some(Box::new(tx)));
    let local = InstanceIdentity::new("default", "local", 1, "sha256:abc");
    sink.deny(&local, CapabilityKind::Network, "x:1");
    sink.record(AuditEvent::now(&local, AuditKind::Started));
    handle.shutdown();
    assert_eq!(rx.try_iter().count(), 0);
    assert_eq!(lines(&path).len(), 2);
}

#[test]
fn component_events_name_the_component_and_reach_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let (tx, rx) = mpsc::channel();
    let (sink, handle, path) = start(&dir, &metrics, 64, Some(Box::new(tx)));
    let component = Arc::clone(&id().component);
    for kind in [
        AuditKind::DevModeBypass,
        AuditKind::Stopped,
        AuditKind::Revoked,
    ] {
        sink.component_event(&component, kind);
    }
    handle.shutdown();
    let got = lines(&path);
    let kinds: Vec<_> = got.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["DevModeBypass", "Stopped", "Revoked"]);
    assert!(got.iter().all(|l| l["instance"] == 0));
    let reasons: Vec<_> = rx.try_iter().map(|e| (e.reason, e.warning())).collect();
    assert_eq!(
        reasons,
        [
            (EventReason::DevModeBypass, true),
            (EventReason::Stopped, false),
            (EventReason::Revoked, true),
        ]
    );
}

/// A sink whose queue holds `room` events; the rest are refused.
struct Full(usize, mpsc::Sender<AggregatedEvent>);
impl EventSink for Full {
    fn publish(&mut self, event: AggregatedEvent) -> Result<(), Box<AggregatedEvent>> {
        if self.0 == 0 {
            return Err(Box::new(event));
        }
        self.0 -= 1;
        let _ = self.1.send(event);
        Ok(())
    }
}

#[test]
fn a_refusing_sink_loses_no_occurrence_until_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let (tx, rx) = mpsc::channel();
    let (sink, handle, _path) = start(&dir, &metrics, 64, Some(Box::new(Full(1, tx))));
    let id = id();
    for _ in 0..5 {
        sink.deny(&id, CapabilityKind::Env, "SECRET");
    }
    handle.shutdown();
    // The create got through; the 4 repeats were refused, kept, refused again at shutdown.
    assert_eq!(rx.try_iter().count(), 1);
    assert!(metrics.encode().contains("airssys_events_dropped_total 4"));
}

fn occ<'a>(refs: &'a ObjectRefs, name: &'a str, reason: EventReason, note: &str) -> Occurrence<'a> {
    Occurrence {
        subject: EventSubject {
            namespace: "ns",
            name,
            refs,
        },
        reason,
        note: note.to_owned(),
        at: SystemTime::UNIX_EPOCH,
    }
}

fn policy() -> EventPolicy {
    EventPolicy {
        burst: 2,
        refill: Duration::from_secs(10),
        idle_close: Duration::from_secs(100),
        max_series: 4,
    }
}

/// (what the rule says, publications: (first, count, new, summary)).
type Published = Vec<(bool, u64, u64, bool)>;

fn shape(events: &[AggregatedEvent]) -> Published {
    events
        .iter()
        .map(|e| (e.first, e.count, e.new, e.summary))
        .collect()
}

#[test]
fn aggregator_spec() {
    use EventReason::{CapabilityDenied as Denied, Started};
    let a = refs("uid-a");
    let mut agg = EventAggregator::new(policy());
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let observe = |agg: &mut EventAggregator, s: u64, reason, note: &str| -> Published {
        shape(
            &agg.observe(occ(&a, "a", reason, note), at(s))
                .into_iter()
                .collect::<Vec<_>>(),
        )
    };
    let rows: Vec<(&str, Published, Published)> = vec![
        (
            "a new note creates its Event at once",
            observe(&mut agg, 0, Denied, "n1"),
            vec![(true, 1, 1, false)],
        ),
        (
            "a repeat within the burst updates the series at once",
            observe(&mut agg, 1, Denied, "n1"),
            vec![(false, 2, 1, false)],
        ),
        (
            "a repeat without a token waits in the count",
            observe(&mut agg, 2, Denied, "n1"),
            vec![],
        ),
        (
            "a new note without a token gets no Event of its own",
            observe(&mut agg, 3, Denied, "n2"),
            vec![],
        ),
        (
            "another reason has its own bucket",
            observe(&mut agg, 3, Started, "started"),
            vec![(true, 1, 1, false)],
        ),
        (
            "nothing is due before a token comes back",
            shape(&agg.due(at(9))),
            vec![],
        ),
        (
            "the first token back publishes the waiting repeats as one update",
            shape(&agg.due(at(10))),
            vec![(false, 3, 1, false)],
        ),
        (
            "the next one reports the notes that had no Event, in a summary",
            shape(&agg.due(at(20))),
            vec![(true, 1, 1, true)],
        ),
        (
            "nothing pending: nothing due",
            shape(&agg.due(at(40))),
            vec![],
        ),
    ];
    for (rule, got, want) in rows {
        assert_eq!(got, want, "{rule}");
    }
    assert_eq!(
        agg.stats(),
        EventStats {
            folded: 1,
            dropped: 0
        }
    );
}

#[test]
fn notes_without_an_event_of_their_own_are_summarized_by_the_next_token() {
    let a = refs("uid-a");
    let mut agg = EventAggregator::new(policy());
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let reason = EventReason::CapabilityDenied;
    for (i, note) in ["n1", "n2", "n3", "n4"].into_iter().enumerate() {
        agg.observe(occ(&a, "a", reason, note), at(i as u64));
    }
    // n3 and n4 had no token. A token later, n5 joins them and the token pays the summary:
    // one Event standing for all three, naming the last.
    let e = agg.observe(occ(&a, "a", reason, "n5"), at(10)).unwrap();
    assert!(e.first && e.summary && e.count == 3, "{e:?}");
    assert!(
        e.note
            .starts_with("3 CapabilityDenied occurrences not published one by one")
            && e.note.contains("the last: n5"),
        "{}",
        e.note
    );
    assert_eq!(agg.stats().folded, 3);
    // Nothing owed any more: the next new note (with a token) gets its own Event.
    let e = agg.observe(occ(&a, "a", reason, "n6"), at(20)).unwrap();
    assert!(e.first && !e.summary && e.note == "n6");
}

#[test]
fn fairness_folded_counts_are_summarized_not_put_in_a_series() {
    let a = refs("uid-a");
    let mut agg = EventAggregator::new(policy());
    let now = Instant::now();
    let reason = EventReason::CapabilityDenied;
    let subject = EventSubject {
        namespace: "ns",
        name: "a",
        refs: &a,
    };
    agg.observe(occ(&a, "a", reason, "n1"), now);
    // Their notes are unknown: a summary (the last token pays it), naming the last note seen.
    let e = agg
        .observe_folded(subject, reason, 100, SystemTime::UNIX_EPOCH, now)
        .unwrap();
    assert_eq!(
        shape(std::slice::from_ref(&e)),
        vec![(true, 100, 100, true)]
    );
    assert!(e.note.contains("the last: n1"), "{}", e.note);
    // No token: owed, and drained at shutdown.
    assert!(
        agg.observe_folded(subject, reason, 5, SystemTime::UNIX_EPOCH, now)
            .is_none()
    );
    assert_eq!(shape(&agg.drain(now)), vec![(true, 5, 5, true)]);
}

#[test]
fn a_refused_publication_is_offered_again() {
    let a = refs("uid-a");
    let mut agg = EventAggregator::new(policy());
    let t0 = Instant::now();
    let reason = EventReason::Killed;
    let e = agg.observe(occ(&a, "a", reason, "k"), t0).unwrap();
    agg.refused(&e, false);
    // Its token came back: the retry goes out at the next tick, still as the create.
    let again = agg.due(t0);
    assert_eq!(shape(&again), vec![(true, 1, 1, false)]);
    assert_eq!(again[0].series, e.series);
    // The last token goes to a repeat; the next repeat waits, and is refused at shutdown:
    // dropped and counted.
    assert!(agg.observe(occ(&a, "a", reason, "k"), t0).is_some());
    assert!(agg.observe(occ(&a, "a", reason, "k"), t0).is_none());
    let last = agg.drain(t0);
    assert_eq!(shape(&last), vec![(false, 3, 1, false)]);
    agg.refused(&last[0], true);
    assert_eq!(agg.stats().dropped, 1);
}

#[test]
fn series_are_per_component_object_and_bounded() {
    let mut agg = EventAggregator::new(EventPolicy {
        max_series: 2,
        ..policy()
    });
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let reason = EventReason::QuotaExceeded;
    let (old, new, third) = (refs("uid-old"), refs("uid-new"), refs("uid-3"));
    assert!(
        agg.observe(occ(&old, "a", reason, "q"), at(0))
            .unwrap()
            .first
    );
    // The same name recreated is another object: its own series.
    assert!(
        agg.observe(occ(&new, "a", reason, "q"), at(0))
            .unwrap()
            .first
    );
    // A third bucket does not fit: dropped and counted.
    assert!(agg.observe(occ(&third, "b", reason, "q"), at(1)).is_none());
    assert_eq!(agg.stats().dropped, 1);
    // Idle series close; then there is room, and a closed series starts a new Event.
    assert!(agg.due(at(200)).is_empty());
    assert!(
        agg.observe(occ(&third, "b", reason, "q"), at(201))
            .unwrap()
            .first
    );
    assert!(
        agg.observe(occ(&old, "a", reason, "q"), at(202))
            .unwrap()
            .first
    );
}

#[test]
fn audit_reasons_map_onto_the_fixed_event_reasons() {
    // audit reason, Event reason (None: the log only)
    let table = [
        (Reason::Started, Some(EventReason::Started)),
        (Reason::Stopped, Some(EventReason::Stopped)),
        (
            Reason::CapabilityDenied,
            Some(EventReason::CapabilityDenied),
        ),
        (Reason::QuotaExceeded, Some(EventReason::QuotaExceeded)),
        (Reason::Killed, Some(EventReason::Killed)),
        (Reason::CrashLoop, Some(EventReason::CrashLoop)),
        (Reason::DevModeBypass, Some(EventReason::DevModeBypass)),
        (Reason::Revoked, Some(EventReason::Revoked)),
        // A trap always comes with a Killed, a restart with a Started.
        (Reason::Trapped, None),
        (Reason::Restarted, None),
        (Reason::CapabilityGranted, None),
        (Reason::MessageRejected, None),
        (Reason::Folded, None),
    ];
    for (reason, event) in table {
        assert_eq!(reason.event_reason(), event, "{reason:?}");
        if let Some(event) = event {
            assert_eq!(
                event.as_str(),
                reason.as_str(),
                "same word in log and Event"
            );
        }
    }
    let folded = AuditKind::Folded {
        of: Reason::QuotaExceeded,
        count: 3,
    };
    assert_eq!(folded.event_reason(), Some(EventReason::QuotaExceeded));
}

#[test]
fn normal_and_warning_reasons() {
    assert!(!Reason::Started.is_warning());
    assert!(!Reason::Restarted.is_warning());
    assert!(!Reason::Stopped.is_warning());
    for r in [
        Reason::CapabilityDenied,
        Reason::QuotaExceeded,
        Reason::Killed,
        Reason::Trapped,
        Reason::CrashLoop,
        Reason::MessageRejected,
        Reason::Revoked,
        Reason::DevModeBypass,
    ] {
        assert!(r.is_warning(), "{r:?}");
        if let Some(e) = r.event_reason() {
            assert!(e.is_warning(), "{e:?}");
        }
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
    // Every occurrence is a line or part of a `Folded` summary's count.
    let (verbatim, folded) = tally(&lines(&path));
    assert_eq!(verbatim + folded, 4000);
    assert_eq!(metrics.audit.dropped.get(), 0);
}

/// Denial lines and the sum of `Folded` summary counts in `lines`.
fn tally(lines: &[serde_json::Value]) -> (u64, u64) {
    let verbatim = lines
        .iter()
        .filter(|l| l["kind"] == "CapabilityDenied")
        .count() as u64;
    let folded = lines
        .iter()
        .filter(|l| l["kind"] == "Folded")
        .map(|l| l["detail"]["count"].as_u64().unwrap())
        .sum();
    (verbatim, folded)
}

#[test]
fn a_flooding_component_cannot_crowd_out_its_neighbours_records() {
    // A queue far smaller than the flood: before folding, the flood filled it and most of the
    // neighbour's denials were dropped.
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let (sink, handle, path) = start(&dir, &metrics, 256, None);
    let flooder = InstanceIdentity::new("team-x", "flooder", 1, "sha256:f");
    let neighbour = InstanceIdentity::new("team-y", "quiet", 1, "sha256:q");
    for i in 0..200_000 {
        sink.deny(&flooder, CapabilityKind::Network, "exfil.example.com:53");
        if i % 5_000 == 0 {
            sink.deny(
                &neighbour,
                CapabilityKind::Filesystem,
                &format!("/n-{}", i / 5_000),
            );
        }
    }
    handle.shutdown();
    let got = lines(&path);
    let neighbour_lines: Vec<&str> = got
        .iter()
        .filter(|l| l["component"] == "team-y/quiet")
        .map(|l| l["detail"]["target"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (0..40).map(|i| format!("/n-{i}")).collect();
    assert_eq!(neighbour_lines, want, "every neighbour record, in order");
    let flood: Vec<_> = got
        .iter()
        .filter(|l| l["component"] == "team-x/flooder")
        .cloned()
        .collect();
    let (verbatim, folded) = tally(&flood);
    assert!(
        verbatim >= u64::from(FOLD_VERBATIM),
        "the first ones verbatim"
    );
    assert!(
        verbatim < 1_000,
        "the flood's share is bounded: {verbatim} lines"
    );
    assert_eq!(verbatim + folded, 200_000, "the rest counted in summaries");
    assert_eq!(metrics.audit.dropped.get(), 0);
    assert_eq!(metrics.audit.folded.get(), folded);
    let summary = flood.iter().find(|l| l["kind"] == "Folded").unwrap();
    assert_eq!(summary["detail"]["of"], "CapabilityDenied");
}

#[test]
fn a_component_cannot_rotate_its_own_earlier_record_away() {
    // A small log (8 KiB x 2 files) and a flood a thousand times its size: the first, more
    // interesting denial survives because the flood is folded instead of written.
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let rotation = Rotation {
        max_bytes: 8 << 10,
        max_files: 2,
    };
    let (sink, handle, path) = start_rotating(&dir, &metrics, rotation);
    let id = id();
    sink.deny(&id, CapabilityKind::Filesystem, "/etc/shadow");
    for _ in 0..100_000 {
        sink.deny(&id, CapabilityKind::Network, "noise.example.com:80");
    }
    handle.shutdown();
    let mut all = Vec::new();
    if rotated(&path, 1).exists() {
        all.extend(lines(&rotated(&path, 1)));
    }
    all.extend(lines(&path));
    assert_eq!(
        all[0]["detail"]["target"],
        "/etc/shadow",
        "{:?}",
        all.first()
    );
    let (verbatim, folded) = tally(&all);
    assert_eq!(verbatim + folded, 100_001);
}

#[test]
fn lifecycle_records_are_never_folded() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let (sink, handle, path) = start(&dir, &metrics, 10_000, None);
    let id = id();
    for _ in 0..1_000 {
        sink.deny(&id, CapabilityKind::Network, "x:1");
    }
    for _ in 0..200 {
        sink.record(AuditEvent::now(
            &id,
            AuditKind::Killed {
                reason: "timeout".into(),
            },
        ));
    }
    handle.shutdown();
    let kills = lines(&path)
        .iter()
        .filter(|l| l["kind"] == "Killed")
        .count();
    assert_eq!(kills, 200);
}

#[test]
fn folded_records_count_in_the_kubernetes_event_series() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let (tx, rx) = mpsc::channel();
    let (sink, handle, _path) = start(&dir, &metrics, 64, Some(Box::new(tx)));
    let id = id();
    for _ in 0..5_000 {
        sink.deny(&id, CapabilityKind::Network, "x:1");
    }
    handle.shutdown();
    let events: Vec<AggregatedEvent> = rx.try_iter().collect();
    assert!(
        events
            .iter()
            .all(|e| e.reason == EventReason::CapabilityDenied)
    );
    // Each Event object's final count (a series' last update, or a summary).
    let mut last: HashMap<u64, u64> = HashMap::new();
    for e in &events {
        last.insert(e.series, e.count);
    }
    assert_eq!(last.values().sum::<u64>(), 5_000, "{events:?}");
    assert!(
        events.len() <= 14,
        "the burst, then what ticks and shutdown publish: {}",
        events.len()
    );
}
