//! The agent's audit becomes Kubernetes Events on the real control plane: hostile guests
//! (real wasm32-wasip2 components) run under a supervisor whose audit pipeline publishes
//! `events.k8s.io/v1` Events about a real `WasmComponent` object, and a denial flood costs the
//! API server a bounded number of writes while every occurrence stays counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use airssys_agent::audit::{
    AuditKind, ComponentIdentity, EventPublisher, EventQueue, ObjectRefs, PublisherConfig,
};
use airssys_agent::id::ComponentId;
use airssys_agent::metrics::Metrics;
use airssys_crds::agent::AGENT_REPORTING_CONTROLLER;
use airssys_crds::{Placement, WasmComponent};
use airssys_test_support::ControlPlane;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use support::{Harness, caps, quotas, spec};
use tokio::task::JoinHandle;

const NODE: &str = "events-node-1";
const TIMEOUT: Duration = Duration::from_secs(60);

/// A `WasmComponent` and its `Placement` on [`NODE`], created for real so the Events'
/// references resolve; returns what the agent's node mode would put in the component spec.
async fn objects(client: &Client, ns: &str, name: &str) -> ObjectRefs {
    let components: Api<WasmComponent> = Api::namespaced(client.clone(), ns);
    let component: WasmComponent = serde_json::from_value(serde_json::json!({
        "apiVersion": "wasm.airssys.dev/v1alpha1",
        "kind": "WasmComponent",
        "metadata": { "name": name, "namespace": ns },
        "spec": { "artifact": { "oci": { "reference": "registry.example.com/team/hostile:1.0" } } }
    }))
    .unwrap();
    let component = components
        .create(&PostParams::default(), &component)
        .await
        .unwrap();
    let uid = component.metadata.uid.clone().unwrap();
    let placements: Api<Placement> = Api::namespaced(client.clone(), ns);
    let placement: Placement = serde_json::from_value(serde_json::json!({
        "apiVersion": "wasm.airssys.dev/v1alpha1",
        "kind": "Placement",
        "metadata": { "name": format!("{name}-{NODE}"), "namespace": ns },
        "spec": {
            "nodeName": NODE,
            "component": { "name": name, "uid": uid, "generation": 1 },
            "digest": format!("sha256:{}", "a".repeat(64)),
            "artifact": { "oci": { "reference": "registry.example.com/team/hostile:1.0" } },
            "instances": 1
        }
    }))
    .unwrap();
    let placement = placements
        .create(&PostParams::default(), &placement)
        .await
        .unwrap();
    ObjectRefs {
        component_uid: uid,
        placement: placement.metadata.name.unwrap(),
        placement_uid: placement.metadata.uid,
    }
}

/// The control plane, a fresh namespace and an admin client.
async fn setup(prefix: &str) -> (&'static ControlPlane, String, Client) {
    let cp = ControlPlane::shared().await.unwrap();
    let ns = cp.create_namespace(prefix).await.unwrap();
    let client = cp.client().await.unwrap();
    (cp, ns, client)
}

/// A harness whose audit publishes Events to the API server as [`NODE`].
fn harness(client: &Client, config: PublisherConfig) -> (Harness, JoinHandle<()>) {
    let metrics = Arc::new(Metrics::new());
    let (queue, task): (EventQueue, _) =
        EventPublisher::start_with(client.clone(), config, &metrics.audit);
    (Harness::with_events(metrics, Box::new(queue)), task)
}

/// Stops the components and the audit pipeline (its last Event series go out), then waits
/// for the publisher to finish its writes.
async fn shut_down(h: Harness, publisher: JoinHandle<()>) -> Arc<Metrics> {
    let Harness {
        supervisor,
        auditor,
        metrics,
        ..
    } = h;
    supervisor.shutdown().await;
    tokio::task::spawn_blocking(move || auditor.shutdown())
        .await
        .unwrap();
    tokio::time::timeout(TIMEOUT, publisher)
        .await
        .expect("the publisher finishes once the audit pipeline is down")
        .unwrap();
    metrics
}

/// Adds guest `guest` as the component `ns/name` whose Events name `refs`.
async fn add(h: &Harness, ns: &str, name: &str, guest: &str, grant: &str, refs: ObjectRefs) {
    let mut s = spec(name, guest, caps(grant), quotas());
    s.id = ComponentId::new(ns, name);
    s.k8s = Some(refs);
    h.supervisor.add(s).await.unwrap();
}

async fn ask(h: &Harness, ns: &str, name: &str, payload: &str) -> String {
    let reply = h
        .supervisor
        .request(
            &ComponentId::new(ns, name),
            payload.as_bytes().to_vec(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    String::from_utf8_lossy(&reply).into_owned()
}

/// The Events in `ns` regarding the component `uid`.
async fn events_about(client: &Client, ns: &str, uid: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.uid.as_deref() == Some(uid))
        })
        .collect()
}

