use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::grant::CapabilityKind;
use crate::limits::Quota;
use crate::metrics::Metrics;

fn id() -> Arc<InstanceIdentity> {
    InstanceIdentity::new("team-a", "counter", 7, "sha256:abc")
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
    let last = events.last().unwrap();
    assert_eq!(last.reason, Reason::CapabilityDenied);
    assert_eq!(last.count, 5_000, "{events:?}");
}
