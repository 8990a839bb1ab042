//! The controllers: [`trust_source`] keeps the trust index and re-queues the components a
//! source change affects; [`component`] resolves, verifies and decides each `WasmComponent`.
//!
//! Both share one [`Context`]. A source change reaches the component controller through a
//! channel of `ObjectRefs` (`Controller::reconcile_on`), so the index is updated before the
//! affected components are evaluated again. Components are enumerated from the component
//! controller's reflector store, never listed; Namespaces are watched too, and a label change
//! re-queues the namespace's components at once (a relabel can change which sources select
//! them).

pub mod component;
pub mod trust_source;

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use airssys_crds::{TrustSource, WasmComponent};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::ResourceExt as _;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType as KubeEventType, Recorder, Reporter};
use kube::runtime::predicates;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::events::{EventReason, EventType};
use crate::metrics::Metrics;
use crate::{Config, Context, Error, Resolver, TrustIndex};

/// The finalizer on `WasmComponent`s, so deletions are seen and the index forgets them.
pub const FINALIZER: &str = "wasm.airssys.dev/cleanup";
/// Field manager for status written by server-side apply.
pub const FIELD_MANAGER: &str = "airssys-operator";
/// `reportingController` of our Events.
pub const REPORTER: &str = "airssys-operator";
/// The most bytes of an Event note (the API server allows 1 kB).
const NOTE_LIMIT: usize = 1000;

/// The reflector stores the controllers read instead of listing.
#[derive(Clone)]
pub struct Stores {
    pub components: Store<WasmComponent>,
    pub namespaces: Store<Namespace>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("components", &self.components.len())
            .field("namespaces", &self.namespaces.len())
            .finish()
    }
}

impl Context {
    /// The shared state of both controllers.
    pub fn new(
        client: kube::Client,
        resolver: Resolver,
        config: Config,
        metrics: Arc<Metrics>,
        requeue: mpsc::UnboundedSender<ObjectRef<WasmComponent>>,
        stores: Stores,
    ) -> Self {
        let reporter = Reporter {
            controller: REPORTER.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            index: Arc::new(RwLock::new(TrustIndex::new())),
            resolver,
            config,
            metrics,
            requeue,
            stores,
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
    /// fails the reconciliation (the status already says the same). The note is bounded.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        reason: EventReason,
        action: &str,
        note: String,
    ) {
        let type_ = match reason.event_type() {
            EventType::Normal => KubeEventType::Normal,
            EventType::Warning => KubeEventType::Warning,
        };
        let event = Event {
            type_,
            reason: reason.as_str().to_owned(),
            note: Some(airssys_crds::condition::bounded(note, NOTE_LIMIT)),
            action: action.to_owned(),
            secondary: None,
        };
        let published = match self.recorder.publish(&event, regarding).await {
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

/// Runs both controllers until SIGTERM or Ctrl-C.
pub async fn run(
    client: kube::Client,
    resolver: Resolver,
    config: Config,
    metrics: Arc<Metrics>,
) -> Result<(), Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (components, component_writer) = reflector::store();
    let (namespaces, namespace_writer) = reflector::store();
    let stores = Stores {
        components: components.clone(),
        namespaces,
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        resolver,
        config,
        metrics,
        tx,
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
    let sources = Controller::for_stream(source_events, reader)
        .shutdown_on_signal()
        .run(
            trust_source::reconcile,
            trust_source::error_policy,
            ctx.clone(),
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "trust source controller");
            }
        });

    let requeues =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let component_events = reflector::reflector(
        component_writer,
        watcher(
            Api::<WasmComponent>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .touched_objects();
    // Only label changes matter: they decide which sources select the namespace.
    let relabels = reflector::reflector(
        namespace_writer,
        watcher(Api::<Namespace>::all(client), watcher::Config::default()).default_backoff(),
    )
    .applied_objects()
    .predicate_filter(predicates::labels, Default::default());
    let components = Controller::for_stream(component_events, components.clone())
        .watches_stream(relabels, move |ns: Namespace| {
            components_in(&components, &ns.name_any())
        })
        .reconcile_on(requeues)
        .shutdown_on_signal()
        .run(component::reconcile, component::error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "component controller");
            }
        });

    // The controllers drain in-flight reconciles on the signal; a reconcile stuck on the
    // network (or a watch that never finished its first list) must not hold the process past
    // the pod's termination grace period.
    let abandon = async {
        shutdown_signal().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        _ = futures::future::join(sources, components) => info!("controllers stopped"),
        () = abandon => warn!(grace = ?SHUTDOWN_GRACE, "controllers stopped: in-flight work abandoned after the grace period"),
    }
    Ok(())
}

/// How long in-flight reconciles may run after SIGTERM or Ctrl-C.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
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
    ctx.metrics.failure(controller);
    let delay = ctx.backoff(key);
    warn!(controller, object = key, error = %error, transient = error.is_transient(), ?delay, "reconcile failed");
    Action::requeue(delay)
}