/// Waits (bounded) until the Events about `uid` satisfy `pred`; prints them if not.
async fn wait_events(
    client: &Client,
    ns: &str,
    uid: &str,
    what: &str,
    pred: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let events = events_about(client, ns, uid).await;
        if pred(&events) {
            return events;
        }
        assert!(Instant::now() < deadline, "no {what}; Events: {events:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn with_reason<'a>(events: &'a [Event], reason: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

/// How many occurrences an Event stands for.
fn occurrences(e: &Event) -> u64 {
    e.series.as_ref().map_or(1, |s| s.count as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capability_denials_become_events_on_the_wasm_component() {
    let (_cp, ns, client) = setup("events-deny").await;
    let refs = objects(&client, &ns, "escalator").await;
    let uid = refs.component_uid.clone();
    let (h, publisher) = harness(&client, PublisherConfig::new(NODE));
    add(
        &h,
        &ns,
        "escalator",
        "escalation",
        "messaging: [{ topic: events.public, access: [publish] }]",
        refs.clone(),
    )
    .await;
    for attempt in ["publish", "subscribe", "send", "storage"] {
        let answer = ask(&h, &ns, "escalator", attempt).await;
        assert!(answer.starts_with("access-denied:"), "{attempt}: {answer}");
    }

    let events = wait_events(&client, &ns, &uid, "4 CapabilityDenied Events", |e| {
        with_reason(e, "CapabilityDenied").len() == 4 && !with_reason(e, "Started").is_empty()
    })
    .await;
    for e in with_reason(&events, "CapabilityDenied") {
        let regarding = e.regarding.as_ref().unwrap();
        assert_eq!(
            regarding.api_version.as_deref(),
            Some("wasm.airssys.dev/v1alpha1")
        );
        assert_eq!(regarding.kind.as_deref(), Some("WasmComponent"));
        assert_eq!(regarding.namespace.as_deref(), Some(ns.as_str()));
        assert_eq!(regarding.name.as_deref(), Some("escalator"));
        let related = e.related.as_ref().unwrap();
        assert_eq!(related.kind.as_deref(), Some("Placement"));
        assert_eq!(related.name, Some(refs.placement.clone()));
        assert_eq!(related.uid, refs.placement_uid);
        assert_eq!(
            e.reporting_controller.as_deref(),
            Some(AGENT_REPORTING_CONTROLLER)
        );
        assert_eq!(e.reporting_instance.as_deref(), Some(NODE));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.action.as_deref(), Some("CheckCapability"));
    }
    let notes: Vec<&str> = with_reason(&events, "CapabilityDenied")
        .iter()
        .map(|e| e.note.as_deref().unwrap())
        .collect();
    for target in ["admin.>", "admin.secrets", "billing", "secrets"] {
        assert!(
            notes.iter().any(|n| n.contains(target)),
            "{target}: {notes:?}"
        );
    }
    let started = with_reason(&events, "Started");
    assert_eq!(started[0].type_.as_deref(), Some("Normal"));

    // What node mode reports about the component as a whole.
    let identity = ComponentIdentity::with_refs(
        &ComponentId::new(&ns, "escalator"),
        "sha256:unused",
        Some(refs.clone()),
    );
    h.audit.component_event(&identity, AuditKind::Revoked);
    let events = wait_events(&client, &ns, &uid, "a Revoked Event", |e| {
        !with_reason(e, "Revoked").is_empty()
    })
    .await;
    let revoked = with_reason(&events, "Revoked")[0];
    assert_eq!(revoked.type_.as_deref(), Some("Warning"));
    assert!(revoked.note.as_deref().unwrap().contains("Placement"));

    let metrics = shut_down(h, publisher).await;
    let text = metrics.encode();
    assert!(
        text.contains("airssys_events_published_total{reason=\"CapabilityDenied\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("airssys_events_publish_errors_total 0"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_denial_folds_into_a_series_and_a_summary() {
    let (_cp, ns, client) = setup("events-repeat").await;
    let refs = objects(&client, &ns, "repeater").await;
    let uid = refs.component_uid.clone();
    let (h, publisher) = harness(&client, PublisherConfig::new(NODE));
    add(&h, &ns, "repeater", "escalation", "", refs).await;
    const FLOOD: u64 = 300;
    for _ in 0..FLOOD {
        let answer = ask(&h, &ns, "repeater", "publish").await;
        assert!(answer.starts_with("access-denied:"), "{answer}");
    }
    let metrics = shut_down(h, publisher).await;

    let events = events_about(&client, &ns, &uid).await;
    let denied = with_reason(&events, "CapabilityDenied");
    // One Event for the note, its series counting the repeats the audit log has line by line;
    // the repeats the audit fairness budget folded (beyond 50 per 10 s) in a summary.
    let (series, summaries): (Vec<&Event>, Vec<&Event>) = denied.iter().partition(|e| {
        e.note
            .as_deref()
            .is_some_and(|n| n.starts_with("denied publish access to admin.secrets"))
    });
    assert_eq!(
        series.len(),
        1,
        "one Event for the repeated note: {denied:#?}"
    );
    assert!(occurrences(series[0]) > 1, "{:#?}", series[0]);
    let s = series[0].series.as_ref().unwrap();
    assert!(s.last_observed_time.0 >= series[0].event_time.as_ref().unwrap().0);
    assert!(summaries.len() <= 3, "{denied:#?}");
    let counted: u64 = denied.iter().map(|e| occurrences(e)).sum();
    assert_eq!(counted, FLOOD, "every occurrence counted once: {denied:#?}");
    assert_eq!(metrics.audit.events.dropped.get(), 0);
    assert!(
        metrics.audit.events.folded.get() >= FLOOD - 20,
        "the occurrences past the burst are counted as folded: {}",
        metrics.audit.events.folded.get()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_denials_costs_a_bounded_number_of_writes() {
    let (cp, ns, client) = setup("events-flood").await;
    let refs = objects(&client, &ns, "prober").await;
    let uid = refs.component_uid.clone();
    let (h, publisher) = harness(&client, PublisherConfig::new(NODE));
    add(&h, &ns, "prober", "prober", "", refs).await;
    const FLOOD: u64 = 400;
    let started = Instant::now();
    for i in 0..FLOOD {
        let answer = ask(&h, &ns, "prober", &format!("publish:stolen.topic-{i}")).await;
        assert!(answer.starts_with("access-denied:"), "{answer}");
    }
    let elapsed = started.elapsed();
    let writes = |m: &Metrics| {
        m.audit
            .events
            .published
            .get_or_create(&airssys_agent::audit::EventReasonLabels {
                reason: airssys_agent::audit::EventReason::CapabilityDenied,
            })
            .get()
    };
    // Burst 10, then one per 10 s (plus the one in flight): never one per denial.
    let bound = 10 + elapsed.as_secs() / 10 + 2;
    let during = writes(&h.metrics);
    assert!(
        during <= bound,
        "{during} writes for {FLOOD} denials in {elapsed:?} (bound {bound})"
    );

    // The API server stays responsive.
    let components: Api<WasmComponent> = Api::namespaced(client.clone(), &ns);
    let got = tokio::time::timeout(Duration::from_secs(10), components.get("prober"))
        .await
        .expect("the API server answers during the flood")
        .unwrap();
    assert_eq!(got.metadata.uid.as_deref(), Some(uid.as_str()));
    cp.check_processes().unwrap();

    let metrics = shut_down(h, publisher).await;
    let events = events_about(&client, &ns, &uid).await;
    let denied = with_reason(&events, "CapabilityDenied");
    assert!(
        denied.len() as u64 <= bound,
        "{} Events for {FLOOD} denials",
        denied.len()
    );
    // Every occurrence is counted by exactly one Event: its own, a series or a summary.
    let counted: u64 = denied.iter().map(|e| occurrences(e)).sum();
    assert_eq!(counted, FLOOD, "{denied:#?}");
    assert!(
        denied.iter().any(|e| occurrences(e) > 1),
        "some Event stands for many: {denied:#?}"
    );
    let summarized = denied
        .iter()
        .filter(|e| {
            e.note
                .as_deref()
                .is_some_and(|n| n.contains("not published one by one"))
        })
        .count();
    assert!(
        summarized >= 1,
        "a note says how many were folded: {denied:#?}"
    );
    assert!(
        metrics.audit.events.folded.get() >= FLOOD - 2 * bound,
        "folded: {}",
        metrics.audit.events.folded.get()
    );
    assert_eq!(metrics.audit.events.dropped.get(), 0);
    assert!(writes(&metrics) <= bound + 3, "{}", writes(&metrics));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_counted_retried_and_never_crash_the_agent() {
    let (_cp, _ns, client) = setup("events-errors").await;
    let mut config = PublisherConfig::new(NODE);
    config.retry_after = Duration::from_millis(100);
    config.attempts = 2;
    let (h, publisher) = harness(&client, config);
    // A namespace that does not exist: every write fails (404).
    let missing = "no-such-namespace-for-events";
    let refs = ObjectRefs {
        component_uid: "0f1e2d3c-0000-4000-8000-000000000000".into(),
        placement: "ghost-node".into(),
        placement_uid: None,
    };
    add(&h, missing, "ghost", "echo", "", refs).await;
    assert_eq!(ask(&h, missing, "ghost", "still here").await, "still here");
    let deadline = Instant::now() + TIMEOUT;
    while h.metrics.audit.events.dropped.get() == 0 {
        assert!(
            Instant::now() < deadline,
            "the failed write is never given up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(h.metrics.audit.events.errors.get() >= 2, "tried twice");
    // The agent carries on.
    assert_eq!(ask(&h, missing, "ghost", "and now?").await, "and now?");
    let metrics = shut_down(h, publisher).await;
    assert_eq!(
        metrics
            .audit
            .events
            .published
            .get_or_create(&airssys_agent::audit::EventReasonLabels {
                reason: airssys_agent::audit::EventReason::Started,
            })
            .get(),
        0
    );
}
