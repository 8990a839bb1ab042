//! Audit enqueue cost (goal: ≤ 100 ns, no allocation), next to a bare
//! `std::sync::mpsc::sync_channel` `try_send` of a record of the same size and shape.
//!
//! Only the producer's calls are timed, in chunks that fit the queue (drained, untimed,
//! between chunks), so the figure is the enqueue itself, not the writer's throughput. Two
//! baselines: no consumer running (the floor), and a consumer parked in `recv()` (what any
//! channel with a sleeping reader costs). The pipeline's writer runs concurrently, as in
//! production.
//!
//! `cargo bench -p airssys-agent --bench audit -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use airssys_agent::audit::{AuditConfig, AuditEvent, AuditKind, Auditor, InstanceIdentity, Text};
use airssys_agent::grant::CapabilityKind;
use airssys_agent::metrics::Metrics;
use criterion::{Criterion, criterion_group, criterion_main};

const CHUNK: u64 = 4096;

/// The baseline record: same fields as `AuditEvent` (time, shared identity, inline text).
#[allow(dead_code)]
struct BareRecord {
    at: SystemTime,
    who: Arc<InstanceIdentity>,
    kind: u8,
    target: [u8; 96],
    len: u8,
}

/// Builds the baseline record the way `AuditEvent::now` builds ours: clock, `Arc` clone,
/// inline copy of the target.
#[inline]
fn bare(id: &Arc<InstanceIdentity>, target: &str) -> BareRecord {
    let mut buf = [0u8; 96];
    let len = target.len().min(96);
    buf[..len].copy_from_slice(&target.as_bytes()[..len]);
    BareRecord {
        at: SystemTime::now(),
        who: Arc::clone(id),
        kind: 1,
        target: buf,
        len: len as u8,
    }
}

fn bench(c: &mut Criterion) {
    let id = InstanceIdentity::new("team-a", "counter", 7, "sha256:abc");
    let target = "api.evil.example.com:443";
    let mut g = c.benchmark_group("audit");

    // Baseline 1: bare sync_channel try_send into a queue with room and no consumer running
    // (drained, untimed, between chunks): the floor of any bounded-channel enqueue.
    {
        let (tx, rx) = mpsc::sync_channel::<BareRecord>(CHUNK as usize);
        g.bench_function("baseline/sync_channel_try_send_idle_consumer", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(CHUNK);
                    let start = Instant::now();
                    for _ in 0..n {
                        let _ = tx.try_send(black_box(bare(&id, target)));
                    }
                    total += start.elapsed();
                    while rx.try_recv().is_ok() {}
                    left -= n;
                }
                total
            })
        });
    }

    // Baseline 2: the same with a consumer thread blocking in recv(): every send that finds
    // it parked pays for waking it, as any channel with a sleeping reader does.
    {
        let (tx, rx) = mpsc::sync_channel::<BareRecord>(CHUNK as usize);
        let received = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&received);
        let consumer = std::thread::spawn(move || {
            for r in rx {
                black_box(&r);
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut sent = 0u64;
        g.bench_function("baseline/sync_channel_try_send_blocked_consumer", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(CHUNK);
                    let start = Instant::now();
                    for _ in 0..n {
                        let _ = tx.try_send(black_box(bare(&id, target)));
                    }
                    total += start.elapsed();
                    sent += n;
                    while received.load(Ordering::Relaxed) < sent {
                        std::hint::spin_loop();
                    }
                    left -= n;
                }
                total
            })
        });
        drop(tx);
        consumer.join().unwrap();
    }

    // The pipeline: AuditSink::record of a denial (counter + try_send), writer draining.
    {
        let metrics = Metrics::new();
        let mut config = AuditConfig::new("node-1", &metrics.audit);
        config.capacity = CHUNK as usize;
        let (sink, handle) = Auditor::start(config).unwrap();
        g.bench_function("sink/record_denial", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(CHUNK);
                    let start = Instant::now();
                    for _ in 0..n {
                        sink.record(AuditEvent::now(
                            &id,
                            AuditKind::CapabilityDenied {
                                kind: CapabilityKind::Network,
                                target: Text::new(black_box(target)),
                            },
                        ));
                    }
                    total += start.elapsed();
                    handle.flush();
                    left -= n;
                }
                total
            })
        });
        g.bench_function("sink/count_grant", |b| {
            b.iter(|| sink.count_grant(black_box(CapabilityKind::Storage)))
        });
        assert_eq!(
            metrics.audit.dropped.get(),
            0,
            "the timed enqueues never hit a full queue"
        );
        handle.shutdown();
        // After shutdown every record takes the drop path: counted, never blocking.
        g.bench_function("sink/record_drop_path", |b| {
            b.iter(|| {
                sink.record(AuditEvent::now(
                    &id,
                    AuditKind::CapabilityDenied {
                        kind: CapabilityKind::Network,
                        target: Text::new(black_box(target)),
                    },
                ))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
