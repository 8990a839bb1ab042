//! The controllers: [`trust_source`] keeps the trust index and re-queues the components a
//! source change affects; [`component`] resolves, verifies and decides each `WasmComponent`;
//! [`placement`] places approved components on the nodes' agents and sums their Placements
//! into the component's status.
//!
//! All share one [`Context`] and its reflector stores (components, namespaces, Placements,
//! Nodes, and the agents' Leases in the product's namespace). A source change reaches the
//! component controller through a channel of `ObjectRefs` (`Controller::reconcile_on`), so the
//! index is updated before the affected components are evaluated again; the other way, a
//! component whose decision changed which sources cover it re-queues those sources, so their
//! `status.components` follows within seconds. Components are enumerated from the component
//! controller's reflector store, never listed; Namespaces are watched too, and a label change
//! re-queues the namespace's components at once (a relabel can change which sources select
//! them).
//!
//! One watch of `WasmComponent`s feeds both component-level controllers. Changes that are only
//! the placement controller's own status fields (replicas, nodes, `Scheduled`/`Ready`/
//! `Degraded`) are filtered out, so summing agent reports never makes the component controller
//! resolve the artifact again. Nodes and agent Leases trigger no reconcile per event (Leases are
//! renewed every few seconds): a once-a-second look at the view placement depends on (node
//! labels, taints, agent liveness, capacity) re-queues every component when it changed — which
//! is also how a Lease that *expires*, an event no watch delivers, moves replicas.

pub mod component;
pub mod placement;
pub mod service;
pub mod trust_source;
pub mod written;

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use airssys_crds::agent::AGENT_LEASE_LABEL;
use airssys_crds::component::WasmComponentStatus;
use airssys_crds::condition::ConditionType;
use airssys_crds::{Placement, TrustSource, WasmComponent};
use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::ResourceExt as _;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self as kube_controller, Action, Controller};
use kube::runtime::predicates;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::events::{EventReason, Occurrence, Publish, Series, event_name};
use crate::metrics::Metrics;
use crate::trust::TrustDecision;
use crate::{Config, Context, Error, Resolver, TrustIndex};

/// The finalizer on `WasmComponent`s, so deletions are seen and the index forgets them.
pub const FINALIZER: &str = "wasm.airssys.dev/cleanup";
/// Field manager for status written by server-side apply.
pub const FIELD_MANAGER: &str = "airssys-operator";
/// `reportingController` of our Events.
pub const REPORTER: &str = "airssys-operator";
/// The most bytes of an Event note (the API server allows 1 kB).
const NOTE_LIMIT: usize = 1000;
/// How long `TrustSource` recounts are gathered before they run.
const RECOUNT_BATCH: Duration = Duration::from_millis(500);
/// How soon a write refused for a stale copy is tried again (see [`Error::is_stale_write`]).
const STALE_RETRY: Duration = Duration::from_millis(200);

/// The reflector stores the controllers read instead of listing.
#[derive(Clone)]
pub struct Stores {
    pub components: Store<WasmComponent>,
    pub namespaces: Store<Namespace>,
    pub placements: Store<Placement>,
    pub nodes: Store<Node>,
    /// The agents' Leases (label [`AGENT_LEASE_LABEL`]) in the product's namespace.
    pub leases: Store<Lease>,
    /// The Services and EndpointSlices of HTTP components (label
    /// [`crate::http::COMPONENT_LABEL`]).
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
}

impl Default for Stores {
    /// Empty stores that no watch fills (for tests of single reconciles).
    fn default() -> Self {
        Self {
            components: reflector::store().0,
            namespaces: reflector::store().0,
            placements: reflector::store().0,
            nodes: reflector::store().0,
            leases: reflector::store().0,
            services: reflector::store().0,
            slices: reflector::store().0,
        }
    }
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("components", &self.components.len())
            .field("namespaces", &self.namespaces.len())
            .field("placements", &self.placements.len())
            .field("nodes", &self.nodes.len())
            .field("leases", &self.leases.len())
            .field("services", &self.services.len())
            .field("slices", &self.slices.len())
            .finish()
    }
}

/// The re-queue channels into the controllers: components to evaluate again, and
/// `TrustSource`s to count again.
#[derive(Debug, Clone)]
pub struct Requeues {
    pub components: mpsc::UnboundedSender<ObjectRef<WasmComponent>>,
    pub sources: mpsc::UnboundedSender<ObjectRef<TrustSource>>,
}

