//! One component cannot hurt another through the broker or the store: replies are held to
//! the receiver's size limit, probes for more than a grant gives are audited, subscriptions
//! and storage are bounded, and no message crosses a namespace (tenant). Every guest here is
//! a real wasm32-wasip2 component (`prober`, `subscriber`, `echo`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::Ordering;

use airssys_agent::broker::MAX_SUBSCRIPTIONS_PER_COMPONENT;
use airssys_agent::id::ComponentId;
use airssys_agent::storage::ENTRY_OVERHEAD_BYTES;
use support::{Expect, Harness, Quotas, caps, quotas, spec};

fn id(name: &str) -> ComponentId {
    ComponentId::new("test", name)
}

async fn kills(h: &Harness, name: &str) -> u64 {
    let status = h.supervisor.status(&id(name)).await.unwrap();
    status.kills.load(Ordering::Relaxed)
}

/// Whether an audit event denies `capability` on exactly `target` for `component`.
fn denies(component: &str, capability: &str, target: &str, e: &serde_json::Value) -> bool {
    e["component"] == format!("test/{component}")
        && e["kind"] == "CapabilityDenied"
        && e["detail"]["capability"] == capability
        && e["detail"]["target"] == target
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_over_the_receivers_limit_never_reach_it() {
    let h = Harness::new();
    // A responder allowed big messages, with the memory to build them.
    let big = Quotas {
        memory_bytes: 96 << 20,
        max_message_bytes: 32 << 20,
        ..quotas()
    };
    h.add(spec("big", "prober", caps(""), big)).await;
    // A responder held to 64 KiB.
    let small = Quotas {
        max_message_bytes: 64 << 10,
        ..quotas()
    };
    h.add(spec("small", "prober", caps(""), small.clone()))
        .await;
    // A requester held to 64 KiB, with too little memory to take in a 12 MiB reply.
    let requester = Quotas {
        memory_bytes: 8 << 20,
        ..small
    };
    let grant = caps("messaging: [{ component: big, access: [send] }]");
    h.add(spec("asker", "prober", grant, requester)).await;

    // (rule, who asks, what, whose limit, the answer starts with)
    let cases: &[(&str, Option<&str>, &str, &str, &str)] = &[
        (
            "an error reply over the requester's limit is refused before its memory",
            Some("asker"),
            "ask:big:err:12582912",
            "asker",
            "invalid-input:",
        ),
        (
            "an ok reply over the requester's limit is refused before its memory",
            Some("asker"),
            "ask:big:ok:12582912",
            "asker",
            "invalid-input:",
        ),
        (
            "an error reply over the responder's own limit does not reach the agent",
            None,
            "err:1048576",
            "small",
            "",
        ),
        (
            "an ok reply over the responder's own limit does not reach the agent",
            None,
            "ok:1048576",
            "small",
            "",
        ),
    ];
    for (rule, asker, command, limited, answer) in cases {
        let got = match asker {
            Some(asker) => h.ask(asker, command).await,
            None => h.ask("small", command).await,
        };
        match asker {
            Some(_) => {
                let got = got.unwrap_or_else(|e| panic!("{rule}: the requester failed: {e}"));
                assert!(got.starts_with(answer), "{rule}: {got}");
                let len: usize = got.rsplit(':').next().unwrap().parse().unwrap();
                assert!(len < 1024, "{rule}: the requester got {len} bytes of error");
            }
            None => {
                let err = got.expect_err(rule);
                assert!(err.contains("InvalidInput"), "{rule}: {err:.200}");
                assert!(
                    err.len() < 1024,
                    "{rule}: the agent got {} bytes",
                    err.len()
                );
            }
        }
        support::wait_kind(&h, limited, Expect::Quota("message-size")).await;
    }
    assert_eq!(kills(&h, "asker").await, 0, "the requester must survive");
    assert_eq!(kills(&h, "big").await, 0);
    assert_eq!(kills(&h, "small").await, 0);
    // Replies within the limits still flow.
    assert_eq!(h.ask("asker", "ask:big:ok:1000").await.unwrap(), "ok:1000");
    assert_eq!(
        h.ask("asker", "ask:big:err:100").await.unwrap(),
        "invalid-input:100"
    );
}

/// A component in `namespace` (the harness's own helpers use the `test` namespace).
async fn add_in(h: &Harness, namespace: &str, name: &str, guest: &str, grant: &str) {
    let mut s = spec(name, guest, caps(grant), quotas());
    s.id = ComponentId::new(namespace, name);
    h.add(s).await;
}

/// Asks `namespace/name`; the reply as text.
async fn ask_in(h: &Harness, namespace: &str, name: &str, payload: &str) -> String {
    let reply = h
        .supervisor
        .request(
            &ComponentId::new(namespace, name),
            payload.as_bytes().to_vec(),
            std::time::Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("{namespace}/{name} {payload}: {e}"));
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_sends_stay_inside_their_namespace() {
    let h = Harness::new();
    // Two tenants with identical components and identical grants: same topic, same names.
    let publish = "messaging: [{ topic: events.>, access: [publish] }, \
                   { component: billing, access: [send] }]";
    let subscribe = "messaging: [{ topic: events.>, access: [subscribe] }]";
    for tenant in ["tenant-a", "tenant-b"] {
        add_in(&h, tenant, "pub", "prober", publish).await;
        // Subscribes to `events.>` in `init`; `count` answers `N|last payload`.
        add_in(&h, tenant, "sub", "subscriber", subscribe).await;
    }
    add_in(&h, "tenant-b", "billing", "echo", "").await;

    // (rule, publishing tenant, the count each tenant's subscriber then has)
    let cases: &[(&str, &str, [&str; 2])] = &[
        (
            "a publish reaches its own namespace only",
            "tenant-a",
            ["1|x", "0|"],
        ),
        ("and the other way round", "tenant-b", ["1|x", "1|x"]),
        (
            "a second publish, still only at home",
            "tenant-a",
            ["2|x", "1|x"],
        ),
    ];
    for (rule, publisher, counts) in cases {
        let answer = ask_in(&h, publisher, "pub", "publish:events.new").await;
        assert_eq!(answer, "allowed", "{rule}");
        for (tenant, want) in ["tenant-a", "tenant-b"].iter().zip(counts) {
            // The count request queues behind the topic message, so it sees it.
            let got = ask_in(&h, tenant, "sub", "count").await;
            assert_eq!(&got, want, "{rule}: {tenant}/sub");
        }
    }

    // A direct send names a component of the sender's own namespace: `billing` exists only
    // in tenant-b, so tenant-a's grant for `billing` reaches nothing, and a `namespace/name`
    // target is never granted (audited).
    let answer = ask_in(&h, "tenant-a", "pub", "send:billing").await;
    assert!(answer.starts_with("not-found:"), "{answer}");
    let answer = ask_in(&h, "tenant-a", "pub", "send:tenant-b/billing").await;
    assert!(answer.starts_with("access-denied:"), "{answer}");
    h.wait_audit("the cross-namespace send", |e| {
        e["component"] == "tenant-a/pub"
            && e["kind"] == "CapabilityDenied"
            && e["detail"]["target"] == "tenant-b/billing"
    })
    .await;
    assert_eq!(
        ask_in(&h, "tenant-b", "pub", "send:billing").await,
        "allowed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_for_more_than_the_grant_are_audited_denials() {
    let h = Harness::new();
    let grant = caps(
        "messaging: [{ topic: a.>, access: [publish, subscribe] }, { component: echo, access: [send] }]\n\
         storage: [{ bucket: data, access: [read, write] }]",
    );
    h.add(spec("prober", "prober", grant, quotas())).await;
    // (rule, command, capability, audited target)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "a one-token wildcard publish",
            "publish:a.*",
            "publish",
            "a.*",
        ),
        ("a tail wildcard publish", "publish:a.>", "publish", "a.>"),
        ("a publish to everything", "publish:>", "publish", ">"),
        (
            "a publish with an empty token",
            "publish:a..b",
            "publish",
            "a..b",
        ),
        (
            "a malformed subscribe pattern",
            "subscribe:a.>.b",
            "subscribe",
            "a.>.b",
        ),
        (
            "a send across namespaces",
            "send:other/echo",
            "send",
            "other/echo",
        ),
        (
            "a bucket reaching up",
            "bucket:../data",
            "storage",
            "../data",
        ),
        ("a bucket with a '/'", "bucket:data/x", "storage", "data/x"),
        ("an upper-case bucket", "bucket:Data", "storage", "Data"),
    ];
    for (rule, command, capability, target) in cases {
        let answer = h.ask("prober", command).await.unwrap();
        assert!(answer.starts_with("access-denied:"), "{rule}: {answer}");
        h.wait_audit(rule, |e| denies("prober", capability, target, e))
            .await;
    }
    // The grant still works: the probes changed nothing.
    assert_eq!(h.ask("prober", "publish:a.b").await.unwrap(), "allowed");
    assert_eq!(h.ask("prober", "bucket:data").await.unwrap(), "allowed");
    assert_eq!(kills(&h, "prober").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_capped_and_charged_to_the_message_rate() {
    let h = Harness::new();
    let grant = caps("messaging: [{ topic: orders.>, access: [subscribe] }]");
    let fast = Quotas {
        messages_per_second: 100_000,
        ..quotas()
    };
    h.add(spec("hoarder", "prober", grant.clone(), fast)).await;
    let answer = h
        .ask("hoarder", "subscribe-many:orders.x:20000")
        .await
        .unwrap();
    assert!(
        answer.starts_with(&format!(
            "made={MAX_SUBSCRIPTIONS_PER_COMPONENT} last=quota-exceeded:"
        )),
        "{answer}"
    );
    let target = format!("orders.x.{MAX_SUBSCRIPTIONS_PER_COMPONENT}");
    h.wait_audit("the refused subscription", |e| {
        denies("hoarder", "subscribe", &target, e)
    })
    .await;

    // Subscribing is not free: a component limited to 10 messages a second cannot make
    // a hundred subscriptions in one go.
    let slow = Quotas {
        messages_per_second: 10,
        ..quotas()
    };
    h.add(spec("slow", "prober", grant, slow)).await;
    let answer = h.ask("slow", "subscribe-many:orders.y:100").await.unwrap();
    let made: usize = answer
        .strip_prefix("made=")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{answer}"));
    assert!(made < 100, "{answer}");
    assert!(answer.contains("messages per second"), "{answer}");
    support::wait_kind(&h, "slow", Expect::Quota("message-rate")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_quota_bounds_what_tiny_entries_store() {
    let h = Harness::new();
    const QUOTA: u64 = 4 << 10;
    let q = Quotas {
        storage_bytes: QUOTA,
        ..quotas()
    };
    let grant = caps("storage: [{ bucket: b, access: [read, write] }]");
    h.add(spec("filler", "prober", grant, q)).await;
    let answer = h.ask("filler", "fill:b").await.unwrap();
    let stored: u64 = answer
        .strip_prefix("stored=")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{answer}"));
    assert!(answer.contains("last=quota-exceeded:"), "{answer}");
    // Counting only key and value bytes let about 2,000 one- to three-byte keys in.
    assert!(
        stored > 0 && stored <= QUOTA / ENTRY_OVERHEAD_BYTES,
        "{stored} entries under a {QUOTA}-byte quota"
    );
    support::wait_kind(&h, "filler", Expect::Quota("storage")).await;
}
