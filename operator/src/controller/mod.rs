//! The controllers: [`trust_source`] keeps the trust index and re-queues the components a
//! source change affects; [`component`] resolves, verifies and decides each `WasmComponent`.
//!
//! Both share one [`State`]. A source change reaches the component controller through a
//! channel of `ObjectRef`s (`Controller::reconcile_on`), so the index is updated before the
//! affected components are evaluated again.

pub mod component;
pub mod trust_source;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use airssys_crds::{TrustSource, WasmComponent};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::ResourceExt as _;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType as KubeEventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::events::{EventReason, EventType};
use crate::metrics::Metrics;
use crate::{Context, Error};

/// The finalizer on `WasmComponent`s, so deletions are seen and the index forgets them.
pub const FINALIZER: &str = "wasm.airssys.dev/cleanup";
/// Field manager for status written by server-side apply.
pub const FIELD_MANAGER: &str = "airssys-operator";
/// `reportingController` of our Events.
pub const REPORTER: &str = "airssys-operator";

/// What the reconcilers share.
pub struct State {
    pub ctx: Context,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Components to evaluate again (a source they depend on changed).
    pub requeue: mpsc::UnboundedSender<ObjectRef<WasmComponent>>,
    /// Consecutive failures per object, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

impl State {
    pub fn new(
        ctx: Context,
        metrics: Arc<Metrics>,
        requeue: mpsc::UnboundedSender<ObjectRef<WasmComponent>>,
    ) -> Self {
        let reporter = Reporter {
            controller: REPORTER.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(ctx.client.clone(), reporter),
            ctx,
            metrics,
            requeue,
            failures: Mutex::default(),
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
    /// fails the reconciliation (the status already says the same).
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
            note: Some(truncate(note, 1000)),
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

    /// Sends every `WasmComponent` to the component controller (key material changed, so
    /// recorded signers may no longer be right).
    pub async fn requeue_all(&self) -> Result<(), Error> {
        let api: Api<WasmComponent> = Api::all(self.ctx.client.clone());
        for c in api.list_metadata(&ListParams::default()).await? {
            if let (Some(name), Some(ns)) = (c.metadata.name, c.metadata.namespace) {
                let _ = self.requeue.send(ObjectRef::new(&name).within(&ns));
            }
        }
        Ok(())
    }

    /// Sends `keys` (`namespace`, `name`) to the component controller.
    pub fn requeue_components(&self, keys: &[(String, String)]) {
        for (ns, name) in keys {
            // The receiver lives as long as the component controller; after it stops there
            // is nothing left to re-queue.
            let _ = self.requeue.send(ObjectRef::new(name).within(ns));
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary (Event notes are limited to 1 kB).
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
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
pub async fn run(ctx: Context, metrics: Arc<Metrics>) -> Result<(), Error> {
    let loaded = load_sources(&ctx).await?;
    info!(sources = loaded, "trust index loaded");
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Arc::new(State::new(ctx.clone(), metrics, tx));
    let client = ctx.client.clone();

    // Our own watch of TrustSources, so deletions are seen without a finalizer on them.
    let (reader, writer) = reflector::store();
    let watch_state = state.clone();
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
            trust_source::deleted(&source.name_any(), &watch_state);
        }
        Ok(watcher::Event::InitDone) => {
            let existing: Vec<String> = store.state().iter().map(|s| s.name_any()).collect();
            trust_source::prune(&existing, &watch_state);
        }
        _ => {}
    })
    .applied_objects();
    let sources = Controller::for_stream(source_events, reader)
        .shutdown_on_signal()
        .run(
            trust_source::reconcile,
            trust_source::error_policy,
            state.clone(),
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "trust source controller");
            }
        });

    let requeues =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let components = Controller::new(
        Api::<WasmComponent>::all(client),
        watcher::Config::default(),
    )
    .reconcile_on(requeues)
    .shutdown_on_signal()
    .run(component::reconcile, component::error_policy, state)
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
fn retry_after_error(state: &State, controller: &str, key: &str, error: &Error) -> Action {
    state.metrics.failure(controller);
    let delay = state.backoff(key);
    warn!(controller, object = key, error = %error, transient = error.is_transient(), ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncation_keeps_char_boundaries() {
        assert_eq!(truncate("abc".into(), 10), "abc");
        assert_eq!(truncate("abcdef".into(), 3), "abc");
        assert_eq!(truncate("aé".into(), 2), "a", "é is two bytes");
    }
}
