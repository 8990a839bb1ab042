//! The engine keeps compiled components in memory only while some component runs them: a
//! digest no component uses any more is evicted (and loaded back from the disk cache when it
//! is needed again), so memory does not grow with every digest the agent ever ran.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use airssys_agent::engine::CompileSource;
use airssys_agent::id::ComponentId;
use support::{Harness, caps, quotas, spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_no_component_runs_are_evicted_from_memory() {
    let h = Harness::new();
    let echo = spec("a", "echo", caps(""), quotas());
    let escalation = spec("b", "escalation", caps(""), quotas());
    let (echo_digest, escalation_digest) = (echo.digest.clone(), escalation.digest.clone());
    h.add(echo.clone()).await;
    h.add(escalation).await;
    let mut held = h.supervisor.engine().prepared_digests();
    held.sort();
    let mut want = vec![echo_digest.clone(), escalation_digest.clone()];
    want.sort();
    assert_eq!(held, want);

    // `b` moves to another digest: its old one goes.
    let counter = spec("b", "kv-counter", caps(""), quotas());
    let counter_digest = counter.digest.clone();
    h.supervisor.update(counter).await.unwrap();
    let held = h.supervisor.engine().prepared_digests();
    assert!(!held.contains(&escalation_digest), "{held:?}");
    assert!(held.contains(&counter_digest) && held.contains(&echo_digest));

    // `a` stops: nothing runs echo any more.
    h.supervisor
        .remove(&ComponentId::new("test", "a"))
        .await
        .unwrap();
    assert_eq!(h.supervisor.engine().prepared_digests(), [counter_digest]);

    // Needed again: loaded from the verified disk cache, not kept in memory meanwhile.
    let source = h.supervisor.add(echo).await.unwrap();
    assert_eq!(source, CompileSource::Disk);
    assert_eq!(h.ask("a", "hello").await.unwrap(), "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_memory_cache_has_a_cap() {
    let h = Harness::with_engine(|mut c| {
        c.max_prepared = 1;
        c
    });
    h.add(spec("a", "echo", caps(""), quotas())).await;
    h.add(spec("b", "escalation", caps(""), quotas())).await;
    // Both run (each actor holds its own compiled component), one stays cached.
    assert_eq!(h.supervisor.engine().prepared_digests().len(), 1);
    assert_eq!(h.ask("a", "hello").await.unwrap(), "hello");
    assert_eq!(h.ask("b", "ping").await.unwrap(), "pong");
}