/// Publishes events.k8s.io/v1 Events; an exact repeat (same object, reason, action and note)
/// within the series window updates the earlier Event's `series` instead ([`Series`] decides).
pub struct EventPublisher {
    client: kube::Client,
    /// `reportingInstance`: the pod, else the controller.
    instance: String,
    series: Mutex<Series>,
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // kube::Client has no Debug.
        f.debug_struct("EventPublisher")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl EventPublisher {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            instance: std::env::var("POD_NAME").unwrap_or_else(|_| REPORTER.to_owned()),
            series: Mutex::default(),
        }
    }

    /// Writes one occurrence: a new Event, or the series of the Event it repeats. The note
    /// is shortened to what the API server takes.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        reason: EventReason,
        action: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        let occurrence = Occurrence::new(regarding, reason, action, &note);
        let next = self
            .series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(&occurrence, Instant::now());
        // Cluster-scoped objects (TrustSources) have their Events in `default`, as kubectl
        // looks for them.
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let now = k8s_openapi::jiff::Timestamp::now();
        if let Publish::Repeat { name, count } = next {
            let series = serde_json::json!({ "series": {
                "count": count,
                "lastObservedTime": MicroTime(now),
            }});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => return Ok(()),
                // Expired (the API server keeps Events for a limited time) or deleted: the
                // occurrence starts a new Event.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = Event {
            metadata: ObjectMeta {
                name: Some(event_name(
                    regarding.name.as_deref().unwrap_or(REPORTER),
                    u128::try_from(now.as_nanosecond()).unwrap_or_default(),
                )),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(reason.event_type().as_str().to_owned()),
            reason: Some(reason.as_str().to_owned()),
            action: Some(action.to_owned()),
            note: Some(airssys_crds::condition::bounded(note, NOTE_LIMIT)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(REPORTER.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        let created = api.create(&PostParams::default(), &event).await?;
        self.series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .created(occurrence, created.name_any(), Instant::now());
        Ok(())
    }
}

impl Context {
    /// The shared state of both controllers.
    pub fn new(
        client: kube::Client,
        resolver: Resolver,
        config: Config,
        metrics: Arc<Metrics>,
        requeues: Requeues,
        stores: Stores,
    ) -> Self {
        Self {
            events: Arc::new(EventPublisher::new(client.clone())),
            client,
            index: Arc::new(RwLock::new(TrustIndex::new())),
            resolver,
            config,
            metrics,
            requeue: requeues.components,
            source_requeue: requeues.sources,
            stores,
            ledger: Arc::new(Mutex::default()),
            written: Arc::default(),
            view_ready: Arc::default(),
            failures: Arc::new(Mutex::default()),
        }
    }

    /// The delay before retrying `key` after another failure: 2 s doubling to 5 min.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let n = failures.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        let secs = 2u64.saturating_mul(1u64 << (*n - 1).min(8));
        Duration::from_secs(secs.min(300))
    }

    /// Forgets the failures of `key` after a success.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// Publishes an Event about `regarding`; a rejected Event is logged and counted, never
    /// fails the reconciliation (the status already says the same). The note is bounded. Only
    /// an exact repeat folds into an earlier Event: a new cause is a new Event.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        reason: EventReason,
        action: &str,
        note: String,
    ) {
        let published = match self.events.publish(regarding, reason, action, note).await {
            Ok(()) => true,
            Err(e) => {
                warn!(reason = reason.as_str(), error = %e, "publishing an Event failed");
                false
            }
        };
        self.metrics.event(reason.as_str(), published);
    }

    /// Sends every known `WasmComponent` to the component controller (key material changed,
    /// so recorded signers may no longer be right).
    pub fn requeue_all(&self) {
        for c in self.stores.components.state() {
            let _ = self.requeue.send(ObjectRef::from_obj(c.as_ref()));
        }
    }

    /// A component's decision went from `before` to `after` (`None`: no decision recorded):
    /// the sources whose count of covered components changed are counted again
    /// (`status.components`), within seconds rather than at the next refresh.
    pub fn coverage_changed(&self, before: Option<&TrustDecision>, after: Option<&TrustDecision>) {
        let none: &[String] = &[];
        let before = before.map_or(none, |d| &d.matched_sources);
        let after = after.map_or(none, |d| &d.matched_sources);
        for source in coverage_change(before, after) {
            // The receiver lives as long as the trust-source controller.
            let _ = self.source_requeue.send(ObjectRef::new(source));
        }
    }

    /// Sends `keys` (`namespace`, `name`) to the component controller.
    pub fn requeue_components(&self, keys: &[(String, String)]) {
        for (ns, name) in keys {
            // The receiver lives as long as the component controller; after it stops there
            // is nothing left to re-queue.
            let _ = self.requeue.send(ObjectRef::new(name).within(ns));
        }
    }

    /// The labels of namespace `ns`, from the watched store (the API server when the store
    /// has not seen it yet).
    pub async fn namespace_labels(
        &self,
        ns: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, Error> {
        if let Some(namespace) = self.stores.namespaces.get(&ObjectRef::new(ns)) {
            return Ok(namespace.labels().clone());
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        Ok(api.get(ns).await?.metadata.labels.unwrap_or_default())
    }

    /// The decision policy from the configuration.
    pub fn policy(&self) -> crate::Policy {
        self.config.policy()
    }
}

/// A typed server-side apply body for the status of a `K`: only the fields in `S` are sent, so
/// only they become ours; everything else stays with its writer.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusApply<K, S> {
    api_version: String,
    kind: String,
    status: S,
    #[serde(skip)]
    of: std::marker::PhantomData<K>,
}

impl<K: kube::Resource<DynamicType = ()>, S> StatusApply<K, S> {
    pub fn new(status: S) -> Self {
        Self {
            api_version: K::api_version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            status,
            of: std::marker::PhantomData,
        }
    }

    pub fn status(&self) -> &S {
        &self.status
    }
}

/// Applies `body` to component `c`'s status with field manager `manager` (server-side apply,
/// forced); then, when `repair` finds fields another manager also set that survived the apply
/// (shared, not ours alone), replaces them with the merge patch it returns. Records what was
/// sent as `writer`'s last write. A component deleted meanwhile has no status left to write.
pub(crate) async fn write_component_status<S: serde::Serialize + std::fmt::Debug>(
    ctx: &Context,
    c: &WasmComponent,
    writer: written::Writer,
    manager: &str,
    body: &StatusApply<WasmComponent, S>,
    repair: impl FnOnce(&WasmComponentStatus) -> Option<serde_json::Value>,
) -> Result<(), Error> {
    let api: Api<WasmComponent> =
        Api::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
    let name = c.name_any();
    let mut written = match api
        .patch_status(
            &name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(body),
        )
        .await
    {
        Ok(written) => written,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if let Some(merge) = repair(&written.status.clone().unwrap_or_default()) {
        written = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&merge))
            .await?;
    }
    ctx.written.record(
        &c.uid().unwrap_or_default(),
        writer,
        body.status(),
        written.resource_version(),
    );
    Ok(())
}

