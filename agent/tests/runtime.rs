//! Well-behaved components: messaging, storage, lifecycle (add, update, remove), the compile
//! cache. Real wasm32-wasip2 guests, real database, real audit pipeline.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use airssys_agent::engine::{AgentEngine, CompileSource, EngineConfig, sha256_digest};
use airssys_agent::id::ComponentId;
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
async fn an_update_starts_the_new_revision_before_the_old_one_stops() {
    let h = Arc::new(Harness::new());
    h.add(spec("svc", "echo", caps(""), quotas())).await;
    assert_eq!(h.ask("svc", "incr:x").await.unwrap(), "incr:x");

    // Requests keep coming while the component moves to another digest: every one is
    // answered, by one revision or the other.
    let load = {
        let h = h.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..200 {
                answers.push(h.ask("svc", "incr:x").await);
            }
            answers
        })
    };
    let next = spec(
        "svc",
        "kv-counter",
        caps("storage: [{ bucket: counters, access: [read, write] }]"),
        quotas(),
    );
    let digest = next.digest.clone();
    h.supervisor.update(next).await.unwrap();
    // The update returns once an instance of the new revision has passed `init`.
    let started = h
        .audit_events()
        .await
        .iter()
        .any(|e| support::Expect::Started.matches("svc", e) && e["digest"] == digest.as_str());
    assert!(
        started,
        "the new revision had not started when update returned"
    );
    let answers = load.await.unwrap();
    let failed: Vec<_> = answers.iter().filter(|a| a.is_err()).collect();
    assert!(
        failed.is_empty(),
        "requests failed during the update: {failed:?}"
    );
    assert!(answers.iter().any(|a| a.as_deref() == Ok("incr:x")));
    let counted = h.ask("svc", "incr:x").await.unwrap();
    assert!(
        counted.parse::<u32>().is_ok(),
        "the new revision answers: {counted}"
    );
    let status = h.supervisor.status(&id("svc")).await.unwrap();
    assert_eq!(status.kills.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_whose_revision_cannot_start_changes_nothing() {
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.supervisor.broker().subscription_count(&id("subscriber")) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = h.supervisor.digest(&id("subscriber")).await.unwrap();

    // The new revision's `init` fails.
    let mut failing = spec(
        "subscriber",
        "log-bomb",
        caps("env: [{name: MODE}]"),
        quotas(),
    );
    failing.env = vec![("MODE".into(), "fail-init".into())];
    let err = h.supervisor.update(failing).await.unwrap_err().to_string();
    assert!(
        err.contains("did not start") && err.contains("init failed"),
        "{err}"
    );

    // The old revision still runs, with its subscription and its state.
    assert_eq!(
        h.supervisor.digest(&id("subscriber")).await.unwrap(),
        before
    );
    assert_eq!(
        h.supervisor.broker().subscription_count(&id("subscriber")),
        1
    );
    assert_eq!(
        h.ask("publisher", "events.a|one").await.unwrap(),
        "published"
    );
    assert_eq!(h.ask("subscriber", "count").await.unwrap(), "1|one");
    let status = h.supervisor.status(&id("subscriber")).await.unwrap();
    assert_eq!(status.kills.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(!status.is_crash_looping());
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

// ---- maxConcurrentMessages: N instances draining one mailbox ----
//
// The `worker` guest forwards `gate|X` as a request to `test/gate`, a mailbox this test
// holds: a message stays inside the guest, blocked in that request, until the test answers.
// So "two messages run at once" is shown by two requests waiting at the gate together.

mod concurrency {
    use super::*;
    use airssys_agent::broker::{Envelope, Mailbox};
    use airssys_agent::grant::GrantTable;
    use airssys_agent::supervisor::ComponentSpec;
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;

    /// Registers `test/<name>` as a mailbox the test reads.
    fn open_gate(h: &Harness, name: &str) -> mpsc::Receiver<Envelope> {
        let (tx, rx) = mpsc::channel(16);
        let grants = Arc::new(GrantTable::compile(&caps("")));
        h.supervisor
            .broker()
            .register(&id(name), Mailbox { tx, grants });
        rx
    }

    fn worker(max: u32) -> ComponentSpec {
        spec(
            "worker",
            "worker",
            caps("messaging: [{ component: gate, access: [send] }]"),
            support::Quotas {
                max_concurrent_messages: max,
                timeout: Duration::from_secs(20),
                ..quotas()
            },
        )
    }

    fn ask(h: &Arc<Harness>, payload: &str) -> JoinHandle<Result<String, String>> {
        let h = h.clone();
        let payload = payload.to_string();
        tokio::spawn(async move { h.ask("worker", &payload).await })
    }

    /// The next request waiting at the gate (bounded wait so a bug fails instead of hanging).
    async fn arrives(gate: &mut mpsc::Receiver<Envelope>) -> Envelope {
        tokio::time::timeout(Duration::from_secs(10), gate.recv())
            .await
            .expect("a request reaches the gate")
            .expect("gate open")
    }

    /// Nothing else reaches the gate while the ones there are held.
    async fn none_arrives(gate: &mut mpsc::Receiver<Envelope>) {
        let more = tokio::time::timeout(Duration::from_millis(300), gate.recv()).await;
        assert!(
            more.is_err(),
            "a message started while all instances were busy: {:?}",
            more.map(|e| e.map(|e| e.payload))
        );
    }

    /// Answers a held request with its payload upper-cased; returns the payload.
    fn release(envelope: Envelope) -> String {
        let text = String::from_utf8_lossy(&envelope.payload).into_owned();
        envelope
            .reply
            .expect("a request")
            .send(Ok(text.to_uppercase().into_bytes()))
            .expect("the guest still waits for the answer");
        text
    }

    async fn reply(task: JoinHandle<Result<String, String>>) -> Result<String, String> {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the request finishes")
            .expect("task")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_instances_handle_two_messages_at_once_and_the_third_waits() {
        let h = Arc::new(Harness::new());
        let mut gate = open_gate(&h, "gate");
        h.add(worker(2)).await;
        let a = ask(&h, "gate|a");
        let b = ask(&h, "gate|b");
        let c = ask(&h, "gate|c");
        // Two messages blocked inside the guest at the same time: two instances.
        let first = arrives(&mut gate).await;
        let second = arrives(&mut gate).await;
        // The third stays in the mailbox: both instances are busy and the limit is 2.
        none_arrives(&mut gate).await;
        let mut seen = vec![release(first)];
        // One finished: the third message now runs.
        let third = arrives(&mut gate).await;
        seen.push(release(second));
        seen.push(release(third));
        seen.sort();
        assert_eq!(seen, ["a", "b", "c"]);
        assert_eq!(reply(a).await.unwrap(), "A");
        assert_eq!(reply(b).await.unwrap(), "B");
        assert_eq!(reply(c).await.unwrap(), "C");
        let status = h.supervisor.status(&id("worker")).await.unwrap();
        assert_eq!(status.handled.load(std::sync::atomic::Ordering::Relaxed), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_one_instance_messages_are_serialized() {
        let h = Arc::new(Harness::new());
        let mut gate = open_gate(&h, "gate");
        h.add(worker(1)).await;
        let a = ask(&h, "gate|a");
        let first = arrives(&mut gate).await;
        let b = ask(&h, "gate|b");
        none_arrives(&mut gate).await;
        let first = release(first);
        let second = release(arrives(&mut gate).await);
        assert_eq!([first.as_str(), second.as_str()], ["a", "b"]);
        assert_eq!(reply(a).await.unwrap(), "A");
        assert_eq!(reply(b).await.unwrap(), "B");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trap_in_one_instance_leaves_the_other_answering() {
        let h = Arc::new(Harness::new());
        let mut gate = open_gate(&h, "gate");
        h.add(worker(2)).await;
        let held = ask(&h, "gate|held");
        let held_env = arrives(&mut gate).await;
        // The second instance takes the trap and is killed...
        let trapped = reply(ask(&h, "trap")).await.unwrap_err();
        assert!(trapped.contains("killed"), "{trapped}");
        support::wait_kind(&h, "worker", support::Expect::Trap).await;
        // ...and is restarted on its own: a new message is answered while the first
        // instance still holds its message.
        assert_eq!(reply(ask(&h, "ping")).await.unwrap(), "v1:ping");
        assert!(!held.is_finished());
        // The held message was not lost with the other instance.
        assert_eq!(release(held_env), "held");
        assert_eq!(reply(held).await.unwrap(), "HELD");
        let status = h.supervisor.status(&id("worker")).await.unwrap();
        assert_eq!(status.kills.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(!status.is_crash_looping());
    }

    /// Instance numbers of the audit events of `kind` about the worker, in order.
    async fn instances_with(h: &Harness, kind: &str) -> Vec<u64> {
        h.audit_events()
            .await
            .iter()
            .filter(|e| e["component"] == "test/worker" && e["kind"] == kind)
            .map(|e| e["instance"].as_u64().expect("an instance number"))
            .collect()
    }

    /// Waits (bounded) until the worker's events of `kind` name exactly `instances`.
    async fn wait_instances(h: &Harness, kind: &str, instances: &[u64]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let seen = instances_with(h, kind).await;
            if seen == instances {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{kind} events name instances {seen:?}, expected {instances:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audit_events_name_the_instance_they_happened_in_not_the_latest() {
        let h = Arc::new(Harness::new());
        let mut gate = open_gate(&h, "gate");
        h.add(worker(2)).await;
        // Instance 1, the only one, takes `a` and holds it; that starts instance 2, which
        // takes `b` and holds it too.
        let a = ask(&h, "gate|a");
        let held_a = arrives(&mut gate).await;
        let b = ask(&h, "gate|b");
        let held_b = arrives(&mut gate).await;
        wait_instances(&h, "Started", &[1, 2]).await;
        assert_eq!(release(held_a), "a");
        assert_eq!(reply(a).await.unwrap(), "A");

        // Instance 2, the most recently started, is still busy: what comes next runs in
        // instance 1, and its events must say so.
        let denied = reply(ask(&h, "secret|x")).await.unwrap_err();
        assert!(denied.contains("AccessDenied"), "{denied}");
        let event = support::wait_kind(&h, "worker", support::Expect::Denied("send")).await;
        assert_eq!(event["instance"], 1, "denial in instance 1: {event}");

        let trapped = reply(ask(&h, "trap")).await.unwrap_err();
        assert!(trapped.contains("killed"), "{trapped}");
        // The trap, the kill and the restart are about instance 1; its successor is 3.
        wait_instances(&h, "Restarted", &[1]).await;
        wait_instances(&h, "Started", &[1, 2, 3]).await;
        assert_eq!(instances_with(&h, "Trapped").await, [1]);
        assert_eq!(instances_with(&h, "Killed").await, [1]);

        // Instance 2 was never disturbed.
        assert_eq!(release(held_b), "b");
        assert_eq!(reply(b).await.unwrap(), "B");
        let status = h.supervisor.status(&id("worker")).await.unwrap();
        assert_eq!(status.kills.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_update_reaches_every_instance_after_its_current_message() {
        let h = Arc::new(Harness::new());
        let mut gate = open_gate(&h, "gate");
        let mut gate2 = open_gate(&h, "gate2");
        h.add(worker(2)).await;
        let a = ask(&h, "gate|a");
        let b = ask(&h, "gate|b");
        let held = [arrives(&mut gate).await, arrives(&mut gate).await];

        // New digest (the relay guest) with a grant for gate2 only.
        let next = spec(
            "worker",
            "relay",
            caps("messaging: [{ component: gate2, access: [send] }]"),
            support::Quotas {
                max_concurrent_messages: 2,
                timeout: Duration::from_secs(20),
                ..quotas()
            },
        );
        let digest = next.digest.clone();
        h.supervisor.update(next).await.unwrap();
        // Both in-flight messages finish on the old revision.
        for envelope in held {
            release(envelope);
        }
        assert_eq!(reply(a).await.unwrap(), "A");
        assert_eq!(reply(b).await.unwrap(), "B");
        assert_eq!(h.supervisor.digest(&id("worker")).await.unwrap(), digest);

        // Two instances of the new revision run at once...
        let c = ask(&h, "gate2|c");
        let d = ask(&h, "gate2|d");
        let mut seen = vec![
            release(arrives(&mut gate2).await),
            release(arrives(&mut gate2).await),
        ];
        seen.sort();
        assert_eq!(seen, ["c", "d"]);
        assert_eq!(reply(c).await.unwrap(), "C");
        assert_eq!(reply(d).await.unwrap(), "D");
        // ...and none of the old one is left: the old grant and the old code are gone.
        let old_grant = reply(ask(&h, "gate|e")).await.unwrap_err();
        assert!(old_grant.contains("AccessDenied"), "{old_grant}");
        let old_code = reply(ask(&h, "ping")).await.unwrap_err();
        assert!(old_code.contains("InvalidInput"), "{old_code}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_drains_every_instance() {
        let h = Arc::new(Harness::new());
        let mut gate = open_gate(&h, "gate");
        h.add(worker(2)).await;
        let a = ask(&h, "gate|a");
        let b = ask(&h, "gate|b");
        let held = [arrives(&mut gate).await, arrives(&mut gate).await];
        let queued = ask(&h, "gate|queued");
        none_arrives(&mut gate).await;

        let status = h.supervisor.status(&id("worker")).await.unwrap();
        let remover = {
            let h = h.clone();
            tokio::spawn(async move { h.supervisor.remove(&id("worker")).await })
        };
        // Removal waits for the messages being handled.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!remover.is_finished(), "stopped before draining");
        for envelope in held {
            release(envelope);
        }
        tokio::time::timeout(Duration::from_secs(10), remover)
            .await
            .expect("remove finishes once drained")
            .unwrap()
            .unwrap();
        assert_eq!(reply(a).await.unwrap(), "A");
        assert_eq!(reply(b).await.unwrap(), "B");
        // The queued message is dropped, not run: its requester gets an error.
        assert!(reply(queued).await.is_err());
        assert_eq!(status.state(), airssys_agent::actor::ActorState::Stopped);
        assert_eq!(status.handled.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert!(h.supervisor.components().await.is_empty());
    }
}
