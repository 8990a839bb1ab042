//! Well-behaved components: messaging, storage, lifecycle (add, update, remove), the compile
//! cache. Real wasm32-wasip2 guests, real database, real audit pipeline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use airssys_agent::actor::ComponentId;
use airssys_agent::engine::{AgentEngine, CompileSource, EngineConfig, sha256_digest};
use support::{Harness, caps, quotas, spec};

fn id(name: &str) -> ComponentId {
    ComponentId::new("test", name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_answers_requests() {
    let h = Harness::new();
    h.add(spec("echo", "echo", caps(""), quotas())).await;
    assert_eq!(h.ask("echo", "hello").await.unwrap(), "hello");
    assert_eq!(h.ask("echo", "host3").await.unwrap(), "host3");
    support::wait_kind(&h, "echo", support::Expect::Started).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_counter_persists_in_its_own_buckets_within_quota() {
    let h = Harness::new();
    let grant = caps("storage: [{ bucket: counters, access: [read, write] }]");
    let q = support::Quotas {
        storage_bytes: 4096,
        ..quotas()
    };
    h.add(spec("counter", "kv-counter", grant.clone(), q.clone()))
        .await;
    assert_eq!(h.ask("counter", "incr:a").await.unwrap(), "1");
    assert_eq!(h.ask("counter", "incr:a").await.unwrap(), "2");
    assert_eq!(h.ask("counter", "incr:b").await.unwrap(), "1");
    assert_eq!(h.ask("counter", "list").await.unwrap(), "a,b");

    // Another component with the same bucket name sees its own, empty namespace.
    h.add(spec("other", "kv-counter", grant, q)).await;
    assert_eq!(h.ask("other", "get:a").await.unwrap(), "0");

    // Quota: a write that would pass 4096 bytes is refused as a value, audited.
    let err = h.ask("counter", "fill:big:8000").await.unwrap_err();
    assert!(err.contains("QuotaExceeded"), "{err}");
    support::wait_kind(&h, "counter", support::Expect::Quota("storage")).await;
    // An ungranted bucket.
    let denied = h.ask("counter", "other:secrets").await.unwrap_err();
    assert!(denied.contains("AccessDenied"), "{denied}");
    support::wait_kind(&h, "counter", support::Expect::Denied("storage")).await;

    // Values survive the component being removed and started again.
    h.supervisor.remove(&id("counter")).await.unwrap();
    let grant = caps("storage: [{ bucket: counters, access: [read, write] }]");
    h.add(spec("counter", "kv-counter", grant, quotas())).await;
    assert_eq!(h.ask("counter", "get:a").await.unwrap(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_sub_delivers_to_granted_subscribers() {
    let h = Harness::new();
    h.add(spec(
        "subscriber",
        "subscriber",
        caps("messaging: [{ topic: \"events.>\", access: [subscribe] }]"),
        quotas(),
    ))
    .await;
    h.add(spec(
        "publisher",
        "publisher",
        caps("messaging: [{ topic: \"events.*\", access: [publish] }]"),
        quotas(),
    ))
    .await;
    // The subscriber subscribed in `init`.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.supervisor.broker().subscription_count(&id("subscriber")) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscriber never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        h.ask("publisher", "events.a|one").await.unwrap(),
        "published"
    );
    assert_eq!(
        h.ask("publisher", "events.b|two").await.unwrap(),
        "published"
    );
    // Requests queue behind the topic messages in the same mailbox.
    assert_eq!(h.ask("subscriber", "count").await.unwrap(), "2|two");

    // Publishing outside the grant: a value error, audited.
    let err = h.ask("publisher", "admin.x|nope").await.unwrap_err();
    assert!(err.contains("AccessDenied"), "{err}");
    support::wait_kind(&h, "publisher", support::Expect::Denied("publish")).await;
    // Subscribing outside the grant.
    let err = h.ask("subscriber", "sub:admin.>").await.unwrap_err();
    assert!(err.contains("AccessDenied"), "{err}");
    assert_eq!(h.ask("subscriber", "count").await.unwrap(), "2|two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_are_updated_and_removed_while_running() {
    let h = Harness::new();
    h.add(spec("svc", "echo", caps(""), quotas())).await;
    assert_eq!(h.ask("svc", "v1").await.unwrap(), "v1");

    // Update to another digest (a kv counter) with a new grant.
    let next = spec(
        "svc",
        "kv-counter",
        caps("storage: [{ bucket: counters, access: [read, write] }]"),
        quotas(),
    );
    let digest = next.digest.clone();
    h.supervisor.update(next).await.unwrap();
    assert_eq!(h.ask("svc", "incr:x").await.unwrap(), "1");
    assert_eq!(h.supervisor.digest(&id("svc")).await.unwrap(), digest);

    h.supervisor.remove(&id("svc")).await.unwrap();
    let gone = h.ask("svc", "incr:x").await.unwrap_err();
    assert!(gone.contains("NotFound"), "{gone}");
    assert!(h.supervisor.components().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_between_components_round_trips() {
    let h = Harness::new();
    h.add(spec("echo", "echo", caps(""), quotas())).await;
    h.add(spec(
        "relay",
        "relay",
        caps("messaging: [{ component: echo, access: [send] }]"),
        quotas(),
    ))
    .await;
    assert_eq!(h.ask("relay", "echo|ping").await.unwrap(), "ping");
    // Not granted: a value error.
    let denied = h.ask("relay", "relay|x").await.unwrap_err();
    assert!(denied.contains("AccessDenied"), "{denied}");
    // A component-origin request to a missing component.
    let missing = h
        .supervisor
        .broker()
        .request(
            Some(&id("caller")),
            "test",
            "nobody",
            Arc::from(&b"ping"[..]),
            Duration::from_secs(1),
        )
        .await;
    assert!(missing.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_cache_is_reused_and_a_corrupt_entry_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = support::guest("echo");
    let digest = sha256_digest(&wasm);
    let config = || EngineConfig::new(dir.path()).with_capacity(4);

    let first = AgentEngine::new(config()).unwrap();
    assert_eq!(
        first.prepare(&digest, &wasm).await.unwrap().1,
        CompileSource::Compiled
    );
    assert_eq!(
        first.prepare(&digest, &wasm).await.unwrap().1,
        CompileSource::Memory
    );
    let path = first.cache_path(&digest);
    assert!(path.exists());
    drop(first);

    // A restart loads from disk, no recompilation.
    let second = AgentEngine::new(config()).unwrap();
    assert_eq!(
        second.prepare(&digest, &wasm).await.unwrap().1,
        CompileSource::Disk
    );
    drop(second);

    // Flip one byte: detected, rebuilt, never loaded.
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let third = AgentEngine::new(config()).unwrap();
    assert_eq!(
        third.prepare(&digest, &wasm).await.unwrap().1,
        CompileSource::Compiled
    );
    drop(third);

    // A file anyone could have written is not trusted either.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let fourth = AgentEngine::new(config()).unwrap();
    assert_eq!(
        fourth.prepare(&digest, &wasm).await.unwrap().1,
        CompileSource::Compiled
    );

    // Bytes that do not match the digest are refused before compiling.
    let wrong = fourth.prepare(&sha256_digest(b"other"), &wasm).await;
    assert!(wrong.is_err());
}