/// The sources that cover a component under one of two decisions but not the other: those
/// whose count changes when the decision goes from `before` to `after`.
fn coverage_change<'a>(before: &'a [String], after: &'a [String]) -> BTreeSet<&'a str> {
    let before: BTreeSet<&str> = before.iter().map(String::as_str).collect();
    let after: BTreeSet<&str> = after.iter().map(String::as_str).collect();
    before.symmetric_difference(&after).copied().collect()
}

/// Components of namespace `ns` in the store, as controller requests.
fn components_in(store: &Store<WasmComponent>, ns: &str) -> Vec<ObjectRef<WasmComponent>> {
    store
        .state()
        .iter()
        .filter(|c| c.namespace().as_deref() == Some(ns))
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// Loads every `TrustSource` into the index, so the first component evaluations already see
/// them (otherwise a restart would briefly revoke every approval).
pub async fn load_sources(ctx: &Context) -> Result<usize, Error> {
    let api: Api<TrustSource> = Api::all(ctx.client.clone());
    let sources = api.list(&ListParams::default()).await?;
    let mut index = ctx.index.write().map_err(|_| Error::IndexPoisoned)?;
    for source in &sources {
        if source.metadata.deletion_timestamp.is_none() {
            index.apply(source);
        }
    }
    Ok(sources.items.len())
}

/// Runs the controllers until SIGTERM or Ctrl-C.
pub async fn run(
    client: kube::Client,
    resolver: Resolver,
    config: Config,
    metrics: Arc<Metrics>,
) -> Result<(), Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (source_tx, source_rx) = mpsc::unbounded_channel();
    let (place_tx, place_rx) = mpsc::unbounded_channel();
    let (components, component_writer) = reflector::store();
    let (namespaces, namespace_writer) = reflector::store();
    let (placements, placement_writer) = reflector::store();
    let (nodes, node_writer) = reflector::store();
    let (leases, lease_writer) = reflector::store();
    let (services, service_writer) = reflector::store();
    let (slices, slice_writer) = reflector::store();
    let lease_namespace = config.namespace.clone();
    let stores = Stores {
        components: components.clone(),
        namespaces,
        placements,
        nodes,
        leases,
        services,
        slices,
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        resolver,
        config,
        metrics,
        Requeues {
            components: tx,
            sources: source_tx,
        },
        stores,
    ));
    let loaded = load_sources(&ctx).await?;
    info!(sources = loaded, "trust index loaded");

    // Our own watch of TrustSources, so deletions are seen without a finalizer on them.
    let (reader, writer) = reflector::store();
    let watch_ctx = ctx.clone();
    let store = reader.clone();
    let source_events = reflector::reflector(
        writer,
        watcher(
            Api::<TrustSource>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .inspect(move |event| match event {
        Ok(watcher::Event::Delete(source)) => {
            trust_source::deleted(&source.name_any(), &watch_ctx);
        }
        Ok(watcher::Event::InitDone) => {
            let existing: Vec<String> = store.state().iter().map(|s| s.name_any()).collect();
            trust_source::prune(&existing, &watch_ctx);
        }
        _ => {}
    })
    .applied_objects();
    // A component whose decision changed which sources cover it re-queues those sources, so
    // their `status.components` follows within seconds.
    // Batched: when many components are decided at once, each source is counted (and its
    // status written) once per batch, not once per component.
    let recounts = futures::stream::unfold(source_rx, |mut rx| async move {
        let first = rx.recv().await?;
        tokio::time::sleep(RECOUNT_BATCH).await;
        let mut batch = std::collections::HashSet::from([first]);
        while let Ok(more) = rx.try_recv() {
            batch.insert(more);
        }
        Some((futures::stream::iter(batch), rx))
    })
    .flatten();
    let sources = Controller::for_stream(source_events, reader)
        .reconcile_on(recounts)
        .shutdown_on_signal()
        .run(
            trust_source::reconcile,
            trust_source::error_policy,
            ctx.clone(),
        )
        .for_each(|res| async move {
            match res {
                // A recount of a source deleted meanwhile: nothing left to count.
                Err(kube_controller::Error::ObjectNotFound(obj)) => {
                    debug!(object = %obj, "trust source gone");
                }
                Err(e) => warn!(error = %e, "trust source controller"),
                Ok(_) => {}
            }
        });

    let requeues =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    // One watch of components for both controllers: the store is always ahead of the triggers.
    let mut changes = Changes::default();
    let tap = place_tx.clone();
    let component_events = reflector::reflector(
        component_writer,
        watcher(
            Api::<WasmComponent>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .touched_objects()
    .filter(move |event| {
        std::future::ready(match event {
            Ok(c) => changes.relevant(c),
            Err(_) => true,
        })
    })
    .inspect(move |event| {
        if let Ok(c) = event {
            let _ = tap.send(ObjectRef::from_obj(c));
        }
    });
    // Only label changes matter: they decide which sources select the namespace.
    let relabels = reflector::reflector(
        namespace_writer,
        watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .applied_objects()
    .predicate_filter(predicates::labels, Default::default());
    let component_store = components.clone();
    let components_controller = Controller::for_stream(component_events, components.clone())
        .watches_stream(relabels, move |ns: Namespace| {
            components_in(&component_store, &ns.name_any())
        })
        .reconcile_on(requeues)
        .shutdown_on_signal()
        .run(component::reconcile, component::error_policy, ctx.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "component controller");
            }
        });

    // Placement: triggered by the component watch above (through `tap`), by every change of a
    // component's Placements (an agent's report), and by changes of the nodes' view.
    let placement_events = reflector::reflector(
        placement_writer,
        watcher(
            Api::<Placement>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|p| p.managed_fields_mut().clear()),
    )
    .touched_objects();
    let node_events = reflector::reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .modify(strip_node),
    )
    .for_each(|_| std::future::ready(()));
    let agent_leases = watcher::Config::default().labels(&format!("{AGENT_LEASE_LABEL}=true"));
    let lease_events = reflector::reflector(
        lease_writer,
        watcher(
            Api::<Lease>::namespaced(client.clone(), &lease_namespace),
            agent_leases,
        )
        .default_backoff()
        .modify(|l| l.managed_fields_mut().clear()),
    )
    .for_each(|_| std::future::ready(()));
    let place_requeues = futures::stream::unfold(place_rx, |mut rx| async move {
        rx.recv().await.map(|r| (r, rx))
    });
    let placement_controller = Controller::for_stream(
        futures::stream::pending::<Result<WasmComponent, watcher::Error>>(),
        components,
    )
    .owns_stream(placement_events)
    .reconcile_on(place_requeues)
    .shutdown_on_signal()
    .run(placement::reconcile, placement::error_policy, ctx.clone())
    .for_each(|res| async move {
        match res {
            // A deleted component's last Placement event: nothing left to do.
            Err(kube_controller::Error::ObjectNotFound(obj)) => {
                debug!(object = %obj, "placement: component gone");
            }
            Err(e) => warn!(error = %e, "placement controller"),
            Ok(_) => {}
        }
    });
    let view = placement::watch_nodes(ctx, place_tx);

    // The controllers drain in-flight reconciles on the signal; a reconcile stuck on the
    // network (or a watch that never finished its first list) must not hold the process past
    // the pod's termination grace period.
    let abandon = async {
        shutdown_signal().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    // These only feed stores and triggers; they end only with the process.
    // The operator is the only writer of its HTTP Services and slices: nothing to trigger.
    let ours = watcher::Config::default().labels(crate::http::COMPONENT_LABEL);
    let service_events = reflector::reflector(
        service_writer,
        watcher(Api::<Service>::all(client.clone()), ours.clone())
            .default_backoff()
            .modify(|s| s.managed_fields_mut().clear()),
    )
    .for_each(|_| std::future::ready(()));
    let slice_events = reflector::reflector(
        slice_writer,
        watcher(Api::<EndpointSlice>::all(client), ours)
            .default_backoff()
            .modify(|s| s.managed_fields_mut().clear()),
    )
    .for_each(|_| std::future::ready(()));
    let background = futures::future::join5(
        node_events,
        lease_events,
        view,
        service_events,
        slice_events,
    );
    tokio::select! {
        _ = futures::future::join3(sources, components_controller, placement_controller) => info!("controllers stopped"),
        _ = background => warn!("the Node and Lease watches ended"),
        () = abandon => warn!(grace = ?SHUTDOWN_GRACE, "controllers stopped: in-flight work abandoned after the grace period"),
    }
    Ok(())
}

/// Keeps what placement reads of a Node (name, labels, taints, cordon) and drops the rest,
/// which is most of its size (images, conditions, addresses).
fn strip_node(node: &mut Node) {
    node.status = None;
    node.metadata.managed_fields = None;
    node.metadata.annotations = None;
}

/// Which component events matter to the component and placement controllers: any change but
/// one confined to the status fields the placement controller writes.
#[derive(Debug, Default)]
struct Changes {
    seen: HashMap<(Option<String>, String, Option<String>), u64>,
}

impl Changes {
    fn relevant(&mut self, c: &WasmComponent) -> bool {
        let key = (c.namespace(), c.name_any(), c.uid());
        let fingerprint = fingerprint(c);
        let changed = self.seen.insert(key, fingerprint) != Some(fingerprint);
        if c.metadata.deletion_timestamp.is_some() && !c.finalizers().iter().any(|f| f == FINALIZER)
        {
            // Its last event; forget it so the map does not grow with every component ever seen.
            self.seen.remove(&(c.namespace(), c.name_any(), c.uid()));
        }
        changed
    }
}

/// A hash of everything about a component but the placement controller's own status fields.
fn fingerprint(c: &WasmComponent) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    c.metadata.generation.hash(&mut h);
    c.metadata.deletion_timestamp.is_some().hash(&mut h);
    c.metadata.finalizers.hash(&mut h);
    // No status and a status with only the placement controller's fields are the same here:
    // the placement controller's first write must not look like news to the component
    // controller.
    let empty = WasmComponentStatus::default();
    let s = c.status.as_ref().unwrap_or(&empty);
    {
        s.observed_generation.hash(&mut h);
        s.resolved_digest.hash(&mut h);
        s.approved_digest.hash(&mut h);
        s.trust_level.hash(&mut h);
        s.matched_sources.hash(&mut h);
        let placements_own = [
            ConditionType::Scheduled,
            ConditionType::Ready,
            ConditionType::Degraded,
        ];
        for cond in s
            .conditions
            .iter()
            .filter(|c| !placements_own.contains(&c.type_))
        {
            (
                cond.type_.as_str(),
                cond.status.as_str(),
                cond.observed_generation,
                &cond.last_transition_time,
                &cond.reason,
                &cond.message,
            )
                .hash(&mut h);
        }
    }
    h.finish()
}

/// How long in-flight reconciles may run after SIGTERM or Ctrl-C.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            futures::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// The shared error policy: count, log, and retry with backoff.
fn retry_after_error(ctx: &Context, controller: &str, key: &str, error: &Error) -> Action {
    if error.is_stale_write() {
        // Many creates at once make this common (the finalizer patch of a component whose
        // previous reconcile added it already); backing off would hold the component for
        // seconds for nothing.
        debug!(controller, object = key, error = %error, "write based on a stale copy; retrying shortly");
        return Action::requeue(STALE_RETRY);
    }
    ctx.metrics.failure(controller);
    let delay = ctx.backoff(key);
    warn!(controller, object = key, error = %error, transient = error.is_transient(), ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;

    use super::*;
    use crate::events::Reason;

    #[test]
    fn only_changes_outside_the_placement_status_trigger_the_component_controller() {
        use airssys_crds::condition::{Condition, ConditionStatus};
        let mut c: WasmComponent = serde_json::from_value(json!({
            "apiVersion": "wasm.airssys.dev/v1alpha1",
            "kind": "WasmComponent",
            "metadata": {"name": "a", "namespace": "n", "uid": "u1", "generation": 1},
            "spec": {"artifact": {"oci": {"reference": "r.example/a:1"}}}
        }))
        .unwrap();
        let cond = |type_, reason: Reason| {
            Condition::new(type_, ConditionStatus::False, reason, "m", Some(1))
        };
        let mut changes = Changes::default();
        assert!(changes.relevant(&c), "first sight");
        assert!(!changes.relevant(&c), "the same again");
        // The placement controller's first write on a component without status.
        c.status = Some(WasmComponentStatus {
            replicas: 0,
            conditions: vec![cond(ConditionType::Scheduled, Reason::NotApproved)],
            ..WasmComponentStatus::default()
        });
        assert!(!changes.relevant(&c), "only placement fields appeared");
        c.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
        assert!(changes.relevant(&c), "the finalizer");
        c.status
            .as_mut()
            .unwrap()
            .conditions
            .push(cond(ConditionType::Approved, Reason::PendingApproval));
        assert!(changes.relevant(&c), "the decision");
        c.metadata.generation = Some(2);
        assert!(changes.relevant(&c), "a new generation");
    }

    #[test]
    fn coverage_change_spec() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        // (rule, before, after, sources counted again)
        type Row<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str]);
        let rows: [Row<'_>; 5] = [
            (
                "first decision: every matched source",
                &[],
                &["a", "b"],
                &["a", "b"],
            ),
            ("forgotten: every source it had", &["a"], &[], &["a"]),
            (
                "same sources in another order: none",
                &["a", "b"],
                &["b", "a"],
                &[],
            ),
            (
                "one source traded for another: both",
                &["a", "b"],
                &["b", "c"],
                &["a", "c"],
            ),
            ("nothing before or after: none", &[], &[], &[]),
        ];
        for (rule, before, after, want) in rows {
            let (before, after) = (names(before), names(after));
            let got: Vec<&str> = coverage_change(&before, &after).into_iter().collect();
            assert_eq!(got, want, "{rule}");
        }
    }

    /// One expected API call: method, path prefix, and the status to answer with.
    struct Call {
        method: &'static str,
        path: String,
        status: u16,
    }

    /// Answers `calls` in order, echoing a created Event back with a name; returns the bodies.
    async fn serve(
        mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
        calls: Vec<Call>,
    ) -> Vec<serde_json::Value> {
        let mut bodies = Vec::new();
        for call in calls {
            let (request, send) = handle.next_request().await.expect("a request");
            assert_eq!(request.method().as_str(), call.method);
            let path = request.uri().to_string();
            assert!(
                path.starts_with(&call.path),
                "{path}, expected {}",
                call.path
            );
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let answer = if call.status == 404 {
                json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": "gone" })
            } else {
                body.clone()
            };
            send.send_response(
                Response::builder()
                    .status(call.status)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
            bodies.push(body);
        }
        bodies
    }

    #[tokio::test]
    async fn only_an_exact_repeat_folds_into_an_earlier_event() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let publisher = EventPublisher::new(kube::Client::new(service, "default"));
        let regarding = ObjectReference {
            api_version: Some("wasm.airssys.dev/v1alpha1".into()),
            kind: Some("WasmComponent".into()),
            namespace: Some("team".into()),
            name: Some("echo".into()),
            uid: Some("u1".into()),
            ..ObjectReference::default()
        };
        let events = "/apis/events.k8s.io/v1/namespaces/team/events";
        let call = |method, path: String, status| Call {
            method,
            path,
            status,
        };
        let create = || call("POST", format!("{events}?"), 201);
        let repeat = |status| call("PATCH", format!("{events}/echo."), status);
        let server = tokio::spawn(serve(
            handle,
            vec![
                create(),
                repeat(200),
                create(),
                repeat(200),
                // The Event expired on the server: the repeat starts a new one.
                repeat(404),
                create(),
            ],
        ));
        let first_cause = "Approval of sha256:a revoked (PendingApproval): no source matches";
        let second_cause = "Approval of sha256:a revoked (Denied): denied by TrustSource block";
        for note in [
            first_cause,
            first_cause,
            second_cause,
            first_cause,
            second_cause,
        ] {
            publisher
                .publish(
                    &regarding,
                    EventReason::ApprovalRevoked,
                    "Revoke",
                    note.to_owned(),
                )
                .await
                .unwrap();
        }
        let bodies = server.await.unwrap();

        let first = &bodies[0];
        assert_eq!(first["note"], first_cause);
        assert_eq!(first["reason"], "ApprovalRevoked");
        assert_eq!(first["type"], "Warning");
        assert_eq!(first["action"], "Revoke");
        assert_eq!(first["reportingController"], REPORTER);
        assert!(
            first["reportingInstance"]
                .as_str()
                .is_some_and(|i| !i.is_empty())
        );
        assert!(first["eventTime"].as_str().is_some());
        assert_eq!(first["regarding"]["uid"], "u1");
        assert!(first.get("series").is_none());
        assert!(
            first["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("echo.")),
            "{first}"
        );

        // The repeat touches only the series: the note stays what it was.
        let series = &bodies[1];
        assert_eq!(series["series"]["count"], 2, "{series}");
        assert!(series["series"]["lastObservedTime"].as_str().is_some());
        assert_eq!(series.as_object().unwrap().len(), 1, "{series}");

        // A new cause is a new Event with its own note, not a count on the first.
        assert_eq!(bodies[2]["note"], second_cause);
        assert_eq!(bodies[3]["series"]["count"], 3, "the first cause again");
        assert_eq!(bodies[4]["series"]["count"], 2, "the second cause again");
        assert_eq!(bodies[5]["note"], second_cause, "recreated after a 404");
    }

    #[tokio::test]
    async fn events_about_cluster_scoped_objects_go_to_default_with_a_bounded_note() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let publisher = EventPublisher::new(kube::Client::new(service, "default"));
        let regarding = ObjectReference {
            kind: Some("TrustSource".into()),
            name: Some("bad".into()),
            ..ObjectReference::default()
        };
        let server = tokio::spawn(serve(
            handle,
            vec![Call {
                method: "POST",
                path: "/apis/events.k8s.io/v1/namespaces/default/events?".into(),
                status: 201,
            }],
        ));
        publisher
            .publish(
                &regarding,
                EventReason::Condition(Reason::InvalidSource),
                "Validate",
                "n".repeat(5000),
            )
            .await
            .unwrap();
        let bodies = server.await.unwrap();
        assert_eq!(bodies[0]["metadata"]["namespace"], "default");
        assert_eq!(bodies[0]["type"], "Warning");
        let note = bodies[0]["note"].as_str().unwrap();
        assert!(
            note.len() <= NOTE_LIMIT && note.ends_with('…'),
            "{}",
            note.len()
        );
    }
}
